"""GPU checks: skipped without CUDA (CI has none; run them on a GPU box with `pytest tests/gpu`)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_finetune_on_gpu_learns_the_task(tmp_path, precision):
    r = cli("rewind", "experiment=demo", "engine=gpu", f"engine.mixed_precision={precision}",
            f"output_dir={tmp_path}", f"run_name={precision}", process=True)  # a clean CUDA context per run
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "rewind" / precision / "summary.json").read_text())
    assert s["metrics"]["accuracy"] > 0.9


def test_deepspeed_zero2_bf16_single_gpu(tmp_path):
    pytest.importorskip("deepspeed")
    # process=True: DeepSpeed opens a process group and keeps global comm state in the process
    r = cli("rewind", "experiment=demo", "engine=deepspeed_zero2_bf16", f"output_dir={tmp_path}", "run_name=ds",
            process=True)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "rewind" / "ds" / "summary.json").read_text())
    assert s["metrics"]["accuracy"] > 0.9
