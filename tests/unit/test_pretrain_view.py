"""The pre-training view of ``report``: rows, units, EarlyBERT stage times, csv/json, the loss plot."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from bert_ticket_cli.artifacts import plots, pretrain_view
from bert_ticket_cli.artifacts.index import build_index, query
from bert_ticket_cli.cli import run_verb
from bert_ticket_cli.commands import report
from bert_ticket_cli.config.schema import ReportConfig

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _metrics(path: Path, *, seconds: float, start_loss: float = 10.0, evals: int = 3, start_s: float = 0.0) -> None:
    """A metrics.jsonl: 20 training points over ``seconds``, ``evals`` validation points, plus a
    half-written last line (a run still writing) that the reader must skip."""
    lines = []
    for i in range(1, 21):
        t = start_s + seconds * i / 20
        lines.append({"event": "train", "step": 10 * i, "loss": start_loss * 0.9 ** i, "lr": 1e-3, "elapsed_s": t})
        if i % (20 // evals) == 0:
            loss = start_loss * 0.9 ** i + 0.1
            lines.append({"event": "eval", "step": 10 * i, "elapsed_s": t, "mlm_loss": loss,
                          "mlm_accuracy": 0.5, "perplexity": math.exp(loss)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"event": "train", "st')


def _summary(rd: Path, name: str, **extra) -> dict:
    s = {"verb": "pretrain", "run_name": name, "run_dir": str(rd), "model": "bert-base", "method": "dense",
         "seed": 42, "metrics": {"mlm_loss": 2.0, "mlm_accuracy": 0.6, "perplexity": math.exp(2.0)},
         "main_metric": "mlm_loss", "main_value": 2.0, "started": "2024-01-01T00:00:00",
         "finished": "2024-01-02T00:00:00", "config": {"train": {"lr": 1e-3}}, "role": "pretrain",
         "budget_s": 86400.0, "elapsed_s": 86000.0, "train_time_s": 80000.0, "steps": 23000,
         "tokens": 1_000_000_000, "tokens_per_s": 12500.0, "stop_reason": "budget", "clock": "wall",
         "model_params": 110_000_000}
    s.update(extra)
    _write(rd / "summary.json", s)
    return s


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    dense = root / "pretrain" / "base-24h"
    _summary(dense, "base-24h")
    _metrics(dense / "metrics.jsonl", seconds=86000.0)

    eb = root / "pretrain" / "base-eb"
    _summary(eb, "base-eb", method="earlybert", role="earlybert", budget_s=7200.0, elapsed_s=3300.0,
             search_elapsed_s=1900.0,
             stop_reason="early_stop", steps=900, metrics={"mlm_loss": 6.5, "mlm_accuracy": 0.1},
             main_value=6.5, search_time_s=1800.0, compact_time_s=3240.0, model_params=80_000_000)
    for stage, seconds in (("search", 1800.0), ("compact", 3240.0), ("dense", 7000.0)):
        srd = eb / "stages" / stage
        _write(srd / "summary.json", {"verb": "pretrain", "run_name": f"base-eb/{stage}", "run_dir": str(srd),
                                      "role": "stage", "stage": stage, "method": "earlybert", "seed": 42,
                                      "main_metric": "mlm_loss", "main_value": 7.0, "metrics": {"mlm_loss": 7.0}})
        _metrics(srd / "metrics.jsonl", seconds=seconds, start_loss=10.5)

    _write(root / "rewind" / "sst2-dense" / "summary.json", {  # not a pre-training run
        "verb": "rewind", "run_name": "sst2-dense", "task": "sst2", "method": "dense", "seed": 1,
        "main_metric": "accuracy", "main_value": 0.9, "metrics": {"accuracy": 0.9}})
    return root


def _json(capsys, cfg: ReportConfig):
    capsys.readouterr()
    assert report.run(cfg) == 0
    return json.loads(capsys.readouterr().out)


def test_rows(runs, capsys):
    rows = _json(capsys, ReportConfig(output_dir=str(runs), view="pretrain", format="json"))
    assert [r["run_name"] for r in rows] == ["base-24h", "base-eb"]
    dense, eb = rows
    assert dense["params_m"] == pytest.approx(110.0) and dense["budget_h"] == pytest.approx(24.0)
    assert dense["elapsed_h"] == pytest.approx(86000 / 3600) and dense["steps"] == 23000
    assert dense["tokens_per_s"] == 12500.0 and dense["stop_reason"] == "budget" and dense["clock"] == "wall"
    assert dense["mlm_loss"] == 2.0 and dense["mlm_accuracy"] == 0.6
    assert dense["perplexity"] == pytest.approx(math.exp(2))
    assert dense["search_time_s"] is None and dense["compact_h"] is None and dense["role"] == "pretrain"
    assert eb["role"] == "earlybert" and eb["stop_reason"] == "early_stop"
    assert eb["search_h"] == pytest.approx(0.5) and eb["compact_h"] == pytest.approx(0.9)
    assert eb["elapsed_s"] == 5200.0  # search + compact stage (the summary's elapsed_s is the compact's)
    # no perplexity in the summary: exp(final validation loss)
    assert eb["perplexity"] == pytest.approx(math.exp(6.5)) and eb["mlm_accuracy"] == 0.1

    # filters as in the other views
    (only,) = _json(capsys, ReportConfig(output_dir=str(runs), view="pretrain", format="json",
                                         where=["method=earlybert"]))
    assert only["run_name"] == "base-eb"


def test_stage_times_from_a_stages_record():
    (row,) = pretrain_view.build([{"verb": "pretrain", "role": "earlybert", "run_name": "x",
                                   "stages.search.train_time_s": 360.0, "stages.compact.train_time_s": 720.0,
                                   "model.name": "bert-small"}])
    assert row["search_h"] == pytest.approx(0.1) and row["compact_h"] == pytest.approx(0.2)
    assert row["model"] == "bert-small" and row["params_m"] is None and row["mlm_loss"] is None


def test_table_and_csv(runs, capsys):
    assert report.run(ReportConfig(output_dir=str(runs), view="pretrain")) == 0
    out = capsys.readouterr().out
    assert "base-24h" in out and "early_stop" in out and "110.0" in out and "24.00" in out and "12,500" in out
    assert "base-eb/search" not in out and "sst2-dense" not in out
    assert report.run(ReportConfig(output_dir=str(runs), view="pretrain", format="csv")) == 0
    parsed = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert parsed[0] == pretrain_view.FIELDS and len(parsed) == 3
    assert parsed[2][pretrain_view.FIELDS.index("search_time_s")] == "1800.0"


def test_cli_view_and_filters(runs, capsys):
    capsys.readouterr()
    assert run_verb("report", [f"output_dir={runs}", "view=pretrain", "format=json", "stop_reason=budget"],
                    False, False) == 0
    assert [r["run_name"] for r in json.loads(capsys.readouterr().out)] == ["base-24h"]


def test_empty(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert report.run(ReportConfig(output_dir=str(tmp_path / "runs"), view="pretrain", plot=True)) == 0
    assert "no pre-training runs" in capsys.readouterr().out
    assert _json(capsys, ReportConfig(output_dir=str(tmp_path / "runs"), view="pretrain", format="json")) == []
    assert not (tmp_path / "runs" / "report").exists()


def test_curves(runs):
    rows = pretrain_view.build(query(build_index(runs), []))
    curves = pretrain_view.curves(rows, runs)
    assert [c["label"] for c in curves] == ["base-24h", "base-eb (search)", "base-eb (compact)",
                                            "base-eb (dense baseline)"]
    dense, search, compact, baseline = curves
    assert baseline["stage"] == "dense" and baseline["train"][0][0] == pytest.approx(350.0)  # not shifted
    assert len(dense["train"]) == 20 and len(dense["eval"]) == 3  # the half-written line is skipped
    # the compact stage's clock restarts at 0: it is placed after the search stage
    assert compact["train"][0][0] == pytest.approx(1800.0 + 3240.0 / 20)
    # a moved runs folder: run_dir no longer exists, <root>/pretrain/<run> is used
    moved = [dict(r, run_dir="/nonexistent/pretrain/" + r["run_name"]) for r in rows]
    assert len(pretrain_view.curves(moved, runs)) == 4 and pretrain_view.curves(moved, None) == []


def test_plot(runs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert report.run(ReportConfig(output_dir=str(runs), view="pretrain", format="csv", plot=True,
                                   plot_dir=str(out))) == 0
    png = out / "pretrain_loss.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 1000
    assert f"plot: {png}" in capsys.readouterr().out

    # no metrics.jsonl anywhere: the table still prints, the plot is skipped with a message
    for f in runs.rglob("metrics.jsonl"):
        f.unlink()
    png.unlink()
    assert report.run(ReportConfig(output_dir=str(runs), view="pretrain", plot=True, plot_dir=str(out))) == 0
    assert "plot: skipped" in capsys.readouterr().out and not png.exists()


def test_plot_direct_minutes_and_log(tmp_path):
    short = [{"run": "a", "label": "a", "stage": None, "train": [(60.0 * i, 10.0 / i) for i in range(1, 30)],
              "eval": [(600.0, 3.0), (1200.0, 2.0)]}]
    assert plots.pretrain_loss(short, tmp_path / "a.png").stat().st_size > 1000
    assert plots.pretrain_loss(short, tmp_path / "b.png", log_y=False).read_bytes()[:8] == PNG
    with pytest.raises(ValueError):
        plots.pretrain_loss([], tmp_path / "c.png")
