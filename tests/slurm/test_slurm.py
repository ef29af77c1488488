"""Sweeps, pre-emption and the recipes on a real Slurm cluster (no mock): every job here is a
real array task of the cluster ``scripts/slurm-local.sh`` starts, running the real CLI on the
tiny demo (``experiment=demo``: tiny BERT, the generated task).  Jobs ask for one CPU each (the
CI box has two)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, read_jsonl

pytestmark = pytest.mark.slurm

#: A few seconds of training of the tiny model on the generated task.
DEMO = ["experiment=demo", "task.synthetic.n_train=64", "task.synthetic.n_validation=32", "train.batch_size=16",
        "launcher=slurm", "launcher.slurm.cpus_per_task=1", "launcher.slurm.timeout_min=10"]
WALL_FIELDS = ("elapsed_s",)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def bt(*args: str, timeout: int = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bert_ticket_cli", *args], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def manifest(out: Path, sweep: str) -> dict:
    return yaml.safe_load((out / "sweeps" / sweep / "sweep.yaml").read_text())


def _log(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in read_jsonl(path)]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_two_job_sweep_on_slurm_finishes_with_both_records_and_the_manifest_saying_so(tmp_path):
    out = tmp_path / "runs"
    r = bt("rewind", "-m", *DEMO, "seed=1,2", "train.max_steps=4", f"output_dir={out}", "launcher.sweep_id=two")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = manifest(out, "two")
    assert m["launcher"] == "slurm" and m["slurm_array_id"]
    assert [j["state"] for j in m["jobs"]] == ["finished", "finished"]
    assert [j["exit_status"] for j in m["jobs"]] == [0, 0]
    assert [j["slurm_id"] for j in m["jobs"]] == [f"{m['slurm_array_id']}_0", f"{m['slurm_array_id']}_1"]
    for job, seed in zip(m["jobs"], (1, 2)):
        assert job["run_name"] == f"demo-seed={seed}"  # the swept key is in the run name
        summary = json.loads((Path(job["run_dir"]) / "summary.json").read_text())
        assert summary["seed"] == seed and summary["status"] == "finished" and summary["config"]["resume"] == "auto"
    rep = bt("report", f"output_dir={out}", "sweep=two")
    assert rep.returncode == 0 and "2 finished" in rep.stdout and "demo-seed=2" in rep.stdout, rep.stdout


@pytest.fixture(scope="module")
def preempted_sweep(tmp_path_factory):
    """Two array tasks with the same settings (only the run name is swept); task 0 is sent the
    requeue signal (``scancel --signal=USR2 <array>_0``, what Slurm sends before the time limit)
    in the middle of its training, task 1 is left alone."""
    out = tmp_path_factory.mktemp("preempt") / "runs"
    args = ["rewind", "-m", *DEMO, "run_name=cut,straight", "train.max_steps=60", "train.log_every=1",
            "task.synthetic.n_train=256", f"output_dir={out}", "launcher.sweep_id=pre"]
    p = subprocess.Popen([sys.executable, "-m", "bert_ticket_cli", *args], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        sweep = out / "sweeps" / "pre" / "sweep.yaml"
        _wait_for(lambda: sweep.exists() and (yaml.safe_load(sweep.read_text()) or {}).get("slurm_array_id"),
                  60, "the array's submission", p)
        array = yaml.safe_load(sweep.read_text())["slurm_array_id"]
        metrics = out / "rewind" / "cut" / "metrics.jsonl"

        def training() -> bool:
            return metrics.exists() and any(e.get("event") == "train" and e["step"] >= 5 for e in read_jsonl(metrics))

        _wait_for(training, 90, "task 0 to train 5 steps", p)
        subprocess.run(["scancel", "--signal=USR2", f"{array}_0"], check=True, timeout=30)
        text, _ = p.communicate(timeout=150)
    finally:
        if p.poll() is None:
            p.kill()
            subprocess.run(["scancel", "--name", "bt-pre"], timeout=30)
    return out, array, p.returncode, text


def test_a_job_preempted_for_real_resumes_and_finishes_with_identical_metrics(preempted_sweep):
    out, array, status, text = preempted_sweep
    assert status == 0, text[-4000:]
    cut, straight = out / "rewind" / "cut", out / "rewind" / "straight"
    m = manifest(out, "pre")
    job = m["jobs"][0]
    assert job["state"] == "finished" and job["attempts"] == 2, job  # stopped once, requeued once
    log = Path(job["log"]).read_text()
    assert "stop signal: checkpoint written at step" in log and log.count("=== ") == 2, log[-3000:]
    assert (cut / "checkpoints").is_dir()
    events = _log(cut / "metrics.jsonl")
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 61))  # each step once
    assert events == _log(straight / "metrics.jsonl")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (cut, straight))
    assert a["metrics"] == b["metrics"]


def test_preempting_one_task_of_an_array_requeues_that_task_only(preempted_sweep):
    out, array, status, text = preempted_sweep
    m = manifest(out, "pre")
    sibling = m["jobs"][1]
    assert sibling["state"] == "finished" and sibling["attempts"] == 1, sibling
    assert Path(sibling["log"]).read_text().count("=== ") == 1  # one start: never cancelled, never requeued
    restarts = subprocess.run(["scontrol", "show", "job", f"{array}_1"], capture_output=True, text=True).stdout
    if restarts:  # still known to slurmctld (MinJobAge)
        assert "Restarts=0" in restarts, restarts


def test_a_job_failing_on_bad_input_shows_as_failed_with_its_reason_in_report(tmp_path):
    out = tmp_path / "runs"
    r = bt("rewind", "-m", *DEMO, "task=mrpc,synthetic", "task.data_dir=/nonexistent/glue", "train.max_steps=2",
           f"output_dir={out}", "launcher.sweep_id=bad")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    m = manifest(out, "bad")
    bad = m["jobs"][0]
    assert bad["state"] == "failed" and bad["exit_status"] == 2
    assert bad["reason"] == "data_dir /nonexistent/glue does not exist; point task.data_dir at the MRPC folder"
    rep = bt("report", f"output_dir={out}")
    assert rep.returncode == 0, rep.stderr
    assert f"job 0 (task=mrpc) failed: {bad['reason']}" in " ".join(rep.stdout.split())
