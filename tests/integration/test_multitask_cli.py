"""Multi-task learning with shared tickets through the real CLI on the tiny model, on generated
GLUE-format folders (SST-2, RTE, STS-B layouts): dense baseline and tickets-share from one
config difference, eval reload, exact resume, 2 processes = 1, automatic ticket choice, and
bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bert_ticket_cli.config.schema import SyntheticConfig
from bert_ticket_cli.data.synthetic import generate
from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli, free_port

pytestmark = pytest.mark.integration

LAYERS, HEADS, NEURONS = 2, 4, 128  # the tiny model


def _glue(root: Path) -> Path:
    """SST-2, RTE and STS-B folders from the generated task's sentences (learnable labels)."""
    data = generate(SyntheticConfig(n_train=160, n_validation=48, n_test=4), seed=5)
    for split, fname in (("train", "train.tsv"), ("validation", "dev.tsv")):
        s, y = data[split]["sentence"], data[split]["label"]
        n = len(s)
        (root / "SST-2").mkdir(parents=True, exist_ok=True)
        (root / "SST-2" / fname).write_text("sentence\tlabel\n" + "".join(f"{a}\t{b}\n" for a, b in zip(s, y)))
        pairs = [(s[i], s[(i + 1) % n], y[i] == y[(i + 1) % n]) for i in range(n)]
        (root / "RTE").mkdir(exist_ok=True)
        (root / "RTE" / fname).write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
            f"{i}\t{a}\t{b}\t{'entailment' if same else 'not_entailment'}\n" for i, (a, b, same) in enumerate(pairs)))
        (root / "STS-B").mkdir(exist_ok=True)
        (root / "STS-B" / fname).write_text(
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n" + "".join(
                f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{4.5 if same else 0.5}\n"
                for i, (a, b, same) in enumerate(pairs)))
    return root


def _ticket(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    heads = torch.rand(LAYERS, HEADS, generator=g) > 0.5
    heads[:, 0] = True
    layers = torch.tensor([True, False])
    neurons = layers[:, None].expand(LAYERS, NEURONS).clone()
    Ticket({}, heads=heads, neurons=neurons, ffn_layers=layers,
           meta={"method": "super_tickets", "model": "tiny"}).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    glue = _glue(root / "glue")
    tickets = {"sst2": _ticket(root / "t-sst2", 1), "rte": _ticket(root / "t-rte", 2)}
    base = ["task=multi", "multitask.tasks=[sst2,rte,stsb]", f"task.data_dir={glue}", "model.tokenizer=synthetic",
            "train.batch_size=16", "train.epochs=2", "train.log_every=1", "train.lr=1e-3",
            f"output_dir={root / 'runs'}"]
    share = [f"multitask.tickets={{sst2:{tickets['sst2']},rte:{tickets['rte']}}}"]
    for name, extra in (("dense", []), ("share", share)):
        r = cli("rewind", *base, *extra, f"run_name={name}")
        assert r.returncode == 0, r.stderr[-2000:]
    return root, base, share, tickets


def _summary(root: Path, name: str) -> dict:
    return json.loads((root / "runs" / "rewind" / name / "summary.json").read_text())


def _losses(root: Path, name: str) -> dict[int, float]:
    """The logged training losses of run ``name`` under ``root`` (a runs folder's parent or itself)."""
    folder = root / "runs" / "rewind" / name if (root / "runs").is_dir() else root / "rewind" / name
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r.get("event") == "train"}


