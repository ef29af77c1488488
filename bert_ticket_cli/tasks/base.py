"""The task object: the facts of one task and what it does with them.

A task knows where its examples come from (:meth:`Task.load_raw`), how they become model-ready
splits and batches (:meth:`Task.tokenized`, the collator it puts in :class:`TaskData`), how a
split's model outputs become metrics (:meth:`Task.split_metrics`), which metric is the main one,
and how test predictions are written for a leaderboard (:meth:`Task.write_predictions`).  The
kinds of task are subclasses (``glue.py``, ``squad.py``, ``mlm.py``); the tasks themselves are
entries of the table in ``registry.py``.  The loaders they call live in ``data/``, one layer down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bert_ticket_cli.data.common import default_cache_dir
from bert_ticket_cli.errors import UserError


@dataclass(frozen=True)
class Task:
    """One task: its facts (fields) and its behaviour (methods, overridden per kind).

    ``label_names`` follow the label-id order of the ``nyu-mll/glue`` hub dataset, so that a
    model fine-tuned on hub data and one fine-tuned on the GLUE TSV files agree on class ids.
    """

    name: str
    kind: str
    num_labels: int
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    leaderboard_files: tuple[str, ...]
    hub_dataset: str

    #: Tokenized splits are cached on disk (False: the data is generated and tiny).
    disk_cache = True

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name this task knows, train first."""
        return ("train", *self.eval_splits, *self.test_splits)

    # ---------------------------------------------------------------------------- loading

    def load_raw(self, cfg: Any, splits: list[str]) -> Any:
        """The raw examples of ``splits`` (a DatasetDict) from ``cfg.task``'s data source."""
        raise NotImplementedError

    def tokenized(self, cfg: Any, raw: Any, tokenizer: Any, *, train: bool, evals: list[str], test: bool,
                  cache_dir: str | None) -> TaskData:
        """Model-ready splits of ``raw`` and the collator that batches them."""
        raise NotImplementedError

    def cache_dir(self, cfg: Any) -> str | None:
        return default_cache_dir(cfg) if self.disk_cache else None

    # ---------------------------------------------------------------------------- metrics

    def split_metrics(self, data: TaskData, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]:
        """Metrics of one evaluated split from ``engine.evaluate.predict``'s outputs."""
        raise NotImplementedError

    def main_metric_key(self, eval_splits: list[str]) -> str:
        """The key of the main metric in a metrics dict (several dev splits: ``<first split>/<metric>``)."""
        return f"{eval_splits[0]}/{self.main_metric}" if len(eval_splits) > 1 else self.main_metric

    # ---------------------------------------------------------------------------- leaderboard

    def write_predictions(self, split: str, idx: Any, outputs: dict[str, np.ndarray],
                          path: str | os.PathLike) -> None:
        """Write a test split's predictions in the leaderboard's format (the file name of test
        split ``test_splits[i]`` is ``leaderboard_files[i]``)."""
        raise UserError(f"task {self.name} has no leaderboard format")


def limit(ds: Any, n: int | None) -> Any:
    """The first ``n`` rows (``max_train_samples`` / ``max_eval_samples``); None or 0: all."""
    return ds.select(range(min(n, len(ds)))) if n else ds


@dataclass
class TaskData:
    """A task's model-ready splits and collator: what the workflows train and evaluate on.

    ``engine.evaluate.make_evaluator`` takes it as it is (``evals``, ``collate`` and
    :meth:`split_metrics`), so the engine never needs to know which task it evaluates.
    """

    info: Task
    collate: Callable[[list[dict]], dict[str, Any]]
    train: Any = None
    #: split -> model-ready features; for SQuAD also the raw examples (for answer post-processing).
    evals: dict[str, Any] = field(default_factory=dict)
    eval_examples: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, Any] = field(default_factory=dict)
    test_examples: dict[str, Any] = field(default_factory=dict)

    def split_metrics(self, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]:
        return self.info.split_metrics(self, split, outputs, max_answer_length=max_answer_length)

    def main_metric_key(self) -> str:
        return self.info.main_metric_key(list(self.evals))
