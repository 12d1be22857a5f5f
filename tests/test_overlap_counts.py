"""`overlap`, `label_conflicts` and `cross_split_copies` count in numpy; here they must equal
plain SQL joins.

The reference statements below are the joins these queries ran before they moved to numpy
(too slow past a few hundred thousand images, but declarative and easy to check by eye).
Random small catalogs, written row by row, have what the counts must get right: an image at
several positions of one split, in several splits, versions and datasets; items with no label
or with different labels; low-information images; near pairs of two recipes inside a split,
across splits and to images outside the audited splits, with tied distances.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, bindparam, event, insert, select, text, update

from catalog import queries, vectors
from catalog.db import writing
from catalog.model import NearTier, OverlapReport
from catalog.schema import (
    Dataset,
    Image,
    Item,
    Pair,
    RecipeRecord,
    Source,
    Split,
    StoredReport,
    Version,
    core_table,
)
from tests.conftest import sqlite_only

_SPLITS = bindparam("splits", expanding=True)

SIZES_SQL = text(
    """
    SELECT split_id, COUNT(*), COUNT(DISTINCT image_id) FROM item
    WHERE split_id IN :splits GROUP BY split_id
    """
).bindparams(_SPLITS)

PAIRS_SQL = text(
    """
    WITH multi AS (
        SELECT image_id FROM item WHERE split_id IN :splits
        GROUP BY image_id HAVING COUNT(DISTINCT split_id) > 1
    ),
    present AS (
        SELECT DISTINCT i.image_id, i.split_id FROM item i
        JOIN multi m ON m.image_id = i.image_id
        WHERE i.split_id IN :splits
    )
    SELECT a.split_id, p.split_id, COUNT(*), COUNT(DISTINCT a.image_id)
    FROM item a
    JOIN multi m ON m.image_id = a.image_id
    JOIN present p ON p.image_id = a.image_id AND p.split_id <> a.split_id
    WHERE a.split_id IN :splits
    GROUP BY a.split_id, p.split_id
    """
).bindparams(_SPLITS)

WITHIN_SQL = text(
    """
    SELECT split_id, COUNT(*), SUM(n), SUM(n - 1), MAX(n) FROM (
        SELECT split_id, image_id, COUNT(*) AS n FROM item
        WHERE split_id IN :splits GROUP BY split_id, image_id HAVING COUNT(*) > 1
    ) AS dup
    GROUP BY split_id
    """
).bindparams(_SPLITS)

LOW_SQL = text(
    """
    SELECT i.split_id, COUNT(*) FROM item i JOIN image m ON m.id = i.image_id
    WHERE i.split_id IN :splits AND m.low_info GROUP BY i.split_id
    """
).bindparams(_SPLITS)

CONFLICTS_SQL = text(
    """
    SELECT image_id, COUNT(*) FROM item
    WHERE split_id IN :splits AND label IS NOT NULL
    GROUP BY image_id HAVING COUNT(DISTINCT label) > 1
    """
).bindparams(_SPLITS)

NEAR = """
    near AS (
        SELECT image_a AS x, image_b AS y FROM pair WHERE recipe_id = :recipe AND distance <= :t
        UNION ALL
        SELECT image_b, image_a FROM pair WHERE recipe_id = :recipe AND distance <= :t
    )
