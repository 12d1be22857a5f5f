"""Errors meant for people.

Every problem caused by the user's input (a bad file, an unknown dataset, a catalog from a newer
release) is raised as a `CatalogError` subclass whose message is one finished sentence naming the
file or thing and the problem. The command line prints it as ``Error: <message>`` and exits 2;
anything else that escapes is a bug.
"""

from __future__ import annotations

import os


class CatalogError(Exception):
    """Base class of every user-facing error."""


class UsageError(CatalogError):
    """Arguments that contradict each other or make no sense together."""


class InputError(CatalogError):
    """A source file or argument cannot be ingested as given."""


class NotFoundError(CatalogError):
    """A dataset, version, split or image named by the user does not exist."""


class VersionExistsError(CatalogError):
    """A dataset version is immutable: it can be ingested once."""


class SchemaError(CatalogError):
    """The catalog cannot be opened by this release (newer schema, not a catalog...)."""


class BusyError(CatalogError):
    """Another process holds the catalog's write lock for longer than we wait."""


class StorageError(CatalogError):
    """The catalog could not be written: a full disk, a file size limit, a failing disk."""


class QueryError(CatalogError):
    """A user-written SQL statement failed or tried to write."""


def require_utf8(path: str | os.PathLike[str]) -> None:
    """Refuse a file name whose bytes are not UTF-8.

    Python decodes such bytes to lone surrogates, which no database column, report or terminal
    takes: an ingest would fail at its first insert, after reading every file.

    Raises:
        InputError: naming the path, its odd bytes shown as ``\\xff``.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise InputError(
            f"{shown}: the name is not valid UTF-8; rename it (the catalog keeps names as text)"
        ) from None


NOT_IN_NAMES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Unicode categories no name or label may hold: controls (NUL, newline, tab, ESC), lone
surrogates (bytes that were not UTF-8), line and paragraph separators. Joiners (used in
Persian, Indic scripts and emoji), other spaces and letters of any script are fine."""
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional overrides and isolates, which make a name or label print as another."""


def escaped(text: str) -> str:
    """``text`` with each character `unprintable` finds shown as its escape (``\\n``,
    ``\\x1b``, ``\\u202e``): a file name may hold any of them, and printed raw a newline
    would make a one-line error two lines and an ESC a terminal command."""
    import unicodedata

    return "".join(
        ascii(c)[1:-1] if unicodedata.category(c) in NOT_IN_NAMES or c in BIDI_CONTROLS else c
        for c in text
    )


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that no name or label may hold (`NOT_IN_NAMES`,
    `BIDI_CONTROLS`: an ESC in a label reached the terminal as a colour code), else None."""
    import unicodedata

    return next(
        (c for c in text if unicodedata.category(c) in NOT_IN_NAMES or c in BIDI_CONTROLS), None
    )
