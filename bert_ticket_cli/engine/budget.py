"""Training on a wall-clock budget: the academic-budget pre-training loop (Izsak et al. 2021).

What differs from :func:`bert_ticket_cli.engine.loop.fit` (fine-tuning by epochs):

* **The schedule follows the clock.**  ``progress`` is ``elapsed / budget`` (``clock=wall``) or
  ``step / max_steps`` (``clock=steps``, for reproducible runs); the learning rate is
  ``lr x warm-up-then-linear-decay(progress)``: linear warm-up over ``warmup`` of the budget,
  then linear decay to 0 at the budget.  It is set on the optimizer right before every
  optimizer step, so the decay reaches 0 exactly at the deadline whatever the step speed.
* **The deadline is checked after every optimizer step** (not per data shard): the step that
  crosses the budget is the last one; the final model is saved right after it.
* **Elapsed time is part of the checkpoint**: a resumed run continues the schedule where it
  stopped (time spent between the interruption and the restart does not count).
* **Stops**: the budget, ``max_steps``, an early stop when the validation loss is still above
  a threshold after a given time, a signal (checkpoint, exit 75), and divergence: a non-finite
  loss or a collapsed fp16 loss scale stops at once *without* writing a checkpoint, so the last
  checkpoint on disk is the last good one, and :class:`Diverged` says what happened.
* **Per-step agreement across processes**: one small gather per optimizer step carries every
  rank's loss sum, token count, non-finite flag, stop signal and clock, so all ranks take the
  same decision (the slowest rank's clock is the run's clock).

The data order is :class:`bert_ticket_cli.engine.batches.ChunkedOrder`: chunked
permutations, a pure function of (seed, epoch, step), so resuming needs no sampler state and
start-up does not grow with the corpus.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from bert_ticket_cli.artifacts.paths import TRAINER_STATE, RunDir, append_jsonl, atomic_write_json
from bert_ticket_cli.config.schema import TrainConfig
from bert_ticket_cli.engine import signals
from bert_ticket_cli.engine.loop import make_optimizer, save_checkpoint
from bert_ticket_cli.engine.progress import Progress
from bert_ticket_cli.engine.setup import BatchPlan
from bert_ticket_cli.errors import UserError

#: Where a diverged run records what happened (next to its checkpoints).
DIVERGED_FILE = "diverged.json"


def parse_duration(text: Any, what: str = "duration") -> float:
    """``24h``, ``90min``, ``15m``, ``900s``, ``1.5h``, ``2d`` or a bare number of seconds -> seconds."""
    s = str(text).strip().lower().replace(" ", "")
    units = (("days", 86400), ("day", 86400), ("d", 86400), ("hours", 3600), ("hour", 3600), ("hrs", 3600),
             ("hr", 3600), ("h", 3600), ("minutes", 60), ("minute", 60), ("mins", 60), ("min", 60), ("m", 60),
             ("seconds", 1), ("second", 1), ("secs", 1), ("sec", 1), ("s", 1))
    scale = 1.0
    for suffix, factor in units:
        if s.endswith(suffix):
            s, scale = s[: -len(suffix)], float(factor)
            break
    try:
        value = float(s) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{what}={text!r} is not a duration: write e.g. 24h, 90min or 900s")
    return value


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up to 1 over ``warmup`` (a fraction of the budget), then linear decay to 0 at 1."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return p / warmup
    return max(0.0, (1.0 - p) / (1.0 - warmup)) if warmup < 1 else 0.0


@dataclass
class Budget:
    """When training stops and how the schedule advances."""

    seconds: float  # the wall-clock budget (clock=wall); also a hard deadline with clock=steps
    clock: str = "wall"  # wall | steps
    max_steps: int | None = None
    warmup: float = 0.06
    eval_every_s: float = 0.0  # 0 = no time-based validation
    eval_every_steps: int = 0
    save_every_s: float = 0.0
    save_every_steps: int = 0
    early_stop_loss: float | None = None
    early_stop_after_s: float | None = None
    min_loss_scale: float = 1.0
    step_limit: int | None = None  # a hard stop that does not shape the schedule (EarlyBERT's search_steps)

    def progress(self, step: int, elapsed: float) -> float:
        if self.clock == "steps":
            return step / self.max_steps if self.max_steps else 0.0
        return elapsed / self.seconds if self.seconds > 0 else 1.0


@dataclass
class BudgetState:
    """Where training is; saved as JSON in every checkpoint (no pickle)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0  # wall time of training, evaluations and checkpoints included
    eval_s: float = 0.0
    tokens: int = 0  # training tokens processed (padding excluded), all processes
    last_eval_s: float = 0.0
    last_save_s: float = 0.0
    evals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BudgetResult:
    model: torch.nn.Module  # as prepared by Accelerate (unwrap before saving)
    state: BudgetState
    preempted: bool
    stop_reason: str | None  # budget | max_steps | early_stop | early_bird; None when preempted
    train_time_s: float  # elapsed minus evaluation
    tokens_per_s: float  # this session's training throughput


