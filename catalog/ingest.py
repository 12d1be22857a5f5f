"""Ingest: one dataset version from planned splits into the catalog, chunk by chunk.

For each chunk: canonicalise, digest, flag low-information images, look the digests up, insert
the images the catalog has not seen and then the items (executemany, `catalog.db.bulk_insert`),
and hand the new informative images to the near-duplicate stage (`catalog.near`), which joins
their band keys against the catalog after the last chunk. Everything happens on the caller's
connection inside the caller's transaction, so a version is visible completely or not at all:
run it inside `catalog.db.writing(engine)`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Insert, Select, Table, func, insert, select

from catalog import __version__
from catalog.db import bulk_insert, insert_absent, placeholder
from catalog.errors import InputError, NotFoundError, VersionExistsError, unprintable
from catalog.loaders import Chunk, ImageArray, PlannedSplit, SkippedFile, SplitInput
from catalog.loaders.arrays import file_digest
from catalog.loaders.folders import FOLDER_FORMAT, FolderSplit
from catalog.near import NearIndexer, NearStats
from catalog.pixels import (
    canonical,
    digests,
    low_information,
    needs_observed_range,
    to_unit,
    value_range,
)
from catalog.queries import store_overlap
from catalog.recipes import DEFAULT_RECIPES, Recipe
from catalog.schema import (
    Dataset,
    Image,
    Item,
    NearIngest,
    RecipeRecord,
    Source,
    Split,
    Version,
    core_table,
)
from catalog.schema import SkippedFile as SkippedFileRecord
from catalog.words import counted

ProgressCallback = Callable[[str, int, int], None]
"""``on_progress(task, advance, total)``: ``advance`` more units of ``task`` (of ``total``) done."""
AUDIT_TASK = "overlap report"
"""The progress task of the overlap report an ingest stores with the version."""

CHUNK_BYTES = 32 * 1024 * 1024
"""Raw pixel bytes per chunk: the ingest's memory is a small multiple of this."""
LOOKUP_BATCH = 5000
"""Digests per ``IN (...)`` lookup; below SQLite's bound-parameter limit."""

_NAME_LIMIT = 200
_IMAGE_COLUMNS = ("digest", "height", "width", "channels", "dtype", "low_info")
_ITEM_COLUMNS = ("position", "image_id", "label", "source_key", "source_row", "source_sha256")
"""An item row's columns but its split and source, which a chunk's items share."""
SKIPPED_SHOWN = 20
"""Skipped files an `IngestResult` lists (its count is complete; the catalog keeps them all)."""


@dataclass(frozen=True)
class SplitIngested:
    """What one split added: its items, and how many of its images the catalog had not seen."""

    name: str
    items: int
    new_images: int
    low_info_items: int
    skipped: int = 0
    """Files left out because they could not be decoded (``skip_bad``)."""


@dataclass(frozen=True)
class IngestResult:
    """The outcome of `ingest`."""

    dataset: str
    version: str
    version_id: int
    parent: str | None
    splits: tuple[SplitIngested, ...]
    near: tuple[NearStats, ...]
    seconds: float
    skipped_files: tuple[SkippedFile, ...] = ()
    """The first `SKIPPED_SHOWN` files left out; `skipped` counts them all."""

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.splits)

    @property
    def items(self) -> int:
        return sum(s.items for s in self.splits)

    @property
    def new_images(self) -> int:
        return sum(s.new_images for s in self.splits)


