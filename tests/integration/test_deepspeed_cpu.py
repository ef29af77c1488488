"""DeepSpeed engines on CPU processes (gloo), through the real CLI.

The global batch and the data order do not depend on the number of processes, so a 2-process
DeepSpeed ZeRO-2 run (fp32) must follow the 1-process plain run step for step: any sign of ranks
training alone (each seeing half the batch, unsynchronised) breaks the match.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO, cli, free_port, train_losses

pytestmark = pytest.mark.integration

pytest.importorskip("deepspeed")

# DeepSpeed compiles a CPU comm op on first use (~30 s); the ignored .cache/ keeps it between runs.
DS_ENV = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
TINY = ["experiment=demo", "task.synthetic.n_train=640", "train.log_every=1",
        "model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]
DS = ["engine=deepspeed_zero2_bf16", "engine.mixed_precision=no"]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "bert_ticket_cli"]


def test_two_process_deepspeed_matches_one_process(tmp_path):
    out = tmp_path / "runs"
    args = [*TINY, "train.epochs=1", f"output_dir={out}"]
    one = cli("rewind", *args, "run_name=one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = cli("rewind", *args, *DS, "run_name=ds", launcher=_torchrun(), env=DS_ENV, process=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es) [deepspeed, cpu], batch 32 = 16 x 2 x 1" in two.stdout
    a, b = train_losses(out / "rewind" / "one"), train_losses(out / "rewind" / "ds")
    assert sorted(a) == sorted(b) and len(a) == 20
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    summary = json.loads((out / "rewind" / "ds" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_type"] == "deepspeed"


def test_deepspeed_checkpoint_resume_continues_the_trajectory(tmp_path):
    out = tmp_path / "runs"
    args = [*TINY, "train.epochs=2", "train.save_every=11", f"output_dir={out}"]
    ref = cli("rewind", *args, "run_name=ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    cut = cli("rewind", *args, *DS, "run_name=ds", env={**DS_ENV, "BERT_TICKET_FAULT_AT_STEP": "27:TERM"},
              process=True)  # the fault hook signals its own pid
    assert cut.returncode == 75, cut.stderr[-3000:]
    assert "1 process(es) [deepspeed, cpu]" in cut.stdout
    # process=True: DeepSpeed opens a process group and keeps global comm state in the process
    done = cli("rewind", *args, *DS, "run_name=ds", "resume=true", env=DS_ENV, process=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at step 27/40" in done.stdout + done.stderr
    a, b = train_losses(out / "rewind" / "ref"), train_losses(out / "rewind" / "ds")
    assert sorted(a) == sorted(b) and len(a) == 40
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
