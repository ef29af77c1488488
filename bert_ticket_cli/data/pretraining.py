"""Prepared data for academic-budget MLM pre-training (Izsak, Berchansky, Levy, EMNLP 2021).

``bert-ticket pretrain prepare`` turns text into a folder that training memory-maps:

1. **Documents.**  ``pretrain.data.corpus`` lists files, folders (every ``.txt`` / ``.raw`` /
   ``.tokens`` / ``.jsonl`` / ``.json`` inside, recursively, sorted by path) and ``hub:NAME[:CONFIG]``
   datasets (their train split; in ``pretrain.data.validation`` their validation split).  A file
   is parsed by :func:`bert_ticket_cli.data.mlm.read_text_file` (blank-line separated blocks, or one
   document per line; JSON lines with a ``text`` field).  Blank documents are skipped everywhere,
   so they are never counted.  Without ``pretrain.data.validation``, ``round(validation_fraction x
   documents)`` documents (at least one when there are two or more) are held out, drawn by an RNG
   seeded with ``seed``; the training side never sees them, not even the tokenizer trainer.
2. **Tokenizer** (``tokenizer/``).  ``train``: a BERT WordPiece vocabulary learned on the training
   documents; ``model``: the model's tokenizer; else a hub id or a local tokenizer folder.
   Training is made deterministic: the ``tokenizers`` trainer numbers its ``##`` continuation
   pieces in hash-map order, which changes how count ties between merges are broken (so the
   vocabulary could differ from one run to the next).  A first pass (no merges) lists those
   pieces; the real pass gets them, sorted, as placeholders right after the five special tokens,
   so every id and tie is fixed.  The final tokenizer is rebuilt from that vocabulary.
3. **Sentences and packing** (``blocks/``).  A document is cut into sentences at every line break
   and after ``.``, ``!`` or ``?`` (optionally followed by one closing quote or bracket) followed by
   whitespace.  The rule is deliberately simple: an abbreviation such as ``Dr. Smith`` splits a
   sentence in two, which only adds one more place where a block may end.  Sentences are tokenized
   without special tokens and packed greedily, in order, into single-segment blocks
   ``[CLS] body [SEP]`` of at most ``seq_length`` tokens: a sentence that does not fit into the
   current body closes that block and opens the next one; a sentence longer than a whole body
   (``seq_length - 2``) starts a fresh block and is cut into body-sized pieces, its last piece
   staying open for the following sentences.  **Packing runs across document boundaries**, with no
   separator token: a document boundary is just one more sentence boundary, so short documents
   (one-line corpora) do not waste sequence length.  No next-sentence prediction: one segment,
   ``token_type_ids`` all 0.  Blocks keep their true length on disk (no padding).
4. **Static masking** (``train/copy-NN/``, ``validation/``).  ``duplication`` (K) copies of the
   blocks; copy ``k`` masks block ``i`` with :class:`~bert_ticket_cli.data.mlm.Masker` seeded by
   ``example_seed(seed, i, epoch=k)``: ``round(p x length)`` tokens (at least 1, at most
   ``max_predictions``), never special tokens, 80% ``[MASK]`` / 10% random / 10% kept.  The
   validation blocks are masked once with the fixed :data:`~bert_ticket_cli.data.mlm.EVAL_SEED`.
   A row holds ``input_ids`` (masked; ``uint16`` when the vocabulary has at most 65535 entries,
   else ``int32``), ``mlm_positions`` (sorted, ``int16``; ``int32`` beyond 32767 tokens) and
   ``mlm_labels`` (the original ids there, same type as ``input_ids``).
5. **Manifest** (``prepared.json``): the settings and their fingerprint, the tokenizer, counts,
   the parts finished so far and ``"complete": true`` once everything is there.

Every part is written to ``.tmp-<name>`` and renamed into place, then recorded in the manifest
(rewritten atomically), so an interrupted preparation resumes with the missing parts only, and a
complete one is found again at once.  A preparation is a pure function of its inputs and
settings: two folders prepared from the same text hold byte-identical columns.

Limits accepted: each source *file* is read into memory whole (by ``read_text_file``); the corpus
as a whole is streamed, ``DOC_BATCH`` documents at a time, and written to Arrow as it goes.  The
held-out document indices (``validation_fraction`` of all documents) are kept in memory.  A call
with a corpus hashes every source file (about 1 GB/s) to know whether the prepared folder is
current; training with ``pretrain.data.dir`` naming a complete folder and no corpus skips that,
so its start-up does not grow with the corpus.
Masking runs :class:`Masker` once per row (about 10k rows/s per process; ``num_proc`` spreads
it over processes).

Reading: :func:`open_prepared` memory-maps the K copies as one training set;
``engine.batches.StepBatches`` orders them with ``engine.batches.ChunkedOrder`` (a permutation of chunks, then of
the rows inside each chunk, computed lazily), so start-up cost does not depend on the corpus
size and a resumed run needs no sampler state; :class:`PretrainCollator` pads a batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bert_ticket_cli.errors import UserError

#: Bump whenever a change here changes the prepared data for the same inputs and settings.
FORMAT_VERSION = "pretrain-data-1"
MANIFEST = "prepared.json"
#: The trained tokenizer's special tokens, at ids 0..4.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Suffixes of the text files picked up inside a corpus folder.
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".jsonl", ".json")
#: Documents tokenized and packed per batch (bounds the memory of packing).
DOC_BATCH = 1000
#: Rows per Arrow record batch written while packing, and per masking batch.
WRITE_BATCH = 1000
#: A plain progress line at most this often (seconds) when stdout is not a terminal.
PLAIN_PROGRESS_EVERY = 30.0
PREPARE_HINT = "bert-ticket pretrain prepare pretrain.data.corpus=[path/to/text]"

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+")


# --------------------------------------------------------------------------------------------
# Sources and documents
# --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One text source: a local file, or a hub dataset split."""

    kind: str  # "file" or "hub"
    name: str  # the path, or NAME[:CONFIG]
    split: str = "train"
    identity: list[Any] = field(default_factory=list)
    _dataset: Any = None

    def dataset(self):
        """All of the source's documents (one ``text`` column), the file read now (in memory)."""
        from bert_ticket_cli.data.mlm import load_text_from_hub, read_text_file

        if self.kind == "file":
            return read_text_file(Path(self.name), self.split)
        if self._dataset is None:
            from bert_ticket_cli.data.pipeline import MLM

            self._dataset = load_text_from_hub(MLM, self.name, [self.split])[self.split]
        return self._dataset

    def batches(self) -> Iterator[list[str]]:
        """The non-blank documents, ``DOC_BATCH`` at a time."""
        ds = self.dataset()
        if self.kind == "file":
            texts = ds["text"]
            for lo in range(0, len(texts), DOC_BATCH):
                yield [t for t in texts[lo:lo + DOC_BATCH] if t and t.strip()]
            return
        for batch in ds.iter(batch_size=DOC_BATCH):
            yield [t for t in batch["text"] if t and t.strip()]


