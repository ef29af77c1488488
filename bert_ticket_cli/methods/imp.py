"""IMP, iterative magnitude pruning (Chen et al., NeurIPS 2020): train, prune the smallest
surviving weights (global over the prunable set by default), rewind the survivors to the
rewind point, train again; one ticket per level, each nested in the one before."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from bert_ticket_cli.methods.magnitude import global_magnitude_prune, layerwise_magnitude_prune, level_target


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
        n_levels = p.levels
        if p.target_sparsity is not None:
            n_levels = next(k for k in range(1, 10_000)
                            if level_target(k, rate=p.rate, schedule=p.schedule, total=total)
                            >= p.target_sparsity * total)
        return [level_target(k, rate=p.rate, schedule=p.schedule, total=total) for k in range(n_levels + 1)]

    def next_tickets(self, level: int, *, trained, current, targets, shapes, total, cfg) -> Iterator[tuple[int, Any]]:
        """The next level's ticket, from this level's trained weights."""
        if level + 1 < len(targets):
            yield level + 1, magnitude_masks(trained, current, targets[level + 1], total, cfg.prune.scope)


METHOD = Imp()
