"""The prunable set, the Ticket type and its file format, and fitting tickets onto models."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods.magnitude import prune_to
from bert_ticket_cli.sparsity.prunable import (
    DEFAULT_PATTERNS,
    base_model,
    prunable_parameters,
    shapes_fingerprint,
)
from bert_ticket_cli.sparsity.ticket import JSON_FILE, TENSORS_FILE, Ticket, full_ticket
from ticket_helpers import apply_ticket


def tiny_config(**overrides):
    from transformers import BertConfig

    base = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=24, max_position_embeddings=32, num_labels=3)
    base.update(overrides)
    return BertConfig(**base)


def seq_cls(seed=0, **overrides):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(**overrides)).eval()


def magnitude_ticket(model, sparsity=0.4, **meta):
    weights = {n: p.detach() for n, p in prunable_parameters(model).items()}
    masks = prune_to(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()},
                     target_sparsity=sparsity)
    return Ticket(masks, meta={"method": "imp", "level": 4, "model": "tiny-bert", **meta})


# -------------------------------------------------------------------------- prunable set


def test_bert_base_prunable_set_is_85_524_480_weights_in_73_matrices():
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig())
    params = prunable_parameters(model)
    assert len(params) == 73
    assert sum(p.numel() for p in params.values()) == 85_524_480
    assert len(prunable_parameters(model, include_pooler=False)) == 72


def test_names_are_relative_to_the_base_model_and_ordered_by_layer():
    model = seq_cls(num_hidden_layers=11)
    names = list(prunable_parameters(model))
    assert names[0] == "encoder.layer.0.attention.self.query.weight"
    assert names[-1] == "pooler.dense.weight"
    assert len(names) == 6 * 11 + 1
    layers = [int(n.split(".")[2]) for n in names[:-1]]
    assert layers == sorted(layers) and layers[-1] == 10
    assert names[:6] == [p.replace("*", "0") for p in DEFAULT_PATTERNS[:6]]
    # weights only: no bias, LayerNorm, embeddings or classifier
    assert all(n.endswith(".weight") and "LayerNorm" not in n and "embeddings" not in n for n in names)
    assert base_model(model) is model.bert
    assert all(p is dict(model.bert.named_parameters())[n] for n, p in prunable_parameters(model).items())


def test_masked_lm_has_no_pooler_and_custom_patterns():
    from transformers import BertForMaskedLM

    mlm = BertForMaskedLM(tiny_config())
    assert "pooler.dense.weight" not in prunable_parameters(mlm)
    only_ffn = prunable_parameters(mlm, patterns=["encoder.layer.*.intermediate.dense.weight"])
    assert list(only_ffn) == ["encoder.layer.0.intermediate.dense.weight", "encoder.layer.1.intermediate.dense.weight"]
    with pytest.raises(UserError, match="matches no parameter"):
        prunable_parameters(mlm, patterns=["encoder.layer.*.attention.self.querry.weight"])


def test_shapes_fingerprint_is_order_independent_and_shape_sensitive():
    a = {"x": (2, 3), "y": (4,)}
    assert shapes_fingerprint(a) == shapes_fingerprint({"y": (4,), "x": (2, 3)})
    assert shapes_fingerprint(a) != shapes_fingerprint({"x": (3, 2), "y": (4,)})
    assert len(shapes_fingerprint(a)) == 16


# ------------------------------------------------------------------------------ summaries


def test_sparsity_kept_total_and_per_matrix():
    masks = {"a": torch.tensor([[True, False], [False, False]]), "b": torch.ones(2, 3, dtype=torch.bool)}
    t = Ticket(masks, meta={"total_model_params": 100})
    assert (t.kept(), t.total(), t.kind) == (7, 10, "unstructured")
    assert t.sparsity() == pytest.approx(0.3)
    assert t.per_matrix_sparsity() == {"a": 0.75, "b": 0.0}
    assert t.overall_sparsity() == pytest.approx(0.03)  # 3 pruned of 100 model parameters


def test_full_ticket_keeps_everything():
    model = seq_cls()
    t = full_ticket(model)
    assert t.sparsity() == 0.0 and t.total() == sum(p.numel() for p in prunable_parameters(model).values())
    assert t.meta["total_model_params"] == sum(p.numel() for p in model.parameters())
    assert "pooler.dense.weight" not in full_ticket(model, include_pooler=False).masks


# ------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    model = seq_cls()
    ticket = magnitude_ticket(model, source_task="sst2", seed=3, rewind_point="pretrained",
                              total_model_params=sum(p.numel() for p in model.parameters()))
    ticket.heads = None
    out = ticket.save(tmp_path / "level-4")
    assert sorted(p.name for p in out.iterdir()) == [JSON_FILE, TENSORS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["level-4"]  # no temporary folder left

    loaded = Ticket.load(out)
    assert list(loaded.masks) == list(ticket.masks)  # order kept (safetensors sorts by name)
    assert all(torch.equal(loaded.masks[n], ticket.masks[n]) and loaded.masks[n].dtype == torch.bool
               for n in ticket.masks)
    assert loaded.meta == ticket.meta and "created" in loaded.meta
    assert loaded.heads is None and loaded.neurons is None
    assert loaded.fingerprint() == ticket.fingerprint()

    record = json.loads((out / JSON_FILE).read_text())
    import hashlib

    assert record["checksum"]["sha256"] == hashlib.sha256((out / TENSORS_FILE).read_bytes()).hexdigest()
    assert record["method"] == "imp" and record["level"] == 4 and record["model"] == "tiny-bert"
    assert record["source_task"] == "sst2" and record["seed"] == 3 and record["rewind_point"] == "pretrained"
    assert record["sparsity"]["prunable"] == pytest.approx(0.4, abs=1e-6)
    assert record["sparsity"]["overall"] == pytest.approx(
        (ticket.total() - ticket.kept()) / ticket.meta["total_model_params"], abs=1e-6)
    assert record["sparsity"]["overall"] < record["sparsity"]["prunable"]
    assert record["fingerprint"] == ticket.fingerprint()
    assert set(record["per_matrix_sparsity"]) == set(ticket.masks)
    assert record["format_version"] == 1 and record["created"] == ticket.meta["created"]

    # the safetensors header carries the meta too (and no pickle: it is a safetensors file)
    data = (out / TENSORS_FILE).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    assert json.loads(header["__metadata__"]["meta"]) == ticket.meta
    assert header["masks/pooler.dense.weight"]["dtype"] == "BOOL"


def test_structured_round_trip_and_summaries(tmp_path):
    heads = torch.tensor([[True, False], [True, True]])
    neurons = torch.rand(2, 24, generator=torch.Generator().manual_seed(0)) > 0.5
    t = Ticket({}, heads=heads, neurons=neurons, meta={"method": "earlybert"})
    assert t.kind == "structured"
    assert t.kept() == 3 + int(neurons.sum()) and t.total() == 4 + 48
    per = t.per_matrix_sparsity()
    assert per["encoder.layer.0.attention.heads"] == 0.5 and per["encoder.layer.1.attention.heads"] == 0.0
    loaded = Ticket.load(t.save(tmp_path / "s"))
    assert torch.equal(loaded.heads, heads) and torch.equal(loaded.neurons, neurons) and loaded.masks == {}
    assert loaded.meta == t.meta and loaded.kind == "structured"
    record = json.loads((tmp_path / "s" / JSON_FILE).read_text())
    assert record["structure"]["kept_heads"] == 3 and record["structure"]["heads"] == [2, 2]


def test_save_into_an_existing_folder_keeps_other_files_and_overwrites(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    first = Ticket({"a": torch.tensor([True, False])}, meta={"level": 1})
    first.save(target)
    second = Ticket({"a": torch.tensor([False, False])}, meta={"level": 2})
    second.save(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert Ticket.load(target).meta["level"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_corrupt_or_missing_files_are_user_errors(tmp_path):
    t = Ticket({"a": torch.ones(64, dtype=torch.bool)}, meta={"method": "imp"})
    folder = t.save(tmp_path / "t")
    tensors = folder / TENSORS_FILE
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 1  # one bit of one mask
    tensors.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"ticket\.safetensors is corrupt"):
        Ticket.load(folder)

    t.save(folder)  # repaired
    Ticket.load(folder)
    (folder / JSON_FILE).write_text('{"format": "bert-ticket/ticket", "checks')
    with pytest.raises(UserError, match=r"ticket\.json"):
        Ticket.load(folder)

    (folder / JSON_FILE).unlink()
    with pytest.raises(UserError, match=r"ticket\.json is missing"):
        Ticket.load(folder)
    with pytest.raises(UserError, match="does not exist"):
        Ticket.load(tmp_path / "nowhere")


def test_meta_must_be_json():
    with pytest.raises(ValueError, match="JSON"):
        Ticket({"a": torch.ones(2, dtype=torch.bool)}, meta={"x": object()}).save("/nonexistent-never-written")


def test_unwritable_destination_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the ticket"):
        Ticket({"a": torch.ones(2, dtype=torch.bool)}).save(blocker / "ticket")


# ------------------------------------------------------------------------------ models


def test_check_fits_names_the_parameter_and_both_shapes():
    ticket = magnitude_ticket(seq_cls(hidden_size=16))
    other = seq_cls(hidden_size=8, intermediate_size=24)
    with pytest.raises(UserError) as err:
        ticket.check_fits(other)
    msg = str(err.value)
    assert "encoder.layer.0.attention.self.query.weight is [16, 16] in the ticket and [8, 8] in the model" in msg
    assert "tiny-bert" in msg and ticket.fingerprint() in msg and "\n" not in msg
    before = {n: p.clone() for n, p in other.named_parameters()}
    with pytest.raises(UserError):
        apply_ticket(ticket, other)  # nothing broadcast, nothing changed
    assert all(torch.equal(p, before[n]) for n, p in other.named_parameters())


def test_missing_parameter_is_an_error_except_the_pooler():
    ticket = magnitude_ticket(seq_cls())
    fewer_layers = seq_cls(num_hidden_layers=1)
    with pytest.raises(UserError, match="encoder.layer.1.attention.self.query.weight, which this model lacks"):
        ticket.check_fits(fewer_layers)
    prefixed = Ticket({"bert." + n: m for n, m in ticket.masks.items()})
    with pytest.raises(UserError, match="drop the 'bert.' prefix"):
        prefixed.check_fits(seq_cls())


def test_apply_zeroes_exactly_the_pruned_weights():
    model = seq_cls(seed=1)
    ticket = magnitude_ticket(model, sparsity=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_ticket(ticket, model)
    params = dict(model.bert.named_parameters())
    for name, mask in ticket.masks.items():
        w = params[name]
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))
        assert torch.equal(w[mask], before["bert." + name][mask])
    untouched = [n for n in before if n.removeprefix("bert.") not in ticket.masks]
    assert "classifier.weight" in untouched and "bert.embeddings.word_embeddings.weight" in untouched
    assert all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in untouched)


def test_ticket_from_classification_fits_qa_and_masked_lm():
    from transformers import BertForMaskedLM, BertForQuestionAnswering

    ticket = magnitude_ticket(seq_cls(seed=2), sparsity=0.6)
    assert "pooler.dense.weight" in ticket.masks
    torch.manual_seed(3)
    qa = BertForQuestionAnswering(tiny_config())
    ticket.check_fits(qa)
    apply_ticket(ticket, qa)
    mlm = BertForMaskedLM(tiny_config())  # no pooler: that mask is skipped, the rest applies
    ticket.check_fits(mlm)
    apply_ticket(ticket, mlm)
    for model in (qa, mlm):
        params = dict(base_model(model).named_parameters())
        for name, mask in ticket.masks.items():
            if name in params:
                assert bool((params[name][~mask] == 0).all())
    assert "pooler.dense.weight" not in dict(mlm.bert.named_parameters())


def test_structured_apply_and_fit():
    model = seq_cls(seed=4)
    heads = torch.tensor([[True, False], [False, True]])
    neurons = torch.ones(2, 24, dtype=torch.bool)
    neurons[1, [0, 5, 23]] = False
    t = Ticket({}, heads=heads, neurons=neurons)
    apply_ticket(t, model)
    layer0, layer1 = model.bert.encoder.layer
    assert bool((layer0.attention.self.query.weight[8:] == 0).all())  # head 1 of layer 0 (head dim 8)
    assert bool((layer0.attention.self.value.bias[8:] == 0).all())
    assert bool((layer0.attention.self.key.weight[:8] != 0).any())
    assert bool((layer0.attention.output.dense.weight[:, 8:] == 0).all())
    assert bool((layer1.attention.self.query.weight[:8] == 0).all())
    assert bool((layer1.intermediate.dense.weight[[0, 5, 23]] == 0).all())
    assert bool((layer1.output.dense.weight[:, [0, 5, 23]] == 0).all())
    assert bool((layer1.intermediate.dense.weight[1] != 0).any())
    wrong = Ticket({}, heads=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(UserError, match=r"heads is \[2, 4\] in the ticket and \[2, 2\] in the model"):
        wrong.check_fits(model)


def test_is_subset_of_follows_pruning_levels():
    model = seq_cls(seed=5)
    weights = {n: p.detach() for n, p in prunable_parameters(model).items()}
    dense = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    lvl1 = Ticket(prune_to(weights, dense, target_sparsity=0.2))
    lvl2 = Ticket(prune_to(weights, lvl1.masks, target_sparsity=0.4))
    assert lvl2.is_subset_of(lvl1) and lvl1.is_subset_of(Ticket(dense))
    assert not lvl1.is_subset_of(lvl2)
    name = next(iter(lvl2.masks))
    revived = {n: m.clone() for n, m in lvl2.masks.items()}
    pruned_in_lvl1 = (~lvl1.masks[name]).nonzero()[0].tolist()
    revived[name][tuple(pruned_in_lvl1)] = True  # a weight pruned at level 1 comes back
    assert not Ticket(revived).is_subset_of(lvl1)
    missing = Ticket({n: m for n, m in lvl1.masks.items() if n != name})
    assert not lvl1.is_subset_of(missing)


def test_masks_must_be_binary():
    assert Ticket({"a": torch.tensor([1, 0], dtype=torch.uint8)}).masks["a"].dtype == torch.bool
    with pytest.raises(ValueError):
        Ticket({"a": torch.tensor([0.5, 1.0])})
