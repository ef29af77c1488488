"""Integration-test hooks: the size of the bad-input catalogue in the session summary."""

from __future__ import annotations

import pytest

BAD_INPUT_TEST = "test_bad_inputs.py::test_bad_input_exits_2_with_one_line["
_CATALOGUE = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[_CATALOGUE] = sum(BAD_INPUT_TEST in item.nodeid for item in items)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    cases = config.stash.get(_CATALOGUE, 0)
    if not cases:
        return
    outcomes = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        outcomes[outcome] = sum(BAD_INPUT_TEST in r.nodeid and (r.when == "call" or r.outcome != "passed")
                                for r in terminalreporter.stats.get(outcome, []))
    detail = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items() if n)
    terminalreporter.write_line(f"bad-input catalogue: {cases} cases ({detail or 'not run'})")
