"""``bert-ticket pretrain``: MLM pre-training on a wall-clock budget, ``method=earlybert`` for
EarlyBERT pre-training; ``bert-ticket pretrain prepare ...`` only prepares the data.  See
:mod:`bert_ticket_cli.workflows.pretraining`."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig, prepare_only_: bool = False) -> int:
    from bert_ticket_cli.workflows import pretraining

    return pretraining.prepare_only(cfg) if prepare_only_ else pretraining.run(cfg)
