"""Mask enforcement overhead: the project's training step with a ``MaskEnforcer`` against the
same step without it.

What is compared, in one process, on the same machine:

* masked -- ``fit`` (the project's real loop: Accelerate, fused AdamW, clipping, schedule,
  logging and stop checks) with ``hooks=[MaskEnforcer, clock]``: 50 % of every matrix of the
  prunable set (``sparsity.prunable.prunable_parameters``: q, k, v, attention output,
  intermediate, output per layer, and the pooler) pruned at random, so the backward hooks
  mask those gradients and ``after_step`` re-zeroes those weights;
* plain  -- the same ``fit`` with ``hooks=[clock]`` only.

Both sides start every round from the same weights (the ticket: the dense init with the
pruned entries zeroed), see the same batches (fixed length, same rows in the same order) and
use the same settings: AdamW with weight decay 0.01, clipping at 1.0 (the project defaults),
constant learning rate, dropout 0.  The dense kernels do the same work whatever the zeros, so
the difference is the enforcer's: one in-place multiply of each masked gradient during
backward, one of each masked weight after the step, and a Python loop over the masked
parameters in ``before_step``.

Timing as in ``finetune_throughput.py``: one ``fit`` of ``warmup + steps`` steps per side per
round, with a clock hook noting when each optimizer step finished; the timed window is the
``steps`` steps after the warm-up ones (no setup, no first-step optimizer-state allocation).
The sides alternate for ``--rounds`` rounds (order flipped each round); OpenMP threads sleep
when idle (``OMP_WAIT_POLICY=PASSIVE`` unless exported, see ``_common.passive_openmp``).

A shared 2-core machine scatters step times by more than the effect being measured (other
processes come and go: rounds here differed by 2-5x under a load average of 5), so four
figures are given, all fractions, (masked - plain) / plain:

* ``overhead`` (the headline) -- from the median single-step time of each side, pooled over
  all timed steps of all rounds: robust to load spikes, which hit single steps;
* ``overhead_paired`` -- the median over rounds of the two sides' windows of that round
  (measured back to back): robust to slow drifts of the load, but a spike lands whole;
* ``overhead_step_min`` -- from each side's fastest step: noise on a shared machine only adds
  time, so the minima are the least disturbed measurements;
* ``overhead_ops`` -- the enforcer's own work per step (its gradient hooks on every masked
  gradient, ``before_step``, ``after_step``) timed in isolation, many repetitions, divided by
  the plain median step time: the least noisy estimate, an upper bound on what the
  enforcer adds if nothing overlaps.

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "mask_overhead", "overhead": ..., "overhead_paired": ..., "overhead_ops": ..., ...}

Run::

    .venv/bin/python benchmarks/mask_overhead.py --quick     # under a minute
    .venv/bin/python benchmarks/mask_overhead.py             # BERT-small-ish, ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()  # before torch: see there

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bert_bench import (  # noqa: E402
    Size, StackCollate, StepClock, add_size_args, build_task_model, fit_sandbox, make_dataset, size_from_args,
    train_config,
)

BENCHMARK = "mask_overhead"
LR = 1e-4
WEIGHT_DECAY = 0.01  # the project default: weight decay is what would move zeros without masking
MAX_GRAD_NORM = 1.0  # the project default

DEFAULT = dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=30522, seq=128, batch=16,
               steps=8, warmup_steps=2, rounds=6)
QUICK = dict(layers=2, hidden=128, heads=2, intermediate=512, vocab=30522, seq=64, batch=16,
             steps=8, warmup_steps=2, rounds=8)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Size]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small model (2 layers, hidden 128, seq 64): under a minute")
    add_size_args(p, DEFAULT, QUICK)
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of each prunable matrix pruned (0.5)")
    p.add_argument("--op-reps", type=int, default=30, help="repetitions of the isolated enforcer-work timing")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = size_from_args(p, args, DEFAULT, QUICK)
    if not 0.0 < args.sparsity < 1.0:
        p.error("--sparsity must be in (0, 1)")
    if size.vocab < 2000:
        p.error("--vocab must be at least 2000")
    return args, size


# ---------------------------------------------------------------------------------- masks

def random_masks(model, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """``sparsity`` of every prunable matrix pruned at random (bool, True = kept)."""
    from bert_ticket_cli.sparsity.prunable import prunable_parameters

    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=g) >= sparsity for name, p in prunable_parameters(model).items()}


def pruned_nonzero(model, masks: dict[str, torch.Tensor]) -> int:
    """Pruned entries that are not exactly zero (computed directly, no enforcer)."""
    from bert_ticket_cli.sparsity.prunable import prunable_parameters

    params = prunable_parameters(model)
    return int(sum(int((params[n].detach()[~m] != 0).sum()) for n, m in masks.items()))


# ---------------------------------------------------------------------------------- sides

class Side:
    """``fit`` as the commands call it, evaluation and checkpoints off, with or without masks."""

    def __init__(self, size: Size, dataset, collate, init: dict, masks: dict | None, seed: int):
        from bert_ticket_cli.engine.setup import plan_batches

        self.size, self.dataset, self.collate, self.init = size, dataset, collate, init
        self.masks, self.seed = masks, seed
        self.model = build_task_model(size)
        self.model.load_state_dict(init)
        self.plan = plan_batches(self.train_config(1), world_size=1)
        self.check_after = -1  # enforcer.check() after the last run (masked side)

    def train_config(self, steps: int):
        return train_config(self.size, steps, lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM)

    def run(self, steps: int) -> list[float]:
        """One ``fit`` of ``steps`` steps from the initial weights: when each step finished."""
        from bert_ticket_cli.config.schema import EngineConfig
        from bert_ticket_cli.engine.loop import fit
        from bert_ticket_cli.engine.setup import make_accelerator
        from bert_ticket_cli.sparsity.enforce import MaskEnforcer

        self.model.load_state_dict(self.init)
        hooks, enforcer = [], None
        if self.masks is not None:  # as workflows/training.py does: build, zero, hook in first
            enforcer = MaskEnforcer(self.model, self.masks)
            enforcer.apply_weights()
            hooks.append(enforcer)
        clock = StepClock()
        hooks.append(clock)
        train = self.train_config(steps)
        with fit_sandbox("bench-mask-") as run:
            accelerator = make_accelerator(EngineConfig(name="cpu", cpu=True), train, self.plan)
            result = fit(accelerator=accelerator, model=self.model, train_dataset=self.dataset,
                         collate=self.collate, train=train, plan=self.plan, seed=self.seed,
                         run=run, evaluate=None, hooks=hooks)
            assert result.state.step == steps == len(clock.times)
        if enforcer is not None:
            self.check_after = enforcer.check()
            enforcer.remove()
        del result, accelerator
        gc.collect()
        return clock.times


def time_enforcer_ops(side: Side, reps: int) -> tuple[float, dict[str, float]]:
    """Seconds per step of the enforcer's own work, in isolation: every gradient hook (as
    backward runs them), ``before_step`` and ``after_step``; median of ``reps``."""
    from bert_ticket_cli.sparsity.enforce import MaskEnforcer

    model = side.model
    enforcer = MaskEnforcer(model, side.masks)
    params = enforcer._params
    hooks = [enforcer._grad_hook(i) for i in range(len(params))]
    g = torch.Generator().manual_seed(7)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    parts: dict[str, list[float]] = {"grad hooks": [], "before_step": [], "after_step": []}
    for _ in range(reps + 2):
        t0 = _common.now()
        for hook, p in zip(hooks, params):
            hook(p)
        t1 = _common.now()
        enforcer.before_step(model)
        t2 = _common.now()
        enforcer.after_step(model)
        t3 = _common.now()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(dt)
    for p in params:
        p.grad = None
    enforcer.remove()
    med = {k: _common.median(v[2:]) for k, v in parts.items()}  # first two: warm-up
    total = _common.median([a + b + c for a, b, c in zip(*(v[2:] for v in parts.values()))])
    return total, med


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bert_ticket_cli.sparsity.enforce import MaskEnforcer

    n1, n2 = size.warmup_steps, size.warmup_steps + size.steps
    # one epoch = n2 steps; single-segment rows, ids from 1000 (--vocab >= 2000)
    dataset = make_dataset(n2 * size.batch, size, args.seed, pair=False, min_id=1000)
    collate = StackCollate(dataset.column_names)

    torch.manual_seed(args.seed)
    init_model = build_task_model(size)
    masks = random_masks(init_model, args.sparsity, args.seed + 1)
    ticket = MaskEnforcer(init_model, masks)
    ticket.apply_weights()  # both sides start from the ticket's weights
    ticket.remove()
    init = {k: v.detach().clone() for k, v in init_model.state_dict().items()}
    n_params = sum(p.numel() for p in init_model.parameters())
    n_masked, n_pruned = ticket.n_masked, ticket.n_pruned
    del init_model, ticket

    masked = Side(size, dataset, collate, init, masks, args.seed)
    plain = Side(size, dataset, collate, init, None, args.seed)
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size: {size}; {n_params / 1e6:.2f}M params, "
                f"{len(masks)} masked matrices ({n_masked / 1e6:.2f}M weights, {n_pruned / 1e6:.2f}M pruned); "
                f"torch threads {torch.get_num_threads()}")

    step_times: dict[str, list[float]] = {"masked": [], "plain": []}
    nonzero: dict[str, int] = {}

    def make_side(name: str, side: Side):
        def go() -> float:
            ends = side.run(n2)
            step_times[name] += np.diff(ends[n1 - 1:n2]).tolist()
            nonzero[name] = pruned_nonzero(side.model, masks)
            return ends[n2 - 1] - ends[n1 - 1]  # seconds for the timed steps
        return go

    overheads: list[float] = []

    def after_round(r: int, secs: dict[str, float]) -> None:
        overheads.append((secs["masked"] - secs["plain"]) / secs["plain"])
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size.rounds}: "
                    f"plain {1000 * secs['plain'] / size.steps:.1f} ms/step, "
                    f"masked {1000 * secs['masked'] / size.steps:.1f} ms/step, overhead {100 * overheads[-1]:+.2f}%")

    sides = {"plain": make_side("plain", plain), "masked": make_side("masked", masked)}
    results = _common.alternate(size.rounds, sides, on_round=after_round)
    ops_s, ops_parts = time_enforcer_ops(masked, args.op_reps)

    plain_ms = 1000 * _common.median(results["plain"]) / size.steps
    masked_ms = 1000 * _common.median(results["masked"]) / size.steps
    plain_p50 = 1000 * _common.median(step_times["plain"])
    masked_p50 = 1000 * _common.median(step_times["masked"])
    plain_min = 1000 * min(step_times["plain"])
    masked_min = 1000 * min(step_times["masked"])
    overhead = (masked_p50 - plain_p50) / plain_p50
    overhead_paired = _common.median(overheads)
    overhead_min = (masked_min - plain_min) / plain_min
    overhead_ops = 1000 * ops_s / plain_p50

    # ---- table ----
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mask enforcement overhead: {size.layers} layers, hidden {size.hidden}, seq {size.seq}, "
                        f"batch {size.batch}, {n_params / 1e6:.1f}M params, {len(masks)} masked matrices at "
                        f"{args.sparsity:.0%} sparsity, {torch.get_num_threads()} threads",
                  caption=f"{size.rounds} alternating rounds of {size.steps} timed steps (steps {n1 + 1}-{n2} of "
                          f"each fit); overhead = (masked - plain) / plain; {_common.load_note()}")
    table.add_column("side")
    table.add_column("ms/step (median step)", justify="right")
    table.add_column("ms/step (median round)", justify="right")
    table.add_column("fastest step ms", justify="right")
    table.add_column("rounds (ms/step)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("pruned weights != 0 after", justify="right")
    for label, key in (("plain: fit", "plain"), ("masked: fit + MaskEnforcer", "masked")):
        rounds_ms = [1000 * s / size.steps for s in results[key]]
        table.add_row(label, f"{1000 * _common.median(step_times[key]):.1f}",
                      f"{1000 * _common.median(results[key]) / size.steps:.1f}",
                      f"{1000 * min(step_times[key]):.1f}", " ".join(f"{x:.1f}" for x in rounds_ms),
                      f"{100 * _common.spread(results[key]):.1f}%", f"{nonzero[key]:,}")
    table.add_section()
    table.add_row("overhead", f"{100 * overhead:+.2f}%", f"{100 * overhead_paired:+.2f}% (paired)",
                  f"{100 * overhead_min:+.2f}%", " ".join(f"{100 * x:+.1f}%" for x in overheads), "", "")
    table.add_row("enforcer work alone", f"{1000 * ops_s:.2f} ms = {100 * overhead_ops:.2f}%", "", "",
                  ", ".join(f"{k} {1000 * v:.2f} ms" for k, v in ops_parts.items()), "", "")
    Console(width=170).print(table)
    print(f"masked side: check() after the last run = {masked.check_after}; plain side leaves {nonzero['plain']:,} "
          f"of {n_pruned:,} pruned weights non-zero (weight decay and AdamW move them without the enforcer)")

    _common.emit_result({
        "benchmark": BENCHMARK,
        # from the median single-step times, pooled over all rounds
        "overhead": round(overhead, 5),
        # median over rounds of (masked - plain) / plain, the two windows of a round back to back
        "overhead_paired": round(overhead_paired, 5),
        # from each side's fastest step
        "overhead_step_min": round(overhead_min, 5),
        # the enforcer's own per-step work timed alone / plain median step
        "overhead_ops": round(overhead_ops, 5),
        "plain_ms_per_step": round(plain_ms, 3),
        "masked_ms_per_step": round(masked_ms, 3),
        "plain_step_ms_p50": round(plain_p50, 3),
        "masked_step_ms_p50": round(masked_p50, 3),
        "plain_step_ms_min": round(plain_min, 3),
        "masked_step_ms_min": round(masked_min, 3),
        "enforcer_ms": round(1000 * ops_s, 4),
        "enforcer_ms_parts": {k: round(1000 * v, 4) for k, v in ops_parts.items()},
        "overhead_rounds": [round(x, 5) for x in overheads],
        "plain_rounds_ms": [round(1000 * s / size.steps, 3) for s in results["plain"]],
        "masked_rounds_ms": [round(1000 * s / size.steps, 3) for s in results["masked"]],
        "invariant_violations": masked.check_after,
        "plain_pruned_nonzero": nonzero["plain"],
        "config": {**size.__dict__, "params": n_params, "masked_matrices": len(masks), "masked_weights": n_masked,
                   "pruned_weights": n_pruned, "sparsity": args.sparsity, "lr": LR, "weight_decay": WEIGHT_DECAY,
                   "max_grad_norm": MAX_GRAD_NORM, "seed": args.seed},
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
