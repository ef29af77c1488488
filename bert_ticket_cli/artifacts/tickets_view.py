"""The lottery-ticket view of the runs: per task and sparsity, mean +- std over seeds of each
method, and the verdicts of Chen et al. (NeurIPS 2020):

- *matching*: within one standard deviation of the full model (their Table 2);
- *>= full*: at least the full model's mean (their Table 4, the stricter test).

The full model of a task is every dense record (a ``rewind`` without ticket, or level 0 of a
``prune`` run): the same seeds' dense runs give its mean and std.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

#: How record methods map to the curves of the paper.
METHOD_NAMES = {"imp": "imp", "omp": "omp", "random": "random_pruning", "random_pruning": "random_pruning",
                "random_reinit": "random_reinit"}
ORDER = ["imp", "omp", "random_pruning", "random_reinit"]


@dataclass
class Cell:
    """One value per seed (a ticket re-trained with ``rewind`` at the seed of its prune run
    repeats that run: it must not count twice)."""

    by_seed: dict[Any, float] = field(default_factory=dict)

    def add(self, seed: Any, value: float) -> None:
        self.by_seed[seed] = value

    @property
    def values(self) -> list[float]:
        return list(self.by_seed.values())

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class TaskView:
    task: str
    metric: str
    full: Cell = field(default_factory=Cell)
    #: method -> sparsity (rounded to 4 decimals) -> cell
    curves: dict[str, dict[float, Cell]] = field(default_factory=lambda: defaultdict(dict))

    def verdict(self, cell: Cell) -> str:
        if not self.full.values:
            return ""
        if cell.mean >= self.full.mean:
            return ">= full"
        if cell.mean >= self.full.mean - self.full.std:
            return "matching"
        return ""


def build(rows: list[dict[str, Any]]) -> list[TaskView]:
    """Group flattened summary rows (artifacts.index.query) into one view per task."""
    views: dict[str, TaskView] = {}
    for r in rows:
        if r.get("role") == "trajectory" or r.get("verb") == "eval" or r.get("main_value") is None:
            continue
        if r.get("role") in ("earlybert", "stage") or r.get("ticket_kind") == "structured":
            continue  # structured tickets (EarlyBERT): report view=earlybert
        value = r["main_value"]
        if not isinstance(value, (int, float)) or math.isnan(value):
            continue
        view = views.setdefault(r["task"], TaskView(r["task"], r.get("main_metric", "")))
        sparsity = round(float(r.get("sparsity") or 0.0), 4)
        method = METHOD_NAMES.get(str(r.get("method")), str(r.get("method")))
        if sparsity == 0.0 and r.get("verb") in ("rewind", "prune"):
            cell = view.full
        elif r.get("verb") == "transfer":
            continue  # shown in the transfer heatmap, not against this task's full model
        else:
            cell = view.curves[method].setdefault(sparsity, Cell())
        cell.add(r.get("seed"), float(value))
    return [views[k] for k in sorted(views)]


def table_rows(view: TaskView) -> list[dict[str, Any]]:
    """One row per (method, sparsity): mean, std, n, verdict."""
    out = []
    if view.full.values:
        out.append({"task": view.task, "method": "full model", "sparsity": 0.0, "mean": view.full.mean,
                    "std": view.full.std, "n": len(view.full.values), "verdict": ""})
    for method in sorted(view.curves, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m)):
        for sparsity in sorted(view.curves[method]):
            cell = view.curves[method][sparsity]
            out.append({"task": view.task, "method": method, "sparsity": sparsity, "mean": cell.mean,
                        "std": cell.std, "n": len(cell.values), "verdict": view.verdict(cell)})
    return out


def highest_matching(view: TaskView, method: str = "imp") -> float | None:
    """The highest sparsity at which ``method`` is matching (the number in the paper's Table 2)."""
    good = [s for s, c in view.curves.get(method, {}).items() if view.verdict(c)]
    return max(good) if good else None
