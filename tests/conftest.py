"""Fixtures, layered: catalog_path (a migrated temp file) -> engine -> connection; a CLI runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, Engine
from typer.testing import CliRunner

from catalog import api
from catalog.db import open_catalog
from catalog.demo import DemoRun


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    """A new catalog file, built by running the migrations (never create_all)."""
    path = tmp_path / "catalog.db"
    open_catalog(str(path)).dispose()
    return path


@pytest.fixture
def engine(catalog_path: Path) -> Iterator[Engine]:
    engine = open_catalog(str(catalog_path))
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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo's two versions ingested once for every test that audits them (read-only)."""
    return api.run_demo(tmp_path_factory.mktemp("demo"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when asked for (``-m slow``); the default run stays short."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
