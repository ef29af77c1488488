"""The lottery-ticket view of the runs: per experiment and sparsity, mean +- std over seeds of
each method, and the verdicts of Chen et al. (NeurIPS 2020):

- *matching*: within one standard deviation of the full model (their Table 2);
- *>= full*: at least the full model's mean (their Table 4, the stricter test).

**Experiments, never pooled.**  Seeds are averaged only within one *experiment*: everything
that defines a run except its seed, read from the ``config`` stored in every ``summary.json``:

- the *base key* (what a dense fine-tune is): the task, ``model.*`` (name, source, config),
  ``task.*`` (max_seq_length, max_train_samples, data source, ...) and ``train.*`` (lr,
  epochs / max_steps, batch size, warmup, ...) except what does not change the trained
  weights (``TRAIN_IGNORED``: logging, checkpointing, evaluation cadence, micro-batching);
- the *prune key* of a ticket: ``prune.rewind``, ``scope``, ``include_pooler``, ``patterns``,
  ``reset_head``; for a ``rewind`` of a ticket these come from the stored config of the prune
  run that found it, with that run's base settings when they differ from the re-training's
  (``ticket_from.*``);
- IMP's ``prune.rate`` and ``prune.schedule`` (its path to a sparsity) split its curve: one
  ``imp`` curve when a table has one such path, else ``imp (rate=0.2, schedule=linear)``, ...
  (OMP and random pruning do not read them, so they share the table).

Not part of any key: the seed, the run-control keys (``output_dir``, ``run_name``,
``resume``, ``overwrite``, ``engine``, ``cache_dir``), and what picks the point on the curve
(``method``, the sparsity / level, ``prune.levels`` / ``target_sparsity`` / ``sparsities``,
the ticket path and variant, ``ticket.seed``).

The full model of an experiment is every dense record with its base key (a ``rewind``
without ticket, or level 0 of a ``prune`` run, which the index records as method ``dense``):
a dense run and a prune run's level 0 are one experiment only when their training settings
match.  Different experiments of one task are **separate tables** (never one mean), each
labelled by a short experiment hash and the settings in which it differs from the task's
other experiments.

Verdicts need >= 2 seeds on both sides (a standard deviation); otherwise the verdict is
``-`` (one seed has no std, and a mean difference of 0.0004 is no evidence).

Not tasks of this view: pre-training (``verb=pretrain``; ``view=pretrain``), transfer runs
(the transfer heatmap), evaluations, structured tickets (``view=earlybert``,
``view=super_tickets``), prune
trajectories (their levels are the rows), and runs without a ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

#: How record methods map to the curves of the paper.
METHOD_NAMES = {"imp": "imp", "omp": "omp", "random": "random_pruning", "random_pruning": "random_pruning",
                "random_reinit": "random_reinit"}
ORDER = ["imp", "omp", "random_pruning", "random_reinit"]

#: ``train.*`` keys that do not change the trained weights.
TRAIN_IGNORED = {"train.log_every", "train.save_every", "train.keep_checkpoints", "train.eval_every",
                 "train.micro_batch_size"}
#: ``prune.*`` keys of every ticket's experiment, and those that split IMP's curve.
PRUNE_KEYS = ("prune.rewind", "prune.scope", "prune.include_pooler", "prune.patterns", "prune.reset_head")
IMP_KEYS = ("prune.rate", "prune.schedule")
#: Verdicts that count as matching (``-``: not decidable, ``""``: not matching).
GOOD = (">= full", "matching")
NO_VERDICT = "-"
#: Settings shown in a table's label at most.
LABEL_KEYS = 4


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
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None for one seed (there is none)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class TaskView:
    """One experiment of one task: the full model and every method's curve."""

    task: str
    metric: str
    full: Cell = field(default_factory=Cell)
    #: method -> sparsity (rounded to 4 decimals) -> cell
    curves: dict[str, dict[float, Cell]] = field(default_factory=lambda: defaultdict(dict))
    #: Short hash of the experiment (base + prune settings).
    experiment: str = ""
    #: The settings that define the experiment (dotted keys).
    settings: dict[str, Any] = field(default_factory=dict)
    #: The settings in which it differs from the task's other experiments ("" when it is alone).
    label: str = ""

    def verdict(self, cell: Cell) -> str:
        if cell.n < 2 or self.full.n < 2:  # no std on one side (or no full model): undecidable
            return NO_VERDICT
        if cell.mean >= self.full.mean:
            return ">= full"
        if cell.mean >= self.full.mean - (self.full.std or 0.0):
            return "matching"
        return ""

    @property
    def title(self) -> str:
        return f"{self.task} [{self.experiment}{': ' + self.label if self.label else ''}]"

    def plottable(self) -> bool:
        """A curve needs one method with >= 2 sparsity points."""
        return any(len(points) >= 2 for points in self.curves.values())


