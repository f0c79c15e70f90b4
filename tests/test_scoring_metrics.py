"""Each PDM sub-score on a hand-built scene whose answer follows from the metric's definition."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from navsim_agents.scoring import observation as M
from navsim_agents.scoring.constants import STATE_SIZE
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import box_coords
from navsim_agents.scoring.observation import DrivableMap, Observation, OccupancyMap, TrackInfo
from navsim_agents.scoring.scorer import CenterlinePath, PDMScorer, ScorerConfig
from rap_backbone.nuplan_rig import PACIFICA

T = np.arange(41) * 0.1
R2C = PACIFICA.rear_axle_to_center


def road(extra_lanes=(), on_route_split=None):
    """Straight two-lane road along +x: lane 'A' (y in [-3.5, 0], on route) and 'B' (y in [0, 3.5], oncoming)."""
    tokens = ["rb", "A", "B"]
    kinds = [M.ROADBLOCK, M.LANE, M.LANE]
    polys = [box(-100, -3.5, 300, 3.5), box(-100, -3.5, 300, 0.0), box(-100, 0.0, 300, 3.5)]
    for token, kind, poly in extra_lanes:
        tokens.append(token)
        kinds.append(kind)
        polys.append(poly)
    return DrivableMap(tokens, kinds, polys)


CENTERLINE = CenterlinePath(np.array([[x, -1.75, 0.0] for x in np.arange(-100.0, 301.0, 1.0)]))


def states_along(xs, ys, speed, heading=0.0):
    """States [1,41,11] of an ego whose rear axle follows (xs, ys) at `speed` with `heading`."""
    s = np.zeros((1, 41, STATE_SIZE))
    s[0, :, S.X], s[0, :, S.Y], s[0, :, S.HEADING] = xs, ys, heading
    s[0, :, S.VELOCITY_X] = speed
    return s


def observation(tracks, steps=41):
    """tracks: list of (token, type_is_agent, speed, heading, fn(t)->(x, y), length, width)."""
    maps = []
    for k in range(steps):
        toks, polys = [], []
        for token, _, _, heading, pos, length, width in tracks:
            c = box_coords(np.array(pos(k * 0.1)), np.asarray(heading), length, width)[:4]
            toks.append(token)
            polys.append(Polygon(c))
        maps.append(OccupancyMap(toks, polys))
    unique = {t[0]: TrackInfo(t[1], t[3], t[2]) for t in tracks}
    return Observation(maps, unique)


def score(states, obs=None, version="v2", drivable=None, route=("A",), centerline=CENTERLINE, past=None):
    obs = obs if obs is not None else observation([], steps=50 if version == "v1" else 41)
    scorer = PDMScorer(ScorerConfig(version=version))
    return scorer.score(states, obs, centerline, list(route), drivable or road(), past)


def test_driving_in_lane_scores_full_marks():
    r = score(states_along(10 * T, -1.75, 10.0))
    for key in ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
                "traffic_light_compliance", "time_to_collision_within_bound", "lane_keeping"):
        assert r[key][0] == 1.0, key


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_hitting_a_stopped_vehicle_is_at_fault_nc_zero(version):
    obs = observation([("car", True, 0.0, 0.0, lambda t: (20.0, -1.75), 4.8, 2.0)], steps=50)
    r = score(states_along(10 * T, -1.75, 10.0), obs, version=version)
    assert r["no_at_fault_collisions"][0] == 0.0


def test_hitting_a_static_object_gives_half():
    obs = observation([("cone", False, 0.0, 0.0, lambda t: (20.0, -1.75), 0.5, 0.5)])
    assert score(states_along(10 * T, -1.75, 10.0), obs)["no_at_fault_collisions"][0] == 0.5


def test_rear_ended_by_faster_follower_is_not_at_fault():
    # ego at 2 m/s, follower at 12 m/s starting 12 m behind the rear axle: it hits the ego's rear
    obs = observation([("follower", True, 12.0, 0.0, lambda t: (-12.0 + 12.0 * t, -1.75), 4.8, 2.0)])
    r = score(states_along(2 * T, -1.75, 2.0), obs)
    assert r["no_at_fault_collisions"][0] == 1.0


def test_leaving_the_road_fails_drivable_area():
    ys = np.clip(-1.75 + 2.0 * T, None, 5.0)  # drifts left until the car body is beyond y = 3.5
    r = score(states_along(10 * T, ys, 10.0))
    assert r["drivable_area_compliance"][0] == 0.0


@pytest.mark.parametrize("stretch,expected", [(3.0, 0.5), (7.0, 0.0)])
def test_driving_against_traffic_over_3m_and_7m(stretch, expected):
    # ego drives in lane B; only B's piece x in [20, 20 + stretch] is off-route -> oncoming there
    lanes = [("B1", M.LANE, box(-100, 0, 20, 3.5)), ("B3", M.LANE, box(20 + stretch, 0, 300, 3.5))]
    drivable = DrivableMap(["rb", "B1", "B2", "B3"], [M.ROADBLOCK, M.LANE, M.LANE, M.LANE],
                           [box(-100, -3.5, 300, 3.5), lanes[0][2], box(20, 0, 20 + stretch, 3.5), lanes[1][2]])
    xs = 10 * T - R2C + 0.5  # centers at 0.5, 1.5, ...: strictly inside each piece
    r = score(states_along(xs, 1.75, 10.0), drivable=drivable, route=("B1", "B3"))
    assert r["driving_direction_compliance"][0] == expected


def test_red_light_connector_fails_traffic_light_compliance():
    light = ("red_light_lc1", True, 0.0, 0.0, lambda t: (30.0, -1.75), 2.0, 3.5)
    r = score(states_along(10 * T, -1.75, 10.0), observation([light]))
    assert r["traffic_light_compliance"][0] == 0.0
    assert r["no_at_fault_collisions"][0] == 1.0  # red lights are not collisions


@pytest.mark.parametrize("offset,seconds,expected", [(0.6, 2.0, 0.0), (0.6, 1.5, 1.0), (0.4, 4.0, 1.0)])
def test_lane_keeping_offset(offset, seconds, expected):
    n = int(round(seconds / 0.1))
    ys = np.full(41, -1.75)
    ys[5:5 + n] += offset
    r = score(states_along(10 * T, ys, 10.0))
    assert r["lane_keeping"][0] == expected


def test_progress_ratio_against_pdm_closed():
    both = np.concatenate([states_along(5 * T, -1.75, 5.0), states_along(2.5 * T, -1.75, 2.5)])
    r = score(both)  # raw progress 20 m (reference) and 10 m (agent)
    assert np.allclose(r["raw_progress"], [20.0, 10.0])
    assert np.allclose(r["ego_progress"], [1.0, 0.5])
    slow = np.concatenate([states_along(1 * T, -1.75, 1.0), states_along(0.5 * T, -1.75, 0.5)])
    assert np.allclose(score(slow)["ego_progress"], [1.0, 1.0])  # best progress below 5 m


@pytest.mark.parametrize("gap,expected", [(8.5, 0.0), (12.0, 1.0)])
def test_ttc_on_a_stopped_vehicle_ego_brakes_in_time(gap, expected):
    # ego brakes from 10 m/s to a stop within 8 m; its constant-velocity projection reaches 9 m (0.9 s)
    v0, decel = 10.0, 10.0**2 / (2 * 8.0)
    t_stop = v0 / decel
    tt = np.minimum(T, t_stop)
    st = states_along(v0 * tt - decel * tt**2 / 2, -1.75, 0.0)
    st[0, :, S.VELOCITY_X] = np.maximum(v0 - decel * T, 0.0)
    front = PACIFICA.front_length
    lead = ("lead", True, 0.0, 0.0, lambda t: (front + gap + 2.4, -1.75), 4.8, 2.0)
    r = score(st, observation([lead]))
    assert r["no_at_fault_collisions"][0] == 1.0
    assert r["time_to_collision_within_bound"][0] == expected


def test_zigzag_fails_comfort_v1():
    st = states_along(10 * T, -1.75, 10.0)
    st[0, :, S.HEADING] = 0.3 * (-1.0) ** np.arange(41)
    assert score(st, version="v1")["comfort"][0] == 0.0
    assert score(states_along(10 * T, -1.75, 10.0), version="v1")["comfort"][0] == 1.0


def test_v1_score_formula():
    both = np.concatenate([states_along(5 * T, -1.75, 5.0), states_along(2.5 * T, -1.75, 2.5)])
    r = score(both, version="v1")
    assert np.allclose(r["score"], [(5 * 1.0 + 5 + 2) / 12, (5 * 0.5 + 5 + 2) / 12])




@pytest.mark.parametrize("version", ["v1", "v2"])
def test_failure_tracks_and_first_steps_are_recorded(version):
    """Ego at 10 m/s toward a stopped 4.8 m car whose rear is at x = 17.6: the front (rear axle + 4.049 m) first
    passes it at t = 1.4 s (step 14); the 0.9 s projection (9 m further) first reaches it at step 5."""
    obs = observation([("car", True, 0.0, 0.0, lambda t: (20.0, -1.75), 4.8, 2.0),
                       ("far", True, 0.0, 0.0, lambda t: (200.0, 3.0), 4.8, 2.0)], steps=50)
    scorer = PDMScorer(ScorerConfig(version=version))
    both = np.concatenate([states_along(10 * T, -1.75, 10.0), states_along(np.zeros(41), -1.75, 0.0)])
    scorer.score(both, obs, CENTERLINE, ["A"], road())
    front = PACIFICA.front_length
    assert scorer.at_fault_time_idx[0] == int(np.ceil((17.6 - front) / 1.0))  # 10 m/s = 1 m per step
    assert scorer.at_fault_track_ids[0][0] == "car"
    assert scorer.ttc_time_idx[0] == int(np.ceil((17.6 - front - 9.0) / 1.0))
    assert scorer.ttc_track_ids[0][0] == "car"
    assert scorer.at_fault_track_ids[1] == [] and np.isinf(scorer.at_fault_time_idx[1])  # the parked ego
    assert scorer.ttc_track_ids[1] == [] and np.isinf(scorer.ttc_time_idx[1])


def test_ego_footprints_are_built_only_near_objects_and_equal_the_box():
    """The scorer builds an ego polygon only where a bounding-box test finds an object: for the ego driving at the
    stopped car those footprints are the Pacifica box around rear axle + rear_axle_to_center; the parked ego 200 m
    from every object gets none."""
    obs = observation([("car", True, 0.0, 0.0, lambda t: (20.0, -1.75), 4.8, 2.0)])
    scorer = PDMScorer(ScorerConfig(version="v2"))
    both = np.concatenate([states_along(10 * T, -1.75, 10.0), states_along(np.full(41, -150.0), -1.75, 0.0)])
    scorer.score(both, obs, CENTERLINE, ["A"], road())
    built = np.argwhere(np.not_equal(scorer._polygons, None))
    assert len(built) and set(built[:, 0]) == {0}
    for p, t in built:
        x = both[p, t, S.X] + R2C
        expected = box(x - PACIFICA.length / 2, -1.75 - PACIFICA.width / 2, x + PACIFICA.length / 2,
                       -1.75 + PACIFICA.width / 2)
        assert scorer._polygons[p, t].symmetric_difference(expected).area < 1e-9 * expected.area


def test_reusing_the_other_versions_geometry_gives_the_fresh_scores():
    """PDM-Closed scores one proposal set for v2 and then v1 with the boxes, area flags, hits and progress of the
    first; every output equals scoring v1 from scratch (a collision, an off-road and a clean proposal)."""
    obs = observation([("car", True, 0.0, 0.0, lambda t: (20.0, -1.75), 4.8, 2.0)], steps=50)
    states = np.concatenate([states_along(10 * T, -1.75, 10.0), states_along(5 * T, -1.75 - 0.8 * T, 5.0),
                             states_along(3 * T, 1.75, 3.0)])
    first = PDMScorer(ScorerConfig(version="v2"))
    first.score(states, obs, CENTERLINE, ["A"], drivable := road())
    reused = PDMScorer(ScorerConfig(version="v1")).score(states, obs, CENTERLINE, ["A"], drivable, reuse=first)
    fresh = PDMScorer(ScorerConfig(version="v1")).score(states, obs, CENTERLINE, ["A"], road())
    assert reused.keys() == fresh.keys()
    for key in fresh:
        assert np.array_equal(reused[key], fresh[key]), key
    assert fresh["no_at_fault_collisions"][0] == 0.0 and fresh["drivable_area_compliance"][1] == 0.0
    with pytest.raises(ValueError, match="same states"):
        PDMScorer(ScorerConfig(version="v1")).score(states.copy(), obs, CENTERLINE, ["A"], drivable, reuse=first)


def _loop_longest_run(hit, skip):
    """The devkit's loop (navsim main pdm_scorer._calculate_lane_keeping), keeping the longest run."""
    best = run = 0
    for h, s in zip(hit, skip, strict=True):
        if s:
            continue
        run = run + 1 if h else 0
        best = max(best, run)
    return best


