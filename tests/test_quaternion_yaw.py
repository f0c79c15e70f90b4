"""One quaternion yaw for the scene loader and the metric cache: pyquaternion's ``yaw_pitch_roll[0]``.

pyquaternion (the library NAVSIM and nuPlan call) defines, for a normalised (w, x, y, z),
``yaw = atan2(2 (w z - x y), 1 - 2 (y^2 + z^2))``. The expected values below are worked out by hand from it.
"""

import math

import numpy as np

from navsim_agents.data.dataclasses import quaternion_yaw, yaw_quaternion
from navsim_agents.scoring.metric_cache import frame_ego_state

# (1, 0.1, 0.2, 0.3) / sqrt(1.14): 2 (w z - x y) = 2 (0.3 - 0.02) / 1.14 = 0.56 / 1.14 and
# 1 - 2 (y^2 + z^2) = 1 - 2 (0.04 + 0.09) / 1.14 = 0.88 / 1.14, so yaw = atan(0.56 / 0.88) = atan(7 / 11).
# The opposite sign of the x y term would give atan(0.64 / 0.88) = atan(8 / 11).
TILTED = (1.0, 0.1, 0.2, 0.3)
TILTED_YAW = math.atan(7 / 11)


def test_tilted_rotation_follows_pyquaternion():
    assert math.isclose(float(quaternion_yaw(TILTED)), TILTED_YAW, rel_tol=1e-12)
    assert abs(TILTED_YAW - math.atan(8 / 11)) > 0.06  # the sign of x y matters here


def test_flat_rotations_give_their_angle():
    # about z only: q = (cos(t/2), 0, 0, sin(t/2)) -> 2 w z = sin t, 1 - 2 z^2 = cos t, yaw = t
    angles = np.array([0.0, 0.7, -2.5, math.pi - 1e-3])
    quats = np.stack([np.cos(angles / 2), 0 * angles, 0 * angles, np.sin(angles / 2)], axis=-1) * 2.5
    np.testing.assert_allclose(quaternion_yaw(quats), angles, rtol=1e-12, atol=1e-15)


def test_metric_cache_ego_state_uses_the_same_yaw():
    frame = {"ego2global_translation": [10.0, -4.0, 0.5], "ego2global_rotation": list(TILTED),
             "ego_dynamic_state": [3.0, 0.5, 0.2, 0.0]}
    state = frame_ego_state(frame)
    assert math.isclose(state[2], TILTED_YAW, rel_tol=1e-12)
    assert tuple(state[:2]) == (10.0, -4.0)


def test_yaw_quaternion_round_trips():
    for yaw in (0.0, 0.7, -2.5, math.pi - 1e-3):
        q = yaw_quaternion(yaw)
        assert math.isclose(float(np.linalg.norm(q)), 1.0, rel_tol=1e-12)
        assert math.isclose(float(quaternion_yaw(q)), yaw, rel_tol=1e-12)
