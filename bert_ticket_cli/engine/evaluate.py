"""Prediction and metrics on dev / test splits, sharded over processes.

Batches are spread over processes by Accelerate and gathered back in order
(``gather_for_metrics`` drops the padding duplicates of the last batch), so metrics are
identical with 1 or N processes.  What the outputs mean is the task's business: the evaluator
hands them to the data object it was given (:class:`Evaluable`; ``tasks.TaskData`` is one), so
nothing here imports ``data/`` or ``tasks/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from bert_ticket_cli.metrics.mlm import batch_sums

_NON_MODEL_COLUMNS = ("idx", "example_id", "offset_mapping", "labels", "label")


class Evaluable(Protocol):
    """What the evaluator needs of a task's data: dev splits, their collator, and the metrics
    of one split from its model outputs (``tasks.TaskData`` asks its task object)."""

    evals: Mapping[str, Any]
    collate: Callable

    def split_metrics(self, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]: ...


class EvalProgress:
    """Progress of one evaluation on the main process: a transient bar on a terminal, a plain
    ``eval <split> n/N batches`` line every ``every_s`` seconds elsewhere (Slurm logs), so a long
    evaluation is not mistaken for a hang; short ones print nothing."""

    def __init__(self, split: str, total: int, *, enabled: bool, every_s: float = 10.0):
        import sys
        import time

        self.split, self.total, self.every_s = split, total, every_s
        self.enabled, self._clock = enabled, time.perf_counter
        self._last = self._clock()
        self._bar = None
        if enabled and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn(f"eval {split}"), BarColumn(), MofNCompleteColumn(), transient=True)
            self._task = self._bar.add_task("eval", total=total)
            self._bar.start()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif self._clock() - self._last >= self.every_s and done < self.total:
            self._last = self._clock()
            print(f"eval {self.split} {done}/{self.total} batches", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@torch.no_grad()
def predict(accelerator, model: torch.nn.Module, dataset, collate: Callable, batch_size: int,
            split: str = "dev") -> dict[str, np.ndarray]:
    """Model outputs for every row of ``dataset``, in order: logits, or start/end logits for QA.

    Masked language modelling (a collator with ``keeps_labels``): the labels stay in the batch
    and each row is reduced on its device to (loss sum, correct, masked count), never gathering
    the ``[B, L, vocab]`` logits.
    """
    keep_labels = bool(getattr(collate, "keeps_labels", False))
    non_model = tuple(c for c in _NON_MODEL_COLUMNS if not (keep_labels and c == "labels"))
    drop = [c for c in dataset.column_names if c in non_model]
    inputs = dataset.remove_columns(drop) if drop else dataset
    loader = accelerator.prepare_data_loader(
        DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=collate), device_placement=True
    )
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    progress = EvalProgress(split, len(loader), enabled=accelerator.is_main_process)
    for done, batch in enumerate(loader, start=1):
        labels = batch.get("labels") if keep_labels else None
        batch = {k: v for k, v in batch.items() if k not in _NON_MODEL_COLUMNS}
        with accelerator.autocast():
            out = model(**batch)
        if labels is not None and getattr(out, "logits", None) is not None and out.logits.dim() == 3:
            pairs = batch_sums(out.logits, labels)
        elif getattr(out, "start_logits", None) is not None:
            pairs = {"start_logits": out.start_logits, "end_logits": out.end_logits}
        else:
            pairs = {"logits": out.logits}
        for k, v in pairs.items():
            v = accelerator.gather_for_metrics((v if v.dtype == torch.int64 else v.float()).contiguous())
            outs.setdefault(k, []).append(v.cpu().numpy())
        progress.update(done)
    progress.close()
    if was_training:
        model.train()
    return {k: np.concatenate(v) for k, v in outs.items()}


def make_evaluator(accelerator, data: Evaluable, batch_size: int,
                   max_answer_length: int = 30) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``model -> metrics``; several dev splits (MNLI) are reported as ``<split>/<metric>``."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        several = len(data.evals) > 1
        for split, ds in data.evals.items():
            out = predict(accelerator, model, ds, data.collate, batch_size, split=split)
            for k, v in data.split_metrics(split, out, max_answer_length=max_answer_length).items():
                metrics[f"{split}/{k}" if several else k] = float(v)
        return metrics

    return evaluate

