"""`catalog.vectors`: the sort-based replacements for np.unique agree with it."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from catalog.vectors import unique

INTS = hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-5, 5))


@given(INTS)
def test_unique_equals_numpy(values: np.ndarray) -> None:
    np.testing.assert_array_equal(unique(values), np.unique(values))
