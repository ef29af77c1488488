"""The Slurm tests run against a real Slurm cluster (``scripts/slurm-local.sh up`` starts a
one-node one here) and are skipped, cleanly, when none answers: ``sinfo`` missing or failing, or
no node ready.  Marked ``slurm``; ``make test`` collects them (``.ci/run`` brings the local
cluster up first, so CI always runs them)."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def cluster_problem() -> str | None:
    """Why no Slurm cluster can run jobs here, or None."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"no Slurm client ({tool} not on PATH): scripts/slurm-local.sh up starts a local cluster"
    try:  # a configured cluster whose controller is down makes sinfo retry for a while
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        return "no Slurm cluster answers (sinfo: no answer within 8 s)"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed ({exc})"
    if out.returncode != 0:
        return f"no Slurm cluster answers (sinfo: {out.stderr.strip()[:200]})"
    states = {s.strip().rstrip("*~#") for s in out.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no Slurm node ready (sinfo: {', '.join(sorted(states)) or 'no nodes'})"
    return None


_PROBLEM: list[str | None] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = [item for item in items if "tests/slurm/" in str(item.fspath).replace("\\", "/")]
    if not here:
        return
    if not _PROBLEM:
        _PROBLEM.append(cluster_problem())
    for item in here:
        item.add_marker(pytest.mark.slurm)
        if _PROBLEM[0]:
            item.add_marker(pytest.mark.skip(reason=_PROBLEM[0]))
