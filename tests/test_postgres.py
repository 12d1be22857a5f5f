"""PostgreSQL as a shared catalog: concurrent ingests, readers during an ingest, read-only SQL.

Real processes against a real server (``$DSAUDIT_TEST_PG``, see conftest): two ``dsaudit
ingest`` commands started together must both succeed, leave one image row per digest, lose no
rows, and find the near pairs between their two new versions whichever commits first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from catalog import api, synth
from catalog import near as near_module
from catalog.db import (
    GROWN_BY_INGEST,
    PAIR_LOCK,
    open_catalog,
    refresh_statistics,
    write_retrying,
)
from catalog.errors import QueryError, StorageError, UsageError
from catalog.near import register_recipes, resolve_recipes, unregister_recipes
from catalog.recipes import DEFAULT_RECIPES, PIXEL, PIXEL_SHIFT
from tests.conftest import postgres_only

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("dataset", "version", "split", "source", "image", "item", "signature", "band_key", "pair")


@pytest.fixture(scope="module")
def letters() -> tuple[np.ndarray, np.ndarray]:
    return synth.render_letters(3000, np.random.default_rng(21))


def _archive(path: Path, train: np.ndarray, test: np.ndarray) -> str:
    np.savez(path, x_train=train, x_test=test)
    return str(path)


_LOGS: dict[int, Path] = {}
"""The output file of each ingest process `_start` began, by pid."""


def _start(db: str, dataset: str, version: str, archive: str) -> subprocess.Popen[str]:
    """``dsaudit ingest`` as a process; its output goes to a file (a full pipe would block it).

    One file per process: two ingests of the same version must not write into one file.
    """
    command = [sys.executable, "-m", "cli", "--db", db, "ingest", dataset, version, archive]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = Path(archive).with_suffix(f".{dataset}.{version}.{len(_LOGS)}.log")
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out, text=True)
    _LOGS[process.pid] = log
    return process


def _output(process: subprocess.Popen[str]) -> str:
    """What an ingest started by `_start` printed."""
    return _LOGS[process.pid].read_text()


def _together(*jobs: tuple[str, str, str], db: str) -> list[subprocess.CompletedProcess[str]]:
    """Run ingests as processes started at the same moment, and make them meet; wait for all.

    The test holds the pair-finding lock (`catalog.db.PAIR_LOCK`) until every ingest is
    blocked on a lock: at the band join (that lock), or behind another ingest's uncommitted
    images. So they are truly in flight together, and the band joins would race if the lock
    did not order them (without it, this wait would time out).
    """
    engine = open_catalog(db)  # the schema exists, so all start on the data at once
    processes = [_start(db, *job) for job in jobs]
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PAIR_LOCK})")
        deadline = time.monotonic() + 180
        while _waiting(conn) < len(processes):
            finished = [p for p in processes if p.poll() is not None]
            assert not finished, [_output(p) for p in finished]
            assert time.monotonic() < deadline, "the ingests never met at a lock"
            time.sleep(0.1)
    engine.dispose()
    done = []
    for process in processes:
        process.wait(timeout=600)
        done.append(
            subprocess.CompletedProcess(process.args, process.returncode, "", _output(process))
        )
    return done


def _waiting(conn: Connection) -> int:
    """Other sessions on this database that are waiting for a lock."""
    # Statistics views are a snapshot per transaction unless cleared.
    conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
    return conn.exec_driver_sql(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
    ).scalar_one()


def _counts(db: str) -> dict[str, int]:
    engine = open_catalog(db)
    with engine.connect() as conn:
        counts = {t: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar_one() for t in TABLES}
    engine.dispose()
    return counts


def _pairs(db: str) -> set[tuple[str, bytes, bytes]]:
    """Every stored pair as (recipe, digest, digest): comparable across catalogs."""
    engine = open_catalog(db)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT r.name, a.digest, b.digest FROM pair p JOIN recipe r ON r.id = p.recipe_id"
                " JOIN image a ON a.id = p.image_a JOIN image b ON b.id = p.image_b"
            )
        ).all()
    engine.dispose()
    return {(name, *sorted((bytes(a), bytes(b)))) for name, a, b in rows}  # type: ignore[misc]


def _check_complete(db: str) -> None:
    """One image row per digest; every informative image signed and banded under each recipe."""
    engine = open_catalog(db)
    with engine.connect() as conn:
        twice = conn.exec_driver_sql(
            "SELECT digest FROM image GROUP BY digest HAVING COUNT(*) > 1"
        ).all()
        assert twice == []
        informative = conn.exec_driver_sql("SELECT COUNT(*) FROM image WHERE NOT low_info")
        expected = informative.scalar_one()
        for recipe in DEFAULT_RECIPES:
            signed = conn.execute(
                text(
                    "SELECT COUNT(*), COUNT(DISTINCT s.image_id) FROM signature s"
                    " JOIN recipe r ON r.id = s.recipe_id WHERE r.name = :name"
                ),
                {"name": recipe.name},
            ).one()
            assert tuple(signed) == (expected, expected), recipe.name
            banded = conn.execute(
                text(
                    "SELECT COUNT(DISTINCT b.image_id) FROM band_key b"
                    " JOIN recipe r ON r.id = b.recipe_id WHERE r.name = :name"
                ),
                {"name": recipe.name},
            ).scalar_one()
            assert banded == expected, recipe.name
    engine.dispose()


def _sequential(tmp_path: Path, jobs: list[tuple[str, str, str]]) -> str:
    """The same ingests one after the other into a SQLite catalog: the reference."""
    reference = str(tmp_path / "reference.db")
    for dataset, version, archive in jobs:
        api.ingest(reference, dataset, version, api.plan([archive]))
    return reference


def _scenario(name: str, letters: tuple[np.ndarray, np.ndarray], tmp_path: Path):  # type: ignore[no-untyped-def]
    images, _labels = letters
    copies = synth.brightness(images[:200], 0.03)  # near copies of the first job's images
    if name == "different datasets":
        first = _archive(tmp_path / "a.npz", images[:1200], images[1200:1400])
        second = _archive(tmp_path / "b.npz", images[1400:2600], copies)
        return [], [("a", "v1", first), ("b", "v1", second)]
    if name == "one dataset, two versions":
        # v0 exists already: v1 and v2 each derive from it, side by side.
        base = _archive(tmp_path / "v0.npz", images[2600:2700], images[2700:2750])
        first = _archive(tmp_path / "v1.npz", images[:1200], images[1200:1400])
        second = _archive(tmp_path / "v2.npz", images[1400:2600], copies)
        return [("d", "v0", base)], [("d", "v1", first), ("d", "v2", second)]
    # The same images in both, met in opposite orders (X then Y, Y then X: the row locks of
    # two open transactions can deadlock, and the loser is run again), plus near copies and
    # new images only the second has.
    x, y = images[:800], images[800:1400]
    first = _archive(tmp_path / "a.npz", x, y)
    second = _archive(tmp_path / "b.npz", y, np.concatenate([x, copies, images[2800:]]))
    return [], [("a", "v1", first), ("b", "v1", second)]


@postgres_only
@pytest.mark.parametrize(
    "scenario", ["different datasets", "one dataset, two versions", "the same images in both"]
)
def test_two_ingests_at_once_equal_the_same_ingests_in_turn(
    db: str, tmp_path: Path, letters, scenario: str
) -> None:  # type: ignore[no-untyped-def]
    setup, jobs = _scenario(scenario, letters, tmp_path)
    for dataset, version, archive in setup:
        api.ingest(db, dataset, version, api.plan([archive]))
    for result in _together(*jobs, db=db):
        assert result.returncode == 0, result.stderr
    reference = _sequential(tmp_path, setup + jobs)
    assert _counts(db) == _counts(reference)
    _check_complete(db)
    pairs = _pairs(db)
    assert pairs == _pairs(reference)
    # The planted pairs between the two new versions are there, whichever committed first.
    assert len({p[1:] for p in pairs}) >= 200


@postgres_only
def test_an_ingest_leaves_the_planner_statistics_of_what_it_grew(db: str, letters) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    api.ingest(db, "d", "v1", {"train": images[:300]})
    engine = open_catalog(db)
    with engine.connect() as conn:
        # analyze_count counts ANALYZE commands only, not autovacuum's.
        analysed = dict(
            conn.execute(
                text(
                    "SELECT relname, analyze_count FROM pg_stat_user_tables"
                    " WHERE relname = ANY(:tables)"
                ),
                {"tables": list(GROWN_BY_INGEST)},
            ).all()
        )
        # The statistics themselves: band_key's rows are counted, none missed.
        rows = conn.exec_driver_sql(
            "SELECT c.reltuples, (SELECT COUNT(*) FROM band_key) FROM pg_class c"
            " WHERE c.relname = 'band_key'"
        ).one()
    engine.dispose()
    assert analysed == {table: 1 for table in GROWN_BY_INGEST}
    assert rows[0] == rows[1] > 0
    # After the commit, a failure to analyse is not the ingest's: a server gone says nothing.
    gone = create_engine(make_url(db).set(database="dsaudit_no_such_database"))
    refresh_statistics(gone)
    gone.dispose()


@postgres_only
def test_the_same_version_twice_at_once_adds_it_once(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    archive = _archive(tmp_path / "a.npz", images[:1000], images[1000:1100])
    results = _together(("a", "v1", archive), ("a", "v1", archive), db=db)
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr for r in results]
    (refused,) = [r for r in results if r.returncode == 2]
    assert "a@v1 is already in the catalog" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _counts(db)["item"] == 1100 and _counts(db)["version"] == 1
    _check_complete(db)


@postgres_only
def test_readers_during_an_ingest_see_only_complete_versions(
    db: str, tmp_path: Path, letters
) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    api.ingest(db, "d", "v1", {"train": images[:100]})
    archive = _archive(tmp_path / "v2.npz", images[100:2600], images[2600:])
    process = _start(db, "d", "v2", archive)
    seen = set()
    while process.poll() is None:
        (dataset,) = api.list_catalog(db).datasets
        for version in dataset.versions:
            sizes = {s.split: s.items for s in version.splits}
            expected = {"train": 100} if version.tag == "v1" else {"train": 2500, "test": 400}
            assert sizes == expected, (version.tag, sizes)
            seen.add(version.tag)
        report = api.overlap(db, ["d"])  # one snapshot: splits and their counts agree
        assert sum(s.items for s in report.splits) in (100, 2900)
        time.sleep(0.05)
    assert process.returncode == 0, _output(process)
    assert "v1" in seen
    assert [v.tag for v in api.list_catalog(db).datasets[0].versions] == ["v1", "v2"]


def _state(db: str) -> tuple[object, ...]:
    engine = open_catalog(db)
    with engine.connect() as conn:
        relations = conn.exec_driver_sql(
            "SELECT relname, relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' ORDER BY relname"
        ).all()
        rows = conn.exec_driver_sql("SELECT * FROM dataset ORDER BY id").all()
        sequence = conn.exec_driver_sql("SELECT last_value FROM dataset_id_seq").scalar_one()
    engine.dispose()
    return tuple(relations), tuple(rows), sequence, tuple(_counts(db).items())


@postgres_only
@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO dataset (name) VALUES ('x')",
        "UPDATE item SET label = 'x'",
        "DELETE FROM item",
        "TRUNCATE pair",
        "DROP TABLE pair",
        "DROP VIEW v_item",
        "CREATE TABLE t (x int)",
        "CREATE TEMPORARY TABLE t (x int)",
        "CREATE INDEX ix_t ON item (label)",
        "SELECT nextval('dataset_id_seq')",
        "SELECT 1; DELETE FROM item",
        "SET TRANSACTION READ WRITE",
        "SET TRANSACTION READ WRITE; INSERT INTO dataset (name) VALUES ('x')",
        "COMMIT; INSERT INTO dataset (name) VALUES ('x')",
        "COMMIT; SET default_transaction_read_only = off; INSERT INTO dataset (name) VALUES ('x')",
        "BEGIN READ WRITE; INSERT INTO dataset (name) VALUES ('x'); COMMIT",
        "DO $$ BEGIN INSERT INTO dataset (name) VALUES ('x'); END $$",
        "WITH gone AS (DELETE FROM item RETURNING 1) SELECT COUNT(*) FROM gone",
        "SELECT * FROM dataset FOR UPDATE",
    ],
)
def test_sql_cannot_change_anything_on_postgres(db: str, statement: str) -> None:
    api.ingest(db, "d", "v1", {"train": np.arange(4 * 16, dtype=np.uint8).reshape(4, 4, 4)})
    before = _state(db)
    with pytest.raises(QueryError, match="SQL failed"):
        api.run_sql(db, statement)
    assert _state(db) == before


@postgres_only
def test_sql_on_postgres_reads_and_runs_harmless_commands(db: str) -> None:
    api.ingest(db, "d", "v1", {"train": np.arange(4 * 16, dtype=np.uint8).reshape(4, 4, 4)})
    result = api.run_sql(db, "SELECT dataset, split, items FROM v_split")
    assert result.columns == ("dataset", "split", "items") and result.rows == (("d", "train", 4),)
    assert api.run_sql(db, "SELECT 1 WHERE false").rows == ()
    # A lone COMMIT or SET changes nothing: the connection is closed right after.
    assert api.run_sql(db, "COMMIT").rows == ()
    assert api.run_sql(db, "SET default_transaction_read_only = off").rows == ()
    assert api.run_sql(db, "SELECT name FROM dataset WHERE name LIKE 'd%'").rows == (("d",),)
    truncated = api.run_sql(db, "SELECT * FROM generate_series(1, 100)", max_rows=3)
    assert truncated.truncated and len(truncated.rows) == 3
    digest = api.run_sql(db, "SELECT digest FROM v_item LIMIT 1").rows[0][0]
    assert len(digest) == 64  # hex text, as on SQLite


@postgres_only
def test_a_lost_race_is_run_again(db: str) -> None:
    engine = open_catalog(db)
    attempts = []

    def work(conn: Connection) -> int:
        attempts.append(1)
        conn.exec_driver_sql("INSERT INTO dataset (name) VALUES ('d')")
        if len(attempts) == 1:  # what PostgreSQL raises on the deadlock victim
            conn.exec_driver_sql("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$")
        return len(attempts)

    assert write_retrying(engine, work) == 2
    with engine.connect() as conn:  # the first attempt rolled back: one row
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM dataset").scalar_one() == 1
    engine.dispose()


@postgres_only
@pytest.mark.parametrize(
    ("code", "fragment"),
    [("25006", "the database takes no writes"), ("42501", "this role may not write the catalog")],
)
def test_a_write_the_server_refuses_is_a_one_line_error(db: str, code: str, fragment: str) -> None:
    """A read-only replica or transaction, or a role without INSERT: a traceback before."""
    engine = open_catalog(db)

    def work(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO dataset (name) VALUES ('d')")
        conn.exec_driver_sql(f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}'; END $$")

    with pytest.raises(StorageError, match=f"{fragment}.*nothing was added"):
        write_retrying(engine, work)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM dataset").scalar_one() == 0
    engine.dispose()


def _second_version(db: str, tmp_path: Path, option: str) -> tuple[str, list[str]]:
    """A catalog holding d@v1, the URL of a session with ``option`` set (``name=value``),
    and the arguments of a command that would ingest d@v2."""
    api.ingest(db, "d", "v1", {"train": np.arange(64, dtype=np.uint8).reshape(4, 4, 4)})
    path = tmp_path / "x.npy"
    np.save(path, np.arange(64, 128, dtype=np.uint8).reshape(4, 4, 4))
    name, value = option.split("=")
    url = f"{db}{'&' if '?' in db else '?'}options=-c%20{name}%3D{value}"
    return url, ["ingest", "d", "v2", "--split", f"train={path}"]


@postgres_only
def test_an_ingest_into_a_read_only_session_changes_nothing(db: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    read_only, ingest = _second_version(db, tmp_path, "default_transaction_read_only=on")
    result = CliRunner().invoke(app, ["--db", read_only, *ingest])
    assert result.exit_code == 2, result.output
    assert "the database takes no writes" in result.stderr and "Traceback" not in result.output
    assert [v.tag for v in api.list_catalog(db).datasets[0].versions] == ["v1"]


@postgres_only
def test_a_lock_timeout_of_ones_own_is_catalog_busy(db: str, tmp_path: Path) -> None:
    """The README's way to bound a wait on PostgreSQL ends in a one-line error."""
    from typer.testing import CliRunner

    from cli.app import app

    bounded, ingest = _second_version(db, tmp_path, "lock_timeout=200ms")
    holder = create_engine(db)
    try:
        # The data, then the schema's version (read first, on opening: as while another
        # process upgrades the schema).
        for tables in ("item, split", "alembic_version"):
            with holder.connect() as conn, conn.begin():
                conn.exec_driver_sql(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                for command in (["ls"], ingest):
                    result = CliRunner().invoke(app, ["--db", bounded, *command])
                    assert result.exit_code == 2, result.output
                    assert "catalog busy: waited longer than the lock_timeout" in result.stderr
                    assert "Traceback" not in result.output
    finally:
        holder.dispose()
    assert [v.tag for v in api.list_catalog(db).datasets[0].versions] == ["v1"]


def test_a_postgres_url_without_the_driver_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["--db", "postgresql+psycopg://me@/cat?host=/tmp", "ls"])
    assert result.exit_code == 2, result.output
    assert "driver is not installed: psycopg" in result.stderr
    assert "pip install 'dsaudit[postgres]'" in result.stderr
    assert "Traceback" not in result.output


