"""The one error type for user mistakes, and the process exit codes.

Anything the user can fix (a bad config value, a missing file, a malformed TSV, a dataset
that is not available offline, ...) is raised as :class:`UserError`.  The CLI catches it at
the top, prints its message as one line and exits with :data:`EXIT_USAGE`.  Every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

#: Bad input: unknown key, wrong type, missing file, ... (one line on stderr).
EXIT_USAGE = 2
#: Stopped by SIGTERM/SIGUSR1 after writing a checkpoint: requeue and pass ``resume=true``.
#: 75 is EX_TEMPFAIL from sysexits.h ("temporary failure, try again").
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A problem the user can fix. The message names the problem and the fix, in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
