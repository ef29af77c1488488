"""Every task, in one table, and the calls that look tasks up or load their data.

A new task of a kind that exists (one more GLUE task) is one entry in :data:`TASKS`; a new kind
is one ``Task`` subclass (its own file in ``tasks/``) plus its entry here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.metrics.glue import glue_scores
from bert_ticket_cli.tasks.base import Task, TaskData
from bert_ticket_cli.tasks.glue import GlueTask, SyntheticTask
from bert_ticket_cli.tasks.mlm import MlmTask
from bert_ticket_cli.tasks.squad import SquadTask

_GLUE_HUB = "nyu-mll/glue"
_ACC = ("accuracy",)
_ACC_F1 = ("accuracy", "f1", "accuracy_and_f1")


def _glue(
    name: str,
    text_fields: tuple[str, ...],
    label_names: tuple[str, ...],
    metrics: tuple[str, ...],
    main_metric: str,
    leaderboard_file: str,
) -> GlueTask:
    return GlueTask(
        name=name,
        kind="classification" if label_names else "regression",
        num_labels=len(label_names) if label_names else 1,
        text_fields=text_fields,
        label_names=label_names,
        eval_splits=("validation",),
        test_splits=("test",),
        metrics=metrics,
        main_metric=main_metric,
        leaderboard_files=(leaderboard_file,),
        hub_dataset=_GLUE_HUB,
    )


_PAIR = ("sentence1", "sentence2")
_NLI2 = ("entailment", "not_entailment")

#: The benchmark tasks (GLUE and SQuAD), by canonical name: what :func:`get_task` finds.
TASKS: dict[str, Task] = {
    "cola": _glue(
        "cola", ("sentence",), ("unacceptable", "acceptable"),
        ("matthews_correlation",), "matthews_correlation", "CoLA.tsv",
    ),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), _ACC, "accuracy", "SST-2.tsv"),
    "mrpc": _glue("mrpc", _PAIR, ("not_equivalent", "equivalent"), _ACC_F1, "f1", "MRPC.tsv"),
    "stsb": _glue(
        "stsb", _PAIR, (), ("pearson", "spearmanr", "combined_score"), "pearson", "STS-B.tsv"
    ),
    "qqp": _glue(
        "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), _ACC_F1, "f1", "QQP.tsv"
    ),
    "mnli": GlueTask(
        name="mnli",
        kind="classification",
        num_labels=3,
        text_fields=("premise", "hypothesis"),
        label_names=("entailment", "neutral", "contradiction"),
        eval_splits=("validation_matched", "validation_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
        metrics=_ACC,
        main_metric="accuracy",
        leaderboard_files=("MNLI-m.tsv", "MNLI-mm.tsv"),
        hub_dataset=_GLUE_HUB,
    ),
    "qnli": _glue("qnli", ("question", "sentence"), _NLI2, _ACC, "accuracy", "QNLI.tsv"),
    "rte": _glue("rte", _PAIR, _NLI2, _ACC, "accuracy", "RTE.tsv"),
    # WNLI's hub ids are the reverse of RTE's: 1 means entailment.
    "wnli": _glue("wnli", _PAIR, ("not_entailment", "entailment"), _ACC, "accuracy", "WNLI.tsv"),
    "squad": SquadTask(
        name="squad",
        kind="qa",
        num_labels=0,
        text_fields=("question", "context"),
        label_names=(),
        eval_splits=("validation",),
        test_splits=(),
        metrics=("exact_match", "f1"),
        main_metric="f1",
        leaderboard_files=(),
        hub_dataset="rajpurkar/squad",
    ),
}

#: The generated task (demo, tests): looked up by :func:`task_info` only.
SYNTHETIC = SyntheticTask(
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
MLM = MlmTask(
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

#: Tasks that are not benchmark tasks, by the name ``task=`` gives them.
_OTHER_TASKS: dict[str, Task] = {"synthetic": SYNTHETIC, "mlm": MLM}

# Spellings people use for the same task; after lower-casing and dropping "-" and "_".
_ALIASES = {"squad1": "squad", "squad11": "squad", "squadv1": "squad", "squadv11": "squad"}

# Names of an MNLI evaluation split, not of a task: say so instead of guessing.
_MNLI_SPLIT_NAMES = {"mnlim", "mnlimm", "mnlimatched", "mnlimismatched"}


def get_task(name: str) -> Task:
    """Look a benchmark task up by any common spelling ("SST-2", "sts_b", "MRPC", ...)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(".", "")
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    known = ", ".join(TASKS)
    if key in _MNLI_SPLIT_NAMES:
        raise UserError(
            f"unknown task {name!r}: matched/mismatched are MNLI evaluation splits; use task "
            f"'mnli', which evaluates both (known tasks: {known})"
        )
    raise UserError(f"unknown task {name!r}; known tasks: {known}")


def task_info(name: str) -> Task:
    """The task ``task.name`` names: a benchmark task, ``synthetic`` or ``mlm``."""
    return _OTHER_TASKS.get(name.lower()) or get_task(name)


def glue_metrics(task_name: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics of the task called ``task_name`` (see ``metrics.glue.glue_scores``)."""
    task = get_task(task_name)
    if task.kind == "qa":
        raise ValueError("use squad_metrics for SQuAD")
    return glue_scores(task, predictions, labels)


def load_task_data(cfg: Any, tokenizer: Any, *, train: bool, eval_splits: list[str] | None = None,
                   test: bool = False) -> TaskData:
    """Tokenized splits for ``cfg.task``; raises UserError for missing or empty data."""
    info = task_info(cfg.task.name)
    evals = list(eval_splits or info.eval_splits)
    unknown = [s for s in evals if s not in info.eval_splits and s not in info.test_splits and s != "train"]
    if unknown:
        raise UserError(f"task {info.name} has no split {unknown[0]!r}: choose from {', '.join(info.eval_splits)}")
    needed = (["train"] if train else []) + evals + (list(info.test_splits) if test else [])
    raw = info.load_raw(cfg, needed)
    for split in needed:
        if split not in raw:
            raise UserError(f"task {info.name}: split {split!r} not found in the data source")
        if len(raw[split]) == 0:
            raise UserError(f"task {info.name}: split {split!r} is empty: check the data source")
    return info.tokenized(cfg, raw, tokenizer, train=train, evals=evals, test=test, cache_dir=info.cache_dir(cfg))
