"""Physical structured compaction (EarlyBERT): a BERT sliced by ``model.compact.compact_``
against the dense model it came from.

What is compared, in one process, on the same machine:

* dense   -- a ``BertForSequenceClassification`` built from a ``BertConfig`` (random init:
  only the shapes matter for time; dropout as configured by default, 0.1; attention: the
  transformers default, SDPA);
* compact -- a deep copy of the same model (same weights) passed through
  ``compact_(model, heads, neurons)``: 4 of the 12 heads removed in *every* layer (chosen at
  random per layer) and 40 % of the FFN neurons removed, chosen at random over all layers
  together (exactly ``round(0.4 * layers * intermediate)``), both seeded.  The removed
  q/k/v rows, attention-output columns, intermediate rows and FFN-output columns are gone
  from the tensors, so every kernel does less work (the embeddings, LayerNorms, pooler and
  classifier keep their size).

Two measurements, each side on the same fixed random batch (random real lengths, padded;
binary labels):

* training step -- forward with labels, ``loss.backward()``, ``torch.optim.AdamW(lr=1e-5,
  fused=True).step()``, ``zero_grad()``, in train mode; ``--warmup-steps`` untimed steps per
  side first (the optimizer states are allocated at the first step);
* inference -- a forward pass under ``torch.inference_mode()`` in eval mode, after as many
  untimed passes.

Timing: ``--rounds`` rounds per measurement, the sides alternating with the order flipped
each round (``_common.alternate``); in a round each side runs ``--steps`` timed steps (or
passes), each timed alone (``torch.cuda.synchronize`` around it on a GPU).  A side's figure
is the median single step pooled over all its rounds (robust to load spikes on a shared
machine, which hit single steps); ``*_paired`` ratios are the median over rounds of
compact / dense of that round's two windows, measured back to back.  OpenMP threads sleep
when idle (``OMP_WAIT_POLICY=PASSIVE`` unless exported, see ``_common.passive_openmp``).
``--bf16`` runs both sides under bf16 autocast (meant for ``--device cuda``).

Expected figures, computed from the shapes, so measured and expected can be set side by side:

* ``params_ratio`` -- compact parameters / dense parameters (the embeddings, ~23M of
  BERT-base's 110M, are not compacted: this is what the AdamW step and the gradient zeroing
  scale with);
* ``linear_flops_ratio`` -- multiply-adds of the encoder's linear layers (q, k, v, attention
  output, intermediate, FFN output) per token, compact / dense: (8/12 of the attention
  projections + 60 % of the FFN) = 0.622 for BERT-base geometry;
* ``encoder_matmul_flops_ratio`` -- the same plus the attention matmuls (QK^T and the
  weighted sum of V, which scale with the kept heads and the sequence length).

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "compact_speed", "train_step_ratio": ..., "inference_ratio": ...,
     "params_ratio": ..., "linear_flops_ratio": ..., ...}

Run::

    .venv/bin/python benchmarks/compact_speed.py --quick    # 4 layers, hidden 384, seq 64: under a minute
    .venv/bin/python benchmarks/compact_speed.py            # BERT-base, seq 128, batch 8: ~1.5 minutes on 2 cores
    .venv/bin/python benchmarks/compact_speed.py --device cuda --bf16
    .venv/bin/python benchmarks/compact_speed.py --layers 6 --hidden 384 --heads-removed 3 --ffn-removed 0.2  # a MiniLM-shaped model, milder slimming
"""

from __future__ import annotations

import argparse
import copy
import sys
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()  # before torch: see there

import torch  # noqa: E402

BENCHMARK = "compact_speed"
HEADS_REMOVED = 4  # of every layer's heads (12: the EarlyBERT setting "4 of 12")
FFN_REMOVED = 0.4  # fraction of all FFN neurons, chosen over all layers together
LR = 1e-5

# 12 heads in both sizes so "4 of 12 heads per layer" means the same thing
# default: one step per side per round, so a load swing of the shared machine (steps take seconds
# here) lands on one pair of steps rather than on a whole window of one side
DEFAULT = dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522, seq_len=128, batch_size=8,
               steps=1, warmup_steps=2, rounds=8)
