"""The lottery-ticket view: aggregation over seeds, matching verdicts, figures."""

from __future__ import annotations

import pytest

from bert_ticket_cli.artifacts import plots, tickets_view


def _row(method, sparsity, value, seed, verb="prune", task="mrpc", **kw):
    return {"verb": verb, "method": method, "sparsity": sparsity, "main_value": value, "seed": seed,
            "task": task, "main_metric": "f1", **kw}


ROWS = [
    # full model: level 0 of three IMP runs -> mean 0.85, std 0.01
    _row("imp", 0.0, 0.84, 1), _row("imp", 0.0, 0.85, 2), _row("imp", 0.0, 0.86, 3),
    _row("imp", 0.5, 0.86, 1), _row("imp", 0.5, 0.85, 2), _row("imp", 0.5, 0.87, 3),  # >= full
    _row("imp", 0.7, 0.845, 1), _row("imp", 0.7, 0.84, 2), _row("imp", 0.7, 0.84, 3),  # matching
    _row("imp", 0.9, 0.70, 1), _row("imp", 0.9, 0.71, 2),  # not matching
    _row("random", 0.5, 0.80, 1), _row("random_pruning", 0.5, 0.79, 2, verb="rewind"),
    _row("imp", 0.5, 0.86, 1, verb="rewind"),  # the same seed retrained: counted once
    _row("imp", 0.3, 0.5, 1, role="trajectory"), _row("imp", 0.3, 0.5, 1, verb="eval"),  # ignored
]


def test_verdicts_and_aggregation():
    (view,) = tickets_view.build(ROWS)
    assert view.full.mean == pytest.approx(0.85) and view.full.std == pytest.approx(0.01)
    rows = {(r["method"], r["sparsity"]): r for r in tickets_view.table_rows(view)}
    assert rows[("imp", 0.5)]["verdict"] == ">= full" and rows[("imp", 0.5)]["n"] == 3
    assert rows[("imp", 0.7)]["verdict"] == "matching"
    assert rows[("imp", 0.9)]["verdict"] == ""
    assert rows[("random_pruning", 0.5)]["n"] == 2 and rows[("random_pruning", 0.5)]["mean"] == pytest.approx(0.795)
    assert ("imp", 0.3) not in rows
    assert tickets_view.highest_matching(view) == 0.7


def test_figures_are_written(tmp_path):
    (view,) = tickets_view.build(ROWS)
    png = plots.sparsity_curves(view, tmp_path / "mrpc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matrix = {"tasks": ["mrpc", "rte"], "main_value": {"a": {"mrpc": 0.8, "rte": 0.6}, "b": {"mrpc": None, "rte": 0.5}}}
    assert plots.transfer_heatmap(matrix, tmp_path / "t.png").stat().st_size > 1000


def _cfg_row(method, sparsity, value, seed, lr=2e-5, rewind="0", rate=0.1, **kw):
    cfg = {"config.task.name": "mrpc", "config.model.name": "tiny", "config.train.lr": lr,
           "config.train.log_every": 10, "config.prune.rewind": rewind, "config.prune.scope": "global",
           "config.prune.rate": rate, "config.prune.schedule": "linear", "config.method": method}
    return _row(method, sparsity, value, seed, **{**cfg, **kw})


def test_rows_of_different_experiments_are_separate_views():
    rows = [_cfg_row("dense", 0.0, 0.80, 1), _cfg_row("dense", 0.0, 0.82, 2),
            _cfg_row("dense", 0.0, 0.60, 3, lr=1e-3),  # another lr: not the same full model
            _cfg_row("imp", 0.5, 0.81, 1), _cfg_row("imp", 0.5, 0.81, 2),
            _cfg_row("imp", 0.5, 0.70, 3, rewind="10it"),  # another rewind point: another table
            _cfg_row("dense", 0.0, 0.80, 4, **{"config.train.log_every": 1})]  # logging: same experiment
    views = tickets_view.build(rows)
    assert len(views) == 3 and len({v.experiment for v in views}) == 3
    by_label = {v.label: v for v in views}
    assert set(by_label) == {"prune.rewind=0, train.lr=2e-05", "prune.rewind=10it, train.lr=2e-05",
                             "train.lr=0.001"}
    main = by_label["prune.rewind=0, train.lr=2e-05"]
    assert main.full.n == 3 and main.full.mean == pytest.approx(0.8066666, abs=1e-6)
    assert tickets_view.table_rows(main)[1]["verdict"] == ">= full"
    other = by_label["prune.rewind=10it, train.lr=2e-05"]
    assert other.full is main.full  # the rewind point does not change the dense model
    assert tickets_view.table_rows(other)[1]["verdict"] == "-"  # one seed: no verdict
    assert tickets_view.highest_matching(other) is None


def test_imp_paths_split_the_curve_not_the_table():
    rows = [_cfg_row("imp", 0.5, 0.81, 1), _cfg_row("imp", 0.5, 0.70, 2, rate=0.2),
            _cfg_row("omp", 0.5, 0.75, 1)]
    (view,) = tickets_view.build(rows)
    assert set(view.curves) == {"imp (rate=0.1, schedule=linear)", "imp (rate=0.2, schedule=linear)", "omp"}
    (view,) = tickets_view.build(rows[:1] + rows[2:])
    assert set(view.curves) == {"imp", "omp"}


def test_rewind_of_a_ticket_joins_its_prune_run_only_with_the_same_training():
    found = {"ticket_config.method": "imp", "ticket_config.prune.rewind": "0", "ticket_config.prune.scope": "global",
             "ticket_config.prune.rate": 0.1, "ticket_config.prune.schedule": "linear",
             "ticket_config.task.name": "mrpc", "ticket_config.model.name": "tiny", "ticket_config.train.lr": 2e-5}
    same = _cfg_row("imp", 0.5, 0.90, 1, verb="rewind", ticket="/r/prune/x/tickets/level-01", **found)
    other = _cfg_row("imp", 0.5, 0.50, 2, verb="rewind", ticket="/r/prune/x/tickets/level-01",
                     **{**found, "ticket_config.train.lr": 1e-4})
    (view,) = tickets_view.build([_cfg_row("imp", 0.5, 0.81, 1), same])
    assert view.curves["imp"][0.5].by_seed == {1: 0.90}  # the same seed retrained: counted once
    views = tickets_view.build([_cfg_row("imp", 0.5, 0.81, 1), other])
    assert len(views) == 2 and any("ticket_from.train.lr=0.0001" in v.label for v in views)


def test_no_figure_without_a_curve(tmp_path):
    (view,) = tickets_view.build([_row("imp", 0.0, 0.8, 1), _row("imp", 0.5, 0.7, 1)])
    assert not view.plottable()
    with pytest.raises(ValueError, match=">= 2 sparsity points"):
        plots.sparsity_curves(view, tmp_path / "one-dot.png")
    assert not (tmp_path / "one-dot.png").exists()
