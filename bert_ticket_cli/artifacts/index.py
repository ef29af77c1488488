"""An index of every run under ``output_dir``: rebuilt from scratch on each ``report``.

Runs never write a shared file: each job writes only its own ``summary.json``, and
``report`` rebuilds ``<runs>/.index/runs.sqlite`` into a private temporary file, then renames
it into place.  Concurrent Slurm jobs (or two ``report`` calls) on a shared filesystem
therefore never contend for, or corrupt, one database.

What is indexed:

- every ``summary.json`` (a finished run, or a finished level / stage of one); its stored
  ``config`` is flattened into ``config.*`` keys (``config.train.lr``), so filters and the
  tickets view's experiment keys can use it;
- every run folder with a ``config.yaml`` but no ``summary.json``: status ``interrupted``
  when a complete checkpoint lies anywhere below it (``resume=true`` continues it), else
  ``unfinished``.  Without a heartbeat a run that is training right now cannot be told from
  one that crashed before its first checkpoint, so both read ``unfinished``.  These records
  are returned only on request (:func:`query` ``include_unfinished=True``): they never enter
  a mean.

Normalisation at query time: level 0 of a ``prune`` run (``role: level``, ``level: 0``) is
the dense model, so its ``method`` reads ``dense`` (the run's own method is kept in
``prune_method``): ``report method=dense`` and the tickets view find it as the full model.
A ``rewind`` of a ticket gets the stored config of the prune run that found the ticket as
``ticket_config.*`` (its prune and training settings are part of the experiment).
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import INDEX_DIR, INDEX_FILE, REPLACED_MARK, SUMMARY_FILE
from bert_ticket_cli.errors import UserError

#: Status of a run folder with a config.yaml but no summary.json.
INTERRUPTED, UNFINISHED = "interrupted", "unfinished"


def _hidden(path: Path, root: Path) -> bool:
    """Inside a moved-aside run (``.replaced-``) or a dot folder (``.index``, temporaries)."""
    rel = path.relative_to(root).parts
    return any(p.startswith(".") or ".replaced-" in p for p in rel)


def walk_files(root: Path, name: str) -> list[Path]:
    """Every file called ``name`` below ``root``, sorted.  Symlinked folders are followed (runs
    gathered from several places with ``ln -s`` are found), each real folder once, so a link
    cycle ends."""
    seen: set[str] = set()
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if name in files:
            found.append(Path(folder) / name)
    return sorted(found)


def find_summaries(root: Path) -> list[Path]:
    return [p for p in walk_files(root, SUMMARY_FILE) if REPLACED_MARK not in str(p.parent)]


def find_unfinished(root: Path) -> list[Path]:
    """Run folders with a stored config.yaml and no summary.json (not finished)."""
    return [p.parent for p in walk_files(root, "config.yaml")
            if not _hidden(p.parent, root) and not (p.parent / "summary.json").exists()]


def _has_checkpoint(run: Path) -> bool:
    return any(p.parent.parent.name == "checkpoints" and p.parent.name.startswith("step-")
               for p in run.rglob("trainer_state.json"))


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def unfinished_record(run: Path, root: Path) -> dict[str, Any] | None:
    cfg = _read_yaml(run / "config.yaml")
    if cfg is None:
        return None
    task, model = cfg.get("task") or {}, cfg.get("model") or {}
    rel = run.relative_to(root).parts
    name = "/".join(rel[1:] if len(rel) > 1 and rel[0] == cfg.get("verb") else rel)  # <verb>/<run-name>
    return {
        "verb": cfg.get("verb"),
        "run_name": name,
        "run_dir": str(run),
        "status": INTERRUPTED if _has_checkpoint(run) else UNFINISHED,
        "task": task.get("name") if isinstance(task, dict) else None,
        "model": model.get("name") if isinstance(model, dict) else None,
        "model_source": model.get("name_or_path") if isinstance(model, dict) else None,
        "method": method.get("name") if isinstance(method := cfg.get("method"), dict) else method,
        "seed": cfg.get("seed"),
        "main_value": None,
        "config": cfg,
    }


def flatten(d: Any, prefix: str = "", *, skip_config: bool = True) -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "config" and skip_config:
                continue
            out.update(flatten(v, f"{prefix}{k}.", skip_config=skip_config))
        return out
    return {prefix.rstrip("."): d}


def build_index(root: Path) -> Path:
    """Scan ``root`` and write a fresh SQLite index; returns its path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder {root} does not exist: pass output_dir=PATH (where the runs were written)")
    rows = []
    for path in find_summaries(root):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a summary being written right now by another job: the next report sees it
        rows.append((str(path.parent), json.dumps(summary, default=str)))
    for run in find_unfinished(root):
        record = unfinished_record(run, root)
        if record is not None:
            rows.append((str(run), json.dumps(record, default=str)))
    index_dir = root / INDEX_DIR
    index_dir.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".runs-", suffix=".sqlite", dir=index_dir)
    os.close(fd)
    try:
        con = sqlite3.connect(tmp)
        con.execute("CREATE TABLE runs (run_dir TEXT PRIMARY KEY, summary TEXT NOT NULL)")
        con.executemany("INSERT INTO runs VALUES (?, ?)", rows)
        con.commit()
        con.close()
        final = index_dir / INDEX_FILE
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return final


