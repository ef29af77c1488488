"""EarlyBERT for fine-tuning (Chen et al., ACL 2021): ``prune method=earlybert``.

Three stages, each a resumable sub-run (:func:`.stages.run_stages`):

1. **search**: from the pre-trained weights, train the task with a slimming coefficient on
   every head and FFN neuron and an L1 penalty on them; every ``check_every`` steps draw a
   structured ticket from ``|c|`` and stop once the early bird is found, or after
   ``search_steps`` (:mod:`bert_ticket_cli.methods.earlybert_search`);
2. **compact**: rebuild the model physically smaller (:mod:`bert_ticket_cli.model.compact`) with
   only the kept heads and neurons, *restart from the pre-trained weights* of that structure
   (not the searched ones), train without L1, evaluate, save the reloadable compact model;
3. **dense** (``method.dense_baseline``): the full model from the same weights under the
   same budget: the accuracy and time EarlyBERT is compared against.

``pretrain method=earlybert`` (:mod:`.pretraining`) runs the same stages on MLM and shares the
ticket, record and table of this file.

::

    runs/prune/<run>/
      config.yaml  summary.json           the run: times of every stage, accuracies, saving
      rewind/weights.safetensors          the pre-trained weights (with the initial task head)
      tickets/earlybird/                  the structured ticket (shared Ticket format)
      earlybird.json                      check steps and the full mask-distance matrices
      stages/search/                      metrics.jsonl, checkpoints/, checks.safetensors, summary.json
      stages/compact/model/               the compacted model (reload: bert-ticket eval / load_compact)
      stages/dense/                       the dense baseline

Times are training wall times without evaluation (``TrainResult.train_time_s``); the saving is
``1 - (search + compact) / dense``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import REWIND_FROM_TICKET, RunDir, TICKET_JSON, atomic_write_json
from bert_ticket_cli.artifacts.records import now, read_summary, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import command, model_args, name_local_model, source_model, task_args
from bert_ticket_cli.workflows.stages import Run, run_stages, run_workflow
from bert_ticket_cli.workflows.training import (
    TrainSpec, fit_extra, load_inputs, model_state, save_weights, train_and_evaluate,
)

STAGES = ("search", "compact", "dense")


def run(cfg: RunConfig, method: Any) -> int:
    name_local_model(cfg)
    return run_workflow(cfg, lambda r: find_ticket(r, method), on_finished=print_stages)


def find_ticket(run: Run, method: Any) -> int:
    from bert_ticket_cli.engine.loop import checkpoint_step
    from bert_ticket_cli.sparsity.ticket import Ticket

    cfg, session, rd, main = run.cfg, run.session, run.dir, run.main
    eb = cfg.method

    # ---- inputs (checked before anything is written) ----
    tokenizer, data, theta0 = load_inputs(cfg, session)
    if not hasattr(getattr(theta0, "base_model", theta0), "encoder"):
        raise UserError(f"method=earlybert needs a BERT encoder; {cfg.model.name} has none")
    init = model_state(theta0)
    dense_params = sum(p.numel() for p in theta0.parameters())
    run.commit()
    save_rewind_point(run, init)

    def train_stage(stage: str, srd: RunDir, resume: Path | None) -> dict[str, Any]:
        if main:
            print(f"stage {stage}: " + {"search": "slimming coefficients + L1, early-bird checks every "
                                                  f"{eb.check_every} steps",
                                        "compact": "the compacted ticket from the pre-trained weights",
                                        "dense": "the full model from the pre-trained weights (baseline)"}[stage],
                  flush=True)
        extra: dict[str, Any] = {"role": "stage", "stage": stage, "run_name": f"{rd.root.name}/{stage}"}
        if stage == "search":
            search_cfg = copy.deepcopy(cfg)
            if eb.search_steps is not None:
                search_cfg.train.max_steps = eb.search_steps
            # method.search_epochs ends the search early on the full budget's schedule (the
            # reference code's ticket: the coefficients at 0.2 of the first epoch)
            stop_after = None
            if eb.search_epochs is not None:
                from bert_ticket_cli.engine.batches import steps_per_epoch

                per_epoch = steps_per_epoch(len(data.train), session.plan.global_batch)
                stop_after = max(1, round(eb.search_epochs * per_epoch))
            holder: dict[str, Any] = {}

            def prepare(model):
                holder["search"], penalty = method.start_search(model, eb, srd.checks,
                                                                start_step=checkpoint_step(resume), main=main,
                                                                stop_after=stop_after)
                return [holder["search"]], penalty

            trained = train_and_evaluate(search_cfg, session, data, tokenizer, srd, TrainSpec(
                init_state=init, resume_from=resume, prepare=prepare, evaluate=False, label="stage search"))
            search = holder["search"]
            heads, neurons = search.finish()
            if main:
                save_search_outputs(cfg, rd, search, heads, neurons, dense_params)
            extra.update(early_bird_step=search.found_at, checks=len(search.checks))
        else:
            structure = None
            stage_cfg = cfg
            if stage == "compact":
                ticket = Ticket.load(rd.earlybird_ticket)
                structure = (ticket.heads, ticket.neurons)
                if eb.compact_epochs is not None or eb.compact_lr is not None:
                    # the reference code retrains the ticket shorter (2 of 3 epochs) at a higher lr
                    stage_cfg = copy.deepcopy(cfg)
                    stage_cfg.train.epochs = eb.compact_epochs if eb.compact_epochs is not None else cfg.train.epochs
                    stage_cfg.train.lr = eb.compact_lr if eb.compact_lr is not None else cfg.train.lr
            trained = train_and_evaluate(stage_cfg, session, data, tokenizer, srd, TrainSpec(
                init_state=init, resume_from=resume, structure=structure,
                save_model_to=srd.model if stage == "compact" else None, label=f"stage {stage}"))
            extra.update(params=trained.n_params)
            if stage == "compact":
                extra["model_dir"] = str(srd.model.resolve())
        record = None
        if main:
            record = write_summary(srd, cfg, metrics=trained.metrics, main_metric=trained.main_key,
                                   started=run.started, extra={**fit_extra(cfg, session, trained), **extra})
        session.wait_for_everyone()
        return record or read_summary(srd)

    records = run_stages(run, stage_dirs(run), train_stage)
    if main:
        summary = write_run_summary(cfg, rd, records, run.started, dense_params)
        print_stages(summary)
        out = f"output_dir={cfg.output_dir}"
        print(f"compact model: {summary['model_dir']}\n  evaluate: " + command(
            "eval", *task_args(cfg), f"eval.checkpoint={summary['model_dir']}", out)
            + "\n  random structured ticket: " + command(
            "rewind", *model_args(cfg), *task_args(cfg), f"ticket={summary['ticket']}", "ticket.variant=random", out),
            flush=True)
    return 0


# ------------------------------------------------- shared with pretrain method=earlybert

def stage_dirs(run: Run) -> list[tuple[str, RunDir]]:
    """The stages to run (the dense one with ``method.dense_baseline``) and their folders."""
    return [(s, run.dir.stage(s)) for s in STAGES if s != "dense" or run.cfg.method.dense_baseline]


def save_rewind_point(run: Run, init: dict[str, torch.Tensor]) -> None:
    """The initial weights every stage starts from (``rewind/weights.safetensors``)."""
    if run.main and not run.dir.rewind_weights.exists():
        save_weights(init, run.dir.rewind_weights)
    run.session.wait_for_everyone()


def save_search_outputs(cfg: RunConfig, rd: RunDir, search: Any, heads: torch.Tensor, neurons: torch.Tensor,
                        dense_params: int) -> None:
    """``earlybird.json`` (the checks and their distances) and the structured ticket."""
    from bert_ticket_cli.methods.earlybert import distance_matrices
    from bert_ticket_cli.sparsity.ticket import Ticket

    eb = cfg.method
    atomic_write_json(rd.earlybird, {
        "steps": [s for s, _, _ in search.checks],
        **distance_matrices([(h, n) for _, h, n in search.checks]),
        "found_at": search.found_at, "window": eb.window, "threshold": eb.threshold,
        "check_every": eb.check_every,
    })
    meta = {"method": "earlybert", "model": cfg.model.name_or_path or cfg.model.name, "source_task": cfg.task.name,
            "seed": cfg.seed, "rewind_point": "0", "rewind_weights": REWIND_FROM_TICKET,
            "early_bird_step": search.found_at, "early_bird_found": search.found_at is not None,
            "search_steps": search.step, "head_fraction": eb.head_fraction, "neuron_fraction": eb.neuron_fraction,
            "head_scope": eb.head_scope, "neuron_scope": eb.neuron_scope, "l1_heads": eb.l1_heads,
            "l1_neurons": eb.l1_neurons, "total_model_params": dense_params, "created": now(),
            "prune_run": str(rd.root), "level": 1,
            # a pre-trained ticket's model takes its vocabulary from the data: not reusable as is
            **({"source_model": source_model(cfg), "train": asdict(cfg.train)} if cfg.verb == "prune" else {})}
    Ticket({}, heads=heads, neurons=neurons, meta=meta).save(rd.earlybird_ticket)


def write_run_summary(cfg: RunConfig, rd: RunDir, records: dict[str, dict[str, Any]], started: str,
                      dense_params: int, more: dict[str, Any] | None = None) -> dict[str, Any]:
    search, compact, dense = records["search"], records["compact"], records.get("dense")
    tdir = rd.earlybird_ticket.resolve()
    ticket = json.loads((tdir / TICKET_JSON).read_text())
    saving = None
    if dense and dense.get("train_time_s"):
        saving = 1.0 - (search["train_time_s"] + compact["train_time_s"]) / dense["train_time_s"]
    extra = {
        "role": "earlybert",
        "search_time_s": search["train_time_s"], "search_steps": search["steps"],
        "early_bird_step": search.get("early_bird_step"), "early_bird_found": search.get("early_bird_step") is not None,
        "compact_time_s": compact["train_time_s"], "compact_steps": compact["steps"],
        "compact_params": compact["params"], "dense_params": dense_params,
        "dense_time_s": dense["train_time_s"] if dense else None,
        "dense_steps": dense["steps"] if dense else None,
        "dense_main_value": dense["main_value"] if dense else None,
        "dense_metrics": dense["metrics"] if dense else None,
        "time_saving": saving,
        "ticket": str(tdir), "earlybird_file": str(rd.earlybird.resolve()),
        "model_dir": compact["model_dir"],
        "sparsity": ticket["sparsity"]["prunable"],
        "kept_heads": ticket["structure"]["kept_heads"], "kept_neurons": ticket["structure"]["kept_neurons"],
        "steps": compact["steps"], "train_time_s": compact["train_time_s"],
        **(more or {}),
    }
    return write_summary(rd, cfg, metrics=compact["metrics"], main_metric=compact["main_metric"], started=started,
                         extra=extra)


def print_stages(summary: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    key = summary["main_metric"]
    found = summary.get("early_bird_step")
    t = Table(title=f"{summary['run_name']}: EarlyBERT on {summary['task']} (early bird "
                    f"{'at step ' + str(found) if found is not None else 'not found: ticket drawn at the last step'})")
    for col in ("stage", "steps", "train time (s)", key, "parameters"):
        t.add_column(col, justify="left" if col == "stage" else "right")

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    t.add_row("search", str(summary["search_steps"]), fmt(summary["search_time_s"], ".1f"), "-",
              f"{summary['dense_params']:,}")
    t.add_row("compact (EarlyBERT)", str(summary["compact_steps"]), fmt(summary["compact_time_s"], ".1f"),
              fmt(summary["main_value"], ".4f"), f"{summary['compact_params']:,}")
    if summary.get("dense_time_s") is not None:
        dense_steps = summary.get("dense_steps") or summary["compact_steps"]
        t.add_row("dense baseline", str(dense_steps), fmt(summary["dense_time_s"], ".1f"),
                  fmt(summary["dense_main_value"], ".4f"), f"{summary['dense_params']:,}")
    (Console() if sys.stdout.isatty() else Console(width=160)).print(t)
    if summary.get("time_saving") is not None:
        print(f"search + compact training took {100 * (1 - summary['time_saving']):.1f}% of the dense training time "
              f"(saving {100 * summary['time_saving']:.1f}%)", flush=True)
