"""Verifying a catalog: ``dsaudit check``.

Each check is one SQL pass (or one read of source files) on a single read transaction, and
reports how many problems it found with a few examples:

- ``integrity``: SQLite's ``PRAGMA integrity_check`` (every page, index and constraint);
- ``foreign-keys``: SQLite's ``PRAGMA foreign_key_check`` (PostgreSQL enforces them itself);
- ``orphans``: images no item holds; signatures, band keys and pairs of missing images or
  recipes (these derived tables have no foreign keys, by design, so only this finds theirs);
- ``pair-order``: pairs whose ``image_a >= image_b`` (each pair is stored once, ordered);
- ``recipes``: each recipe's fingerprint recomputed from its stored parameters, and its name,
  family, radius and threshold columns agreeing with them;
- ``signatures``: every informative image an item holds is signed under every recipe of the
  catalog (an unsigned one would be missing from near-duplicate findings without a word; one
  no item holds is an orphan, and only ``orphans`` names it);
- ``band-keys``: every signed, informative image has one key per LSH band of its recipe, and no
  low-information image has any (they stay out of the band join);
- ``digests``: a seeded sample of items is read again from its source files, where those are
  still present and unchanged (same sha256), and the digest recomputed;
- ``stored-reports``: each overlap report an ingest stored (`catalog.queries.overlap` answers
  from them) equals the report computed now from the items and pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, text
from sqlalchemy.exc import DatabaseError

from catalog.loaders.arrays import file_digest
from catalog.loaders.folders import FOLDER_FORMAT
from catalog.pixels import canonical, digests
from catalog.preview import read_rows
from catalog.queries import stored_overlap_problems
from catalog.words import counted

CHECK_SCHEMA = "dsaudit.check/1"
DEFAULT_SAMPLE = 200
"""Items whose digest `check` recomputes from their source files, by default."""
EXAMPLES = 5
"""Problems listed per check; the count is always complete."""


@dataclass(frozen=True)
class CheckResult:
    """One verification: what it covers, how many problems it found, a few of them."""

    name: str
    description: str
    problems: int
    examples: tuple[str, ...]
    checked: int | None = None
    """How many things were verified (rows, recipes, items), where that is meaningful."""
    skipped: str | None = None
    """Why the check did not run (e.g. not applicable to the engine); None when it ran."""

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.problems == 0 else "problems")


@dataclass(frozen=True)
class CheckReport:
    """Every check of one catalog. ``ok`` when none found a problem."""

    catalog: str
    results: tuple[CheckResult, ...]
    sample: int
    seed: int

    @property
    def ok(self) -> bool:
        return all(result.problems == 0 for result in self.results)

    @property
    def problems(self) -> int:
        return sum(result.problems for result in self.results)


def _rows(conn: Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(text(sql), params))


def _result(
    name: str, description: str, problems: list[str], checked: int | None = None
) -> CheckResult:
    return CheckResult(
        name=name,
        description=description,
        problems=len(problems),
        examples=tuple(problems[:EXAMPLES]),
        checked=checked,
    )


def check_integrity(conn: Connection) -> CheckResult:
    description = "the database file's pages, indexes and constraints (PRAGMA integrity_check)"
    if conn.dialect.name != "sqlite":
        return CheckResult("integrity", description, 0, (), skipped="SQLite only")
    found = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA integrity_check")]
    return _result("integrity", description, [] if found == ["ok"] else found)


def check_foreign_keys(conn: Connection) -> CheckResult:
    description = "every reference points at an existing row (PRAGMA foreign_key_check)"
    if conn.dialect.name != "sqlite":
        return CheckResult(
            "foreign-keys", description, 0, (), skipped="PostgreSQL enforces foreign keys"
        )
    found = [
        # A WITHOUT ROWID table (item) has no rowid to show.
        f"{table} row {rowid} refers to a missing {parent} row"
        if rowid is not None
        else f"a row of {table} refers to a missing {parent} row"
        for table, rowid, parent, _fk in conn.exec_driver_sql("PRAGMA foreign_key_check")
    ]
    return _result("foreign-keys", description, found)


_ORPHANS = (
    (
        "image {0} is held by no item",
        """SELECT i.id, NULL FROM image i
        WHERE NOT EXISTS (SELECT 1 FROM item t WHERE t.image_id = i.id)""",
    ),
    (
        "signature of a missing image: image {0}, recipe {1}",
        """SELECT s.image_id, s.recipe_id FROM signature s
        WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = s.image_id)""",
    ),
    (
        "signature of a missing recipe: image {0}, recipe {1}",
        """SELECT s.image_id, s.recipe_id FROM signature s
        WHERE NOT EXISTS (SELECT 1 FROM recipe r WHERE r.id = s.recipe_id)""",
    ),
    (
        "band keys of a missing image: image {0}, recipe {1}",
        """SELECT DISTINCT b.image_id, b.recipe_id FROM band_key b
        WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = b.image_id)""",
    ),
    (
        "band keys of a missing recipe: image {0}, recipe {1}",
        """SELECT DISTINCT b.image_id, b.recipe_id FROM band_key b
        WHERE NOT EXISTS (SELECT 1 FROM recipe r WHERE r.id = b.recipe_id)""",
    ),
    (
        "pair with a missing image: images {0} and {1}",
        """SELECT p.image_a, p.image_b FROM pair p
        WHERE NOT EXISTS (SELECT 1 FROM image i WHERE i.id = p.image_a)
           OR NOT EXISTS (SELECT 1 FROM image i WHERE i.id = p.image_b)""",
    ),
    (
        "pair of a missing recipe: images {0} and {1}",
        """SELECT p.image_a, p.image_b FROM pair p
        WHERE NOT EXISTS (SELECT 1 FROM recipe r WHERE r.id = p.recipe_id)""",
    ),
)
"""(problem, query of its (first, second) ids). Signatures, band keys and pairs have no foreign
keys, by design (`catalog.schema.BandKey`, schema revision 0007), so only this finds theirs."""


def check_orphans(conn: Connection) -> CheckResult:
    problems = [
        message.format(first, second)
        for message, sql in _ORPHANS
        for first, second in _rows(conn, sql)
    ]
    return _result(
        "orphans",
        "images held by items; signatures, band keys and pairs of existing images and recipes",
        problems,
    )


def check_pair_order(conn: Connection) -> CheckResult:
    found = [
        f"pair ({a}, {b}) of recipe {recipe}: image_a must be below image_b"
        for recipe, a, b in _rows(
            conn, "SELECT recipe_id, image_a, image_b FROM pair WHERE image_a >= image_b"
        )
    ]
    checked = conn.exec_driver_sql("SELECT COUNT(*) FROM pair").scalar_one()
    return _result("pair-order", "each pair stored once, image_a < image_b", found, checked)


def recipe_fingerprint(params: str) -> str:
    """The fingerprint of stored recipe parameters: sha256 of their canonical JSON, as
    `catalog.recipes.base.Recipe.fingerprint` computes it."""
    canonical_json = json.dumps(json.loads(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical_json.encode("utf-8")).hexdigest()


def check_recipes(conn: Connection) -> CheckResult:
    problems = []
    recipes = _rows(
        conn, "SELECT id, name, family, params, fingerprint, radius, default_threshold FROM recipe"
    )
    for row in recipes:
        try:
            params = json.loads(row.params)
            computed = recipe_fingerprint(row.params)
        except (ValueError, TypeError) as exc:
            problems.append(f"recipe {row.name}: its parameters are not JSON ({exc})")
            continue
        if computed != row.fingerprint:
            problems.append(
                f"recipe {row.name}: stored fingerprint {row.fingerprint[:12]}, its parameters "
                f"give {computed[:12]}"
            )
        for column in ("name", "family", "radius", "default_threshold"):
            if not isinstance(params, dict) or params.get(column) != getattr(row, column):
                stated = params.get(column) if isinstance(params, dict) else None
                problems.append(
                    f"recipe {row.name}: column {column} is {getattr(row, column)!r}, its "
                    f"parameters say {stated!r}"
                )
    return _result(
        "recipes",
        "fingerprints recomputed from the stored parameters, and the columns agree with them",
        problems,
        len(recipes),
    )


def check_signatures(conn: Connection) -> CheckResult:
    # One seek of the signature table's primary key per informative image and recipe; an
    # unsigned image no item holds is an orphan (`check_orphans` names it), not a missing
    # near finding, and the item seek is made only for images found unsigned.
    unsigned = """
        FROM image i WHERE i.low_info = :no AND NOT EXISTS (
            SELECT 1 FROM signature s WHERE s.recipe_id = :recipe AND s.image_id = i.id)
        AND EXISTS (SELECT 1 FROM item t WHERE t.image_id = i.id)"""
    problems = 0
    examples: list[str] = []
    recipes = _rows(conn, "SELECT id, name, params FROM recipe ORDER BY id")
    for recipe in recipes:
        # A signature of another length than its recipe's crashed the next ingest's
        # verification (one scan of the recipe's signatures).
        size = _signature_bytes(recipe.params)
        if size is not None:
            wrong = "FROM signature WHERE recipe_id = :recipe AND length(value) <> :size"
            found = conn.execute(
                text(f"SELECT COUNT(*) {wrong}"), {"recipe": recipe.id, "size": size}
            ).scalar_one()
            problems += found
            for image_id, length in _rows(
                conn,
                f"SELECT image_id, length(value) {wrong} ORDER BY image_id LIMIT {EXAMPLES}",
                recipe=recipe.id,
                size=size,
            ):
                examples.append(
                    f"image {image_id}'s signature under {recipe.name} is "
                    f"{counted(length, 'byte')}, not {size}: ingest the sources again into a "
                    "new catalog"
                )
        found = conn.execute(
            text(f"SELECT COUNT(*) {unsigned}"), {"no": False, "recipe": recipe.id}
        ).scalar_one()
        problems += found
        if not found:
            continue
        for (image_id,) in _rows(
            conn,
            f"SELECT i.id {unsigned} ORDER BY i.id LIMIT {EXAMPLES}",
            no=False,
            recipe=recipe.id,
        ):
            examples.append(
                f"image {image_id} has no signature under {recipe.name}, so near findings miss "
                "its pairs (an exact-only ingest into a catalog made before 2026-12-02? pixels "
                "are not kept: ingest the sources again into a new catalog)"
            )
    checked = conn.execute(text("SELECT COUNT(*) FROM image WHERE low_info = :no"), {"no": False})
    return CheckResult(
        name="signatures",
        description="every informative image an item holds signed under every recipe of the "
        "catalog, each signature of its recipe's length",
        problems=problems,
        examples=tuple(examples[:EXAMPLES]),
        checked=checked.scalar_one() * len(recipes),
    )


def _signature_bytes(params: str) -> int | None:
    """The signature length a recipe's stored parameters state (None if they do not: the
    recipes check reports unreadable parameters)."""
    try:
        size = json.loads(params)["signature_bytes"]
    except (ValueError, TypeError, KeyError):
        return None
    return size if isinstance(size, int) else None


def _bands(params: str) -> int | None:
    try:
        bands = json.loads(params)["lsh"]["bands"]
    except (ValueError, TypeError, KeyError):
        return None
    return bands if isinstance(bands, int) else None


def check_band_keys(conn: Connection) -> CheckResult:
    # Per recipe, one pass over its band keys grouped by image (the primary key starts with
    # (recipe, level, band, key): a lookup per image would scan the recipe's keys once per
    # image), and only the rows that are wrong come back to Python.
    keyed = """
        SELECT image_id, COUNT(*) AS bands FROM band_key
        WHERE recipe_id = :recipe GROUP BY image_id"""
    problems = []
    signed = 0
    for recipe in _rows(conn, "SELECT id, name, params FROM recipe ORDER BY id"):
        want = _bands(recipe.params)
        signed += conn.execute(
            text("SELECT COUNT(*) FROM signature WHERE recipe_id = :recipe"),
            {"recipe": recipe.id},
        ).scalar_one()
        for image_id, low_info, have in _rows(
            conn,
            f"""
            WITH keyed AS ({keyed})
            SELECT s.image_id, i.low_info, COALESCE(k.bands, 0)
            FROM signature s
            JOIN image i ON i.id = s.image_id
            LEFT JOIN keyed k ON k.image_id = s.image_id
            WHERE s.recipe_id = :recipe AND (i.low_info = :yes OR COALESCE(k.bands, 0) <> :want)
            ORDER BY s.image_id""",
            recipe=recipe.id,
            yes=True,
            want=want if want is not None else -1,
        ):
            if low_info:
                problems.append(
                    f"image {image_id} is low-information but has a signature under {recipe.name}"
                )
            elif want is not None:
                problems.append(
                    f"image {image_id}: {have} of the {want} band keys of {recipe.name}"
                )
        for (image_id,) in _rows(
            conn,
            f"""
            WITH keyed AS ({keyed})
            SELECT k.image_id FROM keyed k JOIN image i ON i.id = k.image_id
            WHERE i.low_info = :yes ORDER BY k.image_id""",
            recipe=recipe.id,
            yes=True,
        ):
            problems.append(
                f"image {image_id} is low-information but has band keys under {recipe.name}"
            )
    return _result(
        "band-keys",
        "one key per LSH band for every signed informative image; none for low-information ones",
        problems,
        signed,
    )


@dataclass(frozen=True)
class _Sampled:
    split_id: int
    position: int
    ref: str
    digest: bytes
    source_id: int
    path: str
    format: str
    size: int
    sha256: str
    key: str
    row: int | None
    item_sha256: str | None = None
    """The sha256 of an image folder item's own file (`Item.source_sha256`)."""


