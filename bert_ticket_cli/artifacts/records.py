"""Opening a run directory safely, and the run's record (``summary.json``).

Rules (DESIGN: run directory, errors):

- a finished run (``summary.json`` present) is reported and left alone, unless
  ``overwrite=true``, which moves it aside to ``<name>.replaced-<time>`` (nothing is lost);
- an unfinished run with checkpoints needs ``resume=true`` (continue) or ``overwrite=true``;
- nothing on disk changes until every input (data, tokenizer, model) has loaded, so a run
  that fails on bad input leaves any earlier run exactly as it was;
- a run folder holds one experiment: a requested config that differs from the stored
  ``config.yaml`` (finished or not, sub-runs included) in anything but
  ``paths.NON_IDENTITY_KEYS`` is refused, naming the keys, unless ``overwrite=true``; the
  default run name carries a hash of the same keys, so a sweep gets one folder per setting;
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
from bert_ticket_cli.artifacts.paths import (
    REPLACED_MARK, RunDir, atomic_write_json, atomic_write_text, config_container, flatten, is_identity_key, run_dir,
)
from bert_ticket_cli.config.compose import to_yaml
from bert_ticket_cli.errors import UserError

def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class OpenedRun:
    dir: RunDir
    finished: bool = False
    resume_from: Path | None = None
    #: An old run to move aside (overwrite=true) once the new one's inputs have loaded.
    replace: bool = False


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys that differ between two configs, ignoring ``paths.NON_IDENTITY_KEYS``."""
    a, b = flatten(stored), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if is_identity_key(k) and a.get(k) != b.get(k)]


def _describe_differences(stored: dict[str, Any], current: dict[str, Any], diff: list[str]) -> str:
    a, b = flatten(stored), flatten(current)
    shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:6])
    return shown + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")


def latest_checkpoint_below(rd: RunDir) -> Path | None:
    """The newest complete checkpoint of the run or of any of its sub-runs (IMP levels,
    EarlyBERT / pre-training stages): whether anything was trained under this folder."""
    found = rd.list_checkpoints()
    if rd.root.is_dir():
        for ckpts in sorted(rd.root.glob("*/*/checkpoints")):
            found += RunDir(ckpts.parent).list_checkpoints()
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _check_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be writable (nothing is created here)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the run folder {path} ({probe} is not a writable folder): "
                        f"choose a writable output_dir=PATH")


