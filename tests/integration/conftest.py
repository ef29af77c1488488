"""Integration-test hooks: the size of the bad-input catalogue in the session summary."""

from __future__ import annotations

import pytest

#: The parametrized tests whose cases make up the catalogue (config and inputs; runs on disk).
BAD_INPUT_TESTS = ("test_bad_inputs.py::test_bad_input_exits_2_with_one_line[",
                   "test_bad_inputs_runs.py::test_one_error_line_exit_2_and_nothing_lost[")


def _in_catalogue(nodeid: str) -> bool:
    return any(t in nodeid for t in BAD_INPUT_TESTS)
_CATALOGUE = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_CATALOGUE] = sum(_in_catalogue(item.nodeid) for item in items)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    cases = config.stash.get(_CATALOGUE, 0)
    if not cases:
        return
    outcomes = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        outcomes[outcome] = sum(_in_catalogue(r.nodeid) and (r.when == "call" or r.outcome != "passed")
                                for r in terminalreporter.stats.get(outcome, []))
    detail = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items() if n)
    terminalreporter.write_line(f"bad-input catalogue: {cases} cases ({detail or 'not run'})")
