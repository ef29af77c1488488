"""Masked language modelling over a text corpus (Chen et al. 2020, Sec. 4: tickets found on MLM).

Three parts, in the order data flows through them:

1. **Text loading** (:func:`load_text`): ``task.data_files`` ({train: a.txt, validation: b.txt}),
   else ``task.data_dir`` (``train.txt`` and ``valid.txt`` / ``validation.txt`` / ``dev.txt``, or
   ``.jsonl``, or WikiText's ``wiki.train.raw``), else a hub dataset (``task.hub_dataset=NAME`` or
   ``NAME:CONFIG``; default WikiText-103).  A ``.txt`` file holds one document per blank-line
   separated block when it has blank lines, else one example per line; a ``.jsonl`` file holds
   one object with a ``text`` field per line.  Every source yields one ``text`` column.
2. **Packing** (:func:`pack_blocks`): the documents of a split are tokenized without special
   tokens, concatenated with ``[SEP]`` between documents, and cut into blocks of
   ``max_seq_length - 2`` tokens, each wrapped as ``[CLS] ... [SEP]``, so every block has
   exactly ``max_seq_length`` tokens.  Packing runs in map batches of 1000 documents; the
   tokens left over at the end of such a batch (less than one block) are dropped, as Hugging
   Face's ``run_mlm`` does, unless the batch made no full block at all (a tiny corpus: then
   that one shorter block is kept, and the collator pads).  The result is cached on disk like
   every tokenized split (``tokenize.cached_map``), and gets an ``idx`` column: the block's
   position.
3. **Masking** (:class:`Masker`, :class:`MlmCollator`): BERT's recipe.  ``round(p * length)``
   tokens of a block (at least one; p = ``task.mlm_probability``, 0.15; an exact count as in
   BERT's ``create_pretraining_data``) are selected among its non-special tokens; of those 80%
   become ``[MASK]``, 10% a random non-special token and 10% stay.  Labels are the original ids
   at the selected positions and -100 elsewhere.  As every block has the same length, every
   block has the same number of labels, so the model's token-mean loss of a micro-batch is
   the same whether a step's batch is split over 1 or N processes or accumulated.

Determinism.  The masks of a block are a pure function of ``(seed, epoch, idx)``: a fresh
``torch.Generator`` seeded from a SHA-256 of those three numbers, never the global RNG.  So a
resumed run, 1 or N processes and any DataLoader worker count see the same masks; the masks do
not depend on which batch a block lands in.  ``epoch`` is 0 unless the training loop calls
:meth:`MlmCollator.set_epoch` (static masking: each block keeps its masks across epochs).
Evaluation splits are masked once, at load time, with the fixed seed :data:`EVAL_SEED`
(whatever the run's seed), and stored with their ``labels``: metrics are comparable across runs
and seeds.  The collator leaves rows that already carry ``labels`` alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from datasets import Dataset, DatasetDict, Features, List, Value

from bert_ticket_cli.data.common import (
    TaskFacts,
    check_splits,
    content_fingerprint,
    file_digest,
    forced_offline,
    make_dataset,
    offline_variable,
    one_line,
)
from bert_ticket_cli.data.tokenize import cache_key, cached_map, tokenizer_fingerprint
from bert_ticket_cli.errors import UserError

if TYPE_CHECKING:
    import torch

#: Bump when text parsing changes the documents produced from the same files.
LOADER_VERSION = "mlm-loader-1"
#: Bump when packing or evaluation masking changes their output for the same input.
PACK_VERSION = "mlm-pack-2"
MASK_VERSION = "mlm-mask-1"
#: The seed of the fixed evaluation masks (independent of the run's seed).
EVAL_SEED = 1234
#: Documents per packing batch (the batch size of ``datasets.map``).
PACK_BATCH = 1000

#: Split -> file names tried in ``task.data_dir``, first match wins.
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "train.jsonl", "wiki.train.raw", "wiki.train.tokens"),
    "validation": ("validation.txt", "valid.txt", "dev.txt", "validation.jsonl", "valid.jsonl", "dev.jsonl",
                   "wiki.valid.raw", "wiki.valid.tokens"),
}
_TEXT_FEATURES = Features({"text": Value("string")})
_JSON_SUFFIXES = (".jsonl", ".json")


# --------------------------------------------------------------------------------------------
# Text loading
# --------------------------------------------------------------------------------------------


def load_text(
    task: TaskFacts,
    *,
    data_dir: str | None = None,
    data_files: Mapping[str, str] | None = None,
    hub_dataset: str | None = None,
    splits: Sequence[str] = (),
) -> DatasetDict:
    """The raw documents of ``splits`` (one ``text`` column) from files, a folder or the hub."""
    check_splits(task, splits)
    if data_files:
        unknown = [s for s in data_files if s not in task.splits]
        if unknown:
            raise UserError(f"task.data_files has split {unknown[0]!r}; task {task.name} reads "
                            f"{', '.join(task.splits)} (e.g. {{train: a.txt, validation: b.txt}})")
        out = DatasetDict()
        for split in list(splits) or list(data_files):
            if split not in data_files:
                raise UserError(f"no data file for split {split!r} in task.data_files (it has "
                                f"{', '.join(data_files) or 'none'}); add {split}=PATH")
            out[split] = read_text_file(Path(str(data_files[split])).expanduser(), split)
        return out
    if data_dir:
        return _load_dir(Path(data_dir).expanduser(), list(splits) or ["train", "validation"])
    return load_text_from_hub(task, hub_dataset or task.hub_dataset, splits)


def _load_dir(root: Path, splits: Sequence[str]) -> DatasetDict:
    if not root.is_dir():
        raise UserError(f"task.data_dir {root} is not a folder: point it at a folder holding train.txt and valid.txt")
    out = DatasetDict()
    for split in splits:
        names = SPLIT_FILES.get(split, (f"{split}.txt", f"{split}.jsonl"))
        found = next((root / n for n in names if (root / n).is_file()), None)
        if found is None:
            raise UserError(f"{root} has no file for split {split!r}: expected one of {', '.join(names)}")
        out[split] = read_text_file(found, split)
    return out


def read_text_file(path: Path, split: str) -> Dataset:
    """One split from a local file: ``.jsonl``/``.json`` (a ``text`` field per line), else plain text."""
    if not path.is_file():
        raise UserError(f"data file {path} for split {split!r} does not exist")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}): convert it to UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    docs = _json_documents(path, raw) if suffix in _JSON_SUFFIXES else split_documents(raw)
    fingerprint = content_fingerprint(LOADER_VERSION, "text", split, suffix, file_digest(path))
    return make_dataset({"text": docs}, _TEXT_FEATURES, split, fingerprint)


def split_documents(raw: str) -> list[str]:
    """Blank-line separated blocks when the text has blank lines between lines, else one per line."""
    lines = [line.rstrip() for line in raw.splitlines()]
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if not filled:
        return []
    inner = lines[filled[0]:filled[-1] + 1]
    if all(line.strip() for line in inner):
        return [line.strip() for line in inner]
    docs, current = [], []
    for line in inner:
        if line.strip():
            current.append(line.strip())
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def _json_documents(path: Path, raw: str) -> list[str]:
    stripped = raw.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return [_text_of(path, i + 1, row) for i, row in enumerate(rows)]
    docs = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {lineno}: not a JSON object ({exc.msg}); "
                            f"expected {{\"text\": ...}} per line") from None
        docs.append(_text_of(path, lineno, row))
    return docs


def _text_of(path: Path, where: int, row: Any) -> str:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise UserError(f"{path} line {where}: expected an object with a string \"text\" field")
    return row["text"]


def parse_hub_name(spec: str) -> tuple[str, str | None]:
    """``Salesforce/wikitext:wikitext-103-raw-v1`` -> (name, config); no colon -> (name, None)."""
    name, _, config = str(spec).partition(":")
    return name.strip(), (config.strip() or None)


def load_text_from_hub(task: TaskFacts, spec: str, splits: Sequence[str]) -> DatasetDict:
    """``load_dataset(name, config)``, its text column as ``text``; failures as one-line UserErrors."""
    if not spec:
        raise UserError(f"task {task.name} needs data: task.data_files={{train: a.txt, validation: b.txt}}, "
                        f"task.data_dir=DIR or task.hub_dataset=NAME[:CONFIG]")
    name, config = parse_hub_name(spec)
    label = f"{name} ({config})" if config else name
    hint = "task.data_dir=DIR with train.txt and valid.txt, or task.data_files={train: a.txt, validation: b.txt}"
    offline = offline_variable()
    try:
        with forced_offline(offline is not None):
            loaded = datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the data source
        if offline is not None:
            raise UserError(f"dataset {label} is not available offline ({offline}=1): pass {hint}, "
                            f"or unset {offline}") from exc
        raise UserError(f"could not load dataset {label} from the Hugging Face hub ({one_line(exc)}); "
                        f"pass {hint}") from exc
    if not isinstance(loaded, DatasetDict):
        raise UserError(f"dataset {label} did not load as a dataset with splits; pass {hint}")
    out = DatasetDict()
    for split in list(splits) or list(loaded):
        source = split if split in loaded else ("valid" if split == "validation" and "valid" in loaded else None)
        if source is None:
            raise UserError(f"dataset {label} has no split {split!r} (it has {', '.join(loaded)}); pass {hint}")
        ds = loaded[source]
        if "text" not in ds.column_names:
            strings = [c for c, f in ds.features.items() if f == Value("string")]
            if len(strings) != 1:
                raise UserError(f"dataset {label} has no 'text' column (it has {', '.join(ds.column_names)}); "
                                f"pass {hint}")
            ds = ds.rename_column(strings[0], "text")
        out[split] = ds.select_columns(["text"])
    return out


# --------------------------------------------------------------------------------------------
# Packing into fixed-length blocks
# --------------------------------------------------------------------------------------------


def _special_id(tokenizer: Any, attr: str) -> int:
    value = getattr(tokenizer, attr, None)
    if value is None:
        raise UserError(f"the tokenizer has no {attr.replace('_id', '')} (needed for masked language "
                        f"modelling): use a BERT tokenizer (model.tokenizer=HUB_ID_OR_DIR)")
    return int(value)


def pack_blocks(ds: Dataset, tokenizer: Any, max_seq_length: int, cache_dir: str | None = None) -> Dataset:
    """Documents -> ``[CLS] tokens [SEP]`` blocks of ``max_seq_length`` ids, plus ``idx``."""
    import numpy as np

    if max_seq_length < 4:
        raise UserError(f"max_seq_length={max_seq_length} is too small; use at least 4 (BERT uses 128)")
    if "text" not in ds.column_names:
        raise UserError(f"MLM data needs a 'text' column; found {', '.join(ds.column_names)}")
    cls, sep = _special_id(tokenizer, "cls_token_id"), _special_id(tokenizer, "sep_token_id")
    body = max_seq_length - 2

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [t or "" for t in batch["text"]]
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
        stream: list[int] = []
        for doc in ids:
            if not doc:
                continue
            if stream:
                stream.append(sep)
            stream.extend(doc)
        # Whole blocks only; a shorter one only when there is nothing else (see the module doc).
        end = len(stream) - len(stream) % body if len(stream) >= body else len(stream)
        return {"input_ids": [[cls, *stream[i:i + body], sep] for i in range(0, end, body)]}

    key = cache_key(ds, PACK_VERSION, tokenizer_fingerprint(tokenizer), max_seq_length, PACK_BATCH)
    blocks = cached_map(ds, encode, key=key, name="mlm-blocks", features=Features({"input_ids": List(Value("int32"))}),
                        cache_dir=cache_dir, desc="Tokenizing and packing text")
    return blocks.add_column("idx", np.arange(len(blocks), dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------


def example_seed(seed: int, idx: int, epoch: int = 0) -> int:
    """A 63-bit generator seed for one block, from (seed, epoch, idx) alone."""
    digest = hashlib.sha256(f"bert-ticket-mlm:{int(seed)}:{int(epoch)}:{int(idx)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Masker:
    """BERT's masking of one sequence, reproducible from a seed.  Picklable.

    ``round(p * len(ids))`` positions (at least one, at most the non-special ones) are drawn
    without replacement among the non-special tokens; each becomes ``[MASK]`` with probability
    0.8, a random non-special token with 0.1, and stays with 0.1.  ``max_predictions``
    (None = no cap) caps that count, as BERT's pre-training data does (20 for 128 tokens).
    """

    def __init__(self, tokenizer: Any, probability: float = 0.15, max_predictions: int | None = None):
        import torch

        if not 0.0 < float(probability) < 1.0:
            raise UserError(f"task.mlm_probability must be in (0, 1), got {probability}")
        if max_predictions is not None and int(max_predictions) < 1:
            raise UserError(f"max_predictions must be at least 1, got {max_predictions}")
        self.probability = float(probability)
        self.max_predictions = None if max_predictions is None else int(max_predictions)
        self.mask_id = _special_id(tokenizer, "mask_token_id")
        size = max(len(tokenizer), max(tokenizer.all_special_ids, default=0) + 1)
        special = torch.zeros(size, dtype=torch.bool)
        special[list(tokenizer.all_special_ids)] = True
        self.special = special
        #: Ids a "random token" is drawn from: every non-special id of the vocabulary.
        self.replacements = (~special).nonzero().squeeze(1)
        if self.replacements.numel() == 0:
            raise UserError("the tokenizer has only special tokens: nothing to mask")

    def fingerprint(self) -> str:
        parts = [MASK_VERSION, self.probability, self.mask_id, self.special.nonzero().squeeze(1).tolist(),
                 int(self.special.numel())]
        if self.max_predictions is not None:  # uncapped maskers keep their earlier fingerprint
            parts.append(self.max_predictions)
        blob = json.dumps(parts)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def selectable(self, ids: torch.Tensor) -> torch.Tensor:
        """Positions that may be selected: not a special token (CLS, SEP, PAD, MASK, UNK)."""
        inside = ids < self.special.numel()
        out = inside.clone()
        out[inside] = ~self.special[ids[inside]]
        return out

    def __call__(self, ids: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked ids, labels)`` for a 1-D id tensor; the same ``seed`` gives the same result."""
        import torch

        ids = ids.to(torch.long)
        candidates = self.selectable(ids).nonzero().squeeze(1)
        n = candidates.numel()
        labels = torch.full_like(ids, -100)
        out = ids.clone()
        if n == 0:
            return out, labels
        k = min(n, max(1, int(self.probability * ids.numel() + 0.5)))
        if self.max_predictions is not None:
            k = min(k, self.max_predictions)
        g = torch.Generator().manual_seed(int(seed))
        chosen = candidates[torch.randperm(n, generator=g)[:k]]
        u = torch.rand(k, generator=g)
        random_ids = self.replacements[torch.randint(self.replacements.numel(), (k,), generator=g)]
        labels[chosen] = ids[chosen]
        out[chosen[u < 0.8]] = self.mask_id
        swap = (u >= 0.8) & (u < 0.9)
        out[chosen[swap]] = random_ids[swap]
        return out, labels


