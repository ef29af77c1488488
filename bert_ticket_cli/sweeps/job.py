"""The one job function of every launcher: run one job of a sweep in its own process.

:class:`SweepJob` is called with a job spec (plain JSON-able dict: verb, overrides, sweep folder,
index, log).  It runs ``python -m bert_ticket_cli VERB overrides...`` as a child process (a
clean Accelerate / CUDA state per job), its output appended to the job's log, and records the
job's state in the sweep folder (``running``, then ``finished`` / ``preempted`` / ``failed``
with the exit status and, for a failure, the last ``error:`` line of the log).

Pre-emption under Slurm (submitit's checkpoint protocol): Slurm sends the requeue signal
(``launcher.slurm.signal``, USR2 by default, ``signal_delay_s`` before the time limit, or on
``scancel --signal=USR2``) to every process of the task.  The run (the child) writes a
checkpoint at the next step boundary and exits 75; submitit calls :meth:`SweepJob.checkpoint`
in the wrapper, which waits for the child, records ``preempted`` and hands back the same job;
submitit then requeues ``<array id>_<task id>`` alone, and the requeued task resumes
(``resume=auto``).  A run stopped by SIGTERM alone (``scancel``, a pre-emption that cancels)
exits 75 too but is not requeued here: Slurm requeues a job it pre-empts with
``PreemptMode=REQUEUE`` itself, and a cancelled job stays cancelled (the manifest then says
``lost``; resubmitting the sweep resumes it).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from bert_ticket_cli.errors import EXIT_PREEMPTED
from bert_ticket_cli.sweeps import manifest


class JobFailed(Exception):
    """A job ended with an exit status other than 0 and 75 (its reason is the message)."""


def failure_reason(log: Path, offset: int, status: int) -> str:
    """The one-line reason of a failed job: the last ``error:`` line its run wrote since
    ``offset`` in the log, else the last line, else the exit status."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    if lines:
        return f"exit {status}: {lines[-1][:300]}"
    return f"exit {status}"


def distributed_env(env: dict[str, str]) -> dict[str, str]:
    """A Slurm task of a multi-process job (``tasks_per_node`` x ``nodes`` > 1): export what
    Accelerate reads (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    from Slurm's variables, through submitit's own helper.  One process: unchanged."""
    if int(env.get("SLURM_NTASKS", "1") or 1) <= 1:
        return env
    from submitit.helpers import TorchDistributedEnvironment

    dist = TorchDistributedEnvironment()
    env.update(RANK=str(dist.rank), LOCAL_RANK=str(dist.local_rank), WORLD_SIZE=str(dist.world_size),
               LOCAL_WORLD_SIZE=str(dist.local_world_size), MASTER_ADDR=str(dist.master_addr),
               MASTER_PORT=str(dist.master_port))
    return env


class SweepJob(Checkpointable):
    """Call with a job spec; returns the run's exit status (0 finished or skipped, 75 stopped
    by a signal after a checkpoint); raises :class:`JobFailed` for any other."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._recorded = False
        self._log: tuple[Path, int] | None = None

    def __getstate__(self) -> dict[str, Any]:  # submitit stores the callable: never the live child
        return {"job": 1}  # (a non-empty state: an empty one would skip __setstate__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._proc, self._recorded, self._log = None, False, None

    def _env(self, spec: dict[str, Any]) -> dict[str, str]:
        env = distributed_env(dict(os.environ))
        # The run must stop on the requeue signal, whatever BERT_TICKET_STOP_SIGNALS says.
        sig = str(spec.get("signal") or "USR2").upper().removeprefix("SIG")
        stops = env.get("BERT_TICKET_STOP_SIGNALS", "TERM,USR1,USR2")
        if sig not in {s.strip().upper().removeprefix("SIG") for s in stops.split(",")}:
            env["BERT_TICKET_STOP_SIGNALS"] = f"{stops},{sig}"
        return env

    def __call__(self, spec: dict[str, Any]) -> int:
        folder, index = Path(spec["sweep_dir"]), int(spec["index"])
        env = self._env(spec)
        main = env.get("RANK", "0") == "0"
        log = manifest.job_log(folder, index)
        if not main:
            log = log.with_name(f"{log.stem}.rank{env['RANK']}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        # Slurm's variables count only in an array task of this sweep: a local sweep may run
        # inside an interactive allocation, which it must never requeue.
        on_slurm = spec.get("launcher") == "slurm" and bool(os.environ.get("SLURM_JOB_ID"))
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) if on_slurm else 0
        if main:
            manifest.set_job(folder, index, state="running", exit_status=None, reason=None, attempts=attempt + 1,
                             host=platform.node(), started=manifest.now(), ended=None,
                             **({"slurm_id": manifest.env_slurm_id()} if on_slurm else {}))
        with open(log, "ab") as out:
            offset = out.tell()
            self._log = (log, offset)
            out.write(f"=== {manifest.now()} job {index} attempt {attempt + 1} on {platform.node()}: "
                      f"bert-ticket {spec['verb']} {' '.join(spec['overrides'])}\n".encode())
            out.flush()
            self._recorded = False
            self._proc = subprocess.Popen([sys.executable, "-m", "bert_ticket_cli", spec["verb"], *spec["overrides"]],
                                          stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            status = self._wait(spec)
        if main and not self._recorded:
            self._record(folder, index, status, log, offset)
        if status not in (0, EXIT_PREEMPTED):
            raise JobFailed(failure_reason(log, offset, status))
        return status

    def _wait(self, spec: dict[str, Any]) -> int:
        """Wait for the child; forward a stop signal this process got (launcher=local under a
        pre-empted interactive job, or a TERM sent to this process only)."""
        from bert_ticket_cli.engine import signals

        assert self._proc is not None
        forwarded = False
        while True:
            try:
                return self._proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pending = signals.requested()
                if pending is not None and not forwarded:
                    self._proc.send_signal(pending)
                    forwarded = True

    def _record(self, folder: Path, index: int, status: int, log: Path, offset: int) -> None:
        state = "finished" if status == 0 else "preempted" if status == EXIT_PREEMPTED else "failed"
        manifest.set_job(folder, index, state=state, exit_status=status, ended=manifest.now(),
                         reason=failure_reason(log, offset, status) if state == "failed" else None)
        self._recorded = True

    def checkpoint(self, spec: dict[str, Any]) -> DelayedSubmission:  # type: ignore[override]
        """submitit's checkpoint protocol: the requeue signal arrived.  The run got it too and is
        writing a checkpoint: wait for it (forwarding the signal if the run missed it), record
        ``preempted``, and hand back the same job; submitit then requeues this array task."""
        # submitit calls this on the task of global rank 0 only; the other ranks' runs stop too
        # (they got the signal) and their wrappers are requeued with the whole task.
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # The run got the signal too; sending it again is harmless (the stop flag is set
            # once) and covers a signal sent to the wrapper alone.
            proc.send_signal(getattr(signal, "SIG" + str(spec.get("signal") or "USR2").upper().removeprefix("SIG")))
            proc.wait()
        if proc is not None and proc.returncode is not None and self._log is not None:
            self._record(Path(spec["sweep_dir"]), int(spec["index"]), proc.returncode, *self._log)
        return DelayedSubmission(SweepJob(), spec)
