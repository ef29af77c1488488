"""Sweeps on launcher=local through the real CLI: the jobs run, each in its own process; a
resubmitted sweep skips its finished jobs (resume=auto); a bad sweep starts nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import cli

pytestmark = pytest.mark.integration

DEMO = ["experiment=demo", "task.synthetic.n_train=64", "task.synthetic.n_validation=32", "train.batch_size=16",
        "train.max_steps=2"]


def test_a_local_sweep_runs_every_job_and_a_resubmission_skips_the_finished_ones(tmp_path):
    args = ["rewind", "--multirun", *DEMO, "seed=1,2", f"output_dir={tmp_path}", "launcher.sweep_id=s",
            "launcher.local.parallel=2"]
    r = cli(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sweep s: 2 finished" in r.stdout
    m = yaml.safe_load((tmp_path / "sweeps" / "s" / "sweep.yaml").read_text())
    assert m["launcher"] == "local" and [j["state"] for j in m["jobs"]] == ["finished", "finished"]
    first = {}
    for job, seed in zip(m["jobs"], (1, 2)):
        summary = json.loads((tmp_path / "rewind" / f"demo-seed={seed}" / "summary.json").read_text())
        assert summary["seed"] == seed and job["run_dir"] == str((tmp_path / "rewind" / f"demo-seed={seed}").resolve())
        first[seed] = summary["finished"]
    r = cli(*args)  # the same sweep again: every job finds its run finished and leaves it alone
    assert r.returncode == 0, r.stdout[-3000:]
    for seed in (1, 2):
        assert json.loads((tmp_path / "rewind" / f"demo-seed={seed}" / "summary.json").read_text())["finished"] == first[seed]
        assert "is already finished" in (tmp_path / "sweeps" / "s" / "logs" / f"job-{seed - 1}.log").read_text()
    rep = cli("report", f"output_dir={tmp_path}", "sweep=s", "seed=2")
    assert rep.returncode == 0 and "demo-seed=2" in rep.stdout and "1 run(s)" in rep.stdout, rep.stdout
    assert "sweep s (local): 2 finished" in rep.stdout


def test_a_sweep_with_a_bad_job_starts_nothing(tmp_path):
    r = cli("rewind", "-m", *DEMO, "seed=1,2", "train.lr=1e-3,nope", f"output_dir={tmp_path}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "job 1 (seed=1 train.lr=nope), 3 (seed=2 train.lr=nope)" in r.stderr
    assert not any(tmp_path.iterdir())


def test_report_names_an_unknown_sweep(tmp_path):
    (tmp_path / "rewind").mkdir()
    r = cli("report", f"output_dir={tmp_path}", "sweep=nope")
    assert r.returncode == 2 and "no sweep 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
