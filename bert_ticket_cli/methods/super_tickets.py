"""Super tickets (Liang et al., ACL 2021): structured tickets at many levels from the
first-order importance of every attention head and FFN unit of the fine-tuned model.

The importance itself is measured by :class:`bert_ticket_cli.model.gates.ImportanceProbe`
during one pass over the training split (:mod:`bert_ticket_cli.workflows.super_tickets` runs
it); this module turns the scores into tickets.  Everything here is pure and deterministic.

**Levels.**  Level ``l`` (default grid 0.1 .. 0.8, as the paper) masks

- ``round(h_l x H)`` of the model's ``H`` heads (``h_l`` = ``method.head_levels``, default
  ``l``), one global ranking, at least ``min_heads_per_layer`` kept in every layer;
- ``round(f_l x U)`` of the ``U`` FFN units (whole FFN sub-layers by default, or neurons),
  ``f_l`` = ``method.ffn_levels``, default the paper's ``10 l / 12``: ``round(10 l)`` of
  BERT-base's 12 FFN layers, the same fraction for other depths.

Rounding is half up (:func:`~.magnitude.round_half_up`) everywhere.

**Kinds.**  *winning* masks the lowest scores, *losing* the highest, *random* the same counts
drawn uniformly without replacement (globally, or with ``preserve_layer_ratio`` the winning
ticket's count in every layer), seeded.  The reference code draws its random heads *with*
replacement (so its random tickets keep more heads than its winning ones) and indexes layers
with the head count; neither is reproduced here.

**Nested.**  Each kind removes units in one fixed order (sorted scores, or one seeded random
permutation), skipping a head whose layer is down to ``min_heads_per_layer``; level ``k``
removes the first ``count_k`` units of that order, so a higher level masks a superset of a
lower one.
"""

from __future__ import annotations

import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.magnitude import round_half_up
from bert_ticket_cli.methods.random_masks import _derived_seed

KINDS = ("winning", "random", "losing")
#: The paper's FFN grid: level l removes round(10 l) of BERT-base's 12 FFN sub-layers.
PAPER_FFN_FRACTION = 10.0 / 12.0

Structure = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


