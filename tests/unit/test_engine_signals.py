"""Engine parts of issue 11: the stop flag survives until honoured, checkpoints carry a manifest
and truncate metrics.jsonl on resume, GPU engines need a GPU, quiet and informative logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.config.schema import EngineConfig, TrainConfig
from bert_ticket_cli.engine import signals
from bert_ticket_cli.engine.setup import plan_batches
from bert_ticket_cli.errors import UserError
from tests.unit.test_enforce import fresh_accelerate_state, tiny_model  # noqa: F401 (fixtures)


@pytest.fixture
def stop_flag():
    """Our handlers and a clean flag for the test; pytest's handlers and flag back afterwards."""
    sigs = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    saved = {s: signal.getsignal(s) for s in sigs}
    signals.clear()
    yield
    signals.clear()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# ------------------------------------------------------------------------------- signals

def test_signals_module_imports_nothing_heavy():
    code = ("import sys; import bert_ticket_cli.engine.signals; "
            "print(sorted(m for m in ('torch', 'typer', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_install_keeps_a_pending_request_and_usr2_is_a_stop_signal(stop_flag):
    signals.install()
    os.kill(os.getpid(), signal.SIGUSR2)  # submitit's signal
    assert signals.requested() == signal.SIGUSR2
    signals.install()  # a later training arms the handlers again: the request survives
    assert signals.requested() == signal.SIGUSR2
    os.kill(os.getpid(), signal.SIGTERM)  # the first request is the one reported
    assert signals.requested() == signal.SIGUSR2
    with pytest.raises(signals.StopRequested, match="stop signal SIGUSR2 before level-01"):
        signals.check("before level-01")


def test_stop_signals_are_configurable(monkeypatch):
    assert signals.stop_signals() == [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    monkeypatch.setenv("BERT_TICKET_STOP_SIGNALS", "sigint, HUP,10")
    assert signals.stop_signals() == [signal.SIGINT, signal.SIGHUP, signal.Signals(10)]
    for bad in ("TERM,NOPE", "KILL"):
        monkeypatch.setenv("BERT_TICKET_STOP_SIGNALS", bad)
        with pytest.raises(ValueError, match="BERT_TICKET_STOP_SIGNALS"):
            signals.stop_signals()


# ------------------------------------------------------------------ budget loop helpers

def _data():
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    dataset = Dataset.from_dict({"input_ids": torch.randint(5, 100, (8, 6), generator=g).tolist(),
                                 "attention_mask": torch.ones(8, 6, dtype=torch.long).tolist(),
                                 "labels": torch.randint(0, 2, (8,), generator=g).tolist()})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}

    return dataset, collate


def _fit(folder, resume=None, max_steps=5, log_every=1, fit="budget"):
    from bert_ticket_cli.engine.budget import Budget, fit_budget
    from bert_ticket_cli.engine.loop import fit as fit_epochs
    from bert_ticket_cli.engine.setup import make_accelerator

    dataset, collate = _data()
    train = TrainConfig(batch_size=4, lr=1e-2, log_every=log_every, keep_checkpoints=5, max_steps=max_steps,
                        save_every=2)
    plan = plan_batches(train, world_size=1)
    common = dict(accelerator=make_accelerator(EngineConfig(cpu=True), train, plan), model=tiny_model(),
                  train_dataset=dataset, collate=collate, train=train, plan=plan, seed=0, run=RunDir(folder),
                  evaluate=None, resume_from=resume)
    if fit == "epochs":
        return fit_epochs(**common)
    return fit_budget(**common, budget=Budget(seconds=3600, clock="steps", max_steps=max_steps, save_every_steps=2),
                      shuffle_chunk=3)


def _lines(folder):
    return [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tokens_per_s")}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fit", ["budget", "epochs"])
@pytest.mark.parametrize("log_every", [1, 3])
def test_resume_truncates_metrics_to_the_checkpoint(tmp_path, stop_flag, fresh_accelerate_state, fit, log_every):
    """A copy of a finished run resumed from its step-2 checkpoint: the lines after step 2 are
    not there twice, and a log interval cut by the checkpoint logs the uninterrupted mean."""
    _fit(tmp_path / "a", log_every=log_every, fit=fit)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _fit(tmp_path / "b", resume=RunDir(tmp_path / "b").checkpoint(2), log_every=log_every, fit=fit)
    assert _lines(tmp_path / "b") == _lines(tmp_path / "a")
    assert [r["step"] for r in _lines(tmp_path / "a")] == ([1, 2, 3, 4, 5] if log_every == 1 else [3, 5])


def test_a_pending_stop_ends_training_before_its_first_step(tmp_path, stop_flag, fresh_accelerate_state):
    signals.install()
    os.kill(os.getpid(), signal.SIGTERM)
    result = _fit(tmp_path / "a", fit="epochs")
    assert result.preempted and result.state.step == 0
    assert not (tmp_path / "a" / "checkpoints").exists()


# ---------------------------------------------------------------------- checkpoint manifest

def test_checkpoints_are_verified_before_loading(tmp_path, stop_flag, fresh_accelerate_state):
    from bert_ticket_cli.engine.core import MANIFEST, verify_checkpoint

    _fit(tmp_path / "a")
    _fit(tmp_path / "other")
    rd = RunDir(tmp_path / "a")
    ckpt = rd.checkpoint(4)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest["run_id"] == (tmp_path / "a" / "run_id").read_text().strip()
    assert {"model.safetensors", "trainer_state.json", "optimizer.bin"} <= set(manifest["sha256"])
    verify_checkpoint(rd, ckpt)  # its own: fine

    with pytest.raises(UserError, match="written by another run"):
        verify_checkpoint(rd, RunDir(tmp_path / "other").checkpoint(4))
    (ckpt / "extra.pkl").write_bytes(b"\x80\x04N.")  # an added file DeepSpeed might unpickle
    with pytest.raises(UserError, match=r"changed since it was written \(extra.pkl"):
        verify_checkpoint(rd, ckpt)
    (ckpt / "extra.pkl").unlink()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "step": 3}))
    with pytest.raises(UserError, match=r"changed since it was written \(trainer_state.json"):
        verify_checkpoint(rd, ckpt)
    (ckpt / MANIFEST).unlink()
    with pytest.raises(UserError, match="has no manifest.json"):
        verify_checkpoint(rd, ckpt)
    with pytest.raises(UserError, match="written by another run"):  # the resume path refuses it before loading
        _fit(tmp_path / "a", resume=RunDir(tmp_path / "other").checkpoint(2))


