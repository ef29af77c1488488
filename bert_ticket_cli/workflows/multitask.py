"""Multi-task learning with shared tickets (Liang et al., ACL 2021): ``rewind task=multi``.

One pre-trained encoder shared by ``multitask.tasks``, a fresh head per task
(:class:`~bert_ticket_cli.model.multitask.MultiTaskBert`).  Every optimizer step trains one
task's global batch (:func:`~bert_ticket_cli.engine.batches.grouped_order`: proportional,
uniform or temperature sampling, a pure function of (seed, epoch), the same for any process
count, so a resume is exact); the batch runs the encoder through that task's structured ticket
(masks as multiplications), so shared weights get gradient only from the tasks whose ticket
keeps them, and each task is evaluated through its own ticket.  Without tickets this is the
dense multi-task baseline (MT-DNN); with ``multitask.tickets`` / ``multitask.tickets_from`` it
is Tickets-Share: one config difference.

::

    runs/rewind/<run>/
      config.yaml  metrics.jsonl  summary.json   every task's metrics ("<task>/<metric>"), the average
      checkpoints/                               resumable state (one training)
      model/                                     encoder/ (HF format), heads.safetensors, tickets/<task>/,
                                                 multitask.json (reload: bert-ticket eval eval.checkpoint=...)
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.records import note_data, task_data_fingerprint, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import command, name_local_model
from bert_ticket_cli.workflows.stages import Preempted, Run, run_workflow
from bert_ticket_cli.workflows.training import check_batch_plan, fit_extra


def run(cfg: RunConfig) -> int:
    name_local_model(cfg)
    # The other tasks' heads are idle in a step: DDP must tolerate unused parameters.
    return run_workflow(cfg, train_multitask, on_finished=print_tasks, find_unused_parameters=True)


# ------------------------------------------------------------------------------ data

class Tagged(torch.utils.data.Dataset):
    """A task's training rows, each tagged with the task's id."""

    def __init__(self, dataset: Any, task: int):
        self.dataset, self.task = dataset, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[int(i)], "task": self.task}


class MultiCollate:
    """Collates a batch of one task's rows with that task's collator, adding ``task``."""

    def __init__(self, collates: list[Any]):
        self.collates = collates

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tasks = {r["task"] for r in rows}
        if len(tasks) != 1:
            raise RuntimeError(f"a multi-task batch mixes tasks {sorted(tasks)}")
        task = tasks.pop()
        batch = self.collates[task]([{k: v for k, v in r.items() if k != "task"} for r in rows])
        batch["task"] = torch.full((len(rows),), task, dtype=torch.long)
        return batch


class TaskView(torch.nn.Module):
    """The multi-task model as one task's model (what the evaluator calls)."""

    def __init__(self, model: torch.nn.Module, task: int):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, **batch: Any) -> Any:
        ids = batch["input_ids"]
        return self.model(task=torch.full((ids.shape[0],), self.task, dtype=torch.long, device=ids.device), **batch)


def task_config(cfg: RunConfig, name: str) -> RunConfig:
    """``cfg`` with ``task.name`` = one of the tasks (task.* settings shared)."""
    return replace(cfg, task=replace(cfg.task, name=name))


def load_all(cfg: RunConfig, session: Any, tokenizer: Any) -> dict[str, Any]:
    from bert_ticket_cli.tasks import load_task_data

    datas = {}
    with session.main_process_first():
        for name in cfg.multitask.tasks:
            data = load_task_data(task_config(cfg, name), tokenizer, train=True)
            if data.info.kind not in ("classification", "regression"):
                raise UserError(f"multitask.tasks: {name} is a {data.info.kind} task; multi-task learning takes "
                                f"GLUE classification and regression tasks")
            datas[data.info.name] = data
    note_data({f"{name}/{split}": fp for name, data in datas.items()
               for split, fp in task_data_fingerprint(data).items()})
    return datas


# ------------------------------------------------------------------------------ tickets

