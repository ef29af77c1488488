"""Stop signals -> checkpoint at the next step boundary, then exit 75 (requeue me).

Slurm sends SIGTERM at pre-emption and ``--signal=USR1@120`` before the time limit; submitit
uses SIGUSR2.  ``BERT_TICKET_STOP_SIGNALS`` names the signals that mean "stop and requeue"
(default ``TERM,USR1,USR2``).

The handler only sets a flag, and the flag is never cleared inside a run: a request that
arrives at any moment (while Python imports, while data loads, during an evaluation, between
two IMP levels or EarlyBERT stages, while saving) stays pending until it is honoured.  It is
installed first thing in the CLI's ``main`` (this module imports nothing heavy for that
reason), and checked:

- in the run preamble (``workflows/stages.py``): at its start, after the inputs load and
  before the run folder changes (``Run.commit``), and before every stage; there nothing is
  half-written, :class:`StopRequested` is raised and the run exits 75;
- by the training loop after every optimizer step (agreeing across ranks) and before the
  first one: a checkpoint is written and the run exits 75;
- by ``main`` at the very end: a run that finished its work after the signal arrived also
  exits 75 (its rerun with ``resume=true`` reports it finished).
"""

from __future__ import annotations

import os
import signal
from typing import Any

#: The signals that request a stop, unless ``BERT_TICKET_STOP_SIGNALS`` says otherwise.
DEFAULT_STOP_SIGNALS = "TERM,USR1,USR2"
ENV_STOP_SIGNALS = "BERT_TICKET_STOP_SIGNALS"

_STOP: dict[str, Any] = {"signal": None}


class StopRequested(Exception):
    """A stop signal is pending at a point where nothing is half-written: the run exits 75."""

    def __init__(self, signum: int, where: str = ""):
        self.signum, self.where = signum, where
        super().__init__(f"stop signal {name(signum)} {where}".strip())


def name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return str(signum)


def stop_signals(spec: str | None = None) -> list[signal.Signals]:
    """The signals of ``spec`` (default: ``$BERT_TICKET_STOP_SIGNALS`` or TERM,USR1,USR2):
    names with or without ``SIG`` (``TERM``, ``SIGUSR1``) or numbers, comma-separated."""
    spec = os.environ.get(ENV_STOP_SIGNALS, DEFAULT_STOP_SIGNALS) if spec is None else spec
    out: list[signal.Signals] = []
    for part in (p.strip().upper() for p in spec.split(",")):
        if not part:
            continue
        try:
            sig = signal.Signals(int(part)) if part.isdigit() else signal.Signals[
                part if part.startswith("SIG") else "SIG" + part]
        except (KeyError, ValueError):
            raise ValueError(f"{ENV_STOP_SIGNALS}={spec!r}: {part!r} is not a signal name "
                             f"(write e.g. {DEFAULT_STOP_SIGNALS})") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"{ENV_STOP_SIGNALS}={spec!r}: {sig.name} cannot be caught")
        out.append(sig)
    return out


def _handler(signum: int, _frame: Any) -> None:
    if _STOP["signal"] is None:
        _STOP["signal"] = signum


def install() -> None:
    """Route the stop signals to the flag.  Idempotent, and it never clears a pending request
    (a training started after the signal arrived must still see it)."""
    for sig in stop_signals():
        signal.signal(sig, _handler)


def requested() -> int | None:
    """The first stop signal received (its number), or None."""
    return _STOP["signal"]


def check(where: str = "") -> None:
    """Raise :class:`StopRequested` if a stop signal is pending (one process; see
    ``Session.check_stop`` for the agreement across ranks)."""
    if _STOP["signal"] is not None:
        raise StopRequested(_STOP["signal"], where)


def clear() -> None:
    """Forget a pending request: for tests and benchmarks that run several trainings in one
    process on purpose.  Never called inside a run."""
    _STOP["signal"] = None


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
