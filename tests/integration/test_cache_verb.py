"""``bert-ticket cache`` (issue 14, offline compute nodes): the offline check of a local model
and a local GLUE folder, the commands it prints then run offline, and what is missing from the
cache is a table plus one error line (exit 2).  The hub cannot be reached here: the download
step itself is the library calls a run makes, not tested apart."""

from __future__ import annotations

import random
import shlex
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "park", "is", "not", "happy", "sad", "big", "small"]


def _model_dir(root: Path) -> Path:
    """A local BERT folder as save_pretrained writes it (weights + tokenizer)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = root / "tiny-bert"
    d.mkdir()
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."]) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _rte_folder(root: Path) -> Path:
    rng = random.Random(0)
    d = root / "RTE"
    d.mkdir()
    for name, n in (("train.tsv", 32), ("dev.tsv", 16)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        rows += [f"{i}\t{' '.join(rng.choices(WORDS, k=6))}\t{' '.join(rng.choices(WORDS, k=4))}\t"
                 f"{rng.choice(['entailment', 'not_entailment'])}" for i in range(n)]
        (d / name).write_text("\n".join(rows) + "\n")
    return d


def test_cache_checks_a_local_model_and_glue_folder_then_its_offline_command_runs(tmp_path):
    model, rte, cache = _model_dir(tmp_path), _rte_folder(tmp_path), tmp_path / "cache"
    r = cli("cache", "model=local", f"model.name_or_path={model}", "task=rte", f"task.data_dir={rte}",
            "task.max_seq_length=32", f"cache_dir={cache}")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│ ")
            and line.split()[1] in ("tokenizer", "model", "data")}
    assert set(rows) == {"tokenizer", "model", "data"} and all(" ok " in row for row in rows.values()), r.stdout
    assert "32 train, 16 validation" in rows["data"] and any(cache.rglob("*.arrow"))  # tokenized for the runs
    (line,) = [l for l in r.stdout.splitlines() if " bert-ticket rewind " in l]
    assert line.strip().startswith("HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 bert-ticket rewind model=local")

    # the printed command runs offline as printed (a few steps)
    args = shlex.split(line.split(" bert-ticket rewind ", 1)[1])
    r = cli("rewind", *args, "train.max_steps=2", "train.batch_size=8", f"output_dir={tmp_path / 'runs'}")
    assert r.returncode == 0, r.stderr


def test_what_is_missing_from_the_cache_is_a_table_and_one_error_line(tmp_path):
    rte = _rte_folder(tmp_path)
    r = cli("cache", "model=local", "model.name_or_path=no-such-org/no-such-bert", "task=rte",
            f"task.data_dir={rte}", f"cache_dir={tmp_path / 'cache'}")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: not ready for offline runs:"), r.stderr
    assert "model no-such-org/no-such-bert: not in the cache" in lines[0] and "without HF_HUB_OFFLINE=1" in lines[0]
    table = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│ ")
             and line.split()[1] in ("tokenizer", "model", "data")}
    assert "MISSING" in table["model"] and "MISSING" in table["tokenizer"]
    assert " ok " in table["data"] and "32 train, 16 validation" in table["data"]  # the raw splits are there
    assert "bert-ticket rewind" not in r.stdout
