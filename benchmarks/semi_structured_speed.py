"""2:4 inference: a BERT whose prunable matrices keep 2 of every 4 input weights, run with torch's
semi-structured sparse kernels (``model.semi_structured.to_semi_structured``) against the same
masked model run dense.

Both sides: the same ``BertForSequenceClassification`` (random init, bf16 weights, eval mode,
SDPA attention), its six encoder matrices per layer pruned to 2:4 by magnitude
(``sparsity.nm.nm_magnitude_masks``, exact per group); the sparse side is a copy whose 2:4
linear layers hold ``SparseSemiStructuredTensor`` weights.  For each ``--batches`` size
(default 16 and 64 rows of ``--seq`` 128 tokens) the sides alternate for ``--rounds`` rounds
of ``--iters`` forward passes under ``torch.inference_mode`` (``torch.cuda.synchronize``
around each), after ``--warmup`` untimed passes.  ``speedup`` = dense ms / sparse ms (median
single pass); ``max_abs_diff`` = the largest |logit difference| between the sides on the
timed batch (bf16 arithmetic: ~1e-2 is rounding).

Needs CUDA compute capability >= 8.0.  On anything else the dense side is still timed and the
JSON's ``semi_structured`` says why the sparse side could not run; the exit status is 1
unless ``--allow-unsupported`` (what ``gpu_check.sh --dry-run`` passes on a CPU).

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "semi_structured_speed", "results": {"16": {"speedup": ...}, "64": {...}}, ...}

Run::

    .venv/bin/python benchmarks/semi_structured_speed.py --device cuda     # BERT-base geometry
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()

import torch  # noqa: E402

BENCHMARK = "semi_structured_speed"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", default="16,64", help="comma-separated batch sizes (16,64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    p.add_argument("--allow-unsupported", action="store_true",
                   help="exit 0 when the device cannot run the 2:4 kernels (the dense side is still timed)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build(args):
    from transformers import BertConfig, BertForSequenceClassification

    from bert_ticket_cli.sparsity.nm import nm_magnitude_masks
    from bert_ticket_cli.sparsity.prunable import prunable_parameters

    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate,
                        max_position_embeddings=max(512, args.seq), num_labels=2)
    model = BertForSequenceClassification(config).eval()
    weights = prunable_parameters(model, include_pooler=False)
    masks = nm_magnitude_masks(weights, {n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}, (2, 4))
    with torch.no_grad():
        for name, w in weights.items():
            w.mul_(masks[name])
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    return model.to(args.device, dtype)


def time_pass(model, batch, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = _common.now()
    with torch.inference_mode():
        model(**batch)
    if cuda:
        torch.cuda.synchronize()
    return _common.now() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    from bert_ticket_cli.errors import UserError
    from bert_ticket_cli.model.semi_structured import to_semi_structured

    cuda = args.device.startswith("cuda")
    dense = build(args)
    sparse, reason, layers = copy.deepcopy(dense), None, []
    try:
        layers = to_semi_structured(sparse, args.dtype)
    except UserError as exc:
        reason, sparse = str(exc), None
    gen = torch.Generator().manual_seed(args.seed + 1)
    results = {}
    for b in [int(x) for x in args.batches.split(",") if x]:
        ids = torch.randint(min(1000, args.vocab // 2), args.vocab, (b, args.seq), generator=gen)
        batch = {"input_ids": ids.to(args.device),
                 "attention_mask": torch.ones(b, args.seq, dtype=torch.long, device=args.device)}
        sides = {"dense": dense} | ({"sparse": sparse} if sparse is not None else {})
        for m in sides.values():
            for _ in range(args.warmup):
                time_pass(m, batch, cuda)
        times = {k: [] for k in sides}

        def side(name):
            def run() -> float:
                times[name].extend(time_pass(sides[name], batch, cuda) for _ in range(args.iters))
                return 0.0
            return run

        _common.alternate(args.rounds, {k: side(k) for k in sides})
        row = {"dense_ms": round(1000 * _common.median(times["dense"]), 3)}
        if sparse is not None:
            with torch.inference_mode():
                diff = float((dense(**batch).logits.float() - sparse(**batch).logits.float()).abs().max())
            row.update(sparse_ms=round(1000 * _common.median(times["sparse"]), 3),
                       speedup=round(_common.median(times["dense"]) / _common.median(times["sparse"]), 4),
                       max_abs_diff=diff)
        results[str(b)] = row
        _common.log(f"[{BENCHMARK}] batch {b}: {row}")
    print(f"2:4 inference, {args.layers} layers hidden {args.hidden} seq {args.seq} {args.dtype} on {args.device}: "
          + "; ".join(f"batch {b}: {r}" for b, r in results.items()))
    _common.emit_result({
        "benchmark": BENCHMARK, "results": results,
        "semi_structured": {"ok": reason is None, "layers": len(layers), "reason": reason},
        "config": {k: v for k, v in vars(args).items() if k != "allow_unsupported"},
    }, quick=False)
    return 0 if reason is None or args.allow_unsupported else 1


if __name__ == "__main__":
    sys.exit(main())
