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
import gc
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.set_offline()
_common.passive_openmp()  # before torch: see there (steady numbers on a shared machine)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bert_bench import (  # noqa: E402
    PadCollate, Size, StackCollate, StepClock, add_size_args, bert_overrides, build_task_model, fit_sandbox,
    make_dataset, make_varlen_dataset, size_from_args, task_lengths, train_config,
)

BENCHMARK = "finetune_throughput"
LR = 1e-4  # large enough that the weights move visibly in a few steps, small enough to stay stable

# Sizes.  The default is a BERT-small-ish model (BERT-base is too slow on 2 cores).
DEFAULT = dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=30522, seq=128, batch=16,
               steps=10, warmup_steps=2, rounds=3)
QUICK = dict(layers=2, hidden=128, heads=2, intermediate=512, vocab=30522, seq=64, batch=16,
             steps=8, warmup_steps=2, rounds=5)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Size]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small model (2 layers, hidden 128, seq 64): finishes in well under a minute")
    add_size_args(p, DEFAULT, QUICK)
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="gradient clipping on both sides (default 0 = off, as in the plain loop)")
    p.add_argument("--fit-timing", choices=("hook", "diff"), default="hook",
                   help="how fit's setup is excluded: hook = per-step timestamps inside one run "
                        "(default, less noisy); diff = t(N2 steps) - t(N1 steps) of two runs")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--lengths", choices=("fixed", "sst2", "mrpc"), default="fixed",
                   help="fixed: every row --seq tokens (default); sst2 / mrpc: row lengths drawn from the task's "
                        "training set (--glue-dir; generated from SST-2's deciles when absent), dynamic padding")
    p.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"),
                   help="folder of GLUE task folders (SST-2/train.tsv, MRPC/train.tsv)")
    p.add_argument("--group-by-length", action="store_true",
                   help="ours with train.group_by_length=true (the plain loop follows the same batches)")
    p.add_argument("--no-trainer", action="store_true", help="leave out the Hugging Face Trainer baseline")
    p.add_argument("--trainer-group-by-length", action="store_true",
                   help="the Trainer with its own group_by_length=True (its default is off)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on every side (engine.mixed_precision=bf16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = size_from_args(p, args, DEFAULT, QUICK)
    if size.vocab < 200:
        p.error("--vocab must be at least 200")
    return args, size


# --------------------------------------------------------------------------------- models

def build_baseline(size: Size):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=size.vocab, num_labels=2, attn_implementation="eager", **bert_overrides(size))
    return BertForSequenceClassification(config)


