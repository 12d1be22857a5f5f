"""Near duplicates in the catalog: band keys stored, joined, verified, guarded, and reported."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, inspect
from typer.testing import CliRunner

from catalog import api, near, synth
from catalog import db as db_module
from catalog.db import (
    Columns,
    create_indexes,
    describe,
    drop_indexes_for,
    open_catalog,
    scratch_directory,
    writing,
)
from catalog.errors import InputError, NotFoundError, SchemaError, StorageError
from catalog.near import BUCKET_CAP, BUCKET_LINK, candidate_pairs, ensure_recipes
from catalog.recipes import DEFAULT_RECIPES, PERCEPTUAL, PIXEL
from catalog.recipes.base import Screen
from catalog.schema import BandKey, Image, Pair, core_table
from cli.app import app
from tests.conftest import sqlite_only


@pytest.fixture(scope="module")
def letters() -> tuple[np.ndarray, np.ndarray]:
    return synth.render_letters(400, np.random.default_rng(3))


def _count(db: str, sql: str) -> int:
    return api.run_sql(db, sql).rows[0][0]


def test_near_copies_across_splits_are_found_and_verified(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    images, labels = letters
    train, test = images[:300], images[300:].copy()
    # Five test items are lightly noised copies of train items: not exact, but near.
    rng = np.random.default_rng(0)
    test[:5] = synth.gaussian_noise(train[:5], 0.02, rng)
    result = api.ingest(db, "l", "v1", {"train": (train, labels[:300]), "test": test})
    assert {s.recipe for s in result.near} == {r.name for r in DEFAULT_RECIPES}
    report = api.overlap(db, ["l"])
    assert report.pair("l@v1:test", "l@v1:train").items == 0
    for tier in report.near:
        assert tier.pair("l@v1:test", "l@v1:train").items >= 5, tier.recipe
    pixel = next(t for t in report.near if t.recipe == PIXEL.name)
    # Every stored pair's distance was verified on the signatures, within the radius.
    assert _count(db, f"SELECT COUNT(*) FROM v_near_pair WHERE distance > {PIXEL.radius}") == 0
    rows = api.run_sql(
        db,
        "SELECT position_a, position_b, distance FROM v_near_overlap "
        f"WHERE recipe = '{PIXEL.name}' AND split_a = 'test' AND split_b = 'train' "
        f"AND distance <= {pixel.threshold}",
    ).rows
    assert {(a, b) for a, b, _d in rows} >= {(i, i) for i in range(5)}
    for a, b, distance in rows:
        rms = np.sqrt(np.mean((test[a] / 255.0 - train[b] / 255.0) ** 2))
        assert distance == pytest.approx(rms, abs=1 / 255)


def test_second_version_joins_only_new_images_against_the_catalog(
    db: str, tmp_path: Path, letters
) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    api.ingest(db, "l", "v1", {"train": images[:300]})
    signed = _count(db, "SELECT COUNT(*) FROM signature")
    brighter = synth.brightness(images[:3], 0.03)
    second = api.ingest(db, "l", "v2", {"train": images[:300], "test": brighter})
    # Only the three new images were signed; the 300 known ones cost a lookup each.
    assert all(s.images == 3 for s in second.near)
    assert _count(db, "SELECT COUNT(*) FROM signature") == signed + 3 * len(DEFAULT_RECIPES)
    report = api.overlap(db, ["l@v1:train", "l@v2:test"])
    pixel = next(t for t in report.near if t.recipe == PIXEL.name)
    assert pixel.pair("l@v2:test", "l@v1:train").items == 3


def test_low_information_images_stay_out_of_the_band_join(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    blank = np.zeros((4, 28, 28), np.uint8)
    blank[1] = 1
    blank[2] = 2
    blank[3, 0, 0] = 3
    result = api.ingest(db, "l", "v1", {"train": np.concatenate([images[:20], blank])})
    assert result.splits[0].low_info_items == 4
    assert all(s.images == 20 for s in result.near)
    low_signed = _count(
        db,
        "SELECT COUNT(*) FROM signature s JOIN image i ON i.id = s.image_id WHERE i.low_info",
    )
    assert low_signed == 0


def test_the_bucket_guard_bounds_candidates_linearly() -> None:
    # The worst case: thousands of images sharing every band key (near-identical images).
    members, bands = 5000, 24
    band = np.repeat(np.arange(bands), members)
    key = np.full(band.size, 42, np.int64)
    image = np.tile(np.arange(members, dtype=np.int64), bands)
    new = np.ones(band.size, bool)
    pairs, largest, capped = candidate_pairs(band, key, image, new)
    unguarded = members * (members - 1) // 2
    bound = BUCKET_CAP * (BUCKET_CAP - 1) // 2 + (members - BUCKET_CAP) * BUCKET_LINK
    assert largest == members and capped == bands
    assert len(pairs) <= bound < unguarded // 100
    # Every member is still connected to the first ones, so the group stays whole.
    assert set(np.unique(pairs)) == set(range(members))


def test_candidate_pairs_equal_a_naive_loop_on_small_buckets() -> None:
    rng = np.random.default_rng(1)
    band = rng.integers(0, 3, 300)
    key = rng.integers(0, 20, 300)
    image = rng.integers(0, 60, 300)
    new = rng.random(300) < 0.3
    pairs, _largest, _capped = candidate_pairs(band, key, image, new, cap=10**6)
    expected = set()
    for i in range(300):
        for j in range(300):
            if (
                (band[i], key[i]) == (band[j], key[j])
                and image[i] != image[j]
                and (new[i] or new[j])
            ):
                expected.add((min(image[i], image[j]), max(image[i], image[j])))
    assert {tuple(p) for p in pairs.tolist()} == expected


@settings(max_examples=60, deadline=None)
@given(
    members=st.integers(1, 300),
    keys=st.integers(1, 12),
    piece=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_band_pieces_are_the_band_a_piece_at_a_time(
    members: int, keys: int, piece: int, seed: int
) -> None:
    """The join expands a band's pairs a piece at a time: together the pieces are exactly the
    band's pairs (guard included: buckets beyond `BUCKET_CAP` at few keys), and with one row
    per image, as in a band without probe keys, no piece repeats a pair."""
    rng = np.random.default_rng(seed)
    image = rng.permutation(10 * members)[:members].astype(np.int64)
    key = rng.integers(0, keys, members).astype(np.int64)
    new = rng.random(members) < 0.5
    probe = np.zeros(members, bool)
    whole = near._band_pieces(key, image, new, probe, piece=10**9)
    parts = near._band_pieces(key, image, new, probe, piece=piece)
    assert whole[:2] == parts[:2]
    np.testing.assert_array_equal(whole[2], parts[2])
    expected = np.concatenate([*near._packed(whole[2], whole[3]), np.empty(0, np.int64)])
    found = np.concatenate([*near._packed(parts[2], parts[3]), np.empty(0, np.int64)])
    np.testing.assert_array_equal(np.sort(found), np.sort(expected))
    assert np.unique(found).size == found.size
    pairs, _largest, _capped = candidate_pairs(np.zeros(members, np.int64), key, image, new)
    np.testing.assert_array_equal(near.unpack(np.sort(found)), pairs)


@pytest.fixture(scope="module")
def joined_images() -> np.ndarray:
    """40 gray 28x28 images, four near copies of each of ten: pairs both within and beyond
    the default recipes' radii."""
    rng = np.random.default_rng(11)
    base = rng.random((10, 28, 28, 1)).astype(np.float32)
    noise = rng.normal(0, 0.02, (4, 10, 28, 28, 1)).astype(np.float32)
    return np.clip(base[None] + noise, 0, 1).reshape(40, 28, 28, 1)


