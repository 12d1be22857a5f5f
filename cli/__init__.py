"""dsaudit's command line: parse arguments, call `catalog`, render with rich. No SQL, no math."""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``dsaudit`` script.

    The command's libraries (numpy, SQLAlchemy, rich) load first, for a good part of a second:
    a Ctrl-C then exits quietly with code 130, as one during a command does, not with a
    traceback of the imports.
    """
    try:
        from cli.app import main as run
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    run()
