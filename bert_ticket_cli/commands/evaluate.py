"""``bert-ticket eval``: evaluate a saved model on a task's dev splits
(``eval.predict_test=true``: also the GLUE leaderboard TSVs).  See
:mod:`bert_ticket_cli.workflows.evaluation`."""

from __future__ import annotations

from bert_ticket_cli.config.schema import RunConfig


def run(cfg: RunConfig) -> int:
    from bert_ticket_cli.workflows import evaluation

    return evaluation.run(cfg)
