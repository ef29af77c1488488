"""The real loading code, offline: a local model directory, local GLUE (MNLI matched and
mismatched) and SQuAD folders, through the CLI, then eval with leaderboard files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.integration

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "park", "is", "not", "happy", "sad",
         "who", "where", "what", "did", "in", "big", "small", "red", "blue", "house", "tree", "bird"]
LABELS = ["entailment", "neutral", "contradiction"]


def _model_dir(root: Path) -> Path:
    """A 'pre-trained' BERT directory as save_pretrained writes it (BertModel weights + tokenizer)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = root / "tiny-bert"
    d.mkdir()
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", "?"]) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file=
    assert tok.vocab_size == len(WORDS) + 7
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mnli_folder(root: Path) -> Path:
    rng = random.Random(0)
    d = root / "MNLI"
    d.mkdir()
    head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]

    def write(name: str, n: int, labelled: int | None):
        cols = head + (["label1"] + [f"label{i}" for i in range(2, labelled + 1)] + ["gold_label"] if labelled else [])
        rows = ["\t".join(cols)]
        for i in range(n):
            s1, s2 = _sentence(rng), _sentence(rng)
            row = [str(i), "1", f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2]
            if labelled:
                lab = rng.choice(LABELS)
                row += [lab] * labelled + [lab]
            rows.append("\t".join(row))
        (d / name).write_text("\n".join(rows) + "\n")

    write("train.tsv", 64, 1)
    write("dev_matched.tsv", 20, 5)
    write("dev_mismatched.tsv", 24, 5)
    write("test_matched.tsv", 10, None)
    write("test_mismatched.tsv", 12, None)
    return d


def _squad_folder(root: Path) -> Path:
    rng = random.Random(1)
    d = root / "squad"
    d.mkdir()

    def article(k: int) -> dict:
        paragraphs = []
        for p in range(2):
            context = " ".join(_sentence(rng, 8) + " ." for _ in range(6))
            answer = context.split()[rng.randrange(0, 40)]
            start = context.index(answer)
            paragraphs.append({"context": context, "qas": [
                {"id": f"q{k}-{p}-{j}", "question": "where did the cat sat ?",
                 "answers": [{"text": answer, "answer_start": start}]} for j in range(3)]})
        return {"title": f"t{k}", "paragraphs": paragraphs}

    (d / "train-v1.1.json").write_text(json.dumps({"version": "1.1", "data": [article(k) for k in range(4)]}))
    (d / "dev-v1.1.json").write_text(json.dumps({"version": "1.1", "data": [article(k) for k in range(4, 6)]}))
    return d


def test_local_model_and_mnli_folder_then_eval_with_leaderboard_files(tmp_path):
    model, data, out = _model_dir(tmp_path), _mnli_folder(tmp_path), tmp_path / "runs"
    r = cli("rewind", "model=local", f"model.name_or_path={model}", "task=mnli", f"task.data_dir={data}",
            "train.batch_size=16", "train.epochs=2", "train.lr=1e-3", f"output_dir={out}", f"cache_dir={tmp_path}/cache")
    assert r.returncode == 0, r.stderr[-2000:]
    # model=local: named after the model folder, with the settings' hash
    (run,) = (out / "rewind").glob("mnli-tiny-bert-s42-*")
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) == {"validation_matched/accuracy", "validation_mismatched/accuracy"}
    assert summary["main_metric"] == "validation_matched/accuracy"
    # Accuracy on 20 / 24 examples must be a multiple of 1/20 / 1/24: the splits really are separate.
    assert round(summary["metrics"]["validation_matched/accuracy"] * 20, 6).is_integer()
    assert round(summary["metrics"]["validation_mismatched/accuracy"] * 24, 6).is_integer()

    # The saved model reloads in plain transformers.
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(run / "model").config.num_labels == 3

    r = cli("eval", "task=mnli", f"task.data_dir={data}", f"eval.checkpoint={run / 'model'}", "eval.predict_test=true",
            f"output_dir={out}", f"cache_dir={tmp_path}/cache")
    assert r.returncode == 0, r.stderr[-2000:]
    ev_dir = out / "eval" / f"mnli-{run.name}"
    ev = json.loads((ev_dir / "summary.json").read_text())
    assert ev["metrics"] == pytest.approx(summary["metrics"])
    pred = ev_dir / "predictions"
    m = (pred / "MNLI-m.tsv").read_text().splitlines()
    mm = (pred / "MNLI-mm.tsv").read_text().splitlines()
    assert m[0] == "index\tprediction" and len(m) == 11 and len(mm) == 13
    assert {line.split("\t")[1] for line in m[1:]} <= set(LABELS)


def test_squad_end_to_end(tmp_path):
    model, data, out = _model_dir(tmp_path), _squad_folder(tmp_path), tmp_path / "runs"
    r = cli("rewind", "model=local", f"model.name_or_path={model}", "task=squad", f"task.data_dir={data}",
            "task.max_seq_length=64", "task.doc_stride=32", "train.batch_size=8", "train.epochs=1",
            "train.lr=1e-3", f"output_dir={out}", f"cache_dir={tmp_path}/cache", "run_name=squad-tiny-bert")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "rewind" / "squad-tiny-bert" / "summary.json").read_text())
    assert set(summary["metrics"]) == {"exact_match", "f1"} and summary["main_metric"] == "f1"
    assert 0.0 <= summary["metrics"]["exact_match"] <= summary["metrics"]["f1"] <= 100.0
