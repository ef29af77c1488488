"""Lottery tickets level by level (Chen et al., NeurIPS 2020): ``prune method=imp|omp|random``.

Level 0 is always the dense model (the full-model baseline of the run, and the source of the
rewind point theta_i).  After each level the method (:mod:`bert_ticket_cli.methods`) turns the
trained weights into the tickets that follow: IMP the next level's, OMP and random pruning
every level's at once after level 0.  Each ticket trains from the rewind point.  Every level
is a sub-run with its own metrics, checkpoints and ``summary.json`` (:func:`.stages.run_stages`:
a finished level is skipped, an interrupted one resumes with ``resume=true``); the run's
``summary.json`` (written last) holds the trajectory sparsity -> metric.

    runs/prune/<run>/
      config.yaml  summary.json  trajectory.json
      rewind/weights.safetensors     the rewind point (all weights, task head included)
      tickets/level-NN/              ticket.safetensors + ticket.json (shared Ticket format)
      levels/level-NN/               metrics.jsonl, checkpoints/, summary.json of that level
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import REWIND_FROM_TICKET, atomic_write_json
from bert_ticket_cli.artifacts.records import now, read_summary, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import command, model_args, name_local_model, source_model, task_args
from bert_ticket_cli.workflows.stages import Run, run_stages, run_workflow
from bert_ticket_cli.workflows.training import (
    TrainSpec, fit_extra, load_inputs, load_weights_file, model_state, parse_rewind_point, save_weights,
    train_and_evaluate,
)


def run(cfg: RunConfig, method: Any) -> int:
    name_local_model(cfg)
    return run_workflow(cfg, lambda r: find_tickets(r, method), on_finished=print_trajectory)


def find_tickets(run: Run, method: Any) -> int:
    from bert_ticket_cli.engine.batches import steps_per_epoch
    from bert_ticket_cli.engine.loop import checkpoint_step, total_steps
    from bert_ticket_cli.sparsity.nm import check_shapes, parse_pattern, pattern_name
    from bert_ticket_cli.sparsity.prunable import model_id, prunable_parameters, total_parameters
    from bert_ticket_cli.sparsity.ticket import Ticket

    cfg, session, rd, main = run.cfg, run.session, run.dir, run.main

    # ---- data, model, rewind point (inputs checked before anything is written) ----
    tokenizer, data, theta0 = load_inputs(cfg, session)
    per_epoch = steps_per_epoch(len(data.train), session.plan.global_batch)
    rewind_at = parse_rewind_point(cfg.prune.rewind, per_epoch)
    if rewind_at >= total_steps(cfg.train, per_epoch):
        raise UserError(f"prune.rewind={cfg.prune.rewind} ({rewind_at} steps) is not inside the "
                        f"{total_steps(cfg.train, per_epoch)} training steps of a level: rewind earlier")
    weights0 = prunable_parameters(theta0, include_pooler=cfg.prune.include_pooler, patterns=cfg.prune.patterns)
    total = sum(w.numel() for w in weights0.values())
    n_model = total_parameters(theta0)
    shapes = {n: tuple(w.shape) for n, w in weights0.items()}
    nm = parse_pattern(cfg.prune.pattern)
    if nm is not None:
        check_shapes(shapes, nm)  # every matrix's input dimension a multiple of M, before anything is written
    run.commit()
    if rewind_at == 0 and main and not rd.rewind_weights.exists():
        save_weights(model_state(theta0), rd.rewind_weights)
    session.wait_for_everyone()

    # ---- the tickets to train, level by level ----
    targets = method.targets(cfg, total)
    if nm is not None and main:
        print(f"prune.pattern={pattern_name(nm)}: one ticket keeping {nm[0]} of every {nm[1]} input weights "
              f"(sparsity {targets[-1] / total:.4f}); prune.sparsities and prune.rate do not apply", flush=True)
    meta = {"method": cfg.method.name, "model": cfg.model.name_or_path or cfg.model.name, "model_id": model_id(theta0),
            "source_task": cfg.task.name, "seed": cfg.seed, "rewind_point": cfg.prune.rewind,
            "rewind_steps": rewind_at, "rewind_weights": REWIND_FROM_TICKET,
            "scope": cfg.prune.scope, "pattern": pattern_name(nm),
            "total_model_params": n_model, "include_pooler": cfg.prune.include_pooler,
            "source_model": source_model(cfg), "prune": prune_settings(cfg), "train": asdict(cfg.train)}
    prev_head: dict[str, torch.Tensor] | None = None

    def train_level(level: int, lrd, resume: Path | None) -> dict[str, Any] | None:
        nonlocal prev_head
        started = now()  # this level's own start (the run's is run.started)
        ticket = Ticket.load(rd.ticket(level)) if level > 0 else None
        masks = ticket.masks if ticket is not None else None
        hooks = []
        init = None if level == 0 else load_weights_file(rd.rewind_weights)
        if level == 0 and rewind_at > 0:
            hooks.append(CaptureRewind(rewind_at, rd.rewind_weights, checkpoint_step(resume), main))
        if init is not None and not cfg.prune.reset_head and prev_head is not None:
            init = {**init, **prev_head}  # the reference code's quirk: keep the trained head
        if main:
            print(f"level {level}/{len(targets) - 1}: sparsity {targets[level] / total:.4f} over {total:,} prunable "
                  f"weights ({'dense' if level == 0 else cfg.method.name})", flush=True)
            if ticket is not None:
                for line in sparsity_lines(ticket.per_matrix_sparsity()):
                    print(f"  {line}", flush=True)
                for line in nearly_whole_warnings(ticket.per_matrix_sparsity()):
                    print(line, flush=True)
        trained = train_and_evaluate(cfg, session, data, tokenizer, lrd, TrainSpec(
            init_state=init, masks=masks, resume_from=resume, hooks=hooks, label=f"level {level}/{len(targets) - 1}"))
        model = session.unwrap_model(trained.result.model)
        if not cfg.prune.reset_head:  # only then is the trained head carried to the next level
            base = getattr(model, "base_model_prefix", "bert") + "."
            prev_head = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                         if not k.startswith(base)}

        # Next tickets, saved before this level is marked finished (resume needs them).
        record = None
        if main:
            trained_w = prunable_parameters(model, include_pooler=cfg.prune.include_pooler,
                                            patterns=cfg.prune.patterns)
            trained_w = {n: w.detach().float().cpu() for n, w in trained_w.items()}
            current = masks or {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
            for k, new in method.next_tickets(level, trained=trained_w, current=current, targets=targets,
                                              shapes=shapes, total=total, cfg=cfg):
                Ticket(masks=new, meta={**meta, "level": k, "created": now(), "prune_run": str(rd.root)}).save(
                    rd.ticket(k))
            record = write_summary(lrd, cfg, metrics=trained.metrics, main_metric=trained.main_key,
                                   started=started, extra={
                **fit_extra(cfg, session, trained),
                "run_name": f"{rd.root.name}/level-{level:02d}",
                "level": level,
                "sparsity": targets[level] / total,
                "sparsity_overall": targets[level] / n_model,
                "prunable_weights": total,
                "ticket": str(rd.ticket(level)) if level > 0 else None,
                "role": "level",
                # level 0 is the dense baseline of the run, recorded as such (report method=dense)
                **({"method": "dense", "prune_method": cfg.method.name} if level == 0 else {}),
            })
        session.wait_for_everyone()
        return record

    records = run_stages(run, [(level, rd.level(level)) for level in range(len(targets))], train_level)

    # ---- the trajectory (the run's record) ----
    if main:
        trajectory = list(records.values())
        rows = [{"level": r["level"], "sparsity": r["sparsity"], "main_value": r["main_value"],
                 "metrics": r["metrics"], "ticket": r.get("ticket")} for r in trajectory]
        atomic_write_json(rd.trajectory, rows)
        last = trajectory[-1]
        write_summary(rd, cfg, metrics=last["metrics"], main_metric=last["main_metric"], started=run.started,
                      extra={"role": "trajectory", "trajectory": rows, "sparsity": last["sparsity"],
                             "levels": len(trajectory) - 1, "prunable_weights": total})
        print_trajectory(read_summary(rd))
        last_ticket = next((r.get("ticket") for r in reversed(trajectory) if r.get("ticket")), None)
        if last_ticket:
            print("train a ticket again (e.g. another seed): " + command(
                "rewind", f"ticket={last_ticket}", *model_args(cfg), *task_args(cfg), f"output_dir={cfg.output_dir}"),
                flush=True)
    return 0


def prune_settings(cfg: RunConfig) -> dict[str, Any]:
    """The prune settings a ticket records (with ``train.*``: how the run that found it trained)."""
    p = cfg.prune
    return {"rate": p.rate, "schedule": p.schedule, "scope": p.scope, "patterns": list(p.patterns or []),
            "include_pooler": p.include_pooler, "reset_head": p.reset_head, "rewind": p.rewind,
            "target_sparsity": p.target_sparsity, "pattern": p.pattern}


#: A matrix losing at least this fraction of its weights is reported (it is all but removed).
NEARLY_WHOLE = 0.99
_LAYER = re.compile(r"^(?:.*\.)?layer\.(\d+)\.(.+?)(?:\.weight)?$")


def sparsity_lines(per_matrix: dict[str, float]) -> list[str]:
    """One line per matrix group (query, key, ..., pooler): the fraction removed in each layer,
    e.g. ``attention.self.query  L0 0.5120  L1 0.4980``."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for name, value in per_matrix.items():
        m = _LAYER.match(name)
        group, layer = (m.group(2), int(m.group(1))) if m else (name.removesuffix(".weight"), -1)
        groups.setdefault(group, []).append((layer, value))
    width = max((len(g) for g in groups), default=0)
    lines = []
    for group, values in groups.items():
        cells = "  ".join(f"L{layer} {v:.4f}" if layer >= 0 else f"{v:.4f}" for layer, v in sorted(values))
        lines.append(f"{group:<{width}}  {cells}")
    return lines


def nearly_whole_warnings(per_matrix: dict[str, float], threshold: float = NEARLY_WHOLE) -> list[str]:
    """A warning per matrix that loses ``threshold`` or more of its weights, with what to do."""
    out = []
    for name, value in per_matrix.items():
        if value >= threshold:
            fix = ("prune.include_pooler=false (an untrained pooler has small weights), or choose the matrices "
                   "with prune.patterns" if name.startswith("pooler.")
                   else "prune.patterns to leave it out, or prune.scope=layer (the same fraction of every matrix)")
            out.append(f"warning: the ticket removes {value:.2%} of {name} (almost all of it): consider {fix}")
    return out


class CaptureRewind:
    """Saves all weights after optimizer step ``at`` of the dense run: the rewind point theta_i."""

    def __init__(self, at: int, path: Path, start: int, main: bool):
        self.at, self.path, self.step, self.main = at, path, start, main

    def before_step(self, model) -> None:
        pass

    def after_step(self, model) -> None:
        self.step += 1
        if self.step == self.at and self.main:
            save_weights(model_state(getattr(model, "module", model)), self.path)


def print_trajectory(summary: dict[str, Any]) -> None:
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
