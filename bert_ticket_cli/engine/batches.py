"""Which examples each process sees, as a pure function of (seed, epoch, step).

One sampler, :class:`StepBatches`, over an epoch *order* (anything sliced as ``order[lo:hi]``
into an array of row indices): a full permutation drawn from ``(seed, epoch)``
(:func:`epoch_order`, fine-tuning), or :class:`ChunkedOrder`, which never holds an array of
the corpus's size (pre-training).  Optimizer step ``s`` consumes positions ``[s*B, (s+1)*B)``
of the order for the global batch ``B``; inside it, micro-batch ``a`` of rank ``r`` is the
``(a*world + r)``-th slice of ``micro`` examples.  So the union of what all ranks see in a step
does not depend on the number of processes or the accumulation, and a resumed run restarts
exactly at ``(epoch, step_in_epoch)`` with no sampler state to save.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

import numpy as np

from bert_ticket_cli.errors import UserError


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Whole optimizer steps in one pass over ``n`` examples (the last partial batch is dropped)."""
    steps = int(n) // int(global_batch)
    if steps == 0:
        raise UserError(f"the training set has {n} examples, fewer than one global batch "
                        f"(train.batch_size={global_batch}): lower train.batch_size or add data")
    return steps


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's permutation of ``n`` examples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


#: Global batches per mega-batch of :func:`length_grouped_order` (the rows sorted together).
MEGA_BATCHES = 50