def resolve_sources(entries: Sequence[str], key: str, split: str) -> list[Source]:
    """``pretrain.data.corpus`` / ``validation`` entries -> sources, each with its content identity."""
    from bert_ticket_cli.data.glue import file_digest

    out: list[Source] = []
    for entry in entries:
        text = str(entry).strip()
        if text.startswith("hub:"):
            spec = text[4:].strip()
            if not spec:
                raise UserError(f"{key} entry {text!r} names no dataset: write hub:NAME or hub:NAME:CONFIG")
            src = Source("hub", spec, split)
            src.identity = ["hub", spec, split, str(src.dataset()._fingerprint)]
            out.append(src)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise UserError(f"{key}: folder {path} holds no {', '.join(TEXT_SUFFIXES)} files")
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"{key}: {path} does not exist: pass text files, folders of them, or hub:NAME[:CONFIG]")
        for f in files:
            try:
                digest = file_digest(f)
            except OSError as exc:
                raise UserError(f"cannot read {f}: {exc.strerror or exc}") from None
            out.append(Source("file", str(f), split, ["file", f.name, digest]))
    return out


def iter_documents(sources: Sequence[Source], *, keep: np.ndarray | None = None,
                   drop: np.ndarray | None = None) -> Iterator[list[str]]:
    """Batches of documents of ``sources`` in order; ``keep`` / ``drop``: sorted global document
    indices to keep only / to leave out (the held-out split)."""
    start = 0
    for src in sources:
        for batch in src.batches():
            end = start + len(batch)
            if keep is None and drop is None:
                chosen = batch
            else:
                marks = keep if keep is not None else drop
                lo, hi = np.searchsorted(marks, [start, end])
                inside = {int(g) - start for g in marks[lo:hi]}
                chosen = [d for j, d in enumerate(batch) if (j in inside) == (keep is not None)]
            start = end
            if chosen:
                yield chosen


def count_documents(sources: Sequence[Source]) -> int:
    return sum(len(b) for src in sources for b in src.batches())


