"""report view=multitask: arms, means and stds over seeds, experiments never pooled."""

from __future__ import annotations

import statistics

import pytest

from bert_ticket_cli.artifacts import multitask_view as mv


def _row(seed, share, sst2, rte, lr=5e-5, kept=0.8):
    return {"role": "multitask", "status": "finished", "seed": seed, "tickets_share": share, "model": "minilm",
            "tasks": ["sst2", "rte"], "main_value": (sst2 + rte) / 2,
            "task_main_metrics.sst2": sst2, "task_main_metrics.rte": rte,
            "kept_fraction.sst2": kept if share else 1.0, "kept_fraction.rte": 1.0,
            "config.seed": seed, "config.train.lr": lr, "config.multitask.tasks": ["sst2", "rte"],
            "config.multitask.tickets_from": "runs" if share else None, "config.run_name": f"r{seed}{share}"}


def test_arms_means_and_stds():
    rows = [_row(1, False, 0.80, 0.60), _row(2, False, 0.82, 0.64), _row(1, True, 0.84, 0.66),
            _row(2, True, 0.86, 0.62), {"role": "multitask_eval", "main_value": 0.1}]
    (exp,) = mv.build(rows)
    table = {r["arm"]: r for r in mv.table_rows(exp)}
    assert table["dense"]["sst2"] == pytest.approx(0.81) and table["dense"]["sst2_std"] == pytest.approx(
        statistics.stdev([0.80, 0.82]))
    assert table["tickets-share"]["average"] == pytest.approx(statistics.mean([0.75, 0.74]))
    assert table["tickets-share"]["kept_mean"] == pytest.approx(0.9) and table["dense"]["kept_mean"] == 1.0
    assert table["dense"]["seeds"] == 2 and mv.cell(0.81, 0.01) == "81.0 +- 1.0" and mv.cell(0.5, None) == "50.0"


def test_other_settings_are_another_experiment():
    exps = mv.build([_row(1, False, 0.8, 0.6), _row(1, True, 0.8, 0.6, lr=1e-4)])
    assert len(exps) == 2 and all(len(mv.table_rows(e)) == 1 for e in exps)
