"""benchmarks/compact_speed.py takes the geometry and the slimming fractions from the command
line (a MiniLM-shaped model, milder slimming) and records what it removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_geometry_and_fractions_from_the_command_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "compact_speed.py"), "--layers", "2", "--hidden", "48",
                          "--heads-removed", "3", "--ffn-removed", "0.25", "--rounds", "1", "--steps", "1",
                          "--warmup-steps", "1", "--batch-size", "2", "--seq-len", "8"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads(res.stdout.strip().splitlines()[-1])
    cfg = record["config"]
    assert cfg["layers"] == 2 and cfg["hidden"] == 48 and cfg["intermediate"] == 192
    assert cfg["compact_heads"] == [9, 9] and cfg["heads_removed_per_layer"] == 3
    assert cfg["ffn_neurons_removed"] == round(0.25 * 2 * 192) and sum(cfg["compact_intermediate"]) == 2 * 192 - 96
    assert cfg["compact_params"] < cfg["dense_params"] and record["train_step_ratio"] > 0
    bad = subprocess.run([sys.executable, str(BENCH / "compact_speed.py"), "--heads-removed", "12"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--heads-removed" in bad.stderr