def _matches(row: dict[str, Any], key: str, value: str) -> bool:
    have = row.get(key)
    if have is None:
        return False
    if isinstance(have, (int, float)) and not isinstance(have, bool):
        try:
            return float(have) == float(value)
        except ValueError:
            return False
    return str(have) == value


#: What a ticket's finding run contributes to the experiment of a ticket's re-training.
_TICKET_SECTIONS = ("prune.", "train.", "task.", "model.")


def _ticket_config(ticket: str, cache: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The stored config of the run that wrote the ticket folder ``<run>/tickets/<name>``."""
    source = Path(ticket).parent.parent
    key = str(source)
    if key not in cache:
        cfg = _read_yaml(source / "config.yaml")
        cache[key] = None if cfg is None else {k: v for k, v in flatten(cfg).items()
                                               if k == "method" or k.startswith(("method.", *_TICKET_SECTIONS))}
    return cache[key]


def _row(summary: dict[str, Any], cache: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    row = flatten(summary)
    row.setdefault("status", "finished")
    if isinstance(summary.get("config"), dict):
        row.update({f"config.{k}": v for k, v in flatten(summary["config"], skip_config=False).items()})
    if row.get("role") == "level" and row.get("level") == 0:  # a prune run's dense model
        row["prune_method"] = row.get("method")
        row["method"] = "dense"
    if row.get("verb") == "rewind" and row.get("ticket"):
        source = _ticket_config(str(row["ticket"]), cache)
        if source is not None:
            row.update({f"ticket_config.{k}": v for k, v in source.items()})
    return row


def records(index: Path, *, include_unfinished: bool = False) -> list[dict[str, Any]]:
    """Every indexed record, flattened and normalised (see the module docstring)."""
    con = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        summaries = [json.loads(s) for (s,) in con.execute("SELECT summary FROM runs ORDER BY run_dir")]
    finally:
        con.close()
    cache: dict[str, dict[str, Any] | None] = {}
    rows = [_row(s, cache) for s in summaries]
    return rows if include_unfinished else [r for r in rows if r["status"] == "finished"]


def check_filter_keys(keys: list[str], rows: list[dict[str, Any]], settings: tuple[str, ...] = ()) -> None:
    """A filter key no indexed record has is a typo: one line with the nearest known keys."""
    known: set[str] = set()
    for r in rows:
        known.update(r)
    for key in keys:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known | set(settings)), n=3, cutoff=0.6)
        hint = f": did you mean {' or '.join(repr(c) for c in close)}?" if close else (
            ": filters are key=value on summary fields (report columns=[...] shows them; dotted for nested "
            "ones, e.g. metrics.f1, config.train.lr)")
        raise UserError(f"report: unknown filter key {key!r} (no run under this folder has it){hint}")


def parse_filters(where: list[str]) -> list[tuple[str, str]]:
    filters = []
    for w in where:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise UserError(f"filter '{w}' is not key=value (e.g. where=[task=mrpc,method=dense])")
        filters.append((key.strip(), value.strip()))
    return filters


def query(index: Path, where: list[str], *, include_unfinished: bool = False,
          settings: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Runs whose flattened summary matches every ``key=value`` filter; a filter key that no
    indexed record has raises :class:`UserError` (with "did you mean", ``settings`` being the
    caller's own option names, a likely target of a typo)."""
    filters = parse_filters(where)
    rows = records(index, include_unfinished=True)
    if filters and rows:
        check_filter_keys([k for k, _ in filters], rows, settings)
    if not include_unfinished:
        rows = [r for r in rows if r["status"] == "finished"]
    return [r for r in rows if all(_matches(r, k, v) for k, v in filters)]
