"""Super tickets: the importance the gates measure, the nested tickets of every kind, and the
compacted model with whole FFN sub-layers removed."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.super_tickets import counts, level_fractions, nested_tickets, normalize_heads
from bert_ticket_cli.model.compact import compact_, compact_sizes, load_compact, structure_params
from bert_ticket_cli.model.gates import ImportanceProbe, mask_structure

CFG = dict(vocab_size=60, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def _model(attn="eager", seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**CFG, attn_implementation=attn)).eval()


def _batch(n=3, seq=11, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (n, seq), generator=g)
    mask = torch.ones_like(ids)
    if seq > 8:
        mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


# ------------------------------------------------------------------------------ importance

def _probe_scores(model, batches, ffn_unit="layer"):
    for p in model.parameters():
        p.requires_grad_(False)
    probe = ImportanceProbe(model, ffn_unit=ffn_unit)
    for batch in batches:
        model(**batch).loss.backward()
        probe.accumulate()
    probe.remove()
    return probe.scores()


def _token_products(model, batch):
    """Independently: keep the context vectors and FFN outputs, backprop, and sum the per-token
    products <ctx_h, dL/dctx_h> (and <o_l, dL/do_l>) over the batch's tokens."""
    ctx, out, handles = {}, {}, []
    for i, layer in enumerate(model.bert.encoder.layer):
        def keep_ctx(_m, args, i=i):
            args[0].retain_grad()
            ctx[i] = args[0]

        def keep_out(_m, _args, o, i=i):
            o.retain_grad()
            out[i] = o

        handles.append(layer.attention.output.dense.register_forward_pre_hook(keep_ctx))
        handles.append(layer.output.dense.register_forward_hook(keep_out))
    model.zero_grad()
    model(**batch).loss.backward()
    for h in handles:
        h.remove()
    heads = torch.stack([(c * c.grad).view(*c.shape[:-1], 4, -1).sum(dim=(0, 1, 3)) for c in
                         (ctx[i] for i in range(3))]).abs()
    ffn = torch.stack([(o * o.grad).sum() for o in (out[i] for i in range(3))]).abs()
    return heads.double(), ffn.double()


def test_importance_equals_the_per_token_products_summed():
    batch = _batch()
    heads, ffn = _probe_scores(_model(), [batch])
    want_heads, want_ffn = _token_products(_model(), batch)
    assert torch.allclose(heads, want_heads, rtol=1e-5, atol=1e-9), (heads - want_heads).abs().max()
    assert torch.allclose(ffn, want_ffn, rtol=1e-5, atol=1e-9)
    assert (heads > 0).all() and (ffn > 0).all()


def test_importance_on_one_token_equals_the_gradient_of_an_explicit_head_gate():
    """An explicit gate xi_h inside the attention (scaling head h's values scales its context by
    xi_h): on a one-token batch the importance is |dL/dxi_h|."""
    batch = _batch(n=1, seq=1)
    heads, _ = _probe_scores(_model(), [batch])
    model = _model()
    xi = torch.ones(3, 4, requires_grad=True)
    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):
        def gate_values(_m, _args, v, i=i):
            return (v.view(*v.shape[:-1], 4, -1) * xi[i][:, None]).view(v.shape)

        handles.append(layer.attention.self.value.register_forward_hook(gate_values))
    model(**batch).loss.backward()
    for h in handles:
        h.remove()
    assert torch.allclose(heads, xi.grad.abs().double(), rtol=1e-5, atol=1e-10)


def test_gradients_are_cleared_between_batches():
    batch = _batch()
    one_h, one_f = _probe_scores(_model(), [batch])
    two_h, two_f = _probe_scores(_model(), [batch, batch])
    assert torch.allclose(two_h, 2 * one_h, rtol=1e-6) and torch.allclose(two_f, 2 * one_f, rtol=1e-6)


def test_neuron_importance_and_sdpa():
    """Per-neuron scores have the intermediate width; SDPA gives the eager scores."""
    batch = _batch()
    h_eager, n_eager = _probe_scores(_model("eager"), [batch], ffn_unit="neuron")
    h_sdpa, n_sdpa = _probe_scores(_model("sdpa"), [batch], ffn_unit="neuron")
    assert n_eager.shape == (3, 40)
    assert torch.allclose(h_eager, h_sdpa, rtol=1e-4, atol=1e-8)
    assert torch.allclose(n_eager, n_sdpa, rtol=1e-4, atol=1e-8)


def test_the_probe_leaves_the_model_as_it_was():
    model, batch = _model(), _batch()
    with torch.no_grad():
        before = model(**batch).logits
    _probe_scores(model, [batch])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
    assert not any(k.startswith("gate") for k in model.state_dict())


# ------------------------------------------------------------------------------ levels and tickets