@settings(max_examples=40, deadline=None)
@given(
    screened=st.booleans(),
    probes=st.booleans(),
    batch=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_band_join_keeps_the_proposals_its_summary_does_not_rule_out(
    joined_images: np.ndarray,
    screened: bool,
    probes: bool,
    batch: int,
    seed: int,
) -> None:
    """`_join_bands` against its reference: every band's `band_proposals`, counted band by
    band, kept when the resident summary (a screen, or small signatures themselves) may put
    the pair within the radius; with probe rows (pairs repeating in a band) and without, in
    pieces and compactions of a few pairs."""
    recipe = PIXEL if screened else PERCEPTUAL
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10**6, joined_images.shape[0], replace=False)).astype(np.int64)
    resident = near._resident(recipe, recipe.signatures(joined_images))
    new_image = rng.random(ids.size) < 0.6
    bands = []
    for _band in range(3):
        image = ids
        key = rng.integers(0, 4, ids.size).astype(np.int64)
        probe = np.zeros(ids.size, bool)
        if probes:
            extra = rng.choice(np.flatnonzero(new_image), 8)
            image = np.concatenate([image, ids[extra]])
            key = np.concatenate([key, rng.integers(0, 4, extra.size)])
            probe = np.concatenate([probe, np.ones(extra.size, bool)])
        new = np.isin(image, ids[new_image])
        bands.append((key, image, new, probe))

    with (
        mock.patch.object(near, "PREFILTER_BATCH", batch),
        mock.patch.object(near, "COMPACT_AT", 3 * batch),
    ):
        joined = near._join_bands(recipe, bands, ids, resident)

    proposed = [near.band_proposals(*band)[0] for band in bands]
    pairs = near.unpack(np.unique(np.concatenate(proposed)))
    rows = np.searchsorted(ids, pairs)
    if screened:
        assert isinstance(resident, Screen)
        keep = resident.may_be_within(rows[:, 0], rows[:, 1], recipe.radius)
    else:
        assert isinstance(resident, np.ndarray)
        keep = recipe.distances(resident[rows[:, 0]], resident[rows[:, 1]]) <= recipe.radius
    np.testing.assert_array_equal(near.unpack(joined.survivors), pairs[keep])
    assert joined.proposals == sum(p.size for p in proposed)
    assert 0 < keep.sum() < keep.size  # both kinds of pairs were proposed


@settings(max_examples=100, deadline=None)
@given(
    # Few distinct values, so rows tie on leading columns; band keys span all of int64.
    rows=st.lists(st.tuples(*[st.sampled_from([-(2**63), -1, 0, 1, 2**63 - 1])] * 3), max_size=30),
    sort=st.booleans(),
)
def test_lexsorted_says_whether_lexsort_would_move_a_row(
    rows: list[tuple[int, int, int]], sort: bool
) -> None:
    """`_lexsorted` (whether the old members came back from SQL in bucket order) agrees with
    `np.lexsort`: true exactly when its stable order is the identity."""
    if sort:
        rows = sorted(rows)
    table = np.array(rows, np.int64).reshape(-1, 3)
    columns = [table[:, 0], table[:, 1], table[:, 2]]
    expected = bool((np.lexsort(columns[::-1]) == np.arange(len(rows))).all())
    assert near._lexsorted(*columns) == expected
    assert not sort or expected


def test_a_recipe_with_other_parameters_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with writing(engine) as conn:
        ensure_recipes(conn, DEFAULT_RECIPES)
        conn.exec_driver_sql("UPDATE recipe SET fingerprint = 'f00d' WHERE name = 'pixel-v1'")
    with pytest.raises(SchemaError, match="pixel-v1 has fingerprint f00d"), writing(engine) as conn:
        ensure_recipes(conn, DEFAULT_RECIPES)


