"""Ingest and exact-overlap queries against real arrays, checked against a brute force."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from catalog import api, queries
from catalog.db import open_catalog, writing
from catalog.errors import InputError, NotFoundError, VersionExistsError
from catalog.ingest import DIGEST_LOOKUP, ingest, low_info_count
from catalog.loaders import from_memory
from catalog.queries import STORED_LIMIT, STORED_OVERLAP, STORED_OVERLAP_FORMAT, parse_ref
from catalog.schema import Image, Item, Source, StoredReport, Version


def _planted(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three splits drawn from a small pool, so copies within and across splits abound."""
    pool = rng.integers(0, 256, size=(400, 8, 8), dtype=np.uint8)
    splits = {}
    for name, n in (("train", 600), ("valid", 120), ("test", 150)):
        picks = rng.integers(0, len(pool), size=n)
        splits[name] = (pool[picks], rng.integers(0, 3, size=n))
    return splits


def _brute_force(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
    """Counts from np.unique over raw rows: the reference the SQL must agree with."""
    names = list(splits)
    rows = np.concatenate([splits[n][0].reshape(len(splits[n][0]), -1) for n in names])
    owner = np.concatenate([np.full(len(splits[n][0]), i) for i, n in enumerate(names)])
    labels = np.concatenate([splits[n][1] for n in names])
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    pairs = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                in_b = np.isin(inverse[owner == i], inverse[owner == j])
                pairs[(a, b)] = int(in_b.sum())
    within = {}
    for i, a in enumerate(names):
        _, counts = np.unique(inverse[owner == i], return_counts=True)
        within[a] = (int((counts > 1).sum()), int((counts[counts > 1] - 1).sum()))
    conflicts = sum(len(np.unique(labels[inverse == k])) > 1 for k in np.unique(inverse))
    return {"pairs": pairs, "within": within, "conflicts": conflicts}


def test_overlap_counts_equal_a_brute_force(
    db: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    splits = _planted(rng)
    expected = _brute_force(splits)
    api.ingest(db, "pool", "v1", splits)
    report = api.overlap(db, ["pool"])
    for (a, b), count in expected["pairs"].items():  # type: ignore[attr-defined]
        pair = report.pair(f"pool@v1:{a}", f"pool@v1:{b}")
        assert pair.items == count, (a, b)
        assert pair.rate == pytest.approx(count / len(splits[a][0]))
    for within in report.within:
        name = within.split.rsplit(":", 1)[1]
        assert (within.groups, within.redundant) == expected["within"][name]  # type: ignore[index]
    assert report.conflict_images == expected["conflicts"]


def test_overlap_across_versions_and_datasets(
    db: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    base = rng.integers(0, 256, size=(50, 6, 6), dtype=np.uint8)
    api.ingest(db, "a", "v1", {"train": base[:40], "test": base[40:]})
    # v2 moves five train images into test: a leak the new version introduces.
    api.ingest(db, "a", "v2", {"train": base[5:40], "test": np.concatenate([base[40:], base[:5]])})
    api.ingest(db, "b", "v1", {"all": base[::10]})
    report = api.overlap(db, ["a@v1:train", "a@v2:test", "b"])
    assert report.pair("a@v2:test", "a@v1:train").items == 5
    assert report.pair("a@v1:train", "a@v2:test").items == 5
    assert report.pair("b@v1:all", "a@v1:train").items == 4
    assert report.pair("a@v1:train", "b@v1:all").items == 4
    assert api.overlap(db, ["a@v2"]).pair("a@v2:test", "a@v2:train").items == 0
    assert report.pair("a@v2:test", "b@v1:all").images == 2  # base[0] and base[40]


def test_each_ingest_stores_the_overlap_report_of_its_version(
    db: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    pool = rng.integers(0, 200, size=(300, 16, 16), dtype=np.uint8)
    near = pool + rng.integers(0, 3, size=pool.shape, dtype=np.uint8)  # near copies
    labels = rng.integers(0, 3, size=len(pool))
    api.ingest(db, "a", "v1", {"train": (pool[:250], labels[:250]), "test": near[250:]})
    # v2: new near copies of v1's train in test, beside pairs among v1's images.
    v2_test = np.concatenate([near[250:], near[5:25], pool[5:10]])
    v2_labels = np.concatenate([labels[250:], (labels[5:25] + 1) % 3, labels[5:10]])
    api.ingest(db, "a", "v2", {"train": (pool[5:250], labels[5:250]), "test": (v2_test, v2_labels)})
    engine = open_catalog(db)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                select(StoredReport.version_id, StoredReport.kind, StoredReport.format)
            ).all()
            assert stored == [(v, STORED_OVERLAP, STORED_OVERLAP_FORMAT) for v in (1, 2)]
            for ref in ("a@v1", "a@v2"):
                report = queries.overlap(conn, [ref])
                splits = queries.resolve(conn, ref, sizes=False)
                assert queries._stored_overlap(conn, splits) == report
                computed = queries._overlap(
                    conn, splits, limit=STORED_LIMIT, recipes=None, threshold=None
                )
                assert report == computed
        v2 = api.overlap(db, ["a@v2"])
        assert v2.pair("a@v2:test", "a@v2:train").items == 5
        assert all(tier.pair("a@v2:test", "a@v2:train").items >= 20 for tier in v2.near)
        assert all(tier.conflict_images >= 20 for tier in v2.near)
    finally:
        engine.dispose()


def test_latest_version_is_the_default_and_parent_is_recorded(db: str, tmp_path: Path) -> None:
    api.ingest(db, "d", "v1", {"train": np.zeros((2, 3, 3), np.uint8)})
    result = api.ingest(db, "d", "v2", {"train": np.ones((2, 3, 3), np.uint8)}, note="fix")
    assert result.parent == "v1"
    listing = api.list_catalog(db, "d")
    (dataset,) = listing.datasets
    assert [v.tag for v in dataset.versions] == ["v1", "v2"]
    assert dataset.versions[1].parent == "v1" and dataset.versions[1].note == "fix"
    assert api.overlap(db, ["d"]).splits[0].version == "v2"


def test_an_image_already_catalogued_is_not_added_again(db: str, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    images = rng.integers(0, 256, size=(100, 5, 5), dtype=np.uint8)
    first = api.ingest(db, "d", "v1", {"train": images})
    second = api.ingest(db, "d", "v2", {"train": np.concatenate([images, images[:1] + 1])})
    assert first.new_images == 100
    assert second.new_images == 1
    engine = open_catalog(db)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Image.__table__)).scalar() == 101
    engine.dispose()


def test_items_keep_label_and_provenance(db: str, tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4), y_train=[7, 8, 9])
    api.ingest(db, "d", "v1", api.plan([path]))
    engine = open_catalog(db)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Item.label, Item.source_key, Item.source_row, Source.path, Source.sha256)
            .join(Source, Source.id == Item.source_id)
            .order_by(Item.position)
        ).all()
    engine.dispose()
    assert [r.label for r in rows] == ["7", "8", "9"]
    assert {(r.source_key, r.path) for r in rows} == {("x_train", str(path))}
    assert [r.source_row for r in rows] == [0, 1, 2]
    # Digested in a background thread while the rows were read (`_SourceDigests`).
    assert rows[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_source_file_gone_before_its_digest_is_one_error_and_no_change(
    db: str, tmp_path: Path
) -> None:
    api.ingest(db, "d", "v1", {"train": np.zeros((2, 4, 4), np.uint8)})
    before = _catalog_counts(db)
    path = tmp_path / "x.npy"
    np.save(path, np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))
    planned = api.plan([], [f"train={path}"])  # its rows mapped here, its bytes digested later
    path.unlink()
    with pytest.raises(InputError, match=rf"^{path}: cannot be read \(No such file"):
        api.ingest(db, "d", "v2", planned)
    assert _catalog_counts(db) == before