def held_out_documents(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the documents held out for validation (see the module doc)."""
    if n_docs < 2:
        return np.empty(0, dtype=np.int64)
    k = min(n_docs - 1, max(1, int(round(fraction * n_docs))))
    rng = np.random.default_rng([_u64(seed), 0x76616C])
    return np.sort(rng.choice(n_docs, size=k, replace=False).astype(np.int64))


def split_sentences(document: str) -> list[str]:
    """Sentences of a document: line breaks, and ``.``/``!``/``?`` (+ a closing quote) + space."""
    out = []
    for line in document.split("\n"):
        for piece in _SENTENCE_BREAK.split(line.strip()):
            piece = piece.strip()
            if piece:
                out.append(piece)
    return out


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


class Packer:
    """Greedy packing of tokenized sentences into ``[CLS] body [SEP]`` blocks (see the module doc)."""

    def __init__(self, seq_length: int, cls_id: int, sep_id: int):
        self.body = seq_length - 2
        self.cls, self.sep = int(cls_id), int(sep_id)
        self.current: list[int] = []
        self.blocks = self.tokens = self.sentences = self.cut = 0

    def _emit(self, body: list[int]) -> list[int]:
        self.blocks += 1
        self.tokens += len(body) + 2
        return [self.cls, *body, self.sep]

    def add(self, sentence: Sequence[int]) -> list[list[int]]:
        """Feed one sentence; returns the blocks it completed."""
        if not sentence:
            return []
        self.sentences += 1
        out = []
        if self.current and len(self.current) + len(sentence) > self.body:
            out.append(self._emit(self.current))
            self.current = []
        if len(sentence) > self.body:
            self.cut += 1
            whole = len(sentence) - len(sentence) % self.body
            if whole == len(sentence):
                whole -= self.body  # the last piece stays open
            for lo in range(0, whole, self.body):
                out.append(self._emit(list(sentence[lo:lo + self.body])))
            self.current = list(sentence[whole:])
        else:
            self.current.extend(sentence)
        return out

    def finish(self) -> list[list[int]]:
        out = [self._emit(self.current)] if self.current else []
        self.current = []
        return out


def pack_documents(batches: Iterator[list[str]], tokenizer: Any, seq_length: int,
                   on_batch: Callable[[int], None] = lambda n: None) -> tuple[Iterator[list[list[int]]], dict]:
    """Blocks of a document stream, a list per document batch; ``counts`` fills in as it runs."""
    packer = Packer(seq_length, tokenizer.cls_token_id, tokenizer.sep_token_id)
    counts = {"documents": 0, "sentences": 0, "blocks": 0, "tokens": 0, "long_sentences_cut": 0}

    def run() -> Iterator[list[list[int]]]:
        for docs in batches:
            sentences = [s for d in docs for s in split_sentences(d)]
            ids = tokenizer(sentences, add_special_tokens=False, return_attention_mask=False,
                            return_token_type_ids=False, verbose=False)["input_ids"] if sentences else []
            out: list[list[int]] = []
            for sentence in ids:
                out.extend(packer.add(sentence))
            counts["documents"] += len(docs)
            on_batch(len(docs))
            _update(counts, packer)
            if out:
                yield out
        last = packer.finish()
        _update(counts, packer)
        if last:
            yield last

    return run(), counts


def _update(counts: dict, packer: Packer) -> None:
    counts.update(sentences=packer.sentences, blocks=packer.blocks, tokens=packer.tokens,
                  long_sentences_cut=packer.cut)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_wordpiece(texts: Callable[[], Iterator[list[str]]], vocab_size: int, lowercase: bool):
    """A BERT WordPiece tokenizer learned from ``texts()`` (called twice), deterministically."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    def bare(vocab: dict[str, int] | None = None) -> Tokenizer:
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##") if vocab \
            else models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##")
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=bool(lowercase))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tok

    def trainer(size: int, specials: list[str]):
        return trainers.WordPieceTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                         continuing_subword_prefix="##")

    probe = bare()  # pass 1: the alphabet and the ## pieces only (no merges)
    probe.train_from_iterator(texts(), trainer(0, list(SPECIAL_TOKENS)))
    pieces = sorted(t for t in probe.get_vocab() if t.startswith("##") and t not in SPECIAL_TOKENS)
    if not probe.get_vocab().keys() - set(SPECIAL_TOKENS):
        raise UserError("the training documents hold no text to learn a vocabulary from")
    learned = bare()
    learned.train_from_iterator(texts(), trainer(int(vocab_size), [*SPECIAL_TOKENS, *pieces]))
    vocab = learned.get_vocab()
    tok = bare(vocab)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=bool(lowercase))


def _tokenizer_identity(cfg: Any) -> Any:
    spec = str(cfg.pretrain.data.tokenizer)
    if spec == "train":
        return "train"
    name = (cfg.model.tokenizer or cfg.model.name_or_path) if spec == "model" else spec
    local = Path(str(name)).expanduser() if name else None
    if local is not None and local.is_dir():
        from bert_ticket_cli.data.glue import file_digest

        files = sorted(p for p in local.rglob("*") if p.is_file())
        return [spec, "dir", [[str(p.relative_to(local)), file_digest(p)] for p in files]]
    return [spec, name]


