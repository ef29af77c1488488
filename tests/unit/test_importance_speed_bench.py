"""benchmarks/importance_speed.py runs end to end on the real importance probe, tickets and
compaction (one short round) and ends with its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_quick_single_round_emits_its_json_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(BENCH / "importance_speed.py"), "--quick", "--rounds", "1",
                          "--batches", "1", "--warmup", "0", "--seq-len", "16", "--batch-size", "2"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "importance_speed" and record["quick"] is True
    for key in ("importance_ratio", "compact_step_ratio"):
        assert record[key] > 0
    cfg = record["config"]
    # level 0.5: half of the 48 heads (at least one per layer) and 2 of the 4 FFN layers removed
    assert sum(cfg["heads_kept"]) == 24 and min(cfg["heads_kept"]) >= 1
    assert sorted(cfg["ffn_neurons_kept"]) == [0, 0, 1536, 1536]
    assert cfg["compact_params"] < cfg["dense_params"]
    assert 0.6 < record["importance_flops_ratio"] < 0.7
