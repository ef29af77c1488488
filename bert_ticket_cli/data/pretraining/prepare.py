"""``prepare``: build (or find) the prepared folder of ``cfg.pretrain.data``, resumably, one
part at a time, under a file lock (the package doc's steps in order)."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bert_ticket_cli.data.mlm import EVAL_SEED, Masker
from bert_ticket_cli.data.pretraining.manifest import (
    MANIFEST,
    PREPARE_HINT,
    Manifest,
    first_difference,
    fingerprint_of,
    part_names,
    part_path,
    parts_present,
    prepared_dir,
    read_manifest,
    settings_of,
    tmp_path,
)
from bert_ticket_cli.data.pretraining.packing import pack_documents
from bert_ticket_cli.data.pretraining.shards import (
    datasets_bars,
    id_type_of,
    mask_to,
    open_file,
    position_type_of,
    save_file,
    write_blocks,
)
from bert_ticket_cli.data.pretraining.sources import (
    Source,
    count_documents,
    held_out_documents,
    iter_documents,
    resolve_sources,
)
from bert_ticket_cli.data.pretraining.tokenizer import (
    check_tokenizer,
    load_named_tokenizer,
    load_saved_tokenizer,
    tokenizer_info,
    train_wordpiece,
)
from bert_ticket_cli.errors import UserError

#: A plain progress line at most this often (seconds) when stdout is not a terminal.
PLAIN_PROGRESS_EVERY = 30.0


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


def prepare(cfg: Any, *, log: Callable[[str], Any] = print, num_proc: int = 1,
            given: Iterable[str] | None = None) -> Path:
    """Build (or find) the prepared data of ``cfg.pretrain.data`` and return its folder.

    ``num_proc`` processes mask the copies (1: in this process).  ``given``: the
    ``pretrain.data`` keys the user set; a folder found through ``pretrain.data.dir`` alone (no
    corpus, so no fingerprint) must agree with them, or it is refused like ``prepare`` refuses."""
    d = cfg.pretrain.data  # its values were checked with the config (config/rules.py)
    if d.dir and not d.corpus:  # training on a folder prepared earlier: constant start-up, no hashing
        found = Path(str(d.dir)).expanduser()
        old = read_manifest(found)
        if old is not None and old.get("complete"):
            check_given_settings(found, cfg, old.get("settings") or {}, given or ())
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
            and parts_present(folder, old, int(d.duplication)):
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
                            f"({first_difference(old.get('settings') or {}, settings)}): choose another "
                            f"pretrain.data.dir or delete it")
        elif old.get("complete") and parts_present(folder, old, int(d.duplication)):
            log(f"prepared data found at {folder}")
            return folder
        with datasets_bars():
            _build(cfg, folder, corpus, validation, Manifest(folder, fingerprint, settings, old), log, num_proc)
    return folder


def check_given_settings(folder: Path, cfg: Any, stored: Mapping[str, Any], given: Iterable[str]) -> None:
    """The settings the user gave (``given``: ``pretrain.data`` keys) must be the folder's."""
    keys = [k for k in settings_of(cfg, [], []) if k in set(given) and k not in ("corpus", "validation")]
    if not keys:
        return
    now = settings_of(cfg, [], [])
    wanted = {k: now[k] for k in keys}
    if any(stored.get(k) != v for k, v in wanted.items()):
        raise UserError(f"{folder} was prepared with other settings "
                        f"({first_difference(stored, wanted)}): pass the settings it was prepared with, "
                        f"or choose another pretrain.data.dir")


def _build(cfg: Any, folder: Path, corpus: list[Source], validation: list[Source], manifest: Manifest,
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
        tmp, final = tmp_path(folder, name), part_path(folder, name)
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
            check_tokenizer(tokenizer, spec)
            tokenizer.save_pretrained(str(tmp_path(folder, "tokenizer")))
            commit("tokenizer")
            tokenizer = load_saved_tokenizer(part_path(folder, "tokenizer"))
            manifest.finish_part("tokenizer", tokenizer=tokenizer_info(tokenizer, spec))
            log(f"tokenizer: {spec}, {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s)")
        tokenizer = load_saved_tokenizer(part_path(folder, "tokenizer"))
        id_type, position_type = id_type_of(tokenizer), position_type_of(int(d.seq_length))

        masker = Masker(tokenizer, float(d.mlm_probability), max_predictions=int(d.max_predictions))

        if "blocks" not in manifest.parts:
            t0 = time.perf_counter()
            plan = split_plan()
            total = (n_docs - len(plan)) if plan is not None else None
            ticker = _Ticker(log, "packing", total, "documents")
            stream, counts = pack_documents(train_docs(), tokenizer, int(d.seq_length), ticker.advance)
            raw = work / "blocks.arrow"
            try:
                rows = write_blocks(stream, raw, id_type)
            finally:
                ticker.close()
            if rows == 0:
                raise UserError("the training documents produced no tokens: check pretrain.data.corpus")
            save_file(raw, tmp_path(folder, "blocks"), int(d.shard_rows))
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
                rows = write_blocks(stream, raw, id_type)
            finally:
                ticker.close()
            if rows == 0:
                raise UserError("the validation documents produced no tokens: check pretrain.data.validation")
            rows = mask_to(open_file(raw), tmp_path(folder, "validation"), work, masker=masker, seed=EVAL_SEED,
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
                rows = mask_to(blocks, tmp_path(folder, name), work, masker=masker, seed=int(cfg.seed), epoch=k,
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
