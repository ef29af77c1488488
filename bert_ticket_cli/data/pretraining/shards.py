"""Writing the parts: packed blocks streamed into Arrow, the static masking of K copies (and
the validation blocks) and the sharded ``save_to_disk`` (step 4 of the package doc)."""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_ticket_cli.data.mlm import example_seed

#: Rows per Arrow record batch written while packing, and per masking batch.
WRITE_BATCH = 1000


def id_type_of(tokenizer: Any) -> str:
    return "uint16" if len(tokenizer) <= 65535 else "int32"


def position_type_of(seq_length: int) -> str:
    return "int16" if seq_length <= 32767 else "int32"


def save_shards(ds: Any, target: Path, shard_rows: int) -> None:
    ds.save_to_disk(str(target), num_shards=max(1, math.ceil(len(ds) / shard_rows)))


def write_blocks(blocks: Iterator[list[list[int]]], path: Path, id_type: str) -> int:
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
def datasets_bars() -> Iterator[None]:
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


def mask_to(blocks: Any, target: Path, work: Path, *, masker: Any, seed: int, epoch: int, id_type: str,
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
    save_shards(masked.with_format(None), target, shard_rows)
    return len(masked)


def open_file(path: Path):
    from datasets import Dataset

    return Dataset.from_file(str(path))


def save_file(path: Path, target: Path, shard_rows: int) -> None:
    ds = open_file(path)
    save_shards(ds, target, shard_rows)
    del ds
