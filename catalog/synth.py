"""Synthetic notMNIST-like letters and the image transforms used to make near copies.

This module owns offline test data: :func:`render_letters` draws white letters 'A'..'J' on black
28x28 canvases with Pillow's bundled font (no network, no downloaded dataset), and the transform
helpers (:func:`gaussian_noise`, :func:`brightness`, :func:`contrast`, :func:`shift`,
:func:`jpeg`, :func:`down_up`, :func:`hflip`) turn a batch into near copies for tests and
benchmarks. Everything takes ``uint8`` arrays of shape ``(n, 28, 28)`` (any ``(n, h, w)`` works
for the transforms) and returns new arrays; nothing draws from numpy's global RNG.

Determinism: for a given seed, numpy and Pillow version the outputs are byte-identical across runs
and processes. Rendering avoids transcendental functions (glyphs are slanted by a shear with
dyadic-rational factors rather than rotated by an angle), so no platform ``libm`` rounding enters
the pixels. Glyph rasters come from the FreeType that Pillow bundles, so golden hashes of rendered
images should be pinned together with the Pillow version.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "LETTERS",
    "SIZE",
    "brightness",
    "contrast",
    "down_up",
    "gaussian_noise",
    "hflip",
    "jpeg",
    "render_letters",
    "shift",
]

LETTERS = "ABCDEFGHIJ"
"""The ten notMNIST classes, in label order."""

SIZE = 28
"""Height and width of a rendered image, as in notMNIST."""

# Font sizes (pixels) and outline widths to draw with. Size 30 with a width-2 outline is about
# 25 px tall, which keeps every glyph inside the canvas vertically; wide slanted glyphs that
# exceed 28 px are cropped around their centre, as notMNIST's glyphs often touch the border.
_FONT_SIZES = np.arange(14, 31)
_STROKES = np.arange(0, 3)
# Slant = k / 32 pixels of horizontal shift per row for k in [-8, 8]: dyadic rationals are exact
# in binary floating point, so the affine sampling grid is identical on every machine.
_SHEAR_STEPS = np.arange(-8, 9)
_SHEAR_DENOMINATOR = 32
# Redrawing the parameters of colliding images converges in one or two rounds for n in the tens
# of thousands; the cap only guards against asking for more images than the parameter space has.
_MAX_REDRAW_ROUNDS = 50


def render_letters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` distinct notMNIST-like letter images.

    Each image is one letter 'A'..'J', drawn white (255, anti-aliased) on black with
    ``ImageFont.load_default(size=s)`` and random font size (14..30 px), outline width (0..2),
    slant (shear -1/4..1/4) and position. Glyph rasters are rendered once per
    (letter, size, outline) and cached; slanting and placement are cheap per image.

    Distinctness: after drawing all parameters, images whose bytes equal an earlier image's are
    found by their raw bytes and get fresh parameters from ``rng``; this repeats
    until all ``n`` images are pairwise different (a ``RuntimeError`` after 50 rounds means ``n``
    exceeds the parameter space, which holds several hundred thousand distinct images). Because
    redraws consume ``rng`` deterministically, the result depends only on ``n`` and the
    generator's state.

    Args:
        n: number of images, ``>= 0``.
        rng: the generator to draw from (e.g. ``np.random.default_rng(seed)``); it is advanced.

    Returns:
        ``(images, labels)``: ``images`` uint8 of shape ``(n, 28, 28)``, pairwise distinct;
        ``labels`` ``'<U1'`` of shape ``(n,)``, the drawn letter of each image.

    Raises:
        ValueError: if ``n`` is negative.
        RuntimeError: if ``n`` distinct images could not be found.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    letter_idx = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(_MAX_REDRAW_ROUNDS):
        if todo.size == 0:
            break
        letter_idx[todo] = rng.integers(0, len(LETTERS), todo.size)
        sizes = rng.choice(_FONT_SIZES, todo.size)
        strokes = rng.choice(_STROKES, todo.size)
        shears = rng.choice(_SHEAR_STEPS, todo.size)
        # Positions are drawn as fractions of the free room, because the room depends on the
        # glyph's size which is known only after rendering.
        where = rng.random((todo.size, 2))
        for j, i in enumerate(todo):
            glyph = _slanted_glyph(
                int(letter_idx[i]), int(sizes[j]), int(strokes[j]), int(shears[j])
            )
            images[i] = _place(glyph, where[j, 0], where[j, 1])
        todo = _later_duplicates(images)
    if todo.size:
        raise RuntimeError(
            f"could not render {n} distinct images in {_MAX_REDRAW_ROUNDS} rounds; "
            "ask for fewer images"
        )
    labels = np.array(list(LETTERS), dtype="<U1")[letter_idx]
    return images, labels


def _later_duplicates(images: np.ndarray) -> np.ndarray:
    """Indices of images whose bytes equal those of an earlier image, ascending. Shape (k,)."""
    # A dict keyed by the raw bytes is an exact comparison and, for tens of thousands of small
    # images, an order of magnitude faster than np.unique(axis=0)'s structured sort.
    seen: set[bytes] = set()
    later = []
    for i, image in enumerate(np.ascontiguousarray(images)):
        key = image.tobytes()
        if key in seen:
            later.append(i)
        else:
            seen.add(key)
    return np.array(later, dtype=np.int64)


@lru_cache(maxsize=4096)
def _glyph(letter: int, size: int, stroke: int) -> np.ndarray:
    """Tight uint8 raster of one letter, white on black. Shape (h, w); read-only (cached)."""
    font = ImageFont.load_default(size=size)
    char = LETTERS[letter]
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    canvas = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
    ImageDraw.Draw(canvas).text(
        (1 - left, 1 - top), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255
    )
    out = _crop_to_ink(np.asarray(canvas))
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16384)
def _slanted_glyph(letter: int, size: int, stroke: int, shear_step: int) -> np.ndarray:
    """The cached glyph slanted by ``shear_step / 32`` px per row. Shape (h, w'); read-only."""
    base = _glyph(letter, size, stroke)
    if shear_step == 0:
        return base
    h, w = base.shape
    s = shear_step / _SHEAR_DENOMINATOR
    pad = int(np.ceil(abs(s) * h)) + 1
    canvas = np.zeros((h, w + 2 * pad), dtype=np.uint8)
    canvas[:, pad : pad + w] = base
    # Output (x, y) samples input (x + s*(y - h/2), y): the middle row stays put, the top leans
    # right for positive s. s and h/2 are dyadic, so the coefficients are exact.
    src = Image.fromarray(canvas)
    data = (1.0, s, -s * h / 2, 0.0, 1.0, 0.0)
    slanted = src.transform(src.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    out = _crop_to_ink(np.asarray(slanted))
    out.setflags(write=False)
    return out


def _crop_to_ink(raster: np.ndarray) -> np.ndarray:
    """Crop a 2-D uint8 raster to the bounding box of its non-zero pixels (a copy)."""
    rows = np.flatnonzero(raster.any(axis=1))
    cols = np.flatnonzero(raster.any(axis=0))
    if rows.size == 0:
        return raster[:1, :1].copy()
    return raster[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()


def _place(glyph: np.ndarray, fy: float, fx: float) -> np.ndarray:
    """Put ``glyph`` on a black 28x28 canvas at fractions ``(fy, fx)`` of the free room."""
    h, w = glyph.shape
    # Glyphs larger than the canvas lose equal margins on both sides.
    if h > SIZE:
        glyph = glyph[(h - SIZE) // 2 : (h - SIZE) // 2 + SIZE]
        h = SIZE
    if w > SIZE:
        glyph = glyph[:, (w - SIZE) // 2 : (w - SIZE) // 2 + SIZE]
        w = SIZE
    y = int(fy * (SIZE - h + 1))
    x = int(fx * (SIZE - w + 1))
    out = np.zeros((SIZE, SIZE), dtype=np.uint8)
    out[y : y + h, x : x + w] = glyph
    return out


# --- transforms ---------------------------------------------------------------------------------


def _check_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"expected uint8 images of shape (n, h, w), got {images.dtype} {images.shape}"
        )
    return images


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values on the 0-1 scale to uint8 (round half to even, clipped to 0..255)."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add independent Gaussian noise to every pixel.

    Args:
        images: uint8, shape (n, h, w).
        sigma: standard deviation on the 0-1 scale (0.02 is about 5 grey levels), ``>= 0``.
        rng: generator for the noise; it is advanced.

    Returns:
        uint8, shape (n, h, w): ``clip(round(255 * (x / 255 + N(0, sigma))))``.
    """
    images = _check_batch(images)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noise = rng.normal(0.0, sigma, size=images.shape)
    return _to_uint8(images / 255.0 + noise)


def brightness(images: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` (0-1 scale, may be negative) to every pixel, clipping to the valid range.

    Args:
        images: uint8, shape (n, h, w).
        delta: offset on the 0-1 scale; +0.05 is about +13 grey levels.

    Returns:
        uint8, shape (n, h, w).
    """
    images = _check_batch(images)
    return _to_uint8(images / 255.0 + delta)


def contrast(
    images: np.ndarray, factor: float, around: Literal["mean", "mid"] = "mean"
) -> np.ndarray:
    """Scale each pixel's distance from a centre by ``factor``, clipping to the valid range.

    Args:
        images: uint8, shape (n, h, w).
        factor: 1 leaves images unchanged, < 1 flattens, > 1 sharpens; ``>= 0``.
        around: ``"mean"`` scales around each image's own mean intensity (as Pillow's
            ``ImageEnhance.Contrast`` does, so a black background brightens when flattened);
            ``"mid"`` scales around 0.5 on the 0-1 scale for every image.

    Returns:
        uint8, shape (n, h, w).
    """
    images = _check_batch(images)
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    x = images / 255.0
    if around == "mean":
        centre = x.mean(axis=(1, 2), keepdims=True)
    elif around == "mid":
        centre = 0.5
    else:
        raise ValueError(f"around must be 'mean' or 'mid', got {around!r}")
    return _to_uint8((x - centre) * factor + centre)


def shift(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate images by whole pixels, filling uncovered pixels with 0 (black).

    Args:
        images: uint8, shape (n, h, w).
        dx: pixels to the right (negative: left).
        dy: pixels down (negative: up).

    Returns:
        uint8, shape (n, h, w); content moved past the border is lost.
    """
    images = _check_batch(images)
    _, h, w = images.shape
    out = np.zeros_like(images)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip each image through Pillow's JPEG encoder and decoder, as greyscale.

    Args:
        images: uint8, shape (n, h, w).
        quality: JPEG quality 1..95 (Pillow's scale; 75 is its default).

    Returns:
        uint8, shape (n, h, w).
    """
    images = _check_batch(images)
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be in 1..95, got {quality}")
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out[i] = np.asarray(decoded.convert("L"))
    return out


def down_up(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """Downscale by ``factor`` and scale back up, both with Pillow's BILINEAR filter.

    Args:
        images: uint8, shape (n, h, w).
        factor: integer ``>= 2``; the small size is ``(max(1, w // factor), max(1, h // factor))``.

    Returns:
        uint8, shape (n, h, w): a blurred copy that lost detail finer than ``factor`` pixels.
    """
    images = _check_batch(images)
    if factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor}")
    _, h, w = images.shape
    small = (max(1, w // factor), max(1, h // factor))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        reduced = Image.fromarray(image).resize(small, Image.Resampling.BILINEAR)
        out[i] = np.asarray(reduced.resize((w, h), Image.Resampling.BILINEAR))
    return out


def hflip(images: np.ndarray) -> np.ndarray:
    """Mirror images left to right. uint8 (n, h, w) in, a new uint8 (n, h, w) array out."""
    images = _check_batch(images)
    return np.ascontiguousarray(images[:, :, ::-1])
