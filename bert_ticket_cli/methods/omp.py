"""OMP, one-shot magnitude pruning: every ticket (one per ``prune.sparsities``) is pruned by
magnitude from the fine-tuned dense weights of level 0, and trained from the rewind point."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bert_ticket_cli.methods.imp import magnitude_masks


def sparsity_targets(cfg: Any, total: int) -> list[int]:
    """Level 0 (dense), then one level per ``prune.sparsities``."""
    return [0] + [int(round(s * total)) for s in cfg.prune.sparsities]


class Omp:
    name = "omp"
    workflow = "lottery"

    def targets(self, cfg: Any, total: int) -> list[int]:
        return sparsity_targets(cfg, total)

    def next_tickets(self, level: int, *, trained, current, targets, shapes, total, cfg) -> Iterator[tuple[int, Any]]:
        if level != 0:
            return
        for k, n_rm in enumerate(targets[1:], start=1):
            yield k, magnitude_masks(trained, current, n_rm, total, cfg.prune.scope)


METHOD = Omp()
