"""show: one image with its items, near copies, and a preview read back from its source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog import api, synth
from catalog.errors import InputError, NotFoundError
from cli.app import app


@pytest.fixture
def catalog_with_file(db: str, tmp_path: Path) -> tuple[str, Path, np.ndarray]:
    images, labels = synth.render_letters(40, np.random.default_rng(11))
    test = np.concatenate([images[:1], synth.brightness(images[1:2], 0.03)])
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x_train=images, y_train=labels, x_test=test)
    api.ingest(db, "d", "v1", api.plan([path]))
    return db, path, images


def test_show_an_item_lists_holders_neighbours_and_draws_it(catalog_with_file) -> None:  # type: ignore[no-untyped-def]
    db, path, images = catalog_with_file
    report = api.show_image(db, "d@v1:train:1")
    assert {(i.split, i.position) for i in report.items} == {("d@v1:train", 1)}
    assert any(n.items[0].split == "d@v1:test" for n in report.neighbours)
    assert report.preview is not None
    pixels = np.array(report.preview.rows)[:, :, 0]
    assert pixels.shape == (28, 28)
    assert np.array_equal(pixels, images[1])  # gray uint8 comes back exactly
    exact = api.show_image(db, "d@v1:test:0")
    assert {(i.split, i.position) for i in exact.items} == {("d@v1:train", 0), ("d@v1:test", 0)}
    by_digest = api.show_image(db, exact.digest[:10])
    assert by_digest.digest == exact.digest


def test_show_without_the_source_file_has_no_picture(catalog_with_file) -> None:  # type: ignore[no-untyped-def]
    db, path, _images = catalog_with_file
    path.unlink()
    report = api.show_image(db, "d@v1:train:3")
    assert report.preview is None and "source file" in report.preview_note


def test_show_errors(catalog_with_file) -> None:  # type: ignore[no-untyped-def]
    db, _path, _images = catalog_with_file
    with pytest.raises(NotFoundError, match="no position 99"):
        api.show_image(db, "d@v1:train:99")
    with pytest.raises(NotFoundError, match="no image digest starts with ffffffffffff"):
        api.show_image(db, "ffffffffffff")
    with pytest.raises(InputError, match="show takes"):
        api.show_image(db, "what")


def test_show_command(catalog_with_file) -> None:  # type: ignore[no-untyped-def]
    db, _path, _images = catalog_with_file
    runner = CliRunner()
    table = runner.invoke(app, ["--db", db, "show", "d@v1:train:1"])
    assert table.exit_code == 0, table.output
    # Without colour (a pipe, as here) the picture is drawn in characters by gray level;
    # with colour, in half blocks.
    assert "@@" in table.stdout and "▀" not in table.stdout and "Near copies" in table.stdout
    assert "28x28 uint8, 1 item" in table.stdout  # gray: no "x1", and one item, singular
    coloured = runner.invoke(app, ["--db", db, "show", "d@v1:train:1"], env={"FORCE_COLOR": "1"})
    assert coloured.exit_code == 0 and "▀" in coloured.stdout and "@@" not in coloured.stdout
    # NO_COLOR wins over a colour terminal: characters again.
    plain = runner.invoke(
        app, ["--db", db, "show", "d@v1:train:1"], env={"FORCE_COLOR": "1", "NO_COLOR": "1"}
    )
    assert plain.exit_code == 0 and "@@" in plain.stdout and "▀" not in plain.stdout
    data = json.loads(runner.invoke(app, ["--db", db, "show", "d@v1:train:1", "--json"]).stdout)
    assert data["schema"] == "dsaudit.show/1" and data["height"] == 28
    bad = runner.invoke(app, ["--db", db, "show", "d@v1:train:99"])
    assert bad.exit_code == 2 and "no position 99" in bad.stderr
    huge = runner.invoke(app, ["--db", db, "show", f"d@v1:train:{2**70}"])
    assert huge.exit_code == 2 and f"no position {2**70}" in huge.stderr


def test_show_counts_the_near_copies_it_does_not_list(catalog_with_file) -> None:  # type: ignore[no-untyped-def]
    """--limit 0 said "No near copies stored." of an image that has some."""
    db, _path, _images = catalog_with_file
    every = api.show_image(db, "d@v1:train:1")
    assert every.neighbours and every.neighbours_total == len(every.neighbours)
    none = api.show_image(db, "d@v1:train:1", limit=0)
    assert none.neighbours == () and none.neighbours_total == every.neighbours_total
    runner = CliRunner()
    out = runner.invoke(app, ["--db", db, "show", "d@v1:train:1", "--limit", "0"]).stdout
    assert "No near copies" not in out
    assert f"{every.neighbours_total} near cop" in out and "--limit lists them" in out
    data = json.loads(runner.invoke(app, ["--db", db, "show", "d@v1:train:1", "--json"]).stdout)
    assert data["neighbours_total"] == every.neighbours_total


def test_a_file_named_relative_to_the_ingest_is_found_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source is recorded by its absolute path: a picture is read back from wherever the
    command runs, not only from the directory the ingest ran in."""
    images, labels = synth.render_letters(10, np.random.default_rng(3))
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", x_train=images, y_train=labels)
    monkeypatch.chdir(tmp_path)
    db = str(tmp_path / "c.db")
    result = CliRunner().invoke(app, ["--db", db, "ingest", "d", "v1", "data/d.npz"])
    assert result.exit_code == 0, result.output
    (stored,) = api.run_sql(db, "SELECT path FROM source").rows
    assert stored == (str(tmp_path / "data" / "d.npz"),)
    monkeypatch.chdir(tmp_path / "data")
    report = api.show_image(db, "d@v1:train:2")
    assert report.preview is not None
    assert np.array_equal(np.array(report.preview.rows)[:, :, 0], images[2])


