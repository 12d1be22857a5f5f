"""The audit report: one model, built from the existing queries, that every renderer draws.

`assemble` composes the queries (overlap with its near tiers, cross-split copies, duplicate
groups, low-information images, version diffs, recipes) inside one read transaction; `gates`
judges the result against the CI limits; `collect_pictures` reads the listed images back from
their source files (provenance) as small PNGs for the HTML and half-block previews for the
terminal. Renderers (``cli/render.py``, `catalog.report_render`) never query.

Counts are always complete; ``limit`` bounds the findings listed in detail per section and
``thumbnails`` the pictures read back, so a report of any catalog stays readable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
from sqlalchemy import Connection

from catalog import __version__, queries
from catalog.errors import UsageError
from catalog.loaders.folders import FOLDER_FORMAT
from catalog.model import (
    DiffReport,
    DupsReport,
    ItemRef,
    LeaksReport,
    LowInfoReport,
    OverlapReport,
    PairOverlap,
    RecipeInfo,
    SourceInfo,
    VersionInfo,
)
from catalog.preview import Preview, make_preview, read_image_file, read_rows, to_png
from catalog.words import counted

REPORT_SCHEMA = "dsaudit.report/1"
DEFAULT_LIMIT = 20
DEFAULT_THUMBNAILS = 200
THUMBNAIL_PIXELS = 64
"""Pictures are downsampled (block mean) to at most this many pixels across."""
GROUP_MEMBERS = 20
"""Members of a duplicate group kept in the report (its image and item counts are complete)."""
GROUP_PICTURES = 8
"""Members of a duplicate group shown as pictures; the rest are counted."""

DISTANCE_MEANING = {
    "pixel": "RMS pixel difference on a 0-1 scale (gray, aligned arrays of one shape)",
    "pixel-shift": "RMS difference of the blurred gray images on a 0-1 scale, the smallest "
    "over shifts of up to 1 pixel (aligned arrays of one shape)",
    "perceptual": "share of differing bits of a 256-bit DCT perceptual hash",
    "spectral": "share of differing bits of a 256-bit Fourier-magnitude hash (shift-tolerant)",
}
"""What a recipe family's distance measures, for people reading a report."""


class FailOn(StrEnum):
    """Findings that fail a report (``--fail-on``) whenever there is at least one."""

    EXACT = "exact"
    """An item with an exact copy in another audited split."""
    NEAR = "near"
    """An item with a near copy (and no exact copy) in another audited split."""
    CONFLICTS = "conflicts"
    """An image, or a near copy of it, carrying different labels."""
    LOW_INFO = "low-info"
    """A blank or near-constant item."""


@dataclass(frozen=True)
class Summary:
    """What the report covers."""

    datasets: int
    versions: int
    splits: int
    items: int
    images: int
    """Distinct images over all audited splits."""


@dataclass(frozen=True)
class GateResult:
    """One CI gate and its verdict."""

    gate: str
    """``max-leakage`` or a `FailOn` value."""
    limit: float
    """The largest value that passes (the rate given, or 0 findings)."""
    value: float
    """The worst value found: a rate for max-leakage, a count otherwise."""
    tripped: bool
    message: str
    """Why, in one sentence."""


@dataclass(frozen=True)
class Picture:
    """An item's image read back from its source file, or why it could not be."""

    key: str
    """`picture_key` of the item it was read for."""
    png: bytes | None
    preview: Preview | None
    note: str
    """Empty when there is a picture; else the reason there is none."""


@dataclass(frozen=True)
class Limits:
    rows: int
    """Findings listed in detail per section (``--limit``); counts are complete regardless."""
    thumbnails: int
    """Pictures read back and embedded at most (``--thumbnails``)."""
    thumbnail_pixels: int = THUMBNAIL_PIXELS


