"""``bert-ticket prune method=earlybert``: EarlyBERT for fine-tuning (Chen et al., ACL 2021).

Three stages, each a resumable sub-run (a finished stage is skipped on the next invocation,
an interrupted one continues from its checkpoint with ``resume=true``):

1. **search**: from the pre-trained weights, train the task with a slimming coefficient on
   every head and FFN neuron (:mod:`bert_ticket_cli.model.slimming`) and an L1 penalty on them;
   every ``check_every`` steps draw a structured ticket from ``|c|`` and stop once the early
   bird is found (:mod:`bert_ticket_cli.methods.earlybert`), or after ``search_steps``;
2. **compact**: rebuild the model physically smaller (:mod:`bert_ticket_cli.model.compact`) with
   only the kept heads and neurons, *restart from the pre-trained weights* of that structure
   (not the searched ones), train without L1, evaluate, save the reloadable compact model;
3. **dense** (``prune.earlybert.dense_baseline``): the full model from the same weights under the
   same budget: the accuracy and time EarlyBERT is compared against.

::

    runs/prune/<run>/
      config.yaml  summary.json           the run: times of every stage, accuracies, saving
      rewind/weights.safetensors          the pre-trained weights (with the initial task head)
      tickets/earlybird/                  the structured ticket (shared Ticket format)
      earlybird.json                      check steps and the full mask-distance matrices
      stages/search/                      metrics.jsonl, checkpoints/, checks.safetensors, summary.json
      stages/compact/model/               the compacted model (reload: bert-ticket eval / load_compact)
      stages/dense/                       the dense baseline

Times are training wall times without evaluation (``FitResult.train_time_s``); the saving is
``1 - (search + compact) / dense``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import RunDir, atomic_write_json
from bert_ticket_cli.artifacts.records import commit_run, now, open_run, read_summary, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError

STAGES = ("search", "compact", "dense")
CHECKS_FILE = "checks.safetensors"
EARLYBIRD_FILE = "earlybird.json"
TICKET_SUBDIR = ("tickets", "earlybird")


def check_config(cfg: RunConfig) -> None:
    eb = cfg.prune.earlybert
    errs = []
    for name in ("head_fraction", "neuron_fraction"):
        if not 0 <= getattr(eb, name) < 1:
            errs.append(f"prune.earlybert.{name} must be in [0, 1), got {getattr(eb, name)}")
    for name in ("head_scope", "neuron_scope"):
        if getattr(eb, name) not in ("layer", "global"):
            errs.append(f"prune.earlybert.{name} must be layer or global, got {getattr(eb, name)!r}")
    for name in ("l1_heads", "l1_neurons"):
        if getattr(eb, name) < 0:
            errs.append(f"prune.earlybert.{name} must be >= 0, got {getattr(eb, name)}")
    if eb.check_every < 1:
        errs.append(f"prune.earlybert.check_every must be >= 1, got {eb.check_every}")
    if eb.window < 2:
        errs.append(f"prune.earlybert.window must be >= 2, got {eb.window}")
    if not 0 <= eb.threshold <= 1:
        errs.append(f"prune.earlybert.threshold must be in [0, 1], got {eb.threshold}")
    if eb.search_steps is not None and eb.search_steps < 1:
        errs.append(f"prune.earlybert.search_steps must be >= 1, got {eb.search_steps}")
    if errs:
        raise UserError("invalid config: " + "; ".join(errs))


def stage_dir(rd: RunDir, stage: str) -> RunDir:
    return RunDir(rd.root / "stages" / stage)


def ticket_dir(rd: RunDir) -> Path:
    return rd.root.joinpath(*TICKET_SUBDIR)


# ------------------------------------------------------------------------ search stage

def _save_checks(path: Path, checks: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({"steps": torch.tensor([c[0] for c in checks], dtype=torch.int64),
               "heads": torch.stack([c[1] for c in checks]),
               "neurons": torch.stack([c[2] for c in checks])}, str(tmp))
    tmp.replace(path)


def load_checks(path: Path, up_to: int | None = None) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """The tickets drawn at the checks of a search, oldest first (those after ``up_to`` dropped:
    a resumed search repeats them)."""
    from safetensors.torch import load_file

    if not path.exists():
        return []
    t = load_file(str(path))
    out = [(int(s), h, n) for s, h, n in zip(t["steps"].tolist(), t["heads"], t["neurons"])]
    return [c for c in out if up_to is None or c[0] <= up_to]


class EarlyBirdSearch:
    """Step hook of the search: draws a ticket every ``check_every`` steps, feeds the detector,
    keeps every check (on disk too, for resume and the heatmap) and asks ``fit`` to stop at the
    early bird."""

    def __init__(self, slimming: Any, eb: Any, store: Path, *, start_step: int, main: bool):
        from bert_ticket_cli.methods.earlybert import EarlyBird

        self.slimming, self.eb, self.store, self.main = slimming, eb, store, main
        self.step = start_step
        self.detector = EarlyBird(window=eb.window, threshold=eb.threshold)
        self.checks = load_checks(store, up_to=start_step)
        self.found_at: int | None = None
        for step, heads, neurons in self.checks:  # replay: the detector's state at start_step
            if self.detector.push((heads, neurons)) and self.found_at is None:
                self.found_at = step
        self.stop_training = self.found_at is not None and eb.stop_at_early_bird

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        from bert_ticket_cli.methods.earlybert import draw_ticket

        heads, neurons = self.slimming.scores()
        return draw_ticket(heads, neurons, head_fraction=self.eb.head_fraction,
                           neuron_fraction=self.eb.neuron_fraction, head_scope=self.eb.head_scope,
                           neuron_scope=self.eb.neuron_scope)

    def check(self) -> None:
        ticket = self.draw()
        self.checks.append((self.step, *ticket))
        if self.detector.push(ticket) and self.found_at is None:
            self.found_at = self.step
        if self.main:
            _save_checks(self.store, self.checks)
        if self.found_at is not None and self.eb.stop_at_early_bird:
            self.stop_training = True

    def before_step(self, model) -> None:
        pass

    def after_step(self, model) -> None:
        self.step += 1
        if self.step % self.eb.check_every == 0:
            self.check()

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ticket of the search: the early bird, or (not found) a draw at the last step."""
        if self.found_at is not None:
            return next((h, n) for s, h, n in self.checks if s == self.found_at)
        if not self.checks or self.checks[-1][0] != self.step:
            self.check()
        return self.checks[-1][1], self.checks[-1][2]