# ---------------------------------------------------------------------- engines and records

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_engines_need_a_gpu_cpu_valid_engines_record_what_ran(fresh_accelerate_state):
    from bert_ticket_cli.engine.session import Session
    from bert_ticket_cli.engine.setup import make_accelerator

    train = TrainConfig(batch_size=4)
    plan = plan_batches(train, world_size=1)
    for engine in (EngineConfig(name="gpu", mixed_precision="bf16"), EngineConfig(name="ddp", mixed_precision="no"),
                   EngineConfig(name="mine", mixed_precision="bf16")):
        with pytest.raises(UserError, match=f"^engine={engine.name}.* needs a CUDA device, none found: use engine=cpu$"):
            make_accelerator(engine, train, plan)
    session = Session(make_accelerator(EngineConfig(name="cpu", cpu=True, mixed_precision="bf16"), train, plan), plan)
    assert session.facts() == {"device": "cpu", "mixed_precision": "bf16", "distributed_type": "no", "world_size": 1}
    assert "[no, cpu, bf16]" in session.describe()


# ---------------------------------------------------------------------------- log output

def test_transformers_load_report_is_not_printed_unless_something_is_wrong(caplog):
    import bert_ticket_cli.model.build  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers.modeling_utils")
    head = "\x1b[1mBertForSequenceClassification LOAD REPORT\x1b[0m from: prajjwal1/bert-tiny\n" \
           "Key | Status | \n----+----\n"
    with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"):
        logger.warning(head + "classifier.{weight, bias} | \x1b[31mMISSING\x1b[0m | \n"
                              "cls.predictions.bias | UNEXPECTED | \n\nNotes: ...")
        assert caplog.records == []
        logger.warning(head + "bert.encoder.layer.{0, 1}.output.dense.weight | MISSING | \n")
        logger.warning("an unrelated warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["loading prajjwal1/bert-tiny: missing 1 (bert.encoder.layer.{0, 1}.output.dense.weight)",
                        "an unrelated warning"]


def test_evaluation_progress_lines(capsys):
    from bert_ticket_cli.engine.evaluate import EvalProgress

    p = EvalProgress("validation_matched", 3, enabled=True, every_s=0.0)
    for done in (1, 2, 3):
        p.update(done)
    p.close()
    assert capsys.readouterr().out.splitlines() == ["eval validation_matched 1/3 batches",
                                                    "eval validation_matched 2/3 batches"]
