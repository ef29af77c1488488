"""``bert-ticket prune``: find lottery tickets (Chen et al., NeurIPS 2020).

method=imp     iterative magnitude pruning: train, prune the smallest surviving weights
               (global over the prunable set by default), rewind the survivors to the rewind
               point, train again; one ticket per level.
method=omp     one-shot magnitude pruning of the fine-tuned dense weights at each of
               prune.sparsities, each ticket trained from the rewind point.
method=random  random tickets at prune.sparsities (the random-pruning baseline), trained alike.
method=earlybert  structured EarlyBERT tickets: see :mod:`bert_ticket_cli.commands.earlybert`.

Level 0 is always the dense model (the full-model baseline of the run, and the source of the
rewind point theta_i).  Every level is a sub-run with its own metrics, checkpoints and
``summary.json``; a finished level is skipped on the next invocation, an interrupted one
resumes from its checkpoint (``resume=true``).  The run's ``summary.json`` (written last)
holds the trajectory sparsity -> metric.

    runs/prune/<run>/
      config.yaml  summary.json
      rewind/weights.safetensors     the rewind point (all weights, task head included)
      tickets/level-NN/              ticket.safetensors + ticket.json (shared Ticket format)
      levels/level-NN/               metrics.jsonl, checkpoints/, summary.json of that level
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import RunDir, atomic_write_json
from bert_ticket_cli.artifacts.records import (
    commit_run, now, open_run, read_summary, write_summary,
)
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError

METHODS = ("imp", "omp", "random", "earlybert")
LATER = {"super_tickets": "the super-tickets release"}


def _check(cfg: RunConfig) -> None:
    p = cfg.prune
    if cfg.method in LATER:
        raise UserError(f"method={cfg.method} arrives with {LATER[cfg.method]}; available now: "
                        f"method=imp|omp|random|earlybert")
    if cfg.method not in METHODS:
        raise UserError(f"prune needs method=imp|omp|random|earlybert (got method={cfg.method})")
    errs = []
    if p.schedule not in ("linear", "geometric"):
        errs.append(f"prune.schedule must be linear or geometric, got {p.schedule!r}")
    if p.scope not in ("global", "layer"):
        errs.append(f"prune.scope must be global or layer, got {p.scope!r}")
    if not 0 < p.rate < 1:
        errs.append(f"prune.rate must be in (0, 1), got {p.rate}")
    if not p.reset_head and cfg.task.name == "mlm":
        errs.append("prune.reset_head=false is not for task=mlm: the MLM decoder is tied to the word embeddings, "
                    "so keeping the trained head would undo the rewind of the embeddings")
    if p.levels < 1:
        errs.append(f"prune.levels must be >= 1, got {p.levels}")
    if p.target_sparsity is not None and not 0 < p.target_sparsity < 1:
        errs.append(f"sparsity must be in [0, 1): prune.target_sparsity={p.target_sparsity}")
    bad = [s for s in p.sparsities if not 0 < s < 1]
    if bad:
        errs.append(f"sparsity must be in [0, 1): prune.sparsities has {bad[0]}")
    if errs:
        raise UserError("invalid config: " + "; ".join(errs))


def _level_dir(rd: RunDir, level: int) -> RunDir:
    return RunDir(rd.root / "levels" / f"level-{level:02d}")


def _ticket_dir(rd: RunDir, level: int) -> Path:
    return rd.root / "tickets" / f"level-{level:02d}"


class _CaptureRewind:
    """Saves all weights after optimizer step ``at`` of the dense run: the rewind point theta_i."""

    def __init__(self, at: int, path: Path, start: int, main: bool):
        self.at, self.path, self.step, self.main = at, path, start, main

    def before_step(self, model) -> None:
        pass

    def after_step(self, model) -> None:
        from bert_ticket_cli.commands.common import model_state, save_weights

        self.step += 1
        if self.step == self.at and self.main:
            save_weights(model_state(getattr(model, "module", model)), self.path)


def run(cfg: RunConfig) -> int:
    if cfg.method == "earlybert":
        from bert_ticket_cli.commands import earlybert

        return earlybert.run(cfg)
    _check(cfg)
    from bert_ticket_cli.commands.common import (
        fit_extra, load_inputs, load_weights_file, model_state, parse_rewind_point, save_weights, start_engine,
        train_and_evaluate,
    )
    from bert_ticket_cli.engine.batches import steps_per_epoch
    from bert_ticket_cli.engine.loop import checkpoint_step, total_steps
    from bert_ticket_cli.engine.setup import shutdown
    from bert_ticket_cli.methods.magnitude import global_magnitude_prune, layerwise_magnitude_prune, level_target
    from bert_ticket_cli.methods.random_masks import random_at_sparsity
    from bert_ticket_cli.sparsity.prunable import model_id, prunable_parameters, total_parameters
    from bert_ticket_cli.sparsity.ticket import Ticket

    engine = start_engine(cfg)
    main = engine.main
    try:
        opened = open_run(cfg)
        engine.accelerator.wait_for_everyone()
        rd = opened.dir
        if opened.finished:
            if main:
                print(f"{rd.root} is already finished (overwrite=true to run it again)")
                _print_trajectory(read_summary(rd))
            return 0
        started = now()

        # ---- data, model, rewind point (inputs checked before anything is written) ----
        tokenizer, data, theta0 = load_inputs(cfg, engine)
        per_epoch = steps_per_epoch(len(data.train), engine.plan.global_batch)
        rewind_at = parse_rewind_point(cfg.prune.rewind, per_epoch)
        if rewind_at >= total_steps(cfg.train, per_epoch):
            raise UserError(f"prune.rewind={cfg.prune.rewind} ({rewind_at} steps) is not inside the "
                            f"{total_steps(cfg.train, per_epoch)} training steps of a level: rewind earlier")
        weights0 = prunable_parameters(theta0, include_pooler=cfg.prune.include_pooler, patterns=cfg.prune.patterns)
        total = sum(w.numel() for w in weights0.values())
        n_model = total_parameters(theta0)
        shapes = {n: tuple(w.shape) for n, w in weights0.items()}
        commit_run(opened, cfg, is_main=main)
        rewind_file = rd.root / "rewind" / "weights.safetensors"
        if rewind_at == 0 and main and not rewind_file.exists():
            save_weights(model_state(theta0), rewind_file)
        engine.accelerator.wait_for_everyone()

        # ---- the tickets to train, level by level ----
        if cfg.method == "imp":
            n_levels = cfg.prune.levels
            if cfg.prune.target_sparsity is not None:
                n_levels = next(k for k in range(1, 10_000)
                                if level_target(k, rate=cfg.prune.rate, schedule=cfg.prune.schedule, total=total)
                                >= cfg.prune.target_sparsity * total)
            targets = [level_target(k, rate=cfg.prune.rate, schedule=cfg.prune.schedule, total=total)
                       for k in range(n_levels + 1)]
        else:
            targets = [0] + [int(round(s * total)) for s in cfg.prune.sparsities]
        meta = {"method": cfg.method, "model": cfg.model.name_or_path or cfg.model.name, "model_id": model_id(theta0),
                "source_task": cfg.task.name, "seed": cfg.seed, "rewind_point": cfg.prune.rewind,
                "rewind_steps": rewind_at, "rewind_weights": "../../rewind/weights.safetensors",
                "scope": cfg.prune.scope, "total_model_params": n_model, "include_pooler": cfg.prune.include_pooler}

        def ticket_for(level: int, masks: dict[str, torch.Tensor]) -> Ticket:
            return Ticket(masks=masks, meta={**meta, "level": level, "created": now(),
                                             "prune_run": str(rd.root)})

        trajectory: list[dict[str, Any]] = []
        prev_head: dict[str, torch.Tensor] | None = None
        for level, n_removed in enumerate(targets):
            lrd = _level_dir(rd, level)
            tdir = _ticket_dir(rd, level)
            if (lrd.summary).exists():
                trajectory.append(read_summary(lrd))
                continue
            masks = Ticket.load(tdir).masks if level > 0 else None
            resume = lrd.latest_checkpoint() if cfg.resume else None
            if lrd.latest_checkpoint() is not None and not cfg.resume:
                raise UserError(f"{lrd.root} was interrupted (checkpoint {lrd.latest_checkpoint().name}): "
                                f"pass resume=true to continue it")
            hooks = []
            init = None if level == 0 else load_weights_file(rewind_file)
            if level == 0 and rewind_at > 0:
                hooks.append(_CaptureRewind(rewind_at, rewind_file, checkpoint_step(resume), main))
            if init is not None and not cfg.prune.reset_head and prev_head is not None:
                init = {**init, **prev_head}  # the reference code's quirk: keep the trained head
            if main:
                sp = n_removed / total
                print(f"level {level}/{len(targets) - 1}: sparsity {sp:.4f} over {total:,} prunable weights "
                      f"({'dense' if level == 0 else cfg.method})", flush=True)
            trained = train_and_evaluate(
                cfg, engine, data=data, tokenizer=tokenizer, run=lrd, init_state=init,
                masks=masks, resume_from=resume, hooks=hooks,
            )
            if trained.result.preempted:
                return EXIT_PREEMPTED
            model = engine.accelerator.unwrap_model(trained.result.model)
            if not cfg.prune.reset_head:  # only then is the trained head carried to the next level
                base = getattr(model, "base_model_prefix", "bert") + "."
                prev_head = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                             if not k.startswith(base)}

            # Next tickets, saved before this level is marked finished (resume needs them).
            if main:
                trained_w = prunable_parameters(model, include_pooler=cfg.prune.include_pooler,
                                                patterns=cfg.prune.patterns)
                trained_w = {n: w.detach().float().cpu() for n, w in trained_w.items()}
                current = masks or {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
                if cfg.method == "imp" and level + 1 < len(targets):
                    nxt = targets[level + 1]
                    new = (global_magnitude_prune(trained_w, current, nxt) if cfg.prune.scope == "global"
                           else layerwise_magnitude_prune(trained_w, current, nxt / total))
                    ticket_for(level + 1, new).save(_ticket_dir(rd, level + 1))
                elif level == 0 and cfg.method in ("omp", "random"):
                    for k, n_rm in enumerate(targets[1:], start=1):
                        if cfg.method == "omp":
                            new = (global_magnitude_prune(trained_w, current, n_rm) if cfg.prune.scope == "global"
                                   else layerwise_magnitude_prune(trained_w, current, n_rm / total))
                        else:
                            new = random_at_sparsity(shapes, n_rm / total, seed=cfg.seed + k, scope=cfg.prune.scope)
                        ticket_for(k, new).save(_ticket_dir(rd, k))
                record = write_summary(lrd, cfg, metrics=trained.metrics, main_metric=trained.main_key,
                                       started=started, extra={
                    **fit_extra(cfg, engine, trained),
                    "run_name": f"{rd.root.name}/level-{level:02d}",
                    "level": level,
                    "sparsity": n_removed / total,
                    "sparsity_overall": n_removed / n_model,
                    "prunable_weights": total,
                    "ticket": str(tdir) if level > 0 else None,
                    "role": "level",
                })
                trajectory.append(record)
            engine.accelerator.wait_for_everyone()

        if main:
            rows = [{"level": r["level"], "sparsity": r["sparsity"], "main_value": r["main_value"],
                     "metrics": r["metrics"], "ticket": r.get("ticket")} for r in trajectory]
            atomic_write_json(rd.root / "trajectory.json", rows)
            last = trajectory[-1]
            write_summary(rd, cfg, metrics=last["metrics"], main_metric=last["main_metric"], started=started,
                          extra={"role": "trajectory", "trajectory": rows, "sparsity": last["sparsity"],
                                 "levels": len(trajectory) - 1, "prunable_weights": total})
            _print_trajectory(read_summary(rd))
        return 0
    finally:
        shutdown(engine.accelerator)


def _print_trajectory(summary: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{summary['run_name']}: {summary['method']} on {summary['task']} ({summary['main_metric']})")
    for col in ("level", "sparsity", summary["main_metric"], "ticket"):
        t.add_column(col, justify="right" if col != "ticket" else "left")
    for row in summary.get("trajectory", []):
        t.add_row(str(row["level"]), f"{row['sparsity']:.4f}",
                  f"{row['main_value']:.4f}" if row["main_value"] is not None else "-", row.get("ticket") or "-")
    (Console() if sys.stdout.isatty() else Console(width=160)).print(t)
