"""Config composition and validation (no training)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bert_ticket_cli.config.compose import CONF_DIR, compose, config_groups, to_yaml, validate
from bert_ticket_cli.config.schema import SCHEMAS, RunConfig
from bert_ticket_cli.errors import UserError

REQUIRED = {("model", "local"): ["model.name_or_path=/some/dir"]}


def _all_group_choices():
    for group, options in config_groups().items():
        for option in options:
            yield group, option


@pytest.mark.parametrize("verb", sorted(SCHEMAS))
def test_every_root_config_composes(verb):
    cfg = validate(compose(verb, []), verb)
    assert cfg.verb == verb


@pytest.mark.parametrize("group,option", list(_all_group_choices()))
def test_every_group_option_composes(group, option):
    extra = REQUIRED.get((group, option), [])
    if group == "experiment" and option == "sst2_minilm":
        extra = ["model.name_or_path=/some/dir"]
    cfg = validate(compose("rewind", [f"{group}={option}", *extra]), "rewind")
    assert isinstance(cfg, RunConfig)
    if group == "task":
        assert cfg.task.name == option


def test_every_config_file_opens_with_the_command_that_runs_it():
    files = sorted(CONF_DIR.rglob("*.yaml"))
    assert len(files) >= 25
    for f in files:
        lines = [l for l in f.read_text().splitlines() if not l.startswith("# @package")]
        assert lines[0].startswith("# ") and ("bert-ticket" in lines[0] or "accelerate launch" in lines[0]), f


def test_groups_cover_the_required_choices():
    g = config_groups()
    assert {"bert-base-uncased", "bert-large-uncased", "tiny", "local"} <= set(g["model"])
    assert {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "squad"} <= set(g["task"])
    assert {"cpu", "ddp", "deepspeed_zero2_bf16", "deepspeed_zero2_fp16"} <= set(g["engine"])


def test_overrides_are_typed():
    cfg = validate(compose("rewind", ["train.lr=3e-5", "train.batch_size=16", "seed=3", "task=mrpc"]))
    assert cfg.train.lr == 3e-5 and cfg.train.batch_size == 16 and cfg.seed == 3 and cfg.task.name == "mrpc"
    assert isinstance(cfg.train.lr, float)


def test_all_problems_are_reported_at_once():
    with pytest.raises(UserError) as e:
        validate(compose("rewind", ["train.lrr=1", "train.batch_size=x", "engine.nme=cpu"]))
    msg = str(e.value)
    assert "train.lrr" in msg and "did you mean 'train.lr'" in msg
    assert "train.batch_size" in msg and "engine.nme" in msg
    assert "\n" not in msg


def test_value_checks_are_reported_together():
    with pytest.raises(UserError) as e:
        validate(compose("rewind", ["train.lr=-1", "train.warmup_ratio=2", "engine.mixed_precision=fp8"]))
    msg = str(e.value)
    assert "train.lr" in msg and "warmup_ratio" in msg and "mixed_precision" in msg


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(UserError, match="choose one of: .*mrpc"):
        compose("rewind", ["task=mrcp"])


def test_missing_required_value():
    with pytest.raises(UserError, match="model.name_or_path"):
        validate(compose("rewind", ["model=local"]))


def test_experiment_overrides_groups_and_values():
    cfg = validate(compose("rewind", ["experiment=sst2_minilm", "model.name_or_path=/m"]))
    assert cfg.task.name == "sst2" and cfg.model.name_or_path == "/m" and cfg.train.lr == 5e-5
    assert cfg.task.max_train_samples == 10000


def test_yaml_round_trip():
    cfg = validate(compose("rewind", ["task=mnli", "train.lr=1e-4"]))
    again = validate(OmegaConf.create(to_yaml(cfg)), "rewind")
    assert again == cfg
