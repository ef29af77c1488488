"""The super-tickets view of the runs (Liang et al., ACL 2021): per experiment, kind (full,
winning, random, losing) and level, mean +- std over seeds of the dev metric, the parameters
kept, the training time; the *super ticket* (the winning level with the best mean) and whether
it beats the full model.

Input: the sub-run records of ``prune method=super_tickets`` (``role == "super_ticket"``, one
per ``levels/dense`` and ``levels/<kind>-<level>``; see the run-folder contract in the README).
The run's own summary (``role == "super_tickets"``) repeats their key fields: it is never
counted here (that would count every seed twice).

**Experiments, never pooled.**  Seeds are averaged only within one *experiment*, keyed as in
``artifacts/tickets_view.py``: the base key of a dense fine-tune (task, ``model.*``,
``task.*``, ``train.*`` but what does not change the weights) plus the super-tickets settings,
``method.*``, except what changes no trained ticket (``POINT_KEYS``: the level grid
``method.levels``, as a level means the same ticket counts in any grid; ``method.kinds``;
``train_tickets``; ``save_models``) and any ``*seed`` key (``method.random_seed``: the seed
is what is averaged over).  Separate head / FFN grids (``method.head_levels`` /
``ffn_levels``) change what a level means: they stay in the key.  Several seeds = several
prune runs of the same settings, one experiment.  The full model of an experiment is the
``kind == "full"`` sub-run (``levels/dense``) of those runs: a plain dense run elsewhere is
not mixed in.

**The super ticket**: among the winning levels, the best mean (ties: the lower level, as the
run's own summary picks it).  It *beats full* only when its mean is strictly above the full
model's mean (the report shows both stds; with fewer than 2 seeds on a side it says so).
Metrics are higher-is-better, except names with ``loss`` or ``perplexity``.

Pure functions over flattened summary rows (``artifacts.index.query``); nothing here reads files.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.tickets_view import _digest, _label, base_settings

#: Records of this view and the run-level record that summarises them (not counted).
ROLE, RUN_ROLE = "super_ticket", "super_tickets"
#: Ticket kinds in table / legend order; "full" is the dense model (level 0).
KINDS = ("full", "winning", "random", "losing")
#: ``method.*`` keys that change no trained ticket: the level grid (a level is the same ticket in
#: any grid), which kinds are trained, whether tickets train in the run, which models are saved.
POINT_KEYS = {"method.name", "method.levels", "method.kinds", "method.train_tickets", "method.save_models"}
#: Columns of the machine-readable rows (``format=json|csv``), in order.
FIELDS = ["task", "model", "experiment", "setting", "metric", "kind", "level", "mean", "std", "n",
          "kept_fraction", "kept_fraction_total", "heads_kept", "heads_total", "ffn_kept", "ffn_total",
          "encoder_params", "params", "train_time_s", "delta_full", "super_ticket", "beats_full"]


@dataclass
class Cell:
    """One (kind, level) of one experiment: one record per seed, the last one read wins (a
    resumed or re-run seed counts once)."""

    by_seed: dict[Any, dict[str, Any]] = field(default_factory=dict)
    metric: str = ""

    def add(self, seed: Any, row: dict[str, Any], value: float) -> None:
        self.by_seed[seed] = {**row, "_value": value}

    @property
    def values(self) -> list[float]:
        return [r["_value"] for r in self.by_seed.values()]

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for one seed (there is none)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    def field_mean(self, key: str) -> float | None:
        """Mean over seeds of a numeric record field (None when no seed has it)."""
        xs = [_num(r.get(key)) for r in self.by_seed.values()]
        xs = [x for x in xs if x is not None]
        return statistics.fmean(xs) if xs else None

    def field_std(self, key: str) -> float | None:
        xs = [x for x in (_num(r.get(key)) for r in self.by_seed.values()) if x is not None]
        return statistics.stdev(xs) if len(xs) > 1 else None


@dataclass
class Experiment:
    """The full model and every kind's curve of one task under one setting."""

    task: str
    model: str
    metric: str
    #: kind -> level (rounded to 4 decimals) -> cell; "full" has the one level 0.0.
    cells: dict[str, dict[float, Cell]] = field(default_factory=lambda: defaultdict(dict))
    experiment: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def full(self) -> Cell | None:
        return self.cells.get("full", {}).get(0.0)

    @property
    def title(self) -> str:
        return f"{self.task} / {self.model} [{self.experiment}{': ' + self.label if self.label else ''}]"

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def super_ticket(self) -> tuple[float, Cell] | None:
        """(level, cell) of the winning level with the best mean; ties: the lower level."""
        winning = self.cells.get("winning", {})
        if not winning:
            return None
        sign = 1.0 if self.higher_is_better else -1.0
        level = max(winning, key=lambda lv: (sign * winning[lv].mean, -lv))
        return level, winning[level]

    def beats_full(self) -> bool | None:
        """Whether the super ticket's mean is strictly better than the full model's (None:
        no super ticket or no full model)."""
        best, full = self.super_ticket(), self.full
        if best is None or full is None:
            return None
        return best[1].mean > full.mean if self.higher_is_better else best[1].mean < full.mean

    def plottable(self) -> bool:
        """A curve needs one ticket kind with >= 2 levels."""
        return any(len(v) >= 2 for k, v in self.cells.items() if k != "full")


