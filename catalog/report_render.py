"""Text renderers of the audit report: one self-contained HTML page, and Markdown for a
pull-request comment. They draw an `AuditReport`; they never query.

HTML: a Jinja2 template shipped with the package (``catalog/templates/report.html.j2``), with
autoescape on, because labels and file names are untrusted text. Pictures are the report's PNGs
as ``data:`` URIs; styles and the table-sorting script are inline, so the file opens offline and
loads nothing. At most ``limits.thumbnails`` pictures are embedded, each at most
``limits.thumbnail_pixels`` across, so the page's size is bounded whatever the catalog's.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from pathlib import PurePath

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from catalog.model import GroupMember, ItemRef, NearConflict, RecipeInfo
from catalog.report import (
    DISTANCE_MEANING,
    GROUP_PICTURES,
    AuditReport,
    leak_rate,
    percent,
)
from catalog.words import capped_note, counted

MARKDOWN_ROWS = 5
"""Findings listed per section in Markdown (a comment should stay short; counts are complete)."""
_SCALE = 3
"""Thumbnails are drawn at this many screen pixels per image pixel, up to 96."""


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("catalog", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["counted"] = counted  # {{ n|counted("image") }}: "1 image", "2 images"
    environment.globals["capped_note"] = capped_note
    return environment


def item_name(item: ItemRef) -> str:
    """``dataset@version:split#position``."""
    return f"{item.split}#{item.position}"


def source_name(item: ItemRef) -> str:
    """``file.npz:array[row]``: the file's name, not its directory."""
    row = "" if item.source_row is None else f"[{item.source_row}]"
    return f"{PurePath(item.source_path).name}:{item.source_key}{row}"


def probability_at_threshold(recipe: RecipeInfo) -> float | None:
    """P(a pair at the default threshold is found by the band join), if known."""
    for distance, probability in recipe.candidate_probability:
        if distance == recipe.default_threshold:
            return probability
    return None


class _Pictures:
    """Embeds pictures as data URIs until the report's cap, then placeholders."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report
        self.embedded = 0

    def __call__(self, item: ItemRef) -> Markup:
        picture = self.report.picture(item)
        if picture is None or picture.png is None or picture.preview is None:
            why = picture.note if picture is not None else "over the --thumbnails cap"
            return Markup('<span class="nopic" title="{}">no picture</span>').format(why)
        if self.embedded >= self.report.limits.thumbnails:
            return Markup('<span class="nopic" title="{}">no picture</span>').format(
                f"{counted(self.report.limits.thumbnails, 'picture')} embedded already "
                "(--thumbnails)"
            )
        self.embedded += 1
        height, width = len(picture.preview.rows), len(picture.preview.rows[0])
        scale = max(1, min(_SCALE, 96 // max(height, width, 1)))
        data = base64.b64encode(picture.png).decode("ascii")
        return Markup(
            '<img class="thumb" src="data:image/png;base64,{}" width="{}" height="{}" '
            'alt="{}" title="{}">'
        ).format(data, width * scale, height * scale, item_name(item), picture.key)


def images_in(conflicts: Sequence[NearConflict]) -> int:
    """How many distinct images these near label conflicts (pairs) show: the count a tier's
    ``conflict_images`` is compared with (a pair shows two, an image may be in several)."""
    return len({side for c in conflicts for side in (c.a, c.b)})


def to_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page (no network, no external files)."""
    sources = {
        source.path: index
        for index, source in enumerate(s for v in report.versions for s in v.sources)
    }

    def where(item: ItemRef) -> Markup:
        """The item's provenance, linked to its source file's entry in the Sources section."""
        anchor = sources.get(item.source_path)
        if anchor is None:
            return Markup('<span class="src">{}</span>').format(source_name(item))
        return Markup('<a class="src" href="#src-{}" title="{}">{}</a>').format(
            anchor, item.source_path, source_name(item)
        )

    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            r=report,
            pic=_Pictures(report),
            where=where,
            source_ids=sources,
            item_name=item_name,
            percent=percent,
            leak_rate=lambda pair: leak_rate(report, pair),
            meaning=DISTANCE_MEANING,
            p_found=probability_at_threshold,
            group_pictures=GROUP_PICTURES,
            images_in=images_in,
            file_uri=lambda path: PurePath(path).as_uri() if PurePath(path).is_absolute() else "",
        )
    )


