"""Queries: SQL over items, images and splits, returning the report model. Nothing here prints.

A **ref** names what to audit: ``DATASET[@VERSION][:SPLIT]``; without a version it means the
dataset's latest, without a split every split of the version.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, func, insert, select, text

from catalog import vectors
from catalog.db import fetch_integers, fetch_rows, placeholder
from catalog.errors import InputError, NotFoundError
from catalog.loaders.chunk import SkippedFile
from catalog.loaders.folders import FOLDER_FORMAT
from catalog.model import (
    SKIPPED_LISTED,
    ConflictsReport,
    DatasetInfo,
    DiffReport,
    DuplicateGroup,
    DupsReport,
    GroupMember,
    ItemRef,
    LabelConflict,
    LeaksReport,
    Listing,
    LowInfoReport,
    NearConflict,
    NearLeaks,
    NearPair,
    NearTier,
    Neighbour,
    OverlapReport,
    PairOverlap,
    RecipeInfo,
    ShowReport,
    SourceInfo,
    SplitChange,
    SplitInfo,
    SplitMove,
    VersionInfo,
    WithinSplit,
    from_json,
    to_json,
)
from catalog.schema import (
    Dataset,
    Image,
    Item,
    NearIngest,
    Pair,
    RecipeRecord,
    Source,
    Split,
    StoredReport,
    Version,
    core_table,
)
from catalog.schema import SkippedFile as SkippedFileRecord

_BYTE_ORDER = {"sqlite": "BINARY", "postgresql": "C"}
"""Each engine's collation that sorts text by code point (UTF-8 byte order)."""

_REF = re.compile(r"^(?P<dataset>[^@:]+)(?:@(?P<version>[^@:]+))?(?::(?P<split>[^@:]+))?$")


@dataclass(frozen=True)
class Ref:
    """A parsed ``DATASET[@VERSION][:SPLIT]``."""

    dataset: str
    version: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return (
            self.dataset
            + (f"@{self.version}" if self.version else "")
            + (f":{self.split}" if self.split else "")
        )


def parse_ref(value: str) -> Ref:
    """Parse ``DATASET[@VERSION][:SPLIT]``, e.g. ``notmnist@v2:test``."""
    match = _REF.match(value.strip())
    if not match:
        raise InputError(
            f"{value!r} is not a ref; write DATASET[@VERSION][:SPLIT], e.g. notmnist@v2:test"
        )
    return Ref(match["dataset"], match["version"], match["split"])