class Diverged(UserError):
    """Training diverged; nothing was checkpointed after the last good step."""


def load_checkpoint(accelerator, path: Path) -> BudgetState:
    accelerator.load_state(str(path))
    return BudgetState(**json.loads((path / TRAINER_STATE).read_text()))


def loss_scale(accelerator, model) -> float | None:
    """The current fp16 loss scale (native AMP or DeepSpeed), None without loss scaling."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    ds_opt = getattr(model, "optimizer", None)  # a DeepSpeedEngine's ZeRO / fp16 optimizer
    for attr in ("cur_scale", "loss_scale"):
        value = getattr(ds_opt, attr, None)
        if isinstance(value, (int, float)) and getattr(ds_opt, "dynamic_loss_scale", True):
            return float(value)
    return None


def _set_lr(optimizer, base_lrs: list[float], factor: float) -> float:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
    return base_lrs[0] * factor


def fit_budget(
    *,
    accelerator,
    model: torch.nn.Module,
    train_dataset,
    collate: Callable,
    train: TrainConfig,
    plan: BatchPlan,
    budget: Budget,
    seed: int,
    run: RunDir,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None,
    shuffle_chunk: int,
    resume_from: Path | None = None,
    hooks: list[Any] = (),
    penalty: Callable[[], torch.Tensor] | None = None,
    num_workers: int = 0,
    label: str = "pretrain",
) -> BudgetResult:
    """Train ``model`` until the budget (or max_steps / an early stop / a signal) ends it."""
    from bert_ticket_cli.engine.batches import ChunkedOrder, StepBatches, steps_per_epoch

    per_epoch = steps_per_epoch(len(train_dataset), plan.global_batch)
    accelerator.free_memory()  # forget earlier stages' prepared objects (see loop.fit)
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
    optimizer = make_optimizer(model, train, deepspeed=deepspeed)
    base_lrs = [train.lr for _ in optimizer.param_groups]
    model, optimizer = accelerator.prepare(model, optimizer)
    state = BudgetState()
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)

    main = accelerator.is_main_process
    many = accelerator.num_processes > 1
    steps_clock = budget.clock == "steps"
    total = int(budget.max_steps) if steps_clock else max(1, int(math.ceil(budget.seconds)))
    progress = Progress(total, state.step if steps_clock else int(state.elapsed_s), enabled=main, description=label)
    if resume_from is not None:
        progress.line(f"resumed from {resume_from} at step {state.step}, {state.elapsed_s:.1f}s of the budget used")
    signals.install()

    def elapsed_now() -> float:
        return time.perf_counter() - t_start

    def log_eval(model) -> dict[str, float]:
        t_eval = time.perf_counter()
        metrics = evaluate(model)
        model.train()
        state.eval_s += time.perf_counter() - t_eval
        state.elapsed_s = elapsed_now()
        state.last_eval_s = state.elapsed_s
        record = {"event": "eval", "step": state.step, "elapsed_s": round(state.elapsed_s, 3), **metrics}
        state.evals.append(record)
        if main:
            append_jsonl(run.metrics, record)
        progress.line(f"eval  step {state.step}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    model.train()
    t_start = time.perf_counter() - state.elapsed_s
    t_session, tokens_session = time.perf_counter(), 0
    log_loss, log_steps = 0.0, 0
    preempted, stop_reason = False, None
    last = (steps_clock and state.step >= budget.max_steps) or (
        not steps_clock and budget.progress(state.step, state.elapsed_s) >= 1.0)
    if last:
        stop_reason = "max_steps" if steps_clock else "budget"
    step_loss = torch.zeros((), device=accelerator.device)
    step_tokens = torch.zeros((), device=accelerator.device)
    step_n = 0
    lr = 0.0

    while not last:
        batches = StepBatches(
            ChunkedOrder(len(train_dataset), seed=seed, epoch=state.epoch, chunk=shuffle_chunk),
            global_batch=plan.global_batch, micro_batch=plan.micro_batch, world_size=plan.world_size,
            rank=accelerator.process_index, steps=per_epoch, start_step=state.step_in_epoch,
        )
        loader = DataLoader(train_dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                            pin_memory=accelerator.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed + state.epoch))
        for batch in loader:
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            if step_n == 0:  # a new optimizer step: its learning rate, from the clock now
                # (set before the backward: DeepSpeed steps inside accelerator.backward)
                lr = _set_lr(optimizer, base_lrs, lr_factor(budget.progress(state.step + 1, elapsed_now()),
                                                            budget.warmup))
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                if signals.poison_loss(state.step + 1):
                    loss = loss * float("nan")
                accelerator.backward(loss if penalty is None else loss + penalty())
                if accelerator.sync_gradients:
                    for hook in hooks:
                        hook.before_step(model)
                    if train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().float()
            step_tokens += batch["attention_mask"].sum()
            step_n += 1
            if not accelerator.sync_gradients:
                continue

            # ---- one optimizer step is complete: all ranks agree on what happened ----
            for hook in hooks:
                hook.after_step(model)
            scale = loss_scale(accelerator, model)
            stats = torch.stack([
                step_loss / step_n, step_tokens.float(),
                torch.tensor(0.0 if torch.isfinite(step_loss) else 1.0, device=step_loss.device),
                torch.tensor(1.0 if signals.requested() else 0.0, device=step_loss.device),
                torch.tensor(elapsed_now(), device=step_loss.device),
            ]).unsqueeze(0)
            if many:
                stats = accelerator.gather(stats)
            loss_value = float(stats[:, 0].mean())
            tokens = int(stats[:, 1].sum())
            nonfinite, stop_signal = bool(stats[:, 2].sum() > 0), bool(stats[:, 3].sum() > 0)
            state.elapsed_s = float(stats[:, 4].max())
            step_loss.zero_()
            step_tokens.zero_()
            step_n = 0
            state.step += 1
            state.step_in_epoch += 1
            state.tokens += tokens
            tokens_session += tokens

            collapsed = scale is not None and scale < budget.min_loss_scale
            if nonfinite or not math.isfinite(loss_value) or collapsed:
                progress.close()
                what = (f"the fp16 loss scale collapsed to {scale:g} (below pretrain.min_loss_scale="
                        f"{budget.min_loss_scale:g})" if collapsed and not nonfinite else f"the loss became {loss_value}")
                good = run.latest_checkpoint()
                record = {"event": "diverged", "step": state.step, "elapsed_s": round(state.elapsed_s, 3),
                          "loss": loss_value if math.isfinite(loss_value) else str(loss_value), "lr": lr,
                          "loss_scale": scale, "last_good_checkpoint": str(good) if good else None}
                if main:
                    append_jsonl(run.metrics, record)
                    atomic_write_json(run.root / DIVERGED_FILE, record)
                keep = (f"the last good checkpoint {good.name} is kept (resume=true continues from it, e.g. with "
                        f"a lower train.lr or a longer pretrain.warmup_proportion)") if good else \
                    "no checkpoint had been written yet (lower train.lr or lengthen pretrain.warmup_proportion)"
                raise Diverged(f"training diverged at step {state.step} ({state.elapsed_s:.0f}s, lr {lr:.3g}): "
                               f"{what}; stopped without saving; {keep}")

            log_loss += loss_value
            log_steps += 1
            if steps_clock and state.step >= budget.max_steps:
                last, stop_reason = True, "max_steps"
            elif not steps_clock and budget.progress(state.step, state.elapsed_s) >= 1.0:
                last, stop_reason = True, "budget"
            elif budget.max_steps and state.step >= budget.max_steps:
                last, stop_reason = True, "max_steps"
            elif budget.step_limit and state.step >= budget.step_limit:
                last, stop_reason = True, "max_steps"
            elif steps_clock and state.elapsed_s >= budget.seconds:
                last, stop_reason = True, "budget"
            elif any(getattr(h, "stop_training", False) for h in hooks):
                last, stop_reason = True, "early_bird"

            if state.step % train.log_every == 0 or last:
                session = time.perf_counter() - t_session
                record = {"event": "train", "step": state.step, "loss": log_loss / log_steps, "lr": lr,
                          "elapsed_s": round(state.elapsed_s, 3), "tokens": state.tokens,
                          "tokens_per_s": round(tokens_session / session, 1) if session > 0 else None}
                if main:
                    append_jsonl(run.metrics, record)
                where = (f"step {state.step}/{budget.max_steps}  {state.elapsed_s / 60:.1f} min" if steps_clock else
                         f"step {state.step}  {state.elapsed_s / 60:.1f}/{budget.seconds / 60:.1f} min")
                progress.line(f"{where}  loss {record['loss']:.4f}  lr {lr:.3g}  "
                              f"{record['tokens_per_s'] or 0:.0f} tok/s")
                log_loss, log_steps = 0.0, 0
            progress.advance(state.step if steps_clock else min(total, int(state.elapsed_s)))

            want_eval = evaluate is not None and (
                last
                or (budget.eval_every_steps and state.step % budget.eval_every_steps == 0)
                or (budget.eval_every_s and state.elapsed_s - state.last_eval_s >= budget.eval_every_s)
            )
            if want_eval:
                metrics = log_eval(model)
                after = budget.early_stop_after_s
                if (not last and budget.early_stop_loss is not None and after is not None
                        and state.elapsed_s >= after and metrics.get("mlm_loss", -math.inf) > budget.early_stop_loss):
                    progress.line(f"early stop: validation loss {metrics['mlm_loss']:.4f} is still above "
                                  f"{budget.early_stop_loss:g} after {state.elapsed_s / 3600:.2f} h")
                    last, stop_reason = True, "early_stop"

            signals.fault_injection(state.step)
            if not last and (stop_signal or (not many and signals.requested() is not None)):
                save_checkpoint(accelerator, run, state, train.keep_checkpoints)
                progress.line(f"stop signal: checkpoint written at step {state.step}; resume with resume=true")
                preempted = True
                break
            if not last and (
                (budget.save_every_steps and state.step % budget.save_every_steps == 0)
                or (budget.save_every_s and state.elapsed_s - state.last_save_s >= budget.save_every_s)
            ):
                state.last_save_s = state.elapsed_s
                save_checkpoint(accelerator, run, state, train.keep_checkpoints)
            if last:
                break
            if state.step_in_epoch >= per_epoch:
                state.epoch += 1
                state.step_in_epoch = 0
                break  # next epoch: a new order over the same statically masked copies
        if preempted:
            break
    if last and evaluate is not None and (not state.evals or state.evals[-1]["step"] != state.step):
        log_eval(model)  # e.g. a run resumed after its deadline had already passed

    progress.close()
    session = time.perf_counter() - t_session
    return BudgetResult(
        model=model, state=state, preempted=preempted, stop_reason=None if preempted else stop_reason,
        train_time_s=state.elapsed_s - state.eval_s,
        tokens_per_s=tokens_session / session if session > 0 else 0.0,
    )


@torch.no_grad()
def mlm_validation(accelerator, model: torch.nn.Module, dataset, collate: Callable, batch_size: int,
                   limit: int | None = None) -> dict[str, float]:
    """MLM loss (mean over predicted tokens), accuracy and perplexity on the held-out split.

    Rows are spread over processes (rank r takes rows r, r+N, ...) and the three sums are
    reduced, so every process count gives the same figures.  The model returns logits of the
    predicted positions only (sparse prediction), row-major over (row, position).
    """
    import torch.nn.functional as F

    from bert_ticket_cli.metrics.mlm import metrics_from_sums

    n = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = accelerator.process_index, accelerator.num_processes
    indices = list(range(rank, n, world))
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    for lo in range(0, len(indices), batch_size):
        rows = [dataset[i] for i in indices[lo: lo + batch_size]]
        batch = {k: v.to(accelerator.device) for k, v in collate(rows).items()}
        logits = model(**batch).logits.float()
        target = batch["mlm_labels"][batch["mlm_labels"] != -100]
        sums[0] += F.cross_entropy(logits, target, reduction="sum").double()
        sums[1] += (logits.argmax(-1) == target).sum()
        sums[2] += target.numel()
    if world > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    if was_training:
        model.train()
    return metrics_from_sums(*sums.tolist())
