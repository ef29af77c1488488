"""The multi-task view of the runs (``report view=multitask``): the table of Liang et al.
(ACL 2021), dense multi-task learning (MT-DNN) against Tickets-Share.

Input: the records of ``rewind task=multi`` runs (role ``multitask``).  Runs are one
*experiment* when they share everything but the seed and the ticket choice
(``multitask.tickets`` / ``multitask.tickets_from``): the same tasks, model, task and training
settings, sampling.  Within an experiment, the runs without tickets are the **dense** arm and
those with tickets the **tickets-share** arm.  Per arm: each task's main metric, mean +- std
over seeds; the average score (the mean of the task scores); the fraction of the encoder's
parameters each task uses, and its mean over the tasks.  Experiments are never pooled.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from bert_ticket_cli.artifacts import paths

#: Config keys that do not make another experiment beyond run control (``paths.NON_IDENTITY_KEYS``):
#: the seed, the ticket choice.
NOT_EXPERIMENT = ("seed", "engine", "multitask.tickets", "multitask.tickets_from", "train.eval_every",
                  "train.micro_batch_size")
ARMS = ("dense", "tickets-share")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Arm:
    """The runs of one arm of an experiment."""

    runs: list[dict[str, Any]] = field(default_factory=list)

    def task_values(self, task: str) -> list[float]:
        return [float(r[f"task_main_metrics.{task}"]) for r in self.runs
                if isinstance(r.get(f"task_main_metrics.{task}"), (int, float))]

    def kept(self, task: str) -> list[float]:
        return [float(r.get(f"kept_fraction.{task}", 1.0)) for r in self.runs]

    def averages(self) -> list[float]:
        return [float(r["main_value"]) for r in self.runs if isinstance(r.get("main_value"), (int, float))]


@dataclass
class Experiment:
    key: str
    tasks: list[str]
    model: str
    settings: dict[str, Any]
    arms: dict[str, Arm] = field(default_factory=lambda: {a: Arm() for a in ARMS})

    @property
    def title(self) -> str:
        return f"multi-task {'+'.join(self.tasks)}, {self.model} (experiment {self.key})"


def _config(row: dict[str, Any]) -> dict[str, Any]:
    return {k[len("config."):]: v for k, v in row.items() if k.startswith("config.")}


def experiment_settings(row: dict[str, Any]) -> dict[str, Any]:
    return paths.experiment_settings(_config(row), NOT_EXPERIMENT)


def included(row: dict[str, Any]) -> bool:
    return row.get("role") == "multitask" and row.get("status", "finished") == "finished"


def build(rows: list[dict[str, Any]]) -> list[Experiment]:
    """Group flattened index rows (artifacts.index.query) into experiments and arms."""
    out: dict[str, Experiment] = {}
    for row in filter(included, rows):
        settings = experiment_settings(row)
        key = hashlib.sha1(json.dumps(sorted(settings.items()), default=str).encode()).hexdigest()[:8]
        tasks = _tasks(row)
        exp = out.setdefault(key, Experiment(key, tasks, str(row.get("model")), settings))
        exp.arms["tickets-share" if row.get("tickets_share") else "dense"].runs.append(row)
    return sorted(out.values(), key=lambda e: (e.tasks, e.model, e.key))


def _tasks(row: dict[str, Any]) -> list[str]:
    tasks = row.get("tasks")
    if isinstance(tasks, str):
        try:
            tasks = json.loads(tasks)
        except ValueError:
            tasks = [t for t in tasks.split(",") if t]
    return list(tasks or [])


def table_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One row per arm with runs: ``arm``, ``seeds``, per task ``<task>`` (mean), ``<task>_std``,
    ``average`` / ``average_std``, ``<task>_kept``, ``kept_mean``."""
    rows = []
    for arm_name in ARMS:
        arm = exp.arms[arm_name]
        if not arm.runs:
            continue
        row: dict[str, Any] = {"experiment": exp.key, "arm": arm_name, "seeds": len(arm.runs)}
        kept_means = []
        for task in exp.tasks:
            row[task], row[f"{task}_std"] = _mean_std(arm.task_values(task))
            k = statistics.mean(arm.kept(task))
            row[f"{task}_kept"] = k
            kept_means.append(k)
        row["average"], row["average_std"] = _mean_std(arm.averages())
        row["kept_mean"] = statistics.mean(kept_means) if kept_means else None
        rows.append(row)
    return rows


def cell(mean: float | None, std: float | None, scale: float = 100.0) -> str:
    if mean is None:
        return "-"
    return f"{scale * mean:.1f}" + (f" +- {scale * std:.1f}" if std is not None else "")
