"""Greedy packing of tokenized sentences into ``[CLS] body [SEP]`` blocks (step 3 of the package doc)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bert_ticket_cli.data.pretraining.sources import split_sentences


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
