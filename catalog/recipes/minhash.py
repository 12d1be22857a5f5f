"""Vectorised datasketch MinHash over bit tokens, and LSH band keys.

This module owns the step from "a batch of 256-bit codes" to "signed 64-bit band keys":

1. Each image is represented as the set of 256 tokens ``b"bit{i}={v}"`` (bit index ``i``, bit
   value ``v``), so every image has exactly 256 tokens and the set Jaccard of two images is
   ``(256 - h) / (256 + h)`` = ``(1 - f) / (1 + f)`` with ``h`` differing bits, ``f = h / 256``.
2. The vocabulary is finite (512 tokens), so datasketch's permuted hash of every token is
   precomputed once per (num_perm, seed): ``table[i, v, k] = a_k * fmix32(sha1_hash32(token)) + b_k
   mod 2**32``, exactly datasketch 2.0's ``"affine32"`` scheme with its ``RandomState(seed)``
   permutations. We pin that scheme (it is datasketch 2.0's default, collision-free, and stores
   uint32); ``"legacy"`` would need 64-bit modular arithmetic for no benefit.
3. The minimum over the 8 tokens of one packed byte is precomputed for all 256 byte values
   (``group[j, byte, k]``), so the MinHash of an image is the min over its 32 bytes of one table
   row: a gather of 32 rows and a min, 8x cheaper than gathering 256 token rows, and bit-for-bit
   equal to ``MinHash(num_perm, seed, scheme="affine32")`` updated with the same token bytes
   (tests check this against datasketch itself).
4. ``bands`` consecutive groups of ``rows`` MinHash values are combined with the band index and a
   per-image salt into a 64-bit key by a linear hash with fixed odd multipliers and a splitmix64
   finaliser (wrapping uint64 arithmetic on purpose), then viewed as int64 for SQL.

Memory: a chunk of ``chunk`` images gathers ``chunk * 32 * num_perm`` uint32 values (63 MB for
the default 1024 images at 480 permutations); the byte tables take ``32 * 256 * num_perm * 4``
bytes per (num_perm, seed), cached (16 MB at 480).
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

import numpy as np

from catalog.vectors import take_rows

SCHEME = "affine32"
"""The datasketch MinHash permutation scheme these tables reproduce (pinned in recipe params)."""

CODE_BITS = 256
CODE_BYTES = CODE_BITS // 8

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def token_bytes(bit: int, value: int) -> bytes:
    """The token fed to datasketch for bit ``bit`` having value ``value`` (0 or 1)."""
    return f"bit{bit}={value}".encode("ascii")


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch's ``affine32`` scheme pre-mixes inputs.

    Args:
        h: uint32 array of any shape.

    Returns:
        uint32 array of the same shape (multiplications wrap modulo 2**32 on purpose).
    """
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))


