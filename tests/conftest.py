"""Shared test set-up: offline hub, a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see cli.main
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300,
        launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``bert-ticket ARGS`` as a user would (a fresh process), capturing its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    cmd = (launcher or [sys.executable, "-m", "bert_ticket_cli"]) + list(args)
    return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (only the project's CI machines have it)")
    return SHARED_DATA
