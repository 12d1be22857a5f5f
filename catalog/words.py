"""Counts in words, for every report format (terminal, Markdown, HTML, gate messages)."""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` with thousands separators and the words that agree with it.

    ``counted(1, "image")`` is "1 image", ``counted(2000, "image")`` "2,000 images";
    ``many`` names the plural when it is not ``one`` + "s" (a verb that agrees, too):
    ``counted(n, "image carries", "images carry")``.
    """
    return f"{n:,} {one if n == 1 else (many if many is not None else one + 's')}"


def capped_note(recipe: str, buckets: int | None) -> str:
    """The warning beside a near tier whose ingests capped buckets (`catalog.near.BUCKET_CAP`,
    `catalog.queries.capped_buckets`; None: some of them kept no count), in every report
    format."""
    if buckets is None:
        return (
            f"{recipe}: some of these splits' images came in before dsaudit kept a count of the "
            "buckets over the blow-up guard's cap (schema revision 0008), so near counts may be "
            "lower bounds; dsaudit dups joins whole groups"
        )
    return (
        f"{recipe}: {counted(buckets, 'bucket')} (images sharing a band key) went over the "
        "blow-up guard's cap when the pairs of these splits' images were stored, so near counts "
        "may be lower bounds; dsaudit dups joins whole groups"
    )
