"""Comfort metrics over batches of state arrays (navsim `scoring/pdm_comfort_metrics.py`, v1.1 and v2).

The devkit's quirks are kept: yaw rate and yaw acceleration always use the Savitzky-Golay default window 5
(the `window_length` argument is ignored there); v1.1 filters acceleration over the full horizon and reads it at
the rear axle, v2 reads longitudinal / lateral acceleration at the vehicle center with window 8.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import savgol_filter

from navsim_agents.scoring import constants as C
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import center_states

_DECIMALS = 8


@lru_cache(maxsize=64)
def _savgol_matrix(n: int, window: int, poly: int, deriv: int, delta: float) -> np.ndarray:
    """The Savitzky-Golay filter (mode 'interp') over n samples as a linear operator [n, n]."""
    return savgol_filter(np.eye(n), window_length=window, polyorder=poly, deriv=deriv, delta=delta, axis=0)


def _savgol(y: np.ndarray, window: int, poly: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    return y @ _savgol_matrix(y.shape[-1], window, poly, deriv, float(delta)).T


def _acceleration(states: np.ndarray, coordinate: str, *, version: str, window: int = 8) -> np.ndarray:
    n_time = states.shape[1]
    if coordinate == "magnitude":
        acc = np.hypot(states[..., S.ACCELERATION_X], states[..., S.ACCELERATION_Y])
    else:
        src = center_states(states) if version == "v2" else states
        acc = src[..., S.ACCELERATION_X if coordinate == "x" else S.ACCELERATION_Y]
    acc = _savgol(acc, min(window, n_time), 2)
    return np.round(acc, decimals=_DECIMALS)


def _derivative(y: np.ndarray, times: np.ndarray, *, window: int = 5, poly: int = 2, deriv: int = 1) -> np.ndarray:
    window = min(window, len(times))
    dx = np.diff(times).mean()
    return _savgol(y, window, poly, deriv, dx)


def _jerk(states: np.ndarray, coordinate: str, times: np.ndarray, *, version: str, window: int = 15) -> np.ndarray:
    acc = _acceleration(states, coordinate, version=version)
    return np.round(_derivative(acc, times, window=min(window, states.shape[1])), decimals=_DECIMALS)


def _unwrap(headings: np.ndarray) -> np.ndarray:
    adjustments = np.zeros_like(headings)
    adjustments[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / (2 * np.pi)), axis=-1)
    return headings - 2 * np.pi * adjustments


def _yaw_derivative(states: np.ndarray, times: np.ndarray, *, deriv: int = 1, poly: int = 2) -> np.ndarray:
    # window stays at the default 5 as in the devkit
    rate = _derivative(_unwrap(states[..., S.HEADING]), times, deriv=deriv, poly=poly)
    return np.round(rate, decimals=_DECIMALS)


def _within(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.all((values > low) & (values < high), axis=-1)


def ego_is_comfortable(states: np.ndarray, times: np.ndarray, *, version: str = "v2") -> np.ndarray:
    """Per-proposal bool [B,6]: lon accel, lat accel, jerk, lon jerk, yaw accel, yaw rate within bounds."""
    n_time = states.shape[1]
    acc_window = n_time if version == "v1" else 8
    jerk_window = n_time if version == "v1" else 15
    lon = _acceleration(states, "x", version=version, window=acc_window)
    lat = _acceleration(states, "y", version=version, window=acc_window)
    jerk = _jerk(states, "magnitude", times, version=version, window=jerk_window)
    lon_jerk = _jerk(states, "x", times, version=version, window=jerk_window)
    yaw_acc = _yaw_derivative(states, times, deriv=2, poly=3)
    yaw_rate = _yaw_derivative(states, times)
    return np.stack([
        _within(lon, C.MIN_LON_ACCEL, C.MAX_LON_ACCEL),
        _within(lat, -C.MAX_ABS_LAT_ACCEL, C.MAX_ABS_LAT_ACCEL),
        _within(jerk, -C.MAX_ABS_MAG_JERK, C.MAX_ABS_MAG_JERK),
        _within(lon_jerk, -C.MAX_ABS_LON_JERK, C.MAX_ABS_LON_JERK),
        _within(yaw_acc, -C.MAX_ABS_YAW_ACCEL, C.MAX_ABS_YAW_ACCEL),
        _within(yaw_rate, -C.MAX_ABS_YAW_RATE, C.MAX_ABS_YAW_RATE),
    ], axis=-1)


def _ec_features(states: np.ndarray, times: np.ndarray) -> list[np.ndarray]:
    return [
        _acceleration(states, "magnitude", version="v2"),
        _jerk(states, "magnitude", times, version="v2"),
        _yaw_derivative(states, times),
        # devkit passes deriv_order=2 with the default poly order 2 here
        _yaw_derivative(states, times, deriv=2, poly=2),
    ]


def two_frame_extended_comfort(states_1: np.ndarray, states_2: np.ndarray, times: np.ndarray) -> np.ndarray:
    """v2 EC: RMS differences of acceleration, jerk, yaw rate, yaw accel between two overlapping state runs."""
    f1, f2 = _ec_features(states_1, times), _ec_features(states_2, times)
    thresholds = (C.EC_ACCELERATION_THRESHOLD, C.EC_JERK_THRESHOLD, C.EC_YAW_RATE_THRESHOLD,
                  C.EC_YAW_ACCEL_THRESHOLD)
    ok = [np.sqrt(np.mean((a - b) ** 2, axis=1)) <= t for a, b, t in zip(f1, f2, thresholds, strict=False)]
    return np.logical_and.reduce(ok)
