"""``bert-ticket cache``: fill the caches a run reads (model, tokenizer, task data) and check
that an offline run (``HF_HUB_OFFLINE=1``) finds each.  See :mod:`bert_ticket_cli.workflows.cache`."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    from bert_ticket_cli.workflows.cache import cache

    return cache(cfg)