def higher_is_better(metric: str) -> bool:
    name = metric.lower()
    return not ("loss" in name or "perplexity" in name)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def included(row: dict[str, Any]) -> bool:
    """A finished sub-run of a super-tickets run (the run-level record is not one)."""
    return row.get("role") == ROLE and row.get("status", "finished") == "finished"


def method_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The super-tickets part of the experiment key (see the module docstring)."""
    out = {}
    for k, v in row.items():
        if not k.startswith("config.method."):
            continue
        key = k[len("config."):]
        if key in POINT_KEYS or key.rsplit(".", 1)[-1].endswith("seed"):
            continue
        out[key] = v
    return out


def _value(row: dict[str, Any], metric: str | None) -> float | None:
    return _num(row.get(f"metrics.{metric}") if metric else row.get("main_value"))


def build(rows: list[dict[str, Any]], metric: str | None = None) -> list[Experiment]:
    """Group flattened index rows into one :class:`Experiment` per task and setting;
    ``metric`` None = each run's main metric."""
    exps: dict[tuple[str, str], Experiment] = {}
    for r in rows:
        if not included(r):
            continue
        value = _value(r, metric)
        kind = str(r.get("kind") or "")
        if value is None or kind not in KINDS:
            continue
        task = str(r.get("task"))
        settings = {**base_settings(r), **method_settings(r)}
        key = (task, _digest(settings))
        if key not in exps:
            exps[key] = Experiment(task, str(r.get("model") or r.get("config.model.name") or "-"),
                                   metric or str(r.get("main_metric") or ""), experiment=key[1], settings=settings)
        level = 0.0 if kind == "full" else round(float(r.get("level") or 0.0), 4)
        cells = exps[key].cells[kind]
        cells.setdefault(level, Cell(metric=exps[key].metric)).add(r.get("seed"), r, value)
    out = [exps[k] for k in sorted(exps)]
    _label(out)  # a task's experiments named by the settings in which they differ
    return out


