"""Evaluate a saved model on a task's dev splits: ``eval``.

``eval.checkpoint`` is a model directory (a run's ``model/`` folder, or any Hugging Face
BERT directory); ``eval.predict_test=true`` also writes the GLUE leaderboard TSVs.  An
evaluation is cheap and has no side effects on the model, so it always runs: the new
record replaces ``summary.json`` and ``metrics.jsonl`` keeps the history.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bert_ticket_cli.artifacts.paths import run_dir
from bert_ticket_cli.artifacts.records import (
    OpenedRun, commit_run, note_data, now, print_metrics_table, task_data_fingerprint, write_summary,
)
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import name_local_model


def _default_run_name(cfg: RunConfig, source: str) -> str:
    p = Path(source)
    label = p.parent.name if p.name == "model" else p.name
    return f"{cfg.task.name}-{label or cfg.model.name}"


def evaluated_model(cfg: RunConfig, source: str) -> dict[str, str | None]:
    """The model an evaluation evaluated, for its record: the name the run that saved the
    checkpoint recorded (its ``summary.json`` next to ``model/``), else the folder's name; and the
    checkpoint's path as its source."""
    import json

    p = Path(source).expanduser()
    name = None
    if cfg.eval.checkpoint:
        summary = p.parent / "summary.json"
        try:
            name = json.loads(summary.read_text()).get("model") if summary.is_file() else None
        except (OSError, ValueError):
            name = None
        name = name or (p.parent.name if p.name == "model" else p.name)
    return {"model": name or cfg.model.name, "model_source": str(p.resolve()) if p.exists() else str(source)}


def run(cfg: RunConfig) -> int:
    if cfg.eval.export not in (None, "padded"):
        raise UserError(f"eval.export must be padded (a plain full-size BERT), got {cfg.eval.export!r}")
    name_local_model(cfg)
    source = cfg.eval.checkpoint or cfg.model.name_or_path
    if source is None:
        raise UserError("eval needs a trained model: pass eval.checkpoint=runs/rewind/<run>/model (or model.name_or_path=DIR)")
    if cfg.eval.checkpoint and not Path(cfg.eval.checkpoint).expanduser().is_dir():
        raise UserError(f"eval.checkpoint={cfg.eval.checkpoint} is not a directory: pass a saved model folder (a run's model/)")
    from bert_ticket_cli.tasks import load_task_data, task_info
    from bert_ticket_cli.engine.session import start_session
    from bert_ticket_cli.model.build import build_model, load_tokenizer
    from bert_ticket_cli.model.multitask import is_multitask_dir

    if is_multitask_dir(source):
        return evaluate_multitask(cfg, source)
    if cfg.run_name is None:
        cfg.run_name = _default_run_name(cfg, source)
    rd = run_dir(cfg)
    info = task_info(cfg.task.name)
    # A saved run folder carries its tokenizer; otherwise use the model config's one.
    tok_source = source if (Path(source) / "tokenizer_config.json").exists() else None
    model_cfg = cfg.model
    if cfg.eval.checkpoint:
        # The checkpoint defines the architecture: the model group's config overrides (e.g. the
        # default tiny model's sizes) must not be applied on top of it.
        model_cfg = replace(cfg.model, config=None, name_or_path=source, tokenizer=tok_source or cfg.model.tokenizer)

    # Evaluation needs no optimizer, which DeepSpeed's ZeRO engine insists on: plain DDP here.
    session = start_session(cfg, deepspeed=False)
    main = session.is_main
    try:
        started = now()
        tokenizer = load_tokenizer(model_cfg, cfg.task)
        with session.main_process_first():
            data = load_task_data(cfg, tokenizer, train=False, eval_splits=list(cfg.eval.splits) or None,
                                  test=cfg.eval.predict_test)
        note_data(task_data_fingerprint(data))
        model = build_model(model_cfg, kind=info.kind, num_labels=info.num_labels, source=source)
        model = session.prepare(model)
        semi = None
        if cfg.eval.semi_structured:
            from bert_ticket_cli.model.semi_structured import support

            why = support(next(session.unwrap_model(model).parameters()).device)
            if why:
                raise UserError(f"eval.semi_structured=true: {why}; evaluate the masked dense model "
                                f"(eval.semi_structured=false)")
            if cfg.engine.mixed_precision not in ("bf16", "fp16"):
                raise UserError("eval.semi_structured=true needs engine.mixed_precision=bf16 (or fp16): the 2:4 "
                                "kernels take half-precision weights")
        commit_run(OpenedRun(rd), cfg, is_main=main)

        evaluate = session.evaluator(data, cfg.eval.batch_size, cfg.task.max_answer_length)
        if cfg.eval.semi_structured:
            from bert_ticket_cli.model.semi_structured import to_semi_structured

            dense_metrics = evaluate(model)  # the masked dense model: the reference
            layers = to_semi_structured(session.unwrap_model(model), cfg.engine.mixed_precision)
            semi = {"layers": len(layers), "dense_metrics": dense_metrics}
            if main:
                print(f"2:4 semi-structured kernels in {len(layers)} linear layers; masked dense model: "
                      f"{dense_metrics}", flush=True)
        metrics = evaluate(model)

        written = []
        if cfg.eval.predict_test and data.tests:
            for split, fname in zip(info.test_splits, info.leaderboard_files):
                ds = data.tests[split]
                out = session.predict(model, ds, data.collate, cfg.eval.batch_size)
                if main:
                    dest = rd.predictions / fname
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    info.write_predictions(split, ds["idx"], out, dest)
                    written.append(str(dest))

        if main:
            session.log_record(rd, {"event": "eval", "checkpoint": str(source), **metrics})
            key = data.main_metric_key()
            exported = None
            if cfg.eval.export == "padded":
                from bert_ticket_cli.model.export import export_padded

                exported = str(export_padded(source, rd.root / "export", overwrite=True))
            write_summary(rd, cfg, metrics=metrics, main_metric=key, started=started,
                          extra={"checkpoint": str(source), "predictions": written, "export": exported,
                                 **({"semi_structured": semi} if semi else {}),
                                 **evaluated_model(cfg, str(source))})
            print_metrics_table(f"{info.name} ({rd.root.name})", metrics)
            for w in written:
                print(f"test predictions: {w}")
            if exported:
                auto = {"qa": "AutoModelForQuestionAnswering", "mlm": "AutoModelForMaskedLM"}.get(
                    info.kind, "AutoModelForSequenceClassification")
                print(f"exported as a plain full-size BERT: {exported}\n  load it with plain transformers: "
                      f"from transformers import {auto}; model = {auto}.from_pretrained({exported!r})", flush=True)
        return 0
    finally:
        session.shutdown()


