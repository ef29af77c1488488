"""Train one ticket, or the dense model, on a task and evaluate it: ``rewind`` (and each pair
of ``transfer``).

``ticket=PATH`` (a ``tickets/level-NN`` folder of a prune run) with ``ticket.variant``:

- ``winning``: the mask as found, weights from the ticket's rewind point (theta_0 or theta_i);
- ``random``: a new random mask with the same per-matrix counts (random pruning baseline);
- ``reinit``: the same mask, encoder weights re-drawn from the model's initialiser (random
  re-initialisation baseline).

A *structured* ticket (EarlyBERT, super tickets: kept heads, FFN neurons or whole FFN
sub-layers) is trained physically compacted, from its rewind point (the pre-trained weights);
``random`` draws the same number of heads and neurons in every layer at random positions (and
as many whole FFN sub-layers, when the ticket removes those), ``reinit`` re-draws the weights.

With no ticket this is dense fine-tuning, the full-model baseline of every experiment.
Reads top to bottom: ticket -> setup -> data and weights -> train -> save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import TICKETS_DIR, config_hash
from bert_ticket_cli.artifacts.records import note_data, print_metrics_table, task_data_fingerprint, write_summary
from bert_ticket_cli.config.schema import MethodConfig, RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import command, name_local_model, task_args, use_source_model
from bert_ticket_cli.workflows.stages import Run, run_workflow
from bert_ticket_cli.workflows.training import TrainSpec, fit_extra, load_weights_file, train_and_evaluate

VARIANTS = {"winning": None, "random": "random_pruning", "reinit": "random_reinit"}


def ticket_label(path: str) -> str:
    """``runs/prune/mrpc-bert-imp-s1/tickets/level-03`` -> ``mrpc-bert-imp-s1-level-03``."""
    p = Path(path).resolve()
    return f"{p.parent.parent.name}-{p.name}" if p.parent.name == TICKETS_DIR else p.name


def train_ticket(cfg: RunConfig, *, from_pretrained: bool = False) -> int:
    """Train ``cfg.ticket`` (or the dense model) on ``cfg.task``; ``from_pretrained`` starts from
    the pre-trained weights instead of the ticket's rewind point (what ``transfer`` does)."""
    ticket, facts = None, {}
    name_local_model(cfg)
    if cfg.ticket.path is not None:
        ticket, method, facts = load_ticket_run(cfg)
        cfg.method = MethodConfig(name=method)  # the record's label (random_pruning, imp, ...)
        # The ticket's source model unless the user chose a model (see workflows/context.py).
        if use_source_model(cfg, ticket.meta.get("source_model")):
            facts["model_from_ticket"] = True
        if cfg.run_name is None:
            cfg.run_name = (f"{cfg.task.name}-{cfg.model.name}-{cfg.ticket.variant}-{ticket_label(cfg.ticket.path)}"
                            f"-s{cfg.seed}-{config_hash(cfg)}")
    elif cfg.method.name != "dense":
        raise UserError(f"rewind trains a ticket (ticket=PATH) or the dense model; method={cfg.method.name} is for "
                        f"'bert-ticket prune'")
    return run_workflow(cfg, lambda r: _train(r, ticket, facts, from_pretrained), on_finished=lambda s: (
        print_metrics_table(f"{s['run_name']} (finished {s['finished']})", s["metrics"])))


