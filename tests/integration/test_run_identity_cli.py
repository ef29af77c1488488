"""Run identity through the real CLI (issue 11, items 1, 2, 14): a changed setting is another
folder or a refusal, never the old result; every multi-stage run compares its config; every
summary carries its provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

SHORT = ["experiment=demo", "task.synthetic.n_train=320", "train.log_every=100"]


def _run_folder(stdout: str) -> str:
    """The run folder a fine-tuning run prints (``run <folder>: ...``)."""
    found = re.search(r"^run (\S+): ", stdout, re.M)
    assert found, stdout[-2000:]
    return found.group(1)


def test_a_changed_setting_is_refused_or_another_folder(tmp_path):
    out = tmp_path / "runs"
    # An explicit run_name: the second run is refused, naming the key (the old result is not reported).
    assert cli("rewind", *SHORT, "run_name=same", "train.max_steps=20", f"output_dir={out}").returncode == 0
    before = (out / "rewind" / "same" / "summary.json").read_text()
    r = cli("rewind", *SHORT, "run_name=same", "train.max_steps=21", f"output_dir={out}")
    assert r.returncode == 2 and "already finished" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "train.max_steps (20 -> 21)" in lines[0]
    assert (out / "rewind" / "same" / "summary.json").read_text() == before

    # The default name: two settings, two folders <task>-<model>-s<seed>-<hash>.
    a = cli("rewind", *SHORT, "run_name=null", "train.max_steps=20", f"output_dir={out}")
    b = cli("rewind", *SHORT, "run_name=null", "train.max_steps=21", f"output_dir={out}")
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    fa, fb = _run_folder(a.stdout), _run_folder(b.stdout)
    assert fa != fb and re.search(r"/synthetic-tiny-s42-[0-9a-f]{8}$", fa) and re.search(r"-[0-9a-f]{8}$", fb)
    sa = json.loads((Path(fa) / "summary.json").read_text())
    assert sa["steps"] == 20
    # The same command again finds its own finished run.
    again = cli("rewind", *SHORT, "run_name=null", "train.max_steps=20", f"output_dir={out}")
    assert again.returncode == 0 and "already finished" in again.stdout and fa in again.stdout

    # Provenance (item 14): versions, command line as given, data fingerprint.
    prov = sa["provenance"]
    assert prov["tool_version"] and prov["versions"]["torch"] and prov["versions"]["transformers"]
    assert prov["command"]["verb"] == "rewind" and "train.max_steps=20" in prov["command"]["overrides"]
    assert prov["gpu"] is None or isinstance(prov["gpu"], str)
    assert isinstance(prov["data_fingerprint"], dict) and prov["data_fingerprint"]["train"]


def test_imp_resumed_with_another_lr_is_refused(tmp_path):
    out = tmp_path / "runs"
    args = ["prune", "method=imp", *SHORT, "run_name=imp", "prune.levels=2", "train.epochs=1",
            "train.save_every=3", f"output_dir={out}"]
    # Level 0 finishes; the second training (level 1) is stopped at its step 4 (a checkpoint).
    r = cli(*args, "train.lr=1e-3", env={"BERT_TICKET_FAULT_AT_STEP": "4:TERM:2"}, process=True)  # signals its pid
    assert r.returncode == 75, r.stderr[-2000:]
    run = out / "prune" / "imp"
    assert (run / "levels" / "level-00" / "summary.json").exists()
    assert list((run / "levels" / "level-01" / "checkpoints").iterdir())
    config_before = (run / "config.yaml").read_text()

    r = cli(*args, "train.lr=2e-3", "resume=true")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "train.lr (0.001 -> 0.002)" in r.stderr
    assert (run / "config.yaml").read_text() == config_before
    assert not (run / "levels" / "level-01" / "summary.json").exists()

    r = cli(*args, "train.lr=1e-3", "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["levels"] == 2
