"""Multi-task learning with shared tickets: the task order, per-task masks equal the
single-task masked model, and what gets gradient."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bert_ticket_cli.engine.batches import StepBatches, grouped_order
from bert_ticket_cli.model.gates import mask_structure
from bert_ticket_cli.model.multitask import MultiTaskBert

CFG = dict(vocab_size=60, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# ------------------------------------------------------------------------------ the task order

def test_proportional_order_takes_every_batch_of_every_task_once():
    sizes, G = [70, 33, 100], 8
    order, groups = grouped_order(sizes, G, seed=1, epoch=0)
    assert len(groups) == 70 // 8 + 33 // 8 + 100 // 8 and len(order) == len(groups) * G
    offsets = [0, 70, 103]
    for step, g in enumerate(groups):
        rows = order[step * G:(step + 1) * G]
        assert ((rows >= offsets[g]) & (rows < offsets[g] + sizes[g])).all()  # one task per batch
    for g in range(3):
        rows = np.concatenate([order[s * G:(s + 1) * G] for s, x in enumerate(groups) if x == g])
        assert len(set(rows.tolist())) == len(rows) == sizes[g] // G * G  # no row twice in the epoch
    again, _ = grouped_order(sizes, G, seed=1, epoch=0)
    other, _ = grouped_order(sizes, G, seed=1, epoch=1)
    assert np.array_equal(order, again) and not np.array_equal(order, other)


def test_the_order_is_the_same_for_any_process_count():
    order, _ = grouped_order([64, 48], 16, seed=3, epoch=2)
    steps = len(order) // 16
    one = list(StepBatches(order, global_batch=16, micro_batch=16, world_size=1, rank=0, steps=steps))
    two = [list(StepBatches(order, global_batch=16, micro_batch=8, world_size=2, rank=r, steps=steps)) for r in (0, 1)]
    for s in range(steps):
        assert sorted(one[s]) == sorted(two[0][s] + two[1][s])
    resumed = list(StepBatches(order, global_batch=16, micro_batch=16, world_size=1, rank=0, steps=steps, start_step=2))
    assert resumed == one[2:]


@pytest.mark.parametrize("sampling,expected", [("uniform", [0.5, 0.5]), ("temperature", [2 / 3, 1 / 3])])
def test_uniform_and_temperature_sampling(sampling, expected):
    sizes = [4000, 1000]  # temperature 2: sqrt(4000) : sqrt(1000) = 2 : 1
    counts = np.zeros(2)
    for epoch in range(5):
        order, groups = grouped_order(sizes, 10, seed=0, epoch=epoch, sampling=sampling, temperature=2.0)
        counts += np.bincount(groups, minlength=2)
        assert len(groups) == 500
        for step, g in enumerate(groups):
            rows = order[step * 10:(step + 1) * 10]
            assert ((rows >= (0 if g == 0 else 4000)) & (rows < (4000 if g == 0 else 5000))).all()
    assert np.allclose(counts / counts.sum(), expected, atol=0.03)


# ------------------------------------------------------------------------------ masks

def _single(seed=0, num_labels=3):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**CFG, num_labels=num_labels)).eval()


def _ticket(seed):
    g = torch.Generator().manual_seed(seed)
    heads = torch.rand(3, 4, generator=g) > 0.4
    heads[:, 0] = True
    layers = torch.tensor([True, False, True])
    neurons = layers[:, None] & (torch.rand(3, 40, generator=g) > 0.3)
    return heads, neurons, layers


def _mtl(tickets):
    single = _single()
    model = MultiTaskBert(copy.deepcopy(single.bert), {"a": 3, "b": 1}, tickets).eval()
    with torch.no_grad():
        model.heads["a"].weight.copy_(single.classifier.weight)
        model.heads["a"].bias.copy_(single.classifier.bias)
    return model, single


def _batch(task, n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"task": torch.full((n,), task), "input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, 3, (n,), generator=g)}


def test_a_task_batch_computes_the_single_task_masked_model():
    ta, tb = _ticket(1), _ticket(2)
    model, single = _mtl({"a": ta, "b": tb})
    gates = mask_structure(single, *ta)
    batch = _batch(0)
    with torch.no_grad():
        want = single(**{k: v for k, v in batch.items() if k != "task"})
        model(**_batch(1))  # another task's batch in between leaves nothing behind
        got = model(**batch)
    assert torch.allclose(got.logits, want.logits, atol=1e-6) and torch.allclose(got.loss, want.loss, atol=1e-6)
    gates.remove()
    with torch.no_grad():  # the dense single model differs: the ticket was applied
        assert not torch.allclose(single.bert(**{k: batch[k] for k in ("input_ids", "attention_mask")}).pooler_output,
                                  model.bert(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"]).pooler_output, atol=1e-4)


def test_a_dense_task_is_the_plain_model():
    model, single = _mtl({"b": _ticket(2)})
    batch = _batch(0)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, single(**{k: v for k, v in batch.items() if k != "task"}).logits,
                              atol=1e-6)


def test_gradients_only_where_the_task_ticket_keeps_the_weights():
    ta, tb = _ticket(1), _ticket(2)
    ta[0][1, 2] = tb[0][1, 2] = False  # head 2 of layer 1: kept by no task
    model, _ = _mtl({"a": ta, "b": tb})
    model.train()
    layer1 = model.bert.encoder.layer[1]
    rows = slice(2 * 12, 3 * 12)  # head 2's query rows (head size 48 / 4)
    for task in (0, 1):
        model.zero_grad(set_to_none=True)
        model(**_batch(task)).loss.backward()
        assert not layer1.attention.self.query.weight.grad[rows].any()  # no task keeps it: no gradient
        assert not layer1.attention.output.dense.weight.grad[:, rows].any()
        idle = model.heads["b" if task == 0 else "a"]
        assert idle.weight.grad is None  # the other task's head is not in the graph
        mine = ta if task == 0 else tb
        removed = torch.nonzero(~mine[0][0]).flatten().tolist()  # heads task drops in layer 0
        q0 = model.bert.encoder.layer[0].attention.self.query.weight.grad
        for h in removed:
            assert not q0[h * 12:(h + 1) * 12].any()
        kept = torch.nonzero(mine[0][0]).flatten().tolist()
        assert any(q0[h * 12:(h + 1) * 12].any() for h in kept)
        assert not model.bert.encoder.layer[1].output.dense.weight.grad.any()  # FFN of layer 1 removed for both
    assert model.kept_fraction("a") < 1.0


def test_regression_head_uses_mse():
    model, _ = _mtl({})
    batch = _batch(1)
    batch["labels"] = torch.tensor([0.5, 2.0, 4.0])
    out = model(**batch)
    assert out.logits.shape == (3, 1)
    assert torch.allclose(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), batch["labels"]))
