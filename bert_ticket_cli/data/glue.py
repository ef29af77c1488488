"""Loading GLUE tasks into the ``nyu-mll/glue`` schema, and writing leaderboard files.

Three sources, in priority order: explicit ``data_files`` (one file per split), a local
``data_dir`` in the layout written by the official ``download_glue_data`` script, or the
Hugging Face hub.  Whatever the source, the result has the same columns as the hub dataset
(the task's text fields, ``label``, ``idx``), so nothing downstream cares where it came from.

Split selection: when ``splits`` is non-empty exactly those splits are read and returned
(a missing one is a :class:`UserError`); when it is empty every split that is present is read.

Local datasets get a fingerprint derived from the file *contents* (plus the task, the split
and a loader version), so the tokenization cache keyed on it survives new processes, copies
of the data folder and touched mtimes, and is invalidated when a file's bytes change.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from bert_ticket_cli.data.common import (
    check_splits,
    content_fingerprint,
    file_digest,
    folder_key,
    load_from_hub,
    make_dataset,
    one_line,
    TaskFacts,
    resolve_task_dir,
)
from bert_ticket_cli.errors import UserError

#: Bump when parsing changes in a way that changes the rows produced from the same files.
LOADER_VERSION = "glue-loader-1"

#: Folder names used by download_glue_data, per task.
GLUE_DIRS = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}

_MNLI_FILES = {
    "train": "train.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}
_DEFAULT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}

# Output column -> header name in the GLUE TSV files ("label" is absent from test files).
_HEADER_NAMES: dict[str, dict[str, str]] = {
    "cola": {"sentence": "sentence", "label": "label"},
    "sst2": {"sentence": "sentence", "label": "label"},
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    "qqp": {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    "qnli": {"question": "question", "sentence": "sentence", "label": "label"},
    "rte": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    "wnli": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
}
# Test files carry the id the leaderboard expects in one of these columns.
_INDEX_HEADERS = ("index", "id")
# CoLA train/dev have no header: source, label, original label, sentence.
_COLA_WIDTH, _COLA_LABEL_COL, _COLA_SENTENCE_COL = 4, 1, 3



# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_raw(
    task: TaskFacts,
    *,
    data_dir: str | None = None,
    data_files: dict[str, str] | None = None,
    hub_dataset: str | None = None,
    splits: Sequence[str] = (),
) -> DatasetDict:
    """Load a GLUE task's raw examples from data_files, else data_dir, else the hub."""
    if task.kind not in ("classification", "regression"):
        raise ValueError(f"task {task.name} is not a GLUE task: its task object has its own loader")
    check_splits(task, splits)
    if data_files:
        return _load_data_files(task, data_files, splits)
    if data_dir:
        return _load_glue_dir(task, data_dir, splits)
    return load_from_hub(task, hub_dataset or task.hub_dataset, splits)


def glue_features(task: TaskFacts) -> Features:
    """The hub schema, with ``idx`` widened to int64 (the hub stores int32)."""
    columns: dict[str, Any] = {field: Value("string") for field in task.text_fields}
    if task.kind == "classification":
        columns["label"] = ClassLabel(names=list(task.label_names))
    else:
        columns["label"] = Value("float32")
    columns["idx"] = Value("int64")
    return Features(columns)


def split_file_names(task: TaskFacts) -> dict[str, str]:
    """Split -> file name in the download_glue_data layout."""
    return dict(_MNLI_FILES) if task.name == "mnli" else dict(_DEFAULT_FILES)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def parse_label(task: TaskFacts, value: Any) -> int | float:
    """A label as written in a file -> class id (or score for stsb); ValueError if invalid."""
    if task.kind == "regression":
        if isinstance(value, bool):
            raise ValueError(f"expected a numeric similarity score, found {value!r}")
        try:
            score = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a numeric similarity score, found {value!r}") from None
        if not math.isfinite(score):
            raise ValueError(f"expected a finite similarity score, found {value!r}")
        return score
    names = task.label_names
    if isinstance(value, str):
        text = value.strip()
        if text in names:
            return names.index(text)
        if text.lstrip("-").isascii() and text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    expected = ", ".join(names) + f" (or a class id 0-{len(names) - 1})"
    raise ValueError(f"unknown label {value!r}; expected one of {expected}")


