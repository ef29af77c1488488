"""SIGTERM / SIGUSR1 -> checkpoint at the next step boundary, then exit 75 (requeue me).

Slurm sends SIGTERM at pre-emption and ``--signal=USR1@120`` before the time limit.  The
handler only sets a flag; the loop checks it after each optimizer step (agreeing across
ranks), writes a checkpoint and returns, and the CLI exits with ``EXIT_PREEMPTED``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

_STOP = {"signal": None}


def _handler(signum: int, _frame: Any) -> None:
    _STOP["signal"] = signum


def install() -> None:
    _STOP["signal"] = None
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def requested() -> int | None:
    return _STOP["signal"]


def fault_injection(step: int) -> None:
    """Test hook: ``BERT_TICKET_FAULT_AT_STEP=N:KILL|TERM[:K]`` kills this process after step N
    (of the K-th training in this process, default the first: IMP levels and EarlyBERT stages
    each count their steps from 0).

    KILL simulates a crash (no chance to save: resume from the last periodic checkpoint);
    TERM simulates a Slurm pre-emption (graceful checkpoint, exit 75).
    """
    spec = os.environ.get("BERT_TICKET_FAULT_AT_STEP")
    if not spec:
        return
    at, how, nth = (spec.split(":") + ["", ""])[:3]
    if how.upper() == "NAN" or int(at) != step or int(os.environ.get("RANK", "0")) != 0:
        return
    _FAULT["seen"] += 1
    if _FAULT["seen"] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL if how.upper() == "KILL" else signal.SIGTERM)


_FAULT = {"seen": 0}


def poison_loss(step: int) -> bool:
    """Test hook: ``BERT_TICKET_FAULT_AT_STEP=N:NAN`` makes the loss of optimizer step N (1-based)
    NaN on every rank: the divergence stop is tested through the real CLI."""
    spec = os.environ.get("BERT_TICKET_FAULT_AT_STEP", "")
    at, _, how = spec.partition(":")
    return how.split(":")[0].upper() == "NAN" and at.isdigit() and int(at) == step
