"""GLUE-style sentence(-pair) tasks: classification (MNLI with its two dev splits) and STS-B's
regression, and the generated task that stands in for them in the demo and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bert_ticket_cli.data.glue import load_raw, write_glue_predictions
from bert_ticket_cli.data.tokenize import collate_classification, tokenize_classification
from bert_ticket_cli.metrics.glue import glue_scores
from bert_ticket_cli.tasks.base import Task, TaskData, limit


@dataclass(frozen=True)
class GlueTask(Task):
    """A GLUE task: TSV / CSV / JSON files or the hub, one row per example, logits -> class ids
    (regression: the single output is the score), leaderboard TSVs for the test splits."""

    def load_raw(self, cfg: Any, splits: list[str]) -> Any:
        t = cfg.task
        return load_raw(self, data_dir=t.data_dir, data_files=t.data_files, hub_dataset=t.hub_dataset, splits=splits)

    def tokenized(self, cfg: Any, raw: Any, tokenizer: Any, *, train: bool, evals: list[str], test: bool,
                  cache_dir: str | None) -> TaskData:
        t = cfg.task
        data = TaskData(info=self, collate=collate_classification(tokenizer))
        if train:
            data.train = tokenize_classification(limit(raw["train"], t.max_train_samples), tokenizer, self,
                                                 t.max_seq_length, cache_dir)
        for split in evals:
            data.evals[split] = tokenize_classification(limit(raw[split], t.max_eval_samples), tokenizer, self,
                                                        t.max_seq_length, cache_dir)
        if test:
            for split in self.test_splits:
                data.tests[split] = tokenize_classification(raw[split], tokenizer, self, t.max_seq_length, cache_dir)
        return data

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class ids (arg-max of the logits), or the scores of a regression task."""
        logits = outputs["logits"]
        return logits[:, 0] if self.kind == "regression" else logits.argmax(-1)

    def split_metrics(self, data: TaskData, split: str, outputs: dict[str, np.ndarray], *,
                      max_answer_length: int = 30) -> dict[str, float]:
        labels = np.asarray(data.evals[split]["labels"])
        return glue_scores(self, self.predictions(outputs), labels)

    def write_predictions(self, split: str, idx: Any, outputs: dict[str, np.ndarray],
                          path: str | os.PathLike) -> None:
        write_glue_predictions(self, split, idx, self.predictions(outputs), path)


@dataclass(frozen=True)
class SyntheticTask(GlueTask):
    """The generated sentence-classification task (``data/synthetic.py``): no download, learnable
    in seconds; its test labels are known, so its "leaderboard" file can be checked."""

    disk_cache = False

    def load_raw(self, cfg: Any, splits: list[str]) -> Any:
        import datasets

        from bert_ticket_cli.data.synthetic import generate

        cols = generate(cfg.task.synthetic, cfg.seed)
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(cols[s]) for s in cols})
