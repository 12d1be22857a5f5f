"""`catalog.vectors`: the sort-based replacements for np.unique agree with it, and `take_rows`
with fancy indexing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from catalog.vectors import take_rows, unique

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


@given(
    hnp.arrays(
        st.sampled_from([np.uint8, np.int16, np.int64]),
        st.tuples(st.integers(1, 40), st.integers(0, 70)),
        elements=st.integers(0, 120),
    ),
    st.data(),
)
def test_take_rows_equals_fancy_indexing(array: np.ndarray, data: st.DataObject) -> None:
    n = array.shape[0]
    index = data.draw(hnp.arrays(np.int64, st.integers(0, 50), elements=st.integers(-n, n - 1)))
    got = take_rows(array, index)
    np.testing.assert_array_equal(got, array[index])
    assert got.dtype == array.dtype and got.shape == (index.size, array.shape[1])


def test_take_rows_rejects_an_index_out_of_range_or_a_mask() -> None:
    with pytest.raises(IndexError):
        take_rows(np.zeros((3, 2), np.uint8), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer row numbers"):
        take_rows(np.zeros((3, 2), np.uint8), np.array([True, False, True]))