def normalize_heads(scores: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Each layer's head scores divided by their L2 norm (Michel et al.'s normalisation)."""
    scores = scores.double()
    return scores / (scores.norm(p=2, dim=-1, keepdim=True) + eps)


def level_fractions(levels: list[float], head_levels: list[float] | None = None,
                    ffn_levels: list[float] | None = None) -> list[tuple[float, float]]:
    """``(head fraction, FFN fraction)`` masked at each level."""
    heads = list(head_levels) if head_levels else list(levels)
    ffn = list(ffn_levels) if ffn_levels else [l * PAPER_FFN_FRACTION for l in levels]
    if len(heads) != len(levels) or len(ffn) != len(levels):
        raise UserError(f"method.head_levels / method.ffn_levels need one value per level ({len(levels)} levels)")
    return list(zip(heads, ffn))


def counts(fractions: list[tuple[float, float]], n_heads: int, n_ffn: int) -> list[tuple[int, int]]:
    """Heads and FFN units masked at each level (rounded half up; the 1e-9 absorbs float error
    such as 0.3 * 10 / 12 * 6 = 1.4999999999999998)."""
    return [(round_half_up(h * n_heads + 1e-9), round_half_up(f * n_ffn + 1e-9)) for h, f in fractions]


def _order(scores: torch.Tensor, kind: str, gen: torch.Generator | None) -> torch.Tensor:
    """Flat indices in removal order: ascending scores (winning), descending (losing) or a
    random permutation; ties by index (a stable sort)."""
    flat = scores.reshape(-1).double()
    if kind == "winning":
        return torch.sort(flat, stable=True).indices
    if kind == "losing":
        return torch.sort(-flat, stable=True).indices
    return torch.randperm(flat.numel(), generator=gen)


def _removal_sequence(order: torch.Tensor, per_row: int, min_kept: int) -> list[int]:
    """``order`` without the units that would leave their row with fewer than ``min_kept``."""
    left: dict[int, int] = {}
    out = []
    for idx in order.tolist():
        row = idx // per_row
        kept = left.get(row, per_row)
        if kept > min_kept:
            out.append(idx)
            left[row] = kept - 1
    return out


def _masks_from_sequence(seq: list[int], counts_: list[int], shape: tuple[int, ...]) -> list[torch.Tensor]:
    masks = []
    for n in counts_:
        keep = torch.ones(int(torch.tensor(shape).prod()), dtype=torch.bool)
        keep[seq[:n]] = False
        masks.append(keep.view(shape))
    return masks


def _per_row_random(reference: list[torch.Tensor], seed: int, name: str) -> list[torch.Tensor]:
    """Random masks with the reference masks' kept count in every row; nested because each row
    removes a prefix of one seeded permutation and the reference counts only fall."""
    rows, width = reference[0].shape
    perms = [torch.randperm(width, generator=torch.Generator().manual_seed(_derived_seed(seed, f"{name}.{r}")))
             for r in range(rows)]
    out = []
    for ref in reference:
        keep = torch.ones(rows, width, dtype=torch.bool)
        for r in range(rows):
            keep[r, perms[r][: int((~ref[r]).sum())]] = False
        out.append(keep)
    return out


def nested_tickets(head_scores: torch.Tensor, ffn_scores: torch.Tensor, *, levels: list[float], kind: str,
                   seed: int = 0, min_heads_per_layer: int = 1, ffn_unit: str = "layer",
                   head_levels: list[float] | None = None, ffn_levels: list[float] | None = None,
                   preserve_layer_ratio: bool = False, normalize: bool = True,
                   intermediate_size: int | None = None) -> list[Structure]:
    """The ``kind`` ticket of every level: ``(heads [L,H], neurons [L,I], ffn_layers [L] or None)``,
    bool, True = kept.  ``ffn_scores`` is ``[L]`` (``ffn_unit=layer``; then ``intermediate_size``
    gives the neurons' width) or ``[L, I]``."""
    if kind not in KINDS:
        raise UserError(f"ticket kind must be one of {', '.join(KINDS)}, got {kind!r}")
    n_layers, n_heads = head_scores.shape
    if not 0 <= min_heads_per_layer <= n_heads:
        raise UserError(f"method.min_heads_per_layer={min_heads_per_layer} is more than the model's {n_heads} "
                        f"heads per layer: use 0..{n_heads}")
    hs = normalize_heads(head_scores) if normalize else head_scores.double()
    n_ffn = ffn_scores.numel()
    plan = counts(level_fractions(levels, head_levels, ffn_levels), n_layers * n_heads, n_ffn)
    most = n_layers * (n_heads - min_heads_per_layer)
    too_many = [(lvl, h) for lvl, (h, _) in zip(levels, plan) if h > most]
    if too_many:
        lvl, h = too_many[0]
        raise UserError(f"level {lvl} masks {h} heads, but only {most} can go with min_heads_per_layer="
                        f"{min_heads_per_layer}: lower the level or method.min_heads_per_layer")

    def generator(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(_derived_seed(seed, name))

    # heads
    if kind == "random" and preserve_layer_ratio:
        winning = nested_tickets(head_scores, ffn_scores, levels=levels, kind="winning",
                                 min_heads_per_layer=min_heads_per_layer, ffn_unit=ffn_unit,
                                 head_levels=head_levels, ffn_levels=ffn_levels, normalize=normalize,
                                 intermediate_size=intermediate_size)
        head_masks = _per_row_random([w[0] for w in winning], seed, "heads")
    else:
        seq = _removal_sequence(_order(hs, kind, generator("heads")), n_heads, min_heads_per_layer)
        head_masks = _masks_from_sequence(seq, [h for h, _ in plan], (n_layers, n_heads))

    # FFN units
    ffn_counts = [f for _, f in plan]
    if ffn_unit == "layer":
        if ffn_scores.dim() != 1 or intermediate_size is None:
            raise ValueError("ffn_unit=layer needs [layers] FFN scores and the intermediate size")
        seq = _order(ffn_scores, kind, generator("ffn_layers")).tolist()
        layer_masks = _masks_from_sequence(seq, ffn_counts, (n_layers,))
        return [(h, f[:, None].expand(n_layers, intermediate_size).clone(), f)
                for h, f in zip(head_masks, layer_masks)]
    if ffn_scores.dim() != 2:
        raise ValueError("ffn_unit=neuron needs [layers, intermediate] FFN scores")
    if kind == "random" and preserve_layer_ratio:
        neuron_masks = _per_row_random([w[1] for w in winning], seed, "neurons")
    else:
        seq = _order(ffn_scores, kind, generator("neurons")).tolist()
        neuron_masks = _masks_from_sequence(seq, ffn_counts, tuple(ffn_scores.shape))
    return [(h, n, None) for h, n in zip(head_masks, neuron_masks)]


class SuperTickets:
    """``prune method=super_tickets``: run by :mod:`bert_ticket_cli.workflows.super_tickets`."""

    name = "super_tickets"
    workflow = "super_tickets"
    kinds = KINDS

    def probe(self, model: torch.nn.Module, settings) -> object:
        """The importance probe for ``model`` (``settings``: ``cfg.method``)."""
        from bert_ticket_cli.model.gates import ImportanceProbe

        return ImportanceProbe(model, ffn_unit=settings.ffn_unit)

    def tickets(self, head_scores: torch.Tensor, ffn_scores: torch.Tensor, settings, kind: str, *, seed: int,
                intermediate_size: int) -> list[Structure]:
        return nested_tickets(head_scores, ffn_scores, levels=list(settings.levels), kind=kind, seed=seed,
                              min_heads_per_layer=settings.min_heads_per_layer, ffn_unit=settings.ffn_unit,
                              head_levels=settings.head_levels, ffn_levels=settings.ffn_levels,
                              preserve_layer_ratio=settings.preserve_layer_ratio,
                              normalize=settings.normalize_heads, intermediate_size=intermediate_size)


METHOD = SuperTickets()
