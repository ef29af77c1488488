"""Pure parts of the engine and the run records: batch order, batch plans, schedule, records, index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from bert_ticket_cli.artifacts.index import build_index, query
from bert_ticket_cli.artifacts.paths import RunDir, atomic_write_json
from bert_ticket_cli.artifacts.records import config_differences
from bert_ticket_cli.config.schema import TrainConfig
from bert_ticket_cli.engine.batches import StepBatches, epoch_order, steps_per_epoch
from bert_ticket_cli.engine.loop import make_schedule, param_groups, total_steps
from bert_ticket_cli.engine.setup import plan_batches
from bert_ticket_cli.errors import UserError
from tests.unit.test_enforce import fresh_accelerate_state, restore_signals, tiny_model  # noqa: F401 (fixtures)


def _step_sets(world: int, micro: int, n=100, B=16, steps=6, start=0, order=None):
    """Examples seen in each optimizer step, over all ranks."""
    order = epoch_order(n, 1, 2) if order is None else order
    per_rank = [list(StepBatches(order, global_batch=B, micro_batch=micro, world_size=world, rank=r,
                                  steps=steps, start_step=start)) for r in range(world)]
    accum = B // (micro * world)
    out = []
    for s in range(steps - start):
        seen = []
        for r in range(world):
            for a in range(accum):
                seen += per_rank[r][s * accum + a]
        out.append(sorted(seen))
    return out


def test_each_step_sees_the_same_examples_whatever_the_process_count():
    ref = _step_sets(1, 16)
    assert _step_sets(2, 8) == ref == _step_sets(4, 2) == _step_sets(1, 4)
    flat = [i for s in ref for i in s]
    assert len(flat) == len(set(flat)) == 96  # no example twice within an epoch


def test_resuming_mid_epoch_continues_the_same_order():
    assert _step_sets(2, 4, start=3) == _step_sets(2, 4)[3:]


LENGTHS = np.random.default_rng(5).integers(4, 120, size=1000)


def test_length_grouped_order_is_a_pure_permutation_with_similar_lengths_per_batch():
    from bert_ticket_cli.engine.batches import length_grouped_order

    order = length_grouped_order(LENGTHS, 16, seed=1, epoch=2, mega=10)
    assert sorted(order.tolist()) == list(range(1000))  # every row once: a permutation
    assert np.array_equal(order, length_grouped_order(LENGTHS, 16, seed=1, epoch=2, mega=10))  # pure
    assert not np.array_equal(order, length_grouped_order(LENGTHS, 16, seed=1, epoch=3, mega=10))
    batches = LENGTHS[order[:62 * 16]].reshape(62, 16)
    plain = LENGTHS[epoch_order(1000, 1, 2)[:62 * 16]].reshape(62, 16)
    # the padding a batch needs: longest minus mean; grouped batches need a fraction of it
    waste = (batches.max(1) - batches.mean(1)).mean()
    assert waste < 0.2 * (plain.max(1) - plain.mean(1)).mean()
    firsts = batches.max(1)
    assert not np.all(np.diff(firsts) <= 0)  # the batches are shuffled, not sorted longest first


def test_length_grouped_steps_are_the_same_for_every_process_count_and_resume():
    from bert_ticket_cli.engine.batches import length_grouped_order

    order = length_grouped_order(LENGTHS[:100], 16, seed=1, epoch=2)
    ref = _step_sets(1, 16, order=order)
    assert _step_sets(2, 8, order=order) == ref == _step_sets(4, 2, order=order) == _step_sets(1, 4, order=order)
    assert _step_sets(2, 4, start=3, order=order) == _step_sets(2, 4, order=order)[3:]


def test_epochs_are_different_permutations():
    a = list(StepBatches(epoch_order(50, 0, 0), global_batch=10, micro_batch=10, world_size=1, rank=0, steps=5))
    b = list(StepBatches(epoch_order(50, 0, 1), global_batch=10, micro_batch=10, world_size=1, rank=0, steps=5))
    assert a != b and sorted(sum(a, [])) == sorted(sum(b, [])) == list(range(50))


def test_batch_plan():
    p = plan_batches(TrainConfig(batch_size=32, micro_batch_size=4), world_size=2)
    assert (p.micro_batch, p.accumulation) == (4, 4)
    assert plan_batches(TrainConfig(batch_size=32), world_size=4).micro_batch == 8
    with pytest.raises(UserError, match="multiple"):
        plan_batches(TrainConfig(batch_size=30, micro_batch_size=4), world_size=2)


def test_steps_and_too_small_data():
    plan = plan_batches(TrainConfig(batch_size=32), 1)
    assert steps_per_epoch(100, plan.global_batch) == 3
    assert total_steps(TrainConfig(epochs=2.5), 10) == 25 and total_steps(TrainConfig(max_steps=7), 10) == 7
    with pytest.raises(UserError, match="fewer than one global batch"):
        steps_per_epoch(31, plan.global_batch)


def test_linear_schedule_with_warmup_reaches_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(opt, TrainConfig(warmup_steps=4, lr=1.0), total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[3] == pytest.approx(0.8) and lrs[4] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[4:]) < 0) and sched.get_last_lr()[0] == 0.0


def test_no_weight_decay_on_bias_and_layernorm():
    from transformers import BertConfig, BertForSequenceClassification

    m = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, vocab_size=50))
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


def test_config_differences_ignore_run_control_keys():
    a = {"seed": 1, "resume": False, "train": {"lr": 1.0}, "engine": {"name": "cpu"}}
    b = {"seed": 1, "resume": True, "train": {"lr": 2.0}, "engine": {"name": "ddp"}}
    assert config_differences(a, b) == ["train.lr"]


def test_checkpoint_listing_ignores_incomplete_folders(tmp_path):
    rd = RunDir(tmp_path)
    (rd.checkpoint(10)).mkdir(parents=True)
    atomic_write_json(rd.checkpoint(10) / "trainer_state.json", {})
    (rd.checkpoint(20)).mkdir()  # crashed while writing: no trainer_state.json
    (rd.checkpoints / ".tmp-step-00000030").mkdir()
    assert rd.latest_checkpoint() == rd.checkpoint(10)


def _summary(root, name, **kw):
    d = root / "rewind" / name
    d.mkdir(parents=True)
    rec = {"verb": "rewind", "run_name": name, "task": "mrpc", "seed": 1, "metrics": {"f1": 0.8}, **kw}
    (d / "summary.json").write_text(json.dumps(rec))


def test_index_rebuild_and_filters(tmp_path):
    _summary(tmp_path, "a", seed=1)
    _summary(tmp_path, "b", seed=2, task="rte", metrics={"accuracy": 0.6})
    (tmp_path / "rewind" / "broken").mkdir()
    (tmp_path / "rewind" / "broken" / "summary.json").write_text("{half")  # being written: skipped
    index = build_index(tmp_path)
    assert {r["run_name"] for r in query(index, [])} == {"a", "b"}
    assert [r["run_name"] for r in query(index, ["task=rte"])] == ["b"]
    assert [r["run_name"] for r in query(index, ["seed=1", "metrics.f1=0.8"])] == ["a"]
    _summary(tmp_path, "c")
    assert len(query(build_index(tmp_path), [])) == 3  # rebuilt, not appended
    with pytest.raises(UserError):
        query(index, ["nonsense"])


def test_budget_loop_resumes_from_a_checkpoint_at_an_epoch_end(tmp_path, restore_signals, fresh_accelerate_state):
    """A checkpoint written after an epoch's last step (epoch e, step_in_epoch = steps per epoch)
    resumes into epoch e+1 and gives the uninterrupted run's losses and weights."""
    from datasets import Dataset

    from bert_ticket_cli.config.schema import EngineConfig
    from bert_ticket_cli.engine.budget import Budget, fit_budget
    from bert_ticket_cli.engine.setup import make_accelerator

    g = torch.Generator().manual_seed(0)
    dataset = Dataset.from_dict({"input_ids": torch.randint(5, 100, (8, 6), generator=g).tolist(),
                                 "attention_mask": torch.ones(8, 6, dtype=torch.long).tolist(),
                                 "labels": torch.randint(0, 2, (8,), generator=g).tolist()})

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}

    train = TrainConfig(batch_size=4, lr=1e-2, log_every=1, keep_checkpoints=5)  # 2 steps per epoch
    plan = plan_batches(train, world_size=1)

    def run(name: str, resume=None):
        result = fit_budget(accelerator=make_accelerator(EngineConfig(cpu=True), train, plan), model=tiny_model(),
                            train_dataset=dataset, collate=collate, train=train, plan=plan,
                            budget=Budget(seconds=3600, clock="steps", max_steps=5, save_every_steps=2), seed=0,
                            run=RunDir(tmp_path / name), evaluate=None, shuffle_chunk=3, resume_from=resume)
        records = map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
        losses = {r["step"]: r["loss"] for r in records}
        return result, losses

    straight, straight_losses = run("straight")
    first = RunDir(tmp_path / "straight").checkpoint(2)
    assert json.loads((first / "trainer_state.json").read_text())["step_in_epoch"] == 2
    (tmp_path / "resumed").mkdir()  # the same run, continued in another folder: it carries the run's id
    shutil.copy(tmp_path / "straight" / "run_id", tmp_path / "resumed" / "run_id")
    resumed, resumed_losses = run("resumed", resume=first)
    assert resumed.state.step == straight.state.step == 5 and resumed.stop_reason == "max_steps"
    assert resumed_losses == {s: straight_losses[s] for s in (3, 4, 5)}
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
