"""Prediction and metrics on dev / test splits, sharded over processes.

Batches are spread over processes by Accelerate and gathered back in order
(``gather_for_metrics`` drops the padding duplicates of the last batch), so metrics are
identical with 1 or N processes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from bert_ticket_cli.data.pipeline import TaskData

_NON_MODEL_COLUMNS = ("idx", "example_id", "offset_mapping", "labels", "label")


@torch.no_grad()
def predict(accelerator, model: torch.nn.Module, dataset, collate: Callable, batch_size: int) -> dict[str, np.ndarray]:
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
    for batch in loader:
        labels = batch.get("labels") if keep_labels else None
        batch = {k: v for k, v in batch.items() if k not in _NON_MODEL_COLUMNS}
        with accelerator.autocast():
            out = model(**batch)
        if labels is not None and getattr(out, "logits", None) is not None and out.logits.dim() == 3:
            from bert_ticket_cli.metrics.mlm import batch_sums

            pairs = batch_sums(out.logits, labels)
        elif getattr(out, "start_logits", None) is not None:
            pairs = {"start_logits": out.start_logits, "end_logits": out.end_logits}
        else:
            pairs = {"logits": out.logits}
        for k, v in pairs.items():
            v = accelerator.gather_for_metrics((v if v.dtype == torch.int64 else v.float()).contiguous())
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
    if info.kind == "mlm":
        from bert_ticket_cli.metrics.mlm import metrics_from_sums

        return metrics_from_sums(float(np.sum(outputs["mlm_loss_sum"], dtype=np.float64)),
                                 float(np.sum(outputs["mlm_correct"])), float(np.sum(outputs["mlm_count"])))
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