# --------------------------------------------------------------------------------------------
# GLUE TSV folders
# --------------------------------------------------------------------------------------------


def _load_glue_dir(task: TaskFacts, data_dir: str, splits: Sequence[str]) -> DatasetDict:
    files = split_file_names(task)
    folder_name = GLUE_DIRS[task.name]
    task_dir = resolve_task_dir(data_dir, folder_name, list(files.values()))
    layout = "/".join(files.values())
    # Every GLUE folder has a train.tsv: catch e.g. task cola pointed at the SST-2 folder.
    other = next(
        (d for name, d in GLUE_DIRS.items() if name != task.name and folder_key(d) == folder_key(task_dir.name)),
        None,
    )
    if other is not None:
        raise UserError(
            f"data_dir {task_dir} is the GLUE {other} folder, not {folder_name}; point task.data_dir "
            f"at the {folder_name} folder or at the GLUE root that holds it"
        )
    if splits:
        wanted = list(splits)
        for split in wanted:
            if not (task_dir / files[split]).is_file():
                raise UserError(
                    f"no {files[split]} in {task_dir} (needed for split {split!r}); "
                    f"expected the GLUE layout {layout}"
                )
    else:
        wanted = [s for s in task.splits if (task_dir / files[s]).is_file()]
        if not wanted:
            raise UserError(
                f"no GLUE {folder_name} files in {task_dir}; expected the GLUE layout {layout} "
                f"there or in a {folder_name}/ subfolder"
            )
    return DatasetDict({s: read_glue_tsv(task, s, task_dir / files[s]) for s in wanted})


def read_glue_tsv(task: TaskFacts, split: str, path: Path) -> Dataset:
    """Parse one GLUE TSV file, strictly: every row must have the header's column count."""
    columns = _parse_glue_tsv(task, split, path)
    fingerprint = content_fingerprint(LOADER_VERSION, "tsv", task.name, split, file_digest(path))
    return make_dataset(columns, glue_features(task), split, fingerprint)


def _parse_glue_tsv(task: TaskFacts, split: str, path: Path) -> dict[str, list]:
    is_test = split in task.test_splits
    hint = f"is this the GLUE {GLUE_DIRS[task.name]} layout?"
    out: dict[str, list] = {field: [] for field in (*task.text_fields, "label", "idx")}
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            first = next(reader, None)
            while first == []:  # leading blank lines
                first = next(reader, None)
            if first is None:
                raise UserError(f"{path} line 1: the file is empty; expected a GLUE TSV file ({hint})")
            positions, index_col, width, pending = _locate_columns(task, is_test, path, first, hint)
            rows: Iterator[list[str]] = reader
            if pending is not None:
                rows = _prepend(pending, reader)
            label_col = positions.get("label")
            for row in rows:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise UserError(
                        f"{path} line {line}: expected {width} tab-separated columns, "
                        f"found {len(row)}; {hint}"
                    )
                for field in task.text_fields:
                    out[field].append(row[positions[field]])
                if label_col is None:
                    out["label"].append(-1)
                else:
                    try:
                        out["label"].append(parse_label(task, row[label_col]))
                    except ValueError as exc:
                        raise UserError(f"{path} line {line}: {exc}") from None
                if index_col is None:
                    out["idx"].append(len(out["idx"]))
                else:
                    try:
                        out["idx"].append(int(row[index_col]))
                    except ValueError:
                        raise UserError(
                            f"{path} line {line}: expected an integer index, "
                            f"found {row[index_col]!r}; {hint}"
                        ) from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable TSV file ({one_line(exc)}); {hint}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({one_line(exc)}); {hint}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {one_line(exc)}") from None
    if not out["idx"]:
        raise UserError(f"{path} line 2: no data rows after the header; {hint}")
    return out