def evaluate_multitask(cfg: RunConfig, source: str) -> int:
    """A saved multi-task model (``rewind task=multi``): every task's dev splits through its own
    ticket.  The tasks and their data settings come from the model's ``multitask.json``;
    ``task.data_dir`` / ``task.max_eval_samples`` given here replace the recorded ones."""
    import statistics

    from bert_ticket_cli.artifacts.paths import append_jsonl
    from bert_ticket_cli.engine.session import start_session
    from bert_ticket_cli.model.build import load_tokenizer
    from bert_ticket_cli.model.multitask import ENCODER_DIR, load_multitask
    from bert_ticket_cli.tasks import load_task_data
    from bert_ticket_cli.workflows.context import composed_default
    from bert_ticket_cli.workflows.multitask import TaskView

    if cfg.eval.export is not None:
        raise UserError("eval.export=padded exports one BERT; a multi-task model is an encoder with several heads "
                        "and tickets: load it with bert_ticket_cli.model.multitask.load_multitask")
    model, spec, tickets = load_multitask(source)
    default = composed_default("eval").task
    recorded = spec.get("task_settings", {})
    settings = {k: (getattr(cfg.task, k) if getattr(cfg.task, k) != getattr(default, k) else recorded.get(k, getattr(default, k)))
                for k in ("data_dir", "max_seq_length", "max_eval_samples")}
    if cfg.run_name is None:
        p = Path(source)
        cfg.run_name = f"multi-{p.parent.name if p.name == 'model' else p.name}"
    cfg.task = replace(cfg.task, name="multi", **settings)
    rd = run_dir(cfg)
    session = start_session(cfg, deepspeed=False)
    main = session.is_main
    try:
        started = now()
        tokenizer = load_tokenizer(replace(cfg.model, name_or_path=str(Path(source) / ENCODER_DIR), tokenizer=None),
                                   cfg.task)
        names = list(model.task_names)
        datas = {}
        with session.main_process_first():
            for name in names:
                datas[name] = load_task_data(replace(cfg, task=replace(cfg.task, name=name)), tokenizer, train=False)
        note_data({f"{name}/{split}": fp for name, data in datas.items()
                   for split, fp in task_data_fingerprint(data).items()})
        prepared = session.prepare(model)
        commit_run(OpenedRun(rd), cfg, is_main=main)
        metrics: dict[str, float] = {}
        for i, name in enumerate(names):
            scores = session.evaluator(datas[name], cfg.eval.batch_size)(TaskView(prepared, i))
            metrics.update({f"{name}/{k}": v for k, v in scores.items()})
        metrics["average"] = statistics.mean(metrics[f"{n}/{datas[n].main_metric_key()}"] for n in names)
        if main:
            session.log_record(rd, {"event": "eval", "checkpoint": str(source), **metrics})
            write_summary(rd, cfg, metrics=metrics, main_metric="average", started=started, extra={
                "checkpoint": str(source), "role": "multitask_eval", "tasks": names,
                "tickets": {n: t.meta.get("path") for n, t in tickets.items()},
                "kept_fraction": spec.get("kept_fraction"), **evaluated_model(cfg, str(source))})
            print_metrics_table(f"multi-task ({rd.root.name})", metrics)
        return 0
    finally:
        session.shutdown()
