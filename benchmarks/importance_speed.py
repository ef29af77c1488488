"""Super tickets' costs (Liang et al., ACL 2021): the importance scoring pass against a
fine-tuning epoch on the same data, and the compacted training step of a level-0.5 ticket
against the dense step.

What is compared, in one process, on the same machine, on the same ``--batches`` fixed random
batches (random real lengths, padded; binary labels), with three sides:

* epoch      -- fine-tuning: a ``BertForSequenceClassification`` built from a ``BertConfig``
  (random init: only the shapes matter for time; dropout 0.1, SDPA attention), train mode,
  forward with labels, ``loss.backward()``, ``torch.optim.AdamW(fused=True).step()``,
  ``zero_grad()`` per batch: one "epoch" over the batches;
* importance -- the scoring pass of the method over the same batches: a copy of the model in
  eval mode with every parameter frozen (``requires_grad=False``: only the gates get
  gradients), ``ImportanceProbe(model, ffn_unit)`` hooked in, per batch forward, backward,
  ``probe.accumulate()``; then ``probe.scores()`` and ``probe.remove()`` (inside the timing).
  This is the loop of ``engine/scoring.gradient_pass`` that the workflow runs, without its
  DataLoader (the epoch side has none either: both iterate over the same tensors);
* compact    -- a copy of the model compacted (``compact_``) to the **winning ticket at level
  0.5** of the scores of an untimed importance pass (``nested_tickets(levels=[0.5])``: half the
  heads by a global ranking, at least one kept per layer, and the level's share of FFN layers
  removed), trained as the epoch side is.

Figures (``--rounds`` alternating rounds, order flipped every round, ``_common.alternate``):

* ``importance_ratio`` -- importance pass / epoch time, median over rounds of the two sides'
  back-to-back times (aim: <= 0.4).  Expected from the matmul FLOPs, ``importance_flops_ratio``:
  forward + the input gradients above the first gate, against forward + input and weight
  gradients (no weight gradients, no optimizer), about 0.65 at BERT-base geometry.
* ``compact_step_ratio`` -- compacted / dense training time over the same batches, median over
  rounds (aim: <= 0.75 at BERT-base geometry on CPU).  Expected: ``params_ratio`` (the AdamW
  step and gradient zeroing scale with it; the embeddings are never removed) and
  ``linear_flops_ratio`` (the encoder's linear layers per token).

OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE`` unless exported, see
``_common.passive_openmp``).  ``--bf16`` runs every side under bf16 autocast (meant for
``--device cuda``).

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "importance_speed", "importance_ratio": ..., "compact_step_ratio": ..., ...}

Run::

    .venv/bin/python benchmarks/importance_speed.py --quick     # 4 layers, hidden 384, seq 64: well under a minute
    .venv/bin/python benchmarks/importance_speed.py             # BERT-base geometry, seq 128: minutes on 2 cores
    .venv/bin/python benchmarks/importance_speed.py --device cuda --bf16
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

BENCHMARK = "importance_speed"
LEVEL = 0.5
LR = 5e-5  # the paper's fine-tuning learning rate (the time does not depend on it)
AIM = {"importance_ratio": 0.4, "compact_step_ratio": 0.75}

# BERT-base geometry; the "epoch" is --batches batches (the ratio is per batch: an epoch of the
# same data on both sides scales both by the same count)
DEFAULT = dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522, seq_len=128, batch_size=8,
               batches=2, warmup=1, rounds=4)
QUICK = dict(layers=4, hidden=384, heads=12, intermediate=1536, vocab=30522, seq_len=64, batch_size=8,
             batches=3, warmup=1, rounds=4)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="4 layers, hidden 384 (12 heads of 32), intermediate 1536, seq 64: well under a minute")
    p.add_argument("--rounds", type=int, help=f"alternating rounds (default {DEFAULT['rounds']})")
    p.add_argument("--batches", type=int, help=f"batches per epoch / pass (default {DEFAULT['batches']}; "
                                               f"quick {QUICK['batches']})")
    p.add_argument("--warmup", type=int, help=f"untimed epochs / passes per side first (default {DEFAULT['warmup']})")
    p.add_argument("--batch-size", type=int, help=f"examples per batch (default {DEFAULT['batch_size']})")
    p.add_argument("--seq-len", type=int, help=f"tokens per example (default {DEFAULT['seq_len']}; "
                                               f"quick {QUICK['seq_len']})")
    p.add_argument("--ffn-unit", choices=("layer", "neuron"), default="layer",
                   help="score and remove whole FFN sub-layers (the paper, default) or single neurons")
    p.add_argument("--device", default="cpu", help="torch device (cpu; cuda works too)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on every side (meant for a GPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = dict(QUICK if args.quick else DEFAULT)
    for key in ("rounds", "batches", "warmup", "batch_size", "seq_len"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if min(size["rounds"], size["batches"], size["batch_size"]) < 1 or size["warmup"] < 0:
        p.error("--rounds, --batches and --batch-size must be >= 1, --warmup >= 0")
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


def make_batches(size: dict, seed: int, device: str) -> list[dict[str, torch.Tensor]]:
    """``batches`` fixed batches: [CLS] random ids [SEP] of random real length, padded to ``seq_len``."""
    g = torch.Generator().manual_seed(seed)
    n, seq = size["batch_size"], size["seq_len"]
    out = []
    for _ in range(size["batches"]):
        ids = torch.randint(1000, size["vocab"], (n, seq), generator=g)
        lengths = torch.randint(max(2, seq // 2), seq + 1, (n,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids[:, 0] = 101
        ids[torch.arange(n), lengths - 1] = 102
        ids = ids * mask  # [PAD] = 0
        labels = torch.randint(0, 2, (n,), generator=g)
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def layer_flops(size: dict, heads: int, ffn: int) -> tuple[float, float, float]:
    """Multiply-adds per example of one encoder layer's forward: (q/k/v + attention matmuls,
    attention output, FFN), for ``heads`` kept heads and ``ffn`` kept neurons."""
    hidden, seq = size["hidden"], size["seq_len"]
    a = heads * (hidden // size["heads"])
    below_gate = seq * 3 * hidden * a + 2 * seq * seq * a  # q, k, v; QK^T and the weighted sum of V
    return below_gate, seq * hidden * a, seq * 2 * hidden * ffn


def linear_flops(size: dict, heads: int, ffn: int) -> float:
    """Multiply-adds per example of one layer's linear layers (q, k, v, attention output,
    intermediate, FFN output) with ``heads`` kept heads and ``ffn`` kept neurons."""
    a = heads * (size["hidden"] // size["heads"])
    return size["seq_len"] * (4 * size["hidden"] * a + 2 * size["hidden"] * ffn)


def importance_flops_ratio(size: dict) -> float:
    """Importance pass / training step, matmul FLOPs: the pass runs the forward and the input
    gradients down to the first gate (the input of layer 0's attention output: nothing below
    it needs a gradient); training runs the forward and the input and weight gradients (each
    about one forward)."""
    below, att_out, ffn = layer_flops(size, size["heads"], size["intermediate"])
    per_layer = below + att_out + ffn
    layers = size["layers"]
    train = 3 * layers * per_layer
    score = layers * per_layer + (layers - 1) * per_layer + (att_out + ffn)
    return score / train


# ---------------------------------------------------------------------------------- sides

class Side:
    """One model and what it runs over the batches, timed as a whole (``torch.cuda.synchronize``
    around it on a GPU)."""

    def __init__(self, model, batches: list[dict], device: str, bf16: bool):
        self.model = model.to(device)
        self.batches, self.device = batches, device
        self.cuda = device.startswith("cuda")
        self.autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if bf16 \
            else nullcontext
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.losses: list[float] = []

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(self) -> float:
        self.sync()
        t0 = _common.now()
        self.run()
        self.sync()
        return _common.now() - t0

    def run(self) -> None:
        raise NotImplementedError


class Train(Side):
    """Fine-tuning: train mode, fused AdamW, one optimizer step per batch."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, fused=True)

    def run(self) -> None:
        for batch in self.batches:
            with self.autocast():
                loss = self.model(**batch).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            self.losses.append(loss.detach())