def _sample_items(conn: Connection, sample: int, seed: int) -> list[_Sampled]:
    """``sample`` items drawn uniformly without replacement (seeded).

    Positions of a split run 0..n-1, so an item is drawn as (split, position) from the split
    sizes, and fetched by primary key: no scan of the item table.
    """
    sizes = _rows(
        conn,
        """
        SELECT s.id, d.name || '@' || v.tag || ':' || s.name AS ref,
               (SELECT COUNT(*) FROM item t WHERE t.split_id = s.id) AS n
        FROM split s JOIN version v ON v.id = s.version_id JOIN dataset d ON d.id = v.dataset_id
        ORDER BY s.id""",
    )
    total = sum(n for _s, _r, n in sizes)
    if total == 0 or sample <= 0:
        return []
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(total, size=min(sample, total), replace=False))
    bounds = np.cumsum([0] + [n for _s, _r, n in sizes])
    which = np.searchsorted(bounds, drawn, side="right") - 1
    picked = []
    for index, flat in zip(which.tolist(), drawn.tolist(), strict=True):
        split_id, ref, _n = sizes[index]
        row = conn.execute(
            text(
                """
                SELECT i.digest, t.source_id, o.path, o.format, o.size, o.sha256,
                       t.source_key, t.source_row, t.source_sha256
                FROM item t JOIN image i ON i.id = t.image_id JOIN source o ON o.id = t.source_id
                WHERE t.split_id = :split AND t.position = :position"""
            ),
            {"split": split_id, "position": flat - int(bounds[index])},
        ).one_or_none()
        if row is not None:
            position = flat - int(bounds[index])
            picked.append(
                _Sampled(split_id, position, f"{ref}:{position}", bytes(row[0]), *row[1:])
            )
    return picked