def test_dense_and_tickets_share_records(setup):
    root, _, _, tickets = setup
    dense, share = _summary(root, "dense"), _summary(root, "share")
    for s in (dense, share):
        assert s["role"] == "multitask" and s["tasks"] == ["sst2", "rte", "stsb"] and s["main_metric"] == "average"
        for key in ("sst2/accuracy", "rte/accuracy", "stsb/pearson", "stsb/spearmanr"):
            assert key in s["metrics"]
        assert s["task_main_metrics"]["stsb"] == s["metrics"]["stsb/pearson"]
        assert s["main_value"] == pytest.approx(
            (s["metrics"]["sst2/accuracy"] + s["metrics"]["rte/accuracy"] + s["metrics"]["stsb/pearson"]) / 3)
        assert s["steps"] == 2 * 3 * (160 // 16)
    assert not dense["tickets_share"] and dense["kept_fraction"] == {"sst2": 1.0, "rte": 1.0, "stsb": 1.0}
    assert share["tickets_share"] and share["kept_fraction"]["stsb"] == 1.0
    assert 0 < share["kept_fraction"]["sst2"] < 1 and share["tickets"]["sst2"] == str(tickets["sst2"].resolve())
    saved = root / "runs" / "rewind" / "share" / "model"
    assert torch.equal(Ticket.load(saved / "tickets" / "sst2").heads, Ticket.load(tickets["sst2"]).heads)
    assert _losses(root, "dense") != _losses(root, "share")  # the tickets changed the training


def test_eval_reloads_every_task_through_its_ticket(setup, tmp_path):
    root, _, _, _ = setup
    r = cli("eval", f"eval.checkpoint={root / 'runs' / 'rewind' / 'share' / 'model'}", f"output_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads(next((tmp_path / "eval").glob("*/summary.json")).read_text())
    trained = _summary(root, "share")
    for key, value in trained["metrics"].items():
        assert again["metrics"][key] == pytest.approx(value, abs=1e-9), key


def test_an_interrupted_run_resumes_to_identical_metrics(setup, tmp_path):
    root, base, share, _ = setup
    args = [*[a for a in base if not a.startswith("output_dir=")], *share, f"output_dir={tmp_path}", "run_name=share",
            "train.save_every=100"]
    r = cli("rewind", *args, env={"BERT_TICKET_FAULT_AT_STEP": "23:TERM"}, process=True)
    assert r.returncode == 75, r.stderr[-2000:]
    r = cli("rewind", *args, "resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads((tmp_path / "rewind" / "share" / "summary.json").read_text())
    assert got["metrics"] == _summary(root, "share")["metrics"]
    assert _losses(tmp_path, "share") == _losses(root, "share")


def test_two_processes_follow_the_one_process_trajectory(setup, tmp_path):
    root, base, share, _ = setup
    args = [*[a for a in base if not a.startswith("output_dir=")], *share, f"output_dir={tmp_path}",
            "model.config.hidden_dropout_prob=0.0", "model.config.attention_probs_dropout_prob=0.0"]
    one = cli("rewind", *args, "run_name=one")
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(free_port()), "-m", "bert_ticket_cli"]
    two = cli("rewind", *args, "run_name=two", "engine=cpu", launcher=torchrun, env={"OMP_NUM_THREADS": "1"},
              process=True)
    assert two.returncode == 0, two.stderr[-2000:]
    la, lb = _losses(tmp_path, "one"), _losses(tmp_path, "two")
    assert sorted(la) == sorted(lb) and max(abs(la[s] - lb[s]) for s in la) < 1e-4
    assert "2 process(es)" in two.stdout


def test_tickets_picked_from_super_ticket_runs(setup, tmp_path):
    from bert_ticket_cli.config.compose import compose, validate
    from bert_ticket_cli.workflows.multitask import pick_super_ticket

    root, _, _, tickets = setup
    runs = tmp_path / "runs"
    for seed, values in ((1, {0.1: 0.80, 0.3: 0.84}), (2, {0.1: 0.82, 0.3: 0.83})):
        for level, value in values.items():
            d = runs / "prune" / f"sst2-s{seed}" / "levels" / f"winning-{level:.2f}"
            d.mkdir(parents=True)
            t = _ticket(runs / "prune" / f"sst2-s{seed}" / "tickets" / f"winning-{level:.2f}", seed)
            (d / "summary.json").write_text(json.dumps({
                "role": "super_ticket", "kind": "winning", "task": "sst2", "level": level, "seed": seed,
                "main_value": value, "ticket": str(t), "config": {"seed": seed, "train": {"lr": 5e-5},
                                                                  # run control: not another experiment
                                                                  "tracking": {"project": f"p{seed}"},
                                                                  "launcher": {"name": "local"} if seed == 2 else None}}))
    cfg = validate(compose("rewind", ["seed=2"]), "rewind")
    # level 0.3: mean 0.835 beats 0.81; this run's seed (2) has one
    assert pick_super_ticket(runs, "sst2", cfg) == runs / "prune" / "sst2-s2" / "tickets" / "winning-0.30"
    assert pick_super_ticket(runs, "rte", cfg) is None
    # runs gathered with symlinks are found (and a link cycle ends)
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for seed in (1, 2):
        (gathered / f"sst2-s{seed}").symlink_to(runs / "prune" / f"sst2-s{seed}")
    (gathered / "loop").symlink_to(gathered)
    assert pick_super_ticket(gathered, "sst2", cfg) == runs / "prune" / "sst2-s2" / "tickets" / "winning-0.30"
    other = runs / "prune" / "sst2-other" / "levels" / "winning-0.10"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({
        "role": "super_ticket", "kind": "winning", "task": "sst2", "level": 0.1, "seed": 1, "main_value": 0.9,
        "ticket": str(tickets["sst2"]), "config": {"seed": 1, "train": {"lr": 1e-4}}}))
    from bert_ticket_cli.errors import UserError

    with pytest.raises(UserError, match="2 super-ticket experiments of sst2"):
        pick_super_ticket(runs, "sst2", cfg)


@pytest.mark.parametrize("extra,needle", [
    (["multitask.tasks=[sst2,nosuchtask]"], "nosuchtask"),
    (["multitask.tasks=[sst2,sst2]"], "twice"),
    (["multitask.tasks=[sst2]"], "two or more"),
    (["multitask.tasks=[sst2,rte]", "multitask.tickets={cola:/x}"], "cola"),
    (["multitask.tasks=[sst2,rte]", "multitask.sampling=random"], "multitask.sampling"),
    (["multitask.tasks=[sst2,rte]", "multitask.tickets={sst2:{bad}}"], "does not fit"),
    (["multitask.tasks=[sst2,rte]", "multitask.tickets={sst2:{flat}}"], "not a structured ticket"),
])
def test_bad_inputs_exit_2_with_one_line(setup, tmp_path, extra, needle):
    root, base, _, _ = setup
    bad = _ticket(tmp_path / "wide", 3)
    t = Ticket.load(bad)
    Ticket({}, heads=torch.ones(LAYERS, HEADS + 2, dtype=torch.bool), neurons=t.neurons,
           meta={"model": "other"}).save(tmp_path / "other-shape")
    Ticket({"encoder.layer.0.attention.self.query.weight": torch.ones(32, 32, dtype=torch.bool)},
           meta={"method": "imp"}).save(tmp_path / "flat")
    args = [a.replace("{bad}", str(tmp_path / "other-shape")).replace("{flat}", str(tmp_path / "flat")) for a in extra]
    kept = [a for a in base if not a.startswith(("multitask.tasks", "output_dir"))]
    r = cli("rewind", *kept, *args, f"output_dir={tmp_path / 'runs'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr[-1000:]
    assert not (tmp_path / "runs" / "rewind").exists() or not any((tmp_path / "runs" / "rewind").rglob("summary.json"))


def test_report_view_multitask_compares_the_arms(setup):
    root, _, _, _ = setup
    r = cli("report", "view=multitask", "format=json", f"output_dir={root / 'runs'}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["arm"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"dense", "tickets-share"} and len({row["experiment"] for row in rows.values()}) == 1
    for arm, name in (("dense", "dense"), ("tickets-share", "share")):
        s = _summary(root, name)
        assert rows[arm]["seeds"] == 1 and rows[arm]["average_std"] is None
        assert rows[arm]["average"] == pytest.approx(s["main_value"])
        for task in ("sst2", "rte", "stsb"):
            assert rows[arm][task] == pytest.approx(s["task_main_metrics"][task])
            assert rows[arm][f"{task}_kept"] == pytest.approx(s["kept_fraction"][task])
    assert rows["tickets-share"]["kept_mean"] < rows["dense"]["kept_mean"] == 1.0
    table = cli("report", "view=multitask", f"output_dir={root / 'runs'}")
    assert table.returncode == 0 and "tickets-share" in table.stdout and "encoder used" in table.stdout


def test_report_view_multitask_as_csv(setup):
    import csv
    import io

    root, _, _, _ = setup
    r = cli("report", "view=multitask", "format=csv", f"output_dir={root / 'runs'}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["arm"] for row in rows] == ["dense", "tickets-share"]
    assert list(rows[0])[:3] == ["arm", "experiment", "seeds"]
    assert float(rows[1]["average"]) == pytest.approx(_summary(root, "share")["main_value"])
