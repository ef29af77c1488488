"""Every value rule of the configuration: one rule set per section, one list of sections per verb.

:func:`bert_ticket_cli.config.compose.validate` runs :func:`check` right after the types are
checked, so every problem of a command line is reported at once (``invalid config: a; b; c``),
exit 2, before anything starts; the workflows check nothing themselves.  A rule that reads two
sections (``prune.reset_head`` and ``task``) lives with the section it is about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from bert_ticket_cli.errors import UserError

#: What ``pretrain method=`` accepts.
PRETRAIN_METHODS = ("dense", "earlybert")

#: What ``report view=`` accepts.
REPORT_VIEWS = ("runs", "tickets", "earlybert", "pretrain", "super_tickets", "multitask")

#: ``tracking.log_with`` names -> the modules that must import for it (any one of them).
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "aim": ("aim",),
    "trackio": ("trackio",),
}

#: A run name is one path component of these characters (not starting with . or -).
RUN_NAME_RE = re.compile(r"[A-Za-z0-9_+=][A-Za-z0-9._+=-]*")
RUN_NAME_MAX = 200


def _run(cfg: Any) -> list[str]:
    """The run's identity: ``run_name`` is a folder name, never a path; ``resume`` is true,
    false or auto."""
    errs = [] if cfg.resume in (True, False, "auto") else [f"'resume' must be true, false or auto, got {cfg.resume!r}"]
    return errs + _run_name(cfg) + _launcher(cfg)


#: What ``launcher=`` accepts.
LAUNCHERS = ("local", "slurm")


def _launcher(cfg: Any) -> list[str]:
    la, errs = cfg.launcher, []
    if la.name not in LAUNCHERS:
        errs.append(f"'launcher.name' must be one of {', '.join(LAUNCHERS)}, got {la.name!r}")
    if la.sweep_id is not None and not RUN_NAME_RE.fullmatch(str(la.sweep_id)):
        errs.append(f"'launcher.sweep_id' must be one folder name of letters, digits and . _ + = -, got {la.sweep_id!r}")
    if la.local.parallel < 1:
        errs.append(f"'launcher.local.parallel' must be >= 1, got {la.local.parallel}")
    sl = la.slurm
    for name in ("timeout_min", "nodes", "tasks_per_node", "array_parallelism"):
        if getattr(sl, name) < 1:
            errs.append(f"'launcher.slurm.{name}' must be >= 1, got {getattr(sl, name)}")
    for name in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if getattr(sl, name) is not None and getattr(sl, name) < (0 if name == "gpus_per_node" else 1):
            errs.append(f"'launcher.slurm.{name}' must be positive, got {getattr(sl, name)}")
    if sl.signal_delay_s < 0 or sl.max_num_timeout < 0:
        errs.append("'launcher.slurm.signal_delay_s' and 'launcher.slurm.max_num_timeout' must be >= 0")
    import signal as _signal

    sig = str(sl.signal).upper()
    if not hasattr(_signal, sig if sig.startswith("SIG") else "SIG" + sig) or sig.removeprefix("SIG") in ("KILL", "STOP"):
        errs.append(f"'launcher.slurm.signal' must be a signal name such as USR2 or USR1, got {sl.signal!r}")
    return errs


def _run_name(cfg: Any) -> list[str]:
    name = cfg.run_name
    if name is None:
        return []
    name = str(name)
    if len(name) > RUN_NAME_MAX:
        return [f"run_name must be at most {RUN_NAME_MAX} characters, got {len(name)}"]
    if not RUN_NAME_RE.fullmatch(name):
        return [f"run_name must be one folder name of letters, digits and . _ + = - (not starting with . or -), "
                f"got {name!r}"]
    return []


def _train(cfg: Any) -> list[str]:
    t, errs = cfg.train, []
    if t.batch_size <= 0:
        errs.append(f"'train.batch_size' must be > 0, got {t.batch_size}")
    if t.micro_batch_size is not None and t.micro_batch_size <= 0:
        errs.append(f"'train.micro_batch_size' must be > 0, got {t.micro_batch_size}")
    if t.lr <= 0:
        errs.append(f"'train.lr' must be > 0, got {t.lr}")
    if t.epochs <= 0 and not t.max_steps:
        errs.append(f"'train.epochs' must be > 0, got {t.epochs}")
    if t.max_steps is not None and t.max_steps <= 0:
        errs.append(f"'train.max_steps' must be > 0, got {t.max_steps}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        errs.append(f"'train.warmup_ratio' must be in [0, 1), got {t.warmup_ratio}")
    if t.schedule not in ("linear", "constant"):
        errs.append(f"'train.schedule' must be linear or constant, got {t.schedule!r}")
    for name in ("warmup_steps", "eval_every", "save_every", "max_grad_norm"):
        if getattr(t, name) < 0:
            errs.append(f"'train.{name}' must be >= 0, got {getattr(t, name)}")
    if t.log_every <= 0:
        errs.append(f"'train.log_every' must be > 0, got {t.log_every}")
    if t.keep_checkpoints < 1:
        errs.append(f"'train.keep_checkpoints' must be >= 1, got {t.keep_checkpoints}")
    return errs


def _engine(cfg: Any) -> list[str]:
    e = cfg.engine
    if e.mixed_precision not in ("no", "bf16", "fp16"):
        return [f"'engine.mixed_precision' must be no, bf16 or fp16, got {e.mixed_precision!r}"]
    if e.compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if e.compile_backend not in backends:
            return [f"'engine.compile_backend' must be one of {', '.join(sorted(backends))}, got {e.compile_backend!r}"]
    return []


def _task(cfg: Any) -> list[str]:
    k, errs = cfg.task, []
    if k.max_seq_length < 8:
        errs.append(f"'task.max_seq_length' must be >= 8, got {k.max_seq_length}")
    for name in ("max_train_samples", "max_eval_samples"):
        v = getattr(k, name)
        if v is not None and v <= 0:
            errs.append(f"'task.{name}' must be > 0, got {v}")
    return errs


def _multitask(cfg: Any) -> list[str]:
    """``rewind``'s multi-task settings: ``task=multi`` and ``multitask.tasks`` go together."""
    m, errs = cfg.multitask, []
    multi = cfg.task.name == "multi"
    if multi and len(m.tasks) < 2:
        errs.append(f"task=multi needs multitask.tasks with two or more tasks, e.g. multitask.tasks=[sst2,mrpc], "
                    f"got {list(m.tasks)}")
    if not multi and (m.tasks or m.tickets or m.tickets_from):
        errs.append("multitask.* is for task=multi (several tasks sharing one encoder): add task=multi")
    dup = sorted({t for t in m.tasks if list(m.tasks).count(t) > 1})
    if dup:
        errs.append(f"multitask.tasks lists {dup[0]} twice: each task once")
    for t in m.tasks:
        if t in ("multi", "mlm", "squad", "synthetic"):
            errs.append(f"multitask.tasks: {t} is not a GLUE classification or regression task")
    stray = sorted(set(m.tickets) - set(m.tasks))
    if stray:
        errs.append(f"multitask.tickets names {stray[0]}, which is not in multitask.tasks {list(m.tasks)}")
    if m.sampling not in ("proportional", "uniform", "temperature"):
        errs.append(f"multitask.sampling must be proportional, uniform or temperature, got {m.sampling!r}")
    if m.temperature <= 0:
        errs.append(f"multitask.temperature must be > 0, got {m.temperature}")
    if multi and cfg.ticket.path is not None:
        errs.append("task=multi takes one ticket per task (multitask.tickets / multitask.tickets_from), not ticket=")
    return errs


