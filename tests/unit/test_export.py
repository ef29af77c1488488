"""Padded export: a compacted model saved by bert-ticket, exported, loads in plain transformers
(no bert_ticket code) and computes the compact model's outputs; removed units are exact zeros."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
)

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.model.compact import CONFIG_KEY, compact_
from bert_ticket_cli.model.export import export_padded, export_padded_model
from bert_ticket_cli.sparsity.ticket import Ticket
from ticket_helpers import apply_ticket

CFG = dict(vocab_size=60, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3, max_position_embeddings=32)


def _structure():
    heads = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)  # layer 1 keeps no head
    neurons = torch.rand(3, 40, generator=torch.Generator().manual_seed(1)) > 0.4
    neurons[2] = False  # layer 2 keeps no neuron
    return heads, neurons


def _full(cls=BertForSequenceClassification):
    torch.manual_seed(0)
    return cls(BertConfig(**CFG, attn_implementation="sdpa")).eval()


def _compact(cls=BertForSequenceClassification):
    heads, neurons = _structure()
    return compact_(_full(cls), heads, neurons).eval()


def _inputs():
    ids = torch.randint(5, 60, (3, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _plain_load(auto_cls, path):
    model, info = auto_cls.from_pretrained(path, attn_implementation="sdpa", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("cls,auto_cls", [(BertForSequenceClassification, AutoModelForSequenceClassification),
                                          (BertForMaskedLM, AutoModelForMaskedLM)])
def test_plain_from_pretrained_gives_the_compact_outputs(tmp_path, cls, auto_cls, wordpiece_tokenizer):
    small = _compact(cls)
    small.save_pretrained(tmp_path / "compact", safe_serialization=True)
    wordpiece_tokenizer.save_pretrained(tmp_path / "compact")
    export_padded(tmp_path / "compact", tmp_path / "padded")
    plain = _plain_load(auto_cls, tmp_path / "padded")
    assert type(plain) is cls
    with torch.no_grad():
        want, got = small(**_inputs()).logits, plain(**_inputs()).logits
    assert got.dtype == torch.float32 and torch.allclose(want, got, atol=1e-5), (want - got).abs().max()
    config = json.loads((tmp_path / "padded" / "config.json").read_text())
    assert CONFIG_KEY not in config
    assert (config["num_attention_heads"], config["intermediate_size"]) == (4, 40)
    assert all((tmp_path / "padded" / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_removed_units_are_exact_zeros_and_output_biases_are_kept(tmp_path):
    small = _compact()
    small.save_pretrained(tmp_path / "compact", safe_serialization=True)
    plain = _plain_load(AutoModelForSequenceClassification, export_padded(tmp_path / "compact", tmp_path / "padded"))
    layers, compact_layers = plain.bert.encoder.layer, small.bert.encoder.layer
    att = layers[1].attention.self  # keeps no head
    for lin in (att.query, att.key, att.value):
        assert not lin.weight.any() and not lin.bias.any()
    assert not layers[1].attention.output.dense.weight.any()
    assert torch.equal(layers[1].attention.output.dense.bias, compact_layers[1].attention.output.dense.bias)
    assert not layers[2].intermediate.dense.weight.any() and not layers[2].intermediate.dense.bias.any()
    assert not layers[2].output.dense.weight.any()  # keeps no neuron
    assert torch.equal(layers[2].output.dense.bias, compact_layers[2].output.dense.bias)
    # layer 0 keeps 3 heads: first 3 head slots are the compact weights, the 4th is zero
    q = layers[0].attention.self.query
    assert torch.equal(q.weight[:36], compact_layers[0].attention.self.query.weight) and not q.weight[36:].any()
    assert not q.bias[36:].any() and not layers[0].attention.output.dense.weight[:, 36:].any()


def test_with_the_ticket_units_go_back_to_their_places(tmp_path):
    heads, neurons = _structure()
    ticket = Ticket({}, heads=heads, neurons=neurons, meta={"method": "earlybert"})
    ticket.save(tmp_path / "ticket")
    _compact().save_pretrained(tmp_path / "compact", safe_serialization=True)
    export_padded(tmp_path / "compact", tmp_path / "padded", ticket=tmp_path / "ticket")
    plain = _plain_load(AutoModelForSequenceClassification, tmp_path / "padded")
    masked = _full()
    apply_ticket(ticket, masked)  # the full model with the ticket applied: the same tensors, bit for bit
    want = masked.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in plain.state_dict().items())
    other = Ticket({}, heads=torch.ones(3, 4, dtype=torch.bool), neurons=neurons)
    with pytest.raises(UserError, match="the ticket keeps"):
        export_padded(tmp_path / "compact", tmp_path / "other", ticket=other)


def test_in_memory_export_and_an_uncompacted_folder_is_copied(tmp_path):
    export_padded_model(_compact(), tmp_path / "padded")
    plain = _plain_load(AutoModelForSequenceClassification, tmp_path / "padded")
    with torch.no_grad():
        assert torch.allclose(_compact()(**_inputs()).logits, plain(**_inputs()).logits, atol=1e-5)
    _full().save_pretrained(tmp_path / "dense", safe_serialization=True)
    export_padded(tmp_path / "dense", tmp_path / "copy")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "copy" / name).read_bytes() == (tmp_path / "dense" / name).read_bytes()


def test_refusals_are_one_line_user_errors(tmp_path):
    _compact().save_pretrained(tmp_path / "compact", safe_serialization=True)
    (tmp_path / "no_config").mkdir()
    (tmp_path / "no_config" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text("{}")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    cases = [(tmp_path / "missing", tmp_path / "o1", "does not exist"),
             (tmp_path / "no_config", tmp_path / "o2", "no config.json"),
             (tmp_path / "no_weights", tmp_path / "o3", "no safetensors"),
             (tmp_path / "compact", tmp_path / "busy", "not empty"),
             (tmp_path / "compact", tmp_path / "compact" / "inside", "overlaps")]
    for source, dest, message in cases:
        with pytest.raises(UserError, match=message) as err:
            export_padded(source, dest)
        assert "\n" not in str(err.value)
        assert not dest.exists() or dest.name == "busy"
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    export_padded(tmp_path / "compact", tmp_path / "busy", overwrite=True)
    assert not (tmp_path / "busy" / "keep.txt").exists() and (tmp_path / "busy" / "model.safetensors").is_file()


def test_plain_fine_tuning_keeps_the_removed_units_zero(tmp_path):
    """The doc's claim: a removed unit is zero on both sides, so its gradients are exactly zero."""
    _compact().save_pretrained(tmp_path / "compact", safe_serialization=True)
    plain = _plain_load(AutoModelForSequenceClassification, export_padded(tmp_path / "compact", tmp_path / "padded"))
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    plain.train()
    for _ in range(2):
        plain(**_inputs(), labels=torch.tensor([0, 1, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    l0, l1, l2 = plain.bert.encoder.layer
    kept0 = int(_structure()[1][0].sum())  # layer 0's kept neurons come first
    removed = [l1.attention.self.query.weight, l1.attention.self.key.bias, l1.attention.self.value.weight,
               l1.attention.output.dense.weight, l0.attention.self.query.weight[36:], l0.attention.self.value.bias[36:],
               l0.attention.output.dense.weight[:, 36:], l2.intermediate.dense.weight, l2.intermediate.dense.bias,
               l2.output.dense.weight, l0.intermediate.dense.weight[kept0:], l0.output.dense.weight[:, kept0:]]
    assert not any(bool(t.any()) for t in removed)
    assert l0.attention.self.query.weight[:36].any() and l1.attention.output.dense.bias.any()
