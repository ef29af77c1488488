"""``bert-ticket prune``: find tickets with ``method=`` (see :mod:`bert_ticket_cli.methods.registry`).

method=imp     iterative magnitude pruning, one ticket per level;
method=omp     one-shot magnitude pruning at each of prune.sparsities;
method=random  random tickets at prune.sparsities (the random-pruning baseline);
               (all three: :mod:`bert_ticket_cli.workflows.lottery`)
method=earlybert  structured EarlyBERT tickets: :mod:`bert_ticket_cli.workflows.earlybert`.
"""

from __future__ import annotations

import importlib

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    from bert_ticket_cli.methods.registry import get

    method = get(cfg.method.name)  # a later release's method, or an unknown one: a UserError
    workflow = importlib.import_module(f"bert_ticket_cli.workflows.{method.workflow}")
    return workflow.run(cfg, method)