def _digest(settings: dict[str, Any]) -> str:
    text = json.dumps(sorted(settings.items()), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _config(row: dict[str, Any], prefix: str = "config.") -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def base_settings(row: dict[str, Any]) -> dict[str, Any]:
    """What a dense fine-tune is (see the module docstring)."""
    cfg = _config(row)
    if not cfg:  # a record without a stored config: what the record itself says
        return {"task": row.get("task"), "model": row.get("model"), "model_source": row.get("model_source")}
    return _base_of(cfg)


def _base_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items()
            if k.split(".")[0] in ("model", "task", "train") and k not in TRAIN_IGNORED}


def _prune_of(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg.get(k) for k in PRUNE_KEYS}


def _ticket_source(row: dict[str, Any]) -> dict[str, Any]:
    """The config of the run that found the row's ticket (its own, for a prune level)."""
    return _config(row, "ticket_config.") if row.get("verb") == "rewind" and row.get("ticket") else _config(row)


def curve_name(row: dict[str, Any]) -> str:
    """The row's curve: its method; IMP with its rate and schedule (renamed to plain ``imp``
    by :func:`build` when a table has one IMP path)."""
    method = METHOD_NAMES.get(str(row.get("method")), str(row.get("method")))
    if method != "imp":
        return method
    cfg = _ticket_source(row)
    if not cfg:
        return method
    path = ", ".join(f"{k.split('.')[1]}={cfg.get(k)}" for k in IMP_KEYS)
    return f"imp ({path})"


def _base_method(name: str) -> str:
    return name.split(" (")[0]


def prune_settings(row: dict[str, Any]) -> dict[str, Any]:
    """The ticket's part of its experiment (see the module docstring)."""
    if row.get("verb") == "rewind" and row.get("ticket"):
        source = _config(row, "ticket_config.")
        if not source:
            return {"ticket_from": "unknown (its prune run's config.yaml is gone)"}
        out = _prune_of(source)
        own = _base_of(_config(row))
        found = _base_of(source)
        out.update({f"ticket_from.{k}": v for k, v in found.items() if own.get(k) != v})
        return out
    cfg = _config(row)
    return _prune_of(cfg) if cfg else {}


