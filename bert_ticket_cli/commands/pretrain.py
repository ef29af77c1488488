"""``bert-ticket pretrain``: MLM pre-training on a wall-clock budget (Izsak et al., EMNLP 2021),
and EarlyBERT pre-training (Chen et al., ACL 2021).

``bert-ticket pretrain prepare ...`` only prepares the data (:mod:`bert_ticket_cli.data.pretraining`:
packed 128-token sequences, K statically masked copies, memory-mapped Arrow shards); it is
idempotent, so ``bert-ticket pretrain ...`` prepares on the way when the data is not there yet
(the main process first, the others then find it), and skips it when it is.

``method=dense`` (the recipe)::

    runs/pretrain/<run>/
      config.yaml  metrics.jsonl  summary.json     train / eval events; the record (role: pretrain)
      checkpoints/step-N/                          resumable: weights, optimizer, RNG, elapsed budget
      model/                                       BertForMaskedLM + tokenizer (plain transformers)
      diverged.json                                only when training diverged (what, when, last good checkpoint)

``method=earlybert``: stage ``search`` (slimming coefficients + L1, early-bird checks, on MLM
from the initial weights), stage ``compact`` (the compacted model from the same initial weights),
and with ``prune.earlybert.dense_baseline`` stage ``dense`` (the full model), each a resumable
sub-run under ``stages/<stage>/``; ``tickets/earlybird/`` and ``earlybird.json`` as in
``prune method=earlybert``.  With ``pretrain.clock=steps`` the compact and dense stages run
``train.max_steps`` steps each and the time saving ``1 - (search + compact) / dense`` is measured;
with ``clock=wall`` the compact stage gets what the search left of the budget and the dense
stage the whole budget (an equal-time comparison of validation loss).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.artifacts.records import commit_run, now, open_run, read_summary, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError

METHODS = ("dense", "earlybert")


def check_config(cfg: RunConfig):
    """Every pretrain setting checked at once; returns the :class:`Budget`."""
    from bert_ticket_cli.engine.budget import Budget, parse_duration

    p, d = cfg.pretrain, cfg.pretrain.data
    errs: list[str] = []

    def duration(value, name):
        if value is None:
            return None
        try:
            return parse_duration(value, f"pretrain.{name}")
        except UserError as exc:
            errs.append(str(exc))
            return None

    seconds = duration(p.budget, "budget")
    if seconds is not None and seconds <= 0:
        errs.append(f"pretrain.budget must be > 0, got {p.budget!r}")
    eval_every = duration(p.eval_every, "eval_every") or 0.0
    save_every = duration(p.save_every, "save_every") or 0.0
    after = duration(p.early_stop.after, "early_stop.after")
    if cfg.method not in METHODS:
        errs.append(f"method must be dense or earlybert for pretrain, got {cfg.method!r}")
    if p.clock not in ("wall", "steps"):
        errs.append(f"pretrain.clock must be wall or steps, got {p.clock!r}")
    elif p.clock == "steps" and not cfg.train.max_steps:
        errs.append("pretrain.clock=steps needs train.max_steps=N (the schedule's length)")
    if not 0 <= p.warmup_proportion < 1:
        errs.append(f"pretrain.warmup_proportion must be in [0, 1), got {p.warmup_proportion}")
    if p.init not in ("scratch", "pretrained"):
        errs.append(f"pretrain.init must be scratch or pretrained, got {p.init!r}")
    elif p.init == "pretrained" and not cfg.model.name_or_path:
        errs.append("pretrain.init=pretrained needs model.name_or_path=HUB_ID_OR_DIR")
    if (p.early_stop.loss is None) != (p.early_stop.after is None):
        errs.append("pretrain.early_stop needs both loss=X and after=DURATION (or neither)")
    if p.max_eval_samples is not None and p.max_eval_samples <= 0:
        errs.append(f"pretrain.max_eval_samples must be > 0, got {p.max_eval_samples}")
    if not 0 <= d.validation_fraction < 1:
        errs.append(f"pretrain.data.validation_fraction must be in [0, 1), got {d.validation_fraction}")
    if not 0 < d.mlm_probability < 1:
        errs.append(f"pretrain.data.mlm_probability must be in (0, 1), got {d.mlm_probability}")
    for name, low in (("seq_length", 8), ("max_predictions", 1), ("duplication", 1), ("shard_rows", 1),
                      ("shuffle_chunk", 1), ("vocab_size", 10)):
        if getattr(d, name) < low:
            errs.append(f"pretrain.data.{name} must be >= {low}, got {getattr(d, name)}")
    if cfg.method == "earlybert":
        from bert_ticket_cli.commands.earlybert import check_config as check_earlybert

        try:
            check_earlybert(cfg)
        except UserError as exc:
            errs.append(str(exc).removeprefix("invalid config: "))
    if errs:
        raise UserError("invalid config: " + "; ".join(errs))
    return Budget(seconds=seconds, clock=p.clock, max_steps=cfg.train.max_steps, warmup=p.warmup_proportion,
                  eval_every_s=eval_every, eval_every_steps=cfg.train.eval_every, save_every_s=save_every,
                  save_every_steps=cfg.train.save_every, early_stop_loss=p.early_stop.loss, early_stop_after_s=after,
                  min_loss_scale=p.min_loss_scale)


def prepare_only(cfg: RunConfig) -> int:
    """``bert-ticket pretrain prepare``: build (or find) the prepared data and say where it is."""
    from bert_ticket_cli.data.pretraining import open_prepared, prepare

    check_config(cfg)
    path = prepare(cfg)
    data = open_prepared(path)
    counts = data.manifest.get("counts", {})
    print(f"prepared data: {path}\n  " + "  ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                                  for k, v in counts.items()), flush=True)
    print(f"  train on it: bert-ticket pretrain pretrain.data.dir={path} ...", flush=True)
    return 0


def build_pretrain_model(cfg: RunConfig, tokenizer: Any) -> torch.nn.Module:
    """A BertForMaskedLM with sparse token prediction: random weights of ``model``'s geometry
    (``pretrain.init=scratch``) or ``model.name_or_path``'s weights (``pretrained``)."""
    from accelerate.utils import set_seed
    from transformers import AutoConfig, BertForMaskedLM

    from bert_ticket_cli.model.build import _check_source, _wrap_load_error, build_model
    from bert_ticket_cli.model.sparse_mlm import from_masked_lm

    set_seed(cfg.seed)
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    overrides = dict(cfg.model.config or {})
    if "vocab_size" in overrides and int(overrides["vocab_size"]) != vocab:
        raise UserError(f"model.config.vocab_size={overrides['vocab_size']} but the tokenizer has {vocab} tokens: "
                        f"drop model.config.vocab_size")
    if cfg.pretrain.init == "pretrained":
        model = build_model(cfg.model, kind="mlm", num_labels=0)
        if model.config.vocab_size != vocab:
            raise UserError(f"{cfg.model.name_or_path} has a {model.config.vocab_size}-token vocabulary but the "
                            f"prepared data's tokenizer has {vocab}: prepare with pretrain.data.tokenizer=model")
    else:
        overrides.update(vocab_size=vocab, pad_token_id=pad)
        if cfg.model.name_or_path:  # its geometry, fresh weights
            _check_source(cfg.model.name_or_path, "model config")
            try:
                config = AutoConfig.from_pretrained(cfg.model.name_or_path, **overrides)
            except (OSError, ValueError) as exc:
                raise _wrap_load_error(exc, cfg.model.name_or_path, "model config") from None
            config._attn_implementation = cfg.model.attn_implementation
            model = BertForMaskedLM(config)
        else:
            spec = copy.deepcopy(cfg.model)
            spec.config = overrides
            model = build_model(spec, kind="mlm", num_labels=0)
    if model.config.max_position_embeddings < cfg.pretrain.data.seq_length:
        raise UserError(f"the model has {model.config.max_position_embeddings} positions, fewer than "
                        f"pretrain.data.seq_length={cfg.pretrain.data.seq_length}: raise "
                        f"model.config.max_position_embeddings")
    return from_masked_lm(model)


