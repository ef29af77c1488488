"""The static description of every supported task.

Everything that differs between GLUE tasks (and SQuAD) lives in one table here, so that the
loaders, the metrics and the engine branch on data instead of on task names.
"""

from __future__ import annotations

from dataclasses import dataclass

from bert_ticket_cli.errors import UserError


@dataclass(frozen=True)
class TaskInfo:
    """What the rest of the program needs to know about one task.

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

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split name this task knows, train first."""
        return ("train", *self.eval_splits, *self.test_splits)


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
) -> TaskInfo:
    return TaskInfo(
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

TASKS: dict[str, TaskInfo] = {
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
    "mnli": TaskInfo(
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
    "squad": TaskInfo(
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

# Spellings people use for the same task; after lower-casing and dropping "-" and "_".
_ALIASES = {"squad1": "squad", "squad11": "squad", "squadv1": "squad", "squadv11": "squad"}

# Names of an MNLI evaluation split, not of a task: say so instead of guessing.
_MNLI_SPLIT_NAMES = {"mnlim", "mnlimm", "mnlimatched", "mnlimismatched"}


def get_task(name: str) -> TaskInfo:
    """Look a task up by any common spelling ("SST-2", "sts_b", "MRPC", ...)."""
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
