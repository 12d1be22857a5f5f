"""Near duplicates in the catalog: store signatures and band keys, join, verify, store pairs.

During an ingest, `NearIndexer.add` takes each chunk's new, informative images and computes
every recipe's signatures, LSH band keys and resident summary (`_resident`; vectorised,
`catalog.recipes`) in worker threads; signatures are stored as they come (and, for recipes
verified in blocks, also written to a scratch file, `_Spill`), band keys and summaries kept.
After the last chunk, `NearIndexer.finish` takes one recipe after the other: it stores the band
keys in one sorted insert while `WORKERS` threads join only the NEW images' keys (and their
probe keys, `Recipe.probe_keys`, which are never stored) against all band keys of the recipe,
each thread its share of the bands, band by band, ruling each band's proposals in or out on
the summaries at once (`_join_bands`); then it verifies the survivors exactly, tile by tile of
image-id blocks, the workers verifying while this thread reads the next blocks' signatures
(`NearIndexer._verify_blocks`), and stores the pairs within the recipe's radius while the next
recipe's join runs. The band join only proposes; the distance decides. Memory follows the
summaries (at most 136 bytes an image), the survivors and a few blocks of signatures, not the
candidates: at 1M images of `benchmarks/scale.py`, pixel-v1's join proposes 126M pairs.

The blow-up guard: a bucket (recipe, band, key) with thousands of members (thousands of
near-identical images) would propose millions of pairs. Inside one bucket, members are taken in
image-id order; the first `BUCKET_CAP` form all their pairs, and every later member is paired
only with the first `BUCKET_LINK`. Candidates per bucket are then at most
``BUCKET_CAP²/2 + BUCKET_LINK·size``: linear in the bucket, and a cluster of copies stays
connected, so duplicate groups (connected components) are still whole. Pairs are then a lower
bound: the ingest keeps how many buckets went over the cap (`NearStats`, stored in
``near_ingest``), and reports say when their near counts may be cut
(`catalog.queries.capped_buckets`).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import NoReturn

import numpy as np
from sqlalchemy import Connection, Index, select

from catalog.db import (
    Columns,
    bulk_insert,
    create_indexes,
    describe,
    drop_indexes_for,
    fetch_batches,
    fetch_integers,
    fetch_rows,
    lock_pair_finding,
    lock_recipe_choice,
    placeholder,
    scratch_directory,
    scratch_error,
)
from catalog.errors import SchemaError, UsageError
from catalog.pixels import colour_channels
from catalog.recipes import DEFAULT_RECIPES, Recipe, Screen, get_recipe
from catalog.schema import BandKey, Image, Pair, RecipeRecord, Signature, core_table
from catalog.vectors import lookup, take_rows, unique

BUCKET_CAP = 64
"""Members of one bucket that are all compared with each other."""
BUCKET_LINK = 8
"""How many of a big bucket's first members each later member is compared with."""
MAX_PENDING = 2
"""Chunks whose signing may be under way at once (each holds its pixels: the memory bound)."""
WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads sharing a recipe's band join and its verification (each holds one band's or one
tile's arrays: memory grows with them, hence at most 4)."""
VERIFY_BATCH = 16_384
"""Candidate pairs verified per numpy call (memory bound per worker: 3 x batch x the bytes of a
screen level or signature)."""
PREFILTER_BATCH = 262_144
"""Proposed pairs the band join rules in or out per numpy call: about one piece of a band
(`_band_pieces`; memory bound: 2 x batch x the resident summary's bytes)."""
RESIDENT_BYTES = 64
"""Signatures up to this size are the band join's resident summary themselves (`_resident`)."""
RESIDENT_SLICE = 50_000
"""Stored signatures read at once to summarise catalogued images."""
COMPACT_AT = 8_000_000
"""Band-join survivors that arrive before repeats are removed again (8 bytes each)."""
VERIFY_BLOCK_BYTES = 32 * 2**20
"""Signature bytes of one block of image ids in `NearIndexer._verify_blocks`, a few of which
are held at once. At 1M images the ingest peaked at 1.77 GiB with 32 MB blocks, 2.01 GiB with
64 MB; verification took 44 s against 38 s (one run each)."""
BLOCK_SCAN_SHARE = 0.25
"""Catalogued images wanted from a block, as a share of its ids, from which verification reads
the block's signatures by one range scan rather than by looking each image up."""
LOOKUP_BATCH = 5000

PAIR_INDEX_TASK = "pair index"
"""Progress task of rebuilding the pair table's indexes after a large insert (`finish`)."""
SEEK_BANDS = 4
"""Bands whose old members are read, merged and capped at once (`NearIndexer._old_members`)."""

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _NewKeys:
    """The new keys of one recipe's incremental ingest, as `NearIndexer._old_members` looks
    them up: ``distinct[b]`` is band b's sorted distinct keys; ``band`` and ``key`` list all of
    them in (band, key) order, the n-th row being the key of ordinal n in ``dsaudit_new_key``."""

    distinct: list[np.ndarray]
    band: np.ndarray
    key: np.ndarray


@dataclass(frozen=True)
class NearStats:
    """What the near-duplicate stage of one ingest did for one recipe."""

    recipe: str
    images: int
    """New images signed (low-information images are left out)."""
    candidates: int
    """Pairs the band join proposed: distinct within each band, and counted in every band that
    proposes them (the join never holds all bands' pairs at once, which counting each pair once
    would need; most far pairs share one band, near pairs many)."""
    pairs: int
    """Candidates within the recipe's radius, stored."""
    largest_bucket: int
    capped_buckets: int
    """Buckets larger than `BUCKET_CAP`, where the guard limited the candidates."""
    seconds: float


def _release_memory() -> None:
    """Hand the memory freed so far back to the system (glibc's ``malloc_trim``; elsewhere
    nothing).

    numpy's arrays below 32 MB come from malloc's heaps, one heap per thread that allocated;
    what a stage frees stays in them, so the next stage's peak (verification after the band
    join) stacked on top of the last one's. Called between stages, it took the peak of a 1M
    image ingest from 2.58 to 2.10 GB; at 250k it cost no measurable time.
    """
    trim = _MALLOC_TRIM
    if trim is not None:
        trim(0)


def _load_malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _recipe_params(recipe: Recipe) -> str:
    return json.dumps(recipe.params(), sort_keys=True, separators=(",", ":"))


def ensure_recipes(conn: Connection, recipes: Sequence[Recipe]) -> dict[str, int]:
    """The catalog ids of ``recipes``, registering the ones it has not seen.

    Raises:
        SchemaError: the catalog holds a recipe of the same name with other parameters: its
            stored values would not be comparable with this release's.
    """
    table = core_table(RecipeRecord)
    ids: dict[str, int] = {}
    for recipe in recipes:
        row = conn.execute(
            select(table.c.id, table.c.fingerprint).where(table.c.name == recipe.name)
        ).first()
        if row is None:
            ids[recipe.name] = conn.execute(
                table.insert().returning(table.c.id),
                {
                    "name": recipe.name,
                    "family": recipe.family,
                    "params": _recipe_params(recipe),
                    "fingerprint": recipe.fingerprint(),
                    "radius": recipe.radius,
                    "default_threshold": recipe.default_threshold,
                },
            ).scalar_one()
        elif row.fingerprint != recipe.fingerprint():
            raise SchemaError(
                f"the catalog's recipe {recipe.name} has fingerprint {row.fingerprint[:12]}, "
                f"this dsaudit computes {recipe.fingerprint()[:12]}: their values are not "
                "comparable; use the dsaudit release that made the catalog"
            )
        else:
            ids[recipe.name] = row.id
    return ids