def resolve_tickets(cfg: RunConfig) -> dict[str, Any]:
    """``{task: Ticket}``: the named ones, then the automatic picks for the other tasks."""
    from bert_ticket_cli.sparsity.ticket import Ticket

    m = cfg.multitask
    tickets = {}
    for name, path in m.tickets.items():
        tickets[name] = Ticket.load(path)
        tickets[name].meta["path"] = str(Path(path).resolve())
    if m.tickets_from:
        for name in m.tasks:
            if name not in tickets:
                path = pick_super_ticket(Path(m.tickets_from), name, cfg)
                if path is not None:
                    tickets[name] = Ticket.load(path)
                    tickets[name].meta["path"] = str(path)
    for name, ticket in tickets.items():
        if ticket.kind != "structured" or ticket.heads is None or ticket.neurons is None:
            raise UserError(f"the ticket for {name} ({ticket.meta.get('path')}) is not a structured ticket (heads and "
                            f"FFN units): use a super-ticket or EarlyBERT ticket")
    return tickets


#: Settings of a super-ticket run that do not make it another experiment, beyond the ones that
#: never change a result (``artifacts.paths.NON_IDENTITY_KEYS``: run control, tracking, launcher).
_NOT_EXPERIMENT = ("seed", "engine", "method.random_seed", "method.kinds", "method.train_tickets",
                   "method.save_models", "train.eval_every", "train.micro_batch_size")


def pick_super_ticket(root: Path, task: str, cfg: RunConfig) -> Path | None:
    """The super ticket of ``task`` among the super-ticket runs under ``root``: the winning level
    with the best mean dev score over seeds (ties: the lower level), the ticket of the run with
    this run's seed when there is one (else the lowest seed's).  None when ``root`` holds no run
    of the task; several experiments of the task (other settings) are a UserError."""
    from bert_ticket_cli.artifacts.index import walk_files
    from bert_ticket_cli.artifacts.paths import experiment_settings, flatten

    if not root.is_dir():
        raise UserError(f"multitask.tickets_from={root} is not a folder of runs")
    found = []
    for path in walk_files(root, "summary.json"):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("role") == "super_ticket" and rec.get("kind") == "winning" and rec.get("task") == task:
            found.append(rec)
    if not found:
        return None

    def experiment(rec: dict[str, Any]) -> str:
        settings = experiment_settings(flatten(rec.get("config") or {}), _NOT_EXPERIMENT)
        return json.dumps(sorted(settings.items()), default=str)

    experiments = {experiment(r) for r in found}
    if len(experiments) > 1:
        raise UserError(f"multitask.tickets_from={root} holds {len(experiments)} super-ticket experiments of {task} "
                        f"(other settings): name the ticket with multitask.tickets.{task}=PATH")
    by_level: dict[float, list[dict[str, Any]]] = {}
    for r in found:
        if r.get("main_value") is not None:
            by_level.setdefault(float(r["level"]), []).append(r)
    best = max(sorted(by_level), key=lambda lvl: statistics.mean(r["main_value"] for r in by_level[lvl]))
    runs = sorted(by_level[best], key=lambda r: (r.get("seed") != cfg.seed, r.get("seed")))
    return Path(runs[0]["ticket"])


# ------------------------------------------------------------------------------ the run

