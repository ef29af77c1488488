"""Which examples each process sees, as a pure function of (seed, epoch, step).

Every epoch is one permutation drawn from ``(seed, epoch)``.  Optimizer step ``s`` consumes
the slice ``order[s*B:(s+1)*B]`` of the global batch ``B``; inside it, micro-batch ``a`` of
rank ``r`` is the ``(a*world + r)``-th chunk of ``micro`` examples.  So the union of what all
ranks see in a step does not depend on the number of processes or the accumulation, and a
resumed run restarts exactly at ``(epoch, step_in_epoch)`` with no sampler state to save.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class EpochBatches:
    """A batch sampler (``DataLoader(batch_sampler=...)``) for one rank and one epoch."""

    def __init__(self, n: int, *, seed: int, epoch: int, global_batch: int, micro_batch: int,
                 world_size: int, rank: int, steps: int, start_step: int = 0):
        assert global_batch == micro_batch * world_size * (global_batch // (micro_batch * world_size))
        self.order = epoch_order(n, seed, epoch)
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
        return (self.steps - self.start_step) * self.accumulation
