"""``report`` never pools different experiments nor hides unfinished runs (issue 11, item 3).

Summaries are written with the real writer (records.write_summary on a composed config), laid
out as the verbs lay them out; the report verb runs in-process through the CLI's run_verb.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from bert_ticket_cli.artifacts.paths import RunDir, atomic_write_json, run_dir
from bert_ticket_cli.artifacts.records import now, write_config, write_summary
from bert_ticket_cli.cli import run_verb
from bert_ticket_cli.config.compose import compose, validate


def _cfg(verb: str, out: Path, *overrides: str):
    return validate(compose(verb, [f"output_dir={out}", "task=mrpc", *overrides]), verb)


def _metrics(value: float) -> dict[str, float]:
    return {"f1": value, "accuracy": round(value - 0.1, 6)}


def dense(out: Path, value: float, *overrides: str):
    """A finished ``rewind`` without ticket (the dense fine-tune)."""
    cfg = _cfg("rewind", out, *overrides)
    rd = run_dir(cfg)
    write_config(rd, cfg)
    write_summary(rd, cfg, metrics=_metrics(value), main_metric="f1", started=now(),
                  extra={"steps": cfg.train.max_steps, "model_dir": str(rd.model)})
    return rd


def prune(out: Path, values: list[float], *overrides: str, sparsities: list[float] | None = None):
    """A finished ``prune`` run: level summaries (level 0 dense), tickets, the trajectory."""
    cfg = _cfg("prune", out, *overrides)
    rd = run_dir(cfg)
    write_config(rd, cfg)
    sparsities = sparsities or [0.1 * k for k in range(len(values))]
    trajectory = []
    for level, (value, sp) in enumerate(zip(values, sparsities)):
        tdir = rd.root / "tickets" / f"level-{level:02d}"
        if level:
            atomic_write_json(tdir / "ticket.json", {"level": level})
        record = write_summary(RunDir(rd.root / "levels" / f"level-{level:02d}"), cfg, metrics=_metrics(value),
                               main_metric="f1", started=now(), extra={
            "run_name": f"{rd.root.name}/level-{level:02d}", "level": level, "sparsity": sp,
            "ticket": str(tdir) if level else None, "role": "level"})
        trajectory.append(record)
    last = trajectory[-1]
    write_summary(rd, cfg, metrics=last["metrics"], main_metric="f1", started=now(),
                  extra={"role": "trajectory", "sparsity": last["sparsity"], "levels": len(values) - 1,
                         "trajectory": [{"level": r["level"], "sparsity": r["sparsity"]} for r in trajectory]})
    return rd


def report(capsys, out: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = run_verb("report", [f"output_dir={out}", *args], False, False)
    except typer.Exit as exc:
        code = exc.exit_code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tickets_json(capsys, out: Path, *args: str) -> list[dict]:
    code, text, err = report(capsys, out, "view=tickets", "format=json", *args)
    assert code == 0, err
    return json.loads(text)


def test_different_training_settings_are_never_pooled(tmp_path, capsys):
    """The issue's case: a 20-step dense fine-tune and an 8-step IMP level 0 were one
    "full model 0.5150 +- 0.0283 (2 seeds)" and imp 10% was ">= full"."""
    out = tmp_path / "runs"
    dense(out, 0.535, "train.max_steps=20")
    prune(out, [0.495, 0.52], "method=imp", "train.max_steps=8")
    rows = tickets_json(capsys, out)
    full = [r for r in rows if r["method"] == "full model"]
    assert sorted(r["n"] for r in full) == [1, 1]  # two experiments, one seed each: no mean of both
    assert len({r["experiment"] for r in full}) == 2
    assert all("train.max_steps" in r["setting"] for r in rows)
    (imp,) = [r for r in rows if r["method"] == "imp"]
    assert imp["verdict"] == "-"  # one seed on both sides: no verdict, certainly not ">= full"
    assert imp["setting"] == "train.max_steps=8"

    code, text, _ = report(capsys, out, "view=tickets")
    assert code == 0 and "n=1, no std" in text and ">= full" not in text and "0.5150" not in text


def test_runs_gathered_with_symlinks_are_reported_once(tmp_path, capsys):
    """Run folders linked in from elsewhere (``ln -s``) are indexed; a link cycle ends."""
    out, elsewhere = tmp_path / "runs", tmp_path / "scratch"
    prune(out, [0.80, 0.82], "method=imp", "seed=1", "train.max_steps=8")
    theirs = prune(elsewhere, [0.82, 0.83], "method=imp", "seed=2", "train.max_steps=8")
    (out / "prune" / theirs.root.name).symlink_to(theirs.root)
    (out / "prune" / "loop").symlink_to(out)
    imp = next(r for r in tickets_json(capsys, out) if r["method"] == "imp")
    assert imp["n"] == 2 and imp["mean"] == pytest.approx(0.825)


def test_prune_settings_split_a_cell(tmp_path, capsys):
    """Two IMP seeds that differ in the rewind point are two rows, never one mean."""
    out = tmp_path / "runs"
    prune(out, [0.80, 0.70], "method=imp", "seed=1", "prune.rewind=0")
    prune(out, [0.81, 0.75], "method=imp", "seed=2", "prune.rewind=5it")
    rows = [r for r in tickets_json(capsys, out) if r["method"] == "imp"]
    assert len(rows) == 2 and all(r["n"] == 1 for r in rows)
    assert {r["setting"] for r in rows} == {"prune.rewind=0", "prune.rewind=5it"}
    full = [r for r in tickets_json(capsys, out) if r["method"] == "full model"]
    assert {r["n"] for r in full} == {2}  # level 0 is dense: the rewind point does not change it


def test_seeds_of_one_experiment_are_averaged_with_verdicts(tmp_path, capsys):
    out = tmp_path / "runs"
    prune(out, [0.80, 0.82], "method=imp", "seed=1", "train.max_steps=8")
    prune(out, [0.82, 0.83], "method=imp", "seed=2", "train.max_steps=8")
    dense(out, 0.81, "seed=3", "train.max_steps=8")  # same training settings: the same full model
    dense(out, 0.99, "seed=4", "train.max_steps=9")  # another experiment
    rows = tickets_json(capsys, out)
    exp8 = [r for r in rows if r["setting"] == "train.max_steps=8"]
    full = next(r for r in exp8 if r["method"] == "full model")
    assert full["n"] == 3 and full["mean"] == pytest.approx(0.81) and full["std"] == pytest.approx(0.01)
    imp = next(r for r in exp8 if r["method"] == "imp")
    assert imp["n"] == 2 and imp["verdict"] == ">= full"
    (alone,) = [r for r in rows if r["setting"] == "train.max_steps=9"]
    assert alone["method"] == "full model" and alone["n"] == 1 and alone["std"] is None


def test_metric_is_selectable(tmp_path, capsys):
    out = tmp_path / "runs"
    one = prune(out, [0.80, 0.82], "method=imp", "seed=1").root.name  # default names: <...>-s1-<hash>
    prune(out, [0.82, 0.83], "method=imp", "seed=2")
    rows = tickets_json(capsys, out, "metric=accuracy")  # was a filter on a missing field: nothing
    full = next(r for r in rows if r["method"] == "full model")
    assert full["mean"] == pytest.approx(0.71)
    code, text, _ = report(capsys, out, "view=tickets", "metric=accuracy")
    assert code == 0 and "(accuracy)" in text
    code, _, err = report(capsys, out, "view=tickets", "metric=mcc")
    assert code == 2 and "metric 'mcc'" in err and "accuracy, f1" in err
    code, _, err = report(capsys, out, "metric=f1")  # a tickets setting, not for view=runs
    assert code == 2 and "'metric'" in err


def test_unknown_filter_key_exits_2_with_did_you_mean(tmp_path, capsys):
    out = tmp_path / "runs"
    rd = prune(out, [0.80, 0.82], "method=imp")
    code, text, err = report(capsys, out, "view=tickets", "taks=mrpc")
    assert code == 2 and text == "" and "unknown filter key 'taks'" in err and "did you mean 'task'" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = report(capsys, out, "veiw=tickets")  # a typo of a report setting
    assert code == 2 and "'view'" in err
    code, text, _ = report(capsys, out, "format=json", "config.train.lr=2e-05", "method=dense")  # nested
    assert code == 0 and [r["run_name"] for r in json.loads(text)] == [f"{rd.root.name}/level-00"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text, _ = report(capsys, empty, "taks=mrpc")
    assert code == 0 and "no runs under" in text


def test_level_0_of_a_prune_run_is_the_dense_baseline(tmp_path, capsys):
    out = tmp_path / "runs"
    prune(out, [0.80, 0.82], "method=omp", sparsities=[0.0, 0.5])
    code, text, _ = report(capsys, out, "method=dense", "format=json", "columns=[prune_method,level]")
    rows = json.loads(text)
    assert code == 0 and len(rows) == 1
    assert rows[0]["level"] == 0 and rows[0]["prune_method"] == "omp" and rows[0]["method"] == "dense"
    code, text, _ = report(capsys, out, "method=omp", "format=json")
    assert [r["sparsity"] if "sparsity" in r else 0.5 for r in json.loads(text)] == [0.5]


def test_pretrain_and_transfer_are_not_tasks_and_no_empty_plots(tmp_path, capsys):
    out = tmp_path / "runs"
    cfg = validate(compose("pretrain", [f"output_dir={out}", "run_name=base"]), "pretrain")
    rd = run_dir(cfg)
    write_config(rd, cfg)
    write_summary(rd, cfg, metrics={"mlm_loss": 2.0, "mlm_accuracy": 0.4}, main_metric="mlm_accuracy",
                  started=now(), extra={"role": "pretrain"})
    cfg = _cfg("transfer", out, "run_name=t", "ticket.path=/x/tickets/level-01")
    rd = run_dir(cfg)
    write_config(rd, cfg)
    write_summary(rd, cfg, metrics=_metrics(0.7), main_metric="f1", started=now(), extra={"sparsity": 0.5})
    prune(out, [0.80, 0.82], "method=omp", sparsities=[0.0, 0.5])  # one point per method: no curve
    rows = tickets_json(capsys, out)
    assert {r["task"] for r in rows} == {"mrpc"} and not any(r["mean"] == 0.7 for r in rows)
    code, text, _ = report(capsys, out, "view=tickets", "plot=true", f"plot_dir={tmp_path / 'plots'}")
    assert code == 0 and "plot: skipped mrpc_sparsity.png: no method with >= 2 sparsity points" in text
    assert not list(tmp_path.glob("plots/*_sparsity.png"))
    prune(out, [0.80, 0.82, 0.7], "method=imp", "seed=2")
    code, text, _ = report(capsys, out, "view=tickets", "plot=true", f"plot_dir={tmp_path / 'plots'}")
    assert code == 0 and [p.name for p in tmp_path.glob("plots/*.png")] == ["mrpc_sparsity.png"]


def test_unfinished_and_interrupted_runs_are_listed_never_averaged(tmp_path, capsys):
    out = tmp_path / "runs"
    one = prune(out, [0.80, 0.82], "method=imp", "seed=1").root.name  # default names: <...>-s1-<hash>
    prune(out, [0.82, 0.83], "method=imp", "seed=2")
    crashed = _cfg("rewind", out, "seed=7")  # config.yaml written, nothing else: unfinished
    write_config(run_dir(crashed), crashed)
    cut = _cfg("prune", out, "method=imp", "seed=8")  # level 0 done, level 1 has a checkpoint
    cut_rd = run_dir(cut)
    write_config(cut_rd, cut)
    write_summary(RunDir(cut_rd.root / "levels" / "level-00"), cut, metrics=_metrics(0.1), main_metric="f1",
                  started=now(), extra={"level": 0, "sparsity": 0.0, "role": "level",
                                        "run_name": f"{cut_rd.root.name}/level-00"})
    ckpt = RunDir(cut_rd.root / "levels" / "level-01").checkpoint(10)
    atomic_write_json(ckpt / "trainer_state.json", {"step": 10})
    code, text, _ = report(capsys, out, "format=json")
    status = {r["run_name"]: r["status"] for r in json.loads(text)}
    crashed_name, cut_name = run_dir(crashed).root.name, cut_rd.root.name
    assert crashed_name.startswith("mrpc-tiny-s7-") and cut_name.startswith("mrpc-tiny-imp-s8-")
    assert status[crashed_name] == "unfinished" and status[cut_name] == "interrupted"
    assert status[f"{one}/level-01"] == "finished"
    code, text, _ = report(capsys, out)
    assert "interrupted = has a checkpoint" in text and "unfinished = no checkpoint yet" in text
    code, text, _ = report(capsys, out, "status=interrupted", "format=json")
    assert [r["run_name"] for r in json.loads(text)] == [cut_name]
    code, text, _ = report(capsys, out, "view=tickets")
    assert "2 interrupted / unfinished run(s) not counted" in text