"""

NEAR_PAIRS_SQL = text(
    f"""
    WITH {NEAR},
    present AS (
        SELECT DISTINCT i.image_id, i.split_id FROM item i
        JOIN (SELECT DISTINCT y FROM near) ny ON ny.y = i.image_id
        WHERE i.split_id IN :splits
    )
    SELECT a.split_id, p.split_id, COUNT(DISTINCT a.position), COUNT(DISTINCT a.image_id)
    FROM item a
    JOIN near n ON n.x = a.image_id
    JOIN present p ON p.image_id = n.y AND p.split_id <> a.split_id
    WHERE a.split_id IN :splits
      AND NOT EXISTS (
          SELECT 1 FROM item e WHERE e.image_id = a.image_id AND e.split_id = p.split_id
      )
    GROUP BY a.split_id, p.split_id
    """
).bindparams(_SPLITS)

NEAR_CONFLICTS_SQL = text(
    f"""
    WITH {NEAR}
    SELECT COUNT(DISTINCT a.image_id)
    FROM item a
    JOIN near n ON n.x = a.image_id
    JOIN item b ON b.image_id = n.y
    WHERE a.split_id IN :splits AND b.split_id IN :splits
      AND a.label IS NOT NULL AND b.label IS NOT NULL AND a.label <> b.label
    """
).bindparams(_SPLITS)

NEAR_CONFLICT_PAIRS_SQL = text(
    """
    SELECT p.image_a, p.image_b, p.distance FROM pair p
    WHERE p.recipe_id = :recipe AND p.distance <= :t
      AND EXISTS (
          SELECT 1 FROM item a JOIN item b ON b.image_id = p.image_b
          WHERE a.image_id = p.image_a AND a.split_id IN :splits AND b.split_id IN :splits
            AND a.label IS NOT NULL AND b.label IS NOT NULL AND a.label <> b.label
      )
    ORDER BY p.distance, p.image_a, p.image_b
    LIMIT :limit
    """
).bindparams(_SPLITS)

MULTI_SPLIT_SQL = text(
    """
    SELECT image_id, COUNT(DISTINCT split_id), COUNT(*) FROM item
    WHERE split_id IN :splits
    GROUP BY image_id HAVING COUNT(DISTINCT split_id) > 1
    """
).bindparams(_SPLITS)

CROSS_PAIRS_SQL = text(
    """
    SELECT p.image_a, p.image_b, p.distance FROM pair p
    WHERE p.recipe_id = :recipe AND p.distance <= :t
      AND EXISTS (
          SELECT 1 FROM item a JOIN item b ON b.image_id = p.image_b
          WHERE a.image_id = p.image_a AND a.split_id IN :splits AND b.split_id IN :splits
            AND a.split_id <> b.split_id
      )
    ORDER BY p.distance, p.image_a, p.image_b
    """
).bindparams(_SPLITS)


def _digest(image_id: int) -> bytes:
    return hashlib.sha256(f"image {image_id}".encode()).digest()


def _random_catalog(engine: Engine, seed: int) -> None:
    """Datasets a (v1, v2: train, valid, test) and b (v1: all), 80 images, two recipes."""
    rng = np.random.default_rng(seed)
    images = 80
    # A skewed choice of images: some sit at many positions, most at one or none.
    weights = rng.pareto(1.5, images) + 0.05
    weights /= weights.sum()
    with writing(engine) as conn:
        conn.execute(insert(core_table(Dataset)), [{"name": "a"}, {"name": "b"}])
        now = datetime(2026, 11, 30, tzinfo=UTC)
        conn.execute(
            insert(core_table(Version)),
            [
                {"dataset_id": d, "tag": t, "created_at": now, "tool_version": "test"}
                for d, t in ((1, "v1"), (1, "v2"), (2, "v1"))
            ],
        )
        splits = [(1, "train"), (1, "valid"), (1, "test"), (2, "train"), (2, "test"), (3, "all")]
        conn.execute(insert(core_table(Split)), [{"version_id": v, "name": n} for v, n in splits])
        conn.execute(
            insert(core_table(Source)),
            [{"version_id": 1, "path": "x.npy", "sha256": "0" * 64, "size": 1, "format": "npy"}],
        )
        conn.execute(
            insert(core_table(Image)),
            [
                {
                    "digest": _digest(i),
                    "height": 2,
                    "width": 2,
                    "channels": 1,
                    "dtype": "uint8",
                    "low_info": bool(rng.random() < 0.1),
                }
                for i in range(1, images + 1)
            ],
        )
        items = []
        for split_id in range(1, len(splits) + 1):
            for position in range(int(rng.integers(0, 40))):
                label = rng.choice(["0", "1", "2", "none"], p=[0.5, 0.2, 0.1, 0.2])
                items.append(
                    {
                        "split_id": split_id,
                        "position": position,
                        "image_id": int(rng.choice(images, p=weights)) + 1,
                        "label": None if label == "none" else str(label),
                        "source_id": 1,
                        "source_key": "x",
                        "source_row": position,
                    }
                )
        conn.execute(insert(core_table(Item)), items)
        conn.execute(
            insert(core_table(RecipeRecord)),
            [
                {
                    "name": name,
                    "family": "test",
                    "params": "{}",
                    "fingerprint": name * 8,
                    "radius": 0.2,
                    "default_threshold": 0.1,
                }
                for name in ("r1", "r2")
            ],
        )
        pairs = {}
        for recipe_id in (1, 2):
            for _ in range(120):
                a, b = sorted(int(x) for x in rng.choice(images, 2, replace=False) + 1)
                # Distances on a grid of 0.01, so that some tie and the order falls to the ids.
                pairs[recipe_id, a, b] = round(float(rng.integers(0, 21)) / 100, 2)
        conn.execute(
            insert(core_table(Pair)),
            [
                {"recipe_id": r, "image_a": a, "image_b": b, "distance": d}
                for (r, a, b), d in pairs.items()
            ],
        )


def _matrix(rows: list, report_pairs, splits) -> dict:  # type: ignore[no-untyped-def]
    """Both sides as {(ref a, ref b): (items, images)}, zeros left out."""
    ref = {s.split_id: s.ref for s in splits}
    expected = {(ref[a], ref[b]): (int(n), int(m)) for a, b, n, m in rows}
    found = {(p.a, p.b): (p.items, p.images) for p in report_pairs if p.items or p.images}
    return {"expected": expected, "found": found}


def _items(conn: Connection, image_id: int, split_ids: list[int]) -> set[tuple[int, int]]:
    rows = conn.execute(
        text(
            "SELECT split_id, position FROM item WHERE image_id = :i AND split_id IN :splits"
        ).bindparams(_SPLITS),
        {"i": image_id, "splits": split_ids},
    )
    return {(s, p) for s, p in rows}


def _check_near(
    conn: Connection, tier: NearTier, recipe_id: int, ids: list[int], limit: int, matrix: bool
) -> None:
    params = {"splits": ids, "recipe": recipe_id, "t": tier.threshold}
    assert tier.conflict_images == conn.execute(NEAR_CONFLICTS_SQL, params).scalar_one()
    closest = conn.execute(NEAR_CONFLICT_PAIRS_SQL, {**params, "limit": limit}).all()
    assert [c.distance for c in tier.conflicts] == [d for _a, _b, d in closest]
    refs = {ref.ref: ref.split_id for ref in _splits(conn, ids)}
    for conflict, (a, b, _d) in zip(tier.conflicts, closest, strict=True):
        assert {(refs[i.split], i.position) for i in conflict.a} == _items(conn, a, ids)
        assert {(refs[i.split], i.position) for i in conflict.b} == _items(conn, b, ids)
    if matrix:
        compared = _matrix(
            conn.execute(NEAR_PAIRS_SQL, params).all(), tier.pairs, _splits(conn, ids)
        )
        assert compared["found"] == compared["expected"]


def _splits(conn: Connection, ids: list[int]):  # type: ignore[no-untyped-def]
    every = queries._all_splits(conn)
    return [every[i] for i in ids]


def _check(conn: Connection, report: OverlapReport, limit: int) -> None:
    ids = [s.split_id for s in report.splits]
    sizes = {s: (n, m) for s, n, m in conn.execute(SIZES_SQL, {"splits": ids})}
    assert [(s.items, s.images) for s in report.splits] == [sizes.get(i, (0, 0)) for i in ids]
    compared = _matrix(conn.execute(PAIRS_SQL, {"splits": ids}).all(), report.pairs, report.splits)
    assert compared["found"] == compared["expected"]
    for p in report.pairs:
        a = next(s for s in report.splits if s.ref == p.a)
        assert p.rate == (p.items / a.items if a.items else 0.0)
    within = {
        row[0]: tuple(int(x) for x in row[1:]) for row in conn.execute(WITHIN_SQL, {"splits": ids})
    }
    low = dict(conn.execute(LOW_SQL, {"splits": ids}).all())
    assert [
        (w.groups, w.items_in_groups, w.redundant, w.largest_group, w.low_info_items)
        for w in report.within
    ] == [(*within.get(i, (0, 0, 0, 0)), low.get(i, 0)) for i in ids]
    conflicting = conn.execute(CONFLICTS_SQL, {"splits": ids}).all()
    assert report.conflict_images == len(conflicting)
    assert report.conflict_items == sum(n for _i, n in conflicting)
    first = sorted(_digest(i) for i, _n in conflicting)[:limit]
    assert [c.digest for c in report.conflicts] == [d.hex() for d in first]
    for tier, recipe_id in zip(report.near, (1, 2), strict=True):
        _check_near(conn, tier, recipe_id, ids, limit, matrix=True)


def _check_leaks(conn: Connection, refs: list[str], limit: int) -> None:
    leaks = queries.cross_split_copies(conn, refs, limit=limit)
    ids = [s.split_id for s in queries.resolve_all(conn, refs)]
    multi = sorted(
        conn.execute(MULTI_SPLIT_SQL, {"splits": ids}).all(), key=lambda r: (-r[1], -r[2], r[0])
    )
    assert leaks.exact_images == len(multi)
    assert [m.image_digest for m in leaks.exact] == [_digest(r[0]).hex() for r in multi[:limit]]
    for tier, recipe_id in zip(leaks.near, (1, 2), strict=True):
        rows = conn.execute(
            CROSS_PAIRS_SQL, {"splits": ids, "recipe": recipe_id, "t": tier.threshold}
        ).all()
        assert tier.pairs_total == len(rows)
        assert [(p.a.image_digest, p.b.image_digest, p.distance) for p in tier.pairs] == [
            (_digest(a).hex(), _digest(b).hex(), d) for a, b, d in rows[:limit]
        ]


REFS = (["a"], ["a@v1"], ["a@v1:test", "a@v1:train"], ["a@v1", "a@v2", "b"], ["b"], ["a@v1:valid"])


@pytest.mark.parametrize(("seed", "label_cases"), [(1, 256), (2, 256), (3, 256), (4, 2)])
def test_overlap_equals_the_sql_joins(
    engine: Engine, seed: int, label_cases: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # label_cases 2: more labels than SQL codes, so the items are read as tuples.
    monkeypatch.setattr(queries, "_LABEL_CASES", label_cases)
    _random_catalog(engine, seed)
    with engine.connect() as conn:
        for refs in REFS:
            for limit in (0, 3, 100):
                _check(conn, queries.overlap(conn, refs, limit=limit), limit)
                _check_leaks(conn, refs, limit)
            for threshold in (0.0, 0.05, 0.2):
                report = queries.overlap(conn, refs, recipes=["r2"], threshold=threshold)
                ids = [s.split_id for s in report.splits]
                (tier,) = report.near
                _check_near(conn, tier, 2, ids, 20, matrix=True)
            conflicts = queries.label_conflicts(conn, refs, limit=3)
            report = queries.overlap(conn, refs, limit=3)
            assert conflicts.splits == report.splits
            assert (conflicts.exact_images, conflicts.exact_items, conflicts.exact) == (
                report.conflict_images,
                report.conflict_items,
                report.conflicts,
            )
            for mine, full in zip(conflicts.near, report.near, strict=True):
                assert mine.pairs == ()
                assert (mine.conflict_images, mine.conflicts) == (
                    full.conflict_images,
                    full.conflicts,
                )


def _store_every_version(engine: Engine) -> None:
    with writing(engine) as conn:
        for version_id in conn.execute(select(core_table(Version).c.id)).scalars().all():
            queries.store_overlap(conn, version_id)


@pytest.mark.parametrize("seed", [1, 2])
def test_stored_overlap_is_the_computed_one(
    engine: Engine, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _random_catalog(engine, seed)
    with engine.connect() as conn:
        computed = {
            (tuple(refs), limit): queries.overlap(conn, refs, limit=limit)
            for refs in REFS
            for limit in (0, 3, queries.STORED_LIMIT, 100)
        }
    _store_every_version(engine)
    stored_refs = [["a"], ["a@v1"], ["b"], ["a@v2"]]
    with engine.connect() as conn:
        # The stored reports answer without reading items or pairs.
        with monkeypatch.context() as patched:
            patched.setattr(queries, "_audit", _fails)
            for refs in stored_refs:
                for limit in (0, 3, queries.STORED_LIMIT):
                    report = queries.overlap(conn, refs, limit=limit)
                    _check(conn, report, limit)
                    if (tuple(refs), limit) in computed:
                        assert report == computed[tuple(refs), limit]
        # Any other question is computed: a subset or a mix of versions, a larger limit,
        # chosen recipes or a threshold.
        for refs in REFS:
            for limit in (0, 3, queries.STORED_LIMIT, 100):
                assert queries.overlap(conn, refs, limit=limit) == computed[tuple(refs), limit]
        with monkeypatch.context() as patched:
            patched.setattr(queries, "_audit", _fails)
            for refs, kwargs in (
                (["a@v1:test", "a@v1:train"], {}),
                (["a@v1:valid"], {}),
                (["a@v1", "a@v2"], {}),
                (["a@v1"], {"limit": queries.STORED_LIMIT + 1}),
                (["a@v1"], {"recipes": ["r1", "r2"]}),
                (["a@v1"], {"recipes": []}),
                (["a@v1"], {"recipes": ["r2"], "threshold": 0.1}),
            ):
                with pytest.raises(AssertionError, match="computed"):
                    queries.overlap(conn, refs, **kwargs)


def _fails(*_args: Any) -> Any:
    raise AssertionError("computed, not read from the stored report")


def test_stored_overlap_of_another_format_or_recipes_is_ignored(engine: Engine) -> None:
    _random_catalog(engine, 4)
    _store_every_version(engine)
    with engine.connect() as conn:
        stored = queries.overlap(conn, ["a@v1"])
    stored_report = core_table(StoredReport)
    with writing(engine) as conn:
        conn.execute(update(stored_report).values(format=queries.STORED_OVERLAP_FORMAT + 1))
    with engine.connect() as conn:
        assert queries.overlap(conn, ["a@v1"]) == stored
        assert queries._stored_overlap(conn, queries.resolve(conn, "a@v1")) is None
    with writing(engine) as conn:
        conn.execute(update(stored_report).values(format=queries.STORED_OVERLAP_FORMAT))
        # As after an exact-only first ingest: the stored reports know no near tiers, and the
        # catalog has its recipes since.
        for row in conn.execute(select(stored_report)).all():
            body = json.loads(row.body)
            body["near"] = []
            conn.execute(
                update(stored_report)
                .where(stored_report.c.version_id == row.version_id)
                .values(body=json.dumps(body))
            )
    with engine.connect() as conn:
        assert queries._stored_overlap(conn, queries.resolve(conn, "a@v1")) is None
        assert queries.overlap(conn, ["a@v1"]) == stored
    # A damaged stored report is computed instead (and `dsaudit check` names it).
    for body in ("{", '{"splits": []}', '{"splits": [{"dataset": "a"}]}'):
        with writing(engine) as conn:
            conn.execute(update(stored_report).values(body=body))
        with engine.connect() as conn:
            assert queries._stored_overlap(conn, queries.resolve(conn, "a@v1")) is None
            assert queries.overlap(conn, ["a@v1"]) == stored


@pytest.mark.parametrize("spread", [1, 10, 10_000])
def test_index_of_equals_a_dictionary_lookup(spread: int) -> None:
    """Dense ids take the lookup table, sparse ones the binary search: both must agree."""
    rng = np.random.default_rng(spread)
    ordered = np.unique(rng.integers(0, 50 * spread, 40))
    values = rng.integers(0, 60 * spread, 200)
    values[: ordered.size] = ordered
    where = {int(v): n for n, v in enumerate(ordered)}
    expected = [where.get(int(v), -1) for v in values]
    assert vectors.index_of(ordered, values).tolist() == expected
    assert vectors.index_of(ordered[:0], values).tolist() == [-1] * values.size


@sqlite_only
def test_items_of_searches_the_image_index(engine: Engine) -> None:
    """Looking up a few images' items must not scan the audited splits (no ANALYZE here)."""
    _random_catalog(engine, 2)
    seen: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    with engine.connect() as conn:
        splits = {s.split_id: s for s in queries.resolve(conn, "a@v1")}
        event.listen(conn, "before_cursor_execute", capture)
        # From about five images on, the split filter in SQL made SQLite scan the splits.
        found = queries._items_of(conn, list(range(1, 21)), splits)
        event.remove(conn, "before_cursor_execute", capture)
        assert found and all(refs for _digest, refs in found.values())
        ((statement, parameters),) = seen
        plan = " ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        )
    assert "item USING INDEX ix_item_image_id_split_id" in plan, plan


