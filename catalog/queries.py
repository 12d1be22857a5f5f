"""Queries: SQL over items, images and splits, returning the report model. Nothing here prints.

A **ref** names what to audit: ``DATASET[@VERSION][:SPLIT]``; without a version it means the
dataset's latest, without a split every split of the version.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, func, select, text

from catalog.errors import InputError, NotFoundError
from catalog.model import (
    DatasetInfo,
    ItemRef,
    LabelConflict,
    Listing,
    OverlapReport,
    PairOverlap,
    SplitInfo,
    VersionInfo,
    WithinSplit,
)
from catalog.schema import Dataset, Image, Item, Source, Split, Version

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
    item = Item.__table__
    rows = conn.execute(
        select(item.c.split_id, func.count(), func.count(item.c.image_id.distinct()))
        .where(item.c.split_id.in_(list(split_ids)))
        .group_by(item.c.split_id)
    )
    return {split_id: (items, images) for split_id, items, images in rows}


def resolve(conn: Connection, ref: Ref | str) -> tuple[SplitInfo, ...]:
    """The splits a ref names, in version then name order.

    Raises:
        NotFoundError: naming what is missing and what exists instead.
    """
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    dataset, version, split = Dataset.__table__, Version.__table__, Split.__table__
    dataset_id = conn.execute(
        select(dataset.c.id).where(dataset.c.name == ref.dataset)
    ).scalar_one_or_none()
    if dataset_id is None:
        known = conn.execute(select(dataset.c.name).order_by(dataset.c.name)).scalars().all()
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
    sizes = _split_sizes(conn, [s.id for s in splits])
    return tuple(
        SplitInfo(ref.dataset, tag, s.name, s.id, *sizes.get(s.id, (0, 0))) for s in splits
    )


def resolve_all(conn: Connection, refs: Sequence[Ref | str]) -> tuple[SplitInfo, ...]:
    """The splits of several refs, each once, in the order given."""
    seen: dict[int, SplitInfo] = {}
    for ref in refs:
        for info in resolve(conn, ref):
            seen.setdefault(info.split_id, info)
    return tuple(seen.values())


def list_catalog(conn: Connection, dataset: str | None = None) -> Listing:
    """Datasets, their versions (oldest first) and splits, with item and image counts."""
    ds, version, split, item = (
        Dataset.__table__,
        Version.__table__,
        Split.__table__,
        Item.__table__,
    )
    query = select(ds.c.id, ds.c.name).order_by(ds.c.name)
    if dataset is not None:
        query = query.where(ds.c.name == dataset)
    datasets = conn.execute(query).all()
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
    distinct = dict(
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
    by_dataset: dict[int, list[VersionInfo]] = defaultdict(list)
    for v in versions:
        by_dataset[v.dataset_id].append(
            VersionInfo(
                dataset=names[v.dataset_id],
                tag=v.tag,
                created_at=v.created_at,
                parent=v.parent,
                note=v.note,
                tool_version=v.tool_version,
                splits=tuple(by_version[v.id]),
            )
        )
    return Listing(
        tuple(DatasetInfo(d.name, tuple(by_dataset[d.id]), distinct.get(d.id, 0)) for d in datasets)
    )


# Items of split A whose image also occurs in split B, for every ordered pair at once. Only
# images present in two or more audited splits reach the join, so the work beyond one scan of
# the (image_id, split_id) index is proportional to the leak, not to the dataset.
_PAIRS_SQL = text(
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
).bindparams(bindparam("splits", expanding=True))

_WITHIN_SQL = text(
    """
    SELECT split_id, COUNT(*), SUM(n), SUM(n - 1), MAX(n) FROM (
        SELECT split_id, image_id, COUNT(*) AS n FROM item
        WHERE split_id IN :splits GROUP BY split_id, image_id HAVING COUNT(*) > 1
    ) AS dup
    GROUP BY split_id
    """
).bindparams(bindparam("splits", expanding=True))

_CONFLICTS_SQL = text(
    """
    SELECT image_id, COUNT(*) FROM item
    WHERE split_id IN :splits AND label IS NOT NULL
    GROUP BY image_id HAVING COUNT(DISTINCT label) > 1
    """
).bindparams(bindparam("splits", expanding=True))


def exact_overlap(conn: Connection, refs: Sequence[Ref | str], *, limit: int = 20) -> OverlapReport:
    """Exact overlap between every ordered pair of the refs' splits, duplicates inside each
    split, low-information items, and images carrying more than one label.

    Args:
        conn: any connection to the catalog.
        refs: one or more refs; several may name other versions or datasets.
        limit: how many label conflicts to return in detail (the counts are always complete).
    """
    splits = resolve_all(conn, refs)
    ids = [s.split_id for s in splits]
    by_id = {s.split_id: s for s in splits}
    counts = {
        (a, b): (items, images) for a, b, items, images in conn.execute(_PAIRS_SQL, {"splits": ids})
    }
    pairs = tuple(
        PairOverlap(
            a=sa.ref,
            b=sb.ref,
            items=counts.get((sa.split_id, sb.split_id), (0, 0))[0],
            images=counts.get((sa.split_id, sb.split_id), (0, 0))[1],
            rate=counts.get((sa.split_id, sb.split_id), (0, 0))[0] / sa.items if sa.items else 0.0,
        )
        for sa in splits
        for sb in splits
        if sa.split_id != sb.split_id
    )
    dups = {row[0]: row[1:] for row in conn.execute(_WITHIN_SQL, {"splits": ids})}
    item, image = Item.__table__, Image.__table__
    low = dict(
        conn.execute(
            select(item.c.split_id, func.count())
            .join(image, image.c.id == item.c.image_id)
            .where(item.c.split_id.in_(ids), image.c.low_info.is_(True))
            .group_by(item.c.split_id)
        ).all()
    )
    within = tuple(
        WithinSplit(
            split=s.ref,
            groups=int(dups.get(s.split_id, (0, 0, 0, 0))[0]),
            items_in_groups=int(dups.get(s.split_id, (0, 0, 0, 0))[1]),
            redundant=int(dups.get(s.split_id, (0, 0, 0, 0))[2]),
            largest_group=int(dups.get(s.split_id, (0, 0, 0, 0))[3]),
            low_info_items=int(low.get(s.split_id, 0)),
        )
        for s in splits
    )
    conflicting = conn.execute(_CONFLICTS_SQL, {"splits": ids}).all()
    conflict_items = sum(n for _image, n in conflicting)
    detail_ids = sorted(image_id for image_id, _n in conflicting)
    return OverlapReport(
        splits=splits,
        pairs=pairs,
        within=within,
        conflict_images=len(conflicting),
        conflict_items=conflict_items,
        conflicts=_conflict_details(conn, detail_ids, by_id, limit),
    )


def _conflict_details(
    conn: Connection, image_ids: list[int], splits: dict[int, SplitInfo], limit: int
) -> tuple[LabelConflict, ...]:
    if not image_ids or limit <= 0:
        return ()
    item, image, source = Item.__table__, Image.__table__, Source.__table__
    rows = conn.execute(
        select(
            image.c.id,
            image.c.digest,
            item.c.split_id,
            item.c.position,
            item.c.label,
            source.c.path,
            item.c.source_key,
            item.c.source_row,
        )
        .join(image, image.c.id == item.c.image_id)
        .join(source, source.c.id == item.c.source_id)
        .where(item.c.image_id.in_(image_ids), item.c.split_id.in_(list(splits)))
        .order_by(image.c.digest, item.c.split_id, item.c.position)
    ).all()
    grouped: dict[bytes, list[ItemRef]] = defaultdict(list)
    for row in rows:
        grouped[bytes(row.digest)].append(
            ItemRef(
                split=splits[row.split_id].ref,
                position=row.position,
                label=row.label,
                source_path=row.path,
                source_key=row.source_key,
                source_row=row.source_row,
            )
        )
    conflicts = []
    for digest in sorted(grouped)[:limit]:
        items = grouped[digest]
        labels = tuple(sorted({i.label for i in items if i.label is not None}))
        conflicts.append(LabelConflict(digest=digest.hex(), labels=labels, items=tuple(items)))
    return tuple(conflicts)
