"""The training-step core both schedules drive.

:class:`StepCore` owns what does not depend on the schedule: the optimizer, the DataLoader
of each epoch, the micro-step with accumulation (optional loss penalty, :class:`StepHooks`
around the optimizer step, clipping, step, zero_grad), the stop-signal checkpoint, the eval
record and the clock.  ``StepCore.steps`` yields after every optimizer step; a driver decides
the rest: :func:`bert_ticket_cli.engine.loop.fit` (epochs, fine-tuning) and
:func:`bert_ticket_cli.engine.budget.fit_budget` (a wall-clock budget, pre-training).  Methods
that constrain the weights plug in through hooks and never see Accelerate.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader

from bert_ticket_cli.artifacts.paths import TRAINER_STATE, RunDir, append_jsonl, atomic_write_json
from bert_ticket_cli.config.schema import TrainConfig
from bert_ticket_cli.engine import signals
from bert_ticket_cli.engine.batches import StepBatches, steps_per_epoch
from bert_ticket_cli.engine.progress import Progress
from bert_ticket_cli.engine.setup import BatchPlan


class StepHooks(Protocol):
    """A hook may also have a ``stop_training`` attribute: when it turns true after a step,
    that step is the last one (evaluated like the planned last step), e.g. EarlyBERT's search
    ending at the early bird."""

    def before_step(self, model: torch.nn.Module) -> None: ...  # gradients ready, not applied
    def after_step(self, model: torch.nn.Module) -> None: ...  # weights updated


@dataclass
class TrainState:
    """Where training is; saved as JSON in every checkpoint (no pickle)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    elapsed_s: float = 0.0  # wall time since the start, evaluations included, carried across resumes
    eval_s: float = 0.0  # the part of elapsed_s spent evaluating
    tokens: int = 0  # training tokens processed (padding excluded), all processes (budget loop)
    last_eval_s: float = 0.0
    last_save_s: float = 0.0
    scheduler: dict[str, Any] = field(default_factory=dict)  # the epoch loop's LambdaLR
    evals: list[dict[str, Any]] = field(default_factory=list)
    # The loss accumulated since the last log line (rank mean of the sums, and its count), so a
    # resumed run logs the same mean as an uninterrupted one.
    loss_sum: float = 0.0
    loss_n: int = 0
    # metrics.jsonl's length when the checkpoint was written: a resume truncates it to this,
    # so lines logged after the checkpoint are not there twice (-1: not recorded).
    metrics_bytes: int = -1


@dataclass
class TrainResult:
    model: torch.nn.Module  # as prepared by Accelerate (unwrap before saving)
    state: TrainState
    preempted: bool
    train_time_s: float  # wall time of training, evaluations excluded, across resumes
    samples_per_s: float  # this session's training throughput
    tokens_per_s: float = 0.0  # (counted by the budget loop only)
    steps_total: int = 0  # the epoch loop's planned steps
    stop_reason: str | None = None  # budget loop: budget | max_steps | early_stop | early_bird; None when preempted


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and LayerNorm weights (BERT's convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, train: TrainConfig, *, deepspeed: bool = False) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one (CPU and CUDA): one kernel over all
    tensors instead of a Python loop per tensor (measured on CPU: 7.6 ms vs 54 ms per step for
    an 11M-parameter BERT).  DeepSpeed gets the plain one: it wraps the optimizer itself."""
    kwargs = dict(lr=train.lr, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps)
    groups = param_groups(model, train.weight_decay)
    if not deepspeed:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # a device or dtype without the fused kernel
    return torch.optim.AdamW(groups, foreach=None, **kwargs)


#: In every checkpoint: the sha256 of each of its files and the id of the run that wrote it.
MANIFEST = "manifest.json"
#: In the (sub-)run folder: the id its checkpoints carry (written with the first checkpoint).
RUN_ID_FILE = "run_id"


def run_id(run: RunDir, *, create: bool = False) -> str | None:
    """The run folder's id (a random hex string); ``create`` writes one if there is none."""
    path = run.root / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    if not create:
        return None
    import uuid

    from bert_ticket_cli.artifacts.paths import atomic_write_text

    value = uuid.uuid4().hex
    atomic_write_text(path, value + "\n")
    return value


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p != folder / MANIFEST}


def write_manifest(folder: Path, rid: str) -> None:
    """``manifest.json``: the run id and the sha256 of every other file of the checkpoint."""
    files = {name: _sha256(p) for name, p in _checkpoint_files(folder).items()}
    atomic_write_json(folder / MANIFEST, {"run_id": rid, "sha256": files})


