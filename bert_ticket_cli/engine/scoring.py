"""A gradient pass without training: forward and backward over a dataset in a fixed order,
nothing updated (super tickets' importance scores, :mod:`bert_ticket_cli.model.gates`).

The model is in eval mode (no dropout).  Batch ``b`` is ``dataset[b*B : (b+1)*B]`` in the
dataset's own order; with N processes, round ``r`` gives batch ``start + r*N + rank`` to each
rank (a rank past the end idles), so every process runs the same number of rounds and the
stop check after each round is a collective every rank reaches.  The caller's
``after_backward`` collects what it needs from the gradients (and clears them) after every
batch; the sums of the processes are reduced by the caller.  No optimizer, no DDP wrapper:
the weights need no gradient, only whatever the caller hooked in.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader


def gradient_pass(accelerator: Any, model: torch.nn.Module, dataset: Any, collate: Callable, batch_size: int, *,
                  after_backward: Callable[[], None], start: int = 0, max_batches: int | None = None,
                  should_stop: Callable[[], bool] | None = None, num_workers: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, bool]:
    """Run batches ``start .. n-1`` (``n`` = all batches, or ``max_batches``); returns
    ``(next batch, stopped)``: ``stopped`` when ``should_stop()`` said so after a round (the
    batches before ``next batch`` are done on every process)."""
    n_total = -(-len(dataset) // batch_size)
    n = n_total if max_batches is None else min(n_total, max_batches)
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds = -(-(n - start) // world) if n > start else 0
    mine = [start + r * world + rank for r in range(rounds)]
    spans = [list(range(b * batch_size, min((b + 1) * batch_size, len(dataset)))) for b in mine if b < n]
    loader = iter(DataLoader(dataset, batch_sampler=spans, collate_fn=collate, num_workers=num_workers))
    model.to(accelerator.device)
    model.eval()
    for r in range(rounds):
        if start + r * world + rank < n:
            batch = {k: v.to(accelerator.device) for k, v in next(loader).items()}
            with accelerator.autocast():
                loss = model(**batch).loss
            loss.backward()
            after_backward()
        done = min(start + (r + 1) * world, n)
        if progress is not None:
            progress(done, n)
        if should_stop is not None and done < n and should_stop():
            return done, True
    return n, False
