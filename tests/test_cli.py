"""The command line, through Typer's CliRunner against real temporary catalogs."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from catalog import api
from catalog.errors import NotFoundError
from cli.app import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def archive(tmp_path: Path, rng: np.random.Generator) -> Path:
    """notMNIST-style .npz: train has 3 copies of test images, one with another label."""
    train = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    test[:3] = train[:3]
    train_labels = rng.integers(0, 10, 300)
    test_labels = rng.integers(0, 10, 50)
    test_labels[:3] = train_labels[:3]
    test_labels[0] = (train_labels[0] + 1) % 10
    path = tmp_path / "letters.npz"
    np.savez_compressed(
        path,
        train_dataset=train,
        train_labels=train_labels,
        test_dataset=test,
        test_labels=test_labels,
    )
    return path


def _run(runner: CliRunner, db: str | Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--db", str(db), *args])


def test_ingest_then_overlap_json(
    db: str, runner: CliRunner, tmp_path: Path, archive: Path
) -> None:
    result = _run(runner, db, "ingest", "letters", "v1", str(archive))
    assert result.exit_code == 0, result.output
    assert "Ingested letters@v1" in result.stdout
    result = _run(runner, db, "overlap", "letters", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "dsaudit.overlap/1"
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    leak = pairs[("letters@v1:test", "letters@v1:train")]
    assert leak["items"] == 3 and leak["rate"] == pytest.approx(3 / 50)
    assert data["conflict_images"] == 1
    assert [s["ref"] for s in data["splits"]] == ["letters@v1:train", "letters@v1:test"]
    # The catalog agrees when read back through the library.
    assert api.overlap(str(db), ["letters@v1:test"]).splits[0].items == 50


def test_overlap_table_shows_the_leak(
    db: str, runner: CliRunner, tmp_path: Path, archive: Path
) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    result = _run(runner, db, "overlap", "letters@v1")
    assert result.exit_code == 0, result.output
    assert "3 (6.0 %)" in result.stdout
    assert "Label conflicts: 1 image carries" in result.stdout


def test_ls_lists_versions_and_counts(
    db: str, runner: CliRunner, tmp_path: Path, archive: Path
) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive), "--note", "first")
    _run(runner, db, "ingest", "letters", "v2", str(archive))
    result = _run(runner, db, "ls", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (dataset,) = data["datasets"]
    assert [v["tag"] for v in dataset["versions"]] == ["v1", "v2"]
    assert dataset["versions"][1]["parent"] == "v1"
    assert dataset["versions"][0]["note"] == "first"
    assert dataset["images"] == 347
    table = _run(runner, db, "ls", "letters").stdout
    assert "letters" in table and "first" in table and "300" in table
    # Each version's files on a line of their own, not beside one of its splits.
    assert "v1 read from letters.npz" in table and "v2 read from letters.npz" in table


def test_datasets_are_listed_in_code_point_order_on_every_engine(db: str) -> None:
    """Not in the database's collation: a PostgreSQL server made with en_US sorted b before
    B, and its JSON differed from SQLite's."""
    for name in ("b", "B", "a", "_x", "é"):
        api.ingest(db, name, "v1", {"train": np.arange(16, dtype=np.uint8).reshape(1, 4, 4)})
    names = [d.name for d in api.list_catalog(db).datasets]
    assert names == ["B", "_x", "a", "b", "é"]
    with pytest.raises(NotFoundError, match=r"\(datasets: B, _x, a, b, é\)"):
        api.overlap(db, ["nope"])


def test_a_npy_source_named_by_its_array_name_is_pointed_to_its_path(
    runner: CliRunner, tmp_path: Path
) -> None:
    np.save(tmp_path / "x_train.npy", np.zeros((3, 8, 8), np.uint8))
    np.save(tmp_path / "y_train.npy", np.arange(3))
    files = [str(tmp_path / "x_train.npy"), str(tmp_path / "y_train.npy")]
    result = _run(
        runner, tmp_path / "c.db", "ingest", "m", "v1", *files, "--split", "train=x_train:y_train"
    )
    _assert_user_error(result, f"a .npy source is named by its path: {tmp_path / 'x_train.npy'}")


