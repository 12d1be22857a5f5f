"""Pictures for people: read one image back from its source file, downsample it for a terminal.

The catalog keeps digests and signatures, not pixels; provenance (file, array, row) says where
each item came from, so `show` reads that one row again. An ``.npy`` row is read through a
memory map; an ``.npz`` member is streamed up to the row; an image folder's file is decoded
again under the canonical rule. Sources that are gone, changed (size, an image file's sha256,
or a row whose pixels no longer hash to the image's digest), or were arrays in memory give no
preview (and say why).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.loaders.arrays import NpzMember
from catalog.pixels import canonical, digests, needs_observed_range, to_unit, value_range


@dataclass(frozen=True)
class Preview:
    """An image as rows of (r, g, b) 0-255 triples, already sized for display."""

    rows: tuple[tuple[tuple[int, int, int], ...], ...]
    source: str


def read_row(
    path: str, fmt: str, key: str, row: int, size: int, digest: bytes | None = None
) -> np.ndarray | None:
    """The pixels of one item, read again from its source file; None if that cannot be done.

    Args:
        path, fmt, key, row: the item's provenance (source path and format, array key, row).
        size: the size the file had at ingest; a different size means it changed.
        digest: the image's digest (`catalog.pixels.digests`): pixels that hash otherwise are
            not this image any more (the file changed in place), and are not returned.
    """
    expected = {row: digest} if digest is not None else None
    return read_rows(path, fmt, key, [row], size, expected).get(row)


def read_rows(
    path: str,
    fmt: str,
    key: str,
    rows: Sequence[int],
    size: int,
    expected: Mapping[int, bytes] | None = None,
) -> dict[int, np.ndarray]:
    """Several rows of one array of one source file in one pass (an ``.npz`` member is
    streamed once, up to the last row wanted). Rows that cannot be read are missing.

    Args:
        rows: row numbers in the array, any order.
        size: the size the file had at ingest; a different size means it changed.
        expected: the digest each row's image had at ingest, where known: a row whose pixels
            hash otherwise is missing too (a file rewritten in place at the same size would
            otherwise show another picture beside the catalogued digest).
    """
    file = Path(path)
    wanted = sorted(set(rows))
    if not wanted or fmt not in ("npy", "npz") or not file.is_file():
        return {}
    if file.stat().st_size != size:
        return {}
    found: dict[int, np.ndarray] = {}
    try:
        if fmt == "npy":
            array = np.load(file, mmap_mode="r")
            found = {r: np.array(array[r]) for r in wanted if r < array.shape[0]}
        else:
            member = NpzMember(file, key)
            seen = 0
            for chunk in member.chunks(4096):
                for r in wanted:
                    if seen <= r < seen + len(chunk):
                        found[r] = np.array(chunk[r - seen])
                seen += len(chunk)
                if seen > wanted[-1]:
                    break
    except Exception:  # a preview is a courtesy: a file that fails to read shows none
        pass
    return {r: pixels for r, pixels in found.items() if _unchanged(pixels, (expected or {}).get(r))}


def _unchanged(pixels: np.ndarray, digest: bytes | None) -> bool:
    """Whether one image's pixels still hash to its digest (True when none is known)."""
    return digest is None or digests(canonical(pixels[None]))[0] == digest


def read_image_file(root: str, key: str, sha256: str | None) -> np.ndarray | None:
    """An image folder item's pixels, decoded again from ``root/key``; None if the file is
    gone, changed since ingest (another sha256) or cannot be decoded."""
    from catalog.loaders.folders import read_picture  # Pillow only loads for pictures

    return read_picture(str(Path(root) / key), sha256)


def make_preview(pixels: np.ndarray, source: str, max_width: int = 64) -> Preview:
    """Downsample (block mean) to at most ``max_width`` pixels on either side and map to 0-255
    RGB. The blocks are square, so the shape is kept; the last row and column of blocks may
    be partial, so a side shorter than a block still gives one row (or column).

    Args:
        pixels: one image, (H, W) or (H, W, C), any supported dtype.
    """
    images = pixels[None]
    scale = value_range(images.dtype)
    if needs_observed_range(images.dtype):
        finite = images[np.isfinite(images)] if images.dtype.kind == "f" else images
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scale = value_range(images.dtype, (low, high))
    unit = to_unit(images, scale)[0]
    step = max(1, -(-max(unit.shape[:2]) // max_width))
    small = unit
    if step > 1:
        starts = np.arange(0, unit.shape[0], step), np.arange(0, unit.shape[1], step)
        sums = np.add.reduceat(np.add.reduceat(unit, starts[0], axis=0), starts[1], axis=1)
        counts = np.outer(
            np.diff(np.r_[starts[0], unit.shape[0]]), np.diff(np.r_[starts[1], unit.shape[1]])
        )
        small = sums / counts[:, :, None]
    if small.shape[2] <= 2:  # gray, or gray and alpha: the gray channel (alpha is not drawn)
        small = np.repeat(small[:, :, :1], 3, axis=2)
    rgb = np.clip(np.rint(small[:, :, :3] * 255), 0, 255).astype(np.uint8)
    rows = tuple(tuple((int(r), int(g), int(b)) for r, g, b in line) for line in rgb.tolist())
    return Preview(rows=rows, source=source)


def to_png(preview: Preview) -> bytes:
    """The preview as PNG bytes: 8-bit gray when every pixel is gray, else RGB."""
    from PIL import Image  # only reports with pictures need Pillow loaded

    rgb = np.array(preview.rows, dtype=np.uint8).reshape(len(preview.rows), -1, 3)
    gray = bool((rgb == rgb[:, :, :1]).all())
    picture = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0] if gray else rgb))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()
