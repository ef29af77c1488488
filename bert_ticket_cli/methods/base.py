"""What a ticket-finding method is, to the workflows that run it.

Two kinds, one per workflow:

* a :class:`LevelMethod` (IMP, OMP, random pruning) *scores* trained weights: the lottery
  workflow (:mod:`bert_ticket_cli.workflows.lottery`) trains level 0 (the dense model), asks
  the method for the tickets that follow from the trained weights, trains each from the rewind
  point, and so on;
* a :class:`SearchMethod` (EarlyBERT) *searches* while it trains: its step hook watches the
  model and says when the ticket is found; the EarlyBERT workflow
  (:mod:`bert_ticket_cli.workflows.earlybert`) trains the search, then the ticket.

Either way the result is a :class:`~bert_ticket_cli.sparsity.ticket.Ticket`.  Methods are
looked up by their ``method=`` name in :mod:`bert_ticket_cli.methods.registry`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import torch

Masks = dict[str, torch.Tensor]


class LevelMethod(Protocol):
    """Unstructured tickets found level by level from trained weights (the lottery workflow)."""

    name: str
    workflow: ClassVar[str]  # "lottery"

    def targets(self, cfg: Any, total: int) -> list[int]:
        """How many of ``total`` prunable weights each level removes; level 0 (dense) removes 0."""

    def next_tickets(self, level: int, *, trained: Mapping[str, torch.Tensor], current: Masks, targets: list[int],
                     shapes: Mapping[str, tuple[int, ...]], total: int, cfg: Any) -> Iterator[tuple[int, Masks]]:
        """After ``level`` trained (its prunable weights ``trained``, its masks ``current``, of
        ``total`` prunable weights with ``shapes``): the
        tickets of later levels that follow, as ``(level, masks)``; nothing when there are none."""


class SearchMethod(Protocol):
    """Structured tickets found by a search during training (the EarlyBERT workflow)."""

    name: str
    workflow: ClassVar[str]  # "earlybert"

    def start_search(self, model: torch.nn.Module, settings: Any, store: Any, *, start_step: int,
                     main: bool, stop_after: int | None = None) -> tuple[Any, Any]:
        """Prepare ``model`` for the search; the step hook (with ``finish() -> ticket``) and the
        loss penalty to train it with.  ``stop_after``: the hook stops training at that step."""