def load_named_tokenizer(cfg: Any):
    """The tokenizer of ``pretrain.data.tokenizer`` when it is not ``train``."""
    spec = str(cfg.pretrain.data.tokenizer)
    if spec == "model":
        from bert_ticket_cli.model.build import load_tokenizer

        return load_tokenizer(cfg.model, cfg.task)
    from transformers import AutoTokenizer

    from bert_ticket_cli.data.glue import one_line

    try:
        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir()
                                             else spec, use_fast=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the tokenizer source
        raise UserError(f"could not load tokenizer {spec!r} ({one_line(exc)}): set pretrain.data.tokenizer=train, "
                        f"model, a local tokenizer folder or a hub id available offline") from None


def _check_tokenizer(tokenizer: Any, spec: str) -> None:
    for attr in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        if getattr(tokenizer, attr, None) is None:
            raise UserError(f"tokenizer {spec!r} has no {attr[:-3]} (BERT pre-training needs [CLS], [SEP], "
                            f"[MASK] and [PAD]): use pretrain.data.tokenizer=train or a BERT tokenizer")


def _tokenizer_info(tokenizer: Any, spec: str) -> dict[str, Any]:
    from bert_ticket_cli.data.tokenize import tokenizer_fingerprint

    return {
        "source": spec,
        "vocab_size": len(tokenizer),
        "pad_id": int(tokenizer.pad_token_id),
        "unk_id": None if tokenizer.unk_token_id is None else int(tokenizer.unk_token_id),
        "cls_id": int(tokenizer.cls_token_id),
        "sep_id": int(tokenizer.sep_token_id),
        "mask_id": int(tokenizer.mask_token_id),
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


def load_saved_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), use_fast=True)


# --------------------------------------------------------------------------------------------
# Settings, fingerprint, manifest
# --------------------------------------------------------------------------------------------


def _u64(seed: int) -> int:
    return int(seed) & ((1 << 64) - 1)


def _cache_root(cfg: Any) -> Path:
    from bert_ticket_cli.data.pipeline import default_cache_dir

    return Path(default_cache_dir(cfg)).expanduser()


def _check_settings(d: Any) -> None:
    problems = []
    if d.seq_length < 4:
        problems.append(f"pretrain.data.seq_length must be at least 4, got {d.seq_length}")
    if not 0.0 < float(d.mlm_probability) < 1.0:
        problems.append(f"pretrain.data.mlm_probability must be in (0, 1), got {d.mlm_probability}")
    for name in ("max_predictions", "duplication", "shard_rows", "shuffle_chunk"):
        if getattr(d, name) < 1:
            problems.append(f"pretrain.data.{name} must be at least 1, got {getattr(d, name)}")
    if not 0.0 <= float(d.validation_fraction) < 1.0:
        problems.append(f"pretrain.data.validation_fraction must be in [0, 1), got {d.validation_fraction}")
    if str(d.tokenizer) == "train" and d.vocab_size < len(SPECIAL_TOKENS) + 1:
        problems.append(f"pretrain.data.vocab_size must be more than {len(SPECIAL_TOKENS)}, got {d.vocab_size}")
    if problems:
        raise UserError("; ".join(problems))


def settings_of(cfg: Any, corpus: Sequence[Source], validation: Sequence[Source]) -> dict[str, Any]:
    """Everything the prepared data depends on, in the order mismatches are reported."""
    d = cfg.pretrain.data
    return {
        "format": FORMAT_VERSION,
        "corpus": [s.identity for s in corpus],
        "validation": [s.identity for s in validation],
        "tokenizer": _tokenizer_identity(cfg),
        "vocab_size": int(d.vocab_size),
        "lowercase": bool(d.lowercase),
        "seq_length": int(d.seq_length),
        "mlm_probability": float(d.mlm_probability),
        "max_predictions": int(d.max_predictions),
        "duplication": int(d.duplication),
        "validation_fraction": float(d.validation_fraction),
        "shard_rows": int(d.shard_rows),
        "seed": int(cfg.seed),
    }


