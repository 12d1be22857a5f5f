"""Opening a catalog: URL resolution, engine set-up, SQLite pragmas, migrate-on-open, read-only.

A catalog is any SQLAlchemy URL; a plain path means a SQLite file. `open_catalog` builds an
engine, attaches the SQLite pragmas to *that* engine, and brings the schema to Alembic's head
(creating it on first use). A catalog written by a newer dsaudit is refused rather than touched.

The caller owns transactions: library functions take a `Connection` and never commit; wrap
writes in `writing(engine)` (or `write_retrying` for an ingest) so that a version becomes visible
whole or not at all, and reads in `reading(engine)` so that every query sees one snapshot.

Engines: SQLite (the default, one file) and PostgreSQL through psycopg 3 (``pip install
'dsaudit[postgres]'``, ``--db postgresql+psycopg://...``). What differs lives here: SQLite
pragmas and its single writer; on PostgreSQL bulk rows go through ``COPY ... FROM STDIN``
(`bulk_insert`, `insert_absent`), concurrent writers are coordinated by row locks and one
advisory lock (`lock_pair_finding`), and transient conflicts are retried (`write_retrying`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    Index,
    Table,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    NoSuchModuleError,
    OperationalError,
)

import migrations
from catalog.errors import (
    BusyError,
    CatalogError,
    InputError,
    NotFoundError,
    SchemaError,
    StorageError,
    UsageError,
    require_utf8,
)

if TYPE_CHECKING:
    from alembic.config import Config

DEFAULT_CATALOG = "dsaudit.db"
ENV_VAR = "DSAUDIT_DB"
BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another writer's lock before giving up with "catalog busy"."""
WRITE_ATTEMPTS = 3
"""How many times `write_retrying` runs a PostgreSQL write whose transaction lost a race."""
MIGRATION_LOCK = 0x647361756469_0001
"""PostgreSQL advisory lock keys (any 64-bit numbers, "dsaudi" + a counter): schema upgrades..."""
PAIR_LOCK = 0x647361756469_0002
"""...the band join + pair insert of an ingest (`lock_pair_finding`)..."""
RECIPES_LOCK = 0x647361756469_0003
"""...and a catalog's choice between recipes and exact-only (`lock_recipe_choice`)."""

T = TypeVar("T")


POSTGRES_EXAMPLE = "postgresql+psycopg://USER@HOST/DATABASE"


def resolve_url(db: str | os.PathLike[str] | None = None) -> str:
    """The catalog URL: ``db``, else ``$DSAUDIT_DB``, else ``./dsaudit.db``; a path means SQLite."""
    value = os.fspath(db) if db is not None else ""
    value = value or os.environ.get(ENV_VAR) or DEFAULT_CATALOG
    if "://" in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # the URL itself is not shown: it may hold a password
            raise UsageError(
                f"{value.partition('://')[0]}://...: the URL is not valid UTF-8 text"
            ) from None
        unusable = UsageError(
            f"{value.partition('://')[0]}://...: not a database URL dsaudit can use; give a file "
            f"path (SQLite) or a URL such as {POSTGRES_EXAMPLE}"
        )  # the rest of the URL is not shown: it may hold a password
        try:
            url = make_url(value)
            backend = url.get_backend_name()
        except (ArgumentError, ValueError):  # unparsable, or a port that is not a number
            raise unusable from None
        if backend not in ("sqlite", "postgresql"):
            hint = f"; write {POSTGRES_EXAMPLE}" if backend == "postgres" else ""
            raise UsageError(
                f"{describe(value)}: a catalog is a SQLite file or a PostgreSQL database, and "
                f"'{backend}' is neither{hint}"
            )
        try:
            url.get_dialect()  # an unknown driver ("sqlite+://"); the DBAPI is imported later
        except NoSuchModuleError:
            raise unusable from None
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            # sqlite:///cat.db is relative to the working directory: made absolute, as a
            # path is, so that file URIs (read-only opens) and stored paths work.
            absolute = str(Path(url.database).expanduser().resolve())
            return url.set(database=absolute).render_as_string(hide_password=False)
        return value
    # Built, not formatted: a path holding "%20", "?" or "#" is a file name, not URL syntax.
    require_utf8(value)
    path = str(Path(value).expanduser().resolve())
    return URL.create("sqlite", database=path).render_as_string(hide_password=False)


