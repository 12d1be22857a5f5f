"""Near duplicates in the catalog: store signatures and band keys, join, verify, store pairs.

During an ingest, `NearIndexer.add` takes each chunk's new, informative images and computes
every recipe's signatures, LSH band keys and resident summary (`_resident`; vectorised,
`catalog.recipes`) in worker threads; signatures are stored as they come, band keys and
summaries kept. After the last chunk, `NearIndexer.finish` takes one recipe after the other:
it stores the band keys in one sorted insert while a worker joins only the NEW images' keys
(and their probe keys, `Recipe.probe_keys`, which are never stored) against all band keys of
the recipe, band by band, ruling each band's proposals in or out on the summaries at once
(`_join_bands`); then it verifies the survivors exactly on the stored signatures, block pair by
block pair of image ids (`NearIndexer._verify_blocks`), and stores the pairs within the
recipe's radius. The band join only proposes; the distance decides. Memory follows the
summaries (at most 136 bytes an image), the survivors and two blocks of signatures, not the
candidates: at 1M images of `benchmarks/scale.py`, pixel-v1's join proposes 126M pairs.

The blow-up guard: a bucket (recipe, band, key) with thousands of members (thousands of
near-identical images) would propose millions of pairs. Inside one bucket, members are taken in
image-id order; the first `BUCKET_CAP` form all their pairs, and every later member is paired
only with the first `BUCKET_LINK`. Candidates per bucket are then at most
``BUCKET_CAP²/2 + BUCKET_LINK·size``: linear in the bucket, and a cluster of copies stays
connected, so duplicate groups (connected components) are still whole.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, select

from catalog.db import (
    bulk_insert,
    fetch_batches,
    fetch_integers,
    fetch_rows,
    lock_pair_finding,
    placeholder,
)
from catalog.errors import SchemaError, UsageError
from catalog.pixels import colour_channels
from catalog.recipes import DEFAULT_RECIPES, Recipe, Screen, get_recipe
from catalog.schema import BandKey, Image, Pair, RecipeRecord, Signature, core_table
from catalog.vectors import lookup, unique

BUCKET_CAP = 64
"""Members of one bucket that are all compared with each other."""
BUCKET_LINK = 8
"""How many of a big bucket's first members each later member is compared with."""
MAX_PENDING = 2
"""Chunks whose signing may be under way at once (each holds its pixels: the memory bound)."""
VERIFY_BATCH = 50_000
"""Candidate pairs verified per numpy call (memory bound: 2 x batch x signature bytes)."""
PREFILTER_BATCH = 262_144
"""Proposed pairs ruled in or out per numpy call during the band join (memory bound: 2 x batch
x the resident summary's bytes)."""
RESIDENT_BYTES = 64
"""Signatures up to this size are the band join's resident summary themselves (`_resident`)."""
RESIDENT_SLICE = 50_000
"""Stored signatures read at once to summarise catalogued images."""
COMPACT_AT = 8_000_000
"""Survivors of the band join held before repeats are removed (8 bytes each)."""
VERIFY_BLOCK_BYTES = 64 * 2**20
"""Signature bytes of one block of image ids in `NearIndexer._verify_blocks` (two are held)."""
LOOKUP_BATCH = 5000
INSERT_BATCH = 500_000
"""Band-key rows per executemany (memory bound of the Python rows)."""

Progress = Callable[[str, int, int], None]


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


