"""Every bad input ends with exit status 2 and one line on stderr naming the problem and the fix,
and nothing already written is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

TINY = ["experiment=demo", "task.synthetic.n_train=320", "train.epochs=1"]


def _sst2_folder(root: Path, train_lines: list[str]) -> Path:
    d = root / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(l + "\n" for l in train_lines))
    (d / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    return d


# name -> (arguments, text the one stderr line must contain); {tmp}, {ro}, {malformed} and {empty}
# are filled in per case by _folders().
CASES: dict[str, tuple[list[str], str]] = {
    "unknown key": (["rewind", "train.lrr=1e-4"], "train.lr"),
    "wrong type": (["rewind", "train.lr=abc"], "train.lr"),
    "unknown group option": (["rewind", "task=mnlii"], "mnli"),
    "value out of range": (["rewind", "train.warmup_ratio=1.5"], "warmup_ratio"),
    "bad choice": (["rewind", "engine.mixed_precision=fp8"], "bf16"),
    "required value": (["rewind", "model=local"], "model.name_or_path"),
    "not an override": (["rewind", "lr"], "key=value"),
    "deepspeed fp16 on cpu": (["rewind", *TINY, "engine=deepspeed_zero2_fp16", "output_dir={tmp}/r"], "fp16"),
    "fp16 on cpu": (["rewind", *TINY, "engine.mixed_precision=fp16", "output_dir={tmp}/r"], "fp16"),
    "indivisible batch": (["rewind", *TINY, "train.micro_batch_size=5", "output_dir={tmp}/r"], "batch_size"),
    "batch larger than data": (["rewind", *TINY, "train.batch_size=512", "output_dir={tmp}/r"], "batch"),
    "missing model dir": (["rewind", "model=local", "model.name_or_path=/nonexistent/model", "task=sst2",
                           "task.data_dir={malformed}", "output_dir={tmp}/r"], "/nonexistent/model"),
    "hub model offline": (["rewind", "model=bert-base-uncased", "task=sst2", "task.data_dir={malformed}",
                           "output_dir={tmp}/r", "model.name_or_path=no-such-org/no-such-bert"], "offline"),
    "missing data dir": (["rewind", "task=sst2", "model.tokenizer=synthetic", "task.data_dir=/nonexistent/glue",
                          "output_dir={tmp}/r"], "/nonexistent/glue"),
    "hub dataset offline": (["rewind", "task=rte", "model.tokenizer=synthetic", "output_dir={tmp}/r"], "offline"),
    "malformed tsv": (["rewind", "task=sst2", "model.tokenizer=synthetic", "task.data_dir={malformed}",
                       "output_dir={tmp}/r"], "line 3"),
    "empty dataset": (["rewind", "task=sst2", "model.tokenizer=synthetic", "task.data_dir={empty}",
                       "output_dir={tmp}/r"], "train.tsv"),
    "read-only output": (["rewind", *TINY, "output_dir={ro}/runs"], "writable"),
    "nan loss": (["rewind", *TINY, "train.lr=1e12", "train.max_grad_norm=0", "output_dir={tmp}/nan"], "loss"),
    "pretrain without a corpus": (["pretrain", "output_dir={tmp}/r", "cache_dir={tmp}/c"], "pretrain.data.corpus"),
    "pretrain missing corpus file": (["pretrain", "prepare", "pretrain.data.corpus=[/nonexistent/wiki.txt]",
                                      "cache_dir={tmp}/c"], "/nonexistent/wiki.txt"),
    "pretrain bad budget": (["pretrain", "pretrain.budget=soon"], "pretrain.budget"),
    "pretrain steps clock without max_steps": (["pretrain", "pretrain.clock=steps"], "train.max_steps"),
    "pretrain early stop half set": (["pretrain", "pretrain.early_stop.loss=6"], "early_stop"),
    "super tickets level outside (0, 1)": (["prune", "method=super_tickets", "method.levels=[0.5,1.2]"],
                                           "method.levels must be in (0, 1)"),
    "super tickets levels not increasing": (["prune", "method=super_tickets", "method.levels=[0.5,0.3]"],
                                            "must increase"),
    "super tickets unknown ffn_unit": (["prune", "method=super_tickets", "method.ffn_unit=block"], "ffn_unit"),
    "super tickets unknown kind": (["prune", "method=super_tickets", "method.kinds=[winning,best]"],
                                   "method.kinds"),
    "super tickets min_heads above heads": (["prune", "method=super_tickets", *TINY, "method.min_heads_per_layer=5",
                                             "output_dir={tmp}/r"], "min_heads_per_layer=5"),
    "super tickets level too high for min_heads": (["prune", "method=super_tickets", *TINY, "method.levels=[0.9]",
                                                    "method.min_heads_per_layer=2", "output_dir={tmp}/r"],
                                                   "only 4 can go"),
    "earlybert fraction out of range": (["prune", "method=earlybert", "method.neuron_fraction=1.2"],
                                        "neuron_fraction"),
    "sparsity out of range": (["prune", "method=omp", "prune.sparsities=[0.5,1.5]"], "sparsity must be in [0, 1)"),
    "missing ticket": (["rewind", "ticket=/nonexistent/ticket"], "/nonexistent/ticket"),
    "eval without model": (["eval", "task=synthetic"], "eval.checkpoint"),
    "eval checkpoint missing": (["eval", "task=synthetic", "eval.checkpoint=/nonexistent/model"], "not a directory"),
    "report on a missing folder": (["report", "output_dir=/nonexistent/runs"], "output_dir"),
    "unknown report option": (["report", "format=xml"], "format"),
}


def _folders(tmp: Path) -> dict[str, Path]:
    ro = tmp / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o555)
    malformed = _sst2_folder(tmp / "malformed", ["a fine film\t1", "no label column here"])
    empty = _sst2_folder(tmp / "empty", [])
    return {"tmp": tmp, "ro": ro, "malformed": malformed, "empty": empty}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_with_one_line(name, tmp_path):
    if name == "read-only output" and os.geteuid() == 0:
        pytest.skip("root ignores file modes; test_readonly_output_dir checks this case")
    args, needle = CASES[name]
    folders = _folders(tmp_path)
    r = cli(*(a.format(**folders) for a in args))
    lines = r.stderr.strip().splitlines()
    ok = r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert ok, f"{name}: rc={r.returncode} stderr={r.stderr.strip()[-400:]!r}"


def test_readonly_output_dir(tmp_path):
    target = tmp_path / "file-not-dir"
    target.write_text("x")  # a file where a folder is needed fails for root too
    r = cli("rewind", *TINY, f"output_dir={target}/runs")
    assert r.returncode == 2 and "writable" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback():
    r = cli("rewind", "train.lr=abc", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_failed_overwrite_loses_nothing(tmp_path):
    out = tmp_path / "runs"
    assert cli("rewind", *TINY, f"output_dir={out}", "run_name=keep").returncode == 0
    run = out / "rewind" / "keep"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # Same run name, overwrite requested, but the data source is bad: the old run must survive intact.
    r = cli("rewind", *TINY, f"output_dir={out}", "run_name=keep", "overwrite=true", "task.synthetic.n_train=0")
    assert r.returncode == 2
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
