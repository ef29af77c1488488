"""Super tickets (Liang et al., ACL 2021): ``prune method=super_tickets``.

1. **dense**: fine-tune the full model from the pre-trained weights (level 0: the full-model
   baseline); its model is saved, the importance pass reads it;
2. **importance**: one pass over the training split, model in eval mode, batches in order, the
   fine-tuned weights fixed: ``|dL/dxi|`` of a gate on every head and FFN unit, summed over
   batches (:class:`~bert_ticket_cli.model.gates.ImportanceProbe`); saved as
   ``importance.safetensors`` + ``importance.json``.  A stop signal mid-pass saves the partial
   sums (``importance.partial.safetensors``) and ``resume=true`` continues from there;
3. **tickets**: the nested winning / random / losing tickets of every level
   (:func:`~bert_ticket_cli.methods.super_tickets.nested_tickets`), structured Tickets;
4. **training**: every ticket from the pre-trained weights with the initial task head (the
   same start as the dense run), a fresh optimizer and schedule, the dense run's settings,
   physically compacted (:func:`~bert_ticket_cli.model.compact.compact_`; a removed FFN
   sub-layer leaves ``LayerNorm(attention_output)``).

Every training is a sub-run (:func:`.stages.run_stages`): a finished one is skipped, an
interrupted one resumes with ``resume=true``.  The tickets are a pure function of the scores
and the seed, written once.

::

    runs/prune/<run>/
      config.yaml  summary.json           the run: one row per kind and level, the super ticket
      rewind/weights.safetensors          pre-trained weights + the initial task head
      importance.safetensors  importance.json
      tickets/<kind>-<level>/             e.g. tickets/winning-0.30 (shared Ticket format)
      levels/dense/                       the full model (model/ kept)
      levels/<kind>-<level>/              one ticket's training (model/ per method.save_models)
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.artifacts.paths import REWIND_FROM_TICKET, RunDir, atomic_write_json
from bert_ticket_cli.artifacts.records import now, resumes, write_summary
from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.workflows.context import command, model_args, name_local_model, source_model, task_args
from bert_ticket_cli.workflows.earlybert import save_rewind_point
from bert_ticket_cli.workflows.stages import Preempted, Run, run_stages, run_workflow
from bert_ticket_cli.workflows.training import (
    TrainSpec, fit_extra, load_into, load_inputs, model_state, train_and_evaluate,
)

DENSE = "dense"


def run(cfg: RunConfig, method: Any) -> int:
    name_local_model(cfg)
    return run_workflow(cfg, lambda r: find_super_tickets(r, method), on_finished=print_table)


def find_super_tickets(run: Run, method: Any) -> int:
    from bert_ticket_cli.model.compact import encoder_layer_params, structure_params
    from bert_ticket_cli.sparsity.prunable import model_id

    cfg, session, rd, main = run.cfg, run.session, run.dir, run.main
    st = cfg.method

    # ---- inputs, checked before anything is written ----
    tokenizer, data, theta0 = load_inputs(cfg, session)
    base = getattr(theta0, "base_model", theta0)
    if not hasattr(base, "encoder"):
        raise UserError(f"method=super_tickets needs a BERT encoder; {cfg.model.name} has none")
    config = theta0.config
    n_layers, n_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    if st.min_heads_per_layer > n_heads:
        raise UserError(f"method.min_heads_per_layer={st.min_heads_per_layer} is more than the model's {n_heads} "
                        f"heads per layer: use 0..{n_heads}")
    seed = cfg.seed if st.random_seed is None else st.random_seed
    # The level plan is checked now (e.g. too many heads for min_heads_per_layer), on dummy scores.
    dummy_ffn = torch.zeros(n_layers) if st.ffn_unit == "layer" else torch.zeros(n_layers, config.intermediate_size)
    method.tickets(torch.zeros(n_layers, n_heads), dummy_ffn, st, "winning", seed=seed,
                   intermediate_size=int(config.intermediate_size))
    init = model_state(theta0)
    dense_params = sum(p.numel() for p in theta0.parameters())
    dense_encoder = encoder_layer_params(theta0)
    model_class = type(theta0)
    run.commit()
    save_rewind_point(run, init)
    meta = {"method": "super_tickets", "model": cfg.model.name_or_path or cfg.model.name, "model_id": model_id(theta0),
            "source_task": cfg.task.name, "seed": cfg.seed, "random_seed": seed, "rewind_point": "0",
            "rewind_weights": REWIND_FROM_TICKET, "total_model_params": dense_params,
            "ffn_unit": st.ffn_unit, "normalize_heads": st.normalize_heads,
            "min_heads_per_layer": st.min_heads_per_layer, "preserve_layer_ratio": st.preserve_layer_ratio,
            "source_model": source_model(cfg), "train": asdict(cfg.train), "prune_run": str(rd.root)}

    def train_one(key: tuple[str, float], srd: RunDir, resume: Path | None) -> dict[str, Any] | None:
        kind, level = key
        started = now()
        name = DENSE if kind == "full" else RunDir.super_name(kind, level)
        structure, ticket_dir, facts = None, None, {}
        if kind != "full":
            from bert_ticket_cli.sparsity.ticket import Ticket

            ticket_dir = rd.super_ticket(name)
            ticket = Ticket.load(ticket_dir)
            structure = ticket.structure
            facts = {k: ticket.meta[k] for k in ("head_fraction", "ffn_fraction", "heads_kept", "heads_total",
                                                  "ffn_kept", "ffn_total")}
        save = kind == "full" or st.save_models == "all" or (st.save_models == "winning" and kind == "winning")
        if main:
            what = "the full model" if kind == "full" else f"{kind} ticket, level {level:.2f} (compacted)"
            print(f"super tickets {name}: {what} from the pre-trained weights", flush=True)
        trained = train_and_evaluate(cfg, session, data, tokenizer, srd, TrainSpec(
            init_state=init, resume_from=resume, structure=structure, save_model_to=srd.model if save else None,
            label=name))
        if structure is not None:
            params, encoder = structure_params(model_class, config, *structure)
        else:
            params, encoder = dense_params, dense_encoder
        record = None
        if main:
            record = write_summary(srd, cfg, metrics=trained.metrics, main_metric=trained.main_key, started=started,
                                   extra={
                **fit_extra(cfg, session, trained),
                "role": "super_ticket", "run_name": f"{rd.root.name}/{name}", "kind": kind, "level": level,
                "head_fraction": 0.0, "ffn_fraction": 0.0, "ffn_unit": st.ffn_unit,
                "heads_kept": n_layers * n_heads, "heads_total": n_layers * n_heads,
                "ffn_kept": int(dummy_ffn.numel()), "ffn_total": int(dummy_ffn.numel()),
                **facts,
                "params": params, "dense_params": dense_params, "encoder_params": encoder,
                "dense_encoder_params": dense_encoder, "kept_fraction": encoder / dense_encoder,
                "kept_fraction_total": params / dense_params,
                "ticket": str(ticket_dir.resolve()) if ticket_dir is not None else None,
                "model_dir": str(srd.model.resolve()) if save else None,
                "prune_run": str(rd.root.resolve()),
            })
        session.wait_for_everyone()
        return record

    # ---- 1. the full model ----
    records = run_stages(run, [(("full", 0.0), rd.super_level(DENSE))], train_one)

    # ---- 2. importance, 3. tickets ----
    heads, ffn = importance(run, method, data, tokenizer)
    if main:
        write_tickets(cfg, rd, method, heads, ffn, meta, seed, int(config.intermediate_size))
    session.wait_for_everyone()

    # ---- 4. every ticket ----
    if st.train_tickets:
        plan = [((kind, float(level)), rd.super_level(RunDir.super_name(kind, level)))
                for level in st.levels for kind in st.kinds]
        run_stages(run, plan, train_one, records)
    if main:
        summary = write_run_summary(cfg, rd, records, run.started)
        print_table(summary)
        best = summary.get("super_ticket")
        if best:
            ticket = rd.super_ticket(RunDir.super_name("winning", best["level"])).resolve()
            print("train the super ticket again (e.g. another seed): " + command(
                "rewind", f"ticket={ticket}", *model_args(cfg), *task_args(cfg), f"output_dir={cfg.output_dir}"),
                flush=True)
        elif not st.train_tickets:
            print(f"tickets written to {(rd.root / 'tickets').resolve()}; train one with: " + command(
                "rewind", f"ticket={rd.super_ticket(RunDir.super_name('winning', st.levels[0])).resolve()}",
                *model_args(cfg), *task_args(cfg), f"output_dir={cfg.output_dir}"), flush=True)
    return 0


# ------------------------------------------------------------------------------ importance

def importance(run: Run, method: Any, data: Any, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance scores: read when saved, else one pass over the training split (resumed
    from ``importance.partial.safetensors`` with ``resume=true``)."""
    from safetensors.torch import load_file, save_file

    from bert_ticket_cli.model.build import build_model

    cfg, session, rd, main = run.cfg, run.session, run.dir, run.main
    st = cfg.method
    if rd.importance.exists():
        saved = load_file(str(rd.importance))
        return saved["heads"], saved["ffn"]
    start, partial = 0, None
    if rd.importance_partial.exists():
        if not resumes(cfg):
            raise UserError(f"{rd.root}: the importance pass was interrupted: pass resume=true to continue it")
        partial = load_file(str(rd.importance_partial))
        start = int(partial["next_batch"].item())
    session.check_stop("before the importance pass")
    session.set_seed(cfg.seed)
    model = build_model(cfg.model, kind=data.info.kind, num_labels=data.info.num_labels, vocab_size=len(tokenizer))
    state = _saved_weights(rd.super_level(DENSE).model)
    missing = sorted(set(model.state_dict()) - set(state))
    if missing or load_into(model, state) != len(model.state_dict()):
        raise UserError(f"{rd.super_level(DENSE).model} does not hold every weight of the model (e.g. "
                        f"{(missing or ['a shape mismatch'])[0]}): re-run with overwrite=true")
    for p in model.parameters():  # only the gates need gradients: no weight gradients are computed
        p.requires_grad_(False)
    probe = method.probe(model, st)
    if partial is not None and main:  # the other processes add their own new batches to zeros
        probe.load(partial["heads"], partial["ffn"], start)
    batch_size = cfg.train.batch_size
    if main:
        n = -(-len(data.train) // batch_size)
        n = n if st.importance_batches is None else min(n, st.importance_batches)
        print(f"importance: {n} batches of {batch_size} from the training split (eval mode, fixed order)"
              + (f", continuing at batch {start}" if start else ""), flush=True)
    t0 = time.perf_counter()
    done, stopped = session.gradient_pass(model, data.train, data.collate, batch_size, after_backward=probe.accumulate,
                                          start=start, max_batches=st.importance_batches,
                                          should_stop=session.stop_requested, num_workers=cfg.engine.num_workers)
    elapsed = time.perf_counter() - t0 + (float(partial["time_s"].item()) if partial is not None else 0.0)
    heads, ffn = probe.scores()
    heads, ffn = session.reduce_sum(heads), session.reduce_sum(ffn)
    probe.remove()
    if stopped:
        if main:
            tmp = rd.importance_partial.with_name(".tmp-" + rd.importance_partial.name)
            save_file({"heads": heads, "ffn": ffn, "next_batch": torch.tensor([done]),
                       "time_s": torch.tensor([elapsed], dtype=torch.float64)}, str(tmp))
            tmp.replace(rd.importance_partial)
            print(f"importance pass stopped after batch {done}: resume with resume=true", flush=True)
        session.wait_for_everyone()
        raise Preempted(rd.root)
    heads, ffn = heads.float(), ffn.float()
    if main:
        tmp = rd.importance.with_name(".tmp-" + rd.importance.name)
        save_file({"heads": heads, "ffn": ffn}, str(tmp))
        atomic_write_json(rd.importance_json, {
            "batches": done, "batch_size": batch_size, "examples": min(done * batch_size, len(data.train)),
            "time_s": round(elapsed, 3), "ffn_unit": st.ffn_unit, "mode": "eval", "split": "train",
            "estimate": "sum over batches of |dL/dxi| (gradients cleared after every batch)",
            "heads_per_layer": heads.sum(1).tolist(),
            "ffn_per_layer": (ffn if ffn.dim() == 1 else ffn.sum(1)).tolist(),
        })
        tmp.replace(rd.importance)  # last: its presence means the pass is complete
        rd.importance_partial.unlink(missing_ok=True)
        print(f"importance: {done} batches in {elapsed:.1f}s", flush=True)
    session.wait_for_everyone()
    return heads, ffn


def _saved_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir} holds no safetensors weights: the full model's folder is incomplete; "
                        f"re-run with overwrite=true")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


