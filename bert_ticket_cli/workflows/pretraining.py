"""MLM pre-training on a budget (Izsak et al., EMNLP 2021): ``pretrain``, and EarlyBERT
pre-training (Chen et al., ACL 2021): ``pretrain method=earlybert``.

``pretrain prepare`` only prepares the data (:mod:`bert_ticket_cli.data.pretraining`: packed
128-token sequences, K statically masked copies, memory-mapped Arrow shards); it is
idempotent, so ``pretrain`` prepares on the way when the data is not there yet (the main
process first, the others then find it), and skips it when it is.

``method=dense`` (the recipe)::

    runs/pretrain/<run>/
      config.yaml  metrics.jsonl  summary.json     train / eval events; the record (role: pretrain)
      checkpoints/step-N/                          resumable: weights, optimizer, RNG, elapsed budget
      model/                                       BertForMaskedLM + tokenizer (plain transformers)
      diverged.json                                only when training diverged (what, when, last good checkpoint)

``method=earlybert``: the stages of :mod:`.earlybert` (search on MLM from the initial weights,
the compacted model from the same weights, optionally the dense model), each a resumable
sub-run under ``stages/<stage>/``, with its ticket, ``earlybird.json`` and record.  With
``pretrain.clock=steps`` the compact and dense stages run ``train.max_steps`` steps each and
the time saving ``1 - (search + compact) / dense`` is measured; with ``clock=wall`` the compact
stage gets what the search left of the budget and the dense stage the whole budget (an
equal-time comparison of validation loss).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.artifacts.records import note_data, print_metrics_table, read_summary, write_summary
from bert_ticket_cli.config.rules import pretrain_durations
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.workflows import earlybert
from bert_ticket_cli.workflows.context import command, composed_default, name_local_model
from bert_ticket_cli.workflows.stages import Preempted, Run, run_stages, run_workflow
from bert_ticket_cli.workflows.training import check_batch_plan, model_state


def prepare_only(cfg: RunConfig) -> int:
    """``bert-ticket pretrain prepare``: build (or find) the prepared data and say where it is."""
    from bert_ticket_cli.data.pretraining import open_prepared, prepare

    path = prepare(cfg)
    data = open_prepared(path)
    counts = data.manifest.get("counts", {})
    print(f"prepared data: {path}\n  " + "  ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                  for k, v in counts.items()), flush=True)
    print(f"  train on it: bert-ticket pretrain pretrain.data.dir={path} ...", flush=True)
    return 0


def given_data_settings(cfg: RunConfig) -> list[str]:
    """The ``pretrain.data`` keys the user set: those that differ from the composed default
    (see :mod:`.context`); a prepared folder found by ``pretrain.data.dir`` must agree with them."""
    from dataclasses import fields

    default = composed_default(cfg.verb).pretrain.data
    return [f.name for f in fields(cfg.pretrain.data)
            if getattr(cfg.pretrain.data, f.name) != getattr(default, f.name)]


def adopt_prepared_settings(cfg: RunConfig, given: list[str]) -> None:
    """Training on ``pretrain.data.dir`` alone (no corpus): the data settings the user did not
    give are the folder's (its ``prepared.json``), so the config and the record say what the
    data is and the model is checked against the folder's sequence length, not the default's."""
    from dataclasses import fields
    from pathlib import Path

    from bert_ticket_cli.data.pretraining import read_manifest

    d = cfg.pretrain.data
    if not d.dir or d.corpus:
        return
    stored = read_manifest(Path(str(d.dir)).expanduser())
    if not stored or not stored.get("complete"):
        return
    settings = stored.get("settings") or {}
    # corpus, validation and the tokenizer are stored as identities (files, digests), not as settings
    for f in fields(d):
        if f.name in settings and f.name not in given and f.name not in ("corpus", "validation", "tokenizer"):
            setattr(d, f.name, settings[f.name])


def run(cfg: RunConfig) -> int:
    name_local_model(cfg)
    given = given_data_settings(cfg)
    adopt_prepared_settings(cfg, given)
    budget = make_budget(cfg)
    return run_workflow(cfg, lambda r: pretrain(r, budget, given))


def pretrain(run: Run, budget: Any, given: list[str] = ()) -> int:
    from bert_ticket_cli.data.pretraining import open_prepared, prepare
    from bert_ticket_cli.model.sparse_mlm import build_pretrain_model

    cfg, session, main = run.cfg, run.session, run.main
    with session.main_process_first():
        path = prepare(cfg, log=print if main else (lambda *a, **k: None), given=given)
    data = open_prepared(path)
    note_data(data.manifest.get("fingerprint"))
    session.set_seed(cfg.seed)
    model = build_pretrain_model(cfg, data.tokenizer)  # needs the seed: its weights are drawn
    check_batch_plan(data.train, session)  # before the run folder changes
    run.commit()
    session.wait_for_everyone()
    if cfg.method.name == "earlybert":
        return pretrain_earlybert(run, data, model, budget)
    record = train_and_record(run, run.dir, data, model, budget, resume=run.opened.resume_from,
                              save_to=run.dir.model, extra={"role": "pretrain"})
    if main:
        print_metrics_table(f"{record['run_name']}: pre-training ({record['stop_reason']})", record["metrics"], {
            "steps": record["steps"], "elapsed (min)": record["elapsed_s"] / 60, "tokens": record["tokens"],
            "tokens/s": record["tokens_per_s"], "parameters": record["model_params"]})
        print(f"model: {record['model_dir']}\n  fine-tune: " + command(
            "rewind", "model=local", f"model.name_or_path={record['model_dir']}", "task=sst2"), flush=True)
    return 0


def pretrain_earlybert(run: Run, data: Any, theta0: torch.nn.Module, budget: Any) -> int:
    """Search (slimming + L1 + early-bird) on MLM, then the compacted model, then (optionally)
    the dense baseline; each stage a resumable sub-run."""
    from bert_ticket_cli.engine.loop import checkpoint_step
    from bert_ticket_cli.methods.registry import get as get_method
    from bert_ticket_cli.model.compact import compact_
    from bert_ticket_cli.model.sparse_mlm import from_masked_lm
    from bert_ticket_cli.sparsity.ticket import Ticket

    cfg, session, rd, main, eb = run.cfg, run.session, run.dir, run.main, run.cfg.method
    method = get_method("earlybert")
    init = model_state(theta0)
    dense_params = sum(p.numel() for p in theta0.parameters())
    earlybert.save_rewind_point(run, init)

    def fresh() -> torch.nn.Module:
        model = copy.deepcopy(theta0)
        model.load_state_dict(init)
        return from_masked_lm(model)

    records: dict[str, dict[str, Any]] = {}

    def train_stage(stage: str, srd: RunDir, resume: Any) -> dict[str, Any]:
        if main:
            print(f"stage {stage}: " + {"search": f"slimming coefficients + L1 on MLM, early-bird checks every "
                                                  f"{eb.check_every} steps",
                                        "compact": "the compacted ticket from the initial weights",
                                        "dense": "the full model from the initial weights (baseline)"}[stage],
                  flush=True)
        extra: dict[str, Any] = {"role": "stage", "stage": stage, "run_name": f"{rd.root.name}/{stage}"}
        stage_budget = copy.copy(budget)
        model = fresh()
        hooks: list[Any] = []
        penalty = None
        save_to = None
        finish = None
        if stage == "search":
            search, penalty = method.start_search(model, eb, srd.checks, start_step=checkpoint_step(resume),
                                                  main=main)
            hooks = [search]
            if eb.search_steps is not None:
                stage_budget.step_limit = eb.search_steps

            def finish() -> dict[str, Any]:
                heads, neurons = search.finish()
                if main:  # the ticket first: a finished search stage always has its ticket
                    earlybert.save_search_outputs(cfg, rd, search, heads, neurons, dense_params)
                session.wait_for_everyone()
                return {"early_bird_step": search.found_at, "checks": len(search.checks)}
        elif stage == "compact":
            ticket = Ticket.load(rd.earlybird_ticket)
            compact_(model, ticket.heads, ticket.neurons)
            save_to = srd.model
            if budget.clock == "wall":  # what the search left of the budget
                stage_budget.seconds = max(1.0, budget.seconds - records["search"]["elapsed_s"])
        return train_and_record(run, srd, data, model, stage_budget, resume=resume, save_to=save_to, hooks=hooks,
                                penalty=penalty, extra=extra, label=f"stage {stage}", finish=finish)

    run_stages(run, earlybert.stage_dirs(run), train_stage, records)
    if main:
        compact = records["compact"]
        summary = earlybert.write_run_summary(cfg, rd, records, run.started, dense_params, more={
            "budget_s": budget.seconds, "clock": budget.clock, "elapsed_s": compact["elapsed_s"],
            "tokens": compact["tokens"], "tokens_per_s": compact["tokens_per_s"],
            "stop_reason": compact["stop_reason"], "model_params": compact["model_params"],
            "search_elapsed_s": records["search"]["elapsed_s"],
            "dense_tokens_per_s": records["dense"]["tokens_per_s"] if "dense" in records else None,
        })
        earlybert.print_stages(summary)
        print(f"compact model: {summary['model_dir']}\n  fine-tune: " + command(
            "rewind", "model=local", f"model.name_or_path={summary['model_dir']}", "task=sst2"), flush=True)
    return 0


def train_and_record(run: Run, rd: RunDir, data: Any, model: torch.nn.Module, budget: Any, *, resume: Any,
                     save_to: Any = None, hooks: list[Any] = (), penalty: Any = None,
                     extra: dict[str, Any] | None = None, label: str = "pretrain",
                     finish: Any = None) -> dict[str, Any]:
    """Train ``model`` on the prepared data under ``budget``; write the record of ``rd``.  A stop
    signal raises :class:`Preempted` (a checkpoint was written).  ``finish()`` runs after
    training and before the record (whose presence marks the run finished); its dict joins it."""
    cfg, session = run.cfg, run.session
    collate = data.collator()
    n_params = sum(p.numel() for p in model.parameters())

    def evaluate(m):
        return session.mlm_validation(m, data.validation, collate, cfg.eval.batch_size, cfg.pretrain.max_eval_samples)

    result = session.fit_budget(model=model, train_dataset=data.train, collate=collate, train=cfg.train,
                                budget=budget, seed=cfg.seed, run=rd, evaluate=evaluate,
                                shuffle_chunk=cfg.pretrain.data.shuffle_chunk, resume_from=resume, hooks=hooks,
                                penalty=penalty, num_workers=cfg.engine.num_workers, label=label)
    if result.preempted:
        raise Preempted(rd.root)
    if save_to is not None:
        session.save_model(result.model, data.tokenizer, save_to)
    extra = {**(extra or {}), **(finish() if finish is not None else {})}
    metrics = {k: v for k, v in result.state.evals[-1].items() if k not in ("event", "step", "elapsed_s")}
    s = result.state
    facts = {
        "budget_s": budget.seconds, "clock": budget.clock, "elapsed_s": round(s.elapsed_s, 3),
        "train_time_s": round(result.train_time_s, 3), "eval_time_s": round(s.eval_s, 3), "steps": s.step,
        "tokens": s.tokens, "tokens_per_s": round(result.tokens_per_s, 1), "stop_reason": result.stop_reason,
        "model_params": n_params, "params": n_params, "data_dir": str(data.path),
        **session.facts(),  # what actually ran: device, mixed precision, distributed type, processes
    }
    if save_to is not None:
        facts["model_dir"] = str(save_to.resolve())
    record = None
    if session.is_main:
        record = write_summary(rd, cfg, metrics=metrics, main_metric="mlm_loss", started=run.started,
                               extra={**facts, **extra})
    session.wait_for_everyone()
    return record or read_summary(rd)


def make_budget(cfg: RunConfig) -> Any:
    """The :class:`Budget` of the run (its settings were checked when the config was validated)."""
    from bert_ticket_cli.engine.budget import Budget

    p, d = cfg.pretrain, pretrain_durations(cfg)
    return Budget(seconds=d.budget_s, clock=p.clock, max_steps=cfg.train.max_steps, warmup=p.warmup_proportion,
                  eval_every_s=d.eval_every_s, eval_every_steps=cfg.train.eval_every, save_every_s=d.save_every_s,
                  save_every_steps=cfg.train.save_every, early_stop_loss=p.early_stop.loss,
                  early_stop_after_s=d.early_stop_after_s, min_loss_scale=p.min_loss_scale)

