"""Tokenization of GLUE examples, with an on-disk cache that survives new processes.

Pruning experiments fine-tune the same task many times (once per sparsity level and seed),
so tokenizing once and memory-mapping the result afterwards saves real time on large tasks.
The cache key is a hash of everything the output depends on: the input dataset fingerprint
(content-derived for local data, see common.py), the tokenizer's identity, the sequence length
and :data:`CODE_VERSION`.  Entries are written to a temporary folder and renamed into place,
so a crash or a concurrent run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, Features, List, Value

from bert_ticket_cli.data.common import TaskFacts
from bert_ticket_cli.errors import UserError

if TYPE_CHECKING:  # torch/transformers are imported lazily: they double the import time
    import torch

#: Bump whenever a change here changes the tokenized output for the same inputs.
CODE_VERSION = "tokenize-1"

#: The model inputs kept by the collator (``labels`` too); anything else (idx) is dropped.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of what decides a tokenizer's output.

    Hashing the tokenizer object itself is fragile: a fast tokenizer's backend keeps the
    truncation/padding settings of its last call, so its pickle (and hash) changes after use.
    We hash the class, the special tokens and the backend definition (vocabulary, normalizer,
    pre-tokenizer, post-processor) with that per-call state removed.
    """
    parts: dict[str, Any] = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "model_input_names": list(getattr(tokenizer, "model_input_names", [])),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        parts["backend"] = state
    else:
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
        parts["init_kwargs"] = {
            k: str(v)
            for k, v in sorted(getattr(tokenizer, "init_kwargs", {}).items())
            if k not in ("name_or_path", "vocab_file", "tokenizer_file")
        }
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_key(ds: Dataset, *parts: object) -> str:
    """The fingerprint of a derived dataset: input fingerprint + everything else it depends on."""
    blob = "\x1f".join([CODE_VERSION, str(ds._fingerprint), *(str(p) for p in parts)])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cached_map(
    ds: Dataset,
    function: Callable[[dict[str, list]], dict[str, list]],
    *,
    key: str,
    name: str,
    features: Features,
    cache_dir: str | os.PathLike | None,
    desc: str,
) -> Dataset:
    """A batched ``map`` whose result is stored under ``cache_dir/name-key`` and reused.

    We manage the cache ourselves instead of relying on ``map``'s own cache files because
    those live next to the input's arrow files, and in-memory inputs (local TSV data) have
    none, so ``map`` would never cache them.
    """

    def run() -> Dataset:
        return ds.map(
            function,
            batched=True,
            remove_columns=ds.column_names,
            features=features,
            keep_in_memory=True,
            new_fingerprint=key,
            load_from_cache_file=False,
            desc=desc,
        )

    if cache_dir is None:
        return run()
    root = Path(cache_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create cache folder {root}: {exc.strerror or exc}; set a writable cache_dir") from None
    target = root / f"{name}-{key}"
    if (target / "state.json").is_file():
        try:
            return _load_entry(target, key)
        except Exception:  # noqa: BLE001 - a damaged entry is rebuilt, not fatal
            shutil.rmtree(target, ignore_errors=True)
    result = run()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
    try:
        # mkdtemp makes the folder private (0700); a shared cache should follow the umask.
        os.chmod(tmp, 0o777 & ~_umask())
        result.save_to_disk(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "state.json").is_file():
                raise
            # Another process finished the same entry first; theirs is identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_entry(target, key)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _load_entry(target: Path, key: str) -> Dataset:
    loaded = datasets.load_from_disk(str(target))
    if not isinstance(loaded, Dataset):
        raise ValueError(f"{target} does not hold a single dataset")
    # load_from_disk re-derives the fingerprint through with_format; keep the cache key.
    return Dataset(loaded.data, info=loaded.info, split=loaded.split, fingerprint=key)


def token_features(tokenizer: Any, extra: dict[str, Any]) -> Features:
    """Token columns as int32 (half the disk of int64); the collator makes int64 tensors."""
    columns: dict[str, Any] = {
        name: List(Value("int32")) for name in MODEL_INPUTS if name in tokenizer.model_input_names
    }
    columns.update(extra)
    return Features(columns)


def tokenize_classification(
    ds: Dataset,
    tokenizer: Any,
    task: TaskFacts,
    max_seq_length: int,
    cache_dir: str | None = None,
) -> Dataset:
    """Tokenize a GLUE split (pairs as pairs), truncated but not padded: the collator pads."""
    if task.kind not in ("classification", "regression"):
        raise UserError(f"task {task.name} is not a GLUE classification/regression task")
    if max_seq_length < 4:
        raise UserError(f"max_seq_length={max_seq_length} is too small; use at least 4 (BERT uses 128)")
    needed = [*task.text_fields, "label", "idx"]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise UserError(
            f"dataset for task {task.name} lacks column(s) {', '.join(missing)}; "
            f"found {', '.join(ds.column_names)}"
        )
    token_names = [n for n in MODEL_INPUTS if n in tokenizer.model_input_names]
    label_type = Value("float32") if task.kind == "regression" else Value("int64")
    features = token_features(tokenizer, {"labels": label_type, "idx": Value("int64")})
    text_fields = task.text_fields

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(*(batch[f] for f in text_fields), truncation=True, max_length=max_seq_length)
        out = {name: encoded[name] for name in token_names}
        out["labels"] = batch["label"]
        out["idx"] = batch["idx"]
        return out

    key = cache_key(ds, "classification", task.name, tokenizer_fingerprint(tokenizer), max_seq_length)
    return cached_map(
        ds,
        encode,
        key=key,
        name=f"{task.name}-tok",
        features=features,
        cache_dir=cache_dir,
        desc=f"Tokenizing {task.name}",
    )


class ClassificationCollator:
    """Pads a batch to its longest sequence; a class (not a closure) so DataLoader workers can pickle it."""

    def __init__(self, tokenizer: Any):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = (*MODEL_INPUTS, "labels")
        batch = self.pad([{k: v for k, v in row.items() if k in keep} for row in rows])
        return dict(batch)


def collate_classification(tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """The collate_fn for tokenize_classification output: dynamic padding, idx dropped."""
    return ClassificationCollator(tokenizer)
