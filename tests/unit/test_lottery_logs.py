"""What pruning says in its log (per-matrix sparsity, almost-whole matrices), which sparsities
``prune method=omp|random`` trains under ``prune.target_sparsity``, and the context helpers
(model names, pasteable next-step commands)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bert_ticket_cli.config.compose import compose, validate
from bert_ticket_cli.methods.omp import chosen_sparsities, sparsity_targets
from bert_ticket_cli.workflows.context import model_args, model_is_default, name_local_model, task_args
from bert_ticket_cli.workflows.lottery import nearly_whole_warnings, sparsity_lines


def test_sparsity_lines_one_line_per_matrix_group():
    per = {f"encoder.layer.{i}.{m}.weight": v for i in range(2)
           for m, v in (("attention.self.query", 0.5 + i / 10), ("output.dense", 0.25))}
    per["pooler.dense.weight"] = 0.9999
    lines = sparsity_lines(per)
    assert len(lines) == 3
    assert lines[0].split() == ["attention.self.query", "L0", "0.5000", "L1", "0.6000"]
    assert lines[1].split() == ["output.dense", "L0", "0.2500", "L1", "0.2500"]
    assert lines[2].split() == ["pooler.dense", "0.9999"]


def test_a_matrix_pruned_almost_whole_is_named_with_what_to_do():
    warn = nearly_whole_warnings({"pooler.dense.weight": 0.9999, "encoder.layer.0.output.dense.weight": 0.5})
    assert len(warn) == 1 and "pooler.dense.weight" in warn[0] and "99.99%" in warn[0]
    assert "prune.include_pooler=false" in warn[0] and "prune.patterns" in warn[0]
    other = nearly_whole_warnings({"encoder.layer.1.attention.self.key.weight": 0.995})
    assert len(other) == 1 and "prune.patterns" in other[0]
    assert nearly_whole_warnings({"encoder.layer.1.attention.self.key.weight": 0.98}) == []


def test_omp_honours_target_sparsity():
    nine = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert chosen_sparsities(nine, None) == nine
    assert chosen_sparsities(nine, 0.5) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert chosen_sparsities([0.2, 0.8], 0.5) == [0.2, 0.5]  # the target itself is always reached
    cfg = SimpleNamespace(prune=SimpleNamespace(sparsities=nine, target_sparsity=0.3))
    assert sparsity_targets(cfg, 1000) == [0, 100, 200, 300]


def test_local_model_runs_are_named_after_the_folder(tmp_path):
    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.mkdir()
    cfg = validate(compose("rewind", ["model=local", f"model.name_or_path={folder}/"]), "rewind")
    name_local_model(cfg)
    assert cfg.model.name == "all-MiniLM-L6-v2"
    hub = validate(compose("rewind", ["model=bert-base-uncased"]), "rewind")
    name_local_model(hub)
    assert hub.model.name == "bert-base-uncased"


def test_next_step_arguments_carry_the_model_and_the_data():
    cfg = validate(compose("prune", ["task=mrpc", "task.data_dir=/data/glue/MRPC", "model.config.hidden_size=32"]),
                   "prune")
    assert task_args(cfg) == ["task=mrpc", "task.data_dir=/data/glue/MRPC"]
    assert model_args(cfg) == ["model=tiny", "model.config.hidden_size=32"]
    assert not model_is_default(cfg)
    default = validate(compose("rewind", []), "rewind")
    assert model_is_default(default) and model_args(default) == ["model=tiny"]
    local = validate(compose("rewind", ["model=local", "model.name_or_path=/m/bert"]), "rewind")
    assert model_args(local) == ["model=local", "model.name_or_path=/m/bert"]


@pytest.mark.parametrize("given", [[], ["pretrain.data.vocab_size=2000"]])
def test_pretrain_knows_which_data_settings_were_given(given):
    from bert_ticket_cli.workflows.pretraining import given_data_settings

    cfg = validate(compose("pretrain", ["pretrain.data.dir=/somewhere", *given]), "pretrain")
    assert given_data_settings(cfg) == ["dir"] + (["vocab_size"] if given else [])
