"""MLM tickets through the real CLI, offline: prune method=imp task=mlm on local text files with a
local BertForMaskedLM directory, then the ticket trained again (rewind), evaluated (eval), and
transferred to a classification task (a local SST-2 folder)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bert_ticket_cli.methods.magnitude import level_target
from bert_ticket_cli.sparsity.ticket import Ticket
from tests.conftest import cli

pytestmark = pytest.mark.integration

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "in", "mat", "park", "is", "not", "happy", "sad",
         "big", "small", "red", "blue", "house", "tree", "bird", "movie", "good", "bad"]
HIDDEN, INTER, LAYERS = 32, 64, 2
PRUNABLE = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTER)  # no pooler in BertForMaskedLM


def _model_dir(root: Path) -> Path:
    """A 'pre-trained' masked-LM BERT directory (BertForMaskedLM weights + tokenizer)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    d = root / "tiny-mlm"
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "."]) + "\n")
    tok = BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file=
    assert tok.vocab_size == len(WORDS) + 6
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=INTER, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + " ."


def _corpus(root: Path) -> tuple[Path, Path]:
    """Documents as blank-line separated blocks of sentences."""
    rng = random.Random(0)

    def write(name: str, n_docs: int) -> Path:
        docs = ["\n".join(_sentence(rng) for _ in range(rng.randint(1, 4))) for _ in range(n_docs)]
        (root / name).write_text("\n\n".join(docs) + "\n")
        return root / name

    return write("train.txt", 120), write("valid.txt", 30)


def _sst2_folder(root: Path) -> Path:
    rng = random.Random(1)
    d = root / "SST-2"
    d.mkdir()
    for name, n in (("train.tsv", 64), ("dev.tsv", 20)):
        rows = ["sentence\tlabel"] + [f"{_sentence(rng)}\t{rng.randint(0, 1)}" for _ in range(n)]
        (d / name).write_text("\n".join(rows) + "\n")
    return d


def test_mlm_tickets_rewind_eval_and_transfer(tmp_path):
    model = _model_dir(tmp_path)
    train, valid = _corpus(tmp_path)
    out, cache = tmp_path / "runs", f"cache_dir={tmp_path / 'cache'}"
    common = ["model=local", f"model.name_or_path={model}", f"output_dir={out}", cache, "train.batch_size=16",
              "train.lr=1e-3", "train.log_every=100"]
    mlm = ["task=mlm", f"task.data_files={{train: {train}, validation: {valid}}}", "task.max_seq_length=32"]

    # ---- prune: IMP tickets found on masked language modelling ----
    r = cli("prune", "method=imp", *mlm, *common, "prune.levels=2", "train.epochs=1", "run_name=mlm-imp")
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "prune" / "mlm-imp"
    for k in (1, 2):
        t = Ticket.load(run / "tickets" / f"level-{k:02d}")
        assert t.total() == PRUNABLE and not any(n.startswith("pooler.") for n in t.masks)
        assert t.total() - t.kept() == level_target(k, rate=0.1, schedule="linear", total=PRUNABLE)
        assert t.meta["source_task"] == "mlm"
    for k in range(3):
        level = json.loads((run / "levels" / f"level-{k:02d}" / "summary.json").read_text())
        assert {"mlm_loss", "mlm_accuracy", "perplexity"} <= set(level["metrics"])
        assert level["main_metric"] == "mlm_accuracy" and 0.0 <= level["metrics"]["mlm_accuracy"] <= 1.0
        assert level["metrics"]["perplexity"] == pytest.approx(2.718281828 ** level["metrics"]["mlm_loss"], rel=1e-6)
    ticket = run / "tickets" / "level-02"

    # ---- rewind: the ticket trained again on MLM, then eval of the saved model ----
    r = cli("rewind", f"ticket={ticket}", *mlm, *common, "train.epochs=1", "run_name=mlm-rewind")
    assert r.returncode == 0, r.stderr[-3000:]
    rewound = json.loads((out / "rewind" / "mlm-rewind" / "summary.json").read_text())
    assert rewound["sparsity"] == pytest.approx(0.2, abs=1e-4)
    r = cli("eval", *mlm, f"eval.checkpoint={out / 'rewind' / 'mlm-rewind' / 'model'}", f"output_dir={out}", cache,
            "run_name=mlm-eval")
    assert r.returncode == 0, r.stderr[-3000:]
    evaluated = json.loads((out / "eval" / "mlm-eval" / "summary.json").read_text())
    # The validation masks are fixed: eval reproduces the metrics of the end of training.
    assert evaluated["metrics"] == pytest.approx(rewound["metrics"], rel=1e-5)

    # ---- transfer: the MLM ticket on a classification task, same model directory ----
    sst2 = _sst2_folder(tmp_path)
    r = cli("transfer", f"ticket={ticket}", "task=sst2", f"task.data_dir={sst2}", *common, "train.epochs=1",
            "run_name=mlm-to-sst2")
    assert r.returncode == 0, r.stderr[-3000:]
    pair = json.loads((out / "transfer" / "mlm-to-sst2" / "summary.json").read_text())
    assert pair["sparsity"] == pytest.approx(Ticket.load(ticket).sparsity())
    assert pair["ticket_source_task"] == "mlm" and "accuracy" in pair["metrics"]
