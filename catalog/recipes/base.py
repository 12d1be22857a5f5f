"""The `Recipe` contract shared by every near-duplicate family.

A recipe is a named, fully parameterised, pure way of turning a batch of images into

* **signatures**: fixed-size uint8 rows (n, S) from which `distances` is computed exactly, and
* **band keys**: int64 (n, bands) LSH keys; two images are candidates when they share a key at the
  same band index. Candidates are then verified with `distances`.

Every family here reduces an image to a 256-bit code and hashes the set of its 256 bit tokens with
datasketch MinHash (see `catalog.recipes.minhash`), so the similarity the LSH sees is the token-set
Jaccard ``J = (1 - f) / (1 + f)`` of the code's bit-difference fraction ``f``; a family maps its
distance to ``f`` in `bit_fraction`.

`params` lists everything that affects stored values; `fingerprint` is its sha256, the identity
of the recipe in the catalog. Signatures of different fingerprints are never compared.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from catalog.recipes import minhash
from catalog.vectors import take_rows


def jaccard_of_bit_fraction(f: float | np.ndarray) -> float | np.ndarray:
    """Token-set Jaccard of two 256-bit codes differing in a fraction ``f`` of their bits."""
    f = np.clip(np.asarray(f, dtype=np.float64), 0.0, 1.0)
    j = (1.0 - f) / (1.0 + f)
    return float(j) if j.ndim == 0 else j


@dataclass(frozen=True)
class Screen:
    """Cheap lower bounds of a recipe's distance, coarse to fine, to rule candidates out.

    For every level ``(vectors, factor)`` and every pair ``i, j`` whose distance is below 1:
    ``distance(i, j) >= scale[i] * factor * ||vectors[i] - vectors[j]||`` (Euclidean norm, in
    exact integer arithmetic). Distances are at most 1, so the bound is capped at 1.
    """

    levels: tuple[tuple[np.ndarray, float], ...]
    """Coarse first: (int16 (n, m) vectors, factor)."""
    scale: np.ndarray
    """float64 (n,)."""

    @cached_property
    def _exact_types(
        self,
    ) -> tuple[tuple[type[np.signedinteger[Any]], type[np.signedinteger[Any]]], ...]:
        """Per level, (difference type, sum-of-squares type): the narrowest exact ones.

        int16 differences when no difference of two values can overflow them, and int32 sums
        when no sum of squares can: casting gathered int16 rows to a wider type cost 3x more
        than the arithmetic itself (8.5M candidate pairs: 10 s of the screen's 11).
        """
        types = []
        for vectors, _factor in self.levels:
            # The extremes, not a widened copy of every vector (that cost 1.6 s at 220k).
            widest = 2 * max(abs(int(vectors.max(initial=0))), abs(int(vectors.min(initial=0))))
            if widest * widest * vectors.shape[1] >= 2**63:
                raise ValueError(
                    f"screen level values up to {widest // 2} cannot be bounded exactly: their "
                    "sums of squares overflow int64"
                )
            difference = np.int16 if widest < 2**15 else np.int32
            square = np.int32 if widest * widest * vectors.shape[1] < 2**31 else np.int64
            types.append((difference, square))
        return tuple(types)

    def coarsest(self) -> Screen:
        """This screen with its first (smallest) level only: what a band join keeps in memory
        for every image it joins (`catalog.near`), where the full screen would not fit."""
        return Screen(levels=self.levels[:1], scale=self.scale)

    @staticmethod
    def concatenate(screens: Sequence[Screen]) -> Screen:
        """One screen over the images of several (same recipe, same levels), in order."""
        levels = tuple(
            (np.concatenate([s.levels[k][0] for s in screens]), factor)
            for k, (_vectors, factor) in enumerate(screens[0].levels)
        )
        return Screen(levels=levels, scale=np.concatenate([s.scale for s in screens]))

    def rows(self, index: np.ndarray) -> Screen:
        """The screen of the images at ``index``, in that order."""
        return Screen(
            levels=tuple((take_rows(vectors, index), factor) for vectors, factor in self.levels),
            scale=self.scale[index],
        )

    def may_be_within(
        self, left: np.ndarray, right: np.ndarray, radius: float, other: Screen | None = None
    ) -> np.ndarray:
        """Which pairs ``(left[k], right[k])`` no level rules out at ``radius``.

        Each level looks only at the pairs the coarser levels kept.

        Args:
            left: int64 (p,) row indices into this screen's vectors.
            right: int64 (p,) row indices into ``other``'s (same recipe, same levels; default
                this screen): verification screens two blocks of images without joining them.
            radius: the distance a pair must not exceed.

        Returns:
            bool (p,).
        """
        theirs = self if other is None else other
        keep = np.ones(left.size, dtype=bool)
        for (vectors, factor), (their_vectors, _), mine, their_types in zip(
            self.levels, theirs.levels, self._exact_types, theirs._exact_types, strict=True
        ):
            rows = np.flatnonzero(keep)
            if rows.size == 0:
                break
            # The wider of the two screens' exact types bounds every difference across them.
            difference = max(mine[0], their_types[0], key=lambda t: np.dtype(t).itemsize)
            square = np.int32 if mine[1] is np.int32 and their_types[1] is np.int32 else np.int64
            a, b = left[rows], right[rows]
            diff: np.ndarray = take_rows(vectors, a).astype(difference, copy=False)
            np.subtract(diff, take_rows(their_vectors, b), out=diff)
            sums = np.einsum("ij,ij->i", diff, diff, dtype=square)
            bound = self.scale[a] * factor * np.sqrt(sums)
            keep[rows] = np.minimum(bound, 1.0) <= radius
        return keep


@dataclass(frozen=True)
class Recipe(ABC):
    """A near-duplicate recipe: signatures, LSH band keys, exact distances.

    Attributes:
        name: stable name, e.g. ``"pixel-v1"``; a change of values needs a new name.
        bands: LSH bands ``b`` (band-key rows per image).
        rows: MinHash values per band ``r``.
        radius: pairs with distance <= radius are stored.
        default_threshold: what reports use by default (<= radius).
        seed: datasketch MinHash seed.
    """

    name: str
    bands: int
    rows: int
    radius: float
    default_threshold: float
    seed: int = 1

    family: ClassVar[str]
    format_version: ClassVar[int] = 1
    probability_is_bound: ClassVar[bool] = False
    """True when `candidate_probability` is a worst-case lower bound, not an estimate."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("recipe name must not be empty")
        if self.bands < 1 or self.rows < 1:
            raise ValueError(
                f"bands and rows must be >= 1, got bands={self.bands} rows={self.rows}"
            )
        if not 0.0 <= self.default_threshold <= self.radius <= 1.0:
            raise ValueError(
                f"need 0 <= default_threshold <= radius <= 1, got "
                f"default_threshold={self.default_threshold} radius={self.radius}"
            )
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")

    @property
    def num_perm(self) -> int:
        """MinHash permutations, ``bands * rows``."""
        return self.bands * self.rows

    @property
    @abstractmethod
    def signature_bytes(self) -> int:
        """S, the fixed length of one signature in bytes."""

    @abstractmethod
    def family_params(self) -> dict[str, Any]:
        """Family-specific parameters that affect signatures, codes or distances."""

    @abstractmethod
    def signatures(self, images: np.ndarray) -> np.ndarray:
        """Signatures of a batch of same-shape images.

        Args:
            images: float32 (n, H, W, C), values in [0, 1], C in {1, 3}.

        Returns:
            uint8 (n, S).
        """

    @abstractmethod
    def codes(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 256-bit LSH codes of signatures, and a per-image key salt.

        Args:
            signatures: uint8 (n, S).

        Returns:
            ``(codes, salt)``: uint8 (n, 32) packed bits and uint64 (n,).
        """

    @abstractmethod
    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise exact distances in [0, 1].

        Args:
            a: uint8 (m, S).
            b: uint8 (m, S).

        Returns:
            float64 (m,).
        """

    def verifier(self, signatures: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``verify(left, right)``, equal to ``distances(signatures[left], signatures[right])``.

        Verification calls it batch after batch on one array of signatures; a recipe whose
        distance needs per-image work (e.g. a blur) does it here once per image rather than
        once per candidate. The default does nothing ahead.

        Args:
            signatures: uint8 (n, S).
        """
        return lambda left, right: self.distances(
            take_rows(signatures, left), take_rows(signatures, right)
        )

    def screen(self, signatures: np.ndarray) -> Screen | None:
        """A cheap lower bound of `distances`, to skip candidates that cannot be pairs.

        Verification computes the bound for every candidate and exact distances only for those
        it does not rule out; the result is the same as computing every exact distance. The
        default is no bound.

        Args:
            signatures: uint8 (n, S).
        """
        return None

    @abstractmethod
    def bit_fraction(self, distance: float | np.ndarray) -> float | np.ndarray:
        """Fraction of differing LSH code bits implied by (or modelled for) a distance."""

    def params(self) -> dict[str, Any]:
        """JSON-serialisable description of everything that affects stored values."""
        return {
            "name": self.name,
            "family": self.family,
            "format_version": self.format_version,
            "radius": self.radius,
            "default_threshold": self.default_threshold,
            "signature_bytes": self.signature_bytes,
            "lsh": {
                "representation": "set of 256 tokens bit{i}={v} of a 256-bit code",
                "minhash": "datasketch.MinHash",
                # The definition we reproduce (our own code computes it; tests compare it with
                # the installed datasketch), not the installed version.
                "datasketch_major": 2,
                "scheme": minhash.SCHEME,
                "hashfunc": "sha1_hash32",
                "num_perm": self.num_perm,
                "seed": self.seed,
                "bands": self.bands,
                "rows": self.rows,
                "key": "splitmix64(sum_j w_j * (splitmix64(j) | 1) + splitmix64(splitmix64(salt) "
                "^ band)) mod 2**64 over uint64 words w_j = v_2j | v_2j+1 << 32, as int64",
            },
            self.family: self.family_params(),
        }

    def fingerprint(self) -> str:
        """Hex sha256 of the canonical JSON of `params`."""
        text = json.dumps(self.params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def check_signatures(self, signatures: np.ndarray, what: str = "signatures") -> np.ndarray:
        """Validate a uint8 (n, S) signature array and return it C-contiguous."""
        signatures = np.asarray(signatures)
        if (
            signatures.ndim != 2
            or signatures.shape[1] != self.signature_bytes
            or signatures.dtype != np.uint8
        ):
            raise ValueError(
                f"{what} for recipe '{self.name}' must be uint8 of shape "
                f"(n, {self.signature_bytes}), got {signatures.dtype} "
                f"{signatures.shape}"
            )
        return np.ascontiguousarray(signatures)

    def check_pairs(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate two row-aligned signature arrays for `distances`."""
        a = self.check_signatures(a, "a")
        b = self.check_signatures(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
        return a, b

    def minhash(self, signatures: np.ndarray) -> np.ndarray:
        """datasketch MinHash values of the bit-token sets of the signatures' codes.

        Args:
            signatures: uint8 (n, S).

        Returns:
            uint32 (n, bands * rows).
        """
        codes, _ = self.codes(self.check_signatures(signatures))
        return minhash.minhash_codes(codes, self.num_perm, self.seed)

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """LSH band keys.

        Args:
            signatures: uint8 (n, S).

        Returns:
            int64 (n, bands).
        """
        codes, salt = self.codes(self.check_signatures(signatures))
        out = np.empty((codes.shape[0], self.bands), dtype=np.int64)
        # Chunks bound the (chunk, num_perm) MinHash matrix to ~16 MB whatever n is.
        step = max(1, (1 << 22) // self.num_perm)
        for start in range(0, codes.shape[0], step):
            stop = start + step
            values = minhash.minhash_codes(codes[start:stop], self.num_perm, self.seed)
            out[start:stop] = minhash.band_keys_from_minhash(
                values, self.bands, self.rows, salt[start:stop]
            )
        return out

    def probe_keys(self, signatures: np.ndarray) -> np.ndarray | None:
        """Extra band keys joined like `band_keys` but never stored, or None (the default).

        A recipe whose distance tolerates a transformation the code does not (e.g. a 1-pixel
        shift) returns the band keys of each image's transformed variants: a new image then
        also meets the images its variants collide with. Stored keys stay one set per image.

        Args:
            signatures: uint8 (n, S).

        Returns:
            int64 (n, probes, bands), or None.
        """
        return None

    def candidate_probability(self, distance: float | np.ndarray) -> float | np.ndarray:
        """P(a pair at this distance shares at least one band key): ``1 - (1 - J**r)**b``.

        ``J = (1 - f) / (1 + f)`` with ``f = bit_fraction(distance)``.
        """
        return minhash.s_curve(
            jaccard_of_bit_fraction(self.bit_fraction(distance)), self.bands, self.rows
        )
