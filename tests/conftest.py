"""Fixtures, layered: db (a catalog URL per engine) -> engine -> connection; a CLI runner.

Every test that takes ``db`` (or ``engine``, ``connection``, ``demo_run``) runs once per engine:
SQLite (a file in the test's temp dir) and PostgreSQL (a new empty database on the server named
by ``$DSAUDIT_TEST_PG``, dropped afterwards). Without that variable the PostgreSQL runs skip,
except under ``CI=true``, where they fail: CI must prove both engines (``.ci/run`` starts a
throwaway server). A test that is about SQLite itself says so with `sqlite_only`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from catalog import api, demo
from catalog.db import open_catalog
from catalog.demo import DemoRun

# Property tests are deterministic (the same examples every run, on every worker) and have no
# deadline: a time limit per example is a timing assertion, and would fail on a busy machine.
# A test's own @settings still wins (the fuzz tests draw fresh seeds with DSAUDIT_FUZZ_RANDOM=1).
settings.register_profile("dsaudit", deadline=None, derandomize=True)
settings.load_profile("dsaudit")

PG_ENV = "DSAUDIT_TEST_PG"
"""A SQLAlchemy URL of a PostgreSQL database whose user may CREATE DATABASE, e.g.
``postgresql+psycopg://postgres@/postgres?host=/tmp/pg``."""
ENGINES = ("sqlite", "postgresql")

sqlite_only = pytest.mark.parametrize("db", ["sqlite"], indirect=True)
"""For tests of SQLite itself (pragmas, the file, its lock): the ``db`` fixture's SQLite case."""
postgres_only = pytest.mark.parametrize("db", ["postgresql"], indirect=True)
"""For tests of what only PostgreSQL has (concurrent writers, its read-only transactions)."""


class PgServer:
    """Makes and drops throwaway databases on the test server."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        # Unique per process and per run: two runs in separate containers may share a server
        # and a pid, and a name reused would drop the other run's database.
        run = uuid.uuid4().hex[:8]
        self.kept: list[str] = []
        self._names = (f"dsaudit_test_{os.getpid()}_{run}_{n}" for n in itertools.count())

    def create(self, *, keep: bool = False) -> str:
        """A new empty database; with ``keep``, dropped only when the session ends."""
        name = next(self._names)
        if keep:
            self.kept.append(name)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(autouse=True)
def _no_colour_settings_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pictures are drawn in colour or in characters by the console's colour (rich reads
    these variables): every test starts without them, whatever the shell running it set."""
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get(PG_ENV)
    if not url:
        message = f"no PostgreSQL server: set {PG_ENV}=postgresql+psycopg://USER@HOST/DB"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: both engines must be tested)", pytrace=False)
        pytest.skip(message)
    server = PgServer(url)
    try:
        with server.admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # the server named is not there: never a silent skip
        pytest.fail(f"{PG_ENV}={url}: cannot connect ({exc})", pytrace=False)
    yield server
    try:
        for name in server.kept:
            server.drop(server.url.set(database=name).render_as_string(hide_password=False))
    finally:
        server.admin.dispose()


def _new_catalog(request: pytest.FixtureRequest, engine: str, directory: Path) -> str:
    """A SQLite path in ``directory``, or a new PostgreSQL database dropped after the fixture."""
    if engine == "sqlite":
        return str(directory / "c.db")
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.create()
    request.addfinalizer(lambda: server.drop(url))
    return url


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's catalog goes: a SQLite path, or a new empty PostgreSQL database's URL."""
    return _new_catalog(request, request.param, tmp_path)


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    """A new SQLite catalog file, built by running the migrations (never create_all)."""
    path = tmp_path / "catalog.db"
    open_catalog(str(path)).dispose()
    return path


@pytest.fixture
def engine(db: str) -> Iterator[Engine]:
    """The migrated catalog ``db``, opened."""
    engine = open_catalog(db)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        yield conn


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


@pytest.fixture(scope="session", autouse=True)
def _demo_made_once_per_process() -> Iterator[None]:
    """`catalog.demo.make_demo` made once per process for each seed and size.

    It is deterministic and slow (about 6 s at the default size, most of it keeping rendered
    letters apart); its arrays are read-only and no test changes a Demo. The demo fixtures,
    the demo's CLI runs and the tests of its data would otherwise make the same one eight to
    ten times a run. The tests of its determinism call the function behind the cache
    (``make_demo.__wrapped__``).
    """
    make = demo.make_demo
    signature = inspect.signature(make)
    made = functools.lru_cache(maxsize=8)(make)

    @functools.wraps(make)
    def cached(*args: Any, **kwargs: Any) -> demo.Demo:
        # One key per demo: make_demo() and make_demo(seed=0) are the same call.
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return made(*bound.args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "make_demo", cached)
        yield


@pytest.fixture(scope="session")
def _demo_runs() -> dict[str, DemoRun | Exception]:
    """The demo's runs so far, by engine, kept for the whole session (or how one failed)."""
    return {}


@pytest.fixture(params=ENGINES)
def demo_run(
    request: pytest.FixtureRequest,
    _demo_runs: dict[str, DemoRun | Exception],
    tmp_path_factory: pytest.TempPathFactory,
) -> DemoRun:
    """The demo's two versions ingested once per engine (and per test worker) for every test
    that audits them (read-only).

    Not a session fixture with the engines as its params: pytest keeps one param's value at a
    time, and rebuilt the demo each time the tests it ran switched engine (on 2 xdist workers,
    every other test could). A demo that failed fails every test that needs it, at once.
    """
    engine = request.param
    if engine not in _demo_runs:
        directory = tmp_path_factory.mktemp("demo")
        try:
            if engine == "sqlite":
                _demo_runs[engine] = api.run_demo(directory)
            else:  # its database is dropped with the session's server fixture's others
                server: PgServer = request.getfixturevalue("pg_server")
                _demo_runs[engine] = api.run_demo(directory, db=server.create(keep=True))
        except Exception as exc:  # a skip (no server) is not an Exception: never kept
            _demo_runs[engine] = exc
    run = _demo_runs[engine]
    if isinstance(run, Exception):
        raise run
    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when asked for (``-m slow``); the default run stays short."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
