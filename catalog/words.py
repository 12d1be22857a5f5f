"""Counts in words, for every report format (terminal, Markdown, HTML, gate messages)."""

from __future__ import annotations


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` with thousands separators and the words that agree with it.

    ``counted(1, "image")`` is "1 image", ``counted(2000, "image")`` "2,000 images";
    ``many`` names the plural when it is not ``one`` + "s" (a verb that agrees, too):
    ``counted(n, "image carries", "images carry")``.
    """
    return f"{n:,} {one if n == 1 else (many if many is not None else one + 's')}"
