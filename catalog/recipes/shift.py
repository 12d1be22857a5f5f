"""The shift-tolerant pixel family ("pixshift-v1"): blurred RMS, minimised over 1-cell shifts.

For aligned arrays where a copy may also be moved by a pixel or resampled down and up: the
1-pixel shifts and 2x down-up copies of 28x28 glyphs that pixel-v1 (RMS 0.12-0.21) and
phash256-v2 miss. Opt-in (``dsaudit ingest --recipe``): it costs nine band-key computations per
image (below), and on data where the same shape recurs at neighbouring positions (rendered
glyphs) it pairs those too, which is what it is for.

Signature: pixel-v1's, byte for byte (8-byte header, 32x32 uint8 gray grid; see
`catalog.recipes.pixel`), so the same (H, W, C) rule applies: images of different shapes are
never pairs.

Distance, in exact integer arithmetic on the ``gh x gw`` grid:

1. Blur each grid with the separable binomial kernel ``[1, 4, 6, 4, 1]`` (sum 16 per axis,
   zero outside the grid): integers up to ``255 * 256``. A 2x down-up resample removes detail
   finer than 2 pixels; the blur removes it from both sides, so such a copy measures
   0.056 median (0.13 unblurred).
2. For each shift ``(dy, dx)`` with ``|dy|, |dx| <= 1``: the RMS difference of the two blurred
   grids over the cells where they overlap when the first is moved by ``(dy, dx)``. The overlap
   form makes the distance symmetric (moving ``a`` by ``s`` equals moving ``b`` by ``-s``).
3. Distance = the smallest of the nine, divided by ``255 * 256`` (0-1 scale).

Measured (`benchmarks/near_recall.py`, 20k distinct letters of two kinds plus 1000 planted copies
per edit, `benchmarks/RESULTS.md` section 2): every planted noise sigma 0.02, brightness +-0.05,
contrast x1.1, JPEG q75, local stroke and zero-filled or circular 1-pixel shift copy is within
0.08 and found; 2x BILINEAR down-ups 0.993-1.000 (0.056 median; 0.13 unblurred). Default
threshold 0.08, stored radius 0.1. The price: letters rendered alike one pixel apart are pairs
too (93k-109k pairs among 20k letters), and the band join proposes hundreds to a thousand
candidates per image at 33k images; LSH recall against brute force 0.976-0.978.

LSH: pixel-v1's code (8x8 area means, 256 pinned balanced projections, thresholds +-9000), in 24
bands of 18 rather than 24 (2x down-ups found by the join: 0.93 with 24 x 24, 0.985 with 24 x 18, at
43 rather than 13 candidates per image on 3000 demo letters). A shifted copy's code differs from its
original's, so each new image is also looked up under its eight shifted variants: the **probe keys**
(`probe_keys`), the band keys of the grid moved by one cell in each direction with zero fill. They
are joined like band keys but never stored: a copy ``b = shift(a, s)`` collides with ``a`` through
its probe ``-s``, whichever of the two is new. Two probes meeting are no candidate (they relate
images two cells apart; on 5600 demo letters that rule removed 61 % of the candidates). Blurring is
left out of the code: the 8x8 area means already are a heavier low-pass than the blur.

Non-goals: shifts of two or more cells (that is a different picture position), flips, rotations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalog.recipes.base import Screen
from catalog.recipes.pixel import GRID, HEADER, PixelRecipe
from catalog.vectors import unique

BLUR = (1, 4, 6, 4, 1)
"""Separable binomial kernel per axis; the blurred value is ``sum(k_i k_j g) <= 255 * 256``."""
BLUR_SCALE = sum(BLUR) ** 2
MAX_SHIFT = 1
SHIFTS: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1) for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)
)
"""Every ``(dy, dx)`` compared, ``(0, 0)`` included, in a fixed order."""
PROBE_SHIFTS: tuple[tuple[int, int], ...] = tuple(s for s in SHIFTS if s != (0, 0))
_ROWS_PER_CHUNK = 4096


def _grids(signatures: np.ndarray) -> np.ndarray:
    """The uint8 (n, 32, 32) gray grids of pixel signatures (a view)."""
    return signatures[:, HEADER:].reshape(signatures.shape[0], GRID, GRID)


def _shapes(signatures: np.ndarray) -> np.ndarray:
    """``gh * 256 + gw`` of each signature, int64 (n,)."""
    return signatures[:, 5].astype(np.int64) * 256 + signatures[:, 6]


def blurred(grids: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """The ``[1, 4, 6, 4, 1]``-blurred ``gh x gw`` windows of grids, zero outside the window.

    Args:
        grids: uint8 (n, 32, 32); cells beyond (gh, gw) are ignored.

    Returns:
        int32 (n, gh, gw), values in [0, 255 * 256].
    """
    half = len(BLUR) // 2
    n = grids.shape[0]
    padded = np.zeros((n, gh + 2 * half, gw + 2 * half), np.int32)
    padded[:, half : half + gh, half : half + gw] = grids[:, :gh, :gw]
    rows = np.zeros((n, gh + 2 * half, gw), np.int32)
    for k, weight in enumerate(BLUR):
        rows += weight * padded[:, :, k : k + gw]
    out = np.zeros((n, gh, gw), np.int32)
    for k, weight in enumerate(BLUR):
        out += weight * rows[:, k : k + gh, :]
    return out


def overlap(shift: tuple[int, int], gh: int, gw: int) -> tuple[slice, slice, slice, slice, int]:
    """Where grid ``a`` moved by ``shift = (dy, dx)`` overlaps grid ``b``.

    Returns:
        (rows of a, columns of a, rows of b, columns of b, cells in the overlap): cell
        ``a[y - dy, x - dx]`` lies on ``b[y, x]``.
    """
    dy, dx = shift
    rows_b = slice(max(dy, 0), gh + min(dy, 0))
    cols_b = slice(max(dx, 0), gw + min(dx, 0))
    rows_a = slice(max(-dy, 0), gh + min(-dy, 0))
    cols_a = slice(max(-dx, 0), gw + min(-dx, 0))
    return rows_a, cols_a, rows_b, cols_b, max(gh - abs(dy), 0) * max(gw - abs(dx), 0)


def moved(grids: np.ndarray, shift: tuple[int, int], gh: int, gw: int) -> np.ndarray:
    """Grids with their ``gh x gw`` window moved by ``shift`` cells, zero-filled, same shape."""
    rows_a, cols_a, rows_b, cols_b, _cells = overlap(shift, gh, gw)
    out = np.zeros_like(grids)
    out[:, rows_b, cols_b] = grids[:, rows_a, cols_a]
    return out


@dataclass(frozen=True)
class ShiftRecipe(PixelRecipe):
    """pixel-v1's signature and code; blurred RMS minimised over 1-cell shifts; probe keys."""

    family = "pixel-shift"
    probability_is_bound = False

    def family_params(self) -> dict[str, Any]:
        params = super().family_params()
        params.update(
            {
                "algorithm": "blurred gray RMS, minimum over shifts",
                "blur": f"separable {list(BLUR)} per axis, zero outside the gh x gw grid",
                "shifts": f"|dy|, |dx| <= {MAX_SHIFT}, RMS over the overlap",
                "distance": "min over shifts of the blurred RMS / (255 * 256); 1.0 if "
                "headers differ",
                "probes": "band keys of the grid moved by each nonzero shift, zero-filled, "
                "joined but not stored",
            }
        )
        return params

    def screen(self, signatures: np.ndarray) -> Screen | None:
        """No lower bound: the minimum over shifts has no cheap one here."""
        return None

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The distance is defined once, in `verifier`; here it runs on the two batches."""
        a, b = self.check_pairs(a, b)
        rows = np.arange(a.shape[0])
        return self.verifier(np.concatenate([a, b]))(rows, rows + a.shape[0])

    def verifier(self, signatures: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Blurs every image once (uint16, 2 bytes per grid cell) and keeps, per shift, the sum
        of squares of each side's overlap; a pair then costs one dot product per shift:
        ``|a_s - b_s|^2 = |a_s|^2 + |b_s|^2 - 2 a_s . b_s``, exact integers in float64."""
        signatures = self.check_signatures(signatures)
        n = signatures.shape[0]
        shapes = _shapes(signatures)
        grids = np.zeros((n, GRID, GRID), np.uint16)  # blurred values <= 255 * 256
        norms = np.zeros((n, len(SHIFTS), 2))  # per shift: |a side|^2, |b side|^2
        for shape in unique(shapes):
            gh, gw = divmod(int(shape), 256)
            rows = np.flatnonzero(shapes == shape)
            for start in range(0, rows.size, _ROWS_PER_CHUNK):
                part = rows[start : start + _ROWS_PER_CHUNK]
                values = blurred(_grids(signatures[part]), gh, gw)
                grids[part, :gh, :gw] = values
                values = values.astype(np.float64)
                for k, shift in enumerate(SHIFTS):
                    rows_a, cols_a, rows_b, cols_b, _cells = overlap(shift, gh, gw)
                    side_a, side_b = values[:, rows_a, cols_a], values[:, rows_b, cols_b]
                    norms[part, k, 0] = np.einsum("ijk,ijk->i", side_a, side_a)
                    norms[part, k, 1] = np.einsum("ijk,ijk->i", side_b, side_b)
        headers = signatures[:, :HEADER]

        def verify(left: np.ndarray, right: np.ndarray) -> np.ndarray:
            out = np.ones(left.size, dtype=np.float64)
            same = (headers[left] == headers[right]).all(axis=1)
            for shape in unique(shapes[left[same]]):
                gh, gw = divmod(int(shape), 256)
                rows = np.flatnonzero(same & (shapes[left] == shape))
                for start in range(0, rows.size, _ROWS_PER_CHUNK):
                    part = rows[start : start + _ROWS_PER_CHUNK]
                    a, b = left[part], right[part]
                    va = grids[a, :gh, :gw].astype(np.float64)
                    vb = grids[b, :gh, :gw].astype(np.float64)
                    best = np.full(part.size, np.inf)
                    for k, shift in enumerate(SHIFTS):
                        rows_a, cols_a, rows_b, cols_b, cells = overlap(shift, gh, gw)
                        if cells == 0:
                            continue
                        cross = np.einsum(
                            "ijk,ijk->i", va[:, rows_a, cols_a], vb[:, rows_b, cols_b]
                        )
                        squares = norms[a, k, 0] + norms[b, k, 1] - 2 * cross
                        best = np.minimum(best, squares / cells)
                    out[part] = np.minimum(np.sqrt(best) / (255.0 * BLUR_SCALE), 1.0)
            return out

        return verify

    def probe_keys(self, signatures: np.ndarray) -> np.ndarray:
        """Band keys of each image's grid moved by every nonzero shift.

        Returns:
            int64 (n, 8, bands), in `PROBE_SHIFTS` order.
        """
        signatures = self.check_signatures(signatures)
        n = signatures.shape[0]
        out = np.empty((n, len(PROBE_SHIFTS), self.bands), np.int64)
        shapes = _shapes(signatures)
        for shape in unique(shapes):
            gh, gw = divmod(int(shape), 256)
            rows = np.flatnonzero(shapes == shape)
            grids = _grids(signatures[rows])
            for k, shift in enumerate(PROBE_SHIFTS):
                variant = signatures[rows].copy()
                _grids(variant)[:] = moved(grids, shift, gh, gw)
                out[rows, k] = self.band_keys(variant)
        return out


