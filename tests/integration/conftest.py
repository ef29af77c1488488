"""Integration-test hooks: the size of the bad-input catalogue in the session summary."""

from __future__ import annotations

import pytest

#: The parametrized tests whose cases make up the catalogue (config and inputs; runs on disk).
BAD_INPUT_TESTS = ("test_bad_inputs.py::test_bad_input_exits_2_with_one_line[",
                   "test_bad_inputs_runs.py::test_one_error_line_exit_2_and_nothing_lost[")


def _in_catalogue(nodeid: str) -> bool:
    return any(t in nodeid for t in BAD_INPUT_TESTS)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Counted from the test reports (not the collection), so the line is right under
    pytest-xdist too, where the controller collects nothing itself."""
    outcomes: dict[str, set[str]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        outcomes[outcome] = {r.nodeid for r in terminalreporter.stats.get(outcome, [])
                             if _in_catalogue(getattr(r, "nodeid", "")) and (r.when == "call" or r.outcome != "passed")}
    cases = len(set().union(*outcomes.values()))
    if not cases:
        return
    detail = ", ".join(f"{len(ids)} {outcome}" for outcome, ids in outcomes.items() if ids)
    terminalreporter.write_line(f"bad-input catalogue: {cases} cases ({detail})")
