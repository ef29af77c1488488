"""``bert-ticket rewind``: train a ticket from its rewind point on a task and evaluate it; with
no ticket, fine-tune the dense model (the full-model baseline).  See
:mod:`bert_ticket_cli.workflows.finetune`.  ``task=multi``: several tasks sharing one encoder,
each through its own ticket (:mod:`bert_ticket_cli.workflows.multitask`)."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    if cfg.task.name == "multi":
        from bert_ticket_cli.workflows.multitask import run as train_multitask

        return train_multitask(cfg)
    from bert_ticket_cli.workflows.finetune import train_ticket

    return train_ticket(cfg)