def _model(cfg: Any) -> list[str]:
    if cfg.model.attn_implementation not in ("sdpa", "eager"):
        return [f"'model.attn_implementation' must be sdpa or eager, got {cfg.model.attn_implementation!r}"]
    return []


def _tracking(cfg: Any) -> list[str]:
    """Known trackers, each installed: refused here, before anything is written, rather than
    Accelerate's warning and a run that silently logs nowhere."""
    import importlib.util

    errs, names = [], list(cfg.tracking.log_with)
    for name in names:
        if name not in TRACKERS:
            errs.append(f"tracking.log_with: unknown tracker {name!r} (choose from: {', '.join(TRACKERS)})")
        elif not any(importlib.util.find_spec(m) for m in TRACKERS[name]):
            errs.append(f"tracking.log_with={name} but {TRACKERS[name][0]} is not installed: "
                        f"pip install {TRACKERS[name][0]}")
    if len(set(names)) != len(names):
        errs.append(f"tracking.log_with names a tracker twice: {names}")
    if not str(cfg.tracking.project).strip():
        errs.append("tracking.project must not be empty")
    return errs


def _prune(cfg: Any) -> list[str]:
    """``prune``'s search settings (imp, omp, random)."""
    p, errs = cfg.prune, []
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
    return errs + _pattern(cfg) + _earlybert_prune(cfg)


