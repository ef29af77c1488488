"""Pre-training throughput: sparse token prediction (``SparseBertForMaskedLM``, Izsak et al.
2021) against the masked-language-model step a transformers user would otherwise run.

What is compared, in one process, on the same model geometry, batch rows and machine; one
*training step* = collate the batch, forward, ``loss.backward()``, ``optimizer.step()``,
``optimizer.zero_grad()``:

* ours     -- ``SparseBertForMaskedLM`` (the MLM head, transform + tied 30522-column decoder +
  cross-entropy, runs only on the ~19 predicted tokens of a 128-token row) fed the collated
  pre-training format.  Rows masked at data-preparation time (``input_ids``, ``mlm_positions``
  and ``mlm_labels``, up to ``--predictions`` = 20 per row: BERT's ``round(0.15 * tokens)``
  predictions with 80/10/10 replacement) are built once before timing, as python lists, the
  way ``data.pretraining`` prepares and reads them back; the timed step *does* include our
  collate (``data.pretraining.PretrainCollator``: numpy padding of the rows into [B, L] /
  [B, 20] arrays, attention mask, ``torch.from_numpy``) and the copy to the device.
  Optimizer: ``torch.optim.AdamW(fused=True)`` with the recipe's settings (lr 1e-3, betas
  (0.9, 0.98), eps 1e-6, weight decay 0.01; no decay on biases and LayerNorm weights);
* baseline -- ``transformers.BertForMaskedLM`` (the head over all B x L positions, as
  ``run_mlm.py`` trains it) with ``DataCollatorForLanguageModeling(tokenizer,
  mlm_probability=0.15)`` called every step on the raw token rows (python lists of
  ``input_ids`` / ``token_type_ids`` / ``attention_mask`` / ``special_tokens_mask``, as
  ``run_mlm.py``'s grouped dataset yields them; the collator's padding, tensor building and
  random masking count in the step) and ``torch.optim.AdamW(model.parameters())`` with
  torch's default settings and implementation choice (``--baseline-foreach`` forces the
  foreach kernels; see the JSON's ``baseline_optimizer``).

Both sides: the same random initial weights (ours is a converted copy), SDPA attention (the
transformers default), dropout 0.1 (BERT's default, train mode), bf16 autocast with
``--bf16``.  The tokenizer for the collator is a ``BertTokenizerFast`` built offline from a
generated vocabulary of ``--vocab`` entries ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102,
[MASK]=103, as in bert-base-uncased).  Rows are packed, ``--seq`` tokens each:
[CLS] random ids [SEP].

Timing: ``--warmup-steps`` untimed steps per side (optimizer states are allocated at the first
step), then ``--rounds`` rounds; in each round the sides (and a reference matmul, below)
alternate, the order flipping every round (``_common.alternate``), each running ``--iters``
timed steps, each timed alone (``torch.cuda.synchronize`` around it on a GPU).  A side's
figure is its median single step pooled over all rounds; ``speedup_paired`` is the median over
rounds of the two back-to-back windows' ratio.  Each step is also split into phases (collate,
forward, backward, optimizer step + zero_grad) with a synchronisation between phases (free on
a CPU; on a GPU it serialises host and device a little more, on both sides alike).

Model FLOPs counted for OUR step (multiply-add = 2 FLOPs; forward + backward = 3 x forward)::

    flops = 6 * N_enc * T                        # encoder linear layers but the last, T = B * L tokens
          + 3 * (layers - 1) * B * 4 * L^2 * H   # attention scores QK^T and the weighted sum of V
          + 6 * (2 * H^2 * T + (2 * H^2 + 2 * H * I) * M) + 3 * 4 * L * H * M
                                                 # last layer: k, v at every token; q, attention,
                                                 # output projection and FFN at the M predicted ones
          + 6 * (H^2 + H * V) * M                # sparse head: transform + tied decoder
    N_enc = (layers - 1) * (4 * H^2 + 2 * H * I) # q, k, v, attention output; FFN in and out (weights)

Not counted: biases, LayerNorm, GELU, softmax, dropout, the embedding lookup and its gradient,
the optimizer.  The baseline's figure counts every layer in full with M = B * L (its head and
last layer run on every position).  ``flops_ratio`` = baseline FLOPs / our FLOPs is the
speedup to expect if both sides ran at the same FLOP/s: the first layers do the same work on
both sides, so sparse prediction removes the head's share and most of the last layer's
(about 3.0 at the default 4-layer geometry; ~1.45 at BERT-base geometry, 12 layers).  Measured speedups above it come
from the baseline's memory-bound work on [B * L, V] tensors (log-softmax, its gradient, the
zero-filled NLL gradient: ~500 MB each at the default size) and its slower optimizer.
``flops_vs_matmul`` = our achieved model FLOP/s / the FLOP/s of a plain
square matmul (``--matmul-size``, default 2048; fp32, or bf16 under ``--bf16``) timed in the
same rounds on the same device and threads: how close the step gets to the machine's dense
GEMM speed.  On a GPU, ``mfu`` = our model FLOP/s / ``--peak-tflops`` (default 989: H100/H200
dense bf16); ``--peak-tflops`` on a CPU gives an MFU there too.

Sanity check: before training, both models (same weights) compute in eval mode the loss of
one and the same masked batch (a collator batch, converted to positions for ours); the two
numbers agree to float rounding (``sanity_loss``), so both sides compute the same objective.

OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE`` unless exported, see
``_common.passive_openmp``).  GPU use (``--device cuda --bf16``) is written to be correct but
has not been run (no GPU where this was written).

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "pretrain_throughput", "speedup": ..., "ours_tokens_per_s": ...,
     "baseline_tokens_per_s": ..., "flops_vs_matmul": ..., ...}

Run::

    .venv/bin/python benchmarks/pretrain_throughput.py --quick     # batch 8: well under a minute
    .venv/bin/python benchmarks/pretrain_throughput.py             # 4 layers, hidden 256, seq 128, batch 32
    .venv/bin/python benchmarks/pretrain_throughput.py --device cuda --bf16 --layers 24 --hidden 1024 \\
        --heads 16 --batch 64                                     # BERT-large geometry (untested)
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()  # before torch: see there

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCHMARK = "pretrain_throughput"
# The academic-budget recipe's optimizer (Izsak et al. 2021).
RECIPE = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
MLM_PROBABILITY = 0.15
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
FIRST_WORD = 104  # ids below are special or [unused]

# Default: a small pre-training model that trains at a useful speed on a CPU (BERT-mini-like
# width 256, 4 layers of 4 heads, FFN 1024) at the recipe's sequence length 128 and
# bert-base-uncased's 30522-token vocabulary; batch 32 = 4096 tokens per step.
DEFAULT = dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=30522, seq=128, batch=32, predictions=20,
               iters=2, warmup_steps=2, rounds=5)
QUICK = dict(DEFAULT, batch=8, iters=2, warmup_steps=2, rounds=5)
SIZE_HELP = {"layers": "encoder layers", "hidden": "hidden size", "heads": "attention heads",
             "intermediate": "FFN size (default 4 x hidden when --hidden is given)",
             "vocab": "vocabulary size (bert-base-uncased: 30522)", "seq": "tokens per row",
             "batch": "rows per step", "predictions": "max predicted tokens per row (mlm_positions width)",
             "iters": "timed steps per side per round", "warmup_steps": "untimed steps per side first",
             "rounds": "alternating rounds (medians are reported)"}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 8, 5 rounds: well under a minute on 2 cores")
    for key, text in SIZE_HELP.items():
        d, q = DEFAULT[key], QUICK[key]
        p.add_argument(f"--{key.replace('_', '-')}", type=int,
                       help=f"{text} (default {d}" + ("" if d == q else f"; quick {q}") + ")")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (meant for a GPU)")
    p.add_argument("--peak-tflops", type=float,
                   help="peak FLOP/s of the device for the MFU figure (default on cuda: 989, H100/H200 dense bf16)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the reference square matmul (2048)")
    p.add_argument("--baseline-foreach", action="store_true",
                   help="give the baseline AdamW foreach=True instead of torch's default choice")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile OUR model (in place, as engine.compile=true does); the baseline stays eager")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS steps of each side (torch.profiler) and print the top ops")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = dict(QUICK if args.quick else DEFAULT)
    for key in SIZE_HELP:
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if args.hidden is not None:
        if args.heads is None:
            size["heads"] = max(1, args.hidden // 64)
        if args.intermediate is None:
            size["intermediate"] = 4 * args.hidden
    if size["hidden"] % size["heads"]:
        p.error(f"--hidden {size['hidden']} is not a multiple of --heads {size['heads']}")
    if min(size["iters"], size["warmup_steps"], size["rounds"], size["batch"], size["predictions"]) < 1:
        p.error("--iters, --warmup-steps, --rounds, --batch and --predictions must be >= 1")
    if not 8 <= size["seq"] <= 512:
        p.error("--seq must be in [8, 512]")
    if size["vocab"] < FIRST_WORD + 16:
        p.error(f"--vocab must be at least {FIRST_WORD + 16}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = 989.0
    return args, size


# ----------------------------------------------------------------------------------- data

def build_tokenizer(vocab_size: int):
    """A BERT WordPiece tokenizer over a generated vocabulary (bert-base-uncased's special ids)."""
    from transformers import BertTokenizerFast

    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(UNK - 1)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(vocab_size - len(tokens))]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})  # vocab_file= is ignored in v5
    assert len(tokenizer) == vocab_size and tokenizer.mask_token_id == MASK and tokenizer.pad_token_id == PAD
    return tokenizer