def fingerprint_of(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    for key, value in new.items():
        if old.get(key) != value:
            name = {"format": "the data format version", "seed": "seed",
                    "corpus": "pretrain.data.corpus (files or their contents)",
                    "validation": "pretrain.data.validation (files or their contents)"}.get(key, f"pretrain.data.{key}")
            if isinstance(value, (list, dict)) or key == "format":
                return name
            return f"{name}: {old.get(key)!r} there, {value!r} now"
    return "unknown settings"


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class _Manifest:
    """``prepared.json``, rewritten atomically whenever a part finishes; ``complete`` comes last."""

    def __init__(self, folder: Path, fingerprint: str, settings: dict[str, Any], old: dict[str, Any] | None):
        self.path = folder / MANIFEST
        old = old or {}
        self.data: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "settings": settings,
            "tokenizer": old.get("tokenizer"),
            "counts": dict(old.get("counts") or {}),
            "parts": list(old.get("parts") or []),
            "complete": False,
        }

    @property
    def parts(self) -> list[str]:
        return self.data["parts"]

    def write(self) -> None:
        _write_json_atomic(self.path, self.data)

    def finish_part(self, name: str, counts: Mapping[str, Any] | None = None, **extra: Any) -> None:
        self.data["counts"].update(counts or {})
        self.data.update(extra)
        if name not in self.parts:
            self.parts.append(name)
        complete = self.data.pop("complete")
        self.data["complete"] = complete
        self.write()

    def complete(self) -> None:
        self.data.pop("complete")
        self.data["complete"] = True
        self.write()


def part_names(duplication: int) -> list[str]:
    return ["tokenizer", "blocks", "validation", *(f"copy-{k:02d}" for k in range(duplication))]


def part_path(folder: Path, name: str) -> Path:
    return folder / "train" / name if name.startswith("copy-") else folder / name


def _tmp_path(folder: Path, name: str) -> Path:
    final = part_path(folder, name)
    return final.with_name(f".tmp-{final.name}")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class _Ticker:
    """A rich bar when stdout is a terminal, else a flushed plain line every PLAIN_PROGRESS_EVERY s."""

    def __init__(self, log: Callable[[str], Any], description: str, total: int | None, unit: str):
        self.log, self.description, self.total, self.unit = log, description, total, unit
        self.done = 0
        self._last = time.monotonic()
        self._bar = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(unit), TimeElapsedColumn(), transient=True)
            self._task = self._bar.add_task(description, total=total)
            self._bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif time.monotonic() - self._last >= PLAIN_PROGRESS_EVERY:
            self._last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            self.log(f"  {self.description}: {self.done}{of} {self.unit}")
            sys.stdout.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# --------------------------------------------------------------------------------------------
# Writing parts
# --------------------------------------------------------------------------------------------


def _id_type(tokenizer: Any) -> str:
    return "uint16" if len(tokenizer) <= 65535 else "int32"


def _position_type(seq_length: int) -> str:
    return "int16" if seq_length <= 32767 else "int32"


def _save(ds: Any, target: Path, shard_rows: int) -> None:
    ds.save_to_disk(str(target), num_shards=max(1, math.ceil(len(ds) / shard_rows)))


def _write_blocks(blocks: Iterator[list[list[int]]], path: Path, id_type: str) -> int:
    """Stream blocks into one Arrow IPC file (the format ``Dataset.from_file`` maps)."""
    import pyarrow as pa

    schema = pa.schema([pa.field("input_ids", pa.list_(getattr(pa, id_type)()))])
    rows = 0
    pending: list[list[int]] = []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def flush() -> None:
            if pending:
                column = pa.array(pending, type=schema.field("input_ids").type)
                writer.write_batch(pa.record_batch([column], schema=schema))
                pending.clear()

        for group in blocks:
            for block in group:
                pending.append(block)
                rows += 1
                if len(pending) >= WRITE_BATCH:
                    flush()
        flush()
    return rows


def _mask_batch(batch: Mapping[str, Any], indices: Sequence[int], *, masker: Any, seed: int, epoch: int,
                id_type: str, position_type: str) -> dict[str, list]:
    import torch

    from bert_ticket_cli.data.mlm import example_seed

    ids_out, pos_out, lab_out = [], [], []
    for row, i in zip(batch["input_ids"], indices):
        ids = torch.from_numpy(np.asarray(row, dtype=np.int64))
        masked, labels = masker(ids, example_seed(seed, int(i), epoch=epoch))
        positions = (labels != -100).nonzero().squeeze(1)
        ids_out.append(masked.numpy().astype(id_type))
        pos_out.append(positions.numpy().astype(position_type))
        lab_out.append(ids[positions].numpy().astype(id_type))
    return {"input_ids": ids_out, "mlm_positions": pos_out, "mlm_labels": lab_out}