# --- Markdown ---------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans(
    {c: "\\" + c for c in "\\`*_[]|~"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
)


def md(text: object) -> str:
    """Untrusted text made inert in Markdown (and in the HTML GitHub allows inside it)."""
    return " ".join(str(text).split()).translate(_MD_SPECIAL)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], right: int = 0) -> list[str]:
    """A Markdown table; the last ``right`` columns are numbers, right-aligned."""
    names = list(header)
    align = ["---"] * (len(names) - right) + ["---:"] * right
    lines = ["| " + " | ".join(names) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _more(total: int, shown: int, what: str) -> list[str]:
    """The note under a list cut short; ``what`` is a plural ("images")."""
    if total <= shown:
        return []
    more = counted(total - shown, f"more {what.removesuffix('s')}", f"more {what}")
    # Markdown lists at most MARKDOWN_ROWS whatever --limit says; the HTML lists --limit.
    return [f"\n_{more}; the HTML report lists up to `--limit`._"]


def code(text: object) -> str:
    """Untrusted text as a Markdown code span (shown literally, HTML and backticks included:
    CommonMark closes a span only at a run of backticks as long as the one that opened it)."""
    value = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _items(member: GroupMember, most: int = 3) -> str:
    shown = [
        f"{code(item_name(i))} {md(i.label or '-')} ({code(source_name(i))})"
        for i in member.items[:most]
    ]
    extra = len(member.items) - most
    return "; ".join(shown) + (f"; +{extra:,} more" if extra > 0 else "")


def to_markdown(report: AuditReport, rows: int = MARKDOWN_ROWS) -> str:
    """A short report for a pull-request comment: verdict, summary, leakage, counts of every
    finding, and the first ``rows`` findings of each kind."""
    rows = min(rows, report.limits.rows)
    s = report.summary
    out: list[str] = [f"## dsaudit report: {md(report.ref)}", ""]
    if report.gates:
        verdict = "passed" if report.passed else "**failed**"
        out.append(f"Gates {verdict}:")
        out.append("")
        for gate in report.gates:
            mark = "❌" if gate.tripped else "✅"
            out.append(f"- {mark} `{gate.gate}`: {md(gate.message)}")
        out.append("")
    out.append(
        f"{counted(s.datasets, 'dataset')}, {counted(s.versions, 'version')}, "
        f"{counted(s.splits, 'split')}, {counted(s.items, 'item')}, "
        f"{counted(s.images, 'distinct image')}."
    )
    for version in report.versions:
        if version.skipped:
            out += [
                "",
                f"⚠️ {version.skipped:,} {'file' if version.skipped == 1 else 'files'} of "
                f"{md(version.dataset)}@{md(version.tag)} "
                f"{'was' if version.skipped == 1 else 'were'} skipped (could not be read or "
                "decoded):",
                "",
            ]
            out += [f"- {code(f.path)}: {md(f.reason)}" for f in version.skipped_files[:rows]]
            out += _more(version.skipped, min(rows, len(version.skipped_files)), "files")
    out += ["", "### Leakage between splits", ""]
    leaking = [p for p in report.overlap.pairs if leak_rate(report, p)[0] > 0]
    if not leaking:
        out.append("No item of any split has an exact or near copy in another split.")
    else:
        tiers = report.overlap.near
        header = ["items of", "with a copy in", "exact", *[f"near ({md(t.recipe)})" for t in tiers]]
        body = []
        for pair in sorted(leaking, key=lambda p: -leak_rate(report, p)[0]):
            cells = [md(pair.a), md(pair.b), f"{pair.items:,} ({percent(pair.rate)})"]
            for tier in tiers:
                near = tier.pair(pair.a, pair.b)
                cells.append(f"{near.items:,} ({percent(near.rate)})")
            body.append([*cells, percent(leak_rate(report, pair)[0])])
        out += _table([*header, "leak rate"], body, right=len(tiers) + 2)
    out += ["", "### Findings", ""]
    within = report.overlap.within
    counts = [
        ("images in more than one split (exact)", report.leaks.exact_images),
        *[
            (f"near pairs across splits ({md(t.recipe)} <= {t.threshold:g})", t.pairs_total)
            for t in report.leaks.near
        ],
        ("duplicate groups inside splits", report.duplicates.groups_total),
        ("redundant copies inside splits (exact)", sum(w.redundant for w in within)),
        ("images with more than one label", report.overlap.conflict_images),
        *[
            (f"images with a near copy labelled otherwise ({md(t.recipe)})", t.conflict_images)
            for t in report.overlap.near
        ],
        ("low-information items", report.low_info.items),
    ]
    out += _table(["finding", "count"], [[name, f"{n:,}"] for name, n in counts], right=1)
    out += [
        f"\n> {md(capped_note(t.recipe, t.capped_buckets))}"
        for t in report.overlap.near
        if t.capped_buckets != 0
    ]
    _examples(out, report, rows)
    for diff in report.diffs:
        out += ["", f"### What changed from {md(diff.a)} to {md(diff.b)}", ""]
        out.append(
            f"{counted(diff.images_added, 'image')} added, {diff.images_removed:,} removed, "
            f"{sum(m.moved for m in diff.moves):,} moved to another split, "
            f"{sum(m.copied for m in diff.moves):,} copied into another split (new leaks), "
            f"{counted(diff.relabelled_items, 'item')} relabelled."
        )
    out += [
        "",
        f"<sub>dsaudit {md(report.tool_version)}, {report.created_at.isoformat()}; up to "
        f"{counted(rows, 'finding')} per kind listed, counts complete.</sub>",
        "",
    ]
    return "\n".join(out)


def _examples(out: list[str], report: AuditReport, rows: int) -> None:
    """The first findings of each kind, with provenance."""

    def section(title: str) -> None:
        out.extend(["", f"#### {title}", ""])

    leaks = report.leaks
    if leaks.exact:
        section("Images in more than one split")
        out += [f"- `{m.image_digest[:12]}`: {_items(m)}" for m in leaks.exact[:rows]]
        out += _more(leaks.exact_images, min(rows, len(leaks.exact)), "images")
    for tier in leaks.near:
        if tier.pairs:
            section(f"Closest near pairs across splits ({md(tier.recipe)})")
            out += [
                f"- {p.distance:.3f}: {_items(p.a, 2)} ~ {_items(p.b, 2)}"
                for p in tier.pairs[:rows]
            ]
            out += _more(tier.pairs_total, min(rows, len(tier.pairs)), "pairs")
    groups = report.duplicates
    if groups.groups:
        section("Largest duplicate groups inside splits")
        out += [
            f"- {md(g.split)}: {counted(g.images, 'image')}, {counted(g.items, 'item')}: "
            + "; ".join(_items(m, 2) for m in g.members[:3])
            for g in groups.groups[:rows]
        ]
        out += _more(groups.groups_total, min(rows, len(groups.groups)), "groups")
    conflicts = report.overlap.conflicts
    if conflicts:
        section("Label conflicts")
        out += [
            f"- `{c.digest[:12]}` labels {', '.join(md(x) for x in c.labels)}: "
            + _items(GroupMember(c.digest, c.items))
            for c in conflicts[:rows]
        ]
        out += _more(report.overlap.conflict_images, min(rows, len(conflicts)), "images")
    for near_tier in report.overlap.near:
        if near_tier.conflicts:
            section(f"Near copies labelled otherwise ({md(near_tier.recipe)})")
            out += [
                f"- {c.distance:.3f}: {_items(GroupMember('', c.a), 2)} ~ "
                f"{_items(GroupMember('', c.b), 2)}"
                for c in near_tier.conflicts[:rows]
            ]
            shown = images_in(near_tier.conflicts[:rows])
            out += _more(near_tier.conflict_images, shown, "images")
    low = report.low_info
    if low.shown:
        section("Low-information images")
        out += [f"- `{m.image_digest[:12]}`: {_items(m)}" for m in low.shown[:rows]]
        out += _more(low.images, min(rows, len(low.shown)), "images")