def test_explicit_split_with_npy_files(db: str, runner: CliRunner, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.array(["cat", "dog"] * 10))
    result = _run(
        runner,
        db,
        "ingest",
        "pets",
        "v1",
        "--split",
        f"train={tmp_path / 'x.npy'}:{tmp_path / 'y.npy'}",
    )
    assert result.exit_code == 0, result.output
    rows = api.run_sql(str(db), "SELECT label, COUNT(*) FROM v_item GROUP BY label").rows
    assert dict(rows) == {"cat": 10, "dog": 10}
    # Both files are recorded as read, the labels' too, each with its own sha256.
    sources = api.run_sql(str(db), "SELECT path, format, size, sha256 FROM source ORDER BY id")
    assert [tuple(row) for row in sources.rows] == [
        (
            str(tmp_path / name),
            "npy",
            (tmp_path / name).stat().st_size,
            hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(),
        )
        for name in ("x.npy", "y.npy")
    ]


def _assert_user_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), result.stderr
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, (fragment, result.stderr)
    assert "Traceback" not in result.output


def _snapshot(db: str | Path) -> list[tuple]:
    return list(api.run_sql(str(db), "SELECT * FROM v_item ORDER BY split_id, position").rows)


def test_user_errors_are_one_line_exit_2_and_leave_the_catalog(
    db: str, runner: CliRunner, tmp_path: Path, archive: Path
) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    before = _snapshot(db)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    pickled = tmp_path / "notMNIST.pickle"
    pickled.write_bytes(b"\x80\x04K\x01.")
    ambiguous = tmp_path / "amb.npz"
    np.savez(ambiguous, pixels=np.zeros((3, 4, 4)))

    _assert_user_error(
        _run(runner, db, "ingest", "letters", "v1", str(archive)), "letters@v1 is already"
    )
    _assert_user_error(_run(runner, db, "ingest", "letters", "v2", str(garbage)), "garbage.npz")
    _assert_user_error(
        _run(runner, db, "ingest", "letters", "v2", str(pickled)),
        "notMNIST.pickle",
        "--allow-pickle",
    )
    _assert_user_error(
        _run(runner, db, "ingest", "letters", "v2", str(ambiguous)),
        "amb.npz",
        "pixels 3x4x4",
        "--split",
    )
    _assert_user_error(
        _run(runner, db, "ingest", "letters", "v2", str(tmp_path / "missing.npz")), "missing.npz"
    )
    _assert_user_error(_run(runner, db, "overlap", "nope"), "dataset 'nope'")
    _assert_user_error(_run(runner, db, "overlap", "a@b@c"), "is not a ref")
    _assert_user_error(_run(runner, db, "ingest", "letters", "v2", "--split", "oops"), "NAME=ARRAY")
    assert _snapshot(db) == before
    assert [v.tag for v in api.list_catalog(str(db)).datasets[0].versions] == ["v1"]


