"""What a prepared folder depends on and holds: the settings and their fingerprint, the
``prepared.json`` manifest, the part names and paths (step 5 of the package doc)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bert_ticket_cli.data.common import default_cache_dir
from bert_ticket_cli.data.pretraining.sources import Source
from bert_ticket_cli.data.pretraining.tokenizer import tokenizer_identity

#: Bump whenever a change here changes the prepared data for the same inputs and settings.
FORMAT_VERSION = "pretrain-data-1"
MANIFEST = "prepared.json"
PREPARE_HINT = "bert-ticket pretrain prepare pretrain.data.corpus=[path/to/text]"


def cache_root(cfg: Any) -> Path:
    return Path(default_cache_dir(cfg)).expanduser()


def settings_of(cfg: Any, corpus: Sequence[Source], validation: Sequence[Source]) -> dict[str, Any]:
    """Everything the prepared data depends on, in the order mismatches are reported."""
    d = cfg.pretrain.data
    return {
        "format": FORMAT_VERSION,
        "corpus": [s.identity for s in corpus],
        "validation": [s.identity for s in validation],
        "tokenizer": tokenizer_identity(cfg),
        "vocab_size": int(d.vocab_size),
        "lowercase": bool(d.lowercase),
        "seq_length": int(d.seq_length),
        "mlm_probability": float(d.mlm_probability),
        "max_predictions": int(d.max_predictions),
        "duplication": int(d.duplication),
        "validation_fraction": float(d.validation_fraction),
        "shard_rows": int(d.shard_rows),
        "seed": int(cfg.seed),
    }


def fingerprint_of(settings: Mapping[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    for key, value in new.items():
        if old.get(key) != value:
            name = {"format": "the data format version", "seed": "seed",
                    "corpus": "pretrain.data.corpus (files or their contents)",
                    "validation": "pretrain.data.validation (files or their contents)"}.get(key, f"pretrain.data.{key}")
            if isinstance(value, (list, dict)) or key == "format":
                return name
            return f"{name}: {old.get(key)!r} there, {value!r} now"
    return "unknown settings"


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class Manifest:
    """``prepared.json``, rewritten atomically whenever a part finishes; ``complete`` comes last."""

    def __init__(self, folder: Path, fingerprint: str, settings: dict[str, Any], old: dict[str, Any] | None):
        self.path = folder / MANIFEST
        old = old or {}
        self.data: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "settings": settings,
            "tokenizer": old.get("tokenizer"),
            "counts": dict(old.get("counts") or {}),
            "parts": list(old.get("parts") or []),
            "complete": False,
        }

    @property
    def parts(self) -> list[str]:
        return self.data["parts"]

    def write(self) -> None:
        _write_json_atomic(self.path, self.data)

    def finish_part(self, name: str, counts: Mapping[str, Any] | None = None, **extra: Any) -> None:
        self.data["counts"].update(counts or {})
        self.data.update(extra)
        if name not in self.parts:
            self.parts.append(name)
        complete = self.data.pop("complete")
        self.data["complete"] = complete
        self.write()

    def complete(self) -> None:
        self.data.pop("complete")
        self.data["complete"] = True
        self.write()


def part_names(duplication: int) -> list[str]:
    return ["tokenizer", "blocks", "validation", *(f"copy-{k:02d}" for k in range(duplication))]


def part_path(folder: Path, name: str) -> Path:
    return folder / "train" / name if name.startswith("copy-") else folder / name


def tmp_path(folder: Path, name: str) -> Path:
    final = part_path(folder, name)
    return final.with_name(f".tmp-{final.name}")


def prepared_dir(cfg: Any, fingerprint: str) -> Path:
    d = cfg.pretrain.data
    if d.dir:
        return Path(str(d.dir)).expanduser()
    return cache_root(cfg) / "pretrain" / fingerprint


def parts_present(folder: Path, manifest: Mapping[str, Any], duplication: int) -> bool:
    parts = manifest.get("parts") or []
    return all(p in parts and part_path(folder, p).is_dir() for p in part_names(duplication))