def _prepend(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _locate_columns(
    task: TaskFacts, is_test: bool, path: Path, first: list[str], hint: str
) -> tuple[dict[str, int], int | None, int, list[str] | None]:
    """Column positions from the header (or CoLA's fixed layout when there is none).

    Returns (field -> position, index column, row width, first data row if the file has no
    header).
    """
    header = [name.strip() for name in first]
    if task.name == "cola" and "sentence" not in header:
        # Headerless CoLA train/dev; the first line is already a data row.
        return (
            {"sentence": _COLA_SENTENCE_COL, "label": _COLA_LABEL_COL},
            None,
            _COLA_WIDTH,
            first,
        )
    names = _HEADER_NAMES[task.name]
    positions: dict[str, int] = {}
    missing: list[str] = []
    for field, name in names.items():
        if name in header:
            # MNLI repeats no names, but take the last occurrence to be safe: gold_label is last.
            positions[field] = len(header) - 1 - header[::-1].index(name)
        elif field != "label" or not is_test:
            missing.append(name)
    if missing:
        found = ", ".join(header) if any(header) else "nothing"
        raise UserError(
            f"{path} line 1: header has no {', '.join(repr(m) for m in missing)} column; "
            f"found {found}; {hint}"
        )
    index_col = None
    if is_test:
        index_col = next((header.index(h) for h in _INDEX_HEADERS if h in header), None)
    return positions, index_col, len(header), None


# --------------------------------------------------------------------------------------------
# data_files: one CSV/TSV/JSON(L) file per split
# --------------------------------------------------------------------------------------------


def _load_data_files(task: TaskFacts, data_files: Mapping[str, str], splits: Sequence[str]) -> DatasetDict:
    check_splits(task, list(data_files))
    wanted = list(splits) or list(data_files)
    out = DatasetDict()
    for split in wanted:
        if split not in data_files:
            raise UserError(
                f"no data file for split {split!r} in task.data_files (it has "
                f"{', '.join(data_files) or 'none'}); add {split}=PATH"
            )
        out[split] = _read_data_file(task, split, Path(data_files[split]).expanduser())
    return out


def _read_data_file(task: TaskFacts, split: str, path: Path) -> Dataset:
    if not path.is_file():
        raise UserError(f"data file {path} for split {split!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".tsv" and not _has_hub_header(task, path):
        return read_glue_tsv(task, split, path)  # an official GLUE file
    if suffix in (".csv", ".tsv"):
        raw = _read_with_builder("csv", path, split)
    elif suffix in (".json", ".jsonl"):
        raw = _read_with_builder("json", path, split)
    else:
        raise UserError(f"data file {path}: unsupported extension {suffix!r}; use .csv, .tsv, .json or .jsonl")
    columns = _columns_from_table(task, split, path, raw)
    fingerprint = content_fingerprint(LOADER_VERSION, "table", task.name, split, suffix, file_digest(path))
    return make_dataset(columns, glue_features(task), split, fingerprint)


def _first_line_fields(path: Path, delimiter: str, quoting: int) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return [c.strip() for c in next(csv.reader(fh, delimiter=delimiter, quoting=quoting), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {one_line(exc)}") from None


def _has_hub_header(task: TaskFacts, path: Path) -> bool:
    """A .tsv with the hub's column names is a plain table; otherwise it is a GLUE file."""
    header = _first_line_fields(path, "\t", csv.QUOTE_NONE)
    return all(field in header for field in task.text_fields)


def _read_with_builder(builder: str, path: Path, split: str) -> Dataset:
    """Read with the datasets csv/json builder, in memory, without touching the HF cache."""
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        is_tsv = path.suffix.lower() == ".tsv"
        delimiter = "\t" if is_tsv else ","
        quoting = csv.QUOTE_NONE if is_tsv else csv.QUOTE_MINIMAL
        header = _first_line_fields(path, delimiter, quoting)
        if not any(header):
            raise UserError(f"{path} line 1: the file is empty; expected a header row naming the columns")
        # Everything as text: pandas would otherwise turn "007" into 7 and "NA" into NaN.
        kwargs = {
            "delimiter": delimiter,
            "quoting": quoting,
            "features": Features({name: Value("string") for name in header}),
            "na_filter": False,
            "encoding": "utf-8-sig",
        }
    with tempfile.TemporaryDirectory(prefix="bert-ticket-data-") as tmp:
        try:
            loaded = datasets.load_dataset(
                builder, data_files={split: str(path)}, cache_dir=tmp, keep_in_memory=True, **kwargs
            )
        except Exception as exc:  # noqa: BLE001 - malformed user file
            raise UserError(f"cannot read {path} as {builder.upper()}: {one_line(exc)}") from None
        return loaded[split]


def _columns_from_table(task: TaskFacts, split: str, path: Path, table: Dataset) -> dict[str, list]:
    is_test = split in task.test_splits
    required = list(task.text_fields) + ([] if is_test else ["label"])
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.column_names) or 'none'}; "
            f"task {task.name} needs {', '.join(required)}"
        )
    if len(table) == 0:
        raise UserError(f"{path}: no data rows; expected at least one example")
    data = table.to_dict()
    out: dict[str, list] = {}
    for field in task.text_fields:
        values = []
        for row, value in enumerate(data[field], start=1):
            if value is None or isinstance(value, (dict, list)):
                raise UserError(f"{path} row {row}: column {field!r} must be text, found {value!r}")
            values.append(str(value))
        out[field] = values
    if "label" in data:
        labels = []
        for row, value in enumerate(data["label"], start=1):
            if is_test and (value is None or value == "" or value == -1 or value == "-1"):
                labels.append(-1)
                continue
            try:
                labels.append(parse_label(task, value))
            except ValueError as exc:
                raise UserError(f"{path} row {row}: {exc}") from None
        out["label"] = labels
    else:
        out["label"] = [-1] * len(table)
    if "idx" in data:
        try:
            out["idx"] = [int(v) for v in data["idx"]]
        except (TypeError, ValueError):
            raise UserError(f"{path}: column 'idx' must hold integers") from None
    else:
        out["idx"] = list(range(len(table)))
    return out


# --------------------------------------------------------------------------------------------
# Leaderboard files
# --------------------------------------------------------------------------------------------


def leaderboard_file(task: TaskFacts, split: str) -> str:
    """The GLUE submission file name for one test split (e.g. MNLI-mm.tsv)."""
    if split not in task.test_splits:
        raise UserError(
            f"task {task.name} has no leaderboard file for split {split!r}; "
            f"its test splits are {', '.join(task.test_splits) or 'none'}"
        )
    return task.leaderboard_files[task.test_splits.index(split)]


def write_glue_predictions(
    task: TaskFacts,
    split: str,
    idx: Sequence[int],
    predictions: np.ndarray,
    path: str | os.PathLike,
) -> None:
    """Write a GLUE leaderboard TSV atomically, so a crash never leaves a truncated file.

    ``predictions`` are class ids, or logits of shape (n, num_labels) which are arg-maxed;
    for stsb they are scores (shape (n,) or (n, 1)), clipped to the scale [0, 5].
    """
    if task.kind == "qa":
        raise UserError(f"task {task.name} has no GLUE leaderboard format")
    if split not in task.splits:
        raise UserError(f"task {task.name} has no split {split!r}; its splits are {', '.join(task.splits)}")
    ids = np.asarray(idx, dtype=np.int64).reshape(-1)
    preds = np.asarray(predictions)
    if task.kind == "classification" and preds.ndim == 2 and preds.shape[1] == task.num_labels:
        preds = preds.argmax(axis=1)
    elif preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim != 1 or len(preds) != len(ids):
        raise ValueError(f"got {len(ids)} idx values but predictions of shape {np.shape(predictions)}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("idx values must be unique")
    order = np.argsort(ids, kind="stable")
    lines = ["index\tprediction"]
    if task.kind == "regression":
        scores = preds.astype(np.float64)
        if not np.all(np.isfinite(scores)):
            raise ValueError("stsb predictions contain NaN or infinity")
        lines += [f"{ids[i]}\t{min(max(scores[i], 0.0), 5.0):.3f}" for i in order]
    else:
        classes = preds.astype(np.int64)
        if np.any(preds != classes) or np.any(classes < 0) or np.any(classes >= task.num_labels):
            raise ValueError(f"{task.name} predictions must be class ids in [0, {task.num_labels})")
        # The leaderboard wants label names for the NLI tasks and 0/1 for the binary ones.
        as_names = task.name in ("mnli", "qnli", "rte")
        lines += [
            f"{ids[i]}\t{task.label_names[classes[i]] if as_names else int(classes[i])}" for i in order
        ]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