@dataclass(frozen=True)
class AuditReport:
    """Everything ``dsaudit report`` shows, in every format."""

    ref: str
    against: tuple[str, ...]
    created_at: datetime
    tool_version: str
    summary: Summary
    overlap: OverlapReport
    """Splits, the exact and near leakage matrices, duplicates per split, label conflicts."""
    leaks: LeaksReport
    """The images behind the matrices: copies across splits and the closest near pairs."""
    duplicates: DupsReport
    low_info: LowInfoReport
    diffs: tuple[DiffReport, ...]
    """One per ``against`` ref: what changed from it to ``ref``."""
    recipes: tuple[RecipeInfo, ...]
    """The recipes the near findings used."""
    versions: tuple[VersionInfo, ...]
    """The versions audited or compared, with the files they were read from (provenance)."""
    gates: tuple[GateResult, ...]
    limits: Limits
    pictures: tuple[Picture, ...] = field(default=(), metadata={"json": False})

    @property
    def passed(self) -> bool:
        """No gate tripped."""
        return not any(g.tripped for g in self.gates)

    def picture(self, item: ItemRef) -> Picture | None:
        """The picture read for this item, if the report collected one."""
        key = picture_key(item)
        return next((p for p in self.pictures if p.key == key), None)


def picture_key(item: ItemRef) -> str:
    """Where an item's pixels live: ``path:key[row]``, or ``folder:relative path``."""
    if item.source_row is None:
        return f"{item.source_path}:{item.source_key}"
    return f"{item.source_path}:{item.source_key}[{item.source_row}]"


def validate_gates(max_leakage: float | None) -> None:
    """Raises UsageError for a ``max_leakage`` that is not a rate."""
    if max_leakage is not None and not 0.0 <= max_leakage <= 1.0:
        raise UsageError(
            f"--max-leakage {max_leakage:g} is not a rate: give a fraction from 0 to 1 "
            "(0.01 means 1 %)"
        )


def assemble(
    conn: Connection,
    ref: str,
    *,
    against: Sequence[str] = (),
    recipes: Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    thumbnails: int = DEFAULT_THUMBNAILS,
    max_leakage: float | None = None,
    fail_on: Sequence[FailOn | str] = (),
) -> AuditReport:
    """The report of ``ref`` (without pictures; see `collect_pictures`).

    Args:
        conn: a connection inside one read transaction, so every section sees one snapshot.
        ref: ``DATASET[@VERSION][:SPLIT]``.
        against: older refs; each gives a version diff to ``ref``.
        recipes: near recipes to report (None: all in the catalog; empty: exact only).
        limit: findings listed in detail per section.
        max_leakage, fail_on: CI gates, see `gates`.
    """
    validate_gates(max_leakage)
    failing = [FailOn(f) for f in fail_on]
    if limit < 0 or thumbnails < 0:
        raise UsageError("--limit and --thumbnails count rows and pictures: give 0 or more")
    with queries.shared_reads(conn):
        return _assemble(conn, ref, against, recipes, limit, thumbnails, max_leakage, failing)