def within_radius(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Which pairs of gray uint8 images are within ``radius`` of each other under this distance.

    Brute force, for building test data without near pairs and for measuring the LSH stage
    against: images up to 32x32 equal their signature grids, so this is `ShiftRecipe.distances`
    of every pair (a test holds the two equal). Per shift, a bound rules most pairs out first:
    over a 24x24 window of the overlap, the sums of 2x2 blocks of the difference give
    ``sum (block sum)^2 / 4 <= sum of squares`` (Cauchy-Schwarz). It is computed in float32,
    loosened by a margin far above float32's rounding, so it only ever keeps too many; the pairs
    it keeps get the exact sum of squares over the whole overlap, float64 arithmetic on integers
    whose partial sums stay below 2**53. So the answer is exact on any machine and BLAS.

    Args:
        a, b: uint8 (n, h, w) and (m, h, w), 25 <= h, w <= 32; the same array twice costs
            about half (each shift's pairs are the mirrored shift's, transposed).
        radius: on the 0-1 scale.

    Returns:
        bool (n, m).
    """
    h, w = a.shape[1:]
    if b.shape[1:] != (h, w) or not (25 <= h <= GRID and 25 <= w <= GRID):
        raise ValueError(
            f"need two batches of one shape from 25x25 to 32x32, got {a.shape} and {b.shape}"
        )
    close = np.zeros((len(a), len(b)), dtype=bool)
    if not len(a) or not len(b):
        return close
    # One batch against itself: a pair within the radius at shift s is the mirrored pair at
    # -s, so half the shifts and a transpose give every pair (the sums of squares are equal).
    mirrored = a is b
    blurred_a = blurred(a, h, w)
    blurred_b = blurred_a if mirrored else blurred(b, h, w)
    unit = (radius * 255 * BLUR_SCALE) ** 2

    def blocks(images: np.ndarray, left_side: bool) -> dict[tuple[int, int], np.ndarray]:
        """Per window origin (0 or 1 on each axis): float32 2x2 block sums ``v``, extended so
        that one matrix product gives ``0.999 (|a|^2 + |b|^2) - 2 a.b``: ``[v, 0.999 |v|^2, 1]``
        on the left, ``[-2 v, 1, 0.999 |v|^2]`` on the right. float32 errors are below 1e-5 of
        the norms, so the 1e-3 margin only ever keeps too many pairs."""
        out = {}
        for top in (0, 1):
            for left in (0, 1):
                window = images[:, top : top + 24, left : left + 24]
                # Strided adds: a sum over reshaped axes cost several times more.
                rows = window[:, 0::2, :] + window[:, 1::2, :]
                sums = (rows[:, :, 0::2] + rows[:, :, 1::2]).reshape(len(images), -1)
                sums = sums.astype(np.float64)
                norms = 0.999 * (sums * sums).sum(axis=1, keepdims=True)
                ones = np.ones_like(norms)
                parts = [sums, norms, ones] if left_side else [-2 * sums, ones, norms]
                out[top, left] = np.hstack(parts).astype(np.float32)
        return out

    blocks_a, blocks_b = blocks(blurred_a, True), blocks(blurred_b, False)
    for shift in SHIFTS:
        if mirrored and shift < (0, 0):
            continue
        rows_a, cols_a, rows_b, cols_b, cells = overlap(shift, h, w)
        bound = blocks_a[rows_a.start, cols_a.start] @ blocks_b[rows_b.start, cols_b.start].T
        i, j = np.nonzero(bound <= 4 * unit * cells)
        for start in range(0, i.size, 65536):
            pi, pj = i[start : start + 65536], j[start : start + 65536]
            diff = blurred_a[pi, rows_a, cols_a] - blurred_b[pj, rows_b, cols_b]
            diff = diff.reshape(pi.size, -1).astype(np.float64)
            close[pi, pj] |= np.einsum("ij,ij->i", diff, diff) <= unit * cells
    if mirrored:
        close |= close.T
    return close
