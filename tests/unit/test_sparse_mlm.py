"""Sparse token prediction: SparseBertForMaskedLM computes what BertForMaskedLM computes at the
predicted positions, loads and saves as a plain BertForMaskedLM, and works with compaction
and EarlyBERT slimming."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertForSequenceClassification

from bert_ticket_cli.model.compact import compact_, load_compact
from bert_ticket_cli.model.slimming import Slimming
from bert_ticket_cli.model.sparse_mlm import SparseBertForMaskedLM, from_masked_lm, sparse_targets
from bert_ticket_cli.sparsity.ticket import Ticket
from ticket_helpers import apply_ticket

V, L, P = 53, 12, 4
CFG = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
           max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _dense(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(**CFG)).eval()


def _pair() -> tuple[BertForMaskedLM, SparseBertForMaskedLM]:
    """The same weights twice: a plain dense model and a sparse one."""
    dense = _dense()
    sparse = SparseBertForMaskedLM(BertConfig(**CFG)).eval()
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def _batch() -> dict[str, torch.Tensor]:
    """4 rows: full predictions, 2 of 4 slots used, none, full; row 0 padded after 9 tokens."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, V, (4, L), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    positions = torch.tensor([[1, 3, 4, 8], [2, 7, 0, 0], [0, 0, 0, 0], [11, 5, 6, 1]])  # unordered in row 3
    labels = torch.randint(5, V, (4, P), generator=g)
    labels[1, 2:] = -100
    labels[2, :] = -100
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "mlm_positions": positions, "mlm_labels": labels}


