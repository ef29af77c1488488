"""Random pruning, the baseline of Chen et al. (2020): random tickets at ``prune.sparsities``
(drawn once level 0 has trained, seed ``seed + level``), trained from the rewind point like
the magnitude tickets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bert_ticket_cli.methods.omp import sparsity_targets
from bert_ticket_cli.methods.random_masks import random_at_sparsity


class RandomPruning:
    name = "random"
    workflow = "lottery"

    def targets(self, cfg: Any, total: int) -> list[int]:
        return sparsity_targets(cfg, total)

    def next_tickets(self, level: int, *, trained, current, targets, shapes, total, cfg) -> Iterator[tuple[int, Any]]:
        if level != 0:
            return
        for k, n_rm in enumerate(targets[1:], start=1):
            yield k, random_at_sparsity(shapes, n_rm / total, seed=cfg.seed + k, scope=cfg.prune.scope)


METHOD = RandomPruning()
