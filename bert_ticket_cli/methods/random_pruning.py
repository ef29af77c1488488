"""Random pruning, the baseline of Chen et al. (2020): random tickets at ``prune.sparsities``
(drawn once level 0 has trained, seed ``seed + level``), trained from the rewind point like
the magnitude tickets.  With ``prune.pattern=N:M``: one ticket keeping N random weights of
every group of M input weights."""

from __future__ import annotations

from typing import Any

from bert_ticket_cli.methods.imp import pattern_of
from bert_ticket_cli.methods.omp import OneShot
from bert_ticket_cli.methods.random_masks import random_at_sparsity
from bert_ticket_cli.sparsity.nm import nm_random_masks


class RandomPruning(OneShot):
    name = "random"

    def masks(self, level: int, n_removed: int, *, trained, current, shapes, total, cfg) -> Any:
        nm = pattern_of(cfg)
        if nm is not None:
            return nm_random_masks(shapes, nm, seed=cfg.seed + level)
        return random_at_sparsity(shapes, n_removed / total, seed=cfg.seed + level, scope=cfg.prune.scope)


METHOD = RandomPruning()
