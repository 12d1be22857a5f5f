"""The perceptual family: a reproducible 256-bit DCT hash ("phash256-v2"; "phash256-v1").

Algorithm, all in exact integer arithmetic so the bits are the same on every machine:

1. Gray: channels quantised to 0..255, luma ``(77 R + 150 G + 29 B) / 256`` (BT.601 in
   integers) or ``V`` for one channel.
2. Area (box) resample to 32x32 with exact rational weights (`catalog.recipes.resize`), in 1/16
   of a gray level rounded half up: integers 0..4080.
3. 2-D DCT-II, low-frequency 16x16 block only: ``C = D X D^T`` with ``D[k, j] =
   round(4096 cos(pi (2j + 1) k / 64))``, k < 16. Rows of even k > 0 are corrected so each AC
   row sums to exactly 0 (odd rows are antisymmetric, so already do): then a brightness shift
   leaves every AC coefficient unchanged, and a constant image has all AC coefficients 0. The
   matrix is pinned by a sha256 checked when it is built. Magnitudes stay below 2**47, so the
   float64 BLAS products are exact integers (`exact_matmul`).
4. Bits: the DC term is excluded (it is the mean brightness, which we want to be invariant to,
   and it would always exceed the median). The median of the 255 AC coefficients is the 128th
   smallest, an exact integer; bit = coefficient > median; the DC position holds bit 0 always.
   Bit ``i`` is coefficient ``(i // 16, i % 16)``; bits packed with ``np.packbits`` (32 bytes).

Distance = Hamming distance / 256 (the constant DC bit never differs, so the maximum is 255/256).
LSH: MinHash over the 256 bit tokens of the hash itself, J = (1 - f) / (1 + f).

Thresholds and LSH (measured, benchmarks/RESULTS_near.md): on 28x28 letters, noise sigma 0.02,
JPEG q75, brightness +-0.05 and contrast x1.1 copies measure at most 0.117 (99 % below 0.07);
random distinct pairs at least 0.37 (0.1 % quantile). Default threshold 0.12, radius 0.15.
phash256-v2 uses b x r = 24 x 10: the band join finds 0.994 (demo letters) and 0.996 (benchmark
letters) of the brute-force pairs at 0.12, with about 25 candidates per image at 33k images.
phash256-v1 (24 x 11, the same hash) found 0.988 and 0.992 with 11 candidates per image; 28 x 11
reached 0.990 only, and 24 x 9 costs 75 candidates per image for 0.997.

Limits (measured, documented, not promised):

* 2x down+up resampling: distance <= 0.04 on 64x64 photo-like (1/f spectrum) images, but a
  28x28 letter with 1-2 pixel strokes loses them: only 19 % of such copies are within 0.12.
* 1-pixel shift: 0.13-0.16 on 64x64 photo-like images, 0.27 median on 28x28 letters; the 16x16
  block reaches 7.5 cycles per image, where a pixel is a large phase step.
* Very smooth images (large Gaussian blobs, no texture): their high-frequency coefficients are
  near zero, so noise sigma 0.02 flips those bits (0.16-0.26 measured).
* Non-goals: horizontal flip (odd horizontal frequencies change sign), rotation, crops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from catalog.recipes import resize
from catalog.recipes.base import Recipe
from catalog.recipes.resize import exact_matmul

SIZE = 32
BLOCK = 16
DCT_SCALE = 4096
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

DCT_SHA256 = "9eccd635bf3ed2c8d8db57fb0d3422ad92f34aab331ab2ea4e391ea7ad559582"
"""sha256 of the int64 little-endian bytes of the (16, 32) fixed-point DCT matrix."""


def _build_dct(size: int, block: int, scale: int) -> np.ndarray:
    k = np.arange(block, dtype=np.float64)[:, None]
    j = np.arange(size, dtype=np.float64)[None, :]
    d = np.rint(scale * np.cos(np.pi * (2 * j + 1) * k / (2 * size))).astype(np.int64)
    for row in range(2, block, 2):
        # Even rows are symmetric (d[j] == d[size-1-j]), so the row sum is even; removing half
        # of it from one symmetric pair of entries keeps the symmetry and zeroes the sum.
        excess = int(d[row].sum())
        d[row, 0] -= excess // 2
        d[row, size - 1] -= excess // 2
    return d


@lru_cache(maxsize=1)
def dct_matrix() -> np.ndarray:
    """The pinned fixed-point DCT-II matrix.

    Returns:
        int64 (16, 32), read-only.

    Raises:
        RuntimeError: if this platform's cosines rounded differently (values would drift).
    """
    d = _build_dct(SIZE, BLOCK, DCT_SCALE)
    digest = hashlib.sha256(d.astype("<i8").tobytes()).hexdigest()
    if digest != DCT_SHA256:
        raise RuntimeError(
            f"fixed-point DCT matrix differs from the pinned one ({digest}); "
            "perceptual hashes would not match stored values"
        )
    d.setflags(write=False)
    return d


def resized_gray(images: np.ndarray) -> np.ndarray:
    """Steps 1-2: gray, area-resampled to 32x32, in 1/16 gray levels.

    Args:
        images: float32 (n, H, W, C) in [0, 1].

    Returns:
        int64 (n, 32, 32), values 0..4080.
    """
    gray, unit = resize.gray_levels(images)
    return resize.area_mean(gray, SIZE, SIZE, scale_num=16, scale_den=unit, bound=255.0 * unit)


def dct_block(gray: np.ndarray) -> np.ndarray:
    """Step 3: low-frequency 16x16 DCT-II block, exact.

    Args:
        gray: int64 (n, 32, 32), values 0..4080.

    Returns:
        int64 (n, 16, 16); ``[:, u, v]`` is vertical frequency u, horizontal frequency v.
    """
    d = dct_matrix()
    # Rows first (horizontal frequencies), then columns; stacked products, no transposes.
    horiz = exact_matmul(gray, d.T, a_bound=16 * 255)  # (n, 32 rows, 16 horizontal freqs)
    bound = 16 * 255 * float(np.abs(d).sum(axis=1).max())
    return exact_matmul(d, horiz, b_bound=bound).astype(np.int64)


def hash_bits(coefficients: np.ndarray) -> np.ndarray:
    """Step 4: bits from DCT coefficients.

    Args:
        coefficients: int64 (n, 16, 16).

    Returns:
        uint8 (n, 32), packed bits.
    """
    n = coefficients.shape[0]
    flat = coefficients.reshape(n, BLOCK * BLOCK)
    ac = flat[:, 1:]
    median = np.partition(ac, (ac.shape[1] - 1) // 2, axis=1)[:, (ac.shape[1] - 1) // 2]
    bits = flat > median[:, None]
    bits[:, 0] = False
    return np.packbits(bits, axis=1)


def hamming_fraction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of differing bits of packed codes, uint8 (m, B) each -> float64 (m,)."""
    differ = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count") and a.shape[1] % 8 == 0:
        # numpy >= 2: popcount of 64-bit words, 6x faster than the byte table.
        words = np.ascontiguousarray(differ).view(np.uint64)
        bits = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    else:
        bits = _POPCOUNT[differ].sum(axis=1, dtype=np.int64)
    return bits / (8.0 * a.shape[1])


