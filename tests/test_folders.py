"""Image folders: layout, canonical rule, labels CSV, bad files, process pool, provenance."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from catalog import api
from catalog.errors import InputError, UsageError
from catalog.loaders import folders, plan_folder
from catalog.loaders.folders import canonical_pixels, decode
from catalog.pixels import canonical, digests
from cli.app import app


def save(path: Path, pixels: np.ndarray, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def digest_of(pixels: np.ndarray) -> str:
    return digests(canonical(pixels[None]))[0].hex()


def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def letters(rng: np.random.Generator, n: int) -> np.ndarray:
    """notMNIST-like: uint8 28x28, a dark background with a bright blob."""
    images = rng.integers(0, 40, (n, 28, 28), dtype=np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 14, 2)
        images[i, top : top + 12, left : left + 10] = rng.integers(150, 256)
    return images


def items(db: str, ref_version: str) -> list[tuple]:
    return list(
        api.run_sql(
            db,
            "SELECT split, position, label, digest, source_key, source_row, source_sha256 "
            f"FROM v_item WHERE version = '{ref_version}' ORDER BY split, position",
        ).rows
    )


def flat(text: str) -> str:
    """Terminal output without its line breaks (rich folds long paths)."""
    return text.replace("\n", "")


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- done when: a folder and the same pictures as arrays give the same digests -------------------


def test_folder_and_arrays_of_the_same_pictures_have_the_same_digests(
    tmp_path: Path, rng: np.random.Generator, db: str
) -> None:
    train, test = letters(rng, 60), letters(rng, 20)
    train_labels = rng.integers(0, 10, 60)
    test[:3] = train[:3]
    for i, (image, label) in enumerate(zip(train, train_labels, strict=True)):
        save(tmp_path / "root" / "train" / str(label) / f"{i:05d}.png", image)
    for i, image in enumerate(test):
        save(tmp_path / "root" / "test" / f"{i:05d}.png", image)
    api.ingest(db, "letters", "folder", tmp_path / "root")
    # Folder order is by relative path: class folder, then file name.
    order = np.lexsort((np.arange(60), train_labels.astype(str)))
    arrays = api.ingest(
        db,
        "letters",
        "arrays",
        {"train": (train[order], train_labels[order]), "test": test},
    )
    assert arrays.new_images == 0  # every picture was already in the catalog, by digest
    folder, array = items(db, "folder"), items(db, "arrays")
    assert [(s, p, lab, d) for s, p, lab, d, *_ in folder] == [
        (s, p, lab, d) for s, p, lab, d, *_ in array
    ]
    assert folder[0][3] == digest_of(test[0])
    overlap = api.overlap(db, ["letters@folder"]).pair(
        "letters@folder:test", "letters@folder:train"
    )
    assert overlap.items == 3


def test_rgb_and_16_bit_pictures_match_their_arrays(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    rgb = rng.integers(0, 256, (5, 12, 9, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 12, 9), dtype=np.uint16)
    for i in range(5):
        save(tmp_path / "root" / "rgb" / f"{i}.png", rgb[i])
        save(tmp_path / "root" / "deep" / f"{i}.png", deep[i])
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "folder", tmp_path / "root")
    assert api.ingest(db, "d", "arrays", {"deep": deep, "rgb": rgb}).new_images == 0
    rows = items(db, "folder")
    assert [d for _s, _p, _l, d, *_ in rows] == [digest_of(x) for x in [*deep, *rgb]]


# --- the canonical rule --------------------------------------------------------------------------


def test_one_picture_saved_as_rgb_opaque_rgba_and_palette_has_one_digest(
    rng: np.random.Generator,
) -> None:
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    rgb = palette[rng.integers(0, 16, (20, 17))]
    picture = Image.fromarray(rgb)
    opaque = picture.convert("RGBA")
    indexed = picture.quantize(colors=16, method=Image.Quantize.MAXCOVERAGE)
    assert np.array_equal(np.asarray(indexed.convert("RGB")), rgb)  # lossless palette
    got = [decode(png_bytes(p)) for p in (picture, opaque, indexed)]
    assert all(np.array_equal(g, rgb) for g in got)
    assert len({digest_of(g) for g in got}) == 1
    gray = rgb[..., 0]
    for saved in (Image.fromarray(gray), Image.fromarray(gray).convert("LA")):
        assert np.array_equal(decode(png_bytes(saved)), gray)


def test_alpha_is_composited_over_black_in_integers() -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    got = decode(png_bytes(Image.fromarray(rgba)))
    assert got.dtype == np.uint8 and got.shape == (1, 3, 3)
    expected = (rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255
    assert np.array_equal(got, expected)
    assert got[0, 2].tolist() == [100, 50, 25]
    la = np.array([[[90, 255], [90, 0], [90, 51]]], np.uint8)
    assert decode(png_bytes(Image.fromarray(la, "LA"))).tolist() == [[90, 0, 18]]


def test_palette_with_transparency_is_composited() -> None:
    picture = Image.new("P", (2, 1))
    picture.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    picture.putpixel((0, 0), 0)
    picture.putpixel((1, 0), 1)
    picture.info["transparency"] = 1
    assert decode(png_bytes(picture)).tolist() == [[[255, 0, 0], [0, 0, 0]]]


def test_modes_and_formats(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (10, 7), dtype=np.uint8)
    for suffix in (".png", ".bmp", ".tif"):
        path = save(tmp_path / f"g{suffix}", gray)
        assert np.array_equal(decode(path.read_bytes()), gray), suffix
    bits = Image.fromarray(gray > 128)
    assert bits.mode == "1"
    assert np.array_equal(decode(png_bytes(bits)), np.where(gray > 128, 255, 0))
    assert decode(save(tmp_path / "g.jpg", gray).read_bytes()).shape == (10, 7)
    rgb = rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode(save(tmp_path / "c.webp", rgb, lossless=True).read_bytes()), rgb)
    assert decode(save(tmp_path / "c.jpg", rgb).read_bytes()).shape == (10, 7, 3)
    floats = Image.fromarray(rng.random((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="32-bit float"):
        canonical_pixels(floats)
    wide = Image.fromarray(np.array([[70000, 1]], dtype=np.int32), "I")
    with pytest.raises(ValueError, match="beyond 0-65535"):
        canonical_pixels(wide)
    narrow = Image.fromarray(np.array([[65535, 1]], dtype=np.int32), "I")
    assert canonical_pixels(narrow).dtype == np.uint16


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from(["L", "RGB"]),
    st.integers(0, 2**32 - 1),
)
def test_lossless_png_round_trip_keeps_the_arrays_digest(
    height: int, width: int, mode: str, seed: int
) -> None:
    shape = (height, width) if mode == "L" else (height, width, 3)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    got = decode(png_bytes(Image.fromarray(pixels)))
    assert digest_of(got) == digest_of(pixels)


# --- layout ------------------------------------------------------------------------------------


def test_layout_classes_nested_unlabelled_hidden_and_other_files(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    root = tmp_path / "root"
    pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    save(root / "train" / "b" / "2.png", pixels)
    save(root / "train" / "a" / "deep" / "1.JPG", pixels)
    save(root / "train" / "a" / "0.png", pixels)
    save(root / "train" / ".hidden" / "x.png", pixels)
    save(root / "train" / "a" / ".x.png", pixels)
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "empty").mkdir()
    save(root / "test" / "9.png", pixels)
    (root / "README.md").write_text("about the data")
    train, test = sorted(plan_folder(root), key=lambda s: s.name, reverse=True)
    assert train.name == "train" and test.name == "test"
    assert train.files == ("train/a/0.png", "train/a/deep/1.JPG", "train/b/2.png")
    assert train.labels == ("a", "a", "b")
    assert test.files == ("test/9.png",) and test.labels == (None,)


def test_mixed_shapes_keep_positions_in_path_order(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    root = tmp_path / "root"
    shapes = [(8, 8), (5, 9), (8, 8, 3), (5, 9), (8, 8)] * 6
    expected = []
    for i, shape in enumerate(shapes):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        path = save(root / "train" / f"{i:03d}.png", pixels)
        expected.append((i, digest_of(pixels), f"train/{i:03d}.png", file_sha(path)))
    (split,) = plan_folder(root, workers=1)
    chunks = list(split.chunks(300))  # a tiny budget: many flushes of several shape groups
    assert len(chunks) > 3
    assert all(len({c.images.shape[1:]}) == 1 for c in chunks)
    db = str(tmp_path / "c.db")
    from catalog.db import open_catalog, writing
    from catalog.ingest import ingest

    engine = open_catalog(db)
    with writing(engine) as conn:
        ingest(conn, "d", "v1", plan_folder(root, workers=1), chunk_bytes=300)
    engine.dispose()
    got = [(p, d, k, sha) for _s, p, _l, d, k, row, sha in items(db, "v1") if row is None]
    assert got == expected


def test_folder_source_records_the_manifest(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "root"
    paths = [
        save(root / split / f"{i}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
        for split in ("train", "test")
        for i in range(3)
    ]
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "v1", root)
    (version,) = api.list_catalog(db).datasets[0].versions
    (source,) = version.sources
    manifest = "".join(
        f"{p.relative_to(root).as_posix()}\t{file_sha(p)}\n"
        for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix())
    )
    assert source.format == "folder" and source.path == str(root)
    assert source.sha256 == hashlib.sha256(manifest.encode()).hexdigest()
    assert source.size == sum(p.stat().st_size for p in paths)


# --- labels CSV ----------------------------------------------------------------------------------


@pytest.fixture
def unlabelled(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "root"
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            save(root / split / f"{i}.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    return root


def test_labels_csv_gives_every_label(tmp_path: Path, unlabelled: Path) -> None:
    csv = tmp_path / "labels.csv"
    rows = [f"train/{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(4)]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n./test/0.png,cat\ntest/1.png, dog \n")
    db = str(tmp_path / "c.db")
    api.ingest(db, "pets", "v1", unlabelled, labels=csv)
    got = [(s, p, lab) for s, p, lab, *_ in items(db, "v1")]
    assert got == [
        ("test", 0, "cat"),
        ("test", 1, "dog"),
        ("train", 0, "dog"),
        ("train", 1, "cat"),
        ("train", 2, "dog"),
        ("train", 3, "cat"),
    ]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("train/0.png,a\n", ["labels.csv: no label for", "(and 4 more)"]),
        (
            "".join(f"train/{i}.png,a\n" for i in range(4))
            + "test/0.png,a\ntest/1.png,b\ntest/7.png,c\n",
            ["labels.csv: line 7: test/7.png is not an image file under"],
        ),
        ("train/0.png,a\ntrain/0.png,b\n", ["line 2: train/0.png is labelled again"]),
        ("train/0.png\n", ["line 1: expected 2 columns"]),
        ("train/0.png,\n", ["line 1: both a path and a label"]),
        ("path,label\n", ["no path,label rows"]),
    ],
)
def test_bad_labels_csv_is_refused(
    tmp_path: Path, unlabelled: Path, text: str, fragments: list[str]
) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(text)
    with pytest.raises(InputError) as error:
        plan_folder(unlabelled, csv)
    for fragment in fragments:
        assert fragment in str(error.value)


# --- bad files and bad folders through the command line --------------------------------------


def _run(runner: CliRunner, db: Path | str, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--db", str(db), *args])


def _assert_one_line_error(result, *fragments: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: "), result.stderr
    text = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in text, (fragment, result.stderr)
    assert "Traceback" not in result.output


@pytest.fixture
def catalog_with_v1(runner: CliRunner, unlabelled: Path, db: str) -> str:
    """The unlabelled folder as pets@v1, in a catalog of each engine."""
    result = _run(runner, db, "ingest", "pets", "v1", str(unlabelled))
    assert result.exit_code == 0, result.output
    return db


def _state(db: Path | str) -> tuple[list[tuple], str | None]:
    """Every item row, and the catalog file's sha256 (SQLite)."""
    rows = list(api.run_sql(str(db), "SELECT * FROM v_item ORDER BY split_id, position").rows)
    return rows, file_sha(Path(db)) if Path(db).is_file() else None


