"""Pieces shared by the benchmarks that train a small BERT with ``fit``
(``finetune_throughput.py``, ``mask_overhead.py``): the model size and its command-line
flags, a synthetic fixed-length dataset and its collate, the task model, the training
config, a clock hook, and a quiet sandbox for one ``fit`` run.

Imports torch: import this module only after ``_common.set_offline()`` and
``_common.passive_openmp()`` (the scripts call both before importing torch).  Each script
keeps its own sizes (DEFAULT / QUICK), constants and validation beyond the shared checks.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import _common
import numpy as np
import torch

if TYPE_CHECKING:
    from bert_ticket_cli.artifacts.paths import RunDir


# ---------------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int
    steps: int  # timed optimizer steps per side per round
    warmup_steps: int  # untimed steps before them (N1 in the scripts)
    rounds: int


def add_size_args(p: argparse.ArgumentParser, default: dict, quick: dict) -> None:
    """The ``Size`` flags (all optional: unset means the script's DEFAULT, or QUICK with --quick)."""

    def defaults(key: str) -> str:
        d, q = default[key], quick[key]
        return f"default {d}" if d == q else f"default {d}; quick {q}"

    p.add_argument("--layers", type=int, help=f"encoder layers ({defaults('layers')})")
    p.add_argument("--hidden", type=int, help=f"hidden size ({defaults('hidden')})")
    p.add_argument("--heads", type=int, help="attention heads (default hidden/64)")
    p.add_argument("--intermediate", type=int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--vocab", type=int, help=f"vocabulary size ({defaults('vocab')}, bert-base-uncased)")
    p.add_argument("--seq", type=int, help=f"tokens per example ({defaults('seq')})")
    p.add_argument("--batch", type=int, help=f"examples per optimizer step ({defaults('batch')})")
    p.add_argument("--steps", type=int, help=f"timed optimizer steps per side per round ({defaults('steps')})")
    p.add_argument("--warmup-steps", type=int, help=f"untimed steps before the timed ones ({defaults('warmup_steps')})")
    p.add_argument("--rounds", type=int, help=f"alternating rounds; medians are reported ({defaults('rounds')})")


def size_from_args(p: argparse.ArgumentParser, args: argparse.Namespace, default: dict, quick: dict) -> Size:
    """DEFAULT or QUICK, overridden by the flags given; heads and intermediate follow an
    explicit --hidden unless given too.  Reports impossible sizes through ``p.error``."""
    base = dict(quick if args.quick else default)
    for key in base:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    if args.hidden is not None:
        if args.heads is None:
            base["heads"] = max(1, args.hidden // 64)
        if args.intermediate is None:
            base["intermediate"] = 4 * args.hidden
    size = Size(**base)
    if size.hidden % size.heads:
        p.error(f"--hidden {size.hidden} is not a multiple of --heads {size.heads}")
    if size.steps < 1 or size.warmup_steps < 1 or size.rounds < 1:
        p.error("--steps, --warmup-steps and --rounds must be >= 1")
    return size


# ----------------------------------------------------------------------------------- data

PAIR_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")
SINGLE_COLUMNS = ("input_ids", "attention_mask", "labels")


def make_dataset(n: int, size: Size, seed: int, *, pair: bool = True, min_id: int | None = None):
    """``n`` fixed-length rows with binary labels, random real length, padded to ``seq``.

    ``pair``: [CLS] a [SEP] b [SEP] with ``token_type_ids`` (``PAIR_COLUMNS``); otherwise
    [CLS] ... [SEP] without them (``SINGLE_COLUMNS``).  Token ids are drawn from
    [``min_id``, vocab); by default 1000 (past BERT's special and unused ids), or 110 for a
    vocabulary of 2000 or fewer.  Every row has exactly ``seq`` ids, so every batch has the
    same shape on both sides of a comparison.
    """
    from datasets import Dataset

    if min_id is None:
        min_id = 1000 if size.vocab > 2000 else 110
    rng = np.random.default_rng(seed)
    seq = size.seq
    ids = rng.integers(min_id, size.vocab, size=(n, seq))
    lengths = rng.integers(max(4, seq // 2), seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    split = lengths // 2
    ids[:, 0] = 101  # [CLS]
    if pair:
        ids[np.arange(n), split] = 102  # [SEP] between the two segments
    ids[np.arange(n), lengths - 1] = 102  # [SEP] at the end
    ids = np.where(mask == 1, ids, 0)  # [PAD] = 0
    columns = {"input_ids": ids.tolist(), "attention_mask": mask.tolist()}
    if pair:
        types = (np.arange(seq)[None, :] > split[:, None]) & (mask == 1)  # segment b
        columns["token_type_ids"] = types.astype(np.int64).tolist()
    columns["labels"] = rng.integers(0, 2, size=n).tolist()
    return Dataset.from_dict(columns)


#: SST-2's training-set lengths (BERT's pre-tokenizer words + [CLS] and [SEP], 67,349 rows):
#: the deciles 0, 10, ..., 100 %; the generated stand-in when the GLUE files are absent.
SST2_DECILES = (3, 4, 5, 6, 8, 9, 12, 14, 18, 25, 59)
GLUE_FOLDERS = {"sst2": ("SST-2", ("sentence",)), "mrpc": ("MRPC", ("#1 String", "#2 String"))}


def task_lengths(task: str, glue_dir: str | Path, max_len: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Token counts of a GLUE task's training rows, capped at ``max_len``, and where they came
    from.  Counted with BERT's pre-tokenizer (words and punctuation; WordPiece would split a
    few rare words further, so this slightly underestimates) plus [CLS] / [SEP] (pairs: 3
    special tokens).  Without the files: 67,349 lengths drawn from SST-2's deciles."""
    import csv

    folder, columns = GLUE_FOLDERS[task]
    path = Path(glue_dir) / folder / "train.tsv"
    if path.is_file():
        from tokenizers.pre_tokenizers import BertPreTokenizer

        pre = BertPreTokenizer()
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        lengths = [sum(len(pre.pre_tokenize_str(r[c] or "")) for c in columns) + len(columns) + 1 for r in rows]
        return np.minimum(np.asarray(lengths, dtype=np.int64), max_len), str(path)
    rng = np.random.default_rng(seed)
    u = rng.random(67349) * 10
    lo = np.floor(u).astype(int)
    d = np.asarray(SST2_DECILES, dtype=float)
    lengths = np.rint(d[lo] + (u - lo) * (d[np.minimum(lo + 1, 10)] - d[lo])).astype(np.int64)
    return np.minimum(lengths, max_len), "generated (SST-2 deciles)"


def make_varlen_dataset(n: int, size: Size, seed: int, pool: np.ndarray, *, pair: bool):
    """``n`` unpadded rows whose lengths are drawn (seeded) from ``pool``: [CLS] ids [SEP], with
    ``token_type_ids`` for pairs; binary labels.  Padded per batch by :class:`PadCollate`."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    lengths = rng.choice(pool, size=n)
    min_id = 1000 if size.vocab > 2000 else 110
    ids, masks, types = [], [], []
    for length in lengths.tolist():
        length = max(3, int(length))
        row = rng.integers(min_id, size.vocab, size=length)
        row[0], row[-1] = 101, 102
        split = length // 2
        if pair:
            row[split] = 102
        ids.append(row.tolist())
        masks.append([1] * length)
        types.append([0] * (split + 1) + [1] * (length - split - 1))
    columns = {"input_ids": ids, "attention_mask": masks}
    if pair:
        columns["token_type_ids"] = types
    columns["labels"] = rng.integers(0, 2, size=n).tolist()
    return Dataset.from_dict(columns)


class PadCollate:
    """Dynamic padding: rows -> LongTensors padded with 0 to the longest row of the batch (what
    ``DataCollatorWithPadding`` does for BERT: [PAD] = 0, attention 0, segment 0)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, rows):
        width = max(len(row["input_ids"]) for row in rows)
        out = {}
        for k in self.keys:
            if k == "labels":
                out[k] = torch.tensor([row[k] for row in rows], dtype=torch.long)
            else:
                out[k] = torch.tensor([row[k] + [0] * (width - len(row[k])) for row in rows], dtype=torch.long)
        return out


class StackCollate:
    """Rows of equal length -> a dict of stacked LongTensors (no padding needed)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, rows):
        return {k: torch.tensor([row[k] for row in rows], dtype=torch.long) for k in self.keys}


# ---------------------------------------------------------------------------------- model

def bert_overrides(size: Size) -> dict:
    return dict(
        num_hidden_layers=size.layers, hidden_size=size.hidden, num_attention_heads=size.heads,
        intermediate_size=size.intermediate, max_position_embeddings=max(512, size.seq),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic: losses comparable
    )


def build_task_model(size: Size):
    """The task model as the CLI builds it (``build_model``; attention: the project default, SDPA)."""
    from bert_ticket_cli.config.schema import ModelConfig
    from bert_ticket_cli.model.build import build_model

    cfg = ModelConfig(name="bench", config=bert_overrides(size))
    return build_model(cfg, kind="classification", num_labels=2, vocab_size=size.vocab)


# ------------------------------------------------------------------------------------ fit

def train_config(size: Size, steps: int, *, lr: float, weight_decay: float, max_grad_norm: float):
    """``steps`` optimizer steps at a constant ``lr``; evaluation, checkpoints and logging
    (but for the last step) off."""
    from bert_ticket_cli.config.schema import TrainConfig

    return TrainConfig(max_steps=steps, batch_size=size.batch, lr=lr, weight_decay=weight_decay,
                       warmup_ratio=0.0, warmup_steps=0, schedule="constant", max_grad_norm=max_grad_norm,
                       eval_every=0, log_every=10**9, save_every=0)


class StepClock:
    """A ``StepHooks`` that only notes when each optimizer step of ``fit`` finished.

    ``fit`` calls ``after_step`` once per optimizer step, right after the weights are
    updated (listed last, the clock's step includes every other hook's ``after_step``); one
    list append per step is the whole cost (well under a microsecond against steps of tens
    of milliseconds).  ``before_step`` does nothing.
    """

    def __init__(self, sync: bool = False) -> None:
        self.times: list[float] = []
        self.sync = sync  # on a GPU: wait for the step's kernels before noting the time

    def before_step(self, model: torch.nn.Module) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.times.append(_common.now())


@contextlib.contextmanager
def fit_sandbox(prefix: str) -> Iterator[RunDir]:
    """A fresh ``RunDir`` in a temporary folder for one ``fit``, with stdout captured.

    ``fit`` prints one log line at its last step (and would draw a rich progress bar on a
    terminal): the capture keeps the output a table, and it is not a terminal, so no bar
    refresh thread runs, as in a batch job.  ``fit`` installs stop-signal handlers; the
    previous ones are put back afterwards.
    """
    from bert_ticket_cli.artifacts.paths import RunDir

    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp, contextlib.redirect_stdout(io.StringIO()):
            yield RunDir(Path(tmp) / "run")
    finally:
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
