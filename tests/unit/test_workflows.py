"""The method registry and the resumable stage loop, without training anything."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bert_ticket_cli.artifacts.paths import TRAINER_STATE, RunDir
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods import registry
from bert_ticket_cli.workflows.stages import run_stages


def test_registry_names_every_method_and_refuses_the_others():
    assert registry.names() == ["imp", "omp", "random", "earlybert", "super_tickets"]
    assert {registry.get(n).workflow for n in registry.names()} == {"lottery", "earlybert", "super_tickets"}
    assert all(registry.get(n).name == n for n in registry.names())
    with pytest.raises(UserError, match=r"prune needs method=imp\|omp\|random\|earlybert\|super_tickets "
                                        r"\(got method=dense\)"):
        registry.get("dense")


def test_level_methods_give_their_targets():
    cfg = SimpleNamespace(prune=SimpleNamespace(levels=3, target_sparsity=None, rate=0.1, schedule="linear",
                                                sparsities=[0.5, 0.9]))
    assert registry.get("imp").targets(cfg, 1000) == [0, 100, 200, 300]
    assert registry.get("omp").targets(cfg, 1000) == [0, 500, 900]
    assert registry.get("random").targets(cfg, 1000) == [0, 500, 900]


def _finished(rd: RunDir, record: dict) -> None:
    rd.root.mkdir(parents=True)
    rd.summary.write_text(json.dumps(record))


def _interrupted(rd: RunDir, step: int) -> None:
    ckpt = rd.checkpoint(step)
    ckpt.mkdir(parents=True)
    (ckpt / TRAINER_STATE).write_text("{}")


def test_stage_loop_skips_finished_refuses_interrupted_and_resumes(tmp_path):
    root = RunDir(tmp_path / "run")
    a, b, c = root.stage("a"), root.stage("b"), root.stage("c")
    _finished(a, {"stage": "a"})
    _interrupted(b, 7)
    calls = []

    def train(key, srd, resume):
        calls.append((key, resume.name if resume else None))
        return {"stage": key}

    run = SimpleNamespace(cfg=SimpleNamespace(resume=False), session=SimpleNamespace(check_stop=lambda where: None))
    with pytest.raises(UserError, match=r"stages/b was interrupted \(checkpoint step-00000007\): pass resume=true"):
        run_stages(run, [("a", a), ("b", b), ("c", c)], train)
    assert calls == []
    run.cfg.resume = True
    records = run_stages(run, [("a", a), ("b", b), ("c", c)], train)
    assert calls == [("b", "step-00000007"), ("c", None)]
    assert records == {"a": {"stage": "a"}, "b": {"stage": "b"}, "c": {"stage": "c"}}
