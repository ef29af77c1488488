"""Bad inputs that involve a run already on disk (issue 11, items 10 and 12): damaged weights
and checkpoints, a model config transformers cannot build, a batch that does not fit the data
with ``overwrite=true``.  Each is one ``error:`` line on stderr and exit 2, and nothing already
written is lost or changed.

One case per test id; the finished run they start from is trained once per module.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

BASE = ["experiment=demo", "task.synthetic.n_train=640", "train.max_steps=20", "train.save_every=10",
        "train.keep_checkpoints=2", "train.log_every=100"]


def _tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (what "untouched" means)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished rewind run (model/ and two checkpoints) under ``<tmp>/runs/rewind/base``."""
    root = tmp_path_factory.mktemp("bad_runs")
    r = cli("rewind", *BASE, "run_name=base", f"output_dir={root / 'runs'}")
    assert r.returncode == 0, r.stderr[-2000:]
    run = root / "runs" / "rewind" / "base"
    assert (run / "summary.json").exists() and len(list((run / "checkpoints").iterdir())) >= 1
    return run


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _model_copy(finished: Path, tmp: Path, damage) -> Path:
    model = tmp / "model"
    shutil.copytree(finished / "model", model)
    damage(model / "model.safetensors")
    return model


def _interrupted_copy(finished: Path, tmp: Path, damaged_file: str) -> Path:
    """A copy of the run as if it had been stopped after its newest checkpoint, that
    checkpoint's ``damaged_file`` cut in half."""
    run = tmp / "runs" / "rewind" / "base"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    shutil.rmtree(run / "model")
    newest = sorted((run / "checkpoints").iterdir())[-1]
    _truncate(newest / damaged_file)
    return run


def case_truncated_model_weights(finished: Path, tmp: Path):
    model = _model_copy(finished, tmp, _truncate)
    out = tmp / "runs"
    return (["rewind", *BASE, "model=local", f"model.name_or_path={model}", "model.tokenizer=synthetic",
             "run_name=from-truncated", f"output_dir={out}"], model, "model.safetensors",
            lambda: not (out / "rewind" / "from-truncated").exists())


def case_garbage_model_weights(finished: Path, tmp: Path):
    model = _model_copy(finished, tmp, _garbage)
    out = tmp / "runs"
    return (["eval", "task=synthetic", f"eval.checkpoint={model}", f"output_dir={out}"], model, "model.safetensors",
            lambda: not (out / "eval").exists())


def case_truncated_checkpoint_weights(finished: Path, tmp: Path):
    run = _interrupted_copy(finished, tmp, "model.safetensors")
    return (["rewind", *BASE, "run_name=base", f"output_dir={tmp / 'runs'}", "resume=true"], run, "damaged", None)


def case_truncated_checkpoint_optimizer(finished: Path, tmp: Path):
    run = _interrupted_copy(finished, tmp, "optimizer.bin")
    return (["rewind", *BASE, "run_name=base", f"output_dir={tmp / 'runs'}", "resume=true"], run, "damaged", None)


def case_hidden_size_not_a_multiple_of_heads(finished: Path, tmp: Path):
    out = tmp / "runs"
    return (["rewind", *BASE, "model.config.hidden_size=65", "run_name=h65", f"output_dir={out}"], None,
            "hidden size", lambda: not (out / "rewind" / "h65").exists())


def case_batch_larger_than_data_with_overwrite(finished: Path, tmp: Path):
    run = tmp / "runs" / "rewind" / "base"
    shutil.copytree(finished, run)
    return (["rewind", *BASE, "run_name=base", f"output_dir={tmp / 'runs'}", "train.batch_size=5000",
             "overwrite=true"], run, "fewer than one global batch",
            lambda: not any(p.name.startswith("base.replaced-") for p in run.parent.iterdir()))


CASES = {name[len("case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_error_line_exit_2_and_nothing_lost(finished, tmp_path, case):
    args, keep, expected, also = CASES[case](finished, tmp_path)
    before = _tree(keep) if keep is not None and keep.is_dir() else None
    r = cli(*args)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-3000:]
    assert expected in lines[0], lines[0]
    if before is not None:
        assert _tree(keep) == before  # every file as it was
    if also is not None:
        assert also()