class MlmCollator:
    """Masks (training rows: from ``seed``, the epoch and each row's ``idx``) and pads a batch.

    Rows that already have ``labels`` (the evaluation splits, masked at load time) are only
    padded.  ``keeps_labels`` tells ``engine.evaluate.predict`` to keep ``labels`` in the batch.
    """

    keeps_labels = True

    def __init__(self, tokenizer: Any, *, seed: int, probability: float = 0.15):
        self.masker = Masker(tokenizer, probability)
        self.seed = int(seed)
        self.epoch = 0
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
        self.token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())

    def set_epoch(self, epoch: int) -> None:
        """Masks of later epochs differ from epoch 0's (dynamic masking), when the loop calls this."""
        self.epoch = int(epoch)

    def mask_row(self, row: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
        if "labels" in row:
            return ids, torch.as_tensor(row["labels"], dtype=torch.long)
        if "idx" not in row:
            raise ValueError("MLM training rows need an 'idx' column (the masks are seeded by it)")
        return self.masker(ids, example_seed(self.seed, int(row["idx"]), self.epoch))

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        pairs = [self.mask_row(r) for r in rows]
        width = max(ids.numel() for ids, _ in pairs)
        n = len(pairs)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, (ids, lab) in enumerate(pairs):
            input_ids[i, :ids.numel()] = ids
            labels[i, :lab.numel()] = lab
            attention[i, :ids.numel()] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if self.token_types:
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        return batch


def mask_split(blocks: Dataset, masker: Masker, *, seed: int = EVAL_SEED, cache_dir: str | None = None) -> Dataset:
    """The fixed masking of an evaluation split: ``input_ids`` masked, ``labels``, ``idx`` kept."""
    import torch

    def apply(batch: dict[str, list]) -> dict[str, list]:
        ids_out, labels_out = [], []
        for ids, idx in zip(batch["input_ids"], batch["idx"]):
            masked, labels = masker(torch.as_tensor(ids, dtype=torch.long), example_seed(seed, idx))
            ids_out.append(masked.tolist())
            labels_out.append(labels.tolist())
        return {"input_ids": ids_out, "labels": labels_out, "idx": batch["idx"]}

    key = cache_key(blocks, MASK_VERSION, seed, masker.fingerprint())
    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), "idx": Value("int64")})
    return cached_map(blocks, apply, key=key, name="mlm-eval", features=features, cache_dir=cache_dir,
                      desc="Masking the evaluation text")