def table_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One row per (kind, level): the full model first, then winning, random, losing by level."""
    best = exp.super_ticket()
    full = exp.full
    out = []
    for kind in KINDS:
        for level in sorted(exp.cells.get(kind, {})):
            cell = exp.cells[kind][level]
            is_super = best is not None and kind == "winning" and level == best[0]
            counts = {k: _int_mean(cell, k) for k in ("heads_kept", "heads_total", "ffn_kept", "ffn_total")}
            out.append({
                "task": exp.task, "model": exp.model, "experiment": exp.experiment, "setting": exp.label,
                "metric": exp.metric, "kind": kind, "level": level, "mean": cell.mean, "std": cell.std, "n": cell.n,
                "kept_fraction": 1.0 if kind == "full" else cell.field_mean("kept_fraction"),
                "kept_fraction_total": 1.0 if kind == "full" else cell.field_mean("kept_fraction_total"),
                **counts,
                "encoder_params": cell.field_mean("encoder_params"), "params": cell.field_mean("params"),
                "train_time_s": cell.field_mean("train_time_s"),
                "delta_full": None if full is None or kind == "full" else cell.mean - full.mean,
                "super_ticket": is_super,
                "beats_full": exp.beats_full() if is_super else None,
            })
    return out


def _int_mean(cell: Cell, key: str) -> float | int | None:
    """A count: an int when every seed agrees (as at one level they do), else the mean."""
    xs = [r.get(key) for r in cell.by_seed.values() if _num(r.get(key)) is not None]
    if not xs:
        return None
    return int(xs[0]) if len(set(xs)) == 1 else statistics.fmean(xs)


def _pm(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    if cell.std is None:
        return f"{cell.mean:.4f} (n=1, no std)"
    return f"{cell.mean:.4f} +- {cell.std:.4f} (n={cell.n})"


def verdict(exp: Experiment) -> str:
    """One line: the super ticket and whether it beats the full model."""
    best = exp.super_ticket()
    if best is None:
        return f"{exp.title}: no winning ticket trained yet: no super ticket"
    level, cell = best
    full = exp.full
    head = f"{exp.title}: super ticket = winning level {level:.2f}, {exp.metric} {_pm(cell)}"
    if full is None:
        return f"{head}; no full model (levels/dense) in these runs: no comparison"
    word = "beats full" if exp.beats_full() else "does not beat full"
    few = "; fewer than 2 seeds on a side: no std, weak evidence" if cell.n < 2 or full.n < 2 else ""
    return f"{head}: {word} ({_pm(full)}){few}"


TABLE_COLUMNS = ["kind", "level", "heads kept", "ffn kept", "encoder kept", "total kept", "mean +- std", "seeds",
                 "vs full", "train s", "super ticket"]


def display_row(row: dict[str, Any]) -> list[str]:
    """The table cells of one row (see ``TABLE_COLUMNS``)."""

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    def count(kept: Any, total: Any) -> str:
        if kept is None or total is None:
            return "-"
        return f"{kept}/{total}" if isinstance(kept, int) else f"{kept:.1f}/{total}"

    spread = f"+- {row['std']:.4f}" if row["std"] is not None else "(no std)"
    delta = "-" if row["delta_full"] is None else f"{row['delta_full']:+.4f}"
    mark = ""
    if row["super_ticket"]:
        mark = {True: "* beats full", False: "* does not beat full", None: "*"}[row["beats_full"]]
    return [row["kind"], f"{row['level']:.2f}", count(row["heads_kept"], row["heads_total"]),
            count(row["ffn_kept"], row["ffn_total"]), pct(row["kept_fraction"]), pct(row["kept_fraction_total"]),
            f"{row['mean']:.4f} {spread}", str(row["n"]), delta,
            "-" if row["train_time_s"] is None else f"{row['train_time_s']:.1f}", mark]


def sub_run_name(r: dict[str, Any]) -> str | None:
    """``<run>/<kind>-<level>`` for a super-tickets sub-run (``<run>/levels/<name>``), so the
    runs view does not show a dozen runs named ``winning-0.30`` without their run; other rows
    keep their name."""
    name = r.get("run_name")
    if r.get("role") != ROLE or (name and "/" in str(name)):
        return name
    run_dir = r.get("run_dir")
    if run_dir and Path(run_dir).parent.name == "levels":
        return f"{Path(run_dir).parent.parent.name}/{Path(run_dir).name}"
    return name
