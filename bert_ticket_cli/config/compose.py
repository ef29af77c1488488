"""Compose a verb's Hydra config from ``conf/`` and check it against the typed schema.

Hydra's compose API does the work (defaults lists, groups, ``key=value``, ``+key=``,
``~key``); we add a validation pass that reports *every* problem at once (unknown keys with a
suggestion, wrong types, values out of range) as one :class:`UserError`, and return a plain
dataclass instance so the rest of the code is typed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bert_ticket_cli.config.rules import check
from bert_ticket_cli.config.schema import METHOD_SCHEMAS, SCHEMAS
from bert_ticket_cli.errors import UserError

#: The packaged config folder (the last one searched).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: Config folders searched ahead of the packaged one, first wins (os.pathsep-separated).
CONFIG_PATH_ENV = "BERT_TICKET_CONFIG_PATH"
#: A folder of this name in the current directory is searched too (after CONFIG_PATH_ENV's).
LOCAL_CONF = "conf"


def search_path(*, strict: bool = True) -> list[Path]:
    """The config folders, first wins: ``$BERT_TICKET_CONFIG_PATH``'s (in order), ``./conf``,
    then the packaged ``conf/``.  A lab keeps its own ``experiment/``, ``model/``, ... files (or
    a verb's root) there; an option of the same name as a packaged one replaces it.  ``strict``:
    a listed folder that does not exist is an error (``--help`` and completion skip it)."""
    folders: list[Path] = []
    for entry in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser()
        if folder.is_dir():
            folders.append(folder.resolve())
        elif strict:
            raise UserError(f"{CONFIG_PATH_ENV}: {entry} is not a folder ({CONFIG_PATH_ENV} lists config "
                            f"folders separated by '{os.pathsep}', searched ahead of ./{LOCAL_CONF} and the packaged one)")
    if Path(LOCAL_CONF).is_dir():
        folders.append(Path(LOCAL_CONF).resolve())
    folders.append(CONF_DIR)
    return list(dict.fromkeys(folders))  # a folder listed twice is searched once, at its first place


def config_groups() -> dict[str, list[str]]:
    """Group name -> option names over every searched folder (for ``--help``, checks, completion)."""
    groups: dict[str, set[str]] = {}
    for folder in search_path(strict=False):
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            options = {f.stem for f in d.glob("*.yaml")}
            if options:
                groups.setdefault(d.name, set()).update(options)
    return {name: sorted(groups[name]) for name in sorted(groups)}


def _check_search_path(folders: Sequence[Path]) -> None:
    """Hydra's search path holds ``folders`` first (the plugin is installed and found)."""
    from hydra.core.global_hydra import GlobalHydra

    found = [Path(e.path.removeprefix("file://")) for e in GlobalHydra.instance().config_loader().get_search_path()
             .get_path() if e.provider in ("bert-ticket", "main")]
    if found != list(folders):
        raise UserError(f"the config folders {', '.join(str(f) for f in folders[:-1])} are not searched: "
                        f"bert-ticket's Hydra plugin (hydra_plugins/bert_ticket_searchpath) is not installed; "
                        f"reinstall bert-ticket (pip install -e .)")


def _prepare_overrides(verb: str, overrides: Sequence[str]) -> list[str]:
    """Check group choices up front and turn plain ``a.b=v`` into Hydra's ``++a.b=v``.

    Hydra refuses ``train.lr=1e-4`` when the composed YAML has no ``train`` section (the
    schema, not the YAML, holds most defaults); ``++`` sets the key either way, and
    :func:`validate` then checks every key against the schema.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = config_groups()
    own = {f.name for f in dataclasses.fields(SCHEMAS[verb])} | {"experiment"}
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
        if key in groups and verb != "report" and key not in own:
            errors.append(f"unknown key '{key}' (bert-ticket {verb} has no {key} settings)")
        elif key in groups and verb != "report":
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
    """Compose ``<verb>.yaml`` from the config folders (:func:`search_path`) with ``overrides``;
    Hydra syntax errors become UserError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    folders = search_path()  # a missing $BERT_TICKET_CONFIG_PATH folder: UserError here
    prepared = _prepare_overrides(verb, overrides)
    try:
        # The packaged folder is Hydra's primary one; the lab's folders (search_path) go ahead of
        # it through Hydra's search-path plugin, hydra_plugins/bert_ticket_searchpath.
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bert_ticket"):
            _check_search_path(folders)
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


#: Every section some verb has (an unknown key naming one is another verb's setting).
_SECTIONS = {f.name for verb, schema in SCHEMAS.items() if verb != "report" for f in dataclasses.fields(schema)}


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
            if not prefix and key in _SECTIONS:  # another verb's section: name its keys
                sub = node._get_node(key)
                leaves = [f"{key}.{k}" for k in sub.keys()] if isinstance(sub, DictConfig) and len(sub) else [key]
                verb = node.get("verb") or "this verb"
                errors.extend(f"unknown key '{leaf}' (bert-ticket {verb} has no {key} settings)" for leaf in leaves)
            else:
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


def _deprecated_earlybert_keys(cfg: DictConfig) -> None:
    """``prune.earlybert.X`` (the previous release's spelling) -> ``method.X``, with one line on
    stderr (from the first process only, under a launcher).

    Kept for one release: on the command line and in experiment YAML alike, since both are
    merged into the composed config before this runs."""
    prune = cfg.get("prune")
    if not isinstance(prune, DictConfig) or "earlybert" not in prune:
        return
    old = prune._get_node("earlybert")
    if isinstance(old, DictConfig):
        if not isinstance(cfg.get("method"), DictConfig):
            cfg.method = {"name": str(cfg.get("method") or "dense")}
        for key in old.keys():
            cfg.method[key] = old._get_node(key)
        notes = [f"prune.earlybert.{k} is deprecated: use method.{k}" for k in old.keys()]
        if notes and os.environ.get("RANK", "0") == "0":
            print("; ".join(notes), file=sys.stderr, flush=True)
    del prune["earlybert"]
    if not len(prune):
        del cfg["prune"]


def _check_method(cfg: DictConfig, errors: list[str]) -> type | None:
    """Check the ``method`` node against its method's dataclass; returns that dataclass."""
    node = cfg._get_node("method")
    if not isinstance(node, DictConfig):  # a stored or hand-written ``method: imp``
        cfg.method = {"name": str(cfg.method)}
        node = cfg._get_node("method")
    name = str(node.get("name", "dense"))
    schema = METHOD_SCHEMAS.get(name)
    if schema is None:
        errors.append(f"unknown method '{name}' (choose one of: {', '.join(METHOD_SCHEMAS)})")
        return None
    fields = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        if str(key) not in fields:
            errors.append(f"unknown key 'method.{key}' for method={name}{_suggest(str(key), fields, 'method.')}")
    node_errors: list[str] = []
    known = OmegaConf.create({k: node._get_node(k) for k in node.keys() if str(k) in fields})
    _check_types(known, schema, "method.", node_errors)
    errors.extend(node_errors)
    return schema


def validate(cfg: DictConfig, verb: str | None = None) -> Any:
    """Check ``cfg`` against its verb's schema and rules; return the typed dataclass instance.

    Every problem (unknown keys for this verb, types, required values, then the value rules of
    :mod:`bert_ticket_cli.config.rules`) is reported at once."""
    verb = verb or str(cfg.get("verb"))
    schema = SCHEMAS[verb]
    cfg = copy.deepcopy(cfg)  # the caller's config stays as composed
    OmegaConf.set_struct(cfg, False)
    errors: list[str] = []
    has_method = "method" in {f.name for f in dataclasses.fields(schema)}
    if has_method:
        _deprecated_earlybert_keys(cfg)
    method_schema, method_node = None, None
    if has_method and "method" in cfg:
        method_schema = _check_method(cfg, errors)
        method_node = cfg._get_node("method")
        del cfg["method"]
    tracking = cfg.get("tracking")
    if isinstance(tracking, DictConfig) and isinstance(tracking.get("log_with"), str):
        # tracking.log_with=tensorboard is short for [tensorboard] (and "" for none)
        tracking.log_with = [tracking.log_with] if tracking.log_with else []
    _check_types(cfg, schema, "", errors)
    errors.extend(_missing(cfg))
    if method_node is not None:
        errors.extend(_missing(method_node, "method."))
    if errors:
        raise UserError("invalid config: " + "; ".join(errors))
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(merged)
    if method_schema is not None:
        obj.method = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method_schema), method_node))
    errors.extend(check(obj, verb))
    if errors:
        raise UserError("invalid config: " + "; ".join(errors))
    return obj


def to_yaml(obj: Any) -> str:
    """The resolved config as YAML (what ``--cfg`` prints and runs store)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj))
