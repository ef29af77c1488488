"""``bert-ticket report``: index every finished run under ``output_dir`` and print them.

``task=mrpc method=dense`` (any ``key=value`` that is not a report setting) filters on any
summary field, dotted for nested ones (``metrics.f1=0.9``); ``view=tickets`` aggregates over
seeds with the lottery-ticket verdicts, ``view=earlybert`` shows one row per EarlyBERT run
(early-bird step, search / compact / dense times, time saving, dense and random-ticket
baselines), ``view=pretrain`` one row per pre-training run (budget, elapsed time, steps,
tokens/s, stop reason, final validation MLM loss), ``view=super_tickets`` per experiment,
ticket kind and level mean +- std over seeds, parameters kept, training time, the super ticket
and whether it beats the full model; ``plot=true`` draws the figures;
``columns=[metrics.f1]`` adds columns; ``format=csv|json`` prints machine-readable output
instead of the rich table.

Trust rules: a filter key that no indexed run has exits 2 with "did you mean" (with no runs
at all, ``report`` says so instead); ``view=runs`` also lists runs without a ``summary.json``
(status ``interrupted``: has a checkpoint; ``unfinished``: none yet, running or crashed, which
cannot be told apart without a heartbeat); no other view counts them.  ``view=tickets`` never
pools experiments (artifacts/tickets_view.py), nor does ``view=super_tickets``
(artifacts/super_tickets_view.py); ``metric=NAME`` picks their metric, and a sparsity figure
(phase-transition figure) is drawn only for a method (ticket kind) with >= 2 points.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from bert_ticket_cli.artifacts.index import INTERRUPTED, UNFINISHED, build_index, query, records
from bert_ticket_cli.artifacts.paths import MATRIX_FILE
from bert_ticket_cli.config.schema import ReportConfig

DEFAULT_COLUMNS = ["verb", "run_name", "status", "task", "model", "method", "seed", "main_metric", "main_value",
                   "steps", "train_time_s"]
#: The report's own settings (a typo of one reads as a filter key: "did you mean" names them).
SETTINGS = ("output_dir", "where", "columns", "sort", "format", "view", "plot", "plot_dir", "metric")


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
    """The chosen view; then, in a table, the state of the sweeps' jobs (``sweep=ID``: that
    sweep's jobs, its runs only in the view)."""
    from bert_ticket_cli.sweeps import report as sweeps_report

    root = Path(cfg.output_dir).expanduser()
    sweep_id, cfg.where = sweeps_report.split_filter(list(cfg.where))
    sweep = sweeps_report.load(root, sweep_id) if sweep_id else None
    status = _view(cfg, root, sweep)
    if cfg.format == "table":
        sweeps_report.print_jobs(root, sweep)
    return status


def _view(cfg: ReportConfig, root: Path, sweep: dict | None) -> int:
    index = build_index(root)
    if cfg.where and not records(index, include_unfinished=True):
        print(f"no runs under {root} (no summary.json or config.yaml): nothing to filter with "
              f"{', '.join(cfg.where)}")
        return 0
    # Only the runs view lists runs without a summary.json; no other view counts them.
    rows = query(index, list(cfg.where), include_unfinished=cfg.view == "runs", settings=SETTINGS)
    if sweep is not None:
        from bert_ticket_cli.sweeps import report as sweeps_report

        rows = sweeps_report.in_sweep(rows, sweep)
    if cfg.view == "tickets":
        return _tickets(cfg, root, rows, index)
    if cfg.view == "earlybert":
        return _earlybert(cfg, root, rows, query(index, []) if cfg.where else rows)
    if cfg.view == "pretrain":
        return _pretrain(cfg, root, rows)
    if cfg.view == "super_tickets":
        return _super_tickets(cfg, root, rows, index)
    if cfg.view == "multitask":
        return _multitask(cfg, root, rows)
    from bert_ticket_cli.artifacts.earlybert_view import stage_run_name
    from bert_ticket_cli.artifacts.super_tickets_view import sub_run_name

    rows = [r for r in rows if r.get("role") != "trajectory"]  # its levels are rows of their own
    for r in rows:  # EarlyBERT stage sub-runs (search / compact / dense) are named <run>/<stage>
        if r.get("role") == "stage":
            r["run_name"] = stage_run_name(r)
        elif r.get("role") == "super_ticket":  # super-tickets sub-runs: <run>/<kind>-<level>
            r["run_name"] = sub_run_name(r)
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
    open_runs = [r for r in rows if r.get("status") in (INTERRUPTED, UNFINISHED)]
    if open_runs:
        console.print(f"{len(open_runs)} run(s) without summary.json: {INTERRUPTED} = has a checkpoint "
                      f"(resume=true continues it); {UNFINISHED} = no checkpoint yet, running now or crashed "
                      f"(no heartbeat tells them apart); neither enters any mean")
    console.print(f"[dim]index: {index}[/dim]")
    return 0


