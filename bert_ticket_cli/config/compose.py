"""Compose a verb's Hydra config from ``conf/`` and check it against the typed schema.

Hydra's compose API does the work (defaults lists, groups, ``key=value``, ``+key=``,
``~key``); we add a validation pass that reports *every* problem at once (unknown keys with a
suggestion, wrong types, values out of range) as one :class:`UserError`, and return a plain
dataclass instance so the rest of the code is typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bert_ticket_cli.config.schema import SCHEMAS
from bert_ticket_cli.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def config_groups() -> dict[str, list[str]]:
    """Group name -> option names shipped in ``conf/`` (for ``--help`` and tests)."""
    groups: dict[str, list[str]] = {}
    for d in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")):
        groups[d.name] = sorted(f.stem for f in d.glob("*.yaml"))
    return groups


def _prepare_overrides(verb: str, overrides: Sequence[str]) -> list[str]:
    """Check group choices up front and turn plain ``a.b=v`` into Hydra's ``++a.b=v``.

    Hydra refuses ``train.lr=1e-4`` when the composed YAML has no ``train`` section (the
    schema, not the YAML, holds most defaults); ``++`` sets the key either way, and
    :func:`validate` then checks every key against the schema.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = config_groups()
    errors: list[str] = []
    out: list[str] = []
    for text in overrides:
        if not text:
            continue
        if text.startswith("--"):
            raise UserError(f"unknown option '{text}': see 'bert-ticket {verb} --help'")
        if "=" not in text and not text.startswith("~"):
            raise UserError(f"'{text}' is not an override: write key=value (e.g. task=mrpc or train.lr=2e-5)")
        try:
            ov = OverridesParser.create().parse_override(text)
        except Exception as exc:  # hydra's grammar errors have long multi-line messages
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"cannot parse override '{text}': {first}") from None
        key = ov.key_or_group
        if key in groups and verb != "report":
            value = ov.value()
            if isinstance(value, str) and value not in groups[key]:
                errors.append(f"unknown {key} '{value}' (choose one of: {', '.join(groups[key])})")
            out.append(text)
        elif ov.is_add() or ov.is_delete() or ov.is_force_add():
            out.append(text)
        elif key == "ticket":  # ticket=PATH is short for ticket.path=PATH
            out.append("++ticket.path=" + text.split("=", 1)[1])
        else:
            out.append("++" + text)
    if errors:
        raise UserError("invalid config: " + "; ".join(errors))
    return out


def compose(verb: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<verb>.yaml`` with ``overrides``; Hydra syntax errors become UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    prepared = _prepare_overrides(verb, overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bert_ticket"):
            cfg = hydra_compose(config_name=verb, overrides=prepared)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"bad override: {first} (overrides look like task=mrpc train.lr=2e-5 ~key; "
            f"see 'bert-ticket {verb} --help')"
        ) from None
    OmegaConf.set_struct(cfg, False)
    cfg.verb = verb
    return cfg


def _suggest(key: str, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _check_types(node: Any, schema: type, prefix: str, errors: list[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    if not isinstance(node, DictConfig):
        errors.append(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {node!r}")
        return
    for key in node.keys():
        key = str(key)
        name = f"{prefix}{key}"
        if key not in fields:
            errors.append(f"unknown key '{name}'{_suggest(key, fields, prefix)}")
            continue
        tp = _strip_optional(hints[key])
        value = node._get_node(key)
        if _is_dataclass_type(tp):
            if isinstance(value, DictConfig):
                _check_types(value, tp, name + ".", errors)
            elif value is not None and not OmegaConf.is_missing(node, key):
                errors.append(f"'{name}' is a group of settings, not a value (got {node[key]!r})")
            continue
        if OmegaConf.is_missing(node, key):
            continue  # reported as missing after the merge
        try:
            OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create({key: value}))
        except OmegaConfBaseException:
            shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
            tname = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            errors.append(f"'{name}' must be {tname}, got {shown!r}")


def _missing(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key):
            out.append(f"'{prefix}{key}' is required (pass {prefix}{key}=...)")
        else:
            sub = cfg._get_node(key)
            if isinstance(sub, DictConfig):
                out.extend(_missing(sub, f"{prefix}{key}."))
    return out


def validate(cfg: DictConfig, verb: str | None = None) -> Any:
    """Check ``cfg`` against its verb's schema; return the typed dataclass instance."""
    verb = verb or str(cfg.get("verb"))
    schema = SCHEMAS[verb]
    errors: list[str] = []
    _check_types(cfg, schema, "", errors)
    errors.extend(_missing(cfg))
    if errors:
        raise UserError("invalid config: " + "; ".join(errors))
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(merged)
    errors.extend(_check_values(obj))
    if errors:
        raise UserError("invalid config: " + "; ".join(errors))
    return obj


def _check_values(obj: Any) -> list[str]:
    """Range and choice checks that types cannot express."""
    from bert_ticket_cli.config.schema import RunConfig

    errs: list[str] = []
    if not isinstance(obj, RunConfig):
        if getattr(obj, "format", "table") not in ("table", "csv", "json"):
            errs.append(f"'format' must be table, csv or json, got {obj.format!r}")
        if getattr(obj, "view", "runs") not in ("runs", "tickets", "earlybert", "pretrain"):
            errs.append(f"'view' must be runs, tickets, earlybert or pretrain, got {obj.view!r}")
        metric = getattr(obj, "metric", None)
        if metric is not None and (not str(metric).strip() or getattr(obj, "view", "runs") != "tickets"):
            errs.append(f"'metric' picks the metric of view=tickets (e.g. metric=f1), got {metric!r} "
                        f"with view={getattr(obj, 'view', 'runs')}")
        return errs
    t, e, k = obj.train, obj.engine, obj.task
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
    if e.mixed_precision not in ("no", "bf16", "fp16"):
        errs.append(f"'engine.mixed_precision' must be no, bf16 or fp16, got {e.mixed_precision!r}")
    if k.max_seq_length < 8:
        errs.append(f"'task.max_seq_length' must be >= 8, got {k.max_seq_length}")
    for name in ("max_train_samples", "max_eval_samples"):
        v = getattr(k, name)
        if v is not None and v <= 0:
            errs.append(f"'task.{name}' must be > 0, got {v}")
    if obj.model.attn_implementation not in ("sdpa", "eager"):
        errs.append(f"'model.attn_implementation' must be sdpa or eager, got {obj.model.attn_implementation!r}")
    return errs


def to_yaml(obj: Any) -> str:
    """The resolved config as YAML (what ``--cfg`` prints and runs store)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def load_saved(path: Path, verb: str) -> Any:
    """Read a run's stored config.yaml back into its schema."""
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return validate(cfg, verb)
