"""docs/TICKET_FORMAT.md: its plain-PyTorch example works on tickets written by Ticket.save, and
it names every key the code writes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from bert_ticket_cli.sparsity.prunable import prunable_parameters
from bert_ticket_cli.sparsity.ticket import Ticket
from ticket_helpers import apply_ticket

DOC = Path(__file__).resolve().parents[2] / "docs" / "TICKET_FORMAT.md"
CFG = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
           max_position_embeddings=32, num_labels=3)


@pytest.fixture(scope="module")
def doc():
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {"__name__": "ticket_format_doc"}  # the example's __main__ part (hub model) is skipped
    exec(compile(code, str(DOC), "exec"), namespace)
    return text, namespace


def _model(cls):
    torch.manual_seed(0)
    return cls(BertConfig(**CFG)).eval()


def test_the_example_applies_an_unstructured_ticket_like_bert_ticket(tmp_path, doc):
    _, ns = doc
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=g) > 0.5
             for n, p in prunable_parameters(_model(BertForSequenceClassification)).items()}
    ticket = Ticket(masks, meta={"method": "imp", "level": 1})
    ticket.save(tmp_path / "t")
    for cls in (BertForSequenceClassification, BertForMaskedLM):  # the MLM model has no pooler
        ours, theirs = _model(cls), _model(cls)
        apply_ticket(ticket, ours)
        ns["apply_unstructured"](theirs, tmp_path / "t")
        assert all(torch.equal(v, ours.state_dict()[k]) for k, v in theirs.state_dict().items())
    data = bytearray((tmp_path / "t" / "ticket.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "t" / "ticket.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match"):
        ns["apply_unstructured"](_model(BertForSequenceClassification), tmp_path / "t")


def test_the_example_reads_a_structured_ticket_and_the_doc_names_every_key(tmp_path, doc):
    text, ns = doc
    heads = torch.tensor([[True, False], [False, False]])
    neurons = torch.rand(2, 24, generator=torch.Generator().manual_seed(4)) > 0.5
    Ticket({}, heads=heads, neurons=neurons, meta={"method": "earlybert"}).save(tmp_path / "s")
    kept_heads, kept_neurons = ns["kept_units"](tmp_path / "s")
    assert kept_heads == [[0], []]
    assert kept_neurons == [torch.nonzero(r).flatten().tolist() for r in neurons]
    Ticket({"pooler.dense.weight": torch.ones(16, 16, dtype=torch.bool)}).save(tmp_path / "u")
    for folder in ("s", "u"):
        record = json.loads((tmp_path / folder / "ticket.json").read_text())
        data = (tmp_path / folder / "ticket.safetensors").read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        keys = [*record, *record.get("structure", {}), *record["sparsity"], *record["checksum"],
                *header["__metadata__"], *(k for k in header if k != "__metadata__")]
        for key in keys:
            name = key.replace("masks/pooler.dense.weight", "masks/<name>")
            assert f"`{name}`" in text, f"docs/TICKET_FORMAT.md does not describe {name!r}"
