"""Read-only SQL for people: ``dsaudit sql "SELECT ..."``.

Read-only is enforced by the connection, never by parsing the statement: on SQLite the file is
opened with ``mode=ro`` and ``PRAGMA query_only``, and an authorizer refuses ATTACH and DETACH
(an attached database would be writable, and VACUUM INTO attaches one) and every PRAGMA that is
not a plain read of schema information or an integrity check. Extension loading stays disabled,
and the driver runs one statement per call. So writes inside CTEs, ANALYZE, REINDEX and
``SELECT load_extension(...)`` all fail, whatever the statement's text looks like.
On PostgreSQL see `_run_postgres`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.pool import NullPool

from catalog.db import describe, open_catalog, resolve_url
from catalog.errors import QueryError

_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "database_list",
    "collation_list",
    "function_list",
    "compile_options",
    "integrity_check",
    "quick_check",
    "foreign_key_check",
}
"""Pragmas that only read, whatever their argument (usually a table name)."""
_READ_SETTINGS = {
    "read_uncommitted",
    "user_version",
    "schema_version",
    "application_id",
    "journal_mode",
    "page_size",
    "page_count",
    "freelist_count",
    "encoding",
    "foreign_keys",
    "query_only",
    "data_version",
}
"""Settings that may be read (``PRAGMA name``) but never set (``PRAGMA name = value``)."""


_REFUSALS = ("readonly", "read-only", "not authorized", "authorization denied")
"""Words of the engines' refusals to write (SQLite: "attempt to write a readonly database",
"not authorized"; PostgreSQL: "cannot execute INSERT in a read-only transaction")."""


@dataclass(frozen=True)
class SqlResult:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    truncated: bool


def _authorize(action: int, arg1: str | None, arg2: str | None, *_rest: Any) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        # arg1 is the pragma's name, arg2 its argument or the value being set.
        name = (arg1 or "").lower()
        if name in _READ_PRAGMAS or (name in _READ_SETTINGS and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sqlite_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_authorize)
    return conn


def run_sql(db: str | None, statement: str, *, max_rows: int | None = None) -> SqlResult:
    """Run one statement on a read-only connection to the catalog.

    Args:
        db: the catalog URL or path (see `catalog.db.resolve_url`).
        statement: one SQL statement; anything that would write fails.
        max_rows: stop after this many rows (``truncated`` tells).

    Raises:
        QueryError: the statement failed, tried to write, or was several statements.
    """
    if not statement.strip():
        raise QueryError('no SQL statement given, e.g. dsaudit sql "SELECT * FROM v_split"')
    url = resolve_url(db)
    # Opening normally first creates nothing (create=False) but upgrades an old schema.
    open_catalog(url, create=False).dispose()
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _run_postgres(url, statement, max_rows)
    path = Path(parsed.database or "").resolve()  # as_uri() takes absolute paths only
    engine = create_engine("sqlite://", creator=lambda: _sqlite_readonly(path))
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(statement)
            if not result.returns_rows:
                return SqlResult(columns=(), rows=(), truncated=False)
            columns = tuple(result.keys())
            fetched = result.fetchmany(max_rows + 1) if max_rows is not None else result.fetchall()
            truncated = max_rows is not None and len(fetched) > max_rows
            rows = tuple(tuple(_plain(v) for v in row) for row in fetched[: max_rows or None])
            return SqlResult(columns=columns, rows=rows, truncated=truncated)
    except (DBAPIError, StatementError) as exc:
        orig = getattr(exc, "orig", None) or exc
        raise _failed(url, orig) from None
    finally:
        engine.dispose()
        _close_wal(path)


def _close_wal(path: Path) -> None:
    """Remove the ``-wal`` and ``-shm`` files the read-only connection leaves.

    A read-only connection cannot checkpoint, so the last one to close leaves them beside the
    catalog; the last read-write connection to close removes them, as every other command's
    does. This one reads one row and writes nothing, and never creates the file (``mode=rw``).
    If another process still has the catalog open, it keeps the files, as it should.
    """
    with (
        suppress(sqlite3.Error),
        closing(sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True)) as conn,
    ):
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()


def _failed(url: str, error: BaseException) -> QueryError:
    """The driver's error as one line; a refusal to write says the catalog is read-only."""
    text = str(error).strip()
    message = text.splitlines()[0] if text else type(error).__name__
    if any(word in message.lower() for word in _REFUSALS):
        message += " (dsaudit sql is read-only: it cannot change the catalog)"
    return QueryError(f"{describe(url)}: SQL failed: {message}")


def _plain(value: Any) -> Any:
    """Bytes as hex so results print and serialise; everything else as the driver gave it."""
    return value.hex() if isinstance(value, bytes | memoryview) else value


def _run_postgres(url: str, statement: str, max_rows: int | None) -> SqlResult:
    """`run_sql` on PostgreSQL: one statement in a READ ONLY transaction that is never committed.

    Three locks, each closing a way around the others:

    - the session starts with ``default_transaction_read_only=on`` and the transaction is
      begun READ ONLY, so INSERT, UPDATE, DELETE, DDL, nextval() and friends fail;
    - ``SELECT 1`` runs first and takes the transaction's snapshot, after which PostgreSQL
      refuses ``SET TRANSACTION READ WRITE`` ("must be set before any query");
    - the statement goes through the extended query protocol (psycopg's ``stream``), where
      the server accepts exactly one statement: ``COMMIT; SET ...; INSERT ...`` is an error,
      so nothing can end our transaction and start a writable one. A lone ``COMMIT`` or
      ``SET SESSION CHARACTERISTICS`` changes nothing, as the connection is closed after it.
    """
    import psycopg  # the optional `postgres` extra; installed whenever the URL works at all

    parsed = make_url(url)
    options = " ".join(
        filter(
            None, [str(parsed.query.get("options") or ""), "-c default_transaction_read_only=on"]
        )
    )
    engine = create_engine(url, poolclass=NullPool, connect_args={"options": options})
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, psycopg.Connection)
            raw.rollback()
            raw.read_only = True
            with raw.cursor() as cursor:
                cursor.execute("SELECT 1")
                fetched: list[tuple[Any, ...]] = []
                try:
                    for row in cursor.stream(statement):
                        fetched.append(row)
                        if max_rows is not None and len(fetched) > max_rows:
                            break
                    description = cursor.description
                except psycopg.ProgrammingError as exc:
                    # A statement without rows (SET, LOCK, COMMIT) ran: psycopg's
                    # stream() says so with a plain client-side ProgrammingError (no SQLSTATE);
                    # server errors are subclasses and carry one.
                    if type(exc) is not psycopg.ProgrammingError or exc.sqlstate is not None:
                        raise
                    description = None
            raw.rollback()
    except psycopg.Error as exc:
        raise _failed(url, exc) from None
    finally:
        engine.dispose()
    if description is None:
        return SqlResult(columns=(), rows=(), truncated=False)
    truncated = max_rows is not None and len(fetched) > max_rows
    return SqlResult(
        columns=tuple(column.name for column in description),
        rows=tuple(tuple(_plain(v) for v in row) for row in fetched[: max_rows or None]),
        truncated=truncated,
    )