def describe(url: str) -> str:
    """The catalog as a person would name it: a file path for SQLite, else the URL sans password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return parsed.database
    # libpq takes a password in the query too (``?password=...``): hidden like the user's.
    hidden = {
        key: "***" if key.lower() in _SECRET_PARAMETERS else value
        for key, value in parsed.query.items()
    }
    rendered = parsed.set(query=hidden).render_as_string(hide_password=True)
    return rendered.replace("=%2A%2A%2A", "=***")


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
"""libpq connection parameters that hold secrets (`describe` hides them)."""


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


PAGE_SIZE = 16384
"""SQLite page size of new catalogs, bytes."""
CACHE_MIB = 128
"""SQLite page cache of each connection, MiB (allocated as used)."""


def _attach_sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN until the first DML statement, which
    # breaks atomic DDL+DML and read consistency; take control of BEGIN ourselves (the recipe
    # from SQLAlchemy's SQLite dialect documentation).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        # Takes effect only on a new, empty file (before WAL): 16 KB pages hold a 1 KB
        # signature inside its WITHOUT ROWID leaf, where 4 KB pages gave each one an overflow
        # page of its own (220k images: a 1 GB signature table, now 0.3 GB, 3x faster inserts).
        cursor.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Up to 128 MB of page cache (allocated only as used): the band-key B-tree of a large
        # ingest stays in memory; measured 25 % faster band-key inserts than the 2 MB default.
        cursor.execute(f"PRAGMA cache_size = -{CACHE_MIB * 1024}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades to
        # a writer fails at once with SQLITE_BUSY instead of waiting for the other writer.
        write = conn.get_execution_options().get("dsaudit_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _build_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        _attach_sqlite_pragmas(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ImportError as exc:  # the URL's driver is an optional extra
        extra = (
            " (pip install 'dsaudit[postgres]')"
            if parsed.get_backend_name() == "postgresql"
            else ""
        )
        raise InputError(
            f"{describe(url)}: the database driver is not installed: {exc.name or exc}{extra}"
        ) from None


def open_catalog(db: str | os.PathLike[str] | None = None, *, create: bool = True) -> Engine:
    """Open (and create or upgrade) the catalog named by ``db`` (a URL or a path).

    Args:
        db: a SQLAlchemy URL or a file path; None means ``$DSAUDIT_DB`` or ``./dsaudit.db``.
        create: when False, a missing SQLite file is an error instead of a new empty catalog.

    Raises:
        NotFoundError: ``create`` is False and the SQLite file does not exist.
        SchemaError: the file is not a catalog, or a newer dsaudit wrote it.
    """
    url = resolve_url(db)
    path = _sqlite_path(url)
    if path is not None:
        if path.is_dir():
            raise SchemaError(f"{path}: is a directory, not a catalog file")
        if not create and (not path.exists() or path.stat().st_size == 0):
            what = "an empty file, not a catalog" if path.exists() else "no catalog here"
            raise NotFoundError(
                f"{path}: {what}; run `dsaudit ingest` or `dsaudit demo` first, "
                "or choose another with --db / DSAUDIT_DB"
            )
        _refuse_foreign(path, create=create)
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = _build_engine(url)
    try:
        migrate(engine, create=create)
    except DatabaseError as exc:
        engine.dispose()
        full = _person_error(url, exc)
        if full is not None:
            raise full from None
        raise SchemaError(
            f"{describe(url)}: cannot be opened as a catalog ({_reason(exc)}"
            f"{_unwritable_directory(path, _reason(exc))})"
        ) from None
    except BaseException:
        engine.dispose()
        raise
    return engine


_CATALOG_TABLES = frozenset({"alembic_version", "dataset", "version", "split", "image", "item"})
"""Tables every dsaudit catalog has had since its first schema revision."""


def _refuse_foreign(path: Path, *, create: bool) -> None:
    """Refuse an SQLite file that is not a dsaudit catalog, read without writing a byte:
    opened as a catalog, its connection would first switch it to the write-ahead log
    (`_attach_sqlite_pragmas`), a change to the file's header.

    Raises:
        SchemaError: a database with tables, not all of a catalog's (another program's, even
            one that Alembic manages too).
        NotFoundError: a database without tables, when ``create`` is False (a read-only
            command never makes one a catalog).

    Anything this read-only look cannot tell (not a database at all) is left to `migrate`,
    whose errors say it.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        raw = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        finally:
            raw.close()
    except sqlite3.Error:
        return
    if not tables and not create:
        raise NotFoundError(
            f"{path}: a database without tables, not a catalog; run `dsaudit ingest` or "
            "`dsaudit demo` first, or choose another with --db / DSAUDIT_DB"
        )
    if tables and not _CATALOG_TABLES.issubset(tables):
        raise SchemaError(
            f"{path}: is a database but not a dsaudit catalog (it lacks dsaudit's tables); "
            "it was not changed"
        )


def catalog_file(db: str | os.PathLike[str] | None = None) -> Path | None:
    """The SQLite file of the catalog named by ``db`` (`resolve_url`); None for another engine."""
    return _sqlite_path(resolve_url(db))