@contextlib.contextmanager
def _datasets_bars() -> Iterator[None]:
    """datasets' own progress bars (map, save_to_disk) only on a terminal: no bar noise in logs."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    if enabled and not sys.stdout.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _mask_to(blocks: Any, target: Path, work: Path, *, masker: Any, seed: int, epoch: int, id_type: str,
             position_type: str, shard_rows: int, num_proc: int, description: str) -> int:
    """Mask every block of ``blocks`` (row i with example_seed(seed, i, epoch)) and save to target."""
    from datasets import Features, List, Value

    features = Features({"input_ids": List(Value(id_type)), "mlm_positions": List(Value(position_type)),
                         "mlm_labels": List(Value(id_type))})
    masked = blocks.with_format("numpy").map(
        _mask_batch, batched=True, batch_size=WRITE_BATCH, with_indices=True,
        fn_kwargs={"masker": masker, "seed": seed, "epoch": epoch, "id_type": id_type,
                   "position_type": position_type},
        remove_columns=blocks.column_names, features=features, num_proc=num_proc if num_proc > 1 else None,
        cache_file_name=str(work / f"{target.name}.arrow"), load_from_cache_file=False,
        new_fingerprint=hashlib.sha256(f"{target}:{seed}:{epoch}".encode()).hexdigest()[:16],
        writer_batch_size=WRITE_BATCH, desc=description,
    )
    _save(masked.with_format(None), target, shard_rows)
    return len(masked)


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def prepared_dir(cfg: Any, fingerprint: str) -> Path:
    d = cfg.pretrain.data
    if d.dir:
        return Path(str(d.dir)).expanduser()
    return _cache_root(cfg) / "pretrain" / fingerprint


def _parts_present(folder: Path, manifest: Mapping[str, Any], duplication: int) -> bool:
    parts = manifest.get("parts") or []
    return all(p in parts and part_path(folder, p).is_dir() for p in part_names(duplication))


def prepare(cfg: Any, *, log: Callable[[str], Any] = print, num_proc: int = 1) -> Path:
    """Build (or find) the prepared data of ``cfg.pretrain.data`` and return its folder.

    ``num_proc`` processes mask the copies (1: in this process)."""
    d = cfg.pretrain.data
    _check_settings(d)
    if d.dir and not d.corpus:  # training on a folder prepared earlier: constant start-up, no hashing
        found = Path(str(d.dir)).expanduser()
        old = read_manifest(found)
        if old is not None and old.get("complete"):
            log(f"prepared data found at {found}")
            return found
    if not d.corpus:
        raise UserError(f"no pre-training text: pass pretrain.data.corpus=[path/to/text] (files, folders, "
                        f"or hub:NAME[:CONFIG]), e.g. {PREPARE_HINT}")
    corpus = resolve_sources(d.corpus, "pretrain.data.corpus", "train")
    validation = resolve_sources(d.validation, "pretrain.data.validation", "validation")
    settings = settings_of(cfg, corpus, validation)
    fingerprint = fingerprint_of(settings)
    folder = prepared_dir(cfg, fingerprint)

    old = read_manifest(folder)
    if old is not None and old.get("fingerprint") == fingerprint and old.get("complete") \
            and _parts_present(folder, old, int(d.duplication)):
        log(f"prepared data found at {folder}")
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {folder}: {exc.strerror or exc}; set pretrain.data.dir or cache_dir "
                        f"to a writable folder") from None
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one preparer per folder; others wait, then find it done
        old = read_manifest(folder)
        if old is None:
            others = [p.name for p in folder.iterdir() if p.name != ".lock"]
            if others:
                raise UserError(f"{folder} is not empty and holds no prepared data ({MANIFEST} is missing): "
                                f"choose another pretrain.data.dir or empty it")
        elif old.get("fingerprint") != fingerprint:
            raise UserError(f"{folder} was prepared with other settings "
                            f"({_first_difference(old.get('settings') or {}, settings)}): choose another "
                            f"pretrain.data.dir or delete it")
        elif old.get("complete") and _parts_present(folder, old, int(d.duplication)):
            log(f"prepared data found at {folder}")
            return folder
        with _datasets_bars():
            _build(cfg, folder, corpus, validation, _Manifest(folder, fingerprint, settings, old), log, num_proc)
    return folder


def _build(cfg: Any, folder: Path, corpus: list[Source], validation: list[Source], manifest: _Manifest,
           log: Callable[[str], Any], num_proc: int) -> None:
    d = cfg.pretrain.data
    names = part_names(int(d.duplication))
    manifest.data["parts"] = [p for p in manifest.parts if p in names and part_path(folder, p).is_dir()]
    manifest.write()
    work = folder / ".work"
    for stale in [work, *folder.glob(".tmp-*"), *(folder / "train").glob(".tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir()
    todo = [p for p in names if p not in manifest.parts]
    log(f"preparing pre-training data in {folder}: {', '.join(todo)}")

    held: np.ndarray | None = None
    n_docs = 0

    def split_plan() -> np.ndarray | None:
        """Held-out document indices (None: validation comes from its own sources)."""
        nonlocal held, n_docs
        if validation:
            return None
        if held is None:
            n_docs = count_documents(corpus)
            if n_docs == 0:
                raise UserError(f"pretrain.data.corpus holds no text ({', '.join(map(str, d.corpus))})")
            held = held_out_documents(n_docs, float(d.validation_fraction), int(cfg.seed))
            if len(held) == 0:
                raise UserError("the corpus has a single document: nothing can be held out for validation; "
                                "pass pretrain.data.validation=[path/to/text]")
        return held

    def train_docs() -> Iterator[list[str]]:
        return iter_documents(corpus, drop=split_plan())

    def validation_docs() -> Iterator[list[str]]:
        plan = split_plan()
        return iter_documents(validation) if plan is None else iter_documents(corpus, keep=plan)

    def commit(name: str) -> None:
        tmp, final = _tmp_path(folder, name), part_path(folder, name)
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)

    try:
        if "tokenizer" not in manifest.parts:
            t0 = time.perf_counter()
            spec = str(d.tokenizer)
            if spec == "train":
                tokenizer = train_wordpiece(train_docs, int(d.vocab_size), bool(d.lowercase))
            else:
                tokenizer = load_named_tokenizer(cfg)
            _check_tokenizer(tokenizer, spec)
            tokenizer.save_pretrained(str(_tmp_path(folder, "tokenizer")))
            commit("tokenizer")
            tokenizer = load_saved_tokenizer(part_path(folder, "tokenizer"))
            manifest.finish_part("tokenizer", tokenizer=_tokenizer_info(tokenizer, spec))
            log(f"tokenizer: {spec}, {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s)")
        tokenizer = load_saved_tokenizer(part_path(folder, "tokenizer"))
        id_type, position_type = _id_type(tokenizer), _position_type(int(d.seq_length))

        from bert_ticket_cli.data.mlm import EVAL_SEED, Masker

        masker = Masker(tokenizer, float(d.mlm_probability), max_predictions=int(d.max_predictions))

        if "blocks" not in manifest.parts:
            t0 = time.perf_counter()
            plan = split_plan()
            total = (n_docs - len(plan)) if plan is not None else None
            ticker = _Ticker(log, "packing", total, "documents")
            stream, counts = pack_documents(train_docs(), tokenizer, int(d.seq_length), ticker.advance)
            raw = work / "blocks.arrow"
            try:
                rows = _write_blocks(stream, raw, id_type)
            finally:
                ticker.close()
            if rows == 0:
                raise UserError("the training documents produced no tokens: check pretrain.data.corpus")
            _save_file(raw, _tmp_path(folder, "blocks"), int(d.shard_rows))
            commit("blocks")
            raw.unlink()
            kept = {"documents": counts["documents"], "sentences": counts["sentences"], "blocks": counts["blocks"],
                    "tokens": counts["tokens"], "long_sentences_cut": counts["long_sentences_cut"],
                    "held_out_documents": 0 if plan is None else int(len(plan))}
            manifest.finish_part("blocks", kept)
            log(f"blocks: {kept['documents']} documents, {kept['sentences']} sentences -> {kept['blocks']} blocks, "
                f"{kept['tokens']} tokens ({time.perf_counter() - t0:.1f}s)")

        if "validation" not in manifest.parts:
            t0 = time.perf_counter()
            total = len(split_plan()) if split_plan() is not None else None
            ticker = _Ticker(log, "packing validation", total, "documents")
            stream, counts = pack_documents(validation_docs(), tokenizer, int(d.seq_length), ticker.advance)
            raw = work / "validation-blocks.arrow"
            try:
                rows = _write_blocks(stream, raw, id_type)
            finally:
                ticker.close()
            if rows == 0:
                raise UserError("the validation documents produced no tokens: check pretrain.data.validation")
            rows = _mask_to(_open_file(raw), _tmp_path(folder, "validation"), work, masker=masker, seed=EVAL_SEED,
                            epoch=0, id_type=id_type, position_type=position_type, shard_rows=int(d.shard_rows),
                            num_proc=num_proc, description="masking validation")
            commit("validation")
            kept = {"validation_documents": counts["documents"], "validation_sentences": counts["sentences"],
                    "validation_rows": rows, "validation_tokens": counts["tokens"]}
            manifest.finish_part("validation", kept)
            log(f"validation: {kept['validation_documents']} documents -> {rows} rows, "
                f"{kept['validation_tokens']} tokens ({time.perf_counter() - t0:.1f}s)")

        copies = [p for p in names if p.startswith("copy-") and p not in manifest.parts]
        if copies:
            import datasets

            blocks = datasets.load_from_disk(str(part_path(folder, "blocks")))
            for name in copies:
                t0 = time.perf_counter()
                k = int(name.split("-")[1])
                rows = _mask_to(blocks, _tmp_path(folder, name), work, masker=masker, seed=int(cfg.seed), epoch=k,
                                id_type=id_type, position_type=position_type, shard_rows=int(d.shard_rows),
                                num_proc=num_proc, description=f"masking copy {k + 1}/{d.duplication}")
                commit(name)
                manifest.finish_part(name, {"train_rows_per_copy": rows, "train_rows": rows * int(d.duplication)})
                log(f"train {name}: {rows} rows masked ({time.perf_counter() - t0:.1f}s)")
                for leftover in work.iterdir():
                    leftover.unlink()
        manifest.complete()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c = manifest.data["counts"]
    log(f"prepared data ready at {folder}: {c.get('train_rows')} training rows ({d.duplication} copies of "
        f"{c.get('blocks')} blocks), {c.get('validation_rows')} validation rows")


def _open_file(path: Path):
    from datasets import Dataset

    return Dataset.from_file(str(path))


def _save_file(path: Path, target: Path, shard_rows: int) -> None:
    ds = _open_file(path)
    _save(ds, target, shard_rows)
    del ds


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A prepared folder, memory-mapped: ``train`` (the K copies, one after the other), ``validation``."""

    path: Path
    train: Any
    validation: Any
    tokenizer: Any
    manifest: dict[str, Any]
    seq_length: int
    max_predictions: int

    def collator(self) -> "PretrainCollator":
        return PretrainCollator(int(self.tokenizer.pad_token_id), self.seq_length, self.max_predictions)


