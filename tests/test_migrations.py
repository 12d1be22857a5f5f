"""The schema is owned by Alembic: migrations must build exactly the models, and run both ways."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

from catalog import api, synth
from catalog import db as db_module
from catalog.db import SCHEMA_HEAD, _alembic_config, open_catalog, schema_revision
from catalog.errors import NotFoundError, SchemaError
from catalog.recipes import DEFAULT_RECIPES
from catalog.schema import Base
from tests.conftest import postgres_only, sqlite_only

VIEWS = {"v_item", "v_split", "v_exact_overlap"}


def test_upgrade_head_matches_the_models(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_views_exist_and_answer(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert set(inspect(conn).get_view_names()) >= VIEWS
        for view in VIEWS:
            conn.exec_driver_sql(f"SELECT * FROM {view}").fetchall()


def test_upgrade_downgrade_upgrade(db: str) -> None:
    engine = open_catalog(db)
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        assert not inspect(conn).get_view_names()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    engine.dispose()


def test_band_keys_keep_their_rows_down_to_0004_and_up_to_levels(db: str) -> None:
    images, _labels = synth.render_letters(130, np.random.default_rng(5))
    api.ingest(db, "l", "v1", {"train": images[:120]})
    api.ingest(db, "l", "v2", {"train": images[120:]})  # a second level
    keys = "SELECT recipe_id, band, key, image_id FROM band_key"
    engine = open_catalog(db)
    with engine.connect() as conn:
        stored = set(conn.exec_driver_sql(keys).fetchall())
        assert {row[0] for row in conn.exec_driver_sql("SELECT level FROM band_key")} == {3, 6}
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        assert "level" not in {c["name"] for c in inspect(conn).get_columns("band_key")}
        assert set(conn.exec_driver_sql(keys).fetchall()) == stored
    engine.dispose()
    # Opening it migrates it (every key at level 0), and the next ingest joins against them.
    engine = open_catalog(db)
    with engine.connect() as conn:
        assert set(conn.exec_driver_sql(keys).fetchall()) == stored
        assert {row[0] for row in conn.exec_driver_sql("SELECT level FROM band_key")} == {0}
    engine.dispose()
    copy = synth.gaussian_noise(images[[3]], 0.02, np.random.default_rng(6))
    api.ingest(db, "l", "v3", {"test": copy})
    found = api.run_sql(
        db,
        "SELECT DISTINCT recipe, version_b, position_b FROM v_near_overlap WHERE version_a = 'v3'",
    ).rows
    assert {tuple(row) for row in found} == {(r.name, "v1", 3) for r in DEFAULT_RECIPES}


FOREIGN_KEYS_0006 = {
    "signature": [
        ("fk_signature_image_id_image", ["image_id"], "image", ["id"]),
        ("fk_signature_recipe_id_recipe", ["recipe_id"], "recipe", ["id"]),
    ],
    "pair": [
        ("fk_pair_image_a_image", ["image_a"], "image", ["id"]),
        ("fk_pair_image_b_image", ["image_b"], "image", ["id"]),
        ("fk_pair_recipe_id_recipe", ["recipe_id"], "recipe", ["id"]),
    ],
}


def _derived_shape(engine) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What 0007 rebuilds on SQLite, table by table: foreign keys, and what must survive the
    copy (primary key, CHECK constraints, indexes, WITHOUT ROWID)."""
    shape: dict[str, object] = {}
    with engine.connect() as conn:
        found = inspect(conn)
        for table in FOREIGN_KEYS_0006:
            sql = (
                conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).scalar_one()
                if conn.dialect.name == "sqlite"
                else "WITHOUT ROWID"
            )
            shape[table] = (
                sorted(
                    (
                        fk["name"],
                        fk["constrained_columns"],
                        fk["referred_table"],
                        fk["referred_columns"],
                    )
                    for fk in found.get_foreign_keys(table)
                ),
                found.get_pk_constraint(table)["name"],
                sorted(c["name"] for c in found.get_check_constraints(table)),
                sorted((i["name"], i["column_names"]) for i in found.get_indexes(table)),
                "WITHOUT ROWID" in sql,
            )
    return shape


