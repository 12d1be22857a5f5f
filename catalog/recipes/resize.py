"""Exact integer image arithmetic: quantisation, exact matmul, area (box) resampling.

Recipes must give the same values on every machine and library version, so nothing here calls
Pillow, scipy or a float reduction whose summation order may vary. Images are quantised with
elementwise IEEE operations (deterministic), and area resampling is exact integer arithmetic
with rational weights:

On a common fine grid where input pixel ``j`` of an axis of length ``n`` covers ``[j*o, (j+1)*o)``
and output cell ``i`` of length ``o`` covers ``[i*n, (i+1)*n)``, the weight of input ``j`` in
output ``i`` is the integer overlap length; the weights of every output sum to ``n``. The sums
are two integer matrix products (columns, then rows), done by `exact_matmul`; the area mean is
the exact sum divided by ``n_h * n_w``, for down- and up-sampling alike.
"""

from __future__ import annotations

import numpy as np

_EXACT_LIMIT = 2**53


def _abs_max(x: np.ndarray) -> float:
    return float(max(abs(float(x.max())), abs(float(x.min())))) if x.size else 0.0


def exact_matmul(
    a: np.ndarray, b: np.ndarray, a_bound: float | None = None, b_bound: float | None = None
) -> np.ndarray:
    """Product of integer-valued arrays computed in float64, exact by construction.

    Every operand and every partial sum is an integer of magnitude below 2**53, so each float64
    add, multiply or fused multiply-add is exact and the result does not depend on summation
    order, blocking, FMA or threads: float speed (10-20x numpy's int64 matmul here) with int64's
    reproducibility. One operand is a small constant matrix (weights, DCT, projections) and the
    other a batch of data; the partial-sum bound ``max|data| * max abs row/column sum of the
    constant`` is checked before multiplying, from ``a_bound``/``b_bound`` when the caller knows
    the data's range by construction (saves a pass).

    Batches are multiplied as stacks (``(n, m, k) @ (k, p)`` or ``(m, k) @ (n, k, p)``): numpy
    then runs one small product per image, which OpenBLAS keeps single-threaded. One flat
    product over the whole batch was 2-9x slower on this 2-core machine whenever another process
    was busy (BLAS threads spinning against each other), and needs transposed copies.

    Args:
        a: integer or integer-valued float64 array (..., m, k).
        b: integer or integer-valued float64 array (..., k, p); one of a, b is 2-D.
        a_bound: an upper bound of ``|a|`` if a is the data, or None to compute it.
        b_bound: an upper bound of ``|b|`` if b is the data, or None to compute it.

    Returns:
        float64 array (..., m, p) of exact integers, equal to the int64 product.
    """
    if a.dtype.kind not in "iuf" or b.dtype.kind not in "iuf":
        raise ValueError(f"exact_matmul needs integer-valued arrays, got {a.dtype} and {b.dtype}")
    if a.size and b.size:
        if b.ndim == 2:
            data_bound = _abs_max(a) if a_bound is None else a_bound
            sums = float(np.abs(b.astype(np.float64)).sum(axis=0).max())
        elif a.ndim == 2:
            data_bound = _abs_max(b) if b_bound is None else b_bound
            sums = float(np.abs(a.astype(np.float64)).sum(axis=1).max())
        else:
            raise ValueError("exact_matmul needs one 2-D (constant) operand")
        if data_bound * sums >= _EXACT_LIMIT:
            raise ValueError(
                f"exact_matmul operands too large for exact float64 ({data_bound} * {sums})"
            )
    return np.matmul(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a batch of images and return it as a C-contiguous float32 array.

    Args:
        images: float array (n, H, W, C), C in {1, 3}, values in [0, 1].

    Returns:
        float32 array (n, H, W, C).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    if h < 1 or w < 1 or h > 65535 or w > 65535:
        raise ValueError(f"image height and width must be in 1..65535, got {h}x{w}")
    if images.dtype.kind != "f":
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if n and not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinity")
    return images


def quantise(images: np.ndarray, levels: int) -> np.ndarray:
    """Round values in [0, 1] to the integers ``0..levels`` (values outside are clipped first).

    Args:
        images: float array of any shape.
        levels: the integer that 1.0 maps to.

    Returns:
        float64 array of the same shape holding exact integers.
    """
    x = np.clip(images.astype(np.float64), 0.0, 1.0)
    # One IEEE multiply and round-half-even per element: identical on every platform.
    x *= levels
    return np.rint(x, out=x)


GRAY_WEIGHTS = (77, 150, 29)
"""ITU-R BT.601 luma weights scaled to sum to 256, so RGB gray is exact integer arithmetic."""


def gray_levels(
    images: np.ndarray, weights: tuple[int, int, int] = GRAY_WEIGHTS
) -> tuple[np.ndarray, int]:
    """Integer gray of float images, and its unit.

    Channels are quantised to 0..255; gray is ``V`` (one channel, unit 1) or
    ``wr R + wg G + wb B`` (three channels, unit ``wr + wg + wb``), so ``gray / unit`` is the gray
    level in 0..255.

    Args:
        images: float32 (n, H, W, C), C in {1, 3}.
        weights: integer channel weights for RGB (BT.601 luma by default; (1, 1, 1) is the mean).

    Returns:
        ``(gray, unit)``: float64 (n, H, W) exact integers in 0..255 * unit, and the unit.
    """
    q = quantise(images, 255)
    if q.shape[-1] == 1:
        return q[..., 0], 1
    r, g, b = weights
    return r * q[..., 0] + g * q[..., 1] + b * q[..., 2], r + g + b


def area_weights(n: int, out: int) -> np.ndarray:
    """Integer area weights resampling an axis of length ``n`` to ``out`` cells.

    Returns:
        int64 (out, n): ``[i, j]`` is the overlap of output cell ``i`` (``[i*n, (i+1)*n)``) and
        input pixel ``j`` (``[j*out, (j+1)*out)``) on the common fine grid; each row sums to
        ``n``.
    """
    if n < 1 or out < 1:
        raise ValueError(f"axis lengths must be positive, got {n} -> {out}")
    i = np.arange(out, dtype=np.int64)[:, None]
    j = np.arange(n, dtype=np.int64)[None, :]
    lo = np.maximum(i * n, j * out)
    hi = np.minimum((i + 1) * n, (j + 1) * out)
    return np.maximum(hi - lo, 0)


def area_sums(x: np.ndarray, out_h: int, out_w: int, bound: float | None = None) -> np.ndarray:
    """Exact area-weighted sums of a batch of integer images resampled to (out_h, out_w).

    ``Wh @ x @ Ww.T`` with the integer `area_weights`, by two `exact_matmul` (its bound check
    guarantees exactness). The area mean is ``area_sums(x, oh, ow) / (H * W)``.

    Args:
        x: integer-valued (n, H, W), ``max|x| * H * W`` below 2**53.
        out_h: output height.
        out_w: output width.
        bound: an upper bound of ``|x|`` if known, saving a pass.

    Returns:
        float64 (n, out_h, out_w) holding exact integers.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (n, H, W), got {x.shape}")
    h, w = x.shape[1:]
    if bound is None:
        bound = _abs_max(x)
    if (h, w) == (out_h, out_w):
        return np.asarray(x, dtype=np.float64) * float(h * w)
    cols = exact_matmul(x, area_weights(w, out_w).T, a_bound=bound)  # (n, h, out_w)
    return exact_matmul(area_weights(h, out_h), cols, b_bound=bound * w)


def area_mean(
    x: np.ndarray,
    out_h: int,
    out_w: int,
    scale_num: int = 1,
    scale_den: int = 1,
    bound: float | None = None,
) -> np.ndarray:
    """Area mean resampling, times ``scale_num / scale_den``, rounded half up, exact.

    Args:
        x: integer-valued (n, H, W), non-negative.
        out_h: output height.
        out_w: output width.
        scale_num: numerator of a rational factor applied before rounding.
        scale_den: denominator of that factor.
        bound: an upper bound of ``x`` if known.

    Returns:
        int64 (n, out_h, out_w): ``floor(mean * num / den + 1/2)``.
    """
    h, w = np.shape(x)[1:3]
    sums = area_sums(x, out_h, out_w, bound).astype(np.int64)
    den = h * w * scale_den
    return (2 * sums * scale_num + den) // (2 * den)