def open_prepared(path: str | os.PathLike) -> Prepared:
    """Open a folder written by :func:`prepare` (nothing is read into memory)."""
    import datasets

    folder = Path(path).expanduser()
    manifest = read_manifest(folder)
    if manifest is None:
        raise UserError(f"no prepared pre-training data at {folder} ({MANIFEST} is missing): run "
                        f"`{PREPARE_HINT}` first")
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{folder} holds prepared data of another format ({manifest.get('format')}, this version "
                        f"reads {FORMAT_VERSION}): prepare it again with `bert-ticket pretrain prepare`")
    settings = manifest.get("settings") or {}
    k = int(settings.get("duplication", 0))
    if not manifest.get("complete") or not _parts_present(folder, manifest, k):
        raise UserError(f"the prepared data at {folder} is incomplete (interrupted?): run `bert-ticket pretrain "
                        f"prepare` again with the same settings to finish it")
    copies = [datasets.load_from_disk(str(part_path(folder, f"copy-{i:02d}"))) for i in range(k)]
    train = copies[0] if len(copies) == 1 else datasets.concatenate_datasets(copies)
    validation = datasets.load_from_disk(str(part_path(folder, "validation")))
    tokenizer = load_saved_tokenizer(part_path(folder, "tokenizer"))
    # Rows come back as Python lists: ~10x faster per row than the numpy formatter (measured).
    return Prepared(path=folder, train=train, validation=validation,
                    tokenizer=tokenizer, manifest=manifest, seq_length=int(settings["seq_length"]),
                    max_predictions=int(settings["max_predictions"]))


