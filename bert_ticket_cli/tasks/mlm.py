"""Masked language modelling over a text corpus (Chen et al. 2020, Sec. 4: tickets found on MLM).

The text loading, packing and masking live in ``data/mlm.py``; this is the task around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_ticket_cli.data.mlm import MlmCollator, load_text, mask_split, pack_blocks
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.metrics.mlm import metrics_from_sums
from bert_ticket_cli.tasks.base import Task, TaskData


@dataclass(frozen=True)
class MlmTask(Task):
    """``task=mlm``: packed ``[CLS] ... [SEP]`` blocks; evaluation reduces per-row sums (loss,
    correct, count; ``metrics.mlm.batch_sums`` in ``engine.evaluate.predict``), never logits."""

    def load_raw(self, cfg: Any, splits: list[str]) -> Any:
        t = cfg.task
        return load_text(self, data_dir=t.data_dir, data_files=t.data_files, hub_dataset=t.hub_dataset,
                         splits=splits)

    def tokenized(self, cfg: Any, raw: Any, tokenizer: Any, *, train: bool, evals: list[str], test: bool,
                  cache_dir: str | None) -> TaskData:
        return build_mlm_data(cfg, self, raw, tokenizer, train=train, evals=evals, cache_dir=cache_dir)

    def split_metrics(self, data: TaskData, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]:
        return metrics_from_sums(float(np.sum(outputs["mlm_loss_sum"], dtype=np.float64)),
                                 float(np.sum(outputs["mlm_correct"])), float(np.sum(outputs["mlm_count"])))


def build_mlm_data(cfg: Any, info: Task, raw: Any, tokenizer: Any, *, train: bool,
                   evals: Sequence[str], cache_dir: str | None) -> TaskData:
    """TaskData for ``task=mlm``: packed training blocks (masked per batch by the collator) and
    evaluation blocks masked once with :data:`~bert_ticket_cli.data.mlm.EVAL_SEED`."""
    t = cfg.task
    collate = MlmCollator(tokenizer, seed=cfg.seed, probability=getattr(t, "mlm_probability", 0.15))
    data = TaskData(info=info, collate=collate)

    def blocks(split: str, limit: int | None):
        packed = pack_blocks(raw[split], tokenizer, t.max_seq_length, cache_dir)
        if limit:
            packed = packed.select(range(min(limit, len(packed))))
        if len(packed) == 0:
            raise UserError(f"task {info.name}: split {split!r} has no tokens: check the data source")
        return packed

    if train:
        data.train = blocks("train", t.max_train_samples)
    for split in evals:
        packed = blocks(split, t.max_eval_samples)
        data.evals[split] = mask_split(packed, collate.masker, cache_dir=cache_dir)
    return data
