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