def check_digests(conn: Connection, sample: int, seed: int) -> CheckResult:
    picked = _sample_items(conn, sample, seed)
    description = (
        f"digests of {counted(len(picked), 'sampled item')} recomputed from their source files "
        f"(seed {seed}), where the files are present and unchanged"
    )
    by_source: dict[int, list[_Sampled]] = defaultdict(list)
    for item in picked:
        by_source[item.source_id].append(item)
    problems: list[str] = []
    verified = 0
    unavailable: dict[str, int] = defaultdict(int)
    for items in by_source.values():
        first = items[0]
        path = Path(first.path)
        if first.format == "memory":
            unavailable["given as arrays in memory"] += len(items)
            continue
        if first.format == FOLDER_FORMAT:
            verified += _check_folder_items(items, problems, unavailable)
            continue
        if not path.is_file():
            unavailable["whose source file is gone"] += len(items)
            continue
        if path.stat().st_size != first.size or file_digest(path) != first.sha256:
            unavailable["whose source file changed since ingest"] += len(items)
            continue
        by_key: dict[str, list[_Sampled]] = defaultdict(list)
        for item in items:
            by_key[item.key].append(item)
        for key, keyed in by_key.items():
            rows = [item.row for item in keyed if item.row is not None]
            pixels = read_rows(first.path, first.format, key, rows, first.size)
            for item in keyed:
                verified += 1
                if item.row is None or item.row not in pixels:
                    # The file is the one ingested (same size and sha256), so the item's
                    # provenance is what is wrong: its array or row is not in it.
                    problems.append(
                        f"{item.ref} ({first.path}): {key} row {item.row} is not in the file, "
                        "which is unchanged since ingest: the item's provenance is damaged"
                    )
                    continue
                digest = digests(canonical(pixels[item.row][None]))[0]
                if digest != item.digest:
                    problems.append(
                        f"{item.ref} ({first.path}: {key} row {item.row}): the file's pixels "
                        f"digest to {digest.hex()[:12]}, the catalog holds {item.digest.hex()[:12]}"
                    )
    if not picked:
        return CheckResult("digests", description, 0, (), checked=0, skipped="no items")
    # Counts of sampled items, each with why it could not be read back.
    reasons = ", ".join(f"{counted(n, 'item')} {why}" for why, n in unavailable.items())
    if verified == 0:
        return CheckResult(
            "digests", description, 0, (), checked=0, skipped=f"nothing re-readable: {reasons}"
        )
    if reasons:
        description += f" (not re-readable: {reasons})"
    return _result("digests", description, problems, verified)