class PretrainCollator:
    """Rows (``input_ids``, ``mlm_positions``, ``mlm_labels``) -> padded LongTensors.

    ``input_ids`` / ``attention_mask`` / ``token_type_ids`` are ``[B, seq_length]`` (pad_id, 0, 0
    after each row's length); ``mlm_positions`` / ``mlm_labels`` are ``[B, max_predictions]``,
    padded with 0 and -100.
    """

    def __init__(self, pad_id: int, seq_length: int, max_predictions: int):
        self.pad_id, self.seq_length, self.max_predictions = int(pad_id), int(seq_length), int(max_predictions)

    def __call__(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        import torch

        if isinstance(rows, Mapping):  # a batch as columns
            rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
        n = len(rows)
        ids = np.full((n, self.seq_length), self.pad_id, dtype=np.int64)
        attention = np.zeros((n, self.seq_length), dtype=np.int64)
        positions = np.zeros((n, self.max_predictions), dtype=np.int64)
        labels = np.full((n, self.max_predictions), -100, dtype=np.int64)
        for i, row in enumerate(rows):
            x = np.asarray(row["input_ids"])
            p = np.asarray(row["mlm_positions"])
            if len(x) > self.seq_length or len(p) > self.max_predictions:
                raise ValueError(f"row of {len(x)} tokens / {len(p)} predictions exceeds the collator's "
                                 f"{self.seq_length} / {self.max_predictions}")
            ids[i, :len(x)] = x
            attention[i, :len(x)] = 1
            positions[i, :len(p)] = p
            labels[i, :len(p)] = np.asarray(row["mlm_labels"])
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
                "token_type_ids": torch.zeros((n, self.seq_length), dtype=torch.long),
                "mlm_positions": torch.from_numpy(positions), "mlm_labels": torch.from_numpy(labels)}