def _tickets(cfg: ReportConfig, root: Path, rows: list[dict], index: Path) -> int:
    """Mean +- std over seeds per experiment, method and sparsity, with the matching verdicts."""
    from bert_ticket_cli.artifacts import tickets_view
    from bert_ticket_cli.errors import UserError

    views = tickets_view.build(rows, cfg.metric)
    if cfg.metric and not views and any(tickets_view.included(r) for r in rows):  # not just filtered away
        have = sorted({k.split(".", 1)[1] for r in rows if tickets_view.included(r) for k in r
                       if k.startswith("metrics.")})
        raise UserError(f"report: no fine-tuning run has metric {cfg.metric!r}"
                        + (f" (they have: {', '.join(have)})" if have else "") + ": pick metric=NAME or drop it")
    flat = [row for v in views for row in tickets_view.table_rows(v)]
    fields = ("task", "experiment", "setting", "method", "sparsity", "mean", "std", "n", "verdict")
    if cfg.format == "json":
        json.dump(flat, sys.stdout, indent=2)
        print()
    elif cfg.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(fields)
        for r in flat:
            writer.writerow([r[k] for k in fields])
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console() if sys.stdout.isatty() else Console(width=160)
        if not views:
            console.print(f"no fine-tuning runs for the tickets view under {root}"
                          + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
        for v in views:
            t = Table(title=Text(f"{v.title} ({v.metric}): mean +- std over seeds; "
                                 f"matching = within 1 std of the full model"))
            for c in ("method", "sparsity", "mean +- std", "seeds", "verdict"):
                t.add_column(c, justify="right" if c in ("sparsity", "mean +- std", "seeds") else "left")
            for r in tickets_view.table_rows(v):
                spread = f"+- {r['std']:.4f}" if r["std"] is not None else "(n=1, no std)"
                t.add_row(r["method"], f"{100 * r['sparsity']:.1f}%", f"{r['mean']:.4f} {spread}",
                          str(r["n"]), r["verdict"])
            console.print(t)
            best = tickets_view.highest_matching(v)
            if best is not None:
                console.print(f"{v.title}: highest sparsity with a matching IMP ticket: {100 * best:.1f}%")
        if any(r["verdict"] == tickets_view.NO_VERDICT for r in flat):
            console.print("verdict -: fewer than 2 seeds on one side (one seed has no std) or no full model "
                          "of the same experiment: no verdict")
        _print_open_runs(console, index)
    if cfg.plot:
        from bert_ticket_cli.artifacts import plots

        out = Path(cfg.plot_dir).expanduser() if cfg.plot_dir else root / "report"
        tasks = [v.task for v in views]
        for v in views:
            name = f"{v.task}_sparsity.png" if tasks.count(v.task) == 1 else f"{v.task}_{v.experiment}_sparsity.png"
            if not v.plottable():
                print(f"plot: skipped {name}: no method with >= 2 sparsity points in {v.title}")
                continue
            print(f"plot: {plots.sparsity_curves(v, out / name)}")
        for matrix_file in sorted(root.glob(f"transfer/*/{MATRIX_FILE}")):
            path = out / f"transfer_{matrix_file.parent.name}.png"
            print(f"plot: {plots.transfer_heatmap(json.loads(matrix_file.read_text()), path)}")
    return 0


def _earlybert(cfg: ReportConfig, root: Path, rows: list[dict], all_rows: list[dict]) -> int:
    """One row per EarlyBERT run; random tickets are looked up in ``all_rows`` (unfiltered)."""
    from bert_ticket_cli.artifacts import earlybert_view

    flat = earlybert_view.build(rows, all_rows)
    if not _machine_readable(cfg, flat, earlybert_view.FIELDS):
        from rich.console import Console
        from rich.table import Table

        console = Console() if sys.stdout.isatty() else Console(width=200)
        if not flat:
            console.print(f"no EarlyBERT runs (prune method=earlybert) under {root}"
                          + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
        else:
            t = Table(title="EarlyBERT: time saving = 1 - (search + compact) / dense training time; "
                            "random ticket = mean over rewind ticket.variant=random runs")
            for c in earlybert_view.TABLE_COLUMNS:
                t.add_column(c, justify="left" if c in ("run", "task", "metric") else "right")
            for r in flat:
                t.add_row(*earlybert_view.display_row(r))
            console.print(t)
    if cfg.plot:
        import re

        from bert_ticket_cli.artifacts import plots

        out = Path(cfg.plot_dir).expanduser() if cfg.plot_dir else root / "report"
        for r in flat:
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(r["run_name"]))
            src = Path(r["earlybird_file"]) if r["earlybird_file"] else None
            try:
                if src is None:
                    raise ValueError("no earlybird_file in its summary")
                data = json.loads(src.read_text())
                path = plots.earlybird_heatmap(data, out / f"earlybird_{name}.png", f"{r['run_name']} ({r['task']})")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                print(f"plot: skipped {r['run_name']}: earlybird.json missing or unreadable ({exc})")
                continue
            print(f"plot: {path}")
    return 0


def _pretrain(cfg: ReportConfig, root: Path, rows: list[dict]) -> int:
    """One row per pre-training run; ``plot=true``: their loss against elapsed time in one figure."""
    from bert_ticket_cli.artifacts import pretrain_view

    flat = pretrain_view.build(rows)
    if not _machine_readable(cfg, flat, pretrain_view.FIELDS):
        from rich.console import Console
        from rich.table import Table

        console = Console() if sys.stdout.isatty() else Console(width=200)
        if not flat:
            console.print(f"no pre-training runs (bert-ticket pretrain) under {root}"
                          + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
        else:
            t = Table(title="pre-training: final validation MLM loss / accuracy / perplexity; times are wall "
                            "clock (elapsed includes evaluation); search / compact: EarlyBERT stages")
            for c in pretrain_view.TABLE_COLUMNS:
                t.add_column(c, justify="left" if c in ("run", "model", "method", "stop") else "right")
            for r in flat:
                t.add_row(*pretrain_view.display_row(r))
            console.print(t)
    if cfg.plot and flat:
        from bert_ticket_cli.artifacts import plots

        out = Path(cfg.plot_dir).expanduser() if cfg.plot_dir else root / "report"
        curves = pretrain_view.curves(flat, root)
        if curves:
            print(f"plot: {plots.pretrain_loss(curves, out / 'pretrain_loss.png')}")
        else:
            print("plot: skipped pretrain_loss.png: no metrics.jsonl with loss points in the runs' folders")
    return 0


def _super_tickets(cfg: ReportConfig, root: Path, rows: list[dict], index: Path) -> int:
    """Per experiment, ticket kind and level: mean +- std over seeds, parameters kept, the super
    ticket; ``plot=true``: one phase-transition figure per experiment."""
    from bert_ticket_cli.artifacts import super_tickets_view as stv
    from bert_ticket_cli.errors import UserError

    exps = stv.build(rows, cfg.metric)
    if cfg.metric and not exps and any(stv.included(r) for r in rows):  # not just filtered away
        have = sorted({k.split(".", 1)[1] for r in rows if stv.included(r) for k in r if k.startswith("metrics.")})
        raise UserError(f"report: no super-tickets run has metric {cfg.metric!r}"
                        + (f" (they have: {', '.join(have)})" if have else "") + ": pick metric=NAME or drop it")
    flat = [row for e in exps for row in stv.table_rows(e)]
    if not _machine_readable(cfg, flat, stv.FIELDS):
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console() if sys.stdout.isatty() else Console(width=180)
        if not exps:
            console.print(f"no super-tickets runs (prune method=super_tickets) under {root}"
                          + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
        for e in exps:
            t = Table(title=Text(f"super tickets: {e.title} ({e.metric}): mean +- std over seeds; kept = fraction "
                                 f"of encoder / all parameters; * = super ticket (best winning level)"))
            for c in stv.TABLE_COLUMNS:
                t.add_column(c, justify="left" if c in ("kind", "super ticket") else "right")
            for r in stv.table_rows(e):
                t.add_row(*stv.display_row(r))
            console.print(t)
            console.print(stv.verdict(e))
        _print_open_runs(console, index)
    if cfg.plot:
        from bert_ticket_cli.artifacts import plots

        out = Path(cfg.plot_dir).expanduser() if cfg.plot_dir else root / "report"
        tasks = [e.task for e in exps]
        for e in exps:
            name = (f"{e.task}_super_tickets.png" if tasks.count(e.task) == 1
                    else f"{e.task}_{e.experiment}_super_tickets.png")
            if not e.plottable():
                print(f"plot: skipped {name}: no ticket kind with >= 2 levels in {e.title}")
                continue
            print(f"plot: {plots.phase_transition(e, out / name)}")
    return 0


def _multitask(cfg: ReportConfig, root: Path, rows: list[dict]) -> int:
    """Per multi-task experiment: dense MTL against Tickets-Share, each task's main metric, the
    average score and the encoder fraction each task uses (mean +- std over seeds)."""
    from bert_ticket_cli.artifacts import multitask_view as mv

    experiments = mv.build(rows)
    flat = [r for e in experiments for r in mv.table_rows(e)]
    fields = sorted({k for r in flat for k in r}, key=lambda k: (k not in ("experiment", "arm", "seeds"), k))
    if _machine_readable(cfg, flat, fields):
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not experiments:
        console.print(f"no multi-task runs (bert-ticket rewind task=multi) under {root}"
                      + (f" where {', '.join(cfg.where)}" if cfg.where else ""))
        return 0
    for exp in experiments:
        t = Table(title=f"{exp.title}: dev main metric x 100, mean +- std over seeds; encoder used = fraction of "
                        f"the encoder layers' parameters in each task's ticket")
        for c in ("model", "seeds", *exp.tasks, "average", "encoder used"):
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in mv.table_rows(exp):
            t.add_row(r["arm"], str(r["seeds"]), *(mv.cell(r[task], r[f"{task}_std"]) for task in exp.tasks),
                      mv.cell(r["average"], r["average_std"]), f"{100 * r['kept_mean']:.1f}%")
        console.print(t)
    return 0


def _machine_readable(cfg: ReportConfig, flat: list[dict], fields: list[str]) -> bool:
    """``format=json|csv``: print a view's rows (``fields`` the CSV columns) and return True;
    ``format=table``: False (the view prints its own tables)."""
    if cfg.format == "json":
        json.dump(flat, sys.stdout, indent=2, default=str)
        print()
        return True
    if cfg.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(fields)
        for r in flat:
            writer.writerow([r.get(k) for k in fields])
        return True
    return False


def _print_open_runs(console, index: Path) -> None:
    """The aggregate views count finished runs only: say how many others there are."""
    open_runs = sum(1 for r in records(index, include_unfinished=True)
                    if r.get("status") in (INTERRUPTED, UNFINISHED))
    if open_runs:
        console.print(f"{open_runs} interrupted / unfinished run(s) not counted: report view=runs lists them")
