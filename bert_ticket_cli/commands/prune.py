"""``bert-ticket prune``: finding tickets (method=imp|omp|random|earlybert|super_tickets). Not built yet: it says so and exits 2, never pretends."""

from __future__ import annotations

from bert_ticket_cli.errors import UserError


def run(cfg) -> int:
    raise UserError(
        "'bert-ticket prune' (finding tickets (method=imp|omp|random|earlybert|super_tickets)) is not available in this version; it arrives with "
        "the lottery-ticket (IMP) and EarlyBERT releases. Available now: rewind (dense fine-tuning), eval, report"
    )
