"""``bert-ticket transfer``: ticket transfer across tasks. Not built yet: it says so and exits 2, never pretends."""

from __future__ import annotations

from bert_ticket_cli.errors import UserError


def run(cfg) -> int:
    raise UserError(
        "'bert-ticket transfer' (ticket transfer across tasks) is not available in this version; it arrives with "
        "the lottery-ticket (IMP) release. Available now: rewind (dense fine-tuning), eval, report"
    )
