"""report view=super_tickets on records written by the real workflow (the run-folder contract):
two seeds of a tiny `prune method=super_tickets` make one experiment, the run-level records
are not counted, the runs view names the sub-runs, the tickets view leaves them out."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

BASE = ["experiment=demo", "task.synthetic.n_train=64", "task.synthetic.n_validation=64", "train.epochs=1",
        "train.log_every=100", "method=super_tickets", "method.levels=[0.5]", "method.kinds=[winning]"]


def _json(out, *args):
    r = cli("report", f"output_dir={out}", "format=json", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_report_reads_the_workflow_records(tmp_path):
    out = tmp_path / "runs"
    for seed in (1, 2):
        r = cli("prune", *BASE, f"seed={seed}", f"run_name=st-s{seed}", f"output_dir={out}")
        assert r.returncode == 0, r.stderr[-2000:]
    rows = _json(out, "view=super_tickets")
    assert [(r["kind"], r["level"], r["n"]) for r in rows] == [("full", 0.0, 2), ("winning", 0.5, 2)]
    assert len({r["experiment"] for r in rows}) == 1 and rows[0]["kept_fraction"] == 1.0
    full, win = rows
    # level 0.5 of 8 heads and 2 FFN layers: 4 heads and 1 FFN layer removed
    assert (win["heads_kept"], win["heads_total"], win["ffn_kept"], win["ffn_total"]) == (4, 8, 1, 2)
    assert 0 < win["kept_fraction"] < 1 and 0 < win["kept_fraction_total"] < 1 and win["train_time_s"] > 0
    seeds = {s: json.loads((out / "prune" / f"st-s{s}" / "summary.json").read_text()) for s in (1, 2)}
    assert full["mean"] == pytest.approx(sum(s["full_main_value"] for s in seeds.values()) / 2)
    assert win["super_ticket"] and win["beats_full"] == (win["mean"] > full["mean"])
    names = {r["run_name"] for r in _json(out)}
    assert {"st-s1", "st-s1/dense", "st-s1/winning-0.50", "st-s2/winning-0.50"} <= names
    assert _json(out, "view=tickets") == []