def _check_folder_items(
    items: list[_Sampled], problems: list[str], unavailable: dict[str, int]
) -> int:
    """Recompute the digests of sampled items of one image folder from their own files, where
    those are still there with the sha256 recorded at ingest; returns how many were."""
    from catalog.loaders.folders import decode, read_regular_file  # Pillow: image folders only

    verified = 0
    for item in items:
        file = Path(item.path) / item.key
        try:
            data = read_regular_file(str(file))  # a pipe put in its place would block
        except OSError:
            unavailable["whose image file is gone"] += 1
            continue
        if hashlib.sha256(data).hexdigest() != item.item_sha256:
            unavailable["whose image file changed since ingest"] += 1
            continue
        try:
            pixels = decode(data)
        except Exception:  # decoded at ingest, so a file that no longer decodes is reported
            problems.append(f"{item.ref} ({file}): unchanged since ingest, but no longer decodes")
            continue
        verified += 1
        digest = digests(canonical(pixels[None]))[0]
        if digest != item.digest:
            problems.append(
                f"{item.ref} ({file}): the file's pixels digest to {digest.hex()[:12]}, the "
                f"catalog holds {item.digest.hex()[:12]}"
            )
    return verified


def check_stored_reports(conn: Connection) -> CheckResult:
    compared, problems = stored_overlap_problems(conn)
    return _result(
        "stored-reports",
        "each version's stored overlap report equals the one computed now",
        problems,
        compared,
    )


