"""Run the jobs of a sweep: ``launcher=local`` or ``launcher=slurm``, through one job function."""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError
from bert_ticket_cli.sweeps import manifest
from bert_ticket_cli.sweeps.expand import Job, plan

#: Exit status of a sweep in which some job failed (2 stays "the sweep itself is bad input").
EXIT_JOBS_FAILED = 1


def _say(text: str) -> None:
    print(text, flush=True)


def _sweep_id(verb: str, output_dir: str, given: str | None) -> str:
    if given:
        return str(given)
    base = f"{verb}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while manifest.sweep_dir(output_dir, name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def run_sweep(verb: str, overrides: Sequence[str]) -> int:
    """``bert-ticket VERB -m overrides``: plan and validate every job (exit 2 before anything
    starts), write the manifest, run the jobs on the chosen launcher; the exit status is 0 when
    every job finished, 75 when stopped by a signal, 1 when a job failed or was lost."""
    if verb == "report":
        raise UserError("report does not sweep: drop -m (filter a sweep with report sweep=ID)")
    if list(overrides[:1]) == ["prepare"]:
        raise UserError("'pretrain prepare' does not sweep: drop -m")
    jobs = plan(verb, overrides)
    launcher = jobs[0].cfg.launcher
    output_dir = str(jobs[0].cfg.output_dir)
    if launcher.name == "slurm" and shutil.which("sbatch") is None:
        raise UserError("launcher=slurm needs Slurm's sbatch on PATH (no Slurm client here): run on a login "
                        "node, or use launcher=local")
    sweep_id = _sweep_id(verb, output_dir, launcher.sweep_id)
    folder = manifest.sweep_dir(output_dir, sweep_id)
    _check_not_queued(folder)
    specs = [_spec(verb, sweep_id, folder, job, launcher) for job in jobs]
    header = {"sweep_id": sweep_id, "verb": verb, "launcher": launcher.name, "created": manifest.now(),
              "command": ["bert-ticket", verb, "-m", *overrides], "slurm_array_id": None}
    records = [{"index": j.index, "swept": dict(j.swept), "overrides": list(s["overrides"]),
                "run_name": j.cfg.run_name, "run_dir": s["run_dir"], "log": str(manifest.job_log(folder, j.index)),
                "slurm_id": None, "state": "pending", "exit_status": None, "reason": None, "attempts": 0}
               for j, s in zip(jobs, specs)]
    manifest.write_new(folder, header, records)
    _say(f"sweep {sweep_id}: {len(jobs)} job(s) on launcher={launcher.name}; manifest {folder / manifest.MANIFEST}")
    if launcher.name == "slurm":
        return _slurm(folder, specs, launcher)
    return _local(folder, jobs, specs, launcher.local.parallel)


def _check_not_queued(folder: Path) -> None:
    """Resubmitting a sweep id (resume=auto continues its runs) is fine once its earlier Slurm
    array has left the queue; two arrays training the same runs at once are refused."""
    if not (folder / manifest.MANIFEST).is_file():
        return
    old = manifest.load(folder)
    if old.get("launcher") != "slurm" or not old.get("slurm_array_id"):
        return
    busy = [j for j in old["jobs"] if j.get("state") in ("pending", "running", "preempted") and j.get("slurm_id")]
    if busy:
        raise UserError(f"sweep {folder.name} still has {len(busy)} job(s) in Slurm's queue (array "
                        f"{old['slurm_array_id']}): wait for them (bert-ticket report sweep={folder.name}), or "
                        f"scancel {old['slurm_array_id']} first, or pick another launcher.sweep_id=")


def _spec(verb: str, sweep_id: str, folder: Path, job: Job, launcher: Any) -> dict[str, Any]:
    from bert_ticket_cli.artifacts.paths import run_dir

    return {"verb": verb, "overrides": list(job.overrides), "index": job.index, "sweep_id": sweep_id,
            "sweep_dir": str(folder.resolve()), "run_dir": str(run_dir(job.cfg).root.resolve()),
            "signal": str(launcher.slurm.signal), "launcher": str(launcher.name)}


