"""A lab's own configs (issue 14): ``./conf`` and ``$BERT_TICKET_CONFIG_PATH`` are composed
ahead of the packaged configs, their options listed by ``--help``; a missing folder is one
line, exit 2.  The repository's top-level ``conf/`` examples compose."""

from __future__ import annotations

import os

import yaml

from tests.conftest import REPO, cli


def _write(folder, rel, text):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _cfg(*args, **kw) -> dict:
    r = cli("rewind", "--cfg", *args, **kw)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_local_conf_and_config_path_come_ahead_of_the_packaged_configs(tmp_path):
    lab, site, work = tmp_path / "lab", tmp_path / "site", tmp_path / "work"
    # ./conf: a new experiment, and a model file of a packaged option's name (it wins)
    _write(work, "conf/experiment/lab_exp.yaml", "# @package _global_\n# bert-ticket rewind experiment=lab_exp\n"
           "defaults:\n  - override /model: lab_model\ntrain:\n  lr: 0.125\nseed: 7\n")
    _write(work, "conf/model/tiny.yaml", "# bert-ticket rewind model=tiny\nname: tiny-from-cwd\n")
    _write(work, "conf/model/lab_model.yaml", "# bert-ticket rewind model=lab_model\nname: from-cwd\n")
    # BERT_TICKET_CONFIG_PATH=lab:site: lab's files win over site's, both over ./conf
    _write(lab, "model/lab_model.yaml", "# bert-ticket rewind model=lab_model\nname: from-lab\n")
    _write(site, "model/lab_model.yaml", "# bert-ticket rewind model=lab_model\nname: from-site\n")
    _write(site, "engine/site_gpu.yaml", "# bert-ticket rewind engine=site_gpu\nname: cpu\nnum_workers: 3\n")

    cfg = _cfg("experiment=lab_exp", cwd=work)
    assert (cfg["train"]["lr"], cfg["seed"], cfg["model"]["name"]) == (0.125, 7, "from-cwd")
    assert _cfg(cwd=work)["model"]["name"] == "tiny-from-cwd"  # the default model=tiny, replaced
    assert _cfg(cwd=tmp_path)["model"]["name"] == "tiny"  # no ./conf here: the packaged one

    env = {"BERT_TICKET_CONFIG_PATH": os.pathsep.join([str(lab), str(site)])}
    cfg = _cfg("experiment=lab_exp", "engine=site_gpu", cwd=work, env=env)
    assert cfg["model"]["name"] == "from-lab" and cfg["engine"]["num_workers"] == 3 and cfg["seed"] == 7

    # --help lists the options of every searched folder
    r = cli("rewind", "--help", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    groups = r.stdout.split("Config groups")[1].split("Settings (")[0]
    assert "lab_exp" in groups and "lab_model" in groups and "site_gpu" in groups and "demo" in groups
    assert str(lab) in groups and str(work / "conf") in groups
    assert "lab_exp" not in cli("rewind", "--help", cwd=tmp_path).stdout  # computed where it is shown

    r = cli("rewind", "engine=nosuch", cwd=work, env=env)  # choices come from every folder
    assert r.returncode == 2 and "site_gpu" in r.stderr


def test_a_missing_config_path_folder_is_one_line_exit_2(tmp_path):
    env = {"BERT_TICKET_CONFIG_PATH": os.pathsep.join([str(tmp_path), str(tmp_path / "nope")])}
    r = cli("rewind", "--cfg", env=env, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "nope is not a folder" in lines[0], r.stderr
    assert "BERT_TICKET_CONFIG_PATH" in lines[0]


def test_the_repository_conf_examples_compose():
    cfg = _cfg("experiment=my_lab_sst2", cwd=REPO)
    assert cfg["model"]["name"] == "bert-base-lab" and cfg["task"]["name"] == "sst2"
    assert cfg["tracking"]["log_with"] == ["tensorboard"]
    r = cli("prune", "method=imp", "experiment=my_lab_sst2", "--cfg", cwd=REPO)
    assert r.returncode == 0, r.stderr
