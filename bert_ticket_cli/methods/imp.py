"""IMP, iterative magnitude pruning (Chen et al., NeurIPS 2020): train, prune the smallest
surviving weights (global over the prunable set by default), rewind the survivors to the
rewind point, train again; one ticket per level, each nested in the one before.

With ``prune.pattern=N:M`` the sparsity is fixed at 1 - N/M, so IMP is one level: train,
prune every group of M input weights to its N largest, rewind, retrain (the config rules ask
for ``prune.levels=1``; iterating further has no meaning for a fixed pattern)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from bert_ticket_cli.methods.magnitude import global_magnitude_prune, layerwise_magnitude_prune, level_target
from bert_ticket_cli.sparsity.nm import nm_magnitude_masks, parse_pattern


def pattern_of(cfg: Any) -> tuple[int, int] | None:
    """The run's N:M pattern (``prune.pattern``), or None (unstructured)."""
    return parse_pattern(getattr(cfg.prune, "pattern", None))


def pattern_targets(nm: tuple[int, int], total: int) -> list[int]:
    """Level 0 (dense) and the one N:M ticket: (M - N) of every M weights removed."""
    return [0, total // nm[1] * (nm[1] - nm[0])]


def magnitude_masks(trained: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor], n_remove: int,
                    total: int, scope: str) -> dict[str, torch.Tensor]:
    """``current`` pruned further by magnitude to ``n_remove`` of ``total`` weights removed:
    over all matrices together (``global``) or the same fraction of each (``layer``)."""
    if scope == "global":
        return global_magnitude_prune(trained, current, n_remove)
    return layerwise_magnitude_prune(trained, current, n_remove / total)


class Imp:
    name = "imp"
    workflow = "lottery"

    def targets(self, cfg: Any, total: int) -> list[int]:
        """``prune.levels`` levels, or as many as ``prune.target_sparsity`` needs."""
        p = cfg.prune
        nm = pattern_of(cfg)
        if nm is not None:
            return pattern_targets(nm, total)
        n_levels = p.levels
        if p.target_sparsity is not None:
            n_levels = next(k for k in range(1, 10_000)
                            if level_target(k, rate=p.rate, schedule=p.schedule, total=total)
                            >= p.target_sparsity * total)
        return [level_target(k, rate=p.rate, schedule=p.schedule, total=total) for k in range(n_levels + 1)]

    def next_tickets(self, level: int, *, trained, current, targets, shapes, total, cfg) -> Iterator[tuple[int, Any]]:
        """The next level's ticket, from this level's trained weights."""
        nm = pattern_of(cfg)
        if nm is not None and level + 1 < len(targets):
            yield level + 1, nm_magnitude_masks(trained, current, nm)
        elif level + 1 < len(targets):
            yield level + 1, magnitude_masks(trained, current, targets[level + 1], total, cfg.prune.scope)


METHOD = Imp()