def _dense_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same targets in the standard [B, L] format."""
    full = torch.full((batch["input_ids"].shape[0], L), -100, dtype=torch.long)
    for b in range(full.shape[0]):
        for p, y in zip(batch["mlm_positions"][b].tolist(), batch["mlm_labels"][b].tolist()):
            if y != -100:
                full[b, p] = y
    return full


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _sparse_kwargs(batch: dict[str, torch.Tensor], interface: str) -> dict[str, torch.Tensor]:
    if interface == "positions":
        return {**_inputs(batch), "mlm_positions": batch["mlm_positions"], "mlm_labels": batch["mlm_labels"]}
    return {**_inputs(batch), "labels": _dense_labels(batch)}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("interface", ["positions", "labels"])
def test_loss_and_gradients_equal_dense(interface):
    dense, sparse = _pair()
    batch = _batch()
    ref = dense(**_inputs(batch), labels=_dense_labels(batch)).loss
    ref.backward()
    out = sparse(**_sparse_kwargs(batch, interface))
    out.loss.backward()
    assert out.loss.dtype == torch.float32
    assert abs(out.loss.item() - ref.item()) < 1e-6
    g_ref, g = _grads(dense), _grads(sparse)
    assert set(g_ref) == set(g) and len(g) == len(list(sparse.parameters()))
    largest = max(w.abs().max() for w in g_ref.values())
    for name, want in g_ref.items():
        # relative to the tensor's largest gradient; key biases get none (softmax is shift-invariant):
        # there both sides are rounding noise, so the floor is relative to the largest gradient overall
        scale = torch.maximum(want.abs().max(), 1e-3 * largest)
        assert (g[name] - want).abs().max() / scale < 1e-5, name


@pytest.mark.parametrize("interface", ["positions", "labels"])
def test_logits_rows_and_targets_follow_row_major_order(interface):
    dense, sparse = _pair()
    batch = _batch()
    labels = _dense_labels(batch)
    with torch.no_grad():
        full = dense(**_inputs(batch)).logits  # [B, L, V]
        out = sparse(**_sparse_kwargs(batch, interface))
    if interface == "positions":
        order = [(b, p) for b in range(4) for p, y in zip(batch["mlm_positions"][b].tolist(),
                                                          batch["mlm_labels"][b].tolist()) if y != -100]
        targets = sparse_targets(batch["mlm_labels"])
    else:
        order = [(b, p) for b in range(4) for p in range(L) if labels[b, p] != -100]
        targets = sparse_targets(labels)
    assert out.logits.shape == (len(order), V) == (10, V)
    want = torch.stack([full[b, p] for b, p in order])
    assert torch.allclose(out.logits, want, atol=1e-5)
    assert targets.tolist() == [labels[b, p].item() for b, p in order]
    assert SparseBertForMaskedLM.sparse_targets(labels).tolist() == sparse_targets(labels).tolist()
    # evaluator's view: sum of per-token losses from the returned logits and targets
    summed = torch.nn.functional.cross_entropy(out.logits, targets, reduction="sum")
    assert abs(summed.item() / len(order) - out.loss.item()) < 1e-5


def test_padding_slots_are_ignored_whatever_their_position():
    _, sparse = _pair()
    batch = _batch()
    other = dict(batch)
    other["mlm_positions"] = batch["mlm_positions"].clone()
    other["mlm_positions"][1, 2:] = 10  # padding slots pointing elsewhere
    other["mlm_positions"][2, :] = 5
    with torch.no_grad():
        a = sparse(**_sparse_kwargs(batch, "positions"))
        b = sparse(**_sparse_kwargs(other, "positions"))
    assert torch.equal(a.logits, b.logits) and a.loss.item() == b.loss.item()


def test_no_labels_is_dense_and_positions_only_predict_every_slot():
    dense, sparse = _pair()
    batch = _batch()
    with torch.no_grad():
        full = dense(**_inputs(batch)).logits
        plain = sparse(**_inputs(batch))
        slots = sparse(**_inputs(batch), mlm_positions=batch["mlm_positions"])
        as_tuple = sparse(**_sparse_kwargs(batch, "positions"), return_dict=False)
    assert plain.loss is None and torch.allclose(plain.logits, full, atol=1e-6)
    assert slots.loss is None and slots.logits.shape == (4 * P, V)
    assert torch.allclose(slots.logits[4], full[1, 2], atol=1e-5)
    assert isinstance(as_tuple, tuple) and as_tuple[1].shape == (10, V)
    with pytest.raises(ValueError):
        sparse(**_inputs(batch), mlm_labels=batch["mlm_labels"])
    with pytest.raises(ValueError):
        sparse(**_sparse_kwargs(batch, "positions"), labels=_dense_labels(batch))


def test_batch_without_predictions_gives_zero_loss_with_gradients():
    _, sparse = _pair()
    batch = _batch()
    none = torch.full_like(batch["mlm_labels"], -100)
    out = sparse(**_inputs(batch), mlm_positions=batch["mlm_positions"], mlm_labels=none)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.logits.shape == (0, V)
    assert sparse.cls.predictions.transform.dense.weight.grad is not None


def test_bf16_autocast_gives_a_float32_loss_close_to_fp32():
    _, sparse = _pair()
    batch = _batch()
    kwargs = _sparse_kwargs(batch, "positions")
    with torch.no_grad():
        ref = sparse(**kwargs).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse(**kwargs)
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref.item()) < 0.05 * ref.item()
    assert sparse.bert.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.parametrize("loader", ["BertForMaskedLM", "AutoModelForMaskedLM"])
def test_saved_model_loads_as_plain_bert_for_masked_lm(tmp_path, loader):
    dense, sparse = _pair()
    sparse.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    cls = BertForMaskedLM if loader == "BertForMaskedLM" else AutoModelForMaskedLM
    plain, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert type(plain) is BertForMaskedLM
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(plain.eval()(**_inputs(batch)).logits, dense(**_inputs(batch)).logits, atol=1e-6)
    again = SparseBertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert again(**_sparse_kwargs(batch, "positions")).loss.item() == \
               sparse(**_sparse_kwargs(batch, "positions")).loss.item()


def test_from_masked_lm_converts_in_place_and_keeps_tied_weights():
    model = _dense()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    emb = model.bert.embeddings.word_embeddings.weight
    batch = _batch()
    with torch.no_grad():
        ref = model(**_inputs(batch), labels=_dense_labels(batch)).loss
    converted = from_masked_lm(model)
    assert converted is model and type(model) is SparseBertForMaskedLM
    assert model.cls.predictions.decoder.weight is emb is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and len(before) == \
           len(model.state_dict())
    with torch.no_grad():
        assert abs(model(**_sparse_kwargs(batch, "positions")).loss.item() - ref.item()) < 1e-6
    assert from_masked_lm(model) is model
    with pytest.raises(TypeError):
        from_masked_lm(BertForSequenceClassification(BertConfig(**CFG)))


def _structure() -> tuple[torch.Tensor, torch.Tensor]:
    heads = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    neurons = torch.rand(2, 40, generator=torch.Generator().manual_seed(4)) > 0.5
    return heads, neurons


def _compacted() -> tuple[SparseBertForMaskedLM, float, dict[str, torch.Tensor]]:
    """A sparse model compacted to ``_structure``, its sparse loss and the batch arguments."""
    heads, neurons = _structure()
    kwargs = _sparse_kwargs(_batch(), "positions")
    masked = from_masked_lm(_dense())
    apply_ticket(Ticket(masks={}, heads=heads, neurons=neurons), masked)
    small = compact_(from_masked_lm(_dense()), heads, neurons)
    assert small.bert.encoder.layer[1].attention.self.num_attention_heads == 1
    with torch.no_grad():
        want = masked(**kwargs).loss.item()
        got = small(**kwargs).loss.item()
    assert abs(got - want) < 1e-5  # compacted == masked full model, on the sparse path
    return small, got, kwargs


def test_compaction_keeps_the_sparse_loss():
    small, _, kwargs = _compacted()
    small.train()
    small(**kwargs).loss.backward()
    assert small.bert.encoder.layer[0].intermediate.dense.weight.grad is not None


def test_load_compact_reloads_with_the_same_sparse_loss(tmp_path):
    small, got, kwargs = _compacted()
    small.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    again = load_compact(SparseBertForMaskedLM, tmp_path).eval()
    assert type(again) is SparseBertForMaskedLM
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    assert again.cls.predictions.decoder.bias is again.cls.predictions.bias
    with torch.no_grad():
        assert again(**kwargs).loss.item() == got
    again(**kwargs).loss.backward()  # trains after reload


def test_slimming_coefficients_at_one_change_nothing():
    _, sparse = _pair()
    batch = _batch()
    kwargs = _sparse_kwargs(batch, "positions")
    with torch.no_grad():
        ref = sparse(**kwargs).loss
    slim = Slimming(sparse)
    out = sparse(**kwargs)
    assert abs(out.loss.item() - ref.item()) < 1e-6
    (out.loss + slim.penalty()).backward()
    assert all(p.grad is not None for p in slim.heads + slim.neurons)
    slim.remove()
    with torch.no_grad():
        assert abs(sparse(**kwargs).loss.item() - ref.item()) < 1e-6


def test_int32_labels_and_positions_are_accepted():
    _, sparse = _pair()
    batch = _batch()
    with torch.no_grad():
        want = sparse(**_sparse_kwargs(batch, "positions")).loss
        got = sparse(**_inputs(batch), mlm_positions=batch["mlm_positions"].int(),
                     mlm_labels=batch["mlm_labels"].int()).loss
    assert got.item() == want.item()
    assert sparse_targets(batch["mlm_labels"].int()).dtype == torch.long


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_last_layer_runs_only_at_the_predicted_slots_with_the_same_loss(attn):
    """With mlm_positions the last layer's FFN sees B x P rows (not B x L), and the loss is the
    dense model's to 1e-6, in train mode too when dropout is 0."""
    dense = BertForMaskedLM(BertConfig(**CFG, attn_implementation=attn))
    sparse = SparseBertForMaskedLM(BertConfig(**CFG, attn_implementation=attn))
    sparse.load_state_dict(dense.state_dict())
    rows = []
    sparse.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, a, out: rows.append(out.shape[:-1]))
    batch = _batch()
    for mode in ("eval", "train"):
        getattr(dense, mode)(), getattr(sparse, mode)()
        rows.clear()
        ref = dense(**_inputs(batch), labels=_dense_labels(batch)).loss
        out = sparse(**_sparse_kwargs(batch, "positions")).loss
        assert rows == [torch.Size([4, P])]
        assert abs(out.item() - ref.item()) < 1e-6


def test_a_compacted_last_layer_without_heads_uses_the_dense_path():
    """The sparse last layer slices the query projection; a compacted last layer that keeps no
    head has none, and the model then computes the dense head's loss."""
    import torch
    from transformers import BertConfig

    from bert_ticket_cli.model.compact import compact_
    from bert_ticket_cli.model.sparse_mlm import SparseBertForMaskedLM

    torch.manual_seed(0)
    model = SparseBertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=16)).eval()
    heads = torch.ones(2, 4, dtype=torch.bool)
    heads[1] = False
    compact_(model, heads, torch.ones(2, 16, dtype=torch.bool))
    ids = torch.randint(5, 50, (2, 10))
    positions, labels = torch.tensor([[1, 3], [2, 4]]), torch.randint(5, 50, (2, 2))
    dense_labels = torch.full_like(ids, -100).scatter(1, positions, labels)
    with torch.no_grad():
        sparse = model(input_ids=ids, attention_mask=torch.ones_like(ids), mlm_positions=positions, mlm_labels=labels)
        dense = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=dense_labels)
    assert torch.isfinite(sparse.loss) and torch.allclose(sparse.loss, dense.loss, atol=1e-6)