def resolve_recipes(
    conn: Connection, names: Sequence[str] | None = None, *, near: bool = True
) -> tuple[Recipe, ...]:
    """The recipes an ingest into this catalog signs with.

    A catalog keeps the recipes it was made with: every recipe it has registered is used again,
    so each of them covers every image signed since. ``names`` (``dsaudit ingest --recipe``)
    chooses them at a catalog's first ingest; without ``names`` a new catalog gets
    `DEFAULT_RECIPES`. A catalog made exact-only (``near`` False: no recipes) stays so.

    Whatever would leave an informative image unsigned under a recipe of the catalog is
    refused, because near-duplicate findings would then miss its pairs without a word, and its
    pixels are not kept to sign it later: a recipe new to a catalog that holds images (signed
    or exact-only), and an exact-only ingest into a catalog that has recipes.

    Returns:
        the recipes, empty for an exact-only ingest.

    Raises:
        UsageError: an unknown recipe name, a new recipe for a catalog holding images, or an
            exact-only ingest into a catalog with recipes.
        SchemaError: the catalog's recipes were made by a release that does not know them.
    """
    table = core_table(RecipeRecord)

    def listed() -> list[str]:
        return list(conn.execute(select(table.c.name).order_by(table.c.id)).scalars().all())

    # Which recipes the catalog has is decided under `lock_recipe_choice`: an ingest that adds
    # recipes holds it exclusively, every other ingest shared, and each reads the recipes again
    # once it holds it (another ingest may have added some, or taken back a failed first
    # ingest's, while this one waited). Without the exclusive lock, a recipe added beside a
    # running ingest would miss that ingest's images.
    shared = not near or not _additions(listed(), names)
    lock_recipe_choice(conn, shared=shared)
    registered = listed()
    if near and shared and _additions(registered, names):
        lock_recipe_choice(conn, shared=False)
        registered = listed()
    catalog = describe(str(conn.engine.url))
    if not near:
        if registered:
            raise UsageError(
                f"{catalog}: the catalog signs every image with {', '.join(registered)}: an "
                "exact-only ingest would leave its new images unsigned, and near-duplicate "
                "findings would miss them without a word; drop --exact-only"
            )
        return ()
    chosen: list[Recipe] = []
    for name in registered:
        try:
            chosen.append(get_recipe(name))
        except ValueError:
            raise SchemaError(
                f"the catalog signs images with recipe '{name}', which this dsaudit does not "
                "know; use the dsaudit release that made the catalog"
            ) from None
    added = _additions(registered, names)
    if added and conn.execute(select(core_table(Image).c.id).limit(1)).first() is not None:
        if not registered:
            raise UsageError(
                f"{catalog}: the catalog was made exact-only: its images were never signed, and "
                "their pixels are not kept, so near-duplicate findings would miss them without "
                "a word; ingest with --exact-only, or into a new catalog to find near duplicates"
            )
        missing = ", ".join(recipe.name for recipe in added)
        raise UsageError(
            f"{catalog}: the catalog already holds images that were never signed under "
            f"{missing}, and their pixels are not kept; choose recipes at a catalog's first "
            "ingest, or ingest into a new catalog"
        )
    return (*chosen, *added)


def _additions(registered: Sequence[str], names: Sequence[str] | None) -> list[Recipe]:
    """The recipes a near ingest naming ``names`` would add to a catalog that has
    ``registered``: the named ones it lacks, or `DEFAULT_RECIPES` for a catalog without any.

    Raises:
        UsageError: an unknown recipe name.
    """
    if names is None:
        return [] if registered else list(DEFAULT_RECIPES)
    added = []
    for name in dict.fromkeys(names):
        try:
            recipe = get_recipe(name)
        except ValueError as error:
            raise UsageError(f"--recipe: {error}") from None
        if recipe.name not in registered:
            added.append(recipe)
    return added


UNREGISTER_WAIT = "10s"
"""How long `unregister_recipes` waits for other ingests (a PostgreSQL interval)."""


def register_recipes(conn: Connection, names: Sequence[str] | None) -> list[int]:
    """Register the recipes an ingest will sign with (`resolve_recipes`, `ensure_recipes`).

    Returns:
        the ids of the recipes this call added to the catalog (none if it had them all).
    """
    table = core_table(RecipeRecord)
    chosen = resolve_recipes(conn, names)  # holds the choice: no registration is in flight
    before = set(conn.execute(select(table.c.id)).scalars())
    ids = ensure_recipes(conn, chosen).values()
    return [recipe_id for recipe_id in ids if recipe_id not in before]


def unregister_recipes(conn: Connection, ids: Sequence[int]) -> None:
    """Take back the recipes a failed first ingest registered (`register_recipes`), so that
    its bad input leaves the catalog as it was: one without images may still become exact-only
    or sign with other recipes.

    PostgreSQL registers them in a transaction of their own, before the ingest's (SQLite's
    ingest registers and rolls back in one). This waits for the recipe choice exclusively
    (`catalog.db.lock_recipe_choice`), that is for every ingest that signs with them to end:
    each holds it shared for its transaction. The recipes stay if the catalog holds images by
    then, because another ingest committed images under them, and after a wait of
    `UNREGISTER_WAIT` for the lock (the error being reported should not wait behind a long
    ingest): the catalog then keeps them, as the README says.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{UNREGISTER_WAIT}'")
    lock_recipe_choice(conn, shared=False)
    if conn.execute(select(core_table(Image).c.id).limit(1)).first() is None:
        table = core_table(RecipeRecord)
        conn.execute(table.delete().where(table.c.id.in_(ids)))


def candidate_pairs(
    band: np.ndarray,
    key: np.ndarray,
    image: np.ndarray,
    new: np.ndarray,
    cap: int = BUCKET_CAP,
    link: int = BUCKET_LINK,
    probe: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Pairs proposed by shared buckets, at least one side new, with the blow-up guard.

    The reference form of the band join, all pairs at once; an ingest runs the same
    `band_proposals` band by band and never holds them all (`NearIndexer.finish`).

    Args:
        band: int64 (m,) band index of each membership row, any order.
        key: int64 (m,) band key of each row; a bucket is one (band, key).
        image: int64 (m,) image id of each row, in [0, 2**31).
        new: bool (m,) whether the row's image is new in this ingest.
        cap, link: see `BUCKET_CAP`, `BUCKET_LINK`.
        probe: bool (m,) whether the row is a probe key (`Recipe.probe_keys`, always of a new
            image); two probe rows never make a pair. Default: no probe rows.

    Returns:
        (pairs int64 (p, 2) with pairs[:, 0] < pairs[:, 1], unique; the largest bucket's size;
        the number of buckets over ``cap``)
    """
    if band.size == 0:
        return np.empty((0, 2), np.int64), 0, 0
    # Rows are grouped by band with one stable sort (a radix sort on int16 band numbers): a
    # mask per band cost a pass over all rows for each band.
    narrow = np.int16 if int(band.min()) >= 0 and int(band.max()) < 2**15 else np.int64
    order = np.argsort(band.astype(narrow), kind="stable")
    bounds = np.flatnonzero(np.diff(band[order])) + 1
    if probe is None:
        probe = np.zeros(key.size, bool)
    found, largest, capped = [], 0, 0
    for rows in np.split(order, bounds):
        pairs, big, over = band_proposals(key[rows], image[rows], new[rows], probe[rows], cap, link)
        found.append(pairs)
        largest, capped = max(largest, big), capped + over
    return unpack(unique(np.concatenate(found))), largest, capped


def band_proposals(
    key: np.ndarray,
    image: np.ndarray,
    new: np.ndarray,
    probe: np.ndarray,
    cap: int = BUCKET_CAP,
    link: int = BUCKET_LINK,
) -> tuple[np.ndarray, int, int]:
    """The distinct pairs one band proposes (`candidate_pairs` for the rows of one band).

    Returns:
        (sorted distinct pairs packed as ``low << 32 | high`` (`unpack`), the largest bucket's
        size, buckets over ``cap``)
    """
    big, over, members, pieces = _band_pieces(key, image, new, probe, cap, link)
    return _distinct(_packed(members, pieces)), big, over


def _distinct(pieces: Iterable[np.ndarray]) -> np.ndarray:
    """The sorted distinct packed pairs of all ``pieces``."""
    found = list(pieces)
    return unique(np.concatenate(found), in_place=True) if found else np.empty(0, np.int64)


def _packed(
    members: np.ndarray, pieces: Iterable[tuple[np.ndarray, np.ndarray]]
) -> Iterator[np.ndarray]:
    """`_band_pieces`' pairs of positions as pairs of their images, packed ``low << 32 | high``
    (`unpack`)."""
    for left, right in pieces:
        yield _pack(members[left], members[right])


