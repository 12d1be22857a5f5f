"""Rich renderers for the report model. They draw dataclasses; they never query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from catalog.ingest import IngestResult
from catalog.model import Listing, OverlapReport
from catalog.sql import SqlResult

if TYPE_CHECKING:
    from catalog.demo import DemoRun


def percent(rate: float) -> str:
    """A rate as a percentage with enough digits to tell 0.04 % from nothing."""
    if rate == 0:
        return "0 %"
    if rate < 0.001:
        return f"{rate * 100:.3f} %"
    return f"{rate * 100:.1f} %"


def _table(title: str, *columns: tuple[str, str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAVY, title_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table


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
    footer = Text(
        f"{result.items:,} items, {result.new_images:,} new images in {result.seconds:.1f} s "
        f"({rate:,.0f} images/s)",
        style="dim",
    )
    return Group(table, footer)


def listing(data: Listing) -> RenderableType:
    if not data.datasets:
        return Text("The catalog is empty: ingest a dataset with `dsaudit ingest`.")
    parts: list[RenderableType] = []
    for dataset in data.datasets:
        table = _table(
            f"{dataset.name}  ({dataset.images:,} distinct images)",
            ("version", "left"),
            ("parent", "left"),
            ("created (UTC)", "left"),
            ("split", "left"),
            ("items", "right"),
            ("images", "right"),
            ("note", "left"),
        )
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


def leakage_matrix(report: OverlapReport) -> RenderableType:
    matrix = _table(
        "Exact leakage: items of ROW whose image also occurs in COLUMN (share of ROW)",
        ("", "left"),
        *[(s.ref, "right") for s in report.splits],
    )
    matrix.columns[0].no_wrap = True
    for a in report.splits:
        cells = []
        for b in report.splits:
            if a.split_id == b.split_id:
                cells.append(Text("·", style="dim"))
                continue
            pair = report.pair(a.ref, b.ref)
            style = "bold red" if pair.items else "green"
            cells.append(Text(f"{pair.items:,} ({percent(pair.rate)})", style=style))
        matrix.add_row(a.ref, *cells)
    return matrix


def label_conflicts(report: OverlapReport) -> RenderableType:
    if not report.conflict_images:
        return Text("No label conflicts.", style="green")
    table = _table(
        f"Label conflicts: {report.conflict_images:,} images carry more than one label "
        f"({report.conflict_items:,} items)",
        ("image", "left"),
        ("item", "left"),
        ("label", "left"),
        ("source", "left"),
    )
    table.columns[1].no_wrap = True
    for conflict in report.conflicts:
        for index, item in enumerate(conflict.items):
            row = "" if item.source_row is None else f"[{item.source_row}]"
            table.add_row(
                conflict.digest[:12] if index == 0 else "",
                f"{item.split}#{item.position}",
                item.label or "",
                f"{item.source_path.rsplit('/', 1)[-1]}:{item.source_key}{row}",
                end_section=index == len(conflict.items) - 1,
            )
    parts: list[RenderableType] = [table]
    hidden = report.conflict_images - len(report.conflicts)
    if hidden > 0:
        parts.append(Text(f"({hidden:,} more conflicting images; --limit shows more)", style="dim"))
    return Group(*parts)


def overlap(report: OverlapReport) -> RenderableType:
    return Group(split_summary(report), leakage_matrix(report), label_conflicts(report))


def demo_checks(run: DemoRun) -> RenderableType:
    table = _table(
        "Planted beside found",
        ("finding", "left"),
        ("planted", "right"),
        ("found", "right"),
        ("", "left"),
    )
    for check in run.checks:
        table.add_row(
            check.finding,
            f"{check.planted:,}",
            f"{check.found:,}",
            Text("✓", style="green") if check.ok else Text("✗ MISSED", style="bold red"),
        )
    return table


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
        table.caption = f"first {len(result.rows):,} rows; --max-rows shows more"
    return table


def print_all(console: Console, renderables: Sequence[RenderableType]) -> None:
    for renderable in renderables:
        console.print(renderable)
