"""Tests of catalog.pixels: canonical digests, 0-1 scaling and the low-information flag.

Digests are tested three ways (STYLE.md, "Tests"): against a naive one-image reference, against
pinned golden values, and with hypothesis properties over memory layout, byte order, shape and
dtype.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from catalog.pixels import (
    DIGEST_SIZE,
    LOW_INFO_STD,
    canonical,
    check_images,
    colour_channels,
    digests,
    low_information,
    needs_observed_range,
    to_unit,
    value_range,
)

PROPERTY = settings(max_examples=60, deadline=None)

# Small image chunks: 1-4 images of 1-6 x 1-6 pixels.
SIDES = st.integers(1, 6)
COUNTS = st.integers(1, 4)
INT_DTYPES = st.sampled_from(["u1", "i1", "u2", "i2", "u4", "i4", "i8", "b1"])
FLOAT_DTYPES = st.sampled_from(["f2", "f4", "f8"])


def digest_of(images: np.ndarray) -> list[bytes]:
    return digests(canonical(images))


@st.composite
def chunks(draw: st.DrawFn, dtypes: st.SearchStrategy[str] = INT_DTYPES) -> np.ndarray:
    """An (n, H, W) or (n, H, W, C) chunk of any supported dtype."""
    shape = (draw(COUNTS), draw(SIDES), draw(SIDES))
    if draw(st.booleans()):
        shape = (*shape, draw(st.integers(1, 4)))
    return draw(arrays(np.dtype(draw(dtypes)), shape))


# ---------------------------------------------------------------------------------------------
# digests: reference implementation and golden values


def test_digest_is_blake2b_over_dtype_shape_and_c_order_bytes() -> None:
    image = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28)
    expected = hashlib.blake2b(b"|u1|28x28x1|" + image.tobytes(), digest_size=32).digest()
    assert digest_of(image) == [expected]
    assert DIGEST_SIZE == 32


def test_rgb_digest_header_names_the_channels() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(1, 2, 3, 3)
    little = image.astype("<u2").tobytes()
    expected = hashlib.blake2b(b"<u2|2x3x3|" + little, digest_size=32).digest()
    assert digest_of(image) == [expected]


# Golden values. Changing any of these changes the digest of every image ever stored, which
# breaks every existing catalog (exact-duplicate joins across versions would silently miss).
GOLDEN_UINT8 = [
    "122fac8c5df72232922e364aa0cc8a4dd69d0ecabc938f00d526e1d22a1cdda5",
    "41962292d3926d549610a5b523057e4f0e7a2755e608ac502c251495ee6de821",
]
GOLDEN_FLOAT32 = "f9de41ac7200cdecf989a144219b9daa910b8441364b8a6d1821511e56c985b5"
GOLDEN_RGB = "6ce0faa873b2c5da1b77b170a05affd569d004f991138e30a251b3087d7928ca"


def test_golden_digest_uint8_grey() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert [d.hex() for d in digest_of(images)] == GOLDEN_UINT8


def test_golden_digest_float32_grey() -> None:
    image = (np.arange(16 * 16, dtype=np.float32) / 255.0).reshape(1, 16, 16)
    assert digest_of(image)[0].hex() == GOLDEN_FLOAT32


def test_golden_digest_rgb() -> None:
    image = (np.arange(8 * 8 * 3, dtype=np.uint8) * 7).reshape(1, 8, 8, 3)
    assert digest_of(image)[0].hex() == GOLDEN_RGB


def test_golden_digest_survives_byte_order_and_layout() -> None:
    image = (np.arange(16 * 16, dtype=np.float32) / 255.0).reshape(1, 16, 16)
    swapped = np.asfortranarray(image.astype(">f4"))
    assert digest_of(swapped)[0].hex() == GOLDEN_FLOAT32


def test_digests_of_empty_chunk_is_empty() -> None:
    assert digest_of(np.zeros((0, 4, 4), dtype=np.uint8)) == []


# ---------------------------------------------------------------------------------------------
# digests: properties


@PROPERTY
@given(chunks())
def test_vectorised_digest_equals_one_image_at_a_time(images: np.ndarray) -> None:
    together = digest_of(images)
    alone = [digest_of(images[i : i + 1])[0] for i in range(images.shape[0])]
    assert together == alone
    assert all(len(d) == DIGEST_SIZE for d in together)


@PROPERTY
@given(chunks(st.one_of(INT_DTYPES, FLOAT_DTYPES)))
def test_digest_ignores_memory_order(images: np.ndarray) -> None:
    assert digest_of(np.asfortranarray(images)) == digest_of(np.ascontiguousarray(images))


@PROPERTY
@given(chunks(st.one_of(INT_DTYPES, FLOAT_DTYPES)))
def test_digest_of_strided_slice_equals_digest_of_copy(images: np.ndarray) -> None:
    # Interleave with junk and take every other column: a non-contiguous view of the same pixels.
    wide = np.repeat(images, 2, axis=2)
    wide[:, :, 1::2] = 0
    view = wide[:, :, ::2]
    assert not view.flags.c_contiguous or view.shape[2] == 1
    assert digest_of(view) == digest_of(images.copy())


@PROPERTY
@given(chunks(st.sampled_from(["u2", "i2", "i4", "u4", "i8", "f2", "f4", "f8"])))
def test_digest_ignores_byte_order(images: np.ndarray) -> None:
    big = images.astype(images.dtype.newbyteorder(">"))
    little = images.astype(images.dtype.newbyteorder("<"))
    assert digest_of(big) == digest_of(little)


@PROPERTY
@given(chunks())
def test_single_channel_axis_is_dropped(images: np.ndarray) -> None:
    grey = images if images.ndim == 3 else images[..., 0]
    assert digest_of(grey[..., None]) == digest_of(grey)


@PROPERTY
@given(st.integers(1, 3), arrays(np.uint8, (4 * 6,)))
def test_transposed_shape_with_same_bytes_differs(n: int, pixels: np.ndarray) -> None:
    flat = np.tile(pixels, (n, 1))
    tall, wide = flat.reshape(n, 4, 6), flat.reshape(n, 6, 4)
    assert tall.tobytes() == wide.tobytes()
    assert set(digest_of(tall)).isdisjoint(digest_of(wide))


@PROPERTY
@given(st.integers(1, 3), SIDES, SIDES, st.data())
def test_rgb_differs_from_grey_three_times_as_wide(
    n: int, height: int, width: int, data: st.DataObject
) -> None:
    rgb = data.draw(arrays(np.uint8, (n, height, width, 3)))
    grey = rgb.reshape(n, height, 3 * width)
    assert rgb.tobytes() == grey.tobytes()
    assert set(digest_of(rgb)).isdisjoint(digest_of(grey))


@PROPERTY
@given(chunks(st.just("u1")))
def test_same_bytes_of_another_dtype_differ(images: np.ndarray) -> None:
    signed = images.view(np.int8)
    assert set(digest_of(images)).isdisjoint(digest_of(signed))


@PROPERTY
@given(chunks(st.just("u2")))
def test_two_byte_pixels_differ_from_their_bytes_as_two_channels(images: np.ndarray) -> None:
    grey = images if images.ndim == 3 else images[..., :1]
    pairs = grey.reshape(*grey.shape[:3], 1).view(np.uint8)  # (n, H, W, 2)
    assert set(digest_of(grey)).isdisjoint(digest_of(pairs))


@PROPERTY
@given(chunks(FLOAT_DTYPES))
def test_negative_zero_equals_positive_zero(images: np.ndarray) -> None:
    zeroed = np.where(np.isnan(images), images, 0).astype(images.dtype)
    negative = -np.abs(zeroed)
    assert np.signbit(negative).any()
    assert digest_of(negative) == digest_of(zeroed)


@PROPERTY
@given(FLOAT_DTYPES, st.lists(st.integers(1, 2**20), min_size=1, max_size=12), st.booleans())
def test_every_nan_payload_gives_one_digest(dtype: str, payloads: list[int], sign: bool) -> None:
    float_dtype = np.dtype(dtype)
    uint = np.dtype(f"u{float_dtype.itemsize}")
    bits = np.finfo(float_dtype).bits
    mantissa_bits = np.finfo(float_dtype).nmant
    exponent = ((1 << (bits - 1 - mantissa_bits)) - 1) << mantissa_bits
    mantissa = np.array(payloads, dtype=np.uint64) % (1 << mantissa_bits)
    mantissa[mantissa == 0] = 1  # mantissa 0 would be infinity, not NaN
    raw = (exponent | mantissa | ((1 << (bits - 1)) if sign else 0)).astype(uint)
    nans = raw.view(float_dtype).reshape(1, 1, -1)
    assert np.isnan(nans).all()
    quiet = np.full_like(nans, np.nan)
    assert digest_of(nans) == digest_of(quiet)


def test_canonical_does_not_modify_its_input() -> None:
    images = np.array([[[-0.0, np.nan]]], dtype=np.float32)
    before = images.tobytes()
    canonical(images)
    assert images.tobytes() == before


def test_canonical_is_little_endian_contiguous_and_squeezed() -> None:
    images = np.asfortranarray(np.ones((2, 3, 4, 1), dtype=">i4"))
    out = canonical(images)
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype("<i4")
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, images[..., 0])


def test_different_pixels_differ() -> None:
    images = np.zeros((2, 5, 5), dtype=np.uint8)
    images[1, 2, 2] = 1
    first, second = digest_of(images)
    assert first != second


# ---------------------------------------------------------------------------------------------
# value_range


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.uint8, (0.0, 255.0)),
        (np.int8, (-128.0, 127.0)),
        (np.bool_, (0.0, 1.0)),
        (np.uint16, (0.0, 65535.0)),
        (np.float32, (0.0, 1.0)),
    ],
)
def test_value_range_without_observation(dtype: type, expected: tuple[float, float]) -> None:
    assert value_range(np.dtype(dtype)) == expected


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.bool_])
def test_narrow_types_ignore_the_observed_range(dtype: type) -> None:
    assert not needs_observed_range(np.dtype(dtype))
    assert value_range(np.dtype(dtype), (3.0, 4.0)) == value_range(np.dtype(dtype))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int64, np.float16, np.float64])
def test_wide_types_need_the_observed_range(dtype: type) -> None:
    assert needs_observed_range(np.dtype(dtype))


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        ((0.0, 1.0), (0.0, 1.0)),
        ((0.2, 0.7), (0.0, 1.0)),
        ((0.5, 0.5), (0.0, 1.0)),
        ((-0.5, 0.5), (-0.5, 0.5)),
        ((-0.4, 0.1), (-0.5, 0.5)),
        ((0.0, 255.0), (0.0, 255.0)),
        ((3.0, 200.0), (0.0, 255.0)),
        ((-1.0, 1.0), (-1.0, 1.0)),
        ((0.0, 1000.0), (0.0, 1000.0)),
        ((-3.0, 300.0), (-3.0, 300.0)),
        ((1000.0, 1000.0), (0.0, 1.0)),
        ((float("nan"), float("nan")), (0.0, 1.0)),
        ((-float("inf"), float("inf")), (0.0, 1.0)),
    ],
)
def test_float_range_snaps_to_the_first_convention_that_fits(
    observed: tuple[float, float], expected: tuple[float, float]
) -> None:
    assert value_range(np.dtype(np.float32), observed) == expected


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.int64, np.uint64])
def test_wide_integers_holding_8_bit_data_use_0_255(dtype: type) -> None:
    assert value_range(np.dtype(dtype), (0.0, 255.0)) == (0.0, 255.0)
    assert value_range(np.dtype(dtype), (12.0, 80.0)) == (0.0, 255.0)


def test_wide_integers_beyond_8_bits_use_the_full_range() -> None:
    assert value_range(np.dtype(np.uint16), (0.0, 4095.0)) == (0.0, 65535.0)
    assert value_range(np.dtype(np.int16), (-5.0, 100.0)) == (-32768.0, 32767.0)


# ---------------------------------------------------------------------------------------------
# to_unit


@pytest.mark.parametrize(
    ("shape", "unit_shape"),
    [((2, 5, 6), (2, 5, 6, 1)), ((2, 5, 6, 1), (2, 5, 6, 1)), ((2, 5, 6, 3), (2, 5, 6, 3))],
)
def test_to_unit_is_always_four_dimensional_float32(
    rng: np.random.Generator, shape: tuple[int, ...], unit_shape: tuple[int, ...]
) -> None:
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    unit = to_unit(images, value_range(images.dtype))
    assert unit.shape == unit_shape
    assert unit.dtype == np.float32


def test_to_unit_maps_uint8_ends_to_0_and_1() -> None:
    images = np.array([[[0, 51, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(to_unit(images, value_range(images.dtype))[0, 0, :, 0], [0, 0.2, 1])


def test_to_unit_maps_int8_and_bool() -> None:
    signed = np.array([[[-128, 127]]], dtype=np.int8)
    np.testing.assert_allclose(to_unit(signed, value_range(signed.dtype)).ravel(), [0, 1])
    flags = np.array([[[False, True]]])
    np.testing.assert_array_equal(to_unit(flags, value_range(flags.dtype)).ravel(), [0, 1])


def test_to_unit_maps_notmnist_normalisation() -> None:
    images = np.array([[[-0.5, 0.0, 0.5]]], dtype=np.float32)
    scale = value_range(images.dtype, (float(images.min()), float(images.max())))
    np.testing.assert_allclose(to_unit(images, scale).ravel(), [0, 0.5, 1])


def test_to_unit_maps_int64_holding_8_bit_data_like_uint8(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    wide = pixels.astype(np.int64)
    scale = value_range(wide.dtype, (float(wide.min()), float(wide.max())))
    np.testing.assert_array_equal(to_unit(wide, scale), to_unit(pixels, value_range(pixels.dtype)))


@PROPERTY
@given(chunks(st.one_of(INT_DTYPES, FLOAT_DTYPES)))
def test_to_unit_stays_in_0_1_and_has_no_nan(images: np.ndarray) -> None:
    with np.errstate(all="ignore"):  # float16 extremes overflow when differenced; clipped after
        finite = images[np.isfinite(images)] if images.dtype.kind == "f" else images
        observed = (float(finite.min()), float(finite.max())) if finite.size else None
        unit = to_unit(images, value_range(images.dtype, observed))
    assert unit.ndim == 4
    assert not np.isnan(unit).any()
    assert unit.min() >= 0.0
    assert unit.max() <= 1.0


def test_to_unit_turns_nan_into_zero_and_clips_infinities() -> None:
    images = np.array([[[np.nan, -np.inf, np.inf, 0.5]]], dtype=np.float32)
    np.testing.assert_array_equal(to_unit(images, (0.0, 1.0)).ravel(), [0, 0, 1, 0.5])


def test_to_unit_clips_values_outside_the_range() -> None:
    images = np.array([[[-2.0, 3.0]]], dtype=np.float64)
    np.testing.assert_array_equal(to_unit(images, (0.0, 1.0)).ravel(), [0, 1])


# ---------------------------------------------------------------------------------------------
# low_information


def unit_of(images: np.ndarray) -> np.ndarray:
    return to_unit(images, value_range(images.dtype))


def letter_l(size: int = 28) -> np.ndarray:
    """A thin white 'L' on black, like an MNIST/notMNIST glyph."""
    image = np.zeros((size, size), dtype=np.uint8)
    image[4:24, 8:11] = 255
    image[21:24, 8:20] = 255
    return image


def test_low_information_flags_blank_white_and_near_constant(rng: np.random.Generator) -> None:
    blank = np.zeros((28, 28), dtype=np.uint8)
    white = np.full((28, 28), 255, dtype=np.uint8)
    near_constant = rng.integers(2, 5, (28, 28), dtype=np.uint8)  # 3 +- 1
    noise = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    images = np.stack([blank, white, near_constant, noise, letter_l()])
    assert low_information(unit_of(images)).tolist() == [True, True, True, False, False]


def test_low_information_threshold_is_about_five_grey_levels() -> None:
    # Half the pixels at 0 and half at k: std = k / 2 on the 0-255 scale.
    def half_and_half(level: int) -> np.ndarray:
        image = np.zeros((10, 10), dtype=np.uint8)
        image[:5] = level
        return image

    below, above = half_and_half(8), half_and_half(12)  # std 4/255 and 6/255
    assert 4 / 255 < LOW_INFO_STD < 6 / 255
    assert low_information(unit_of(np.stack([below, above]))).tolist() == [True, False]


def test_low_information_of_a_single_bright_pixel_is_false() -> None:
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 14, 14] = 255
    assert not low_information(unit_of(image))[0]


def test_low_information_on_rgb_and_float_images(rng: np.random.Generator) -> None:
    grey_rgb = np.full((1, 8, 8, 3), 128, dtype=np.uint8)
    colourful = rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    flat_float = np.full((1, 8, 8), 0.25, dtype=np.float32)
    assert low_information(unit_of(grey_rgb)).tolist() == [True]
    assert low_information(unit_of(colourful)).tolist() == [False]
    assert low_information(to_unit(flat_float, (0.0, 1.0))).tolist() == [True]


def test_low_information_of_an_empty_chunk_is_empty() -> None:
    # Regression: reshape(0, -1) is ambiguous for numpy, so an empty chunk used to raise.
    assert low_information(np.zeros((0, 28, 28, 1), dtype=np.float32)).shape == (0,)


# ---------------------------------------------------------------------------------------------
# check_images


WHERE = "mnist.npz: array 'x_train'"


@pytest.mark.parametrize(
    "shape", [(5, 28, 28), (5, 28, 28, 1), (5, 28, 28, 2), (5, 32, 32, 3), (5, 8, 8, 4), (0, 2, 2)]
)
def test_check_images_accepts_supported_shapes(shape: tuple[int, ...]) -> None:
    check_images(np.zeros(shape, dtype=np.uint8), WHERE)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.int64, np.float16, np.float64])
def test_check_images_accepts_supported_dtypes(dtype: type) -> None:
    check_images(np.zeros((2, 3, 3), dtype=dtype), WHERE)


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (np.zeros((2, 3, 3), dtype=np.complex64), "complex64"),
        (np.zeros((2, 3, 3), dtype=object), "object"),
        (np.zeros((2, 3, 3), dtype="U3"), "<U3"),
        (np.zeros((2, 3, 3), dtype="S3"), "|S3"),
        (np.zeros((2, 3, 3), dtype="datetime64[s]"), "datetime64"),
        (np.zeros((28, 28), dtype=np.uint8), "(28, 28)"),
        (np.zeros((28,), dtype=np.uint8), "(28,)"),
        (np.zeros((2, 3, 4, 5, 6), dtype=np.uint8), "(2, 3, 4, 5, 6)"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), "5 channels"),
        (np.zeros((2, 8, 8, 0), dtype=np.uint8), "0 channels"),
        (np.zeros((2, 0, 8), dtype=np.uint8), "no pixels"),
        (np.zeros((2, 8, 0, 3), dtype=np.uint8), "no pixels"),
    ],
)
def test_check_images_rejects_with_a_message_naming_the_array(
    images: np.ndarray, problem: str
) -> None:
    with pytest.raises(ValueError) as caught:
        check_images(images, WHERE)
    message = str(caught.value)
    assert message.startswith(WHERE + ":")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(("channels", "kept"), [(1, 1), (2, 1), (3, 3), (4, 3)])
def test_colour_channels_leave_alpha_out(channels: int, kept: int) -> None:
    unit = np.arange(2 * 3 * 3 * channels, dtype=np.float32).reshape(2, 3, 3, channels)
    colour = colour_channels(unit)
    assert colour.shape == (2, 3, 3, kept)
    assert np.array_equal(colour, unit[..., :kept])
    assert np.shares_memory(colour, unit)
