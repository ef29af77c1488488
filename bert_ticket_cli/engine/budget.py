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

The micro-step, checkpoints, stop signals and the eval record are the shared
:class:`bert_ticket_cli.engine.core.StepCore`; this driver only decides the learning rate, the
stops, when to evaluate / log / save, and what divergence does.  The data order is
:class:`bert_ticket_cli.engine.batches.ChunkedOrder`: chunked
permutations, a pure function of (seed, epoch, step), so resuming needs no sampler state and
start-up does not grow with the corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bert_ticket_cli.artifacts.paths import RunDir, append_jsonl, atomic_write_json
from bert_ticket_cli.config.schema import TrainConfig
from bert_ticket_cli.engine import signals
from bert_ticket_cli.engine.batches import ChunkedOrder
from bert_ticket_cli.engine.core import StepCore, TrainResult, TrainState
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


class Diverged(UserError):
    """Training diverged; nothing was checkpointed after the last good step."""


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


def _stop_reason(budget: Budget, state: TrainState, hooks_stop: bool) -> str | None:
    steps_clock = budget.clock == "steps"
    if steps_clock and state.step >= budget.max_steps:
        return "max_steps"
    if not steps_clock and budget.progress(state.step, state.elapsed_s) >= 1.0:
        return "budget"
    if (budget.max_steps and state.step >= budget.max_steps) or (budget.step_limit and state.step >= budget.step_limit):
        return "max_steps"
    if steps_clock and state.elapsed_s >= budget.seconds:
        return "budget"
    return "early_bird" if hooks_stop else None


def _agree(core: StepCore, state: TrainState) -> tuple[float, bool, bool]:
    """One gather: all ranks agree on this step's loss, tokens, non-finite flag, stop signal and
    clock (the slowest rank's); returns (mean loss, non-finite, stop signal)."""
    dev = core.loss_sum.device
    stats = torch.stack([
        core.loss_sum / core.loss_n, core.tokens.float(),
        torch.tensor(0.0 if torch.isfinite(core.loss_sum) else 1.0, device=dev),
        torch.tensor(1.0 if signals.requested() else 0.0, device=dev),
        torch.tensor(core.elapsed(), device=dev),
    ]).unsqueeze(0)
    if core.accelerator.num_processes > 1:
        stats = core.accelerator.gather(stats)
    tokens = int(stats[:, 1].sum())
    state.elapsed_s = float(stats[:, 4].max())
    core.reset_loss()
    core.tokens.zero_()
    state.tokens += tokens
    core.tokens_session += tokens
    return float(stats[:, 0].mean()), bool(stats[:, 2].sum() > 0), bool(stats[:, 3].sum() > 0)


