"""Tokenization output, dynamic padding, and the on-disk cache (also across processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bert_ticket_cli.data.glue import load_raw
from bert_ticket_cli.data.tokenize import collate_classification, tokenize_classification, tokenizer_fingerprint
from bert_ticket_cli.tasks import get_task

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rte_dir(tmp_path, write_tsv):
    folder = tmp_path / "RTE"
    write_tsv(folder / "train.tsv", [
        ["index", "sentence1", "sentence2", "label"],
        [0, "the cat sat on the mat .", "the cat sat .", "entailment"],
        [1, "the dog ran and the man watched the final game of the season .", "a dog sat .", "not_entailment"],
        [2, "it was good .", "it is very good and not bad .", "entailment"],
    ])
    return folder


@pytest.fixture
def count_calls(monkeypatch, wordpiece_tokenizer):
    """Count calls of the tokenizer class (dunder calls are looked up on the type)."""
    calls = []
    cls = type(wordpiece_tokenizer)
    original = cls.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_pairs_are_truncated_not_padded(rte_dir, wordpiece_tokenizer):
    task = get_task("rte")
    raw = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    ds = tokenize_classification(raw, wordpiece_tokenizer, task, max_seq_length=12)
    assert ds.column_names == ["input_ids", "attention_mask", "token_type_ids", "labels", "idx"]
    assert ds.cache_files == []  # no cache_dir: in memory
    lengths = [len(ids) for ids in ds["input_ids"]]
    # row 0: [CLS] the cat sat on the mat . [SEP] the cat sat . [SEP] = 14 tokens -> truncated to 12
    assert lengths[0] == 12 and max(lengths) == 12
    expected = wordpiece_tokenizer("the cat sat on the mat .", "the cat sat .", truncation=True, max_length=12)
    assert ds[0]["input_ids"] == expected["input_ids"]
    assert ds[0]["token_type_ids"] == expected["token_type_ids"] and 1 in ds[0]["token_type_ids"]
    assert ds["labels"] == [0, 1, 0] and ds["idx"] == [0, 1, 2]
    assert str(ds.features["labels"].dtype) == "int64"
    # row 0 is short enough untruncated at a larger limit: no padding is added
    short = tokenize_classification(raw, wordpiece_tokenizer, task, max_seq_length=64)
    assert [len(x) for x in short["input_ids"]][0] == 14
    assert len({len(x) for x in short["input_ids"]}) > 1


def test_stsb_labels_are_float(tmp_path, write_tsv, wordpiece_tokenizer):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    row = [0, "g", "f", "y", "0", "n", "n", "a man plays guitar", "a man plays piano", "3.25"]
    write_tsv(tmp_path / "dev.tsv", [header, row])
    task = get_task("stsb")
    raw = load_raw(task, data_dir=str(tmp_path), splits=("validation",))["validation"]
    ds = tokenize_classification(raw, wordpiece_tokenizer, task, max_seq_length=32)
    assert ds.features["labels"].dtype == "float32"
    assert ds["labels"] == [3.25]


def test_collate_pads_to_longest_and_drops_idx(rte_dir, wordpiece_tokenizer):
    task = get_task("rte")
    raw = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    ds = tokenize_classification(raw, wordpiece_tokenizer, task, max_seq_length=64)
    collate = collate_classification(wordpiece_tokenizer)
    batch = collate([ds[0], ds[2]])
    longest = max(len(ds[0]["input_ids"]), len(ds[2]["input_ids"]))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (2, longest) and batch["input_ids"].dtype == torch.int64
    assert batch["labels"].tolist() == [0, 0]
    short = min(len(ds[0]["input_ids"]), len(ds[2]["input_ids"]))
    row = 0 if len(ds[0]["input_ids"]) == short else 1
    assert batch["attention_mask"][row].sum().item() == short
    assert batch["input_ids"][row, short:].eq(wordpiece_tokenizer.pad_token_id).all()
    # usable in a DataLoader as is
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    assert next(iter(loader))["input_ids"].shape[0] == 3


def test_cache_is_reused_and_keyed(rte_dir, tmp_path, wordpiece_tokenizer, wordpiece_vocab_file, count_calls):
    from transformers import BertTokenizerFast

    task = get_task("rte")
    cache = tmp_path / "cache"
    raw = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    first = tokenize_classification(raw, wordpiece_tokenizer, task, 16, cache_dir=str(cache))
    assert count_calls, "the first call tokenizes"
    assert first.cache_files and all(Path(f["filename"]).is_relative_to(cache) for f in first.cache_files)
    created = entries(cache)
    assert len(created) == 1 and not created[0].startswith(".")

    # Fresh inputs with the same content, and a fresh tokenizer object with the same vocabulary.
    count_calls.clear()
    raw_again = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    tokenizer_again = BertTokenizerFast(vocab=str(wordpiece_vocab_file))
    second = tokenize_classification(raw_again, tokenizer_again, task, 16, cache_dir=str(cache))
    assert count_calls == []
    assert second.cache_files == first.cache_files
    assert entries(cache) == created
    assert second["input_ids"] == first["input_ids"] and second._fingerprint == first._fingerprint

    # A different length, or different file contents, is a different entry.
    tokenize_classification(raw, wordpiece_tokenizer, task, 8, cache_dir=str(cache))
    assert len(entries(cache)) == 2
    (rte_dir / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tdog\tcat\tentailment\n")
    changed = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    count_calls.clear()
    out = tokenize_classification(changed, wordpiece_tokenizer, task, 16, cache_dir=str(cache))
    assert count_calls and len(out) == 1 and len(entries(cache)) == 3


def test_tokenizer_fingerprint_ignores_call_state_but_not_vocabulary(wordpiece_tokenizer, tmp_path):
    from transformers import BertTokenizerFast

    before = tokenizer_fingerprint(wordpiece_tokenizer)
    wordpiece_tokenizer(["the cat sat on the mat"], truncation=True, max_length=3, padding="max_length")
    assert tokenizer_fingerprint(wordpiece_tokenizer) == before
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n")
    assert tokenizer_fingerprint(BertTokenizerFast(vocab=str(vocab))) != before
    cased = BertTokenizerFast(vocab=str(vocab), do_lower_case=False)
    assert tokenizer_fingerprint(cased) != tokenizer_fingerprint(BertTokenizerFast(vocab=str(vocab)))


CHILD = """
import json, sys
from transformers import BertTokenizerFast
from bert_ticket_cli.data.glue import load_raw
from bert_ticket_cli.data.tokenize import tokenize_classification
from bert_ticket_cli.tasks import get_task

calls = []
original = BertTokenizerFast.__call__
def counting(self, *a, **k):
    calls.append(1)
    return original(self, *a, **k)
BertTokenizerFast.__call__ = counting

data_dir, vocab, cache = sys.argv[1:4]
task = get_task("rte")
raw = load_raw(task, data_dir=data_dir, splits=("train",))["train"]
ds = tokenize_classification(raw, BertTokenizerFast(vocab=vocab), task, 16, cache_dir=cache)
print(json.dumps({"calls": len(calls), "files": [f["filename"] for f in ds.cache_files]}))
"""


def test_cache_is_reused_by_a_new_process(rte_dir, tmp_path, wordpiece_tokenizer, wordpiece_vocab_file, count_calls):
    task = get_task("rte")
    cache = tmp_path / "cache"
    raw = load_raw(task, data_dir=str(rte_dir), splits=("train",))["train"]
    here = tokenize_classification(raw, wordpiece_tokenizer, task, 16, cache_dir=str(cache))
    assert count_calls
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, "-c", CHILD, str(rte_dir), str(wordpiece_vocab_file), str(cache)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["calls"] == 0
    assert child["files"] == [f["filename"] for f in here.cache_files]
    assert len(entries(cache)) == 1
