"""Near-duplicate recipes: pure, vectorised signatures, LSH band keys and exact distances.

Arrays in, arrays out: no I/O, no SQL. The catalog stores each recipe's `params` and
`fingerprint`; band keys are joined in SQL and candidates verified with `Recipe.distances`.

* `PIXEL` ("pixel-v1"): gray RMS difference of aligned same-shape arrays, 1032-byte signature,
  24 bands of 24 MinHash values over a 256-bit projection code of the 8x8 image.
* `PERCEPTUAL` ("phash256-v2"): 256-bit DCT hash, Hamming fraction, 32-byte signature, 24 bands
  of 10 MinHash values over the hash bits. ("phash256-v1", `PERCEPTUAL_V1`, the same hash with
  24 x 11, stays known for the catalogs made with it.)
* `PIXEL_SHIFT` ("pixshift-v1", family "pixel-shift", opt-in): pixel-v1's signature and code;
  blurred gray RMS minimised over 1-cell shifts; 24 x 18, plus probe keys of the eight shifted
  grids. Finds 1-pixel shifts and 2x down-up copies of 28x28 glyphs (`catalog.recipes.shift`).
* `SHIFT` ("fmag256-v1", family "spectral"): 256-bit hash of low-frequency Fourier magnitudes,
  Hamming fraction, 32-byte signature, 48 bands of 10. Finds zero-filled 1-pixel shifts and 2x
  down-up copies of 28x28 letters, at a measured price in candidates and false pairs (translated
  and same-size glyphs collide); not in `DEFAULT_RECIPES` (see `catalog.recipes.spectral`).

Thresholds and (bands, rows) were chosen by measurement (benchmarks/near_recall.py, results in
benchmarks/RESULTS_near.md): each default threshold holds every planted noise, brightness,
contrast and JPEG copy of 28x28 letters and lies far below distinct images; (b, r) is the
cheapest pair giving about 0.99 band-join recall against brute force at that threshold while
keeping distinct-pair collisions to tens of candidates per image at 220k images. 24 rows per
image and recipe is the band-key budget (220k images insert 5.3M rows per recipe).

Usage::

    sigs = PIXEL.signatures(images)        # float32 (n, H, W, C) in [0, 1] -> uint8 (n, S)
    keys = PIXEL.band_keys(sigs)           # int64 (n, bands), one SQL row per (band, key)
    d = PIXEL.distances(sigs[i], sigs[j])  # float64 (m,), verify candidates exactly
"""

from __future__ import annotations

from catalog.recipes.base import Recipe, Screen
from catalog.recipes.perceptual import PerceptualRecipe
from catalog.recipes.pixel import PixelRecipe
from catalog.recipes.shift import ShiftRecipe
from catalog.recipes.spectral import SpectralRecipe

PIXEL: Recipe = PixelRecipe(
    name="pixel-v1", bands=24, rows=24, radius=0.1, default_threshold=0.08, seed=1
)
PERCEPTUAL: Recipe = PerceptualRecipe(
    name="phash256-v2", bands=24, rows=10, radius=0.15, default_threshold=0.12, seed=1
)
PERCEPTUAL_V1: Recipe = PerceptualRecipe(
    name="phash256-v1", bands=24, rows=11, radius=0.15, default_threshold=0.12, seed=1
)
"""The default perceptual recipe until 2026-11-30; catalogs made with it keep using it. Its LSH
recall against brute force measured 0.988 on the demo letters, under the 0.99 target."""
SHIFT: Recipe = SpectralRecipe(
    name="fmag256-v1", bands=48, rows=10, radius=0.15, default_threshold=0.12, seed=1
)
PIXEL_SHIFT: Recipe = ShiftRecipe(
    name="pixshift-v1", bands=24, rows=18, radius=0.1, default_threshold=0.08, seed=1
)
DEFAULT_RECIPES: tuple[Recipe, ...] = (PIXEL, PERCEPTUAL)
OPTIONAL_RECIPES: tuple[Recipe, ...] = (PIXEL_SHIFT,)
"""Built-in recipes a catalog can be made with (`dsaudit ingest --recipe`), besides the defaults."""

_BY_NAME = {
    recipe.name: recipe for recipe in (*DEFAULT_RECIPES, *OPTIONAL_RECIPES, SHIFT, PERCEPTUAL_V1)
}


def get_recipe(name: str) -> Recipe:
    """The built-in recipe called ``name``.

    Raises:
        ValueError: if no recipe has that name.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise ValueError(f"unknown recipe '{name}'; known: {known}") from None


__all__ = [
    "DEFAULT_RECIPES",
    "PERCEPTUAL",
    "PERCEPTUAL_V1",
    "OPTIONAL_RECIPES",
    "PIXEL",
    "PIXEL_SHIFT",
    "PerceptualRecipe",
    "PixelRecipe",
    "Recipe",
    "Screen",
    "SHIFT",
    "ShiftRecipe",
    "SpectralRecipe",
    "get_recipe",
]