def _value(row: dict[str, Any], metric: str | None) -> float | None:
    value = row.get(f"metrics.{metric}") if metric else row.get("main_value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    return float(value)


def included(row: dict[str, Any]) -> bool:
    """Whether a record is a task run of this view (see the module docstring)."""
    if row.get("status", "finished") != "finished":
        return False
    if row.get("role") == "trajectory" or row.get("verb") in ("eval", "pretrain", "transfer"):
        return False
    if row.get("role") in ("earlybert", "stage", "pretrain") or row.get("ticket_kind") == "structured":
        return False  # structured tickets (EarlyBERT): report view=earlybert
    if row.get("role") in ("super_ticket", "super_tickets") or row.get("method") == "super_tickets":
        return False  # structured tickets (super tickets): report view=super_tickets
    if row.get("role") in ("multitask", "multitask_eval"):
        return False  # several tasks in one run: report view=multitask
    return True


def _is_dense(row: dict[str, Any]) -> bool:
    if row.get("method") == "dense":
        return True
    return float(row.get("sparsity") or 0.0) == 0.0 and row.get("verb") in ("rewind", "prune") and not row.get("ticket")


def build(rows: list[dict[str, Any]], metric: str | None = None) -> list[TaskView]:
    """Group flattened, normalised index rows (artifacts.index.query) into one view per task
    and experiment; ``metric`` None = each run's main metric."""
    full: dict[tuple[str, str], Cell] = defaultdict(Cell)
    base_of: dict[tuple[str, str], dict[str, Any]] = {}
    metric_of: dict[str, str] = {}
    views: dict[tuple[str, str, str], TaskView] = {}
    for r in rows:
        if not included(r):
            continue
        value = _value(r, metric)
        if value is None:
            continue
        task = str(r.get("task"))
        metric_of.setdefault(task, metric or str(r.get("main_metric", "")))
        base = base_settings(r)
        bkey = (task, _digest(base))
        base_of[bkey] = base
        if _is_dense(r):
            full[bkey].add(r.get("seed"), value)
            continue
        method = curve_name(r)
        prune = prune_settings(r)
        settings = {**base, **prune}
        key = (*bkey, _digest(prune))
        if key not in views:
            views[key] = TaskView(task, metric_of[task], experiment=_digest(settings), settings=settings)
        sparsity = round(float(r.get("sparsity") or 0.0), 4)
        views[key].curves[method].setdefault(sparsity, Cell()).add(r.get("seed"), value)
    with_curves = {k[:2] for k in views}
    for bkey, cell in full.items():
        if bkey not in with_curves:
            views[(*bkey, "")] = TaskView(bkey[0], metric_of[bkey[0]], experiment=_digest(base_of[bkey]),
                                          settings=dict(base_of[bkey]))
    for key, view in views.items():
        view.full = full.get(key[:2], Cell())
        imp = [m for m in view.curves if _base_method(m) == "imp"]
        if len(imp) == 1 and imp[0] != "imp":  # one IMP path in the table: plain "imp"
            view.curves["imp"] = view.curves.pop(imp[0])
    out = [views[k] for k in sorted(views)]
    _label(out)
    return out


_TICKET_PREFIXES = ("prune.", "ticket_from")


def _label(views: list[TaskView]) -> None:
    """Name each experiment of a task by the settings in which the task's experiments differ."""
    by_task: dict[str, list[TaskView]] = defaultdict(list)
    for v in views:
        by_task[v.task].append(v)
    for group in by_task.values():
        if len(group) < 2:
            continue
        keys = sorted({k for v in group for k in v.settings})
        tickets = [v for v in group if any(k.startswith(_TICKET_PREFIXES) for k in v.settings)]
        differ = []
        for k in keys:
            # A ticket's setting differs only among tickets' experiments (a dense-only one has none).
            among = tickets if k.startswith(_TICKET_PREFIXES) else group
            if len({json.dumps(v.settings.get(k), default=str) for v in among}) > 1:
                differ.append(k)
        for v in group:
            shown = [f"{k}={v.settings[k]}" for k in differ if k in v.settings][:LABEL_KEYS]
            v.label = ", ".join(shown) or "dense only"


def table_rows(view: TaskView) -> list[dict[str, Any]]:
    """One row per (method, sparsity): mean, std (None for one seed), n, verdict."""
    common = {"task": view.task, "experiment": view.experiment, "setting": view.label}
    out = []
    if view.full.values:
        out.append({**common, "method": "full model", "sparsity": 0.0, "mean": view.full.mean,
                    "std": view.full.std, "n": view.full.n, "verdict": ""})
    for method in sorted(view.curves, key=method_order):
        for sparsity in sorted(view.curves[method]):
            cell = view.curves[method][sparsity]
            out.append({**common, "method": method, "sparsity": sparsity, "mean": cell.mean,
                        "std": cell.std, "n": cell.n, "verdict": view.verdict(cell)})
    return out


def method_order(name: str) -> tuple[int, str]:
    base = _base_method(name)
    return (ORDER.index(base) if base in ORDER else 99, name)


def highest_matching(view: TaskView, method: str = "imp") -> float | None:
    """The highest sparsity at which ``method`` is matching (the number in the paper's Table 2)."""
    good = [s for s, c in view.curves.get(method, {}).items() if view.verdict(c) in GOOD]
    return max(good) if good else None