def _assemble(
    conn: Connection,
    ref: str,
    against: Sequence[str],
    recipes: Sequence[str] | None,
    limit: int,
    thumbnails: int,
    max_leakage: float | None,
    failing: list[FailOn],
) -> AuditReport:
    overlap = queries.overlap(conn, [ref], limit=limit, recipes=recipes)
    _gates_apply(overlap, ref, max_leakage, failing)
    leaks = queries.cross_split_copies(conn, [ref], recipes=recipes, limit=limit)
    used = [tier.recipe for tier in overlap.near]
    duplicates = queries.duplicate_groups(
        conn, [ref], recipe=used[0] if used else None, exact_only=not used, limit=limit
    )
    # A chain of near copies can join thousands of images: list the first members only (the
    # group's `images` and `items` stay complete).
    duplicates = replace(
        duplicates,
        groups=tuple(replace(g, members=g.members[:GROUP_MEMBERS]) for g in duplicates.groups),
    )
    low_info = queries.low_info_images(conn, [ref], limit=limit)
    diffs = tuple(
        queries.version_diff(
            conn, old, ref, recipe=used[0] if used else None, exact_only=not used, limit=limit
        )
        for old in against
    )
    compared = [queries.resolve(conn, old) for old in against]
    wanted = {(s.dataset, s.version) for s in overlap.splits}
    wanted |= {(s.dataset, s.version) for splits in compared for s in splits}
    versions = tuple(
        version
        for name in sorted({dataset for dataset, _tag in wanted})
        for dataset in queries.list_catalog(conn, name).datasets
        for version in dataset.versions
        if (version.dataset, version.tag) in wanted
    )
    summary = Summary(
        datasets=len({s.dataset for s in overlap.splits}),
        versions=len({(s.dataset, s.version) for s in overlap.splits}),
        splits=len(overlap.splits),
        items=sum(s.items for s in overlap.splits),
        images=queries.distinct_images(conn, [ref]),
    )
    partial = AuditReport(
        ref=ref,
        against=tuple(against),
        created_at=datetime.now(UTC).replace(microsecond=0),
        tool_version=__version__,
        summary=summary,
        overlap=overlap,
        leaks=leaks,
        duplicates=duplicates,
        low_info=low_info,
        diffs=diffs,
        recipes=tuple(r for r in queries.list_recipes(conn) if r.name in used),
        versions=versions,
        gates=(),
        limits=Limits(rows=limit, thumbnails=thumbnails),
    )
    return replace(partial, gates=gates(partial, max_leakage, failing))


def _gates_apply(
    overlap: OverlapReport, ref: str, max_leakage: float | None, failing: Sequence[FailOn]
) -> None:
    """Raises UsageError for a gate that could not trip on this report, whatever the data: one
    that compares splits when ``ref`` is one split, ``near`` without near tiers. A CI gate
    that passes because it measured nothing would hide the leak it is there to catch."""
    across = [f"--fail-on {kind.value}" for kind in (FailOn.EXACT, FailOn.NEAR) if kind in failing]
    across = (["--max-leakage"] if max_leakage is not None else []) + across
    if across and len(overlap.splits) < 2:
        named = queries.parse_ref(ref).split is not None
        raise UsageError(
            f"{ref}: {' and '.join(across)} {'compare' if len(across) > 1 else 'compares'} "
            "splits, and "
            + (
                "this names one: audit its whole version (DATASET@VERSION)"
                if named
                else "this has one split: there is nothing for it to leak into"
            )
        )
    if FailOn.NEAR in failing and not overlap.near:
        raise UsageError(
            f"{ref}: --fail-on near needs near-duplicate recipes, and this report uses none "
            "(--exact, or a catalog made with --exact-only): drop --exact or the gate"
        )


def leak_rate(report: AuditReport, pair: PairOverlap) -> tuple[float, str]:
    """The share of ``pair.a`` with an exact or (under the worst recipe) near copy in
    ``pair.b``, and how it splits up. Near tiers count only items without an exact copy, so
    exact + near never counts an item twice."""
    worst, how = 0.0, ""
    for tier in report.overlap.near:
        near = tier.pair(pair.a, pair.b)
        if near.rate > worst:
            worst, how = near.rate, f" + near {percent(near.rate)} under {tier.recipe}"
    # The worst tier is a maximum over tiers: any capped tier may hold more than it counts.
    if any(tier.capped_buckets != 0 for tier in report.overlap.near):
        how += ", may be a lower bound"
    return pair.rate + worst, f"exact {percent(pair.rate)}{how}"


def percent(rate: float) -> str:
    """A rate as a percentage with enough digits to tell 0.04 % from nothing."""
    if rate == 0:
        return "0 %"
    if rate < 0.001:
        return f"{rate * 100:.3f} %"
    return f"{rate * 100:.1f} %"