def test_a_file_rewritten_in_place_at_the_same_size_shows_no_other_picture(
    tmp_path: Path,
) -> None:
    """Pixels that no longer hash to the catalogued digest would be another image drawn beside
    it: a row read back is drawn only while it is still the image it was at ingest, in `show`
    and in the report's pictures alike; the other rows of the file still are."""
    images, _labels = synth.render_letters(20, np.random.default_rng(4))
    train, test = tmp_path / "train.npy", tmp_path / "test.npy"
    np.save(train, images)
    np.save(test, images[3:4])  # an exact copy of train row 3: a leak the report draws
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "v1", api.plan([], splits=[f"train={train}", f"test={test}"]))
    for path, row in ((train, 3), (test, 0)):
        size = path.stat().st_size
        rewritten = np.load(path, mmap_mode="r+")
        rewritten[row] = 255 - rewritten[row]
        rewritten.flush()
        del rewritten
        assert path.stat().st_size == size
    changed = api.show_image(db, "d@v1:train:3")
    assert changed.preview is None and "no item of this image" in changed.preview_note
    kept = api.show_image(db, "d@v1:train:4")
    assert kept.preview is not None
    assert np.array_equal(np.array(kept.preview.rows)[:, :, 0], images[4])
    report = api.report(db, "d@v1", pictures=True)
    (member,) = report.leaks.exact
    picture = report.picture(member.items[0])
    assert picture is not None and picture.png is None and "changed" in picture.note


def test_a_place_cited_with_two_images_gets_no_picture(tmp_path: Path) -> None:
    """A report's pictures belong to places (file, array, row) that its items share; one cited
    with two different images (a file rewritten in place between two versions) matches
    neither, so it is not drawn for either. A place cited with one image still is."""
    from dataclasses import replace

    from catalog.report import collect_pictures, picture_key

    images, _labels = synth.render_letters(20, np.random.default_rng(4))
    train, test = tmp_path / "train.npy", tmp_path / "test.npy"
    np.save(train, images)
    np.save(test, images[3:5])  # exact copies of train rows 3 and 4
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "v1", api.plan([], splits=[f"train={train}", f"test={test}"]))
    report = api.report(db, "d@v1")
    first, second = report.leaks.exact
    other = replace(first, image_digest="00" * 32)  # the same places, another image
    cited = replace(report, leaks=replace(report.leaks, exact=(first, second, other)))
    drawn = collect_pictures(cited)
    assert all(p.png is None for p in drawn.pictures if p.key == picture_key(first.items[0]))
    assert drawn.picture(second.items[0]) is not None
    assert drawn.picture(second.items[0]).png is not None  # type: ignore[union-attr]
    assert collect_pictures(report).picture(first.items[0]).png is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((28, 28), (28, 28)), ((2, 5000), (1, 64)), ((3000, 1), (64, 1)), ((130, 65, 3), (44, 22))],
)
def test_a_preview_keeps_its_shape_within_64_pixels_a_side(
    shape: tuple[int, ...], expected: tuple[int, int]
) -> None:
    """Square blocks (the last ones partial): a very wide image gave a preview of no rows and
    a crash, a very tall one 1,500 lines."""
    from catalog.preview import make_preview

    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    preview = make_preview(pixels, "x")
    assert (len(preview.rows), len(preview.rows[0])) == expected
    if shape == (2, 5000):
        # Block means: the first cell averages rows 0-1, columns 0-78 of the gray image.
        assert preview.rows[0][0][0] == round(float(pixels[:, :79].mean()))


def test_show_names_the_channels_of_a_colour_image(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    api.ingest(db, "c", "v1", {"train": np.random.default_rng(1).random((3, 8, 6, 3))})
    result = CliRunner().invoke(app, ["--db", db, "show", "c@v1:train:0"])
    assert result.exit_code == 0, result.output
    assert "8x6x3 float64, 1 item" in result.stdout


def test_gray_and_alpha_images_are_drawn_from_their_gray_channel(tmp_path: Path) -> None:
    """C = 2 (gray and alpha) is a supported shape; its preview crashed show and report."""
    pixels = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 2), dtype=np.uint8)
    np.save(tmp_path / "la.npy", pixels)
    db = str(tmp_path / "la.db")
    api.ingest(db, "la", "v1", api.plan([], ["train=" + str(tmp_path / "la.npy")]))
    result = CliRunner().invoke(app, ["--db", db, "show", "la@v1:train:0"])
    assert result.exit_code == 0, result.output
    assert "8x8x2 uint8" in result.stdout and "(no picture" not in result.stdout
    from catalog.preview import make_preview

    rows = make_preview(pixels[0], "x").rows
    assert rows[0][0] == (int(pixels[0, 0, 0, 0]),) * 3