def test_threshold_and_recipe_errors(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    api.ingest(db, "l", "v1", {"train": letters[0][:10]})
    with pytest.raises(InputError, match="one recipe"):
        api.overlap(db, ["l"], threshold=0.05)
    with pytest.raises(InputError, match="radius"):
        api.overlap(db, ["l"], recipes=[PIXEL.name], threshold=0.9)
    with pytest.raises(NotFoundError, match="recipe 'nope'"):
        api.overlap(db, ["l"], recipes=["nope"])
    assert api.overlap(db, ["l"], recipes=[]).near == ()


def test_dups_joins_exact_and_near_copies_and_shows_chaining(
    db: str, tmp_path: Path, letters
) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    base = images[0]
    # A chain: each step is within the threshold of the previous, the ends are further apart.
    chain = np.stack([synth.brightness(base[None], 0.03 * k)[0] for k in range(4)])
    train = np.concatenate([chain, chain[:1], images[10:60]])
    api.ingest(db, "l", "v1", {"train": train})
    report = api.duplicate_groups(db, ["l"], recipe=PIXEL.name, threshold=0.05)
    assert report.groups_total >= 1
    group = report.groups[0]
    assert group.items >= 5 and group.images >= 4
    assert group.max_distance > 0.05  # the chain's ends are further apart than the threshold
    exact = api.duplicate_groups(db, ["l"], exact_only=True)
    assert exact.groups_total == 1 and exact.groups[0].items == 2


def test_recipes_listing_explains_the_threshold(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    api.ingest(db, "l", "v1", {"train": letters[0][:20]})
    listing = {r.name: r for r in api.list_recipes(db)}
    assert set(listing) == {PIXEL.name, PERCEPTUAL.name}
    pixel = listing[PIXEL.name]
    assert pixel.images == 20 and pixel.fingerprint == PIXEL.fingerprint()
    probabilities = dict(pixel.candidate_probability)
    assert probabilities[0.0] == pytest.approx(1.0)
    assert probabilities[pixel.default_threshold] == pytest.approx(
        PIXEL.candidate_probability(pixel.default_threshold)
    )


def test_cli_near_outputs(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    images, _labels = letters
    test = synth.jpeg(images[:4], 75)
    np.savez(tmp_path / "d.npz", x_train=images[:100], x_test=test)
    assert (
        runner.invoke(app, ["--db", db, "ingest", "l", "v1", str(tmp_path / "d.npz")]).exit_code
        == 0
    )
    result = runner.invoke(app, ["--db", db, "overlap", "l", "--json"])
    data = json.loads(result.stdout)
    near = {tier["recipe"]: tier for tier in data["near"]}
    assert set(near) == {PIXEL.name, PERCEPTUAL.name}
    pairs = {(p["a"], p["b"]): p["items"] for p in near[PIXEL.name]["pairs"]}
    assert pairs[("l@v1:test", "l@v1:train")] == 4
    assert "Near leakage" in runner.invoke(app, ["--db", db, "overlap", "l"]).stdout
    exact = json.loads(runner.invoke(app, ["--db", db, "overlap", "l", "--exact", "--json"]).stdout)
    assert exact["near"] == []
    recipes = runner.invoke(app, ["--db", db, "recipes"])
    assert recipes.exit_code == 0 and "default threshold" in recipes.stdout
    dups = json.loads(runner.invoke(app, ["--db", db, "dups", "l", "--json"]).stdout)
    assert dups["schema"] == "dsaudit.dups/1"
    bad = runner.invoke(app, ["--db", db, "overlap", "l", "--threshold", "0.05"])
    assert bad.exit_code == 2 and "one recipe" in bad.stderr
    # An exact-only version would leave its images unsigned in a catalog with recipes.
    fast = runner.invoke(
        app, ["--db", db, "ingest", "l", "v2", str(tmp_path / "d.npz"), "--exact-only"]
    )
    assert fast.exit_code == 2 and "drop --exact-only" in fast.stderr


def test_band_join_uses_the_primary_key_index(engine) -> None:  # type: ignore[no-untyped-def]
    query = (
        "SELECT image_id FROM band_key WHERE recipe_id = 1 AND level = 0 AND band = 3 AND key = 42"
    )
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            plan = " ".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {query}"))
            assert "pk_band_key" in plan, plan
            return
        plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
    assert "USING PRIMARY KEY" in plan or "USING COVERING INDEX" in plan, plan


def test_old_members_are_seeked_bucket_by_bucket(engine) -> None:  # type: ignore[no-untyped-def]
    # A band range of new keys per query; each new key must seek its bucket, not scan bands.
    with engine.connect() as conn:
        for statement in near.new_key_table(conn.dialect.name):
            conn.exec_driver_sql(statement)
        if conn.dialect.name == "postgresql":
            recipe_id = ensure_recipes(conn, (PIXEL,))[PIXEL.name]
            conn.exec_driver_sql(
                "INSERT INTO band_key (recipe_id, level, band, key, image_id) "
                f"SELECT {recipe_id}, 19, mod(g, 24), g, g FROM generate_series(1, 5000) AS g"
            )
            # Many more new keys than band_key seems to hold without statistics, as in an
            # ingest: the planner's guess then favours starting from band_key.
            conn.exec_driver_sql(
                "INSERT INTO dsaudit_new_key "
                "SELECT g, mod(g, 24), g FROM generate_series(1, 20000) AS g"
            )
            conn.exec_driver_sql(near.NEW_KEY_INDEX)
            sql, params = near.seek_statement(conn, range(0, near.SEEK_BANDS), recipe_id, 19)
            # band_key not analysed (as a while after a catalog's first ingest), then analysed:
            # either way the new keys outside, and one primary-key seek inside for each.
            plans = []
            for analysed in (False, True):
                if analysed:
                    conn.exec_driver_sql("ANALYZE band_key")
                explain = conn.exec_driver_sql(f"EXPLAIN SELECT k.n, b.image_id {sql}", params)
                plans.append([str(row[0]).strip() for row in explain])
            conn.rollback()
            for plan in plans:
                assert plan[0].startswith("Nested Loop"), plan
                assert "on dsaudit_new_key k" in plan[1], plan
                assert not any(line.startswith("Join Filter") for line in plan), plan
                assert any("using pk_band_key on band_key" in line for line in plan[2:]), plan
                seek = [line for line in plan[2:] if line.startswith("Index Cond:")]
                assert any("(band = k.band) AND (key = k.key)" in line for line in seek), plan
            return
        sql, params = near.seek_statement(conn, range(0, near.SEEK_BANDS), 1, 19)
        plan = [
            str(row[-1])
            for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN SELECT k.n, b.image_id {sql}", params
            )
        ]
    assert plan[0].startswith("SEARCH k USING COVERING INDEX"), plan
    assert "USING PRIMARY KEY (recipe_id=? AND level=? AND band=? AND key=?)" in plan[1], plan


def test_new_key_ordinals_are_64_bit(engine) -> None:  # type: ignore[no-untyped-def]
    # PostgreSQL's INTEGER is 4 bytes: a BIGINT there; SQLite's INTEGER PRIMARY KEY (the rowid).
    with engine.connect() as conn:
        for statement in near.new_key_table(conn.dialect.name):
            conn.exec_driver_sql(statement)
        row = (2**40, 3, -(2**63))
        db_module.bulk_insert(
            conn, "dsaudit_new_key", ("n", "band", "key"), Columns(*(np.array([v]) for v in row))
        )
        stored = conn.exec_driver_sql("SELECT n, band, key FROM dsaudit_new_key").all()
        assert [tuple(r) for r in stored] == [row]
        conn.rollback()


def test_open_catalog_registers_nothing_until_ingest(tmp_path: Path) -> None:
    engine = open_catalog(str(tmp_path / "c.db"))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM recipe").scalar_one() == 0
    engine.dispose()


def _recipe_names(db: str) -> list[str]:
    engine = open_catalog(db)
    with engine.connect() as conn:
        names = list(conn.exec_driver_sql("SELECT name FROM recipe ORDER BY id").scalars())
    engine.dispose()
    return names


def test_a_failed_first_ingest_leaves_no_recipes(db: str, tmp_path: Path) -> None:
    """Bad input leaves the catalog as it was. On PostgreSQL the recipes are registered in a
    transaction of their own before the ingest's: a failed first ingest takes them back, so
    the next ingest may still choose other recipes (or exact-only)."""
    images = np.random.default_rng(3).random((6, 8, 8), dtype=np.float32)
    bad = images.copy()
    bad[4, 2, 2] = np.nan
    with pytest.raises(InputError, match="image 4 has NaN"):
        api.ingest(db, "d", "v1", {"train": images, "test": bad})
    assert _recipe_names(db) == []
    api.ingest(db, "d", "v1", {"train": images}, recipes=[PIXEL.name])  # not the defaults
    # A catalog with images keeps the recipes its images were signed under.
    with pytest.raises(InputError, match="NaN"):
        api.ingest(db, "d", "v2", {"train": images, "test": bad})
    assert _recipe_names(db) == [PIXEL.name]


def test_near_copies_with_another_label_are_conflicts(db: str, tmp_path: Path, letters) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    train = images[:50]
    test = synth.gaussian_noise(images[:3], 0.02, np.random.default_rng(4))
    train_labels = np.array(["A"] * 50)
    test_labels = np.array(["A", "B", "A"])  # the second near copy says B
    api.ingest(db, "l", "v1", {"train": (train, train_labels), "test": (test, test_labels)})
    report = api.overlap(db, ["l"])
    assert report.conflict_images == 0  # no exact image carries two labels
    for tier in report.near:
        assert tier.conflict_images == 2, tier.recipe  # test#1 and train#1, each way
        (conflict,) = tier.conflicts
        assert {conflict.a[0].label, conflict.b[0].label} == {"A", "B"}
        assert {(r.split, r.position) for r in conflict.a + conflict.b} == {
            ("l@v1:train", 1),
            ("l@v1:test", 1),
        }


def _stored(db: str, recipe: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    engine = open_catalog(db)
    try:
        with engine.connect() as conn:
            rid = conn.exec_driver_sql(f"SELECT id FROM recipe WHERE name = '{recipe}'").scalar()
            return [tuple(r) for r in conn.exec_driver_sql(sql.format(rid=rid))]
    finally:
        engine.dispose()


@pytest.mark.parametrize("small", [False, True])
def test_streamed_join_and_block_verification_equal_the_reference(  # type: ignore[no-untyped-def]
    db: str, letters, monkeypatch: pytest.MonkeyPatch, small: bool
) -> None:
    """The ingest's band join (band by band, ruled out on resident summaries, survivors
    compacted) and its verification block by block store exactly the pairs of the reference:
    `candidate_pairs` over the stored band keys, every candidate's exact distance within the
    radius. With ``small``, blocks of 7 images, batches of 5 pairs and compaction at 3 pairs
    make every loop turn many times; two versions exercise the old members' summaries."""
    if small:
        # ...and the pair table's index dropped during both ingests' inserts, rebuilt after.
        monkeypatch.setattr(db_module, "DEFER_INDEX_ROWS", 1)
        monkeypatch.setattr(near, "VERIFY_BLOCK_BYTES", 7 * PIXEL.signature_bytes)
        monkeypatch.setattr(near, "PREFILTER_BATCH", 5)
        monkeypatch.setattr(near, "COMPACT_AT", 3)
        monkeypatch.setattr(near, "RESIDENT_SLICE", 4)
        monkeypatch.setattr(near, "WORKERS", 3)  # bands shared out unevenly, tiles in flight
    images, _labels = letters
    rng = np.random.default_rng(5)
    copies = synth.gaussian_noise(images[:40], 0.02, rng)
    dimmed = synth.brightness(images[40:80], 0.03)
    api.ingest(db, "l", "v1", {"train": np.concatenate([images[:200], copies])})
    api.ingest(db, "l", "v2", {"train": np.concatenate([images[150:400], dimmed])})
    for recipe in DEFAULT_RECIPES:
        keys = np.array(
            _stored(
                db, recipe.name, "SELECT band, key, image_id FROM band_key WHERE recipe_id = {rid}"
            ),
            np.int64,
        )
        signed = _stored(
            db,
            recipe.name,
            "SELECT image_id, value FROM signature WHERE recipe_id = {rid} ORDER BY image_id",
        )
        ids = np.array([r[0] for r in signed], np.int64)
        signatures = np.frombuffer(b"".join(bytes(r[1]) for r in signed), np.uint8).reshape(
            len(signed), -1
        )
        candidates, _largest, _capped = candidate_pairs(
            keys[:, 0], keys[:, 1], keys[:, 2], np.ones(len(keys), bool)
        )
        rows = np.searchsorted(ids, candidates)
        distance = recipe.distances(signatures[rows[:, 0]], signatures[rows[:, 1]])
        expected = {
            (a, b): d
            for (a, b), d in zip(candidates.tolist(), distance.tolist(), strict=True)
            if d <= recipe.radius
        }
        stored = dict(
            ((a, b), d)
            for a, b, d in _stored(
                db,
                recipe.name,
                "SELECT image_a, image_b, distance FROM pair WHERE recipe_id = {rid}",
            )
        )
        assert len(expected) >= 80, recipe.name  # the planted copies at least
        assert stored.keys() == expected.keys(), recipe.name
        assert all(stored[p] == pytest.approx(d) for p, d in expected.items())


def _same_screen(a: Screen | None, b: Screen | None) -> bool:
    if a is None or b is None:
        return a is b
    return (
        len(a.levels) == len(b.levels)
        and all(
            va.dtype == vb.dtype and np.array_equal(va, vb) and fa == fb
            for (va, fa), (vb, fb) in zip(a.levels, b.levels, strict=True)
        )
        and np.array_equal(a.scale, b.scale)
    )


def test_verification_sides_from_the_spill_equal_those_from_the_catalog(  # type: ignore[no-untyped-def]
    db: str, letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each side verification builds (`NearIndexer._block_side`) holds the stored signatures of
    its ids and their screen, the levels after the coarsest, equal to screening those
    signatures afresh: new images' screens come from the scratch file as they were computed
    when signed, old members' are computed, in one side when a block holds both (looked up;
    a block scanned from the catalog is screened as a whole)."""
    monkeypatch.setattr(near, "VERIFY_BLOCK_BYTES", 40 * PIXEL.signature_bytes)
    # Catalogued images looked up, never scanned, so blocks hold old and new images.
    monkeypatch.setattr(near, "BLOCK_SCAN_SHARE", 2.0)
    original = near.NearIndexer._block_side
    sides = {"new": 0, "old": 0, "both": 0}

    def checked(self, recipe, recipe_id, wanted, block, *, screened):  # type: ignore[no-untyped-def]
        side = original(self, recipe, recipe_id, wanted, block, screened=screened)
        stored = self._signatures(recipe_id, side.ids, recipe.signature_bytes)
        np.testing.assert_array_equal(side.signatures, stored)
        assert set(wanted.tolist()) <= set(side.ids.tolist())
        assert screened and side.screen is not None
        assert _same_screen(side.screen, near._side(recipe, side.ids, stored, screened=True).screen)
        spilled = self._spills[recipe.name].holds(side.ids)
        sides[
            "both" if spilled.any() and not spilled.all() else "new" if spilled.all() else "old"
        ] += 1
        return side

    monkeypatch.setattr(near.NearIndexer, "_block_side", checked)
    images, _labels = letters
    rng = np.random.default_rng(8)
    copies = synth.gaussian_noise(images[:60], 0.02, rng)
    api.ingest(
        db, "l", "v1", {"train": np.concatenate([images[:200], copies])}, recipes=["pixel-v1"]
    )
    api.ingest(
        db,
        "l",
        "v2",
        {"train": np.concatenate([images[100:300], copies[:30] + 0.01])},
        recipes=["pixel-v1"],
    )
    assert sides["new"] and sides["old"] and sides["both"], sides


def test_stored_residents_scanned_or_looked_up_equal_the_signatures_summaries(  # type: ignore[no-untyped-def]
    db: str, letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catalogued images' resident summaries (`NearIndexer._stored_resident`) are those of
    their stored signatures, in id order, whether a block of ids is read by one range scan
    (wanted ids fill at least `BLOCK_SCAN_SHARE` of it) or by looking its ids up: blocks of 40
    ids, one wanted whole, one a fifth (looked up), one 12 of 40 (scanned, the others left)."""
    images, _labels = letters
    api.ingest(db, "l", "v1", {"train": images[:200]})
    engine = open_catalog(db)
    scans: list[int] = []
    original = near.NearIndexer._block_scan

    def counted(self, recipe, recipe_id, first, block):  # type: ignore[no-untyped-def]
        scans.append(first)
        return original(self, recipe, recipe_id, first, block)

    monkeypatch.setattr(near.NearIndexer, "_block_scan", counted)
    try:
        with writing(engine) as conn:
            indexer = near.NearIndexer(conn, DEFAULT_RECIPES)
            try:
                for recipe in DEFAULT_RECIPES:
                    recipe_id = indexer.ids[recipe.name]
                    monkeypatch.setattr(near, "VERIFY_BLOCK_BYTES", 40 * recipe.signature_bytes)
                    signed = conn.exec_driver_sql(
                        f"SELECT image_id FROM signature WHERE recipe_id = {recipe_id}"
                    )
                    stored = {row[0] for row in signed}
                    wanted = np.array(
                        [i for i in range(40, 80) if i in stored]
                        + [i for i in range(80, 120, 5) if i in stored]
                        + [i for i in range(120, 160, 3) if i in stored][:12],
                        np.int64,
                    )
                    scans.clear()
                    got = indexer._stored_resident(recipe, recipe_id, wanted)
                    assert scans == [40, 120], recipe.name
                    expected = near._resident(
                        recipe, indexer._signatures(recipe_id, wanted, recipe.signature_bytes)
                    )
                    if isinstance(expected, Screen):
                        assert isinstance(got, Screen) and _same_screen(got, expected)
                    else:
                        assert isinstance(got, np.ndarray) and isinstance(expected, np.ndarray)
                        np.testing.assert_array_equal(got, expected)
                    # A signature missing from a scanned block (a damaged catalog) is named,
                    # not replaced by its neighbour's.
                    conn.exec_driver_sql(
                        f"DELETE FROM signature WHERE recipe_id = {recipe_id} AND image_id = 50"
                    )
                    with pytest.raises(SchemaError, match="image 50 has band keys"):
                        indexer._stored_resident(recipe, recipe_id, wanted)
                    with pytest.raises(SchemaError, match="image 50 has band keys"):
                        indexer._signatures(recipe_id, wanted, recipe.signature_bytes)
            finally:
                indexer.close()
    finally:
        engine.dispose()


def test_pairs_are_stored_in_primary_key_order(  # type: ignore[no-untyped-def]
    db: str, letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verification returns pairs tile by tile, out of (image_a, image_b) order once an image
    has candidates in two later blocks; they reach the pair table sorted (appended to the
    B-tree, not scattered over a tile's range of it)."""
    monkeypatch.setattr(near, "VERIFY_BLOCK_BYTES", 40 * PIXEL.signature_bytes)
    verified, stored = [], []
    original_verify, original_insert = near.NearIndexer._verify_blocks, near.bulk_insert

    def verify(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        close, distance = original_verify(self, *args, **kwargs)
        verified.append((close.copy(), distance.copy()))
        return close, distance

    def insert(conn, table, columns, rows, **kwargs):  # type: ignore[no-untyped-def]
        if getattr(table, "name", table) == "pair":
            stored.append(tuple(column.copy() for column in rows.arrays))
        return original_insert(conn, table, columns, rows, **kwargs)

    monkeypatch.setattr(near.NearIndexer, "_verify_blocks", verify)
    monkeypatch.setattr(near, "bulk_insert", insert)
    images, _labels = letters
    # Two copies of each of the first 60 images: their ids lie in two later blocks of 40.
    copies = [synth.gaussian_noise(images[:60], 0.02, np.random.default_rng(s)) for s in (8, 9)]
    api.ingest(
        db, "l", "v1", {"train": np.concatenate([images[:200], *copies])}, recipes=["pixel-v1"]
    )
    close, distance = verified[0]
    assert len(verified) == 1 and not near._lexsorted(close[:, 0], close[:, 1])
    assert len(stored) == 1 and stored[0][0].size == close.shape[0] >= 120
    assert near._lexsorted(stored[0][0], stored[0][1])
    # Each pair with its own distance.
    assert sorted(zip(*(column.tolist() for column in stored[0]), strict=True)) == sorted(
        zip(close[:, 0].tolist(), close[:, 1].tolist(), distance.tolist(), strict=True)
    )


def test_screen_bytes_read_back_as_the_screen(letters) -> None:  # type: ignore[no-untyped-def]
    """The finer levels of pixel-v1's screen, spilled as bytes per image and read back, are the
    same arrays with the same factors, for any rows in any order."""
    images, _labels = letters
    unit = images[:50, :, :, None].astype(np.float32) / 255
    finer = near._finer(PIXEL.screen(PIXEL.signatures(unit)))
    assert finer is not None
    rows = near._screen_bytes(finer)
    assert rows.dtype == np.uint8 and rows.shape[0] == 50
    like = finer.rows(np.empty(0, np.intp))
    order = np.array([7, 3, 49, 3, 0])
    assert _same_screen(near._screen_from_bytes(rows[order], like), finer.rows(order))


def test_spill_reads_back_any_ids_in_any_order(engine) -> None:  # type: ignore[no-untyped-def]
    """Verification reads new images' signatures back from the scratch file by id, whatever
    order the chunks came in, and tells spilled ids from catalogued ones."""
    rng = np.random.default_rng(2)
    chunks = [np.array([40, 7, 12]), np.array([3]), np.array([90, 41])]
    values = {int(i): rng.integers(0, 256, 5, dtype=np.uint8) for c in chunks for i in c}
    with engine.connect() as conn:
        spill = near._Spill(5, conn)
        try:
            for chunk in chunks:
                spill.append(chunk, np.stack([values[int(i)] for i in chunk]))
            wanted = np.array([3, 12, 41, 90])
            np.testing.assert_array_equal(
                spill.read(wanted), np.stack([values[int(i)] for i in wanted])
            )
            assert spill.read(np.empty(0, np.int64)).shape == (0, 5)
            np.testing.assert_array_equal(
                spill.holds(np.array([1, 3, 8, 40, 90, 91])),
                [False, True, False, True, True, False],
            )
        finally:
            spill.close()


def test_a_full_disk_under_the_scratch_file_is_one_clear_error(  # type: ignore[no-untyped-def]
    engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scratch file lives beside a SQLite catalog; when its disk refuses a write, the
    ingest stops with a `StorageError` that names the catalog, the directory and the cause
    (the file size limit case runs for real in tests/test_crash.py)."""

    class Full:
        def write(self, _data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    with engine.connect() as conn:
        spill = near._Spill(5, conn)
        spill._file.close()
        monkeypatch.setattr(spill, "_file", Full())
        with pytest.raises(StorageError) as raised:
            spill.append(np.array([1]), np.zeros((1, 5), np.uint8))
        directory = str(scratch_directory(conn))
    message = str(raised.value)
    assert describe(str(engine.url)) in message and directory in message, message
    assert "scratch file" in message and "catalog is unchanged" in message, message


def _pair_indexes(db: str) -> list[tuple]:  # type: ignore[type-arg]
    return [
        tuple(r)
        for r in api.run_sql(
            db, "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'pair' ORDER BY name"
        ).rows
    ]


@sqlite_only
def test_a_large_pair_insert_rebuilds_the_index_rather_than_keeping_it_up(  # type: ignore[no-untyped-def]
    db: str, letters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest drops the pair index when its pairs are many against those stored, and
    rebuilds it before commit: the schema is the migrations', and the index serves lookups by
    ``image_b``. A failure after the drop rolls the drop back with everything else."""
    open_catalog(db).dispose()  # a new catalog: the migrations' schema
    fresh = _pair_indexes(db)
    assert any(name == "ix_pair_recipe_id_image_b" for name, _sql in fresh)
    monkeypatch.setattr(db_module, "DEFER_INDEX_ROWS", 1)
    dropped: list[tuple[str, ...]] = []
    real_drop = near.drop_indexes_for

    def recording(conn, table, incoming):  # type: ignore[no-untyped-def]
        result = real_drop(conn, table, incoming)
        dropped.append(tuple(str(index.name) for index in result))
        return result

    monkeypatch.setattr(near, "drop_indexes_for", recording)
    images, _labels = letters
    copies = synth.gaussian_noise(images[:40], 0.02, np.random.default_rng(5))
    api.ingest(db, "l", "v1", {"train": np.concatenate([images[:200], copies])})
    assert dropped[0] == ("ix_pair_recipe_id_image_b",)  # the first insert: nothing stored yet
    assert _pair_indexes(db) == fresh
    plan = api.run_sql(
        db, "EXPLAIN QUERY PLAN SELECT image_a FROM pair WHERE recipe_id = 1 AND image_b = 7"
    )
    assert "ix_pair_recipe_id_image_b" in str(plan.rows)
    pairs = _count(db, "SELECT COUNT(*) FROM pair")
    assert pairs >= 80

    def failing(conn, indexes):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(near, "create_indexes", failing)
    dimmed = synth.brightness(images[:200], 0.03)
    with pytest.raises(RuntimeError, match="disk on fire"):
        api.ingest(db, "l", "v2", {"train": dimmed})
    assert dropped[-1] == ("ix_pair_recipe_id_image_b",)  # 200 new pairs' worth: dropped again
    assert _pair_indexes(db) == fresh
    assert _count(db, "SELECT COUNT(*) FROM pair") == pairs
    assert _count(db, "SELECT COUNT(*) FROM version") == 1


def test_indexes_are_dropped_only_for_inserts_large_against_the_table(  # type: ignore[no-untyped-def]
    engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: at least `DEFER_INDEX_ROWS` incoming rows, and at least a quarter of the rows
    stored; PostgreSQL never (a dropped index would lock readers out until commit)."""
    table = core_table(Pair)
    expected = ["ix_pair_recipe_id_image_b"] if engine.dialect.name == "sqlite" else []
    with writing(engine) as conn:
        recipe_ids = list(ensure_recipes(conn, DEFAULT_RECIPES).values())
        assert drop_indexes_for(conn, table, db_module.DEFER_INDEX_ROWS - 1) == ()
        dropped = drop_indexes_for(conn, table, db_module.DEFER_INDEX_ROWS)
        assert [index.name for index in dropped] == expected
        create_indexes(conn, dropped)
        conn.execute(
            insert(core_table(Image)),
            [
                {
                    "id": i,
                    "digest": bytes([i]),
                    "height": 1,
                    "width": 1,
                    "channels": 1,
                    "dtype": "uint8",
                    "low_info": False,
                }
                for i in range(1, 10)
            ],
        )
        conn.execute(
            insert(table),
            [
                {"recipe_id": r, "image_a": a, "image_b": 9, "distance": 0.0}
                for r in recipe_ids
                for a in range(1, 9)
            ],
        )
    stored = 8 * len(recipe_ids)
    monkeypatch.setattr(db_module, "DEFER_INDEX_ROWS", 1)
    with writing(engine) as conn:
        assert drop_indexes_for(conn, table, stored // 4 - 1) == ()
        dropped = drop_indexes_for(conn, table, stored // 4)
        assert [index.name for index in dropped] == expected
        create_indexes(conn, dropped)
    assert [ix["name"] for ix in inspect(engine).get_indexes("pair")] == [
        "ix_pair_recipe_id_image_b"
    ]


def test_each_ingest_stores_its_band_keys_at_its_level_and_joins_every_level(
    db: str, letters
) -> None:  # type: ignore[no-untyped-def]
    images, _labels = letters
    rng = np.random.default_rng(11)
    api.ingest(db, "l", "v1", {"train": images[:200]})
    api.ingest(db, "l", "v2", {"train": images[200:230]})
    # v3's images are near copies of one v1 image and one v2 image: found in both levels.
    api.ingest(db, "l", "v3", {"test": synth.gaussian_noise(images[[7, 210]], 0.02, rng)})
    for recipe in DEFAULT_RECIPES:
        levels = api.run_sql(
            db,
            "SELECT b.level, COUNT(DISTINCT b.image_id) FROM band_key b "
            f"JOIN recipe r ON r.id = b.recipe_id WHERE r.name = '{recipe.name}' "
            "GROUP BY b.level ORDER BY b.level",
        ).rows
        assert [tuple(row) for row in levels] == [(1, 2), (4, 30), (7, 200)], recipe.name
    for recipe in DEFAULT_RECIPES:
        found = api.run_sql(
            db,
            "SELECT DISTINCT version_b, position_b FROM v_near_overlap "
            f"WHERE recipe = '{recipe.name}' AND version_a = 'v3' ORDER BY version_b",
        ).rows
        assert [tuple(row) for row in found] == [("v1", 7), ("v2", 10)], recipe.name


def test_band_level_is_the_floor_of_log2() -> None:
    assert [near.band_level(n) for n in (1, 2, 3, 4, 1023, 1024, 992_501)] == [
        0, 1, 1, 2, 9, 10, 19,
    ]  # fmt: skip
    with pytest.raises(ValueError):
        near.band_level(0)


def test_a_bucket_over_levels_keeps_its_lowest_ids(engine) -> None:  # type: ignore[no-untyped-def]
    # One bucket (band 0, key 42) with 90 members at level 3 and 40 lower ids at level 6:
    # read level by level, ascending, the higher ids come first, so only the merge puts the
    # guard's first BUCKET_CAP (the lowest ids over both) first.
    high, low = list(range(1000, 1090)), list(range(10, 50))
    with writing(engine) as conn:
        indexer = near.NearIndexer(conn, (PIXEL,))
        try:
            recipe_id = indexer.ids[PIXEL.name]
            rows = [
                {"recipe_id": recipe_id, "level": level, "band": 0, "key": 42, "image_id": image}
                for level, ids in ((3, high), (6, low))
                for image in ids
            ]
            conn.execute(insert(core_table(BandKey)), rows)
            keys = np.full((1, PIXEL.bands), 7, np.int64)
            keys[0, 0] = 42
            band, key, image = indexer._old_members(recipe_id, keys)
        finally:
            indexer.close()
    assert band.tolist() == [0] * BUCKET_CAP and set(key.tolist()) == {42}
    assert image.tolist() == sorted(low + high)[:BUCKET_CAP]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("slice_bands", [near.SEEK_BANDS, 5])
def test_old_members_are_every_levels_bucket_members(  # type: ignore[no-untyped-def]
    engine, seed: int, slice_bands: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per slice of bands (`SEEK_BANDS`; 5 leaves a short last slice of PIXEL's 24 bands),
    # levels read whole (1: two images' rows, mostly fewer than the slice's new keys), read
    # then sought (0: more rows than its level promises), and sought (3, 6); ids shuffled
    # across levels. Band 0 has one key, so its bucket is over the cap.
    monkeypatch.setattr(near, "SEEK_BANDS", slice_bands)
    rng = np.random.default_rng(seed)
    sizes = {0: 5, 1: 2, 3: 9, 6: 70}
    ids = rng.permutation(np.arange(1, 1 + sum(sizes.values()))).tolist()
    pool = [-(2**63), -5, 0, 2**63 - 1]
    stored = []
    for level, count in sizes.items():
        for image in (ids.pop() for _ in range(count)):
            for band in range(PIXEL.bands):
                key = 42 if band == 0 else int(rng.choice(pool))
                stored.append((level, band, key, image))
    new = np.array(rng.choice([*pool, 11], (3, PIXEL.bands)), np.int64)
    new[:, 0] = 42
    with writing(engine) as conn:
        indexer = near.NearIndexer(conn, (PIXEL,))
        try:
            recipe_id = indexer.ids[PIXEL.name]
            columns = ("level", "band", "key", "image_id")
            conn.execute(
                insert(core_table(BandKey)),
                [
                    {"recipe_id": recipe_id, **dict(zip(columns, row, strict=True))}
                    for row in stored
                ],
            )
            band, key, image = indexer._old_members(recipe_id, new)
        finally:
            indexer.close()
    wanted = {(b, int(k)) for b in range(PIXEL.bands) for k in new[:, b]}
    expected: list[tuple[int, int, int]] = []
    for b, k in sorted(wanted):
        members = sorted(image for _level, sb, sk, image in stored if (sb, sk) == (b, k))
        expected += [(b, k, image) for image in members[:BUCKET_CAP]]
    assert list(zip(band.tolist(), key.tolist(), image.tolist(), strict=True)) == expected
    assert sum(1 for row in expected if row[0] == 0) == BUCKET_CAP


@st.composite
def _level_runs(draw: st.DrawFn) -> list[list[tuple[int, int, int]]]:
    """A few levels' band-key rows (band, key, image), each level sorted and distinct; ids
    above 2**32 sometimes, where the merge falls back to a lexsort."""
    top = draw(st.sampled_from([2**31 - 1, 2**40]))
    row = st.tuples(st.integers(0, 3), st.integers(-(2**63), 2**63 - 1), st.integers(0, top))
    # Keys from a small pool as well, so buckets span levels.
    pool = st.tuples(st.integers(0, 3), st.sampled_from([-5, 0, 42]), st.integers(0, 20))
    runs = draw(st.lists(st.lists(st.one_of(row, pool), max_size=30), max_size=4))
    return [sorted(set(run)) for run in runs]


@settings(max_examples=80, deadline=None)
@given(_level_runs())
def test_merged_levels_sort_like_a_lexsort(levels: list[list[tuple[int, int, int]]]) -> None:
    rows = np.array([row for level in levels for row in level], np.int64).reshape(-1, 3)
    bands, key, image = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
    distinct = [np.unique(key[bands == band]) for band in range(4)]
    order = near._merge_levels(distinct, bands, key, image)
    np.testing.assert_array_equal(order, np.lexsort((image, key, bands)))