@torch.no_grad()
def probe_loss(model: torch.nn.Module, batch: dict) -> float:
    """Loss on a fixed held-out batch (eval mode; dropout is 0 anyway)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss = float(model(**{k: v.to(device) for k, v in batch.items()}).loss)
    model.train(was_training)
    return loss


# ---------------------------------------------------------------------------------- sides

class Ours:
    """``fit`` as ``bert-ticket rewind`` calls it, minus evaluation and checkpoints, plus a
    StepClock hook (through the ``hooks`` argument every method plugs into)."""

    def __init__(self, size: Size, dataset, collate, init: dict, seed: int, max_grad_norm: float,
                 device: str = "cpu", bf16: bool = False, group_by_length: bool = False):
        from bert_ticket_cli.engine.setup import plan_batches

        self.device, self.bf16, self.group_by_length = device, bf16, group_by_length

        self.size, self.dataset, self.collate, self.init, self.seed = size, dataset, collate, init, seed
        self.max_grad_norm = max_grad_norm
        self.model = build_task_model(size)
        self.model.load_state_dict(init)
        self.plan = plan_batches(self._train_config(1), world_size=1)
        self.last_mean_loss = float("nan")

    def _train_config(self, steps: int):
        from dataclasses import replace

        return replace(train_config(self.size, steps, lr=LR, weight_decay=0.0, max_grad_norm=self.max_grad_norm),
                       group_by_length=self.group_by_length)

    def run(self, steps: int) -> tuple[float, list[float]]:
        """One complete ``fit`` of ``steps`` optimizer steps from the initial weights: its
        wall seconds and the ``perf_counter`` time at which each optimizer step finished.

        A fresh Accelerator per call, as each CLI run makes one (setup, not timed per step),
        in a ``fit_sandbox`` (stdout captured: no log line, no progress bar).
        """
        from bert_ticket_cli.config.schema import EngineConfig
        from bert_ticket_cli.engine.loop import fit
        from bert_ticket_cli.engine.setup import make_accelerator

        self.model.load_state_dict(self.init)
        train = self._train_config(steps)
        clock = StepClock(sync=self.device.startswith("cuda"))
        with fit_sandbox("bench-fit-") as run:
            t0 = _common.now()
            on_cpu = not self.device.startswith("cuda")
            engine = EngineConfig(name="cpu" if on_cpu else "gpu", cpu=on_cpu,
                                  mixed_precision="bf16" if self.bf16 else "no")
            accelerator = make_accelerator(engine, train, self.plan)
            result = fit(
                accelerator=accelerator, model=self.model, train_dataset=self.dataset, collate=self.collate,
                train=train, plan=self.plan, seed=self.seed, run=run, evaluate=None, hooks=[clock],
            )
            seconds = _common.now() - t0
            assert result.state.step == steps == len(clock.times), (result.state.step, steps, len(clock.times))
            records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
            self.last_mean_loss = float(records[-1]["loss"])  # mean over the run (log_every is huge)
        del result, accelerator
        gc.collect()
        return seconds, clock.times


class Baseline:
    """The plain loop a user would write, fed exactly the batches ``fit`` uses."""

    def __init__(self, size: Size, dataset, collate, init: dict, index_batches: list[list[int]],
                 max_grad_norm: float, device: str = "cpu", bf16: bool = False):
        self.device, self.bf16 = device, bf16
        self.dataset, self.collate, self.init = dataset, collate, init
        self.index_batches, self.max_grad_norm = index_batches, max_grad_norm
        self.model = build_baseline(size).to(device)
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
        cuda = self.device.startswith("cuda")
        autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=self.bf16)
        for batch in loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                loss = self.model(**batch).loss
            loss.backward()
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            self.losses.append(loss.item())  # .item() as fit's logging does at log steps; ~free on CPU
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(_common.now())
        assert len(self.ends) == warmup + steps
        seconds = self.ends[-1] - self.ends[warmup - 1]
        durations = np.diff(self.ends[warmup - 1:]).tolist()
        del optimizer, loader
        gc.collect()
        return seconds, durations


class TrainerSide:
    """What most users run: the Hugging Face ``Trainer`` on the same model (SDPA, the same initial
    weights), data and collate (dynamic padding), AdamW (the Trainer's default implementation)
    at the same constant learning rate, no weight decay, the same batch and clipping; its own
    shuffled sampler (``--group-by-length`` does not change it: its default is off;
    ``--trainer-group-by-length`` turns on its own length grouping)."""

    def __init__(self, size: Size, dataset, collate, init: dict, seed: int, max_grad_norm: float,
                 device: str = "cpu", bf16: bool = False, group_by_length: bool = False):
        self.group_by_length = group_by_length
        self.size, self.dataset, self.collate, self.init, self.seed = size, dataset, collate, init, seed
        self.max_grad_norm, self.device, self.bf16 = max_grad_norm, device, bf16
        self.model = build_task_model(size)
        self.optim = None

    def run(self, warmup: int, steps: int) -> tuple[float, list[float]]:
        import contextlib
        import io
        import tempfile

        from transformers import Trainer, TrainerCallback, TrainingArguments

        self.model.load_state_dict(self.init)
        cuda = self.device.startswith("cuda")
        ends: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if cuda:
                    torch.cuda.synchronize()
                ends.append(_common.now())

        with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            targs = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=self.size.batch, learning_rate=LR, weight_decay=0.0,
                lr_scheduler_type="constant", warmup_steps=0, max_steps=warmup + steps,
                max_grad_norm=self.max_grad_norm, logging_strategy="no", save_strategy="no", report_to="none",
                disable_tqdm=True, seed=self.seed, dataloader_drop_last=True, use_cpu=not cuda, bf16=self.bf16,
                remove_unused_columns=False, dataloader_num_workers=0,
                train_sampling_strategy="group_by_length" if self.group_by_length else "random")
            trainer = Trainer(model=self.model, args=targs, train_dataset=self.dataset, data_collator=self.collate,
                              callbacks=[Clock()])
            trainer.train()
            self.optim = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__ + f" ({targs.optim})"
        assert len(ends) == warmup + steps, len(ends)
        del trainer
        gc.collect()
        return ends[-1] - ends[warmup - 1], np.diff(ends[warmup - 1:]).tolist()


# ----------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from bert_ticket_cli.engine.batches import StepBatches, epoch_order, length_grouped_order

    n1 = size.warmup_steps
    n2 = size.warmup_steps + size.steps
    # One epoch is exactly n2 steps, so a fit of n2 steps never starts a second permutation.
    lengths_source = "fixed"
    if args.lengths == "fixed":
        dataset = make_dataset(n2 * size.batch, size, args.seed)
        collate = StackCollate(dataset.column_names)
        probe = collate(list(make_dataset(size.batch, size, args.seed + 1)))
    else:
        pool, lengths_source = task_lengths(args.lengths, args.glue_dir, size.seq, args.seed)
        pair = args.lengths == "mrpc"
        dataset = make_varlen_dataset(n2 * size.batch, size, args.seed, pool, pair=pair)
        collate = PadCollate(dataset.column_names)
        probe = collate(list(make_varlen_dataset(size.batch, size, args.seed + 1, pool, pair=pair)))
    # The rows fit visits, step by step: the project's own sampler for (seed, epoch 0), so
    # the baseline sees the same examples in the same order (a user would shuffle with a
    # DataLoader; the order does not change the cost, only makes the losses comparable).
    row_lengths = [len(r) for r in dataset["input_ids"]]
    order = (length_grouped_order(row_lengths, size.batch, args.seed, 0) if args.group_by_length
             else epoch_order(len(dataset), args.seed, 0))
    index_batches = list(StepBatches(order, global_batch=size.batch,
                                      micro_batch=size.batch, world_size=1, rank=0, steps=n2))
    padded = sum(len(b) * max(row_lengths[i] for i in b) for b in index_batches)
    pad_fraction = 1.0 - sum(row_lengths[i] for b in index_batches for i in b) / padded

    torch.manual_seed(args.seed)
    init_model = build_task_model(size)
    init = {k: v.detach().clone() for k, v in init_model.state_dict().items()}
    n_params = sum(p.numel() for p in init_model.parameters())
    loss_start = probe_loss(init_model, probe)
    del init_model

    ours = Ours(size, dataset, collate, init, args.seed, args.max_grad_norm, args.device, args.bf16,
                args.group_by_length)
    base = Baseline(size, dataset, collate, init, index_batches, args.max_grad_norm, args.device, args.bf16)
    hf = None if args.no_trainer else TrainerSide(size, dataset, collate, init, args.seed, args.max_grad_norm,
                                                  args.device, args.bf16, args.trainer_group_by_length)
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

    step_times["trainer"] = []

    def trainer_side() -> float:
        t, durations = hf.run(n1, size.steps)
        step_times["trainer"] += durations
        return size.steps / t

    weight_gaps: list[float] = []
    ratios: list[float] = []

    def after_round(r: int, rates: dict[str, float]) -> None:
        ratios.append(rates["ours"] / rates["baseline"])
        # Both models now hold the weights after the same n2 steps from the same start.
        theirs = base.model.state_dict()
        weight_gaps.append(max((v.float() - theirs[k].to(v.device).float()).abs().max().item()
                               for k, v in ours.model.state_dict().items()))
        probe_gaps.append(abs(finals["ours"] - finals["base"]))
        train_gaps.append(abs(finals["ours_train_mean"] - finals["base_train_mean"]))
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size.rounds}: ours {rates['ours']:.3f} steps/s, "
                    f"baseline {rates['baseline']:.3f} steps/s, loss gap {probe_gaps[-1]:.2e}")

    sides = {"ours": ours_side, "baseline": base_side, **({"trainer": trainer_side} if hf is not None else {})}
    results = _common.alternate(size.rounds, sides, on_round=after_round)
    trainer_sps = _common.median(results["trainer"]) if hf is not None else float("nan")

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
                          f"speedup = ours / baseline; {_common.load_note()}")
    table.add_column("side")
    table.add_column("attention")
    table.add_column("steps/s", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("ms/step", justify="right")
    table.add_column("rounds (steps/s)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column(f"loss after {n2} steps", justify="right")
    rows = [("ours: engine.loop.fit", "ours", attn_ours, finals["ours"]),
            ("baseline: plain loop", "baseline", attn_base, finals["base"])]
    if hf is not None:
        rows.append(("Hugging Face Trainer", "trainer", hf.model.config._attn_implementation, float("nan")))
    for label, key, attn, final in rows:
        sps = _common.median(results[key])
        table.add_row(label, attn, f"{sps:.3f}", f"{sps * size.batch:.1f}", f"{1000 / sps:.1f}",
                      *_common.rounds_cells(results[key]),
                      f"{final:.6f}")
    table.add_section()
    table.add_row("ours / plain loop", "", f"{speedup:.3f}x", f"{speedup:.3f}x", "", "", "", f"gap {loss_gap:.1e}")
    if hf is not None:
        vs = ours_sps / trainer_sps
        table.add_row("ours / Trainer", "", f"{vs:.3f}x", f"{vs:.3f}x", "", "", "", "")
    Console(width=160).print(table)
    print(f"paired speedup (median of per-round ratios) {_common.median(ratios):.3f}x; median single step: "
          f"ours {1000 * _common.median(step_times['ours']):.1f} ms, "
          f"baseline {1000 * _common.median(step_times['baseline']):.1f} ms; "
          f"max |weight difference| after {n2} steps {max(weight_gaps):.1e}")
    print(f"loss at start {loss_start:.6f}; mean train loss over {n2} steps: ours (metrics.jsonl) "
          f"{finals['ours_train_mean']:.6f}, baseline {finals['base_train_mean']:.6f}")

    _common.emit_result({
        "benchmark": BENCHMARK,
        "speedup": round(speedup, 4),
        # ours / the Hugging Face Trainer, examples per second (None with --no-trainer)
        "speedup_vs_trainer": round(ours_sps / trainer_sps, 4) if hf is not None else None,
        "trainer_samples_per_s": round(trainer_sps * size.batch, 2) if hf is not None else None,
        "trainer_rounds": [round(x, 4) for x in results.get("trainer", [])],
        "trainer_optimizer": hf.optim if hf is not None else None,
        "lengths": args.lengths, "lengths_source": lengths_source, "group_by_length": args.group_by_length,
        "trainer_group_by_length": args.trainer_group_by_length,
        # padding in the batches ours (and the plain loop) trained on: padded tokens / all tokens
        "pad_fraction": round(pad_fraction, 4),
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
                   "device": args.device, "bf16": args.bf16,
                   "seed": args.seed, "timed_steps_from": n1, "timed_steps_to": n2,
                   "fit_timing": args.fit_timing},
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
