"""The super-tickets view of ``report``: means over seeds, the super ticket, beats-full,
experiments never pooled, the phase-transition figure, and the runs / tickets views around it.

Records are written as ``summary.json`` files in the run-folder layout of ``prune
method=super_tickets`` (``prune/<run>/levels/<kind>-<level>/``) and read back through the index.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bert_ticket_cli.artifacts import plots, super_tickets_view
from bert_ticket_cli.artifacts.index import build_index, records
from bert_ticket_cli.commands import report
from bert_ticket_cli.config.schema import ReportConfig
from tests.conftest import cli

PNG = b"\x89PNG\r\n\x1a\n"
HEADS, FFN = 24, 2  # a tiny model: 2 layers x 12 heads, whole FFN layers as units


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _config(task: str, seed: int, lr: float, levels: list[float], ffn_unit: str = "layer") -> dict:
    return {"verb": "prune", "seed": seed, "run_name": None, "output_dir": "runs",
            "model": {"name": "tiny", "name_or_path": None},
            "task": {"name": task, "max_seq_length": 128},
            "train": {"lr": lr, "batch_size": 32, "epochs": 6, "warmup_ratio": 0.1, "log_every": 50},
            "method": {"name": "super_tickets", "levels": levels, "ffn_unit": ffn_unit, "random_seed": seed,
                       "normalize_heads": True, "kinds": ["winning", "random", "losing"][:1 + seed % 3]}}


def _run(root: Path, name: str, *, task: str = "mrpc", seed: int, values: dict, lr: float = 5e-5,
         ffn_unit: str = "layer", metric: str = "accuracy") -> Path:
    """One ``prune method=super_tickets`` run: ``values`` maps (kind, level) -> main value."""
    rd = root / "prune" / name
    levels = sorted({lv for k, lv in values if k != "full"})
    cfg = _config(task, seed, lr, levels, ffn_unit)
    rows = []
    for (kind, level), value in values.items():
        sub = "dense" if kind == "full" else f"{kind}-{level:.2f}"
        srd = rd / "levels" / sub
        heads_kept = HEADS - round(level * HEADS)
        ffn_kept = FFN - round(level * FFN)
        enc = 1000 * heads_kept + 4000 * ffn_kept
        rec = {"verb": "prune", "task": task, "model": "tiny", "seed": seed, "method": "super_tickets",
               "main_metric": metric, "main_value": value, "metrics": {metric: value, "loss": 1.0 - value},
               "steps": 100, "train_time_s": 10.0 * (1 - level) + seed, "config": cfg, "run_dir": str(srd),
               "role": "super_ticket", "run_name": f"{name}/{sub}", "kind": kind, "level": level,
               "head_fraction": level, "ffn_fraction": level, "ffn_unit": ffn_unit,
               "heads_kept": heads_kept, "heads_total": HEADS, "ffn_kept": ffn_kept, "ffn_total": FFN,
               "params": enc + 5000, "dense_params": 1000 * HEADS + 4000 * FFN + 5000, "encoder_params": enc,
               "dense_encoder_params": 1000 * HEADS + 4000 * FFN,
               "kept_fraction": enc / (1000 * HEADS + 4000 * FFN),
               "kept_fraction_total": (enc + 5000) / (1000 * HEADS + 4000 * FFN + 5000),
               "ticket": None if kind == "full" else str(rd / "tickets" / sub), "prune_run": str(rd)}
        _write(srd / "summary.json", rec)
        rows.append({k: rec[k] for k in ("kind", "level", "main_value", "metrics", "kept_fraction",
                                         "kept_fraction_total", "params", "encoder_params", "train_time_s",
                                         "run_name")})
    winning = {lv: v for (k, lv), v in values.items() if k == "winning"}
    best = max(winning, key=winning.get) if winning else None
    _write(rd / "summary.json", {  # the run's own record: must not count a second time
        "verb": "prune", "task": task, "model": "tiny", "seed": seed, "method": "super_tickets",
        "main_metric": metric, "main_value": winning.get(best), "run_dir": str(rd), "run_name": name,
        "role": "super_tickets", "config": cfg, "rows": rows,
        "super_ticket": None if best is None else {"level": best, "main_value": winning[best]},
        "full_main_value": values.get(("full", 0.0))})
    (rd / "config.yaml").write_text("verb: prune\n")
    return rd


# Three seeds of MRPC: full 0.80 / 0.82 / 0.84; winning-0.20 best on average (0.83, 0.85, 0.87).
SEEDS = {
    1: {("full", 0.0): 0.80, ("winning", 0.1): 0.81, ("winning", 0.2): 0.83, ("winning", 0.3): 0.79,
        ("random", 0.1): 0.78, ("random", 0.2): 0.74, ("random", 0.3): 0.70,
        ("losing", 0.1): 0.70, ("losing", 0.2): 0.65, ("losing", 0.3): 0.60},
    2: {("full", 0.0): 0.82, ("winning", 0.1): 0.82, ("winning", 0.2): 0.85, ("winning", 0.3): 0.80,
        ("random", 0.1): 0.79, ("random", 0.2): 0.75, ("random", 0.3): 0.72,
        ("losing", 0.1): 0.71, ("losing", 0.2): 0.66, ("losing", 0.3): 0.61},
    3: {("full", 0.0): 0.84, ("winning", 0.1): 0.83, ("winning", 0.2): 0.87, ("winning", 0.3): 0.90,
        ("random", 0.1): 0.80, ("random", 0.2): 0.76, ("random", 0.3): 0.71,
        ("losing", 0.1): 0.72, ("losing", 0.2): 0.67, ("losing", 0.3): 0.62},
}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, values in SEEDS.items():
        _run(root, f"mrpc-st-s{seed}", seed=seed, values=values)
    return root


def _rows(root: Path) -> list[dict]:
    return records(build_index(root))


def _json(capsys, **kw) -> list[dict]:
    capsys.readouterr()
    assert report.run(ReportConfig(format="json", **kw)) == 0
    return json.loads(capsys.readouterr().out)


def test_means_stds_and_counts_exact(runs):
    (exp,) = super_tickets_view.build(_rows(runs))
    assert exp.task == "mrpc" and exp.model == "tiny" and exp.metric == "accuracy"
    rows = {(r["kind"], r["level"]): r for r in super_tickets_view.table_rows(exp)}
    assert len(rows) == 10  # the full model + 3 kinds x 3 levels: the run-level records not counted
    for (kind, level), r in rows.items():
        xs = [SEEDS[s][(kind, level)] for s in SEEDS]
        assert r["n"] == 3
        assert r["mean"] == pytest.approx(statistics.fmean(xs), abs=1e-12)
        assert r["std"] == pytest.approx(statistics.stdev(xs), abs=1e-12)
        assert r["train_time_s"] == pytest.approx(10.0 * (1 - level) + 2.0)
    full = rows[("full", 0.0)]
    assert full["kept_fraction"] == 1.0 and full["kept_fraction_total"] == 1.0 and full["delta_full"] is None
    w2 = rows[("winning", 0.2)]
    assert w2["heads_kept"] == HEADS - 5 and w2["heads_total"] == HEADS and w2["ffn_kept"] == 2
    assert w2["kept_fraction"] == pytest.approx((19000 + 8000) / 32000)
    assert w2["kept_fraction_total"] == pytest.approx((19000 + 8000 + 5000) / 37000)
    assert w2["delta_full"] == pytest.approx(0.85 - 0.82)
    assert [k for k, _ in rows] == ["full"] + ["winning"] * 3 + ["random"] * 3 + ["losing"] * 3


def test_super_ticket_is_the_best_winning_mean_and_beats_full(runs):
    (exp,) = super_tickets_view.build(_rows(runs))
    level, cell = exp.super_ticket()
    # winning-0.30 has the best single seed (0.90) but not the best mean (0.83 < 0.85)
    assert level == 0.2 and cell.mean == pytest.approx(0.85)
    assert exp.beats_full() is True
    marked = [r for r in super_tickets_view.table_rows(exp) if r["super_ticket"]]
    assert [(r["kind"], r["level"], r["beats_full"]) for r in marked] == [("winning", 0.2, True)]
    assert all(r["beats_full"] is None for r in super_tickets_view.table_rows(exp) if not r["super_ticket"])
    line = super_tickets_view.verdict(exp)
    assert "winning level 0.20" in line and "beats full" in line and "0.8500 +- 0.0200 (n=3)" in line


def test_beats_full_needs_a_strictly_higher_mean(tmp_path):
    root = tmp_path / "runs"
    for seed, (full, w1, w2) in {1: (0.80, 0.79, 0.70), 2: (0.84, 0.81, 0.72)}.items():
        _run(root, f"s{seed}", seed=seed, values={("full", 0.0): full, ("winning", 0.1): w1, ("winning", 0.2): w2})
    (exp,) = super_tickets_view.build(_rows(root))
    assert exp.super_ticket()[0] == 0.1 and exp.beats_full() is False
    assert "does not beat full" in super_tickets_view.verdict(exp)
    cells = [super_tickets_view.display_row(r) for r in super_tickets_view.table_rows(exp)]
    assert [c[-1] for c in cells] == ["", "* does not beat full", ""]
    # equal means: not "beats"; a tie between two levels goes to the lower level (as the run's summary)
    root2 = tmp_path / "runs2"
    _run(root2, "s1", seed=1, values={("full", 0.0): 0.80, ("winning", 0.1): 0.70, ("winning", 0.2): 0.80,
                                      ("winning", 0.3): 0.80})
    (exp,) = super_tickets_view.build(_rows(root2))
    assert exp.super_ticket()[0] == 0.2 and exp.beats_full() is False
    assert "fewer than 2 seeds" in super_tickets_view.verdict(exp)
    # a loss is lower-is-better: the best level is the lowest loss, and beating full means a lower loss
    (exp,) = super_tickets_view.build(_rows(tmp_path / "runs"), metric="loss")
    assert exp.super_ticket()[0] == 0.1 and exp.beats_full() is False
    assert exp.full.mean == pytest.approx(1 - 0.82)


def test_experiments_are_never_pooled(runs):
    # another lr (training setting), another ffn_unit (super-tickets setting), another task
    _run(runs, "mrpc-lr-s1", seed=1, lr=1e-4, values={("full", 0.0): 0.10, ("winning", 0.1): 0.10})
    _run(runs, "mrpc-neuron-s1", seed=1, ffn_unit="neuron", values={("full", 0.0): 0.20, ("winning", 0.1): 0.30})
    _run(runs, "rte-st-s1", task="rte", seed=1, values={("full", 0.0): 0.60, ("winning", 0.1): 0.65})
    exps = super_tickets_view.build(_rows(runs))
    assert len(exps) == 4 and len({e.experiment for e in exps}) == 4
    mrpc = {e.label: e for e in exps if e.task == "mrpc"}
    assert set(mrpc) == {"method.ffn_unit=layer, train.lr=5e-05", "method.ffn_unit=layer, train.lr=0.0001",
                         "method.ffn_unit=neuron, train.lr=5e-05"}
    main = mrpc["method.ffn_unit=layer, train.lr=5e-05"]
    assert main.full.n == 3 and main.full.mean == pytest.approx(0.82)  # the 0.10 / 0.20 runs not mixed in
    assert mrpc["method.ffn_unit=neuron, train.lr=5e-05"].full.mean == pytest.approx(0.20)
    (rte,) = [e for e in exps if e.task == "rte"]
    assert rte.label == "" and rte.beats_full() is True
    # the seed (top-level and method.random_seed), the level grid and the kinds trained are not part of the key
    assert not any(k.endswith("seed") or k in ("method.levels", "method.kinds") for k in main.settings)
    assert "method.normalize_heads" in main.settings


def test_report_json_csv_table(runs, capsys):
    flat = _json(capsys, output_dir=str(runs), view="super_tickets")
    assert len(flat) == 10 and list(flat[0]) == super_tickets_view.FIELDS
    assert [r["level"] for r in flat if r["super_ticket"]] == [0.2]
    # metric= picks another metric of the runs
    loss = _json(capsys, output_dir=str(runs), view="super_tickets", metric="loss")
    assert loss[0]["kind"] == "full" and loss[0]["mean"] == pytest.approx(1 - 0.82) and loss[0]["metric"] == "loss"
    assert report.run(ReportConfig(output_dir=str(runs), view="super_tickets", format="csv")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(",") == super_tickets_view.FIELDS and len(lines) == 11
    assert report.run(ReportConfig(output_dir=str(runs), view="super_tickets")) == 0
    out = capsys.readouterr().out
    assert "* beats full" in out and "0.8500 +- 0.0200" in out and "super ticket = winning level 0.20" in out
    # filters work on the sub-runs (seed=1 alone: one seed, no std)
    one = _json(capsys, output_dir=str(runs), view="super_tickets", where=["seed=1"])
    assert all(r["n"] == 1 and r["std"] is None for r in one)


def test_runs_and_tickets_views_around_it(runs, capsys):
    rows = _json(capsys, output_dir=str(runs))
    names = {r["run_name"] for r in rows}
    assert {"mrpc-st-s1", "mrpc-st-s1/dense", "mrpc-st-s1/winning-0.20", "mrpc-st-s3/losing-0.30"} <= names
    assert len(rows) == 3 * 11  # 10 sub-runs and the run-level record per seed
    # the tickets view does not count super tickets (neither the sub-runs nor the run records)
    assert _json(capsys, output_dir=str(runs), view="tickets") == []
    # a sub-run record written without the "<run>/" prefix still shows it in the runs view
    name = super_tickets_view.sub_run_name({"role": "super_ticket", "run_name": "winning-0.20",
                                           "run_dir": str(runs / "prune" / "x" / "levels" / "winning-0.20")})
    assert name == "x/winning-0.20"


def test_phase_transition_png(runs, tmp_path):
    (exp,) = super_tickets_view.build(_rows(runs))
    png = plots.phase_transition(exp, tmp_path / "figs" / "mrpc.png")
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    one = tmp_path / "one"
    _run(one, "s1", seed=1, values={("full", 0.0): 0.8, ("winning", 0.1): 0.7})
    (exp,) = super_tickets_view.build(_rows(one))
    assert not exp.plottable()
    with pytest.raises(ValueError, match=">= 2 levels"):
        plots.phase_transition(exp, tmp_path / "one.png")
    assert not (tmp_path / "one.png").exists()


def test_cli_report_super_tickets_plot(runs, tmp_path):
    figs = tmp_path / "figs"
    res = cli("report", f"output_dir={runs}", "view=super_tickets", "plot=true", f"plot_dir={figs}")
    assert res.returncode == 0, res.stderr
    assert "super ticket = winning level 0.20" in res.stdout and "beats full" in res.stdout
    png = figs / "mrpc_super_tickets.png"
    assert f"plot: {png}" in res.stdout and png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    bad = cli("report", f"output_dir={runs}", "view=super_tickets", "metric=f1")
    assert bad.returncode == 2 and "no super-tickets run has metric 'f1'" in bad.stderr
    assert "accuracy, loss" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
