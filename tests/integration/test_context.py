"""Context carried between verbs, through the real CLI on the tiny model: a prune run's log and
records (per-matrix sparsity, target sparsity, dense level 0, per-level start times), a ticket
that brings its model to ``rewind``, pasteable next-step commands, local models named after
their folder, ``eval`` recording what it evaluated, and ``eval.export=padded``."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch

from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli

pytestmark = pytest.mark.integration

SMALL = ["model.config.hidden_size=32", "model.config.intermediate_size=64", "model.config.num_attention_heads=2"]
FAST = ["task.synthetic.n_train=320", "task.synthetic.n_validation=64", "train.epochs=1", "train.batch_size=32",
        "train.lr=1e-3", "train.log_every=100"]


def _line(stdout: str, prefix: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(prefix))


@pytest.fixture(scope="module")
def omp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctx") / "runs"
    r = cli("prune", "method=omp", "run_name=omp", *SMALL, *FAST, "prune.sparsities=[0.2,0.5,0.8]",
            "prune.target_sparsity=0.5", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, out / "prune" / "omp", r.stdout


def test_omp_stops_at_the_target_and_logs_each_matrix(omp_run):
    _, run, stdout = omp_run
    assert sorted(p.name for p in (run / "tickets").iterdir()) == ["level-01", "level-02"]
    summary = json.loads((run / "summary.json").read_text())
    assert [row["sparsity"] for row in summary["trajectory"]] == pytest.approx([0.0, 0.2, 0.5], abs=1e-4)
    # per-matrix sparsity of each ticket, one line per matrix group
    lines = [line.split() for line in stdout.splitlines()]
    assert any(line[:2] == ["attention.self.query", "L0"] for line in lines)
    assert sum(line[:1] == ["pooler.dense"] for line in lines) == 2  # one line per ticket


def test_levels_record_their_own_start_and_level_0_is_dense(omp_run):
    _, run, _ = omp_run
    levels = [json.loads((run / "levels" / f"level-{k:02d}" / "summary.json").read_text()) for k in range(3)]
    top = json.loads((run / "summary.json").read_text())
    assert levels[0]["method"] == "dense" and levels[0]["prune_method"] == "omp"
    assert levels[1]["method"] == "omp"
    assert top["started"] <= levels[0]["started"]
    for prev, this in zip(levels, levels[1:]):
        assert this["started"] >= prev["finished"]


def test_ticket_records_its_model_and_how_it_was_found(omp_run):
    _, run, _ = omp_run
    meta = json.loads((run / "tickets" / "level-02" / "ticket.json").read_text())["meta"]
    assert meta["source_model"]["name"] == "tiny" and meta["source_model"]["config"]["hidden_size"] == 32
    assert meta["prune"]["scope"] == "global" and meta["prune"]["include_pooler"] is True
    assert meta["prune"]["target_sparsity"] == 0.5 and "rewind" in meta["prune"]
    assert meta["train"]["lr"] == pytest.approx(1e-3) and meta["train"]["epochs"] == 1


def test_rewind_uses_the_tickets_model_unless_told(omp_run, tmp_path):
    _, run, _ = omp_run
    ticket = run / "tickets" / "level-01"
    r = cli("rewind", f"ticket={ticket}", *FAST, "train.max_steps=2", f"output_dir={tmp_path}", "run_name=ctx")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "rewind" / "ctx" / "summary.json").read_text())
    assert s["config"]["model"]["config"]["hidden_size"] == 32
    # told otherwise: the user's model (here one the ticket does not fit) is used and refused
    r = cli("rewind", f"ticket={ticket}", *FAST, "model.config.hidden_size=48", f"output_dir={tmp_path}",
            "run_name=other")
    assert r.returncode == 2 and not (tmp_path / "rewind" / "other").exists()


def test_printed_next_step_command_runs_as_printed(omp_run, monkeypatch, tmp_path):
    from bert_ticket_cli.cli import run_verb

    _, run, stdout = omp_run
    line = _line(stdout, "train a ticket again")
    args = shlex.split(line.split(": ", 1)[1])
    assert args[:2] == ["bert-ticket", "rewind"] and "model.config.hidden_size=32" in args
    assert "task.synthetic.n_train=320" in args
    monkeypatch.chdir(tmp_path)
    assert run_verb(args[1], [*args[2:], "train.max_steps=2"], False, False) == 0


@pytest.fixture(scope="module")
def local_model(omp_run, tmp_path_factory):
    """A fine-tuned tiny model copied to a folder named like a hub model."""
    out, _, _ = omp_run
    r = cli("rewind", *SMALL, *FAST, "train.max_steps=4", f"output_dir={out}", "run_name=dense")
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2"
    shutil.copytree(out / "rewind" / "dense" / "model", folder)
    return folder, r.stdout


def test_local_model_runs_are_named_after_the_folder(local_model, tmp_path):
    folder, _ = local_model
    r = cli("rewind", "model=local", f"model.name_or_path={folder}", *FAST, "train.max_steps=2",
            f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = list((tmp_path / "rewind").iterdir())
    assert run.name.startswith("synthetic-all-MiniLM-L6-v2")
    assert json.loads((run / "summary.json").read_text())["model"] == "all-MiniLM-L6-v2"


def test_eval_records_the_model_it_evaluated(local_model, tmp_path):
    folder, stdout = local_model
    # the command the fine-tune printed, as printed
    args = shlex.split(_line(stdout, "model saved to").split("evaluate again with: ", 1)[1])
    r = cli(*args[1:])
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("eval", *FAST, f"eval.checkpoint={folder}", f"output_dir={tmp_path}", "run_name=ev")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "eval" / "ev" / "summary.json").read_text())
    assert s["model"] == "all-MiniLM-L6-v2" and s["model_source"] == str(folder.resolve())


def test_eval_export_padded_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bert_ticket_cli.model.compact import load_compact

    out = tmp_path / "runs"
    r = cli("prune", "method=earlybert", "experiment=demo", *FAST, "method.check_every=2",
            "method.dense_baseline=false", "run_name=eb", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    compact = out / "prune" / "eb" / "stages" / "compact" / "model"
    r = cli("eval", "experiment=demo", *FAST, f"eval.checkpoint={compact}", "eval.export=padded",
            f"output_dir={out}", "run_name=exp")
    assert r.returncode == 0, r.stderr[-3000:]
    export = out / "eval" / "exp" / "export"
    assert f"exported as a plain full-size BERT: {export}" in r.stdout and "from_pretrained" in r.stdout
    assert json.loads((out / "eval" / "exp" / "summary.json").read_text())["export"] == str(export)
    plain = AutoModelForSequenceClassification.from_pretrained(export).eval()  # no bert_ticket code
    ours = load_compact(AutoModelForSequenceClassification, compact).eval()
    ids = torch.randint(5, plain.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, ours(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    bad = cli("eval", "experiment=demo", f"eval.checkpoint={compact}", "eval.export=onnx", f"output_dir={out}")
    assert bad.returncode == 2 and "eval.export" in bad.stderr
