"""Stop signals through the real CLI (its own processes, signalled from outside): a signal is
never lost (issue 11, items 7-9) and what ran is recorded (items 5, 13, 15).

Each test starts ``python -m bert_ticket_cli`` with :class:`subprocess.Popen`, so a signal
reaches a real process at a real moment (while Python imports, between IMP levels, ...).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import read_jsonl

pytestmark = pytest.mark.integration

# 3 IMP levels x 6 steps of 16 examples, a checkpoint every 2 steps: a few seconds of training.
IMP = ["prune", "method=imp", "experiment=demo", "run_name=imp", "task.synthetic.n_train=96", "train.epochs=1",
       "train.batch_size=16", "prune.levels=3", "train.save_every=2", "train.log_every=2"]
REWIND = ["rewind", "experiment=demo", "run_name=r", "task.synthetic.n_train=128", "train.epochs=2",
          "train.batch_size=16", "train.log_every=1"]
WALL_FIELDS = ("elapsed_s",)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(extra or {})})
    return env


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bert_ticket_cli", *args], env=_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    p = start(*args, env=env)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def signal_at(p: subprocess.Popen, at_s: float, sig: int = signal.SIGTERM, t0: float | None = None) -> bool:
    """Send ``sig`` ``at_s`` seconds after ``t0`` (default: now) unless ``p`` has ended; sent?"""
    t0 = time.perf_counter() if t0 is None else t0
    while time.perf_counter() - t0 < at_s:
        if p.poll() is not None:
            return False
        time.sleep(0.01)
    if p.poll() is not None:
        return False
    p.send_signal(sig)
    return True


def _log(path: Path) -> list[dict]:
    """metrics.jsonl lines in order, wall-time fields left out."""
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in read_jsonl(path)]


def _same_prune_results(ref: Path, got: Path, levels: int = 3) -> None:
    """Tickets, per-level logs, summary metrics and trajectory identical (wall times aside)."""
    for k in range(1, levels + 1):
        a, b = Ticket.load(ref / "tickets" / f"level-{k:02d}"), Ticket.load(got / "tickets" / f"level-{k:02d}")
        assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    for k in range(levels + 1):
        level = f"levels/level-{k:02d}"
        assert _log(got / level / "metrics.jsonl") == _log(ref / level / "metrics.jsonl"), level
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    assert sa["metrics"] == sb["metrics"]
    strip = [{k: v for k, v in row.items() if k != "ticket"} for row in sa["trajectory"]]
    assert strip == [{k: v for k, v in row.items() if k != "ticket"} for row in sb["trajectory"]]


@pytest.fixture(scope="module")
def imp_reference(tmp_path_factory):
    """An uninterrupted 3-level IMP run and its wall time."""
    out = tmp_path_factory.mktemp("ref") / "runs"
    t0 = time.perf_counter()
    r = run(*IMP, f"output_dir={out}")
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "prune" / "imp", wall, r.stdout


# ---------------------------------------------------------------- item 7: before training starts

@pytest.mark.parametrize("sig", ["USR1", "TERM", "USR2"])
def test_a_signal_while_python_imports_exits_75_with_nothing_written(tmp_path, sig):
    """Slurm's USR1 16 s after start, while Python imported torch, killed the job (exit 138)."""
    p = start(*REWIND, f"output_dir={tmp_path}")
    assert signal_at(p, 1.5, getattr(signal, "SIG" + sig))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, (p.returncode, err[-2000:])
    assert f"stop signal SIG{sig}" in out + err
    assert not (tmp_path / "rewind").exists()  # nothing half-written: not even config.yaml


def test_the_stop_signals_are_configurable(tmp_path):
    p = start(*REWIND, f"output_dir={tmp_path}", env={"BERT_TICKET_STOP_SIGNALS": "HUP"})
    assert signal_at(p, 1.5, signal.SIGHUP)
    p.communicate(timeout=300)
    assert p.returncode == 75
    r = run(*REWIND, f"output_dir={tmp_path}", env={"BERT_TICKET_STOP_SIGNALS": "TERM,NOPE"})
    assert r.returncode == 2 and "BERT_TICKET_STOP_SIGNALS" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------ item 8: between two trainings

