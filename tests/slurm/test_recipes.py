"""The paper recipes on a real Slurm cluster, on the tiny model: the plain sbatch script and the
recipe's sweep target (submit the grid as one job array, then render the paper's table)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slurm

BT = f"{sys.executable} -m bert_ticket_cli"
TINY = ("experiment=demo train.max_steps=3 task.synthetic.n_train=64 task.synthetic.n_validation=32 "
        "train.batch_size=16")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra)
    return env


def _job(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout


def test_the_imp_sbatch_script_runs_end_to_end_on_the_tiny_model(tmp_path):
    """recipes/bert_tickets/imp.sbatch as a user submits it (its GPU / memory requests lowered for
    a CPU node), logs appended in a folder that exists: one IMP level on the tiny model."""
    out = tmp_path / "runs"
    env = _env(BT=BT, OUT=str(out), MODEL="tiny", ENGINE="cpu", LEVELS="1", TRAIN=TINY)
    sub = subprocess.run(["sbatch", "--parsable", "--gres=none", "--mem=1G", "--cpus-per-task=1",
                          f"--output={tmp_path}/%x-%j.out", str(REPO / "recipes" / "bert_tickets" / "imp.sbatch"),
                          "synthetic", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    t0 = time.monotonic()
    while "JobState=COMPLETED" not in (info := _job(job_id)) and "JobState=FAILED" not in info:
        assert time.monotonic() - t0 < 120, info
        time.sleep(0.2)
    log = next(tmp_path.glob("*.out")).read_text()
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info, log[-3000:]
    run = out / "prune" / "synthetic-imp-s1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "imp" and summary["model"] == "tiny"
    assert (run / "tickets" / "level-01" / "ticket.json").is_file()


def test_the_recipe_sweep_target_submits_the_grid_and_renders_the_table(tmp_path):
    """make -C recipes/bert_tickets sweep: IMP and random pruning as one job array, then report's
    lottery-ticket table of that sweep."""
    out = tmp_path / "runs"
    r = subprocess.run(["make", "-s", "-C", str(REPO / "recipes" / "bert_tickets"), "sweep", f"BT={BT}",
                        "TASKS=synthetic", "SEEDS=1", "MODEL=tiny", "ENGINE=cpu", "LEVELS=1", f"OUT={out}",
                        f"GLUE_DIR={tmp_path}", "SWEEP=grid", "SLURM=launcher.slurm.cpus_per_task=1",
                        f"EXTRA={TINY} prune.sparsities=[0.5]"], env=_env(), capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = yaml.safe_load((out / "sweeps" / "grid" / "sweep.yaml").read_text())
    assert m["slurm_array_id"] and [j["state"] for j in m["jobs"]] == ["finished", "finished"]
    assert [j["swept"] for j in m["jobs"]] == [{"method": "imp"}, {"method": "random"}]
    table = " ".join(r.stdout.split())
    assert re.search(r"full model │ 0\.0% │ [0-9.]+ \(n=1, no std\)", table), r.stdout
    assert re.search(r"imp │ 10\.0% │", table) and re.search(r"random_pruning │ 50\.0% │", table), r.stdout