def test_signatures_and_pairs_keep_their_rows_both_ways_through_0007(db: str) -> None:
    images, _labels = synth.render_letters(60, np.random.default_rng(7))
    copies = synth.gaussian_noise(images[:5], 0.02, np.random.default_rng(8))
    api.ingest(db, "l", "v1", {"train": images, "test": copies})
    reads = {
        "signature": "SELECT recipe_id, image_id, value FROM signature",
        "pair": "SELECT recipe_id, image_a, image_b, distance FROM pair",
        "v_near_overlap": "SELECT recipe, position_a, position_b FROM v_near_overlap",
    }

    def state() -> dict[str, set[tuple[object, ...]]]:
        with engine.connect() as conn:
            return {name: set(map(tuple, conn.exec_driver_sql(sql))) for name, sql in reads.items()}

    def expected(foreign_keys: dict[str, list[tuple[object, ...]]]) -> dict[str, object]:
        return {
            "signature": (foreign_keys["signature"], "pk_signature", [], [], True),
            "pair": (
                foreign_keys["pair"],
                "pk_pair",
                ["ck_pair_ordered"],
                [("ix_pair_recipe_id_image_b", ["recipe_id", "image_b"])],
                True,
            ),
        }

    engine = open_catalog(db)
    stored = state()
    assert len(stored["pair"]) >= 5 and len(stored["v_near_overlap"]) >= 10
    assert _derived_shape(engine) == expected({"signature": [], "pair": []})
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert _derived_shape(engine) == expected(FOREIGN_KEYS_0006)
    assert state() == stored
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        # A damaged row (a pair out of order) is copied as it is, for `dsaudit check` to find.
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
            conn.exec_driver_sql("INSERT INTO pair VALUES (1, 9, 4, 0.01)")
            conn.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")
    engine.dispose()
    engine = open_catalog(db)  # upgrades again
    assert _derived_shape(engine) == expected({"signature": [], "pair": []})
    if sqlite:
        found = {r.name: r.problems for r in api.check(engine, sample=0).results}
        assert found["pair-order"] == 1  # the catalog opens, and check reports the pair
        damaged = (1, 9, 4, 0.01)
        assert state()["pair"] == stored["pair"] | {damaged}
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA ignore_check_constraints").scalar_one() == 0
            assert conn.exec_driver_sql("PRAGMA legacy_alter_table").scalar_one() == 0
    else:
        assert state() == stored
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    engine.dispose()


def test_open_creates_and_reopen_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.db"
    engine = open_catalog(str(path))
    revision = schema_revision(engine)
    engine.dispose()
    assert path.exists() and revision is not None
    assert schema_revision(open_catalog(str(path))) == revision


def _at_0007(path: Path) -> None:
    """A catalog at schema revision 0007, as an older dsaudit left it."""
    engine = open_catalog(str(path))
    config = _alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0007")
    finally:
        engine.dispose()