@dataclass(frozen=True)
class PerceptualRecipe(Recipe):
    """256-bit DCT perceptual hash, Hamming fraction distance."""

    family = "perceptual"

    @property
    def signature_bytes(self) -> int:
        return BLOCK * BLOCK // 8

    def family_params(self) -> dict[str, Any]:
        return {
            "algorithm": "dct-ii-median-hash",
            "gray": "(77R+150G+29B)/256 of 8-bit channels (V for one channel)",
            "resize": f"exact area mean to {SIZE}x{SIZE}, in 1/16 levels rounded half up",
            "dct": f"fixed-point round({DCT_SCALE}*cos), even AC rows zero-sum, sha256 "
            f"{DCT_SHA256}",
            "block": BLOCK,
            "dc": "excluded from the median; its bit is always 0",
            "median": "128th smallest of 255 AC coefficients; bit = coefficient > median",
            "bit_order": "row-major (vertical, horizontal) frequency, np.packbits big-endian",
            "distance": "hamming / 256",
        }

    def signatures(self, images: np.ndarray) -> np.ndarray:
        images = resize.check_images(images)
        out = np.empty((images.shape[0], self.signature_bytes), dtype=np.uint8)
        # 2048 images keep the int64 intermediates below ~40 MB whatever the input size.
        step = max(1, 2048 * 1024 // max(1, images.shape[1] * images.shape[2]))
        for start in range(0, images.shape[0], step):
            part = images[start : start + step]
            out[start : start + part.shape[0]] = hash_bits(dct_block(resized_gray(part)))
        return out

    def codes(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return signatures, np.zeros(signatures.shape[0], dtype=np.uint64)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self.check_pairs(a, b)
        return hamming_fraction(a, b)

    def bit_fraction(self, distance: float | np.ndarray) -> float | np.ndarray:
        return distance
