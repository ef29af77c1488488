"""``bert-ticket transfer``: train a ticket found on task A on task B; with
``transfer.tickets`` / ``transfer.tasks``, the whole matrix.  See
:mod:`bert_ticket_cli.workflows.transfer`."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    from bert_ticket_cli.workflows import transfer

    return transfer.run(cfg)
