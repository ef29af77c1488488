"""Opening a run directory safely, and the run's record (``summary.json``).

Rules (DESIGN: run directory, errors):

- a finished run (``summary.json`` present) is reported and left alone, unless
  ``overwrite=true``, which moves it aside to ``<name>.replaced-<time>`` (nothing is lost);
- an unfinished run with checkpoints needs ``resume=true`` (continue) or ``overwrite=true``;
- nothing on disk changes until every input (data, tokenizer, model) has loaded, so a run
  that fails on bad input leaves any earlier run exactly as it was;
- ``resume=true`` refuses a config that differs from the stored one in anything but the
  run-control keys, so a resumed run is the same experiment;
- the folder must be writable, checked before any work starts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bert_ticket_cli import __version__
from bert_ticket_cli.artifacts.paths import REPLACED_MARK, RunDir, atomic_write_json, atomic_write_text, run_dir
from bert_ticket_cli.config.compose import to_yaml
from bert_ticket_cli.errors import UserError

#: Keys that may change between an interrupted run and its resumption.
RUN_CONTROL_KEYS = {"resume", "overwrite", "engine", "cache_dir", "output_dir"}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class OpenedRun:
    dir: RunDir
    finished: bool = False
    resume_from: Path | None = None
    #: An old run to move aside (overwrite=true) once the new one's inputs have loaded.
    replace: bool = False


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = _flatten(stored), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k.split(".")[0] not in RUN_CONTROL_KEYS and a.get(k) != b.get(k)]


def _check_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be writable (nothing is created here)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the run folder {path} ({probe} is not a writable folder): "
                        f"choose a writable output_dir=PATH")


def open_run(cfg: Any) -> OpenedRun:
    """Decide what to do with the run folder; changes nothing on disk (see :func:`commit_run`)."""
    rd = run_dir(cfg)
    if rd.summary.exists() and not cfg.overwrite:
        return OpenedRun(rd, finished=True)
    latest = rd.latest_checkpoint()
    replace = rd.summary.exists() or (latest is not None and cfg.overwrite and not cfg.resume)
    if latest is not None and not cfg.resume and not cfg.overwrite:
        raise UserError(
            f"{rd.root} holds an unfinished run (checkpoint {latest.name}): pass resume=true to continue it, "
            f"overwrite=true to start again, or choose another run_name="
        )
    if replace:
        latest = None
    if latest is not None and rd.config.exists():
        stored = OmegaConf.to_container(OmegaConf.load(rd.config))
        current = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
        diff = config_differences(stored, current)  # type: ignore[arg-type]
        if diff:
            shown = ", ".join(f"{k} ({_flatten(stored).get(k)!r} -> {_flatten(current).get(k)!r})" for k in diff[:4])
            raise UserError(
                f"resume=true but the config differs from the interrupted run in {shown}: "
                f"resume with the same settings, or pick another run_name="
            )
    _check_writable(rd.root)
    return OpenedRun(rd, resume_from=latest if cfg.resume else None, replace=replace)


def commit_run(opened: OpenedRun, cfg: Any, *, is_main: bool = True) -> None:
    """Called once every input has loaded: move a replaced run aside, create the folder,
    store the resolved config.  A run that fails before this point has written nothing."""
    if not is_main:
        return
    rd = opened.dir
    try:
        if opened.replace and rd.root.exists():
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            rd.root.rename(rd.root.with_name(f"{rd.root.name}{REPLACED_MARK}{stamp}"))
        rd.root.mkdir(parents=True, exist_ok=True)
        write_config(rd, cfg)
    except OSError as exc:
        raise UserError(f"cannot write the run folder {rd.root} ({exc.strerror or exc}): "
                        f"choose a writable output_dir=PATH") from None


def write_config(rd: RunDir, cfg: Any) -> None:
    atomic_write_text(rd.config, to_yaml(cfg))


def read_summary(rd: RunDir) -> dict[str, Any]:
    return json.loads(rd.summary.read_text())


def write_summary(rd: RunDir, cfg: Any, *, metrics: dict[str, float], main_metric: str, started: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's record; written last and atomically, so its presence means "finished"."""
    record: dict[str, Any] = {
        "verb": cfg.verb,
        "run_name": rd.root.name,
        "run_dir": str(rd.root),
        "status": "finished",
        "task": cfg.task.name,
        "model": cfg.model.name,
        "model_source": cfg.model.name_or_path,
        # eval has no method and no ticket; pretrain has no ticket (their records say dense / none)
        "method": cfg.method.name if hasattr(cfg, "method") else "dense",
        "ticket": cfg.ticket.path if hasattr(cfg, "ticket") else None,
        "seed": cfg.seed,
        "sparsity": 0.0,
        "metrics": metrics,
        "main_metric": main_metric,
        "main_value": metrics.get(main_metric),
        "started": started,
        "finished": now(),
        "version": __version__,
        "host": platform.node(),
        "config": OmegaConf.to_container(OmegaConf.create(to_yaml(cfg))),
    }
    record.update(extra or {})
    atomic_write_json(rd.summary, record)
    return record


def print_metrics_table(title: str, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in (extra or {}).items():
        table.add_row(f"[dim]{k}[/dim]", f"{v:.2f}" if isinstance(v, float) else str(v))
    import sys

    (Console() if sys.stdout.isatty() else Console(width=120)).print(table)