def check_weights_file(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be read (truncated, garbage), or None: its header is
    checked against its size without loading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # SafetensorError, OSError: every way a file can be unreadable
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    return None


def check_checkpoint_intact(path: Path) -> None:
    """A checkpoint about to be resumed must be whole: its safetensors headers match their
    sizes and its torch zip files (optimizer, scheduler) pass their CRC check; otherwise one
    line (the loader would raise a traceback deep inside Accelerate)."""
    import zipfile

    for f in sorted(path.iterdir()):
        why = None
        if f.suffix == ".safetensors":
            why = check_weights_file(f)
        elif f.suffix in (".bin", ".pt"):
            try:
                with zipfile.ZipFile(f) as z:
                    bad = z.testzip()
                why = f"member {bad} fails its CRC check" if bad else None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                why = str(exc) or type(exc).__name__
        if why:
            raise UserError(f"checkpoint {path} is damaged ({f.name}: {why}): delete that folder to resume "
                            f"from an earlier checkpoint, or pass overwrite=true to start again")


def resumes(cfg: Any) -> bool:
    """``resume=true`` or ``resume=auto``: continue an unfinished run from its checkpoint.  Both
    start a run that has none and report a finished one; ``auto`` is what every sweep job
    passes, so a requeued or resubmitted job does the right thing whatever it finds."""
    return cfg.resume is True or cfg.resume == "auto"


def open_run(cfg: Any) -> OpenedRun:
    """Decide what to do with the run folder; changes nothing on disk (see :func:`commit_run`).

    The stored ``config.yaml`` (present once a run has started) is compared with the requested
    config whenever it exists, for finished and unfinished runs and whatever was written below
    (checkpoints of sub-runs included): a run folder holds one experiment, so a difference in
    anything but ``paths.NON_IDENTITY_KEYS`` is refused unless ``overwrite=true`` replaces it."""
    rd = run_dir(cfg)
    resume = resumes(cfg)
    finished = rd.summary.exists()
    latest = latest_checkpoint_below(rd)
    diff: list[str] = []
    shown = ""
    if rd.config.exists():
        stored = OmegaConf.to_container(OmegaConf.load(rd.config))
        current = config_container(cfg)
        diff = config_differences(stored, current)  # type: ignore[arg-type]
        shown = _describe_differences(stored, current, diff)  # type: ignore[arg-type]
    if diff and not cfg.overwrite:
        if resume and not finished:
            raise UserError(
                f"resume={'auto' if cfg.resume == 'auto' else 'true'} but the config differs from the interrupted run in {shown}: "
                f"resume with the same settings, or pick another run_name="
            )
        state = "finished" if finished else "unfinished"
        raise UserError(
            f"{rd.root} holds a {state} run with another config: {shown}: pass overwrite=true to replace it, "
            f"or choose another run_name="
        )
    if finished and not cfg.overwrite:
        return OpenedRun(rd, finished=True)
    if latest is not None and not resume and not cfg.overwrite:
        raise UserError(
            f"{rd.root} holds an unfinished run (checkpoint {latest.relative_to(rd.root)}): pass resume=true "
            f"to continue it, overwrite=true to start again, or choose another run_name="
        )
    replace = finished or (cfg.overwrite and (bool(diff) or (latest is not None and not resume)))
    root_latest = None if replace else rd.latest_checkpoint()
    if root_latest is not None and resume:
        check_checkpoint_intact(root_latest)
    _check_writable(rd.root)
    return OpenedRun(rd, resume_from=root_latest if resume else None, replace=replace)


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


# ----------------------------------------------------------------------------- provenance

_COMMAND: dict[str, Any] = {}
_DATA: dict[str, Any] = {}


def note_command(verb: str, overrides: list[str]) -> None:
    """The CLI records the verb and the overrides as given (``provenance()['command']``)."""
    _COMMAND.clear()
    _COMMAND.update(verb=verb, overrides=list(overrides))


def note_data(fingerprint: Any) -> None:
    """A workflow records the fingerprint of the data it loaded (task splits: split ->
    dataset fingerprint; pretrain: the prepared folder's fingerprint) before its records."""
    _DATA["fingerprint"] = fingerprint


def task_data_fingerprint(data: Any) -> dict[str, str]:
    """split -> fingerprint of a ``TaskData``'s model-ready splits (content-derived: see
    ``data/common.py`` and ``data/tokenize.py``)."""
    splits = {"train": data.train, **dict(data.evals), **{f"test:{k}": v for k, v in dict(data.tests).items()}}
    return {k: str(getattr(v, "_fingerprint", None)) for k, v in splits.items() if v is not None}


def _git_commit() -> dict[str, Any]:
    """The package's git commit and whether its work tree is dirty, when it runs from a
    checkout (``.git`` next to the package); ``{}`` otherwise, without spawning git."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return {}
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if head.returncode != 0:
        return {}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


_PROVENANCE: dict[str, Any] = {}


def provenance() -> dict[str, Any]:
    """What produced a record: tool version and git commit, library versions, CUDA and GPU,
    the command line.  Computed once per process (the command line is read each time: the
    CLI notes it per invocation)."""
    import sys
    from importlib import metadata

    if not _PROVENANCE:
        versions: dict[str, str | None] = {}
        for lib in ("torch", "transformers", "accelerate", "deepspeed", "datasets"):
            try:
                versions[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                versions[lib] = None
        cuda = gpu = None
        try:
            import torch

            cuda = torch.version.cuda
            if torch.cuda.is_available():
                gpu = torch.cuda.get_device_name(0)
        except Exception:  # a broken CUDA install must not cost the record
            pass
        _PROVENANCE.update(tool_version=__version__, **_git_commit(), versions=versions, cuda=cuda, gpu=gpu,
                           python=platform.python_version())
    return {**_PROVENANCE, "argv": list(sys.argv),
            "command": dict(_COMMAND) or {"verb": None, "overrides": [a for a in sys.argv[1:] if "=" in a]}}


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
        "provenance": {**provenance(), "data_fingerprint": _DATA.get("fingerprint")},
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
