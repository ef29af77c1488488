"""Pre-training text sources: files, folders and ``hub:NAME[:CONFIG]`` datasets, their documents
in order, the held-out validation documents and the sentence split (steps 1 and 3 of the package
doc)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bert_ticket_cli.data import mlm
from bert_ticket_cli.data.common import file_digest
from bert_ticket_cli.errors import UserError

#: Suffixes of the text files picked up inside a corpus folder.
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".jsonl", ".json")
#: Documents tokenized and packed per batch (bounds the memory of packing).
DOC_BATCH = 1000

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+")
#: What ``mlm.load_text_from_hub`` reads of its task: the name, for its messages.
_TEXT_TASK = SimpleNamespace(name="mlm")


def _u64(seed: int) -> int:
    return int(seed) & ((1 << 64) - 1)


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
        if self.kind == "file":
            return mlm.read_text_file(Path(self.name), self.split)
        if self._dataset is None:
            self._dataset = mlm.load_text_from_hub(_TEXT_TASK, self.name, [self.split])[self.split]
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
