"""EarlyBERT through the real CLI on the tiny model: search -> compact -> dense, the structured
ticket, the reloadable compact model, the random structured baseline, the report, and resume
in either stage."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli

pytestmark = pytest.mark.integration

BASE = ["experiment=demo", "task.synthetic.n_train=640", "train.epochs=2", "train.log_every=100"]
EB = ["method=earlybert", "method.check_every=2"]  # prune only: rewind has no EarlyBERT settings
LAYERS, HEADS, NEURONS = 2, 4, 128  # the tiny model


@pytest.fixture(scope="module")
def eb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eb") / "runs"
    r = cli("prune", *EB, *BASE, "run_name=eb", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "early bird" in r.stdout and "eval.checkpoint=" in r.stdout
    return out, out / "prune" / "eb"


def test_structured_ticket_and_early_bird_record(eb_run):
    _, run = eb_run
    t = Ticket.load(run / "tickets" / "earlybird")
    assert t.kind == "structured" and t.meta["method"] == "earlybert"
    assert t.heads.shape == (LAYERS, HEADS) and t.neurons.shape == (LAYERS, NEURONS)
    assert t.heads.sum(1).tolist() == [3, 3]  # round(4 / 3) = 1 head removed in each layer
    assert int((~t.neurons).sum()) == round(0.4 * LAYERS * NEURONS)  # 40% of the neurons, globally
    eb = json.loads((run / "earlybird.json").read_text())
    n = len(eb["steps"])
    assert eb["steps"] == list(range(2, 2 * n + 1, 2))
    d = torch.tensor(eb["distance"])
    assert d.shape == (n, n) and torch.equal(d, d.T) and bool((d.diagonal() == 0).all())
    checks = load_file(str(run / "stages" / "search" / "checks.safetensors"))
    if eb["found_at"] is not None:  # the ticket is the early bird: the check at found_at
        i = eb["steps"].index(eb["found_at"])
        assert torch.equal(checks["heads"][i], t.heads) and torch.equal(checks["neurons"][i], t.neurons)
        assert all(eb["distance"][i][j] <= 0.1 for j in range(i - 4, i))  # the window of 5 agrees


def test_stages_record_times_and_the_compact_model_is_smaller(eb_run):
    _, run = eb_run
    s = json.loads((run / "summary.json").read_text())
    assert s["role"] == "earlybert" and s["method"] == "earlybert"
    for key in ("search_time_s", "compact_time_s", "dense_time_s"):
        assert s[key] > 0
    assert s["time_saving"] == pytest.approx(1 - (s["search_time_s"] + s["compact_time_s"]) / s["dense_time_s"])
    assert s["compact_params"] < s["dense_params"]
    assert s["search_steps"] <= s["compact_steps"] == json.loads((run / "stages/dense/summary.json").read_text())["steps"]
    for stage in ("search", "compact", "dense"):
        assert json.loads((run / "stages" / stage / "summary.json").read_text())["stage"] == stage


def test_compact_model_reloads_for_eval_with_the_same_metrics(eb_run, tmp_path):
    out, run = eb_run
    model_dir = run / "stages" / "compact" / "model"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["bert_ticket_compact"]["heads"] == [3, 3]
    r = cli("eval", "experiment=demo", "task.synthetic.n_train=640", f"eval.checkpoint={model_dir}",
            f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    evaluated = json.loads(next((tmp_path / "eval").glob("*/summary.json")).read_text())
    compact = json.loads((run / "stages" / "compact" / "summary.json").read_text())
    assert evaluated["metrics"]["accuracy"] == pytest.approx(compact["metrics"]["accuracy"], abs=1e-9)

    # the documented Python call
    from transformers import AutoModelForSequenceClassification

    from bert_ticket_cli.model.compact import load_compact

    model = load_compact(AutoModelForSequenceClassification, model_dir)
    assert sum(p.numel() for p in model.parameters()) == compact["params"]


def test_random_structured_ticket_and_report(eb_run):
    out, run = eb_run
    ticket = run / "tickets" / "earlybird"
    r = cli("rewind", *BASE, f"ticket={ticket}", "ticket.variant=random", "ticket.seed=3", "run_name=rand",
            f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    rand = json.loads((out / "rewind" / "rand" / "summary.json").read_text())
    saved = json.loads((out / "rewind" / "rand" / "model" / "config.json").read_text())["bert_ticket_compact"]
    t = Ticket.load(ticket)
    assert saved["heads"] == t.heads.sum(1).tolist()  # the same per-layer counts...
    assert saved["intermediate"] == t.neurons.sum(1).tolist()
    assert rand["ticket_kind"] == "structured" and rand["method"] == "random_pruning"

    r = cli("report", "view=earlybert", "format=json", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert len(rows) == 1 and rows[0]["random_n"] == 1
    assert rows[0]["random_mean"] == pytest.approx(rand["main_value"])
    r = cli("report", "view=earlybert", "plot=true", f"plot_dir={out}/plots", f"output_dir={out}")
    assert r.returncode == 0 and (out / "plots" / "earlybird_eb.png").stat().st_size > 0


RESUME = [*BASE, "method.check_every=2", "method.search_steps=6", "method.stop_at_early_bird=false",
          "method.dense_baseline=false", "model.config.hidden_dropout_prob=0.1"]


def _outcome(run):
    t = Ticket.load(run / "tickets" / "earlybird")
    eb = json.loads((run / "earlybird.json").read_text())
    compact = json.loads((run / "stages" / "compact" / "summary.json").read_text())
    weights = load_file(str(run / "stages" / "compact" / "model" / "model.safetensors"))
    return t.heads, t.neurons, eb["distance"], compact["metrics"], weights


def test_resume_in_either_stage_gives_the_same_result(tmp_path):
    out = tmp_path / "runs"
    r = cli("prune", "method=earlybert", *RESUME, "run_name=ref", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    ref = _outcome(out / "prune" / "ref")
    # step 4 is inside the 6-step search; step 8 inside the compact stage (the search ends at 6)
    for name, at in (("in-search", 4), ("in-compact", 8)):
        r = cli("prune", "method=earlybert", *RESUME, f"run_name={name}", f"output_dir={out}",
                env={"BERT_TICKET_FAULT_AT_STEP": f"{at}:TERM"}, process=True)  # the fault hook signals its own pid
        assert r.returncode == 75, (name, r.stderr[-2000:])
        stage = "search" if at == 4 else "compact"
        assert (out / "prune" / name / "stages" / stage / "checkpoints").is_dir()
        assert not (out / "prune" / name / "summary.json").exists()
        r = cli("prune", "method=earlybert", *RESUME, f"run_name={name}", f"output_dir={out}")
        assert r.returncode == 2 and "resume=true" in r.stderr  # an interrupted stage is not restarted silently
        r = cli("prune", "method=earlybert", *RESUME, f"run_name={name}", "resume=true", f"output_dir={out}")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        got = _outcome(out / "prune" / name)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), name
        assert got[2] == ref[2] and got[3] == ref[3], name
        assert all(torch.equal(got[4][k], ref[4][k]) for k in ref[4]), name


def test_reference_protocol_search_fraction_and_shorter_compact_stage(tmp_path):
    """The reference code's protocol: the ticket from the coefficients at 0.2 of the first epoch
    (method.search_epochs, on the full schedule), the compact model retrained for fewer epochs at
    a higher learning rate (method.compact_epochs / compact_lr); the dense baseline keeps train.*."""
    out = tmp_path / "runs"
    r = cli("prune", "method=earlybert", "method.check_every=100", *BASE, "train.epochs=3", "run_name=ref",
            "method.search_epochs=0.2", "method.compact_epochs=2", "method.compact_lr=2e-3", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "prune" / "ref" / "summary.json").read_text())
    # 640 rows / batch 32 = 20 steps per epoch: the search stops at step 4, compact 40 steps, dense 60
    assert s["search_steps"] == 4 and s["compact_steps"] == 40 and s["dense_steps"] == 60
    assert not s["early_bird_found"]  # no check before step 4: the ticket is drawn there
    assert Ticket.load(out / "prune" / "ref" / "tickets" / "earlybird").meta["search_steps"] == 4
    compact = [json.loads(x) for x in (out / "prune" / "ref" / "stages" / "compact" / "metrics.jsonl").read_text()
               .splitlines()]
    assert max(e["lr"] for e in compact if e.get("event") == "train") <= 2e-3
    r = cli("pretrain", "method=earlybert", "method.compact_epochs=2", f"output_dir={out}")
    assert r.returncode == 2 and "method.compact_epochs is for prune" in r.stderr
    r = cli("prune", "method=earlybert", *BASE, "train.max_steps=10", "method.compact_epochs=2", f"output_dir={out}")
    assert r.returncode == 2 and "drop train.max_steps" in r.stderr
