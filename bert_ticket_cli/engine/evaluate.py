"""Prediction and metrics on dev / test splits, sharded over processes.

Batches are spread over processes by Accelerate and gathered back in order
(``gather_for_metrics`` drops the padding duplicates of the last batch), so metrics are
identical with 1 or N processes.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from bert_ticket_cli.data.pipeline import TaskData

_NON_MODEL_COLUMNS = ("idx", "example_id", "offset_mapping", "labels", "label")


@torch.no_grad()
def predict(accelerator, model: torch.nn.Module, dataset, collate: Callable, batch_size: int) -> dict[str, np.ndarray]:
    """Model outputs for every row of ``dataset``, in order: logits, or start/end logits for QA."""
    drop = [c for c in dataset.column_names if c in _NON_MODEL_COLUMNS]
    inputs = dataset.remove_columns(drop) if drop else dataset
    loader = accelerator.prepare_data_loader(
        DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=collate), device_placement=True
    )
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k not in _NON_MODEL_COLUMNS}
        with accelerator.autocast():
            out = model(**batch)
        if getattr(out, "start_logits", None) is not None:
            pairs = {"start_logits": out.start_logits, "end_logits": out.end_logits}
        else:
            pairs = {"logits": out.logits}
        for k, v in pairs.items():
            v = accelerator.gather_for_metrics(v.float().contiguous())
            outs.setdefault(k, []).append(v.cpu().numpy())
    if was_training:
        model.train()
    return {k: np.concatenate(v) for k, v in outs.items()}


def to_predictions(kind: str, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if kind == "regression" else logits.argmax(-1)


def split_metrics(data: TaskData, split: str, outputs: dict[str, np.ndarray], *, max_answer_length: int = 30) -> dict[str, float]:
    info = data.info
    if info.kind == "qa":
        from bert_ticket_cli.data.squad import postprocess_squad
        from bert_ticket_cli.metrics.squad import squad_metrics

        examples, features = data.eval_examples[split], data.evals[split]
        answers = postprocess_squad(examples, features, outputs["start_logits"], outputs["end_logits"],
                                    max_answer_length=max_answer_length)
        refs = {ex_id: ans["text"] for ex_id, ans in zip(examples["id"], examples["answers"])}
        return squad_metrics(answers, refs)
    from bert_ticket_cli.metrics.glue import glue_metrics

    labels = np.asarray(data.evals[split]["labels"])
    metric_task = "sst2" if info.name == "synthetic" else info.name
    return glue_metrics(metric_task, to_predictions(info.kind, outputs["logits"]), labels)


def make_evaluator(accelerator, data: TaskData, batch_size: int, max_answer_length: int = 30) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``model -> metrics``; several dev splits (MNLI) are reported as ``<split>/<metric>``."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        several = len(data.evals) > 1
        for split, ds in data.evals.items():
            out = predict(accelerator, model, ds, data.collate, batch_size)
            for k, v in split_metrics(data, split, out, max_answer_length=max_answer_length).items():
                metrics[f"{split}/{k}" if several else k] = float(v)
        return metrics

    return evaluate


def main_metric_key(data: TaskData) -> str:
    first = next(iter(data.evals))
    return f"{first}/{data.info.main_metric}" if len(data.evals) > 1 else data.info.main_metric


def format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
