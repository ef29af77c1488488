"""SQuAD v1.1: loading, sliding-window features, and turning logits back into answer text.

Contexts longer than ``max_seq_length`` are split into overlapping windows; ``doc_stride``
is the number of tokens two neighbouring windows share (the Hugging Face tokenizer's
``stride``), so every answer lies wholly inside at least one window when it is shorter than
``doc_stride``.  Evaluation features keep each token's character offsets into the context
(``None`` for question, special and padding tokens), which is what lets
:func:`postprocess_squad` cut the answer out of the original text.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value

from bert_ticket_cli.data.common import (
    TaskFacts,
    check_splits,
    content_fingerprint,
    file_digest,
    load_from_hub,
    make_dataset,
    one_line,
    resolve_task_dir,
)
from bert_ticket_cli.data.tokenize import cache_key, cached_map, token_features, tokenizer_fingerprint
from bert_ticket_cli.errors import UserError

#: Bump when parsing changes the rows produced from the same file.
LOADER_VERSION = "squad-loader-1"

SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}

SQUAD_FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
    }
)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_squad_raw(
    task: TaskFacts,
    *,
    data_dir: str | None = None,
    data_files: dict[str, str] | None = None,
    hub_dataset: str | None = None,
    splits: Sequence[str] = (),
) -> DatasetDict:
    """SQuAD in the hub schema from official JSON files, else a folder of them, else the hub
    (the same source order and split selection as glue.load_raw)."""
    check_splits(task, splits)
    if data_files:
        wanted = list(splits) or list(data_files)
        check_splits(task, list(data_files))
        out = DatasetDict()
        for split in wanted:
            if split not in data_files:
                raise UserError(
                    f"no data file for split {split!r} in task.data_files (it has "
                    f"{', '.join(data_files)}); add {split}=PATH"
                )
            path = Path(data_files[split]).expanduser()
            if not path.is_file():
                raise UserError(f"data file {path} for split {split!r} does not exist")
            out[split] = read_squad_json(path, split)
        return out
    if data_dir:
        folder = resolve_task_dir(data_dir, "squad", list(SQUAD_FILES.values()))
        layout = "/".join(SQUAD_FILES.values())
        wanted = list(splits) or [s for s, name in SQUAD_FILES.items() if (folder / name).is_file()]
        if not wanted:
            v2 = " (SQuAD v2.0 files are not supported)" if any(folder.glob("*v2.0*.json")) else ""
            raise UserError(f"no SQuAD v1.1 files in {folder}{v2}; expected {layout}")
        for split in wanted:
            if not (folder / SQUAD_FILES[split]).is_file():
                raise UserError(
                    f"no {SQUAD_FILES[split]} in {folder} (needed for split {split!r}); "
                    f"expected the SQuAD v1.1 layout {layout}"
                )
        return DatasetDict({s: read_squad_json(folder / SQUAD_FILES[s], s) for s in wanted})
    return load_from_hub(task, hub_dataset or task.hub_dataset, splits)


def read_squad_json(path: Path, split: str) -> Dataset:
    """Flatten the official nested file (data -> paragraphs -> qas) into one row per question."""
    hint = "expected the official SQuAD v1.1 JSON (data -> paragraphs -> qas)"
    try:
        with open(path, encoding="utf-8-sig") as fh:
            document = json.load(fh)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {one_line(exc)}") from None
    columns: dict[str, list] = {name: [] for name in SQUAD_FEATURES}
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise UserError(f"{path}: no top-level 'data' list; {hint}")
    seen: set[str] = set()
    for a, article in enumerate(articles):
        where = f"data[{a}]"
        title = _field(path, where, article, "title", str, hint, default="")
        for p, paragraph in enumerate(_field(path, where, article, "paragraphs", list, hint)):
            pwhere = f"{where}.paragraphs[{p}]"
            context = _field(path, pwhere, paragraph, "context", str, hint)
            for q, qa in enumerate(_field(path, pwhere, paragraph, "qas", list, hint)):
                qwhere = f"{pwhere}.qas[{q}]"
                if isinstance(qa, dict) and qa.get("is_impossible"):
                    raise UserError(f"{path} {qwhere}: unanswerable question; SQuAD v2.0 is not supported, use v1.1")
                qid = str(_field(path, qwhere, qa, "id", (str, int), hint))
                if qid in seen:
                    raise UserError(f"{path} {qwhere}: duplicate question id {qid!r}; ids must be unique")
                seen.add(qid)
                texts, starts = [], []
                for n, answer in enumerate(_field(path, qwhere, qa, "answers", list, hint)):
                    awhere = f"{qwhere}.answers[{n}]"
                    texts.append(_field(path, awhere, answer, "text", str, hint))
                    start = _field(path, awhere, answer, "answer_start", int, hint)
                    if isinstance(start, bool) or not 0 <= start <= len(context):
                        raise UserError(f"{path} {awhere}: answer_start {start!r} is outside the context")
                    starts.append(start)
                columns["id"].append(qid)
                columns["title"].append(title)
                columns["context"].append(context)
                columns["question"].append(_field(path, qwhere, qa, "question", str, hint))
                columns["answers"].append({"text": texts, "answer_start": starts})
    if not columns["id"]:
        raise UserError(f"{path}: no questions found; {hint}")
    fingerprint = content_fingerprint(LOADER_VERSION, split, file_digest(path))
    return make_dataset(columns, SQUAD_FEATURES, split, fingerprint)


def _field(path: Path, where: str, obj: Any, key: str, kind: Any, hint: str, default: Any = None) -> Any:
    """obj[key] checked for type, or a UserError that says where in the JSON it went wrong."""
    if not isinstance(obj, dict):
        raise UserError(f"{path} {where}: expected an object, found {type(obj).__name__}; {hint}")
    if key not in obj:
        if default is not None:
            return default
        raise UserError(f"{path} {where}: missing {key!r}; {hint}")
    value = obj[key]
    if not isinstance(value, kind):
        raise UserError(f"{path} {where}.{key}: unexpected {type(value).__name__}; {hint}")
    return value


def squad_references(examples: Dataset) -> dict[str, list[str]]:
    """Example id -> gold answer texts, the ``references`` argument of squad_metrics."""
    plain = examples.with_format(None)
    return {qid: list(ans["text"]) for qid, ans in zip(plain["id"][:], plain["answers"][:])}


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _check_inputs(ds: Dataset, tokenizer: Any, max_seq_length: int, doc_stride: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"SQuAD needs a fast tokenizer (character offsets), got {type(tokenizer).__name__}; "
            "use a model whose tokenizer has a tokenizer.json or a fast equivalent"
        )
    if max_seq_length < 16:
        raise UserError(f"max_seq_length={max_seq_length} is too small for SQuAD; use at least 16 (BERT uses 384)")
    if not 0 <= doc_stride < max_seq_length:
        raise UserError(
            f"doc_stride={doc_stride} must be at least 0 and below max_seq_length={max_seq_length} "
            "(it is the overlap between windows; BERT uses 128 with 384)"
        )
    missing = [c for c in ("id", "question", "context", "answers") if c not in ds.column_names]
    if missing:
        raise UserError(f"SQuAD dataset lacks column(s) {', '.join(missing)}; found {', '.join(ds.column_names)}")


def _windows(tokenizer: Any, batch: dict[str, list], max_seq_length: int, doc_stride: int) -> Any:
    """Question + overlapping context windows, padded to max_seq_length."""
    # Some SQuAD questions start with long runs of spaces that only waste window room.
    questions = [q.lstrip() for q in batch["question"]]
    # The Rust tokenizer panics (an uncatchable-looking BaseException plus a backtrace on
    # stderr) when the stride does not fit next to the question, so check that first.
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    question_ids = tokenizer(questions, add_special_tokens=False)["input_ids"]
    for qid, ids in zip(batch["id"], question_ids):
        room = max_seq_length - specials - len(ids)
        if room <= doc_stride:
            raise UserError(
                f"SQuAD question {qid!r} takes {len(ids)} tokens, leaving {max(room, 0)} of "
                f"max_seq_length={max_seq_length} for the context, not more than doc_stride={doc_stride}; "
                "use a larger max_seq_length or a smaller doc_stride"
            )
    try:
        return tokenizer(
            questions,
            batch["context"],
            truncation="only_second",
            max_length=max_seq_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length",
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - also pyo3 panics; all are about these limits
        raise UserError(
            f"cannot split SQuAD examples into windows of max_seq_length={max_seq_length} with "
            f"doc_stride={doc_stride} ({one_line(exc)}); use a larger max_seq_length or a smaller doc_stride"
        ) from None


def _answer_tokens(
    offsets: Sequence[Sequence[int]], sequence_ids: Sequence[int | None], answers: dict
) -> tuple[int, int]:
    """Token span of the first gold answer in this window, or (0, 0) (CLS) when it is not inside."""
    if not answers["text"]:
        return 0, 0
    start_char = int(answers["answer_start"][0])
    end_char = start_char + len(answers["text"][0])
    context = [i for i, sid in enumerate(sequence_ids) if sid == 1]
    if not context:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start < last and offsets[start + 1][0] <= start_char:
        start += 1
    end = last
    while end > start and offsets[end - 1][1] >= end_char:
        end -= 1
    return start, end


def prepare_squad_train(
    ds: Dataset,
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    cache_dir: str | None = None,
) -> Dataset:
    """Training features: one row per window, labelled with the answer's token span."""
    _check_inputs(ds, tokenizer, max_seq_length, doc_stride)
    features = token_features(tokenizer, {"start_positions": Value("int64"), "end_positions": Value("int64")})
    token_names = [n for n in features if n not in ("start_positions", "end_positions")]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = _windows(tokenizer, batch, max_seq_length, doc_stride)
        sample_map = encoded["overflow_to_sample_mapping"]
        out: dict[str, list] = {name: encoded[name] for name in token_names}
        out["start_positions"], out["end_positions"] = [], []
        for i, offsets in enumerate(encoded["offset_mapping"]):
            start, end = _answer_tokens(offsets, encoded.sequence_ids(i), batch["answers"][sample_map[i]])
            out["start_positions"].append(start)
            out["end_positions"].append(end)
        return out

    key = cache_key(ds, "squad-train", tokenizer_fingerprint(tokenizer), max_seq_length, doc_stride)
    return cached_map(
        ds, encode, key=key, name="squad-train", features=features, cache_dir=cache_dir,
        desc="SQuAD train features",
    )


