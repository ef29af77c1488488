"""EarlyBERT pieces: slimming coefficients, drawing a structured ticket, the early-bird detector,
the search hook's replay after a resume."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.earlybert import (
    EarlyBird, distance_matrices, draw_ticket, hamming, prune_lowest, ticket_distance,
)
from bert_ticket_cli.model.compact import compact_
from bert_ticket_cli.model.slimming import Slimming

CFG = dict(vocab_size=50, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=30,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)


def _model(attn="sdpa", seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**CFG, attn_implementation=attn)).eval()


def _batch(labels=True):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 50, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels:
        out["labels"] = torch.tensor([0, 1, 1, 0])
    return out


# --------------------------------------------------------------------------- slimming

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_coefficients_at_one_change_nothing_and_at_zero_remove_the_unit(attn):
    plain, slim_model = _model(attn), _model(attn)
    slim = Slimming(slim_model)
    x = _batch(labels=False)
    with torch.no_grad():
        assert torch.allclose(plain(**x).logits, slim_model(**x).logits, atol=1e-6)
    heads = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    neurons = torch.rand(2, 30, generator=torch.Generator().manual_seed(1)) > 0.4
    with torch.no_grad():  # c = 0 on a unit == that unit pruned (the compacted model)
        for p, keep in zip(slim.heads, heads):
            p.copy_(keep.float())
        for p, keep in zip(slim.neurons, neurons):
            p.copy_(keep.float())
        small = compact_(_model(attn), heads, neurons)
        assert torch.allclose(slim_model(**x).logits, small(**x).logits, atol=1e-5)
        for p in slim.heads:  # a coefficient scales its head's output: c = 2 doubles the head
            p.fill_(2.0)
        doubled = _model(attn)
        for layer in doubled.bert.encoder.layer:
            layer.attention.output.dense.weight.mul_(2)
        for p in slim.neurons:
            p.fill_(1.0)
        assert torch.allclose(slim_model(**x).logits, doubled(**x).logits, atol=1e-5)


def test_coefficients_get_gradients_and_l1_shrinks_them():
    def train(l1: float) -> tuple[float, list]:
        model = _model(seed=1).train()
        slim = Slimming(model, l1_heads=l1, l1_neurons=l1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        grads = []
        for _ in range(20):
            loss = model(**_batch()).loss + slim.penalty()
            loss.backward()
            grads = [p.grad.clone() for p in slim.heads + slim.neurons]
            opt.step()
            opt.zero_grad()
        h, n = slim.scores()
        return float(h.sum() + n.sum()), grads

    free, grads = train(0.0)
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)  # the task loss reaches every c
    shrunk, _ = train(0.5)
    assert shrunk < free - 0.5 * 0.05 * 20 * 0.5  # the L1 pull adds up over the steps


def test_penalty_value_and_remove():
    model = _model()
    slim = Slimming(model, l1_heads=0.1, l1_neurons=0.01)
    with torch.no_grad():
        slim.heads[0][0] = -3.0
    expected = 0.1 * (2 * 6 - 1 + 3) + 0.01 * 2 * 30
    assert slim.penalty().item() == pytest.approx(expected)
    assert any(k.endswith("slim_heads") for k in model.state_dict())
    slim.remove()
    assert not any("slim_" in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(**_batch(False)).logits, _model()(**_batch(False)).logits)
    with pytest.raises(ValueError):
        Slimming(model), Slimming(model)


# --------------------------------------------------------------------------- drawing

def test_layer_and_global_counts_are_exact():
    g = torch.Generator().manual_seed(0)
    heads, neurons = draw_ticket(torch.rand(12, 12, generator=g), torch.rand(12, 3072, generator=g))
    assert heads.sum(1).tolist() == [8] * 12  # 4 of 12 removed in every layer
    assert int((~neurons).sum()) == round(0.4 * 12 * 3072)  # 40% over all layers
    glob_heads, layer_neurons = draw_ticket(torch.rand(3, 12, generator=g), torch.rand(3, 10, generator=g),
                                            head_fraction=0.25, neuron_fraction=0.35, head_scope="global",
                                            neuron_scope="layer")
    assert int((~glob_heads).sum()) == 9
    assert (~layer_neurons).sum(1).tolist() == [4, 4, 4]  # round-half-up(3.5)


def test_ranking_is_by_magnitude_and_ties_prune_the_lower_index():
    scores = torch.tensor([[0.5, -0.9, 0.1, 0.5]])
    assert prune_lowest(scores.abs(), 0.5, "layer").tolist() == [[False, True, False, True]]  # tie: lower index out
    heads, _ = draw_ticket(scores, torch.ones(1, 4), head_fraction=0.25, neuron_fraction=0.0)
    assert heads.tolist() == [[True, True, False, True]]  # -0.9 is large, so it is kept
    with pytest.raises(UserError):
        prune_lowest(scores, 1.0, "layer")
    with pytest.raises(UserError):
        prune_lowest(scores, 0.5, "block")


# --------------------------------------------------------------------------- early bird

def _ticket(flip: int, size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads all kept; the first ``flip`` of ``size`` neurons pruned."""
    neurons = torch.ones(1, size, dtype=torch.bool)
    neurons[0, :flip] = False
    return torch.ones(1, 4, dtype=torch.bool), neurons