def verify_checkpoint(run: RunDir, path: Path) -> None:
    """Refuse (``UserError``) a checkpoint this run did not write or whose files changed.

    Resuming loads the optimizer and RNG states; DeepSpeed's loader unpickles them
    (``weights_only=False``), so a checkpoint is checked before anything of it is read: its
    manifest names this run folder's id, and every file is there with its sha256, none more.
    """
    from bert_ticket_cli.errors import UserError

    manifest_path = path / MANIFEST
    fix = "resume from a checkpoint this run wrote, or start again with overwrite=true"
    if not manifest_path.is_file():
        raise UserError(f"checkpoint {path} has no {MANIFEST}: it was not written by this run "
                        f"(or by an older bert-ticket); {fix}")
    try:
        manifest = json.loads(manifest_path.read_text())
        claimed, sums = str(manifest["run_id"]), dict(manifest["sha256"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"checkpoint {path}: {MANIFEST} is unreadable; {fix}") from None
    if claimed != run_id(run):
        raise UserError(f"checkpoint {path} was written by another run (run id {claimed[:12]}, this run's "
                        f"{(run_id(run) or 'none')[:12]}): refusing to load it; {fix}")
    files = _checkpoint_files(path)
    changed = sorted(set(files) ^ set(sums)) or sorted(n for n, p in files.items() if _sha256(p) != sums[n])
    if changed:
        raise UserError(f"checkpoint {path} changed since it was written ({', '.join(changed[:3])}"
                        f"{' ...' if len(changed) > 3 else ''} added, missing or modified): refusing to load it; {fix}")


def truncate_metrics(run: RunDir, length: int) -> None:
    """Cut ``metrics.jsonl`` back to ``length`` bytes (its size at the checkpoint): the lines
    logged after it are logged again by the resumed run."""
    path = run.metrics
    if length >= 0 and path.exists() and path.stat().st_size > length:
        with open(path, "r+b") as f:
            f.truncate(length)


def save_checkpoint(accelerator, run: RunDir, state: TrainState, keep: int, scheduler=None) -> None:
    """Accelerate state into a temporary folder, our JSON state and the manifest last, then one rename.

    A folder without ``trainer_state.json`` is never taken for a checkpoint, so a crash in the
    middle leaves the previous checkpoint in charge.  A ``scheduler``'s state goes into ``state``.
    """
    final = run.checkpoint(state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    # safetensors stores a tied MLM decoder once; Accelerate warns about it on every save
    # (harmless: the weights are re-tied on load), which would drown the run's own lines.
    quiet = logging.getLogger("accelerate.utils.other")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        quiet.setLevel(level)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if scheduler is not None:
            state.scheduler = scheduler.state_dict()
        state.metrics_bytes = run.metrics.stat().st_size if run.metrics.exists() else 0
        atomic_write_json(tmp / TRAINER_STATE, asdict(state))
        write_manifest(tmp, run_id(run, create=True))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in run.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def checkpoint_step(checkpoint) -> int:
    """The optimizer step a checkpoint was written at (0 for none: a fresh start)."""
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / TRAINER_STATE).read_text())["step"])


def load_checkpoint(accelerator, path: Path, scheduler=None, run: RunDir | None = None) -> TrainState:
    """Both loops' checkpoints (a field one loop does not write keeps its default).  With
    ``run`` (the folder the checkpoint belongs to): verified first (:func:`verify_checkpoint`),
    and its ``metrics.jsonl`` cut back to the checkpoint."""
    path = Path(path)
    if run is not None:
        verify_checkpoint(run, path)
    accelerator.load_state(str(path))
    state = TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    if scheduler is not None:
        scheduler.load_state_dict(state.scheduler)
    if run is not None and accelerator.is_main_process:
        truncate_metrics(run, state.metrics_bytes)
    return state