class Importance(Side):
    """The scoring pass: eval mode, parameters frozen, the probe's gates the only gradients."""

    def __init__(self, *args, ffn_unit: str, **kw):
        super().__init__(*args, **kw)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.ffn_unit = ffn_unit
        self.scores: tuple[torch.Tensor, torch.Tensor] | None = None

    def run(self) -> None:
        from bert_ticket_cli.model.gates import ImportanceProbe

        probe = ImportanceProbe(self.model, ffn_unit=self.ffn_unit)
        try:
            for batch in self.batches:
                with self.autocast():
                    loss = self.model(**batch).loss
                loss.backward()
                probe.accumulate()
                self.losses.append(loss.detach())
            self.scores = probe.scores()
        finally:
            probe.remove()


def winning_ticket(scores: tuple[torch.Tensor, torch.Tensor], size: dict, ffn_unit: str, seed: int):
    """(heads [L,H], neurons [L,I], ffn_layers [L] or None) of the winning ticket at ``LEVEL``
    (the method's defaults: head scores L2-normalised per layer, one head kept per layer)."""
    from bert_ticket_cli.methods.super_tickets import nested_tickets

    heads, ffn = scores
    (ticket,) = nested_tickets(heads, ffn, levels=[LEVEL], kind="winning", seed=seed, min_heads_per_layer=1,
                               ffn_unit=ffn_unit, intermediate_size=size["intermediate"])
    return ticket