def _root(parent: dict[int, int], n: int) -> int:
    while parent[n] != n:
        n = parent[n]
    return n


def _reference_groups(conn: Connection, refs: list[str], threshold: float) -> list[tuple]:  # type: ignore[type-arg]
    """Duplicate groups by hand: per split, images with several items or joined by a pair of
    recipe 1 within the threshold whose two images both sit in the split, merged by a
    union-find; ordered by items, images, split id and first image id."""
    groups = []
    for split in queries.resolve_all(conn, refs):
        counts = dict(
            conn.execute(
                text("SELECT image_id, COUNT(*) FROM item WHERE split_id = :s GROUP BY image_id"),
                {"s": split.split_id},
            ).all()
        )
        edges = [
            (a, b)
            for a, b in conn.execute(
                text("SELECT image_a, image_b FROM pair WHERE recipe_id = 1 AND distance <= :t"),
                {"t": threshold},
            ).all()
            if a in counts and b in counts
        ]
        nodes = {i for i, n in counts.items() if n > 1} | {i for e in edges for i in e}
        parent = {n: n for n in nodes}
        for a, b in edges:
            parent[_root(parent, a)] = _root(parent, b)
        members: dict[int, list[int]] = {}
        for n in sorted(nodes):
            members.setdefault(_root(parent, n), []).append(n)
        for group in members.values():
            items = sum(counts[n] for n in group)
            if len(group) > 1 or items > 1:
                groups.append((items, len(group), split.split_id, group, split.ref))
    groups.sort(key=lambda g: (-g[0], -g[1], g[2], g[3][0]))
    return groups


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplicate_groups_equal_a_union_find(engine: Engine, seed: int) -> None:
    _random_catalog(engine, seed)
    with writing(engine) as conn:  # a recipe the library knows; its pairs are the random ones
        conn.execute(text("UPDATE recipe SET name = 'pixel-v1' WHERE id = 1"))
    with engine.connect() as conn:
        for refs in REFS:
            for threshold in (0.0, 0.1, 0.2):
                expected = _reference_groups(conn, refs, threshold)
                for limit in (0, 3, 1000):
                    report = queries.duplicate_groups(
                        conn, refs, recipe="pixel-v1", threshold=threshold, limit=limit
                    )
                    assert report.groups_total == len(expected)
                    assert [
                        (g.split, g.images, g.items, [m.image_digest for m in g.members])
                        for g in report.groups
                    ] == [
                        (ref, size, items, [_digest(i).hex() for i in group])
                        for items, size, _split, group, ref in expected[:limit]
                    ]
            exact = queries.duplicate_groups(conn, refs, exact_only=True, limit=1000)
            assert [(g.split, g.items) for g in exact.groups] == [
                (g[4], g[0]) for g in _reference_groups(conn, refs, -1.0)
            ]
