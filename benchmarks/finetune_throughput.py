"""Fine-tuning throughput: ``bert_ticket_cli.engine.loop.fit`` against a plain transformers loop.

What is compared, in one process, on the same machine:

* ours     -- the project's real training path: ``build_model`` (SDPA attention),
  ``make_accelerator`` + ``plan_batches``, and ``fit`` (Accelerate, our sampler, schedule,
  logging checks, stop-signal checks), evaluation and checkpoints off;
* baseline -- what a user would otherwise write: ``BertForSequenceClassification`` with
  ``attn_implementation="eager"``, ``torch.optim.AdamW`` and
  ``loss.backward(); optimizer.step(); optimizer.zero_grad()``.

Both sides start every round from the same weights (one state dict), see the same batches
(same rows in the same order, fixed length, so identical token ids and shapes) through a
``DataLoader`` with the same collate, and use the same optimizer settings: weight decay 0,
constant learning rate, no clipping (``--max-grad-norm`` turns clipping on for both), and
dropout 0.  The only intended difference in the arithmetic is the attention kernel, so the
losses agree to well under 1e-4 (``loss_gap``; ~1e-7 observed, weights ``weight_gap`` ~1e-6):
that shows both sides do the same work.

The machine may be shared (2 cores here, maybe a neighbour process), so the sides alternate
for ``--rounds`` rounds and the median steps/s of each is reported.  OpenMP threads are set
to sleep rather than spin while idle (``OMP_WAIT_POLICY=PASSIVE`` unless already exported;
see ``_common.passive_openmp``): with spinning threads on a busy 2-core box, rounds
scattered by 10x and no comparison was possible.

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "finetune_throughput", "speedup": ..., "ours_steps_per_s": ..., ...}

``speedup`` = our steps/s / baseline steps/s.  Run::

    .venv/bin/python benchmarks/finetune_throughput.py --quick     # well under a minute
    .venv/bin/python benchmarks/finetune_throughput.py             # BERT-small-ish, ~1 minute on 2 cores
    .venv/bin/python benchmarks/finetune_throughput.py --layers 12 --hidden 768 --heads 12 \\
        --intermediate 3072 --seq 128 --batch 32 --steps 30          # BERT-base, bigger machines
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import math
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()  # before torch: see there (steady numbers on a shared machine)

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCHMARK = "finetune_throughput"
LR = 1e-4  # large enough that the weights move visibly in a few steps, small enough to stay stable

# Sizes.  The default is a BERT-small-ish model (BERT-base is too slow on 2 cores).
DEFAULT = dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=30522, seq=128, batch=16,
               steps=10, warmup_steps=2, rounds=3)
QUICK = dict(layers=2, hidden=128, heads=2, intermediate=512, vocab=30522, seq=64, batch=16,
             steps=8, warmup_steps=2, rounds=5)


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int
    steps: int  # timed optimizer steps per side per round
    warmup_steps: int  # untimed steps before them (N1 below)
    rounds: int


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Size]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small model (2 layers, hidden 128, seq 64): finishes in well under a minute")
    p.add_argument("--layers", type=int, help="encoder layers (default 4; quick 2)")
    p.add_argument("--hidden", type=int, help="hidden size (default 256; quick 128)")
    p.add_argument("--heads", type=int, help="attention heads (default hidden/64)")
    p.add_argument("--intermediate", type=int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default 30522, bert-base-uncased)")
    p.add_argument("--seq", type=int, help="tokens per example (default 128; quick 64)")
    p.add_argument("--batch", type=int, help="examples per optimizer step (default 16)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per side per round (default 10; quick 8)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before the timed ones (default 2)")
    p.add_argument("--rounds", type=int, help="alternating rounds; the median is reported (default 3)")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="gradient clipping on both sides (default 0 = off, as in the plain loop)")
    p.add_argument("--fit-timing", choices=("hook", "diff"), default="hook",
                   help="how fit's setup is excluded: hook = per-step timestamps inside one run "
                        "(default, less noisy); diff = t(N2 steps) - t(N1 steps) of two runs")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    base = dict(QUICK if args.quick else DEFAULT)
    for key in base:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    if args.hidden is not None:  # derived sizes follow an explicit --hidden unless given too
        if args.heads is None:
            base["heads"] = max(1, args.hidden // 64)
        if args.intermediate is None:
            base["intermediate"] = 4 * args.hidden
    size = Size(**base)
    if size.hidden % size.heads:
        p.error(f"--hidden {size.hidden} is not a multiple of --heads {size.heads}")
    if size.steps < 1 or size.warmup_steps < 1 or size.rounds < 1:
        p.error("--steps, --warmup-steps and --rounds must be >= 1")
    if size.vocab < 200:
        p.error("--vocab must be at least 200")
    return args, size


# ---------------------------------------------------------------------------------- data

def make_dataset(n: int, size: Size, seed: int):
    """``n`` fixed-length rows: [CLS] a [SEP] b [SEP], random real length, padded to ``seq``.

    Every row has exactly ``seq`` ids, so every batch has the same shape on both sides.
    """
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    seq = size.seq
    ids = rng.integers(1000 if size.vocab > 2000 else 110, size.vocab, size=(n, seq))
    lengths = rng.integers(max(4, seq // 2), seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    split = lengths // 2
    ids[:, 0] = 101  # [CLS]
    ids[np.arange(n), split] = 102  # [SEP] between the two segments
    ids[np.arange(n), lengths - 1] = 102  # [SEP] at the end
    ids = np.where(mask == 1, ids, 0)  # [PAD] = 0
    types = ((np.arange(seq)[None, :] > split[:, None]) & (mask == 1)).astype(np.int64)
    labels = rng.integers(0, 2, size=n)
    return Dataset.from_dict({
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
        "token_type_ids": types.tolist(), "labels": labels.tolist(),
    })


class StackCollate:
    """Rows of equal length -> a dict of stacked LongTensors (no padding needed)."""

    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")

    def __call__(self, rows):
        return {k: torch.tensor([row[k] for row in rows], dtype=torch.long) for k in self.keys}


# --------------------------------------------------------------------------------- models

def bert_overrides(size: Size) -> dict:
    return dict(
        num_hidden_layers=size.layers, hidden_size=size.hidden, num_attention_heads=size.heads,
        intermediate_size=size.intermediate, max_position_embeddings=max(512, size.seq),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic: losses comparable
    )


def build_ours(size: Size):
    from bert_ticket_cli.config.schema import ModelConfig
    from bert_ticket_cli.model.build import build_model

    cfg = ModelConfig(name="bench", config=bert_overrides(size))  # attn_implementation: project default (sdpa)
    return build_model(cfg, kind="classification", num_labels=2, vocab_size=size.vocab)


def build_baseline(size: Size):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=size.vocab, num_labels=2, attn_implementation="eager", **bert_overrides(size))
    return BertForSequenceClassification(config)


@torch.no_grad()
def probe_loss(model: torch.nn.Module, batch: dict) -> float:
    """Loss on a fixed held-out batch (eval mode; dropout is 0 anyway)."""
    was_training = model.training
    model.eval()
    loss = float(model(**batch).loss)
    model.train(was_training)
    return loss


# ---------------------------------------------------------------------------------- sides

class StepClock:
    """A ``StepHooks`` that only notes when each optimizer step of ``fit`` finished.

    ``fit`` calls ``after_step`` once per optimizer step, right after the weights are
    updated; one list append per step is the whole cost (well under a microsecond against
    steps of tens of milliseconds).  ``before_step`` does nothing.
    """

    def __init__(self) -> None:
        self.times: list[float] = []

    def before_step(self, model: torch.nn.Module) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        self.times.append(_common.now())


class Ours:
    """``fit`` as ``bert-ticket rewind`` calls it, minus evaluation and checkpoints, plus a
    StepClock hook (through the ``hooks`` argument every method plugs into)."""

    def __init__(self, size: Size, dataset, collate, init: dict, seed: int, max_grad_norm: float):
        from bert_ticket_cli.engine.setup import plan_batches

        self.size, self.dataset, self.collate, self.init, self.seed = size, dataset, collate, init, seed
        self.max_grad_norm = max_grad_norm
        self.model = build_ours(size)
        self.model.load_state_dict(init)
        self.plan = plan_batches(self._train_config(1), world_size=1)
        self.last_mean_loss = float("nan")

    def _train_config(self, steps: int):
        from bert_ticket_cli.config.schema import TrainConfig

        return TrainConfig(
            max_steps=steps, batch_size=self.size.batch, lr=LR, weight_decay=0.0,
            warmup_ratio=0.0, warmup_steps=0, schedule="constant", max_grad_norm=self.max_grad_norm,
            eval_every=0, log_every=10**9, save_every=0,
        )

    def run(self, steps: int) -> tuple[float, list[float]]:
        """One complete ``fit`` of ``steps`` optimizer steps from the initial weights: its
        wall seconds and the ``perf_counter`` time at which each optimizer step finished.

        A fresh Accelerator per call, as each CLI run makes one (setup, not timed per step).
        ``fit`` prints one log line at its last step (and would draw a rich progress bar on a
        terminal): stdout is captured so the output stays a table, and the capture is not a
        terminal, so no bar refresh thread runs, as in a batch job.
        """
        from bert_ticket_cli.artifacts.paths import RunDir
        from bert_ticket_cli.config.schema import EngineConfig
        from bert_ticket_cli.engine.loop import fit
        from bert_ticket_cli.engine.setup import make_accelerator

        self.model.load_state_dict(self.init)
        train = self._train_config(steps)
        clock = StepClock()
        saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
        with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            run = RunDir(Path(tmp) / "run")
            t0 = _common.now()
            accelerator = make_accelerator(EngineConfig(name="cpu", cpu=True), train, self.plan)
            result = fit(
                accelerator=accelerator, model=self.model, train_dataset=self.dataset, collate=self.collate,
                train=train, plan=self.plan, seed=self.seed, run=run, evaluate=None, hooks=[clock],
            )
            seconds = _common.now() - t0
            assert result.state.step == steps == len(clock.times), (result.state.step, steps, len(clock.times))
            records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
            self.last_mean_loss = float(records[-1]["loss"])  # mean over the run (log_every is huge)
        for sig, handler in saved_handlers.items():  # fit installs its stop-signal handlers
            signal.signal(sig, handler)
        del result, accelerator
        gc.collect()
        return seconds, clock.times


class Baseline:
    """The plain loop a user would write, fed exactly the batches ``fit`` uses."""

    def __init__(self, size: Size, dataset, collate, init: dict, index_batches: list[list[int]],
                 max_grad_norm: float):
        self.dataset, self.collate, self.init = dataset, collate, init
        self.index_batches, self.max_grad_norm = index_batches, max_grad_norm
        self.model = build_baseline(size)
        self.model.load_state_dict(init)
        self.losses: list[float] = []
        self.ends: list[float] = []  # perf_counter at the end of each step of the last run

    def run(self, warmup: int, steps: int) -> tuple[float, list[float]]:
        """From the initial weights, ``warmup + steps`` steps in one loop.

        Returns the seconds from the end of step ``warmup`` to the end of the last step (the
        same window StepClock gives for fit) and each of those steps' durations.
        """
        from torch.utils.data import DataLoader

        self.model.load_state_dict(self.init)
        self.model.train()
        self.losses, self.ends = [], []
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        loader = DataLoader(self.dataset, batch_sampler=self.index_batches[:warmup + steps],
                            collate_fn=self.collate)
        for batch in loader:
            loss = self.model(**batch).loss
            loss.backward()
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            self.losses.append(loss.item())  # .item() as fit's logging does at log steps; ~free on CPU
            self.ends.append(_common.now())
        assert len(self.ends) == warmup + steps
        seconds = self.ends[-1] - self.ends[warmup - 1]
        durations = np.diff(self.ends[warmup - 1:]).tolist()
        del optimizer, loader
        gc.collect()
        return seconds, durations


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from bert_ticket_cli.engine.batches import EpochBatches

    n1 = size.warmup_steps
    n2 = size.warmup_steps + size.steps
    # One epoch is exactly n2 steps, so a fit of n2 steps never starts a second permutation.
    dataset = make_dataset(n2 * size.batch, size, args.seed)
    probe = StackCollate()(list(make_dataset(size.batch, size, args.seed + 1)))
    collate = StackCollate()
    # The rows fit visits, step by step: the project's own sampler for (seed, epoch 0), so
    # the baseline sees the same examples in the same order (a user would shuffle with a
    # DataLoader; the order does not change the cost, only makes the losses comparable).
    index_batches = list(EpochBatches(len(dataset), seed=args.seed, epoch=0, global_batch=size.batch,
                                      micro_batch=size.batch, world_size=1, rank=0, steps=n2))

    torch.manual_seed(args.seed)
    init_model = build_ours(size)
    init = {k: v.detach().clone() for k, v in init_model.state_dict().items()}
    n_params = sum(p.numel() for p in init_model.parameters())
    loss_start = probe_loss(init_model, probe)
    del init_model

    ours = Ours(size, dataset, collate, init, args.seed, args.max_grad_norm)
    base = Baseline(size, dataset, collate, init, index_batches, args.max_grad_norm)
    attn_ours = ours.model.config._attn_implementation
    attn_base = base.model.config._attn_implementation

    load = _common.machine_info()["load_avg_1m"]
    if (load is not None and torch.get_num_threads() > 1 and load > (os.cpu_count() or 1)
            and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
        _common.log(f"[{BENCHMARK}] note: load average {load} exceeds the {os.cpu_count()} CPUs and torch uses "
                    f"{torch.get_num_threads()} spinning OpenMP threads: parallel kernels wait on descheduled "
                    f"threads and the rounds will scatter; unset OMP_WAIT_POLICY (PASSIVE is this script's "
                    f"default) or pass --threads 1 for steady numbers on a busy machine")
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size: {size}; "
                f"{n_params / 1e6:.2f}M params; torch threads {torch.get_num_threads()}")

    # Timing fit without its setup (Accelerator, AdamW, prepare, DataLoader start, and the
    # first step's lazy AdamW state allocation).  Two ways, chosen by --fit-timing:
    #
    # * hook (default): one fit of N2 = N1 + steps steps with a StepClock hook; the time from
    #   the end of step N1 to the end of step N2 is exactly `steps` full iterations of fit's
    #   loop (data, forward, backward, optimizer, scheduler, logging and stop checks), no setup.
    # * diff: one fit of N1 steps and one of N2, both from the same weights; (t(N2) - t(N1))
    #   is `steps` steady steps, the setup cancelling.
    #
    # hook is the default because diff subtracts two whole-run times, so it carries the noise
    # of both and twice the setup variance: on a loaded 2-core box one round gave
    # t(N2) < t(N1), i.e. a negative time.  (Subtracting a separately measured "0-step" setup
    # is not possible: fit reads max_steps=0 as "unset" and trains whole epochs, and it would
    # leave the first step's optimizer-state allocation in the timed window.)  The baseline
    # runs the same N2 steps on the same batches from the same weights in one loop and times
    # from the end of step N1 to the end of step N2: the same window of the same trajectory.
    probe_gaps: list[float] = []
    train_gaps: list[float] = []
    finals: dict[str, float] = {}

    step_times: dict[str, list[float]] = {"ours": [], "baseline": []}  # single-step seconds, all rounds

    def ours_side() -> float:
        if args.fit_timing == "diff":
            t1, _ = ours.run(n1)
            t2, ends = ours.run(n2)
            seconds = t2 - t1
        else:
            _, ends = ours.run(n2)
            seconds = ends[n2 - 1] - ends[n1 - 1]
        step_times["ours"] += np.diff(ends[n1 - 1:n2]).tolist()
        finals["ours"] = probe_loss(ours.model, probe)
        finals["ours_train_mean"] = ours.last_mean_loss
        if seconds <= 0:
            _common.log(f"[{BENCHMARK}] fit timing came out non-positive ({seconds:.3f} s): round ignored")
            return float("nan")
        return size.steps / seconds

    def base_side() -> float:
        t, durations = base.run(n1, size.steps)
        step_times["baseline"] += durations
        finals["base"] = probe_loss(base.model, probe)
        finals["base_train_mean"] = float(np.mean(base.losses))
        return size.steps / t

    weight_gaps: list[float] = []
    ratios: list[float] = []

    def after_round(r: int, rates: dict[str, float]) -> None:
        ratios.append(rates["ours"] / rates["baseline"])
        # Both models now hold the weights after the same n2 steps from the same start.
        theirs = base.model.state_dict()
        weight_gaps.append(max((v - theirs[k]).abs().max().item() for k, v in ours.model.state_dict().items()))
        probe_gaps.append(abs(finals["ours"] - finals["base"]))
        train_gaps.append(abs(finals["ours_train_mean"] - finals["base_train_mean"]))
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size.rounds}: ours {rates['ours']:.3f} steps/s, "
                    f"baseline {rates['baseline']:.3f} steps/s, loss gap {probe_gaps[-1]:.2e}")

    results = _common.alternate(size.rounds, {"ours": ours_side, "baseline": base_side}, on_round=after_round)

    ours_sps = _common.median(results["ours"])
    base_sps = _common.median(results["baseline"])
    if not (math.isfinite(ours_sps) and math.isfinite(base_sps)):
        _common.log(f"[{BENCHMARK}] no usable round: rerun with more --rounds or --steps")
    speedup = ours_sps / base_sps
    loss_gap = max(probe_gaps)

    # ---- table ----
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fine-tuning throughput: {size.layers} layers, hidden {size.hidden}, "
                        f"seq {size.seq}, batch {size.batch}, {n_params / 1e6:.1f}M params, "
                        f"{torch.get_num_threads()} threads",
                  caption=f"median of {size.rounds} alternating rounds of {size.steps} timed steps "
                          f"(steps {n1 + 1}-{n2} of each run, fit timing: {args.fit_timing}); "
                          f"speedup = ours / baseline; 1-min load average {_common.machine_info()['load_avg_1m']} "
                          f"on {os.cpu_count()} CPUs")
    table.add_column("side")
    table.add_column("attention")
    table.add_column("steps/s", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("ms/step", justify="right")
    table.add_column("rounds (steps/s)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column(f"loss after {n2} steps", justify="right")
    for label, key, attn, final in (("ours: engine.loop.fit", "ours", attn_ours, finals["ours"]),
                                    ("baseline: plain loop", "baseline", attn_base, finals["base"])):
        sps = _common.median(results[key])
        table.add_row(label, attn, f"{sps:.3f}", f"{sps * size.batch:.1f}", f"{1000 / sps:.1f}",
                      " ".join(f"{x:.3f}" for x in results[key]), f"{100 * _common.spread(results[key]):.1f}%",
                      f"{final:.6f}")
    table.add_section()
    table.add_row("ratio", "", f"{speedup:.3f}x", f"{speedup:.3f}x", "", "", "", f"gap {loss_gap:.1e}")
    Console(width=160).print(table)
    print(f"paired speedup (median of per-round ratios) {_common.median(ratios):.3f}x; median single step: "
          f"ours {1000 * _common.median(step_times['ours']):.1f} ms, "
          f"baseline {1000 * _common.median(step_times['baseline']):.1f} ms; "
          f"max |weight difference| after {n2} steps {max(weight_gaps):.1e}")
    print(f"loss at start {loss_start:.6f}; mean train loss over {n2} steps: ours (metrics.jsonl) "
          f"{finals['ours_train_mean']:.6f}, baseline {finals['base_train_mean']:.6f}")

    _common.emit_json({
        "benchmark": BENCHMARK,
        "speedup": round(speedup, 4),
        "ours_steps_per_s": round(ours_sps, 4),
        "baseline_steps_per_s": round(base_sps, 4),
        "ours_samples_per_s": round(ours_sps * size.batch, 2),
        "baseline_samples_per_s": round(base_sps * size.batch, 2),
        "ours_rounds": [round(x, 4) for x in results["ours"]],
        "baseline_rounds": [round(x, 4) for x in results["baseline"]],
        # median over rounds of (ours / baseline) in the same round: less sensitive to load
        # changes between rounds than the ratio of medians
        "speedup_paired": round(_common.median(ratios), 4),
        # median single-step time over all timed steps of all rounds: robust to load spikes
        "ours_step_ms_p50": round(1000 * _common.median(step_times["ours"]), 2),
        "baseline_step_ms_p50": round(1000 * _common.median(step_times["baseline"]), 2),
        "loss_gap": float(f"{loss_gap:.3g}"),
        "weight_gap": float(f"{max(weight_gaps):.3g}"),
        "train_loss_gap": float(f"{max(train_gaps):.3g}"),
        "loss_start": round(loss_start, 6),
        "loss_final_ours": round(finals["ours"], 6),
        "loss_final_baseline": round(finals["base"], 6),
        "attention": {"ours": attn_ours, "baseline": attn_base},
        "config": {**size.__dict__, "params": n_params, "lr": LR, "max_grad_norm": args.max_grad_norm,
                   "seed": args.seed, "timed_steps_from": n1, "timed_steps_to": n2,
                   "fit_timing": args.fit_timing},
        "machine": _common.machine_info(),
        "quick": bool(args.quick),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
