"""The command line itself: verbs, help, version, --cfg, launcher arguments."""

from __future__ import annotations

import pytest
import yaml

from bert_ticket_cli import __version__
from tests.conftest import cli

pytestmark = pytest.mark.integration


def test_help_lists_the_six_verbs():
    r = cli("--help", process=True)  # the installed console behaviour: a fresh process
    assert r.returncode == 0
    for verb in ("prune", "rewind", "transfer", "pretrain", "eval", "report"):
        assert verb in r.stdout


def test_verb_help_lists_groups_and_an_example():
    r = cli("rewind", "--help", process=True)  # the installed console behaviour: a fresh process
    assert r.returncode == 0
    assert "task: cola" in r.stdout and "engine: cpu" in r.stdout and "Example: bert-ticket rewind" in r.stdout


def test_version():
    r = cli("--version", process=True)  # the installed console behaviour: a fresh process
    assert r.returncode == 0 and r.stdout.strip() == f"bert-ticket {__version__}"


def test_cfg_prints_the_composed_config_with_overrides():
    r = cli("rewind", "--cfg", "task=mrpc", "train.lr=3e-5", "+model.config.hidden_dropout_prob=0.2",
            "seed=7", "--local_rank=0")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["task"]["name"] == "mrpc" and cfg["train"]["lr"] == 3e-5 and cfg["seed"] == 7
    assert cfg["model"]["config"]["hidden_dropout_prob"] == 0.2


def test_delete_override():
    r = cli("rewind", "--cfg", "~model.config")
    assert r.returncode == 0 and yaml.safe_load(r.stdout)["model"]["config"] is None


def test_launcher_local_rank_forms_are_accepted():
    for form in (["--local_rank=1"], ["--local-rank", "1"]):
        r = cli("rewind", "--cfg", *form)
        assert r.returncode == 0, r.stderr
    r = cli("--local_rank=0", "rewind", "--cfg")  # the deepspeed launcher puts it before the verb
    assert r.returncode == 0, r.stderr
