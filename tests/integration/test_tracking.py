"""Experiment trackers (issue 14): ``tracking.log_with=...`` through Accelerate's trackers.

TensorBoard's event files are read back with its own EventAccumulator and compared with
``metrics.jsonl`` (the record): every step once, the same values, across a crash and resume;
W&B runs offline and must continue the same run id.  Sub-runs (IMP levels) and ``eval`` log too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import cli, read_jsonl

pytestmark = pytest.mark.integration

TINY = ["experiment=demo", "task.synthetic.n_train=64", "task.synthetic.n_validation=32", "train.batch_size=8",
        "train.log_every=1"]


def _tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (stale steps of a crashed attempt purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run: Path, event: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_jsonl(run / "metrics.jsonl") if r["event"] == event]


def _assert_matches_record(run: Path, tb: dict[str, list[tuple[int, float]]]) -> None:
    for event, key in (("train", "loss"), ("train", "lr"), ("eval", "accuracy")):
        want = _expected(run, event, key)
        got = tb.get(f"{event}/{key}", [])
        assert want or event == "eval", f"{run} logged no {event} lines"
        assert [s for s, _ in got] == [s for s, _ in want], f"{event}/{key} steps"
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-9)


@pytest.fixture
def tensorboard():
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("tensorboard is not installed (make install adds it)")


def test_tensorboard_continues_across_a_crash_and_resume_and_eval_logs(tmp_path, tensorboard):
    out = tmp_path / "runs"
    args = TINY + ["train.max_steps=8", "train.save_every=4", "train.eval_every=4", f"output_dir={out}",
                   "run_name=cut", "tracking.log_with=tensorboard"]
    # A crash after step 6: steps 5 and 6 reached TensorBoard, the checkpoint is step 4's.
    r = cli("rewind", *args, env={"BERT_TICKET_FAULT_AT_STEP": "6:KILL"}, process=True)
    assert r.returncode == -9
    run = out / "rewind" / "cut"
    first = json.loads((run / "tracking" / "tracker.json").read_text())
    assert [s for s, _ in _tb_scalars(run / "tracking" / "bert-ticket")["train/loss"]] == [1, 2, 3, 4, 5, 6]

    wandb = importlib.util.find_spec("wandb") is not None
    more = ["tracking.log_with=[tensorboard,wandb]"] if wandb else []  # a tracker added on resume: allowed
    r = cli("rewind", *args, *more, "resume=true", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr
    assert "at step 4/8" in r.stdout
    # The same tracker run, and every step once: the crashed attempt's steps 5-6 are purged.
    assert json.loads((run / "tracking" / "tracker.json").read_text())["id"] == first["id"]
    tb = _tb_scalars(run / "tracking" / "bert-ticket")
    assert [s for s, _ in tb["train/loss"]] == list(range(1, 9))
    _assert_matches_record(run, tb)
    if wandb:
        (found,) = (run / "tracking" / "wandb").glob(f"offline-run-*-{first['id']}/run-{first['id']}.wandb")
        data = found.read_bytes()
        assert b"train/loss" in data and b"eval/accuracy" in data and b"train.lr" in data  # hparams: the config

    # eval logs its metrics too (one tracker run at step 0)
    r = cli("eval", "task=synthetic", f"eval.checkpoint={run / 'model'}", f"output_dir={out}", "run_name=ev",
            "tracking.log_with=[tensorboard]")
    assert r.returncode == 0, r.stderr
    ev = out / "eval" / "ev"
    (record,) = read_jsonl(ev / "metrics.jsonl")
    assert _tb_scalars(ev / "tracking" / "bert-ticket")["eval/accuracy"] == [(0, pytest.approx(record["accuracy"]))]


def test_every_level_of_a_prune_run_logs_to_tensorboard(tmp_path, tensorboard):
    out = tmp_path / "runs"
    r = cli("prune", "method=imp", *TINY, "train.max_steps=3", "prune.levels=1", "run_name=imp",
            f"output_dir={out}", "tracking.log_with=tensorboard")
    assert r.returncode == 0, r.stderr
    run = out / "prune" / "imp"
    names = set()
    for level in (0, 1):
        sub = run / "levels" / f"level-{level:02d}"
        tb = _tb_scalars(sub / "tracking" / "bert-ticket")
        _assert_matches_record(sub, tb)
        names.add(json.loads((sub / "tracking" / "tracker.json").read_text())["name"])
        hparams = list((sub / "tracking" / "bert-ticket").glob("*/hparams.yml"))
        assert hparams and "train.lr" in hparams[0].read_text()
    assert names == {"imp/levels/level-00", "imp/levels/level-01"}



def test_every_earlybert_stage_logs_to_tensorboard(tmp_path, tensorboard):
    out = tmp_path / "runs"
    r = cli("prune", "method=earlybert", "method.check_every=2", "method.search_steps=4",
            "method.stop_at_early_bird=false", *TINY, "train.max_steps=4", "run_name=eb", f"output_dir={out}",
            "tracking.log_with=tensorboard")
    assert r.returncode == 0, r.stderr
    for stage in ("search", "compact", "dense"):
        sub = out / "prune" / "eb" / "stages" / stage
        _assert_matches_record(sub, _tb_scalars(sub / "tracking" / "bert-ticket"))

def test_bad_trackers_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "runs"
    r = cli("rewind", *TINY, f"output_dir={out}", "tracking.log_with=[tensorboard,nosuch]")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown tracker 'nosuch'" in r.stderr and not out.exists()
    missing = next((n for n in ("aim", "trackio", "mlflow") if importlib.util.find_spec(n) is None), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    r = cli("rewind", *TINY, f"output_dir={out}", f"tracking.log_with={missing}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert f"pip install {missing}" in r.stderr and not out.exists()


def test_tracking_is_not_part_of_run_identity():
    from bert_ticket_cli.config.compose import compose, validate
    from bert_ticket_cli.artifacts.paths import run_name

    plain = validate(compose("rewind", ["experiment=demo", "~run_name"]), "rewind")
    tracked = validate(compose("rewind", ["experiment=demo", "~run_name", "tracking.log_with=tensorboard"]), "rewind")
    assert tracked.tracking.log_with == ["tensorboard"]
    assert run_name(plain) == run_name(tracked)
