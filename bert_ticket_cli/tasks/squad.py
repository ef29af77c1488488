"""SQuAD v1.1: question answering over doc-stride windows, EM / F1 on the answer text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_ticket_cli.data.squad import load_squad_raw, postprocess_squad, prepare_squad_eval, prepare_squad_train
from bert_ticket_cli.metrics.squad import squad_metrics
from bert_ticket_cli.tasks.base import Task, TaskData, limit


@dataclass(frozen=True)
class SquadTask(Task):
    """Extractive QA: features are context windows; the evaluation keeps the raw examples so
    the best span over an example's windows can be cut out of its context."""

    def load_raw(self, cfg: Any, splits: list[str]) -> Any:
        t = cfg.task
        return load_squad_raw(self, data_dir=t.data_dir, data_files=t.data_files, hub_dataset=t.hub_dataset,
                              splits=splits)

    def tokenized(self, cfg: Any, raw: Any, tokenizer: Any, *, train: bool, evals: list[str], test: bool,
                  cache_dir: str | None) -> TaskData:
        from transformers import default_data_collator

        t = cfg.task
        data = TaskData(info=self, collate=default_data_collator)
        if train:
            data.train = prepare_squad_train(limit(raw["train"], t.max_train_samples), tokenizer,
                                             t.max_seq_length, t.doc_stride, cache_dir)
        for split in evals:
            ex = limit(raw[split], t.max_eval_samples)
            data.eval_examples[split] = ex
            data.evals[split] = prepare_squad_eval(ex, tokenizer, t.max_seq_length, t.doc_stride, cache_dir)
        return data

    def split_metrics(self, data: TaskData, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]:
        examples, features = data.eval_examples[split], data.evals[split]
        answers = postprocess_squad(examples, features, outputs["start_logits"], outputs["end_logits"],
                                    max_answer_length=max_answer_length)
        refs = {ex_id: ans["text"] for ex_id, ans in zip(examples["id"], examples["answers"])}
        return squad_metrics(answers, refs)