def test_reading_a_missing_catalog_says_so(runner: CliRunner, tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    _assert_user_error(_run(runner, db, "ls"), "absent.db", "no catalog here")
    assert not db.exists()


def test_a_first_ingest_refused_before_reading_creates_no_catalog(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Names, files and shapes are checked before the catalog is opened: such a refused first
    ingest creates no file (nor directories). Bad pixels are found while the data is read, in
    the catalog's transaction: that leaves the new catalog empty, as a later ingest finds it
    (removing the file then could remove one another process has just opened)."""
    floats = np.random.default_rng(0).random((10, 8, 8)).astype(np.float32)
    floats[3, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", floats)
    np.save(tmp_path / "good.npy", np.arange(640, dtype=np.uint8).reshape(10, 8, 8))
    db = tmp_path / "new" / "deeper" / "c.db"
    good = f"train={tmp_path / 'good.npy'}"
    _assert_user_error(_run(runner, db, "ingest", "a/b", "v1", "--split", good), "'a/b'")
    _assert_user_error(_run(runner, db, "ingest", "d", " v1", "--split", good), "' v1'")
    _assert_user_error(
        _run(runner, db, "ingest", "d", "v1", "--split", f"train={tmp_path / 'gone.npy'}"),
        "gone.npy",
    )
    assert not (tmp_path / "new").exists()
    _assert_user_error(
        _run(runner, db, "ingest", "d", "v1", "--split", f"train={tmp_path / 'nan.npy'}"),
        "nan.npy",
        "image 3 has NaN",
    )
    assert api.list_catalog(str(db)).datasets == ()
    made = _run(runner, db, "ingest", "d", "v1", "--split", good)
    assert made.exit_code == 0, made.output
    assert [v.tag for v in api.list_catalog(str(db)).datasets[0].versions] == ["v1"]


def test_db_from_environment(runner: CliRunner, tmp_path: Path, archive: Path) -> None:
    db = tmp_path / "env.db"
    result = runner.invoke(
        app, ["ingest", "letters", "v1", str(archive)], env={"DSAUDIT_DB": str(db)}
    )
    assert result.exit_code == 0, result.output
    assert db.exists()


@pytest.fixture(scope="module")
def sql_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One catalog for every attempt to write through `dsaudit sql`: each must leave it as is."""
    db = tmp_path_factory.mktemp("sql") / "c.db"
    images = np.random.default_rng(5).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    api.ingest(str(db), "letters", "v1", {"train": (images, np.arange(40) % 3)})
    return db


def _checksum(db: Path) -> str:
    """sha256 of the catalog file and of its WAL, if any: a committed write lands in the WAL."""
    digest = hashlib.sha256(db.read_bytes())
    wal = Path(f"{db}-wal")
    if wal.exists():
        digest.update(wal.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO dataset (name) VALUES ('x')",
        "INSERT INTO dataset (name) VALUES ('x') RETURNING id",
        "REPLACE INTO dataset (name) VALUES ('x')",
        "WITH n AS (SELECT 'x' AS name) INSERT INTO dataset (name) SELECT name FROM n",
        "UPDATE item SET label = 'x'",
        "WITH s AS (SELECT 1) UPDATE item SET label = 'x' WHERE 1 IN (SELECT * FROM s)",
        "DELETE FROM item",
        "WITH s AS (SELECT 1) DELETE FROM item",
        "DROP TABLE item",
        "DROP VIEW v_item",
        "CREATE TABLE t (x)",
        "CREATE TEMP TABLE t (x)",
        "CREATE INDEX ix_new ON item (label)",
        "ATTACH DATABASE 'other.db' AS other",
        "VACUUM INTO 'other.db'",
        "VACUUM",
        "REINDEX",
        "ANALYZE",
        "PRAGMA query_only = OFF",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 7",
        "PRAGMA main.user_version = 7",
        "PRAGMA writable_schema = ON",
        "PRAGMA wal_checkpoint(TRUNCATE)",
        "PRAGMA optimize",
        "SELECT 1; DELETE FROM item",
        "DELETE FROM item; SELECT 1",
        "SELECT load_extension('libevil')",
        "SELECT load_extension('other.db', 'sqlite3_extension_init')",
    ],
)
def test_sql_cannot_change_anything(
    runner: CliRunner, tmp_path: Path, sql_catalog: Path, statement: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    db = sql_catalog
    checksum = _checksum(db)
    before = _snapshot(db)
    schema = api.run_sql(str(db), "SELECT sql FROM sqlite_master ORDER BY name").rows
    result = _run(runner, db, "sql", statement)
    _assert_user_error(result, "SQL failed", str(db))
    assert _checksum(db) == checksum
    assert _snapshot(db) == before
    assert api.run_sql(str(db), "SELECT sql FROM sqlite_master ORDER BY name").rows == schema
    assert not (tmp_path / "other.db").exists()


def test_sql_refusals_say_the_catalog_is_read_only(runner: CliRunner, sql_catalog: Path) -> None:
    result = _run(runner, sql_catalog, "sql", "DELETE FROM item")
    _assert_user_error(result, "read-only")
    for empty in ("", "  \n"):
        _assert_user_error(_run(runner, sql_catalog, "sql", empty), "no SQL statement given")


def test_sql_leaves_no_wal_files_beside_the_catalog(runner: CliRunner, sql_catalog: Path) -> None:
    """A read-only connection cannot checkpoint, so it left ``-wal`` and ``-shm`` files."""
    checksum = _checksum(sql_catalog)
    for statement in ("SELECT COUNT(*) FROM item", "DELETE FROM item"):
        _run(runner, sql_catalog, "sql", statement)
        leftovers = sorted(p.name for p in sql_catalog.parent.glob(sql_catalog.name + "-*"))
        assert leftovers == [], statement
    assert _checksum(sql_catalog) == checksum


def test_sql_reads_checks_and_schema_pragmas(runner: CliRunner, sql_catalog: Path) -> None:
    for statement, expected in [
        ("PRAGMA integrity_check", [{"integrity_check": "ok"}]),
        ("PRAGMA foreign_key_check", []),
        ("PRAGMA user_version", [{"user_version": 0}]),
    ]:
        result = _run(runner, sql_catalog, "sql", statement, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == expected, statement


def test_sql_outputs(db: str, runner: CliRunner, tmp_path: Path, archive: Path) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    query = "SELECT split, COUNT(*) AS n FROM v_item GROUP BY split ORDER BY split"
    table = _run(runner, db, "sql", query)
    assert table.exit_code == 0 and "train" in table.stdout and "300" in table.stdout
    as_json = json.loads(_run(runner, db, "sql", query, "--json").stdout)
    assert as_json == [{"split": "test", "n": 50}, {"split": "train", "n": 300}]
    rows = list(csv.reader(io.StringIO(_run(runner, db, "sql", query, "--csv").stdout)))
    assert rows == [["split", "n"], ["test", "50"], ["train", "300"]]
    overlap = json.loads(
        _run(
            runner,
            db,
            "sql",
            "SELECT COUNT(*) AS n FROM v_exact_overlap WHERE split_a = 'test'",
            "--json",
        ).stdout
    )
    assert overlap == [{"n": 3}]
    truncated = _run(runner, db, "sql", "SELECT * FROM v_item", "--max-rows", "2")
    assert "first 2 rows" in truncated.stdout
    narrow = _run(runner, db, "sql", "SELECT position FROM v_item", "--max-rows", "3")
    assert "first 3 rows; --max-rows shows more" in narrow.stdout  # one line, not wrapped
    _assert_user_error(_run(runner, db, "sql", query, "--json", "--csv"), "--json", "--csv")


def _commands() -> list[str]:
    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)  # type: ignore[union-attr]


def test_every_command_has_help_with_an_example(runner: CliRunner) -> None:
    for name in _commands():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, name
    assert "Audit image datasets" in runner.invoke(app, ["--help"]).stdout


def test_help_shows_brackets_literally(runner: CliRunner) -> None:
    # Usage lines are full of [...]; help must not read them as rich markup and drop them.
    for name in ("overlap", "conflicts", "show", "report"):
        assert "DATASET[@VERSION]" in runner.invoke(app, [name, "--help"]).stdout, name


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S))
    used = set(re.findall(r"dsaudit (?:--db \S+ )?([a-z]+)", code))
    assert {"demo", "ingest", "overlap", "sql", "ls"} <= used, used
    assert used <= set(_commands()), used - set(_commands())
    assert "bash .ci/run" in code


