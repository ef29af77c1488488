"""``bert-ticket report``: index every finished run under ``output_dir`` and print them.

``task=mrpc method=dense`` (any ``key=value`` that is not a report setting) filters on any
summary field, dotted for nested ones (``metrics.f1=0.9``); ``columns=[metrics.f1]`` adds columns; ``format=csv|json`` prints
machine-readable output instead of the rich table.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from bert_ticket_cli.artifacts.index import build_index, query
from bert_ticket_cli.config.schema import ReportConfig

DEFAULT_COLUMNS = ["verb", "run_name", "task", "model", "method", "seed", "main_metric", "main_value",
                   "steps", "train_time_s"]


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _sort_key(v):
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return (v is None, 0 if numeric else 1, v if numeric else str(v))


def run(cfg: ReportConfig) -> int:
    root = Path(cfg.output_dir).expanduser()
    index = build_index(root)
    rows = query(index, list(cfg.where))
    columns = DEFAULT_COLUMNS + [c for c in cfg.columns if c not in DEFAULT_COLUMNS]
    rows.sort(key=lambda r: _sort_key(r.get(cfg.sort)))

    if cfg.format == "json":
        json.dump([{c: r.get(c) for c in columns} for r in rows], sys.stdout, indent=2, default=str)
        print()
        return 0
    if cfg.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r.get(c) for c in columns])
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} run(s) under {root}" + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
    for c in columns:
        table.add_column(c, justify="right" if c in ("seed", "main_value", "steps", "train_time_s") else "left")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in columns])
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    console.print(f"[dim]index: {index}[/dim]")
    return 0