def _diverged(core: StepCore, state: TrainState, budget: Budget, loss_value: float, lr: float,
              scale: float | None, nonfinite: bool) -> Diverged:
    """Record the divergence (metrics.jsonl, diverged.json) and say what happened; no checkpoint."""
    core.progress.close()
    collapsed = scale is not None and scale < budget.min_loss_scale
    what = (f"the fp16 loss scale collapsed to {scale:g} (below pretrain.min_loss_scale="
            f"{budget.min_loss_scale:g})" if collapsed and not nonfinite else f"the loss became {loss_value}")
    good = core.run.latest_checkpoint()
    record = {"event": "diverged", "step": state.step, "elapsed_s": round(state.elapsed_s, 3),
              "loss": loss_value if math.isfinite(loss_value) else str(loss_value), "lr": lr,
              "loss_scale": scale, "last_good_checkpoint": str(good) if good else None}
    if core.main:
        append_jsonl(core.run.metrics, record)
        atomic_write_json(core.run.root / DIVERGED_FILE, record)
    keep = (f"the last good checkpoint {good.name} is kept (resume=true continues from it, e.g. with "
            f"a lower train.lr or a longer pretrain.warmup_proportion)") if good else \
        "no checkpoint had been written yet (lower train.lr or lengthen pretrain.warmup_proportion)"
    return Diverged(f"training diverged at step {state.step} ({state.elapsed_s:.0f}s, lr {lr:.3g}): "
                    f"{what}; stopped without saving; {keep}")


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
    tracking=None,
    compile_backend: str | None = None,
) -> TrainResult:
    """Train ``model`` until the budget (or max_steps / an early stop / a signal) ends it."""
    core = StepCore(accelerator=accelerator, model=model, train_dataset=train_dataset, collate=collate, train=train,
                    plan=plan, seed=seed, run=run, evaluate=evaluate, hooks=hooks, penalty=penalty,
                    num_workers=num_workers, pin_memory=accelerator.device.type == "cuda", count_tokens=True,
                    poison=True, tracking=tracking, compile_backend=compile_backend)
    state = core.resume(resume_from)
    many = accelerator.num_processes > 1
    steps_clock = budget.clock == "steps"
    total = int(budget.max_steps) if steps_clock else max(1, int(math.ceil(budget.seconds)))
    where = "" if label == "pretrain" else f"{label}  "
    progress = Progress(total, state.step if steps_clock else int(state.elapsed_s), enabled=core.main,
                        description=label)
    if resume_from is not None:
        progress.line(f"{where}resumed from {resume_from} at step {state.step}, "
                      f"{state.elapsed_s:.1f}s of the budget used")
    # The log interval's accumulator is this driver's (per-step agreed means): it is what a
    # checkpoint carries, and the core's per-step sums start empty.
    log_loss, log_steps = state.loss_sum, state.loss_n
    core.reset_loss()

    def stash_loss(st: TrainState) -> None:
        st.loss_sum, st.loss_n = log_loss, log_steps

    core.stash_loss = stash_loss
    preempted, lr = core.start(state, progress), 0.0  # a stop signal already pending: stop before the first step
    over = state.step >= budget.max_steps if steps_clock else budget.progress(state.step, state.elapsed_s) >= 1.0
    stop_reason = ("max_steps" if steps_clock else "budget") if over else None

    def set_lr() -> None:  # a new optimizer step: its learning rate, from the clock now
        # (set before the backward: DeepSpeed steps inside accelerator.backward)
        nonlocal lr
        factor = lr_factor(budget.progress(state.step + 1, core.elapsed()), budget.warmup)
        lr = _set_lr(core.optimizer, core.base_lrs, factor)

    def order(epoch: int) -> ChunkedOrder:
        return ChunkedOrder(len(train_dataset), seed=seed, epoch=epoch, chunk=shuffle_chunk)

    for _ in () if stop_reason or preempted else core.steps(state, order, on_step_start=set_lr):
        scale = loss_scale(accelerator, core.model)
        loss_value, nonfinite, stop_signal = _agree(core, state)
        if nonfinite or not math.isfinite(loss_value) or (scale is not None and scale < budget.min_loss_scale):
            raise _diverged(core, state, budget, loss_value, lr, scale, nonfinite)

        log_loss += loss_value
        log_steps += 1
        stop_reason = _stop_reason(budget, state, core.hooks_stop())
        last = stop_reason is not None
        if state.step % train.log_every == 0 or last:
            session = core.session_s()
            record = {"event": "train", "step": state.step, "loss": log_loss / log_steps, "lr": lr,
                      "elapsed_s": round(state.elapsed_s, 3), "tokens": state.tokens,
                      "tokens_per_s": round(core.tokens_session / session, 1) if session > 0 else None}
            pos = (f"step {state.step}/{budget.max_steps}  {state.elapsed_s / 60:.1f} min" if steps_clock else
                   f"step {state.step}  {state.elapsed_s / 60:.1f}/{budget.seconds / 60:.1f} min")
            core.log(record, f"{where}{pos}  loss {record['loss']:.4f}  lr {lr:.3g}  "
                             f"{record['tokens_per_s'] or 0:.0f} tok/s")
            progress.advance(state.step if steps_clock else min(total, int(state.elapsed_s)),
                             f"loss {record['loss']:.4f}")
            log_loss, log_steps = 0.0, 0
        else:
            progress.advance(state.step if steps_clock else min(total, int(state.elapsed_s)))

        if evaluate is not None and (
            last
            or (budget.eval_every_steps and state.step % budget.eval_every_steps == 0)
            or (budget.eval_every_s and state.elapsed_s - state.last_eval_s >= budget.eval_every_s)
        ):
            metrics = core.eval_record(state, f"{where}eval  step {state.step}  ")
            after = budget.early_stop_after_s
            if (not last and budget.early_stop_loss is not None and after is not None
                    and state.elapsed_s >= after and metrics.get("mlm_loss", -math.inf) > budget.early_stop_loss):
                progress.line(f"early stop: validation loss {metrics['mlm_loss']:.4f} is still above "
                              f"{budget.early_stop_loss:g} after {state.elapsed_s / 3600:.2f} h")
                last, stop_reason = True, "early_stop"

        if core.preempt(state, last, agreed=stop_signal if many else None):
            preempted = True
            break
        if not last and (
            (budget.save_every_steps and state.step % budget.save_every_steps == 0)
            or (budget.save_every_s and state.elapsed_s - state.last_save_s >= budget.save_every_s)
        ):
            state.last_save_s = state.elapsed_s
            core.save(state)
        if last:
            break  # (at an epoch's end the core starts the next order over the same statically masked copies)
    if stop_reason and evaluate is not None and (not state.evals or state.evals[-1]["step"] != state.step):
        core.eval_record(state, f"eval  step {state.step}  ")  # e.g. a run resumed after its deadline had passed

    return core.result(state, preempted, stop_reason=None if preempted else stop_reason)


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
