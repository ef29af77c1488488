"""EarlyBERT (Chen et al., ACL 2021): drawing a structured ticket from slimming coefficients,
and the early-bird detector (You et al., ICLR 2020) that says when the ticket stopped changing.

Pure functions over tensors; the training side lives in :mod:`bert_ticket_cli.model.slimming`
and :mod:`bert_ticket_cli.methods.earlybert_search`.

*Drawing.*  Heads and FFN neurons are ranked by ``|c|`` (the magnitude: the reference code
ranks by the signed value, which would keep a head whose coefficient went to -0.9 over one at
+0.1) and the smallest are removed: a fraction of the heads of *each layer* (default 1/3:
4 of 12) and a fraction of *all* FFN neurons together (default 40%).  Either scope can be
``layer`` or ``global``.  Counts are exact: ``round_half_up(fraction * n)`` units removed per
layer (layer scope) or over the whole model (global scope).  Of equal scores the lower index is
removed first (a stable sort), so a draw is a pure function of the scores.

*Early bird.*  At every check a ticket is drawn; the detector keeps the last ``window`` of them
and fires when each is within ``threshold`` of the newest, in normalised Hamming distance
(the fraction of units whose kept/pruned state differs).  The distance of two structured
tickets is the larger of their head-mask and neuron-mask distances, so neither the 144 heads
nor the 36,864 neurons of BERT-base can hide behind the other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.magnitude import round_half_up

SCOPES = ("layer", "global")


def prune_lowest(scores: torch.Tensor, fraction: float, scope: str) -> torch.Tensor:
    """A bool keep-mask over ``scores`` [layers, n] with the ``fraction`` lowest removed,
    per row (``layer``) or over all entries (``global``)."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}: use layer or global")
    if not 0 <= fraction < 1:
        raise UserError(f"a pruned fraction must be in [0, 1), got {fraction}")
    scores = scores.detach().float().cpu()
    keep = torch.ones(scores.shape, dtype=torch.bool)
    if scope == "layer":
        k = round_half_up(fraction * scores.shape[1])
        if k:
            order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
            keep.scatter_(1, order, False)
        return keep
    k = round_half_up(fraction * scores.numel())
    if k:
        order = torch.sort(scores.flatten(), stable=True).indices[:k]
        keep.view(-1)[order] = False
    return keep


def draw_ticket(head_scores: torch.Tensor, neuron_scores: torch.Tensor, *, head_fraction: float = 1 / 3,
                neuron_fraction: float = 0.4, head_scope: str = "layer",
                neuron_scope: str = "global") -> tuple[torch.Tensor, torch.Tensor]:
    """Kept heads [layers, heads] and kept neurons [layers, intermediate] from ``|c|`` scores
    (pass signed coefficients: their magnitude is what counts)."""
    return (prune_lowest(head_scores.abs(), head_fraction, head_scope),
            prune_lowest(neuron_scores.abs(), neuron_fraction, neuron_scope))


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two bool masks of the same shape (0 = identical)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a != b).sum()) / a.numel() if a.numel() else 0.0


def ticket_distance(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Distance of two (heads, neurons) tickets: the larger of the two normalised distances."""
    return max(hamming(a[0], b[0]), hamming(a[1], b[1]))


def distance_matrices(tickets: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[list[float]]]:
    """All pairwise distances (the paper's heatmap): heads, neurons and their maximum."""
    n = len(tickets)
    heads = [[hamming(tickets[i][0], tickets[j][0]) for j in range(n)] for i in range(n)]
    neurons = [[hamming(tickets[i][1], tickets[j][1]) for j in range(n)] for i in range(n)]
    both = [[max(heads[i][j], neurons[i][j]) for j in range(n)] for i in range(n)]
    return {"distance": both, "distance_heads": heads, "distance_neurons": neurons}


@dataclass
class EarlyBird:
    """Fires once the last ``window`` tickets are all within ``threshold`` of the newest."""

    window: int = 5
    threshold: float = 0.1
    _recent: deque = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise UserError(f"the early-bird window must hold at least 2 tickets, got {self.window}")
        if not 0 <= self.threshold <= 1:
            raise UserError(f"the early-bird threshold is a distance in [0, 1], got {self.threshold}")
        self._recent = deque(maxlen=self.window)

    def push(self, ticket: tuple[torch.Tensor, torch.Tensor]) -> bool:
        """Add the newest ticket; True when the early bird is found."""
        self._recent.append(ticket)
        return self.found

    @property
    def found(self) -> bool:
        if len(self._recent) < self.window:
            return False
        newest = self._recent[-1]
        return all(ticket_distance(t, newest) <= self.threshold for t in list(self._recent)[:-1])
