"""Masked language modelling: text loading, packing, deterministic 80/10/10 masking, metrics."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset

from bert_ticket_cli.data.mlm import (
    EVAL_SEED, Masker, MlmCollator, example_seed, load_text, mask_split, pack_blocks,
    parse_hub_name, read_text_file, split_documents,
)
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.metrics.mlm import batch_sums, metrics_from_sums, mlm_metrics
from bert_ticket_cli.tasks import MLM, task_info
from bert_ticket_cli.tasks.mlm import build_mlm_data


def _rows(tokenizer, n_rows: int = 200, length: int = 100, seed: int = 0) -> list[dict]:
    """Rows like the packed training data: [CLS] words [SEP] words [SEP], with an [UNK] inside."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    words = [i for i in range(len(tokenizer)) if i not in special]
    rows = []
    for idx in range(n_rows):
        body = [int(x) for x in rng.choice(words, size=length)]
        body[length // 2] = tokenizer.sep_token_id
        body[length // 3] = tokenizer.unk_token_id
        rows.append({"input_ids": [tokenizer.cls_token_id, *body, tokenizer.sep_token_id], "idx": idx})
    return rows


# ------------------------------------------------------------------------------- masking


def test_masking_statistics_follow_bert(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    rows = _rows(tok)
    batch = MlmCollator(tok, seed=7)(rows)
    original = torch.tensor([r["input_ids"] for r in rows])
    ids, labels = batch["input_ids"], batch["labels"]
    special = torch.isin(original, torch.tensor(tok.all_special_ids))
    selected = labels != -100

    # Special tokens ([CLS], [SEP], [UNK]) are never selected nor changed.
    assert not (selected & special).any()
    assert torch.equal(ids[special], original[special])
    # Exactly round(15%) of the 102 tokens of every row (BERT's exact count per sequence).
    assert original.shape[1] == 102
    assert (selected.sum(1) == round(0.15 * 102)).all()
    # Labels are the original tokens; unselected positions are untouched.
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(ids[~selected], original[~selected])
    # 80% [MASK], 10% a random (non-special) token, 10% unchanged, over 200 x 15 = 3000 tokens.
    n = int(selected.sum())
    masked = (ids[selected] == tok.mask_token_id).sum().item() / n
    kept = (ids[selected] == original[selected]).sum().item() / n
    swapped = 1.0 - masked - kept
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.025 and abs(swapped - 0.1) < 0.025
    replaced = ids[selected & (ids != tok.mask_token_id) & (ids != original)]
    assert not torch.isin(replaced, torch.tensor(tok.all_special_ids)).any()
    # The batch is ready for BertForMaskedLM.
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["attention_mask"].all() and not batch["token_type_ids"].any()


def test_masks_are_a_function_of_seed_and_idx_only(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    rows = _rows(tok, n_rows=8, length=40)
    c = MlmCollator(tok, seed=3)
    full = c(rows)
    # The same row in another batch, in another position, or alone: the same masks (so 1 or N
    # processes, any batch composition and a resumed run agree).
    alone = c([rows[5]])
    assert torch.equal(alone["input_ids"][0], full["input_ids"][5])
    assert torch.equal(alone["labels"][0], full["labels"][5])
    again = MlmCollator(tok, seed=3)(list(reversed(rows)))
    assert torch.equal(again["labels"].flip(0), full["labels"])
    # Not the global RNG: drawing from it in between changes nothing.
    torch.manual_seed(0)
    torch.rand(100)
    assert torch.equal(c(rows)["input_ids"], full["input_ids"])
    # Another idx (same tokens), another seed, another epoch: other masks.
    moved = c([{**rows[5], "idx": 6}])
    assert not torch.equal(moved["labels"][0], full["labels"][5])
    other_seed = MlmCollator(tok, seed=4)(rows)
    assert not torch.equal(other_seed["labels"], full["labels"])
    c.set_epoch(1)
    assert not torch.equal(c(rows)["labels"], full["labels"])


def test_example_seed_is_stable_across_processes():
    # A hash of the three numbers, not Python's salted hash(): a fixed value.
    assert example_seed(42, 7) == example_seed(42, 7, 0)
    assert len({example_seed(42, 7), example_seed(42, 8), example_seed(43, 7), example_seed(42, 7, 1)}) == 4
    assert 0 <= example_seed(2**40, 2**40) < 2**63


def test_short_rows_are_padded_and_labelled_rows_kept(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    c = MlmCollator(tok, seed=0)
    cat = tok.get_vocab()["cat"]
    rows = [{"input_ids": [tok.cls_token_id, cat, cat, tok.sep_token_id], "idx": 0},
            {"input_ids": [tok.cls_token_id, cat, tok.sep_token_id], "labels": [-100, cat, -100], "idx": 1}]
    b = c(rows)
    assert b["input_ids"].shape == (2, 4)
    assert (b["labels"][0] != -100).sum() == 1  # at least one token of a short block
    assert b["input_ids"][1].tolist() == [tok.cls_token_id, cat, tok.sep_token_id, tok.pad_token_id]
    assert b["labels"][1].tolist() == [-100, cat, -100, -100]
    assert b["attention_mask"].tolist()[1] == [1, 1, 1, 0]


def test_masker_needs_a_mask_token_and_a_sane_probability(wordpiece_tokenizer):
    with pytest.raises(UserError, match="mlm_probability"):
        Masker(wordpiece_tokenizer, 1.5)
    no_mask = SimpleNamespace(mask_token_id=None, all_special_ids=[0], __len__=lambda self: 5)
    with pytest.raises(UserError, match="mask_token"):
        Masker(no_mask)


# ------------------------------------------------------------------------------- text and packing


def test_documents_are_blank_line_blocks_or_lines():
    assert split_documents("a b\nc d\n\ne f\n\n\n g\n") == ["a b\nc d", "e f", "g"]
    assert split_documents("\n one\ntwo \nthree\n\n") == ["one", "two", "three"]
    assert split_documents("\n \n") == []


def test_text_files_jsonl_and_data_dir(tmp_path):
    (tmp_path / "train.txt").write_text("the cat\n\nthe dog\n")
    (tmp_path / "valid.txt").write_text("a cat\na dog\n")
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "the mat"}) + "\n\n" + json.dumps({"text": "a"}) + "\n")
    raw = load_text(MLM, data_dir=str(tmp_path), splits=["train", "validation"])
    assert raw["train"]["text"] == ["the cat", "the dog"] and raw["validation"]["text"] == ["a cat", "a dog"]
    files = load_text(MLM, data_files={"train": str(tmp_path / "x.jsonl")}, splits=["train"])
    assert files["train"]["text"] == ["the mat", "a"]
    # Content-derived fingerprints: the token cache survives new processes.
    assert read_text_file(tmp_path / "train.txt", "train")._fingerprint == raw["train"]._fingerprint
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        read_text_file(tmp_path / "bad.jsonl", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no file for split 'validation'"):
        load_text(MLM, data_dir=str(tmp_path / "empty"), splits=["validation"])
    with pytest.raises(UserError, match="data_files has split 'test'"):
        load_text(MLM, data_files={"test": "x.txt"}, splits=[])


def test_hub_names_and_offline_error():
    assert parse_hub_name("Salesforce/wikitext:wikitext-2-raw-v1") == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert parse_hub_name("some/corpus") == ("some/corpus", None)
    assert task_info("MLM") is MLM and MLM.kind == "mlm" and MLM.test_splits == ()
    with pytest.raises(UserError, match="not available offline"):
        load_text(MLM, hub_dataset="no-such-owner/no-such-corpus", splits=["train"])


def test_hub_datasets_are_read_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None):
        calls.append((name, config))
        return datasets.DatasetDict({"train": Dataset.from_dict({"sentence": ["a b", "c"], "n": [1, 2]}),
                                     "valid": Dataset.from_dict({"sentence": ["d"], "n": [3]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    raw = load_text(MLM, hub_dataset="owner/corpus:small", splits=["train", "validation"])
    assert calls == [("owner/corpus", "small")]
    assert raw["train"]["text"] == ["a b", "c"] and raw["validation"].column_names == ["text"]


def test_packing_into_blocks(wordpiece_tokenizer, tmp_path):
    tok = wordpiece_tokenizer
    docs = ["the cat sat on the mat", "", "a dog ran", "the movie was very good and the plot was great"]
    ds = Dataset.from_dict({"text": docs})
    blocks = pack_blocks(ds, tok, 8, cache_dir=str(tmp_path))
    rows = blocks["input_ids"]
    assert all(r[0] == tok.cls_token_id and r[-1] == tok.sep_token_id and len(r) <= 8 for r in rows)
    assert [len(r) for r in rows] == [8] * len(rows)
    # The bodies, concatenated, are the documents joined by [SEP] (empty ones skipped), less
    # the tokens left over after the last whole block.
    stream = [t for r in rows for t in r[1:-1]]
    expected = []
    for d in docs:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        if ids:
            expected += ([tok.sep_token_id] if expected else []) + ids
    assert len(expected) % 6 != 0 and stream == expected[:len(expected) - len(expected) % 6]
    # Less than one block in all: that one shorter block is kept.
    short = pack_blocks(Dataset.from_dict({"text": ["the cat", "sat"]}), tok, 8)
    assert short["input_ids"] == [[tok.cls_token_id, *tok("the cat", add_special_tokens=False)["input_ids"],
                                   tok.sep_token_id, *tok("sat", add_special_tokens=False)["input_ids"],
                                   tok.sep_token_id]]
    assert blocks["idx"] == list(range(len(rows)))
    # Blocks of one length get the same number of labels, whatever [SEP]s they hold: a
    # micro-batch's token-mean loss then does not depend on how a step's batch is split.
    longer = pack_blocks(Dataset.from_dict({"text": docs * 4}), tok, 20)["input_ids"]
    assert len(longer) >= 4 and sum(r[1:-1].count(tok.sep_token_id) for r in longer) >= 4
    masker = Masker(tok)
    counts = {int((masker(torch.tensor(r), example_seed(0, i))[1] != -100).sum()) for i, r in enumerate(longer)}
    assert counts == {3}  # round(0.15 * 20)
    again = pack_blocks(ds, tok, 8, cache_dir=str(tmp_path))  # from the cache
    assert again["input_ids"] == rows and len(list(tmp_path.glob("mlm-blocks-*"))) == 1


def test_evaluation_masks_are_fixed_and_cached(wordpiece_tokenizer, tmp_path):
    tok = wordpiece_tokenizer
    ds = Dataset.from_dict({"text": ["the cat sat on the mat and the dog ran in the city"] * 6})
    blocks = pack_blocks(ds, tok, 16, cache_dir=str(tmp_path))
    masker = Masker(tok)
    a = mask_split(blocks, masker, cache_dir=str(tmp_path))
    b = mask_split(blocks, masker, cache_dir=None)
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]
    for row, orig in zip(a, blocks):
        masked, labels = masker(torch.tensor(orig["input_ids"]), example_seed(EVAL_SEED, orig["idx"]))
        assert row["input_ids"] == masked.tolist() and row["labels"] == labels.tolist()


def test_build_mlm_data_limits_and_masks_only_eval(wordpiece_tokenizer, tmp_path):
    tok = wordpiece_tokenizer
    raw = {"train": Dataset.from_dict({"text": ["the cat sat on the mat"] * 20}),
           "validation": Dataset.from_dict({"text": ["a dog ran in the park"] * 10})}
    cfg = SimpleNamespace(seed=1, task=SimpleNamespace(max_seq_length=10, max_train_samples=3, max_eval_samples=None,
                                                       mlm_probability=0.15))
    data = build_mlm_data(cfg, MLM, raw, tok, train=True, evals=["validation"], cache_dir=str(tmp_path))
    assert len(data.train) == 3 and data.train.column_names == ["input_ids", "idx"]
    assert data.evals["validation"].column_names == ["input_ids", "labels", "idx"]
    assert data.collate.keeps_labels


# ------------------------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    # Position 0: p = (1/4, 1/2, 1/4), label 1 -> loss ln 2, correct.  Position 1: uniform over
    # 3, label 2 -> loss ln 3, arg-max 0 -> wrong.  Position 2: ignored.
    logits = np.array([[[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    labels = np.array([[1, 2, -100]])
    m = mlm_metrics(logits, labels)
    assert m["mlm_loss"] == pytest.approx(math.log(6.0) / 2)
    assert m["mlm_accuracy"] == pytest.approx(0.5)
    assert m["perplexity"] == pytest.approx(math.sqrt(6.0))
    # The per-batch torch path gives the same, from small per-row sums.
    sums = batch_sums(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert sums["mlm_count"].tolist() == [2] and sums["mlm_correct"].tolist() == [1]
    m2 = metrics_from_sums(float(sums["mlm_loss_sum"].sum()), 1, 2)
    assert m2 == pytest.approx(m)
    # Predicted ids: accuracy only.
    p = mlm_metrics(np.array([[1, 0, 0]]), labels)
    assert p["mlm_accuracy"] == 0.5 and math.isnan(p["mlm_loss"])
    assert math.isnan(metrics_from_sums(0.0, 0, 0)["mlm_accuracy"])


def test_batch_sums_match_the_models_own_loss():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32)).eval()
    ids = torch.randint(5, 30, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    labels[0, 5] = ids[0, 5]
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    s = batch_sums(out.logits, labels)
    m = metrics_from_sums(float(s["mlm_loss_sum"].sum()), float(s["mlm_correct"].sum()), float(s["mlm_count"].sum()))
    assert m["mlm_loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert m == pytest.approx(mlm_metrics(out.logits, labels), rel=1e-5)


class _OneProcess:
    """The Accelerator calls predict makes, for one process and no mixed precision (a real
    Accelerator would inherit the process-wide state other tests left behind)."""

    is_main_process = True

    def prepare_data_loader(self, loader, device_placement=True):
        return loader

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def gather_for_metrics(self, tensor):
        return tensor


def test_predict_reduces_mlm_batches_without_gathering_logits(wordpiece_tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    from bert_ticket_cli.engine.evaluate import predict
    from bert_ticket_cli.tasks import TaskData

    tok = wordpiece_tokenizer
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    blocks = Dataset.from_dict({"input_ids": [r["input_ids"] for r in _rows(tok, 10, 20)], "idx": list(range(10))})
    collate = MlmCollator(tok, seed=0)
    ev = mask_split(blocks, collate.masker)
    out = predict(_OneProcess(), model, ev, collate, batch_size=4)
    assert set(out) == {"mlm_loss_sum", "mlm_correct", "mlm_count"} and out["mlm_count"].shape == (10,)
    data = TaskData(info=MLM, collate=collate, evals={"validation": ev})
    metrics = data.split_metrics("validation", out)
    model.eval()
    with torch.no_grad():
        whole = model(**collate(list(ev)))
    assert metrics == pytest.approx(mlm_metrics(whole.logits, collate(list(ev))["labels"]), rel=1e-5)
    assert metrics["mlm_loss"] == pytest.approx(whole.loss.item(), rel=1e-5)
