"""The epoch schedule (fine-tuning): a thin driver around :class:`~bert_ticket_cli.engine.core.StepCore`.

It reads as a story: build the core and a LambdaLR schedule over the planned steps, maybe
resume, then after each optimizer step: step the schedule, log, evaluate (every
``eval_every`` steps or at each epoch's end), checkpoint and honour stop signals, until the
planned steps or a hook's ``stop_training`` end it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.config.schema import TrainConfig
from bert_ticket_cli.engine.batches import epoch_order, length_grouped_order, steps_per_epoch
from bert_ticket_cli.engine.budget import loss_scale
from bert_ticket_cli.engine.core import (  # noqa: F401  (the commands' import points)
    StepCore, StepHooks, TrainResult, TrainState, checkpoint_step, make_optimizer, param_groups, save_checkpoint,
    save_model,
)
from bert_ticket_cli.engine.progress import Progress
from bert_ticket_cli.engine.setup import BatchPlan
from bert_ticket_cli.errors import UserError


def make_schedule(optimizer, train: TrainConfig, total_steps: int):
    warmup = train.warmup_steps or int(round(train.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if train.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def total_steps(train: TrainConfig, per_epoch: int) -> int:
    return int(train.max_steps) if train.max_steps else max(1, math.ceil(train.epochs * per_epoch))


def example_lengths(dataset) -> list[int]:
    """Tokens per training example (the ``input_ids`` column), for ``train.group_by_length``."""
    names = getattr(dataset, "column_names", None) or []
    if "input_ids" not in names:
        raise UserError("train.group_by_length=true needs a tokenized training set with input_ids; "
                        "this task's training set has none: leave train.group_by_length=false")
    return [len(row) for row in dataset["input_ids"]]


def fit(
    *,
    accelerator,
    model: torch.nn.Module,
    train_dataset,
    collate: Callable,
    train: TrainConfig,
    plan: BatchPlan,
    seed: int,
    run: RunDir,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None,
    resume_from=None,
    hooks: list[StepHooks] = (),
    num_workers: int = 0,
    penalty: Callable[[], torch.Tensor] | None = None,
    label: str | None = None,
    tracking=None,
    order: Callable[[int], Any] | None = None,
    per_epoch: int | None = None,
    compile_backend: str | None = None,
) -> TrainResult:
    """Train ``model``; ``penalty()`` (e.g. EarlyBERT's L1 on its coefficients) is added to
    every micro-batch's loss (scaled for accumulation like it); logged losses are the task's.
    ``label`` (``level 2/9``, ``stage compact``) prefixes the log lines and names the bar.
    ``order(epoch)`` / ``per_epoch``: another data order than a permutation of the dataset and
    its optimizer steps per epoch (a multi-task order: each global batch from one task), still
    a pure function of (seed, epoch)."""
    per_epoch = per_epoch or steps_per_epoch(len(train_dataset), plan.global_batch)
    n_steps = total_steps(train, per_epoch)
    core = StepCore(accelerator=accelerator, model=model, train_dataset=train_dataset, collate=collate, train=train,
                    plan=plan, seed=seed, run=run, evaluate=evaluate, hooks=hooks, penalty=penalty,
                    num_workers=num_workers, tracking=tracking, per_epoch=per_epoch, compile_backend=compile_backend)
    # Our own schedule stepping: Accelerate's wrapper would step it once per process.
    scheduler = make_schedule(core.optimizer, train, n_steps)
    state = core.resume(resume_from, scheduler)
    where = f"{label}  " if label else ""
    progress = Progress(n_steps, state.step, enabled=core.main, description=label or "train")
    if resume_from is not None:
        progress.line(f"{where}resumed from {resume_from} at step {state.step}/{n_steps}")
    preempted = core.start(state, progress)  # a stop signal already pending: stop before the first step

    # train.group_by_length: batches of similar length, still a pure function of (seed, epoch)
    lengths = example_lengths(train_dataset) if order is None and getattr(train, "group_by_length", False) else None

    def permutation(epoch: int):
        if lengths is not None:
            return length_grouped_order(lengths, plan.global_batch, seed, epoch)
        return epoch_order(len(train_dataset), seed, epoch)

    for _ in () if state.step >= n_steps or preempted else core.steps(state, order or permutation):
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        state.elapsed_s = core.elapsed()
        last = state.step >= n_steps or core.hooks_stop()

        if state.step % train.log_every == 0 or last:
            mean_loss = accelerator.reduce(core.loss_sum / core.loss_n, reduction="mean").item()
            core.reset_loss()
            lr = scheduler.get_last_lr()[0]
            if not math.isfinite(mean_loss):
                raise UserError(
                    f"training loss became {mean_loss} at step {state.step} (lr {lr:.3g}): "
                    f"lower train.lr, raise train.warmup_ratio, or use bf16 instead of fp16; "
                    f"checkpoints already written are kept"
                )
            scale = loss_scale(accelerator, core.model)  # fp16 only: the dynamic loss scale, for the record
            core.log({"event": "train", "step": state.step, "epoch": state.epoch + state.step_in_epoch / per_epoch,
                      "loss": mean_loss, "lr": lr, "elapsed_s": round(state.elapsed_s, 3),
                      **({"loss_scale": scale} if scale is not None else {})},
                     f"{where}step {state.step}/{n_steps}  loss {mean_loss:.4f}  lr {lr:.3g}  "
                     f"{core.pace(state, n_steps)}")
            progress.advance(state.step, f"loss {mean_loss:.4f}")
        else:
            progress.advance(state.step)

        end_of_epoch = state.step_in_epoch >= per_epoch
        if evaluate is not None and (
            (train.eval_every and state.step % train.eval_every == 0) or (not train.eval_every and end_of_epoch) or last
        ):
            core.eval_record(state, f"{where}eval  step {state.step}  ")
        if end_of_epoch:  # before a checkpoint, so it resumes at the next epoch's start
            state.epoch += 1
            state.step_in_epoch = 0

        if core.preempt(state, last, scheduler):
            preempted = True
            break
        if train.save_every and state.step % train.save_every == 0 and not last:
            core.save(state, scheduler)
        if last:
            break

    return core.result(state, preempted, steps_total=n_steps)
