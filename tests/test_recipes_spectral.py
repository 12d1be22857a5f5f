"""The spectral family (SHIFT, "fmag256-v1"), and faint images under the default recipes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from catalog import synth
from catalog.recipes import (
    DEFAULT_RECIPES,
    PERCEPTUAL,
    PIXEL,
    SHIFT,
    SpectralRecipe,
    get_recipe,
    minhash,
    spectral,
)
from tests.test_recipes import datasketch_minhash, golden_images, sha

# --- registry, pinned values ---------------------------------------------------------------------

GOLDEN = {
    "gray28": ("44f3b03d903c25a5", "c0df2acddde72609"),
    "rgb32": ("66c8ff1da119e058", "8d735ab9bcb74cde"),
    "rgb50x70": ("afdba465668a143b", "ee43c2357a6cee71"),
}
FINGERPRINT = "2931310a4fedb83a6495f6a33c0000aadafabaf50320bd7bd5a823a0066ab7cb"


def test_registry() -> None:
    assert SHIFT not in DEFAULT_RECIPES
    assert get_recipe("fmag256-v1") is SHIFT
    assert isinstance(SHIFT, SpectralRecipe) and SHIFT.family == "spectral"
    assert SHIFT.signature_bytes == 32
    assert (SHIFT.bands, SHIFT.rows) == (48, 10)
    assert (SHIFT.default_threshold, SHIFT.radius) == (0.12, 0.15)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_signatures_and_band_keys(name: str) -> None:
    sigs = SHIFT.signatures(golden_images()[name])
    assert (sha(sigs), sha(SHIFT.band_keys(sigs))) == GOLDEN[name]


def test_golden_fingerprint_and_params() -> None:
    assert SHIFT.fingerprint() == FINGERPRINT
    assert SHIFT.params()["spectral"]["trig"].endswith(spectral.TRIG_SHA256)


def test_pinned_frequencies_and_matrices() -> None:
    freq = spectral.frequencies()
    assert freq.shape == (256, 2) and len({tuple(f) for f in freq}) == 256
    a, b = freq[:, 0], freq[:, 1]
    # Half plane: f and -f never both present; DC excluded; radius about 3.2 cycles per image.
    assert ((b > 0) | ((b == 0) & (a > 0))).all()
    assert np.sqrt((freq**2).sum(axis=1)).max() / spectral.STEP_DEN < 3.21
    vert, horiz, row, col = spectral.trig_matrices()
    nu, nv = vert.shape[0] // 2, horiz.shape[0] // 2
    assert vert.shape == (2 * nu, spectral.SIZE) and horiz.shape == (2 * nv, spectral.SIZE)
    zero = int(np.flatnonzero(np.unique(a) == 0)[0])
    assert (vert[zero] == spectral.TRIG_SCALE).all() and (vert[nu + zero] == 0).all()
    np.testing.assert_array_equal(np.unique(a)[row], a)
    np.testing.assert_array_equal(np.unique(b)[col], b)


def test_minhash_equals_datasketch() -> None:
    sigs = SHIFT.signatures(golden_images()["gray28"])
    ours = SHIFT.minhash(sigs)
    for i in range(len(sigs)):
        np.testing.assert_array_equal(ours[i], datasketch_minhash(sigs[i], SHIFT, batch=True))


# --- vectorised equals a naive loop --------------------------------------------------------------


def test_centre_powers_and_bits_equal_python_integer_loop() -> None:
    rng = np.random.default_rng(4)
    gray = rng.integers(0, 4081, (3, spectral.SIZE, spectral.SIZE))
    gray[2] = 0
    gray[2, 3:9, 5:7] = 4080  # a sparse glyph-like image: median 0
    x = spectral.centred(gray)
    power = spectral.powers(x)
    bits = spectral.hash_bits(power)
    vert, horiz, row, col = spectral.trig_matrices()
    nu, nv = vert.shape[0] // 2, horiz.shape[0] // 2
    for i in range(len(gray)):
        values = [int(v) for v in gray[i].ravel()]
        median = sorted(values)[127]
        assert (x[i] == gray[i] - median).all()
        img = [[int(v) for v in r] for r in x[i]]
        expected = []
        for k in range(256):
            ca, sa = vert[row[k]].tolist(), vert[nu + row[k]].tolist()
            cb, sb = horiz[col[k]].tolist(), horiz[nv + col[k]].tolist()
            re = sum(
                img[y][z] * (ca[y] * cb[z] - sa[y] * sb[z])
                for y in range(spectral.SIZE)
                for z in range(spectral.SIZE)
            )
            im = -sum(
                img[y][z] * (sa[y] * cb[z] + ca[y] * sb[z])
                for y in range(spectral.SIZE)
                for z in range(spectral.SIZE)
            )
            re, im = (re + (1 << 15)) >> 16, (im + (1 << 15)) >> 16  # floor shift, as numpy's
            expected.append(re * re + im * im)
        assert power[i].tolist() == expected
        cut = sorted(expected)[127]
        want = np.packbits(np.array([p > cut for p in expected], np.uint8))
        np.testing.assert_array_equal(bits[i], want)


def test_batch_composition_does_not_change_values() -> None:
    images = golden_images()["gray28"]
    together = SHIFT.signatures(images)
    alone = np.concatenate([SHIFT.signatures(images[i : i + 1]) for i in range(len(images))])
    np.testing.assert_array_equal(together, alone)


# --- properties ----------------------------------------------------------------------------------

small_shapes = st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), shape=small_shapes)
def test_identical_images_share_every_band_key_and_distance_is_a_fraction(
    data: st.DataObject, shape: tuple[int, int, int]
) -> None:
    image = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    other = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    sigs = SHIFT.signatures(np.stack([image, other, image]))
    keys = SHIFT.band_keys(sigs)
    np.testing.assert_array_equal(keys[0], keys[2])
    d = SHIFT.distances(sigs[[0, 0, 1]], sigs[[2, 1, 0]])
    assert d[0] == 0.0 and d[1] == d[2]
    assert ((d >= 0) & (d <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 11), dy=st.integers(-5, 5), dx=st.integers(-5, 5))
def test_translated_copies_have_the_same_code(k: int, dy: int, dx: int) -> None:
    # At 32x32 an even shift is a whole-pixel shift of the 16x16 grid; with the glyph inside
    # the canvas it only changes the phase of the Fourier transform, never its magnitude.
    # Rounding Re and Im can break near-ties with the median, so allow two bits in 256 (a
    # single-pixel image, whose powers all tie, would be noise: not a glyph).
    glyph = as_float(demo_letters())[k, ::2, ::2, 0][:12, :12]
    images = np.zeros((2, 32, 32, 1), np.float32)
    images[0, 10:22, 10:22, 0] = glyph
    images[1, 10 + 2 * dy : 22 + 2 * dy, 10 + 2 * dx : 22 + 2 * dx, 0] = glyph
    sigs = SHIFT.signatures(images)
    assert SHIFT.distances(sigs[:1], sigs[1:])[0] <= 2 / 256


def test_constant_images_do_not_crash() -> None:
    images = np.stack([np.full((20, 30, 1), v, np.float32) for v in (0.0, 0.5, 1.0)])
    sigs = SHIFT.signatures(images)
    assert not sigs.any()  # every power is 0: no bit exceeds the median
    assert SHIFT.band_keys(sigs).shape == (3, SHIFT.bands)
    assert SHIFT.signatures(np.zeros((0, 5, 5, 1), np.float32)).shape == (0, 32)


# --- the planted transformations of the product demo ---------------------------------------------


def demo_letters() -> np.ndarray:
    images, _ = synth.render_letters(12, np.random.default_rng(3))
    return images


DEMO_TRANSFORMS = {
    "noise": lambda x: synth.gaussian_noise(x, 0.02, np.random.default_rng(1)),
    "brighter": lambda x: synth.brightness(x, 0.05),
    "darker": lambda x: synth.brightness(x, -0.05),
    "contrast": lambda x: synth.contrast(x, 1.1),
    "jpeg75": lambda x: synth.jpeg(x, 75),
    "shift_right": lambda x: synth.shift(x, 1, 0),
    "shift_left": lambda x: synth.shift(x, -1, 0),
    "shift_down": lambda x: synth.shift(x, 0, 1),
    "shift_up": lambda x: synth.shift(x, 0, -1),
    "down_up": lambda x: synth.down_up(x, 2),
}


def as_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255)[..., None]


@pytest.mark.parametrize("name", sorted(DEMO_TRANSFORMS))
def test_shift_recipe_finds_the_demo_copies(name: str) -> None:
    letters = demo_letters()
    base = SHIFT.signatures(as_float(letters))
    copy = SHIFT.signatures(as_float(DEMO_TRANSFORMS[name](letters)))
    d = SHIFT.distances(base, copy)
    assert d.max() <= SHIFT.default_threshold, d
    assert (SHIFT.band_keys(base) == SHIFT.band_keys(copy)).any(axis=1).all()


def test_horizontal_flip_is_a_documented_non_goal() -> None:
    letters = demo_letters()
    d = SHIFT.distances(
        SHIFT.signatures(as_float(letters)), SHIFT.signatures(as_float(synth.hflip(letters)))
    )
    # Mirroring mirrors the magnitude spectrum; symmetric letters (A, H, I) stay close.
    assert np.median(d) > SHIFT.default_threshold


# --- faint images ---------------------------------------------------------------------------------


def test_faint_copies_keep_their_perceptual_code() -> None:
    letters = as_float(demo_letters())
    faint = letters * 0.15  # a nearly black copy: same shapes, contrast about a tenth
    sigs = PIXEL.signatures(np.concatenate([letters, faint]))
    contrast = PIXEL.contrast(sigs)
    assert (contrast[: len(letters)] >= 0.1).all() and (contrast[len(letters) :] < 0.1).all()
    # The perceptual bits are scale-free: brightened, contrast and mildly noisy copies of the
    # faint images keep their code, so their pairs also come from phash256-v1. (JPEG q75 of
    # images this faint measures up to 0.133: see benchmarks/RESULTS_near.md for real ones.)
    q = np.rint(faint[..., 0] * 255).astype(np.uint8)
    a = PERCEPTUAL.signatures(faint)
    noisy = synth.gaussian_noise(q, 0.005, np.random.default_rng(1))
    for copy in (synth.brightness(q, 0.05), synth.contrast(q, 1.1), noisy):
        b = PERCEPTUAL.signatures(as_float(copy))
        assert PERCEPTUAL.distances(a, b).max() <= PERCEPTUAL.default_threshold


def test_band_keys_use_the_minhash_of_the_code() -> None:
    sigs = SHIFT.signatures(golden_images()["gray28"])
    values = minhash.minhash_codes(sigs, SHIFT.num_perm, SHIFT.seed)
    np.testing.assert_array_equal(
        SHIFT.band_keys(sigs),
        minhash.band_keys_from_minhash(
            values, SHIFT.bands, SHIFT.rows, np.zeros(len(sigs), np.uint64)
        ),
    )
