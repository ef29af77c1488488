"""``bert-ticket rewind``: train a (ticket of a) pre-trained model on a task and evaluate it.

With no ticket this is dense fine-tuning, the full-model baseline every experiment compares
against.  Reads top to bottom: setup -> data and model -> train -> save.
"""

from __future__ import annotations

from bert_ticket_cli.artifacts.records import (
    commit_run, now, open_run, print_metrics_table, read_summary, write_summary,
)
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError


def run(cfg: RunConfig) -> int:
    if cfg.ticket.path is not None or cfg.method != "dense":
        raise UserError(
            "training a ticket (ticket=/method=) arrives with the lottery-ticket release; "
            "today 'rewind' fine-tunes the dense model: drop ticket= and method="
        )
    from accelerate.utils import set_seed

    from bert_ticket_cli.data.pipeline import load_task_data
    from bert_ticket_cli.engine.evaluate import format_metrics, main_metric_key, make_evaluator
    from bert_ticket_cli.engine.loop import fit, save_model
    from bert_ticket_cli.engine.setup import make_accelerator, plan_batches, shutdown, world_size_from_env
    from bert_ticket_cli.model.build import build_model, load_tokenizer

    # ---- setup: processes, batch geometry, run folder ----
    plan = plan_batches(cfg.train, world_size_from_env())
    accelerator = make_accelerator(cfg.engine, cfg.train, plan)
    main = accelerator.is_main_process
    try:
        opened = open_run(cfg, is_main=main)
        accelerator.wait_for_everyone()
        if opened.finished:
            summary = read_summary(opened.dir)
            if main:
                print(f"{opened.dir.root} is already finished (overwrite=true to run it again)")
                print_metrics_table(f"{summary['run_name']} (finished {summary['finished']})", summary["metrics"])
            return 0
        started = now()

        # ---- data and model (all inputs are checked before anything is written) ----
        set_seed(cfg.seed)
        tokenizer = load_tokenizer(cfg.model, cfg.task)
        with accelerator.main_process_first():
            data = load_task_data(cfg, tokenizer, train=True)
        model = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels,
                            vocab_size=len(tokenizer))
        commit_run(opened, cfg, is_main=main)
        accelerator.wait_for_everyone()
        if main:
            n_params = sum(p.numel() for p in model.parameters())
            print(f"run {opened.dir.root}: {data.info.name}, {len(data.train)} train examples, "
                  f"model {cfg.model.name} ({n_params / 1e6:.2f}M params), {accelerator.num_processes} process(es) "
                  f"[{accelerator.distributed_type.value.lower()}, {accelerator.device.type}], "
                  f"batch {plan.global_batch} = {plan.micro_batch} x {plan.world_size} x {plan.accumulation}", flush=True)

        # ---- train ----
        evaluate = make_evaluator(accelerator, data, cfg.eval.batch_size, cfg.task.max_answer_length)
        result = fit(
            accelerator=accelerator, model=model, train_dataset=data.train, collate=data.collate,
            train=cfg.train, plan=plan, seed=cfg.seed, run=opened.dir, evaluate=evaluate,
            resume_from=opened.resume_from, num_workers=cfg.engine.num_workers,
        )
        if result.preempted:
            return EXIT_PREEMPTED

        # ---- save: model, then the record (its presence marks the run finished) ----
        final = {k: v for k, v in result.state.evals[-1].items() if k not in ("event", "step", "elapsed_s")}
        key = main_metric_key(data)
        save_model(accelerator, result.model, tokenizer, opened.dir.model)
        if main:
            best = max((e.get(key, float("-inf")) for e in result.state.evals), default=None)
            write_summary(opened.dir, cfg, metrics=final, main_metric=key, started=started, extra={
                "best_main_value": best,
                "steps": result.state.step,
                "train_time_s": round(result.train_time_s, 3),
                "samples_per_s": round(result.samples_per_s, 2),
                "world_size": accelerator.num_processes,
                "distributed_type": accelerator.distributed_type.value.lower(),
                "mixed_precision": cfg.engine.mixed_precision,
                "model_dir": str(opened.dir.model),
            })
            print_metrics_table(f"{data.info.name} dev, {cfg.model.name}, seed {cfg.seed}", final, {
                "steps": result.state.step, "train time (s)": result.train_time_s,
                "samples/s": result.samples_per_s,
            })
            print(f"model saved to {opened.dir.model}; evaluate again with: bert-ticket eval task={cfg.task.name} "
                  f"eval.checkpoint={opened.dir.model}", flush=True)
        return 0
    finally:
        shutdown(accelerator)