QUICK = dict(layers=4, hidden=384, heads=12, intermediate=1536, vocab=30522, seq_len=64, batch_size=8,
             steps=3, warmup_steps=2, rounds=8)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="4 layers, hidden 384 (12 heads of 32), intermediate 1536, seq 64: under a minute")
    p.add_argument("--rounds", type=int, help=f"alternating rounds per measurement "
                                              f"(default {DEFAULT['rounds']}; quick {QUICK['rounds']})")
    p.add_argument("--steps", type=int, help=f"timed steps (or forward passes) per side per round "
                                             f"(default {DEFAULT['steps']}; quick {QUICK['steps']})")
    p.add_argument("--warmup-steps", type=int, help=f"untimed steps per side before the rounds "
                                                    f"(default {DEFAULT['warmup_steps']})")
    p.add_argument("--batch-size", type=int, help=f"examples per step (default {DEFAULT['batch_size']})")
    p.add_argument("--seq-len", type=int, help=f"tokens per example (default {DEFAULT['seq_len']}; "
                                               f"quick {QUICK['seq_len']})")
    p.add_argument("--layers", type=int, help=f"encoder layers (default {DEFAULT['layers']}; quick {QUICK['layers']})")
    p.add_argument("--hidden", type=int, help="hidden size (intermediate = 4 x hidden; default "
                                              f"{DEFAULT['hidden']}; quick {QUICK['hidden']}; 12 heads)")
    p.add_argument("--heads-removed", type=int, help=f"heads removed in every layer, of 12 (default {HEADS_REMOVED})")
    p.add_argument("--ffn-removed", type=float, help=f"fraction of all FFN neurons removed (default {FFN_REMOVED})")
    p.add_argument("--device", default="cpu", help="torch device (cpu; cuda works too)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (meant for a GPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = dict(QUICK if args.quick else DEFAULT)
    size.update(heads_removed=HEADS_REMOVED, ffn_removed=FFN_REMOVED)
    for key in ("rounds", "steps", "warmup_steps", "batch_size", "seq_len", "layers", "hidden", "heads_removed",
                "ffn_removed"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    size["intermediate"] = 4 * size["hidden"]
    if size["hidden"] % size["heads"] or not 1 <= size["layers"]:
        p.error("--hidden must be a multiple of 12 and --layers >= 1")
    if not 0 <= size["heads_removed"] < size["heads"] or not 0 <= size["ffn_removed"] < 1:
        p.error("--heads-removed must be in [0, 12) and --ffn-removed in [0, 1)")
    if min(size["rounds"], size["steps"], size["warmup_steps"], size["batch_size"]) < 1:
        p.error("--rounds, --steps, --warmup-steps and --batch-size must be >= 1")
    if not 4 <= size["seq_len"] <= 512:
        p.error("--seq-len must be in [4, 512]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    return args, size


# ---------------------------------------------------------------------------------- setup

def build_dense(size: dict):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                        num_attention_heads=size["heads"], intermediate_size=size["intermediate"],
                        max_position_embeddings=512, num_labels=2)
    return BertForSequenceClassification(config)


def structure(size: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept heads [layers, heads] (``heads_removed`` random ones off per layer) and kept
    neurons [layers, intermediate] (``round(ffn_removed * all)`` random ones off, globally)."""
    g = torch.Generator().manual_seed(seed)
    layers, n_heads, inter = size["layers"], size["heads"], size["intermediate"]
    heads = torch.ones(layers, n_heads, dtype=torch.bool)
    for i in range(layers):
        heads[i, torch.randperm(n_heads, generator=g)[:size["heads_removed"]]] = False
    neurons = torch.ones(layers * inter, dtype=torch.bool)
    neurons[torch.randperm(layers * inter, generator=g)[:round(size["ffn_removed"] * layers * inter)]] = False
    return heads, neurons.view(layers, inter)


def make_batch(size: dict, seed: int, device: str) -> dict[str, torch.Tensor]:
    """One fixed batch: [CLS] random ids [SEP] of random real length, padded to ``seq_len``."""
    g = torch.Generator().manual_seed(seed)
    n, seq = size["batch_size"], size["seq_len"]
    ids = torch.randint(1000, size["vocab"], (n, seq), generator=g)
    lengths = torch.randint(max(2, seq // 2), seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(n), lengths - 1] = 102
    ids = ids * mask  # [PAD] = 0
    labels = torch.randint(0, 2, (n,), generator=g)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def encoder_flops(size: dict, heads_per_layer: list[int], ffn_per_layer: list[int]) -> tuple[float, float]:
    """Multiply-adds per example of the encoder: (linear layers only, linear + attention matmuls)."""
    hidden, seq = size["hidden"], size["seq_len"]
    head_size = hidden // size["heads"]
    linear = attn = 0.0
    for h, n in zip(heads_per_layer, ffn_per_layer):
        a = h * head_size
        linear += seq * (4 * hidden * a + 2 * hidden * n)  # q, k, v, attention output; intermediate, output
        attn += 2 * seq * seq * a  # QK^T and the weighted sum of V
    return linear, linear + attn


# ---------------------------------------------------------------------------------- sides

class Side:
    """One model, its fused AdamW and the fixed batch; timed training steps and forward passes."""

    def __init__(self, model, batch: dict, device: str, bf16: bool):
        self.model = model.to(device)
        self.batch, self.device = batch, device
        self.cuda = device.startswith("cuda")
        self.autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if bf16 \
            else nullcontext
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, fused=True)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.losses: list[float] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def train_step(self) -> None:
        with self.autocast():
            loss = self.model(**self.batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        self.losses.append(loss.detach())

    def infer(self) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(**self.batch).logits

    def timed(self, fn, n: int) -> list[float]:
        """Seconds of each of ``n`` calls of ``fn``, each one alone."""
        out = []
        for _ in range(n):
            self.sync()
            t0 = _common.now()
            fn()
            self.sync()
            out.append(_common.now() - t0)
        return out


def measure(what: str, sides: dict[str, Side], size: dict) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``rounds`` alternating rounds of ``steps`` timed calls per side: (pooled single-call
    seconds, per-round mean seconds) per side."""
    pooled: dict[str, list[float]] = {k: [] for k in sides}
    for name, side in sides.items():  # warm-up: first-step allocations, kernel selection
        side.model.train(what == "train")
        side.timed(side.train_step if what == "train" else side.infer, size["warmup_steps"])

    def make(name: str):
        side = sides[name]
        fn = side.train_step if what == "train" else side.infer

        def go() -> float:
            times = side.timed(fn, size["steps"])
            pooled[name] += times
            return sum(times) / len(times)
        return go

    def note(r: int, secs: dict[str, float]) -> None:
        _common.log(f"[{BENCHMARK}] {what} round {r + 1}/{size['rounds']}: dense {1000 * secs['dense']:.1f} ms, "
                    f"compact {1000 * secs['compact']:.1f} ms, ratio {secs['compact'] / secs['dense']:.3f}")

    rounds = _common.alternate(size["rounds"], {k: make(k) for k in sides}, on_round=note)
    return pooled, rounds


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    from bert_ticket_cli.model.compact import compact_, compact_sizes

    t_start = _common.now()
    torch.manual_seed(args.seed)
    dense_model = build_dense(size)
    heads, neurons = structure(size, args.seed + 1)
    compact_model = compact_(copy.deepcopy(dense_model), heads, neurons)
    sizes = compact_sizes(compact_model.config)
    attn = dense_model.config._attn_implementation
    batch = make_batch(size, args.seed + 2, args.device)
    sides = {"dense": Side(dense_model, batch, args.device, args.bf16),
             "compact": Side(compact_model, batch, args.device, args.bf16)}

    lin_dense, mm_dense = encoder_flops(size, [size["heads"]] * size["layers"], [size["intermediate"]] * size["layers"])
    lin_comp, mm_comp = encoder_flops(size, sizes["heads"], sizes["intermediate"])
    params_ratio = sides["compact"].n_params / sides["dense"].n_params
    linear_flops_ratio = lin_comp / lin_dense
    matmul_flops_ratio = mm_comp / mm_dense
    n_removed = int((~neurons).sum())
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size: {size}; device {args.device}"
                f"{' bf16' if args.bf16 else ''}, attention {attn}; dense {sides['dense'].n_params / 1e6:.2f}M params, "
                f"compact {sides['compact'].n_params / 1e6:.2f}M ({size['heads_removed']} heads per layer and {n_removed} "
                f"neurons removed); torch threads {torch.get_num_threads()}")

    train_pooled, train_rounds = measure("train", sides, size)
    infer_pooled, infer_rounds = measure("inference", sides, size)

    def ms(xs: list[float]) -> float:
        return 1000 * _common.median(xs)

    def paired(rounds: dict[str, list[float]]) -> float:
        return _common.median([c / d for c, d in zip(rounds["compact"], rounds["dense"])])

    train_ms = {k: ms(v) for k, v in train_pooled.items()}
    infer_ms = {k: ms(v) for k, v in infer_pooled.items()}
    train_ratio = train_ms["compact"] / train_ms["dense"]
    infer_ratio = infer_ms["compact"] / infer_ms["dense"]
    train_paired, infer_paired = paired(train_rounds), paired(infer_rounds)
    train_min_ratio = min(train_pooled["compact"]) / min(train_pooled["dense"])
    infer_min_ratio = min(infer_pooled["compact"]) / min(infer_pooled["dense"])
    wall_s = _common.now() - t_start
    final_loss = {k: float(s.losses[-1]) for k, s in sides.items()}

    # ---- table ----
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"structured compaction: {size['layers']} layers, hidden {size['hidden']}, "
                        f"{size['heads']} heads, intermediate {size['intermediate']}, seq {size['seq_len']}, "
                        f"batch {size['batch_size']}; "
                        f"compact: {size['heads_removed']} heads per layer and {size['ffn_removed']:.0%} of FFN neurons removed; "
                        f"{args.device}{' bf16' if args.bf16 else ''}, {attn}, {torch.get_num_threads()} threads",
                  caption=f"{size['rounds']} alternating rounds of {size['steps']} timed step(s) per side per "
                          f"measurement after {size['warmup_steps']} warm-up steps; "
                          f"ms = median single step over all rounds; ratio = compact / dense; {_common.load_note()}")
    table.add_column("measurement")
    table.add_column("side")
    table.add_column("ms (median step)", justify="right")
    table.add_column("fastest ms", justify="right")
    table.add_column("rounds (mean ms per round)", justify="right")
    table.add_column("spread", justify="right")
    for what, pooled, rounds, ratio, pair, rmin in (
            ("train step", train_pooled, train_rounds, train_ratio, train_paired, train_min_ratio),
            ("inference", infer_pooled, infer_rounds, infer_ratio, infer_paired, infer_min_ratio)):
        for side in ("dense", "compact"):
            cells = _common.rounds_cells([1000 * x for x in rounds[side]], ".1f")
            table.add_row(what, side, f"{ms(pooled[side]):.1f}", f"{1000 * min(pooled[side]):.1f}", *cells)
        per_round = " ".join(f"{c / d:.3f}" for c, d in zip(rounds["compact"], rounds["dense"]))
        table.add_row(what, "[b]ratio[/b]", f"[b]{ratio:.3f}[/b]", f"{rmin:.3f}", f"paired {pair:.3f}: {per_round}", "")
        table.add_section()
    table.add_row("expected", "params", f"{params_ratio:.3f}", "",
                  f"{sides['dense'].n_params / 1e6:.2f}M -> {sides['compact'].n_params / 1e6:.2f}M", "")
    table.add_row("expected", "linear FLOPs", f"{linear_flops_ratio:.3f}", "",
                  f"+ attention matmuls: {matmul_flops_ratio:.3f}", "")
    Console(width=170).print(table)

    _common.emit_result({
        "benchmark": BENCHMARK,
        # compact / dense, from each side's median single step pooled over all rounds
        "train_step_ratio": round(train_ratio, 4),
        "inference_ratio": round(infer_ratio, 4),
        # median over rounds of compact / dense of that round's windows (back to back)
        "train_step_ratio_paired": round(train_paired, 4),
        "inference_ratio_paired": round(infer_paired, 4),
        # from each side's fastest step
        "train_step_ratio_min": round(train_min_ratio, 4),
        "inference_ratio_min": round(infer_min_ratio, 4),
        # expected, from the shapes
        "params_ratio": round(params_ratio, 4),
        "linear_flops_ratio": round(linear_flops_ratio, 4),
        "encoder_matmul_flops_ratio": round(matmul_flops_ratio, 4),
        "dense_train_step_ms": round(train_ms["dense"], 3),
        "compact_train_step_ms": round(train_ms["compact"], 3),
        "dense_inference_ms": round(infer_ms["dense"], 3),
        "compact_inference_ms": round(infer_ms["compact"], 3),
        "dense_train_spread": round(_common.spread(train_rounds["dense"]), 4),
        "compact_train_spread": round(_common.spread(train_rounds["compact"]), 4),
        "dense_inference_spread": round(_common.spread(infer_rounds["dense"]), 4),
        "compact_inference_spread": round(_common.spread(infer_rounds["compact"]), 4),
        "train_rounds_ms": {k: [round(1000 * x, 3) for x in v] for k, v in train_rounds.items()},
        "inference_rounds_ms": {k: [round(1000 * x, 3) for x in v] for k, v in infer_rounds.items()},
        "final_loss": {k: round(v, 5) for k, v in final_loss.items()},
        "wall_s": round(wall_s, 1),
        "config": {**size, "dense_params": sides["dense"].n_params, "compact_params": sides["compact"].n_params,
                   "heads_removed_per_layer": size["heads_removed"],
                   "ffn_neurons_removed": n_removed, "compact_heads": sizes["heads"],
                   "compact_intermediate": sizes["intermediate"], "attention": attn, "device": args.device,
                   "bf16": bool(args.bf16), "optimizer": "AdamW(fused=True)", "lr": LR, "seed": args.seed},
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
