"""Piecewise-linear interpolation of multi-column samples, value for value as scipy's ``interp1d``.

navsim and nuplan interpolate paths, tracks and ego states with ``scipy.interpolate.interp1d(x, y, axis=0)``
(kind linear). For a 2-D ``y`` scipy evaluates it in ``interp1d._call_linear``: the segment of each query is
``searchsorted(x, query)`` (side left) clipped to [1, n - 1], and the value is ``slope * (query - x_lo) + y_lo``
with ``slope = (y_hi - y_lo) / (x_hi - x_lo)``. At a query equal to an inner sample that is the segment ending
there, which differs from ``np.interp`` (the segment starting there) where progress repeats at lane joins.
:class:`LinearInterpolator` does the same operations on plain NumPy, without interp1d's per-call overhead
(about 15 us a call, paid some hundred times per PDM-Closed proposal set).
"""

from __future__ import annotations

import numpy as np


class LinearInterpolator:
    """``interp1d(x, y, axis=0)`` (linear, bounds error) for y [n, ...]; call with queries of any shape."""

    def __init__(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 1 or len(x) < 2 or len(y) != len(x):
            raise ValueError(f"need at least 2 samples x [n] and y [n, ...]; got x {x.shape}, y {y.shape}")
        if np.any(x[1:] < x[:-1]):  # interp1d sorts unsorted samples with a stable sort
            order = np.argsort(x, kind="mergesort")
            x, y = x[order], y[order]
        self._x = x
        self._value_shape = y.shape[1:]
        self._y = y.reshape(len(x), -1)
        # per segment, the slope scipy computes per query (same operands, same result); repeated x give inf / nan
        # there as in scipy, where no query lands
        with np.errstate(divide="ignore", invalid="ignore"):
            self._slope = (self._y[1:] - self._y[:-1]) / (x[1:] - x[:-1])[:, None]

    def __call__(self, query) -> np.ndarray:
        query = np.asarray(query, dtype=np.float64)
        flat = query.reshape(-1)
        below, above = flat < self._x[0], flat > self._x[-1]
        if below.any() or above.any():
            bad = flat[np.argmax(below)] if below.any() else flat[np.argmax(above)]
            raise ValueError(f"query {bad} is outside the interpolation range [{self._x[0]}, {self._x[-1]}]")
        lo = np.searchsorted(self._x, flat).clip(1, len(self._x) - 1) - 1
        values = self._slope[lo] * (flat - self._x[lo])[:, None] + self._y[lo]
        return values.reshape(query.shape + self._value_shape)
