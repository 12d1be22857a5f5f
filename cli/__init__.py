"""dsaudit's command line: parse arguments, call `catalog`, render with rich. No SQL, no math."""

from __future__ import annotations

import signal
from types import FrameType


def _terminated(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM (``docker stop``, a cancelled CI job, ``kill``) unwinds like Ctrl-C: Python's
    default for it ends the process on the spot, so an ingest could not take back what it had
    committed outside its transaction (recipes on PostgreSQL) nor stop its workers."""
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point of the ``dsaudit`` script.

    The command's libraries (numpy, SQLAlchemy, rich) load first, for a good part of a second:
    a Ctrl-C then exits quietly with code 130, as one during a command does, not with a
    traceback of the imports. SIGTERM exits with 143 the same way (`_terminated`).
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from cli.app import main as run
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    run()