def prepare_squad_eval(
    ds: Dataset,
    tokenizer: Any,
    max_seq_length: int,
    doc_stride: int,
    cache_dir: str | None = None,
) -> Dataset:
    """Evaluation features; drop ``example_id`` and ``offset_mapping`` before batching them."""
    _check_inputs(ds, tokenizer, max_seq_length, doc_stride)
    features = token_features(
        tokenizer, {"example_id": Value("string"), "offset_mapping": List(List(Value("int32")))}
    )
    token_names = [n for n in features if n not in ("example_id", "offset_mapping")]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = _windows(tokenizer, batch, max_seq_length, doc_stride)
        sample_map = encoded["overflow_to_sample_mapping"]
        out: dict[str, list] = {name: encoded[name] for name in token_names}
        out["example_id"] = [str(batch["id"][s]) for s in sample_map]
        out["offset_mapping"] = [
            [list(span) if sid == 1 else None for span, sid in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return out

    key = cache_key(ds, "squad-eval", tokenizer_fingerprint(tokenizer), max_seq_length, doc_stride)
    return cached_map(
        ds, encode, key=key, name="squad-eval", features=features, cache_dir=cache_dir,
        desc="SQuAD eval features",
    )


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------


def postprocess_squad(
    examples: Dataset,
    features: Dataset,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Example id -> answer text: the best-scoring valid span over all of the example's windows.

    A span scores start_logit + end_logit; only the ``n_best`` highest start and end logits of
    each window are paired, which is the usual cut that keeps this linear in the window size.
    An example with no valid span gets the empty answer.
    """
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
        raise ValueError(
            f"start/end logits must have the same 2-D shape, got {start_logits.shape} and {end_logits.shape}"
        )
    if start_logits.shape[0] != len(features):
        raise ValueError(f"got logits for {start_logits.shape[0]} features but there are {len(features)}")
    # Whole columns as lists ([:]): row-by-row access to a Dataset column is much slower.
    plain_examples = examples.with_format(None)
    plain_features = features.with_format(None)
    windows: dict[str, list[int]] = defaultdict(list)
    for row, example_id in enumerate(plain_features["example_id"][:]):
        windows[example_id].append(row)
    all_offsets = plain_features["offset_mapping"][:]

    answers: dict[str, str] = {}
    for example_id, context in zip(plain_examples["id"][:], plain_examples["context"][:]):
        best_score, best_span = -np.inf, None
        for row in windows.get(str(example_id), []):
            offsets = all_offsets[row]
            width = min(len(offsets), start_logits.shape[1])
            starts, ends = start_logits[row, :width], end_logits[row, :width]
            top_starts = np.argsort(-starts, kind="stable")[:n_best]
            top_ends = np.argsort(-ends, kind="stable")[:n_best]
            for s in top_starts:
                if offsets[s] is None:
                    continue
                for e in top_ends:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = starts[s] + ends[e]
                    if score > best_score:
                        best_score, best_span = score, (offsets[s][0], offsets[e][1])
        answers[str(example_id)] = context[best_span[0] : best_span[1]] if best_span else ""
    return answers


__all__ = [
    "SQUAD_FEATURES",
    "load_squad_raw",
    "postprocess_squad",
    "prepare_squad_eval",
    "prepare_squad_train",
    "read_squad_json",
    "squad_references",
]
