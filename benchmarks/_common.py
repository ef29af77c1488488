"""Small helpers shared by the benchmark scripts.

A benchmark here compares "ours" with a baseline inside one process, on a machine that may
be shared (a CI box, a laptop with a browser open).  So both sides are measured side by
side, alternating round by round, and the median of the rounds is reported: slow phases of
the machine then hit both sides instead of whichever happened to run during them.

Every benchmark prints a human-readable table and, as the very last line of stdout, one
JSON object (``emit_json``) that scripts and CI can parse with ``tail -n 1``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence


def set_offline() -> None:
    """No network: benchmarks build everything locally (call before importing transformers)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def passive_openmp() -> str:
    """Make idle OpenMP threads sleep instead of spin (unless OMP_WAIT_POLICY is already set).

    Must run before torch is imported.  With the default (spinning) policy, on a machine
    whose cores are also busy with other processes, every parallel kernel waits for threads
    that the scheduler has taken off the CPU while the spinning ones burn the time slice:
    here (2 cores, load average ~6) a training step with 2 threads was 4-15x slower than
    with 1 thread, and the slowdown changed from second to second, so rounds scattered by
    10x.  PASSIVE brings 2 threads back to the speed of 1 thread on a busy box and costs
    little on an idle one.  Both sides of a comparison run under the same policy.  Export
    OMP_WAIT_POLICY=ACTIVE to measure torch's default behaviour instead.
    """
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _finite(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs if math.isfinite(x)]


def median(xs: Sequence[float]) -> float:
    """Median of the finite values (a round that failed to measure reports NaN); NaN if none."""
    ok = _finite(xs)
    return float(statistics.median(ok)) if ok else float("nan")


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median of the finite values: how much the rounds disagreed (0.05 = 5 %)."""
    ok = _finite(xs)
    m = median(ok)
    return float((max(ok) - min(ok)) / m) if ok and m else float("nan")


def alternate(rounds: int, sides: dict[str, Callable[[], float]],
              on_round: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, list[float]]:
    """Run every side once per round and collect what each returns (e.g. steps/s).

    The order flips every round (A B, B A, A B, ...) so neither side always runs first,
    right after the other has warmed the caches or while a neighbour process starts up.
    """
    names = list(sides)
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        this_round: dict[str, float] = {}
        for name in order:
            this_round[name] = sides[name]()
            results[name].append(this_round[name])
        if on_round is not None:
            on_round(r, this_round)
    return results


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(terse=True),
    }


def load_note() -> str:
    """For table captions: the 1-minute load average and the CPU count."""
    return f"1-min load average {machine_info()['load_avg_1m']} on {os.cpu_count()} CPUs"


def rounds_cells(xs: Sequence[float], fmt: str = ".3f") -> tuple[str, str]:
    """Table cells for a side's rounds: the values, and their spread in percent."""
    return " ".join(f"{x:{fmt}}" for x in xs), f"{100 * spread(xs):.1f}%"


def log(msg: str) -> None:
    """Progress notes go to stderr so stdout stays table + one JSON line."""
    print(msg, file=sys.stderr, flush=True)


def _strict(value: Any) -> Any:
    """NaN / inf -> None, recursively (json.dumps would write NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def emit_json(record: dict[str, Any]) -> None:
    """The machine-readable result: exactly one line, the last one on stdout."""
    sys.stdout.flush()
    print(json.dumps(_strict(record), allow_nan=False, default=float), flush=True)


def emit_result(record: dict[str, Any], *, quick: bool) -> None:
    """``emit_json`` of ``record`` followed by the keys every benchmark ends with."""
    emit_json({**record, "machine": machine_info(), "quick": bool(quick)})
