"""The value rules of the ticket-finding and pre-training settings, each checked at once with
every problem in one message (``invalid config: a; b; c``).

Type checks and the rules every verb shares live in :mod:`bert_ticket_cli.config.compose`;
the rules here are those of one procedure, called by its workflow before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from bert_ticket_cli.config.schema import RunConfig
from bert_ticket_cli.errors import UserError

#: What ``pretrain method=`` accepts.
PRETRAIN_METHODS = ("dense", "earlybert")


def check_prune(cfg: RunConfig) -> None:
    """``prune`` with a magnitude or random method (imp, omp, random)."""
    p = cfg.prune
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


def check_earlybert(cfg: RunConfig) -> None:
    """EarlyBERT's settings (``prune.earlybert``), for fine-tuning and pre-training alike."""
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


@dataclass(frozen=True)
class PretrainDurations:
    """The durations of ``pretrain``, parsed to seconds (None / 0.0 where not set)."""

    budget_s: float | None
    eval_every_s: float
    save_every_s: float
    early_stop_after_s: float | None


def check_pretrain(cfg: RunConfig) -> PretrainDurations:
    """Every pretrain setting checked at once (EarlyBERT's too, with method=earlybert);
    returns the parsed durations."""
    from bert_ticket_cli.engine.budget import parse_duration

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
    if cfg.method not in PRETRAIN_METHODS:
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
        try:
            check_earlybert(cfg)
        except UserError as exc:
            errs.append(str(exc).removeprefix("invalid config: "))
    if errs:
        raise UserError("invalid config: " + "; ".join(errs))
    return PretrainDurations(budget_s=seconds, eval_every_s=eval_every, save_every_s=save_every,
                             early_stop_after_s=after)
