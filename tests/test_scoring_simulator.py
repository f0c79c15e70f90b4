"""Kinematic bicycle, LQR tracker, pose interpolation and comfort: values from their definitions."""

from __future__ import annotations

import numpy as np

from navsim_agents.scoring.comfort import ego_is_comfortable
from navsim_agents.scoring.constants import LQR_JERK_PENALTY, STATE_SIZE
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.pdm_score import interpolate_poses
from navsim_agents.scoring.pdm_simulator import (
    BatchKinematicBicycleModel,
    jerk_penalty_matrix,
    simulate_proposals,
    velocity_curvature_profiles,
)
from rap_backbone.nuplan_rig import PACIFICA


def _fit_circle(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares circle (Kasa fit): center, radius."""
    a = np.column_stack([2 * points[:, 0], 2 * points[:, 1], np.ones(len(points))])
    b = (points**2).sum(1)
    cx, cy, c = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.array([cx, cy]), float(np.sqrt(c + cx**2 + cy**2))


def test_constant_steering_drives_circle_of_radius_wheelbase_over_tan_steer():
    steer, speed, dt = 0.2, 5.0, 0.01
    state = np.zeros((1, STATE_SIZE))
    state[0, S.VELOCITY_X] = speed
    state[0, S.STEERING_ANGLE] = steer
    model = BatchKinematicBicycleModel()
    points = []
    for _ in range(3000):  # more than one full lap
        state = model.propagate(state, np.zeros(1), np.zeros(1), dt)
        points.append(state[0, :2].copy())
    _, radius = _fit_circle(np.array(points))
    expected = PACIFICA.wheel_base / np.tan(steer)
    # Euler steps of length v*dt turning by w*dt lie on a circle of radius (v dt / 2) / sin(w dt / 2)
    euler = (speed * dt / 2) / np.sin(speed * np.tan(steer) / PACIFICA.wheel_base * dt / 2)
    assert abs(radius - euler) < 1e-6
    assert abs(radius - expected) / expected < 1e-4


def test_lqr_tracks_straight_constant_speed_reference_with_near_zero_error():
    speed, heading = 10.0, 0.3
    t = np.arange(41) * 0.1
    ref = np.zeros((1, 41, STATE_SIZE))
    ref[0, :, 0] = 100.0 + speed * t * np.cos(heading)
    ref[0, :, 1] = -50.0 + speed * t * np.sin(heading)
    ref[0, :, 2] = heading
    initial = ref[0, 0].copy()
    initial[S.VELOCITY_X] = speed
    sim = simulate_proposals(ref, initial)
    err = np.linalg.norm(sim[0, :, :2] - ref[0, :, :2], axis=-1)
    assert err.max() < 1e-6
    assert np.allclose(sim[0, :, S.VELOCITY_X], speed, atol=1e-6)
    assert np.allclose(sim[0, :, S.HEADING], heading, atol=1e-9)


def test_jerk_penalty_matrix_is_the_devkits_overwritten_difference_matrix():
    # navsim batch_lqr_utils._make_banded_difference_matrix: I written into columns 1.., then -I written over
    # columns ..n-1, which erases every +1 but the last row's
    expected = np.array([[-1.0, 0.0, 0.0, 0.0],
                         [0.0, -1.0, 0.0, 0.0],
                         [0.0, 0.0, -1.0, 1.0]])
    assert np.array_equal(jerk_penalty_matrix(3), expected)


def test_velocity_fit_minimises_the_devkits_penalised_least_squares():
    # 5 poses on a straight line at heading h with Euler kinematics: speed v_k = 3 + 2 k dt, displacement v_k dt.
    # Unknowns x = (v0, a0, a1, a2); displacement k = dt v0 + dt^2 (a0 + ... + a_{k-1}) along h.
    # The devkit's penalty rows are -a0 and a2 - a1 (not a1 - a0, a2 - a1), so the constant acceleration 2 is
    # not a zero-cost fit: the solution of the augmented system [A; sqrt(lam) R] x = [y; 0] is the expectation.
    dt, h, lam = 0.1, 0.4, LQR_JERK_PENALTY
    speeds = 3.0 + 2.0 * np.arange(4) * dt
    steps = np.concatenate([[0.0], np.cumsum(speeds * dt)])
    poses = np.stack([10.0 + steps * np.cos(h), -4.0 + steps * np.sin(h), np.full(5, h)], axis=-1)[None]
    a = np.zeros((8, 4))
    y = np.zeros(8)
    for k in range(4):
        for row, unit in ((2 * k, np.cos(h)), (2 * k + 1, np.sin(h))):
            a[row, 0] = dt * unit
            a[row, 1:k + 1] = dt**2 * unit
            y[row] = speeds[k] * dt * unit
    r = np.array([[0.0, -1.0, 0.0, 0.0],
                  [0.0, 0.0, -1.0, 1.0]])
    x = np.linalg.lstsq(np.vstack([a, np.sqrt(lam) * r]), np.concatenate([y, np.zeros(2)]), rcond=None)[0]
    expected = x[0] + np.concatenate([[0.0], np.cumsum(x[1:] * dt)])
    velocity, _ = velocity_curvature_profiles(poses, dt)
    assert np.allclose(velocity[0], expected, atol=1e-9)
    # and the penalty is visible: a true difference penalty would return the exact speeds 3.0, 3.2, 3.4, 3.6
    assert np.abs(velocity[0] - speeds).max() > 1e-2


def test_interpolation_is_linear_between_half_second_poses():
    initial = np.array([0.0, 0.0, 0.0])
    poses = np.stack([np.arange(1, 9) * 5.0, np.zeros(8), np.zeros(8)], axis=-1)
    out = interpolate_poses(initial, poses)
    assert out.shape == (41, 3)
    assert np.allclose(out[:, 0], np.arange(41) * 1.0)


def test_comfort_straight_passes_and_zigzag_fails():
    t = np.arange(41) * 0.1
    states = np.zeros((2, 41, STATE_SIZE))
    states[:, :, 0] = 10.0 * t
    states[:, :, S.VELOCITY_X] = 10.0
    states[1, :, S.HEADING] = 0.3 * (-1.0) ** np.arange(41)  # heading flips every 0.1 s
    for version in ("v1", "v2"):
        ok = ego_is_comfortable(states, t, version=version).all(axis=-1)
        assert ok.tolist() == [True, False]


def test_float_path_equals_the_batched_path(monkeypatch):
    """Small batches run on Python floats; the batched NumPy path is the reference (same operations, same order)."""
    import navsim_agents.scoring.pdm_simulator as sim

    rng = np.random.default_rng(0)
    refs = np.zeros((3, 41, STATE_SIZE))
    t = np.arange(41) * 0.1
    for b, (speed, yaw_rate) in enumerate([(8.0, 0.1), (0.1, 0.0), (4.0, -0.3)]):  # turning, crawling (stop), S-bend
        heading = yaw_rate * t + 0.2 * np.sin(t) * b
        refs[b, :, S.HEADING] = heading
        refs[b, 1:, S.X] = np.cumsum(speed * np.cos(heading[:-1]) * 0.1)
        refs[b, 1:, S.Y] = np.cumsum(speed * np.sin(heading[:-1]) * 0.1)
    refs[..., :2] += rng.normal(scale=0.05, size=refs[..., :2].shape)
    initial = np.zeros(STATE_SIZE)
    initial[S.VELOCITY_X], initial[S.STEERING_ANGLE], initial[S.ACCELERATION_X] = 5.0, 0.05, 0.3
    scalar = sim.simulate_proposals(refs, initial)
    monkeypatch.setattr(sim, "SCALAR_BATCH_LIMIT", 0)
    batched = sim.simulate_proposals(refs, initial)
    np.testing.assert_allclose(scalar, batched, rtol=1e-12, atol=1e-12)


def _devkit_velocity_fit(poses: np.ndarray, dt: float, lam: float) -> np.ndarray:
    """(v0, a_0, ...) per row by navsim's plain formula: heading-dependent design matrix A [2M, M] and
    pinv(A^T A + lam R^T R) A^T y (batch_lqr_utils._fit_initial_velocity_and_acceleration_profile)."""
    disp = np.diff(poses, axis=1)
    out = []
    for row, d in zip(poses, disp, strict=True):
        m = len(d)
        a = np.zeros((2 * m, m))
        for j in range(m):
            unit = np.array([np.cos(row[j, 2]), np.sin(row[j, 2])])
            a[2 * j:2 * j + 2, 0] = dt * unit
            for i in range(1, j + 1):
                a[2 * j:2 * j + 2, i] = dt**2 * unit
        r = np.hstack([np.zeros((m - 2, 1)), jerk_penalty_matrix(m - 2)])
        out.append(np.linalg.pinv(a.T @ a + lam * r.T @ r, rcond=1e-15) @ a.T @ d[:, :2].reshape(-1))
    return np.array(out)


def test_velocity_fit_gain_equals_the_devkits_heading_dependent_formula():
    """The fit uses one gain matrix for every heading (cos^2 + sin^2 = 1 in A^T A); on 41-pose S-bends at three
    base headings it equals the devkit's per-trajectory pinv within that formula's own rounding (~1e-12)."""
    from navsim_agents.scoring.pdm_simulator import _fit_velocity_and_acceleration

    dt = 0.1
    t = np.arange(41) * dt
    poses = np.zeros((3, 41, 3))
    for b, base in enumerate((0.0, 2.0, -2.5)):
        heading = base + 0.4 * np.sin(t)
        speed = 6.0 + 3.0 * np.sin(0.7 * t)
        poses[b, :, 2] = heading
        poses[b, 1:, 0] = np.cumsum(speed[:-1] * np.cos(heading[:-1]) * dt)
        poses[b, 1:, 1] = np.cumsum(speed[:-1] * np.sin(heading[:-1]) * dt)
    disp = np.diff(poses, axis=1)
    v0, accel = _fit_velocity_and_acceleration(disp[..., :2], poses[:, :-1, 2], dt, LQR_JERK_PENALTY)
    expected = _devkit_velocity_fit(poses, dt, LQR_JERK_PENALTY)
    ours = np.concatenate([v0[:, None], accel], axis=1)
    assert np.abs(ours - expected).max() <= 1e-10 * np.abs(expected).max()
    # and it is a fit of these poses: the velocity profile follows the driven speed (within the penalty's bias)
    velocity = v0[:, None] + np.concatenate([np.zeros((3, 1)), np.cumsum(accel * dt, axis=1)], axis=1)
    assert np.abs(velocity - (6.0 + 3.0 * np.sin(0.7 * t[:-1]))).max() < 0.2


def _devkit_curvature_fit(heading_disp: np.ndarray, velocity: np.ndarray, dt: float) -> np.ndarray:
    """(k0, k'_0, ...) per row by navsim's formula (batch_lqr_utils._fit_initial_curvature_and_curvature_rate_profile):
    A lower triangular, column 0 = v dt, A[i, k>=1] = v_i dt^2; pinv(A^T A + Q) A^T y, Q = diag(1e-10, 1e-2, ...)."""
    from navsim_agents.scoring.constants import LQR_CURVATURE_RATE_PENALTY, LQR_INITIAL_CURVATURE_PENALTY

    out = []
    for y, v in zip(heading_disp, velocity, strict=True):
        m = len(y)
        a = np.zeros((m, m))
        for i in range(m):
            a[i, 0] = v[i] * dt
            a[i, 1:i + 1] = v[i] * dt**2
        q = np.diag([LQR_INITIAL_CURVATURE_PENALTY] + [LQR_CURVATURE_RATE_PENALTY] * (m - 1))
        out.append(np.linalg.pinv(a.T @ a + q, rcond=1e-15) @ a.T @ y)
    return np.array(out)


def test_curvature_fit_solve_equals_the_devkits_pinv_formula():
    """Rows whose normal matrix pinv cannot truncate are solved by LU, the others by pinv; both equal the plain
    formula: a turning car, one that starts from standing (initial speed 0: the normal matrix' first diagonal is
    the 1e-10 penalty) and one at 2 km/s (trace > 1e5: a pinv row)."""
    from navsim_agents.scoring.pdm_simulator import _fit_curvature

    dt, m = 0.1, 40
    t = np.arange(m) * dt
    velocity = np.stack([8.0 + t, np.where(t < 2.0, 0.0, 0.3 * (t - 2.0)), np.full(m, 2000.0)])
    heading_disp = np.stack([0.02 + 0.01 * np.sin(t), np.where(t < 2.0, 0.0, 0.01), 1e-4 * np.cos(t)])
    k0, rate = _fit_curvature(heading_disp, velocity, dt, 1e-2)
    ours = np.concatenate([k0[:, None], rate], axis=1)
    expected = _devkit_curvature_fit(heading_disp, velocity, dt)
    for row in range(3):
        assert np.abs(ours[row] - expected[row]).max() <= 1e-10 * np.abs(expected[row]).max(), row
    # the turning row's curvature is what it drives: heading change / (v dt) at the start
    assert abs(k0[0] - 0.02 / (8.0 * dt)) < 0.01
