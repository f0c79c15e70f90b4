"""IDM: PDM-Closed's batch step (navsim batch_idm_policy.py) and the textbook form, on values worked out by hand."""

import math

import numpy as np
import pytest

from navsim_agents.idm import (
    EMBEDDED_CLOSED_LOOP,
    NAVSIM_IDM_TRAFFIC,
    PDM_CLOSED,
    idm_acceleration,
    pdm_idm_step,
)


def test_pdm_closed_parameters_are_navsims():
    assert (PDM_CLOSED.min_gap, PDM_CLOSED.headway_time, PDM_CLOSED.accel_max, PDM_CLOSED.decel_max,
            PDM_CLOSED.exponent) == (1.0, 1.5, 1.5, 3.0, 10)


def test_pdm_step_by_hand():
    # columns: (a) at rest, leader 2 m ahead: s* = s0 = 1, (1 / 2)^2 = 0.25 -> 1.5 * 0.75 = 1.125 m/s^2
    # (b) at rest, leader 0.5 m ahead: the gap is floored at s0 = 1 -> (1 / 1)^2 = 1 -> 0
    # (c) 10 m/s onto a stopped leader 10 m ahead: s* = 1 + 15 + 100 / (2 sqrt 4.5) = 39.6 -> clipped to -3
    x = np.zeros(3)
    v = np.array([0.0, 0.0, 10.0])
    x_lead = np.array([4.0, 2.5, 12.0])
    l_rear = np.full(3, 2.0)
    target = np.full(3, 15.0)
    x1, v1 = pdm_idm_step(x, v, x_lead, np.zeros(3), l_rear, target, 0.1)
    np.testing.assert_allclose(v1, [0.1125, 0.0, 9.7], rtol=1e-12)
    np.testing.assert_allclose(x1, [0.0, 0.0, 1.0], rtol=1e-12)


def test_textbook_idm_by_hand():
    p = EMBEDDED_CLOSED_LOOP  # a 1.5, b 2.0, s0 2, T 1.2, delta 4
    # free road at half the desired speed: 1.5 (1 - 0.5^4) = 1.40625
    assert idm_acceleration(10.0, 20.0, math.inf, 0.0, p) == pytest.approx(1.40625, rel=1e-12)
    # same speed as the leader 20 m ahead: s* = 2 + 12 = 14, (14 / 20)^2 = 0.49
    assert idm_acceleration(10.0, 20.0, 20.0, 10.0, p) == pytest.approx(1.5 * (0.9375 - 0.49), rel=1e-12)
    # a faster leader: the dynamic part (12 - 100 / (2 sqrt 3) < 0) counts as 0, s* = s0 = 2
    assert idm_acceleration(10.0, 20.0, 20.0, 20.0, p) == pytest.approx(1.5 * (0.9375 - 0.01), rel=1e-12)
    # closing in fast: s* = 2 + 18 = 20 over a 3 m gap -> far below -8, clipped by the braking limit
    assert idm_acceleration(15.0, 15.0, 3.0, 15.0, p, max_brake=8.0) == -8.0
    # arrays broadcast, a zero desired speed brakes instead of dividing by zero
    out = idm_acceleration(np.array([0.0, 1.0]), np.array([0.0, 0.0]), np.array([math.inf, math.inf]), 0.0, p)
    assert out[0] == pytest.approx(1.5) and out[1] == pytest.approx(1.5 * (1 - (1 / 0.1) ** 4))


@pytest.mark.parametrize("params", [PDM_CLOSED, NAVSIM_IDM_TRAFFIC])
def test_pdm_step_on_floats_is_the_numpy_step_bit_for_bit(params):
    """One vehicle in Python floats takes the float path; numpy scalars take the array arithmetic: same bits, over
    free roads, close and overlapping leaders (gap floored), clipped braking and acceleration."""
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.uniform(-5, 50, 3000), rng.uniform(0, 20, 3000), rng.uniform(-10, 120, 3000),
                            rng.uniform(-5, 20, 3000), rng.uniform(0, 3, 3000), rng.uniform(0.5, 20, 3000)])
    for row in rows:
        floats = pdm_idm_step(*map(float, row), 0.1, params)
        numpy_scalars = pdm_idm_step(*map(np.float64, row), 0.1, params)
        assert type(floats[1]) is float and type(numpy_scalars[1]) is not float
        assert floats == tuple(float(a) for a in numpy_scalars), row