# ------------------------------------------------------------------------------ tickets

def write_tickets(cfg: RunConfig, rd: RunDir, method: Any, heads: torch.Tensor, ffn: torch.Tensor,
                  meta: dict[str, Any], seed: int, intermediate_size: int) -> None:
    """Every kind's ticket at every level (those already written are left: they are a pure
    function of the scores and the seed)."""
    from bert_ticket_cli.methods.super_tickets import level_fractions
    from bert_ticket_cli.sparsity.ticket import Ticket

    st = cfg.method
    fractions = level_fractions(list(st.levels), st.head_levels, st.ffn_levels)
    for kind in st.kinds:
        folders = [rd.super_ticket(RunDir.super_name(kind, level)) for level in st.levels]
        if all((f / "ticket.json").exists() for f in folders):
            continue
        for level, (hf, ff), folder, (h, n, layers) in zip(
                st.levels, fractions, folders,
                method.tickets(heads, ffn, st, kind, seed=seed, intermediate_size=intermediate_size)):
            ffn_kept = int(layers.sum()) if layers is not None else int(n.sum())
            ffn_total = int(layers.numel()) if layers is not None else int(n.numel())
            Ticket({}, heads=h, neurons=n, ffn_layers=layers, meta={
                **meta, "kind": kind, "level": float(level), "head_fraction": hf, "ffn_fraction": ff,
                "heads_kept": int(h.sum()), "heads_total": int(h.numel()), "ffn_kept": ffn_kept,
                "ffn_total": ffn_total, "created": now()}).save(folder)