def gates(
    report: AuditReport, max_leakage: float | None, fail_on: Sequence[FailOn]
) -> tuple[GateResult, ...]:
    """Judge a report: one result per gate asked for, tripped or not.

    Args:
        max_leakage: fail when the leak rate of any ordered pair of splits (the share of the
            first with an exact or near copy in the second, `leak_rate`) exceeds it.
        fail_on: fail when there is any finding of these kinds.
    """
    results = []
    overlap = report.overlap
    if max_leakage is not None:
        worst: tuple[float, str, PairOverlap] | None = None
        for pair in overlap.pairs:
            rate, how = leak_rate(report, pair)
            if worst is None or rate > worst[0]:
                worst = (rate, how, pair)
        if worst is None:  # `_gates_apply` refuses a gate over one split
            raise UsageError("--max-leakage compares splits, and this report has one")
        rate, how, pair = worst
        tripped = rate > max_leakage
        results.append(
            GateResult(
                "max-leakage",
                max_leakage,
                rate,
                tripped,
                f"{pair.a} has {percent(rate)} of its items in {pair.b} ({how}), "
                + ("above" if tripped else "within")
                + f" --max-leakage {percent(max_leakage)}",
            ),
        )
    for kind in dict.fromkeys(fail_on):
        count, what = _findings(report, kind)
        results.append(GateResult(kind.value, 0, count, count > 0, what))
    return tuple(results)


def _findings(report: AuditReport, kind: FailOn) -> tuple[int, str]:
    """(how many findings of this kind, a sentence saying so)."""
    overlap = report.overlap
    if kind is FailOn.EXACT:
        items = sum(p.items for p in overlap.pairs)
        worst = max(overlap.pairs, key=lambda p: p.items, default=None)
        if not items or worst is None:
            return 0, "no item has an exact copy in another split"
        # The message leads with what ``value`` counts: the matrix's cells summed, an item
        # once for each other split that holds its image.
        return items, (
            f"{counted(items, 'exact copy', 'exact copies')} across splits (an item counted "
            "once per other split holding its image; "
            f"{counted(report.leaks.exact_images, 'image occurs', 'images occur')} in more than "
            f"one split); the most: {counted(worst.items, 'item')} of {worst.a} "
            f"{'has' if worst.items == 1 else 'have'} an exact copy in {worst.b}"
        )
    if kind is FailOn.NEAR:
        pairs = [(t.recipe, p) for t in overlap.near for p in t.pairs]
        items = sum(p.items for _r, p in pairs)
        if not items:
            return 0, "no item has a near copy in another split"
        recipe, worst = max(pairs, key=lambda rp: rp[1].items)
        return items, (
            f"{counted(worst.items, 'item')} of {worst.a} "
            f"{'has' if worst.items == 1 else 'have'} a near copy ({recipe}) in {worst.b} "
            "and no exact one"
        )
    if kind is FailOn.CONFLICTS:
        near = max((t.conflict_images for t in overlap.near), default=0)
        count = overlap.conflict_images + near
        if not count:
            return 0, "no image carries two labels, nor does any near copy"
        return count, (
            f"{counted(overlap.conflict_images, 'image carries', 'images carry')} more than "
            "one label"
            + (
                f"; {counted(near, 'image has', 'images have')} a near copy with another label"
                if near
                else ""
            )
        )
    low = report.low_info
    if not low.items:
        return 0, "no low-information item"
    return (
        low.items,
        f"{counted(low.items, 'low-information item')} ({counted(low.images, 'distinct image')})",
    )


def picture_items(report: AuditReport) -> Iterator[tuple[ItemRef, str | None]]:
    """The item standing for each picture a report shows, with its image's digest (hex) where
    the section knows it, in the order sections show them (the order pictures are read until
    the cap): near pairs, copies across splits, label conflicts, duplicate groups,
    low-information images, relabelled items."""
    for tier in report.leaks.near:
        for pair in tier.pairs:
            yield from ((m.items[0], m.image_digest) for m in (pair.a, pair.b))
    for member in report.leaks.exact:
        yield member.items[0], member.image_digest
    for conflict in report.overlap.conflicts:
        yield conflict.items[0], conflict.digest
    for near_tier in report.overlap.near:
        for near_conflict in near_tier.conflicts:
            yield from ((near_conflict.a[0], None), (near_conflict.b[0], None))
    for group in report.duplicates.groups:
        for member in group.members[:GROUP_PICTURES]:
            yield member.items[0], member.image_digest
    for low in report.low_info.shown:
        yield low.items[0], low.image_digest
    for diff in report.diffs:
        yield from ((item, None) for item in diff.relabelled)