def resolve_recipes(conn: Connection, names: Sequence[str] | None = None) -> tuple[Recipe, ...]:
    """The recipes an ingest into this catalog signs with.

    A catalog keeps the recipes it was made with: every recipe it has registered is used again,
    so each of them covers every image signed since. ``names`` (``dsaudit ingest --recipe``)
    chooses them at a catalog's first near-duplicate ingest; later, naming a recipe the catalog
    lacks is refused while it holds images, because their pixels are not kept and they could
    never be signed under it. Without ``names`` a new catalog gets `DEFAULT_RECIPES`.

    Raises:
        UsageError: an unknown recipe name, or a new recipe for a catalog holding images.
        SchemaError: the catalog's recipes were made by a release that does not know them.
    """
    table = core_table(RecipeRecord)
    registered = conn.execute(select(table.c.name).order_by(table.c.id)).scalars().all()
    chosen: list[Recipe] = []
    for name in registered:
        try:
            chosen.append(get_recipe(name))
        except ValueError:
            raise SchemaError(
                f"the catalog signs images with recipe '{name}', which this dsaudit does not "
                "know; use the dsaudit release that made the catalog"
            ) from None
    if names is None:
        return tuple(chosen) if chosen else DEFAULT_RECIPES
    added: list[Recipe] = []
    for name in dict.fromkeys(names):
        try:
            recipe = get_recipe(name)
        except ValueError as error:
            raise UsageError(f"--recipe: {error}") from None
        if recipe.name not in registered:
            added.append(recipe)
    if added and conn.execute(select(core_table(Image).c.id).limit(1)).first() is not None:
        missing = ", ".join(recipe.name for recipe in added)
        raise UsageError(
            f"the catalog already holds images that were never signed under {missing}, and "
            "their pixels are not kept; choose recipes at a catalog's first ingest, or ingest "
            "into a new catalog"
        )
    return (*chosen, *added)


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
    if image.size == 0:
        return np.empty(0, np.int64), 0, 0
    if int(image.min()) < 0 or int(image.max()) >= 2**31:
        raise ValueError("image ids must lie in [0, 2**31) to be joined")
    low, high, big, over = _band_pairs(key, image, new, probe, cap, link)
    return unique((low << 32) | high), big, over


def unpack(packed: np.ndarray) -> np.ndarray:
    """int64 (p, 2) pairs from pairs packed as ``low << 32 | high`` (`band_proposals`)."""
    out = np.empty((packed.size, 2), np.int64)
    np.right_shift(packed, 32, out=out[:, 0])
    np.bitwise_and(packed, 0xFFFFFFFF, out=out[:, 1])
    return out


def _band_pairs(
    key: np.ndarray, image: np.ndarray, new: np.ndarray, probe: np.ndarray, cap: int, link: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """`candidate_pairs` for the rows of one band, where a bucket is one key.

    Returns:
        (smaller image ids, larger image ids, the largest bucket's size, buckets over ``cap``);
        a pair may repeat.
    """
    order = np.lexsort((image, key))
    key, image, new, probe = key[order], image[order], new[order], probe[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, key.size])
    # Rank of each row inside its bucket; a row at rank j pairs with ranks [0, j) while j < cap,
    # and with ranks [0, link) after that.
    rank = np.arange(key.size) - np.repeat(starts, sizes)
    partners = np.where(rank < cap, rank, min(link, cap))
    total = int(partners.sum())
    big, over = int(sizes.max()), int((sizes > cap).sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), big, over
    left = np.repeat(np.arange(key.size), partners)
    offsets = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners)
    right = np.repeat(np.repeat(starts, sizes), partners) + offsets
    # Two probes meeting relate two images by a shift of two steps: not a candidate.
    keep = (new[left] | new[right]) & (image[left] != image[right]) & ~(probe[left] & probe[right])
    a, b = image[left[keep]], image[right[keep]]
    return np.minimum(a, b), np.maximum(a, b), big, over


_Resident = np.ndarray | Screen | None
"""What the band join keeps in memory for every image it joins, to rule candidates out before
exact verification (`_resident`): a recipe's whole signatures when they are small (the exact
distance then decides at once), else the coarsest level of its screen, else nothing."""

_Signed = tuple[np.ndarray, np.ndarray, np.ndarray | None, _Resident]
"""(signatures (n, S), band keys (n, bands), probe keys (n, probes, bands) or None, resident)."""


def _resident(recipe: Recipe, signatures: np.ndarray) -> _Resident:
    """The in-memory summary of some images the band join rules candidates out with.

    Bounded per image (at most `RESIDENT_BYTES` of signature, or the screen's coarsest level:
    136 bytes for pixel-v1 against its 1,032-byte signature), so a million images' summaries
    fit where their signatures and full screens (1.7 GB for pixel-v1) would not.
    """
    if recipe.signature_bytes <= RESIDENT_BYTES:
        return signatures
    screen = recipe.screen(signatures)
    return None if screen is None else screen.coarsest()


def _concatenate(parts: Sequence[_Resident]) -> _Resident:
    if not parts or parts[0] is None:
        return None
    if isinstance(parts[0], Screen):
        return Screen.concatenate([p for p in parts if isinstance(p, Screen)])
    return np.concatenate([p for p in parts if isinstance(p, np.ndarray)])


def _rows(resident: _Resident, index: np.ndarray) -> _Resident:
    if resident is None:
        return None
    return resident.rows(index) if isinstance(resident, Screen) else resident[index]