def _split_sizes(conn: Connection, split_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    item = core_table(Item)
    rows = conn.execute(
        select(item.c.split_id, func.count(), func.count(item.c.image_id.distinct()))
        .where(item.c.split_id.in_(list(split_ids)))
        .group_by(item.c.split_id)
    )
    return {split_id: (items, images) for split_id, items, images in rows}


def resolve(conn: Connection, ref: Ref | str, *, sizes: bool = True) -> tuple[SplitInfo, ...]:
    """The splits a ref names, in version then name order.

    Args:
        sizes: count each split's items and distinct images (one scan of its items); with
            False they are 0, for callers that read the items anyway (`overlap`).

    Raises:
        NotFoundError: naming what is missing and what exists instead.
    """
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    dataset, version, split = core_table(Dataset), core_table(Version), core_table(Split)
    dataset_id = conn.execute(
        select(dataset.c.id).where(dataset.c.name == ref.dataset)
    ).scalar_one_or_none()
    if dataset_id is None:
        known = sorted(conn.execute(select(dataset.c.name)).scalars().all())
        raise NotFoundError(
            f"dataset '{ref.dataset}' is not in the catalog"
            + (f" (datasets: {', '.join(known)})" if known else " (the catalog is empty)")
        )
    query = select(version.c.id, version.c.tag).where(version.c.dataset_id == dataset_id)
    if ref.version is None:
        query = query.order_by(version.c.created_at.desc(), version.c.id.desc()).limit(1)
    else:
        query = query.where(version.c.tag == ref.version)
    found = conn.execute(query).first()
    if found is None:
        tags = conn.execute(
            select(version.c.tag).where(version.c.dataset_id == dataset_id).order_by(version.c.id)
        ).scalars()
        raise NotFoundError(
            f"version '{ref.dataset}@{ref.version}' is not in the catalog "
            f"(versions: {', '.join(tags)})"
        )
    version_id, tag = found
    split_query = (
        select(split.c.id, split.c.name)
        .where(split.c.version_id == version_id)
        .order_by(split.c.id)
    )
    splits = conn.execute(split_query).all()
    if ref.split is not None:
        chosen = [s for s in splits if s.name == ref.split]
        if not chosen:
            raise NotFoundError(
                f"split '{ref.dataset}@{tag}:{ref.split}' is not in the catalog "
                f"(splits: {', '.join(s.name for s in splits)})"
            )
        splits = chosen
    counted = _split_sizes(conn, [s.id for s in splits]) if sizes else {}
    return tuple(
        SplitInfo(ref.dataset, tag, s.name, s.id, *counted.get(s.id, (0, 0))) for s in splits
    )


def resolve_all(
    conn: Connection, refs: Sequence[Ref | str], *, sizes: bool = True
) -> tuple[SplitInfo, ...]:
    """The splits of several refs, each once, in the order given (``sizes`` as in `resolve`)."""
    seen: dict[int, SplitInfo] = {}
    for ref in refs:
        for info in resolve(conn, ref, sizes=sizes):
            seen.setdefault(info.split_id, info)
    return tuple(seen.values())


def _utc(moment: datetime) -> datetime:
    """A stored time in UTC with its offset: SQLite gives it back naive (it was written in
    UTC), PostgreSQL in the session's time zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def list_catalog(conn: Connection, dataset: str | None = None) -> Listing:
    """Datasets, their versions (oldest first) and splits, with item and image counts."""
    ds, version, split, item = (
        core_table(Dataset),
        core_table(Version),
        core_table(Split),
        core_table(Item),
    )
    query = select(ds.c.id, ds.c.name)
    if dataset is not None:
        query = query.where(ds.c.name == dataset)
    # Sorted here, by code point: ORDER BY follows the database's collation, which on a
    # PostgreSQL server made with en_US puts "b" before "B" where SQLite puts "B" first.
    datasets = sorted(conn.execute(query).all(), key=lambda row: row.name)
    if dataset is not None and not datasets:
        resolve(conn, Ref(dataset))  # raises the helpful NotFoundError
    parent = version.alias("parent")
    versions = conn.execute(
        select(
            version.c.id,
            version.c.dataset_id,
            version.c.tag,
            version.c.created_at,
            parent.c.tag.label("parent"),
            version.c.note,
            version.c.tool_version,
        )
        .outerjoin(parent, parent.c.id == version.c.parent_id)
        .where(version.c.dataset_id.in_([d.id for d in datasets]))
        .order_by(version.c.created_at, version.c.id)
    ).all()
    splits = conn.execute(
        select(split.c.id, split.c.version_id, split.c.name)
        .where(split.c.version_id.in_([v.id for v in versions]))
        .order_by(split.c.id)
    ).all()
    sizes = _split_sizes(conn, [s.id for s in splits])
    distinct: dict[int, int] = dict(
        conn.execute(
            select(version.c.dataset_id, func.count(item.c.image_id.distinct()))
            .join(split, split.c.version_id == version.c.id)
            .join(item, item.c.split_id == split.c.id)
            .where(version.c.dataset_id.in_([d.id for d in datasets]))
            .group_by(version.c.dataset_id)
        ).all()
    )
    by_version: dict[int, list[SplitInfo]] = defaultdict(list)
    names = {d.id: d.name for d in datasets}
    tags = {v.id: (names[v.dataset_id], v.tag) for v in versions}
    for s in splits:
        by_version[s.version_id].append(
            SplitInfo(*tags[s.version_id], s.name, s.id, *sizes.get(s.id, (0, 0)))
        )
    source = core_table(Source)
    read: dict[int, list[SourceInfo]] = defaultdict(list)
    for r in conn.execute(
        select(source.c.version_id, source.c.path, source.c.format, source.c.size, source.c.sha256)
        .where(source.c.version_id.in_([v.id for v in versions]))
        .order_by(source.c.id)
    ):
        read[r.version_id].append(SourceInfo(r.path, r.format, r.size, r.sha256))
    skipped_table = core_table(SkippedFileRecord)
    skipped: dict[int, int] = dict(
        conn.execute(
            select(skipped_table.c.version_id, func.count())
            .where(skipped_table.c.version_id.in_([v.id for v in versions]))
            .group_by(skipped_table.c.version_id)
        ).all()
    )
    skipped_listed: dict[int, tuple[SkippedFile, ...]] = {
        version_id: tuple(
            SkippedFile(r.path, r.reason)
            for r in conn.execute(
                select(skipped_table.c.path, skipped_table.c.reason)
                .where(skipped_table.c.version_id == version_id)
                # By code point on every engine, not by a PostgreSQL server's collation.
                .order_by(skipped_table.c.path.collate(_BYTE_ORDER[conn.dialect.name]))
                .limit(SKIPPED_LISTED)
            )
        )
        for version_id in skipped
    }
    by_dataset: dict[int, list[VersionInfo]] = defaultdict(list)
    for v in versions:
        by_dataset[v.dataset_id].append(
            VersionInfo(
                dataset=names[v.dataset_id],
                tag=v.tag,
                created_at=_utc(v.created_at),
                parent=v.parent,
                note=v.note,
                tool_version=v.tool_version,
                splits=tuple(by_version[v.id]),
                sources=tuple(read[v.id]),
                skipped=skipped.get(v.id, 0),
                skipped_files=skipped_listed.get(v.id, ()),
            )
        )
    return Listing(
        tuple(DatasetInfo(d.name, tuple(by_dataset[d.id]), distinct.get(d.id, 0)) for d in datasets)
    )


_UNLABELLED, _MIXED = -1, -2
"""`_Audit.labels` codes: an image with no labelled item; one whose items carry several labels."""


@dataclass(frozen=True)
class _Audit:
    """The items of the audited splits, read once and reduced to numpy arrays.

    Every count of `overlap`, `label_conflicts` and `cross_split_copies` is a sort, search or
    bincount over these instead of a join in SQL: the joins of items to items and to pairs
    grew faster than the catalog (500k images: 42 s of SQL, most of it the near tiers'
    joins), while reading the items and the pairs is one scan of each.

    Entries are the distinct (image, split) combinations, sorted by image then split; each
    array below has one value per entry (m,) or per distinct image (k,):

    - ``entry_image`` (m,): index of the entry's image in ``images``;
      ``entry_split`` (m,): index of its split in ``splits``; ``entry_items`` (m,): its items.
    - ``images`` (k,): distinct image ids, sorted; ``first`` (k,): index of the image's first
      entry; ``spread`` (k,): its entries (the audited splits that hold it).
    - ``labels`` (k,): the code of the one label its labelled items carry, `_UNLABELLED` or
      `_MIXED`; ``labelled`` (k,): its items with a label.
    """

    splits: tuple[SplitInfo, ...]
    entry_image: np.ndarray
    entry_split: np.ndarray
    entry_items: np.ndarray
    images: np.ndarray
    first: np.ndarray
    spread: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray

    def id_range(self) -> tuple[int, int]:
        """The lowest and highest audited image id ((1, 0), an empty range, if none): rows of
        other images outside it need not be read at all."""
        return (int(self.images[0]), int(self.images[-1])) if self.images.size else (1, 0)

    def positions(self, image_ids: np.ndarray) -> np.ndarray:
        """Index of each image id in ``images``, or -1 for an image outside the audited splits."""
        return vectors.index_of(self.images, image_ids)

    def matrix(self, entries: np.ndarray, to_split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items and distinct images per (split of the entry, ``to_split``), each (s, s) int64.

        Args:
            entries: (n,) entry indices; to_split: (n,) split indices. Each (entry, split)
                combination at most once, so that an image counts once per cell.
        """
        size = len(self.splits)
        cell = self.entry_split[entries] * size + to_split
        items = np.bincount(cell, weights=self.entry_items[entries], minlength=size * size)
        images = np.bincount(cell, minlength=size * size)
        return items.astype(np.int64).reshape(size, size), images.reshape(size, size)

    def across(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether images a and b (positions, (n,) each) have items in two different splits:
        all but the pairs of two images that sit in one and the same split only."""
        alone = (self.spread[a] == 1) & (self.spread[b] == 1)
        return ~alone | (self.entry_split[self.first[a]] != self.entry_split[self.first[b]])

    def entries_of(self, image_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every entry of each image: (owner (n,), index into image_index; entry (n,))."""
        return _ranges(self.first[image_index], self.spread[image_index])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``starts[i] .. starts[i] + lengths[i] - 1`` for every i, concatenated.

    Returns:
        (owner, value), both (lengths.sum(),) int64: ``owner`` is the i each value came from.
    """
    owner = np.repeat(np.arange(starts.size), lengths)
    offset = np.arange(owner.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, starts[owner] + offset


def _runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of each run of equal values of a sorted 1-D array."""
    if ordered.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return starts, np.diff(np.append(starts, ordered.size))


@dataclass
class _Shared:
    """What `shared_reads` keeps for one connection: audits by split ids, and near pairs by
    (split ids, recipe id, threshold)."""

    conn: Connection
    audits: dict[tuple[int, ...], _Audit]
    pairs: dict[tuple[tuple[int, ...], int, float], tuple[np.ndarray, np.ndarray, np.ndarray]]


_SHARED: ContextVar[_Shared | None] = ContextVar("_SHARED", default=None)


@contextmanager
def shared_reads(conn: Connection) -> Iterator[None]:
    """Inside, queries on ``conn`` read each set of splits' items, and each recipe's pairs
    among them, once: `catalog.report.assemble` runs six queries over one version, and each
    read 1M items (1.3 s) and pairs (1.5 s a recipe) again. Only for a connection inside one
    read transaction, where every query sees the same snapshot."""
    token = _SHARED.set(_Shared(conn, {}, {}))
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(conn: Connection) -> _Shared | None:
    shared = _SHARED.get()
    return shared if shared is not None and shared.conn is conn else None


_LABEL_CASES = 256
"""Distinct labels up to which `_item_columns` has SQL turn labels into codes."""


def _item_columns(conn: Connection, ids: Sequence[int]) -> tuple[np.ndarray, ...]:
    """(split id, image id, label code) of every item of the splits ``ids``, as int64 arrays;
    codes number the distinct labels in sorted order, `_UNLABELLED` for none, so only
    equality of codes is meaningful.

    Integers only, through `fetch_integers`: a CASE over the few distinct labels names each
    item's code. With more labels than `_LABEL_CASES` the CASE grows too long, and the items
    come back as tuples to be coded here (1M items: 1.3 s to read that way, against 0.5 s).
    """
    if not ids:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    mark = placeholder(conn)
    where = f"FROM item WHERE split_id IN ({', '.join([mark] * len(ids))})"
    names = sorted(
        r[0] for r in fetch_rows(conn, f"SELECT DISTINCT label {where} AND label IS NOT NULL", ids)
    )
    if len(names) <= _LABEL_CASES:
        cases = " ".join(f"WHEN {mark} THEN {code}" for code in range(len(names)))
        code = f"CASE label {cases} ELSE {_UNLABELLED} END" if names else str(_UNLABELLED)
        split, image, codes = fetch_integers(
            conn, ("split_id", "image_id", code), where, [*names, *ids]
        )
        return split, image, codes
    rows = fetch_rows(conn, f"SELECT split_id, image_id, label {where}", ids)
    found = np.fromiter(
        rows, dtype=[("split", np.int64), ("image", np.int64), ("label", object)], count=len(rows)
    )
    del rows
    numbers: dict[str | None, int] = {name: code for code, name in enumerate(names)}
    numbers[None] = _UNLABELLED
    labels = found["label"].tolist()
    codes = np.fromiter(map(numbers.__getitem__, labels), np.int64, count=len(labels))
    return found["split"], found["image"], codes


def _audit(conn: Connection, splits: Sequence[SplitInfo]) -> _Audit:
    """The splits' items as an `_Audit` (`_read_audit`), read once per `shared_reads`."""
    shared = _shared(conn)
    key = tuple(s.split_id for s in splits)
    if shared is not None and key in shared.audits:
        return shared.audits[key]
    audit = _read_audit(conn, splits)
    if shared is not None:
        shared.audits[key] = audit
    return audit


def _read_audit(conn: Connection, splits: Sequence[SplitInfo]) -> _Audit:
    """Read the splits' items (one scan of their primary key) into an `_Audit`; the splits
    come back with their sizes counted from the same items."""
    size = max(len(splits), 1)
    ids = [s.split_id for s in splits]
    item_split, item_image, codes = _item_columns(conn, ids)
    order = np.argsort(ids)
    split = order[np.searchsorted(np.asarray(ids, np.int64)[order], item_split)]
    # Entries: the distinct (image, split) combinations, by sorting image * size + split.
    keys = np.sort(item_image * size + split)
    starts, entry_items = _runs(keys)
    entry_image_id, entry_split = np.divmod(keys[starts], size)
    first, spread = _runs(entry_image_id)
    images = entry_image_id[first]
    # One label code per image: its labelled items' distinct (image, label) combinations.
    labelled = codes != _UNLABELLED
    where = vectors.index_of(images, item_image[labelled])
    width = max(int(codes.max(initial=0)) + 1, 1)
    pairs = vectors.unique(where * width + codes[labelled])
    pair_image, pair_code = np.divmod(pairs, width)
    label_starts, label_counts = _runs(pair_image)
    per_image = np.full(images.size, _UNLABELLED, np.int64)
    per_image[pair_image[label_starts]] = np.where(
        label_counts > 1, _MIXED, pair_code[label_starts]
    )
    counted = np.bincount(split, minlength=size), np.bincount(entry_split, minlength=size)
    return _Audit(
        splits=tuple(
            replace(s, items=int(counted[0][n]), images=int(counted[1][n]))
            for n, s in enumerate(splits)
        ),
        entry_image=np.repeat(np.arange(images.size), spread),
        entry_split=entry_split,
        entry_items=entry_items,
        images=images,
        first=first,
        spread=spread,
        labels=per_image,
        labelled=np.bincount(where, minlength=images.size),
    )


def _pair_tables(audit: _Audit, items: np.ndarray, images: np.ndarray) -> tuple[PairOverlap, ...]:
    """One `PairOverlap` per ordered pair of distinct splits, from (s, s) count matrices."""
    return tuple(
        PairOverlap(
            a=sa.ref,
            b=sb.ref,
            items=int(items[i, j]),
            images=int(images[i, j]),
            rate=int(items[i, j]) / sa.items if sa.items else 0.0,
        )
        for i, sa in enumerate(audit.splits)
        for j, sb in enumerate(audit.splits)
        if i != j
    )


STORED_OVERLAP = "overlap"
"""`StoredReport.kind` of a version's overlap report."""
STORED_OVERLAP_FORMAT = 2
"""`StoredReport.format` of the overlap reports this release stores: bump it whenever `overlap`
computes or holds anything differently, and older stored reports are ignored (unless listed
in `_READABLE_FORMATS`)."""
_READABLE_FORMATS = (1, STORED_OVERLAP_FORMAT)
"""Formats this release reads. Format 1 (before schema revision 0008) holds no capped-bucket
counts, and its ingest kept none: its tiers are read as unknown (`_unknown_capping`)."""
STORED_LIMIT = 20
"""Label conflicts a stored overlap report lists in detail per tier: the default ``--limit``
of ``dsaudit overlap`` and ``dsaudit report``; a larger limit is computed as asked."""


def overlap(
    conn: Connection,
    refs: Sequence[Ref | str],
    *,
    limit: int = STORED_LIMIT,
    recipes: Sequence[str] | None = None,
    threshold: float | None = None,
) -> OverlapReport:
    """Overlap between every ordered pair of the refs' splits (exact, and near under each
    recipe), duplicates inside each split, low-information items, conflicting labels.

    The common question, one whole version with every recipe at its default threshold, is
    answered from the report its ingest stored (`store_overlap`): reading a million items and
    their pairs again takes seconds. Anything else is computed here.

    Args:
        conn: any connection to the catalog.
        refs: one or more refs; several may name other versions or datasets.
        limit: how many label conflicts to return in detail (the counts are always complete).
        recipes: near-duplicate recipes to report; None means every recipe in the catalog,
            an empty sequence exact findings only.
        threshold: distance for the near tier; needs exactly one recipe; default each
            recipe's own default threshold.
    """
    splits = resolve_all(conn, refs, sizes=False)
    if recipes is None and threshold is None and 0 <= limit <= STORED_LIMIT:
        stored = _stored_overlap(conn, splits)
        if stored is not None:
            return replace(
                stored,
                conflicts=stored.conflicts[:limit],
                near=tuple(replace(t, conflicts=t.conflicts[:limit]) for t in stored.near),
            )
    return _overlap(conn, splits, limit=limit, recipes=recipes, threshold=threshold)


def store_overlap(conn: Connection, version_id: int) -> None:
    """Compute one version's overlap report (all its splits, every recipe at its default
    threshold) and store it for `overlap`; on the ingest's transaction, before it commits.

    What the report counts never changes once the version is committed: its items are
    immutable, the catalog keeps its recipes (`catalog.near.resolve_recipes`), and every pair
    between two of its images is stored by the ingest that brought in the later of the two.
    Conflicts are listed in their order (digest; distance), so the first ``limit`` of the
    stored `STORED_LIMIT` are what a query with that limit finds.
    """
    dataset, version = core_table(Dataset), core_table(Version)
    name, tag = conn.execute(
        select(dataset.c.name, version.c.tag)
        .join(dataset, dataset.c.id == version.c.dataset_id)
        .where(version.c.id == version_id)
    ).one()
    splits = resolve(conn, Ref(name, tag), sizes=False)
    report = _overlap(conn, splits, limit=STORED_LIMIT, recipes=None, threshold=None)
    conn.execute(
        insert(core_table(StoredReport)),
        {
            "version_id": version_id,
            "kind": STORED_OVERLAP,
            "format": STORED_OVERLAP_FORMAT,
            "body": json.dumps(to_json(report), ensure_ascii=False, separators=(",", ":")),
        },
    )


def _stored_overlap(conn: Connection, splits: Sequence[SplitInfo]) -> OverlapReport | None:
    """The stored overlap report of exactly these splits in this order (one version's, as its
    ref lists them), if its ingest stored one this release reads; else None."""
    if not splits:
        return None
    split, stored = core_table(Split), core_table(StoredReport)
    ids = [s.split_id for s in splits]
    versions = (
        conn.execute(select(split.c.version_id).where(split.c.id.in_(ids)).distinct())
        .scalars()
        .all()
    )
    if len(versions) != 1:
        return None
    found = conn.execute(
        select(stored.c.body, stored.c.format).where(
            stored.c.version_id == versions[0],
            stored.c.kind == STORED_OVERLAP,
            stored.c.format.in_(_READABLE_FORMATS),
        )
    ).one_or_none()
    report = _decoded(found.body, found.format) if found is not None else None
    return report if report is not None and _answers(conn, report, ids) else None


def _unknown_capping(report: OverlapReport) -> OverlapReport:
    """A format-1 report: stored by an ingest before schema revision 0008, whose images came
    in with no count of the guard's capped buckets, so each tier's count is unknown (as the
    report computed now says); decoded, its missing counts would read 0."""
    return replace(report, near=tuple(replace(t, capped_buckets=None) for t in report.near))


def _answers(conn: Connection, report: OverlapReport, split_ids: Sequence[int]) -> bool:
    """Whether a stored report is what `overlap` of these splits, with every recipe at its
    default threshold, would compute: a subset of the version's splits, or another order, is
    another report; and a catalog made before 2026-12-02 may have gained recipes after
    exact-only ingests (`catalog.near.resolve_recipes` refuses that since)."""
    tiers = [(name, t) for _id, name, t in select_recipes(conn, None, None)]
    return [s.split_id for s in report.splits] == list(split_ids) and [
        (t.recipe, t.threshold) for t in report.near
    ] == tiers


_UNREADABLE = (ValueError, KeyError, TypeError)
"""What decoding a damaged stored report raises (bad JSON; missing or unexpected fields)."""


def _decoded(body: str, fmt: int) -> OverlapReport | None:
    """A stored overlap report of a `_READABLE_FORMATS` format, or None if it is damaged
    (`dsaudit check` names it): the report is then computed, as for a version that has none."""
    try:
        report = from_json(OverlapReport, json.loads(body))
    except _UNREADABLE:
        return None
    return _unknown_capping(report) if fmt == 1 else report


def stored_overlap_problems(conn: Connection) -> tuple[int, list[str]]:
    """Each stored overlap report `overlap` would answer with, against the one computed now
    (`catalog.check`): (reports compared, one line per report that differs or cannot be read).
    Reports `overlap` ignores (another format; recipes the catalog gained since) are left out.
    """
    dataset, version, stored = core_table(Dataset), core_table(Version), core_table(StoredReport)
    rows = conn.execute(
        select(dataset.c.name, version.c.tag, stored.c.body)
        .join(version, version.c.id == stored.c.version_id)
        .join(dataset, dataset.c.id == version.c.dataset_id)
        .where(stored.c.kind == STORED_OVERLAP, stored.c.format.in_(_READABLE_FORMATS))
        .order_by(stored.c.version_id)
    ).all()
    compared, problems = 0, []
    for name, tag, body in rows:
        try:
            report = from_json(OverlapReport, json.loads(body))
        except _UNREADABLE as error:
            kind = (
                "not JSON" if isinstance(error, json.JSONDecodeError) else "not an overlap report"
            )
            problems.append(
                f"{name}@{tag}: the stored overlap report cannot be read ({kind}); `overlap` "
                "computes the report instead, as for a version that has none"
            )
            continue
        splits = resolve(conn, Ref(name, tag), sizes=False)
        if not _answers(conn, report, [s.split_id for s in splits]):
            continue
        compared += 1
        computed = _overlap(conn, splits, limit=STORED_LIMIT, recipes=None, threshold=None)
        # The guard's counts are left out: on PostgreSQL an ingest that ran beside this one
        # and committed after it may share its range of image ids, and be counted now.
        report, computed = _uncapped(report), _uncapped(computed)
        differ = [
            field.name
            for field in dataclasses.fields(OverlapReport)
            if getattr(report, field.name) != getattr(computed, field.name)
        ]
        if differ:
            problems.append(
                f"{name}@{tag}: the stored overlap report differs from the one computed now "
                f"({', '.join(differ)})"
            )
    return compared, problems


def _uncapped(report: OverlapReport) -> OverlapReport:
    """``report`` with its tiers' `capped_buckets` set to 0, for comparing the rest."""
    return replace(report, near=tuple(replace(t, capped_buckets=0) for t in report.near))


def _overlap(
    conn: Connection,
    splits: Sequence[SplitInfo],
    *,
    limit: int,
    recipes: Sequence[str] | None,
    threshold: float | None,
) -> OverlapReport:
    """`overlap` computed from the items and pairs of ``splits`` (from `resolve_all`)."""
    audit = _audit(conn, splits)
    splits = audit.splits
    size = len(splits)
    # Exact: every entry of an image held by several splits, with each other split holding it.
    shared = np.flatnonzero(audit.spread > 1)
    owner, entry = audit.entries_of(shared)
    paired, other = audit.entries_of(shared[owner])
    keep = entry[paired] != other
    pairs = _pair_tables(audit, *audit.matrix(entry[paired][keep], audit.entry_split[other][keep]))
    # Inside each split: entries of more than one item are duplicate groups.
    group = audit.entry_items > 1
    in_split = audit.entry_split[group]
    groups = np.bincount(in_split, minlength=size)
    grouped = np.bincount(in_split, weights=audit.entry_items[group], minlength=size)
    largest = np.zeros(size, np.int64)
    np.maximum.at(largest, in_split, audit.entry_items[group])
    image = core_table(Image)
    low_ids = np.fromiter(
        conn.execute(
            select(image.c.id).where(
                image.c.id.between(*audit.id_range()), image.c.low_info.is_(True)
            )
        ).scalars(),
        np.int64,
    )
    low = np.isin(audit.images[audit.entry_image], low_ids)
    low_items = np.bincount(audit.entry_split[low], weights=audit.entry_items[low], minlength=size)
    within = tuple(
        WithinSplit(
            split=s.ref,
            groups=int(groups[n]),
            items_in_groups=int(grouped[n]),
            redundant=int(grouped[n]) - int(groups[n]),
            largest_group=int(largest[n]),
            low_info_items=int(low_items[n]),
        )
        for n, s in enumerate(splits)
    )
    conflict_images, conflict_items, conflicts = _exact_conflicts(conn, audit, limit)
    return OverlapReport(
        splits=splits,
        pairs=pairs,
        within=within,
        conflict_images=conflict_images,
        conflict_items=conflict_items,
        conflicts=conflicts,
        near=_near_tiers(conn, audit, recipes, threshold, limit, matrix=True),
    )


_IN_LIST = 10_000
"""Ids per SQL IN list (SQLite allows 32,766 parameters per statement by default)."""


def _items_of(
    conn: Connection, image_ids: Sequence[int], splits: dict[int, SplitInfo]
) -> dict[int, tuple[str, list[ItemRef]]]:
    """The items of these images inside these splits, with provenance.

    Returns:
        image id -> (hex digest, its items in split and position order)
    """
    item, image, source = core_table(Item), core_table(Image), core_table(Source)
    ids = list(image_ids)
    rows: list[Any] = []
    # In slices of ids (SQLite's limit of parameters per statement); an image's items are all
    # in its slice, so each keeps its split and position order.
    for start in range(0, len(ids), _IN_LIST):
        rows += conn.execute(
            select(
                image.c.id,
                image.c.digest,
                item.c.split_id,
                item.c.position,
                item.c.label,
                source.c.path,
                item.c.source_key,
                item.c.source_row,
                item.c.source_sha256,
            )
            .join(image, image.c.id == item.c.image_id)
            .join(source, source.c.id == item.c.source_id)
            # By image only: given the splits too, SQLite (without ANALYZE statistics) scanned
            # every item of those splits by primary key instead of using the image index
            # (500k items: 0.1 s a call against 1 ms). An image has few items outside them.
            .where(item.c.image_id.in_(ids[start : start + _IN_LIST]))
            .order_by(item.c.split_id, item.c.position)
        ).all()
    found: dict[int, tuple[str, list[ItemRef]]] = {}
    for row in rows:
        if row.split_id not in splits:
            continue
        _digest, refs = found.setdefault(row.id, (bytes(row.digest).hex(), []))
        refs.append(
            ItemRef(
                split=splits[row.split_id].ref,
                position=row.position,
                label=row.label,
                source_path=row.path,
                source_key=row.source_key,
                source_row=row.source_row,
                source_sha256=row.source_sha256,
            )
        )
    return found


def _exact_conflicts(
    conn: Connection, audit: _Audit, limit: int
) -> tuple[int, int, tuple[LabelConflict, ...]]:
    """(images with more than one label, their labelled items, the first ``limit`` in detail)."""
    mixed = np.flatnonzero(audit.labels == _MIXED)
    by_id = {s.split_id: s for s in audit.splits}
    return (
        int(mixed.size),
        int(audit.labelled[mixed].sum()),
        _conflict_details(conn, audit.images[mixed].tolist(), by_id, limit),
    )


def label_conflicts(
    conn: Connection,
    refs: Sequence[Ref | str],
    *,
    recipes: Sequence[str] | None = None,
    threshold: float | None = None,
    limit: int = 20,
) -> ConflictsReport:
    """Images carrying different labels among the refs' splits: the same image (exact), and
    near copies under each recipe, within a split, across splits, versions and datasets."""
    audit = _audit(conn, resolve_all(conn, refs, sizes=False))
    images, items, exact = _exact_conflicts(conn, audit, limit)
    return ConflictsReport(
        splits=audit.splits,
        exact_images=images,
        exact_items=items,
        exact=exact,
        near=_near_tiers(conn, audit, recipes, threshold, limit, matrix=False),
    )


def _conflict_details(
    conn: Connection, image_ids: list[int], splits: dict[int, SplitInfo], limit: int
) -> tuple[LabelConflict, ...]:
    """The first ``limit`` conflicting images in digest order, with every item's provenance."""
    if not image_ids or limit <= 0:
        return ()
    image = core_table(Image)
    # In slices of ids: one IN list of every conflicting image would pass SQLite's limit of
    # 32,766 parameters per statement on a catalog with that many conflicts.
    candidates: list[tuple[bytes, int]] = []
    for start in range(0, len(image_ids), _IN_LIST):
        rows = conn.execute(
            select(image.c.digest, image.c.id)
            .where(image.c.id.in_(image_ids[start : start + _IN_LIST]))
            .order_by(image.c.digest)
            .limit(limit)
        ).all()
        candidates = sorted([*candidates, *((bytes(r[0]), int(r[1])) for r in rows)])[:limit]
    first = [image_id for _digest, image_id in candidates]
    details = _items_of(conn, first, splits)
    conflicts = []
    for image_id in first:
        digest, items = details[image_id]
        labels = tuple(sorted({i.label for i in items if i.label is not None}))
        conflicts.append(LabelConflict(digest=digest, labels=labels, items=tuple(items)))
    return tuple(conflicts)


def select_recipes(
    conn: Connection, names: Sequence[str] | None, threshold: float | None
) -> list[tuple[int, str, float]]:
    """(id, name, threshold) of the recipes a query should use.

    Raises:
        NotFoundError: a named recipe is not in the catalog.
        InputError: ``threshold`` with several recipes, or above a recipe's stored radius.
    """
    table = core_table(RecipeRecord)
    rows = conn.execute(
        select(table.c.id, table.c.name, table.c.radius, table.c.default_threshold).order_by(
            table.c.id
        )
    ).all()
    if names is not None:
        known = {r.name: r for r in rows}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFoundError(
                f"recipe '{missing[0]}' is not in the catalog "
                f"(recipes: {', '.join(known) or 'none'})"
            )
        rows = [known[n] for n in names]
    if threshold is not None:
        if len(rows) != 1:
            raise InputError(
                "--threshold applies to one recipe: name it with --recipe "
                f"({', '.join(r.name for r in rows)})"
            )
        if not 0 <= threshold <= rows[0].radius:
            raise InputError(
                f"--threshold {threshold} is outside 0..{rows[0].radius}, the radius within "
                f"which {rows[0].name} stored its pairs"
            )
    return [(r.id, r.name, r.default_threshold if threshold is None else threshold) for r in rows]


RANK_UNIT = 1e-12
"""Distances are read as integer ranks in this unit (`_near_pairs`)."""


def _near_pairs(
    conn: Connection, audit: _Audit, recipe_id: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_read_near_pairs`, read once per `shared_reads`."""
    shared = _shared(conn)
    key = (tuple(s.split_id for s in audit.splits), recipe_id, threshold)
    if shared is not None and key in shared.pairs:
        return shared.pairs[key]
    found = _read_near_pairs(conn, audit, recipe_id, threshold)
    if shared is not None:
        shared.pairs[key] = found
    return found


def _read_near_pairs(
    conn: Connection, audit: _Audit, recipe_id: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A recipe's pairs within the threshold whose two images both sit in the audited splits.

    Returns:
        (a, b, rank), each (n,) int64: positions in ``audit.images`` of image_a and image_b,
        and the stored distance in units of `RANK_UNIT`, rounded, in primary-key order. Ranks
        order pairs as their distances do (the built-in recipes' distinct distances differ by
        far more than the unit), and integers read four times faster than floats
        (`catalog.db.fetch_integers`); `_exact_distances` reads the few a report shows.
    """
    mark = placeholder(conn)
    # A range of the primary key: the pairs of later versions' new images stay unread.
    low, high = audit.id_range()
    ids_a, ids_b, rank = fetch_integers(
        conn,
        ("image_a", "image_b", f"CAST(ROUND(distance * {1 / RANK_UNIT:.0f}) AS BIGINT)"),
        f"FROM pair WHERE recipe_id = {mark} AND image_a BETWEEN {mark} AND {mark} "
        f"AND image_b BETWEEN {mark} AND {mark} AND distance <= {mark}",
        (recipe_id, low, high, low, high, threshold),
    )
    a, b = audit.positions(ids_a), audit.positions(ids_b)
    inside = (a >= 0) & (b >= 0)
    return a[inside], b[inside], rank[inside]


def _exact_distances(
    conn: Connection, recipe_id: int, ids_a: Sequence[int], ids_b: Sequence[int]
) -> list[float]:
    """The stored distances of the pairs (ids_a[k], ids_b[k]), each a primary-key lookup."""
    mark = placeholder(conn)
    statement = (
        f"SELECT distance FROM pair WHERE recipe_id = {mark} AND image_a = {mark} "
        f"AND image_b = {mark}"
    )
    return [
        float(fetch_rows(conn, statement, (recipe_id, a, b))[0][0])
        for a, b in zip(ids_a, ids_b, strict=True)
    ]


def _closest(a: np.ndarray, b: np.ndarray, distance: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first ``limit`` pairs by (distance, a, b)."""
    return np.lexsort((b, a, distance))[: max(limit, 0)]


def capped_buckets(conn: Connection, images: np.ndarray) -> dict[int, int | None]:
    """Per recipe id, the buckets over the blow-up guard's cap (`catalog.near.BUCKET_CAP`) in
    the ingests that may have stored a pair between two of these images (sorted distinct
    ids); None when one of the images came in before schema revision 0008, whose ingests kept
    no count.

    A pair is stored by the ingest that brought in the later of its two images, so these are
    the ingests that brought in at least one of the images: those whose range of new image
    ids (`NearIngest.first_image`, ``last_image``) holds one. On PostgreSQL, ingests side by
    side interleave their ids, so a range may also hold another ingest's images and count an
    ingest that stored none of these pairs: the note it gives says near counts *may* be lower
    bounds. An image in no range came in with an ingest that kept no count.
    """
    near = core_table(NearIngest)
    rows = conn.execute(
        select(near.c.recipe_id, near.c.capped_buckets, near.c.first_image, near.c.last_image)
    ).all()
    recipe_ids = conn.execute(select(core_table(RecipeRecord).c.id)).scalars().all()
    ranged = [r for r in rows if r.first_image is not None]
    first = np.array([r.first_image for r in ranged], np.int64)
    last = np.array([r.last_image for r in ranged], np.int64)
    # Which ranges hold one of the images, and is every image in some range?
    holds = np.searchsorted(images, first, "left") < np.searchsorted(images, last, "right")
    covered = images.size == 0
    if first.size and images.size:
        order = np.argsort(first, kind="stable")
        reach = np.maximum.accumulate(last[order])  # the furthest range started so far
        at = np.searchsorted(first[order], images, "right") - 1
        covered = bool(np.all((at >= 0) & (images <= reach[np.maximum(at, 0)])))
    counts: dict[int, int | None] = {}
    for recipe_id in recipe_ids:
        counts[recipe_id] = (
            sum(
                int(r.capped_buckets)
                for r, h in zip(ranged, holds, strict=True)
                if h and r.recipe_id == recipe_id
            )
            if covered
            else None
        )
    return counts


def _catalog_capped(conn: Connection) -> dict[int, int | None]:
    """Per recipe id, buckets over the cap summed over all of the catalog's ingests; None when
    a version has no count (ingested before schema revision 0008)."""
    version, near = core_table(Version), core_table(NearIngest)
    made = conn.execute(select(func.count()).select_from(version)).scalar_one()
    kept = {
        int(recipe_id): (int(ingests), int(total or 0))
        for recipe_id, ingests, total in conn.execute(
            select(near.c.recipe_id, func.count(), func.sum(near.c.capped_buckets)).group_by(
                near.c.recipe_id
            )
        )
    }
    counts: dict[int, int | None] = {}
    for recipe_id in conn.execute(select(core_table(RecipeRecord).c.id)).scalars():
        ingests, total = kept.get(recipe_id, (0, 0))
        counts[recipe_id] = total if ingests == made else None
    return counts


def _near_tiers(
    conn: Connection,
    audit: _Audit,
    recipes: Sequence[str] | None,
    threshold: float | None,
    limit: int,
    *,
    matrix: bool,
) -> tuple[NearTier, ...]:
    """One `_near_tier` per recipe chosen (`select_recipes`), the guard's counts read once."""
    capped = capped_buckets(conn, audit.images)
    return tuple(
        _near_tier(conn, audit, recipe_id, name, t, limit, capped.get(recipe_id, 0), matrix=matrix)
        for recipe_id, name, t in select_recipes(conn, recipes, threshold)
    )


def _near_tier(
    conn: Connection,
    audit: _Audit,
    recipe_id: int,
    name: str,
    threshold: float,
    limit: int,
    capped: int | None,
    *,
    matrix: bool = True,
) -> NearTier:
    """Near overlap matrix (unless ``matrix`` is False) and near label conflicts."""
    a, b, rank = _near_pairs(conn, audit, recipe_id, threshold)
    pairs: tuple[PairOverlap, ...] = ()
    if matrix:
        size = len(audit.splits)
        # Each image x with a near copy y: the splits holding y, less those holding x itself
        # (an exact copy there is the exact tier's), against every split holding x. A pair
        # inside one split (most pairs) counts nowhere.
        across = audit.across(a, b)
        x = np.concatenate([a[across], b[across]])
        y = np.concatenate([b[across], a[across]])
        owner, entry = audit.entries_of(y)
        near = vectors.unique(x[owner] * size + audit.entry_split[entry])
        exact = audit.entry_image * size + audit.entry_split
        near = near[~np.isin(near, exact)]
        image, to_split = np.divmod(near, size)
        owner, entry = audit.entries_of(image)
        pairs = _pair_tables(audit, *audit.matrix(entry, to_split[owner]))
    # A near pair conflicts when some labelled item of one carries another label than some
    # labelled item of the other: both labelled, and not both one and the same label.
    la, lb = audit.labels[a], audit.labels[b]
    conflict = (la != _UNLABELLED) & (lb != _UNLABELLED) & ((la == _MIXED) | (la != lb))
    closest = np.flatnonzero(conflict)
    closest = closest[_closest(a[closest], b[closest], rank[closest], limit)]
    ids_a, ids_b = audit.images[a[closest]].tolist(), audit.images[b[closest]].tolist()
    distances = _exact_distances(conn, recipe_id, ids_a, ids_b)
    by_id = {s.split_id: s for s in audit.splits}
    items = _items_of(conn, sorted(set(ids_a) | set(ids_b)), by_id)
    return NearTier(
        recipe=name,
        threshold=threshold,
        pairs=pairs,
        conflict_images=int(vectors.unique(np.concatenate([a[conflict], b[conflict]])).size),
        conflicts=tuple(
            NearConflict(distance=d, a=tuple(items[i][1]), b=tuple(items[j][1]))
            for i, j, d in zip(ids_a, ids_b, distances, strict=True)
        ),
        capped_buckets=capped,
    )


def _members(
    conn: Connection, image_ids: Sequence[int], splits: dict[int, SplitInfo]
) -> list[GroupMember]:
    """Each image with its items among ``splits``, in the order given."""
    found = _items_of(conn, image_ids, splits)
    return [GroupMember(found[i][0], tuple(found[i][1])) for i in image_ids if i in found]


def cross_split_copies(
    conn: Connection,
    refs: Sequence[Ref | str],
    *,
    recipes: Sequence[str] | None = None,
    limit: int = 20,
) -> LeaksReport:
    """The images behind the leakage matrices: images in more than one of the refs' splits
    (most splits, then most items first) and, per recipe at its default threshold, near pairs
    whose images sit in different splits (closest first). Counts are complete; ``limit`` bounds
    the ones returned with their items and provenance.
    """
    audit = _audit(conn, resolve_all(conn, refs, sizes=False))
    by_id = {s.split_id: s for s in audit.splits}
    shared = np.flatnonzero(audit.spread > 1)
    items = np.bincount(audit.entry_image, weights=audit.entry_items, minlength=audit.spread.size)
    shared = shared[np.lexsort((shared, -items[shared], -audit.spread[shared]))]
    first = audit.images[shared[: max(limit, 0)]].tolist()
    exact = _members(conn, first, by_id) if first else []
    near = []
    capped = capped_buckets(conn, audit.images)
    for recipe_id, name, threshold in select_recipes(conn, recipes, None):
        a, b, rank = _near_pairs(conn, audit, recipe_id, threshold)
        across = np.flatnonzero(audit.across(a, b))
        closest = across[_closest(a[across], b[across], rank[across], limit)]
        ids_a, ids_b = audit.images[a[closest]].tolist(), audit.images[b[closest]].tolist()
        distances = _exact_distances(conn, recipe_id, ids_a, ids_b)
        found = _items_of(conn, sorted(set(ids_a) | set(ids_b)), by_id)
        near.append(
            NearLeaks(
                recipe=name,
                threshold=threshold,
                pairs_total=int(across.size),
                pairs=tuple(
                    NearPair(
                        distance=d,
                        a=GroupMember(found[i][0], tuple(found[i][1])),
                        b=GroupMember(found[j][0], tuple(found[j][1])),
                    )
                    for i, j, d in zip(ids_a, ids_b, distances, strict=True)
                ),
                capped_buckets=capped.get(recipe_id, 0),
            )
        )
    return LeaksReport(exact_images=int(shared.size), exact=tuple(exact), near=tuple(near))


def low_info_images(
    conn: Connection, refs: Sequence[Ref | str], *, limit: int = 20
) -> LowInfoReport:
    """Low-information images of the refs' splits (flagged at ingest: blank or near-constant),
    the ones with most items first."""
    splits = resolve_all(conn, refs, sizes=False)
    by_id = {s.split_id: s for s in splits}
    item, image = core_table(Item), core_table(Image)
    # The flagged ids from their partial index, then their items by (image_id, split_id): a
    # join from the items read every item's image row (1M items: 0.47 s against 5 ms).
    low = select(image.c.id).where(image.c.low_info.is_(True))
    rows = sorted(
        conn.execute(
            select(item.c.image_id, func.count())
            .where(item.c.split_id.in_(list(by_id)), item.c.image_id.in_(low))
            .group_by(item.c.image_id)
        ).all(),
        key=lambda row: (-row[1], row[0]),
    )
    shown = _members(conn, [row[0] for row in rows[:limit]], by_id) if limit > 0 else []
    return LowInfoReport(images=len(rows), items=sum(int(n) for _i, n in rows), shown=tuple(shown))


def distinct_images(conn: Connection, refs: Sequence[Ref | str]) -> int:
    """Distinct images over all of the refs' splits."""
    return int(_audit(conn, resolve_all(conn, refs, sizes=False)).images.size)


def list_recipes(conn: Connection) -> tuple[RecipeInfo, ...]:
    """The recipes in the catalog, with counts and what their thresholds mean."""
    from catalog.recipes import get_recipe

    table = core_table(RecipeRecord)
    rows = conn.execute(select(table).order_by(table.c.id)).all()
    signed: dict[int, int] = dict(
        conn.exec_driver_sql("SELECT recipe_id, COUNT(*) FROM signature GROUP BY recipe_id").all()
    )
    paired: dict[int, int] = dict(
        conn.exec_driver_sql("SELECT recipe_id, COUNT(*) FROM pair GROUP BY recipe_id").all()
    )
    near = core_table(NearIngest)
    largest: dict[int, int] = {
        int(recipe_id): int(most or 0)
        for recipe_id, most in conn.execute(
            select(near.c.recipe_id, func.max(near.c.largest_bucket)).group_by(near.c.recipe_id)
        )
    }
    capped = _catalog_capped(conn)
    out = []
    for row in rows:
        try:
            recipe = get_recipe(row.name)
        except ValueError:
            recipe = None
        probability: tuple[tuple[float, float], ...] = ()
        bands = rows_per_band = 0
        bound = False
        if recipe is not None and recipe.fingerprint() == row.fingerprint:
            bands, rows_per_band = recipe.bands, recipe.rows
            bound = recipe.probability_is_bound
            t = row.default_threshold
            probability = tuple(
                (d, float(recipe.candidate_probability(d)))
                for d in sorted({0.0, t / 2, t, row.radius, min(1.0, 2 * t), min(1.0, 3 * t)})
            )
        out.append(
            RecipeInfo(
                name=row.name,
                family=row.family,
                fingerprint=row.fingerprint,
                radius=row.radius,
                default_threshold=row.default_threshold,
                bands=bands,
                rows=rows_per_band,
                images=signed.get(row.id, 0),
                pairs=paired.get(row.id, 0),
                candidate_probability=probability,
                probability_is_bound=bound,
                params=row.params,
                capped_buckets=capped.get(row.id, 0),
                # Unknown with the count: an ingest before 0008 met buckets nobody measured.
                largest_bucket=largest.get(row.id, 0)
                if capped.get(row.id, 0) is not None
                else None,
            )
        )
    return tuple(out)


def _components(edges: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Connected-component label of each node (sorted int64 ids) under ``edges`` (m, 2)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = np.searchsorted(nodes, edges) if edges.size else np.empty((0, 2), np.int64)
    graph = coo_matrix(
        (np.ones(len(index)), (index[:, 0], index[:, 1])), shape=(nodes.size, nodes.size)
    )
    return connected_components(graph, directed=False)[1]


def duplicate_groups(
    conn: Connection,
    refs: Sequence[Ref | str],
    *,
    recipe: str | None = None,
    threshold: float | None = None,
    exact_only: bool = False,
    limit: int = 20,
) -> DupsReport:
    """Duplicate groups inside each split: images joined by exact copies or near pairs.

    A group is a connected component, so a chain a~b~c is one group even when a and c are
    further apart than the threshold: ``max_distance`` shows it.

    Args:
        recipe: the recipe whose pairs join images; default the catalog's first recipe.
        threshold: default the recipe's default threshold.
        exact_only: only exact copies (one image at several positions).
        limit: groups returned in detail, largest first (the total is always counted).
    """
    from catalog.recipes import get_recipe

    audit = _audit(conn, resolve_all(conn, refs, sizes=False))
    size = max(len(audit.splits), 1)
    chosen: tuple[int, str, float] | None = None
    if not exact_only:
        candidates = select_recipes(conn, [recipe] if recipe else None, threshold)
        chosen = candidates[0] if candidates else None
    # Entries are sorted by image then split, so their keys image * size + split are sorted.
    entry_keys = audit.entry_image * size + audit.entry_split
    # Near edges inside a split: for each entry of a pair's first image, the pair is an edge of
    # that split when its second image has an entry there too.
    edge_a = edge_b = edge_split = np.empty(0, np.int64)
    if chosen is not None:
        a, b, _rank = _near_pairs(conn, audit, chosen[0], chosen[2])
        owner, entry = audit.entries_of(a)
        split_of = audit.entry_split[entry]
        wanted = b[owner] * size + split_of
        found = np.minimum(np.searchsorted(entry_keys, wanted), max(entry_keys.size - 1, 0))
        hit = entry_keys[found] == wanted if entry_keys.size else np.zeros(0, bool)
        edge_a, edge_b, edge_split = a[owner][hit], b[owner][hit], split_of[hit]
    # Every group of every split: (items, images, split index, first image position) per
    # group, and its members' positions in `audit.images`, grouped.
    totals: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    group_split: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    member_lists: list[np.ndarray] = []
    for index in range(len(audit.splits)):
        here = audit.entry_split == index
        exact = audit.entry_image[here & (audit.entry_items > 1)]
        inside = edge_split == index
        edges = np.stack([edge_a[inside], edge_b[inside]], axis=1)
        nodes = vectors.unique(np.concatenate([exact, edges.reshape(-1)]))
        if nodes.size == 0:
            continue
        items = audit.entry_items[np.searchsorted(entry_keys, nodes * size + index)]
        labels = _components(edges, nodes)
        order = np.argsort(labels, kind="stable")  # members stay in id order
        starts, lengths = _runs(labels[order])
        total = np.add.reduceat(items[order], starts)
        group = (lengths > 1) | (total > 1)
        grouped = np.split(nodes[order], starts[1:])
        totals.append(total[group])
        counts.append(lengths[group])
        group_split.append(np.full(int(group.sum()), index))
        firsts.append(nodes[order][starts][group])
        member_lists.extend(m for m, keep in zip(grouped, group.tolist(), strict=True) if keep)
    if totals:
        total, count = np.concatenate(totals), np.concatenate(counts)
        split_index, first = np.concatenate(group_split), np.concatenate(firsts)
    else:
        total = count = split_index = first = np.empty(0, np.int64)
    split_ids = np.array([s.split_id for s in audit.splits], np.int64)
    ranked = np.lexsort((first, split_ids[split_index], -count, -total))
    groups = [
        (int(total[g]), audit.splits[int(split_index[g])], audit.images[member_lists[g]])
        for g in ranked[: max(limit, 0)].tolist()
    ]
    resolved = get_recipe(chosen[1]) if chosen is not None else None
    shown = []
    for group_items, split, members in groups:
        provenance = _items_of(conn, members.tolist(), {split.split_id: split})
        max_distance = 0.0
        if chosen is not None and resolved is not None and members.size > 1:
            max_distance = _diameter(conn, chosen[0], resolved, members)
        shown.append(
            DuplicateGroup(
                split=split.ref,
                images=int(members.size),
                items=group_items,
                max_distance=max_distance,
                members=tuple(
                    GroupMember(provenance[i][0], tuple(provenance[i][1])) for i in members.tolist()
                ),
            )
        )
    return DupsReport(
        recipe=chosen[1] if chosen else None,
        threshold=chosen[2] if chosen else None,
        groups_total=int(total.size),
        groups=tuple(shown),
    )


_DIAMETER_MEMBERS = 64


def _diameter(conn: Connection, recipe_id: int, recipe: object, members: np.ndarray) -> float:
    """The largest distance between two members, from their signatures (first 64 members)."""
    from catalog.recipes import Recipe

    assert isinstance(recipe, Recipe)
    sample = members[:_DIAMETER_MEMBERS]
    rows = conn.execute(
        text(
            "SELECT image_id, value FROM signature WHERE recipe_id = :r AND image_id IN :ids"
        ).bindparams(bindparam("ids", expanding=True)),
        {"r": recipe_id, "ids": sample.tolist()},
    ).all()
    if len(rows) < 2:
        return 0.0
    signatures = np.frombuffer(b"".join(bytes(r[1]) for r in rows), np.uint8).reshape(len(rows), -1)
    left, right = np.triu_indices(len(rows), k=1)
    return float(recipe.distances(signatures[left], signatures[right]).max())


def _split_items(
    conn: Connection, splits: Sequence[SplitInfo]
) -> tuple[np.ndarray, np.ndarray, list[str | None], np.ndarray]:
    """(split ids int64, image ids int64, labels, positions int64) of every item of these
    splits, in split id and position order (the primary key's)."""
    item = core_table(Item)
    rows = conn.execute(
        select(item.c.split_id, item.c.image_id, item.c.label, item.c.position)
        .where(item.c.split_id.in_([s.split_id for s in splits]))
        .order_by(item.c.split_id, item.c.position)
    ).all()
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64), [], np.empty(0, np.int64)
    split_ids, image_ids, labels, positions = zip(*rows, strict=True)
    return (
        np.array(split_ids, np.int64),
        np.array(image_ids, np.int64),
        list(labels),
        np.array(positions, np.int64),
    )


def version_diff(
    conn: Connection,
    a: Ref | str,
    b: Ref | str,
    *,
    recipe: str | None = None,
    threshold: float | None = None,
    exact_only: bool = False,
    limit: int = 20,
) -> DiffReport:
    """What changed from ref ``a`` to ref ``b``, by image content; splits match by name.

    Per split: images kept, added, removed, and removed images replaced by a near copy. Between
    splits: images that moved (left one split for another) or were copied (entered another
    split while staying: a leak the new version introduced). Labelled items of ``b`` whose image
    carried labels in ``a``, never theirs (relabelled).
    """
    splits_a, splits_b = resolve(conn, a), resolve(conn, b)
    sa, ia, la, _pa = _split_items(conn, splits_a)
    sb, ib, lb, positions_b = _split_items(conn, splits_b)
    name_a = {s.split_id: s.split for s in splits_a}
    name_b = {s.split_id: s.split for s in splits_b}
    names = list(dict.fromkeys([s.split for s in splits_a] + [s.split for s in splits_b]))

    def images(
        split_ids: np.ndarray, image_ids: np.ndarray, by_id: dict[int, str], name: str
    ) -> np.ndarray:
        """Distinct images of the splits called ``name``."""
        wanted = [i for i, n in by_id.items() if n == name]
        return np.unique(image_ids[np.isin(split_ids, wanted)])

    in_a = {n: images(sa, ia, name_a, n) for n in names}
    in_b = {n: images(sb, ib, name_b, n) for n in names}
    chosen = None
    if not exact_only:
        found = select_recipes(conn, [recipe] if recipe else None, threshold)
        chosen = found[0] if found else None
    near = np.empty((0, 2), np.int64)
    if chosen is not None:
        near = np.array(
            conn.execute(
                text("SELECT image_a, image_b FROM pair WHERE recipe_id = :r AND distance <= :t"),
                {"r": chosen[0], "t": chosen[2]},
            ).all(),
            dtype=np.int64,
        ).reshape(-1, 2)
        near = np.concatenate([near, near[:, ::-1]])
    changes = []
    for name in names:
        removed = np.setdiff1d(in_a[name], in_b[name])
        added = np.setdiff1d(in_b[name], in_a[name])
        replaced: int | None = None if chosen is None else 0  # None: not looked for
        if near.size and removed.size and added.size:
            hit = np.isin(near[:, 0], removed) & np.isin(near[:, 1], added)
            replaced = int(np.unique(near[hit, 0]).size)
        changes.append(
            SplitChange(
                split=name,
                images_a=int(in_a[name].size),
                images_b=int(in_b[name].size),
                kept=int(np.intersect1d(in_a[name], in_b[name]).size),
                added=int(added.size),
                removed=int(removed.size),
                replaced_by_near_copy=replaced,
            )
        )
    moves = []
    for source in names:
        for to in names:
            if source == to:
                continue
            arrived = np.setdiff1d(np.intersect1d(in_a[source], in_b[to]), in_a[to])
            if not arrived.size:
                continue
            stayed = np.isin(arrived, in_b[source])
            moves.append(
                SplitMove(source, to, moved=int((~stayed).sum()), copied=int(stayed.sum()))
            )
    # Relabelled: labelled items of b whose image carried labels in a, never theirs, found on
    # (image, label) codes. Other items of the same image that kept an old label are not: with
    # many copies, they would crowd the one that changed out of the list. Unlabelled items are
    # not, either way (as in label conflicts): a copy into an unlabelled split is a move.
    codes = {label: code for code, label in enumerate(sorted(set(la + lb), key=str))}
    labels_of = list(codes)
    width = max(len(codes), 1)
    labelled_a = np.array([x is not None for x in la], bool)
    pa = np.unique((ia * width + np.array([codes[x] for x in la], np.int64))[labelled_a])
    item_b = ib * width + np.array([codes[x] for x in lb], np.int64) if lb else ib
    labelled_b = np.array([x is not None for x in lb], bool) if lb else np.zeros(0, bool)
    # The items of b so relabelled, in split and position order.
    rows_b = np.flatnonzero(labelled_b & np.isin(ib, pa // width) & ~np.isin(item_b, pa))
    relabelled_items = int(rows_b.size)
    first = rows_b[:limit]
    by_b = {s.split_id: s for s in splits_b}
    detail = _items_of(conn, np.unique(ib[first]).tolist(), by_b)
    refs = {(ref.split, ref.position): ref for _digest, items in detail.values() for ref in items}
    relabelled = tuple(
        refs[(by_b[int(split)].ref, int(position))]
        for split, position in zip(sb[first].tolist(), positions_b[first].tolist(), strict=True)
    )
    # Each one's image's labels in a, from (image, label) codes: no loop over a's items.
    held = pa[np.isin(pa // width, ib[first])]
    before: dict[int, list[str]] = {}
    for pair in held.tolist():
        before.setdefault(pair // width, []).append(labels_of[pair % width] or "")
    labels_before = tuple(tuple(sorted(before.get(int(i), []))) for i in ib[first].tolist())
    every_a, every_b = np.unique(ia), np.unique(ib)
    return DiffReport(
        a=str(parse_ref(a) if isinstance(a, str) else a),
        b=str(parse_ref(b) if isinstance(b, str) else b),
        recipe=chosen[1] if chosen else None,
        threshold=chosen[2] if chosen else None,
        splits=tuple(changes),
        moves=tuple(moves),
        relabelled_items=relabelled_items,
        relabelled=relabelled,
        images_added=int(np.setdiff1d(every_b, every_a).size),
        images_removed=int(np.setdiff1d(every_a, every_b).size),
        labels_before=labels_before,
        capped_buckets=capped_buckets(conn, np.union1d(ia, ib)).get(chosen[0], 0) if chosen else 0,
    )


_HEX = re.compile(r"^[0-9a-fA-F]{6,64}$")
_ITEM_TARGET = re.compile(r"^(?P<ref>[^:]+):(?P<split>[^:@]+):(?P<position>\d+)$")


def show_image(conn: Connection, target: str, *, limit: int = 10) -> ShowReport:
    """Everything the catalog knows of one image.

    Args:
        target: ``DATASET[@VERSION]:SPLIT:POSITION`` (an item), or a hex digest prefix of at
            least 6 characters.
        limit: near neighbours listed per recipe (closest first).

    Raises:
        NotFoundError: no such item or digest; InputError: an ambiguous prefix or bad target.
    """
    from catalog.preview import make_preview, read_image_file, read_row

    image = core_table(Image)
    item_match = _ITEM_TARGET.match(target)
    if item_match:
        (split,) = resolve(
            conn,
            Ref(
                parse_ref(item_match["ref"]).dataset,
                parse_ref(item_match["ref"]).version,
                item_match["split"],
            ),
        )
        position = int(item_match["position"])
        # Positions are 64-bit: a longer number is no position (and no query can hold it).
        image_id = (
            conn.execute(
                select(core_table(Item).c.image_id).where(
                    core_table(Item).c.split_id == split.split_id,
                    core_table(Item).c.position == position,
                )
            ).scalar_one_or_none()
            if position < 2**63
            else None
        )
        if image_id is None:
            raise NotFoundError(f"{split.ref} has no position {position} (it has {split.items})")
    elif _HEX.match(target):
        prefix = target.lower()
        # Digests are stored as bytes: compare the hex text of the stored value.
        hex_digest = (
            func.encode(image.c.digest, "hex")
            if conn.dialect.name == "postgresql"
            else func.lower(func.hex(image.c.digest))
        )
        found = (
            conn.execute(select(image.c.id).where(hex_digest.like(f"{prefix}%")).limit(2))
            .scalars()
            .all()
        )
        if not found:
            raise NotFoundError(f"no image digest starts with {prefix}")
        if len(found) > 1:
            raise InputError(f"digest prefix {prefix} is ambiguous; give more characters")
        image_id = found[0]
    else:
        raise InputError(
            f"{target!r}: show takes DATASET[@VERSION]:SPLIT:POSITION (e.g. notmnist@v1:test:3) "
            "or a digest prefix of 6 or more hex characters"
        )
    row = conn.execute(select(image).where(image.c.id == image_id)).one()
    all_splits = _all_splits(conn)
    holders = _items_of(conn, [image_id], all_splits).get(image_id, ("", []))[1]
    neighbours: list[Neighbour] = []
    total = 0
    for recipe_id, name, _t in select_recipes(conn, None, None):
        pair = core_table(Pair)
        total += sum(
            conn.execute(
                select(func.count()).where(pair.c.recipe_id == recipe_id, side == image_id)
            ).scalar_one()
            for side in (pair.c.image_a, pair.c.image_b)
        )
        near = conn.execute(
            text(
                "SELECT other_id, distance FROM ("
                " SELECT image_b AS other_id, distance FROM pair"
                " WHERE recipe_id = :r AND image_a = :i"
                " UNION ALL SELECT image_a, distance FROM pair"
                " WHERE recipe_id = :r AND image_b = :i) AS n"
                " ORDER BY distance, other_id LIMIT :limit"
            ),
            {"r": recipe_id, "i": image_id, "limit": limit},
        ).all()
        found_items = _items_of(conn, [other for other, _d in near], all_splits)
        for other, distance in near:
            digest, refs = found_items.get(other, ("", []))
            neighbours.append(Neighbour(name, distance, digest, tuple(refs)))
    preview, note = None, "no item of this image has a readable source file"
    sources = conn.execute(
        select(
            core_table(Source).c.path,
            core_table(Source).c.format,
            core_table(Source).c.size,
            core_table(Item).c.source_key,
            core_table(Item).c.source_row,
            core_table(Item).c.source_sha256,
        )
        .join(core_table(Item), core_table(Item).c.source_id == core_table(Source).c.id)
        .where(core_table(Item).c.image_id == image_id)
        # The first items in split and position order, tried in that order: the same source
        # on every engine, as the items are listed.
        .order_by(core_table(Item).c.split_id, core_table(Item).c.position)
        .limit(20)
    ).all()
    for path, fmt, size, key, source_row, sha256 in sources:
        if fmt == FOLDER_FORMAT:
            pixels, where = read_image_file(path, key, sha256), f"{path}:{key}"
        elif source_row is not None:
            pixels, where = (
                read_row(path, fmt, key, source_row, size, bytes(row.digest)),
                f"{path}:{key}[{source_row}]",
            )
        else:
            continue
        if pixels is not None:
            preview = make_preview(pixels, where)
            note = ""
            break
    return ShowReport(
        digest=bytes(row.digest).hex(),
        height=row.height,
        width=row.width,
        channels=row.channels,
        dtype=row.dtype,
        low_info=bool(row.low_info),
        items=tuple(holders),
        neighbours=tuple(neighbours),
        preview=preview,
        preview_note=note,
        neighbours_total=total,
    )


def _all_splits(conn: Connection) -> dict[int, SplitInfo]:
    """Every split of the catalog by id (names only; sizes are not needed here)."""
    rows = conn.execute(
        select(
            core_table(Split).c.id,
            core_table(Dataset).c.name,
            core_table(Version).c.tag,
            core_table(Split).c.name.label("split"),
        )
        .join(core_table(Version), core_table(Version).c.id == core_table(Split).c.version_id)
        .join(core_table(Dataset), core_table(Dataset).c.id == core_table(Version).c.dataset_id)
    ).all()
    return {r.id: SplitInfo(r.name, r.tag, r.split, r.id, 0, 0) for r in rows}