def _pattern(cfg: Any) -> list[str]:
    """``prune.pattern=N:M``: one ticket at sparsity 1 - N/M (IMP: one level, see README)."""
    from bert_ticket_cli.sparsity.nm import nm_sparsity, parse_pattern

    p = cfg.prune
    try:
        nm = parse_pattern(p.pattern)
    except UserError as exc:
        return [str(exc)]
    if nm is None:
        return []
    errs, name = [], f"prune.pattern={nm[0]}:{nm[1]}"
    if cfg.method.name not in ("imp", "omp", "random"):
        errs.append(f"{name} is for method=imp, omp or random, not method={cfg.method.name}")
    if cfg.method.name == "imp" and p.levels != 1:
        errs.append(f"{name} fixes the sparsity at {nm_sparsity(nm):g}, so IMP has one level (prune, rewind, "
                    f"retrain): add prune.levels=1 (got prune.levels={p.levels})")
    if p.target_sparsity is not None and abs(p.target_sparsity - nm_sparsity(nm)) > 1e-9:
        errs.append(f"{name} fixes the sparsity at {nm_sparsity(nm):g}: drop prune.target_sparsity "
                    f"(got {p.target_sparsity})")
    if p.scope != "global":
        errs.append(f"{name} prunes within each group of {nm[1]} weights: prune.scope does not apply, leave it global")
    return errs


def _earlybert(eb: Any) -> list[str]:
    """EarlyBERT's settings (``method.*`` with method=earlybert), for fine-tuning and pre-training alike."""
    errs = []
    for name in ("head_fraction", "neuron_fraction"):
        if not 0 <= getattr(eb, name) < 1:
            errs.append(f"method.{name} must be in [0, 1), got {getattr(eb, name)}")
    for name in ("head_scope", "neuron_scope"):
        if getattr(eb, name) not in ("layer", "global"):
            errs.append(f"method.{name} must be layer or global, got {getattr(eb, name)!r}")
    for name in ("l1_heads", "l1_neurons"):
        if getattr(eb, name) < 0:
            errs.append(f"method.{name} must be >= 0, got {getattr(eb, name)}")
    if eb.check_every < 1:
        errs.append(f"method.check_every must be >= 1, got {eb.check_every}")
    if eb.window < 2:
        errs.append(f"method.window must be >= 2, got {eb.window}")
    if not 0 <= eb.threshold <= 1:
        errs.append(f"method.threshold must be in [0, 1], got {eb.threshold}")
    if eb.search_steps is not None and eb.search_steps < 1:
        errs.append(f"method.search_steps must be >= 1, got {eb.search_steps}")
    for name in ("search_epochs", "compact_epochs", "compact_lr"):
        if getattr(eb, name) is not None and not getattr(eb, name) > 0:
            errs.append(f"method.{name} must be > 0, got {getattr(eb, name)}")
    return errs


def _earlybert_prune(cfg: Any) -> list[str]:
    """EarlyBERT settings that only fine-tuning's stages read (pre-training has its own budget)."""
    eb = cfg.method
    if cfg.method.name != "earlybert":
        return []
    given = [k for k in ("search_epochs", "compact_epochs", "compact_lr") if getattr(eb, k, None) is not None]
    if cfg.verb != "prune" and given:
        return [f"method.{given[0]} is for prune method=earlybert (fine-tuning); pretrain's stages follow "
                f"pretrain.budget"]
    if eb.compact_epochs is not None and cfg.train.max_steps:
        return ["method.compact_epochs needs train.epochs (train.max_steps fixes every stage's length): "
                "drop train.max_steps"]
    return []


def _super_tickets(st: Any) -> list[str]:
    """Super tickets' settings (``method.*`` with method=super_tickets)."""
    errs = []
    if not st.levels:
        errs.append("method.levels must list at least one level in (0, 1), e.g. method.levels=[0.1,0.2,0.3]")
    for name in ("levels", "head_levels", "ffn_levels"):
        values = getattr(st, name)
        bad = [v for v in (values or []) if not 0 < v < 1]
        if bad:
            errs.append(f"method.{name} must be in (0, 1), got {bad[0]}")
        if name != "levels" and values is not None and len(values) != len(st.levels):
            errs.append(f"method.{name} needs one value per level ({len(st.levels)}), got {len(values)}")
    if list(st.levels) != sorted(set(st.levels)):
        errs.append(f"method.levels must increase (nested tickets), got {list(st.levels)}")
    if st.ffn_unit not in ("layer", "neuron"):
        errs.append(f"method.ffn_unit must be layer or neuron, got {st.ffn_unit!r}")
    if st.min_heads_per_layer < 0:
        errs.append(f"method.min_heads_per_layer must be >= 0, got {st.min_heads_per_layer}")
    bad_kinds = [k for k in st.kinds if k not in ("winning", "random", "losing")]
    if bad_kinds or not st.kinds or len(set(st.kinds)) != len(st.kinds):
        errs.append(f"method.kinds must list winning, random and / or losing once each, got {list(st.kinds)}")
    if st.save_models not in ("winning", "all", "none"):
        errs.append(f"method.save_models must be winning, all or none, got {st.save_models!r}")
    if st.importance_batches is not None and st.importance_batches < 1:
        errs.append(f"method.importance_batches must be >= 1, got {st.importance_batches}")
    return errs


