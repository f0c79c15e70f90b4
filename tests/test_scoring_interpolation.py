"""LinearInterpolator against scipy's interp1d (what navsim / nuplan call) and values by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d

from navsim_agents.scoring.interpolation import LinearInterpolator

# a path whose progress repeats where two lanes join (x = 2 twice, with different headings)
X = np.array([0.0, 1.0, 2.0, 2.0, 4.0])
Y = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.1], [2.0, 0.0, 0.2], [2.0, 0.0, 1.0], [2.0, 2.0, 1.0]])


def test_values_by_hand_and_the_segment_ending_at_a_repeated_sample():
    f = LinearInterpolator(X, Y)
    assert np.array_equal(f(np.array([0.5])), [[0.5, 0.0, 0.05]])
    assert np.allclose(f(np.array([3.0])), [[2.0, 1.0, 1.0]])
    # at x = 2 the segment ending there (1 -> 2): heading 0.2, not the joining lane's 1.0 (np.interp would give 1.0)
    assert np.allclose(f(np.array([2.0])), [[2.0, 0.0, 0.2]])
    assert np.interp(2.0, X, Y[:, 2]) == 1.0


@pytest.mark.parametrize("query", [np.array([0.0, 1e-5, 0.3, 1.0, 1.999, 2.0, 2.5, 4.0]), np.array(1.5),
                                   np.array([[0.25, 3.75], [2.0, 1.0]])])
def test_equals_interp1d_bit_for_bit(query):
    expected = interp1d(X, Y, axis=0)(query)
    ours = LinearInterpolator(X, Y)(query)
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)


def test_unsorted_samples_and_one_column_follow_interp1d():
    x = np.array([3.0, 0.0, 1.0])
    y = np.array([[3.0], [0.0], [2.0]])
    q = np.array([0.5, 2.0])
    assert np.array_equal(LinearInterpolator(x, y)(q), interp1d(x, y, axis=0)(q))


def test_outside_the_range_names_the_query():
    with pytest.raises(ValueError, match="4.5"):
        LinearInterpolator(X, Y)(np.array([1.0, 4.5]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        LinearInterpolator(np.array([1.0]), np.array([[1.0]]))
