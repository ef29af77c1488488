"""``bert-ticket rewind``: train a ticket from its rewind point on a task and evaluate it; with
no ticket, fine-tune the dense model (the full-model baseline).  See
:mod:`bert_ticket_cli.workflows.finetune`."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    from bert_ticket_cli.workflows.finetune import train_ticket

    return train_ticket(cfg)
