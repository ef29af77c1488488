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
        commit_run(OpenedRun(rd), cfg, is_main=main)

        metrics = session.evaluator(data, cfg.eval.batch_size, cfg.task.max_answer_length)(model)

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
