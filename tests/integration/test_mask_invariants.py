"""Mask invariants under 2-process gloo DDP on CPU, through the project's ``fit``.

The worker (masked_fit_worker.py) trains a tiny BERT with ~50 % of every prunable matrix
masked, AdamW with weight decay, gradient accumulation and clipping; each rank checks the
gradients and weights at pruned positions after every step.  DeepSpeed is not tested here:
through Accelerate it needs CUDA GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "integration" / "masked_fit_worker.py"


def test_two_process_ddp_keeps_pruned_weights_at_exactly_zero(tmp_path):
    out, pid_dir, log = tmp_path / "result.json", tmp_path / "pids", tmp_path / "torchrun.log"
    steps = 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), "--out", str(out), "--run-dir", str(tmp_path / "run"),
           "--steps", str(steps), "--batch", "8", "--micro-batch", "2", "--pid-dir", str(pid_dir)]
    env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"})
    # Output to a file, not pipes: a stuck worker holding a pipe open cannot block the test.
    # The launcher gets its own process group to kill on timeout; torchrun starts each worker
    # in a session of its own, so those are killed by the ids they wrote.
    with open(log, "w") as out_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for pid_file in pid_dir.glob("rank*.pid"):
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the 2-process run did not finish in 240 s:\n{log.read_text()[-3000:]}")
    assert returncode == 0, log.read_text()[-3000:]
    result = json.loads(out.read_text())

    assert result["world_size"] == 2 and result["distributed_type"] == "multi_cpu"
    ranks = result["ranks"]
    assert [x["rank"] for x in ranks] == [0, 1]
    for x in ranks:
        assert x["wrapper"] == "DistributedDataParallel"  # the enforcer was built before the wrap
        assert x["accumulation"] == 2 and x["steps"] == steps
        assert x["grad_nonzero_per_step"] == [0] * steps  # masked during backward, before the all-reduce
        assert x["weight_nonzero_per_step"] == [0] * steps  # AdamW + weight decay left them at 0
        assert x["nonzero"] == 0 and x["moments_nonzero"] == 0
        assert x["kept_changed_fraction"] > 0.9  # the rest of the model did train
    # DDP kept the replicas identical, bit for bit
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
