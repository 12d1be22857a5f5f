"""diff between versions: checked against the demo's brute force, near replacements, the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, event
from typer.testing import CliRunner

from catalog import api, synth
from catalog.demo import expected_diff, make_demo
from cli.app import app


@pytest.mark.parametrize("seed", [1, 2])
def test_diff_equals_a_brute_force_over_the_demo(db: str, tmp_path: Path, seed: int) -> None:
    demo = make_demo(seed=seed, n_train=300, n_valid=60, n_test=80, min_rms=0)
    for tag, splits in demo.versions.items():
        api.ingest(db, "d", tag, dict(splits), near=False)
    report = api.version_diff(db, "d@v1", "d@v2", exact_only=True)
    truth = expected_diff(demo)
    assert report.images_removed == truth.removed
    assert report.images_added == truth.added
    assert sum(m.moved for m in report.moves) == truth.moved
    assert sum(m.copied for m in report.moves) == truth.leaked
    assert report.relabelled_items == truth.relabelled_items
    assert {(m.source, m.to) for m in report.moves} == {("train", "test")}
    assert report.recipe is None


def test_an_image_replaced_by_a_near_copy_is_named(db: str, tmp_path: Path) -> None:
    images, labels = synth.render_letters(60, np.random.default_rng(8))
    replaced = images.copy()
    replaced[0] = synth.brightness(images[:1], 0.03)[0]
    api.ingest(db, "d", "v1", {"train": (images, labels)})
    api.ingest(db, "d", "v2", {"train": (replaced, labels)})
    report = api.version_diff(db, "d@v1", "d@v2", recipe="pixel-v1")
    (train,) = report.splits
    assert (train.removed, train.added, train.kept) == (1, 1, 59)
    assert train.replaced_by_near_copy == 1
    assert report.relabelled_items == 0 and report.moves == ()
    # With --exact no near copy is looked for: no count of them, rather than a 0 not measured.
    exact = api.version_diff(db, "d@v1", "d@v2", exact_only=True)
    assert exact.splits[0].replaced_by_near_copy is None
    result = CliRunner().invoke(app, ["--db", db, "diff", "d@v1", "d@v2", "--exact"])
    assert result.exit_code == 0 and "replaced by a near copy" not in result.stdout


def test_diff_command(db: str, tmp_path: Path) -> None:
    images, labels = synth.render_letters(40, np.random.default_rng(9))
    relabelled = labels.copy()
    relabelled[3] = "Z"
    api.ingest(
        db, "d", "v1", {"train": (images[:30], labels[:30]), "test": (images[30:], labels[30:])}
    )
    # v2 moves two images from train to test (same labels) and relabels one train item.
    api.ingest(
        db,
        "d",
        "v2",
        {"train": (images[:28], relabelled[:28]), "test": (images[28:], labels[28:])},
    )
    runner = CliRunner()
    result = runner.invoke(app, ["--db", db, "diff", "d@v1", "d@v2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "dsaudit.diff/1"
    assert data["moves"] == [{"source": "train", "to": "test", "moved": 2, "copied": 0}]
    assert data["relabelled_items"] == 1
    assert data["relabelled"][0]["label"] == "Z"
    assert data["labels_before"] == [[labels[3]]]
    table = runner.invoke(app, ["--db", db, "diff", "d@v1", "d@v2"])
    assert table.exit_code == 0 and "moved" in table.stdout
    assert "labels before" in table.stdout
    row = next(line for line in table.stdout.splitlines() if "train#3" in line)
    assert f" {labels[3]} " in row and " Z " in row
    bad = runner.invoke(app, ["--db", db, "diff", "d@v1", "d@v9"])
    assert bad.exit_code == 2 and "versions: v1, v2" in bad.stderr


def test_conflicts_within_and_across_versions_exact_and_near(db: str, tmp_path: Path) -> None:
    images, labels = synth.render_letters(30, np.random.default_rng(10))
    labels = np.array(["A"] * 30)
    noisy = synth.gaussian_noise(images[:1], 0.02, np.random.default_rng(0))
    api.ingest(db, "d", "v1", {"train": (images, labels), "test": (noisy, np.array(["B"]))})
    relabelled = labels.copy()
    relabelled[5] = "C"  # v2 relabels one image: a conflict across versions
    api.ingest(db, "d", "v2", {"train": (images, relabelled)})
    runner = CliRunner()
    within = json.loads(runner.invoke(app, ["--db", db, "conflicts", "d@v1", "--json"]).stdout)
    assert within["schema"] == "dsaudit.conflicts/1"
    assert within["exact_images"] == 0
    near = {tier["recipe"]: tier for tier in within["near"]}
    assert all(tier["conflict_images"] == 2 for tier in near.values())
    across = api.label_conflicts(db, ["d@v1:train", "d@v2"], recipes=[])
    assert across.exact_images == 1 and across.exact_items == 2
    (conflict,) = across.exact
    assert conflict.labels == ("A", "C")
    assert {(i.split, i.position) for i in conflict.items} == {
        ("d@v1:train", 5),
        ("d@v2:train", 5),
    }
    table = runner.invoke(app, ["--db", db, "conflicts", "d@v1:train", "d@v2", "--exact"])
    assert table.exit_code == 0 and "1 image carries more than one label" in table.stdout


def test_label_conflicts_beyond_sqlites_parameter_limit(tmp_path: Path) -> None:
    # 33,000 images, each twice under two labels: more conflicting images than SQLite takes
    # parameters in one statement by default (32,766; Debian's build raises it to 250,000, so
    # the default is set on every connection here).
    def default_limit(dbapi_connection: object, _record: object) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)

    event.listen(Engine, "connect", default_limit)
    try:
        _conflicts_of_33k_images(tmp_path)
    finally:
        event.remove(Engine, "connect", default_limit)


def _conflicts_of_33k_images(tmp_path: Path) -> None:
    n = 33_000
    images = np.zeros((n, 2, 3), np.uint8)
    images.reshape(n, -1)[:, :3] = np.stack(
        [np.arange(n) % 256, np.arange(n) // 256, np.full(n, 7)], axis=1
    )
    labels = np.repeat([0, 1], n)
    db = str(tmp_path / "c.db")
    api.ingest(db, "d", "v1", {"train": (np.concatenate([images, images]), labels)}, near=False)
    report = api.label_conflicts(db, ["d@v1"], limit=3)
    assert report.exact_images == n
    digests = [c.digest for c in report.exact]
    assert len(digests) == 3 and digests == sorted(digests)


def test_the_first_relabelled_items_are_the_first_by_position(db: str) -> None:
    """Items relabelled at positions 0 and 9 of one split, --limit 1: position 0 is "the
    first", whatever the images' ids (position 9's image is catalogued first here, so it has
    the lowest id)."""
    images, labels = synth.render_letters(10, np.random.default_rng(6))
    api.ingest(db, "e", "v1", {"train": images[9:]})
    api.ingest(db, "d", "v1", {"train": (images, labels)})
    relabelled = labels.copy()
    relabelled[[0, 9]] = "Z"
    api.ingest(db, "d", "v2", {"train": (images, relabelled)})
    report = api.version_diff(db, "d@v1", "d@v2", limit=1)
    assert report.relabelled_items == 2
    assert [(r.position, r.label) for r in report.relabelled] == [(0, "Z")]
    assert report.labels_before == ((labels[0],),)


def test_only_the_copy_that_changed_label_is_relabelled(db: str) -> None:
    """Five copies of one image, one relabelled: the other four kept their label, and listed
    first they crowded the one that changed out of a short list."""
    rng = np.random.default_rng(9)
    copy, others = (
        rng.integers(0, 256, (1, 8, 8), np.uint8),
        rng.integers(0, 256, (3, 8, 8), np.uint8),
    )
    images = np.concatenate([np.repeat(copy, 5, axis=0), others])
    api.ingest(db, "r", "v1", {"train": (images, ["a"] * 5 + ["o"] * 3)}, near=False)
    more = np.concatenate([images, copy])  # a sixth copy, with the old label
    api.ingest(db, "r", "v2", {"train": (more, ["a"] * 4 + ["b"] + ["o"] * 3 + ["a"])}, near=False)
    report = api.version_diff(db, "r@v1", "r@v2", limit=1)
    assert report.relabelled_items == 1
    (item,) = report.relabelled
    assert (item.position, item.label) == (4, "b") and report.labels_before == (("a",),)


def test_unlabelled_items_are_not_relabelled(db: str) -> None:
    """A copy into an unlabelled split is a move, not a relabelling; nor is labelling an
    unlabelled image (label conflicts leave unlabelled items out the same way)."""
    a, b, c = np.random.default_rng(0).integers(0, 256, (3, 8, 8), np.uint8)
    api.ingest(db, "r", "v1", {"train": (np.stack([a, b]), [0, 1]), "test": c[None]}, near=False)
    v2 = {"train": (np.stack([a, b, c]), [0, 1, 2]), "test": np.stack([c, a])}
    api.ingest(db, "r", "v2", v2, near=False)
    report = api.version_diff(db, "r@v1", "r@v2")
    assert report.relabelled_items == 0 and report.relabelled == ()
    assert {(m.source, m.to, m.copied) for m in report.moves} == {
        ("train", "test", 1),
        ("test", "train", 1),
    }
