"""The Python API as a notebook uses it: one ref or recipe given alone, counts checked as the
command line checks them, and a missing pair named in a `catalog.errors` exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import api
from catalog.errors import InputError, NotFoundError, UsageError


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = str(tmp_path_factory.mktemp("api") / "c.db")
    images = np.random.default_rng(4).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    test = np.concatenate([images[:2], images[10:]])
    api.ingest(db, "d", "v1", {"train": (images[:10], [0] * 10), "test": (test, [1] * 4)})
    return db


def test_one_ref_or_recipe_alone_is_one(catalog: str) -> None:
    """A str used to be read as a sequence of refs of one character: "'@' is not a ref"."""
    assert api.overlap(catalog, "d@v1", recipes="pixel-v1") == api.overlap(
        catalog, ["d@v1"], recipes=["pixel-v1"]
    )
    assert api.duplicate_groups(catalog, "d") == api.duplicate_groups(catalog, ["d"])
    assert api.label_conflicts(catalog, "d").exact_images == 2
    made = api.report(catalog, "d@v1", against="d@v1", recipes="pixel-v1", fail_on="conflicts")
    assert len(made.diffs) == 1 and not made.passed


def test_counts_are_checked_as_on_the_command_line(catalog: str) -> None:
    for call in (
        lambda: api.overlap(catalog, ["d"], limit=-1),
        lambda: api.version_diff(catalog, "d@v1", "d@v1", limit=-3),
        lambda: api.duplicate_groups(catalog, ["d"], limit=2.5),  # type: ignore[arg-type]
        lambda: api.report(catalog, "d", thumbnails=-1),
        lambda: api.run_sql(catalog, "SELECT 1", max_rows=0),
        lambda: api.run_sql(catalog, "SELECT 1", max_rows=2**70),
    ):
        with pytest.raises(UsageError, match="must be a whole number"):
            call()
    assert api.run_sql(catalog, "SELECT position FROM item", max_rows=3).truncated
    # numpy's integers are whole numbers too (notebooks pass them).
    assert api.overlap(catalog, ["d"], limit=np.int64(1)) == api.overlap(catalog, ["d"], limit=1)
    assert api.check(catalog, sample=1, seed=2**40).ok  # the command line's seeds go to 2**63 - 1
    for bad in ({"sample": 2.5}, {"seed": -1}, {"seed": 2**63}):
        with pytest.raises(UsageError, match="must be a whole number"):
            api.check(catalog, **bad)  # type: ignore[arg-type]


def test_a_pair_the_report_does_not_hold_is_named(catalog: str) -> None:
    report = api.overlap(catalog, ["d"])
    assert report.pair("d@v1:test", "d@v1:train").items == 2
    with pytest.raises(NotFoundError, match=r"its splits are d@v1:test, d@v1:train"):
        report.pair("d:test", "d:train")
    with pytest.raises(KeyError):  # still a KeyError, as a lookup
        report.near[0].pair("d@v1:test", "d@v1:test")


def test_folder_options_for_arrays_are_refused_not_dropped(catalog: str, tmp_path: Path) -> None:
    x = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(UsageError, match="image folder"):
        api.ingest(catalog, "d", "v9", {"train": x}, skip_bad=True)
    with pytest.raises(UsageError, match="image folder"):
        api.ingest(catalog, "d", "v9", {"train": x}, labels=tmp_path / "labels.csv")
    assert [v.tag for v in api.list_catalog(catalog).datasets[0].versions] == ["v1"]


def test_arrays_whose_names_say_they_are_not_labels_are_left_alone(tmp_path: Path) -> None:
    """Test ids beside an unlabelled test split are no labels; the file ingests as it did."""
    x = np.random.default_rng(5).integers(0, 256, (6, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "k.npz", x_train=x[:4], y_train=[0, 1, 0, 1], x_test=x[4:], test_ids=[7, 8])
    planned = api.plan(tmp_path / "k.npz")
    assert {(s.name, s.labels is not None) for s in planned} == {("train", True), ("test", False)}
    # A name that says labels wins over one that says ids: class ids are labels.
    np.savez(tmp_path / "c.npz", x_train=x[:4], train_class_ids=[0, 1, 0, 1])
    with pytest.raises(InputError, match="'train_class_ids' could be"):
        api.plan(tmp_path / "c.npz")


def test_names_that_are_not_text_are_refused(tmp_path: Path) -> None:
    x = {"train": np.zeros((2, 4, 4), np.uint8)}
    for dataset in ("d\udcff", "d\x00", "d\x1b[31m", "d\u202eevil", "a\u2028b"):
        with pytest.raises(InputError, match="characters of text"):
            api.ingest(str(tmp_path / "c.db"), dataset, "v1", x)
    assert not (tmp_path / "c.db").exists()
    # Joiners, other spaces and any script are text: Persian, Japanese, emoji sequences.
    for dataset in ("داده\u200cها", "データ\u3000セット", "👨\u200d👩\u200d👧", "naïve"):
        api.ingest(str(tmp_path / "c.db"), dataset, "v1", x, near=False)


def test_a_pathlib_path_names_the_catalog(tmp_path: Path) -> None:
    """`api.plan` and folder ingests took a Path; the catalog argument raised TypeError."""
    db = tmp_path / "c.db"
    api.ingest(db, "d", "v1", {"train": np.arange(64, dtype=np.uint8).reshape(4, 4, 4)})
    assert api.overlap(db, ["d"]).splits[0].items == 4
    assert list(api.run_sql(db, "SELECT COUNT(*) FROM item").rows) == [(4,)]
    assert api.check(db).ok and [d.name for d in api.list_catalog(db).datasets] == ["d"]
