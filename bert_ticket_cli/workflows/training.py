"""Train one model on a task and evaluate it: what ``rewind`` (a ticket or the dense model),
``transfer`` (a ticket on another task), every level of ``prune`` and every EarlyBERT stage do,
told here once.  :class:`TrainSpec` says what differs between them (weights, masks, structure,
hooks); the run's config says the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.artifacts.records import note_data, task_data_fingerprint
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.stages import Preempted


def load_inputs(cfg: RunConfig, session: Any) -> tuple[Any, Any, torch.nn.Module]:
    """Tokenizer, task data (prepared by the main process first) and the starting model
    theta_0 (the pre-trained weights, its task head drawn under ``cfg.seed``): what every
    ticket-finding workflow loads before it may touch the run folder."""
    from bert_ticket_cli.model.build import build_model, load_tokenizer
    from bert_ticket_cli.tasks import load_task_data

    tokenizer = load_tokenizer(cfg.model, cfg.task)
    with session.main_process_first():
        data = load_task_data(cfg, tokenizer, train=True)
    note_data(task_data_fingerprint(data))
    check_batch_plan(data.train, session)
    session.set_seed(cfg.seed)
    theta0 = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels, vocab_size=len(tokenizer))
    return tokenizer, data, theta0


def check_batch_plan(train_dataset: Any, session: Any) -> int:
    """Steps per epoch; a training set smaller than one global batch is a UserError.  Called
    before the run folder changes (training would find it only after ``commit_run``)."""
    from bert_ticket_cli.engine.batches import steps_per_epoch

    return steps_per_epoch(len(train_dataset), session.plan.global_batch)


def parse_rewind_point(spec: str, steps_per_epoch: int) -> int:
    """``0`` (theta_0), ``500it`` / ``500`` (optimizer steps) or ``0.5ep`` (epochs) -> steps."""
    text = str(spec).strip().lower()
    try:
        if text.endswith("ep"):
            return int(round(float(text[:-2]) * steps_per_epoch))
        if text.endswith("it"):
            text = text[:-2]
        value = float(text)
        if value != int(value) or value < 0:
            raise ValueError
        return int(value)
    except ValueError:
        raise UserError(f"prune.rewind={spec!r} is not a rewind point: use 0 (pre-trained weights), "
                        f"500it (steps) or 0.5ep (epochs)") from None


# ------------------------------------------------------------------------------ weights

def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (what rewinding goes back to)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors, written to a temporary name and renamed."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise UserError(f"rewind weights {path} are missing: re-run the prune command that wrote this ticket")
    return load_file(str(path))


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, base_only: bool = False) -> int:
    """Copy matching tensors into ``model``; ``base_only`` leaves the task head alone (transfer
    to a task with another head).  Returns how many tensors were copied."""
    own = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "bert") + "."
    n = 0
    with torch.no_grad():
        for name, value in state.items():
            if base_only and not name.startswith(prefix):
                continue
            if name in own and own[name].shape == value.shape:
                own[name].copy_(value)
                n += 1
    return n


def reinit_base(model: torch.nn.Module, seed: int) -> None:
    """Re-draw the encoder weights from the model's own initialiser (the "random re-init"
    baseline): a fresh model of the same config under ``seed`` donates its weights."""
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    load_into(model, fresh.state_dict(), base_only=True)


# ----------------------------------------------------------------------------- training

@dataclass
class TrainSpec:
    """What one training starts from and how it differs from plain fine-tuning.

    ``init_state`` is loaded into the built model (``base_only``: not its task head); ``ticket``
    is checked against the built model (a ticket for other shapes is a UserError);
    ``reinit_seed`` re-draws the encoder; ``structure`` = (kept heads, kept neurons) compacts the
    model physically after its weights are loaded (a structured ticket); ``masks`` are kept at
    zero while training; ``prepare(model)`` may change the model before training and returns
    more hooks and a loss penalty (EarlyBERT's search); ``evaluate=False`` trains without
    evaluating.  ``on_ready`` runs once every input has loaded, just before training: workflows
    create their run folder there, so a failure before it writes nothing."""

    init_state: Mapping[str, torch.Tensor] | None = None
    base_only: bool = False
    ticket: Any = None
    reinit_seed: int | None = None
    structure: tuple[torch.Tensor, torch.Tensor] | None = None
    masks: Mapping[str, torch.Tensor] | None = None
    hooks: list[Any] = field(default_factory=list)
    prepare: Callable[[torch.nn.Module], tuple[list[Any], Callable[[], torch.Tensor] | None]] | None = None
    evaluate: bool = True
    resume_from: Path | None = None
    save_model_to: Path | None = None
    on_ready: Callable[[], None] | None = None
    label: str | None = None  # the training's place in a multi-stage run: ``level 2/9``, ``stage compact``


@dataclass
class Trained:
    result: Any  # engine.core.TrainResult
    metrics: dict[str, float]
    main_key: str
    n_params: int


def train_and_evaluate(cfg: RunConfig, session: Any, data: Any, tokenizer: Any, run: RunDir,
                       spec: TrainSpec) -> Trained:
    """Build the task model, load its weights, apply masks, train, evaluate.  A stop signal
    (a checkpoint was written) raises :class:`Preempted`."""
    from bert_ticket_cli.model.build import build_model

    session.set_seed(cfg.seed)
    model = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels, vocab_size=len(tokenizer))
    if spec.ticket is not None:
        spec.ticket.check_fits(model)
    if spec.init_state is not None:
        load_into(model, spec.init_state, base_only=spec.base_only)
    if spec.reinit_seed is not None:
        reinit_base(model, spec.reinit_seed)
    if spec.structure is not None:
        from bert_ticket_cli.model.compact import compact_

        compact_(model, *spec.structure)
    all_hooks = list(spec.hooks)
    penalty = None
    if spec.prepare is not None:
        more_hooks, penalty = spec.prepare(model)
        all_hooks.extend(more_hooks)
    if spec.masks:
        from bert_ticket_cli.sparsity.enforce import MaskEnforcer

        enforcer = MaskEnforcer(model, spec.masks)
        enforcer.apply_weights()
        all_hooks.insert(0, enforcer)
    evaluator = session.evaluator(data, cfg.eval.batch_size, cfg.task.max_answer_length) if spec.evaluate else None
    check_batch_plan(data.train, session)  # every check before on_ready: it may change the run folder
    if spec.on_ready is not None:
        spec.on_ready()
    result = session.fit(
        model=model, train_dataset=data.train, collate=data.collate, train=cfg.train, seed=cfg.seed, run=run,
        evaluate=evaluator, resume_from=spec.resume_from, hooks=all_hooks, num_workers=cfg.engine.num_workers,
        penalty=penalty, label=spec.label,
    )
    if result.preempted:
        raise Preempted(run.root)
    metrics: dict[str, float] = {}
    if result.state.evals:
        metrics = {k: v for k, v in result.state.evals[-1].items() if k not in ("event", "step", "elapsed_s")}
    if spec.masks:
        bad = all_hooks[0].check()
        if bad:
            raise RuntimeError(f"mask invariant violated: {bad} pruned weights are not zero")
    if spec.save_model_to is not None:
        session.save_model(result.model, tokenizer, spec.save_model_to)
    return Trained(result=result, metrics=metrics, main_key=data.main_metric_key(),
                   n_params=sum(p.numel() for p in model.parameters()))


def fit_extra(cfg: RunConfig, session: Any, trained: Trained) -> dict[str, Any]:
    """The training facts every record carries."""
    r = trained.result
    key = trained.main_key
    return {
        "best_main_value": max((e.get(key, float("-inf")) for e in r.state.evals), default=None),
        "steps": r.state.step,
        "train_time_s": round(r.train_time_s, 3),
        "samples_per_s": round(r.samples_per_s, 2),
        **session.facts(),  # what actually ran: device, mixed precision, distributed type, processes
    }