# --------------------------------------------------------------------------- the verb

def run(cfg: RunConfig) -> int:
    check_config(cfg)
    from bert_ticket_cli.commands.common import load_inputs, model_state, save_weights, start_engine
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
                print_stages(read_summary(rd))
            return 0
        started = now()

        # ---- inputs (checked before anything is written) ----
        tokenizer, data, theta0 = load_inputs(cfg, engine)
        if not hasattr(getattr(theta0, "base_model", theta0), "encoder"):
            raise UserError(f"method=earlybert needs a BERT encoder; {cfg.model.name} has none")
        init = model_state(theta0)
        dense_params = sum(p.numel() for p in theta0.parameters())
        commit_run(opened, cfg, is_main=main)
        if main and not (rd.root / "rewind" / "weights.safetensors").exists():
            save_weights(init, rd.root / "rewind" / "weights.safetensors")
        engine.accelerator.wait_for_everyone()

        records: dict[str, dict[str, Any]] = {}
        for stage in STAGES:
            if stage == "dense" and not cfg.prune.earlybert.dense_baseline:
                continue
            srd = stage_dir(rd, stage)
            if srd.summary.exists():
                records[stage] = read_summary(srd)
                continue
            latest = srd.latest_checkpoint()
            if latest is not None and not cfg.resume:
                raise UserError(f"{srd.root} was interrupted (checkpoint {latest.name}): pass resume=true to continue it")
            record = _run_stage(stage, cfg, engine, rd, srd, data, tokenizer, init, latest if cfg.resume else None,
                                started, dense_params)
            if record is None:
                return EXIT_PREEMPTED
            records[stage] = record

        if main:
            summary = _write_run_summary(cfg, rd, records, started, dense_params)
            print_stages(summary)
            print(f"compact model: {summary['model_dir']}\n  evaluate: bert-ticket eval task={cfg.task.name} "
                  f"eval.checkpoint={summary['model_dir']}\n  random structured ticket: bert-ticket rewind "
                  f"task={cfg.task.name} ticket={summary['ticket']} ticket.variant=random", flush=True)
        return 0
    finally:
        shutdown(engine.accelerator)