def _train(run: Run, ticket: Any, facts: dict[str, Any], from_pretrained: bool) -> int:
    from bert_ticket_cli.tasks import load_task_data
    from bert_ticket_cli.model.build import load_tokenizer

    cfg, session, main = run.cfg, run.session, run.main

    # ---- data, weights and masks (all inputs are checked before anything is written) ----
    tokenizer = load_tokenizer(cfg.model, cfg.task)
    with session.main_process_first():
        data = load_task_data(cfg, tokenizer, train=True)
    note_data(task_data_fingerprint(data))
    spec = TrainSpec(ticket=ticket, resume_from=run.opened.resume_from, save_model_to=run.dir.model)
    if ticket is not None:
        rewind = None if from_pretrained else ticket.meta.get("rewind_weights")
        if rewind:
            spec.init_state = load_weights_file((Path(cfg.ticket.path) / rewind).resolve())
            spec.base_only = ticket.meta.get("source_task") != cfg.task.name  # another task: another head
        spec.masks, spec.reinit_seed = ticket_masks(cfg, ticket)
        spec.structure = ticket_structure(cfg, ticket)

    def ready() -> None:  # every input loaded: now the run folder may change
        run.commit()
        session.wait_for_everyone()
        if not main:
            return
        what = (f"ticket {facts['ticket']} ({cfg.ticket.variant}, sparsity {facts['sparsity']:.4f})"
                if ticket else "dense model")
        print(f"run {run.dir.root}: {data.info.name}, {len(data.train)} train examples, {what}, "
              f"{session.describe()}", flush=True)

    # ---- train (and save the model) ----
    spec.on_ready = ready
    trained = train_and_evaluate(cfg, session, data, tokenizer, run.dir, spec)

    # ---- the record (its presence marks the run finished) ----
    if main:
        write_summary(run.dir, cfg, metrics=trained.metrics, main_metric=trained.main_key, started=run.started,
                      extra={**fit_extra(cfg, session, trained), **facts, "model_dir": str(run.dir.model)})
        r = trained.result
        print_metrics_table(f"{data.info.name} dev, {cfg.model.name}, seed {cfg.seed}", trained.metrics, {
            "steps": r.state.step, "train time (s)": r.train_time_s, "samples/s": r.samples_per_s,
        })
        print(f"model saved to {run.dir.model}; evaluate again with: " + command(
            "eval", *task_args(cfg), f"eval.checkpoint={run.dir.model}", f"output_dir={cfg.output_dir}"), flush=True)
    return 0


def load_ticket_run(cfg: RunConfig) -> tuple[Any, str, dict[str, Any]]:
    """The ticket, the method name its runs are recorded under, and the facts for the record."""
    from bert_ticket_cli.sparsity.ticket import Ticket

    if cfg.ticket.variant not in VARIANTS:
        raise UserError(f"ticket.variant must be winning, random or reinit, got {cfg.ticket.variant!r}")
    ticket = Ticket.load(cfg.ticket.path)
    if ticket.kind == "structured" and (ticket.heads is None or ticket.neurons is None):
        raise UserError(f"{cfg.ticket.path}: a structured ticket needs both heads and neurons to be trained")
    method = VARIANTS[cfg.ticket.variant] or str(ticket.meta.get("method", "ticket"))
    facts = {"ticket": str(Path(cfg.ticket.path).resolve()), "ticket_variant": cfg.ticket.variant, "ticket_kind": ticket.kind,
             "ticket_source_task": ticket.meta.get("source_task"), "ticket_level": ticket.meta.get("level"),
             "sparsity": ticket.sparsity()}
    return ticket, method, facts


def ticket_masks(cfg: RunConfig, ticket) -> tuple[dict, int | None]:
    """Masks and re-init seed of the chosen variant (a structured ticket has no masks: see
    :func:`ticket_structure`)."""
    reinit = cfg.ticket.seed if cfg.ticket.variant == "reinit" else None
    if ticket.kind == "structured":
        return {}, reinit
    if cfg.ticket.variant == "random":
        from bert_ticket_cli.methods.random_masks import random_like

        return random_like(ticket, seed=cfg.ticket.seed), None
    return ticket.masks, reinit


def ticket_structure(cfg: RunConfig, ticket) -> tuple | None:
    """(kept heads, kept neurons) of a structured ticket's chosen variant; None if unstructured."""
    if ticket.kind != "structured":
        return None
    if cfg.ticket.variant == "random":
        from bert_ticket_cli.methods.random_masks import random_units_like

        heads = random_units_like(ticket.heads, seed=cfg.ticket.seed, name="heads")
        if ticket.ffn_layers is None:
            return heads, random_units_like(ticket.neurons, seed=cfg.ticket.seed, name="neurons")
        # whole FFN sub-layers removed: the same number of layers, drawn at random
        layers = random_units_like(ticket.ffn_layers[None], seed=cfg.ticket.seed, name="ffn_layers")[0]
        return heads, layers[:, None].expand_as(ticket.neurons).clone(), layers
    return ticket.structure
