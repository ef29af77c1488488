"""``bert-ticket pretrain`` end to end on a tiny generated corpus, through the real CLI.

One prepared-data folder serves the module (``pretrain prepare``); each test trains a 2-layer
BERT for a few steps.  ``pretrain.clock=steps`` makes runs reproducible (resume must give
identical losses and weights); the wall-clock tests check the deadline, the schedule and the
elapsed time carried across a resume.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli, free_port, read_jsonl, train_losses

pytestmark = pytest.mark.integration

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "finds", "carries", "follows", "paints", "remembers"]
OBJECTS = ["the red ball", "a long road", "the quiet river", "an open door", "the green hill", "a warm cup"]
PLACES = ["in the morning", "near the house", "after the rain", "at the market", "on the bridge"]

MODEL = ["model.config.hidden_size=32", "model.config.num_hidden_layers=2", "model.config.num_attention_heads=2",
         "model.config.intermediate_size=64", "model.config.max_position_embeddings=64"]


def _corpus(root: Path, n_docs: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
                     .capitalize() for _ in range(rng.randint(2, 6))]
        docs.append(" ".join(sentences))
    path = root / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pretrain")
    corpus = _corpus(root)
    data = root / "prepared"
    settings = [f"pretrain.data.corpus=[{corpus}]", f"pretrain.data.dir={data}", "pretrain.data.vocab_size=120",
                "pretrain.data.seq_length=32", "pretrain.data.max_predictions=5", "pretrain.data.duplication=2",
                "pretrain.data.validation_fraction=0.1", f"cache_dir={root / 'cache'}"]
    r = cli("pretrain", "prepare", *settings)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"prepared data: {data}" in r.stdout
    again = cli("pretrain", "prepare", *settings)  # idempotent: found, not rebuilt
    assert again.returncode == 0 and "found" in again.stdout + again.stderr
    return {"root": str(root), "data": str(data), "corpus": str(corpus), "settings": settings}


def _args(prepared, out: Path, *more: str) -> list[str]:
    return [*prepared["settings"], *MODEL, f"output_dir={out}", "train.batch_size=16", "train.micro_batch_size=8",
            "train.log_every=1", "pretrain.eval_every=0", "pretrain.save_every=0", "eval.batch_size=32", *more]


def test_steps_clock_trains_saves_and_resumes_identically(prepared, tmp_path):
    out = tmp_path / "runs"
    steps = ["pretrain.clock=steps", "train.max_steps=12", "train.eval_every=6", "pretrain.warmup_proportion=0.25"]
    tb = ["tracking.log_with=tensorboard"] if importlib.util.find_spec("tensorboard") else []
    ref = cli("pretrain", *_args(prepared, out, *steps, "run_name=ref", *tb))
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = out / "pretrain" / "ref"
    if tb:  # the budget loop's lines reach the tracker too (test_tracking.py covers the rest)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run / "tracking" / "bert-ticket"))
        acc.Reload()
        train = [(e["step"], e["tokens_per_s"]) for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "train"]
        got = acc.Scalars("train/tokens_per_s")
        assert [x.step for x in got] == [t[0] for t in train] == list(range(1, 13))
        assert [x.value for x in got] == pytest.approx([t[1] for t in train])
        assert [x.step for x in acc.Scalars("eval/mlm_loss")] == [6, 12]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["role"] == "pretrain" and summary["stop_reason"] == "max_steps" and summary["steps"] == 12
    assert summary["tokens"] > 0 and summary["main_metric"] == "mlm_loss"
    assert 0 <= summary["metrics"]["mlm_accuracy"] <= 1 and summary["metrics"]["mlm_loss"] > 0
    events = read_jsonl(run / "metrics.jsonl")
    assert [e["step"] for e in events if e["event"] == "eval"] == [6, 12]
    lrs = [e["lr"] for e in events if e["event"] == "train"]
    # warm-up over 25% of 12 steps (3), then linear decay to 0 at step 12
    assert lrs[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3 * 8 / 9], rel=1e-6)
    assert lrs[-1] == 0.0  # the decay reaches 0 at the end of the budget

    # the model loads in plain transformers: a BertForMaskedLM, no missing weights
    from transformers import AutoTokenizer, BertForMaskedLM

    model, info = BertForMaskedLM.from_pretrained(run / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert len(AutoTokenizer.from_pretrained(run / "model")) == model.config.vocab_size
    # ... and fine-tunes on a GLUE folder (MLM head dropped, pooler and classifier new)
    glue = _sst2_folder(tmp_path)
    ft = cli("rewind", "task=sst2", f"task.data_dir={glue}", "model=local", f"model.name_or_path={run / 'model'}",
             "train.epochs=1", "train.batch_size=16", f"output_dir={out}", "run_name=ft")
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert json.loads((out / "rewind" / "ft" / "summary.json").read_text())["main_metric"] == "accuracy"

    # a crash after a checkpoint, then resume: the same trajectory and the same weights
    crash = cli("pretrain", *_args(prepared, out, *steps, "run_name=cut", "train.save_every=4"),
                env={"BERT_TICKET_FAULT_AT_STEP": "7:KILL"}, process=True)  # the fault hook SIGKILLs its own pid
    assert crash.returncode != 0
    assert not (out / "pretrain" / "cut" / "summary.json").exists()
    again = cli("pretrain", *_args(prepared, out, *steps, "run_name=cut", "train.save_every=4"))
    assert again.returncode == 2 and "resume=true" in again.stderr
    done = cli("pretrain", *_args(prepared, out, *steps, "run_name=cut", "train.save_every=4", "resume=true"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at step 4" in done.stdout
    a, b = train_losses(run), train_losses(out / "pretrain" / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(a[s] == b[s] for s in a), {s: (a[s], b[s]) for s in a if a[s] != b[s]}
    from safetensors.torch import load_file

    wa, wb = load_file(str(run / "model" / "model.safetensors")), load_file(str(out / "pretrain" / "cut" / "model" /
                                                                              "model.safetensors"))
    assert all(wa[k].equal(wb[k]) for k in wa)


def test_wall_clock_budget_deadline_schedule_and_resumed_elapsed(prepared, tmp_path):
    out = tmp_path / "runs"
    wall = ["pretrain.budget=12s", "pretrain.warmup_proportion=0.1", "pretrain.eval_every=4s", "train.save_every=3"]
    cut = cli("pretrain", *_args(prepared, out, *wall, "run_name=wall"), env={"BERT_TICKET_FAULT_AT_STEP": "6:TERM"},
              process=True)  # the fault hook signals its own pid
    assert cut.returncode == 75, cut.stderr[-3000:]
    run = out / "pretrain" / "wall"
    before = [e for e in read_jsonl(run / "metrics.jsonl") if e["event"] == "train"]
    assert before[-1]["step"] == 6
    done = cli("pretrain", *_args(prepared, out, *wall, "run_name=wall", "resume=true"))
    assert done.returncode == 0, done.stderr[-3000:]
    events = read_jsonl(run / "metrics.jsonl")
    train = [e for e in events if e["event"] == "train"]
    after = [e for e in train if e["step"] > 6]
    # elapsed continues from the checkpoint (step 6), it does not restart at 0
    assert after[0]["elapsed_s"] > before[-1]["elapsed_s"] - 1e-6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and summary["clock"] == "wall" and summary["budget_s"] == 12
    # the deadline is checked every optimizer step: it ends on the first step past 12 s
    assert 12 <= summary["elapsed_s"] < 12 + 5
    assert train[-2]["elapsed_s"] < 12 <= train[-1]["elapsed_s"]
    # the schedule follows the clock: warm-up, then linear decay reaching ~0 at the deadline
    peak = max(e["lr"] for e in train)
    assert peak <= 1e-3 and train[-1]["lr"] < 0.2 * peak
    for e in after:  # the resumed part continues the decay: lr = 1e-3 (1 - t/12) / 0.9 at its start
        assert e["lr"] <= 1e-3 * (1 - (e["elapsed_s"] - 3) / 12) / 0.9 + 1e-9
    evals = [e for e in events if e["event"] == "eval"]
    assert evals and evals[-1]["step"] == summary["steps"]


def test_divergence_stops_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    out = tmp_path / "runs"
    args = _args(prepared, out, "pretrain.clock=steps", "train.max_steps=12", "train.save_every=4", "run_name=nan")
    r = cli("pretrain", *args, env={"BERT_TICKET_FAULT_AT_STEP": "7:NAN"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged at step 7" in lines[0] and "step-00000004" in lines[0], r.stderr
    run = out / "pretrain" / "nan"
    info = json.loads((run / "diverged.json").read_text())
    assert info["step"] == 7 and info["last_good_checkpoint"].endswith("step-00000004")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004"]
    assert not (run / "summary.json").exists() and not (run / "model").exists()


def test_early_stop_on_validation_loss_in_bf16(prepared, tmp_path):
    out = tmp_path / "runs"
    r = cli("pretrain", *_args(prepared, out, "pretrain.budget=10min", "train.eval_every=3", "pretrain.early_stop.loss=0.01",
                               "pretrain.early_stop.after=0s", "engine.mixed_precision=bf16", "run_name=early"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "pretrain" / "early" / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stop" and summary["steps"] == 3
    assert summary["mixed_precision"] == "bf16" and summary["metrics"]["mlm_loss"] > 0.01
    assert "early stop" in r.stdout


def _sst2_folder(root: Path) -> Path:
    rng = random.Random(1)
    d = root / "SST-2"
    d.mkdir()
    rows = []
    for i in range(96):
        good = i % 2
        words = [rng.choice(SUBJECTS), rng.choice(["likes", "enjoys"] if good else ["hates", "fears"]),
                 rng.choice(OBJECTS)]
        rows.append(f"{' '.join(words)}\t{good}")
    (d / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[:64]) + "\n")
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[64:]) + "\n")
    return d


def test_earlybert_pretraining_then_finetune_the_compact_model(prepared, tmp_path):
    out = tmp_path / "runs"
    eb = ["method=earlybert", "pretrain.clock=steps", "train.max_steps=8", "method.check_every=1",
          "method.window=2", "method.threshold=0.5", "method.head_fraction=0.5",
          "method.l1_heads=0.01", "method.l1_neurons=0.01", "run_name=eb"]
    r = cli("pretrain", *_args(prepared, out, *eb))
    assert r.returncode == 0, r.stderr[-3000:]
    run = out / "pretrain" / "eb"
    s = json.loads((run / "summary.json").read_text())
    assert s["role"] == "earlybert" and s["early_bird_found"] and s["search_steps"] < 8
    assert s["compact_steps"] == 8 and s["compact_params"] < s["dense_params"]
    for key in ("search_time_s", "compact_time_s", "dense_time_s"):
        assert s[key] > 0
    assert s["time_saving"] == pytest.approx(1 - (s["search_time_s"] + s["compact_time_s"]) / s["dense_time_s"])
    ticket = json.loads((run / "tickets" / "earlybird" / "ticket.json").read_text())
    assert ticket["structure"]["kept_heads"] == 2  # half of the 2 heads in each of 2 layers
    for stage in ("search", "compact", "dense"):
        assert (run / "stages" / stage / "summary.json").exists()

    # the compact model reloads (load_compact) and fine-tunes on a GLUE folder
    glue = _sst2_folder(tmp_path)
    compact = s["model_dir"]
    ft = ["task=sst2", f"task.data_dir={glue}", "model=local", "train.epochs=1", "train.batch_size=16",
          f"output_dir={out}"]
    a = cli("rewind", *ft, f"model.name_or_path={compact}", "run_name=ft-compact")
    assert a.returncode == 0, a.stderr[-3000:]
    fa = json.loads((out / "rewind" / "ft-compact" / "summary.json").read_text())
    assert fa["main_metric"] == "accuracy" and 0 <= fa["main_value"] <= 1
    e = cli("eval", "task=sst2", f"task.data_dir={glue}", "model=local", f"model.name_or_path={compact}",
            f"eval.checkpoint={out / 'rewind' / 'ft-compact' / 'model'}", f"output_dir={out}")
    assert e.returncode == 0, e.stderr[-3000:]


def test_deepspeed_two_processes_match_one(prepared, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "runs"
    args = _args(prepared, out, "pretrain.clock=steps", "train.max_steps=6", "model.config.hidden_dropout_prob=0",
                 "+model.config.attention_probs_dropout_prob=0")
    one = cli("pretrain", *args, "run_name=one")
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                "-m", "bert_ticket_cli"]
    env = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions"), "OMP_NUM_THREADS": "1"}
    two = cli("pretrain", *args, "engine=deepspeed_zero2_bf16", "engine.mixed_precision=no", "run_name=ds",
              launcher=launcher, env=env, process=True)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((out / "pretrain" / "ds" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_type"] == "deepspeed"
    a, b = train_losses(out / "pretrain" / "one"), train_losses(out / "pretrain" / "ds")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-3, (a, b)
    assert summary["tokens"] == json.loads((out / "pretrain" / "one" / "summary.json").read_text())["tokens"]


def test_training_refuses_a_data_folder_prepared_with_other_settings(prepared, tmp_path):
    """``pretrain pretrain.data.dir=D`` (no corpus: the folder is found, not fingerprinted) with a
    data setting the folder was not prepared with: exit 2, one line naming the setting, nothing
    written; the settings it was prepared with (or none at all) train."""
    out = tmp_path / "runs"
    found = [f"pretrain.data.dir={prepared['data']}", *MODEL, f"output_dir={out}", "train.batch_size=16",
             "train.micro_batch_size=8", "pretrain.eval_every=0", "pretrain.save_every=0", "eval.batch_size=32",
             "pretrain.clock=steps", "train.max_steps=2", "train.eval_every=2"]
    r = cli("pretrain", *found, "pretrain.data.vocab_size=130", "run_name=other")
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "pretrain.data.vocab_size: 120 there, 130 now" in r.stderr
    assert not (out / "pretrain" / "other").exists()
    r = cli("pretrain", *found, "pretrain.data.seq_length=64", "run_name=other")
    assert r.returncode == 2 and "pretrain.data.seq_length" in r.stderr
    r = cli("pretrain", *found, "pretrain.data.vocab_size=120", "run_name=same")
    assert r.returncode == 0, r.stderr[-3000:]
