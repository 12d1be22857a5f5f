"""`catalog.vectors`: the sort-based replacements for np.unique agree with it."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from catalog.vectors import unique, unique_rows

INTS = hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-5, 5))


@given(INTS)
def test_unique_equals_numpy(values: np.ndarray) -> None:
    np.testing.assert_array_equal(unique(values), np.unique(values))


@given(INTS, st.data())
def test_unique_rows_equals_numpy(first: np.ndarray, data: st.DataObject) -> None:
    second = data.draw(hnp.arrays(np.int64, first.size, elements=st.integers(-3, 3)))
    a, b = unique_rows(first, second)
    expected = np.unique(np.stack([first, second], axis=1), axis=0).reshape(-1, 2)
    np.testing.assert_array_equal(np.stack([a, b], axis=1).reshape(-1, 2), expected)