def _local(folder: Path, jobs: list[Job], specs: list[dict[str, Any]], parallel: int) -> int:
    """Each job in its own process, ``parallel`` at once; a stop signal to this process is passed
    to the running jobs (they checkpoint, exit 75) and no further job starts."""
    from bert_ticket_cli.engine import signals
    from bert_ticket_cli.sweeps.job import JobFailed, SweepJob

    total = len(jobs)

    def one(k: int) -> int:
        if signals.requested() is not None:
            return EXIT_PREEMPTED  # not started: stays pending
        job, spec = jobs[k], specs[k]
        _say(f"[job {job.index + 1}/{total}] {job.label}: started -> {spec['run_dir']}")
        try:
            status = SweepJob()(spec)
        except JobFailed as exc:
            _say(f"[job {job.index + 1}/{total}] {job.label}: failed: {exc} (log {manifest.job_log(folder, job.index)})")
            return EXIT_JOBS_FAILED
        state = "finished" if status == 0 else "preempted (exit 75, resume=auto continues it)"
        _say(f"[job {job.index + 1}/{total}] {job.label}: {state}")
        return status

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        statuses = list(pool.map(one, range(total)))
    data = manifest.refresh(folder)
    _say(f"sweep {data['sweep_id']}: {manifest.counts_line(data)}")
    if any(s == EXIT_PREEMPTED for s in statuses):
        return EXIT_PREEMPTED
    return EXIT_JOBS_FAILED if any(s != 0 for s in statuses) else 0


def _slurm(folder: Path, specs: list[dict[str, Any]], launcher: Any) -> int:
    """One job array through submitit's ``map_array``; waits for it unless
    ``launcher.slurm.wait=false``."""
    import submitit
    from submitit.slurm.slurm import SlurmJobEnvironment

    from bert_ticket_cli.sweeps.job import SweepJob

    sl = launcher.slurm
    sig = str(sl.signal).upper().removeprefix("SIG")
    # submitit reads its requeue signal from this class attribute when it writes the sbatch
    # script (--signal=SIG@delay) and from SUBMITIT_PREEMPT_SIGNAL in the job.
    SlurmJobEnvironment.USR_SIG = sig
    os.environ["SUBMITIT_PREEMPT_SIGNAL"] = sig
    executor = submitit.AutoExecutor(folder=folder / "submitit" / "%j", cluster="slurm",
                                     slurm_max_num_timeout=sl.max_num_timeout)
    params: dict[str, Any] = {
        "name": f"bt-{folder.name}", "timeout_min": sl.timeout_min, "nodes": sl.nodes,
        "tasks_per_node": sl.tasks_per_node, "slurm_array_parallelism": sl.array_parallelism,
        "slurm_signal_delay_s": sl.signal_delay_s,
        "slurm_setup": [f"export SUBMITIT_PREEMPT_SIGNAL={sig}", *sl.setup],
        "slurm_additional_parameters": {"requeue": True, **dict(sl.additional_parameters)},
        "slurm_srun_args": list(sl.srun_args),
    }
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if getattr(sl, key) is not None:
            params[key] = getattr(sl, key)
    for key in ("partition", "qos", "account", "constraint", "exclude"):
        if getattr(sl, key) is not None:
            params[f"slurm_{key}"] = getattr(sl, key)
    executor.update_parameters(**params)
    try:
        submitted = executor.map_array(SweepJob(), specs)
    except Exception as exc:  # sbatch's refusal (bad partition, account, ...) as one line
        text = " ".join(str(exc).split())
        raise UserError(f"sbatch refused the sweep's job array: {text[:500]}") from None
    array_id = submitted[0].job_id.split("_")[0]
    manifest.update_header(folder, slurm_array_id=array_id)
    for spec, sub in zip(specs, submitted):
        manifest.set_job(folder, int(spec["index"]), slurm_id=sub.job_id)
    _say(f"sweep {folder.name}: Slurm job array {array_id} ({len(specs)} task(s)); "
         f"progress: bert-ticket report sweep={folder.name} output_dir={folder.parent.parent}")
    if not sl.wait:
        return 0
    return wait(folder)


def wait(folder: Path, poll_s: float = 2.0) -> int:
    """Until no job of the sweep is pending, running or pre-empted (requeued); prints each change
    of the counts.  0: all finished; 1: some failed or lost."""
    from bert_ticket_cli.engine import signals

    last = ""
    while True:
        data = manifest.load(folder)
        line = manifest.counts_line(data)
        if line != last:
            _say(f"sweep {folder.name}: {line}")
            last = line
        if all(j.get("state") in manifest.TERMINAL for j in data["jobs"]):
            break
        if signals.requested() is not None:
            _say(f"sweep {folder.name}: stop signal: no longer waiting (the jobs run on; "
                 f"bert-ticket report sweep={folder.name} shows them)")
            return EXIT_PREEMPTED
        time.sleep(poll_s)
    for j in data["jobs"]:  # what only Slurm's queue told: keep it in the manifest
        if j.get("state") == "lost":
            manifest.set_job(folder, int(j["index"]), state="lost", reason=j.get("reason"))
    data = manifest.refresh(folder)
    for j in data["jobs"]:
        if j.get("state") != "finished":
            _say(f"  job {j['index']} ({' '.join(f'{k}={v}' for k, v in j['swept'].items())}): {j.get('state')}: "
                 f"{j.get('reason')}")
    return 0 if all(j.get("state") == "finished" for j in data["jobs"]) else EXIT_JOBS_FAILED
