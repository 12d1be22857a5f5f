"""A corpus of bad inputs, each fed to ``dsaudit ingest`` through the command line.

Every case must end the same way: one line on stderr, ``Error: ...`` naming the file at fault,
exit code 2, no traceback, and the catalog byte for byte as it was (same sha256 of the file, same
rows). Corrupt and unreadable image files of image folders are covered with the folder loader.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import sqlite3
import zipfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog import api
from catalog import db as catalog_db
from cli.app import app


@dataclass
class Setup:
    """What a case may use to make its bad input: a directory, the catalog, clean-ups."""

    directory: Path
    catalog: Path
    monkeypatch: pytest.MonkeyPatch
    cleanup: ExitStack

    def path(self, name: str) -> Path:
        return self.directory / name


Make = Callable[[Setup], Sequence[str]]
"""Makes the bad input and returns the arguments after ``dsaudit --db CATALOG ingest d v2``."""


def _images(n: int = 10, shape: tuple[int, ...] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)


def _npz(name: str, **arrays: np.ndarray) -> Make:
    def make(s: Setup) -> Sequence[str]:
        np.savez(s.path(name), **arrays)  # type: ignore[arg-type]
        return [str(s.path(name))]

    return make


def _npy_split(name: str, array: np.ndarray | None = None, raw: bytes | None = None) -> Make:
    def make(s: Setup) -> Sequence[str]:
        if raw is not None:
            s.path(name).write_bytes(raw)
        else:
            np.save(s.path(name), array, allow_pickle=True)
        return ["--split", f"train={s.path(name)}"]

    return make


def _truncated_npz(s: Setup) -> Sequence[str]:
    whole = io.BytesIO()
    np.savez(whole, x_train=_images(), y_train=np.arange(10))
    s.path("cut.npz").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return [str(s.path("cut.npz"))]


def _damaged_npz_member(s: Setup) -> Sequence[str]:
    # The zip's directory is intact, the compressed pixels are not: found only while streaming.
    path = s.path("damaged.npz")
    np.savez_compressed(path, x_train=_images(2000, (16, 16)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return [str(path)]


def _truncated_npy(s: Setup) -> bytes:
    whole = io.BytesIO()
    np.save(whole, _images())
    return whole.getvalue()[: len(whole.getvalue()) // 2]


def _header_claiming(shape: tuple[int, ...]) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return header.getvalue() + bytes(100)


def _ragged() -> np.ndarray:
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 3)), np.zeros((4, 4))
    return ragged


def _floats_with(value: float) -> np.ndarray:
    images = np.random.default_rng(1).random((6, 5, 5))
    images[4, 2, 2] = value
    return images


def _folder_with_a_name_not_utf8(s: Setup) -> Sequence[str]:
    """An image folder with a file whose name's bytes are not UTF-8 (Python holds them as lone
    surrogates, which no database column takes)."""
    from PIL import Image

    folder = s.path("pets") / "train" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(_images(1)[0]).save(folder / "ok.png")
    name = b"\xff.png".decode("utf-8", "surrogateescape")
    Image.fromarray(_images(2)[1]).save(folder / name, format="PNG")
    return [str(s.path("pets"))]


def _folder_with_a_bad_split_name(s: Setup) -> Sequence[str]:
    from PIL import Image

    folder = s.path("named") / "tr@in" / "cat"
    folder.mkdir(parents=True)
    Image.fromarray(_images(1)[0]).save(folder / "a.png")
    return [str(s.path("named"))]


def _labels_csv_with(name: str, text: str) -> Make:
    def make(s: Setup) -> Sequence[str]:
        from PIL import Image

        folder = s.path("flat") / "train"
        folder.mkdir(parents=True)
        Image.fromarray(_images(1)[0]).save(folder / "a.png")
        s.path(name).write_text(text)
        return [str(s.path("flat")), "--labels", str(s.path(name))]

    return make


_labels_csv_with_a_nul = _labels_csv_with("nul.csv", "train/a.png,x\0y\n")


def _class_folder_with_an_escape(s: Setup) -> Sequence[str]:
    from PIL import Image

    folder = s.path("classes") / "train" / "\x1b[31mcat"
    folder.mkdir(parents=True)
    Image.fromarray(_images(1)[0]).save(folder / "a.png")
    return [str(s.path("classes"))]


def _pickle(s: Setup) -> Sequence[str]:
    s.path("data.pickle").write_bytes(pickle.dumps({"x_train": _images()}))
    return [str(s.path("data.pickle"))]


def _empty_directory(s: Setup) -> Sequence[str]:
    s.path("empty").mkdir()
    return [str(s.path("empty"))]


def _good(s: Setup) -> Sequence[str]:
    np.savez(s.path("good.npz"), x_train=_images(), y_train=np.arange(10))
    return [str(s.path("good.npz"))]


def _not_a_database(s: Setup) -> Sequence[str]:
    s.catalog.unlink()
    s.catalog.write_text("my notes, not a database\n" * 200)
    return _good(s)


def _newer_schema(s: Setup) -> Sequence[str]:
    with sqlite3.connect(s.catalog) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    raw.close()
    return _good(s)


def _locked(s: Setup) -> Sequence[str]:
    s.monkeypatch.setattr(catalog_db, "BUSY_TIMEOUT_S", 0.3)
    other = sqlite3.connect(s.catalog, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO dataset (name) VALUES ('half-written')")
    s.cleanup.callback(other.close)
    s.cleanup.callback(other.execute, "ROLLBACK")
    return _good(s)


@dataclass(frozen=True)
class Case:
    make: Make
    fragment: str
    names: str
    """The file the message must name (its base name)."""


CASES: dict[str, Case] = {
    "missing file": Case(lambda s: [str(s.path("gone.npz"))], "gone.npz: no such file", "gone.npz"),
    # An empty directory is an image folder without split folders.
    "empty directory": Case(_empty_directory, "no split folders inside", "empty"),
    "truncated npz": Case(_truncated_npz, "not a readable .npz archive", "cut.npz"),
    "damaged npz member": Case(_damaged_npz_member, "is corrupt", "damaged.npz"),
    "truncated npy": Case(
        lambda s: _npy_split("cut.npy", raw=_truncated_npy(s))(s), "truncated", "cut.npy"
    ),
    "npy header far larger than the file": Case(
        _npy_split("huge.npy", raw=_header_claiming((10**9, 28, 28))),
        "header declares shape (1000000000, 28, 28)",
        "huge.npy",
    ),
    "npy header beyond any file": Case(
        _npy_split("absurd.npy", raw=_header_claiming((2**40, 2**20, 2**20))),
        "impossibly large shape",
        "absurd.npy",
    ),
    "npy header that is not a literal": Case(
        _npy_split("mangled.npy", raw=b"\x93NUMPY\x01\x00\x09\x00{'descr':\n" + bytes(64)),
        "not a readable .npy array",
        "mangled.npy",
    ),
    "images over 65535 pixels on a side": Case(
        _npz("tall.npz", x_train=np.zeros((2, 70_000, 1), np.uint8)),
        "shaped (2, 70000, 1) are over 65535",
        "tall.npz",
    ),
    "five channels": Case(
        _npy_split("ch5.npy", np.zeros((10, 8, 8, 5), np.uint8)),
        "shaped (10, 8, 8, 5) have 5 channels",
        "ch5.npy",
    ),
    "npz without image arrays": Case(
        _npz("flat.npz", a=np.zeros(5), b=np.zeros((3, 3))), "no image arrays", "flat.npz"
    ),
    "1-D array": Case(_npy_split("line.npy", np.zeros(5)), "not (5,)", "line.npy"),
    "2-D array": Case(_npy_split("plane.npy", np.zeros((5, 5))), "not (5, 5)", "plane.npy"),
    "object array": Case(
        _npz("obj.npz", x_train=np.empty((2, 3, 3), dtype=object)), "--allow-pickle", "obj.npz"
    ),
    "ragged array": Case(_npy_split("ragged.npy", _ragged()), "--allow-pickle", "ragged.npy"),
    "complex dtype": Case(
        _npz("complex.npz", x_train=np.zeros((3, 4, 4), np.complex64)),
        "not complex64",
        "complex.npz",
    ),
    "NaN pixels": Case(_npz("nan.npz", x_train=_floats_with(np.nan)), "image 4 has NaN", "nan.npz"),
    "infinite pixels": Case(
        _npz("inf.npz", x_train=_floats_with(-np.inf)), "image 4 has NaN or infinite", "inf.npz"
    ),
    "labels of the wrong length": Case(
        _npz("short.npz", x_train=_images(), y_train=np.arange(9)),
        "cannot label the 10 images",
        "short.npz",
    ),
    "labels too long to store": Case(
        _npz("long.npz", x_train=_images(3), y_train=np.array(["a", "b", "L" * 201])),
        "label 2 is 201 characters long",
        "long.npz",
    ),
    "labels that are not text": Case(
        _npz("sur.npz", x_train=_images(2), y_train=np.array(["a", "\udcff"])),
        "label 1 is not valid Unicode text",
        "sur.npz",
    ),
    "labels under a name not recognised": Case(
        _npz("odd.npz", train_data=_images(4), train_target=np.arange(4)),
        "--split train=train_data:train_target",
        "odd.npz",
    ),
    "image folder with a file name not UTF-8": Case(
        _folder_with_a_name_not_utf8, "the name is not valid UTF-8", "cat"
    ),
    "labels under a short name": Case(
        _npz("lbl.npz", x_train=_images(4), train_lbl=np.arange(4)),
        "'train_lbl' could be",
        "lbl.npz",
    ),
    "a file no --split uses": Case(
        lambda s: [
            *_npz("used.npz", x_train=_images(4))(s),
            *_npz("unused.npz", x_test=_images(2))(s),
            "--split",
            "train=x_train",
        ],
        "named, but no --split takes an array from it",
        "unused.npz",
    ),
    "labels CSV with a NUL in a label": Case(
        _labels_csv_with_a_nul, "line 1: the label holds the control character '\\x00'", "nul.csv"
    ),
    "labels CSV with an escape sequence": Case(
        _labels_csv_with("esc.csv", "train/a.png,\x1b[31mred\n"),
        "line 1: the label holds the control character '\\x1b'",
        "esc.csv",
    ),
    "class folder whose name holds an escape sequence": Case(
        _class_folder_with_an_escape,
        "a class folder's name is its label, and it holds the control character '\\x1b'",
        "classes",
    ),
    "labels with an escape sequence": Case(
        _npz("esc.npz", x_train=_images(3), y_train=np.array(["a", "b", "\x1b[31mred"])),
        "label 2 holds the control character '\\x1b'",
        "esc.npz",
    ),
    "labels with a bidi override": Case(
        _npz("rtl.npz", x_train=_images(2), y_train=np.array(["\u202etac", "dog"])),
        "label 0 holds the control character '\\u202e'",
        "rtl.npz",
    ),
    "labels with a line break": Case(
        _npz("nl.npz", x_train=_images(2), y_train=np.array(["cat", "do\rg"])),
        "label 1 holds the control character '\\r'",
        "nl.npz",
    ),
    "image folder with a split name that cannot be a ref": Case(
        _folder_with_a_bad_split_name, "named/tr@in: split name 'tr@in'", "tr@in"
    ),
    "zero images": Case(
        _npz("none.npz", x_train=np.zeros((0, 8, 8), np.uint8)), "holds no images", "none.npz"
    ),
    "pickle without --allow-pickle": Case(_pickle, "--allow-pickle", "data.pickle"),
    "catalog that is not a database": Case(
        _not_a_database, "cannot be opened as a catalog", "c.db"
    ),
    "catalog from a newer schema": Case(_newer_schema, "written by a newer dsaudit", "c.db"),
    "catalog locked by another writer": Case(_locked, "catalog busy", "c.db"),
}


def catalog_state(path: Path) -> tuple[str, list[tuple[object, ...]] | None]:
    """The catalog file's sha256 (with its WAL, if one was left) and every row of every table
    (None when the file is not a database)."""
    digest = hashlib.sha256(path.read_bytes())
    wal = Path(f"{path}-wal")
    if wal.exists():
        digest.update(wal.read_bytes())
    try:
        raw = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            tables = [
                name
                for (name,) in raw.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            every = ((t, *row) for t in tables for row in raw.execute(f"SELECT * FROM {t}"))
            rows = sorted(every, key=repr)
        finally:
            raw.close()
    except sqlite3.DatabaseError:
        rows = None
    return digest.hexdigest(), rows


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    api.ingest(str(path), "d", "v1", {"train": _images(12)})
    return path


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_the_catalog(
    runner: CliRunner,
    tmp_path: Path,
    small_catalog: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: Case,
) -> None:
    with ExitStack() as cleanup:
        setup = Setup(tmp_path, small_catalog, monkeypatch, cleanup)
        args = case.make(setup)
        before = catalog_state(small_catalog)
        result = runner.invoke(app, ["--db", str(small_catalog), "ingest", "d", "v2", *args])
    assert result.exit_code == 2, (result.output, result.exception)
    # Exactly one line, even after progress bars (not a terminal here, as in a CI log).
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("Error: "), line
    assert case.names in line and case.fragment in line, line
    assert "Traceback" not in result.output
    assert catalog_state(small_catalog) == before


def test_the_corpus_catalog_accepts_a_good_file(
    runner: CliRunner, tmp_path: Path, small_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same set-up with a good file succeeds: the cases fail for their own reason.
    with ExitStack() as cleanup:
        args = _good(Setup(tmp_path, small_catalog, monkeypatch, cleanup))
    result = runner.invoke(app, ["--db", str(small_catalog), "ingest", "d", "v2", *args])
    assert result.exit_code == 0, result.output
    assert catalog_state(small_catalog)[1] is not None
    assert [v.tag for v in api.list_catalog(str(small_catalog)).datasets[0].versions] == [
        "v1",
        "v2",
    ]


def test_a_zip_member_that_is_not_npy_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "extra.npz"
    np.savez(path, x_train=_images())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("README.txt", "not an array")
    (split,) = api.plan([path])
    assert split.name == "train"


@pytest.mark.parametrize(
    ("first", "then", "fragment"),
    [
        (["--exact-only"], [], "made exact-only"),
        (["--exact-only"], ["--recipe", "pixel-v1"], "made exact-only"),
        ([], ["--exact-only"], "drop --exact-only"),
        ([], ["--recipe", "pixshift-v1"], "never signed under pixshift-v1"),
    ],
    ids=["near after exact-only", "recipe after exact-only", "exact-only after near", "new recipe"],
)
def test_an_ingest_that_would_leave_images_unsigned_is_refused(
    runner: CliRunner, tmp_path: Path, first: list[str], then: list[str], fragment: str
) -> None:
    """Near findings would miss unsigned images without a word, and pixels are not kept to sign
    them later: so every informative image is signed under every recipe of its catalog, or the
    catalog has none. The refusal names the catalog, and leaves it as it was."""
    path = tmp_path / "c.db"
    data = tmp_path / "d.npz"
    np.savez(data, x_train=_images(12))
    made = runner.invoke(app, ["--db", str(path), "ingest", "d", "v1", str(data), *first])
    assert made.exit_code == 0, made.output
    before = catalog_state(path)
    result = runner.invoke(app, ["--db", str(path), "ingest", "d", "v2", str(data), *then])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: "), result.stderr
    assert fragment in lines[0]
    assert catalog_state(path) == before
    # The way the message points to works.
    again = ["--exact-only"] if "--exact-only" in first else []
    done = runner.invoke(app, ["--db", str(path), "ingest", "d", "v2", str(data), *again])
    assert done.exit_code == 0, done.output