def test_distances():
    a, b = _ticket(2), _ticket(5)
    assert hamming(a[1], b[1]) == pytest.approx(3 / 20)
    heads_changed = (torch.tensor([[True, False, True, True]]), a[1])
    assert ticket_distance(a, heads_changed) == pytest.approx(0.25)  # the larger of heads / neurons
    m = distance_matrices([a, b, heads_changed])
    assert m["distance"][0][0] == 0 and m["distance"][0][1] == m["distance"][1][0] == pytest.approx(0.15)
    assert m["distance_heads"][0][2] == pytest.approx(0.25) and m["distance_neurons"][0][2] == 0


def test_detector_fires_on_the_first_stable_window_and_not_before():
    # the mask drifts (0.15 per check), then settles: 12, 13, 13, 14, 14 are within 0.1 of 14
    flips = [0, 3, 6, 9, 12, 13, 13, 14, 14, 14]
    bird = EarlyBird(window=5, threshold=0.1)
    fired = [bird.push(_ticket(f)) for f in flips]
    assert fired.index(True) == 8  # window [12, 13, 13, 14, 14] is the first stable one
    assert not any(fired[:8])
    short = EarlyBird(window=5, threshold=0.1)
    assert not any(short.push(_ticket(0)) for _ in range(4))  # identical, but the window is not full
    assert short.push(_ticket(0))
    with pytest.raises(UserError):
        EarlyBird(window=1)
    with pytest.raises(UserError):
        EarlyBird(threshold=1.5)


def test_search_hook_replays_its_checks_after_a_resume(tmp_path):
    from bert_ticket_cli.methods.earlybert_search import EarlyBirdSearch, load_checks, save_checks
    from bert_ticket_cli.config.schema import EarlyBertMethodConfig

    store = tmp_path / "checks.safetensors"
    flips = [0, 3, 6, 9, 12, 13, 13, 14, 14, 14]
    checks = [(2 * (i + 1), *_ticket(f)) for i, f in enumerate(flips)]
    save_checks(store, checks)
    assert [c[0] for c in load_checks(store, up_to=7)] == [2, 4, 6]

    class FakeSlim:
        def scores(self):
            return torch.ones(1, 4), torch.arange(20, dtype=torch.float32)[None]

    eb = EarlyBertMethodConfig(check_every=2, window=5, threshold=0.1, head_fraction=0.0, neuron_fraction=0.7)
    early = EarlyBirdSearch(FakeSlim(), eb, store, start_step=12, main=True)  # checks after step 12 dropped
    assert len(early.checks) == 6 and early.found_at is None and not early.stop_training
    late = EarlyBirdSearch(FakeSlim(), eb, store, start_step=20, main=False)
    assert late.found_at == 18 and late.stop_training  # found in the replay: the search ends now
    heads, neurons = late.finish()
    assert int((~neurons).sum()) == 14  # the ticket of the early bird, not a new draw
    early.after_step(None)  # step 13: no check
    early.after_step(None)  # step 14: a check with FakeSlim's scores (14 lowest pruned)
    assert early.checks[-1][0] == 14 and int((~early.checks[-1][2]).sum()) == 14
    assert [c[0] for c in load_checks(store)] == [2, 4, 6, 8, 10, 12, 14]  # the store follows
