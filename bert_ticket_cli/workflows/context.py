"""Context carried between verbs: which model a run used, what the user left at its default,
and the next-step commands a run prints (pasteable as they are).

"Not told" is decided by comparing a setting with the verb's *composed default* (``conf/<verb>.yaml``
with no overrides): a setting equal to its default is taken from the context (the ticket's source
model, the prepared data folder's settings).  Passing a value equal to the default is therefore
the same as not passing it.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, is_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

#: ModelConfig keys a ticket records as its source model and ``rewind`` / ``transfer`` reuse.
SOURCE_MODEL_KEYS = ("name", "name_or_path", "config", "tokenizer")


@lru_cache(maxsize=None)
def composed_default(verb: str) -> Any:
    """The verb's config with no overrides (``conf/<verb>.yaml`` and its default groups)."""
    from bert_ticket_cli.config.compose import compose, validate

    return validate(compose(verb, []), verb)


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return asdict(value)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def model_is_default(cfg: Any) -> bool:
    """True when the user did not choose a model (``cfg.model`` equals the verb's default)."""
    default = composed_default(cfg.verb).model
    return all(_plain(getattr(cfg.model, k)) == _plain(getattr(default, k)) for k in SOURCE_MODEL_KEYS)


def source_model(cfg: Any) -> dict[str, Any]:
    """What a ticket records of the model it was found on (``meta.source_model``)."""
    return {k: _plain(getattr(cfg.model, k)) for k in SOURCE_MODEL_KEYS}


def use_source_model(cfg: Any, recorded: dict[str, Any] | None) -> bool:
    """Take the ticket's source model when the user did not choose one; True if it was taken."""
    if not recorded or not model_is_default(cfg):
        return False
    cfg.model = replace(cfg.model, **{k: recorded.get(k) for k in SOURCE_MODEL_KEYS})
    name_local_model(cfg)
    return True


def name_local_model(cfg: Any) -> None:
    """``model=local``: name runs and reports after the model folder, not ``local``."""
    path = getattr(cfg.model, "name_or_path", None)
    if getattr(cfg.model, "name", None) == "local" and path:
        folder = Path(str(path)).expanduser()
        name = folder.resolve().name if folder.exists() else folder.name
        if name:
            cfg.model.name = name


@lru_cache(maxsize=None)
def _group_config(verb: str, group: str) -> Any:
    """``model.config`` of the model group ``group`` as composed (None if there is no such group)."""
    from bert_ticket_cli.config.compose import compose, validate

    try:
        return _plain(validate(compose(verb, [f"model={group}"]), verb).model.config)
    except Exception:  # not a group (or it needs more settings): print every config key
        return None


def model_args(cfg: Any) -> list[str]:
    """The overrides that choose ``cfg``'s model in another verb's command."""
    m = cfg.model
    config = _plain(m.config) or {}
    if m.name_or_path:
        args = ["model=local", f"model.name_or_path={m.name_or_path}"]
        if m.tokenizer and m.tokenizer != m.name_or_path:
            args.append(f"model.tokenizer={m.tokenizer}")
        base: dict[str, Any] = {}
    else:
        args = [f"model={m.name}"]
        base = _group_config(cfg.verb, str(m.name)) or {}
    args += [f"model.config.{k}={v}" for k, v in config.items() if base.get(k, object()) != v]
    return args


@lru_cache(maxsize=None)
def _group_task(verb: str, group: str) -> Any:
    """``task`` as composed with the task group ``group`` (None if there is no such group)."""
    from bert_ticket_cli.config.compose import compose, validate

    try:
        return _plain(validate(compose(verb, [f"task={group}"]), verb).task)
    except Exception:
        return None


def _leaves(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: d}


def task_args(cfg: Any, *, with_name: bool = True) -> list[str]:
    """The overrides that choose ``cfg``'s task and where its data is: ``task=<name>`` and every
    ``task.*`` setting that differs from that task group's default (``task.data_dir``,
    ``task.data_files``, the generated task's sizes, ...)."""
    t = _plain(cfg.task)
    args = [f"task={t['name']}"] if with_name else []
    base = _leaves(_group_task(cfg.verb, str(t["name"])) or {}, "task")
    for key, value in _leaves({k: v for k, v in t.items() if k != "name"}, "task").items():
        if key not in base or base[key] != value:
            if isinstance(value, list):
                value = "[" + ",".join(str(v) for v in value) + "]"
            args.append(f"{key}={'null' if value is None else value}")
    return args


def command(verb: str, *args: str) -> str:
    """A shell command line (each argument quoted when it needs it)."""
    return " ".join(["bert-ticket", verb, *(shlex.quote(str(a)) for a in args)])
