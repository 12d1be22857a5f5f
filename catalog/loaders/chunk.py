"""What every loader hands the ingest: chunks of same-shape images with per-item provenance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SkippedFile:
    """A source file left out because it could not be read or decoded (``--skip-bad``)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """Images of one shape and dtype, where they sit in their split, and where they came from.

    A chunk may hold no images and only ``skipped`` files (a batch of a folder that was all bad).
    """

    images: np.ndarray
    """(n, H, W) or (n, H, W, C), one shape and dtype."""
    positions: np.ndarray
    """int64 (n,): each image's position in its split (not necessarily consecutive)."""
    labels: Sequence[str | None]
    scale: tuple[float, float]
    """The pixel values that map to 0 and 1 (`catalog.pixels.value_range`)."""
    keys: Sequence[str] | None = None
    """Each item's own source key (a file's relative path); None: the split's key, with the
    position as the row of its array."""
    sha256: Sequence[str] | None = None
    """Each item's own file sha256 (hex), with ``keys``."""
    file_bytes: int = 0
    """Bytes of the files these images were decoded from (0 for arrays)."""
    skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])