@postgres_only
def test_an_exact_only_ingest_and_the_first_recipes_exclude_each_other(db: str) -> None:
    """Under READ COMMITTED an exact-only ingest could read no recipes while a near ingest
    registers them, and both commit: images left unsigned in a catalog with recipes. The
    exact-only ingest holds the recipe choice shared for its transaction; registering recipes
    waits for it, then finds the catalog made exact-only."""
    engine = open_catalog(db)
    try:
        with engine.connect() as exact, engine.connect() as near:
            exact.begin()
            assert resolve_recipes(exact, near=False) == ()
            near.begin()
            near.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            with pytest.raises(DBAPIError, match="lock timeout"):
                resolve_recipes(near)  # would register the defaults: waits for `exact`
            near.rollback()
            exact.exec_driver_sql(
                "INSERT INTO image (digest, height, width, channels, dtype, low_info) "
                "VALUES (decode(repeat('ab', 32), 'hex'), 2, 2, 1, 'uint8', false)"
            )
            exact.commit()
            with near.begin(), pytest.raises(UsageError, match="made exact-only"):
                resolve_recipes(near)
            # Exact-only ingests share the lock: they still run side by side.
            with exact.begin(), near.begin():
                assert resolve_recipes(exact, near=False) == resolve_recipes(near, near=False)
    finally:
        engine.dispose()