def test_an_upgrade_waits_for_the_writer_then_finds_its_schema(tmp_path: Path) -> None:
    # Several CI jobs meeting a new dsaudit open one old catalog at once: one upgrades, the
    # others wait for its lock. Here a writer holds the lock and commits a change while an
    # opener waits; a deferred transaction failed then at once ("database is locked": its
    # snapshot was stale), the writer's lock taken up front waits and reads the new state.
    path = tmp_path / "c.db"
    _at_0007(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    found: dict[str, object] = {}

    def open_it() -> None:
        try:
            engine = open_catalog(str(path))
            found["revision"] = schema_revision(engine)
            engine.dispose()
        except Exception as exc:  # reported below
            found["error"] = exc

    opener = threading.Thread(target=open_it)
    opener.start()
    time.sleep(1.0)
    holder.execute("UPDATE alembic_version SET version_num = version_num")
    holder.execute("COMMIT")
    holder.close()
    opener.join(60)
    assert found == {"revision": SCHEMA_HEAD}


def test_an_old_catalog_that_cannot_be_written_says_it_needs_an_upgrade(tmp_path: Path) -> None:
    # A read-only file (root may write any file, so the refusal is SQLite's message, as a
    # read-only file gives it to anyone else; checked by hand as another user).
    path = tmp_path / "c.db"
    _at_0007(path)
    from sqlalchemy.exc import OperationalError as Refused

    refused = Refused(
        "CREATE TABLE", {}, sqlite3.OperationalError("attempt to write a readonly database")
    )
    with (
        mock.patch.object(command, "upgrade", side_effect=refused),
        pytest.raises(SchemaError) as raised,
    ):
        open_catalog(str(path))
    assert str(raised.value) == (
        f"{path}: written by an older dsaudit (schema revision 0007); opening it upgrades it, "
        "which needs write access to it: run any dsaudit command once where it may be written"
    )


def test_newer_schema_is_refused_and_left_alone(catalog_path: Path) -> None:
    with sqlite3.connect(catalog_path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = catalog_path.read_bytes()
    with pytest.raises(SchemaError, match="newer dsaudit.*9999_from_the_future"):
        open_catalog(str(catalog_path))
    assert catalog_path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(SchemaError, match="notes.db: cannot be opened as a catalog"):
        open_catalog(str(path))
    assert path.read_text().startswith("these are my notes")


def test_another_programs_database_is_refused_and_left_byte_for_byte(tmp_path: Path) -> None:
    # Opened as a catalog, its connection would first have switched it to the write-ahead
    # log, a change to its header.
    # Another program's, even one whose schema Alembic manages too.
    for statements in (
        ["CREATE TABLE customers (id INTEGER)"],
        [
            "CREATE TABLE alembic_version (version_num TEXT)",
            "INSERT INTO alembic_version VALUES ('ab12')",
        ],
    ):
        path = tmp_path / "other.db"
        path.unlink(missing_ok=True)
        raw = sqlite3.connect(path)
        for statement in statements:
            raw.execute(statement)
        raw.commit()
        raw.close()
        before = path.read_bytes()
        for create in (True, False):
            with pytest.raises(SchemaError, match="not a dsaudit catalog.*not changed"):
                open_catalog(str(path), create=create)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_database_without_tables_is_not_made_a_catalog_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "bare.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 7")  # a database of 4 KB with no table
    raw.close()
    before = path.read_bytes()
    with pytest.raises(NotFoundError, match="bare.db: a database without tables"):
        open_catalog(str(path), create=False)
    assert path.read_bytes() == before
    open_catalog(str(path)).dispose()  # an ingest may make it one
    assert path.read_bytes() != before


def test_an_empty_file_is_not_made_a_catalog_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(NotFoundError, match="empty.db: an empty file, not a catalog"):
        open_catalog(str(path), create=False)
    assert path.stat().st_size == 0
    open_catalog(str(path)).dispose()  # an ingest may make it one
    assert path.stat().st_size > 0


def test_missing_catalog_is_not_created_for_reading(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(NotFoundError, match="no catalog here"):
        open_catalog(str(path), create=False)
    assert not path.exists()


@postgres_only
def test_an_empty_postgresql_database_is_not_made_a_catalog_for_reading(db: str) -> None:
    """A read-only command on a new database (perhaps a typo for the team's) made it a
    catalog; on PostgreSQL only an ingest may."""
    from sqlalchemy import create_engine

    with pytest.raises(NotFoundError, match="no catalog here \\(an empty database\\)"):
        open_catalog(db, create=False)
    raw = create_engine(db)
    try:
        with raw.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        raw.dispose()
    open_catalog(db).dispose()  # an ingest may make it one
    open_catalog(db, create=False).dispose()


@postgres_only
def test_another_programs_postgresql_database_is_refused_unchanged(db: str) -> None:
    """Another program's Alembic version (hex) is not a newer dsaudit; nor are views alone."""
    from sqlalchemy import create_engine, text

    raw = create_engine(db)
    try:
        for statements in (
            [
                "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
                "INSERT INTO alembic_version VALUES ('1a2b3c4d5e6f')",
                "CREATE TABLE users (id INTEGER)",
            ],
            ["CREATE VIEW answers AS SELECT 42 AS answer"],
        ):
            with raw.begin() as conn:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version, users"))
                conn.execute(text("DROP VIEW IF EXISTS answers"))
                for statement in statements:
                    conn.execute(text(statement))
            for create in (True, False):
                with pytest.raises(SchemaError, match="not a dsaudit catalog"):
                    open_catalog(db, create=create)
            with raw.connect() as conn:
                assert "dataset" not in inspect(conn).get_table_names()
    finally:
        raw.dispose()


@sqlite_only
def test_sqlite_pragmas_are_set_on_the_catalog_engine(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        # A new catalog gets big pages: a pixel signature stays inside its B-tree leaf.
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 16384


def test_schema_head_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(_alembic_config()).get_heads() == [SCHEMA_HEAD]


def test_an_up_to_date_catalog_opens_without_importing_alembic(catalog_path: Path) -> None:
    """Alembic is a fifth of every command's start; it loads only to change a schema."""
    code = (
        "import sys; from catalog.db import open_catalog; "
        f"open_catalog({str(catalog_path)!r}).dispose(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_catalog_in_an_unwritable_directory_says_why_it_cannot_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite needs the write-ahead log's files beside a catalog even to read it. Root may
    write anywhere, so the directory's refusal and SQLite's are both simulated."""
    path = tmp_path / "c.db"
    open_catalog(str(path)).dispose()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    monkeypatch.setattr(
        db_module,
        "migrate",
        mock.Mock(side_effect=OperationalError("x", {}, Exception("unable to open database file"))),
    )
    with pytest.raises(
        SchemaError, match=r"unable to open database file; its directory .* is not writable"
    ):
        open_catalog(str(path), create=False)
    # Another failure in the same directory gets no such hint.
    monkeypatch.setattr(
        db_module,
        "migrate",
        mock.Mock(side_effect=OperationalError("x", {}, Exception("file is not a database"))),
    )
    with pytest.raises(SchemaError) as refused:
        open_catalog(str(path), create=False)
    assert str(refused.value).endswith("(file is not a database)")