def _unwritable_directory(path: Path | None, reason: str) -> str:
    """Why SQLite may not open an existing catalog: even to read it, a catalog in write-ahead
    log mode needs its ``-shm`` (and ``-wal``) files beside it, so a directory this process
    cannot write to (a read-only mount) stops it. Empty when that is not the case."""
    if (
        path is None
        or not path.exists()
        or os.access(path.parent, os.W_OK)
        or not any(
            why in reason for why in ("unable to open", "readonly", "read-only", "disk I/O error")
        )
    ):
        return ""
    return (
        f"; its directory {path.parent} is not writable, and SQLite writes the write-ahead "
        "log's files beside a catalog even to read it: copy it somewhere writable"
    )


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]


_DSAUDIT_REVISION = re.compile(r"\d{4}(_\w*)?")
"""dsaudit's schema revisions are numbered (``0008``); Alembic's default ids are 12 hex
digits (``1a2b3c4d5e6f``), another program's."""

SCHEMA_HEAD = "0008"
"""The newest revision in ``migrations/versions`` (a test checks it against Alembic's head)."""


def _revisions(engine: Engine) -> set[str]:
    """The catalog's schema revisions, read with plain SQL (none for a new database)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return set()
        return {row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")}


def migrate(engine: Engine, *, create: bool = True) -> None:
    """Bring the catalog's schema to this release's head; refuse a schema from the future.

    A catalog at the head is told by one query: importing Alembic took 0.2 s of every
    command's start, so it is imported only to create, upgrade or refuse a schema.

    Args:
        create: when False, a database without a catalog (a new, empty PostgreSQL database,
            perhaps a typo for the team's) is refused instead of made one: read-only commands
            never create a catalog (`open_catalog` checks an SQLite file before this).

    Raises:
        NotFoundError: ``create`` is False and the database holds nothing.
        SchemaError: another program's database, or a newer dsaudit's catalog.
    """
    if _revisions(engine) == {SCHEMA_HEAD}:
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = _alembic_config()
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    known = {rev.revision for rev in script.walk_revisions()}
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        if current == heads:
            return
        unknown = current - known
        name = describe(str(engine.url))
        if unknown and all(_DSAUDIT_REVISION.fullmatch(r) for r in unknown):
            raise SchemaError(
                f"{name}: written by a newer dsaudit (schema revision "
                f"{', '.join(sorted(unknown))}); upgrade dsaudit to open it"
            )
        if unknown:  # Alembic's own ids are hex: another program's schema
            raise SchemaError(
                f"{name}: is a database but not a dsaudit catalog (its schema version "
                f"{', '.join(sorted(unknown))} is another program's); it was not changed"
            )
        schema = inspect(conn)
        if not current and (schema.get_table_names() or schema.get_view_names()):
            raise SchemaError(
                f"{name}: is a database but not a dsaudit catalog "
                "(it has tables and no dsaudit schema version)"
            )
        if not current and not create:
            raise NotFoundError(
                f"{name}: no catalog here (an empty database); run `dsaudit ingest` or "
                "`dsaudit demo` first, or choose another with --db / DSAUDIT_DB"
            )
    # Several processes opening an old or new catalog at once (CI jobs meeting a new dsaudit):
    # each takes the writer's lock first and waits for the one upgrading, then finds the
    # schema at the head and goes on. PostgreSQL: an advisory lock (its DDL is
    # transactional); SQLite: BEGIN IMMEDIATE (`_on_begin`), where a deferred transaction
    # would fail at once, "database is locked", when it came to write.
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(dsaudit_write=True)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                if set(MigrationContext.configure(conn).get_current_heads()) == heads:
                    return
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
    except OperationalError as exc:
        reason = _reason(exc)
        name = describe(str(engine.url))
        if "database is locked" in reason:
            raise BusyError(
                f"{name}: catalog busy: it is being upgraded or written by another process, "
                f"for over {BUSY_TIMEOUT_S:.0f} s; try again when it finishes"
            ) from None
        if current and "readonly" in reason:
            raise SchemaError(
                f"{name}: written by an older dsaudit (schema revision "
                f"{', '.join(sorted(current))}); opening it upgrades it, which needs write "
                "access to it: run any dsaudit command once where it may be written"
            ) from None
        raise


def schema_revision(engine: Engine) -> str | None:
    """The catalog's current Alembic revision (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A connection inside one write transaction: committed on success, rolled back on error.

    On SQLite the write lock is taken at BEGIN (waiting up to `BUSY_TIMEOUT_S` for another
    writer), so a long ingest never fails halfway because someone else started writing. On
    PostgreSQL writers run side by side (READ COMMITTED); see `write_retrying`.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(dsaudit_write=True)
        try:
            with conn.begin():
                yield conn
        except DBAPIError as exc:
            url = str(engine.url)
            if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
                raise BusyError(
                    f"{describe(url)}: catalog busy: another process has been "
                    f"writing for over {BUSY_TIMEOUT_S:.0f} s; try again when it finishes"
                ) from None
            refused = _person_error(url, exc)
            if refused is not None:
                raise refused from None
            raise


def _person_error(url: str, exc: DBAPIError) -> CatalogError | None:
    """The one-line error a failed statement means for a person (no room, a write the server
    refuses, a wait cut short by the session's own limit), else None: a bug, raised as is."""
    return storage_error(url, exc) or _not_allowed(url, exc) or _timed_out(url, exc)


_TIMED_OUT = {"55P03": "lock_timeout", "57014": "statement_timeout"}
"""PostgreSQL SQLSTATEs of a wait cut short by a limit the user set (`_timed_out`)."""


def _timed_out(url: str, exc: DBAPIError) -> BusyError | None:
    """The person's version of a wait the user's own ``lock_timeout`` or
    ``statement_timeout`` cut short (PostgreSQL), else None."""
    limit = _TIMED_OUT.get(getattr(exc.orig, "sqlstate", None) or "")
    if limit is None:
        return None
    return BusyError(
        f"{describe(url)}: catalog busy: waited longer than the {limit} set for this session "
        f"({_reason(exc)}); nothing was changed, try again when it is free"
    )


_NOT_ALLOWED = {
    "25006": "the database takes no writes (a read-only replica or transaction)",
    "42501": "this role may not write the catalog",
}
"""PostgreSQL SQLSTATEs of a write the server refuses whatever the data."""


def _not_allowed(url: str, exc: DBAPIError) -> StorageError | None:
    """The person's version of a write the server refused (read-only, no privilege), else
    None; the transaction is rolled back, so nothing was written."""
    why = _NOT_ALLOWED.get(getattr(exc.orig, "sqlstate", None) or "")
    if why is None:
        return None
    return StorageError(
        f"{describe(url)}: {why} ({_reason(exc)}); nothing was added and the catalog is unchanged"
    )


def storage_error(url: str, exc: DBAPIError) -> StorageError | None:
    """The person's version of a write that failed for lack of room, else None.

    SQLite says SQLITE_FULL when a write comes up short and SQLITE_IOERR_WRITE when one is
    refused outright (EFBIG at the process's file size limit, ENOSPC, or a failing disk), so the
    file size limit and the free space are looked at to say which; PostgreSQL says SQLSTATE
    53100. The transaction is rolled back either way: the WAL keeps the catalog as it was.
    """
    orig = exc.orig
    name = getattr(orig, "sqlite_errorname", "")
    full = name == "SQLITE_FULL" or getattr(orig, "sqlstate", None) == "53100"
    if not full and not name.startswith("SQLITE_IOERR"):
        return None
    reason = _why_no_room(_sqlite_path(url))
    unchanged = "nothing was added and the catalog is unchanged"
    if reason is None and not full:
        return StorageError(
            f"{describe(url)}: disk I/O error while writing the catalog ({name}); {unchanged}"
        )
    reason = reason or "disk full (or a file size limit reached)"
    return StorageError(f"{describe(url)}: {reason} while writing the catalog; {unchanged}")


_NO_ROOM_BYTES = 16 * 1024 * 1024
"""Free space (or room under the file size limit) below this means there was no room."""


def _why_no_room(path: Path | None) -> str | None:
    """Which limit a failed write of the catalog ran into, if one can be seen."""
    if path is None:
        return None
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists()]
    largest = max((p.stat().st_size for p in files), default=0)
    return _limit_reached(largest, path.parent)