def test_pdm_closed_proposals_lie_on_the_path_at_the_idm_progress():
    """generate_proposals interpolates every step's poses in one call after the unroll and the poses of the step
    before only where a lead update needs them; the result equals unrolling by hand (IDM step by step, a lead
    update every 2nd step from the previous poses) and placing each step on the path. Straight path along +x, a
    stopped 4 m car whose rear is at x = 30: the gap is 30 - (ego rear axle + front length)."""
    from shapely.geometry import box

    from navsim_agents.scoring import constants as C
    from navsim_agents.scoring.observation import Observation, OccupancyMap, TrackInfo
    from navsim_agents.scoring.pdm_closed import generate_proposals
    from navsim_agents.scoring.scorer import CenterlinePath
    from rap_backbone.nuplan_rig import PACIFICA

    path = CenterlinePath(np.array([[x, 0.0, 0.0] for x in np.arange(0.0, 201.0, 5.0)]))
    car = box(30.0, -1.0, 34.0, 1.0)
    obs = Observation([OccupancyMap(["car"], [car]) for _ in range(26)], {"car": TrackInfo(True, 0.0, 0.0)},
                      stride=2)
    ego = np.zeros(C.STATE_SIZE)
    ego[C.StateIndex.VELOCITY_X] = 6.0
    out = generate_proposals([path], 10.0, ego, obs)

    target = np.array(C.IDM_SPEED_LIMIT_FRACTIONS) * 10.0
    x, v, lead = np.zeros(5), np.full(5, 6.0), np.zeros((5, 3))
    for t in range(1, C.PROPOSAL_NUM_POSES + 1):
        if t % C.PDM_LEADING_AGENT_UPDATE_RATE == 0:
            gap = 30.0 - (x + PACIFICA.front_length)  # the footprint's distance to the car's rear
            lead = np.stack([x + np.maximum(gap, 0.0), np.zeros(5), np.zeros(5)], axis=-1)
        x, v = pdm_idm_step(x, v, lead[:, 0], lead[:, 1], lead[:, 2], target, 0.1)
        np.testing.assert_allclose(out[:, t, 0], x, rtol=1e-12, atol=1e-9)
    assert np.all(out[:, :, 1] == 0.0) and np.all(out[:, :, 2] == 0.0)
    assert out[:, -1, 0].max() + PACIFICA.front_length < 30.0  # every proposal stops behind the car


def test_pdm_closed_paths_stepped_together_are_each_their_own_unroll():
    """The paths are stepped in lockstep (shared IDM steps, footprint and distance batches): every path's proposals
    equal those of unrolling that path alone, bit for bit. Three parallel paths, a stopped car in the middle lane,
    a moving car ahead in the left lane, nothing in the right lane."""
    from shapely.geometry import box

    from navsim_agents.scoring import constants as C
    from navsim_agents.scoring.observation import Observation, OccupancyMap, TrackInfo
    from navsim_agents.scoring.pdm_closed import generate_proposals
    from navsim_agents.scoring.scorer import CenterlinePath

    paths = [CenterlinePath(np.array([[x, y, 0.0] for x in np.arange(0.0, 201.0, 5.0)])) for y in (0.0, 3.5, -3.5)]
    maps = [OccupancyMap(["stopped", "moving"], [box(30.0, -1.0, 34.0, 1.0), box(20.0 + k, 2.5, 24.0 + k, 4.5)])
            for k in range(26)]
    unique = {"stopped": TrackInfo(True, 0.0, 0.0), "moving": TrackInfo(True, 0.1, 5.0)}
    ego = np.zeros(C.STATE_SIZE)
    ego[C.StateIndex.VELOCITY_X] = 6.0
    together = generate_proposals(paths, 10.0, ego, Observation(maps, unique, stride=2))
    alone = np.concatenate([generate_proposals([p], 10.0, ego, Observation(maps, unique, stride=2)) for p in paths])
    assert np.array_equal(together, alone)
    assert not np.array_equal(alone[:5], alone[5:10])  # the lanes' leads differ, so the check compares something