def raw_rows(size: dict, seed: int) -> list[dict]:
    """Packed rows as ``run_mlm.py``'s grouped dataset yields them (python lists)."""
    rng = np.random.default_rng(seed)
    n, seq = size["batch"], size["seq"]
    ids = rng.integers(FIRST_WORD, size["vocab"], size=(n, seq))
    ids[:, 0], ids[:, -1] = CLS, SEP
    special = [1] + [0] * (seq - 2) + [1]
    return [{"input_ids": row.tolist(), "token_type_ids": [0] * seq, "attention_mask": [1] * seq,
             "special_tokens_mask": list(special)} for row in ids]


def premask_rows(rows: list[dict], size: dict, seed: int) -> list[dict]:
    """Our pipeline's rows (``data.pretraining``: masked at data-prep time, read back as python
    lists): ``round(0.15 * tokens)`` (<= predictions) positions among the non-special tokens,
    80 % [MASK] / 10 % random / 10 % unchanged."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        ids = np.asarray(row["input_ids"], dtype=np.int64)
        candidates = np.flatnonzero(np.asarray(row["special_tokens_mask"]) == 0)
        k = min(size["predictions"], max(1, round(MLM_PROBABILITY * len(candidates))))
        positions = np.sort(rng.choice(candidates, size=k, replace=False))
        labels = ids[positions].copy()
        draw = rng.random(k)
        masked = ids.copy()
        masked[positions[draw < 0.8]] = MASK
        rand = positions[(draw >= 0.8) & (draw < 0.9)]
        masked[rand] = rng.integers(FIRST_WORD, size["vocab"], size=len(rand))
        out.append({"input_ids": masked.tolist(), "mlm_positions": positions.tolist(), "mlm_labels": labels.tolist()})
    return out


def positions_from_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] labels (-100 = not predicted) -> (mlm_positions, mlm_labels) [B, most per row]."""
    picked = labels.ne(-100)
    width = max(1, int(picked.sum(1).max()))
    positions = torch.zeros(labels.shape[0], width, dtype=torch.long)
    out = torch.full((labels.shape[0], width), -100, dtype=torch.long)
    for b in range(labels.shape[0]):
        where = picked[b].nonzero().flatten()
        positions[b, :len(where)] = where
        out[b, :len(where)] = labels[b, where]
    return positions, out