# ------------------------------------------------------------------------------ the record

ROW_KEYS = ("kind", "level", "main_value", "metrics", "kept_fraction", "kept_fraction_total", "params",
            "encoder_params", "train_time_s", "run_name")


def write_run_summary(cfg: RunConfig, rd: RunDir, records: dict[Any, dict[str, Any]], started: str) -> dict[str, Any]:
    rows = [{k: r.get(k) for k in ROW_KEYS} for r in records.values()]
    full = records[("full", 0.0)]
    winning = [r for r in rows if r["kind"] == "winning" and r["main_value"] is not None]
    best = max(winning, key=lambda r: r["main_value"]) if winning else None
    super_ticket = None if best is None else {"level": best["level"], "main_value": best["main_value"],
                                              "kept_fraction": best["kept_fraction"]}
    return write_summary(rd, cfg, metrics=full["metrics"], main_metric=full["main_metric"], started=started, extra={
        "role": "super_tickets", "rows": rows, "super_ticket": super_ticket, "full_main_value": full["main_value"],
        "levels": list(cfg.method.levels), "kinds": list(cfg.method.kinds),
        "steps": full["steps"], "train_time_s": sum(r.get("train_time_s") or 0.0 for r in records.values()),
    })


def print_table(summary: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    key = summary["main_metric"]
    best = summary.get("super_ticket") or {}
    t = Table(title=f"{summary['run_name']}: super tickets on {summary['task']} ({key}; full model "
                    f"{summary['full_main_value']:.4f})")
    for col in ("kind", "level", "encoder kept", key, "train time (s)", ""):
        t.add_column(col, justify="left" if col in ("kind", "") else "right")
    for r in sorted(summary.get("rows", []), key=lambda r: (r["level"], r["kind"])):
        mark = "super ticket" if r["kind"] == "winning" and r["level"] == best.get("level") else ""
        t.add_row(r["kind"], f"{r['level']:.2f}", f"{r['kept_fraction']:.3f}",
                  "-" if r["main_value"] is None else f"{r['main_value']:.4f}",
                  f"{r['train_time_s']:.1f}" if r.get("train_time_s") is not None else "-", mark)
    (Console() if sys.stdout.isatty() else Console(width=160)).print(t)