def test_level_counts_follow_the_paper_grid():
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    plan = counts(level_fractions(levels), 144, 12)  # BERT-base: 144 heads, 12 FFN layers
    assert [h for h, _ in plan] == [14, 29, 43, 58, 72, 86, 101, 115]
    assert [f for _, f in plan] == [1, 2, 3, 4, 5, 6, 7, 8]  # round(10 l) of 12
    assert [f for _, f in counts(level_fractions(levels), 72, 6)] == [1, 1, 2, 2, 3, 3, 4, 4]  # 6 layers, half up
    assert counts(level_fractions([0.5], head_levels=[0.25], ffn_levels=[0.5]), 144, 12) == [(36, 6)]


def _scores(seed=0, layers=4, heads=6, width=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(layers, heads, generator=g), torch.rand(layers, generator=g), torch.rand(layers, width, generator=g)


LEVELS = [0.1, 0.3, 0.5, 0.7]


@pytest.mark.parametrize("kind", ["winning", "random", "losing"])
@pytest.mark.parametrize("ffn_unit", ["layer", "neuron"])
def test_exact_counts_nested_and_min_heads(kind, ffn_unit):
    hs, fl, fn = _scores()
    ffn = fl if ffn_unit == "layer" else fn
    tickets = nested_tickets(hs, ffn, levels=LEVELS, kind=kind, seed=3, min_heads_per_layer=1, ffn_unit=ffn_unit,
                             intermediate_size=10)
    plan = counts(level_fractions(LEVELS), 24, ffn.numel())
    for (h, n, layers), (n_heads, n_ffn) in zip(tickets, plan):
        assert int((~h).sum()) == n_heads
        assert (h.sum(1) >= 1).all()
        if ffn_unit == "layer":
            assert int((~layers).sum()) == n_ffn
            assert torch.equal(n, layers[:, None].expand(4, 10))  # a removed layer keeps no neuron
        else:
            assert layers is None and int((~n).sum()) == n_ffn
    for (h1, n1, _), (h2, n2, _) in zip(tickets, tickets[1:]):  # each level masks a superset
        assert not (h2 & ~h1).any() and not (n2 & ~n1).any()


def test_winning_masks_the_lowest_and_losing_the_highest():
    hs, fl, _ = _scores()
    flat = normalize_heads(hs).flatten()
    win = nested_tickets(hs, fl, levels=[0.25], kind="winning", min_heads_per_layer=0, intermediate_size=10)[0]
    lose = nested_tickets(hs, fl, levels=[0.25], kind="losing", min_heads_per_layer=0, intermediate_size=10)[0]
    order = torch.argsort(flat)
    assert set(torch.nonzero(~win[0].flatten()).flatten().tolist()) == set(order[:6].tolist())
    assert set(torch.nonzero(~lose[0].flatten()).flatten().tolist()) == set(order[-6:].tolist())
    assert int(torch.argmin(fl)) == int(torch.nonzero(~win[2]).item())
    assert int(torch.argmax(fl)) == int(torch.nonzero(~lose[2]).item())
    # the complement ranking: losing keeps exactly what winning at the complementary count masks
    comp = nested_tickets(hs, fl, levels=[0.75], kind="winning", min_heads_per_layer=0, intermediate_size=10)[0]
    assert torch.equal(lose[0], ~comp[0])


def test_heads_are_normalised_per_layer_before_the_global_ranking():
    hs = torch.tensor([[1.0, 2.0], [100.0, 300.0]])
    fl = torch.zeros(2)
    raw = nested_tickets(hs, fl, levels=[0.25], kind="winning", min_heads_per_layer=0, normalize=False,
                         intermediate_size=4, ffn_levels=[0.01])[0][0]
    normed = nested_tickets(hs, fl, levels=[0.25], kind="winning", min_heads_per_layer=0, intermediate_size=4,
                            ffn_levels=[0.01])[0][0]
    assert not raw[0, 0] and raw[1].all()  # 1.0 is the smallest raw score
    assert not normed[1, 0] and normed[0].all()  # 100/316 < 1/2.24


def test_random_tickets_are_drawn_without_replacement_and_differ_by_seed():
    hs, fl, fn = _scores()
    a = nested_tickets(hs, fn, levels=LEVELS, kind="random", seed=1, ffn_unit="neuron")
    b = nested_tickets(hs, fn, levels=LEVELS, kind="random", seed=1, ffn_unit="neuron")
    c = nested_tickets(hs, fn, levels=LEVELS, kind="random", seed=2, ffn_unit="neuron")
    win = nested_tickets(hs, fn, levels=LEVELS, kind="winning", ffn_unit="neuron")
    for (ha, na, _), (hb, nb, _), (hw, nw, _) in zip(a, b, win):
        assert torch.equal(ha, hb) and torch.equal(na, nb)  # reproducible
        assert int(ha.sum()) == int(hw.sum()) and int(na.sum()) == int(nw.sum())  # same counts: no duplicates
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))


