"""Config composition and validation (no training)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from bert_ticket_cli.config.compose import CONF_DIR, compose, config_groups, to_yaml, validate
from bert_ticket_cli.config.schema import SCHEMAS, RunConfig
from bert_ticket_cli.errors import UserError

REQUIRED = {("model", "local"): ["model.name_or_path=/some/dir"], ("task", "multi"): ["multitask.tasks=[sst2,rte]"]}


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


# ---- one root schema per verb, the method group, the rules, YAML = only what differs ----

def test_each_verb_has_its_own_root_schema():
    from bert_ticket_cli.config.schema import EvalRunConfig, PretrainRunConfig, PruneRunConfig

    assert isinstance(validate(compose("eval", [])), EvalRunConfig)
    assert not hasattr(validate(compose("eval", [])), "prune")
    assert isinstance(validate(compose("prune", [])), PruneRunConfig)
    assert not hasattr(validate(compose("pretrain", [])), "ticket")
    assert isinstance(validate(compose("pretrain", [])), PretrainRunConfig)
    with pytest.raises(UserError, match=r"unknown key 'prune.levels'"):
        validate(compose("eval", ["prune.levels=3"]))


def test_method_group_selects_the_method_schema():
    from bert_ticket_cli.config.schema import EarlyBertMethodConfig, MethodConfig

    cfg = validate(compose("prune", ["method=earlybert", "method.window=3", "method.l1_heads=0.5"]))
    assert isinstance(cfg.method, EarlyBertMethodConfig) and cfg.method.name == "earlybert"
    assert cfg.method.window == 3 and cfg.method.l1_heads == 0.5 and cfg.method.threshold == 0.1
    cfg = validate(compose("pretrain", ["method=earlybert", "method.check_every=2"]))
    assert cfg.method.check_every == 2
    imp = validate(compose("prune", ["method=imp"])).method
    assert type(imp) is not MethodConfig and imp.name == "imp"
    with pytest.raises(UserError, match=r"unknown key 'method.window' for method=imp"):
        validate(compose("prune", ["method=imp", "method.window=3"]))
    with pytest.raises(UserError, match=r"'method.window' must be int"):
        validate(compose("prune", ["method=earlybert", "method.window=x"]))
    again = validate(OmegaConf.create(to_yaml(validate(compose("prune", ["method=earlybert"])))), "prune")
    assert isinstance(again.method, EarlyBertMethodConfig)


def test_deprecated_earlybert_keys_in_experiment_yaml(capsys):
    raw = compose("prune", ["method=earlybert"])
    raw.prune = {"earlybert": {"window": 4}, "levels": 2}
    cfg = validate(raw, "prune")
    assert cfg.method.window == 4 and cfg.prune.levels == 2
    assert capsys.readouterr().err.strip() == "prune.earlybert.window is deprecated: use method.window"


def test_rules_run_at_validation_all_at_once():
    with pytest.raises(UserError) as e:
        validate(compose("prune", ["method=earlybert", "method.window=1", "prune.rate=2", "train.lr=-1"]))
    msg = str(e.value)
    assert "method.window must be >= 2" in msg and "prune.rate" in msg and "train.lr" in msg and "\n" not in msg
    with pytest.raises(UserError, match=r"pretrain.data.seq_length must be >= 8, got 4"):
        validate(compose("pretrain", ["pretrain.data.seq_length=4"]))
    with pytest.raises(UserError, match="method must be dense or earlybert for pretrain"):
        validate(compose("pretrain", ["method=omp"]))


def test_pretrain_durations_come_from_validated_values():
    from bert_ticket_cli.config.rules import pretrain_durations

    cfg = validate(compose("pretrain", ["pretrain.budget=90min", "pretrain.early_stop.loss=6",
                                        "pretrain.early_stop.after=1h"]))
    d = pretrain_durations(cfg)
    assert d.budget_s == 5400 and d.eval_every_s == 1800 and d.early_stop_after_s == 3600


@pytest.mark.parametrize("name,ok", [("../../escape", False), ("/tmp/x", False), ("a" * 201, False),
                                     ("a" * 200, True), (".x", False), ("-x", False), ("mrpc-tiny_s1.v+2", True)])
def test_run_name_rule(name, ok):
    from bert_ticket_cli.config.schema import RewindRunConfig
    from bert_ticket_cli.config.rules import check

    problems = check(RewindRunConfig(run_name=name), "rewind")
    assert (problems == []) == ok, problems


def test_yaml_files_keep_only_what_differs_from_the_schema():
    import yaml

    from bert_ticket_cli.config.schema import METHOD_SCHEMAS, SCHEMAS as ROOTS

    group_schemas = {"model": ROOTS["rewind"]().model, "task": ROOTS["rewind"]().task,
                     "engine": ROOTS["rewind"]().engine}
    same: list[str] = []

    def walk(values, defaults, where):
        for key, value in (values or {}).items():
            if key in ("defaults", "name") or not isinstance(defaults, dict) or key not in defaults:
                continue
            if isinstance(value, dict) and isinstance(defaults[key], dict):
                walk(value, defaults[key], f"{where}{key}.")
            elif value == defaults[key]:
                same.append(f"{where}{key}")

    for verb, schema in ROOTS.items():
        text = (CONF_DIR / f"{verb}.yaml").read_text()
        walk(yaml.safe_load(text), OmegaConf.to_container(OmegaConf.structured(schema)), f"{verb}.yaml: ")
        assert "\nverb:" not in text
    for group, default in group_schemas.items():
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            walk(yaml.safe_load(f.read_text()), OmegaConf.to_container(OmegaConf.structured(default)), f"{f.name}: ")
    for f in sorted((CONF_DIR / "experiment").glob("*.yaml")):  # @package _global_: the root's keys
        walk(yaml.safe_load(f.read_text()), OmegaConf.to_container(OmegaConf.structured(ROOTS["rewind"])), f"{f.name}: ")
    for f in sorted((CONF_DIR / "method").glob("*.yaml")):
        assert yaml.safe_load(f.read_text())["name"] in METHOD_SCHEMAS
        walk(yaml.safe_load(f.read_text()), OmegaConf.to_container(OmegaConf.structured(METHOD_SCHEMAS[f.stem])), "")
    assert same == []


def test_every_setting_has_a_one_line_doc():
    from bert_ticket_cli.config import docs
    from bert_ticket_cli.config.schema import METHOD_SCHEMAS

    missing = [f"{verb}: {key}" for verb, schema in SCHEMAS.items()
               for key, _, doc in docs.settings(schema) if not doc and key != "verb"]
    missing += [key for schema in METHOD_SCHEMAS.values() for key, _, doc in docs.settings(schema) if not doc]
    assert missing == []