def kept_neurons(size: dict, neurons: torch.Tensor, ffn_layers: torch.Tensor | None) -> list[int]:
    """FFN neurons computed per layer: none in a removed FFN layer."""
    per_layer = [int(n) for n in neurons.bool().sum(dim=1)]
    if ffn_layers is not None:
        per_layer = [n if bool(keep) else 0 for n, keep in zip(per_layer, ffn_layers.bool())]
    return per_layer


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    from bert_ticket_cli.model.compact import compact_

    t_start = _common.now()
    torch.manual_seed(args.seed)
    dense = build_dense(size)
    batches = make_batches(size, args.seed + 1, args.device)
    attn = dense.config._attn_implementation

    # The ticket: the winning level-0.5 ticket of the scores of one (untimed) importance pass.
    scorer = Importance(copy.deepcopy(dense), batches, args.device, args.bf16, ffn_unit=args.ffn_unit)
    scorer.run()
    heads_scores, ffn_scores = scorer.scores
    if tuple(heads_scores.shape) != (size["layers"], size["heads"]) or not bool(torch.isfinite(heads_scores).all()):
        raise SystemExit(f"importance: head scores {tuple(heads_scores.shape)}, finite "
                         f"{bool(torch.isfinite(heads_scores).all())}: expected finite "
                         f"[{size['layers']}, {size['heads']}]")
    heads, neurons, ffn_layers = winning_ticket(scorer.scores, size, args.ffn_unit, args.seed)
    compact_model = compact_(copy.deepcopy(dense), heads, neurons, ffn_layers=ffn_layers)
    ffn_kept = kept_neurons(size, neurons, ffn_layers)
    heads_kept = [int(h) for h in heads.bool().sum(dim=1)]

    sides = {"epoch": Train(dense, batches, args.device, args.bf16), "importance": scorer,
             "compact": Train(compact_model, batches, args.device, args.bf16)}
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size: {size}; device {args.device}"
                f"{' bf16' if args.bf16 else ''}, attention {attn}; dense {sides['epoch'].n_params / 1e6:.2f}M params, "
                f"compact {sides['compact'].n_params / 1e6:.2f}M (level {LEVEL}: {sum(heads_kept)} of "
                f"{size['layers'] * size['heads']} heads, FFN neurons per layer {ffn_kept}); "
                f"torch threads {torch.get_num_threads()}")
    for name, side in sides.items():  # warm-up: first-step allocations, kernel selection
        for _ in range(size["warmup"]):
            side.run()

    def note(r: int, secs: dict[str, float]) -> None:
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size['rounds']}: epoch {secs['epoch']:.3f} s, importance "
                    f"{secs['importance']:.3f} s ({secs['importance'] / secs['epoch']:.3f}), compact "
                    f"{secs['compact']:.3f} s ({secs['compact'] / secs['epoch']:.3f})")

    rounds = _common.alternate(size["rounds"], {k: s.timed for k, s in sides.items()}, on_round=note)
    imp_rounds = [i / e for i, e in zip(rounds["importance"], rounds["epoch"])]
    comp_rounds = [c / e for c, e in zip(rounds["compact"], rounds["epoch"])]
    importance_ratio, compact_ratio = _common.median(imp_rounds), _common.median(comp_rounds)
    importance_min = min(rounds["importance"]) / min(rounds["epoch"])
    compact_min = min(rounds["compact"]) / min(rounds["epoch"])

    linear_flops_ratio = (sum(linear_flops(size, h, n) for h, n in zip(heads_kept, ffn_kept))
                          / (size["layers"] * linear_flops(size, size["heads"], size["intermediate"])))
    params_ratio = sides["compact"].n_params / sides["epoch"].n_params
    flops_ratio = importance_flops_ratio(size)
    per_batch_ms = {k: 1000 * _common.median(v) / size["batches"] for k, v in rounds.items()}
    wall_s = _common.now() - t_start

    # ---- table ----
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"super tickets' costs: {size['layers']} layers, hidden {size['hidden']}, "
                        f"{size['heads']} heads, intermediate {size['intermediate']}, seq {size['seq_len']}, "
                        f"batch {size['batch_size']}, "
                        f"{size['batches']} batches per epoch / pass; compact: winning ticket at level {LEVEL} "
                        f"(ffn_unit={args.ffn_unit}); {args.device}{' bf16' if args.bf16 else ''}, {attn}, "
                        f"{torch.get_num_threads()} threads",
                  caption=f"{size['rounds']} alternating rounds after {size['warmup']} warm-up epoch(s) per side; "
                          f"ratio = median over rounds of side / epoch, measured back to back; {_common.load_note()}")
    table.add_column("side")
    table.add_column("ms per batch (median)", justify="right")
    table.add_column("rounds (s)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("ratio to the epoch", justify="right")
    table.add_column("aim", justify="right")
    table.add_column("expected", justify="right")
    table.add_row("fine-tuning epoch (dense)", f"{per_batch_ms['epoch']:.1f}",
                  *_common.rounds_cells(rounds["epoch"]), "1", "", "")
    table.add_row("importance pass", f"{per_batch_ms['importance']:.1f}", *_common.rounds_cells(rounds["importance"]),
                  f"[b]{importance_ratio:.3f}[/b] (fastest {importance_min:.3f})",
                  f"<= {AIM['importance_ratio']}", f"FLOPs {flops_ratio:.3f}")
    table.add_row(f"compacted training (level {LEVEL})", f"{per_batch_ms['compact']:.1f}",
                  *_common.rounds_cells(rounds["compact"]), f"[b]{compact_ratio:.3f}[/b] (fastest {compact_min:.3f})",
                  f"<= {AIM['compact_step_ratio']}",
                  f"params {params_ratio:.3f}, linear FLOPs {linear_flops_ratio:.3f}")
    Console(width=190).print(table)

    _common.emit_result({
        "benchmark": BENCHMARK,
        # median over rounds of (side / epoch) of that round's back-to-back times
        "importance_ratio": round(importance_ratio, 4),
        "compact_step_ratio": round(compact_ratio, 4),
        "importance_ratio_min": round(importance_min, 4),
        "compact_step_ratio_min": round(compact_min, 4),
        "importance_ok": bool(importance_ratio <= AIM["importance_ratio"]),
        "compact_ok": bool(compact_ratio <= AIM["compact_step_ratio"]),
        "aim": AIM,
        # expected, from the shapes
        "importance_flops_ratio": round(flops_ratio, 4),
        "params_ratio": round(params_ratio, 4),
        "linear_flops_ratio": round(linear_flops_ratio, 4),
        "ms_per_batch": {k: round(v, 3) for k, v in per_batch_ms.items()},
        "rounds_s": {k: [round(x, 4) for x in v] for k, v in rounds.items()},
        "spread": {k: round(_common.spread(v), 4) for k, v in rounds.items()},
        "final_loss": {k: round(float(s.losses[-1]), 5) for k, s in sides.items()},
        "wall_s": round(wall_s, 1),
        "config": {**size, "level": LEVEL, "ffn_unit": args.ffn_unit, "heads_kept": heads_kept,
                   "ffn_neurons_kept": ffn_kept, "dense_params": sides["epoch"].n_params,
                   "compact_params": sides["compact"].n_params, "attention": attn, "device": args.device,
                   "bf16": bool(args.bf16), "optimizer": "AdamW(fused=True)", "lr": LR, "seed": args.seed},
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