def chunk_rows(images: ImageArray, budget: int = CHUNK_BYTES) -> int:
    """How many images of this array fit the chunk budget (at least one)."""
    row_bytes = int(np.prod(images.shape[1:], dtype=np.int64)) * images.dtype.itemsize
    return max(1, budget // max(1, row_bytes))


def _insert_ignore(conn: Connection, table: Table) -> Insert:
    """INSERT that skips rows whose unique key exists (safe when two ingests race)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def check_names(dataset: str, version: str, splits: Sequence[PlannedSplit]) -> None:
    """Raise `InputError` for a bad dataset, version or split name, or no splits: checked
    before a catalog is opened (`catalog.api.ingest`), so such a first ingest creates none.
    """
    _check_name("dataset", dataset)
    _check_name("version", version)
    if not splits:
        raise InputError(f"{dataset}@{version}: no splits to ingest")
    for split in splits:
        # An image folder's split is a folder: the message names it. An array's split name
        # comes from --split or the array's key, which the message shows already.
        where = f"{split.root / split.name}: " if isinstance(split, FolderSplit) else ""
        _check_name("split", split.name, where)


def _check_name(kind: str, value: str, where: str = "") -> None:
    # Spaces around a name are refused: refs are read with them stripped, so such a name
    # could be stored but never named again.
    if (
        not value
        or len(value) > _NAME_LIMIT
        or any(c in value for c in "@:/")
        or value != value.strip()
        or unprintable(value) is not None
    ):
        raise InputError(
            f"{where}{kind} name {repr(value) if value.isprintable() else ascii(value)} must be "
            f"1-{_NAME_LIMIT} characters of text "
            "without '@', ':', '/', control characters, or spaces at either end"
        )


def _dataset_id(conn: Connection, name: str) -> int:
    table = core_table(Dataset)
    conn.execute(_insert_ignore(conn, table), [{"name": name}])
    return conn.execute(select(table.c.id).where(table.c.name == name)).scalar_one()


def _parent_id(conn: Connection, dataset_id: int, dataset: str, parent: str | None) -> int | None:
    versions = core_table(Version)
    if parent is not None:
        found = conn.execute(
            select(versions.c.id).where(
                versions.c.dataset_id == dataset_id, versions.c.tag == parent
            )
        ).scalar_one_or_none()
        if found is None:
            raise NotFoundError(f"parent version {dataset}@{parent} does not exist")
        return found
    return conn.execute(
        select(versions.c.id)
        .where(versions.c.dataset_id == dataset_id)
        .order_by(versions.c.created_at.desc(), versions.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def observed_range(
    images: ImageArray,
    rows: int,
    where: str,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """(min, max) over every pixel of the array, read chunk by chunk.

    Raises:
        InputError: a float image holds NaN or an infinity (named by its row): such a value
            has no place on the 0-1 scale, and would silently become black or white.
    """
    low, high = np.inf, -np.inf
    start = 0
    for chunk in images.chunks(rows):
        if on_chunk is not None:
            on_chunk(len(chunk))
        if chunk.dtype.kind == "f":
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                row = start + int(np.flatnonzero(~finite)[0])
                raise InputError(
                    f"{where}: image {row} has NaN or infinite pixels; float images must be "
                    "finite (replace or drop them, e.g. with numpy.nan_to_num)"
                )
        if chunk.size:
            low = min(low, float(chunk.min()))
            high = max(high, float(chunk.max()))
        start += len(chunk)
    return (low, high) if low <= high else (0.0, 1.0)


DIGEST_LOOKUP = "SELECT digest, id FROM image WHERE digest IN ({marks})"
"""The digest lookup of `image_ids`: on SQLite answered from the digest index alone, which
holds the id (the rowid); a test reads its plan. PostgreSQL reads each row from the heap."""


def version_committed(conn: Connection, result: IngestResult) -> bool:
    """Whether the version an ingest returned is in the catalog (read on a new transaction
    after the ingest's: `catalog.api.ingest` asks when a signal landed near its commit)."""
    dataset, versions = core_table(Dataset), core_table(Version)
    found = conn.execute(
        select(dataset.c.name)
        .join(versions, versions.c.dataset_id == dataset.c.id)
        .where(versions.c.id == result.version_id, versions.c.tag == result.version)
    ).scalar_one_or_none()
    return found == result.dataset


def image_ids(conn: Connection, wanted: Sequence[bytes]) -> dict[bytes, int]:
    """Image ids of the digests already in the catalog (absent digests are left out).

    Digests are looked up in sorted order (neighbouring keys share index pages) on the DBAPI
    cursor, whose fetchall skips the per-row Result objects: 220k digests took 1.5 s of CPU
    through Core, 1.0 s this way. On SQLite only the digest index is read (it holds the id):
    also reading the low-information flag cost a lookup of each image's row, 1M digests 7.0 s
    against 4.6 s (a split's low-information items are counted once, `low_info_count`).
    """
    found: dict[bytes, int] = {}
    mark = placeholder(conn)
    ordered = sorted(wanted)
    cursor = conn.connection.cursor()
    try:
        for start in range(0, len(ordered), LOOKUP_BATCH):
            batch = ordered[start : start + LOOKUP_BATCH]
            marks = ", ".join([mark] * len(batch))
            cursor.execute(DIGEST_LOOKUP.format(marks=marks), batch)
            found.update((bytes(d), id_) for d, id_ in cursor.fetchall())
    finally:
        cursor.close()
    return found


def low_info_count(split_id: int) -> Select[int]:
    """How many items of a split show a low-information image: read from the partial index of
    those images (`catalog.schema.Image`) and the items' ``(image_id, split_id)`` index, one
    seek per flagged image of the catalog. With a few per thousand flagged, as usual, a few
    milliseconds for a 1M-item split; 200k flagged images cost about 0.1 s a split."""
    item, image = core_table(Item), core_table(Image)
    low = select(image.c.id).where(image.c.low_info.is_(True))
    return (
        select(func.count())
        .select_from(item)
        .where(item.c.split_id == split_id, item.c.image_id.in_(low))
    )


def ingest(
    conn: Connection,
    dataset: str,
    version: str,
    splits: Sequence[PlannedSplit],
    *,
    note: str | None = None,
    parent: str | None = None,
    on_progress: ProgressCallback | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    recipes: Sequence[Recipe] = DEFAULT_RECIPES,
) -> IngestResult:
    """Add ``dataset@version`` with ``splits`` to the catalog, on the caller's transaction.

    Args:
        conn: a connection inside a write transaction (`catalog.db.writing`).
        dataset: the dataset's name; created on first use.
        version: the new version's tag; a version is immutable, so it must not exist yet.
        splits: from `catalog.loaders.plan_arrays` or `catalog.loaders.plan_folder`.
        note: free text kept on the version.
        parent: the tag of the version this one derives from; default the dataset's latest.
        on_progress: called as images are processed, see `ProgressCallback`.
        chunk_bytes: raw pixel bytes per chunk (memory bound).
        recipes: near-duplicate recipes to sign new images with; empty for exact only.

    Raises:
        VersionExistsError: ``dataset@version`` is already in the catalog.
        InputError, NotFoundError: bad names or a missing parent.
    """
    started = time.perf_counter()
    check_names(dataset, version, splits)
    report = on_progress or (lambda _task, _advance, _total: None)

    versions = core_table(Version)
    dataset_id = _dataset_id(conn, dataset)
    exists = conn.execute(
        select(func.count()).where(versions.c.dataset_id == dataset_id, versions.c.tag == version)
    ).scalar_one()
    if exists:
        raise VersionExistsError(
            f"{dataset}@{version} is already in the catalog; versions are immutable, so "
            "ingest under a new version tag"
        )
    parent_id = _parent_id(conn, dataset_id, dataset, parent)
    parent_tag = (
        conn.execute(select(versions.c.tag).where(versions.c.id == parent_id)).scalar_one()
        if parent_id is not None
        else None
    )
    version_id = conn.execute(
        insert(versions).returning(versions.c.id),
        {
            "dataset_id": dataset_id,
            "tag": version,
            "created_at": datetime.now(UTC),
            "parent_id": parent_id,
            "note": note,
            "tool_version": __version__,
        },
    ).scalar_one()

    # Every file read: the images' files, and the labels' where they are files of their own.
    files = [split.source for split in splits] + [
        split.labels_source
        for split in splits
        if isinstance(split, SplitInput) and split.labels_source is not None
    ]
    source_ids: dict[str, int] = {}
    for file in files:
        if file.path not in source_ids:
            source_ids[file.path] = conn.execute(
                insert(core_table(Source)).returning(core_table(Source).c.id),
                {
                    "version_id": version_id,
                    # Absolute: pictures and `dsaudit check` read the file again later, from
                    # wherever the command runs.
                    "path": os.path.abspath(file.path) if file.format != "memory" else file.path,
                    "sha256": "",  # below: _SourceDigests, or _seal_folder
                    "size": file.size,
                    "format": file.format,
                },
            ).scalar_one()

    indexer = NearIndexer(conn, recipes) if recipes else None
    sources = _SourceDigests([file.path for file in files if file.digested])
    skipped: list[SkippedFile] = []
    brought = _Span()
    file_bytes: dict[int, int] = {}
    try:
        done = []
        for split in splits:
            source_id = source_ids[split.source.path]
            ingested, read = _ingest_split(
                conn, version_id, split, source_id, indexer, report, chunk_bytes, skipped, brought
            )
            done.append(ingested)
            file_bytes[source_id] = file_bytes.get(source_id, 0) + read
        near = indexer.finish(report) if indexer is not None else ()
        source = core_table(Source)
        for path, sha256 in sources.results():
            conn.execute(
                source.update().where(source.c.id == source_ids[path]).values(sha256=sha256)
            )
    finally:
        sources.close()
        if indexer is not None:
            indexer.close()
    folders = {source_ids[s.source.path] for s in splits if s.source.format == FOLDER_FORMAT}
    for source_id in sorted(folders):
        _seal_folder(conn, version_id, source_id, file_bytes.get(source_id, 0))
    _record_near(conn, version_id, near, brought)
    # The audit everyone runs next, kept with the version (seconds at a million images).
    report(AUDIT_TASK, 0, 1)
    store_overlap(conn, version_id)
    report(AUDIT_TASK, 1, 1)
    return IngestResult(
        dataset=dataset,
        version=version,
        version_id=version_id,
        parent=parent_tag,
        splits=tuple(done),
        near=near,
        seconds=time.perf_counter() - started,
        skipped_files=tuple(skipped),
    )


@dataclass
class _Span:
    """The lowest and highest id of the images an ingest brought in (None: none yet)."""

    first: int | None = None
    last: int | None = None

    def add(self, ids: np.ndarray) -> None:
        if ids.size:
            low, high = int(ids.min()), int(ids.max())
            self.first = low if self.first is None else min(self.first, low)
            self.last = high if self.last is None else max(self.last, high)


def _record_near(
    conn: Connection, version_id: int, near: Sequence[NearStats], brought: _Span
) -> None:
    """Keep what the near stage did under each recipe (`NearIngest`), and the range of the
    images this ingest brought in, before the overlap report is stored: reports read them to
    say when near counts may be lower bounds."""
    if not near:
        return
    recipe = core_table(RecipeRecord)
    ids = {
        name: recipe_id
        for name, recipe_id in conn.execute(
            select(recipe.c.name, recipe.c.id).where(recipe.c.name.in_([n.recipe for n in near]))
        )
    }
    conn.execute(
        insert(core_table(NearIngest)),
        [
            {
                "version_id": version_id,
                "recipe_id": ids[n.recipe],
                "images": n.images,
                "candidates": n.candidates,
                "pairs": n.pairs,
                "largest_bucket": n.largest_bucket,
                "capped_buckets": n.capped_buckets,
                "first_image": brought.first,
                "last_image": brought.last,
            }
            for n in near
        ],
    )


class _SourceDigests:
    """The sha256 of an ingest's array files, digested one after the other in a background
    thread while the ingest reads their rows.

    Digested up front, the files of the 1M-image benchmark (3.1 GB) kept one core busy for
    7 s before the first chunk, 5 % of an incremental ingest.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsaudit-digest")
        self._jobs = {
            path: self._pool.submit(file_digest, Path(path), self._stop)
            for path in dict.fromkeys(paths)
        }

    def results(self) -> Iterator[tuple[str, str]]:
        """(path, sha256 hex) of each file, waiting for them; a file that can no longer be
        read raises `InputError` naming it."""
        for path, job in self._jobs.items():
            try:
                yield path, job.result()
            except OSError as exc:
                raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None

    def close(self) -> None:
        """Stop digesting (an ingest that failed does not wait for its files)."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _seal_folder(conn: Connection, version_id: int, source_id: int, size: int) -> None:
    """Give an image folder's source row its digest: sha256 of the manifest, one line
    ``relative path TAB file sha256`` per ingested file in path order, and its files' bytes."""
    item, split = core_table(Item), core_table(Split)
    manifest = hashlib.sha256()
    rows = conn.execute(
        select(item.c.source_key, item.c.source_sha256)
        .join(split, split.c.id == item.c.split_id)
        .where(split.c.version_id == version_id, item.c.source_id == source_id)
        # Code-point order everywhere: PostgreSQL would otherwise sort by the server's locale.
        .order_by(
            item.c.source_key.collate("C")
            if conn.dialect.name == "postgresql"
            else item.c.source_key
        )
    )
    for key, sha256 in rows:
        manifest.update(f"{key}\t{sha256}\n".encode())
    source = core_table(Source)
    conn.execute(
        source.update()
        .where(source.c.id == source_id)
        .values(sha256=manifest.hexdigest(), size=size)
    )


def _array_chunks(
    split: SplitInput, report: ProgressCallback, task: str, chunk_bytes: int
) -> Iterator[Chunk]:
    """An array split as chunks of consecutive rows, with the array's 0-1 scale."""
    rows = chunk_rows(split.images, chunk_bytes)
    total = split.count
    scale: tuple[float, float] = value_range(split.images.dtype)
    if needs_observed_range(split.images.dtype):
        # Floats have no intrinsic scale: one read of the array finds it (value_range).
        observed = observed_range(
            split.images, rows, split.where, lambda n: report(f"{task}: value range", n, total)
        )
        scale = value_range(split.images.dtype, observed)
    position = 0
    for images in split.images.chunks(rows):
        n = len(images)
        labels: list[str | None] = (
            split.labels[position : position + n].tolist()
            if split.labels is not None
            else [None] * n
        )
        yield Chunk(
            images=images,
            positions=np.arange(position, position + n, dtype=np.int64),
            labels=labels,
            scale=scale,
        )
        position += n


def _ingest_split(
    conn: Connection,
    version_id: int,
    split: PlannedSplit,
    source_id: int,
    indexer: NearIndexer | None,
    report: ProgressCallback,
    chunk_bytes: int,
    skipped: list[SkippedFile],
    brought: _Span,
) -> tuple[SplitIngested, int]:
    """Ingest one split chunk by chunk.

    Returns:
        (what it added, bytes of the files its images were decoded from)
    """
    splits = core_table(Split)
    split_id = conn.execute(
        insert(splits).returning(splits.c.id), {"version_id": version_id, "name": split.name}
    ).scalar_one()
    total = split.count
    task = f"{split.name} ({split.source.path.rsplit('/', 1)[-1]}:{split.key})"
    chunks = (
        _array_chunks(split, report, task, chunk_bytes)
        if isinstance(split, SplitInput)
        else split.chunks(chunk_bytes)
    )
    items = new_images = skipped_here = file_bytes = 0
    for chunk in chunks:
        if chunk.skipped:
            # Absolute, as sources are: read from any directory later, and what the result
            # lists is what `ls` and the reports list.
            left_out = [SkippedFile(os.path.abspath(f.path), f.reason) for f in chunk.skipped]
            bulk_insert(
                conn,
                core_table(SkippedFileRecord),
                ("version_id", "path", "reason"),
                [(version_id, f.path, f.reason) for f in left_out],
            )
            skipped_here += len(left_out)
            skipped.extend(left_out[: max(0, SKIPPED_SHOWN - len(skipped))])
            report(task, len(chunk.skipped), total)
        if not len(chunk):
            continue
        canon = canonical(chunk.images)
        chunk_digests = digests(canon)
        new = _resolve_images(conn, canon, chunk_digests, chunk.scale)
        known = [new.known[digest] for digest in chunk_digests]
        new_images += new.image_ids.size
        brought.add(new.image_ids)
        if indexer is not None:
            # Only images new to the catalog get signatures; low-information ones hash alike
            # under every recipe and stay out of the band join.
            if new.low.any():
                indexer.add(new.image_ids[~new.low], new.unit[~new.low])
            else:
                indexer.add(new.image_ids, new.unit)
        positions = chunk.positions.tolist()
        keys = chunk.keys if chunk.keys is not None else [split.key] * len(chunk)
        # An array's rows are addressed by position; a folder's files by their own path.
        rows = positions if chunk.keys is None else [None] * len(chunk)
        sha256 = chunk.sha256 if chunk.sha256 is not None else [None] * len(chunk)
        bulk_insert(
            conn,
            core_table(Item),
            _ITEM_COLUMNS,
            zip(
                positions,
                known,
                chunk.labels,
                keys,
                rows,
                sha256,
                strict=True,
            ),
            constants={"split_id": split_id, "source_id": source_id},
        )
        items += len(chunk)
        file_bytes += chunk.file_bytes
        report(task, len(chunk), total)
    if not items:
        # As a split with no images at all is refused: a split of bad files only (--skip-bad)
        # would otherwise pass every audit gate with nothing in it.
        raise InputError(
            f"{split.source.path}: split '{split.name}' has no image left to ingest "
            f"({counted(skipped_here, 'file was', 'files were')} bad and skipped); "
            "nothing was added"
        )
    return (
        SplitIngested(
            name=split.name,
            items=items,
            new_images=new_images,
            low_info_items=conn.execute(low_info_count(split_id)).scalar_one(),
            skipped=skipped_here,
        ),
        file_bytes,
    )


@dataclass(frozen=True)
class _Resolved:
    """A chunk's images in the catalog (`_resolve_images`)."""

    known: dict[bytes, int]
    """The image id of every digest of the chunk."""
    image_ids: np.ndarray
    """Ids (int64) of the images this ingest inserted, in digest order."""
    unit: np.ndarray
    """Their pixels on the 0-1 scale (`catalog.pixels.to_unit`), row for row."""
    low: np.ndarray
    """Their low-information flags (bool), row for row."""


def _resolve_images(
    conn: Connection,
    canon: np.ndarray,
    chunk_digests: list[bytes],
    scale: tuple[float, float],
) -> _Resolved:
    """Ids for every digest of the chunk, inserting the images the catalog lacks.

    Only the images new to the catalog are scaled to 0-1 and screened for low information: a
    known image's flag is the one stored with it (which the reports count too), and a second
    version that is mostly unchanged skips that work for most of its rows (1M rows, 5 % new:
    its chunks took 18.8 s against 20.7 s, median of 3).
    """
    first: dict[bytes, int] = {}
    for index, digest in enumerate(chunk_digests):
        first.setdefault(digest, index)
    known = image_ids(conn, list(first))
    # In digest order: the unique index on digest then takes its new keys in order.
    missing = sorted(d for d in first if d not in known)
    rows = np.fromiter((first[d] for d in missing), np.int64, count=len(missing))
    unit = to_unit(canon[rows], scale)
    low = low_information(unit)
    if missing:
        height, width = canon.shape[1], canon.shape[2]
        channels = canon.shape[3] if canon.ndim == 4 else 1
        dtype = canon.dtype.name
        # Only the rows inserted here are new to this ingest: on PostgreSQL a concurrent
        # ingest may have added some of the same images first (theirs get signed by them).
        inserted = insert_absent(
            conn,
            core_table(Image),
            _IMAGE_COLUMNS,
            [
                (d, height, width, channels, dtype, bool(flag))
                for d, flag in zip(missing, low, strict=True)
            ],
            unique="digest",
        )
        known.update(inserted)
        if len(inserted) < len(missing):
            mine = np.fromiter((d in inserted for d in missing), bool, count=len(missing))
            # Added by a concurrent ingest since the lookup above (PostgreSQL only).
            theirs = [d for d, own in zip(missing, mine, strict=True) if not own]
            known.update(image_ids(conn, theirs))
            unit, low = unit[mine], low[mine]
            missing = [d for d, keep in zip(missing, mine, strict=True) if keep]
    return _Resolved(
        known=known,
        image_ids=np.fromiter((known[d] for d in missing), np.int64, count=len(missing)),
        unit=unit,
        low=low,
    )
