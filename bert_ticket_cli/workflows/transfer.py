"""Train a ticket found on task A on task B (Chen et al., NeurIPS 2020, Sec. 5): one pair, or
every ticket on every task (the transfer matrix).

A transferred ticket starts from the pre-trained weights (theta_0) with the ticket's mask and a
fresh task head.  Each pair is its own run (:func:`.finetune.train_ticket`), so a matrix
interrupted anywhere resumes where it stopped (finished pairs are skipped).

    runs/transfer/<run>/<ticket-label>--<task>/   one run per pair (config, metrics, summary)
    runs/transfer/<run>/matrix.json               source x target table of the main metric
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from bert_ticket_cli.artifacts.paths import TICKET_JSON, atomic_write_json, config_hash, run_dir
from bert_ticket_cli.config.schema import RunConfig, TaskConfig
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError
from bert_ticket_cli.workflows.context import model_is_default, name_local_model
from bert_ticket_cli.workflows.finetune import ticket_label, train_ticket


def run(cfg: RunConfig) -> int:
    tickets = list(cfg.transfer.tickets) or ([cfg.ticket.path] if cfg.ticket.path else [])
    tasks = list(cfg.transfer.tasks) or [cfg.task.name]
    if not tickets:
        raise UserError("transfer needs a ticket: ticket=runs/prune/<run>/tickets/level-NN, "
                        "or transfer.tickets=[...] transfer.tasks=[...] for the matrix")
    for t in tickets:
        if not (Path(t) / TICKET_JSON).exists():
            raise UserError(f"ticket folder {t} has no ticket.json: pass a tickets/level-NN folder of a prune run")
    many = len(tickets) * len(tasks) > 1
    name_local_model(cfg)
    model_name = cfg.model.name
    if model_is_default(cfg):  # each pair trains on its ticket's source model (finetune.train_ticket)
        recorded = json.loads((Path(tickets[0]) / TICKET_JSON).read_text()).get("meta", {}).get("source_model")
        model_name = (recorded or {}).get("name") or model_name
        if (recorded or {}).get("name") == "local" and recorded.get("name_or_path"):
            model_name = Path(str(recorded["name_or_path"])).name
    name = cfg.run_name or ((f"matrix-{model_name}-s{cfg.seed}" if many else f"{ticket_label(tickets[0])}--{tasks[0]}")
                            + f"-{config_hash(cfg)}")
    matrix: dict[str, dict[str, float | None]] = {}
    for tpath in tickets:
        label = ticket_label(tpath)
        for task in tasks:
            pair = replace(cfg, task=_task_config(cfg, task), ticket=replace(cfg.ticket, path=tpath),
                           run_name=f"{name}/{label}--{task}" if many else name)
            status = train_ticket(pair, from_pretrained=True)
            if status == EXIT_PREEMPTED:
                return status
            summary = run_dir(pair).summary
            value = json.loads(summary.read_text())["main_value"] if summary.exists() else None
            matrix.setdefault(label, {})[task] = value
    if many and int(os.environ.get("RANK", "0")) == 0:
        out = run_dir(replace(cfg, run_name=name)).matrix
        atomic_write_json(out, {"rows": tickets, "tasks": tasks, "main_value": matrix})
        _print_matrix(matrix, tasks, out)
    return 0


def _task_config(cfg: RunConfig, name: str) -> TaskConfig:
    if name == cfg.task.name and not cfg.transfer.glue_dir:
        return cfg.task
    data_dir = None
    if cfg.transfer.glue_dir:
        from bert_ticket_cli.data.glue import GLUE_DIRS

        folder = "squad" if name == "squad" else GLUE_DIRS.get(name)
        if folder is None:
            raise UserError(f"transfer.tasks has unknown task {name!r}: use GLUE names (mrpc, rte, ...) or squad")
        data_dir = str(Path(cfg.transfer.glue_dir) / folder)
    return replace(cfg.task, name=name, data_dir=data_dir, data_files=None, hub_dataset=None,
                   max_seq_length=384 if name == "squad" else cfg.task.max_seq_length)


def _print_matrix(matrix: dict[str, dict[str, float | None]], tasks: list[str], path: Path) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"transfer matrix (main metric of each target task): {path}")
    t.add_column("ticket")
    for task in tasks:
        t.add_column(task, justify="right")
    for label, row in matrix.items():
        t.add_row(label, *[f"{row[k]:.4f}" if row.get(k) is not None else "-" for k in tasks])
    (Console() if sys.stdout.isatty() else Console(width=160)).print(t)