def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs of image ids, each as ``low << 32 | high`` (`unpack`)."""
    return (np.minimum(a, b) << 32) | np.maximum(a, b)


def unpack(packed: np.ndarray) -> np.ndarray:
    """int64 (p, 2) pairs from pairs packed as ``low << 32 | high`` (`band_proposals`)."""
    out = np.empty((packed.size, 2), np.int64)
    np.right_shift(packed, 32, out=out[:, 0])
    np.bitwise_and(packed, 0xFFFFFFFF, out=out[:, 1])
    return out


def _band_pieces(
    key: np.ndarray,
    image: np.ndarray,
    new: np.ndarray,
    probe: np.ndarray,
    cap: int = BUCKET_CAP,
    link: int = BUCKET_LINK,
    piece: int | None = None,
) -> tuple[int, int, np.ndarray, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """`candidate_pairs` for the rows of one band, where a bucket is one key, a piece at a time.

    The pairs are expanded about ``piece`` (default `PREFILTER_BATCH`) at a time, a row's pairs
    in one piece, so memory follows the piece, not the band: at 1M images a band of pixel-v1
    proposes 5M pairs, and expanding them at once held about 0.3 GB per band in flight. When no
    image has two rows in the band (no probe keys), a pair shares at most one bucket of it, so
    the pieces never repeat a pair of images; with probe keys they may.

    Returns:
        (the largest bucket's size, buckets over ``cap``, the band's image ids bucket by
        bucket, the pieces: pairs of positions into those ids, ``(left, right)`` int64 arrays;
        `_packed` makes them pairs of images)
    """
    if image.size == 0:
        return 0, 0, image, iter(())
    if int(image.min()) < 0 or int(image.max()) >= 2**31:
        raise ValueError("image ids must lie in [0, 2**31) to be joined")
    order = np.lexsort((image, key))
    key, image, new, probe = key[order], image[order], new[order], probe[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, key.size])
    first = np.repeat(starts, sizes)
    # Rank of each row inside its bucket; a row at rank j pairs with ranks [0, j) while j < cap,
    # and with ranks [0, link) after that.
    partners = np.arange(key.size) - first
    np.putmask(partners, partners >= cap, min(link, cap))
    big, over = int(sizes.max()), int((sizes > cap).sum())
    ends = np.cumsum(partners)
    step = piece or PREFILTER_BATCH
    cuts = np.r_[0, np.searchsorted(ends, np.arange(step, int(ends[-1]), step), "right"), key.size]

    def pieces() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            counts = partners[lo:hi]
            total = int(counts.sum())
            if total == 0:
                continue
            left = np.repeat(np.arange(lo, hi), counts)
            right = np.repeat(first[lo:hi] - np.cumsum(counts) + counts, counts)
            right += np.arange(total)
            # Two probes meeting relate two images by a shift of two steps: not a candidate.
            keep = new[left] | new[right]
            keep &= image[left] != image[right]
            keep &= ~(probe[left] & probe[right])
            yield left[keep], right[keep]

    return big, over, image, pieces()


_Resident = np.ndarray | Screen | None
"""What the band join keeps in memory for every image it joins, to rule candidates out before
exact verification (`_resident`): a recipe's whole signatures when they are small (the exact
distance then decides at once), else the coarsest level of its screen, else nothing."""

_Signed = tuple[np.ndarray, np.ndarray, np.ndarray | None, _Resident, Screen | None]
"""(signatures (n, S), band keys (n, bands), probe keys (n, probes, bands) or None, resident,
the screen's finer levels or None (`_summaries`))."""


def _summaries(recipe: Recipe, signatures: np.ndarray) -> tuple[_Resident, Screen | None]:
    """(`_resident`, the levels of the recipe's screen after the coarsest, or None): what the
    band join keeps in memory, and what verification screens its survivors with next."""
    if recipe.signature_bytes <= RESIDENT_BYTES:
        return signatures, None
    screen = recipe.screen(signatures)
    return (None, None) if screen is None else (screen.coarsest(), _finer(screen))


def _resident(recipe: Recipe, signatures: np.ndarray) -> _Resident:
    """The in-memory summary of some images the band join rules candidates out with.

    Bounded per image (at most `RESIDENT_BYTES` of signature, or the screen's coarsest level:
    136 bytes for pixel-v1 against its 1,032-byte signature), so a million images' summaries
    fit where their signatures and full screens (1.7 GB for pixel-v1) would not.
    """
    return _summaries(recipe, signatures)[0]


def _finer(screen: Screen | None) -> Screen | None:
    """``screen`` without its coarsest level, or None when it has no other."""
    if screen is None or not screen.levels[1:]:
        return None
    return Screen(levels=screen.levels[1:], scale=screen.scale)


def _screen_bytes(screen: Screen) -> np.ndarray:
    """uint8 (n, W): each image's row of every level, then its scale, as bytes
    (`_screen_from_bytes` reads them back)."""
    n = screen.scale.size
    parts = [
        np.ascontiguousarray(vectors).view(np.uint8).reshape(n, vectors.shape[1] * vectors.itemsize)
        for vectors, _ in screen.levels
    ]
    parts.append(np.ascontiguousarray(screen.scale, np.float64).view(np.uint8).reshape(n, 8))
    return np.concatenate(parts, axis=1)


def _screen_from_bytes(rows: np.ndarray, like: Screen) -> Screen:
    """The screen whose `_screen_bytes` are ``rows``, its levels shaped like ``like``'s."""
    levels, at = [], 0
    for vectors, factor in like.levels:
        width = vectors.dtype.itemsize * vectors.shape[1]
        levels.append((np.ascontiguousarray(rows[:, at : at + width]).view(vectors.dtype), factor))
        at += width
    scale = np.ascontiguousarray(rows[:, at : at + 8]).view(np.float64).reshape(-1)
    return Screen(levels=tuple(levels), scale=scale)


def _concatenate(parts: Sequence[_Resident]) -> _Resident:
    if not parts or parts[0] is None:
        return None
    if isinstance(parts[0], Screen):
        return Screen.concatenate([p for p in parts if isinstance(p, Screen)])
    return np.concatenate([p for p in parts if isinstance(p, np.ndarray)])


def _rows(resident: _Resident, index: np.ndarray) -> _Resident:
    if resident is None:
        return None
    return resident.rows(index) if isinstance(resident, Screen) else take_rows(resident, index)


def _sign(recipe: Recipe, unit: np.ndarray) -> _Signed:
    """Signatures, band keys, probe keys and resident summary of a chunk under one recipe;
    pure, runs in a worker thread."""
    signatures = recipe.signatures(unit)
    return (
        signatures,
        recipe.band_keys(signatures),
        recipe.probe_keys(signatures),
        *_summaries(recipe, signatures),
    )


_Verified = tuple[np.ndarray, np.ndarray]
"""(int64 (p, 2) pairs within the radius, float64 (p,) their distances)."""


@dataclass
class _Proposed:
    """What the band join of one recipe left for exact verification (`_join_bands`)."""

    survivors: np.ndarray
    """Sorted distinct pairs, packed (`unpack`), that the resident summary did not rule out."""
    proposals: int
    """Pairs proposed, counted once in each band that proposes them."""
    largest: int
    capped: int

    @staticmethod
    def merge(parts: Sequence[_Proposed]) -> _Proposed:
        """One recipe's join from the joins of its shares of the bands (`_join_bands`).

        Takes the parts' survivors (they are left empty), so theirs are freed once joined into
        one array rather than held through its sort (0.25 GB at 1M images).
        """
        pieces = [p.survivors for p in parts]
        for p in parts:
            p.survivors = np.empty(0, np.int64)
        return _Proposed(
            survivors=_compacted(pieces),
            proposals=sum(p.proposals for p in parts),
            largest=max(p.largest for p in parts),
            capped=sum(p.capped for p in parts),
        )


_Keep = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``keep(left, right)``: which pairs of positions ``(left[k], right[k])`` may be within the
radius (bool (p,)); `_keeper`."""


def _keeper(recipe: Recipe, resident: _Resident) -> Callable[[np.ndarray], _Keep]:
    """``keeper(rows)`` is `_Keep` over positions among some images, ``rows`` being their rows
    of ``resident`` (int64 (m,)): one band's members, bucket by bucket (`_join_bands`)."""
    if resident is None:
        return lambda _rows: lambda left, _right: np.ones(left.size, bool)
    if isinstance(resident, Screen):
        return lambda rows: (
            lambda left, right: resident.may_be_within(rows[left], rows[right], recipe.radius)
        )
    verify = recipe.verifier(resident)
    return lambda rows: lambda left, right: verify(rows[left], rows[right]) <= recipe.radius


def _join_bands(
    recipe: Recipe,
    bands: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    ids: np.ndarray,
    resident: _Resident,
) -> _Proposed:
    """Propose pairs band by band and keep those the resident summary does not rule out.

    A band's members are looked up once (their rows of ``resident``), and a proposal stays a
    pair of positions among them until it survives: looking up both images of every proposal,
    after packing and unpacking it, cost 14 % of phash256-v2's join (3 bands of the 1M
    benchmark: 3.5-3.8 s against 4.1-4.4 s).

    Only the survivors are held (compacted as they grow), never every band's proposals: at a
    million images of the scale benchmark pixel-v1's band join proposes 113M distinct pairs,
    1.8 GB as unpacked pairs, where the coarsest screen level leaves a fraction of them.

    Args:
        bands: (key, image, new, probe) rows of each band in turn (`band_proposals`).
        ids: sorted distinct ids of every image in ``bands``; ``resident`` rows in that order.
    """
    row_of = lookup(ids)
    keeper = _keeper(recipe, resident)
    anywhere = keeper(np.arange(ids.size))  # ``keep`` over rows of ``resident`` themselves
    kept: list[np.ndarray] = []
    fresh = proposals = largest = capped = 0
    for key, image, new, probe in bands:
        big, over, members, pieces = _band_pieces(key, image, new, probe)
        largest, capped = max(largest, big), capped + over
        if probe.any():
            # An image with probe keys has several rows in the band: a pair may come from two
            # buckets, so the band's pairs are made distinct first, counted once
            # (`band_proposals`), and looked up by their images.
            pairs = _distinct(_packed(members, pieces))
            proposals += pairs.size
            for start in range(0, pairs.size, PREFILTER_BATCH):
                batch = pairs[start : start + PREFILTER_BATCH]
                kept.append(batch[anywhere(row_of(batch >> 32), row_of(batch & 0xFFFFFFFF))])
                fresh += kept[-1].size
        else:
            keep = keeper(row_of(members))
            for left, right in pieces:
                proposals += left.size
                # ``right`` ranks first in its bucket, which is in id order: the lower id
                # first, as in a packed pair.
                chosen = keep(right, left)
                kept.append(_pack(members[right[chosen]], members[left[chosen]]))
                fresh += kept[-1].size
        # Compacted when COMPACT_AT pairs came since the last time, not whenever the distinct
        # survivors exceed it: at 1M images they do after a few bands, and sorting them again
        # after every band took seconds of each worker.
        if fresh > COMPACT_AT:
            kept, fresh = [_compacted(kept)], 0
    return _Proposed(_compacted(kept), proposals, largest, capped)


def _compacted(parts: list[np.ndarray]) -> np.ndarray:
    """The sorted distinct values of the int64 ``parts``, a list it empties: each part is freed
    once copied into the whole rather than held through the sort (at 1M images the survivors
    are 0.1-0.25 GB)."""
    joined = np.concatenate(parts) if parts else np.empty(0, np.int64)
    parts.clear()
    return unique(joined, in_place=True)


def _lexsorted(*columns: np.ndarray) -> bool:
    """Whether the rows of these equal-length columns are in ascending lexicographic order,
    the first column most significant (one pass, where `np.lexsort` sorts)."""
    tied = np.ones(max(columns[0].size - 1, 0), bool)  # rows k, k + 1 equal so far
    for column in columns:
        before, after = column[:-1], column[1:]
        if (tied & (after < before)).any():
            return False
        tied &= after == before
    return True


def band_level(images: int) -> int:
    """The level an ingest's band keys are stored at under a recipe it signed ``images`` (> 0)
    images with: ``floor(log2(images))`` (`catalog.schema.BandKey`)."""
    if images < 1:
        raise ValueError(f"band_level: {images} images")
    return images.bit_length() - 1


def _band_groups(bands: np.ndarray, count: int) -> list[np.ndarray]:
    """The indexes of the rows of each band 0 .. count - 1 (any order of rows)."""
    order = np.argsort(bands, kind="stable")
    bounds = np.searchsorted(bands[order], np.arange(count + 1))
    return [order[bounds[band] : bounds[band + 1]] for band in range(count)]


def _merge_levels(
    distinct: Sequence[np.ndarray], bands: np.ndarray, key: np.ndarray, image: np.ndarray
) -> np.ndarray:
    """The order that sorts rows by (band, key, image), where the rows are runs (one per level)
    each sorted so already.

    Args:
        distinct: each band's sorted distinct keys; every row's key is among its band's.
        bands, key, image: int64 (m,) the rows, run after run.
    """
    # Each row's bucket as its rank among all buckets, band after band: one integer that
    # sorts like (band, key). Rows grouped by band first (a mask per band cost 0.4 s on 5.5M
    # rows of 24 bands).
    offsets = np.cumsum([0, *(values.size for values in distinct)])
    bucket = np.empty(bands.size, np.int64)
    for band, rows in enumerate(_band_groups(bands, len(distinct))):
        bucket[rows] = offsets[band] + np.searchsorted(distinct[band], key[rows])
    if bands.size and (int(image.min()) < 0 or int(image.max()) >= 2**32 or offsets[-1] >= 2**31):
        return np.lexsort((image, bucket))
    # A stable sort of a few sorted runs is a merge (numpy's timsort finds the runs).
    return np.argsort((bucket << 32) | image, kind="stable")


def _band_rows(
    keys: np.ndarray,
    probes: np.ndarray,
    images: np.ndarray,
    old_band: np.ndarray,
    old_keys: np.ndarray,
    old_images: np.ndarray,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The (key, image, new, probe) rows of each band in turn (`band_proposals`).

    Args:
        keys: int64 (n, bands) the new images' band keys; probes: (n, probes, bands) their
            probe keys; images: (n,) their ids.
        old_band, old_keys, old_images: one row per old member (`NearIndexer._old_members`).
        share: (k, m): only bands k, k + m, k + 2m, ... (worker k of m).
    """
    probe_images = np.repeat(images, probes.shape[1])
    new_rows = np.ones(images.size + probe_images.size, bool)
    probe_rows = np.repeat([False, True], [images.size, probe_images.size])
    # Old members grouped by band once; each band's rows are built only when the join reaches
    # it, so no array of all n x bands rows is ever made (1.2 GB at 1M images).
    old_rows = _band_groups(old_band, keys.shape[1])
    for band in range(share[0], keys.shape[1], share[1]):
        old = old_rows[band]
        yield (
            np.concatenate([keys[:, band], probes[:, :, band].reshape(-1), old_keys[old]]),
            np.concatenate([images, probe_images, old_images[old]]),
            np.concatenate([new_rows, np.zeros(old.size, bool)]),
            np.concatenate([probe_rows, np.zeros(old.size, bool)]),
        )


@dataclass(frozen=True)
class _Side:
    """Images on one side of the candidate pairs being verified, with what verifying needs."""

    ids: np.ndarray
    """int64 (n,) sorted distinct image ids."""
    signatures: np.ndarray
    """uint8 (n, S), row k the signature of image ``ids[k]``."""
    screen: Screen | None
    """`Recipe.screen` of the signatures, without the levels the band join already applied."""


def _side(recipe: Recipe, ids: np.ndarray, signatures: np.ndarray, *, screened: bool) -> _Side:
    """A `_Side`; ``screened``: the band join ruled its pairs in on the screen's coarsest level
    (the resident summary, `_resident`), so only the finer levels are kept."""
    screen = recipe.screen(signatures) if ids.size else None
    return _Side(ids, signatures, _finer(screen) if screened else screen)


def _verify(recipe: Recipe, pairs: np.ndarray, low: _Side, high: _Side) -> _Verified:
    """The candidate pairs within the recipe's radius, with their exact distances.

    Pure numpy on arrays it does not change, so verification runs it in worker threads, tile
    after tile (`NearIndexer._verify_blocks`).

    Args:
        pairs: int64 (p, 2) candidate image ids, ``pairs[:, 0]`` among ``low.ids`` and
            ``pairs[:, 1]`` among ``high.ids`` (the same side for a block with itself).
    """
    kept: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    for start in range(0, len(pairs), VERIFY_BATCH):
        batch = pairs[start : start + VERIFY_BATCH]
        left = np.searchsorted(low.ids, batch[:, 0])
        right = np.searchsorted(high.ids, batch[:, 1])
        if low.screen is not None:
            # Most candidates are far apart: a cheap lower bound rules them out before the
            # exact distance reads whole signatures.
            maybe = low.screen.may_be_within(left, right, recipe.radius, other=high.screen)
            batch, left, right = batch[maybe], left[maybe], right[maybe]
        # The exact distance on the few rows left, gathered into one array: a recipe's
        # verifier may do per-image work ahead (`Recipe.verifier`).
        rows_low, rows_high = unique(left), unique(right)
        verify = recipe.verifier(
            np.concatenate(
                [take_rows(low.signatures, rows_low), take_rows(high.signatures, rows_high)]
            )
        )
        distance = verify(
            np.searchsorted(rows_low, left), rows_low.size + np.searchsorted(rows_high, right)
        )
        close = distance <= recipe.radius
        kept.append(batch[close])
        distances.append(distance[close])
    if not kept:
        return np.empty((0, 2), np.int64), np.empty(0, np.float64)
    return np.concatenate(kept), np.concatenate(distances)


class _Spill:
    """Fixed-width rows of an ingest's new images in a scratch file, read back by image id.

    Two uses. Signatures, each followed by its screen's finer levels when the recipe has them
    (`_screen_bytes`): verification reads those of a block of image ids once for every block
    it is paired with; read from the catalog that was a range scan of the signature table each
    time (about 30 s of a 1M-image ingest), here a block is a slice of a file the page cache
    holds, and the screens are not computed again for every tile an image falls in. Band
    keys: each recipe's wait there until its turn at the end of the ingest, rather than in
    memory through the other recipes' join and verification (0.19 GB per recipe at 1M images).
    The file is unnamed (`tempfile.TemporaryFile`, in `catalog.db.scratch_directory`) and gone
    when closed, also when the process dies.
    """

    def __init__(self, width: int | None, conn: Connection) -> None:
        """``width``: bytes per row; None: the first chunk's."""
        self.width = width
        self._conn = conn
        self._directory = scratch_directory(conn)
        # Closed by `close` (the indexer's lifetime), not by a with block.
        self._file = tempfile.TemporaryFile(  # noqa: SIM115
            prefix="dsaudit-signatures-", dir=self._directory
        )
        self._size = 0
        self._chunks: list[np.ndarray] = []
        self._ids: np.ndarray | None = None
        self._positions: np.ndarray | None = None

    def append(self, image_ids: np.ndarray, signatures: np.ndarray) -> None:
        """Write a chunk's signatures; a write the disk or the file size limit refuses raises
        `catalog.errors.StorageError` naming which."""
        data = np.ascontiguousarray(signatures, np.uint8)
        if data.ndim == 2 and self.width is None:
            self.width = data.shape[1]
        if data.ndim != 2 or data.shape[1] != self.width:
            raise ValueError(f"spill rows are {self.width} bytes wide, got shape {data.shape}")
        try:
            self._file.write(data.data)
            self._file.flush()
        except OSError as exc:
            raise scratch_error(self._conn, self._directory, self._size, exc) from None
        self._size += data.nbytes
        self._chunks.append(image_ids)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted ids, their rows in the file); built at the first read."""
        if self._ids is None or self._positions is None:
            self._file.flush()
            ids = np.concatenate(self._chunks) if self._chunks else np.empty(0, np.int64)
            self._positions = np.argsort(ids, kind="stable")
            self._ids = ids[self._positions]
            self._chunks = []
        return self._ids, self._positions

    def holds(self, image_ids: np.ndarray) -> np.ndarray:
        """bool: which of ``image_ids`` are spilled here."""
        ids, _ = self._index()
        if ids.size == 0:
            return np.zeros(image_ids.size, bool)
        found = np.minimum(np.searchsorted(ids, image_ids), ids.size - 1)
        return ids[found] == image_ids

    def read(self, image_ids: np.ndarray) -> np.ndarray:
        """uint8 (n, width): the signatures of ``image_ids`` (all spilled here), in that order."""
        ids, positions = self._index()
        rows = positions[np.searchsorted(ids, image_ids)]
        if rows.size == 0:
            return np.empty((0, self.width or 0), np.uint8)
        # Mapped for this read only, so its pages leave the process with the map.
        mapped = np.memmap(self._file, np.uint8, "r", shape=(ids.size, self.width or 0))
        try:
            return np.asarray(take_rows(mapped, rows))
        finally:
            del mapped

    def close(self) -> None:
        self._file.close()


class NearIndexer:
    """Signs the new images of one ingest and, at the end, finds and stores their pairs."""

    def __init__(self, conn: Connection, recipes: Sequence[Recipe] = DEFAULT_RECIPES) -> None:
        self.conn = conn
        self.recipes = tuple(recipes)
        self.ids = ensure_recipes(conn, self.recipes)
        # Band keys, as bytes (`_Spill`): int64 (n, bands) rows, read back by `_find_pairs`.
        self._keys = {r.name: _Spill(r.bands * 8, conn) for r in self.recipes}
        self._images: dict[str, list[np.ndarray]] = {r.name: [] for r in self.recipes}
        self._probes: dict[str, list[np.ndarray]] = {r.name: [] for r in self.recipes}
        self._resident: dict[str, list[_Resident]] = {r.name: [] for r in self.recipes}
        # Signatures read back by block verification (`_verify_blocks`), per recipe that
        # needs it: its resident summary is not the signature itself. Each row is followed by
        # the screen's finer levels when the recipe has them (`_summaries`), shaped like the
        # zero-row screen kept in `_finer`.
        self._spills = {
            r.name: _Spill(None, conn) for r in self.recipes if r.signature_bytes > RESIDENT_BYTES
        }
        self._finer: dict[str, Screen] = {}
        # One worker per recipe, up to the cores: the recipes of a chunk sign in parallel.
        workers = max(1, min(len(self.recipes), os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsaudit-sign")
        # The band join (its bands shared out) and the verification's tiles run here, while
        # this thread stores band keys and reads signatures.
        self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dsaudit-join")
        self._pending: deque[tuple[list[Future[_Signed]], np.ndarray]] = deque()
        self._store_seconds: dict[str, float] = {}
        # The pair table's secondary indexes while this ingest's pairs go in, when rebuilding
        # them afterwards is cheaper (`catalog.db.drop_indexes_for`); `finish` recreates them.
        self._dropped: tuple[Index, ...] = ()

    def add(self, image_ids: np.ndarray, unit: np.ndarray) -> None:
        """Sign new images (in worker threads), store their signatures, keep their band keys.

        The hashing is numpy work that releases the GIL, so it runs in worker threads (one per
        recipe, up to the number of cores) while this thread goes on reading, digesting and
        inserting the next chunk; results are stored here, on the caller's connection, in
        submission order. At most `MAX_PENDING` chunks
        wait, which keeps memory bounded.

        Args:
            image_ids: int64 (n,) catalog ids of new, informative images.
            unit: float32 (n, H, W, C) their pixels on the 0-1 scale; an alpha channel
                (C = 2 or 4) is left out of the signatures (`catalog.pixels.colour_channels`).
        """
        if image_ids.size == 0:
            return
        unit = colour_channels(unit)
        jobs = [self._pool.submit(_sign, recipe, unit) for recipe in self.recipes]
        self._pending.append((jobs, image_ids))
        self._drain(wait=False)

    def _drain(self, *, wait: bool) -> None:
        """Store finished signing jobs, oldest first; with ``wait``, all of them."""
        while self._pending and (
            wait
            or all(job.done() for job in self._pending[0][0])
            or len(self._pending) > MAX_PENDING
        ):
            jobs, image_ids = self._pending.popleft()
            for recipe, job in zip(self.recipes, jobs, strict=True):
                signatures, keys, probes, resident, finer = job.result()
                recipe_id = self.ids[recipe.name]
                bulk_insert(
                    self.conn,
                    core_table(Signature),
                    ("image_id", "value"),
                    zip(image_ids.tolist(), map(bytes, signatures), strict=True),
                    constants={"recipe_id": recipe_id},
                )
                if recipe.name in self._spills:
                    rows = signatures
                    if finer is not None:
                        self._finer.setdefault(recipe.name, finer.rows(np.empty(0, np.intp)))
                        rows = np.concatenate([signatures, _screen_bytes(finer)], axis=1)
                    self._spills[recipe.name].append(image_ids, rows)
                self._keys[recipe.name].append(image_ids, np.ascontiguousarray(keys).view(np.uint8))
                self._images[recipe.name].append(image_ids)
                self._resident[recipe.name].append(resident)
                if probes is not None:
                    self._probes[recipe.name].append(probes)

    def close(self) -> None:
        """Stop the worker; pending jobs are dropped (the caller's transaction rolls back)."""
        for jobs, _ids in self._pending:
            for job in jobs:
                job.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._workers.shutdown(wait=True, cancel_futures=True)
        for spill in [*self._spills.values(), *self._keys.values()]:
            spill.close()

    def _store_band_keys(self, recipe_id: int, keys: np.ndarray, images: np.ndarray) -> None:
        """Insert the new images' band keys: ``keys`` int64 (n, bands), ``images`` (n,)."""
        # Once, after the last chunk, in primary-key order (band by band, each sorted by key
        # and image), so each B-tree page is written once, in order, rather than split at
        # random places chunk after chunk; at this ingest's level (`band_level`), so among
        # the keys of ingests of about its size rather than spread over all of them.
        level = band_level(images.size)
        for band in range(keys.shape[1]):
            column = keys[:, band]
            order = np.lexsort((images, column))
            bulk_insert(
                self.conn,
                core_table(BandKey),
                ("key", "image_id"),
                Columns(column[order], images[order]),
                constants={"recipe_id": recipe_id, "level": level, "band": band},
            )

    def finish(self, on_progress: Progress | None = None) -> tuple[NearStats, ...]:
        """Store the new band keys, join them against the catalog, verify, store pairs.

        Under `catalog.db.lock_pair_finding`, held until the caller's transaction ends, so a
        concurrent ingest's new images are either all visible (committed) or joined later by
        that ingest against ours.

        One recipe after the other (each holds its survivors and verification blocks; two at
        once doubled the peak memory): its band join runs in the worker threads while this
        thread stores its band keys, then the previous recipe's pairs; then the survivors are
        verified block by block (`_verify_blocks`). A recipe's `NearStats.seconds` include its
        pairs' insert, done during the next recipe's join. When this ingest's pairs are many
        against those stored (a first ingest), the pair table's indexes are dropped before the
        first large insert and built again after the last (`catalog.db.drop_indexes_for`),
        shown as the `PAIR_INDEX_TASK` progress task.
        """
        self._drain(wait=True)
        step = on_progress or (lambda _task, _advance, _total: None)
        lock_pair_finding(self.conn)
        try:
            # A recipe's pairs are stored while the next recipe's band join runs, after its
            # band keys (this thread is idle then; 5M pairs took 74 s at 1M images).
            pending: list[Callable[[], None]] = []
            found = [self._find_pairs(recipe, step, pending) for recipe in self.recipes]
            for insert in pending:
                insert()
            if self._dropped:
                step(PAIR_INDEX_TASK, 0, 1)
                create_indexes(self.conn, self._dropped)
                step(PAIR_INDEX_TASK, 1, 1)
            return tuple(
                replace(stats, seconds=stats.seconds + self._store_seconds.get(stats.recipe, 0.0))
                for stats in found
            )
        finally:
            self.close()

    def _find_pairs(
        self, recipe: Recipe, step: Progress, pending: list[Callable[[], None]]
    ) -> NearStats:
        """Band keys stored, joined and verified for one recipe; its pairs' insert appended to
        ``pending``, after running the inserts already there (`finish`)."""
        started = time.perf_counter()
        name, recipe_id = recipe.name, self.ids[recipe.name]
        if not self._images[name]:
            return NearStats(name, 0, 0, 0, 0, 0, 0.0)
        task = f"{name}: store band keys, join, verify"
        images = np.concatenate(self._images[name])
        keys = self._keys[name].read(images).view(np.int64)
        resident = _concatenate(self._resident[name])
        # Probe keys (`Recipe.probe_keys`): more rows of the new images in each band, joined
        # like their stored keys, never stored. (n, 0, bands) when the recipe has none.
        probes = (
            np.concatenate(self._probes[name])
            if self._probes[name]
            else np.empty((images.size, 0, keys.shape[1]), np.int64)
        )
        self._images[name], self._probes[name] = [], []
        self._resident[name] = []
        _release_memory()
        lookup_keys = (
            np.concatenate([keys, probes.reshape(-1, keys.shape[1])]) if probes.size else keys
        )
        old_band, old_keys, old_images = self._old_members(recipe_id, lookup_keys)
        del lookup_keys
        # Every joined image's resident summary, in id order (new ones computed while signing,
        # old ones from their stored signatures).
        old_ids = unique(old_images)
        ids = np.concatenate([images, old_ids])
        order = np.argsort(ids, kind="stable")
        if old_ids.size and resident is not None:
            resident = _concatenate([resident, self._stored_resident(recipe, recipe_id, old_ids)])
        resident = _rows(resident, order)
        ids = ids[order]
        # The bands are shared out among the workers (each band is independent), which run
        # while this thread stores the band keys and then the previous recipe's pairs.
        joins = [
            self._workers.submit(
                _join_bands,
                recipe,
                _band_rows(
                    keys, probes, images, old_band, old_keys, old_images, share=(w, WORKERS)
                ),
                ids,
                resident,
            )
            for w in range(min(WORKERS, keys.shape[1]))
        ]
        self._store_band_keys(recipe_id, keys, images)
        for insert in pending:
            insert()
        pending.clear()
        step(task, 1, 3)
        proposed = _Proposed.merge([join.result() for join in joins])
        del keys, probes, joins, old_keys, old_images
        _release_memory()
        step(task, 1, 3)
        survivors, proposed.survivors = proposed.survivors, np.empty(0, np.int64)
        if isinstance(resident, np.ndarray):
            # The resident summaries were the signatures themselves (in id order, `ids`) and
            # kept only pairs within the radius: their distances come from them at once.
            side = _Side(ids, resident, None)
            close, distance = _verify(recipe, unpack(survivors), side, side)
        else:
            screened = isinstance(resident, Screen)
            del resident
            close, distance = self._verify_blocks(recipe, recipe_id, survivors, screened=screened)
        del survivors
        _release_memory()

        def store() -> None:
            began = time.perf_counter()
            if not self._dropped:
                self._dropped = drop_indexes_for(self.conn, core_table(Pair), len(close))
            # In primary-key order: verification returns its pairs tile by tile, and in that
            # order each row went to another page of the tile's range (1.7M pairs: 1.9-2.1 µs
            # a row, 0.7-0.8 µs sorted). No ON CONFLICT: candidates are distinct, each has a
            # side new in this ingest, and a concurrent ingest's pairs have a side new in it
            # (`lock_pair_finding`), so no pair is stored twice; on PostgreSQL that lets the
            # rows go by COPY.
            order = np.argsort((close[:, 0] << 32) | close[:, 1], kind="stable")
            pairs = take_rows(close, order)
            bulk_insert(
                self.conn,
                core_table(Pair),
                ("image_a", "image_b", "distance"),
                Columns(pairs[:, 0], pairs[:, 1], distance[order]),
                constants={"recipe_id": recipe_id},
            )
            self._store_seconds[name] = time.perf_counter() - began
            step(task, 1, 3)

        pending.append(store)
        return NearStats(
            recipe=name,
            images=images.size,
            candidates=proposed.proposals,
            pairs=len(close),
            largest_bucket=proposed.largest,
            capped_buckets=proposed.capped,
            seconds=time.perf_counter() - started,
        )

    def _verify_blocks(
        self, recipe: Recipe, recipe_id: int, packed: np.ndarray, *, screened: bool
    ) -> _Verified:
        """`_verify` over blocks of image ids, so only a few blocks' signatures are held at once.

        Image ids are cut into blocks of about `VERIFY_BLOCK_BYTES` of signatures; the pairs
        (sorted by their lower id) are verified tile by tile, a tile being the pairs between
        blocks (i, j), i <= j. This thread reads each block's signatures and screens
        (`_block_side`); the workers verify the tiles, at most `WORKERS` at a time.

        Args:
            packed: sorted distinct pairs packed as ``low << 32 | high`` (`unpack`); unpacked
                a block at a time (unpacked at once, 29M survivors at 1M images took 0.46 GB).
            screened: the band join applied the screen's coarsest level (`_resident`).
        """
        if packed.size == 0:
            return np.empty((0, 2), np.int64), np.empty(0, np.float64)
        kept: list[_Verified] = []
        running: deque[Future[_Verified]] = deque()
        block = max(1, VERIFY_BLOCK_BYTES // recipe.signature_bytes)
        top = int(packed[-1] >> 32) // block
        bounds = np.searchsorted(packed, (np.arange(top + 2) * block) << 32)
        try:
            for i in range(top + 1):
                if bounds[i] == bounds[i + 1]:
                    continue
                part = unpack(packed[bounds[i] : bounds[i + 1]])
                high_block = part[:, 1] // block
                order = np.argsort(high_block, kind="stable")
                part, high_block = take_rows(part, order), high_block[order]
                wanted = unique(np.concatenate([part[:, 0], part[high_block == i, 1]]))
                low = self._block_side(recipe, recipe_id, wanted, block, screened=screened)
                cuts = np.flatnonzero(np.r_[True, high_block[1:] != high_block[:-1]])
                ends = np.r_[cuts[1:], high_block.size]
                for a, b in zip(cuts.tolist(), ends.tolist(), strict=True):
                    tile = part[a:b]
                    high = low
                    if int(high_block[a]) != i:
                        wanted = unique(tile[:, 1])
                        high = self._block_side(recipe, recipe_id, wanted, block, screened=screened)
                    # At most WORKERS tiles in flight, and the next one's side read meanwhile.
                    while len(running) >= WORKERS:
                        kept.append(running.popleft().result())
                    running.append(self._workers.submit(_verify, recipe, tile, low, high))
            while running:
                kept.append(running.popleft().result())
        finally:
            for job in running:
                job.cancel()
        return np.concatenate([k[0] for k in kept]), np.concatenate([k[1] for k in kept])

    def _block_side(
        self, recipe: Recipe, recipe_id: int, wanted: np.ndarray, block: int, *, screened: bool
    ) -> _Side:
        """The `_side` of at least the ``wanted`` ids (sorted, unique, all in one block of
        ``block`` ids).

        This ingest's new images come from its spill file (`_Spill`), with their screen's finer
        levels as computed when they were signed: an image falls in a tile for each block its
        candidates lie in, and screening it again for each took 17 s of a 1M-image ingest. The
        others, old members of the buckets the new images joined, from the catalog: by one
        range scan of the signature table's primary key when they fill a good part of the
        block, else by lookups of just those ids; their screens are computed here.
        """
        spill = self._spills.get(recipe.name)
        new = spill.holds(wanted) if spill is not None else np.zeros(wanted.size, bool)
        old = wanted[~new]
        if old.size >= BLOCK_SCAN_SHARE * block:
            scanned = self._block_scan(recipe, recipe_id, int(old[0]) // block * block, block)
            return _side(recipe, *scanned, screened=screened)
        size = recipe.signature_bytes
        if old.size == 0 and spill is not None:
            rows = spill.read(wanted)
        else:
            rows = np.empty((wanted.size, (spill.width if spill else None) or size), np.uint8)
            if spill is not None:
                rows[new] = spill.read(wanted[new])
            rows[~new, :size] = self._signatures(recipe_id, old, size)
        signatures = np.ascontiguousarray(rows[:, :size])
        like = self._finer.get(recipe.name)
        if not screened or like is None:
            return _side(recipe, wanted, signatures, screened=screened)
        if old.size:
            computed = _finer(recipe.screen(signatures[~new]))
            if computed is None:
                return _side(recipe, wanted, signatures, screened=screened)
            rows[~new, size:] = _screen_bytes(computed)
        return _Side(wanted, signatures, _screen_from_bytes(rows[:, size:], like))

    def _block_scan(
        self, recipe: Recipe, recipe_id: int, first: int, block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every stored signature of image ids [first, first + block), by one range scan."""
        mark = placeholder(self.conn)
        ids = np.empty(block, np.int64)
        values = np.empty((block, recipe.signature_bytes), np.uint8)
        count = 0
        # Copied into place a batch of rows at a time, never a block's worth of bytes objects.
        for rows in fetch_batches(
            self.conn,
            f"SELECT image_id, value FROM signature WHERE recipe_id = {mark} "
            f"AND image_id >= {mark} AND image_id < {mark} ORDER BY image_id",
            (recipe_id, first, first + block),
        ):
            end = count + len(rows)
            ids[count:end] = [row[0] for row in rows]
            values[count:end] = np.frombuffer(
                b"".join(bytes(row[1]) for row in rows), np.uint8
            ).reshape(len(rows), recipe.signature_bytes)
            count = end
        return ids[:count], values[:count]

    def _stored_resident(self, recipe: Recipe, recipe_id: int, image_ids: np.ndarray) -> _Resident:
        """`_resident` of catalogued images (``image_ids`` sorted, unique, not empty), from their
        stored signatures, read and summarised a block of ids at a time (`_verify_blocks`'
        blocks).

        A block whose wanted ids fill a good part of it (`BLOCK_SCAN_SHARE`) is read by one
        range scan of the signature table's primary key, the others by looking their ids up. An
        incremental ingest into a dense catalog wants most of it: the 5 % new images of the 1M
        benchmark's v2 have old members among about 0.9M of its 1M images, whose summaries took
        7.1 s (pixel-v1) and 2.8 s (phash256-v2) looked up, 6.2 s and 1.4 s so (medians of 3).
        """
        size = recipe.signature_bytes
        block = max(1, VERIFY_BLOCK_BYTES // size)
        which = image_ids // block
        cuts = np.flatnonzero(np.r_[True, which[1:] != which[:-1], True])
        parts: list[_Resident] = []
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            ids = image_ids[lo:hi]
            if ids.size >= BLOCK_SCAN_SHARE * block:
                scanned, values = self._block_scan(recipe, recipe_id, int(which[lo]) * block, block)
                rows = np.minimum(np.searchsorted(scanned, ids), max(scanned.size - 1, 0))
                if scanned.size == 0 or not np.array_equal(scanned[rows], ids):
                    _missing_signature(ids[~np.isin(ids, scanned)][0], recipe.name)
                parts.append(_resident(recipe, values[rows]))
                continue
            for start in range(0, ids.size, RESIDENT_SLICE):
                part = ids[start : start + RESIDENT_SLICE]
                parts.append(_resident(recipe, self._signatures(recipe_id, part, size)))
        return _concatenate(parts)

    def _old_members(
        self, recipe_id: int, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Catalogued images (before this ingest) sharing a bucket with a new image.

        Args:
            keys: int64 (m, bands): the new images' band keys, and their probe keys if the
                recipe has any.

        Returns:
            (band, key, image id) int64 arrays, one row per old member.

        At most `BUCKET_CAP` per bucket (the lowest ids, over all levels), the same members
        the guard keeps. Runs before this ingest stores its own band keys for the recipe, so
        every band key it reads is another ingest's, committed (SQLite: before ours began;
        PostgreSQL: before `lock_pair_finding` let us in). Image ids say nothing about that
        order: a PostgreSQL sequence hands them out to concurrent ingests interleaved.
        """
        empty = np.empty(0, np.int64)
        levels = self._levels(recipe_id)
        if not levels:
            return empty, empty, empty
        dialect = self.conn.dialect.name
        for statement in new_key_table(dialect):
            self.conn.exec_driver_sql(statement)
        distinct = [unique(keys[:, band]) for band in range(keys.shape[1])]
        new = _NewKeys(
            distinct,
            np.repeat(np.arange(len(distinct), dtype=np.int64), [d.size for d in distinct]),
            np.concatenate(distinct),
        )
        bulk_insert(
            self.conn,
            "dsaudit_new_key",
            ("n", "band", "key"),
            Columns(np.arange(new.key.size, dtype=np.int64), new.band, new.key),
        )
        if dialect == "postgresql":
            self.conn.exec_driver_sql(NEW_KEY_INDEX)
        # A slice of bands at a time (`SEEK_BANDS`), so memory follows the slice's members,
        # not every member of every band: at 1M images, 7.6M rows of one level came back as
        # text (SQLite's and Python's copies) and then arrays, 0.7 GB at once.
        kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for first in range(0, len(distinct), SEEK_BANDS):
            bands = range(first, min(first + SEEK_BANDS, len(distinct)))
            found = [self._level_members(recipe_id, level, new, bands) for level in levels]
            band, key, image = (np.concatenate(column) for column in zip(*found, strict=True))
            # The first BUCKET_CAP of each bucket by id (the guard's members), ranked here: a
            # window function in SQL cost six times the join. Rows in order already (one
            # level, on SQLite) are left so; else the levels' rows are merged
            # (`_merge_levels`): 5.5M rows of two levels in 0.26 s, where `np.lexsort` on the
            # three columns took 3.0 s.
            if not _lexsorted(band, key, image):
                order = _merge_levels(distinct, band, key, image)
                band, key, image = band[order], key[order], image[order]
            starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (key[1:] != key[:-1])])
            rank = np.arange(band.size) - np.repeat(starts, np.diff(np.r_[starts, band.size]))
            keep = rank < BUCKET_CAP
            kept.append((band[keep], key[keep], image[keep]))
        band, key, image = (np.concatenate(column) for column in zip(*kept, strict=True))
        return band, key, image

    def _level_members(
        self, recipe_id: int, level: int, new: _NewKeys, bands: range
    ) -> list[np.ndarray]:
        """The (band, key, image id) rows of one level, in ``bands``, in the buckets of the
        new keys (all in ``dsaudit_new_key``).

        When the level holds at most as many rows in these bands as there are new keys, they
        are read whole, in primary-key order, and matched here: reading a row costs less than
        seeking one, and a catalog grown by many small versions holds many small levels (40k
        new images' keys against a 200k-image level and 17 small ones: 10.4 s seeking every
        level, 2.8 s so, 1.5 s for the large level alone). A larger level is seeked bucket by
        bucket (`_seek_members`): CROSS JOIN makes SQLite walk the new keys and seek each
        bucket in band_key's primary key; left to choose, it scanned all of the recipe's band
        keys (250k images: 3.3 s against 0.3 s). PostgreSQL seeks the same way (`seek_statement`).
        SQLite's nested loop hands the rows over in (band, key, image) order: the new keys
        along their unique index (band, key), each bucket along band_key's. Integer
        columns come back by `fetch_integers` (row tuples cost more than the join).
        """
        mark = placeholder(self.conn)
        distinct = new.distinct
        lookups = sum(distinct[band].size for band in bands)
        # A level holds at least one ingest of 2**level images, each with a key in every band.
        if (1 << level) * len(bands) > lookups:
            return self._seek_members(recipe_id, level, new, bands)
        found, key, image = fetch_integers(
            self.conn,
            ("band", "key", "image_id"),
            f"FROM (SELECT band, key, image_id FROM band_key WHERE recipe_id = {mark} "
            f"AND level = {mark} AND band >= {mark} AND band < {mark} "
            f"ORDER BY band, key, image_id LIMIT {mark}) AS whole",
            (recipe_id, level, bands.start, bands.stop, lookups + 1),
        )
        if found.size <= lookups:
            keep = np.zeros(found.size, bool)
            groups = _band_groups(found, bands.stop)
            for band in bands:
                rows = groups[band]
                keep[rows] = np.isin(key[rows], distinct[band])
            return [found[keep], key[keep], image[keep]]
        return self._seek_members(recipe_id, level, new, bands)

    def _seek_members(
        self, recipe_id: int, level: int, new: _NewKeys, bands: range
    ) -> list[np.ndarray]:
        """`_level_members` by one seek of band_key's primary key per new key of ``bands``;
        each row names its new key by ordinal (`new_key_table`)."""
        ordinal, image = fetch_integers(
            self.conn, ("k.n", "b.image_id"), *seek_statement(self.conn, bands, recipe_id, level)
        )
        return [new.band[ordinal], new.key[ordinal], image]

    def _levels(self, recipe_id: int) -> list[int]:
        """The levels (`band_level`) holding band keys of the recipe, ascending: one seek of
        band_key's primary key each (SELECT DISTINCT read every row)."""
        mark = placeholder(self.conn)
        levels: list[int] = []
        while True:
            after = levels[-1] if levels else -1
            level = self.conn.exec_driver_sql(
                f"SELECT MIN(level) FROM band_key WHERE recipe_id = {mark} AND level > {mark}",
                (recipe_id, after),
            ).scalar()
            if level is None:
                return levels
            levels.append(int(level))

    def _signatures(self, recipe_id: int, image_ids: np.ndarray, width: int) -> np.ndarray:
        """Stored signatures of ``image_ids`` (sorted, unique), uint8 (n, width), same order."""
        out = np.empty((image_ids.size, width), np.uint8)
        mark = placeholder(self.conn)
        for start in range(0, image_ids.size, LOOKUP_BATCH):
            batch = image_ids[start : start + LOOKUP_BATCH]
            rows = fetch_rows(
                self.conn,
                f"SELECT image_id, value FROM signature WHERE recipe_id = {mark} "
                f"AND image_id IN ({', '.join([mark] * batch.size)})",
                (recipe_id, *batch.tolist()),
            )
            ids = np.array([r[0] for r in rows], np.int64)
            if ids.size < batch.size:
                name = next((n for n, i in self.ids.items() if i == recipe_id), recipe_id)
                _missing_signature(batch[~np.isin(batch, ids)][0], name)
            values = np.frombuffer(b"".join(bytes(r[1]) for r in rows), np.uint8)
            out[start + np.searchsorted(batch, ids)] = values.reshape(len(rows), width)
        return out


def _missing_signature(image_id: int, recipe: int | str) -> NoReturn:
    """Stop an ingest that needs a signature the catalog lacks (a damaged catalog), rather than
    compare another row in its place."""
    raise SchemaError(
        f"image {image_id} has band keys under {recipe} but no signature: the catalog is "
        "damaged (dsaudit check lists such rows)"
    )


def seek_statement(
    conn: Connection, bands: range, recipe_id: int, level: int
) -> tuple[str, tuple[int, ...]]:
    """The FROM and WHERE of `NearIndexer._seek_members`, and its parameters: for each new key
    of ``bands`` in ``dsaudit_new_key``, one seek of band_key's primary key.

    SQLite: ``CROSS JOIN`` fixes the order (new keys outside), and ``+k.band`` keeps SQLite
    from carrying the bounds on k.band over to b.band, which scanned that range of band_key for
    every new key instead of seeking its bucket. PostgreSQL orders joins by its statistics, and
    band_key has none until autovacuum analyses it, a while after a catalog's first ingest:
    estimated at 0.5 % of 0.5 % of its rows for one recipe and level, band_key went outside,
    and each of its rows scanned the new keys of `SEEK_BANDS` bands (1.3-13 s a statement on
    1,400 images; tests/test_postgres.py's two ingests at once took 6-114 s). There the seek
    is a LATERAL subquery that ``OFFSET 0`` keeps from being flattened into a join, so it runs
    once per new key whatever the statistics say. `NearIndexer._level_members` chose seeking
    over reading the level whole already. tests/test_near.py reads the plan on both engines,
    on PostgreSQL with band_key unanalysed and analysed.
    """
    mark = placeholder(conn)
    if conn.dialect.name == "sqlite":
        return (
            f"FROM dsaudit_new_key k CROSS JOIN band_key b WHERE k.band >= {mark} "
            f"AND k.band < {mark} AND b.recipe_id = {mark} AND b.level = {mark} "
            "AND b.band = +k.band AND b.key = k.key"
        ), (bands.start, bands.stop, recipe_id, level)
    return (
        "FROM dsaudit_new_key k CROSS JOIN LATERAL (SELECT image_id FROM band_key "
        f"WHERE recipe_id = {mark} AND level = {mark} AND band = k.band AND key = k.key "
        f"OFFSET 0) b WHERE k.band >= {mark} AND k.band < {mark}"
    ), (recipe_id, level, bands.start, bands.stop)


def new_key_table(dialect: str) -> list[str]:
    """Statements that leave the temporary table of the new keys `NearIndexer._old_members`
    looks up (one per connection) empty, for rows ``n, band, key``: each key with its ordinal
    ``n`` in (band, key) order.

    A seek hands back ``n`` in place of the band and the 64-bit key: two columns of text
    instead of three. The old members of 50k images' keys in the 1M-image catalog (3.0M rows
    for pixel-v1, 6.4M for phash256-v2) took 2.5-2.9 s and 5.3-6.1 s against 3.7-4.2 s and
    6.4-8.1 s. On SQLite ``n`` is an INTEGER PRIMARY KEY, so the rowid, which the unique index
    on (band, key) holds: the lookup reads that index alone. On PostgreSQL the table is made
    anew without constraints, and `NEW_KEY_INDEX` is built once its rows are in: 640k sorted
    rows went in with a primary key and a unique index in 1.6-1.9 s, with neither and the index
    built afterwards in 0.5-0.6 s (emptying the old table by DELETE cost 0.24 s more). Its
    INTEGER has 4 bytes, so ``n`` is a BIGINT there.
    """
    if dialect == "sqlite":
        return [
            "CREATE TEMPORARY TABLE IF NOT EXISTS dsaudit_new_key (n INTEGER PRIMARY KEY, "
            "band SMALLINT NOT NULL, key BIGINT NOT NULL, UNIQUE (band, key))",
            "DELETE FROM dsaudit_new_key",
        ]
    return [
        "DROP TABLE IF EXISTS pg_temp.dsaudit_new_key",
        "CREATE TEMPORARY TABLE dsaudit_new_key "
        "(n BIGINT NOT NULL, band SMALLINT NOT NULL, key BIGINT NOT NULL)",
    ]


NEW_KEY_INDEX = "CREATE INDEX ON dsaudit_new_key (band)"
"""PostgreSQL: the new keys of a slice of bands found by their band, built after the rows."""
