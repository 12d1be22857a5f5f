"""The spectral family: a reproducible, translation-tolerant 256-bit Fourier-magnitude hash.

Algorithm ("fmag256-v1"), all in exact integer arithmetic so the bits are the same everywhere:

1. Gray (as the perceptual family: 8-bit channels, BT.601 luma in integers) area-resampled to
   16x16 in 1/16 gray levels: integers 0..4080. 16 rather than 32 halves the cost (throughput
   is a requirement) and measured as well: the frequencies used are far below its Nyquist.
2. Centre on the median: subtract the 128th smallest of the 256 values (an exact integer). A
   brightness change moves the median with every pixel, so it cancels; on glyphs drawn on a black
   background the median is the background, which a zero-filled shift does not change.
3. Fourier transform (DTFT) of the centred 16x16 image at 256 low frequencies: the half-plane
   lattice points ``(a, b) / 4`` cycles per image (``b > 0``, or ``b == 0 < a``) with the
   smallest ``a^2 + b^2`` (ties in (b, a) order), i.e. a half disc of radius about 3.2 cycles.
   ``|F(-f)| = |F(f)|`` for real images, so the half plane holds every distinct magnitude. The
   fixed-point matrices are ``round(4096 cos(2 pi a j / 64))`` and ``round(4096 sin(...))``
   (angles on a 1/64 turn grid, index reduced modulo 64 first), pinned by sha256. Re and Im are
   two `exact_matmul` stages (partial sums below 2**46), then rounded to units of 2**16 so
   ``Re^2 + Im^2`` is exact in int64.
4. Bits: power ``Re^2 + Im^2`` > the 128th smallest of the 256 powers (128 ones without ties).
   Bit ``i`` is the ``i``-th frequency of that order, packed with ``np.packbits`` (32 bytes).

Distance = Hamming / 256; LSH: MinHash over the 256 bit tokens, as in the perceptual family.

Why this survives the planted edits: the DTFT magnitude of an image is unchanged by translating
its content (``F`` only gains a phase), and a zero-filled 1-pixel shift of a glyph on a black
background *is* a translation unless ink crosses the border. The frequencies lie on a 1/4-cycle
lattice, not only on whole cycles, so what is sampled is the DTFT (invariant to linear shifts),
not the circular DFT. At 16x16 a 1-pixel shift of a 28x28 image is a 4/7-pixel shift, which the
area resampling turns into a translation plus a small aliasing error at these low frequencies.
Contrast scaling multiplies every magnitude by the same factor (bits unchanged), brightness
cancels in step 2, and a 2x down-up resample attenuates frequencies smoothly with their radius,
mildly below 3.2 cycles per image (0.11 cycles per pixel at 28x28), so few powers cross the
median.

Thresholds and LSH (measured, benchmarks/near_recall.py and benchmarks/RESULTS_near.md):

* Planted copies of 28x28 letters (20k demo letters from `catalog.synth` and 20k benchmark
  letters with lines, 1000 copies per kind): zero-filled 1-pixel shifts within 0.12: 0.984-1.000
  (the misses are glyphs touching the border, which lose ink), circular roll 0.996-1.000, 2x
  down-up 0.988-0.994, noise 0.02, brightness +-0.05, contrast x1.1 and JPEG q75 1.000 (at most
  0.07 on 3000 letters). Default threshold 0.12, radius 0.15.
* b x r = 48 x 10: ``P(candidate) = 0.989`` at 0.12. 24 bands cannot reach 0.99 at 0.12
  unless r <= 6 (24 x 6 proposes about 40 % of all distinct pairs of demo letters); 48
  band-key rows per image is twice the budget of the other recipes.
* The price, and why this recipe is not a default: a low-frequency magnitude code carries
  little information about a 28x28 glyph (size, stroke width, coarse shape). Distinct letters
  measure median 0.33 only, so 1.0 % (benchmark letters) to 2.1 % (demo letters) of all pairs of
  distinct letters are within 0.12 in exact brute force (1.9M and 4.2M pairs among 20k), and
  the band join proposes about 4,500 candidates per image at 33k images (LSH recall 0.9985),
  growing linearly with the catalog. Variants measured on 3000 demo letters (per-ring medians,
  radial whitening, neighbour comparisons, 28 or 32 instead of 16, radius 2.5-6.4 cycles, a
  bispectrum-phase code) moved copies and distinct pairs together or gave copies heavy tails:
  the separation is a property of the information kept, not of how bits are cut.
* Speed: 16x16 and one 256-frequency DTFT in two stacked `exact_matmul` stages: 31k images/s
  for signatures + band keys of 220k 28x28 images on 2 cores.

Limits (measured, documented, not promised):

* Translation invariance is the point and the price: a glyph and the same glyph translated by
  several pixels have (nearly) equal codes, so such pairs are reported. They are translated
  copies, which is what this family looks for; distinct renders that only share a letter,
  size and slant collide too (counted in RESULTS_near.md as false pairs among distinct bases).
* Low frequencies only: images differing in fine detail (thin strokes, texture) at the same
  coarse layout collide. Use this family together with the pixel or perceptual family, whose
  pairs are precise, not instead of them.
* Non-goals: horizontal flip (it mirrors the magnitude spectrum: about 0.2 median distance),
  rotation, crops, large rescaling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from catalog.recipes import resize
from catalog.recipes.base import Recipe
from catalog.recipes.perceptual import hamming_fraction
from catalog.recipes.resize import exact_matmul

SIZE = 16
"""Images are area-resampled to SIZE x SIZE gray first."""
STEP_DEN = 4
"""Frequencies are integers over STEP_DEN cycles per image."""
FREQUENCIES = 256
TRIG_SCALE = 4096
POWER_SHIFT = 16
"""Re and Im are rounded to units of 2**POWER_SHIFT before squaring: |Re| <= 4080 * 256 *
4096**2 / 2**16 < 2**29, so Re^2 + Im^2 < 2**59 is exact in int64."""

TRIG_SHA256 = "dfe9958a2f40bf05badad30563a1333000fe510f4ccb9b6dd26bc513cc6049a0"
"""sha256 of the int64 little-endian bytes of cos then sin (vertical) and cos then sin
(horizontal) fixed-point matrices, then of the int64 (256, 2) frequency list."""


@lru_cache(maxsize=1)
def frequencies() -> np.ndarray:
    """The 256 half-plane lattice frequencies, in 1/STEP_DEN cycles per image.

    Returns:
        int64 (256, 2): ``[k] = (a, b)``, ``a`` vertical, ``b`` horizontal; read-only.
    """
    m = 20
    grid_a, grid_b = np.meshgrid(np.arange(-m, m + 1), np.arange(0, m + 1), indexing="ij")
    keep = (grid_b > 0) | ((grid_b == 0) & (grid_a > 0))
    a, b = grid_a[keep], grid_b[keep]
    order = np.lexsort((a, b, a * a + b * b))[:FREQUENCIES]
    out = np.stack([a[order], b[order]], axis=1).astype(np.int64)
    out.setflags(write=False)
    return out


def _trig(values: np.ndarray) -> np.ndarray:
    # cos and sin of 2 pi v j / (STEP_DEN * SIZE) for j < SIZE, rounded to TRIG_SCALE units;
    # the angle index v * j is reduced modulo the full turn first, so it is an exact integer.
    turn = STEP_DEN * SIZE
    idx = np.outer(values, np.arange(SIZE)) % turn
    angle = 2.0 * np.pi * idx / turn
    cos = np.rint(TRIG_SCALE * np.cos(angle)).astype(np.int64)
    sin = np.rint(TRIG_SCALE * np.sin(angle)).astype(np.int64)
    return np.concatenate([cos, sin])


@lru_cache(maxsize=1)
def trig_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pinned fixed-point trigonometric matrices and where each frequency sits in them.

    Returns:
        ``(vert, horiz, row, col)``: ``vert`` int64 (2U, 16), cos rows then sin rows of the U
        distinct vertical frequencies (ascending); ``horiz`` int64 (2V, 16) likewise for the V
        horizontal ones; ``row`` and ``col`` int64 (256,) index frequency ``k`` in the (U, V)
        grid. Read-only.

    Raises:
        RuntimeError: if this platform's cosines rounded differently (values would drift).
    """
    freq = frequencies()
    us, row = np.unique(freq[:, 0], return_inverse=True)
    vs, col = np.unique(freq[:, 1], return_inverse=True)
    vert, horiz = _trig(us), _trig(vs)
    digest = hashlib.sha256(
        b"".join(x.astype("<i8").tobytes() for x in (vert, horiz, freq))
    ).hexdigest()
    if digest != TRIG_SHA256:
        raise RuntimeError(
            f"fixed-point Fourier matrices differ from the pinned ones ({digest}); "
            "spectral hashes would not match stored values"
        )
    out = (vert, horiz, row.astype(np.int64), col.astype(np.int64))
    for x in out:
        x.setflags(write=False)
    return out


