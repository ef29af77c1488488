"""OMP, one-shot magnitude pruning: every ticket (one per ``prune.sparsities``) is pruned by
magnitude from the fine-tuned dense weights of level 0, and trained from the rewind point.
With ``prune.target_sparsity`` only the sparsities up to the target are trained (the target
included, added if the list lacks it); random pruning shares this choice.  With
``prune.pattern=N:M`` there is one ticket, at sparsity 1 - N/M: each group of M input weights
keeps its N largest (random pruning: N random ones)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bert_ticket_cli.methods.imp import magnitude_masks, pattern_of, pattern_targets
from bert_ticket_cli.sparsity.nm import nm_magnitude_masks


def chosen_sparsities(sparsities: Any, target: float | None) -> list[float]:
    """``prune.sparsities`` in order; with ``prune.target_sparsity`` only those up to the target,
    and the target itself (added when the list does not hold it): the run stops at the target."""
    chosen = [float(s) for s in sparsities]
    if target is None:
        return chosen
    chosen = [s for s in chosen if s <= target + 1e-12]
    if not any(abs(s - target) <= 1e-12 for s in chosen):
        chosen.append(float(target))
    return sorted(chosen)


def sparsity_targets(cfg: Any, total: int) -> list[int]:
    """Level 0 (dense), then one level per chosen sparsity (:func:`chosen_sparsities`)."""
    return [0] + [int(round(s * total)) for s in chosen_sparsities(cfg.prune.sparsities, cfg.prune.target_sparsity)]


class OneShot:
    """Every ticket is drawn once level 0 has trained, one per chosen sparsity; a subclass says
    how (:meth:`masks`)."""

    workflow = "lottery"

    def targets(self, cfg: Any, total: int) -> list[int]:
        nm = pattern_of(cfg)
        return pattern_targets(nm, total) if nm is not None else sparsity_targets(cfg, total)

    def next_tickets(self, level: int, *, trained, current, targets, shapes, total, cfg) -> Iterator[tuple[int, Any]]:
        if level != 0:
            return
        for k, n_rm in enumerate(targets[1:], start=1):
            yield k, self.masks(k, n_rm, trained=trained, current=current, shapes=shapes, total=total, cfg=cfg)

    def masks(self, level: int, n_removed: int, *, trained, current, shapes, total, cfg) -> Any:
        raise NotImplementedError


class Omp(OneShot):
    name = "omp"

    def masks(self, level: int, n_removed: int, *, trained, current, shapes, total, cfg) -> Any:
        nm = pattern_of(cfg)
        if nm is not None:
            return nm_magnitude_masks(trained, current, nm)
        return magnitude_masks(trained, current, n_removed, total, cfg.prune.scope)


METHOD = Omp()