def run(cfg: RunConfig, prepare_only_: bool = False) -> int:
    if prepare_only_:
        return prepare_only(cfg)
    budget = check_config(cfg)
    from bert_ticket_cli.commands.common import start_engine
    from bert_ticket_cli.data.pretraining import open_prepared, prepare
    from bert_ticket_cli.engine.setup import shutdown

    engine = start_engine(cfg)
    main = engine.main
    try:
        opened = open_run(cfg)
        engine.accelerator.wait_for_everyone()
        rd = opened.dir
        if opened.finished:
            if main:
                print(f"{rd.root} is already finished (overwrite=true to run it again)")
            return 0
        started = now()
        with engine.accelerator.main_process_first():
            path = prepare(cfg, log=print if main else (lambda *a, **k: None))
        data = open_prepared(path)
        model = build_pretrain_model(cfg, data.tokenizer)
        commit_run(opened, cfg, is_main=main)
        engine.accelerator.wait_for_everyone()
        if cfg.method == "earlybert":
            return _earlybert(cfg, engine, rd, data, model, budget, started)
        resume = opened.resume_from if cfg.resume else None
        record = _train_and_record(cfg, engine, rd, data, model, budget, resume=resume, started=started,
                                   save_to=rd.model, extra={"role": "pretrain"})
        if record is None:
            return EXIT_PREEMPTED
        if main:
            _print_record(record)
            print(f"model: {record['model_dir']}\n  fine-tune: bert-ticket rewind model=local "
                  f"model.name_or_path={record['model_dir']} task=sst2", flush=True)
        return 0
    finally:
        shutdown(engine.accelerator)


