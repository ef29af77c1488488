"""From a task config to tokenized train / dev / test sets, ready for the engine.

The GLUE and SQuAD readers (``glue.py``, ``squad.py``), the generated task
(``synthetic.py``), masked language modelling text (``mlm.py``) and tokenization
(``tokenize.py``) meet here, so a command asks for "the data of this task" in one call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.data.tasks import TaskInfo, get_task
from bert_ticket_cli.errors import UserError

SYNTHETIC = TaskInfo(
    name="synthetic",
    kind="classification",
    num_labels=2,
    text_fields=("sentence",),
    label_names=("negative", "positive"),
    eval_splits=("validation",),
    test_splits=("test",),
    metrics=("accuracy",),
    main_metric="accuracy",
    leaderboard_files=("SYNTHETIC.tsv",),
    hub_dataset="",
)

#: Masked language modelling over a text corpus (Chen et al. 2020, Sec. 4); data/mlm.py.
MLM = TaskInfo(
    name="mlm",
    kind="mlm",
    num_labels=0,
    text_fields=("text",),
    label_names=(),
    eval_splits=("validation",),
    test_splits=(),
    metrics=("mlm_loss", "mlm_accuracy", "perplexity"),
    main_metric="mlm_accuracy",
    leaderboard_files=(),
    hub_dataset="Salesforce/wikitext:wikitext-103-raw-v1",
)


def task_info(name: str) -> TaskInfo:
    key = name.lower()
    return SYNTHETIC if key == "synthetic" else MLM if key == "mlm" else get_task(name)


def default_cache_dir(cfg: RunConfig) -> str:
    if cfg.cache_dir:
        return str(Path(cfg.cache_dir).expanduser())
    base = os.environ.get("BERT_TICKET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bert_ticket"
    )
    return base


@dataclass
class TaskData:
    info: TaskInfo
    collate: Callable[[list[dict]], dict[str, Any]]
    train: Any = None
    #: split -> model-ready features; for SQuAD also the raw examples (for answer post-processing).
    evals: dict[str, Any] = field(default_factory=dict)
    eval_examples: dict[str, Any] = field(default_factory=dict)
    tests: dict[str, Any] = field(default_factory=dict)
    test_examples: dict[str, Any] = field(default_factory=dict)


def _raw(cfg: RunConfig, info: TaskInfo, splits: list[str]):
    if info.name == "synthetic":
        import datasets

        from bert_ticket_cli.data.synthetic import generate

        cols = generate(cfg.task.synthetic, cfg.seed)
        return datasets.DatasetDict({s: datasets.Dataset.from_dict(cols[s]) for s in cols})
    if info.kind == "mlm":
        from bert_ticket_cli.data.mlm import load_text

        return load_text(info, data_dir=cfg.task.data_dir, data_files=cfg.task.data_files,
                         hub_dataset=cfg.task.hub_dataset, splits=splits)
    from bert_ticket_cli.data.glue import load_raw

    return load_raw(
        info, data_dir=cfg.task.data_dir, data_files=cfg.task.data_files,
        hub_dataset=cfg.task.hub_dataset, splits=splits,
    )


def _limit(ds, n: int | None):
    return ds.select(range(min(n, len(ds)))) if n else ds


def load_task_data(cfg: RunConfig, tokenizer, *, train: bool, eval_splits: list[str] | None = None,
                   test: bool = False) -> TaskData:
    """Tokenized splits for ``cfg.task``; raises UserError for missing or empty data."""
    info = task_info(cfg.task.name)
    evals = list(eval_splits or info.eval_splits)
    unknown = [s for s in evals if s not in info.eval_splits and s not in info.test_splits and s != "train"]
    if unknown:
        raise UserError(f"task {info.name} has no split {unknown[0]!r}: choose from {', '.join(info.eval_splits)}")
    needed = (["train"] if train else []) + evals + (list(info.test_splits) if test else [])
    raw = _raw(cfg, info, needed)
    cache = None if info.name == "synthetic" else default_cache_dir(cfg)
    t = cfg.task
    for split in needed:
        if split not in raw:
            raise UserError(f"task {info.name}: split {split!r} not found in the data source")
        if len(raw[split]) == 0:
            raise UserError(f"task {info.name}: split {split!r} is empty: check the data source")

    if info.kind == "mlm":
        from bert_ticket_cli.data.mlm import build_mlm_data

        return build_mlm_data(cfg, info, raw, tokenizer, train=train, evals=evals, cache_dir=cache)
    if info.kind == "qa":
        from transformers import default_data_collator

        from bert_ticket_cli.data.squad import prepare_squad_eval, prepare_squad_train

        data = TaskData(info=info, collate=default_data_collator)
        if train:
            data.train = prepare_squad_train(_limit(raw["train"], t.max_train_samples), tokenizer,
                                             t.max_seq_length, t.doc_stride, cache)
        for split in evals:
            ex = _limit(raw[split], t.max_eval_samples)
            data.eval_examples[split] = ex
            data.evals[split] = prepare_squad_eval(ex, tokenizer, t.max_seq_length, t.doc_stride, cache)
        return data

    from bert_ticket_cli.data.tokenize import collate_classification, tokenize_classification

    data = TaskData(info=info, collate=collate_classification(tokenizer))
    if train:
        data.train = tokenize_classification(_limit(raw["train"], t.max_train_samples), tokenizer, info,
                                             t.max_seq_length, cache)
    for split in evals:
        data.evals[split] = tokenize_classification(_limit(raw[split], t.max_eval_samples), tokenizer, info,
                                                    t.max_seq_length, cache)
    if test:
        for split in info.test_splits:
            data.tests[split] = tokenize_classification(raw[split], tokenizer, info, t.max_seq_length, cache)
    return data
