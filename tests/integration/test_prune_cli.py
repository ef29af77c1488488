"""Lottery tickets through the real CLI on the tiny model: IMP / OMP / random, the rewind
variants, transfer, and the mask invariants on what training writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bert_ticket_cli.methods.magnitude import level_target
from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli, free_port

pytestmark = pytest.mark.integration

BASE = ["experiment=demo", "run_name=imp", "task.synthetic.n_train=640", "train.epochs=1", "train.log_every=100"]
PRUNABLE = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64  # tiny model: 2 layers + pooler


def _tickets(run, levels):
    return [Ticket.load(run / "tickets" / f"level-{k:02d}") for k in range(1, levels + 1)]


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "runs"
    r = cli("prune", "method=imp", *BASE, "prune.levels=3", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, out / "prune" / "imp"


def test_imp_levels_have_exact_sparsity_and_only_shrink(imp_run):
    _, run = imp_run
    tickets = _tickets(run, 3)
    prev = None
    for k, t in enumerate(tickets, start=1):
        assert t.total() == PRUNABLE
        assert t.total() - t.kept() == level_target(k, rate=0.1, schedule="linear", total=PRUNABLE)  # to the element
        assert t.meta["method"] == "imp" and t.meta["level"] == k and t.meta["source_task"] == "synthetic"
        if prev is not None:
            assert t.is_subset_of(prev) and not prev.is_subset_of(t)
        prev = t
    summary = json.loads((run / "summary.json").read_text())
    assert [row["level"] for row in summary["trajectory"]] == [0, 1, 2, 3]
    expected = [level_target(k, rate=0.1, schedule="linear", total=PRUNABLE) / PRUNABLE for k in range(4)]
    assert [row["sparsity"] for row in summary["trajectory"]] == pytest.approx(expected, abs=1e-12)
    for k in range(4):
        level = json.loads((run / "levels" / f"level-{k:02d}" / "summary.json").read_text())
        assert level["level"] == k and "accuracy" in level["metrics"]


def test_the_same_command_again_skips_finished_work(imp_run):
    out, run = imp_run
    before = (run / "summary.json").read_text()
    r = cli("prune", "method=imp", *BASE, "prune.levels=3", f"output_dir={out}")
    assert r.returncode == 0 and "already finished" in r.stdout
    assert (run / "summary.json").read_text() == before


def test_winning_ticket_weights_stay_exactly_zero(imp_run, tmp_path):
    """AdamW with weight decay, gradient accumulation and bf16 autocast: pruned stays 0.0."""
    _, run = imp_run
    ticket_dir = run / "tickets" / "level-03"
    r = cli("rewind", *BASE[:1], "task.synthetic.n_train=640", "train.epochs=1", f"ticket={ticket_dir}",
            "train.micro_batch_size=8", "engine.mixed_precision=bf16", "train.weight_decay=0.1",
            f"output_dir={tmp_path}", "run_name=win")
    assert r.returncode == 0, r.stderr[-2000:]
    weights = load_file(str(tmp_path / "rewind" / "win" / "model" / "model.safetensors"))
    ticket = Ticket.load(ticket_dir)
    changed = 0
    for name, keep in ticket.masks.items():
        w = weights["bert." + name]
        assert torch.count_nonzero(w[~keep]) == 0, name
        changed += int(torch.count_nonzero(w[keep]))
    assert changed > 0.6 * PRUNABLE  # the kept weights did train
    s = json.loads((tmp_path / "rewind" / "win" / "summary.json").read_text())
    assert s["method"] == "imp" and s["sparsity"] == pytest.approx(0.3, abs=1e-4)


def test_random_and_reinit_variants(imp_run, tmp_path):
    _, run = imp_run
    ticket_dir = run / "tickets" / "level-03"
    ticket = Ticket.load(ticket_dir)
    for variant in ("random", "reinit"):
        r = cli("rewind", *BASE[:1], "task.synthetic.n_train=640", "train.epochs=1", f"ticket={ticket_dir}",
                f"ticket.variant={variant}", f"output_dir={tmp_path}", f"run_name={variant}")
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads((tmp_path / "rewind" / variant / "summary.json").read_text())
        assert s["method"] == {"random": "random_pruning", "reinit": "random_reinit"}[variant]
        weights = load_file(str(tmp_path / "rewind" / variant / "model" / "model.safetensors"))
        same_positions = True
        for name, keep in ticket.masks.items():
            zero = weights["bert." + name] == 0
            assert int(zero.sum()) >= int((~keep).sum())  # identical per-matrix counts (a weight may also be 0)
            same_positions &= bool(torch.equal(zero & ~keep, ~keep))
        assert same_positions == (variant == "reinit")


def test_crash_in_a_later_level_then_resume_gives_identical_tickets(imp_run, tmp_path):
    _, reference = imp_run
    args = ["prune", "method=imp", *BASE, "prune.levels=3", f"output_dir={tmp_path}", "train.save_every=7"]
    # in level 1 (a later training); process=True: the fault hook sends SIGKILL to its own pid
    r = cli(*args, env={"BERT_TICKET_FAULT_AT_STEP": "10:KILL:2"}, process=True)
    assert r.returncode == -9
    r = cli(*args, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    for a, b in zip(_tickets(reference, 3), _tickets(tmp_path / "prune" / "imp", 3)):
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


def test_omp_and_random_pruning_hit_each_sparsity(tmp_path):
    for method in ("omp", "random"):
        r = cli("prune", f"method={method}", *BASE[:1], f"run_name={method}", "task.synthetic.n_train=640",
                "train.epochs=1", "prune.sparsities=[0.5,0.8]", f"output_dir={tmp_path}")
        assert r.returncode == 0, r.stderr[-2000:]
        run = tmp_path / "prune" / method
        t1, t2 = _tickets(run, 2)
        assert t1.total() - t1.kept() == round(0.5 * PRUNABLE) and t2.total() - t2.kept() == round(0.8 * PRUNABLE)
        if method == "omp":
            assert t2.is_subset_of(t1)  # one-shot magnitude from the same weights: nested


def test_transfer_matrix(imp_run, tmp_path):
    _, run = imp_run
    tickets = f"transfer.tickets=[{run}/tickets/level-01,{run}/tickets/level-02]"
    r = cli("transfer", "experiment=demo", "run_name=m", "task.synthetic.n_train=640", "train.epochs=1",
            tickets, "transfer.tasks=[synthetic]", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    matrix = json.loads((tmp_path / "transfer" / "m" / "matrix.json").read_text())
    assert set(matrix["main_value"]) == {"imp-level-01", "imp-level-02"}
    pair = json.loads((tmp_path / "transfer" / "m" / "imp-level-02--synthetic" / "summary.json").read_text())
    assert pair["verb"] == "transfer" and pair["sparsity"] == pytest.approx(0.2, abs=1e-4)


@pytest.mark.parametrize("engine", ["cpu", "deepspeed_zero2_bf16"])
def test_pruned_weights_stay_zero_under_two_processes(imp_run, tmp_path, engine):
    """2-process gloo DDP and DeepSpeed ZeRO-2 on CPU, with AdamW + weight decay, gradient
    accumulation and bf16 autocast: the saved model has every pruned weight exactly 0.0."""
    pytest.importorskip("deepspeed") if engine.startswith("deepspeed") else None
    import sys

    from tests.conftest import REPO

    _, run = imp_run
    ticket_dir = run / "tickets" / "level-03"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "bert_ticket_cli"]
    r = cli("rewind", "experiment=demo", "task.synthetic.n_train=640", "train.epochs=1", f"ticket={ticket_dir}",
            f"engine={engine}", "engine.mixed_precision=bf16", "train.micro_batch_size=8", "train.weight_decay=0.1",
            f"output_dir={tmp_path}", "run_name=two", launcher=launcher, process=True,
            env={"OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")})
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "rewind" / "two" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["distributed_type"] == ("multi_cpu" if engine == "cpu" else "deepspeed")
    weights = load_file(str(tmp_path / "rewind" / "two" / "model" / "model.safetensors"))
    ticket = Ticket.load(ticket_dir)
    for name, keep in ticket.masks.items():
        w = weights["bert." + name]
        assert torch.count_nonzero(w[~keep]) == 0, name
        assert torch.count_nonzero(w[keep]) > 0.9 * int(keep.sum())


def test_ticket_for_other_shapes_is_refused_and_writes_nothing(imp_run, tmp_path):
    _, run = imp_run
    r = cli("rewind", "experiment=demo", f"ticket={run}/tickets/level-01", "model.config.hidden_size=32",
            "model.config.num_attention_heads=2", f"output_dir={tmp_path}", "run_name=bad")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "does not fit this model" in lines[0]
    assert not (tmp_path / "rewind" / "bad").exists()


def test_custom_prunable_set(tmp_path):
    r = cli("prune", "method=omp", *BASE[:1], "run_name=attn", "task.synthetic.n_train=640", "train.epochs=1",
            "prune.sparsities=[0.5]", "prune.patterns=[encoder.layer.*.attention.self.*.weight]", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    (t,) = _tickets(tmp_path / "prune" / "attn", 1)
    assert len(t.masks) == 6 and all(".attention.self." in n for n in t.masks)
    assert t.total() - t.kept() == round(0.5 * 6 * 64 * 64)


def test_two_four_tickets_keep_two_of_every_four(tmp_path):
    """prune.pattern=2:4: one ticket per run at sparsity 0.5, exact in every group of 4 input
    weights, recorded in ticket.json; a rewind trains it with the pruned weights at zero."""
    from bert_ticket_cli.sparsity.nm import nm_violations

    out = tmp_path / "runs"
    r = cli("prune", "method=omp", *BASE, "run_name=nm", "prune.pattern=2:4", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prune.pattern=2:4: one ticket" in r.stdout
    tickets = sorted((out / "prune" / "nm" / "tickets").iterdir())
    assert [t.name for t in tickets] == ["level-01"]
    t = Ticket.load(tickets[0])
    assert t.pattern == (2, 4) and nm_violations(t.masks, (2, 4)) == {} and t.kept() * 2 == PRUNABLE
    assert json.loads((tickets[0] / "ticket.json").read_text())["pattern"] == "2:4"
    # the ticket trains (its pattern checked on use); the 2:4 kernels refuse the CPU before writing
    r = cli("rewind", *BASE, f"ticket={tickets[0]}", "train.max_steps=2", "run_name=nm-rw", f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    model = out / "rewind" / "nm-rw" / "model"
    r = cli("eval", "task=synthetic", "task.synthetic.n_train=640", f"eval.checkpoint={model}", "run_name=nm-ev",
            "eval.semi_structured=true", "engine.mixed_precision=bf16", f"output_dir={out}")
    assert r.returncode == 2 and "compute capability >= 8.0" in r.stderr and not (out / "eval" / "nm-ev").exists()
    r = cli("prune", "method=imp", *BASE, "run_name=nm-imp", "prune.pattern=2:4", f"output_dir={out}")
    assert r.returncode == 2 and "add prune.levels=1" in r.stderr and not (out / "prune" / "nm-imp").exists()
