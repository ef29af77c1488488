"""Super tickets through the real CLI on the tiny model: dense -> importance -> nested tickets
-> compacted winning / random / losing trainings, the records, eval and rewind of a ticket,
and resume mid-level and mid-importance-pass to identical tickets and metrics."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from bert_ticket_cli.methods.super_tickets import nested_tickets
from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli

pytestmark = pytest.mark.integration

BASE = ["experiment=demo", "task.synthetic.n_train=320", "train.epochs=1", "train.log_every=100"]
ST = ["method=super_tickets", "method.levels=[0.25,0.5]"]
NAMES = ["dense", "winning-0.25", "random-0.25", "losing-0.25", "winning-0.50", "random-0.50", "losing-0.50"]


@pytest.fixture(scope="module")
def st_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "runs"
    r = cli("prune", *ST, *BASE, "run_name=st", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "super ticket" in r.stdout and "bert-ticket rewind ticket=" in r.stdout
    return out, out / "prune" / "st"


def _metrics(run):
    return {name: json.loads((run / "levels" / name / "summary.json").read_text())["metrics"] for name in NAMES}


def test_importance_and_the_nested_tickets(st_run):
    _, run = st_run
    scores = load_file(str(run / "importance.safetensors"))
    assert scores["heads"].shape == (2, 4) and scores["ffn"].shape == (2,)
    info = json.loads((run / "importance.json").read_text())
    assert info["batches"] == 10 and info["examples"] == 320 and info["mode"] == "eval"
    assert not (run / "importance.partial.safetensors").exists()
    for kind in ("winning", "random", "losing"):
        low, high = (Ticket.load(run / "tickets" / f"{kind}-{lvl}") for lvl in ("0.25", "0.50"))
        # 8 heads: round(0.25 * 8) = 2 and 4 masked; 2 FFN layers: round(0.25 * 10/12 * 2) = 0 and 1 removed
        assert (int((~low.heads).sum()), int((~low.ffn_layers).sum())) == (2, 0)
        assert (int((~high.heads).sum()), int((~high.ffn_layers).sum())) == (4, 1)
        assert high.is_subset_of(low) and (low.heads.sum(1) >= 1).all() and (high.heads.sum(1) >= 1).all()
        assert low.meta["kind"] == kind and low.meta["method"] == "super_tickets"
        # the tickets are the pure function of the saved scores
        want = nested_tickets(scores["heads"], scores["ffn"], levels=[0.25, 0.5], kind=kind, seed=42,
                              intermediate_size=128)
        assert torch.equal(low.heads, want[0][0]) and torch.equal(high.ffn_layers, want[1][2])
    win, lose = (Ticket.load(run / "tickets" / f"{k}-0.50") for k in ("winning", "losing"))
    assert not torch.equal(win.heads, lose.heads)


def test_records_and_the_super_ticket(st_run):
    _, run = st_run
    s = json.loads((run / "summary.json").read_text())
    assert s["role"] == "super_tickets" and s["method"] == "super_tickets"
    assert sorted((r["kind"], r["level"]) for r in s["rows"]) == sorted(
        [("full", 0.0)] + [(k, l) for k in ("winning", "random", "losing") for l in (0.25, 0.5)])
    winning = [r for r in s["rows"] if r["kind"] == "winning"]
    best = max(winning, key=lambda r: r["main_value"])
    assert s["super_ticket"]["level"] == best["level"] and s["full_main_value"] == s["main_value"]
    for name in NAMES:
        rec = json.loads((run / "levels" / name / "summary.json").read_text())
        assert rec["role"] == "super_ticket" and rec["run_name"] == f"st/{name}" and rec["steps"] == 10
        if name == "dense":
            assert rec["kind"] == "full" and rec["kept_fraction"] == 1.0 and rec["params"] == rec["dense_params"]
        else:
            assert 0 < rec["kept_fraction"] < 1 and rec["params"] < rec["dense_params"]
    assert (run / "levels" / "winning-0.50" / "model").is_dir()  # method.save_models=winning
    assert not (run / "levels" / "losing-0.50" / "model").exists()


def test_the_compacted_ticket_reloads_for_eval_and_trains_again_with_rewind(st_run, tmp_path):
    out, run = st_run
    model_dir = run / "levels" / "winning-0.50" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["bert_ticket_compact"]["heads"] == Ticket.load(run / "tickets/winning-0.50").heads.sum(1).tolist()
    assert len(config["bert_ticket_compact"]["ffn_removed"]) == 1
    r = cli("eval", *BASE[:2], f"eval.checkpoint={model_dir}", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    evaluated = json.loads(next((tmp_path / "eval").glob("*/summary.json")).read_text())
    trained = json.loads((run / "levels" / "winning-0.50" / "summary.json").read_text())
    assert evaluated["metrics"]["accuracy"] == pytest.approx(trained["metrics"]["accuracy"], abs=1e-9)

    r = cli("rewind", *BASE, f"ticket={run / 'tickets' / 'winning-0.50'}", "ticket.variant=random",
            f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(next((tmp_path / "rewind").glob("*/summary.json")).read_text())
    assert rec["ticket_kind"] == "structured" and rec["method"] == "random_pruning"


def test_resume_mid_level_gives_identical_tickets_and_metrics(st_run, tmp_path):
    _, ref = st_run
    out = tmp_path / "runs"
    # the 3rd training of the process (random-0.25) is stopped at step 5: checkpoint, exit 75
    r = cli("prune", *ST, *BASE, "run_name=st", f"output_dir={out}", "train.save_every=100",
            env={"BERT_TICKET_FAULT_AT_STEP": "5:TERM:3"}, process=True)
    assert r.returncode == 75, r.stderr[-2000:]
    run = out / "prune" / "st"
    assert (run / "levels" / "winning-0.25" / "summary.json").exists()
    assert not (run / "levels" / "random-0.25" / "summary.json").exists()
    assert cli("prune", *ST, *BASE, "run_name=st", f"output_dir={out}").returncode == 2  # resume=true needed
    r = cli("prune", *ST, *BASE, "run_name=st", f"output_dir={out}", "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _metrics(run) == _metrics(ref)
    for kind in ("winning", "random", "losing"):
        for lvl in ("0.25", "0.50"):
            a, b = Ticket.load(run / "tickets" / f"{kind}-{lvl}"), Ticket.load(ref / "tickets" / f"{kind}-{lvl}")
            assert torch.equal(a.heads, b.heads) and torch.equal(a.neurons, b.neurons)


def test_resume_mid_importance_pass_gives_identical_scores(st_run, tmp_path, monkeypatch):
    from bert_ticket_cli.engine import signals
    from bert_ticket_cli.model.gates import ImportanceProbe

    _, ref = st_run
    out = tmp_path / "runs"
    accumulate = ImportanceProbe.accumulate

    def stop_after_three(self):  # a stop signal arrives during the 3rd batch of the pass
        accumulate(self)
        if self.batches == 3:
            signals._handler(signal.SIGTERM, None)

    monkeypatch.setattr(ImportanceProbe, "accumulate", stop_after_three)
    args = ["prune", *ST, *BASE, "run_name=st", f"output_dir={out}", "method.train_tickets=false"]
    try:
        r = cli(*args)
    finally:
        signals.clear()
    assert r.returncode == 75, r.stderr[-2000:]
    run = out / "prune" / "st"
    assert (run / "importance.partial.safetensors").exists() and not (run / "importance.safetensors").exists()
    monkeypatch.setattr(ImportanceProbe, "accumulate", accumulate)
    r = cli(*args)
    assert r.returncode == 2 and "resume=true" in r.stderr
    r = cli(*args, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "continuing at batch 3" in r.stdout
    got, want = load_file(str(run / "importance.safetensors")), load_file(str(ref / "importance.safetensors"))
    assert torch.equal(got["heads"], want["heads"]) and torch.equal(got["ffn"], want["ffn"])
    assert not (run / "importance.partial.safetensors").exists()
    assert torch.equal(Ticket.load(run / "tickets/winning-0.50").heads, Ticket.load(ref / "tickets/winning-0.50").heads)
    assert not (run / "levels" / "winning-0.25").exists()  # method.train_tickets=false: tickets only


def test_two_process_importance_matches_one_process(tmp_path):
    import sys

    from tests.conftest import free_port

    out = tmp_path / "runs"
    args = ["prune", *ST, *BASE, f"output_dir={out}", "method.train_tickets=false", "method.kinds=[winning]",
            "model.config.hidden_dropout_prob=0.0", "model.config.attention_probs_dropout_prob=0.0"]
    one = cli(*args, "run_name=one")
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "bert_ticket_cli"]
    two = cli(*args, "run_name=two", "engine=cpu", launcher=torchrun, env={"OMP_NUM_THREADS": "1"}, process=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(out / "prune" / "one" / "importance.safetensors"))
    b = load_file(str(out / "prune" / "two" / "importance.safetensors"))
    # the same 10 batches, shared out 5 + 5 and summed: equal up to float summation order
    assert torch.allclose(a["heads"], b["heads"], rtol=1e-3) and torch.allclose(a["ffn"], b["ffn"], rtol=1e-3)
    assert json.loads((out / "prune" / "two" / "importance.json").read_text())["batches"] == 10
    for lvl in ("0.25", "0.50"):
        ta, tb = (Ticket.load(out / "prune" / r / "tickets" / f"winning-{lvl}") for r in ("one", "two"))
        assert torch.equal(ta.heads, tb.heads) and torch.equal(ta.ffn_layers, tb.ffn_layers)