def test_a_signal_between_two_levels_is_honoured_not_swallowed(imp_reference, tmp_path):
    """TERM at level 0's last step (no checkpoint is due there): the flag used to be reset by
    level 1's training, which then ran on; now the run stops before level 1, exit 75."""
    ref, _, _ = imp_reference
    r = run(*IMP, f"output_dir={tmp_path}", env={"BERT_TICKET_FAULT_AT_STEP": "6:TERM"})
    assert r.returncode == 75, r.stderr[-3000:]
    got = tmp_path / "prune" / "imp"
    assert (got / "levels" / "level-00" / "summary.json").exists()
    assert not (got / "levels" / "level-01").exists()
    assert "stop signal SIGTERM before level-01" in r.stdout
    r = run(*IMP, f"output_dir={tmp_path}", "resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    _same_prune_results(ref, got)


@pytest.mark.slow
def test_sigterm_at_ten_random_moments_then_resume_gives_identical_results(imp_reference, tmp_path):
    """The issue's test: SIGTERM at 10 moments drawn uniformly in [0.5 s, the uninterrupted run's
    wall time] (start-up, data loading, training, evaluation, pruning, between levels, records):
    every time exit 75, then ``resume=true`` finishes with the uninterrupted run's tickets,
    per-level logs, summary metrics and trajectory."""
    ref, wall, _ = imp_reference
    moments = sorted(random.Random(20261129).uniform(0.5, wall) for _ in range(10))
    for i, at in enumerate(moments):
        out = tmp_path / f"t{i}"
        p = start(*IMP, f"output_dir={out}")
        sent = signal_at(p, at)
        _, err = p.communicate(timeout=300)
        if sent:
            assert p.returncode == 75, (i, at, p.returncode, err[-3000:])
        else:  # this process was faster than the reference: it had finished
            assert p.returncode == 0, (i, at, err[-3000:])
        r = run(*IMP, f"output_dir={out}", "resume=true")
        assert r.returncode == 0, (i, at, r.stderr[-3000:])
        _same_prune_results(ref, out / "prune" / "imp")


# ------------------------------------------------------- item 9: metrics.jsonl after a resume

def test_a_crash_after_a_checkpoint_does_not_duplicate_metric_lines(tmp_path):
    """KILL at step 11, the last checkpoint at step 8: lines 9-11 were logged and are logged
    again by the resumed run; the log equals the uninterrupted one (wall times aside)."""
    args = [*REWIND, f"output_dir={tmp_path}", "train.save_every=4"]
    assert run(*args, "run_name=straight").returncode == 0
    r = run(*args, "run_name=cut", env={"BERT_TICKET_FAULT_AT_STEP": "11:KILL"})
    assert r.returncode == -9
    assert [e["step"] for e in read_jsonl(tmp_path / "rewind" / "cut" / "metrics.jsonl")][-1] == 11
    r = run(*args, "run_name=cut", "resume=true")
    assert r.returncode == 0, r.stderr[-3000:]
    cut, straight = (_log(tmp_path / "rewind" / n / "metrics.jsonl") for n in ("cut", "straight"))
    steps = [e["step"] for e in cut if e["event"] == "train"]
    assert steps == list(range(1, 17))  # each step once
    assert cut == straight


# ------------------------------------------- item 13: a checkpoint is verified before loading

def test_resume_refuses_a_changed_or_foreign_checkpoint(tmp_path):
    args = [*REWIND, f"output_dir={tmp_path}", "train.save_every=4"]
    for name in ("a", "b"):
        r = run(*args, f"run_name={name}", env={"BERT_TICKET_FAULT_AT_STEP": "5:TERM"})
        assert r.returncode == 75, r.stderr[-3000:]
    a, b = (tmp_path / "rewind" / n / "checkpoints" for n in ("a", "b"))
    ckpt = a / "step-00000005"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert "model.safetensors" in manifest["sha256"] and "trainer_state.json" in manifest["sha256"]

    # b's checkpoint dropped into a: another run wrote it
    for old in a.iterdir():
        old.rename(old.with_name("aside-" + old.name))
    (b / "step-00000005").rename(a / "step-00000005")
    r = run(*args, "run_name=a", "resume=true")
    assert r.returncode == 2 and "written by another run" in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1

    # a's own checkpoint, one file changed
    (a / "step-00000005").rename(b / "step-00000005")
    (a / "aside-step-00000005").rename(ckpt)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    r = run(*args, "run_name=a", "resume=true")
    assert r.returncode == 2 and "changed since it was written" in r.stderr and "model.safetensors" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -------------------------------------------------- item 5: what ran is recorded, GPU refused

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_engine_without_a_gpu_is_refused_and_records_say_what_ran(tmp_path):
    for engine in (["engine=gpu"], ["engine=ddp"], ["engine.cpu=false", "engine.mixed_precision=bf16"]):
        r = run(*REWIND, *engine, f"output_dir={tmp_path}")
        assert r.returncode == 2, r.stderr[-3000:]
        assert r.stderr.strip().startswith("error: engine=") and "needs a CUDA device, none found: use engine=cpu" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "rewind").exists()
    r = run(*REWIND, "engine.mixed_precision=bf16", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "rewind" / "r" / "summary.json").read_text())
    assert (s["device"], s["mixed_precision"], s["distributed_type"], s["world_size"]) == ("cpu", "bf16", "no", 1)
    assert "[no, cpu, bf16]" in r.stdout


# ---------------------------------------------------------------- item 15: plain log lines

def test_plain_log_lines_carry_position_pace_and_eta(imp_reference, tmp_path):
    _, _, stdout = imp_reference
    lines = stdout.splitlines()
    train = [ln for ln in lines if ln.startswith("level 2/3  step ")]
    assert train and all(" ex/s  elapsed " in ln and "  eta " in ln for ln in train), train
    assert any(ln.startswith("level 3/3  eval  step 6  accuracy") for ln in lines)
    assert "LOAD REPORT" not in stdout and "\x1b[" not in stdout