def collect_pictures(report: AuditReport) -> AuditReport:
    """The report with pictures of its listed findings, read back from their source files.

    At most ``report.limits.thumbnails`` pictures, each at most `THUMBNAIL_PIXELS` across.
    Rows of one file are read in one pass. An item whose source file is gone, changed size,
    or was an array in memory gets a placeholder saying so.
    """
    sources: dict[str, list[SourceInfo]] = defaultdict(list)
    for version in report.versions:
        for source in version.sources:
            sources[source.path].append(source)
    chosen: dict[str, ItemRef] = {}
    # A picture belongs to a place (file, array, row), which every item there shares
    # (`AuditReport.picture`); it is drawn only if its pixels still hash to the image the
    # items there show. Places cited with two images (a file rewritten in place between two
    # versions) match neither: they get a placeholder.
    digest_of: dict[str, bytes] = {}
    # Arrays given in memory have no file to read: their placeholders do not count against the
    # cap, which is on pictures read back.
    in_memory = {
        path for path, found in sources.items() if any(s.format == "memory" for s in found)
    }
    unreadable: dict[str, ItemRef] = {}
    for item, digest in picture_items(report):
        key = picture_key(item)
        if item.source_path in in_memory:
            unreadable.setdefault(key, item)
        elif len(chosen) < report.limits.thumbnails:
            chosen.setdefault(key, item)
        if digest is not None:
            image = bytes.fromhex(digest)
            if digest_of.setdefault(key, image) != image:
                digest_of[key] = b""  # two images at one place: no row hashes to b""
    wanted: dict[tuple[str, str], dict[int, bytes | None]] = defaultdict(dict)
    pixels: dict[tuple[str, str, int | None], np.ndarray] = {}
    for name, item in chosen.items():
        if item.source_row is not None:
            wanted[(item.source_path, item.source_key)][item.source_row] = digest_of.get(name)
        elif any(s.format == FOLDER_FORMAT for s in sources.get(item.source_path, ())):
            # One file per item: decode it again (and only if it is the file that was ingested).
            picture = read_image_file(item.source_path, item.source_key, item.source_sha256)
            if picture is not None:
                pixels[(item.source_path, item.source_key, None)] = picture
    for (path, key), rows in wanted.items():
        # Rows whose pixels no longer hash to their image's digest are left out (`read_rows`).
        expected = {row: digest for row, digest in rows.items() if digest is not None}
        for source in sources.get(path, ()):
            found = read_rows(path, source.format, key, sorted(rows), source.size, expected)
            if found:
                pixels.update({(path, key, row): array for row, array in found.items()})
                break
    pictures = [
        Picture(name, None, None, _missing(item, sources)) for name, item in unreadable.items()
    ]
    for name, item in chosen.items():
        array = pixels.get((item.source_path, item.source_key, item.source_row))
        if array is None:
            pictures.append(Picture(name, None, None, _missing(item, sources)))
            continue
        preview = make_preview(array, name, max_width=THUMBNAIL_PIXELS)
        pictures.append(Picture(name, to_png(preview), preview, ""))
    return replace(report, pictures=tuple(pictures))


def _missing(item: ItemRef, sources: dict[str, list[SourceInfo]]) -> str:
    """Why an item's picture could not be read back."""
    formats = {s.format for s in sources.get(item.source_path, ())}
    if "memory" in formats:
        return "ingested from arrays in memory: no file to read the picture from"
    if FOLDER_FORMAT in formats:
        return (
            f"image file {item.source_key} under {item.source_path} is gone or changed since ingest"
        )
    if formats and not formats & {"npy", "npz"}:
        return f"pictures are read back from .npy and .npz files only ({item.source_path})"
    return f"source file {item.source_path} is gone or changed since ingest"