def test_random_preserving_the_layer_ratio():
    hs, fl, fn = _scores()
    rand = nested_tickets(hs, fn, levels=LEVELS, kind="random", seed=4, ffn_unit="neuron", preserve_layer_ratio=True)
    win = nested_tickets(hs, fn, levels=LEVELS, kind="winning", ffn_unit="neuron")
    for (hr, nr, _), (hw, nw, _) in zip(rand, win):
        assert torch.equal(hr.sum(1), hw.sum(1)) and torch.equal(nr.sum(1), nw.sum(1))
    for (h1, n1, _), (h2, n2, _) in zip(rand, rand[1:]):
        assert not (h2 & ~h1).any() and not (n2 & ~n1).any()


def test_bad_plans_are_user_errors():
    hs, fl, _ = _scores()
    with pytest.raises(UserError, match="min_heads_per_layer=7"):
        nested_tickets(hs, fl, levels=[0.1], kind="winning", min_heads_per_layer=7, intermediate_size=10)
    with pytest.raises(UserError, match="only 8 can go"):
        nested_tickets(hs, fl, levels=[0.5], kind="winning", min_heads_per_layer=4, intermediate_size=10)
    with pytest.raises(UserError, match="kind"):
        nested_tickets(hs, fl, levels=[0.5], kind="best", intermediate_size=10)


# ------------------------------------------------------------------------------ compacted = masked

def _structure():
    heads = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    layers = torch.tensor([True, False, True])  # layer 1's FFN sub-layer is removed, bias included
    neurons = layers[:, None].expand(3, 40).clone()
    neurons[2, ::3] = False  # layer 2 also loses some neurons
    return heads, neurons, layers


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_compacted_equals_masked_with_a_removed_ffn_layer(attn):
    heads, neurons, layers = _structure()
    masked = _model(attn)
    gates = mask_structure(masked, heads, neurons, layers)
    small = compact_(_model(attn), heads, neurons, layers)
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        a, b = masked.bert(**batch).last_hidden_state, small.bert(**batch).last_hidden_state
        assert torch.allclose(masked(**batch).logits, small(**batch).logits, atol=1e-6)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    gates.remove()
    with torch.no_grad():  # the full model differs: the masks did something
        assert (masked.bert(**batch).last_hidden_state - b).abs().max() > 1e-2
    assert compact_sizes(small.config)["ffn_removed"] == [1]
    layer1 = small.bert.encoder.layer[1]
    assert not list(layer1.intermediate.parameters()) and not list(layer1.output.dense.parameters())
    assert list(layer1.output.LayerNorm.parameters())  # the LayerNorm stays


def test_removed_ffn_layer_computes_layernorm_of_the_attention_output():
    heads, neurons, layers = _structure()
    small = compact_(_model(), heads, neurons, layers)
    layer = small.bert.encoder.layer[1]
    seen = {}
    layer.attention.register_forward_hook(lambda _m, _a, out: seen.__setitem__("att", out[0] if isinstance(out, tuple) else out))
    layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        small(**{k: v for k, v in _batch().items() if k != "labels"})
        want = layer.output.LayerNorm(seen["att"])
    assert torch.allclose(seen["out"], want, atol=1e-6)


def test_removed_ffn_layer_saves_reloads_and_counts(tmp_path):
    heads, neurons, layers = _structure()
    small = compact_(_model(), heads, neurons, layers)
    small.save_pretrained(tmp_path, safe_serialization=True)
    again = load_compact(BertForSequenceClassification, tmp_path).eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, again(**batch).logits, atol=1e-6)
    total, encoder = structure_params(BertForSequenceClassification, _model().config, heads, neurons, layers)
    assert total == sum(p.numel() for p in small.parameters())
    assert encoder == sum(p.numel() for p in small.bert.encoder.layer.parameters())
    with pytest.raises(UserError, match="keeps neurons of an FFN layer it removes"):
        compact_(_model(), heads, torch.ones(3, 40, dtype=torch.bool), layers)


def test_padded_export_of_a_removed_ffn_layer_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bert_ticket_cli.model.export import export_padded

    heads, neurons, layers = _structure()
    small = compact_(_model("sdpa"), heads, neurons, layers)
    small.save_pretrained(tmp_path / "compact", safe_serialization=True)
    export_padded(tmp_path / "compact", tmp_path / "padded")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "padded").eval()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, plain(**batch).logits, atol=1e-5)
    assert not plain.bert.encoder.layer[1].output.dense.bias.any()  # the removed layer adds nothing