def resized_gray(images: np.ndarray) -> np.ndarray:
    """Step 1: gray, area-resampled to SIZE x SIZE, in 1/16 gray levels.

    Args:
        images: float32 (n, H, W, C) in [0, 1].

    Returns:
        int64 (n, SIZE, SIZE), values 0..4080.
    """
    gray, unit = resize.gray_levels(images)
    return resize.area_mean(gray, SIZE, SIZE, scale_num=16, scale_den=unit, bound=255.0 * unit)


def centred(gray: np.ndarray) -> np.ndarray:
    """Step 2: subtract each image's lower median.

    Args:
        gray: int64 (n, 16, 16), values 0..4080.

    Returns:
        int64 (n, 16, 16), values in -4080..4080.
    """
    n = gray.shape[0]
    flat = gray.reshape(n, -1)
    k = (flat.shape[1] - 1) // 2
    median = np.partition(flat, k, axis=1)[:, k]
    return gray - median[:, None, None]


def powers(x: np.ndarray) -> np.ndarray:
    """Step 3: exact rounded power spectrum at the 256 frequencies.

    Args:
        x: int64 (n, 16, 16), values in -4080..4080.

    Returns:
        int64 (n, 256): ``Re^2 + Im^2`` of the DTFT, Re and Im in units of 2**16 rounded half
        up.
    """
    vert, horiz, row, col = trig_matrices()
    nu, nv = vert.shape[0] // 2, horiz.shape[0] // 2
    # Vertical stage: [C_u; S_u] X, exact (|entries| <= 4080 * 16 * 4096 < 2**28).
    first = exact_matmul(vert, x, b_bound=4080.0)  # (n, 2U, SIZE)
    p, q = first[:, :nu], first[:, nu:]
    # e^{-i(uy + vx)}: Re = CC - SS, Im = -(SC + CS); one product per part over [P Q].
    c_v, s_v = horiz[:nv], horiz[nv:]
    re_m = np.concatenate([c_v.T, -s_v.T])  # (2 * SIZE, V)
    im_m = np.concatenate([-s_v.T, -c_v.T])
    pq = np.concatenate([p, q], axis=2)  # (n, U, 2 * SIZE)
    bound = 4080.0 * float(np.abs(vert).sum(axis=1).max())
    re = exact_matmul(pq, re_m, a_bound=bound).astype(np.int64)
    im = exact_matmul(pq, im_m, a_bound=bound).astype(np.int64)
    half = 1 << (POWER_SHIFT - 1)
    re = (re[:, row, col] + half) >> POWER_SHIFT
    im = (im[:, row, col] + half) >> POWER_SHIFT
    return re * re + im * im