def _train_and_record(cfg: RunConfig, engine: Any, rd: RunDir, data: Any, model: torch.nn.Module, budget: Any, *,
                      resume: Any, started: str, save_to: Any = None, hooks: list[Any] = (), penalty: Any = None,
                      extra: dict[str, Any] | None = None, label: str = "pretrain",
                      finish: Any = None) -> dict[str, Any] | None:
    """Train ``model`` on the prepared data under ``budget``; write the run's record.  None when
    a stop signal interrupted it (a checkpoint was written).  ``finish()`` runs after training
    and before the record (whose presence marks the run finished); its dict joins the record."""
    from bert_ticket_cli.data.pretraining import PretrainCollator
    from bert_ticket_cli.engine.budget import fit_budget, mlm_validation
    from bert_ticket_cli.engine.loop import save_model

    acc = engine.accelerator
    collate = PretrainCollator(pad_id=data.tokenizer.pad_token_id or 0, seq_length=data.seq_length,
                               max_predictions=data.max_predictions)
    n_params = sum(p.numel() for p in model.parameters())

    def evaluate(m):
        return mlm_validation(acc, m, data.validation, collate, cfg.eval.batch_size, cfg.pretrain.max_eval_samples)

    result = fit_budget(accelerator=acc, model=model, train_dataset=data.train, collate=collate, train=cfg.train,
                        plan=engine.plan, budget=budget, seed=cfg.seed, run=rd, evaluate=evaluate,
                        shuffle_chunk=cfg.pretrain.data.shuffle_chunk, resume_from=resume, hooks=hooks,
                        penalty=penalty, num_workers=cfg.engine.num_workers, label=label)
    if result.preempted:
        return None
    if save_to is not None:
        save_model(acc, result.model, data.tokenizer, save_to)
    extra = {**(extra or {}), **(finish() if finish is not None else {})}
    metrics = {k: v for k, v in result.state.evals[-1].items() if k not in ("event", "step", "elapsed_s")}
    s = result.state
    facts = {
        "budget_s": budget.seconds, "clock": budget.clock, "elapsed_s": round(s.elapsed_s, 3),
        "train_time_s": round(result.train_time_s, 3), "eval_time_s": round(s.eval_s, 3), "steps": s.step,
        "tokens": s.tokens, "tokens_per_s": round(result.tokens_per_s, 1), "stop_reason": result.stop_reason,
        "model_params": n_params, "params": n_params, "data_dir": str(data.path),
        "world_size": acc.num_processes, "distributed_type": acc.distributed_type.value.lower(),
        "mixed_precision": cfg.engine.mixed_precision,
    }
    if save_to is not None:
        facts["model_dir"] = str(save_to.resolve())
    record = None
    if engine.main:
        record = write_summary(rd, cfg, metrics=metrics, main_metric="mlm_loss", started=started,
                               extra={**facts, **extra})
    acc.wait_for_everyone()
    return record or read_summary(rd)


def _print_record(r: dict[str, Any]) -> None:
    from bert_ticket_cli.artifacts.records import print_metrics_table

    print_metrics_table(f"{r['run_name']}: pre-training ({r['stop_reason']})", r["metrics"], {
        "steps": r["steps"], "elapsed (min)": r["elapsed_s"] / 60, "tokens": r["tokens"],
        "tokens/s": r["tokens_per_s"], "parameters": r["model_params"]})


