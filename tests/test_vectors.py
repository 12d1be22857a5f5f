"""`catalog.vectors`: the sort-based replacements for np.unique agree with it."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from catalog.vectors import unique

INTS = hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-5, 5))
IDS = hnp.arrays(
    st.sampled_from([np.int64, np.int32, np.uint16]),
    st.integers(0, 300),
    elements=st.integers(0, 3000),
)


@given(INTS)
def test_unique_equals_numpy(values: np.ndarray) -> None:
    np.testing.assert_array_equal(unique(values), np.unique(values))


@given(IDS)
def test_unique_of_dense_ids_takes_the_mask_and_equals_numpy(values: np.ndarray) -> None:
    got = unique(values)
    np.testing.assert_array_equal(got, np.unique(values))
    assert got.dtype == values.dtype


def test_unique_of_sparse_ids_sorts() -> None:
    values = np.array([2**40, 5, 2**40, 7, 5], np.int64)
    np.testing.assert_array_equal(unique(values), [5, 7, 2**40])


@given(INTS)
def test_unique_in_place_equals_numpy(values: np.ndarray) -> None:
    expected = np.unique(values)
    mine = values.copy()
    np.testing.assert_array_equal(unique(mine, in_place=True), expected)
    # Sorted where it sorted; untouched where dense non-negative values took the mask.
    assert np.array_equal(mine, np.sort(values)) or np.array_equal(mine, values)
    negative = np.array([3, -1, 3, -1, 2], np.int64)
    unique(negative, in_place=True)
    np.testing.assert_array_equal(negative, [-1, -1, 2, 3, 3])