_IMAGE = (
    "INSERT INTO image (digest, height, width, channels, dtype, low_info) "
    "VALUES (decode(repeat('cd', 32), 'hex'), 2, 2, 1, 'uint8', false)"
)


def _waiting_on(holder: Connection, work: Callable[[], object]) -> threading.Thread:
    """``work`` started in a thread, once it waits for a lock (``holder``'s, to be released)."""
    thread = threading.Thread(target=work)
    thread.start()
    deadline = time.monotonic() + 30
    while _waiting(holder) < 1:
        assert time.monotonic() < deadline, "the work never waited for the lock"
        time.sleep(0.05)
    return thread


def _recipes(conn: Connection) -> list[str]:
    return list(conn.exec_driver_sql("SELECT name FROM recipe ORDER BY id").scalars())


@postgres_only
def test_sigterm_takes_back_a_first_ingests_recipes(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    """``docker stop`` or a cancelled CI job: Python's default for SIGTERM ended the process
    on the spot, and the recipes it had registered stayed, with no images."""
    images, _labels = letters
    archive = _archive(tmp_path / "l.npz", images[:1000], images[1000:1100])
    engine = open_catalog(db)
    with engine.connect() as conn, conn.begin():
        # Held until the ingest waits for it at its band join, recipes registered by then.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PAIR_LOCK})")
        process = _start(db, "l", "v1", archive)
        deadline = time.monotonic() + 120
        while _waiting(conn) < 1:
            assert process.poll() is None, _output(process)
            assert time.monotonic() < deadline, "the ingest never reached its band join"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 128 + signal.SIGTERM, _output(process)
    assert "Traceback" not in _output(process)
    with engine.connect() as conn:
        assert _recipes(conn) == []
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM dataset").scalar_one() == 0
    engine.dispose()


@postgres_only
def test_a_failed_first_ingests_recipes_are_taken_back_only_when_no_ingest_used_them(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first near ingest registers its recipes in a transaction of its own; if it then
    fails, `unregister_recipes` takes them back. It waits for every ingest that signs with
    them (each holds the recipe choice shared), and keeps them if one committed images."""
    monkeypatch.setattr(near_module, "UNREGISTER_WAIT", "300ms")
    engine = open_catalog(db)
    try:
        with engine.begin() as conn:
            ids = register_recipes(conn, None)
        assert len(ids) == len(DEFAULT_RECIPES)
        with engine.connect() as other, engine.connect() as undo:
            other.begin()
            assert resolve_recipes(other) == DEFAULT_RECIPES  # signs with them: holds shared
            undo.begin()
            with pytest.raises(DBAPIError, match="lock timeout"):
                unregister_recipes(undo, ids)
            undo.rollback()
            other.exec_driver_sql(_IMAGE)  # its images, signed under them, commit
            other.commit()
            with undo.begin():
                unregister_recipes(undo, ids)
            with undo.begin():
                assert _recipes(undo) == [recipe.name for recipe in DEFAULT_RECIPES]
    finally:
        engine.dispose()


@postgres_only
def test_an_ingest_that_waited_while_the_recipes_were_taken_back_registers_them(
    db: str,
) -> None:
    """An ingest that saw the recipes, then waited while a failed first ingest took them back,
    finds none once it holds the choice: it then holds it exclusively, as a first registration
    must, so no exact-only ingest can add unsigned images beside it."""
    engine = open_catalog(db)
    try:
        with engine.begin() as conn:
            ids = register_recipes(conn, None)
        with engine.connect() as undo, engine.connect() as waiter, engine.connect() as exact:
            undo.begin()
            unregister_recipes(undo, ids)  # not committed: the waiter still sees the recipes
            waiter.begin()
            chosen: list[object] = []
            thread = _waiting_on(undo, lambda: chosen.append(resolve_recipes(waiter)))
            undo.commit()
            thread.join(timeout=30)
            assert chosen == [DEFAULT_RECIPES]
            exact.begin()
            exact.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            with pytest.raises(DBAPIError, match="lock timeout"):
                resolve_recipes(exact, near=False)
            exact.rollback()
            waiter.rollback()
    finally:
        engine.dispose()


@postgres_only
def test_a_recipe_added_beside_a_running_ingest_waits_for_it(db: str) -> None:
    """An ingest that adds a recipe holds the choice exclusively: a running ingest signs its
    images under the recipes it read, so a recipe added beside it would miss them. Once it has
    committed, the recipe is refused, because the catalog holds images never signed under it."""
    engine = open_catalog(db)
    try:
        with engine.begin() as conn:
            register_recipes(conn, [PIXEL.name])
        with engine.connect() as running, engine.connect() as adding:
            running.begin()
            assert resolve_recipes(running, [PIXEL.name]) == (PIXEL,)
            adding.begin()
            adding.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
            with pytest.raises(DBAPIError, match="lock timeout"):
                resolve_recipes(adding, [PIXEL.name, PIXEL_SHIFT.name])
            adding.rollback()
            running.exec_driver_sql(_IMAGE)
            running.commit()
            with adding.begin(), pytest.raises(UsageError, match="never signed under pixshift"):
                resolve_recipes(adding, [PIXEL.name, PIXEL_SHIFT.name])
            with adding.begin():
                assert _recipes(adding) == [PIXEL.name]
    finally:
        engine.dispose()


@postgres_only
def test_two_first_registrations_each_report_only_their_own_recipes(db: str) -> None:
    """The second of two first ingests finds the first one's recipes once it holds the choice:
    it registered none, so if it fails it takes none back (the first one's ingest may be
    about to sign with them)."""
    engine = open_catalog(db)
    try:
        with engine.connect() as first, engine.connect() as second:
            first.begin()
            assert len(register_recipes(first, None)) == len(DEFAULT_RECIPES)
            found: list[list[int]] = []

            def register() -> None:
                second.begin()
                found.append(register_recipes(second, None))

            thread = _waiting_on(first, register)
            first.commit()
            thread.join(timeout=30)
            assert found == [[]]
            second.commit()
    finally:
        engine.dispose()


@postgres_only
def test_sql_json_on_postgres_gives_numbers_and_iso_times(db: str) -> None:
    """psycopg returns Decimal and datetime, which json cannot write."""
    from typer.testing import CliRunner

    from cli.app import app

    api.ingest(db, "d", "v1", {"train": np.zeros((3, 4, 4), np.uint8)}, near=False)
    statement = (
        "SELECT SUM(items) AS total, 1.5::numeric AS half, created_at, 'NaN'::float AS nan "
        "FROM v_split JOIN version ON TRUE GROUP BY created_at"
    )
    result = CliRunner().invoke(app, ["--db", db, "sql", statement, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["total"] == 3 and row["half"] == 1.5 and row["nan"] == "NaN"
    assert row["created_at"].endswith("+00:00")