def length_grouped_order(lengths: Any, global_batch: int, seed: int, epoch: int, *,
                         mega: int = MEGA_BATCHES) -> np.ndarray:
    """One epoch's order in which each global batch holds rows of similar length
    (``train.group_by_length``): less padding, so fewer wasted FLOPs with dynamic padding.

    The epoch's permutation (:func:`epoch_order`) is cut into mega-batches of ``mega`` global
    batches; each mega-batch is sorted by length, longest first (ties keep the permutation's
    order), and cut into global batches; then the epoch's whole global batches are shuffled
    (seeded by ``(seed, epoch)``), so long and short batches alternate randomly.  The rows of
    an incomplete last batch stay at the end (the epoch drops them).  A pure function of
    ``(lengths, seed, epoch)``, an order like any other: every process count and a resumed run
    see the same global batches, step for step.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n, b = len(lengths), int(global_batch)
    perm = epoch_order(n, seed, epoch)
    span = max(1, int(mega)) * b
    parts = []
    for lo in range(0, n, span):
        chunk = perm[lo:lo + span]
        parts.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
    grouped = np.concatenate(parts) if parts else perm
    whole = n // b
    batches = grouped[:whole * b].reshape(whole, b)
    shuffle = np.random.default_rng([seed, epoch, 2]).permutation(whole)
    return np.concatenate([batches[shuffle].reshape(-1), grouped[whole * b:]])


SAMPLINGS = ("proportional", "uniform", "temperature")


def grouped_order(sizes: list[int], global_batch: int, seed: int, epoch: int, *, sampling: str = "proportional",
                  temperature: float = 1.0) -> tuple[np.ndarray, list[int]]:
    """One epoch's order over several datasets concatenated (group ``g``'s rows at
    ``sum(sizes[:g]) + 0..sizes[g]-1``) in which every global batch comes from one group (a
    multi-task epoch): ``(order, group of each step)``.

    The epoch has ``sum(sizes[g] // global_batch)`` steps (each group's last partial batch is
    dropped).  ``proportional``: every whole batch of every group once, the batches in a seeded
    shuffled order (MT-DNN's sampling).  ``uniform`` / ``temperature``: each step's group drawn
    with probability ``1 / G`` or ``n_g^(1/T) / sum``; a group's batches are taken from seeded
    permutations of its rows, a fresh one each time the group's rows run out.  A pure function of
    ``(seed, epoch)``: identical on every process and for every process count."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    per_group = [int(n) // int(global_batch) for n in sizes]
    steps = sum(per_group)
    if steps == 0:
        raise UserError(f"no task has a whole global batch (train.batch_size={global_batch}) of training data")
    rng = np.random.default_rng([seed, epoch, 0])
    if sampling == "proportional":
        groups = np.repeat(np.arange(len(sizes)), per_group)
        rng.shuffle(groups)
    else:
        weights = np.ones(len(sizes)) if sampling == "uniform" else np.power(np.asarray(sizes, float), 1.0 / temperature)
        weights = np.where(np.asarray(per_group) > 0, weights, 0.0)
        groups = rng.choice(len(sizes), size=steps, p=weights / weights.sum())
    used = [0] * len(sizes)
    perms: dict[tuple[int, int], np.ndarray] = {}
    out = np.empty(steps * global_batch, dtype=np.int64)
    for step, g in enumerate(groups.tolist()):
        wrap, k = divmod(used[g], per_group[g])
        used[g] += 1
        perm = perms.get((g, wrap))
        if perm is None:
            perm = perms[(g, wrap)] = np.random.default_rng([seed, epoch, 1, g, wrap]).permutation(sizes[g])
        out[step * global_batch:(step + 1) * global_batch] = perm[k * global_batch:(k + 1) * global_batch] + offsets[g]
    return out, groups.tolist()


class ChunkedOrder:
    """One epoch's order of ``n`` rows without an array of size ``n``.

    The rows are cut into chunks of ``chunk`` consecutive rows (the last may be shorter).  The
    epoch visits the chunks in a permutation drawn from ``(seed, epoch)``, and the rows of each
    chunk in a permutation drawn from ``(seed, epoch, chunk index)``, computed when first needed
    and cached (a few chunks).  Memory: 8 bytes per chunk plus the cached chunks.
    """

    def __init__(self, n: int, *, seed: int, epoch: int, chunk: int, cache: int = 4):
        if n < 0 or chunk < 1:
            raise ValueError(f"bad ChunkedOrder(n={n}, chunk={chunk})")
        self.n, self.chunk, self.seed, self.epoch = int(n), int(chunk), int(seed) & ((1 << 64) - 1), int(epoch)
        self.n_chunks = -(-self.n // self.chunk)
        self.last = self.n - (self.n_chunks - 1) * self.chunk if self.n else 0
        slots = np.arange(self.n_chunks, dtype=np.int32 if self.n_chunks < 2**31 else np.int64)
        np.random.default_rng([self.seed, self.epoch, 0]).shuffle(slots)
        #: slot j of the epoch holds chunk slots[j].
        self.slots = slots
        self.short_slot = int(np.flatnonzero(slots == self.n_chunks - 1)[0]) if self.n_chunks else 0
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(1, int(cache))

    def __len__(self) -> int:
        return self.n

    def _slot_start(self, j: int) -> int:
        return j * self.chunk - (self.chunk - self.last if j > self.short_slot else 0)

    def _slot_at(self, p: int) -> int:
        boundary = self.short_slot * self.chunk
        if p < boundary:
            return p // self.chunk
        if p < boundary + self.last:
            return self.short_slot
        return self.short_slot + 1 + (p - boundary - self.last) // self.chunk

    def chunk_rows(self, c: int) -> np.ndarray:
        """The rows of chunk ``c`` in this epoch's order."""
        rows = self._cache.get(c)
        if rows is None:
            size = self.last if c == self.n_chunks - 1 else self.chunk
            rows = np.random.default_rng([self.seed, self.epoch, 1, c]).permutation(size) + c * self.chunk
            self._cache[c] = rows
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(c)
        return rows

    def take(self, lo: int, hi: int) -> np.ndarray:
        """The rows at positions ``[lo, hi)`` of the epoch's order."""
        lo, hi = max(0, int(lo)), min(self.n, int(hi))
        pieces = []
        p = lo
        while p < hi:
            j = self._slot_at(p)
            start = self._slot_start(j)
            rows = self.chunk_rows(int(self.slots[j]))
            end = min(hi, start + len(rows))
            pieces.append(rows[p - start:end - start])
            p = end
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.n)
            if step != 1:
                raise ValueError("ChunkedOrder slices take no step")
            return self.take(lo, hi)
        p = int(key) + (self.n if int(key) < 0 else 0)
        if not 0 <= p < self.n:
            raise IndexError(key)
        return int(self.take(p, p + 1)[0])


class StepBatches:
    """A batch sampler (``DataLoader(batch_sampler=...)``) for one rank and one epoch of ``order``."""

    def __init__(self, order: Any, *, global_batch: int, micro_batch: int, world_size: int, rank: int,
                 steps: int, start_step: int = 0):
        if global_batch % (micro_batch * world_size):
            raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                             f"{world_size} processes")
        if steps * global_batch > len(order):
            raise ValueError(f"{steps} steps of {global_batch} rows need more than the {len(order)} rows")
        self.order = order
        self.global_batch, self.micro, self.world, self.rank = global_batch, micro_batch, world_size, rank
        self.accumulation = global_batch // (micro_batch * world_size)
        self.steps, self.start_step = steps, start_step

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            base = step * self.global_batch
            for a in range(self.accumulation):
                lo = base + (a * self.world + self.rank) * self.micro
                yield self.order[lo: lo + self.micro].tolist()

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.accumulation
