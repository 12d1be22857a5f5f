"""Canonical pixels: the exact digest of an image, its 0-1 scale, and the low-information flag.

Pure functions over a chunk of images shaped (n, H, W) or (n, H, W, C); no I/O.

Canonicalisation, applied before hashing so equal pictures get equal digests everywhere:
- a trailing channel axis of size 1 is dropped, so (n, H, W, 1) and (n, H, W) agree;
- multi-byte values are hashed little-endian, whatever the machine or the file's byte order;
- float images: -0.0 becomes +0.0 and every NaN the same quiet NaN.
The digest is blake2b-256 over ``dtype|HxWxC|`` followed by the C-order bytes, so equal bytes of
different shape or dtype never collide, and it is stable across processes and machines.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np

DIGEST_SIZE = 32
LOW_INFO_STD = 0.02
"""An image whose pixels' standard deviation on the 0-1 scale is below this is low-information
(blank or near-constant: about 5 grey levels of 255). Such images hash alike under every
near-duplicate recipe, so they are flagged and reported as their own finding."""

_SUPPORTED_KINDS = "biuf"
MAX_SIDE = 65535
"""The largest height or width: near-duplicate signatures record the size in 16 bits."""


class Shaped(Protocol):
    """What `check_images` looks at: an array, or a file's array not read yet."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...


def check_images(images: Shaped, where: str) -> None:
    """Raise ValueError unless ``images`` is a supported (n, H, W[, C]) image array.

    Args:
        images: any array, or anything with its shape and dtype (nothing is read); checked
            for dimensions, channel count and dtype only.
        where: how to name the array in the message (file and key).
    """
    if images.dtype.kind not in _SUPPORTED_KINDS:
        raise ValueError(f"{where}: images must be integer, float or bool, not {images.dtype}")
    if len(images.shape) not in (3, 4):
        raise ValueError(
            f"{where}: images must be shaped (N, H, W) or (N, H, W, C), not {images.shape}"
        )
    if len(images.shape) == 4 and images.shape[3] not in (1, 2, 3, 4):
        raise ValueError(
            f"{where}: images shaped {images.shape} have {images.shape[3]} channels; "
            "expected 1 to 4 in the last axis (N, H, W, C)"
        )
    if 0 in images.shape[1:]:
        raise ValueError(f"{where}: images shaped {images.shape} have no pixels")
    if max(images.shape[1:3]) > MAX_SIDE:
        raise ValueError(
            f"{where}: images shaped {images.shape} are over {MAX_SIDE} pixels on a side; "
            "split or downscale them first"
        )


def canonical(images: np.ndarray) -> np.ndarray:
    """The canonical form of a chunk: C-contiguous, little-endian, single channel squeezed.

    Args:
        images: (n, H, W) or (n, H, W, C) of any supported dtype.

    Returns:
        (n, H, W) when C == 1, else (n, H, W, C); same kind of dtype, little-endian.
    """
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    dtype = images.dtype.newbyteorder("<") if images.dtype.itemsize > 1 else images.dtype
    out = np.ascontiguousarray(images, dtype=dtype)
    if out.dtype.kind == "f":
        # Copy only when there is something to normalise: a chunk is usually clean.
        negzero = (out == 0) & np.signbit(out)
        nan = np.isnan(out)
        if negzero.any() or nan.any():
            out = out.copy()
            out[negzero] = 0
            out[nan] = np.nan
    return out


def digests(images: np.ndarray) -> list[bytes]:
    """blake2b-256 digests of a canonical chunk, one per image.

    Args:
        images: output of `canonical`, shape (n, H, W) or (n, H, W, C).

    Returns:
        n digests of `DIGEST_SIZE` bytes.
    """
    n = images.shape[0]
    height, width = images.shape[1], images.shape[2]
    channels = images.shape[3] if images.ndim == 4 else 1
    header = f"{images.dtype.str}|{height}x{width}x{channels}|".encode()
    prefix = hashlib.blake2b(header, digest_size=DIGEST_SIZE)
    rows = images.reshape(n, -1).view(np.uint8) if n else images.reshape(0, 0)
    # One C call per image: a cryptographic hash cannot be vectorised in numpy, and hashing
    # the shared prefix once then copying the state keeps the Python work to a single line.
    out = []
    for row in rows:
        state = prefix.copy()
        state.update(row.data)
        out.append(state.digest())
    return out


def needs_observed_range(dtype: np.dtype) -> bool:
    """Whether `value_range` for ``dtype`` depends on the data (floats and wide integers)."""
    return dtype.kind == "f" or (dtype.kind in "iu" and dtype.itemsize > 1)


def value_range(
    dtype: np.dtype, observed: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The (low, high) that map to 0 and 1 for images of ``dtype``.

    bool is 0-1; uint8 and int8 use their full range. Floats and wider integers have no
    intrinsic scale, so it is read off the data: ``observed`` (min, max over the whole array) is
    snapped to the first convention that contains it: for floats 0-1, then -0.5-0.5 (the notMNIST
    assignment's normalisation), then 0-255; for wider integers 0-255 (8-bit pixels stored as
    int64), then the dtype's full range. A float range fitting no convention is used as observed.
    """
    if dtype.kind == "b":
        return 0.0, 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if observed is not None and dtype.itemsize > 1:
            low, high = observed
            if low >= 0 and high <= 255:
                return 0.0, 255.0
        return float(info.min), float(info.max)
    if observed is None:
        return 0.0, 1.0
    low, high = observed
    for conv_low, conv_high in ((0.0, 1.0), (-0.5, 0.5), (0.0, 255.0)):
        if low >= conv_low and high <= conv_high:
            return conv_low, conv_high
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return 0.0, 1.0
    return float(low), float(high)


def to_unit(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Pixels on the 0-1 scale, float32, always with a channel axis.

    Args:
        images: (n, H, W) or (n, H, W, C), any supported dtype.
        value_range: (low, high) from `value_range`.

    Returns:
        float32 (n, H, W, C), clipped to [0, 1]; NaN becomes 0.
    """
    low, high = value_range
    # float64 and wide integers are scaled in float64: float32 would overflow past 3.4e38.
    work = np.dtype(np.float64 if images.dtype.itemsize > 4 else np.float32)
    scaled: np.ndarray = images.astype(work)
    scaled -= np.asarray(low, dtype=work)
    scaled /= np.asarray(high - low, dtype=work)
    unit = scaled.astype(np.float32, copy=False)
    np.nan_to_num(unit, copy=False, nan=0.0)
    np.clip(unit, 0.0, 1.0, out=unit)
    return unit if unit.ndim == 4 else unit[..., None]


def colour_channels(unit: np.ndarray) -> np.ndarray:
    """The channels a near-duplicate recipe compares: alpha is left out.

    Args:
        unit: (n, H, W, C) with C in 1..4: gray, gray+alpha, RGB, RGBA.

    Returns:
        (n, H, W, 1) for gray and gray+alpha, (n, H, W, 3) for RGB and RGBA (views, no copy).
    """
    channels = unit.shape[3]
    if channels == 2:
        return unit[..., :1]
    if channels == 4:
        return unit[..., :3]
    return unit


def low_information(unit: np.ndarray) -> np.ndarray:
    """Flag blank or near-constant images.

    Args:
        unit: float32 (n, H, W, C) from `to_unit`.

    Returns:
        bool (n,): True where the pixels' standard deviation is below `LOW_INFO_STD`.
    """
    flat = unit.reshape(unit.shape[0], int(np.prod(unit.shape[1:], dtype=np.int64)))
    return flat.std(axis=1) < LOW_INFO_STD