def save_model(accelerator, model: torch.nn.Module, tokenizer, dest) -> None:
    """The trained model in plain Hugging Face format (safetensors), written by rank 0 to a
    temporary folder and renamed, so ``dest`` is always either absent or complete."""
    dest = Path(dest)
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 shards when needed
    if accelerator.is_main_process:
        tmp = dest.with_name(f".tmp-{dest.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    accelerator.wait_for_everyone()


def _hms(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


#: With several processes, ranks agree on a stop every this many steps (an all-reduce is a
#: device sync; Slurm's signals leave minutes of grace).  One process checks every step for free.
STOP_CHECK_EVERY = 10


class StepCore:
    """One training: the prepared model and optimizer, the micro-step, checkpoints, evaluations.

    A driver builds it (which prepares the model), makes its schedule, calls :meth:`resume`,
    :meth:`start`, then iterates :meth:`steps` and calls :meth:`result`.
    """

    def __init__(self, *, accelerator, model: torch.nn.Module, train_dataset, collate: Callable, train: TrainConfig,
                 plan: BatchPlan, seed: int, run: RunDir, evaluate: Callable[[torch.nn.Module], dict] | None,
                 hooks: list[StepHooks] = (), penalty: Callable[[], torch.Tensor] | None = None,
                 num_workers: int = 0, pin_memory: bool = False, count_tokens: bool = False,
                 poison: bool = False, tracking: Any = None, per_epoch: int | None = None,
                 compile_backend: str | None = None):
        self.accelerator, self.train, self.plan, self.seed, self.run = accelerator, train, plan, seed, run
        self.train_dataset, self.collate, self.evaluate = train_dataset, collate, evaluate
        self.hooks, self.penalty, self.num_workers, self.pin_memory = hooks, penalty, num_workers, pin_memory
        self.count_tokens, self.poison = count_tokens, poison  # poison: the NaN fault hook (signals.poison_loss)
        self.tracking = tracking  # engine/tracking.py: the trackers' copy of metrics.jsonl
        self.per_epoch = per_epoch or steps_per_epoch(len(train_dataset), plan.global_batch)
        # Forget the models and optimizers of earlier trainings in this process (IMP levels,
        # EarlyBERT stages): save_state / load_state act on every prepared object, so a resumed
        # later level would otherwise load the first level's weights into its own model.
        accelerator.free_memory()
        if compile_backend:
            # In place (nn.Module.compile), not torch.compile(model): the wrapper that returns would
            # prefix every name with "_orig_mod.", in saved weights and checkpoints alike.
            model.compile(backend=compile_backend)
        deepspeed = getattr(accelerator.state, "deepspeed_plugin", None) is not None
        self.optimizer = make_optimizer(model, train, deepspeed=deepspeed)
        self.base_lrs = [train.lr for _ in self.optimizer.param_groups]
        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        self.main = accelerator.is_main_process
        device = accelerator.device
        # Summed per micro-batch, reset by the driver (per log interval or per step).
        self.loss_sum, self.loss_n = torch.zeros((), device=device), 0
        self.tokens = torch.zeros((), device=device)
        self.progress: Progress | None = None
        self.steps_session, self.tokens_session = 0, 0

    def resume(self, path: Path | None, scheduler=None) -> TrainState:
        if path is None:
            return TrainState()
        state = load_checkpoint(self.accelerator, path, scheduler, run=self.run)
        self.loss_sum.fill_(state.loss_sum)
        self.loss_n = state.loss_n
        return state

    def start(self, state: TrainState, progress: Progress) -> bool:
        """Signals armed (a pending request is kept), the clock running from ``state.elapsed_s``.
        Returns True when a stop signal is already pending (on any rank): the driver stops
        before the first step, with nothing new to save."""
        self.progress = progress
        signals.install()
        self.model.train()
        self.t_start = time.perf_counter() - state.elapsed_s
        self.t_session = time.perf_counter()
        self.step_start = state.step
        if self.tracking is not None:  # this folder's tracker run, continued at a resumed step
            self.tracking.start(self.accelerator, self.run, state.step)
        flag = signals.requested() is not None
        if self.accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        if flag:
            progress.line(f"stop signal before step {state.step + 1}: stopped (the last checkpoint stays in "
                          f"charge); resume with resume=true")
        return flag

    def pace(self, state: TrainState, total: int, unit: str = "ex") -> str:
        """``ex/s 12.3  elapsed 0:01:02  eta 0:03:10`` for plain log lines: this session's
        throughput and the time left at it."""
        session = self.session_s()
        done = state.step - self.step_start
        rate = done * self.plan.global_batch / session if session > 0 else 0.0
        eta = (total - state.step) * session / done if done > 0 else None
        return (f"{rate:.1f} {unit}/s  elapsed {_hms(self.elapsed())}"
                + (f"  eta {_hms(eta)}" if eta is not None else ""))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def session_s(self) -> float:
        return time.perf_counter() - self.t_session

    def reset_loss(self) -> None:
        self.loss_sum.zero_()
        self.loss_n = 0

    def steps(self, state: TrainState, order: Callable[[int], Any],
              on_step_start: Callable[[], None] | None = None) -> Iterator[None]:
        """Train over epochs of ``order(epoch)``; yield after each optimizer step (``state.step``
        and ``state.step_in_epoch`` advanced).  A driver that rolls the epoch itself sets
        ``step_in_epoch`` to 0; otherwise it rolls when the epoch's batches are spent.
        ``on_step_start`` runs before the first micro-batch of each optimizer step."""
        acc, model, optimizer = self.accelerator, self.model, self.optimizer
        micro = 0
        while True:
            batches = StepBatches(
                order(state.epoch), global_batch=self.plan.global_batch, micro_batch=self.plan.micro_batch,
                world_size=self.plan.world_size, rank=acc.process_index, steps=self.per_epoch,
                start_step=state.step_in_epoch,
            )
            if hasattr(self.collate, "set_epoch"):  # e.g. MLM masking, a pure function of (seed, epoch, example)
                self.collate.set_epoch(state.epoch)
            # Its own generator: creating a DataLoader iterator otherwise draws a seed from the global
            # RNG, which would shift dropout after a mid-epoch resume (the iterator is created at a
            # different point of the RNG stream than in an uninterrupted run).
            loader = DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.collate,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=torch.Generator().manual_seed(self.seed + state.epoch))
            for batch in loader:
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                if micro == 0 and on_step_start is not None:
                    on_step_start()
                with acc.accumulate(model):
                    loss = model(**batch).loss
                    if self.poison and signals.poison_loss(state.step + 1):
                        loss = loss * float("nan")
                    acc.backward(loss if self.penalty is None else loss + self.penalty())
                    if acc.sync_gradients:
                        for hook in self.hooks:
                            hook.before_step(model)
                        if self.train.max_grad_norm > 0:
                            acc.clip_grad_norm_(model.parameters(), self.train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                self.loss_sum += loss.detach().float()
                self.loss_n += 1
                if self.count_tokens:
                    self.tokens += batch["attention_mask"].sum()
                micro += 1
                if not acc.sync_gradients:
                    continue
                # ---- one optimizer step is complete ----
                micro = 0
                for hook in self.hooks:
                    hook.after_step(model)
                state.step += 1
                state.step_in_epoch += 1
                self.steps_session += 1
                yield
            if state.step_in_epoch >= self.per_epoch:
                state.epoch += 1
                state.step_in_epoch = 0

    def hooks_stop(self) -> bool:
        return any(getattr(h, "stop_training", False) for h in self.hooks)

    def log(self, record: dict[str, Any], line: str) -> None:
        if self.main:
            append_jsonl(self.run.metrics, record)
        if self.tracking is not None:
            self.tracking.log(self.accelerator, record)
        self.progress.line(line)

    def eval_record(self, state: TrainState, prefix: str = "eval  ") -> dict[str, float]:
        """Evaluate, add the record to metrics.jsonl and ``state.evals``; evaluation time is counted apart."""
        t_eval = time.perf_counter()
        metrics = self.evaluate(self.model)
        self.model.train()
        state.eval_s += time.perf_counter() - t_eval
        state.elapsed_s = state.last_eval_s = self.elapsed()
        record = {"event": "eval", "step": state.step, "elapsed_s": round(state.elapsed_s, 3), **metrics}
        state.evals.append(record)
        self.log(record, prefix + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def save(self, state: TrainState, scheduler=None) -> None:
        self.stash_loss(state)
        save_checkpoint(self.accelerator, self.run, state, self.train.keep_checkpoints, scheduler)

    def stash_loss(self, state: TrainState) -> None:
        """Put the loss accumulated since the last log line into ``state`` (the rank mean of the
        sums: every rank restores it, so the next logged mean is the uninterrupted one).  A
        driver with its own accumulator replaces this."""
        total = self.loss_sum
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total.clone(), reduction="mean")
        state.loss_sum, state.loss_n = float(total.item()), self.loss_n

    def stop_requested(self, step: int, agreed: bool | None = None) -> bool:
        """All ranks agree: stop if any rank got the signal (``agreed``: a driver's own gather)."""
        if self.accelerator.num_processes == 1:
            return signals.requested() is not None
        if agreed is not None:
            return agreed
        if step % STOP_CHECK_EVERY:
            return False
        flag = torch.tensor([1.0 if signals.requested() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def preempt(self, state: TrainState, last: bool, scheduler=None, agreed: bool | None = None) -> bool:
        """The end of a step: the fault hook, then on a stop signal a checkpoint (True: stop now)."""
        signals.fault_injection(state.step)
        if last or not self.stop_requested(state.step, agreed):
            return False
        self.save(state, scheduler)
        self.progress.line(f"stop signal: checkpoint written at step {state.step}; resume with resume=true")
        return True

    def result(self, state: TrainState, preempted: bool, **kw: Any) -> TrainResult:
        self.progress.close()
        if self.tracking is not None:
            self.tracking.finish(self.accelerator)
        session = self.session_s()
        return TrainResult(
            model=self.model, state=state, preempted=preempted, train_time_s=state.elapsed_s - state.eval_s,
            samples_per_s=self.steps_session * self.plan.global_batch / session if session > 0 else 0.0,
            tokens_per_s=self.tokens_session / session if session > 0 else 0.0, **kw,
        )