def check(
    conn: Connection, catalog: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0
) -> CheckReport:
    """Run every check on the connection (one read transaction: one consistent snapshot).

    Args:
        catalog: how to name the catalog in the report.
        sample: items whose digests are recomputed from their source files (0: none).
        seed: the sample's seed; the same seed draws the same items.
    """
    checks: tuple[tuple[str, Callable[[], CheckResult]], ...] = (
        ("integrity", lambda: check_integrity(conn)),
        ("foreign-keys", lambda: check_foreign_keys(conn)),
        ("orphans", lambda: check_orphans(conn)),
        ("pair-order", lambda: check_pair_order(conn)),
        ("recipes", lambda: check_recipes(conn)),
        ("signatures", lambda: check_signatures(conn)),
        ("band-keys", lambda: check_band_keys(conn)),
        ("digests", lambda: check_digests(conn, sample, seed)),
        ("stored-reports", lambda: check_stored_reports(conn)),
    )
    results = []
    for name, run in checks:
        try:
            results.append(run())
        except DatabaseError as exc:
            # A damaged file can fail any query; that is a finding of this check, not a crash.
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
            results.append(CheckResult(name, "could not run", 1, (f"the query failed: {reason}",)))
    return CheckReport(catalog=catalog, results=tuple(results), sample=sample, seed=seed)
