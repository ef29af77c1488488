"""What the training verbs share: set up the engine, build a (masked) model from given
weights, train it with ``fit``, and write its record.

``rewind`` (a ticket or the dense model), ``transfer`` (a ticket on another task) and every
level of ``prune`` are the same story with different weights and masks, told here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError


@dataclass
class Engine:
    accelerator: Any
    plan: Any

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def start_engine(cfg: RunConfig) -> Engine:
    from bert_ticket_cli.engine.setup import make_accelerator, plan_batches, world_size_from_env

    plan = plan_batches(cfg.train, world_size_from_env())
    return Engine(make_accelerator(cfg.engine, cfg.train, plan), plan)


def load_inputs(cfg: RunConfig, engine: Engine) -> tuple[Any, Any, torch.nn.Module]:
    """Tokenizer, task data (prepared by the main process first) and the starting model
    theta_0 (the pre-trained weights, its task head drawn under ``cfg.seed``): what every
    ticket-finding verb loads before it may touch the run folder."""
    from accelerate.utils import set_seed

    from bert_ticket_cli.model.build import build_model, load_tokenizer
    from bert_ticket_cli.tasks import load_task_data

    tokenizer = load_tokenizer(cfg.model, cfg.task)
    with engine.accelerator.main_process_first():
        data = load_task_data(cfg, tokenizer, train=True)
    set_seed(cfg.seed)
    theta0 = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels, vocab_size=len(tokenizer))
    return tokenizer, data, theta0


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


@dataclass
class Trained:
    result: Any  # engine.loop.FitResult
    metrics: dict[str, float]
    main_key: str
    n_params: int


def train_and_evaluate(
    cfg: RunConfig,
    engine: Engine,
    *,
    data: Any,
    tokenizer: Any,
    run: RunDir,
    init_state: Mapping[str, torch.Tensor] | None = None,
    base_only: bool = False,
    masks: Mapping[str, torch.Tensor] | None = None,
    reinit_seed: int | None = None,
    resume_from: Path | None = None,
    hooks: list[Any] = (),
    save_model_to: Path | None = None,
    ticket: Any = None,
    on_ready: Callable[[], None] | None = None,
    structure: tuple[torch.Tensor, torch.Tensor] | None = None,
    prepare: Callable[[torch.nn.Module], tuple[list[Any], Callable[[], torch.Tensor] | None]] | None = None,
    evaluate: bool = True,
) -> Trained:
    """Build the task model, load ``init_state``, apply ``masks``, train, evaluate.

    ``ticket`` is checked against the built model (a ticket for other shapes is a UserError);
    ``structure`` = (kept heads, kept neurons) compacts the model physically after its weights
    are loaded (a structured ticket); ``prepare(model)`` may change the model before training
    and returns more hooks and a loss penalty (EarlyBERT's search); ``evaluate=False`` trains
    without evaluating.  ``on_ready`` runs once every input has loaded, just before training:
    commands create their run folder there, so a failure before it writes nothing."""
    from accelerate.utils import set_seed

    from bert_ticket_cli.engine.evaluate import make_evaluator
    from bert_ticket_cli.engine.loop import fit, save_model
    from bert_ticket_cli.model.build import build_model

    set_seed(cfg.seed)
    model = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels, vocab_size=len(tokenizer))
    if ticket is not None:
        ticket.check_fits(model)
    if init_state is not None:
        load_into(model, init_state, base_only=base_only)
    if reinit_seed is not None:
        reinit_base(model, reinit_seed)
    if structure is not None:
        from bert_ticket_cli.model.compact import compact_

        compact_(model, *structure)
    all_hooks = list(hooks)
    penalty = None
    if prepare is not None:
        more_hooks, penalty = prepare(model)
        all_hooks.extend(more_hooks)
    if masks:
        from bert_ticket_cli.sparsity.enforce import MaskEnforcer

        enforcer = MaskEnforcer(model, masks)
        enforcer.apply_weights()
        all_hooks.insert(0, enforcer)
    evaluator = (make_evaluator(engine.accelerator, data, cfg.eval.batch_size, cfg.task.max_answer_length)
                 if evaluate else None)
    if on_ready is not None:
        on_ready()
    result = fit(
        accelerator=engine.accelerator, model=model, train_dataset=data.train, collate=data.collate,
        train=cfg.train, plan=engine.plan, seed=cfg.seed, run=run, evaluate=evaluator,
        resume_from=resume_from, hooks=all_hooks, num_workers=cfg.engine.num_workers, penalty=penalty,
    )
    metrics: dict[str, float] = {}
    if not result.preempted:
        if result.state.evals:
            metrics = {k: v for k, v in result.state.evals[-1].items() if k not in ("event", "step", "elapsed_s")}
        if masks:
            bad = all_hooks[0].check()
            if bad:
                raise RuntimeError(f"mask invariant violated: {bad} pruned weights are not zero")
        if save_model_to is not None:
            save_model(engine.accelerator, result.model, tokenizer, save_model_to)
    return Trained(result=result, metrics=metrics, main_key=data.main_metric_key(),
                   n_params=sum(p.numel() for p in model.parameters()))


def fit_extra(cfg: RunConfig, engine: Engine, trained: Trained) -> dict[str, Any]:
    """The training facts every record carries."""
    r = trained.result
    key = trained.main_key
    return {
        "best_main_value": max((e.get(key, float("-inf")) for e in r.state.evals), default=None),
        "steps": r.state.step,
        "train_time_s": round(r.train_time_s, 3),
        "samples_per_s": round(r.samples_per_s, 2),
        "world_size": engine.accelerator.num_processes,
        "distributed_type": engine.accelerator.distributed_type.value.lower(),
        "mixed_precision": cfg.engine.mixed_precision,
    }
