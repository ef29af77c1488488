"""The EarlyBERT view of the runs (Chen et al., ACL 2021): per ``prune method=earlybert`` run,
when the early-bird ticket was drawn, what the search, the compact model's training and the
dense baseline cost, and how the compact model compares with the dense model and with random
structured tickets of the same shape (``rewind ticket=<its ticket> ticket.variant=random``).

Pure functions over flattened summary rows (``artifacts.index.query``); nothing here reads files.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import STAGES_DIR, TICKET_JSON, TICKET_TENSORS, RunDir

#: Columns of the machine-readable rows (``format=json|csv``), in order.
FIELDS = ["run_name", "task", "seed", "main_metric", "early_bird_found", "early_bird_step",
          "search_time_s", "search_steps", "compact_time_s", "compact_steps", "dense_time_s",
          "earlybert_value", "dense_value", "random_mean", "random_n", "reinit_mean", "reinit_n",
          "time_saving", "time_saving_pct", "compact_params", "dense_params", "ticket", "earlybird_file"]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _ticket_key(path: Any) -> str | None:
    """One spelling per ticket folder (a path to its ``ticket.json`` names the same ticket)."""
    if not path:
        return None
    p = os.path.normpath(str(path))
    if os.path.basename(p) in (TICKET_JSON, TICKET_TENSORS):
        p = os.path.dirname(p)
    return p


def _value(r: dict[str, Any], direct: str, nested: str) -> float | None:
    """``direct`` (e.g. ``main_value``), else ``<nested>.<main_metric>`` of the flattened row."""
    v = _num(r.get(direct))
    if v is None and r.get("main_metric"):
        v = _num(r.get(f"{nested}.{r['main_metric']}"))
    return v


def time_saving(r: dict[str, Any]) -> float | None:
    """``1 - (search + compact) / dense`` training time; the record's own value when a time is missing."""
    search, compact, dense = (_num(r.get(k)) for k in ("search_time_s", "compact_time_s", "dense_time_s"))
    if search is not None and compact is not None and dense:
        return 1.0 - (search + compact) / dense
    return _num(r.get("time_saving"))


def baselines(rows: list[dict[str, Any]], ticket: Any, variant: str) -> list[float]:
    """Main values of the ``rewind`` runs of ``ticket`` with ``ticket_variant == variant``."""
    key = _ticket_key(ticket)
    if key is None:
        return []
    out = []
    for r in rows:
        if r.get("verb") != "rewind" or r.get("ticket_variant") != variant or _ticket_key(r.get("ticket")) != key:
            continue
        v = _num(r.get("main_value"))
        if v is not None:
            out.append(v)
    return out


def build(rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per EarlyBERT run (``role == "earlybert"``) in ``rows``; random / re-init tickets
    are looked up in ``baseline_rows`` (default ``rows``: pass the unfiltered index so a filter
    on the EarlyBERT runs does not hide their baselines)."""
    pool = rows if baseline_rows is None else baseline_rows
    out = []
    for r in rows:
        if r.get("role") != "earlybert":
            continue
        step = r.get("early_bird_step")
        found = bool(r.get("early_bird_found", step is not None)) and step is not None
        rand = baselines(pool, r.get("ticket"), "random")
        reinit = baselines(pool, r.get("ticket"), "reinit")
        saving = time_saving(r)
        eb_file = r.get("earlybird_file") or (str(RunDir(Path(r["run_dir"])).earlybird) if r.get("run_dir") else None)
        out.append({
            "run_name": r.get("run_name"),
            "task": r.get("task"),
            "seed": r.get("seed"),
            "main_metric": r.get("main_metric"),
            "early_bird_found": found,
            "early_bird_step": step if found else None,
            "search_time_s": _num(r.get("search_time_s")),
            "search_steps": r.get("search_steps"),
            "compact_time_s": _num(r.get("compact_time_s")),
            "compact_steps": r.get("compact_steps"),
            "dense_time_s": _num(r.get("dense_time_s")),
            "earlybert_value": _value(r, "main_value", "metrics"),
            "dense_value": _value(r, "dense_main_value", "dense_metrics"),
            "random_mean": statistics.fmean(rand) if rand else None,
            "random_n": len(rand),
            "reinit_mean": statistics.fmean(reinit) if reinit else None,
            "reinit_n": len(reinit),
            "time_saving": saving,
            "time_saving_pct": None if saving is None else 100.0 * saving,
            "compact_params": r.get("compact_params"),
            "dense_params": r.get("dense_params"),
            "ticket": r.get("ticket"),
            "earlybird_file": eb_file,
        })
    out.sort(key=lambda x: (str(x["task"]), str(x["run_name"]), str(x["seed"])))
    return out


def display_row(row: dict[str, Any]) -> list[str]:
    """The table cells of one row (see ``TABLE_COLUMNS``)."""

    def f(v: Any, fmt: str = "{:.4f}") -> str:
        return "-" if v is None else fmt.format(v)

    rand = f"{row['random_mean']:.4f} (n={row['random_n']})" if row["random_n"] else "-"
    return [str(row["run_name"]), str(row["task"]), f(row["seed"], "{}"), str(row["main_metric"] or "-"),
            f(row["early_bird_step"], "{}") if row["early_bird_found"] else "not found",
            f(row["search_time_s"], "{:.1f}"), f(row["compact_time_s"], "{:.1f}"), f(row["dense_time_s"], "{:.1f}"),
            f(row["earlybert_value"]), f(row["dense_value"]), rand, f(row["time_saving_pct"], "{:.1f}%")]


TABLE_COLUMNS = ["run", "task", "seed", "metric", "early bird at step", "search s", "compact s", "dense s",
                 "EarlyBERT", "dense", "random ticket", "time saving"]


def stage_run_name(r: dict[str, Any]) -> str | None:
    """``<run>/<stage>`` for an EarlyBERT stage sub-run (``<run>/stages/<stage>``), so the
    runs view does not show three runs named ``search``; other rows keep their name."""
    name = r.get("run_name")
    if r.get("role") != "stage" or (name and "/" in str(name)):
        return name
    stage = r.get("stage") or name
    run_dir = r.get("run_dir")
    if run_dir and Path(run_dir).parent.name == STAGES_DIR:
        return f"{Path(run_dir).parent.parent.name}/{stage}"
    return name