def test_longest_counted_run_equals_the_devkits_loop():
    from navsim_agents.scoring.scorer import longest_counted_run

    # by hand: skipped steps (s) inside a run neither count nor end it; a miss (.) ends it
    rows = ["hhshh.hhh", "....", "hhhh", "shhs.hs", "ssss"]
    hit = np.array([[c == "h" for c in r.ljust(9, ".")] for r in rows])
    skip = np.array([[c == "s" for c in r.ljust(9, ".")] for r in rows])
    assert longest_counted_run(hit, skip).tolist() == [4, 0, 4, 2, 0]
    rng = np.random.default_rng(0)
    hit, skip = rng.random((200, 41)) < 0.7, rng.random((200, 41)) < 0.2
    assert longest_counted_run(hit, skip).tolist() == [_loop_longest_run(h, s) for h, s in zip(hit, skip, strict=True)]


def test_ring_bounds_are_the_points_extremes():
    from navsim_agents.scoring.observation import ring_bounds

    square = np.array([[1.0, 2.0], [-3.0, 2.5], [-2.0, -4.0], [0.5, 7.0]])  # bounds by hand: (-3, -4, 1, 7)
    assert ring_bounds(square).tolist() == [-3.0, -4.0, 1.0, 7.0]
    rings = np.random.default_rng(0).normal(size=(3, 7, 5, 2)) * 50 + 6e5
    expected = np.concatenate([rings.min(axis=-2), rings.max(axis=-2)], axis=-1)
    assert np.array_equal(ring_bounds(rings), expected)


def test_box_coords_few_and_many_boxes_agree_with_the_corners_by_hand():
    """A 4 x 2 box at (10, 20) facing +y has its front-left corner at (9, 22); a few boxes (one broadcast pass) and
    many (per corner) give the same floats."""
    c = box_coords(np.array([10.0, 20.0]), np.asarray(np.pi / 2), 4.0, 2.0)
    assert np.allclose(c, [[9.0, 22.0], [9.0, 18.0], [11.0, 18.0], [11.0, 22.0], [10.0, 20.0]], atol=1e-12)
    rng = np.random.default_rng(4)
    centers, headings = rng.normal(size=(40, 2)) * 300 + 6e5, rng.uniform(-4.0, 4.0, 40)
    lengths, widths = rng.uniform(3.0, 6.0, 40), rng.uniform(1.5, 2.5, 40)
    many = box_coords(centers, headings, lengths, widths)
    few = np.concatenate([box_coords(centers[i:i + 5], headings[i:i + 5], lengths[i:i + 5], widths[i:i + 5])
                          for i in range(0, 40, 5)])
    assert np.array_equal(many, few)
    assert np.array_equal(box_coords(centers, headings, 5.0, 2.0)[:5], box_coords(centers[:5], headings[:5], 5.0, 2.0))
