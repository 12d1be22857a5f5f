"""The pixel family ("pixel-v1"): RMS difference of aligned arrays (notMNIST, CIFAR, ...).

Signature (1032 bytes):

* bytes 0-7, header: original height and width (uint16 little-endian each), channels, grid
  height ``gh``, grid width ``gw``, format version (uint8 each). Images of different (H, W, C)
  are never pairs: their distance is 1.0 (the maximum), and the header salts every band key, so
  they are not even candidates.
* bytes 8-1031: a 32x32 uint8 gray grid, row-major; cells beyond (gh, gw) are 0.

Channels: the distance is the RMS difference of **gray** = the channel mean ``(R + G + B) / 3``,
on the 0-1 scale. Gray RMS is at most the RMS over channels (the square of a mean is at most the
mean of the squares), so every pair within a threshold over channels is a pair here (BT.601 luma
would not give this bound: its green weight 0.59 makes a green-only change count more than over
channels); colour-only differences at equal gray are a documented non-goal. This keeps signatures at
1 KB instead of 3 KB, which matters for 200k+ gray images.

Grid: images up to 32x32 are stored at native size (``gh, gw = H, W``): each value is
``round(255 * gray)``, so the distance equals the true gray RMS difference within 1/255 (each
image is off by at most 0.5/255 per pixel; the triangle inequality bounds the RMS error). Each
larger axis is reduced to 32 by exact integer area averaging (`catalog.recipes.resize`) of the
8-bit quantised channels; then the distance is the RMS difference of the 32-wide area means,
which is at most the full-resolution RMS (Jensen), so pairs are never lost by the reduction.

LSH code: the grid is area-averaged again to 8x8 and projected on 256 fixed balanced +-1
vectors (32 cells +1, 32 cells -1, chosen by sorting splitmix64 keys, pinned by sha256); bit ``i``
= projection ``i`` > threshold ``t_i``, with fixed integer thresholds uniform in +-9000 (in 1/16
gray levels summed over the 64 cells: about 1.5 times the spread of the projections of letter
images).
For images of normal contrast this is SimHash of the centred coarse image (the projections sum
to zero, so a brightness shift changes nothing; close images have small angles). For faint
images, whose projections are all small, the bits tend to the fixed threshold pattern, so faint
images that are close in RMS (both nearly dark) also share codes; with thresholds at 0 their
sign bits were noise and the band join missed 2.4 % of all brute-force pairs (0.976 recall,
8.7 candidates per image), with them 1.9 % (0.981, 6.7 candidates per image).

We measured the alternative of MinHash over "thermometer" tokens (cell, level) with complements,
whose Jaccard ``(1 - MAD) / (1 + MAD)`` is bounded for every image: on sparse letter images
distinct pairs agree on the background, so it gives Jaccard 0.69 at the median distinct pair
against 0.92 for planted copies, i.e. thousands of candidates per image at 220k images. The
sign code separates them far better (bit fraction <= 0.03 for 99 % of planted copies, >= 0.2
for 99 % of distinct pairs). The price: the bit fraction of a pair at RMS distance d depends on
the images' contrast, so `candidate_probability` is a model (see `bit_fraction`) and recall is
measured (benchmarks/RESULTS_near.md) rather than guaranteed. The threshold range sets the
trade-off: faint images' projections are small, and wider thresholds keep more of their bits
fixed, so faint pairs collide more, at the price of more candidates. Measured on 33k letters and
planted copies with b x r = 24 x 24 at threshold 0.08 (recall of the band join against the
brute force, candidates per image; benchmark letters / demo letters of `catalog.synth`):
+-6000 gave 0.980 / 0.981 (7.9 / 8.7), +-8000 0.988 / 0.988 (15.3 / 10.9), +-9000 0.993 /
0.993 (53.8 / 19.0), +-12000 0.995 / - (112). +-9000 is the first to reach 0.99 on both.
`contrast` exposes what the code sees, for the benchmark's faint-image rows.

Thresholds: planted noise (sigma 0.02), brightness +-0.05, contrast x1.1 and JPEG q75 copies of
28x28 letters measure at most 0.051; random pairs of distinct letters have 0.1 % quantile 0.18
(all pairs of 20k letters: 23 within 0.08, letters rendered nearly alike), so the default
threshold is 0.08 and the stored radius 0.1.

Non-goals (measured, far beyond any useful threshold): 1-pixel shift (0.19 median), 2x
down/up resampling of small images with thin strokes (0.13 median), horizontal flip. The
perceptual family covers resampling of larger images, the spectral family (`SHIFT`) shifts and
down/up of letters, at a large cost in false pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from catalog.recipes import minhash, resize
from catalog.recipes.base import Recipe, Screen
from catalog.recipes.resize import exact_matmul
from catalog.vectors import unique

GRID = 32
HEADER = 8
LSH_GRID = 8
CODE_BITS = 256
PROJECTION_SALT = 0x70697865  # "pixe"
PROJECTION_SHA256 = "90b90b53bf193140d6f93f72d25a248da7cfa316a2788e28ecaf9d033337d6c1"
OFFSET_SALT = 0x6F666673  # "offs"
OFFSET_RANGE = 9000
"""Bit thresholds are integers in [-9000, 9000], in projection units (1/16 gray level)."""
OFFSET_SHA256 = "1f4921e99faac96fb847853c390659391e5df52fabc7225273e36327a0a51148"
"""sha256 of the int64 little-endian bytes of the 256 bit thresholds."""
"""sha256 of the int8 bytes of the (256, 64) projection matrix."""

MEAN_WEIGHTS = (1, 1, 1)
_ROWS_PER_CHUNK = 16384


def _build_projections() -> np.ndarray:
    cells = LSH_GRID * LSH_GRID
    index = np.arange(CODE_BITS * cells, dtype=np.uint64).reshape(CODE_BITS, cells)
    keys = minhash.splitmix64(index ^ np.uint64(PROJECTION_SALT))
    order = np.argsort(keys, axis=1, kind="stable")
    proj = np.full((CODE_BITS, cells), -1, dtype=np.int8)
    np.put_along_axis(proj, order[:, : cells // 2], np.int8(1), axis=1)
    return proj


@lru_cache(maxsize=1)
def projections() -> np.ndarray:
    """The pinned balanced +-1 projection matrix.

    Returns:
        int8 (256, 64), read-only; every row sums to 0.
    """
    proj = _build_projections()
    digest = hashlib.sha256(proj.tobytes()).hexdigest()
    if digest != PROJECTION_SHA256:
        raise RuntimeError(f"pixel projection matrix differs from the pinned one ({digest})")
    proj.setflags(write=False)
    return proj


@lru_cache(maxsize=1)
def offsets() -> np.ndarray:
    """The pinned per-bit thresholds: bit ``i`` is ``projection_i > offsets()[i]``.

    Returns:
        int64 (256,), read-only, uniform integers in [-OFFSET_RANGE, OFFSET_RANGE].
    """
    keys = minhash.splitmix64(np.arange(CODE_BITS, dtype=np.uint64) ^ np.uint64(OFFSET_SALT))
    off = (keys % np.uint64(2 * OFFSET_RANGE + 1)).astype(np.int64) - OFFSET_RANGE
    digest = hashlib.sha256(off.astype("<i8").tobytes()).hexdigest()
    if digest != OFFSET_SHA256:
        raise RuntimeError(f"pixel bit thresholds differ from the pinned ones ({digest})")
    off.setflags(write=False)
    return off


def gray_grid(images: np.ndarray) -> np.ndarray:
    """The uint8 gray grid of a batch of same-shape images.

    Args:
        images: float32 (n, H, W, C) in [0, 1], already validated.

    Returns:
        uint8 (n, min(H, 32), min(W, 32)).
    """
    n, h, w, c = images.shape
    if h <= GRID and w <= GRID:
        x = images.astype(np.float64)
        # Elementwise IEEE operations in a fixed order: the same on every machine.
        gray = x[..., 0] if c == 1 else (x[..., 0] + x[..., 1] + x[..., 2]) / 3.0
        return resize.quantise(gray, 255).astype(np.uint8)
    gray, unit = resize.gray_levels(images, MEAN_WEIGHTS)
    return resize.area_mean(gray, min(h, GRID), min(w, GRID), 1, unit, bound=255.0 * unit).astype(
        np.uint8
    )


def _header(n: int, h: int, w: int, c: int) -> np.ndarray:
    head = np.zeros((n, HEADER), dtype=np.uint8)
    head[:, 0:2] = np.frombuffer(np.uint16(h).astype("<u2").tobytes(), np.uint8)
    head[:, 2:4] = np.frombuffer(np.uint16(w).astype("<u2").tobytes(), np.uint8)
    head[:, 4] = c
    head[:, 5] = min(h, GRID)
    head[:, 6] = min(w, GRID)
    head[:, 7] = PixelRecipe.format_version
    return head


def _block_sums(grids: np.ndarray) -> np.ndarray:
    """Sums of the 2x2 blocks of (n, h, w) grids (h, w even), as two strided adds: a sum over
    reshaped axes cost 3x as much."""
    rows = grids[:, 0::2, :] + grids[:, 1::2, :]
    return rows[:, :, 0::2] + rows[:, :, 1::2]


def _coarse(signatures: np.ndarray) -> np.ndarray:
    """The exact 8x8 area mean of each signature's gray grid, in 1/16 gray levels.

    Args:
        signatures: uint8 (n, S) pixel signatures.

    Returns:
        int64 (n, 64), values in [0, 16 * 255].
    """
    n = signatures.shape[0]
    out = np.zeros((n, LSH_GRID * LSH_GRID), dtype=np.int64)
    grids = signatures[:, HEADER:].reshape(n, GRID, GRID)
    shapes = signatures[:, 5].astype(np.int64) * 256 + signatures[:, 6]
    for shape in unique(shapes):
        gh, gw = divmod(int(shape), 256)
        if gh == 0 or gw == 0:
            raise ValueError("signature header has an empty grid; not a pixel-v1 signature")
        rows = np.flatnonzero(shapes == shape)
        grid = grids[rows, :gh, :gw]
        coarse = resize.area_mean(grid, LSH_GRID, LSH_GRID, 16, 1, bound=255.0)
        out[rows] = coarse.reshape(rows.size, -1)
    return out


@dataclass(frozen=True)
class PixelRecipe(Recipe):
    """Gray RMS distance on aligned same-shape images.

    Attributes:
        reference_contrast: RMS of the centred 8x8 coarse image assumed by the
            `candidate_probability` model (measured median on letter images).
    """

    reference_contrast: float = 0.2

    family = "pixel"
    probability_is_bound = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.reference_contrast <= 1.0:
            raise ValueError(f"reference_contrast must be in (0, 1], got {self.reference_contrast}")

    @property
    def signature_bytes(self) -> int:
        return HEADER + GRID * GRID

    def family_params(self) -> dict[str, Any]:
        return {
            "algorithm": "gray-rms",
            "gray": "(R+G+B)/3; native <= 32: round(255*gray) from float64; larger: 8-bit "
            "channels, exact area mean of R+G+B over 3, rounded half up",
            "grid": GRID,
            "header": "uint16le H, uint16le W, u8 C, u8 gh, u8 gw, u8 version",
            "distance": "gray RMS / 255 over gh*gw cells; 1.0 if headers differ",
            "lsh_code": f"exact area mean to {LSH_GRID}x{LSH_GRID} in 1/16 levels, sign of 256 "
            f"balanced +-1 projections (splitmix64 salt {PROJECTION_SALT}, sha256 "
            f"{PROJECTION_SHA256}), bit i = projection_i > t_i, t_i uniform integers in "
            f"+-{OFFSET_RANGE} (splitmix64 salt {OFFSET_SALT}, sha256 {OFFSET_SHA256})",
            "key_salt": "8-byte header as uint64 little-endian",
            "reference_contrast": self.reference_contrast,
        }

    def signatures(self, images: np.ndarray) -> np.ndarray:
        images = resize.check_images(images)
        n, h, w, c = images.shape
        out = np.zeros((n, self.signature_bytes), dtype=np.uint8)
        out[:, :HEADER] = _header(n, h, w, c)
        gh, gw = min(h, GRID), min(w, GRID)
        cells = out[:, HEADER:].reshape(n, GRID, GRID)
        step = max(1, 2048 * 1024 // (h * w))
        for start in range(0, n, step):
            part = images[start : start + step]
            cells[start : start + part.shape[0], :gh, :gw] = gray_grid(part)
        return out

    def codes(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = signatures.shape[0]
        salt = np.ascontiguousarray(signatures[:, :HEADER]).view("<u8")[:, 0].astype(np.uint64)
        codes = np.zeros((n, CODE_BITS // 8), dtype=np.uint8)
        proj_t = projections().T.astype(np.int64)
        for start in range(0, n, _ROWS_PER_CHUNK):
            coarse = _coarse(signatures[start : start + _ROWS_PER_CHUNK])
            proj = exact_matmul(coarse, proj_t, 16 * 255)
            codes[start : start + coarse.shape[0]] = np.packbits(proj > offsets()[None, :], axis=1)
        return codes, salt

    def contrast(self, signatures: np.ndarray) -> np.ndarray:
        """Contrast the LSH code sees: RMS about the mean of the 8x8 area-mean grid, 0-1 scale.

        Faint images (contrast below about 0.1, half the median of letter images) have
        small projections, so their code bits mostly follow the fixed thresholds.

        Args:
            signatures: uint8 (n, S).

        Returns:
            float64 (n,).
        """
        coarse = _coarse(self.check_signatures(signatures))
        return coarse.std(axis=1) / (16 * 255)

    def screen(self, signatures: np.ndarray) -> Screen | None:
        """Sums of 4x4 and then 2x2 blocks of the zero-padded 32x32 grid bound the distance.

        For a block B of |B| cells and the pair's differences d (zero in the padding),
        ``(sum_B d)^2 / |B| <= sum_B d^2`` (Cauchy-Schwarz), so summing over the blocks,
        ``RMS >= ||block sums of d|| / sqrt(|B| * gh * gw)`` in gray levels, exactly. On letter
        candidates the 4x4 level rules out two thirds, the 2x2 level all but a few per cent.
        """
        signatures = self.check_signatures(signatures)
        n = signatures.shape[0]
        grids = signatures[:, HEADER:].reshape(n, GRID, GRID)
        twos = np.empty((n, GRID // 2, GRID // 2), np.int16)  # <= 4 * 255
        fours = np.empty((n, GRID // 4, GRID // 4), np.int16)  # <= 16 * 255
        # In slices of rows: an int16 copy of every grid at once was 2 KB per image (0.45 GB
        # at 220k images) on top of the signatures.
        for start in range(0, n, _ROWS_PER_CHUNK):
            rows = slice(start, start + _ROWS_PER_CHUNK)
            twos[rows] = _block_sums(grids[rows].astype(np.int16))
            fours[rows] = _block_sums(twos[rows])
        cells = np.maximum(signatures[:, 5].astype(np.float64) * signatures[:, 6], 1.0)
        return Screen(
            levels=((fours.reshape(n, -1), 1.0 / 4), (twos.reshape(n, -1), 1.0 / 2)),
            scale=1.0 / (255.0 * np.sqrt(cells)),
        )

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self.check_pairs(a, b)
        out = np.empty(a.shape[0], dtype=np.float64)
        for start in range(0, a.shape[0], _ROWS_PER_CHUNK):
            pa = a[start : start + _ROWS_PER_CHUNK]
            pb = b[start : start + _ROWS_PER_CHUNK]
            same = (pa[:, :HEADER] == pb[:, :HEADER]).all(axis=1)
            cells = np.maximum(pa[:, 5].astype(np.int64) * pa[:, 6], 1)
            # int16 differences, int32 sums (<= 1024 * 255**2): exact, and 3x faster than
            # widening both sides to int32 before subtracting.
            diff = np.subtract(pa[:, HEADER:], pb[:, HEADER:], dtype=np.int16)
            sq = np.einsum("ij,ij->i", diff, diff, dtype=np.int32)
            rms = np.sqrt(sq / cells) / 255.0
            out[start : start + pa.shape[0]] = np.where(same, np.minimum(rms, 1.0), 1.0)
        return out

    def bit_fraction(self, distance: float | np.ndarray) -> float | np.ndarray:
        """Modelled fraction of differing code bits for a pair at RMS distance ``d``.

        The smaller of two estimates: a hyperplane through the centre separates two images of
        centred RMS ``s`` (``reference_contrast``) at angle ``2 asin(d / 2s)`` with probability
        angle / pi; and a bit differs only if its threshold lies between the pair's two
        projections, whose gap averages ``sqrt(2 / pi) * 8 d`` (64 cells, +-1 weights) against a
        threshold range ``2 * OFFSET_RANGE / (16 * 255)`` wide.

        Both assume the worst direction: the whole difference in the coarse structure the code
        sees. Typical edits (noise, JPEG, brightness, contrast) barely move the 8x8 code and
        collide far more often: at d = 0.05 this model gives 0.41, the benchmark detects every
        brightness +0.05 copy. Use it as a lower bound, not an estimate.
        """
        d = np.asarray(distance, dtype=np.float64)
        ratio = np.clip(d / (2.0 * self.reference_contrast), 0.0, 1.0)
        angle = 2.0 * np.arcsin(ratio) / np.pi
        gap = np.sqrt(2.0 / np.pi) * 8.0 * d / (2.0 * OFFSET_RANGE / (16 * 255))
        f = np.minimum(angle, np.clip(gap, 0.0, 1.0))
        return float(f) if f.ndim == 0 else f
