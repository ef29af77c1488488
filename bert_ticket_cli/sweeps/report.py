"""What ``bert-ticket report`` shows of sweeps: ``sweep=ID`` keeps that sweep's runs in the view
and lists its jobs (state, exit status, Slurm id, attempts, a failed job's one-line reason);
without it, one line per recent sweep with its counts and its failed jobs' reasons."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bert_ticket_cli.sweeps import manifest

#: Sweeps listed by a plain ``report`` (the most recent ones).
RECENT = 5


def split_filter(where: list[str]) -> tuple[str | None, list[str]]:
    """``sweep=ID`` out of the report's filters."""
    sweep = [w for w in where if w.split("=", 1)[0] == "sweep"]
    rest = [w for w in where if w not in sweep]
    return (sweep[-1].split("=", 1)[1] if sweep else None), rest


def load(root: Path, sweep_id: str) -> dict[str, Any]:
    return manifest.load(manifest.find(root, sweep_id))


def in_sweep(rows: list[dict[str, Any]], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows whose run folder is a job's run folder or inside one (levels, stages)."""
    roots = [str(Path(d).resolve()) for d in manifest.run_dirs(sweep)]

    def inside(run_dir: Any) -> bool:
        path = str(Path(str(run_dir)).resolve())
        return any(path == r or path.startswith(r + "/") for r in roots)

    return [r for r in rows if inside(r.get("run_dir"))]


def _swept(job: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in (job.get("swept") or {}).items()) or "-"


def print_jobs(root: Path, sweep: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    if sweep is not None:
        t = Table(title=f"sweep {sweep['sweep_id']} ({sweep.get('launcher')}"
                        + (f", Slurm array {sweep['slurm_array_id']}" if sweep.get("slurm_array_id") else "")
                        + f"): {manifest.counts_line(sweep)}")
        for c in ("job", "swept", "state", "exit", "slurm id", "attempts", "run_name", "reason"):
            t.add_column(c, justify="right" if c in ("job", "exit", "attempts") else "left")
        for j in sweep["jobs"]:
            t.add_row(str(j["index"]), _swept(j), str(j.get("state")), str(j.get("exit_status", "-")),
                      str(j.get("slurm_id") or "-"), str(j.get("attempts") or 0), str(j.get("run_name")),
                      str(j.get("reason") or ""))
        console.print(t)
        return
    folders = manifest.all_sweeps(root)[-RECENT:]
    for folder in folders:
        try:
            data = manifest.load(folder)
        except Exception as exc:  # one unreadable manifest must not hide the report
            console.print(f"sweep {folder.name}: unreadable manifest ({exc})")
            continue
        console.print(f"sweep {data['sweep_id']} ({len(data['jobs'])} jobs, {data.get('launcher')}): "
                      f"{manifest.counts_line(data)}", highlight=False)
        for j in data["jobs"]:
            if j.get("state") in ("failed", "lost"):
                console.print(f"  job {j['index']} ({_swept(j)}) {j['state']}: {j.get('reason')}", highlight=False)
    if folders:
        console.print(f"[dim]a sweep's jobs: bert-ticket report sweep=ID output_dir={root}[/dim]")