def affine32_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch 2.0's ``affine32`` permutation parameters, generated the way datasketch does.

    Args:
        num_perm: number of permutations ``k``.
        seed: datasketch's MinHash seed.

    Returns:
        ``(a, b)``, two uint32 arrays of shape (k,), ``a`` odd.
    """
    # datasketch draws from the legacy RandomState, whose stream numpy keeps frozen.
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@lru_cache(maxsize=16)
def token_table(num_perm: int, seed: int) -> np.ndarray:
    """Permuted datasketch hash of every bit token.

    Returns:
        uint32 array (256, 2, num_perm): ``[i, v, k]`` is permutation ``k`` of token (i, v).
        Read-only.
    """
    hv = np.array(
        [
            [struct.unpack("<I", hashlib.sha1(token_bytes(i, v)).digest()[:4])[0] for v in (0, 1)]
            for i in range(CODE_BITS)
        ],
        dtype=np.uint32,
    )
    a, b = affine32_permutations(num_perm, seed)
    with np.errstate(over="ignore"):
        table = fmix32(hv)[:, :, None] * a + b
    table.setflags(write=False)
    return table


@lru_cache(maxsize=16)
def byte_table(num_perm: int, seed: int) -> np.ndarray:
    """Minimum of the token table over the 8 bits of each packed byte, for every byte value.

    Bit ``m`` (0..7) of byte ``j`` is code bit ``8 * j + m`` and is the byte's ``(7 - m)``-th
    least significant bit (``np.packbits`` big-endian order).

    Returns:
        uint32 array (32, 256, num_perm), read-only.
    """
    table = token_table(num_perm, seed)
    values = np.arange(256, dtype=np.uint8)[:, None]
    bits = np.unpackbits(values, axis=1).astype(np.intp)  # (256, 8), MSB first
    out = np.empty((CODE_BYTES, 256, num_perm), dtype=np.uint32)
    for j in range(CODE_BYTES):
        rows = table[8 * j + np.arange(8)[None, :], bits]  # (256, 8, k)
        out[j] = rows.min(axis=1)
    out.setflags(write=False)
    return out


def minhash_codes(codes: np.ndarray, num_perm: int, seed: int, chunk: int = 1024) -> np.ndarray:
    """datasketch MinHash values of the bit-token sets of a batch of 256-bit codes.

    Args:
        codes: uint8 array (n, 32), codes packed with ``np.packbits`` (bit ``i`` of the code is
            bit ``7 - i % 8`` of byte ``i // 8``).
        num_perm: number of permutations.
        seed: datasketch seed.
        chunk: images per gather, bounds memory to ``chunk * 32 * num_perm * 4`` bytes.

    Returns:
        uint32 array (n, num_perm), equal to ``MinHash(num_perm=num_perm, seed=seed,
        scheme="affine32")`` updated with each image's 256 tokens.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != CODE_BYTES or codes.dtype != np.uint8:
        raise ValueError(
            f"codes must be uint8 of shape (n, {CODE_BYTES}), got {codes.dtype} {codes.shape}"
        )
    groups = byte_table(num_perm, seed)
    out = np.empty((codes.shape[0], num_perm), dtype=np.uint32)
    for start in range(0, codes.shape[0], chunk):
        part = codes[start : start + chunk]
        # A running minimum over the 32 bytes, gathered one byte at a time: gathering all 32
        # into a (chunk, 32, num_perm) array and reducing its middle axis cost 5x as much.
        # Whole rows are taken (`take_rows`): 7.4 against 8.2-9.3 us an image at 576.
        acc = out[start : start + part.shape[0]]
        np.take(groups[0], part[:, 0], axis=0, out=acc)
        for j in range(1, CODE_BYTES):
            np.minimum(acc, take_rows(groups[j], part[:, j]), out=acc)
    return out


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function (add the golden gamma, then its finaliser); wraps mod 2**64.

    Args:
        z: uint64 array of any shape.

    Returns:
        uint64 array of the same shape.
    """
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _multipliers(count: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers ``splitmix64(j) | 1`` for the band-key linear hash."""
    return splitmix64(np.arange(count, dtype=np.uint64)) | np.uint64(1)


def band_keys_from_minhash(
    hashvalues: np.ndarray, bands: int, rows: int, salt: np.ndarray | None = None
) -> np.ndarray:
    """Combine MinHash values into one signed 64-bit key per band.

    The ``r`` uint32 values of a band are packed two per uint64 word ``w_j`` (lossless), then
    ``key = splitmix64(sum_j w_j * M_j + splitmix64(splitmix64(salt) ^ band))`` modulo 2**64,
    with fixed odd multipliers ``M_j = splitmix64(j) | 1``: a multiply-add per word and one
    finaliser per key (a full splitmix64 chain per value measured 5x slower). The band index is
    inside the key, so equal values in different bands never collide, and ``salt`` (e.g. the
    image shape) keeps images that must never pair apart.

    Args:
        hashvalues: uint32 array (n, bands * rows).
        bands: number of bands ``b``.
        rows: MinHash values per band ``r``.
        salt: optional uint64 array (n,), mixed into every key of its image.

    Returns:
        int64 array (n, bands), the uint64 keys viewed as int64.
    """
    hashvalues = np.asarray(hashvalues)
    n = hashvalues.shape[0]
    if hashvalues.ndim != 2 or hashvalues.shape[1] != bands * rows:
        raise ValueError(
            f"hashvalues must have shape (n, {bands * rows}) for {bands} bands of "
            f"{rows} rows, got {hashvalues.shape}"
        )
    salt64 = np.zeros(n, np.uint64) if salt is None else np.asarray(salt, dtype=np.uint64)
    values = hashvalues.reshape(n, bands, rows)
    words = (rows + 1) // 2
    mult = _multipliers(words)
    key = splitmix64(splitmix64(salt64)[:, None] ^ np.arange(bands, dtype=np.uint64)[None, :])
    with np.errstate(over="ignore"):
        for j in range(words):
            word = values[:, :, 2 * j].astype(np.uint64)
            if 2 * j + 1 < rows:
                word |= values[:, :, 2 * j + 1].astype(np.uint64) << np.uint64(32)
            word *= mult[j]
            key += word
    return splitmix64(key).view(np.int64)


def s_curve(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability ``1 - (1 - J**r)**b`` that two sets of Jaccard ``J`` share a band key."""
    j = np.clip(np.asarray(similarity, dtype=np.float64), 0.0, 1.0)
    p = 1.0 - (1.0 - j**rows) ** bands
    return float(p) if p.ndim == 0 else p