#: method name -> the rules of its settings.
METHOD_RULES: dict[str, Callable[[Any], list[str]]] = {"earlybert": _earlybert, "super_tickets": _super_tickets}


def _method(cfg: Any) -> list[str]:
    rule = METHOD_RULES.get(cfg.method.name)
    return rule(cfg.method) if rule else []


@dataclass(frozen=True)
class PretrainDurations:
    """The durations of ``pretrain``, parsed to seconds (None / 0.0 where not set)."""

    budget_s: float | None
    eval_every_s: float
    save_every_s: float
    early_stop_after_s: float | None


def _durations(p: Any, errs: list[str]) -> PretrainDurations:
    from bert_ticket_cli.engine.budget import parse_duration

    def duration(value, name):
        if value is None:
            return None
        try:
            return parse_duration(value, f"pretrain.{name}")
        except UserError as exc:
            errs.append(str(exc))
            return None

    return PretrainDurations(budget_s=duration(p.budget, "budget"),
                             eval_every_s=duration(p.eval_every, "eval_every") or 0.0,
                             save_every_s=duration(p.save_every, "save_every") or 0.0,
                             early_stop_after_s=duration(p.early_stop.after, "early_stop.after"))


def pretrain_durations(cfg: Any) -> PretrainDurations:
    """The parsed durations of an already validated ``pretrain`` config."""
    return _durations(cfg.pretrain, [])


def _pretrain(cfg: Any) -> list[str]:
    """Every pretrain setting (EarlyBERT's are the ``method`` rules)."""
    p, d = cfg.pretrain, cfg.pretrain.data
    errs: list[str] = []
    seconds = _durations(p, errs).budget_s
    if seconds is not None and seconds <= 0:
        errs.append(f"pretrain.budget must be > 0, got {p.budget!r}")
    if cfg.method.name not in PRETRAIN_METHODS:
        errs.append(f"method must be dense or earlybert for pretrain, got {cfg.method.name!r}")
    errs.extend(_earlybert_prune(cfg))
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
    # vocab_size: the 5 special tokens and some words (only read with tokenizer=train).
    for name, low in (("seq_length", 8), ("max_predictions", 1), ("duplication", 1), ("shard_rows", 1),
                      ("shuffle_chunk", 1), ("vocab_size", 10)):
        if getattr(d, name) < low:
            errs.append(f"pretrain.data.{name} must be >= {low}, got {getattr(d, name)}")
    return errs


def _report(cfg: Any) -> list[str]:
    errs: list[str] = []
    if cfg.format not in ("table", "csv", "json"):
        errs.append(f"'format' must be table, csv or json, got {cfg.format!r}")
    if cfg.view not in REPORT_VIEWS:
        errs.append(f"'view' must be runs, tickets, earlybert, pretrain, super_tickets or multitask, got {cfg.view!r}")
    if cfg.metric is not None and (not str(cfg.metric).strip() or cfg.view not in ("tickets", "super_tickets")):
        errs.append(f"'metric' picks the metric of view=tickets or view=super_tickets (e.g. metric=f1), "
                    f"got {cfg.metric!r} with view={cfg.view}")
    return errs


_COMMON = (_run, _train, _engine, _task, _model, _tracking)

#: verb -> the rule sets of its sections, in the order their problems are reported.
RULES: dict[str, tuple[Callable[[Any], list[str]], ...]] = {
    "rewind": (*_COMMON, _multitask),
    "eval": _COMMON,
    "transfer": _COMMON,
    "prune": (*_COMMON, _prune, _method),
    "pretrain": (*_COMMON, _pretrain, _method),
    "cache": _COMMON,
    "report": (_report,),
}


def check(cfg: Any, verb: str) -> list[str]:
    """Every problem of ``cfg``'s values under ``verb``'s rules (empty: none)."""
    return [problem for rule in RULES[verb] for problem in rule(cfg)]
