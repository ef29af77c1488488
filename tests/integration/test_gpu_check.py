"""``benchmarks/gpu_check.sh --dry-run``: every step of the one-command GPU check runs at a tiny
size on the CPU and the script prints one JSON object with every figure (so it keeps working
on machines without a GPU, where CI runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

STEPS = {"tests_gpu", "pretrain", "finetune", "compact", "two_four", "deepspeed_zero2_bf16", "fp16_loss_scale"}


def test_gpu_check_dry_run_prints_one_json_with_every_step():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout[-2000:] + p.stderr[-2000:]  # ONE JSON object, nothing else on stdout
    result = json.loads(lines[0])
    assert p.returncode == 0 and result["ok"] is True, json.dumps(result)[-3000:]
    steps = result["steps"]
    assert set(steps) == STEPS and all(s["status"] == "ok" for s in steps.values())
    assert result["dry_run"] is True and result["device"]["name"] == "cpu"
    assert steps["pretrain"]["sanity_loss"]["abs_diff"] < 1e-5 and steps["pretrain"]["speedup"] > 0
    assert steps["finetune"]["ours_samples_per_s"] > 0 and steps["compact"]["params_ratio"] < 1
    assert not steps["two_four"]["semi_structured"]["ok"] and "CUDA" in steps["two_four"]["semi_structured"]["reason"]
    ds = steps["deepspeed_zero2_bf16"]
    assert ds["distributed_type"] == "deepspeed" and ds["steps"] == 2
    assert steps["fp16_loss_scale"]["steps"] == 2


def test_gpu_check_without_a_gpu_refuses_the_full_run():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: the full run would start")
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO,
                       env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and json.loads(p.stdout.strip().splitlines()[-1])["error"].startswith("no CUDA device")


def test_peak_table_matches_device_names():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import peak_tflops

    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("NVIDIA L4") == 121.0 and peak_tflops("Unknown GPU") is None
