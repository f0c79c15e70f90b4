"""Batch LQR tracker + kinematic bicycle model: PDM's simulation of proposals before scoring.

Mirrors navsim `pdm_planner/simulation/{batch_lqr,batch_lqr_utils,batch_kinematic_bicycle,pdm_simulator}.py`
(identical in v1.1 and v2). All arrays are batched over proposals.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from navsim_agents.scoring import constants as C
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import normalize_angle, principal_value
from rap_backbone.nuplan_rig import PACIFICA, VehicleParameters

# numpy < 2 cut singular values below 1e-15 * s_max in pinv (the devkit's numpy); numpy 2 defaults to
# max(M, N) * eps, which could drop the tiny initial-curvature direction (penalty 1e-10) of the fits.
PINV_RCOND = 1e-15


def _profile_from_derivatives(initial: np.ndarray, derivatives: np.ndarray, dt: float) -> np.ndarray:
    """Integrate `derivatives` [B,N] from `initial` [B] -> profile [B,N+1]."""
    cumsum = np.cumsum(derivatives * dt, axis=-1)
    return initial[..., None] + np.concatenate([np.zeros(cumsum.shape[:-1] + (1,)), cumsum], axis=-1)


def jerk_penalty_matrix(n: int) -> np.ndarray:
    """The [n, n+1] matrix navsim's batch LQR penalises accelerations with (`batch_lqr_utils.py`,
    `_make_banded_difference_matrix`).

    Meant as the difference matrix [a_2 - a_1, ...], but the devkit writes `-I` over the columns after writing `I`
    into the shifted ones, so every `+1` except the last row's is overwritten: rows 0..n-2 are `-e_i` and the last
    row is `e_{n} - e_{n-1}`. The fitted velocity profiles (and so every simulated trajectory) follow that matrix,
    so it is reproduced as is (nuplan's own, unbatched `tracker_utils.py` builds the true difference matrix).
    """
    banded = np.zeros((n, n + 1))
    banded[:, 1:] = np.eye(n)
    banded[:, :-1] = -np.eye(n)  # assignment, not subtraction: the devkit's quirk
    return banded


@functools.lru_cache(maxsize=8)
def velocity_fit_gain(m: int, dt: float, jerk_penalty: float) -> np.ndarray:
    """Gain K [m, m] with (v0, a_0, ..., a_{m-2}) = K @ s for the along-heading displacements s [m].

    The devkit's design matrix (`_fit_initial_velocity_and_acceleration_profile`) repeats, for displacement j,
    one coefficient row c_j (dt for v0, dt^2 for each acceleration up to j) times (cos h_j, sin h_j). Its normal
    matrix A^T A = C^T C (cos^2 + sin^2 = 1) and A^T y = C^T s with s_j = cos h_j dx_j + sin h_j dy_j, so the
    penalised least-squares solution pinv(A^T A + lam R^T R) A^T y is K s with K depending only on (m, dt, lam).
    """
    coefficients = np.zeros((m, m))
    coefficients[:, 0] = dt
    coefficients[:, 1:] = np.tril(np.ones((m, m - 1)), k=-1) * dt**2
    r = np.block([np.zeros((m - 2, 1)), jerk_penalty_matrix(m - 2)])
    lhs = coefficients.T @ coefficients + jerk_penalty * (r.T @ r)
    gain = np.linalg.pinv(lhs, rcond=PINV_RCOND) @ coefficients.T
    gain.flags.writeable = False  # shared by every call
    return gain


def _fit_velocity_and_acceleration(xy_disp: np.ndarray, headings: np.ndarray, dt: float, jerk_penalty: float):
    """Least-squares initial velocity and acceleration profile from displacements [B,M,2] (see
    :func:`velocity_fit_gain`)."""
    along = np.cos(headings) * xy_disp[..., 0] + np.sin(headings) * xy_disp[..., 1]
    x = along @ velocity_fit_gain(xy_disp.shape[1], float(dt), float(jerk_penalty)).T
    return x[:, 0], x[:, 1:]


def _fit_curvature(heading_disp: np.ndarray, velocity: np.ndarray, dt: float, curvature_rate_penalty: float):
    """Least-squares initial curvature and curvature-rate profile (the devkit's pinv(A^T A + Q) A^T y).

    A^T A + Q is symmetric positive definite with eigenvalues >= min(Q) = LQR_INITIAL_CURVATURE_PENALTY, so pinv
    drops none of them (it cuts below PINV_RCOND * largest) while the largest, bounded by the trace, stays under
    min(Q) / PINV_RCOND: there pinv(lhs) @ rhs is the solution of lhs x = rhs, which LU gives at a fraction of an
    SVD's cost (and nearer the exact solution: ~1e-14 against pinv's ~1e-13 relative). Other rows keep pinv.
    """
    batch, dim = heading_disp.shape
    a = np.repeat(np.tri(dim)[None], batch, axis=0)
    a[:, :, 0] = velocity * dt
    vel = velocity * dt**2
    a[:, 1:, 1:] *= vel[:, None, 1:].transpose(0, 2, 1)
    q = curvature_rate_penalty * np.eye(dim)
    q[0, 0] = C.LQR_INITIAL_CURVATURE_PENALTY
    at = a.transpose(0, 2, 1)
    lhs = at @ a + q
    rhs = np.einsum("bij,bj->bi", at, heading_disp)
    solvable = np.trace(lhs, axis1=1, axis2=2) <= np.diag(q).min() / PINV_RCOND
    x = np.zeros((batch, dim))
    if solvable.any():
        x[solvable] = np.linalg.solve(lhs[solvable], rhs[solvable][..., None])[..., 0]
    if not solvable.all():
        x[~solvable] = np.einsum("bij,bj->bi", np.linalg.pinv(lhs[~solvable], rcond=PINV_RCOND),
                                 rhs[~solvable])
    return x[:, 0], x[:, 1:]


def velocity_curvature_profiles(poses: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocity [B,N-1] and curvature [B,N-1] profiles fitted to poses [B,N,3]."""
    diff = np.diff(poses, axis=1)
    v0, accel = _fit_velocity_and_acceleration(diff[..., :2], poses[:, :-1, 2], dt, C.LQR_JERK_PENALTY)
    velocity = _profile_from_derivatives(v0, accel, dt)
    k0, krate = _fit_curvature(normalize_angle(diff[..., 2]), velocity, dt, C.LQR_CURVATURE_RATE_PENALTY)
    return velocity, _profile_from_derivatives(k0, krate, dt)


class BatchLQRTracker:
    """Decoupled longitudinal / lateral one-step LQR over a 10-step horizon (nuPlan's LQR, batched)."""

    def __init__(self, *, vehicle: VehicleParameters = PACIFICA, dt: float = C.PROPOSAL_INTERVAL):
        self._wheel_base = vehicle.wheel_base
        self._dt = dt
        self._horizon = C.LQR_TRACKING_HORIZON
        self._q_diag = np.asarray(C.LQR_Q_LATERAL, dtype=np.float64)[None]
        # one-step longitudinal LQR over the horizon: acceleration = gain * (velocity - reference velocity)
        b_lon = self._horizon * dt
        self._accel_gain = -1.0 / (b_lon * C.LQR_Q_LONGITUDINAL * b_lon + C.LQR_R_LONGITUDINAL) * b_lon \
            * C.LQR_Q_LONGITUDINAL

    def update(self, reference_states: np.ndarray) -> None:
        """Load the reference states [B,N,11] (only poses are used) and fit their profiles."""
        self._ref = reference_states
        self._velocity, self._curvature = velocity_curvature_profiles(reference_states[..., :3], self._dt)
        num = self._velocity.shape[1]
        # per step index: the reference velocity `horizon` steps ahead and the curvature window over the horizon,
        # both held at the profile's last sample (the devkit slices and pads them at every step)
        ahead = np.minimum(np.arange(num) + self._horizon, num - 1)
        self._v_ref = self._velocity[:, ahead]
        self._curvature_windows = self._curvature[:, np.minimum(np.arange(num)[:, None] + np.arange(self._horizon),
                                                                num - 1)]
        self._sin_ref, self._cos_ref = np.sin(reference_states[..., S.HEADING]), np.cos(reference_states[..., S.HEADING])
        self._steps = np.arange(self._horizon) * self._dt

    def track(self, index: int, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Commands (acceleration [B], steering rate [B]) to track the reference from `states` at step `index`."""
        ref = self._ref[:, index]
        dx, dy = states[:, S.X] - ref[:, S.X], states[:, S.Y] - ref[:, S.Y]
        heading_error = states[:, S.HEADING] - ref[:, S.HEADING]
        lateral = np.stack([-dx * self._sin_ref[:, index] + dy * self._cos_ref[:, index],
                            normalize_angle(heading_error), states[:, S.STEERING_ANGLE]],
                           axis=-1)
        v0 = states[:, S.VELOCITY_X]
        v_ref = self._v_ref[:, index]
        curv = self._curvature_windows[:, index]

        stop = (v_ref <= C.LQR_STOPPING_VELOCITY) & (v0 <= C.LQR_STOPPING_VELOCITY)
        if not stop.any():  # every proposal tracks (the usual case): no masking
            accel = self._accel_gain * (v0 - v_ref)
            return accel, self._lateral(lateral, self._tracked_velocity(v0, accel), curv)
        accel = np.zeros(len(v0))
        steer_rate = np.zeros(len(v0))
        accel[stop] = -C.LQR_STOPPING_GAIN * (v0[stop] - v_ref[stop])
        go = ~stop
        accel[go] = self._accel_gain * (v0[go] - v_ref[go])
        steer_rate[go] = self._lateral(lateral[go], self._tracked_velocity(v0[go], accel[go]), curv[go])
        return accel, steer_rate

    def _tracked_velocity(self, v0: np.ndarray, accel: np.ndarray) -> np.ndarray:
        """Velocity over the horizon [B,H] under a constant `accel` (cumulative sums of accel * dt, as the devkit)."""
        increments = np.cumsum(np.broadcast_to((accel * self._dt)[:, None], (len(v0), self._horizon - 1)), axis=-1)
        return v0[:, None] + np.concatenate([np.zeros((len(v0), 1)), increments], axis=-1)

    def _lateral(self, x0: np.ndarray, velocity: np.ndarray, curvature: np.ndarray) -> np.ndarray:
        """One-step lateral LQR over the horizon.

        The devkit multiplies the 10 step matrices M_k = [[1, v dt, 0], [0, 1, v dt / L], [0, 0, 1]] (and the
        affine terms) one by one; their product has the closed form below, accumulated with cumulative sums in the
        same order as the sequential products (rows of one stacked cumulative sum are summed independently).
        """
        dt = self._dt
        m01 = velocity * dt
        m12 = velocity * dt / self._wheel_base
        g1_terms = -velocity * curvature * dt
        # sums over the steps before each step (exclusive) and over all steps, of m12, m12 * t and g1
        first = np.cumsum(np.stack([m12, m12 * self._steps, g1_terms]), axis=-1)
        before = np.concatenate([np.zeros(first.shape[:2] + (1,)), first[..., :-1]], axis=-1)
        second = np.cumsum(np.stack([m01, m01 * before[0], m01 * before[1], m01 * before[2]]), axis=-1)[..., -1]
        a01, a02, b0, g0 = second
        a12, b1, g1 = first[..., -1]
        b = np.stack([b0, b1, np.full(len(x0), self._horizon * dt)], axis=-1)
        err = np.stack([x0[:, 0] + a01 * x0[:, 1] + a02 * x0[:, 2] + g0,
                        x0[:, 1] + a12 * x0[:, 2] + g1,
                        x0[:, 2]], axis=-1)
        err[:, 1:] = np.arctan2(np.sin(err[:, 1:]), np.cos(err[:, 1:]))
        btq = b * self._q_diag  # Q is diagonal
        inv = -1.0 / (np.einsum("bi,bi->b", btq, b) + C.LQR_R_LATERAL)
        return inv * np.einsum("bi,bi->b", btq, err)


class BatchKinematicBicycleModel:
    """Kinematic bicycle at the rear axle with first-order lags on acceleration and steering."""

    def __init__(self, *, vehicle: VehicleParameters = PACIFICA):
        self._wheel_base = vehicle.wheel_base

    def propagate(self, states: np.ndarray, accel_cmd: np.ndarray, steer_rate_cmd: np.ndarray, dt: float) -> np.ndarray:
        """Next states [B,11] from states [B,11] and commands after `dt` seconds."""
        accel = states[:, S.ACCELERATION_X]
        steer = states[:, S.STEERING_ANGLE]
        ideal_steer = dt * steer_rate_cmd + steer
        new_accel = dt / (dt + C.BICYCLE_ACCEL_TIME_CONSTANT) * (accel_cmd - accel) + accel
        new_steer = dt / (dt + C.BICYCLE_STEERING_TIME_CONSTANT) * (ideal_steer - steer) + steer
        new_steer_rate = (new_steer - steer) / dt

        speed = states[:, S.VELOCITY_X]
        heading = states[:, S.HEADING]
        out = states.copy()
        out[:, S.X] = states[:, S.X] + speed * np.cos(heading) * dt
        out[:, S.Y] = states[:, S.Y] + speed * np.sin(heading) * dt
        out[:, S.HEADING] = principal_value(heading + speed * np.tan(steer) / self._wheel_base * dt)
        out[:, S.VELOCITY_X] = speed + new_accel * dt
        out[:, S.VELOCITY_Y] = 0.0
        out[:, S.STEERING_ANGLE] = np.clip(steer + new_steer_rate * dt, -C.BICYCLE_MAX_STEERING_ANGLE,
                                           C.BICYCLE_MAX_STEERING_ANGLE)
        out[:, S.ANGULAR_VELOCITY] = out[:, S.VELOCITY_X] * np.tan(out[:, S.STEERING_ANGLE]) / self._wheel_base
        # the state derivative of velocity (x: filtered accel, y: the input's lateral accel)
        out[:, S.ACCELERATION_X] = new_accel
        out[:, S.ACCELERATION_Y] = 0.0
        out[:, S.ANGULAR_ACCELERATION] = (out[:, S.ANGULAR_VELOCITY] - states[:, S.ANGULAR_VELOCITY]) / dt
        out[:, S.STEERING_RATE] = new_steer_rate
        return out


# up to this many proposals are simulated one by one with Python floats: the same arithmetic in the same order
# without NumPy's per-call overhead, which dominates 40 small steps (scoring one agent trajectory)
SCALAR_BATCH_LIMIT = 4


def simulate_proposals(reference_states: np.ndarray, initial_state: np.ndarray, *,
                       num_poses: int = C.PROPOSAL_NUM_POSES, dt: float = C.PROPOSAL_INTERVAL,
                       vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Track each reference [B,>=N+1,11] from `initial_state` [11]; return simulated states [B,N+1,11]."""
    refs = reference_states[:, : num_poses + 1]
    tracker = BatchLQRTracker(vehicle=vehicle, dt=dt)
    tracker.update(refs)
    out = np.zeros(refs.shape)
    out[:, 0] = initial_state
    if len(refs) <= SCALAR_BATCH_LIMIT:
        for b in range(len(refs)):
            out[b] = _simulate_scalar(tracker, b, np.asarray(initial_state, dtype=np.float64), num_poses, dt,
                                      vehicle.wheel_base)
        return out
    model = BatchKinematicBicycleModel(vehicle=vehicle)
    for t in range(1, num_poses + 1):
        accel, steer_rate = tracker.track(t - 1, out[:, t - 1])
        out[:, t] = model.propagate(out[:, t - 1], accel, steer_rate, dt)
    return out


def _simulate_scalar(tracker: BatchLQRTracker, b: int, initial_state: np.ndarray, num_poses: int, dt: float,
                     wheel_base: float) -> np.ndarray:
    """Proposal `b` of `tracker` simulated step by step on floats: `BatchLQRTracker.track` followed by
    `BatchKinematicBicycleModel.propagate`, operation for operation."""
    horizon = tracker._horizon  # noqa: SLF001 - the tracker's own fitted profiles, read-only
    ref = tracker._ref[b, :, :3].tolist()  # noqa: SLF001
    sin_ref, cos_ref = tracker._sin_ref[b].tolist(), tracker._cos_ref[b].tolist()  # noqa: SLF001
    v_refs = tracker._v_ref[b].tolist()  # noqa: SLF001
    windows = tracker._curvature_windows[b].tolist()  # noqa: SLF001
    q0, q1, q2 = (float(q) for q in C.LQR_Q_LATERAL)
    steps = tracker._steps.tolist()  # noqa: SLF001
    gain = tracker._accel_gain  # noqa: SLF001
    accel_lag = dt / (dt + C.BICYCLE_ACCEL_TIME_CONSTANT)
    steer_lag = dt / (dt + C.BICYCLE_STEERING_TIME_CONSTANT)
    max_steer = C.BICYCLE_MAX_STEERING_ANGLE
    two_pi, sin, cos, tan, atan2 = 2 * math.pi, math.sin, math.cos, math.tan, math.atan2
    x, y, h, v, _, a, _, steer, _, yaw_rate, _ = initial_state.tolist()
    out = np.zeros((num_poses + 1, C.STATE_SIZE))
    out[0] = initial_state
    rows = []
    for index in range(num_poses):
        # --- LQR (track) ---
        rx, ry, rh = ref[index]
        dx, dy = x - rx, y - ry
        lat0 = -dx * sin_ref[index] + dy * cos_ref[index]
        herr = h - rh
        lat1 = atan2(sin(herr), cos(herr))
        lat2 = steer
        v_ref = v_refs[index]
        if v_ref <= C.LQR_STOPPING_VELOCITY and v <= C.LQR_STOPPING_VELOCITY:
            accel_cmd = -C.LQR_STOPPING_GAIN * (v - v_ref)
            steer_rate_cmd = 0.0
        else:
            accel_cmd = gain * (v - v_ref)
            curvature = windows[index]
            increment = accel_cmd * dt
            running, velocity = 0.0, v + 0.0
            m12_sum = m12t_sum = g1_sum = 0.0
            a01 = a02 = b0 = g0 = 0.0
            for k in range(horizon):
                if k:
                    running += increment
                    velocity = v + running
                m01 = velocity * dt
                m12 = velocity * dt / wheel_base
                g1_term = -velocity * curvature[k] * dt
                a01 += m01
                a02 += m01 * m12_sum
                b0 += m01 * m12t_sum
                g0 += m01 * g1_sum
                m12_sum += m12
                m12t_sum += m12 * steps[k]
                g1_sum += g1_term
            b1, b2 = m12t_sum, horizon * dt
            err0 = lat0 + a01 * lat1 + a02 * lat2 + g0
            err1 = lat1 + m12_sum * lat2 + g1_sum
            err1 = atan2(sin(err1), cos(err1))
            err2 = atan2(sin(lat2), cos(lat2))
            t0, t1, t2 = b0 * q0, b1 * q1, b2 * q2
            inv = -1.0 / (t0 * b0 + t1 * b1 + t2 * b2 + C.LQR_R_LATERAL)
            steer_rate_cmd = inv * (t0 * err0 + t1 * err1 + t2 * err2)
        # --- kinematic bicycle (propagate) ---
        ideal_steer = dt * steer_rate_cmd + steer
        new_accel = accel_lag * (accel_cmd - a) + a
        new_steer = steer_lag * (ideal_steer - steer) + steer
        new_steer_rate = (new_steer - steer) / dt
        x, y = x + v * cos(h) * dt, y + v * sin(h) * dt
        heading = h + v * tan(steer) / wheel_base * dt
        h = (heading + math.pi) % two_pi - math.pi
        v = v + new_accel * dt
        steer = min(max(steer + new_steer_rate * dt, -max_steer), max_steer)
        new_yaw_rate = v * tan(steer) / wheel_base
        yaw_accel = (new_yaw_rate - yaw_rate) / dt
        yaw_rate, a = new_yaw_rate, new_accel
        rows.append((x, y, h, v, 0.0, a, 0.0, steer, new_steer_rate, yaw_rate, yaw_accel))
    out[1:] = rows
    return out
