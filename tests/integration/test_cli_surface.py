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


# ---- in-process: each verb's help, schema and rules (no separate process needed) ----

def _invoke(*args: str, env: dict[str, str] | None = None):
    from typer.testing import CliRunner

    from bert_ticket_cli.cli import app

    return CliRunner().invoke(app, list(args), prog_name="bert-ticket", env=env)


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.stderr)
    return lines[0]


@pytest.mark.parametrize("verb,has,lacks", [
    ("prune", ["prune.levels=9", "method.window=5", "IMP: pruning rounds", "train.lr=", "Peak learning rate"],
     ["ticket.path", "transfer.", "pretrain."]),
    ("rewind", ["ticket.path=null", "ticket.variant=winning", "train.lr="], ["prune.", "transfer.", "pretrain.", "method.window"]),
    ("transfer", ["transfer.tickets=[]", "ticket.path=null"], ["prune.", "pretrain."]),
    ("pretrain", ["pretrain.budget=24h", "pretrain.data.seq_length=128", "method.l1_heads="], ["ticket.", "transfer.", "prune."]),
    ("eval", ["eval.checkpoint=null", "task.name="], ["prune.", "pretrain.", "transfer.", "ticket.", "method"]),
    ("report", ["view=runs", "format=table", "Root folder searched"], ["train.", "task.name"]),
])
def test_each_verb_help_lists_its_own_settings_one_line_each(verb, has, lacks):
    r = _invoke(verb, "--help")
    assert r.exit_code == 0, r.output
    for text in has:
        assert text in r.output, text
    settings = r.output.split("Settings (")[1]
    keys = [l.split("=")[0].strip() for l in settings.splitlines() if l.startswith("    ") and "=" in l]
    assert len(keys) == len(set(keys)) > 5  # one line per key
    for prefix in lacks:
        assert not [k for k in keys if k.startswith(prefix)], prefix


def test_help_lists_methods_views_and_keeps_brackets():
    prune = _invoke("prune", "--help").output
    assert "method=imp|omp|random|earlybert|super_tickets" in prune and "not yet available" not in prune
    assert "method.ffn_unit=layer" in prune and "method.l1_heads=0.0001" in prune
    assert "method=dense|earlybert" in _invoke("pretrain", "--help").output
    report = _invoke("report", "--help").output
    assert "view=runs|tickets|earlybert|pretrain" in report and "columns=[metrics.f1]" in report
    assert "pretrain.data.corpus=[corpus/]" in _invoke("pretrain", "--help").output


def test_top_level_help_advertises_only_what_exists():
    r = _invoke("--help")
    assert r.exit_code == 0 and "super tickets" in r.output.lower()
    assert "--install-completion" in r.output and "--show-completion" in r.output


def test_shell_completion(monkeypatch):
    # Typer otherwise detects the parent shell, which under make is sh (no completion script):
    # its own test switch makes --show-completion take the shell as its value.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = _invoke("--show-completion", "bash")
    assert r.exit_code == 0 and "_BERT_TICKET_COMPLETE=complete_bash" in r.output and "complete " in r.output
    env = {"_BERT_TICKET_COMPLETE": "complete_bash", "COMP_WORDS": "bert-ticket prune method=ear", "COMP_CWORD": "2"}
    assert _invoke(env=env).output.split() == ["method=earlybert"]
    env["COMP_WORDS"] = "bert-ticket eval prune.le"
    assert _invoke(env=env).output.split() == []


@pytest.mark.parametrize("verb,sections,absent", [
    ("eval", {"eval", "train", "task"}, {"prune", "pretrain", "transfer", "ticket", "method"}),
    ("rewind", {"ticket", "method"}, {"prune", "pretrain", "transfer"}),
    ("prune", {"prune", "method"}, {"ticket", "pretrain", "transfer"}),
    ("transfer", {"transfer", "ticket", "method"}, {"prune", "pretrain"}),
    ("pretrain", {"pretrain", "method"}, {"ticket", "prune", "transfer"}),
])
def test_cfg_shows_only_the_verbs_sections(verb, sections, absent):
    r = _invoke(verb, "--cfg")
    assert r.exit_code == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert sections <= set(cfg) and not absent & set(cfg)


@pytest.mark.parametrize("args,needle", [
    (["eval", "prune.levels=3"], "unknown key 'prune.levels'"),
    (["eval", "method=imp"], "unknown key 'method'"),
    (["pretrain", "ticket.path=x"], "unknown key 'ticket.path'"),
    (["prune", "method=imp", "method.window=3"], "unknown key 'method.window' for method=imp"),
    (["prune", "method=earlybert", "method.windw=3"], "did you mean 'method.window'"),
])
def test_keys_of_other_verbs_and_methods_are_errors(args, needle):
    assert needle in _one_error_line(_invoke(*args))


def test_every_rule_problem_in_one_line_before_anything_starts(tmp_path):
    line = _one_error_line(_invoke("prune", "method=earlybert", "method.window=1", "prune.rate=2",
                                   f"output_dir={tmp_path}"))
    assert "method.window must be >= 2" in line and "prune.rate must be in (0, 1)" in line
    assert not (tmp_path / "prune").exists()
    line = _one_error_line(_invoke("pretrain", "pretrain.data.seq_length=4", "pretrain.budget=soon", "method=imp"))
    assert "pretrain.data.seq_length must be >= 8" in line and "pretrain.budget" in line and "method must be" in line


def test_deprecated_earlybert_keys_still_work_with_one_line():
    r = _invoke("pretrain", "--cfg", "method=earlybert", "prune.earlybert.window=3")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip().splitlines() == ["prune.earlybert.window is deprecated: use method.window"]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["method"]["name"] == "earlybert" and cfg["method"]["window"] == 3 and "prune" not in cfg


@pytest.mark.parametrize("name", ["../../escape", "/tmp/x", "a" * 300, ".hidden", "-dash", "a/b", "sp ace"])
def test_run_name_is_one_safe_folder_name(name):
    assert "run_name" in _one_error_line(_invoke("rewind", f"run_name={name}"))


def test_a_safe_run_name_is_accepted():
    r = _invoke("rewind", "--cfg", "run_name='lr=2e-5+seed_3.v-1'")  # Hydra: quote a value with '='
    assert r.exit_code == 0 and yaml.safe_load(r.stdout)["run_name"] == "lr=2e-5+seed_3.v-1"