def _limit_reached(largest: int, directory: Path) -> str | None:
    """The file size limit, if a file of ``largest`` bytes is at it, or the disk of
    ``directory``, if it is full; else None."""
    try:
        import resource  # POSIX only

        limit, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if limit != resource.RLIM_INFINITY and limit - largest < _NO_ROOM_BYTES:
            return f"file size limit reached (ulimit -f: {limit:,} bytes per file)"
    except (ImportError, OSError, ValueError):
        pass
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return None
    if free < _NO_ROOM_BYTES:
        return f"disk full ({free:,} bytes free on {directory})"
    return None


def scratch_directory(conn: Connection) -> Path:
    """Where an ingest keeps its scratch files: beside a SQLite catalog (a disk known to hold
    the catalog, where the system's temporary directory may be a small RAM disk), else the
    system's temporary directory."""
    path = _sqlite_path(str(conn.engine.url))
    return path.resolve().parent if path is not None else Path(tempfile.gettempdir())


def scratch_error(conn: Connection, directory: Path, size: int, exc: OSError) -> StorageError:
    """The person's version of a failed write of an ingest's scratch file of ``size`` bytes so
    far in ``directory`` (`scratch_directory`); the caller's transaction rolls back."""
    reason = _limit_reached(size, directory) or (exc.strerror or str(exc))
    return StorageError(
        f"{describe(str(conn.engine.url))}: {reason} while writing the ingest's scratch file "
        f"in {directory}; nothing was added and the catalog is unchanged"
    )


