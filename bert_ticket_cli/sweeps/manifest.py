"""The sweep manifest: ``<output_dir>/sweeps/<id>/sweep.yaml``, and each job's state.

::

    runs/sweeps/<id>/
        sweep.yaml        verb, launcher, the command, Slurm array id, and per job: index, swept
                          values, overrides, run_name, run_dir, log, slurm_id, state, exit_status,
                          reason (a failed job's one-line error), attempts, started, ended
        jobs/<n>.json     the job's own state, written atomically by the job (under Slurm by the
                          array task itself); sweep.yaml is refreshed from them under a lock
        logs/job-<n>.log  the job's output (appended to across requeues)
        submitit/         submitit's files (launcher=slurm)

States: ``pending`` (not started yet, or requeued and waiting), ``running``, ``finished`` (exit
0: trained, or already finished and skipped), ``preempted`` (exit 75: checkpointed, requeued),
``failed`` (any other exit status, with the last ``error:`` line of its log as reason), and
``lost`` (Slurm no longer knows the task and it left no state: killed, out of memory, node
failure; its log says more).  A ``running`` job of a dead local sweep stays ``running``: no
heartbeat tells them apart.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import atomic_write_json, atomic_write_text
from bert_ticket_cli.errors import UserError

SWEEPS_DIR = "sweeps"
MANIFEST = "sweep.yaml"
STATES = ("pending", "running", "finished", "preempted", "failed", "lost")
#: States after which a job does nothing more (a pre-empted job is requeued, so it is not one).
TERMINAL = ("finished", "failed", "lost")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sweep_dir(output_dir: str | Path, sweep_id: str) -> Path:
    return Path(output_dir).expanduser() / SWEEPS_DIR / sweep_id


def job_state_file(folder: Path, index: int) -> Path:
    return folder / "jobs" / f"{index}.json"


def job_log(folder: Path, index: int) -> Path:
    return folder / "logs" / f"job-{index}.log"


def _dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the sweep manifest {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise UserError(f"{path} is not a sweep manifest (no jobs list)")
    return data


def write_new(folder: Path, header: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
    """A new submission: the manifest with every job pending (older state files are replaced)."""
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        job.setdefault("state", "pending")
        atomic_write_json(job_state_file(folder, job["index"]),
                          {"state": "pending", "exit_status": None, "reason": None, "attempts": 0})
    atomic_write_text(folder / MANIFEST, _dump({**header, "jobs": jobs}))


def update_header(folder: Path, **values: Any) -> None:
    """Set top-level fields of the manifest (e.g. the Slurm array id once submitted)."""
    with _locked(folder):
        data = _read_yaml(folder / MANIFEST)
        data.update(values)
        atomic_write_text(folder / MANIFEST, _dump(data))


def set_job(folder: Path, index: int, **values: Any) -> None:
    """Record a job's state (``state=``, ``exit_status=``, ``reason=``, ...) in its own file,
    then refresh ``sweep.yaml`` from every job's file."""
    path = job_state_file(folder, index)
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    atomic_write_json(path, {**old, **values})
    refresh(folder)


class _locked:
    """An exclusive lock on the sweep folder (array tasks refresh sweep.yaml concurrently)."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self) -> "_locked":
        import fcntl

        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _merged(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    for job in data["jobs"]:
        try:
            job.update(json.loads(job_state_file(folder, int(job["index"])).read_text()))
        except (OSError, ValueError):
            pass
    return data


def refresh(folder: Path) -> dict[str, Any]:
    """Rewrite ``sweep.yaml`` with every job's latest state; returns the manifest."""
    with _locked(folder):
        data = _merged(folder, _read_yaml(folder / MANIFEST))
        atomic_write_text(folder / MANIFEST, _dump(data))
    return data


def _queued(array_id: str) -> set[str] | None:
    """Task ids (``<array>_<n>``) Slurm still holds for an array (pending or running); None when
    Slurm does not answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", str(array_id), "-o", "%i"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        # squeue says "Invalid job id" once the whole array has left the queue
        return set() if "Invalid job id" in out.stderr else None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def load(folder: Path, *, ask_slurm: bool = True) -> dict[str, Any]:
    """The manifest with each job's latest state (read only).  Under Slurm, a job that is neither
    done nor queued any more, and left no state saying so, reads ``lost``."""
    if not (folder / MANIFEST).is_file():
        raise UserError(f"no sweep manifest at {folder / MANIFEST}")
    data = _read_yaml(folder / MANIFEST)
    array_id = data.get("slurm_array_id")
    queued = _queued(array_id) if (array_id and ask_slurm) else None
    data = _merged(folder, data)
    if queued is not None:
        for job in data["jobs"]:
            if job.get("state") not in TERMINAL and job.get("slurm_id") and job["slurm_id"] not in queued:
                # re-read: the task may have written its end between the two reads
                try:
                    job.update(json.loads(job_state_file(folder, int(job["index"])).read_text()))
                except (OSError, ValueError):
                    pass
                if job.get("state") == "preempted":
                    job["state"] = "lost"
                    job["reason"] = (f"Slurm task {job['slurm_id']} stopped (exit 75, checkpoint written) and was not "
                                     f"requeued (cancelled?): submit the sweep again to resume it")
                elif job.get("state") not in TERMINAL:
                    job["state"] = "lost"
                    job["reason"] = job.get("reason") or (
                        f"Slurm task {job['slurm_id']} ended without a result (cancelled, killed, out of memory "
                        f"or node failure): see {job.get('log')}")
    return data


def find(output_dir: str | Path, sweep_id: str) -> Path:
    folder = sweep_dir(output_dir, sweep_id)
    if not (folder / MANIFEST).is_file():
        root = Path(output_dir).expanduser() / SWEEPS_DIR
        have = sorted(p.parent.name for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
        raise UserError(f"no sweep '{sweep_id}' under {root}"
                        + (f" (sweeps: {', '.join(have[-8:])})" if have else " (no sweeps there)"))
    return folder


def all_sweeps(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir).expanduser() / SWEEPS_DIR
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime)


def counts(data: dict[str, Any]) -> dict[str, int]:
    out = {s: 0 for s in STATES}
    for job in data["jobs"]:
        out[job.get("state") or "pending"] = out.get(job.get("state") or "pending", 0) + 1
    return {k: v for k, v in out.items() if v}


def counts_line(data: dict[str, Any]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts(data).items())


def run_dirs(data: dict[str, Any]) -> list[str]:
    return [str(j["run_dir"]) for j in data["jobs"] if j.get("run_dir")]


def env_slurm_id() -> str | None:
    """This process's Slurm task as ``scontrol requeue`` must name it: ``<array>_<task>`` in an
    array (there ``SLURM_JOB_ID`` can equal the array's id, and requeueing it requeues every
    sibling), else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")
