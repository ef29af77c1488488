"""Run identity (issue 11, items 1, 2, 14): a default run name carries a hash of the settings
that define the experiment, and a run folder whose stored config differs from the requested one
is refused (finished or not, checkpoints in sub-runs included), naming the keys.

Run folders are laid out with the real writers (``write_config`` / ``write_summary``) and opened
with ``records.open_run``, which decides without touching disk.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bert_ticket_cli.artifacts.paths import (
    NON_IDENTITY_KEYS, RunDir, atomic_write_json, config_hash, is_identity_key, run_dir, run_name,
)
from bert_ticket_cli.artifacts.records import open_run, provenance, write_config, write_summary, now
from bert_ticket_cli.config.compose import compose, validate
from bert_ticket_cli.errors import UserError


def _cfg(verb: str, out: Path, *overrides: str):
    return validate(compose(verb, [f"output_dir={out}", "task=mrpc", *overrides]), verb)


def _finished(cfg) -> RunDir:
    rd = run_dir(cfg)
    write_config(rd, cfg)
    write_summary(rd, cfg, metrics={"f1": 0.8}, main_metric="f1", started=now())
    return rd


def test_default_name_carries_a_hash_of_the_settings(tmp_path):
    a = _cfg("rewind", tmp_path, "train.max_steps=20")
    b = _cfg("rewind", tmp_path, "train.max_steps=21")
    assert re.fullmatch(r"mrpc-tiny-s42-[0-9a-f]{8}", run_name(a))
    assert run_name(a) != run_name(b)
    assert run_name(_cfg("prune", tmp_path, "method=imp")).startswith("mrpc-tiny-imp-s42-")
    # What cannot change the result does not change the name.
    same = _cfg("rewind", tmp_path / "elsewhere", "train.max_steps=20", "resume=true", "overwrite=true",
                "train.log_every=3", "train.save_every=7", "engine.num_workers=2", "cache_dir=/tmp/c")
    assert config_hash(same) == config_hash(a) and run_name(same) == run_name(a)
    assert config_hash(_cfg("rewind", tmp_path, "train.max_steps=20", "engine.mixed_precision=bf16")) != config_hash(a)
    # An explicit run_name is kept as given.
    assert run_name(_cfg("rewind", tmp_path, "run_name=mine", "train.max_steps=20")) == "mine"


def test_non_identity_keys_are_one_documented_list():
    assert {"output_dir", "run_name", "resume", "overwrite", "cache_dir", "engine.num_workers",
            "train.log_every"} <= set(NON_IDENTITY_KEYS)
    assert not is_identity_key("engine.num_workers") and not is_identity_key("engine.deepspeed.zero_optimization")
    assert is_identity_key("train.lr") and is_identity_key("engine.mixed_precision")


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
def test_a_run_with_another_config_is_refused_naming_the_keys(tmp_path, finished):
    old = _cfg("rewind", tmp_path, "run_name=same", "train.max_steps=20")
    rd = _finished(old) if finished else run_dir(old)
    if not finished:
        write_config(rd, old)
    with pytest.raises(UserError) as e:
        open_run(_cfg("rewind", tmp_path, "run_name=same", "train.max_steps=21"))
    msg = str(e.value)
    assert "train.max_steps (20 -> 21)" in msg and "overwrite=true" in msg and "\n" not in msg
    # The same settings: a finished run is reported, an unfinished one starts again.
    opened = open_run(_cfg("rewind", tmp_path, "run_name=same", "train.max_steps=20", "train.log_every=1"))
    assert opened.finished is finished and not opened.replace
    # overwrite=true replaces it (moved aside later, by commit_run).
    opened = open_run(_cfg("rewind", tmp_path, "run_name=same", "train.max_steps=21", "overwrite=true"))
    assert opened.replace and not opened.finished


def test_without_run_name_another_setting_is_another_folder(tmp_path):
    _finished(_cfg("rewind", tmp_path, "train.max_steps=20"))
    opened = open_run(_cfg("rewind", tmp_path, "train.max_steps=21"))
    assert not opened.finished and not opened.dir.root.exists()


@pytest.mark.parametrize("below", ["levels/level-01", "stages/search"])
def test_a_checkpoint_in_a_sub_run_makes_the_config_compared(tmp_path, below):
    old = _cfg("prune", tmp_path, "method=imp", "run_name=cut", "train.lr=1e-4")
    rd = run_dir(old)
    write_config(rd, old)
    atomic_write_json(RunDir(rd.root / below).checkpoint(10) / "trainer_state.json", {"step": 10})
    with pytest.raises(UserError, match=r"resume=true but the config differs .*train\.lr \(0\.0001 -> 0\.0002\)"):
        open_run(_cfg("prune", tmp_path, "method=imp", "run_name=cut", "train.lr=2e-4", "resume=true"))
    # Without resume=true the interrupted sub-run is named, as for a checkpoint in the root.
    with pytest.raises(UserError, match=r"holds an unfinished run \(checkpoint .*step-00000010\).*resume=true"):
        open_run(_cfg("prune", tmp_path, "method=imp", "run_name=cut", "train.lr=1e-4"))
    assert open_run(_cfg("prune", tmp_path, "method=imp", "run_name=cut", "train.lr=1e-4", "resume=true"))
    # overwrite=true (without resume) replaces the whole run.
    assert open_run(_cfg("prune", tmp_path, "method=imp", "run_name=cut", "train.lr=1e-4", "overwrite=true")).replace


def test_provenance_is_in_every_summary(tmp_path):
    cfg = _cfg("rewind", tmp_path, "run_name=p")
    rd = _finished(cfg)
    import json

    prov = json.loads(rd.summary.read_text())["provenance"]
    assert prov["tool_version"] and set(prov["versions"]) == {"torch", "transformers", "accelerate", "deepspeed",
                                                              "datasets"}
    assert prov["versions"]["torch"] and "cuda" in prov and "gpu" in prov
    assert isinstance(prov["argv"], list) and "command" in prov and "data_fingerprint" in prov
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():  # a checkout: its commit and whether it is dirty
        assert re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"]) and isinstance(prov["git_dirty"], bool)
    assert provenance()["versions"] == prov["versions"]  # computed once per process
