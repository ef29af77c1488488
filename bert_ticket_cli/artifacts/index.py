"""An index of every run's ``summary.json``: rebuilt from scratch on each ``report``.

Runs never write a shared file: each job writes only its own ``summary.json``, and
``report`` rebuilds ``<runs>/.index/runs.sqlite`` into a private temporary file, then renames
it into place.  Concurrent Slurm jobs (or two ``report`` calls) on a shared filesystem
therefore never contend for, or corrupt, one database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import INDEX_DIR, INDEX_FILE, REPLACED_MARK, SUMMARY_FILE
from bert_ticket_cli.errors import UserError


def find_summaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(SUMMARY_FILE) if REPLACED_MARK not in str(p.parent))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k == "config":
                continue
            out.update(flatten(v, f"{prefix}{k}."))
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


def query(index: Path, where: list[str]) -> list[dict[str, Any]]:
    """Runs whose flattened summary matches every ``key=value`` filter."""
    filters = []
    for w in where:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise UserError(f"filter '{w}' is not key=value (e.g. where=[task=mrpc,method=dense])")
        filters.append((key.strip(), value.strip()))
    con = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        rows = [flatten(json.loads(s)) for (s,) in con.execute("SELECT summary FROM runs ORDER BY run_dir")]
    finally:
        con.close()
    return [r for r in rows if all(_matches(r, k, v) for k, v in filters)]
