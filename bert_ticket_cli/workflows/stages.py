"""What every workflow shares: the run preamble and the resumable stage loop.

The preamble (:func:`run_workflow`): start the engine session, decide what to do with the run
folder (nothing on disk changes yet), wait for every process, report a finished run and leave
it alone, note the start time, run the workflow's body, and shut the session down whatever
happens.  A body that was stopped by a signal (a checkpoint was written) raises
:class:`Preempted`, and the process exits with 75 (requeue with ``resume=true``).  A stop
signal is also honoured where nothing is half-written (``signals.StopRequested``, exit 75):
at the preamble's start, once the inputs have loaded (``Run.commit``, before the run folder
changes) and before every stage; the flag is never cleared, so a signal that arrives between
two trainings (an evaluation, the pruning, a save) is honoured at the next of these points.

The stage loop (:func:`run_stages`): a multi-run procedure (IMP levels, EarlyBERT stages) runs
its stages as sub-runs, each a run folder of its own.  A finished stage (its ``summary.json``)
is skipped and its record read; an interrupted one (a checkpoint, no record) is refused
without ``resume=true`` and continued from its latest checkpoint with it (or ``resume=auto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from bert_ticket_cli.artifacts.paths import RunDir
from bert_ticket_cli.artifacts.records import (
    OpenedRun, check_checkpoint_intact, commit_run, now, open_run, read_summary, resumes,
)
from bert_ticket_cli.errors import EXIT_PREEMPTED, UserError


class Preempted(Exception):
    """A stop signal (engine/signals.py) interrupted training after it wrote a checkpoint."""


@dataclass
class Run:
    """An opened run: its config, the engine session, its folder and when it started."""

    cfg: Any
    session: Any
    opened: OpenedRun
    started: str

    @property
    def dir(self) -> RunDir:
        return self.opened.dir

    @property
    def main(self) -> bool:
        return self.session.is_main

    def commit(self) -> None:
        """Every input has loaded: now the run folder may change (see ``records.commit_run``).
        A stop signal that arrived while the inputs loaded ends the run here, before any change."""
        self.session.check_stop("before the run folder was written")
        commit_run(self.opened, self.cfg, is_main=self.main)


def run_workflow(cfg: Any, body: Callable[[Run], int], *,
                 on_finished: Callable[[dict[str, Any]], None] | None = None, **session_options: Any) -> int:
    """Open the run and call ``body(run)``; its exit status (75 when preempted).  A finished
    run is reported (``on_finished(summary)`` prints its results) and not run again.
    ``session_options`` go to ``start_session``."""
    from bert_ticket_cli.engine import signals
    from bert_ticket_cli.engine.session import start_session

    try:
        signals.check("before the run started")  # e.g. while Python imported the libraries
    except signals.StopRequested as stop:
        return _stopped(stop, True)
    session = start_session(cfg, **session_options)
    try:
        opened = open_run(cfg)
        session.wait_for_everyone()
        if opened.finished:
            if session.is_main:
                print(f"{opened.dir.root} is already finished (overwrite=true to run it again)")
                if on_finished is not None:
                    on_finished(read_summary(opened.dir))
            return 0
        try:
            session.check_stop("before the run started")
            return body(Run(cfg, session, opened, now()))
        except Preempted:
            return EXIT_PREEMPTED
        except signals.StopRequested as stop:
            return _stopped(stop, session.is_main)
    finally:
        session.shutdown()


def _stopped(stop: Any, main: bool) -> int:
    """A stop signal honoured where nothing is half-written: say so, exit 75."""
    if main:
        print(f"{stop}: stopped, nothing half-written; resume with resume=true", flush=True)
    return EXIT_PREEMPTED


def run_stages(run: Run, stages: Iterable[tuple[Hashable, RunDir]],
               train: Callable[[Hashable, RunDir, Path | None], dict[str, Any] | None],
               records: dict[Hashable, Any] | None = None) -> dict[Hashable, Any]:
    """Run each ``(key, sub-run folder)`` in order: ``train(key, folder, resume_from)`` returns
    the stage's record (None on processes that do not write it).  ``records`` (filled in place
    and returned) holds the records of the stages so far, finished ones read from disk."""
    records = {} if records is None else records
    for key, srd in stages:
        # A stop signal that arrived since the last stage (its evaluation, the pruning, the
        # records) is honoured before the next one starts: every stage so far is complete.
        run.session.check_stop(f"before {srd.root.name}")
        if srd.summary.exists():
            records[key] = read_summary(srd)
            continue
        latest = srd.latest_checkpoint()
        if latest is not None and not resumes(run.cfg):
            raise UserError(f"{srd.root} was interrupted (checkpoint {latest.name}): pass resume=true to continue it")
        if latest is not None:
            check_checkpoint_intact(latest)
        records[key] = train(key, srd, latest if resumes(run.cfg) else None)
    return records
