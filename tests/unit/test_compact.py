"""Physical compaction: the compacted model computes what the masked full model computes."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.model.compact import compact_, compact_sizes, load_compact
from bert_ticket_cli.sparsity.ticket import Ticket
from ticket_helpers import apply_ticket

CFG = dict(vocab_size=60, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def _model(attn="eager"):
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**CFG, attn_implementation=attn)).eval()


def _structure():
    heads = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)  # layer 1 keeps no head
    g = torch.Generator().manual_seed(1)
    neurons = torch.rand(3, 40, generator=g) > 0.4
    neurons[2] = False  # layer 2 keeps no neuron
    return heads, neurons


def _inputs():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 60, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_compacted_equals_masked(attn):
    heads, neurons = _structure()
    masked = _model(attn)
    apply_ticket(Ticket(masks={}, heads=heads, neurons=neurons), masked)
    small = compact_(_model(attn), heads, neurons)
    with torch.no_grad():
        a = masked(**_inputs()).logits
        b = small(**_inputs()).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    n_full = sum(p.numel() for p in _model().parameters())
    n_small = sum(p.numel() for p in small.parameters())
    removed_heads = int((~heads).sum()) * 12 * (3 * 48 + 3 + 48)  # q,k,v rows + biases, out columns
    removed_ffn = int((~neurons).sum()) * (48 + 1 + 48)
    assert n_full - n_small == removed_heads + removed_ffn
    assert compact_sizes(small.config) == {"heads": [3, 0, 1], "intermediate": neurons.sum(1).tolist()}


def test_save_and_reload(tmp_path):
    heads, neurons = _structure()
    small = compact_(_model(), heads, neurons)
    small.save_pretrained(tmp_path, safe_serialization=True)
    again = load_compact(BertForSequenceClassification, tmp_path).eval()
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in again.state_dict().items())
    with torch.no_grad():  # the reload may pick another attention kernel: equal up to rounding
        assert torch.allclose(small(**_inputs()).logits, again(**_inputs()).logits, atol=1e-6)


def test_wrong_shapes_and_double_compaction():
    heads, neurons = _structure()
    with pytest.raises(UserError, match="do not fit"):
        compact_(_model(), heads[:, :3], neurons)
    small = compact_(_model(), heads, neurons)
    with pytest.raises(UserError, match="already compacted"):
        compact_(small, heads, neurons)


def test_build_model_loads_a_compacted_directory(tmp_path):
    from bert_ticket_cli.config.schema import ModelConfig
    from bert_ticket_cli.model.build import build_model

    heads, neurons = _structure()
    small = compact_(_model(), heads, neurons)
    small.save_pretrained(tmp_path, safe_serialization=True)
    loaded = build_model(ModelConfig(name="x"), kind="classification", num_labels=3, source=str(tmp_path))
    assert compact_sizes(loaded.config) == compact_sizes(small.config)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())


def test_a_compact_mlm_model_loads_into_a_classifier_but_a_partial_head_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import BertForMaskedLM

    heads, neurons = _structure()
    torch.manual_seed(0)
    mlm = compact_(BertForMaskedLM(BertConfig(**CFG)), heads, neurons)
    mlm.save_pretrained(tmp_path, safe_serialization=True)
    clf = load_compact(BertForSequenceClassification, tmp_path)  # MLM head dropped, classifier new
    assert torch.equal(clf.bert.encoder.layer[0].attention.self.query.weight,
                       mlm.bert.encoder.layer[0].attention.self.query.weight)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    del state["cls.predictions.transform.dense.weight"]  # an MLM head with a hole in it
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(UserError, match="transform.dense.weight"):
        load_compact(BertForMaskedLM, tmp_path)
