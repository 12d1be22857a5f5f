"""Rich renderers for the report model. They draw dataclasses; they never query."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from catalog.errors import escaped
from catalog.ingest import IngestResult
from catalog.loaders import SkippedFile
from catalog.model import (
    ConflictsReport,
    DiffReport,
    DupsReport,
    ItemRef,
    LabelConflict,
    Listing,
    NearTier,
    OverlapReport,
    PairOverlap,
    RecipeInfo,
    ShowReport,
    SplitInfo,
)
from catalog.report import (
    DISTANCE_MEANING,
    AuditReport,
    percent,
)
from catalog.report_render import images_in
from catalog.sql import SqlResult
from catalog.words import capped_note, counted

if TYPE_CHECKING:
    from catalog.check import CheckReport
    from catalog.demo import DemoRun


def _table(title: str, *columns: tuple[str, str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAVY, title_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


def _listed(table: Table) -> RenderableType:
    """``table``, or its title alone when it lists nothing (``--limit 0``): headers over no
    rows say nothing, and the title holds the count. The note under it says how to list."""
    if table.row_count:
        return table
    title = str(table.title).split("; the ")[0].removesuffix(":")
    return Text(title, style="bold")


def ingest_result(result: IngestResult) -> RenderableType:
    table = _table(
        f"Ingested {result.dataset}@{result.version}"
        + (f" (parent {result.parent})" if result.parent else ""),
        ("split", "left"),
        ("items", "right"),
        ("new images", "right"),
        ("low-info items", "right"),
    )
    for split in result.splits:
        table.add_row(
            split.name, f"{split.items:,}", f"{split.new_images:,}", f"{split.low_info_items:,}"
        )
    rate = result.items / result.seconds if result.seconds > 0 else 0.0
    parts: list[RenderableType] = [table]
    if result.skipped:
        parts.append(skipped_files(result.skipped, result.skipped_files))
    for near in result.near:
        parts.append(
            Text(
                f"{near.recipe}: {counted(near.images, 'image')} signed, "
                f"{counted(near.candidates, 'band-join proposal')}, "
                f"{counted(near.pairs, 'near pair')} stored ({near.seconds:.1f} s)"
                + (
                    f"; {counted(near.capped_buckets, 'bucket')} over the cap (largest "
                    f"{near.largest_bucket:,})"
                    if near.capped_buckets
                    else ""
                )
            )
        )
    parts.append(
        Text(
            f"{counted(result.items, 'item')}, {counted(result.new_images, 'new image')} "
            f"in {result.seconds:.1f} s "
            f"({rate:,.0f} images/s)",
            style="dim",
        )
    )
    return Group(*parts)


def skipped_files(total: int, shown: Sequence[SkippedFile]) -> RenderableType:
    """Files left out of a version as undecodable: the count, then the first few with why."""
    lines = [Text(f"{counted(total, 'file')} skipped (could not be decoded):", style="yellow")]
    lines += [Text(f"  {escaped(f.path)}: {f.reason}") for f in shown]
    if total > len(shown):
        lines.append(Text(f"  ... and {total - len(shown):,} more (dsaudit sql: skipped_file)"))
    return Group(*lines)


def listing(data: Listing) -> RenderableType:
    if not data.datasets:
        return Text("The catalog is empty: ingest a dataset with `dsaudit ingest`.")
    parts: list[RenderableType] = []
    for dataset in data.datasets:
        table = _table(
            f"{dataset.name}  ({counted(dataset.images, 'distinct image')})",
            ("version", "left"),
            ("parent", "left"),
            ("created (UTC)", "left"),
            ("split", "left"),
            ("items", "right"),
            ("images", "right"),
            ("note", "left"),
        )
        # The files under the table, one line per version: in a column, a version's second
        # file sat beside its second split, whatever split it held.
        table.caption = "\n".join(
            f"{version.tag} read from "
            + ", ".join(s.path.rsplit("/", 1)[-1] for s in version.sources)
            for version in dataset.versions
        )
        table.caption_justify = "left"
        for version in dataset.versions:
            for index, split in enumerate(version.splits):
                first = index == 0
                table.add_row(
                    version.tag if first else "",
                    (version.parent or "-") if first else "",
                    version.created_at.strftime("%Y-%m-%d %H:%M") if first else "",
                    split.split,
                    f"{split.items:,}",
                    f"{split.images:,}",
                    (version.note or "") if first else "",
                    end_section=index == len(version.splits) - 1,
                )
        parts.append(table)
        for version in dataset.versions:
            if version.skipped:
                parts.append(Text(f"{dataset.name}@{version.tag}:", style="bold"))
                parts.append(skipped_files(version.skipped, version.skipped_files))
    return Group(*parts)


def split_summary(report: OverlapReport) -> RenderableType:
    table = _table(
        "Splits",
        ("split", "left"),
        ("items", "right"),
        ("distinct images", "right"),
        ("duplicate groups", "right"),
        ("redundant copies", "right"),
        ("low-info items", "right"),
    )
    table.columns[0].no_wrap = True
    within = {w.split: w for w in report.within}
    for s in report.splits:
        w = within[s.ref]
        table.add_row(
            s.ref,
            f"{s.items:,}",
            f"{s.images:,}",
            f"{w.groups:,}",
            f"{w.redundant:,}",
            f"{w.low_info_items:,}",
        )
    return table


def _matrix(
    title: str, splits: Sequence[SplitInfo], pair: Callable[[str, str], PairOverlap]
) -> Table:
    names, common = _short_names([s.ref for s in splits])
    if common:
        title = f"{title}, in {common}"
    matrix = _table(title, ("", "left"), *[(name, "right") for name in names])
    matrix.columns[0].no_wrap = True
    for a, name in zip(splits, names, strict=True):
        cells = []
        for b in splits:
            if a.split_id == b.split_id:
                cells.append(Text("·", style="dim"))
                continue
            found = pair(a.ref, b.ref)
            style = "bold red" if found.items else "green"
            cells.append(Text(f"{found.items:,} ({percent(found.rate)})", style=style))
        matrix.add_row(name, *cells)
    return matrix


def _short_names(refs: Sequence[str]) -> tuple[list[str], str]:
    """Split refs without the part they all share, and that part: ``test`` in notmnist@v1, or
    ``v1:test`` in notmnist; whole refs when datasets differ. Full refs made a matrix's
    headers unreadable at 80 columns (``notmnist@v…``)."""
    parts = [ref.partition("@") for ref in refs]
    versions = [rest.rpartition(":") for _dataset, _at, rest in parts]
    datasets = {dataset for dataset, _at, _rest in parts}
    if len(datasets) != 1 or any(not at for _d, at, _r in parts):
        return list(refs), ""
    (dataset,) = datasets
    tags = {tag for tag, _colon, _split in versions}
    if len(tags) == 1:
        return [split for _tag, _colon, split in versions], f"{dataset}@{next(iter(tags))}"
    return [f"{tag}:{split}" for tag, _colon, split in versions], dataset


def leakage_matrix(report: OverlapReport) -> RenderableType:
    return _matrix(
        "Exact leakage: items of ROW whose image also occurs in COLUMN (share of ROW)",
        report.splits,
        report.pair,
    )


def near_matrix(
    report: OverlapReport, tier: NearTier, *, with_conflicts: bool = True
) -> RenderableType:
    table = _matrix(
        f"Near leakage ({tier.recipe}, distance <= {tier.threshold:g}): items of ROW with no "
        "exact copy in COLUMN but a near copy there",
        report.splits,
        tier.pair,
    )
    parts: list[RenderableType] = [table]
    if tier.conflict_images and with_conflicts:
        parts.append(near_conflicts(tier))
    return Group(*parts, *_capped(tier.recipe, tier.capped_buckets))


def _capped(recipe: str, buckets: int | None) -> list[RenderableType]:
    """The warning that a tier's near counts may be lower bounds, if its ingests capped (or
    some kept no count: None)."""
    return [] if buckets == 0 else [Text(capped_note(recipe, buckets), style="yellow")]


def near_conflicts(tier: NearTier) -> RenderableType:
    if not tier.conflict_images:
        return Text(f"No near label conflicts under {tier.recipe}.", style="green")
    conflicts = _table(
        f"Near label conflicts ({tier.recipe}): "
        f"{counted(tier.conflict_images, 'image has', 'images have')} a near copy with another "
        "label; the closest:",
        ("distance", "right"),
        ("item", "left"),
        ("label", "left"),
        ("near copy", "left"),
        ("label", "left"),
    )
    for conflict in tier.conflicts:
        a, b = conflict.a[0], conflict.b[0]
        conflicts.add_row(
            f"{conflict.distance:.3f}",
            f"{a.split}#{a.position}"
            + (f" (+{len(conflict.a) - 1})" if len(conflict.a) > 1 else ""),
            a.label or "",
            f"{b.split}#{b.position}"
            + (f" (+{len(conflict.b) - 1})" if len(conflict.b) > 1 else ""),
            b.label or "",
        )
    hidden = tier.conflict_images - images_in(tier.conflicts)
    if hidden <= 0:
        return _listed(conflicts)
    more = counted(hidden, "more conflicting image")
    return Group(_listed(conflicts), Text(f"({more}; --limit shows more)", style="dim"))


def conflicts(report: ConflictsReport) -> RenderableType:
    return Group(
        label_conflicts(report.exact_images, report.exact_items, report.exact),
        *[
            Group(near_conflicts(tier), *_capped(tier.recipe, tier.capped_buckets))
            for tier in report.near
        ],
    )


def label_conflicts(images: int, items: int, conflicts: Sequence[LabelConflict]) -> RenderableType:
    """Exact label conflicts: ``images`` carry several labels over ``items``; the first listed."""
    if not images:
        return Text("No label conflicts.", style="green")
    table = _table(
        f"Label conflicts: {counted(images, 'image carries', 'images carry')} more than one "
        f"label ({counted(items, 'item')})",
        ("image", "left"),
        ("item", "left"),
        ("label", "left"),
        ("source", "left"),
    )
    table.columns[1].no_wrap = True
    for conflict in conflicts:
        for index, item in enumerate(conflict.items):
            table.add_row(
                conflict.digest[:12] if index == 0 else "",
                f"{item.split}#{item.position}",
                item.label or "",
                _where(item),
                end_section=index == len(conflict.items) - 1,
            )
    parts: list[RenderableType] = [_listed(table)]
    hidden = images - len(conflicts)
    if hidden > 0:
        more = counted(hidden, "more conflicting image")
        parts.append(Text(f"({more}; --limit shows more)", style="dim"))
    return Group(*parts)


def overlap(report: OverlapReport) -> RenderableType:
    return Group(
        split_summary(report),
        leakage_matrix(report),
        *[near_matrix(report, tier) for tier in report.near],
        label_conflicts(report.conflict_images, report.conflict_items, report.conflicts),
    )


def dups(report: DupsReport) -> RenderableType:
    how = (
        f"exact copies and {report.recipe} pairs within {report.threshold:g}"
        if report.recipe
        else "exact copies"
    )
    if not report.groups_total:
        return Text(f"No duplicate groups ({how}).", style="green")
    table = _table(
        f"{counted(report.groups_total, 'duplicate group')} inside splits ({how}); the largest "
        "first",
        ("split", "left"),
        ("images", "right"),
        ("items", "right"),
        ("max distance", "right"),
        ("members (position label, source)", "left"),
    )
    table.columns[0].no_wrap = True
    for group in report.groups:
        shown = [
            f"{ref.position} {ref.label or ''}  {_where(ref)}"
            for member in group.members[:6]
            for ref in member.items[:3]
        ]
        if group.items > len(shown):
            shown.append(f"... {group.items - len(shown):,} more")
        far = report.threshold is not None and group.max_distance > report.threshold
        table.add_row(
            group.split,
            f"{group.images:,}",
            f"{group.items:,}",
            Text(f"{group.max_distance:.3f}", style="yellow" if far else ""),
            "\n".join(shown),
            end_section=True,
        )
    parts: list[RenderableType] = [_listed(table)]
    if report.groups_total > len(report.groups):
        parts.append(
            Text(f"({report.groups_total - len(report.groups):,} more; --limit shows more)")
        )
    return Group(*parts)


def diff(report: DiffReport) -> RenderableType:
    near = f", near copies under {report.recipe} <= {report.threshold:g}" if report.recipe else ""
    splits = _table(
        f"{report.a} -> {report.b}: {counted(report.images_added, 'image')} added, "
        f"{report.images_removed:,} removed{near}",
        ("split", "left"),
        ("images before", "right"),
        ("after", "right"),
        ("kept", "right"),
        ("added", "right"),
        ("removed", "right"),
    )
    if report.recipe:  # with no recipe, no near copy was looked for
        splits.add_column("replaced by a near copy", justify="right")
    for change in report.splits:
        splits.add_row(
            change.split,
            f"{change.images_a:,}",
            f"{change.images_b:,}",
            f"{change.kept:,}",
            f"{change.added:,}",
            f"{change.removed:,}",
            *(
                []
                if change.replaced_by_near_copy is None
                else [f"{change.replaced_by_near_copy:,}"]
            ),
        )
    parts: list[RenderableType] = [splits]
    if report.recipe:
        parts.extend(_capped(report.recipe, report.capped_buckets))
    if report.moves:
        moves = _table(
            "Between splits: images of FROM (before) that are in TO (after)",
            ("from", "left"),
            ("to", "left"),
            ("moved", "right"),
            ("copied (still in FROM too: a new leak)", "right"),
        )
        for move in report.moves:
            moves.add_row(
                move.source,
                move.to,
                f"{move.moved:,}",
                Text(f"{move.copied:,}", style="bold red" if move.copied else ""),
            )
        parts.append(moves)
    else:
        parts.append(Text("No image changed split.", style="green"))
    if report.relabelled_items:
        relabelled = _table(
            f"{counted(report.relabelled_items, 'item carries', 'items carry')} other labels "
            "than before; the first:",
            ("item", "left"),
            ("labels before", "left"),
            ("label now", "left"),
            ("source", "left"),
        )
        before = report.labels_before or ((),) * len(report.relabelled)
        for ref, labels in zip(report.relabelled, before, strict=True):
            relabelled.add_row(
                f"{ref.split}#{ref.position}",
                ", ".join(label or "(unlabelled)" for label in labels),
                ref.label or "",
                _where(ref),
            )
        parts.append(_listed(relabelled))
        hidden = report.relabelled_items - len(report.relabelled)
        if hidden > 0:
            more = counted(hidden, "more item")
            parts.append(Text(f"({more}; --limit shows more)", style="dim"))
    else:
        parts.append(Text("No label changed.", style="green"))
    return Group(*parts)


_RAMP = " .:-=+*#%@"
"""Characters from dark to light, for a picture on a console without colour."""


class Picture:
    """An image for the terminal: half blocks, two pixels per character cell (the upper as
    foreground colour, the lower as background); where the console has no colour (output to a
    file or a pipe, ``NO_COLOR``), one character of `_RAMP` per cell, by the cell's gray
    level, so the picture still shows."""

    def __init__(self, rows: Sequence[Sequence[tuple[int, int, int]]]) -> None:
        self.rows = rows

    def __rich_console__(self, console: Console, _options: ConsoleOptions) -> RenderResult:
        coloured = console.color_system is not None and not console.no_color
        yield self.colour() if coloured else self.gray()

    def __rich_measure__(self, _console: Console, _options: ConsoleOptions) -> Measurement:
        width = len(self.rows[0]) if self.rows else 0
        return Measurement(width, width)

    def _cells(self) -> Iterator[list[tuple[tuple[int, int, int], tuple[int, int, int]]]]:
        for top, bottom in zip(self.rows[0::2], [*self.rows[1::2], None], strict=False):
            yield [
                (upper, bottom[index] if bottom is not None else (0, 0, 0))
                for index, upper in enumerate(top)
            ]

    def colour(self) -> Text:
        text = Text()
        for cells in self._cells():
            for upper, lower in cells:
                text.append(
                    "▀",
                    style=f"rgb({upper[0]},{upper[1]},{upper[2]}) on "
                    f"rgb({lower[0]},{lower[1]},{lower[2]})",
                )
            text.append("\n")
        return text

    def gray(self) -> Text:
        lines = []
        for number, cells in enumerate(self._cells()):
            # An odd last row has no lower half: it counts twice rather than beside black.
            last = 2 * number + 1 >= len(self.rows)
            levels = (sum(upper) + sum(upper if last else lower) for upper, lower in cells)
            lines.append("".join(_RAMP[level * len(_RAMP) // (6 * 255 + 1)] for level in levels))
        return Text("\n".join(lines) + "\n")


def picture(rows: Sequence[Sequence[tuple[int, int, int]]]) -> Picture:
    """`Picture` of preview rows of (r, g, b) triples."""
    return Picture(rows)


def _where(ref: ItemRef) -> str:
    """Where an item was read from: its file's name, array or file path, and row. A folder's
    file path may hold control characters (`escaped`)."""
    row = "" if ref.source_row is None else f"[{ref.source_row}]"
    return escaped(f"{ref.source_path.rsplit('/', 1)[-1]}:{ref.source_key}{row}")


def show(report: ShowReport) -> RenderableType:
    kind = "low-information, " if report.low_info else ""
    header = Text(
        f"image {report.digest}\n{report.height}x{report.width}"
        f"{'' if report.channels == 1 else f'x{report.channels}'} "
        f"{report.dtype}, {kind}{counted(len(report.items), 'item')}",
        style="bold",
    )
    parts: list[RenderableType] = [header]
    if report.preview is not None:
        parts.append(picture(report.preview.rows))
        parts.append(Text(f"read from {escaped(report.preview.source)}", style="dim"))
    else:
        parts.append(Text(f"(no picture: {report.preview_note})", style="dim"))
    items = _table(
        "Items holding this image", ("item", "left"), ("label", "left"), ("source", "left")
    )
    for ref in report.items:
        items.add_row(f"{ref.split}#{ref.position}", ref.label or "", _where(ref))
    parts.append(items)
    if report.neighbours:
        near = _table(
            "Near copies",
            ("recipe", "left"),
            ("distance", "right"),
            ("image", "left"),
            ("items", "left"),
        )
        for n in report.neighbours:
            near.add_row(
                n.recipe,
                f"{n.distance:.3f}",
                n.digest[:12],
                "\n".join(f"{r.split}#{r.position} {r.label or ''}" for r in n.items[:3])
                + (f"\n... {len(n.items) - 3} more" if len(n.items) > 3 else ""),
            )
        parts.append(near)
    hidden = report.neighbours_total - len(report.neighbours)
    if hidden > 0 and report.neighbours:
        more = counted(hidden, "more near copy", "more near copies")
        parts.append(Text(f"({more}; --limit shows more)", style="dim"))
    elif hidden > 0:
        stored = counted(hidden, "near copy", "near copies")
        parts.append(Text(f"{stored} stored (--limit lists them)", style="bold"))
    elif not report.neighbours_total:
        parts.append(Text("No near copies stored.", style="green"))
    return Group(*parts)


def recipes(data: Sequence[RecipeInfo]) -> RenderableType:
    if not data:
        return Text(
            "No recipes: a new catalog registers them at its first ingest, and one made with "
            "--exact-only finds exact copies only, for good."
        )
    parts: list[RenderableType] = []
    for recipe in data:
        table = _table(
            f"{recipe.name} ({recipe.family}): bands x rows {recipe.bands} x {recipe.rows}, "
            f"radius {recipe.radius:g}, default threshold {recipe.default_threshold:g}; "
            f"{counted(recipe.images, 'image')} signed, {counted(recipe.pairs, 'pair')} stored",
            ("distance", "right"),
            ("P(found by the band join)", "right"),
            ("", "left"),
        )
        for distance, probability in recipe.candidate_probability:
            note = ""
            if distance == recipe.default_threshold:
                note = "default threshold"
            elif distance == recipe.radius:
                note = "radius (pairs beyond are not stored)"
            table.add_row(f"{distance:.3f}", f"{probability:.4f}", note)
        table.caption = f"fingerprint {recipe.fingerprint[:16]}"
        if recipe.capped_buckets is None:
            table.caption += (
                "; versions ingested before schema revision 0008 kept no count of the buckets "
                "over the blow-up guard's cap"
            )
        elif recipe.capped_buckets:
            table.caption += (
                f"; its ingests met {counted(recipe.capped_buckets, 'bucket')} over the blow-up "
                f"guard's cap (largest {recipe.largest_bucket:,} images)"
            )
        if recipe.probability_is_bound:
            table.caption += (
                "; P is a worst-case lower bound (all of the difference in the coarse structure "
                "the code sees): measured detection of noise, JPEG, brightness and contrast "
                "copies is far higher, see benchmarks/RESULTS.md"
            )
        parts.append(table)
    return Group(*parts)


def demo_checks(run: DemoRun) -> RenderableType:
    table = _table(
        "Planted beside found",
        ("finding", "left"),
        ("planted", "right"),
        ("found", "right"),
        ("", "left"),
    )
    for check in run.checks:
        mark = Text("✓", style="green") if check.ok else Text("✗ MISSED", style="bold red")
        table.add_row(check.finding, f"{check.planted:,}", f"{check.found:,}", mark)
    return table


def check_report(report: CheckReport) -> RenderableType:
    table = _table(
        f"Checks of {report.catalog}",
        ("check", "left"),
        ("result", "left"),
        ("checked", "right"),
        ("what it verifies", "left"),
    )
    styles = {"ok": "green", "problems": "bold red", "skipped": "yellow"}
    for result in report.results:
        if result.status == "problems":
            verdict = f"{result.problems:,} problem{'s' if result.problems != 1 else ''}"
        elif result.status == "skipped":
            verdict = f"skipped: {result.skipped}"
        else:
            verdict = "ok"
        table.add_row(
            result.name,
            Text(verdict, style=styles[result.status]),
            "" if result.checked is None else f"{result.checked:,}",
            result.description,
        )
    parts: list[RenderableType] = [table]
    for result in report.results:
        for example in result.examples:
            parts.append(Text.assemble((f"{result.name}: ", "bold"), example))
        hidden = result.problems - len(result.examples)
        if hidden > 0:  # check lists a few of each; `dsaudit check --json` has the same few
            more = counted(hidden, "more problem")
            parts.append(Text(f"({more} of {result.name} not listed)", style="dim"))
    unverified = [r.name for r in report.results if r.name == "digests" and r.skipped]
    if report.ok and unverified:
        # Skipped because the sources are gone or changed: nothing wrong found, and the
        # pixels behind the digests not verified either.
        parts.append(
            Text(
                "All checks that ran passed; the digests were not verified (see above).",
                style="bold yellow",
            )
        )
    elif report.ok:
        parts.append(Text("All checks passed.", style="bold green"))
    else:
        plural = "s" if report.problems != 1 else ""
        parts.append(Text(f"{report.problems:,} problem{plural} found.", style="bold red"))
    return Group(*parts)


def sql_table(result: SqlResult) -> RenderableType:
    if not result.columns:
        return Text("(the statement returned no rows)")
    table = Table(box=box.SIMPLE_HEAVY)
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in result.rows)
        for i in range(len(result.columns))
    ]
    for name, is_number in zip(result.columns, numeric, strict=True):
        table.add_column(name, justify="right" if is_number else "left")
    for row in result.rows:
        table.add_row(*["NULL" if v is None else str(v) for v in row])
    if result.truncated:
        # Below the table, not its caption: a caption wraps to a narrow table's width.
        note = f"first {counted(len(result.rows), 'row')}; --max-rows shows more"
        return Group(table, Text(note, style="dim"))
    return table


def print_all(console: Console, renderables: Sequence[RenderableType]) -> None:
    for renderable in renderables:
        console.print(renderable)


# --- dsaudit report ---------------------------------------------------------------------------

REPORT_PICTURES = 3
"""Findings per kind drawn as pictures in the terminal (the HTML shows every listed one)."""
_TERMINAL_PIXELS = 28
"""Terminal pictures are subsampled to at most this many columns."""


def _small_picture(report: AuditReport, item: ItemRef) -> RenderableType:
    found = report.picture(item)
    if found is None or found.preview is None:
        return Text("(no picture)", style="dim")
    rows = found.preview.rows
    step = max(1, -(-len(rows[0]) // _TERMINAL_PIXELS))
    return picture([row[::step] for row in rows[::step]])


def _pictures(report: AuditReport, captions: Sequence[tuple[str, Sequence[ItemRef]]]) -> Columns:
    """Findings side by side (wrapping to the terminal's width): its pictures over a caption."""
    return Columns(
        [
            Group(
                _side_by_side([_small_picture(report, item) for item in items]),
                Text(caption, style="dim"),
            )
            for caption, items in captions
        ],
        padding=(1, 4),
    )


def _side_by_side(parts: Sequence[RenderableType]) -> Table:
    grid = Table.grid(padding=(0, 1))
    for _ in parts:
        grid.add_column(no_wrap=True)
    grid.add_row(*parts)
    return grid


def _more(total: int, shown: int, what: str) -> list[RenderableType]:
    """The note under a list cut at ``--limit``; ``what`` is a plural ("images")."""
    if total <= shown:
        return []
    more = counted(total - shown, f"more {what.removesuffix('s')}", f"more {what}")
    return [Text(f"({more}; --limit or the HTML report lists more)", style="dim")]


def report_summary(report: AuditReport) -> RenderableType:
    s = report.summary
    return Text.assemble(
        (f"Audit of {report.ref}", "bold"),
        f"  {counted(s.datasets, 'dataset')}, {counted(s.versions, 'version')}, "
        f"{counted(s.splits, 'split')}, {counted(s.items, 'item')}, "
        f"{counted(s.images, 'distinct image')}",
        (f"  ({report.created_at.isoformat()}, dsaudit {report.tool_version})", "dim"),
    )


def cross_split_copies(report: AuditReport) -> RenderableType:
    leaks = report.leaks
    parts: list[RenderableType] = []
    if not leaks.exact_images:
        parts.append(Text("No image occurs in more than one split.", style="green"))
    else:
        table = _table(
            "Copies across splits: "
            f"{counted(leaks.exact_images, 'image occurs', 'images occur')} in more than one "
            "split; the most widespread",
            ("image", "left"),
            ("items", "right"),
            ("where (item label, source)", "left"),
        )
        for member in leaks.exact:
            table.add_row(
                member.image_digest[:12],
                f"{len(member.items):,}",
                _member_lines(member.items),
                end_section=True,
            )
        parts.append(_listed(table))
        parts.append(
            _pictures(
                report,
                [
                    (", ".join(sorted({i.split.rsplit(":", 1)[-1] for i in m.items})), m.items[:1])
                    for m in leaks.exact[:REPORT_PICTURES]
                ],
            )
        )
        parts.extend(_more(leaks.exact_images, len(leaks.exact), "images"))
    for tier in leaks.near:  # a capped tier's note is under its near matrix, just above
        if not tier.pairs_total:
            parts.append(Text(f"No near pair across splits under {tier.recipe}.", style="green"))
            continue
        table = _table(
            f"Near pairs across splits ({tier.recipe}, distance <= {tier.threshold:g}): "
            f"{tier.pairs_total:,}; the closest",
            ("distance", "right"),
            ("one", "left"),
            ("the other", "left"),
        )
        for pair in tier.pairs:
            table.add_row(
                f"{pair.distance:.3f}",
                _member_lines(pair.a.items, 2),
                _member_lines(pair.b.items, 2),
            )
        parts.append(_listed(table))
        parts.append(
            _pictures(
                report,
                [
                    (f"{p.distance:.3f}", (p.a.items[0], p.b.items[0]))
                    for p in tier.pairs[:REPORT_PICTURES]
                ],
            )
        )
        parts.extend(_more(tier.pairs_total, len(tier.pairs), "pairs"))
    return Group(*parts)


def _member_lines(items: Sequence[ItemRef], most: int = 3) -> str:
    """One line per item: split#position label source (the report's ref names the version)."""
    lines = [
        f"{i.split.rsplit(':', 1)[-1]}#{i.position} {i.label or ''}  {_where(i)}"
        for i in items[:most]
    ]
    if len(items) > most:
        lines.append(f"... {len(items) - most:,} more")
    return "\n".join(lines)


def low_info(report: AuditReport) -> RenderableType:
    low = report.low_info
    if not low.items:
        return Text("No low-information items.", style="green")
    table = _table(
        f"Low-information items: {low.items:,} ({counted(low.images, 'distinct image')}, blank or "
        "near-constant)",
        ("image", "left"),
        ("items", "right"),
        ("where (item label, source)", "left"),
    )
    for member in low.shown:
        table.add_row(
            member.image_digest[:12], f"{len(member.items):,}", _member_lines(member.items)
        )
    return Group(_listed(table), *_more(low.images, len(low.shown), "images"))


def report_recipes(report: AuditReport) -> RenderableType:
    if not report.recipes:
        return Text("Exact copies only: no near-duplicate recipe was used.")
    table = _table(
        "Recipes and thresholds: a near copy is a verified distance at most the threshold",
        ("recipe", "left"),
        ("distance means", "left"),
        ("threshold", "right"),
        ("radius", "right"),
        ("P(found) at threshold", "right"),
    )
    for recipe in report.recipes:
        found = dict(recipe.candidate_probability).get(recipe.default_threshold)
        table.add_row(
            recipe.name,
            DISTANCE_MEANING.get(recipe.family, recipe.family),
            f"{recipe.default_threshold:g}",
            f"{recipe.radius:g}",
            "?"
            if found is None
            else f"{found:.3f}" + (" (lower bound)" if recipe.probability_is_bound else ""),
        )
    return table


def gates(report: AuditReport) -> RenderableType:
    table = _table("Gates", ("gate", "left"), ("verdict", "left"), ("why", "left"))
    for gate in report.gates:
        table.add_row(
            gate.gate,
            Text("tripped", style="bold red") if gate.tripped else Text("passed", style="green"),
            gate.message,
        )
    return table


def report(data: AuditReport) -> RenderableType:
    """The whole audit report for the terminal, with pictures of the top findings."""
    overlap = data.overlap
    parts: list[RenderableType] = [
        report_summary(data),
        *[
            Group(
                Text(f"{v.dataset}@{v.tag}:", style="bold"),
                skipped_files(v.skipped, v.skipped_files),
            )
            for v in data.versions
            if v.skipped
        ],
        split_summary(overlap),
        leakage_matrix(overlap),
        *[near_matrix(overlap, tier, with_conflicts=False) for tier in overlap.near],
        cross_split_copies(data),
        dups(data.duplicates),
    ]
    groups = data.duplicates.groups[:REPORT_PICTURES]
    if groups:
        parts.append(
            _pictures(
                data,
                [
                    (
                        f"{g.split.rsplit(':', 1)[-1]}, {g.items} items",
                        [m.items[0] for m in g.members[:3]],
                    )
                    for g in groups
                ],
            )
        )
    parts.append(
        label_conflicts(overlap.conflict_images, overlap.conflict_items, overlap.conflicts)
    )
    if overlap.conflicts:
        parts.append(
            _pictures(
                data,
                [(" / ".join(c.labels), c.items[:1]) for c in overlap.conflicts[:REPORT_PICTURES]],
            )
        )
    parts.extend(near_conflicts(tier) for tier in overlap.near)
    parts.append(low_info(data))
    parts.extend(diff(d) for d in data.diffs)
    parts.append(report_recipes(data))
    if data.gates:
        parts.append(gates(data))
    return Group(*parts)