def _sign(recipe: Recipe, unit: np.ndarray) -> _Signed:
    """Signatures, band keys, probe keys and resident summary of a chunk under one recipe;
    pure, runs in a worker thread."""
    signatures = recipe.signatures(unit)
    return (
        signatures,
        recipe.band_keys(signatures),
        recipe.probe_keys(signatures),
        _resident(recipe, signatures),
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


def _keeper(recipe: Recipe, resident: _Resident) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``keep(left, right)``: which pairs of rows of ``resident`` may be within the radius."""
    if resident is None:
        return lambda left, _right: np.ones(left.size, bool)
    if isinstance(resident, Screen):
        return lambda left, right: resident.may_be_within(left, right, recipe.radius)
    verify = recipe.verifier(resident)
    return lambda left, right: verify(left, right) <= recipe.radius


def _join_bands(
    recipe: Recipe,
    bands: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    ids: np.ndarray,
    resident: _Resident,
) -> _Proposed:
    """Propose pairs band by band and keep those the resident summary does not rule out.

    Only the survivors are held (compacted as they grow), never every band's proposals: at a
    million images of the scale benchmark pixel-v1's band join proposes 113M distinct pairs,
    1.8 GB as unpacked pairs, where the coarsest screen level leaves a fraction of them.

    Args:
        bands: (key, image, new, probe) rows of each band in turn (`band_proposals`).
        ids: sorted distinct ids of every image in ``bands``; ``resident`` rows in that order.
    """
    row_of = lookup(ids)
    keep = _keeper(recipe, resident)
    kept: list[np.ndarray] = []
    held = proposals = largest = capped = 0
    for key, image, new, probe in bands:
        pairs, big, over = band_proposals(key, image, new, probe)
        largest, capped, proposals = max(largest, big), capped + over, proposals + pairs.size
        for start in range(0, pairs.size, PREFILTER_BATCH):
            batch = pairs[start : start + PREFILTER_BATCH]
            left, right = row_of(batch >> 32), row_of(batch & 0xFFFFFFFF)
            kept.append(batch[keep(left, right)])
            held += kept[-1].size
        if held > COMPACT_AT:
            kept = [unique(np.concatenate(kept), in_place=True)]
            held = kept[0].size
    survivors = unique(np.concatenate(kept), in_place=True) if kept else np.empty(0, np.int64)
    return _Proposed(survivors, proposals, largest, capped)


def _band_rows(
    keys: np.ndarray,
    probes: np.ndarray,
    images: np.ndarray,
    old_band: np.ndarray,
    old_keys: np.ndarray,
    old_images: np.ndarray,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The (key, image, new, probe) rows of each band in turn (`band_proposals`).

    Args:
        keys: int64 (n, bands) the new images' band keys; probes: (n, probes, bands) their
            probe keys; images: (n,) their ids.
        old_band, old_keys, old_images: one row per old member (`NearIndexer._old_members`).
    """
    probe_images = np.repeat(images, probes.shape[1])
    new_rows = np.ones(images.size + probe_images.size, bool)
    probe_rows = np.repeat([False, True], [images.size, probe_images.size])
    # Old members grouped by band once; each band's rows are built only when the join reaches
    # it, so no array of all n x bands rows is ever made (1.2 GB at 1M images).
    old_order = np.argsort(old_band, kind="stable")
    old_bounds = np.searchsorted(old_band[old_order], np.arange(keys.shape[1] + 1))
    for band in range(keys.shape[1]):
        old = old_order[old_bounds[band] : old_bounds[band + 1]]
        yield (
            np.concatenate([keys[:, band], probes[:, :, band].reshape(-1), old_keys[old]]),
            np.concatenate([images, probe_images, old_images[old]]),
            np.concatenate([new_rows, np.zeros(old.size, bool)]),
            np.concatenate([probe_rows, np.zeros(old.size, bool)]),
        )


def _verify(
    recipe: Recipe,
    pairs: np.ndarray,
    involved: np.ndarray,
    signatures: np.ndarray,
    *,
    screened: bool = False,
) -> _Verified:
    """The candidate pairs within the recipe's radius, with their exact distances.

    Args:
        pairs: int64 (p, 2) candidate image ids.
        involved: int64 sorted unique ids of every image in ``pairs``.
        signatures: uint8 (len(involved), S), row k the signature of image ``involved[k]``.
        screened: the screen's coarsest level ruled these pairs in already (the band join's
            resident summary, `_resident`), so only its finer levels run.
    """
    screen = recipe.screen(signatures) if pairs.size else None
    if screen is not None and screened:
        screen = Screen(levels=screen.levels[1:], scale=screen.scale)
    verify = recipe.verifier(signatures)
    row_of = lookup(involved)
    kept: list[np.ndarray] = []
    distances: list[np.ndarray] = []
    for start in range(0, len(pairs), VERIFY_BATCH):
        batch = pairs[start : start + VERIFY_BATCH]
        left, right = row_of(batch[:, 0]), row_of(batch[:, 1])
        if screen is not None:
            # Most candidates are far apart: a cheap lower bound rules them out before the
            # exact distance reads whole signatures.
            maybe = screen.may_be_within(left, right, recipe.radius)
            batch, left, right = batch[maybe], left[maybe], right[maybe]
        distance = verify(left, right)
        close = distance <= recipe.radius
        kept.append(batch[close])
        distances.append(distance[close])
    if not kept:
        return np.empty((0, 2), np.int64), np.empty(0, np.float64)
    return np.concatenate(kept), np.concatenate(distances)


class NearIndexer:
    """Signs the new images of one ingest and, at the end, finds and stores their pairs."""

    def __init__(self, conn: Connection, recipes: Sequence[Recipe] = DEFAULT_RECIPES) -> None:
        self.conn = conn
        self.recipes = tuple(recipes)
        self.ids = ensure_recipes(conn, self.recipes)
        self._keys: dict[str, list[np.ndarray]] = {r.name: [] for r in self.recipes}
        self._images: dict[str, list[np.ndarray]] = {r.name: [] for r in self.recipes}
        self._probes: dict[str, list[np.ndarray]] = {r.name: [] for r in self.recipes}
        self._resident: dict[str, list[_Resident]] = {r.name: [] for r in self.recipes}
        # One worker per recipe, up to the cores: the recipes of a chunk sign in parallel.
        workers = max(1, min(len(self.recipes), os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsaudit-sign")
        # The band join of one recipe runs here while this thread stores its band keys.
        self._joiner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsaudit-join")
        self._pending: deque[tuple[list[Future[_Signed]], np.ndarray]] = deque()

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
                signatures, keys, probes, resident = job.result()
                recipe_id = self.ids[recipe.name]
                bulk_insert(
                    self.conn,
                    core_table(Signature),
                    ("recipe_id", "image_id", "value"),
                    [
                        (recipe_id, i, s.tobytes())
                        for i, s in zip(image_ids.tolist(), signatures, strict=True)
                    ],
                )
                self._keys[recipe.name].append(keys)
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
        self._joiner.shutdown(wait=True, cancel_futures=True)

    def _store_band_keys(self, recipe_id: int, keys: np.ndarray, images: np.ndarray) -> None:
        """Insert the new images' band keys: ``keys`` int64 (n, bands), ``images`` (n,)."""
        # Once, after the last chunk, in primary-key order (band by band, each sorted by key
        # and image), so each B-tree page is written once, in order, rather than split at
        # random places chunk after chunk.
        for band in range(keys.shape[1]):
            column = keys[:, band]
            order = np.lexsort((images, column))
            # In slices: Python ints cost about 30 bytes each, so lists of every row at once
            # would be gigabytes at a million images. zip over 1-D lists builds each row in C;
            # a 2-D .tolist() cost 2x as much.
            for start in range(0, order.size, INSERT_BATCH):
                part = order[start : start + INSERT_BATCH]
                bulk_insert(
                    self.conn,
                    core_table(BandKey),
                    ("recipe_id", "band", "key", "image_id"),
                    zip(
                        itertools.repeat(recipe_id),
                        itertools.repeat(band),
                        column[part].tolist(),
                        images[part].tolist(),
                        strict=False,
                    ),
                )

    def finish(self, on_progress: Progress | None = None) -> tuple[NearStats, ...]:
        """Store the new band keys, join them against the catalog, verify, store pairs.

        Under `catalog.db.lock_pair_finding`, held until the caller's transaction ends, so a
        concurrent ingest's new images are either all visible (committed) or joined later by
        that ingest against ours.

        One recipe after the other (each holds its survivors and verification blocks; two at
        once doubled the peak memory): its band join runs in a worker thread while this thread
        stores its band keys; then this thread verifies the survivors block by block on the
        stored signatures (`_verify_blocks`) and stores the pairs.
        """
        self._drain(wait=True)
        step = on_progress or (lambda _task, _advance, _total: None)
        lock_pair_finding(self.conn)
        try:
            return tuple(self._find_pairs(recipe, step) for recipe in self.recipes)
        finally:
            self.close()

    def _find_pairs(self, recipe: Recipe, step: Progress) -> NearStats:
        """Band keys stored, joined, verified and pairs stored for one recipe."""
        started = time.perf_counter()
        name, recipe_id = recipe.name, self.ids[recipe.name]
        if not self._keys[name]:
            return NearStats(name, 0, 0, 0, 0, 0, 0.0)
        task = f"{name}: store band keys, join, verify"
        keys = np.concatenate(self._keys[name])
        images = np.concatenate(self._images[name])
        resident = _concatenate(self._resident[name])
        # Probe keys (`Recipe.probe_keys`): more rows of the new images in each band, joined
        # like their stored keys, never stored. (n, 0, bands) when the recipe has none.
        probes = (
            np.concatenate(self._probes[name])
            if self._probes[name]
            else np.empty((images.size, 0, keys.shape[1]), np.int64)
        )
        self._keys[name], self._images[name], self._probes[name] = [], [], []
        self._resident[name] = []
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
        bands = _band_rows(keys, probes, images, old_band, old_keys, old_images)
        joining = self._joiner.submit(_join_bands, recipe, bands, ids, resident)
        self._store_band_keys(recipe_id, keys, images)
        step(task, 1, 3)
        proposed = joining.result()
        del keys, probes, bands, old_keys, old_images
        step(task, 1, 3)
        survivors, proposed.survivors = proposed.survivors, np.empty(0, np.int64)
        if isinstance(resident, np.ndarray):
            # The resident summaries were the signatures themselves (in id order, `ids`) and
            # kept only pairs within the radius: their distances come from them at once.
            close, distance = _verify(recipe, unpack(survivors), ids, resident)
        else:
            del resident
            close, distance = self._verify_blocks(recipe, recipe_id, survivors)
        del survivors
        # No ON CONFLICT: candidates are distinct, each has a side new in this ingest, and a
        # concurrent ingest's pairs have a side new in it (`lock_pair_finding`), so no pair is
        # stored twice; on PostgreSQL that lets the rows go by COPY.
        bulk_insert(
            self.conn,
            core_table(Pair),
            ("recipe_id", "image_a", "image_b", "distance"),
            zip(
                itertools.repeat(recipe_id),
                close[:, 0].tolist(),
                close[:, 1].tolist(),
                distance.tolist(),
                strict=False,
            ),
        )
        step(task, 1, 3)
        return NearStats(
            recipe=name,
            images=images.size,
            candidates=proposed.proposals,
            pairs=len(close),
            largest_bucket=proposed.largest,
            capped_buckets=proposed.capped,
            seconds=time.perf_counter() - started,
        )

    def _verify_blocks(self, recipe: Recipe, recipe_id: int, packed: np.ndarray) -> _Verified:
        """`_verify` over blocks of image ids, so only two blocks' signatures are held at once.

        Image ids are cut into blocks of about `VERIFY_BLOCK_BYTES` of signatures; the pairs
        (sorted by their lower id) are verified block pair by block pair, (i, j) with i <= j,
        each block's signatures read from the catalog (`_block_signatures`).

        Args:
            packed: sorted distinct pairs packed as ``low << 32 | high`` (`unpack`); unpacked
                a block at a time (unpacked at once, 29M survivors at 1M images took 0.46 GB).
        """
        kept: list[_Verified] = []
        if packed.size == 0:
            return np.empty((0, 2), np.int64), np.empty(0, np.float64)
        block = max(1, VERIFY_BLOCK_BYTES // recipe.signature_bytes)
        top = int(packed[-1] >> 32) // block
        bounds = np.searchsorted(packed, (np.arange(top + 2) * block) << 32)
        for i in range(top + 1):
            if bounds[i] == bounds[i + 1]:
                continue
            part = unpack(packed[bounds[i] : bounds[i + 1]])
            high_block = part[:, 1] // block
            order = np.argsort(high_block, kind="stable")
            part, high_block = part[order], high_block[order]
            wanted = unique(np.concatenate([part[:, 0], part[high_block == i, 1]]))
            ids_i, values_i = self._block_signatures(recipe, recipe_id, wanted, block)
            cuts = np.flatnonzero(np.r_[True, high_block[1:] != high_block[:-1]])
            for a, b in zip(cuts.tolist(), np.r_[cuts[1:], high_block.size].tolist(), strict=True):
                tile = part[a:b]
                if int(high_block[a]) == i:
                    ids, values = ids_i, values_i
                else:
                    wanted = unique(tile[:, 1])
                    ids_j, values_j = self._block_signatures(recipe, recipe_id, wanted, block)
                    ids = np.concatenate([ids_i, ids_j])
                    values = np.concatenate([values_i, values_j])
                kept.append(_verify(recipe, tile, ids, values, screened=True))
        return np.concatenate([k[0] for k in kept]), np.concatenate([k[1] for k in kept])

    def _block_signatures(
        self, recipe: Recipe, recipe_id: int, wanted: np.ndarray, block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stored signatures of at least the ``wanted`` ids (sorted, unique, all in one block of
        ``block`` ids): (sorted ids (n,), uint8 (n, S)).

        One range scan of the signature table's primary key when they fill a good part of the
        block (a first ingest, where nearly every image has candidates); else lookups of just
        those ids (an incremental ingest, whose old images in a block are a few members of
        the buckets its new images joined).
        """
        if wanted.size * 4 < block:
            return wanted, self._signatures(recipe_id, wanted, recipe.signature_bytes)
        first = int(wanted[0]) // block * block
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
        stored signatures, read and summarised a slice at a time."""
        return _concatenate(
            [
                _resident(
                    recipe,
                    self._signatures(
                        recipe_id, image_ids[start : start + RESIDENT_SLICE], recipe.signature_bytes
                    ),
                )
                for start in range(0, image_ids.size, RESIDENT_SLICE)
            ]
        )

    def _old_members(
        self, recipe_id: int, keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Catalogued images (before this ingest) sharing a bucket with a new image.

        Args:
            keys: int64 (m, bands): the new images' band keys, and their probe keys if the
                recipe has any.

        Returns:
            (band, key, image id) int64 arrays, one row per old member.

        At most `BUCKET_CAP` per bucket (the lowest ids), the same members the guard keeps.
        Runs before this ingest stores its own band keys for the recipe, so every band key it
        reads is another ingest's, committed (SQLite: before ours began; PostgreSQL: before
        `lock_pair_finding` let us in). Image ids say nothing about that order: a PostgreSQL
        sequence hands them out to concurrent ingests interleaved.
        """
        empty = np.empty(0, np.int64)
        mark = placeholder(self.conn)
        has_old = self.conn.exec_driver_sql(
            f"SELECT 1 FROM band_key WHERE recipe_id = {mark} LIMIT 1", (recipe_id,)
        ).first()
        if has_old is None:
            return empty, empty, empty
        self.conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE IF NOT EXISTS dsaudit_new_key "
            "(band SMALLINT NOT NULL, key BIGINT NOT NULL, PRIMARY KEY (band, key))"
        )
        self.conn.exec_driver_sql("DELETE FROM dsaudit_new_key")
        for band in range(keys.shape[1]):
            distinct = unique(keys[:, band])
            bulk_insert(
                self.conn,
                "dsaudit_new_key",
                ("band", "key"),
                zip(itertools.repeat(band), distinct.tolist(), strict=False),
            )
        # Every member of those buckets, as integer columns (`fetch_integers`: row tuples cost
        # more than the join). CROSS JOIN makes SQLite walk the new keys and seek each bucket
        # in band_key's primary key; left to choose, it scanned all of the recipe's band keys
        # (250k images: 3.3 s against 0.3 s). PostgreSQL plans it as any inner join.
        bands, key, image = fetch_integers(
            self.conn,
            ("k.band", "k.key", "b.image_id"),
            f"FROM dsaudit_new_key k CROSS JOIN band_key b WHERE b.recipe_id = {mark} "
            "AND b.band = k.band AND b.key = k.key",
            (recipe_id,),
        )
        # The first BUCKET_CAP of each bucket by id (the guard's members), ranked here: a
        # window function in SQL cost six times the join.
        order = np.lexsort((image, key, bands))
        bands, key, image = bands[order], key[order], image[order]
        starts = np.flatnonzero(np.r_[True, (bands[1:] != bands[:-1]) | (key[1:] != key[:-1])])
        rank = np.arange(bands.size) - np.repeat(starts, np.diff(np.r_[starts, bands.size]))
        first = rank < BUCKET_CAP
        return bands[first], key[first], image[first]

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
            values = np.frombuffer(b"".join(bytes(r[1]) for r in rows), np.uint8)
            out[start + np.searchsorted(batch, ids)] = values.reshape(len(rows), width)
        return out
