"""Fixtures, layered: db (a catalog URL per engine) -> engine -> connection; a CLI runner.

Every test that takes ``db`` (or ``engine``, ``connection``, ``demo_run``) runs once per engine:
SQLite (a file in the test's temp dir) and PostgreSQL (a new empty database on the server named
by ``$DSAUDIT_TEST_PG``, dropped afterwards). Without that variable the PostgreSQL runs skip,
except under ``CI=true``, where they fail: CI must prove both engines (``.ci/run`` starts a
throwaway server). A test that is about SQLite itself says so with `sqlite_only`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from catalog import api
from catalog.db import open_catalog
from catalog.demo import DemoRun

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
        self._names = (f"dsaudit_test_{os.getpid()}_{n}" for n in itertools.count())

    def create(self) -> str:
        name = next(self._names)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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


@pytest.fixture(scope="session", params=ENGINES)
def demo_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo's two versions ingested once per engine for every test that audits them
    (read-only)."""
    directory = tmp_path_factory.mktemp("demo")
    if request.param == "sqlite":
        return api.run_demo(directory)
    return api.run_demo(directory, db=_new_catalog(request, request.param, directory))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when asked for (``-m slow``); the default run stays short."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
