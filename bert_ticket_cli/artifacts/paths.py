"""Every file name a run writes, in one place.

::

    runs/<verb>/<run-name>/
        config.yaml          the resolved config (what ran)
        metrics.jsonl        one JSON object per log / eval event (rank 0 appends)
        summary.json         the run's record, written last: its presence means "finished"
        model/               the trained model (safetensors + config + tokenizer), HF format
        checkpoints/step-N/  resumable state (Accelerate save_state + trainer_state.json)
        predictions/         GLUE leaderboard TSVs (eval.predict_test=true)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary ``.tmp-*`` folders are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        done = [
            p for p in self.checkpoints.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).exists()
        ]
        return sorted(done, key=lambda p: p.name)

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None


def run_name(cfg: Any) -> str:
    """``<task>-<model>[-<method>]-s<seed>`` unless ``run_name`` is set."""
    if cfg.run_name:
        return str(cfg.run_name)
    method = getattr(cfg, "method", "dense")
    tag = f"-{method}" if method and method != "dense" else ""
    return f"{cfg.task.name}-{cfg.model.name}{tag}-s{cfg.seed}"


def run_dir(cfg: Any) -> RunDir:
    return RunDir(Path(cfg.output_dir).expanduser() / cfg.verb / run_name(cfg))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
