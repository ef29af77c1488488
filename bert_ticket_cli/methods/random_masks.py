"""Random masks: the "random pruning" baselines of Chen et al. (2020).

* :func:`random_like` keeps exactly as many weights per matrix as a given ticket, at
  uniformly random positions (the baseline that isolates *where* a ticket's weights are).
* :func:`random_at_sparsity` draws masks at a sparsity, either uniformly over all prunable
  weights together (``global``: the per-matrix counts follow from the draw) or per matrix.

Reproducible: the same seed gives the same masks, on any machine.  Each matrix draws its
positions from its own generator, seeded from ``(seed, matrix name)``, so a matrix's mask
does not depend on which other matrices are in the set or in what order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.magnitude import SCOPES, round_half_up


def _derived_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _random_keep(shape: Sequence[int], n_keep: int, seed: int, name: str) -> torch.Tensor:
    """A bool tensor of ``shape`` with exactly ``n_keep`` True entries at random positions."""
    numel = math.prod(int(d) for d in shape)
    if not 0 <= n_keep <= numel:
        raise ValueError(f"{name}: cannot keep {n_keep} of {numel} weights")
    gen = torch.Generator().manual_seed(_derived_seed(seed, name))
    keep = torch.zeros(numel, dtype=torch.bool)
    keep[torch.randperm(numel, generator=gen)[:n_keep]] = True
    return keep.view(tuple(int(d) for d in shape))


def _check_sparsity(sparsity: Any) -> float:
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise UserError(f"sparsity must be in [0, 1), got {sparsity!r}: e.g. sparsity=0.5") from None
    if not (0.0 <= value < 1.0):
        raise UserError(f"sparsity must be in [0, 1), got {sparsity!r}: e.g. sparsity=0.5")
    return value


def random_like(ticket_or_masks: Any, *, seed: int) -> dict[str, torch.Tensor]:
    """New random masks keeping exactly as many weights per matrix as ``ticket_or_masks``.

    Takes a :class:`~bert_ticket_cli.sparsity.ticket.Ticket` (its unstructured ``masks``) or a
    ``{name: mask}`` dict (bool, or 0/1 of any dtype).  Returns bool masks on the CPU, in the
    same order.  For structured tickets use :func:`random_units_like` on ``heads`` / ``neurons``.
    """
    masks = getattr(ticket_or_masks, "masks", ticket_or_masks)
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("random_like needs a ticket with unstructured masks or a non-empty {name: mask} dict")
    out = {}
    for name, mask in masks.items():
        kept = int(torch.count_nonzero(mask))
        out[name] = _random_keep(tuple(mask.shape), kept, seed, name)
    return out


def random_units_like(units: torch.Tensor, *, seed: int, name: str = "units") -> torch.Tensor:
    """Structured baseline: a bool ``[layers, n]`` mask (heads or FFN neurons) keeping exactly as
    many units *per layer* (row) as ``units``, at random positions within each layer."""
    rows = []
    for layer, row in enumerate(units):
        rows.append(_random_keep((row.numel(),), int(torch.count_nonzero(row)), seed, f"{name}.{layer}"))
    return torch.stack(rows) if rows else torch.zeros(units.shape, dtype=torch.bool)


def random_at_sparsity(shapes: Mapping[str, Sequence[int]], sparsity: float, *, seed: int,
                       scope: str = "global") -> dict[str, torch.Tensor]:
    """Random bool masks with ``sparsity`` (fraction removed) over ``shapes``.

    ``global``: exactly ``round_half_up(sparsity * total)`` weights removed, a uniformly random
    subset of all the weights together (the per-matrix counts are one multivariate
    hypergeometric draw).  ``layer``: each matrix has ``round_half_up(sparsity * numel)``
    removed.
    """
    value = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise UserError(f"unknown pruning scope {scope!r}: use one of {', '.join(SCOPES)}")
    names = list(shapes)
    numels = [math.prod(int(d) for d in shapes[n]) for n in names]
    if scope == "global":
        total = sum(numels)
        n_remove = round_half_up(value * total)
        rng = np.random.default_rng(int(seed))
        removed = rng.multivariate_hypergeometric(np.asarray(numels, dtype=np.int64), n_remove,
                                                  method="marginals").tolist() if total else []
    else:
        removed = [round_half_up(value * n) for n in numels]
    return {name: _random_keep(tuple(shapes[name]), numel - int(r), seed, name)
            for name, numel, r in zip(names, numels, removed)}