# ------------------------------------------------------------------------------ EarlyBERT

def _earlybert(cfg: RunConfig, engine: Any, rd: RunDir, data: Any, theta0: torch.nn.Module, budget: Any,
               started: str) -> int:
    """Search (slimming + L1 + early-bird) on MLM, then the compacted model, then (optionally)
    the dense baseline; each stage a resumable sub-run."""
    from bert_ticket_cli.commands.common import model_state, save_weights
    from bert_ticket_cli.commands.earlybert import (
        CHECKS_FILE, EarlyBirdSearch, _save_search_outputs, _write_run_summary, print_stages, stage_dir, ticket_dir,
    )
    from bert_ticket_cli.engine.loop import checkpoint_step
    from bert_ticket_cli.model.compact import compact_
    from bert_ticket_cli.model.slimming import Slimming
    from bert_ticket_cli.model.sparse_mlm import from_masked_lm
    from bert_ticket_cli.sparsity.ticket import Ticket

    main, eb = engine.main, cfg.prune.earlybert
    init = model_state(theta0)
    dense_params = sum(p.numel() for p in theta0.parameters())
    if main and not (rd.root / "rewind" / "weights.safetensors").exists():
        save_weights(init, rd.root / "rewind" / "weights.safetensors")
    engine.accelerator.wait_for_everyone()

    def fresh() -> torch.nn.Module:
        model = copy.deepcopy(theta0)
        model.load_state_dict(init)
        return from_masked_lm(model)

    records: dict[str, dict[str, Any]] = {}
    for stage in ("search", "compact", "dense"):
        if stage == "dense" and not eb.dense_baseline:
            continue
        srd = stage_dir(rd, stage)
        if srd.summary.exists():
            records[stage] = read_summary(srd)
            continue
        latest = srd.latest_checkpoint()
        if latest is not None and not cfg.resume:
            raise UserError(f"{srd.root} was interrupted (checkpoint {latest.name}): pass resume=true to continue it")
        resume = latest if cfg.resume else None
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
        if stage == "search":
            slim = Slimming(model, l1_heads=eb.l1_heads, l1_neurons=eb.l1_neurons)
            search = EarlyBirdSearch(slim, eb, srd.root / CHECKS_FILE, start_step=checkpoint_step(resume), main=main)
            hooks, penalty = [search], slim.penalty
            if eb.search_steps is not None:
                stage_budget.step_limit = eb.search_steps
        elif stage == "compact":
            ticket = Ticket.load(ticket_dir(rd))
            compact_(model, ticket.heads, ticket.neurons)
            save_to = srd.model
            if budget.clock == "wall":  # what the search left of the budget
                stage_budget.seconds = max(1.0, budget.seconds - records["search"]["elapsed_s"])
        def finish_search() -> dict[str, Any]:
            heads, neurons = search.finish()
            if main:  # the ticket first: a finished search stage always has its ticket
                _save_search_outputs(cfg, rd, search, heads, neurons, dense_params)
            engine.accelerator.wait_for_everyone()
            return {"early_bird_step": search.found_at, "checks": len(search.checks)}

        record = _train_and_record(cfg, engine, srd, data, model, stage_budget, resume=resume, started=started,
                                   save_to=save_to, hooks=hooks, penalty=penalty, extra=extra, label=stage,
                                   finish=finish_search if stage == "search" else None)
        if record is None:
            return EXIT_PREEMPTED
        records[stage] = record

    if main:
        compact = records["compact"]
        summary = _write_run_summary(cfg, rd, records, started, dense_params, more={
            "budget_s": budget.seconds, "clock": budget.clock, "elapsed_s": compact["elapsed_s"],
            "tokens": compact["tokens"], "tokens_per_s": compact["tokens_per_s"],
            "stop_reason": compact["stop_reason"], "model_params": compact["model_params"],
            "search_elapsed_s": records["search"]["elapsed_s"],
            "dense_tokens_per_s": records["dense"]["tokens_per_s"] if "dense" in records else None,
        })
        print_stages(summary)
        print(f"compact model: {summary['model_dir']}\n  fine-tune: bert-ticket rewind model=local "
              f"model.name_or_path={summary['model_dir']} task=sst2", flush=True)
    return 0