# ---------------------------------------------------------------------------------- model

def build_baseline(size: dict):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                        num_attention_heads=size["heads"], intermediate_size=size["intermediate"],
                        max_position_embeddings=max(512, size["seq"]))
    return BertForMaskedLM(config)


def recipe_adamw(model: torch.nn.Module, fused: bool) -> torch.optim.AdamW:
    """The recipe's AdamW: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": RECIPE["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=RECIPE["lr"], betas=RECIPE["betas"], eps=RECIPE["eps"], fused=fused)


def step_flops(size: dict, predicted_tokens: float, *, sparse_last_layer: bool = False) -> float:
    """Model FLOPs of one training step (see the module docstring).  ``sparse_last_layer``: the
    last encoder layer computes keys and values at every position but its queries, attention,
    output projection and FFN at the predicted tokens only (``SparseBertForMaskedLM``)."""
    h, inter, seq, batch, layers = size["hidden"], size["intermediate"], size["seq"], size["batch"], size["layers"]
    tokens, dense_layers = batch * seq, layers - (1 if sparse_last_layer else 0)
    encoder = 6 * dense_layers * (4 * h * h + 2 * h * inter) * tokens
    attention = 3 * dense_layers * batch * 4 * seq * seq * h
    if sparse_last_layer:
        encoder += 6 * (2 * h * h * tokens + (2 * h * h + 2 * h * inter) * predicted_tokens)
        attention += 3 * 4 * seq * h * predicted_tokens
    head = 6 * (h * h + h * size["vocab"]) * predicted_tokens
    return float(encoder + attention + head)


# ---------------------------------------------------------------------------------- sides

PHASES = ("collate", "forward", "backward", "optimizer")


class Side:
    """One model, its optimizer and the batch maker; timed training steps split into phases."""

    def __init__(self, model, optimizer, make_batch, device: str, bf16: bool):
        self.model, self.opt, self.make_batch, self.device = model, optimizer, make_batch, device
        self.cuda = device.startswith("cuda")
        self.bf16 = bf16
        self.steps: list[float] = []
        self.phases: dict[str, list[float]] = {k: [] for k in PHASES}
        self.losses: list[float] = []

    def autocast(self):
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def step(self, record: bool) -> float:
        self.sync()
        t0 = _common.now()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in self.make_batch().items()}
        self.sync()
        t1 = _common.now()
        with self.autocast():
            loss = self.model(**batch).loss
        self.sync()
        t2 = _common.now()
        loss.backward()
        self.sync()
        t3 = _common.now()
        self.opt.step()
        self.opt.zero_grad()
        self.sync()
        t4 = _common.now()
        if record:
            self.steps.append(t4 - t0)
            for name, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                self.phases[name].append(dt)
            self.losses.append(float(loss.detach()))
        return t4 - t0

    def window(self, n: int) -> float:
        """Mean seconds of ``n`` recorded steps."""
        return sum(self.step(True) for _ in range(n)) / n


class Matmul:
    """The reference: a square matmul on the same device, threads and (autocast) dtype."""

    def __init__(self, n: int, device: str, bf16: bool, seed: int):
        g = torch.Generator().manual_seed(seed)
        dtype = torch.bfloat16 if bf16 else torch.float32
        self.a = torch.randn(n, n, generator=g).to(device, dtype)
        self.b = torch.randn(n, n, generator=g).to(device, dtype)
        self.flops = 2.0 * n ** 3
        self.cuda = device.startswith("cuda")
        self.device = device
        self.reps = 3 if not self.cuda else 20
        self.rates: list[float] = []
        self.dtype = str(dtype).removeprefix("torch.")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def window(self) -> float:
        """FLOP/s of the best of ``reps`` back-to-back matmuls."""
        best = math.inf
        for _ in range(self.reps):
            self.sync()
            t0 = _common.now()
            torch.mm(self.a, self.b)
            self.sync()
            best = min(best, _common.now() - t0)
        self.rates.append(self.flops / best)
        return self.flops / best


def profile_top_ops(side: "Side", steps: int, top: int = 12) -> list[dict]:
    """``steps`` training steps of ``side`` under torch.profiler: the ``top`` ops by self time
    (CPU, or CUDA on a GPU), printed as a table and returned for the JSON."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if side.cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            side.step(False)
    key = "self_cuda_time_total" if side.cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key.replace("_total", "_total"), 0), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = [{"op": e.key, "self_ms_per_step": round(getattr(e, key) / 1000 / steps, 3),
             "share": round(getattr(e, key) / total, 4), "calls_per_step": e.count / steps} for e in events[:top]]
    print(f"top ops ({'CUDA' if side.cuda else 'CPU'} self time, {steps} steps):")
    for r in rows:
        print(f"  {r['op']:<48} {r['self_ms_per_step']:9.2f} ms/step  {100 * r['share']:5.1f}%  "
              f"{r['calls_per_step']:6.1f} calls")
    return rows


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    from transformers import DataCollatorForLanguageModeling

    from bert_ticket_cli.data.pretraining import PretrainCollator
    from bert_ticket_cli.model.sparse_mlm import from_masked_lm

    t_start = _common.now()
    device = args.device
    torch.manual_seed(args.seed)
    baseline_model = build_baseline(size)
    ours_model = from_masked_lm(copy.deepcopy(baseline_model))
    attn = baseline_model.config._attn_implementation
    n_params = sum(p.numel() for p in baseline_model.parameters())
    tokenizer = build_tokenizer(size["vocab"])
    rows = raw_rows(size, args.seed + 1)
    ours_rows = premask_rows(rows, size, args.seed + 2)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
    ours_collate = PretrainCollator(PAD, size["seq"], size["predictions"])
    predicted = sum(len(r["mlm_positions"]) for r in ours_rows)
    tokens = size["batch"] * size["seq"]

    baseline_model.to(device)
    ours_model.to(device)

    # ---- sanity: one masked batch, both models, same weights, eval mode, fp32 ----
    torch.manual_seed(args.seed + 3)
    check = collator([dict(r) for r in rows])
    positions, labels = positions_from_labels(check["labels"])
    with torch.no_grad():
        baseline_model.eval()
        ours_model.eval()
        inputs = {k: check[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        sanity_base = float(baseline_model(**inputs, labels=check["labels"].to(device)).loss)
        sanity_ours = float(ours_model(**inputs, mlm_positions=positions.to(device),
                                       mlm_labels=labels.to(device)).loss)
    baseline_model.train()
    ours_model.train()
    base_opt = torch.optim.AdamW(baseline_model.parameters(), **({"foreach": True} if args.baseline_foreach else {}))
    ours_opt = recipe_adamw(ours_model, fused=True)
    if args.compile:
        ours_model.compile()  # in place: the first warm-up steps pay the compilation
    base_impl = ("foreach" if args.baseline_foreach else
                 "default (foreach)" if device.startswith("cuda") else "default (for-loop: torch's CPU choice)")
    sides = {
        "ours": Side(ours_model, ours_opt, lambda: ours_collate(ours_rows), device, args.bf16),
        "baseline": Side(baseline_model, base_opt, lambda: collator(rows), device, args.bf16),
    }
    matmul = Matmul(args.matmul_size, device, args.bf16, args.seed + 4)
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size {size}; {device}"
                f"{' bf16' if args.bf16 else ''}, attention {attn}, {n_params / 1e6:.2f}M params, "
                f"{predicted} predicted tokens of {tokens}; torch threads {torch.get_num_threads()}")

    for side in sides.values():  # warm-up: optimizer state allocation, kernel selection
        for _ in range(size["warmup_steps"]):
            side.step(False)
    matmul.window()
    matmul.rates.clear()

    def note(r: int, secs: dict[str, float]) -> None:
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size['rounds']}: ours {1000 * secs['ours']:.1f} ms, "
                    f"baseline {1000 * secs['baseline']:.1f} ms, speedup {secs['baseline'] / secs['ours']:.2f}, "
                    f"matmul {secs['matmul'] / 1e9:.0f} GFLOP/s")

    rounds = _common.alternate(size["rounds"], {"ours": lambda: sides["ours"].window(size["iters"]),
                                                "baseline": lambda: sides["baseline"].window(size["iters"]),
                                                "matmul": matmul.window}, on_round=note)
    wall_s = _common.now() - t_start

    # ---- figures ----
    step_s = {k: _common.median(s.steps) for k, s in sides.items()}
    tok_s = {k: tokens / v for k, v in step_s.items()}
    speedup = tok_s["ours"] / tok_s["baseline"]
    speedup_paired = _common.median([b / o for o, b in zip(rounds["ours"], rounds["baseline"])])
    flops = {"ours": step_flops(size, predicted, sparse_last_layer=True), "baseline": step_flops(size, tokens)}
    flops_ratio = flops["baseline"] / flops["ours"]  # the speedup if both sides ran at the same FLOP/s
    achieved = {k: flops[k] / step_s[k] for k in sides}
    matmul_rate = _common.median(matmul.rates)
    flops_vs_matmul = achieved["ours"] / matmul_rate
    mfu = achieved["ours"] / (args.peak_tflops * 1e12) if args.peak_tflops else None
    phase_ms = {k: {p: round(1000 * _common.median(v), 3) for p, v in s.phases.items()} for k, s in sides.items()}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"MLM pre-training step: {size['layers']} layers, hidden {size['hidden']}, {size['heads']} "
                        f"heads, FFN {size['intermediate']}, vocab {size['vocab']}, seq {size['seq']}, batch "
                        f"{size['batch']} ({tokens} tokens, {predicted} predicted); {device}"
                        f"{' bf16' if args.bf16 else ''}, {attn}, {torch.get_num_threads()} threads",
                  caption=f"ours: SparseBertForMaskedLM + pre-masked rows + PretrainCollator + AdamW(fused, recipe); "
                          f"baseline: BertForMaskedLM + DataCollatorForLanguageModeling + AdamW({base_impl}). "
                          f"{size['rounds']} alternating rounds of {size['iters']} timed step(s) per side after "
                          f"{size['warmup_steps']} warm-up steps; ms = median single step; {_common.load_note()}")
    table.add_column("side")
    table.add_column("step ms", justify="right")
    table.add_column("tokens/s", justify="right")
    for p in PHASES:
        table.add_column(f"{p} ms", justify="right")
    table.add_column("model GFLOP/step", justify="right")
    table.add_column("GFLOP/s", justify="right")
    table.add_column("rounds (mean ms)", justify="right")
    table.add_column("spread", justify="right")
    for name, side in sides.items():
        cells = _common.rounds_cells([1000 * x for x in rounds[name]], ".0f")
        table.add_row(name, f"{1000 * step_s[name]:.1f}", f"{tok_s[name]:,.0f}",
                      *[f"{phase_ms[name][p]:.1f}" for p in PHASES], f"{flops[name] / 1e9:.1f}",
                      f"{achieved[name] / 1e9:.1f}", *cells)
    table.add_section()
    per_round = " ".join(f"{b / o:.2f}" for o, b in zip(rounds["ours"], rounds["baseline"]))
    table.add_row("[b]speedup[/b]", "", f"[b]{speedup:.2f}x[/b]", *[""] * len(PHASES),
                  f"ratio {flops_ratio:.2f}", "",
                  f"paired {speedup_paired:.2f}: {per_round}", "")
    table.add_row(f"matmul {args.matmul_size}^2 {matmul.dtype}", "", "", *[""] * len(PHASES), "",
                  f"{matmul_rate / 1e9:.1f}", *_common.rounds_cells([r / 1e9 for r in matmul.rates], ".0f"))
    table.add_row("[b]ours / matmul[/b]", "", "", *[""] * len(PHASES), "", f"[b]{flops_vs_matmul:.2f}[/b]",
                  f"MFU {mfu:.3f} of {args.peak_tflops:g} TFLOP/s" if mfu is not None else "", "")
    table.add_section()
    table.add_row("sanity loss", "", "", *[""] * len(PHASES), "", "",
                  f"same masked batch, eval: ours {sanity_ours:.6f}, baseline {sanity_base:.6f}", "")
    Console(width=190).print(table)

    profiles = {name: profile_top_ops(side, args.profile) for name, side in sides.items()} if args.profile else None

    _common.emit_result({
        "benchmark": BENCHMARK,
        "compile": args.compile,
        **({"profile_top_ops": profiles} if profiles else {}),
        "speedup": round(speedup, 4),  # ours tokens/s / baseline tokens/s (median steps)
        "speedup_paired": round(speedup_paired, 4),
        "ours_tokens_per_s": round(tok_s["ours"], 1),
        "baseline_tokens_per_s": round(tok_s["baseline"], 1),
        "ours_step_ms": round(1000 * step_s["ours"], 3),
        "baseline_step_ms": round(1000 * step_s["baseline"], 3),
        "flops_vs_matmul": round(flops_vs_matmul, 4),
        "flops_ratio": round(flops_ratio, 4),  # baseline model FLOPs / ours: the speedup at equal FLOP/s
        "ours_model_tflops": round(achieved["ours"] / 1e12, 5),
        "baseline_model_tflops": round(achieved["baseline"] / 1e12, 5),
        "matmul_tflops": round(matmul_rate / 1e12, 5),
        "mfu": round(mfu, 5) if mfu is not None else None,
        "peak_tflops": args.peak_tflops,
        "step_gflops": {k: round(v / 1e9, 3) for k, v in flops.items()},
        "phase_ms": phase_ms,
        "rounds_ms": {k: [round(1000 * x, 2) for x in rounds[k]] for k in sides},
        "spread": {k: round(_common.spread(rounds[k]), 4) for k in sides},
        "sanity_loss": {"ours": round(sanity_ours, 6), "baseline": round(sanity_base, 6),
                        "abs_diff": abs(sanity_ours - sanity_base)},
        "last_train_loss": {k: round(s.losses[-1], 4) for k, s in sides.items()},
        "baseline_optimizer": base_impl,
        "wall_s": round(wall_s, 1),
        "config": {**size, "tokens_per_step": tokens, "predicted_per_step": predicted, "params": n_params,
                   "attention": attn, "device": device, "bf16": bool(args.bf16), "matmul_size": args.matmul_size,
                   "matmul_dtype": matmul.dtype, "recipe": {**RECIPE, "betas": list(RECIPE["betas"])},
                   "seed": args.seed},
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