def _run_stage(stage: str, cfg: RunConfig, engine: Any, rd: RunDir, srd: RunDir, data: Any, tokenizer: Any,
               init: dict[str, torch.Tensor], resume: Path | None, started: str,
               dense_params: int) -> dict[str, Any] | None:
    """Train one stage; its record, or None when a stop signal interrupted it."""
    from bert_ticket_cli.commands.common import fit_extra, train_and_evaluate
    from bert_ticket_cli.engine.loop import checkpoint_step
    from bert_ticket_cli.sparsity.ticket import Ticket

    main = engine.main
    eb = cfg.prune.earlybert
    if main:
        print(f"stage {stage}: " + {"search": "slimming coefficients + L1, early-bird checks every "
                                              f"{eb.check_every} steps",
                                    "compact": "the compacted ticket from the pre-trained weights",
                                    "dense": "the full model from the pre-trained weights (baseline)"}[stage],
              flush=True)
    extra: dict[str, Any] = {"role": "stage", "stage": stage, "run_name": f"{rd.root.name}/{stage}"}
    if stage == "search":
        from bert_ticket_cli.model.slimming import Slimming

        search_cfg = copy.deepcopy(cfg)
        if eb.search_steps is not None:
            search_cfg.train.max_steps = eb.search_steps
        holder: dict[str, Any] = {}

        def prepare(model):
            slim = Slimming(model, l1_heads=eb.l1_heads, l1_neurons=eb.l1_neurons)
            holder["search"] = EarlyBirdSearch(slim, eb, srd.root / CHECKS_FILE, start_step=checkpoint_step(resume),
                                               main=main)
            return [holder["search"]], slim.penalty

        trained = train_and_evaluate(search_cfg, engine, data=data, tokenizer=tokenizer, run=srd, init_state=init,
                                     resume_from=resume, prepare=prepare, evaluate=False)
        if trained.result.preempted:
            return None
        search = holder["search"]
        heads, neurons = search.finish()
        if main:
            _save_search_outputs(cfg, rd, search, heads, neurons, dense_params)
        extra.update(early_bird_step=search.found_at, checks=len(search.checks))
    else:
        structure = None
        if stage == "compact":
            ticket = Ticket.load(ticket_dir(rd))
            structure = (ticket.heads, ticket.neurons)
        trained = train_and_evaluate(cfg, engine, data=data, tokenizer=tokenizer, run=srd, init_state=init,
                                     resume_from=resume, structure=structure,
                                     save_model_to=srd.model if stage == "compact" else None)
        if trained.result.preempted:
            return None
        extra.update(params=trained.n_params)
        if stage == "compact":
            extra["model_dir"] = str(srd.model.resolve())
    record = None
    if main:
        record = write_summary(srd, cfg, metrics=trained.metrics, main_metric=trained.main_key, started=started,
                               extra={**fit_extra(cfg, engine, trained), **extra})
    engine.accelerator.wait_for_everyone()
    return record or read_summary(srd)


def _save_search_outputs(cfg: RunConfig, rd: RunDir, search: EarlyBirdSearch, heads: torch.Tensor,
                         neurons: torch.Tensor, dense_params: int) -> None:
    from bert_ticket_cli.methods.earlybert import distance_matrices
    from bert_ticket_cli.sparsity.ticket import Ticket

    eb = cfg.prune.earlybert
    atomic_write_json(rd.root / EARLYBIRD_FILE, {
        "steps": [s for s, _, _ in search.checks],
        **distance_matrices([(h, n) for _, h, n in search.checks]),
        "found_at": search.found_at, "window": eb.window, "threshold": eb.threshold,
        "check_every": eb.check_every,
    })
    meta = {"method": "earlybert", "model": cfg.model.name_or_path or cfg.model.name, "source_task": cfg.task.name,
            "seed": cfg.seed, "rewind_point": "0", "rewind_weights": "../../rewind/weights.safetensors",
            "early_bird_step": search.found_at, "early_bird_found": search.found_at is not None,
            "search_steps": search.step, "head_fraction": eb.head_fraction, "neuron_fraction": eb.neuron_fraction,
            "head_scope": eb.head_scope, "neuron_scope": eb.neuron_scope, "l1_heads": eb.l1_heads,
            "l1_neurons": eb.l1_neurons, "total_model_params": dense_params, "created": now(),
            "prune_run": str(rd.root), "level": 1}
    Ticket({}, heads=heads, neurons=neurons, meta=meta).save(ticket_dir(rd))


def _write_run_summary(cfg: RunConfig, rd: RunDir, records: dict[str, dict[str, Any]], started: str,
                       dense_params: int, more: dict[str, Any] | None = None) -> dict[str, Any]:
    search, compact, dense = records["search"], records["compact"], records.get("dense")
    tdir = ticket_dir(rd).resolve()
    ticket = json.loads((tdir / "ticket.json").read_text())
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
        "dense_main_value": dense["main_value"] if dense else None,
        "dense_metrics": dense["metrics"] if dense else None,
        "time_saving": saving,
        "ticket": str(tdir), "earlybird_file": str((rd.root / EARLYBIRD_FILE).resolve()),
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
        t.add_row("dense baseline", str(summary["compact_steps"]), fmt(summary["dense_time_s"], ".1f"),
                  fmt(summary["dense_main_value"], ".4f"), f"{summary['dense_params']:,}")
    (Console() if sys.stdout.isatty() else Console(width=160)).print(t)
    if summary.get("time_saving") is not None:
        print(f"search + compact training took {100 * (1 - summary['time_saving']):.1f}% of the dense training time "
              f"(saving {100 * summary['time_saving']:.1f}%)", flush=True)
