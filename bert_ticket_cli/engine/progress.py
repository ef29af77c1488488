"""Progress: a rich bar on a terminal, plain periodic lines otherwise (Slurm logs, CI, pipes)."""

from __future__ import annotations

import sys
import time

from rich.console import Console


class Progress:
    def __init__(self, total: int, start: int, *, enabled: bool, description: str = "train"):
        self.enabled = enabled
        self.total = total
        self.console = Console(stderr=False)
        self.live = enabled and sys.stdout.isatty()
        self._t0 = time.perf_counter()
        self._start = start
        self._bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=self.console, transient=False,
            )
            self._task = self._bar.add_task(description, total=total, completed=start, info="")
            self._bar.start()

    def advance(self, step: int, info: str | None = None) -> None:
        """Move the bar to ``step``; ``info`` (e.g. ``loss 0.4321``) replaces the text after it."""
        if self._bar is not None:
            if info is None:
                self._bar.update(self._task, completed=step)
            else:
                self._bar.update(self._task, completed=step, info=info)

    def line(self, text: str) -> None:
        """A log line: above the bar on a terminal, a plain flushed line elsewhere."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.log(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
