"""Dense fine-tuning and evaluation through the real CLI, on the tiny model and generated task."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import cli, free_port, read_jsonl, train_losses

pytestmark = pytest.mark.integration

# Small enough for seconds, long enough to cross epoch boundaries (20 steps per epoch).
SHORT = ["experiment=demo", "task.synthetic.n_train=640", "train.epochs=3", "train.log_every=1"]
NO_DROPOUT = ["model.config.hidden_dropout_prob=0.0", "+model.config.attention_probs_dropout_prob=0.0"]


def test_finetune_then_eval_learns_the_task(tmp_path):
    out = tmp_path / "runs"
    r = cli("rewind", "experiment=demo", f"output_dir={out}")
    assert r.returncode == 0, r.stderr
    run = out / "rewind" / "demo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["metrics"]["accuracy"] > 0.9
    assert (run / "config.yaml").exists() and (run / "model" / "model.safetensors").exists()
    events = read_jsonl(run / "metrics.jsonl")
    assert any(e["event"] == "eval" for e in events) and any(e["event"] == "train" for e in events)

    r = cli("eval", "task=synthetic", f"eval.checkpoint={run / 'model'}", f"output_dir={out}", "eval.predict_test=true")
    assert r.returncode == 0, r.stderr
    ev = json.loads((out / "eval" / "synthetic-demo" / "summary.json").read_text())
    # The reloaded model scores exactly what the end of training scored.
    assert ev["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["accuracy"], abs=1e-9)
    preds = (out / "eval" / "synthetic-demo" / "predictions" / "SYNTHETIC.tsv").read_text().splitlines()
    assert preds[0] == "index\tprediction" and len(preds) == 1 + 200

    # A finished run is left alone when the same command runs again.
    before = (run / "summary.json").read_text()
    r = cli("rewind", "experiment=demo", f"output_dir={out}")
    assert r.returncode == 0 and "already finished" in r.stdout
    assert (run / "summary.json").read_text() == before

    r = cli("report", f"output_dir={out}", "verb=rewind", "format=json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["run_name"] for row in rows] == ["demo"] and rows[0]["main_value"] > 0.9


@pytest.mark.parametrize("fault", ["KILL", "TERM"])
def test_interrupted_run_resumes_to_identical_results(tmp_path, fault):
    out = tmp_path / "runs"
    # Checkpoints every 11 steps and 20 steps per epoch: both resumes land mid-epoch.
    args = SHORT + [f"output_dir={out}", "train.save_every=11"]
    assert cli("rewind", *args, "run_name=straight").returncode == 0

    at = 35 if fault == "KILL" else 27
    # process=True: the fault hook sends SIGKILL/SIGTERM to its own pid
    r = cli("rewind", *args, "run_name=cut", env={"BERT_TICKET_FAULT_AT_STEP": f"{at}:{fault}"}, process=True)
    if fault == "KILL":
        assert r.returncode == -9  # a crash: only the step-33 checkpoint survives
    else:
        assert r.returncode == 75, r.stderr  # graceful pre-emption: checkpoint at step 27, "requeue me"
        assert "resume with resume=true" in r.stdout
    cut = out / "rewind" / "cut"
    assert not (cut / "summary.json").exists()

    r = cli("rewind", *args, "run_name=cut")  # without resume=true: refused, nothing touched
    assert r.returncode == 2 and "resume=true" in r.stderr

    r = cli("rewind", *args, "run_name=cut", "resume=true")
    assert r.returncode == 0, r.stderr
    assert ("at step 33/60" if fault == "KILL" else "at step 27/60") in r.stdout

    a, b = train_losses(out / "rewind" / "straight"), train_losses(cut)
    assert sorted(a) == sorted(b) == list(range(1, 61))
    assert all(a[s] == b[s] for s in a), "the resumed run must follow the same trajectory exactly"
    sa = json.loads((out / "rewind" / "straight" / "summary.json").read_text())
    sb = json.loads((cut / "summary.json").read_text())
    assert sa["metrics"] == sb["metrics"]


def test_resume_refuses_a_changed_config(tmp_path):
    out = tmp_path / "runs"
    args = SHORT + [f"output_dir={out}", "train.save_every=20", "run_name=x"]
    r = cli("rewind", *args, env={"BERT_TICKET_FAULT_AT_STEP": "25:TERM"}, process=True)  # signals its own pid
    assert r.returncode == 75
    r = cli("rewind", *args, "resume=true", "train.lr=0.5")
    assert r.returncode == 2 and "train.lr" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_two_process_gloo_matches_one_process(tmp_path):
    if shutil.which("torchrun") is None and not (sys.executable and True):
        pytest.skip("torchrun not available")
    out = tmp_path / "runs"
    args = SHORT[:-2] + ["train.epochs=1", "train.log_every=1", f"output_dir={out}", *NO_DROPOUT]
    one = cli("rewind", *args, "run_name=one")
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                "-m", "bert_ticket_cli"]
    two = cli("rewind", *args, "run_name=two", "engine=cpu", launcher=torchrun, env={"OMP_NUM_THREADS": "1"},
              process=True)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es) [multi_cpu, cpu], batch 32 = 16 x 2 x 1" in two.stdout
    a, b = train_losses(out / "rewind" / "one"), train_losses(out / "rewind" / "two")
    assert sorted(a) == sorted(b) and len(a) == 20
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    s2 = json.loads((out / "rewind" / "two" / "summary.json").read_text())
    assert s2["world_size"] == 2


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    out = tmp_path / "runs"
    args = SHORT[:-2] + ["train.epochs=1", "train.log_every=1", f"output_dir={out}", *NO_DROPOUT]
    assert cli("rewind", *args, "run_name=full").returncode == 0
    r = cli("rewind", *args, "run_name=accum", "train.micro_batch_size=8")
    assert r.returncode == 0, r.stderr
    assert "batch 32 = 8 x 1 x 4" in r.stdout
    a, b = train_losses(out / "rewind" / "full"), train_losses(out / "rewind" / "accum")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4


def test_bf16_autocast_on_cpu(tmp_path):
    out = tmp_path / "runs"
    r = cli("rewind", *SHORT, "engine.mixed_precision=bf16", f"output_dir={out}", "run_name=bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "rewind" / "bf16" / "summary.json").read_text())
    assert s["mixed_precision"] == "bf16" and s["steps"] == 60
    losses = train_losses(out / "rewind" / "bf16")
    assert all(v == v and v < 10 for v in losses.values())  # finite, no blow-up
    # Weights are kept in fp32 (autocast only changes the matmul precision).
    from safetensors import safe_open

    with safe_open(str(out / "rewind" / "bf16" / "model" / "model.safetensors"), "pt") as f:
        assert all(str(f.get_slice(k).get_dtype()) in ("F32", "torch.float32") for k in f.keys())


def test_group_by_length_changes_the_batches_and_resumes_exactly(tmp_path):
    """train.group_by_length=true: another order (batches of similar length), still learned, and a
    run pre-empted mid-epoch resumes on the same trajectory."""
    out = tmp_path / "runs"
    args = SHORT + [f"output_dir={out}", "train.save_every=11", "train.group_by_length=true"]
    assert cli("rewind", *args, "run_name=straight").returncode == 0
    r = cli("rewind", *args, "run_name=cut", env={"BERT_TICKET_FAULT_AT_STEP": "27:TERM"}, process=True)
    assert r.returncode == 75, r.stderr[-2000:]
    r = cli("rewind", *args, "run_name=cut", "resume=true")
    assert r.returncode == 0 and "at step 27/60" in r.stdout, r.stderr[-2000:]
    a, b = train_losses(out / "rewind" / "straight"), train_losses(out / "rewind" / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 61)) and all(a[s] == b[s] for s in a)
    assert cli("rewind", *SHORT, f"output_dir={out}", "train.save_every=11", "run_name=plain").returncode == 0
    assert train_losses(out / "rewind" / "plain") != a  # the grouping changed the batches


def test_compiled_model_saves_and_reloads_with_plain_names(tmp_path):
    """engine.compile=true trains through torch.compile (aot_eager here: the same graph capture
    without C++ code generation), and what it saves has the plain parameter names."""
    from safetensors import safe_open

    out = tmp_path / "runs"
    r = cli("rewind", "experiment=demo", "task.synthetic.n_train=320", "train.epochs=1", "train.save_every=5",
            "train.keep_checkpoints=1", "engine.compile=true", "engine.compile_backend=aot_eager",
            f"output_dir={out}", "run_name=c")
    assert r.returncode == 0, r.stderr[-2000:]
    run = out / "rewind" / "c"
    files = [run / "model" / "model.safetensors", *run.glob("checkpoints/*/*.safetensors")]
    assert len(files) >= 2
    for f in files:
        with safe_open(str(f), "pt") as fh:
            keys = list(fh.keys())
        assert keys and not [k for k in keys if "_orig_mod" in k], f
    r = cli("eval", "task=synthetic", "task.synthetic.n_train=320", f"eval.checkpoint={run / 'model'}",
            f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "eval" / "synthetic-c" / "summary.json").read_text())["metrics"]["accuracy"] == \
        pytest.approx(json.loads((run / "summary.json").read_text())["metrics"]["accuracy"], abs=1e-9)
    r = cli("rewind", "experiment=demo", "engine.compile=true", "engine.compile_backend=nope", f"output_dir={out}")
    assert r.returncode == 2 and "engine.compile_backend" in r.stderr