def hash_bits(power: np.ndarray) -> np.ndarray:
    """Step 4: bit = power > the 128th smallest power.

    Args:
        power: int64 (n, 256).

    Returns:
        uint8 (n, 32), packed bits.
    """
    k = (power.shape[1] - 1) // 2
    median = np.partition(power, k, axis=1)[:, k]
    return np.packbits(power > median[:, None], axis=1)


@dataclass(frozen=True)
class SpectralRecipe(Recipe):
    """256-bit low-frequency Fourier-magnitude hash, Hamming fraction distance."""

    family = "spectral"

    @property
    def signature_bytes(self) -> int:
        return FREQUENCIES // 8

    def family_params(self) -> dict[str, Any]:
        return {
            "algorithm": "dtft-magnitude-median-hash",
            "gray": "(77R+150G+29B)/256 of 8-bit channels (V for one channel)",
            "resize": f"exact area mean to {SIZE}x{SIZE}, in 1/16 levels rounded half up",
            "centre": f"subtract the {SIZE * SIZE // 2}th smallest value",
            "frequencies": f"{FREQUENCIES} half-plane lattice points (a, b)/{STEP_DEN} cycles "
            "per image, smallest a^2+b^2, ties by (b, a)",
            "trig": f"round({TRIG_SCALE}*cos|sin(2 pi a j / {STEP_DEN * SIZE})), sha256 "
            f"{TRIG_SHA256}",
            "power": f"Re^2+Im^2, Re and Im rounded half up to units of 2^{POWER_SHIFT}",
            "median": "128th smallest of 256 powers; bit = power > median",
            "bit_order": "frequency order above, np.packbits big-endian",
            "distance": "hamming / 256",
        }

    def signatures(self, images: np.ndarray) -> np.ndarray:
        images = resize.check_images(images)
        out = np.empty((images.shape[0], self.signature_bytes), dtype=np.uint8)
        step = max(1, 2048 * 1024 // max(1, images.shape[1] * images.shape[2]))
        for start in range(0, images.shape[0], step):
            part = images[start : start + step]
            out[start : start + part.shape[0]] = hash_bits(powers(centred(resized_gray(part))))
        return out

    def codes(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return signatures, np.zeros(signatures.shape[0], dtype=np.uint64)

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = self.check_pairs(a, b)
        return hamming_fraction(a, b)

    def bit_fraction(self, distance: float | np.ndarray) -> float | np.ndarray:
        return distance