def _corrupt_png(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(png_bytes(Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8))))
    data[60:80] = b"\xff" * 20
    path.write_bytes(bytes(data))


def _corrupt_jpeg(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(rng.integers(0, 256, 200)))


def _truncated(path: Path, rng: np.random.Generator) -> None:
    data = png_bytes(Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)))
    path.write_bytes(data[: len(data) // 2])


def _empty(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(b"")


def _pipe(path: Path, rng: np.random.Generator) -> None:
    os.mkfifo(path)  # named like an image; reading it would wait for a writer for ever


def _too_wide(path: Path, rng: np.random.Generator) -> None:
    Image.new("L", (70_000, 1)).save(path)  # refused as the same array would be


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("bad.png", _corrupt_png, "cannot be decoded as an image"),
        ("bad.jpg", _corrupt_jpeg, "cannot be decoded as an image"),
        ("cut.png", _truncated, "truncated"),
        ("empty.png", _empty, "cannot be decoded as an image"),
        ("wide.png", _too_wide, "is 1x70000 pixels, over 65535 on a side"),
        ("pipe.png", _pipe, "not a regular file: a folder, pipe, device or socket"),
    ],
)
def test_a_bad_file_stops_the_ingest_or_is_skipped_and_recorded(
    tmp_path: Path,
    runner: CliRunner,
    unlabelled: Path,
    catalog_with_v1: str,
    rng: np.random.Generator,
    name: str,
    damage,  # type: ignore[no-untyped-def]
    reason: str,
) -> None:
    db = catalog_with_v1
    bad = unlabelled / "train" / name
    damage(bad, rng)
    before = _state(db)
    result = _run(runner, db, "ingest", "pets", "v2", str(unlabelled))
    _assert_one_line_error(result, f"{bad}:", reason, "--skip-bad")
    assert _state(db) == before
    skipped = _run(runner, db, "ingest", "pets", "v2", str(unlabelled), "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert "1 file skipped" in skipped.stdout and name in flat(skipped.stdout)
    (_v1, v2) = api.list_catalog(str(db), "pets").datasets[0].versions
    assert v2.skipped == 1 and v2.skipped_files[0].path == str(bad)
    assert reason in v2.skipped_files[0].reason
    assert sum(s.items for s in v2.splits) == 6  # every good file, none of the bad one
    listing = _run(runner, db, "ls", "pets")
    assert "1 file skipped" in listing.stdout and name in flat(listing.stdout)
    data = json.loads(_run(runner, db, "ls", "--json").stdout)
    assert data["datasets"][0]["versions"][1]["skipped"] == 1


def test_an_unreadable_file_is_named(
    tmp_path: Path, runner: CliRunner, unlabelled: Path, catalog_with_v1: str
) -> None:
    locked = unlabelled / "test" / "0.png"
    locked.chmod(0)
    try:
        try:
            locked.read_bytes()
            pytest.skip("running as a user who can read a chmod 000 file (root)")
        except PermissionError:
            pass
        before = _state(catalog_with_v1)
        result = _run(runner, catalog_with_v1, "ingest", "pets", "v2", str(unlabelled))
        _assert_one_line_error(result, f"{locked}: cannot be read (Permission denied)")
        assert _state(catalog_with_v1) == before
        ok = _run(runner, catalog_with_v1, "ingest", "pets", "v2", str(unlabelled), "--skip-bad")
        assert ok.exit_code == 0 and "Permission denied" in ok.stdout
    finally:
        locked.chmod(0o644)


def test_a_class_folder_that_cannot_be_listed_is_named_not_left_out(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    # os.walk's default drops a folder it cannot list, and its images with it; chmod cannot
    # refuse root, so the listing's refusal is made here.
    root = tmp_path / "root"
    for split in ("train", "test"):
        save(root / split / "cat" / "0.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    locked = root / "train" / "cat" / "sub"
    locked.mkdir()
    real = os.scandir

    def refusing(path):  # type: ignore[no-untyped-def]
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path)

    with (
        mock.patch.object(os, "scandir", refusing),
        pytest.raises(
            InputError, match=re.escape(f"{locked}: cannot be listed (Permission denied)")
        ),
    ):
        plan_folder(root)


def test_file_names_with_control_characters_print_escaped(
    tmp_path: Path, runner: CliRunner, rng: np.random.Generator
) -> None:
    # A newline in a bad file's name made the one-line error two lines, the second a forged
    # "Error:"; an ESC in a good one's reached the terminal as a command.
    root = tmp_path / "root"
    save(root / "train" / "\x1b[2Jred.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    save(root / "test" / "0.png", rng.integers(0, 256, (6, 6), dtype=np.uint8))
    bad = root / "train" / "bad\nError: catalog busy.png"
    bad.write_bytes(b"not a picture")
    db = tmp_path / "c.db"
    result = _run(runner, db, "ingest", "d", "v1", str(root))
    _assert_one_line_error(result, "bad\\nError: catalog busy.png: cannot be decoded")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    skipped = _run(runner, db, "ingest", "d", "v1", str(root), "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    # Folded by rich anywhere in the long path: compared without whitespace.
    assert "bad\\nError:catalogbusy.png" in "".join(skipped.stdout.split())
    assert "bad\nError" not in skipped.stdout  # the name's own newline, raw
    shown = _run(runner, db, "show", "d@v1:train:0")
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout and "\\x1b[2Jred.png" in shown.stdout


def test_unreadable_files_are_reported_by_the_decoder(tmp_path: Path) -> None:
    # The chmod test cannot fail a read as root; the decoder's handling of the error can be
    # checked on a path that cannot be opened as a file at all.
    from catalog.loaders.folders import decode_batch

    (tmp_path / "dir.png").mkdir()
    ((pixels, reason, size),) = decode_batch(str(tmp_path), ["dir.png"])
    assert pixels is None and reason.startswith("cannot be read (") and size == 0


def test_bad_folders_are_refused(
    tmp_path: Path, runner: CliRunner, catalog_with_v1: str, rng: np.random.Generator
) -> None:
    db = catalog_with_v1
    before = _state(db)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = tmp_path / "no_images"
    (no_images / "train" / "cat").mkdir(parents=True)
    (no_images / "train" / "cat" / "notes.txt").write_text("x")
    loose = tmp_path / "loose"
    save(loose / "0.png", np.zeros((4, 4), np.uint8))
    mixed = tmp_path / "mixed"
    save(mixed / "train" / "0.png", np.zeros((4, 4), np.uint8))
    save(mixed / "train" / "cat" / "1.png", np.zeros((4, 4), np.uint8))
    cases = [
        ([str(empty)], [f"{empty}: no split folders"]),
        ([str(no_images)], [f"{no_images / 'train'}: no image files"]),
        ([str(loose)], [f"{loose}: holds image files directly"]),
        ([str(mixed)], [f"{mixed / 'train'}: mixes image files", "class folders"]),
        ([str(empty), "--split", "train=x"], ["is a folder", "on its own"]),
        ([str(empty), str(no_images)], ["on its own"]),
        ([str(mixed), "--labels", str(tmp_path / "nope.csv")], ["nope.csv: no such labels"]),
    ]
    for args, fragments in cases:
        _assert_one_line_error(_run(runner, db, "ingest", "pets", "v2", *args), *fragments)
    npz = tmp_path / "a.npz"
    np.savez(npz, x_train=np.zeros((2, 4, 4), np.uint8))
    _assert_one_line_error(
        _run(runner, db, "ingest", "pets", "v2", str(npz), "--skip-bad"), "image folders only"
    )
    assert _state(db) == before


def test_api_refuses_folder_options_for_arrays(tmp_path: Path) -> None:
    npz = tmp_path / "a.npz"
    np.savez(npz, x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UsageError, match="image folders only"):
        api.plan([npz], labels=tmp_path / "l.csv")


# --- the process pool ----------------------------------------------------------------------------


def test_worker_processes_decode_in_order_and_report_bad_files(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(folders, "MIN_FILES_FOR_POOL", 100)  # the pool, for 300 files
    monkeypatch.setattr(folders, "FIRST_BATCH", 16)  # several batches in flight
    pools: list[object] = []

    class CountedPool(ProcessPoolExecutor):
        def __init__(self, *args: object, **kwargs: object) -> None:
            pools.append(self)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(folders, "ProcessPoolExecutor", CountedPool)
    root = tmp_path / "root"
    pictures = rng.integers(0, 256, (300, 10, 10), dtype=np.uint8)
    for i, pixels in enumerate(pictures):
        save(root / "train" / f"{i:04d}.png", pixels)
    _corrupt_png(root / "train" / "0150.png", rng)
    (split,) = plan_folder(root, workers=2)
    with pytest.raises(InputError, match="0150.png: cannot be decoded"):
        for _chunk in split.chunks(1 << 20):
            pass
    (split,) = plan_folder(root, skip_bad=True, workers=2)
    chunks = list(split.chunks(1 << 20))
    (skipped,) = [f for c in chunks for f in c.skipped]
    assert skipped.path == str(root / "train" / "0150.png")
    images = np.concatenate([c.images for c in chunks if len(c)])
    positions = np.concatenate([c.positions for c in chunks if len(c)])
    keys = [k for c in chunks if len(c) for k in (c.keys or [])]
    kept = np.delete(pictures, 150, axis=0)
    assert positions.tolist() == list(range(299))
    assert np.array_equal(images, kept)
    assert keys == [f"train/{i:04d}.png" for i in range(300) if i != 150]
    assert len(pools) == 2  # both runs decoded in worker processes


# --- provenance: show and report read the pictures back --------------------------------------


def test_show_and_report_read_pictures_back_from_the_files(
    tmp_path: Path, runner: CliRunner, rng: np.random.Generator
) -> None:
    root = tmp_path / "root"
    pictures = letters(rng, 6)
    for i, pixels in enumerate(pictures):
        save(root / "train" / "a" / f"{i}.png", pixels)
    save(root / "test" / "a" / "copy.png", pictures[2])
    _corrupt_png(root / "test" / "a" / "zz.png", rng)
    db = tmp_path / "c.db"
    ingested = _run(runner, db, "ingest", "d", "v1", str(root), "--skip-bad", "--json")
    assert ingested.exit_code == 0, ingested.output
    result = json.loads(ingested.stdout)
    assert [s["skipped"] for s in result["splits"]] == [1, 0]
    assert result["skipped_files"][0]["path"] == str(root / "test" / "a" / "zz.png")
    shown = api.show_image(str(db), "d@v1:test:0")
    assert shown.preview is not None and shown.preview.source.endswith("test/a/copy.png")
    assert np.array_equal(np.array(shown.preview.rows)[:, :, 0], pictures[2])
    sha = {item.source_key: item.source_sha256 for item in shown.items}
    assert sha["test/a/copy.png"] == file_sha(root / "test" / "a" / "copy.png")
    table = _run(runner, db, "show", "d@v1:test:0")
    assert table.exit_code == 0 and "copy.png" in table.stdout
    assert re.search(r"[#%@]{2}", table.stdout)  # drawn in characters: no colour in a pipe

    report = api.report(str(db), "d@v1", recipes=[], pictures=True)
    picture = report.picture(report.leaks.exact[0].items[0])
    assert picture is not None and picture.png is not None
    html = tmp_path / "r.html"
    markdown = tmp_path / "r.md"
    out = _run(runner, db, "report", "d@v1", "--html", str(html), "--markdown", str(markdown))
    assert out.exit_code == 0, out.output
    assert "1 file skipped" in out.stdout and "zz.png" in flat(out.stdout)
    assert "1 file of d@v1 was skipped" in html.read_text() and "zz.png" in html.read_text()
    assert "1 file of d@v1 was skipped" in markdown.read_text()
    assert "zz.png" in markdown.read_text()
    data = json.loads(_run(runner, db, "report", "d@v1", "--json", "-").stdout)
    (version,) = data["versions"]
    assert version["skipped"] == 1 and version["skipped_files"][0]["path"].endswith("zz.png")

    # A file changed since ingest is not shown as if it were the ingested picture.
    save(root / "test" / "a" / "copy.png", pictures[3])
    save(root / "train" / "a" / "2.png", pictures[3])
    changed = api.show_image(str(db), "d@v1:test:0")
    assert changed.preview is None and changed.preview_note
    missing = api.report(str(db), "d@v1", recipes=[], pictures=True)
    note = missing.picture(missing.leaks.exact[0].items[0])
    assert note is not None and note.png is None and "gone or changed" in note.note


def test_api_plan_and_ingest_take_a_folder(tmp_path: Path, unlabelled: Path) -> None:
    planned = api.plan([unlabelled])
    assert [s.name for s in planned] == ["test", "train"]
    result = api.ingest(str(tmp_path / "c.db"), "d", "v1", str(unlabelled), near=False)
    assert result.items == 6 and result.skipped == 0
    assert os.path.exists(tmp_path / "c.db")


def test_decoding_batches_shrink_to_keep_pictures_in_flight_within_the_budget() -> None:
    sizer = folders._BatchSizer(budget=1 << 20, workers=2)
    assert sizer.size() == folders.FIRST_BATCH
    sizer.observe([(np.zeros((28, 28), np.uint8), "", 0)])
    assert sizer.size() == (1 << 20) // (784 * folders.IN_FLIGHT * 2)
    sizer.observe([(np.zeros((1000, 1000, 3), np.uint8), "", 0), (None, "bad", 0)])
    assert sizer.size() == 1  # one photo per task: a few in flight, never hundreds
    files = tuple(f"{i}.png" for i in range(5))
    assert [batch for _start, batch in sizer.batches(files)] == [(f,) for f in files]


def test_check_recomputes_digests_from_the_folders_own_files(
    tmp_path: Path, runner: CliRunner, unlabelled: Path
) -> None:
    """A folder is a directory, not a file: check said every item's source was gone and
    verified none. It now reads each sampled item's own file (if its sha256 is unchanged)."""
    db = tmp_path / "c.db"
    assert _run(runner, db, "ingest", "d", "v1", str(unlabelled)).exit_code == 0
    result = {r.name: r for r in api.check(str(db), sample=1000).results}["digests"]
    total = 6  # the fixture's 4 train and 2 test files
    assert result.skipped is None and result.checked == total and result.problems == 0
    # A file changed since ingest is not read; a digest the catalog holds wrongly is found.
    changed = sorted(unlabelled.rglob("*.png"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE image SET digest = randomblob(32) WHERE id = (SELECT image_id FROM item "
            "WHERE source_key = ?)",
            (str(sorted(unlabelled.rglob("*.png"))[1].relative_to(unlabelled)),),
        )
    result = {r.name: r for r in api.check(str(db), sample=1000).results}["digests"]
    assert result.checked == total - 1 and result.problems == 1
    assert "1 item whose image file changed since ingest" in result.description
    assert "the catalog holds" in result.examples[0]


def test_a_split_of_bad_files_only_is_refused_even_with_skip_bad(
    tmp_path: Path,
    runner: CliRunner,
    unlabelled: Path,
    catalog_with_v1: str,
    rng: np.random.Generator,
) -> None:
    """Skipping every file of a split would add an empty split that passes every gate: it is
    refused like a split with no images, and the catalog stays as it was."""
    for path in (unlabelled / "test").glob("*.png"):
        _corrupt_png(path, rng)
    before = _state(catalog_with_v1)
    result = _run(runner, catalog_with_v1, "ingest", "pets", "v2", str(unlabelled), "--skip-bad")
    _assert_one_line_error(
        result, str(unlabelled), "split 'test' has no image left", "2 files were bad"
    )
    assert _state(catalog_with_v1) == before


def test_skipped_files_are_recorded_by_absolute_path(
    tmp_path: Path,
    runner: CliRunner,
    unlabelled: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As sources are: a path relative to where the ingest ran is wrong from anywhere else."""
    _corrupt_png(unlabelled / "train" / "zz.png", rng)
    monkeypatch.chdir(unlabelled.parent)
    db = tmp_path / "c.db"
    result = _run(runner, db, "ingest", "d", "v1", unlabelled.name, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    (version,) = api.list_catalog(str(db), "d").datasets[0].versions
    assert [f.path for f in version.skipped_files] == [str(unlabelled / "train" / "zz.png")]
    # The ingest's own result lists them as ls does (it printed them as typed).
    printed = json.loads(result.stdout)["skipped_files"]
    assert [f["path"] for f in printed] == [str(unlabelled / "train" / "zz.png")]