_RETRYABLE = {"40P01", "40001", "23505"}
"""SQLSTATEs of a lost race: deadlock, serialization failure, unique violation."""


def write_retrying(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` inside `writing`, run again (up to `WRITE_ATTEMPTS`) if it lost a race.

    Only PostgreSQL has concurrent writers. Two ingests that add the same new images wait for
    each other's row locks (the second ``INSERT ... ON CONFLICT DO NOTHING`` of a digest waits
    until the first transaction ends, then skips it). When they meet the shared images in
    different orders they can deadlock; PostgreSQL then aborts one, and running it again is
    cheap and correct: by then the other has committed, so those images are found, not added.
    A unique violation means another writer committed the same dataset version first: the
    second run reports it as `VersionExistsError`. Whatever ``work`` does must be repeatable:
    it runs from the start on a fresh transaction.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with writing(engine) as conn:
                return work(conn)
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if (
                engine.dialect.name != "postgresql"
                or state not in _RETRYABLE
                or attempt == WRITE_ATTEMPTS
            ):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


GROWN_BY_INGEST = ("version", "split", "image", "item", "signature", "band_key", "pair")
"""The tables an ingest adds most rows to: `refresh_statistics` analyses them."""


def refresh_statistics(engine: Engine) -> None:
    """PostgreSQL: ANALYZE the tables an ingest grew, right after it committed.

    The planner weighs a query's joins by the tables' statistics, which autovacuum refreshes
    only a while after a large write (it wakes once a minute). A report run right after an
    ingest was planned on guesses: two versions of 110k items, `duplicate_groups` took 1.9 s
    against 0.5 s once analysed, `report` 5.9 s against 4.5 s, and ANALYZE took 1.0 s
    (it samples a fixed number of rows, 30,000 at the default statistics target, so it costs
    about the same at any size). Run outside the ingest's transaction, so that it holds no lock
    while the ingest does; a table autovacuum is working on is skipped, not waited for. The
    ingest has committed by then and statistics only speed queries up, so an error here (a
    timeout, a lost connection) is not raised: autovacuum analyses the tables later anyway. A
    role that does not own the tables gets them skipped with a warning. SQLite plans without
    statistics: nothing to do.
    """
    if engine.dialect.name != "postgresql":
        return
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {', '.join(GROWN_BY_INGEST)}")
    except DBAPIError:
        return


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection inside one read-only transaction: every query sees the same snapshot.

    SQLite's read transaction is a snapshot already (WAL). PostgreSQL's default READ COMMITTED
    takes a new snapshot per statement, so a report's queries could straddle another ingest's
    commit; REPEATABLE READ keeps the first query's snapshot for the whole transaction.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        try:
            with conn.begin():
                yield conn
        except DBAPIError as exc:
            refused = _person_error(str(engine.url), exc)
            if refused is not None:
                raise refused from None
            raise


def lock_pair_finding(conn: Connection) -> None:
    """Hold the catalog's pair-finding lock until this transaction ends (PostgreSQL only).

    An ingest joins its new band keys against the band keys other ingests have *committed*,
    then stores its own. Two ingests running side by side on PostgreSQL would each miss the
    other's keys and so the pairs between their new images. Serialising only this step
    closes the gap: the second waits here until the first *commits* (a transaction-level
    advisory lock is released at commit, not before), and under READ COMMITTED its next
    statement's snapshot then holds the first one's band keys, signatures and images. So a
    pair between the two new versions is found by whichever finishes second, exactly once.
    The lock is taken after the long signing stage, so ingests still sign in parallel.
    SQLite needs nothing: its writer holds the whole catalog from BEGIN IMMEDIATE.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PAIR_LOCK})")


def lock_recipe_choice(conn: Connection, *, shared: bool) -> None:
    """Hold the lock on whether the catalog has recipes until this transaction ends
    (PostgreSQL only; SQLite's writer holds the whole catalog from BEGIN IMMEDIATE).

    Every ingest holds it shared for its whole transaction, and one that adds recipes (the
    first registration, or a new ``--recipe``) exclusively (`catalog.near.resolve_recipes`):
    otherwise, under READ COMMITTED, an ingest could read the recipes while another adds one,
    and both would commit, leaving images unsigned under a recipe of the catalog. Taking back a
    failed first ingest's recipes holds it exclusively too (`catalog.near.unregister_recipes`),
    so that no ingest signing with them is still running. Ingests that add nothing run side by
    side; the exclusive holders are short, or wait for the running ingests and are then
    refused.
    """
    if conn.dialect.name == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        conn.exec_driver_sql(f"SELECT {function}({RECIPES_LOCK})")


def placeholder(conn: Connection) -> str:
    """The DBAPI's positional parameter marker: ``?`` (sqlite3) or ``%s`` (psycopg)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def fetch_rows(
    conn: Connection, statement: str, params: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    """Every row of one statement (parameters marked with `placeholder`) as the DBAPI's tuples.

    For results of hundreds of thousands of rows that go straight into ``np.fromiter``: Core
    wraps each row in a Row object first, which cost more than the database's own work when
    measured (500k items of three columns: 1.5-3.0 s through Core, 0.5-0.7 s this way), and
    numpy reads plain tuples in C. Runs on the caller's transaction.
    """
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement, tuple(params))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def fetch_batches(
    conn: Connection, statement: str, params: Sequence[Any] = (), size: int = 4096
) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of one statement as the DBAPI's tuples, ``size`` at a time: `fetch_rows` for
    results too big to hold as Python objects at once (a block of 65k 1 KB signatures is
    0.13 GB as bytes objects and their join)."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(statement, tuple(params))
        while rows := cursor.fetchmany(size):
            yield list(rows)
    finally:
        cursor.close()


def fetch_integers(
    conn: Connection, columns: Sequence[str], rest: str, params: Sequence[Any] = ()
) -> list[np.ndarray]:
    """Integer columns of one query, ``SELECT columns... rest``, as int64 arrays.

    SQLite: each column comes back as one comma-separated text (``group_concat``), which numpy
    parses in C; a Python tuple per row cost four times as much (2M pairs of a 1M-image
    catalog: 0.54 s against 2.2 s), and ``overlap`` reads every pair of every recipe. The
    aggregates of one query see its rows in one order, so the arrays line up row by row.
    Other engines: `fetch_rows`. Parameters are marked with `placeholder`.

    Limit: one column's text must stay under SQLite's 1e9-byte string limit, about 100M rows
    of ten-digit values (a 1M-image catalog reads at most 3M rows at once).
    """
    if conn.dialect.name != "sqlite":
        rows = fetch_rows(conn, f"SELECT {', '.join(columns)} {rest}", params)
        flat = np.fromiter(
            itertools.chain.from_iterable(rows), np.int64, count=len(rows) * len(columns)
        )
        return list(flat.reshape(len(rows), len(columns)).T.copy())
    aggregated = ", ".join(f"group_concat({column})" for column in columns)
    texts = fetch_rows(conn, f"SELECT {aggregated} {rest}", params)[0]
    return [
        np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, np.int64)
        for text in texts
    ]


ROWS_PER_STATEMENT = 1000
"""Rows per multi-row ``INSERT ... VALUES (...), (...)`` on SQLite (see `bulk_insert`)."""

FLAT_ROWS = 100_000
"""Rows of `Columns` turned into Python values at a time (a bound on that list's memory)."""


class Columns:
    """Rows given as numpy columns of one length, for `bulk_insert`: row i is ``(a[i], b[i],
    ...)``. Iterating gives those rows as tuples of Python values.

    On SQLite `bulk_insert` binds a statement's values from one flat list, made from the
    columns in C (`flat`): no tuple per row, no flattening of them. 12M band-key rows (500k
    images, one recipe) were stored in 10.5-11.3 s against 12.6-13.7 s from zipped lists,
    about 0.2 µs a row; a 1M-image ingest stores 48M.
    """

    def __init__(self, *arrays: np.ndarray) -> None:
        if not arrays or any(a.ndim != 1 or len(a) != len(arrays[0]) for a in arrays):
            raise ValueError("Columns: give one or more 1-D arrays of one length")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(self), FLAT_ROWS):
            parts = [a[start : start + FLAT_ROWS].tolist() for a in self.arrays]
            yield from zip(*parts, strict=True)

    def flat(self, start: int, stop: int) -> list[Any]:
        """Rows ``start:stop`` as one list, row after row: ``[a[start], b[start], a[start+1],
        ...]``."""
        parts = [a[start:stop] for a in self.arrays]
        if len({part.dtype for part in parts}) == 1:
            return np.column_stack(parts).ravel().tolist()
        out: list[Any] = [None] * (len(parts) * len(parts[0]))
        for number, part in enumerate(parts):
            out[number :: len(parts)] = part.tolist()
        return out


def bulk_insert(
    conn: Connection,
    table: Table | str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]] | Columns,
    *,
    unique: str | None = None,
    constants: Mapping[str, int] | None = None,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """Insert many positional rows (any iterable of tuples, or `Columns`) on the caller's
    transaction.

    The hot tables get rows by the million; Core's per-row parameter processing cost more than
    the database's own inserts when measured (70k items: 1.0 s against 0.3 s), so these go to
    the connection's DBAPI cursor. SQLite: each statement carries `ROWS_PER_STATEMENT` rows
    (``VALUES (...), (...), ...``) instead of one executemany step per row: the per-row
    statement reset and Python call were most of the cost (2M band-key rows: 5.4 s of CPU
    with executemany, 2.3 s this way). PostgreSQL: binary ``COPY ... FROM STDIN`` (`_copy`),
    one stream instead of a statement per row. Column and table names come from the schema,
    never from input.

    Args:
        columns: the columns ``rows`` give, in their order.
        unique: a unique column; rows whose value exists already are skipped (ON CONFLICT DO
            NOTHING, safe when two ingests race). On PostgreSQL, COPY has no ON CONFLICT, so
            these rows are COPYed to a temporary table and inserted from there.
        constants: columns with one integer value for every row, left out of ``rows``. On
            SQLite they are written into the statement rather than bound row by row: 2M
            band-key rows with their recipe and band as literals took 1.8 s of CPU, 2.3 s
            bound.
        returning: columns to return of each inserted row (``RETURNING``), with ``unique``
            on PostgreSQL (COPY returns nothing).

    Returns:
        the ``returning`` columns of the inserted rows, in no particular order; empty when
        none are asked for.
    """
    if not columns:
        raise ValueError("bulk_insert: rows must give at least one column")
    name = table if isinstance(table, str) else table.name
    fixed = {column: int(value) for column, value in (constants or {}).items()}
    if conn.dialect.name == "postgresql":
        if fixed:
            values = tuple(fixed.values())
            columns = (*fixed, *columns)
            rows = ((*values, *row) for row in rows)
        if unique is not None:
            return _insert_from_stage(conn, name, columns, rows, unique, returning)
        if returning:
            raise ValueError("bulk_insert: RETURNING needs a unique column on PostgreSQL")
        _copy(conn, name, columns, rows)
        return []
    mark = placeholder(conn)
    conflict = f" ON CONFLICT ({unique}) DO NOTHING" if unique is not None else ""
    back = f" RETURNING {', '.join(returning)}" if returning else ""
    listed = ", ".join([*fixed, *columns])
    one = f"({', '.join([*map(str, fixed.values()), *[mark] * len(columns)])})"

    def statement(count: int) -> str:
        return f"INSERT INTO {name} ({listed}) VALUES {', '.join([one] * count)}{conflict}{back}"

    found: list[tuple[Any, ...]] = []
    cursor = conn.connection.cursor()

    def execute(sql: str, parameters: Sequence[Any]) -> None:
        cursor.execute(sql, parameters)
        if returning:
            found.extend(cursor.fetchall())

    try:
        if conn.dialect.name != "sqlite":
            if returning:
                raise ValueError(f"bulk_insert: no RETURNING on {conn.dialect.name}")
            cursor.executemany(statement(1), rows)  # type: ignore[arg-type]  # any iterable
            return found
        per = max(1, min(ROWS_PER_STATEMENT, _variable_limit(cursor) // len(columns)))
        full = statement(per)
        if isinstance(rows, Columns):
            width = len(columns) * per
            for start in range(0, len(rows), FLAT_ROWS):
                flat = rows.flat(start, start + FLAT_ROWS)
                whole = len(flat) - len(flat) % width
                for at in range(0, whole, width):
                    execute(full, flat[at : at + width])
                if whole < len(flat):
                    execute(statement((len(flat) - whole) // len(columns)), flat[whole:])
            return found
        source = iter(rows)
        while True:
            flat = list(itertools.chain.from_iterable(itertools.islice(source, per)))
            if len(flat) == per * len(columns):
                execute(full, flat)
                continue
            if flat:
                execute(statement(len(flat) // len(columns)), flat)
            return found
    finally:
        cursor.close()


DEFER_INDEX_ROWS = 50_000
"""Fewest incoming rows for which `drop_indexes_for` considers rebuilding instead."""


def drop_indexes_for(conn: Connection, table: Table, incoming: int) -> tuple[Index, ...]:
    """Drop ``table``'s secondary indexes before a bulk insert when rebuilding them is cheaper.

    On SQLite an index whose order the rows do not follow takes each row at a random place:
    3.1M pairs (inserted in primary-key order, so the ``(recipe_id, image_b)`` index is in
    random order) took 55.6 s with the index, against 12.8 s without it plus 7.8 s to build
    it afterwards from a sort. Rebuilding costs about 2.5 µs a row of the whole table, keeping
    the index up about 13.6 µs an incoming row, so the indexes are dropped when at least
    `DEFER_INDEX_ROWS` rows come in and they are at least a quarter of those already stored
    (a first ingest: none are). The caller recreates them with `create_indexes` before its
    transaction ends; a rollback restores them (SQLite's DDL is transactional). PostgreSQL
    keeps its indexes: dropping one would lock the table against every reader until commit.

    Returns:
        The dropped indexes (empty when none was).
    """
    if conn.dialect.name != "sqlite" or incoming < DEFER_INDEX_ROWS or not table.indexes:
        return ()
    stored = conn.execute(select(func.count()).select_from(table)).scalar_one()
    if incoming * 4 < stored:
        return ()
    indexes = tuple(sorted(table.indexes, key=lambda index: str(index.name)))
    for index in indexes:
        index.drop(conn)
    return indexes


def create_indexes(conn: Connection, indexes: Sequence[Index]) -> None:
    """Build again the indexes `drop_indexes_for` dropped (one sort of the table each)."""
    for index in indexes:
        index.create(conn)


def _variable_limit(cursor: Any) -> int:
    """SQLite's bound-parameter limit for one statement (999 on old builds, 32766 since 3.32)."""
    connection = cursor.connection
    if hasattr(connection, "getlimit"):
        return int(connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return 999


def insert_absent(
    conn: Connection,
    table: Table | str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    unique: str,
    key: str = "id",
) -> dict[Any, Any]:
    """Insert the rows whose ``unique`` column's value is not in the table yet (one column).

    Returns:
        ``{unique value: key value}`` of the rows this call inserted (by default each one's
        id). A row another writer added first is not among them, even if it was absent when
        the caller looked.

    Both engines return the inserted rows' keys (``INSERT ... RETURNING``), where looking the
    new rows up again cost an index seek each (1M images: 7.5 s inserted and returned, against
    10.6 s inserted then looked up). SQLite: one writer holds the catalog from BEGIN
    IMMEDIATE, so a value absent when the caller looked in this transaction is still absent:
    every row is inserted. PostgreSQL: the rows are COPYed into a temporary table, then
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`` moves them: a value another open
    transaction is inserting makes this statement wait for that transaction's end, then skips
    it (or inserts it after a rollback), and RETURNING names exactly the rows inserted here.
    """
    inserted = bulk_insert(conn, table, columns, rows, unique=unique, returning=(unique, key))
    return {bytes(v) if isinstance(v, memoryview) else v: k for v, k in inserted}


def _insert_from_stage(
    conn: Connection,
    name: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    unique: str,
    returning: Sequence[str] = (),
) -> list[tuple[Any, ...]]:
    """PostgreSQL: COPY into a temporary twin of the table, then insert what is absent.

    Returns:
        the ``returning`` columns of the rows inserted (none when empty).
    """
    stage = f"dsaudit_stage_{name}"
    listed = ", ".join(columns)
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} AS SELECT {listed} FROM {name} WITH NO DATA"
    )
    conn.exec_driver_sql(f"TRUNCATE {stage}")
    _copy(conn, stage, columns, rows)
    # In key order: the unique index takes its new keys in order, and two writers lock the
    # keys they share in the same order.
    statement = (
        f"INSERT INTO {name} ({listed}) SELECT {listed} FROM {stage} ORDER BY {unique} "
        f"ON CONFLICT ({unique}) DO NOTHING"
    )
    if returning:
        return [
            tuple(row)
            for row in conn.exec_driver_sql(f"{statement} RETURNING {', '.join(returning)}")
        ]
    conn.exec_driver_sql(statement)
    return []


def _copy(
    conn: Connection, name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``COPY name (columns) FROM STDIN`` in PostgreSQL's binary format, on this transaction.

    Binary COPY needs every column's type up front (a Python int could be int2, int4 or int8);
    it is read from the catalog's own pg_attribute, so temporary tables work too.
    """
    types: dict[str, int] = dict(
        conn.exec_driver_sql(
            "SELECT attname, atttypid::int FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (name,),
        ).all()
    )
    cursor = conn.connection.cursor()
    try:
        with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([types[column] for column in columns])
            for row in rows:
                copy.write_row(row)
    finally:
        cursor.close()
