"""Sweeps without running a job: the expansion (Hydra's grammar), the plan (every job validated
first, run names, resume=auto), resume=auto's rules on a run folder, the manifest and the
distributed environment of a multi-process Slurm job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bert_ticket_cli.artifacts.paths import RunDir, atomic_write_json, run_dir
from bert_ticket_cli.artifacts.records import open_run, write_config, write_summary, now
from bert_ticket_cli.config.compose import compose, config_groups, validate
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.sweeps import manifest
from bert_ticket_cli.sweeps.expand import expand, plan
from bert_ticket_cli.sweeps.job import distributed_env, failure_reason


def test_comma_lists_range_and_choice_expand_to_the_cartesian_product_in_order():
    jobs = expand(["task=mrpc", "seed=range(1,3)", "train.lr=1e-3,2e-3", "train.epochs=choice(1,2)"])
    assert len(jobs) == 8
    assert [j.swept for j in jobs[:3]] == [
        {"seed": "1", "train.lr": "0.001", "train.epochs": "1"},
        {"seed": "1", "train.lr": "0.001", "train.epochs": "2"},
        {"seed": "1", "train.lr": "0.002", "train.epochs": "1"},
    ]
    assert all(j.overrides[0] == "task=mrpc" for j in jobs)  # a plain override goes to every job
    assert jobs[-1].overrides == ["task=mrpc", "seed=2", "train.lr=0.002", "train.epochs=2"]


def test_glob_expands_over_a_groups_options():
    jobs = expand(["task=glob(m*)"])
    assert [j.swept["task"] for j in jobs] == [t for t in config_groups()["task"] if t.startswith("m")]
    assert len(jobs) >= 3  # mlm, mnli, mrpc


def test_a_key_swept_twice_is_refused_and_a_plain_repeat_keeps_the_last():
    with pytest.raises(UserError, match=r"'seed' is given twice"):
        expand(["seed=1,2", "seed=3"])
    jobs = expand(["seed=1", "train.lr=1e-3,2e-3", "seed=3"])
    assert [j.overrides for j in jobs] == [["train.lr=0.001", "seed=3"], ["train.lr=0.002", "seed=3"]]


def test_every_jobs_problems_are_reported_on_one_line_before_anything_starts(tmp_path):
    with pytest.raises(UserError) as e:
        plan("rewind", [f"output_dir={tmp_path}", "seed=1,2", "train.lr=1e-3,-1", "train.epochs=oops"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("invalid sweep of 4 job(s), nothing started")
    assert "every job: invalid config: 'train.epochs' must be float" in msg
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "rewind").exists()
    with pytest.raises(UserError) as e:
        plan("rewind", [f"output_dir={tmp_path}", "seed=1,2", "train.lr=1e-3,-1"])
    assert "job 1 (seed=1 train.lr=-1), 3 (seed=2 train.lr=-1): invalid config: 'train.lr' must be > 0" in str(e.value)


def test_run_names_carry_the_swept_keys_and_jobs_resume_automatically(tmp_path):
    jobs = plan("rewind", [f"output_dir={tmp_path}", "experiment=demo", "seed=1,2", "train.lr=1e-3,2e-3"])
    names = [j.cfg.run_name for j in jobs]
    assert names == ["demo-seed=1-lr=0.001", "demo-seed=1-lr=0.002", "demo-seed=2-lr=0.001", "demo-seed=2-lr=0.002"]
    assert all(j.cfg.resume == "auto" and j.overrides[-1] == "resume=auto" for j in jobs)
    # The job's command line composes to the planned config (run name quoted: '=' in a value).
    again = validate(compose("rewind", jobs[3].overrides), "rewind")
    assert again.run_name == names[3] and again.seed == 2 and again.train.lr == 2e-3 and again.resume == "auto"
    # Without run_name: the default (hashed) name, then the swept keys.
    jobs = plan("rewind", [f"output_dir={tmp_path}", "train.max_steps=2,3", "resume=true"])
    assert jobs[0].cfg.run_name.startswith("synthetic-tiny-s42-") and jobs[0].cfg.run_name.endswith("-max_steps=2")
    assert all(j.cfg.resume is True for j in jobs)  # given on the command line: kept


def test_a_templated_run_name_names_each_job_and_must_differ(tmp_path):
    jobs = plan("rewind", [f"output_dir={tmp_path}", "seed=1,2", "run_name=${task.name}-s${seed}"])
    assert [j.cfg.run_name for j in jobs] == ["synthetic-s1", "synthetic-s2"]
    with pytest.raises(UserError, match=r"would share the run folder"):
        plan("rewind", [f"output_dir={tmp_path}", "seed=1,2", "run_name=${task.name}"])


def test_launcher_settings_are_checked_and_cannot_be_swept(tmp_path):
    with pytest.raises(UserError, match=r"launcher.slurm.partition cannot be swept"):
        plan("rewind", ["launcher=slurm", "launcher.slurm.partition=a,b"])
    with pytest.raises(UserError) as e:
        plan("rewind", ["launcher=slurm", "seed=1,2", "launcher.slurm.signal=NOPE", "launcher.local.parallel=0"])
    assert "'launcher.slurm.signal' must be a signal name" in str(e.value)
    assert "'launcher.local.parallel' must be >= 1" in str(e.value)
    cfg = validate(compose("rewind", ["launcher=slurm", "launcher.slurm.partition=gpu"]), "rewind")
    assert cfg.launcher.name == "slurm" and cfg.launcher.slurm.partition == "gpu" and cfg.launcher.slurm.signal == "USR2"


def test_the_launcher_is_not_part_of_a_runs_identity(tmp_path):
    a = validate(compose("rewind", [f"output_dir={tmp_path}"]), "rewind")
    b = validate(compose("rewind", [f"output_dir={tmp_path}", "launcher=slurm", "launcher.slurm.qos=high"]), "rewind")
    assert run_dir(a) == run_dir(b)


def _cfg(out: Path, *overrides: str):
    return validate(compose("rewind", [f"output_dir={out}", "run_name=r", *overrides]), "rewind")


def test_resume_auto_resumes_starts_skips_and_refuses_a_changed_config(tmp_path):
    cfg = _cfg(tmp_path, "resume=auto")
    assert open_run(cfg).resume_from is None and not open_run(cfg).finished  # nothing there: start
    rd = run_dir(cfg)
    write_config(rd, cfg)
    atomic_write_json(rd.checkpoint(4) / "trainer_state.json", {"step": 4})
    assert open_run(cfg).resume_from == rd.checkpoint(4)  # an unfinished run with a checkpoint: resume
    with pytest.raises(UserError, match=r"resume=auto but the config differs .*train\.lr"):
        open_run(_cfg(tmp_path, "resume=auto", "train.lr=1e-3"))
    with pytest.raises(UserError, match=r"holds an unfinished run"):
        open_run(_cfg(tmp_path))  # resume=false still refuses to start over it
    write_summary(rd, cfg, metrics={"accuracy": 1.0}, main_metric="accuracy", started=now())
    assert open_run(cfg).finished  # finished: skipped
    with pytest.raises(UserError, match=r"holds a finished run with another config"):
        open_run(_cfg(tmp_path, "resume=auto", "train.lr=1e-3"))
    with pytest.raises(UserError, match=r"'resume' must be true, false or auto, got 'sometimes'"):
        _cfg(tmp_path, "resume=sometimes")


def test_the_manifest_merges_each_jobs_state(tmp_path):
    folder = tmp_path / "sweeps" / "s"
    manifest.write_new(folder, {"sweep_id": "s", "launcher": "local", "slurm_array_id": None},
                       [{"index": 0, "swept": {"seed": "1"}, "run_dir": "a"}, {"index": 1, "swept": {"seed": "2"}, "run_dir": "b"}])
    manifest.set_job(folder, 1, state="failed", exit_status=2, reason="data_dir /x does not exist")
    data = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert [(j["state"], j.get("exit_status")) for j in data["jobs"]] == [("pending", None), ("failed", 2)]
    assert manifest.counts_line(manifest.load(folder)) == "1 pending, 1 failed"
    assert json.loads(manifest.job_state_file(folder, 1).read_text())["reason"] == "data_dir /x does not exist"


def test_a_failed_jobs_reason_is_its_last_error_line_since_it_started(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("error: an older attempt\n")
    offset = log.stat().st_size
    with open(log, "a") as fh:
        fh.write("loading\nerror: data_dir /x does not exist; point task.data_dir at the MRPC folder\n")
    assert failure_reason(log, offset, 2) == "data_dir /x does not exist; point task.data_dir at the MRPC folder"
    with open(log, "a") as fh:
        fh.write("Traceback ...\nRuntimeError: boom\n")
    assert failure_reason(log, log.stat().st_size - 19, 1) == "exit 1: RuntimeError: boom"


def test_a_multi_process_slurm_job_exports_the_distributed_environment(monkeypatch):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]"}
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = distributed_env(dict(slurm))
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("3", "1", "4", "2")
    assert env["MASTER_ADDR"] == "gpu01" and 20000 <= int(env["MASTER_PORT"]) <= 60000
    assert "RANK" not in distributed_env({"SLURM_NTASKS": "1"})  # one process: nothing to export


def test_a_slurm_job_gone_from_the_queue_without_an_end_reads_lost(tmp_path, monkeypatch):
    folder = tmp_path / "sweeps" / "s"
    manifest.write_new(folder, {"sweep_id": "s", "launcher": "slurm", "slurm_array_id": "12"},
                       [{"index": i, "swept": {}, "run_dir": str(i)} for i in range(3)])
    for i, state in enumerate(("finished", "running", "preempted")):
        manifest.set_job(folder, i, state=state, slurm_id=f"12_{i}")
    monkeypatch.setattr(manifest, "_queued", lambda array_id: set())  # squeue: the array has left the queue
    jobs = manifest.load(folder)["jobs"]
    assert [j["state"] for j in jobs] == ["finished", "lost", "lost"]
    assert "ended without a result" in jobs[1]["reason"] and "was not requeued" in jobs[2]["reason"]
    monkeypatch.setattr(manifest, "_queued", lambda array_id: {"12_1", "12_2"})  # still pending / running
    assert [j["state"] for j in manifest.load(folder)["jobs"]] == ["finished", "running", "preempted"]