def test_a_source_file_that_fails_its_digest_is_one_error_and_no_change(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows were read, but the background digest (`_SourceDigests`) hit a read error."""
    api.ingest(db, "d", "v1", {"train": np.zeros((2, 4, 4), np.uint8)})
    before = _catalog_counts(db)
    path = tmp_path / "x.npy"
    np.save(path, np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))

    def failing(_path: Path, _stop: object = None) -> str:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("catalog.ingest.file_digest", failing)
    with pytest.raises(InputError, match=rf"^{path}: cannot be read \(Input/output error\)$"):
        api.ingest(db, "d", "v2", api.plan([], [f"train={path}"]))
    assert _catalog_counts(db) == before


def _catalog_counts(db: str) -> dict[str, int]:
    engine = open_catalog(db)
    with engine.connect() as conn:
        counts = {
            name: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {name}").scalar_one()
            for name in ("dataset", "version", "split", "source", "image", "item")
        }
    engine.dispose()
    return counts


def test_existing_version_is_refused_and_catalog_unchanged(db: str, tmp_path: Path) -> None:
    api.ingest(db, "d", "v1", {"train": np.zeros((2, 3, 3), np.uint8)})
    before = _catalog_counts(db)
    with pytest.raises(VersionExistsError, match="d@v1 is already in the catalog"):
        api.ingest(db, "d", "v1", {"train": np.ones((2, 3, 3), np.uint8)})
    assert _catalog_counts(db) == before


def test_a_failure_midway_rolls_the_whole_version_back(db: str, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    api.ingest(db, "d", "v1", {"train": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)})
    before = _catalog_counts(db)

    def explode(task: str, advance: int, total: int) -> None:
        if task.startswith("test"):
            raise RuntimeError("power cut")

    good = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="power cut"):
        api.ingest(db, "d", "v2", {"train": good, "test": good[:3]}, on_progress=explode)
    assert _catalog_counts(db) == before
    api.ingest(db, "d", "v2", {"train": good, "test": good[:3]})


def test_labels_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(InputError, match="labels must be a 1-D array of 4 values"):
        from_memory({"train": (np.zeros((4, 2, 2), np.uint8), np.zeros(3))})


@pytest.mark.parametrize("name", ["", "a@b", "a:b", "x" * 201, " a", "a ", "a\tb"])
def test_bad_names_are_refused(engine, name: str) -> None:  # type: ignore[no-untyped-def]
    # Spaces at either end: refs are read stripped, so the name could never be named again.
    arrays = from_memory({"train": np.zeros((1, 2, 2), np.uint8)})
    with writing(engine) as conn, pytest.raises(InputError, match="dataset name"):
        ingest(conn, name, "v1", arrays)
    with writing(engine) as conn, pytest.raises(InputError, match="version name"):
        ingest(conn, "d", name, arrays)
    with writing(engine) as conn, pytest.raises(InputError, match="split name"):
        ingest(conn, "d", "v1", from_memory({name: np.zeros((1, 2, 2), np.uint8)}))


def test_unknown_refs_name_what_exists(db: str, tmp_path: Path) -> None:
    api.ingest(db, "d", "v1", {"train": np.zeros((1, 2, 2), np.uint8)})
    with pytest.raises(NotFoundError, match=r"dataset 'x' is not in the catalog \(datasets: d\)"):
        api.overlap(db, ["x"])
    with pytest.raises(NotFoundError, match=r"versions: v1"):
        api.overlap(db, ["d@v9"])
    with pytest.raises(NotFoundError, match=r"splits: train"):
        api.overlap(db, ["d@v1:test"])


def test_parse_ref() -> None:
    ref = parse_ref("notmnist@v2:test")
    assert (ref.dataset, ref.version, ref.split) == ("notmnist", "v2", "test")
    assert parse_ref("notmnist:test").version is None
    assert str(parse_ref("n@v1")) == "n@v1"
    with pytest.raises(InputError, match="is not a ref"):
        parse_ref("a@b@c")


def test_mixed_image_shapes_and_dtypes_in_one_catalog(db: str, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    gray = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    api.ingest(
        db,
        "mixed",
        "v1",
        {
            "gray": gray,
            "rgb": rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
            "float": rng.random((5, 8, 8), dtype=np.float32),
            "bool": rng.random((5, 8, 8)) > 0.5,
            "gray1": gray[..., None],
        },
    )
    report = api.overlap(db, ["mixed"])
    # (N, H, W, 1) is canonicalised to (N, H, W): the same pictures.
    assert report.pair("mixed@v1:gray1", "mixed@v1:gray").items == 5
    engine = open_catalog(db)
    with engine.connect() as conn:
        shapes = set(conn.execute(select(Image.channels, Image.dtype).distinct()).all())
        versions = conn.execute(select(func.count()).select_from(Version.__table__)).scalar()
    engine.dispose()
    assert shapes == {(1, "uint8"), (3, "uint8"), (1, "float32"), (1, "bool")}
    assert versions == 1


def test_low_information_images_are_flagged(db: str, tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    images = rng.integers(0, 256, (6, 10, 10), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    images[2] = rng.integers(2, 5, (10, 10), dtype=np.uint8)
    result = api.ingest(db, "d", "v1", {"train": images})
    assert result.splits[0].low_info_items == 3
    (within,) = api.overlap(db, ["d"]).within
    assert within.low_info_items == 3


def test_a_known_image_keeps_its_stored_low_information_flag(db: str, rng) -> None:  # type: ignore[no-untyped-def]
    # Floats are scaled by their array's range (`value_range`): beside a 0-255 image this one
    # is near-constant, alone it is on the 0-1 scale and spans it. The catalog stores one flag
    # per image, the first ingest's, and a later version's summary counts by it, as its
    # reports do.
    faint = rng.random((1, 8, 8)).astype(np.float32)
    full = (rng.random((1, 8, 8)) * 255).astype(np.float32)
    first = api.ingest(db, "d", "v1", {"train": np.concatenate([faint, full])})
    second = api.ingest(db, "d", "v2", {"train": faint})
    assert first.splits[0].low_info_items == 1
    assert second.new_images == 0
    assert second.splits[0].low_info_items == 1
    (within,) = api.overlap(db, ["d@v2"]).within
    assert within.low_info_items == 1


def test_low_information_items_are_counted_per_split_and_per_item(db: str, rng) -> None:  # type: ignore[no-untyped-def]
    images = rng.integers(0, 256, (5, 10, 10), dtype=np.uint8)
    images[0] = 0
    train = images[[0, 0, 1, 0, 2]]  # the blank image at three positions
    test = images[[3, 0, 4]]
    first = api.ingest(db, "d", "v1", {"train": train, "test": test})
    assert [s.low_info_items for s in first.splits] == [3, 1]
    images[4] = 255  # new to the catalog and flagged, beside the known blank one
    second = api.ingest(db, "d", "v2", {"valid": images[[4, 0, 1]]})
    assert second.new_images == 1
    assert second.splits[0].low_info_items == 2


def test_digest_lookups_and_low_information_counts_read_indexes_only(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # Planned on analysed rows: an empty or tiny table is planned as a scan anyhow.
            conn.exec_driver_sql(
                "INSERT INTO image (digest, height, width, channels, dtype, low_info) SELECT "
                "sha256(int4send(g)), 1, 1, 1, 'uint8', mod(g, 500) = 0 "
                "FROM generate_series(1, 20000) AS g"
            )
            conn.exec_driver_sql("ANALYZE image")
            count = low_info_count(1).compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {count}"))
            conn.rollback()
            assert "ix_image_low_info" in plan, plan
            return
        lookup = DIGEST_LOOKUP.format(marks="?, ?")
        found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {lookup}", (b"", b""))
        plan = [str(row[-1]) for row in found]
        # The unique constraint's index (SQLite names it): digest and id, no row behind it.
        assert len(plan) == 1 and plan[0].startswith("SEARCH image USING COVERING INDEX"), plan
        count = low_info_count(1).compile(conn, compile_kwargs={"literal_binds": True})
        plan = [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {count}")]
    assert any("COVERING INDEX ix_item_image_id_split_id" in step for step in plan), plan
    assert any("USING INDEX ix_image_low_info" in step for step in plan), plan


def test_a_second_writer_waits_then_reports_catalog_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from catalog import db as catalog_db
    from catalog.errors import BusyError

    monkeypatch.setattr(catalog_db, "BUSY_TIMEOUT_S", 0.3)
    path = tmp_path / "c.db"
    api.ingest(str(path), "d", "v1", {"train": np.zeros((2, 3, 3), np.uint8)})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO dataset (name) VALUES ('half-written')")
    # Readers are not blocked and see only committed versions...
    assert [d.name for d in api.list_catalog(str(path)).datasets] == ["d"]
    # ...while a second writer waits for the lock, then gives up with a clear message.
    with pytest.raises(BusyError, match="catalog busy"):
        api.ingest(str(path), "d", "v2", {"train": np.ones((2, 3, 3), np.uint8)})
    other.execute("ROLLBACK")
    other.close()
    api.ingest(str(path), "d", "v2", {"train": np.ones((2, 3, 3), np.uint8)})
    assert [v.tag for v in api.list_catalog(str(path)).datasets[0].versions] == ["v1", "v2"]


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_digested_but_left_out_of_near_signatures(
    tmp_path: Path, rng: np.random.Generator, channels: int
) -> None:
    # Found by fuzzing: gray+alpha and RGBA images reached recipes that take 1 or 3 channels.
    images = rng.integers(0, 256, (6, 16, 16, channels), dtype=np.uint8)
    images[1] = images[0]
    images[1, ..., -1] = 255 - images[0, ..., -1]  # the same picture, another alpha
    db = str(tmp_path / "c.db")
    result = api.ingest(db, "d", "v1", {"train": images})
    assert result.new_images == 6  # the digest covers every byte, alpha too
    pairs = api.run_sql(db, "SELECT image_a, image_b, distance FROM pair").rows
    assert len(pairs) >= 2 and all(distance == 0 for _a, _b, distance in pairs)