def train_multitask(run: Run) -> int:
    from bert_ticket_cli.engine.batches import grouped_order
    from bert_ticket_cli.model.build import build_model, load_tokenizer
    from bert_ticket_cli.model.multitask import MultiTaskBert

    cfg, session, rd, main = run.cfg, run.session, run.dir, run.main
    m = cfg.multitask

    # ---- inputs, all checked before the run folder changes ----
    tokenizer = load_tokenizer(cfg.model, task_config(cfg, m.tasks[0]).task)
    datas = load_all(cfg, session, tokenizer)
    names = list(datas)
    tickets = resolve_tickets(cfg)
    for data in datas.values():
        check_batch_plan(data.train, session)
    session.set_seed(cfg.seed)
    theta0 = build_model(cfg.model, kind="classification", num_labels=2, vocab_size=len(tokenizer))
    for name, ticket in tickets.items():
        ticket.check_fits(theta0)
    model = MultiTaskBert(theta0.base_model, {n: datas[n].info.num_labels for n in names},
                          {n: t.structure for n, t in tickets.items()})
    sizes = [len(datas[n].train) for n in names]
    train_set = torch.utils.data.ConcatDataset([Tagged(datas[n].train, i) for i, n in enumerate(names)])
    collate = MultiCollate([datas[n].collate for n in names])
    G = session.plan.global_batch
    _, groups = grouped_order(sizes, G, cfg.seed, 0, sampling=m.sampling, temperature=m.temperature)
    per_epoch = len(groups)

    def order(epoch: int):
        return grouped_order(sizes, G, cfg.seed, epoch, sampling=m.sampling, temperature=m.temperature)[0]

    evaluators = {n: session.evaluator(datas[n], cfg.eval.batch_size) for n in names}
    main_keys = {n: datas[n].main_metric_key() for n in names}

    def evaluate(trained: torch.nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, n in enumerate(names):
            scores = evaluators[n](TaskView(trained, i))
            out.update({f"{n}/{k}": v for k, v in scores.items()})
        out["average"] = statistics.mean(out[f"{n}/{main_keys[n]}"] for n in names)
        return out

    kept = {n: model.kept_fraction(n) for n in names}
    run.commit()
    session.wait_for_everyone()
    if main:
        for n in names:
            what = f"ticket {tickets[n].meta['path']}" if n in tickets else "dense"
            print(f"  {n}: {sizes[names.index(n)]} train examples, {what} (encoder kept {kept[n]:.3f})", flush=True)
        print(f"run {rd.root}: {len(names)} tasks sharing one encoder, {per_epoch} steps per epoch "
              f"({m.sampling} sampling), {session.describe()}", flush=True)

    # ---- train ----
    result = session.fit(model=model, train_dataset=train_set, collate=collate, train=cfg.train, seed=cfg.seed,
                         run=rd, evaluate=evaluate, resume_from=run.opened.resume_from, hooks=[],
                         num_workers=cfg.engine.num_workers, label="multitask", order=order, per_epoch=per_epoch)
    if result.preempted:
        raise Preempted(rd.root)
    metrics = {k: v for k, v in (result.state.evals[-1] if result.state.evals else {}).items()
               if k not in ("event", "step", "elapsed_s")}

    # ---- save and record ----
    if main:
        trained = session.unwrap_model(result.model)
        trained.save(rd.model, tokenizer, tickets, spec={
            "task_settings": {"data_dir": cfg.task.data_dir, "max_seq_length": cfg.task.max_seq_length,
                              "max_eval_samples": cfg.task.max_eval_samples},
            "main_metrics": main_keys, "kept_fraction": kept})
        from bert_ticket_cli.workflows.training import Trained

        facts = fit_extra(cfg, session, Trained(result=result, metrics=metrics, main_key="average",
                                                n_params=sum(p.numel() for p in trained.parameters())))
        summary = write_summary(rd, cfg, metrics=metrics, main_metric="average", started=run.started, extra={
            **facts, "role": "multitask", "tasks": names, "sampling": m.sampling,
            "tickets": {n: tickets[n].meta["path"] for n in tickets},
            "tickets_share": bool(tickets), "kept_fraction": kept,
            "kept_fraction_mean": statistics.mean(kept.values()),
            "task_main_metrics": {n: metrics.get(f"{n}/{main_keys[n]}") for n in names},
            "model_dir": str(rd.model.resolve()),
        })
        print_tasks(summary)
        print(f"model saved to {rd.model}; evaluate again with: " + command(
            "eval", f"eval.checkpoint={rd.model}", f"output_dir={cfg.output_dir}"), flush=True)
    session.wait_for_everyone()
    return 0


def print_tasks(summary: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{summary['run_name']}: multi-task, {'tickets-share' if summary.get('tickets_share') else 'dense'}"
                    f" (average {summary['main_value']:.4f})")
    for col in ("task", "metric", "value", "encoder kept", "ticket"):
        t.add_column(col, justify="left" if col in ("task", "metric", "ticket") else "right")
    metrics = summary.get("metrics", {})
    for name in summary.get("tasks", []):
        for key in sorted(k for k in metrics if k.startswith(name + "/")):
            t.add_row(name, key.split("/", 1)[1], f"{metrics[key]:.4f}",
                      f"{summary.get('kept_fraction', {}).get(name, 1.0):.3f}",
                      summary.get("tickets", {}).get(name) or "dense")
    (Console() if sys.stdout.isatty() else Console(width=200)).print(t)
