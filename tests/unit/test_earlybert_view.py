"""The EarlyBERT view of ``report``: rows, baselines, time saving, mask-distance heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert_ticket_cli.artifacts import earlybert_view, plots
from bert_ticket_cli.commands import report
from bert_ticket_cli.config.schema import ReportConfig


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _earlybert_run(root: Path, name: str, *, found_at, dense: bool, seed: int = 1) -> Path:
    rd = root / "prune" / name
    ticket = rd / "tickets" / "earlybird"
    steps = [10, 20, 30, 40]
    dist = [[abs(i - j) / 10 for j in range(4)] for i in range(4)]
    _write(rd / "earlybird.json", {"steps": steps, "distance": dist, "distance_heads": dist,
                                   "distance_neurons": dist, "found_at": found_at, "window": 5, "threshold": 0.1})
    _write(rd / "summary.json", {
        "verb": "prune", "run_name": name, "task": "mrpc", "model": "tiny", "method": "earlybert", "seed": seed,
        "main_metric": "accuracy", "main_value": 0.80, "metrics": {"accuracy": 0.80, "f1": 0.85},
        "run_dir": str(rd), "sparsity": 0.0, "role": "earlybert", "search_time_s": 10.0, "search_steps": 40,
        "early_bird_found": found_at is not None, "early_bird_step": found_at, "compact_time_s": 30.0,
        "compact_steps": 100, "compact_params": 600, "dense_params": 1000,
        "dense_time_s": 80.0 if dense else None, "dense_main_value": 0.82 if dense else None,
        "dense_metrics": {"accuracy": 0.82} if dense else None, "time_saving": 0.5 if dense else None,
        "ticket": str(ticket), "earlybird_file": str(rd / "earlybird.json")})
    for stage in ("search", "compact") + (("dense",) if dense else ()):
        srd = rd / "stages" / stage
        _write(srd / "summary.json", {"verb": "prune", "run_name": stage, "task": "mrpc", "method": "earlybert",
                                      "seed": seed, "main_metric": "accuracy", "main_value": 0.7,
                                      "metrics": {"accuracy": 0.7}, "run_dir": str(srd), "role": "stage",
                                      "stage": stage})
    return ticket


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    t1 = _earlybert_run(root, "mrpc-eb-s1", found_at=30, dense=True)
    t2 = _earlybert_run(root, "mrpc-eb-s2", found_at=None, dense=False, seed=2)
    for seed, value in ((1, 0.70), (2, 0.74)):
        name = f"mrpc-random-eb-s{seed}"
        _write(root / "rewind" / name / "summary.json", {
            "verb": "rewind", "run_name": name, "task": "mrpc", "method": "random_pruning", "seed": seed,
            "main_metric": "accuracy", "main_value": value, "metrics": {"accuracy": value},
            "ticket": str(t1), "ticket_variant": "random", "train_time_s": 20.0, "run_dir": str(root / name)})
    _write(root / "rewind" / "winning" / "summary.json", {  # the same ticket, another variant: not random
        "verb": "rewind", "run_name": "winning", "task": "mrpc", "method": "earlybert", "seed": 1,
        "main_metric": "accuracy", "main_value": 0.1, "ticket": str(t1), "ticket_variant": "winning"})
    _write(root / "rewind" / "dense" / "summary.json", {
        "verb": "rewind", "run_name": "dense", "task": "mrpc", "method": "dense", "seed": 1, "sparsity": 0.0,
        "main_metric": "accuracy", "main_value": 0.83, "metrics": {"accuracy": 0.83}, "ticket": None})
    assert t2 != t1
    return root


def _json(capsys, cfg: ReportConfig):
    capsys.readouterr()
    assert report.run(cfg) == 0
    return json.loads(capsys.readouterr().out)


def test_rows(runs, capsys):
    rows = _json(capsys, ReportConfig(output_dir=str(runs), view="earlybert", format="json"))
    assert [r["run_name"] for r in rows] == ["mrpc-eb-s1", "mrpc-eb-s2"]
    a, b = rows
    assert a["early_bird_found"] and a["early_bird_step"] == 30
    assert a["time_saving"] == pytest.approx(1 - (10 + 30) / 80) and a["time_saving_pct"] == pytest.approx(50.0)
    assert a["random_n"] == 2 and a["random_mean"] == pytest.approx(0.72)
    assert a["earlybert_value"] == 0.80 and a["dense_value"] == 0.82 and a["main_metric"] == "accuracy"
    assert not b["early_bird_found"] and b["early_bird_step"] is None
    assert b["dense_value"] is None and b["time_saving"] is None and b["random_n"] == 0 and b["random_mean"] is None

    # a filter on the EarlyBERT runs keeps their random baselines (looked up in every run)
    (only,) = _json(capsys, ReportConfig(output_dir=str(runs), view="earlybert", format="json",
                                         where=["method=earlybert", "seed=1"]))
    assert only["run_name"] == "mrpc-eb-s1" and only["random_n"] == 2


def test_table_and_csv(runs, capsys):
    assert report.run(ReportConfig(output_dir=str(runs), view="earlybert")) == 0
    out = capsys.readouterr().out
    assert "not found" in out and "50.0%" in out and "0.7200 (n=2)" in out
    assert report.run(ReportConfig(output_dir=str(runs), view="earlybert", format="csv")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(",") == earlybert_view.FIELDS and len(lines) == 3


def test_runs_view_lists_stages(runs, capsys):
    rows = _json(capsys, ReportConfig(output_dir=str(runs), format="json"))
    names = {r["run_name"] for r in rows}
    assert {"mrpc-eb-s1/search", "mrpc-eb-s1/compact", "mrpc-eb-s1/dense", "mrpc-eb-s2/search"} <= names
    assert {"mrpc-eb-s1", "mrpc-eb-s2", "dense"} <= names and "search" not in names


def test_time_saving_falls_back_to_the_record():
    assert earlybert_view.time_saving({"search_time_s": 1.0, "compact_time_s": 1.0, "dense_time_s": 4.0}) == 0.5
    assert earlybert_view.time_saving({"search_time_s": 1.0, "time_saving": 0.3}) == 0.3
    assert earlybert_view.time_saving({}) is None


def test_plots(runs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert report.run(ReportConfig(output_dir=str(runs), view="earlybert", format="json", plot=True,
                                   plot_dir=str(out))) == 0
    for name in ("mrpc-eb-s1", "mrpc-eb-s2"):
        png = out / f"earlybird_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert f"plot: {out / 'earlybird_mrpc-eb-s1.png'}" in capsys.readouterr().out

    (runs / "prune" / "mrpc-eb-s1" / "earlybird.json").write_text("{not json")
    _write(runs / "prune" / "mrpc-eb-s2" / "earlybird.json", {"steps": [1, 2], "distance": [[0.0]]})
    for png in out.iterdir():
        png.unlink()
    assert report.run(ReportConfig(output_dir=str(runs), view="earlybert", format="csv", plot=True,
                                   plot_dir=str(out))) == 0
    skipped = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plot: skipped")]
    assert len(skipped) == 2 and not list(out.iterdir())


def test_heatmap_direct(tmp_path):
    data = {"steps": list(range(0, 300, 10)), "distance": [[abs(i - j) / 30 for j in range(30)] for i in range(30)],
            "found_at": 150, "window": 5, "threshold": 0.1}
    assert plots.earlybird_heatmap(data, tmp_path / "eb.png", "t").stat().st_size > 1000