def test_demo_finds_everything_it_planted(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "✗" not in result.stdout and "✓" in result.stdout
    db = str(tmp_path / "demo" / "demo.db")
    listing = api.list_catalog(db, "notmnist")
    assert [v.tag for v in listing.datasets[0].versions] == ["v1", "v2"]
    leak = api.overlap(db, ["notmnist@v1"]).pair("notmnist@v1:test", "notmnist@v1:train")
    assert leak.items == 15
    # Running it again remakes the catalog rather than failing on existing versions.
    again = runner.invoke(app, ["demo", str(tmp_path / "demo")])
    assert again.exit_code == 0, again.output


def test_readme_python_example_runs_as_documented(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    expected = [
        line.split("# ")[1].split(":")[0] for line in example.splitlines() if "print(" in line
    ]
    assert printed[: len(expected)] == expected


def test_error_messages_are_not_read_as_markup(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "data[red].npz"  # rich markup would swallow "[red]"
    result = runner.invoke(app, ["--db", str(tmp_path / "c.db"), "ingest", "d", "v1", str(missing)])
    _assert_user_error(result, "data[red].npz: no such file")


def test_a_progress_task_run_again_gets_a_new_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo ingests two versions on one display: each ingest's near stage and overlap
    # report are bars of their own, never one bar past its total (6/3).
    from rich.console import Console

    import cli.app

    out = io.StringIO()
    monkeypatch.setattr(cli.app, "_stderr", lambda: Console(file=out, width=100))
    with cli.app._progress() as on_progress:
        for _ingest in range(2):
            on_progress("overlap report", 0, 1)
            on_progress("overlap report", 1, 1)
            on_progress("near", 0, 3)
            for _band in range(3):
                on_progress("near", 1, 3)
    bars = re.findall(r"^(overlap report|near)\s.*?(\d+)/(\d+)", out.getvalue(), re.M)
    assert bars == [("overlap report", "1", "1"), ("near", "3", "3")] * 2


def test_ctrl_c_while_the_libraries_load_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The script's entry point loads the command (numpy, SQLAlchemy, rich) itself, so a
    Ctrl-C in that second is an exit like any other interrupted command's."""

    class Interrupted:
        def find_spec(self, name: str, *_args: object) -> None:
            if name == "cli.app":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "cli.app")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130


def test_values_from_the_data_are_printed_as_they_are_never_as_markup(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Labels, notes, file and array names come from the data: "[/]" in one crashed a
    command (rich read it as a closing tag) and "[red]" vanished."""
    images = np.random.default_rng(3).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    folder = tmp_path / "[red]data"
    folder.mkdir()
    np.save(folder / "[b]x.npy", np.concatenate([images, images[:2]]))
    np.save(folder / "y.npy", np.array(["[/]", "[red]lab", "c", "d", "e", "f", "[red]lab", "g"]))
    db = tmp_path / "c.db"
    spec = f"train={folder / '[b]x.npy'}:{folder / 'y.npy'}"
    made = _run(runner, db, "ingest", "d", "v1", "--split", spec, "--note", "[blink]note[/]")
    assert made.exit_code == 0, made.output
    outputs = {
        "ls": _run(runner, db, "ls").stdout,
        "conflicts": _run(runner, db, "conflicts", "d").stdout,
        "show": _run(runner, db, "show", "d@v1:train:0").stdout,
        "report": _run(runner, db, "report", "d", "--limit", "50").stdout,
        "sql": _run(runner, db, "sql", "SELECT label FROM v_item WHERE position = 0").stdout,
    }
    assert "[blink]n" in outputs["ls"] and "[b]x.npy" in outputs["ls"]  # (cut to 80 columns)
    assert "[/]" in outputs["sql"] and "[/]" in outputs["show"]
    for name in ("conflicts", "report"):
        assert "[/]" in outputs[name] and "[red]lab" in outputs[name], name
    assert "[b]x.npy" in outputs["show"]


@pytest.mark.parametrize(
    "args",
    [
        ["conflicts", "d", "--limit", str(2**63)],
        ["overlap", "d", "--limit", str(2**63)],
        ["dups", "d", "--limit", str(2**63)],
        ["diff", "d@v1", "d@v1", "--limit", str(2**63)],
        ["show", "d@v1:train:0", "--limit", str(2**63)],
        ["sql", "SELECT 1", "--max-rows", str(2**70)],
    ],
    ids=lambda args: args[0],
)
def test_counts_past_any_integer_are_usage_errors(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    """A count SQLite cannot hold was a traceback (OverflowError)."""
    db = tmp_path / "c.db"
    np.save(tmp_path / "x.npy", np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
    assert (
        _run(runner, db, "ingest", "d", "v1", "--split", f"train={tmp_path / 'x.npy'}").exit_code
        == 0
    )
    result = _run(runner, db, *args)
    assert result.exit_code == 2 and "Invalid value for '--" in result.stderr, result.output


def test_sql_json_keeps_every_column_and_only_json_values(
    runner: CliRunner, sql_catalog: Path
) -> None:
    """Two columns of one name overwrote each other in the object; inf is no JSON number."""
    _assert_user_error(
        _run(runner, sql_catalog, "sql", "SELECT s.id, v.id FROM split s JOIN version v", "--json"),
        "'id' names two columns",
        "AS",
    )
    result = _run(
        runner,
        sql_catalog,
        "sql",
        "SELECT 1e308 * 10 AS up, -1e308 * 10 AS down, 2.5 AS x, tag FROM version",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"up": "Infinity", "down": "-Infinity", "x": 2.5, "tag": "v1"}
    ]


@pytest.mark.parametrize("name", ["run%20one.db", "q?mode=ro.db", "a#b.db"])
def test_a_catalog_path_is_a_file_name_not_url_syntax(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.arange(5 * 16, dtype=np.uint8).reshape(5, 4, 4))
    result = _run(runner, name, "ingest", "d", "v1", "--split", "train=x.npy")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "x.npy"])
    listed = _run(runner, name, "sql", "SELECT COUNT(*) AS n FROM item", "--json")
    assert json.loads(listed.stdout) == [{"n": 5}]
    # The same file as a relative sqlite:/// URL (file URIs need absolute paths).
    relative = _run(runner, f"sqlite:///{name.replace('%', '%25').replace('?', '%3F')}", "ls")
    assert relative.exit_code == 0, relative.output


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgres://me:secret@host/db", "write postgresql+psycopg://"),
        ("http://host/x", "'http' is neither"),
        ("://", "not a database URL"),
        ("sqlite:///bad\udcff.db", "not valid UTF-8"),
        ("postgresql+psycopg://me:secret@host/d\udcffb", "the URL is not valid UTF-8"),
    ],
)
def test_a_url_dsaudit_cannot_use_is_a_usage_error(
    runner: CliRunner, url: str, fragment: str
) -> None:
    result = _run(runner, url, "ls")
    _assert_user_error(result, fragment)
    assert "secret" not in result.stderr


@pytest.mark.parametrize("parameter", ["password", "sslpassword", "PASSWORD"])
def test_a_password_in_the_query_string_is_never_shown(
    runner: CliRunner, tmp_path: Path, parameter: str
) -> None:
    """libpq reads ``?password=``; the message named the URL with it in clear."""
    url = f"postgresql+psycopg://me@/db?host={tmp_path}&{parameter}=hunter2&sslmode=disable"
    result = _run(runner, url, "ls")
    _assert_user_error(result, "cannot be opened as a catalog")
    assert "hunter2" not in result.output and f"{parameter}=***" in result.stderr
    assert "sslmode=disable" in result.stderr  # the rest of the query is shown


def test_demo_into_a_path_that_cannot_be_a_directory(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = runner.invoke(app, ["demo", str(tmp_path / "file")])
    _assert_user_error(result, "cannot write the demo's files there", "file")


def test_repeated_options_and_exact_beside_a_threshold(
    db: str, runner: CliRunner, archive: Path
) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    _run(runner, db, "ingest", "letters", "v2", str(archive))
    twice = _run(runner, db, "overlap", "letters@v1", "-r", "pixel-v1", "-r", "pixel-v1")
    assert twice.exit_code == 0 and twice.stdout.count("Near leakage (pixel-v1") == 1
    report = _run(
        runner, db, "report", "letters@v2", "--against", "letters@v1", "--against", "letters@v1"
    )
    assert report.exit_code in (0, 1) and report.stdout.count("letters@v1 -> letters@v2") == 1
    for command in (
        ["overlap", "letters"],
        ["dups", "letters"],
        ["conflicts", "letters"],
        ["diff", "letters@v1", "letters@v2"],
    ):
        _assert_user_error(
            _run(runner, db, *command, "--exact", "--threshold", "0.05"),
            "--exact and --threshold contradict each other",
        )
    # dups and diff use one recipe: a second -r was silently the one used.
    for command in (["dups", "letters"], ["diff", "letters@v1", "letters@v2"]):
        _assert_user_error(
            _run(runner, db, *command, "-r", "pixel-v1", "-r", "phash256-v2"),
            f"{command[0]} uses one recipe, and --recipe names 2 (pixel-v1, phash256-v2)",
        )
        same = _run(runner, db, *command, "-r", "phash256-v2", "-r", "phash256-v2", "--json")
        assert same.exit_code == 0 and json.loads(same.stdout)["recipe"] == "phash256-v2"


def test_times_carry_their_utc_offset(db: str, runner: CliRunner, archive: Path) -> None:
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    data = json.loads(_run(runner, db, "ls", "--json").stdout)
    created = data["datasets"][0]["versions"][0]["created_at"]
    assert created.endswith("+00:00"), created


def test_recipes_of_an_exact_only_catalog(runner: CliRunner, tmp_path: Path) -> None:
    db = str(tmp_path / "exact.db")
    api.ingest(db, "d", "v1", {"train": np.zeros((2, 4, 4), np.uint8)}, near=False)
    result = _run(runner, db, "recipes")
    assert result.exit_code == 0 and "--exact-only finds exact copies only" in result.stdout
    assert "yet" not in result.stdout


def test_matrix_headers_leave_out_what_every_split_shares(
    db: str, runner: CliRunner, archive: Path
) -> None:
    """Whole refs as headers were cut to 'letters@v…' at 80 columns."""
    _run(runner, db, "ingest", "letters", "v1", str(archive))
    _run(runner, db, "ingest", "letters", "v2", str(archive))
    one = _run(runner, db, "overlap", "letters@v1")
    assert one.exit_code == 0, one.output
    assert "in letters@v1" in " ".join(one.stdout.split())
    assert "letters@v1:" not in one.stdout.split("Exact leakage")[1].split("Near")[0]
    two = runner.invoke(
        app, ["--db", db, "overlap", "letters@v1", "letters@v2:test"], env={"COLUMNS": "80"}
    )
    matrix = two.stdout.split("Exact leakage")[1].split("Near")[0]
    assert "v1:test" in matrix and "v2:test" in matrix and "…" not in matrix
