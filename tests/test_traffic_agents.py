"""Traffic agents policies on hand-built cases: the IDM step, lane-end stop, paths, constant velocity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navsim_agents.scoring import traffic_agents as TA
from navsim_agents.scoring.metric_cache_file import MetricCache


def _straight_path(length: float = 30.0, step: float = 1.0) -> TA.InterpolatedPath:
    x = np.arange(0.0, length + step / 2, step)
    return TA.InterpolatedPath(np.column_stack([x, np.zeros_like(x), np.zeros_like(x)]))


def _agent(path, progress=0.0, velocity=5.0, limit=None):
    return TA.IDMAgent("a", 4.8, 2.0, path, progress, velocity, limit or TA.IDM_TARGET_VELOCITY, limit)


def test_idm_step_follows_the_forward_euler_idm():
    # nuplan IDMPolicy: s* = s0 + v T + v (v - v_lead) / (2 sqrt(a b)); dv/dt = a (1 - (v/v0)^4 - (s*/s)^2)
    agent = _agent(_straight_path(200.0), velocity=5.0)
    agent.propagate(100.0, 0.0, 2.4, 0.1)
    s_star = 1.0 + 5.0 * 1.5 + 5.0 * 5.0 / (2 * math.sqrt(1.0 * 2.0))
    accel = 1.0 * (1 - (5.0 / 10.0) ** 4 - (s_star / (100.0 - 2.4)) ** 2)
    assert agent.progress == pytest.approx(0.5, rel=1e-12)
    assert agent.velocity == pytest.approx(5.0 + 0.1 * accel, rel=1e-12)


def test_idm_braking_is_clipped_and_speed_never_negative():
    agent = _agent(_straight_path(), velocity=0.1)
    agent.propagate(0.5, 0.0, 0.0, 0.1)  # a lead closer than the minimum gap: the gap counts as s0 = 1 m
    s_star = 1.0 + 0.1 * 1.5 + 0.1 * 0.1 / (2 * math.sqrt(2.0))
    assert agent.velocity == pytest.approx(0.1 + 0.1 * (1 - 1e-8 - s_star**2), rel=1e-12)
    # at 0.5 m/s behind a standing lead the IDM asks 1 - (0.05)^4 - (1.838/1)^2 = -2.38 m/s^2: clipped to -2; over
    # 0.5 s that would reverse, so the speed stops at 0
    slow = _agent(_straight_path(), velocity=0.5)
    slow.propagate(0.0, 0.0, 0.0, 0.5)
    assert slow.velocity == 0.0 and slow.progress == pytest.approx(0.25, rel=1e-12)
    fast = _agent(_straight_path(), velocity=8.0)
    fast.propagate(3.0, 0.0, 0.0, 0.1)
    assert fast.velocity == pytest.approx(8.0 - 0.1 * 2.0, rel=1e-12)  # navsim yaml decel_max 2.0


def test_lane_speed_limit_replaces_the_target_velocity():
    agent = _agent(_straight_path(200.0), velocity=5.0, limit=5.0)
    agent.propagate(1e6, 0.0, 0.0, 0.1)  # free road at the limit: (v/v0)^4 = 1, only the (tiny) gap term
    assert agent.velocity < 5.0 and agent.velocity == pytest.approx(5.0, abs=1e-3)


def test_agent_without_route_extension_stops_at_the_end_of_its_lane():
    """No traffic-light data, no route planning (devkit quirk): the lane end acts as a standing lead."""
    path = _straight_path(40.0)
    agent = _agent(path, progress=5.0, velocity=8.0)
    for _ in range(400):
        agent.propagate(agent.progress_to_go(), 0.0, agent.length / 2, 0.1)
    assert agent.velocity == pytest.approx(0.0, abs=1e-3)
    assert agent.progress < path.end and path.end - agent.progress < agent.length / 2 + 1.0 + 0.5


def test_path_drops_repeated_points_and_interpolates_heading_across_pi():
    pts = np.array([[0.0, 0.0, math.pi - 0.1], [0.0, 0.0, math.pi - 0.1], [-1.0, 0.0, -math.pi + 0.1],
                    [-2.0, 0.0, -math.pi + 0.1]])
    path = TA.InterpolatedPath(pts)  # the repeat and (as nuplan's zip does) the last point are dropped
    assert len(path.points) == 2 and path.end == pytest.approx(1.0)
    mid = path.states_at(0.5)
    assert mid[0] == pytest.approx(-0.5) and abs(abs(mid[2]) - math.pi) < 1e-12


def test_path_ends_one_sample_short_as_in_the_devkit():
    # points 0, 1, ..., 10 m: nuplan's create_path_from_se2 zips 11 points with 10 repeat flags, so 10 m is lost
    assert _straight_path(10.0).end == pytest.approx(9.0)
    x = np.arange(0.0, 10.5, 1.0)
    full = TA.InterpolatedPath(np.column_stack([x, np.zeros_like(x), np.zeros_like(x)]), keep_last_point=True)
    assert full.end == pytest.approx(10.0)


def test_trimmed_paths_follow_nuplan():
    path = _straight_path(10.0)  # samples 0 .. 9 m (the 10 m sample is dropped as in the devkit)
    np.testing.assert_allclose(path.xy_from(2.5)[:3, 0], [2.5, 3.0, 4.0])
    np.testing.assert_allclose(path.xy_from(10.0)[:, 0], [8.0, 9.0])  # past the last point: the last two
    np.testing.assert_allclose(path.xy_between(2.5, 4.5)[:, 0], [2.5, 3.0, 4.0, 4.5])


def test_constant_velocity_vehicles_keep_heading_and_velocity():
    meta = {"current_tracks": [["car", "vehicle"], ["ped", "pedestrian"]]}
    arrays = {"current_tracks": np.array([[10.0, 5.0, 0.3, 4.0, 2.0, 2.0, -1.0],
                                          [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0]])}
    frames = TA.simulate_constant_velocity(MetricCache(meta, arrays), 40)
    assert len(frames) == 40 and all(len(f) == 1 and f[0].token == "car" for f in frames)
    centroid = frames[9][0].polygon.centroid  # 1 s
    assert (centroid.x, centroid.y) == pytest.approx((12.0, 4.0), abs=1e-9)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown vehicle policy"):
        TA.TrafficScoreRunner(policy="teleport")


def test_occupancy_simplify_matches_repeated_plain_simplify():
    """Skipping geometries that simplify left unchanged gives, call after call, exactly the geometries of simplifying
    everything every time (the devkit's rule)."""
    import shapely

    box = shapely.box(0.0, 0.0, 4.0, 2.0)
    # a vertex 1e-6 m off the bottom edge: within the 1e-5 tolerance, so the first simplify drops it
    notched = shapely.Polygon([(10.0, 0.0), (12.0, -1e-6), (14.0, 0.0), (14.0, 2.0), (10.0, 2.0)])
    occupancy = TA._OccupancyMap({"a": box, "b": notched})
    plain = {"a": box, "b": notched}
    for _ in range(3):
        occupancy.simplify()
        plain = {k: g.simplify(TA.OCCUPANCY_SIMPLIFY_TOLERANCE, preserve_topology=True) for k, g in plain.items()}
        for k in plain:
            assert shapely.equals_exact(occupancy.geometries[k], plain[k], tolerance=0.0), k
    assert len(shapely.get_coordinates(occupancy.geometries["b"])) == 5  # the notch vertex is gone
    occupancy.geometries["a"] = notched  # a replaced geometry is simplified again
    occupancy.simplify()
    assert len(shapely.get_coordinates(occupancy.geometries["a"])) == 5


def test_memo_keeps_the_most_recently_used_values():
    memo, built = TA._Memo(2), []

    def make(key):
        return lambda: built.append(key) or key.upper()

    assert [memo.get((k,), make(k)) for k in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    # "a" was used again before "c" came, so "b" was the least recently used and the only one built twice
    assert built == ["a", "b", "c", "b"]


def test_memo_find_and_put_keep_the_same_order():
    memo = TA._Memo(2)
    memo.put(("a",), 1)
    memo.put(("b",), 2)
    assert memo.find(("a",)) == 1  # "a" is now the most recent
    memo.put(("c",), 3)  # evicts "b"
    assert (memo.find(("b",)), memo.find(("a",)), memo.find(("c",))) == (None, 1, 3)
    memo.put(("a",), 4)  # a new value for a kept key replaces it
    assert memo.find(("a",)) == 4 and memo.find(("c",)) == 3


def test_simplified_versions_are_the_devkit_passes_built_once():
    """Version k is the geometry after k simplify passes of the devkit (each pass on the previous result), a fixed
    point repeating itself; the geometry is built on the first call only."""
    import shapely

    # two vertices within the 1e-5 tolerance: the first pass drops the notch, the result is then a fixed point
    notched = shapely.Polygon([(10.0, 0.0), (11.0, -4e-6), (12.0, 6e-6), (14.0, 0.0), (14.0, 2.0), (10.0, 2.0)])
    calls = []
    chain = TA._Simplified(lambda: calls.append(1) or notched)
    assert not chain.made
    plain = notched
    for k in range(4):
        assert shapely.equals_exact(chain.version(k), plain, tolerance=0.0), k
        plain = plain.simplify(TA.OCCUPANCY_SIMPLIFY_TOLERANCE, preserve_topology=True)
    assert chain.version(0) is notched and chain.made and calls == [1]
    assert len(shapely.get_coordinates(chain.version(3))) < len(shapely.get_coordinates(notched))
    # one pass changed it, the second found the fixed point: every later pass count is version 1 itself
    assert [chain.index(k) for k in range(4)] == [0, 1, 1, 1]
    assert all(chain.version(k) is chain.version(chain.index(k)) for k in range(6))
    fresh = TA._Simplified(lambda: notched)
    assert [fresh.index(k) for k in range(4)] == [0, 1, 2, 3]  # nothing known yet: the pass count itself


def _lane(x0, y0, heading, length=60.0):
    s = np.arange(0.0, length + 0.5, 1.0)
    return TA.InterpolatedPath(np.column_stack([x0 + s * math.cos(heading), y0 + s * math.sin(heading),
                                                np.full_like(s, heading)]))


def _scene(specs):
    """Agents (token, lane start x, y, heading, progress, velocity) with their boxes as the occupancy, an ego off the
    lanes but within the IDM radius."""
    agents = {tok: TA.IDMAgent(tok, 4.8, 2.0, _lane(x, y, h), p, v, TA.IDM_TARGET_VELOCITY, None)
              for tok, x, y, h, p, v in specs}
    occupancy = TA._OccupancyMap({tok: a.polygon() for tok, a in agents.items()})
    ego = np.zeros(11)
    ego[[0, 1, 2, 3]] = [-30.0, 40.0, 0.0, 4.0]
    return agents, occupancy, ego


def _run_both(specs, steps, monkeypatch):
    """(plain agents, plain occupancy, lazy agents, lazy occupancy, tree fallbacks of the lazy run) after `steps`."""
    plain_agents, plain_occ, ego = _scene(specs)
    lazy_agents, initial, _ = _scene(specs)
    lazy_occ = TA._LazyOccupancy(initial.geometries)
    for _ in range(steps):
        TA._propagate_plain(plain_agents, plain_occ, ego)
    calls = []
    original = TA._OccupancyMap.nearest_to
    monkeypatch.setattr(TA._OccupancyMap, "nearest_to", lambda self, key: calls.append(key) or original(self, key))
    for _ in range(steps):
        TA._propagate(lazy_agents, lazy_occ, ego)
    return plain_agents, plain_occ, lazy_agents, lazy_occ, calls


def _assert_same(plain_agents, plain_occ, lazy_agents, lazy_occ):
    import shapely

    assert list(plain_agents) == list(lazy_agents)
    for tok, a in plain_agents.items():  # bit for bit
        assert (a.progress, a.velocity) == (lazy_agents[tok].progress, lazy_agents[tok].velocity), tok
    built = lazy_occ.plain().geometries
    assert list(built) == list(plain_occ.geometries)
    for tok, g in plain_occ.geometries.items():
        assert shapely.equals_exact(g, built[tok], tolerance=0.0), tok


def test_lazy_occupancy_propagation_matches_the_query_by_query_devkit_rule(monkeypatch):
    # a follower closing on a slower leader (a unique nearest object), a car alone on a parallel lane (no entry
    # near its corridor: nothing is built for it), and one standing at the end of a lane with a car behind it (its
    # unchanged footprint and corridor are reused step after step)
    specs = [("lead", 0.0, 0.0, 0.0, 20.0, 2.0), ("follower", 0.0, 0.0, 0.0, 8.0, 8.0),
             ("alone", 0.0, 12.0, 0.0, 5.0, 6.0), ("stopped", -20.0, -12.0, 0.0, 57.0, 0.0),
             ("queue", -20.0, -12.0, 0.0, 44.0, 3.0)]
    plain_agents, plain_occ, lazy_agents, lazy_occ, fallbacks = _run_both(specs, 15, monkeypatch)
    assert not lazy_occ.entries["alone"].chain.made  # never needed by a query
    _assert_same(plain_agents, plain_occ, lazy_agents, lazy_occ)
    assert not fallbacks
    assert plain_agents["follower"].velocity < 8.0  # it did react to the leader
    assert plain_agents["stopped"].velocity == 0.0 and plain_agents["queue"].velocity < 3.0


def test_lazy_occupancy_tie_goes_to_the_devkit_tree(monkeypatch):
    """Two objects overlap the slow agent (distance 0 to both): the devkit's STR-tree traversal order picks the lead
    (here the crossing car, though the car ahead comes first in the occupancy), and the two leads give different
    braking (3 m/s ahead: s* = 1.16 m, -0.36 m/s^2; crossing, 0 m/s along the path: s* = 1.48 m, -1.20 m/s^2), so the
    lazy path must defer to the same tree."""
    specs = [("car", 0.0, 0.0, 0.0, 10.0, 0.3), ("ahead", 0.0, 0.0, 0.0, 14.0, 3.0),
             ("crossing", 11.0, -20.0, math.pi / 2, 20.0, 5.0)]
    plain_agents, plain_occ, lazy_agents, lazy_occ, fallbacks = _run_both(specs, 3, monkeypatch)
    _assert_same(plain_agents, plain_occ, lazy_agents, lazy_occ)
    assert "car" in fallbacks


def test_path_bounds_hold_the_trimmed_paths_and_their_buffers():
    import shapely

    s = np.arange(0.0, 40.0, 1.0)
    curve = TA.InterpolatedPath(np.column_stack([20 * np.cos(s / 20), 20 * np.sin(s / 20), s / 20 + math.pi / 2]))
    for progress in (0.0, 0.3, 7.0, 17.5, curve.end - 0.2, curve.end):
        points, bounds = curve.bounds_from(progress)
        xy = curve.xy_from(progress)
        assert len(xy) <= points
        held = TA._buffer_bounds(points, bounds, 1.0)
        got = shapely.bounds(shapely.LineString(xy).buffer(1.0, cap_style="flat"))
        assert held[0] <= got[0] and held[1] <= got[1] and held[2] >= got[2] and held[3] >= got[3], progress
        for end in (progress, progress + 0.4, progress + 6.0, curve.end):
            points, (lx, ly, hx, hy) = curve.bounds_between(progress, end)
            xy = curve.xy_between(progress, end)
            assert len(xy) <= points + 2
            assert (xy[:, 0] >= lx - 1e-9).all() and (xy[:, 0] <= hx + 1e-9).all(), (progress, end)
            assert (xy[:, 1] >= ly - 1e-9).all() and (xy[:, 1] <= hy + 1e-9).all(), (progress, end)


def test_chunked_corridor_check_never_drops_a_box_the_corridor_meets():
    """`may_meet_from` may keep boxes the corridor misses but never drops one it meets: random boxes around an S-bend
    (19 to 60 samples, progress anywhere, the path's end included) against the buffered path to go itself; boxes behind
    the agent, inside the bounds of the whole path to go, are dropped."""
    import shapely

    rng = np.random.default_rng(7)
    dropped = 0
    for n in (19, 33, 60):
        s = np.arange(0.0, float(n), 1.0)
        xy = np.column_stack([664_000.0 + 12 * np.sin(s / 9), 3_996_000.0 + s * 1.1 + 3 * np.cos(s / 5)])
        heading = np.arctan2(np.gradient(xy[:, 1]), np.gradient(xy[:, 0]))
        path = TA.InterpolatedPath(np.column_stack([xy, heading]))
        for progress in [*rng.uniform(path.start, path.end, 12), path.end]:
            points, _ = path.bounds_from(progress)
            grow = TA._buffer_grow(points, 0.9)
            corridor = shapely.LineString(path.xy_from(progress)).buffer(0.9, cap_style="flat")
            for x, y, half in zip(rng.uniform(-15, 15, 80), rng.uniform(-5, n * 1.1 + 5, 80), rng.uniform(0.2, 3, 80),
                                  strict=True):
                box = (664_000.0 + x - half, 3_996_000.0 + y - half, 664_000.0 + x + half, 3_996_000.0 + y + half)
                kept = path.may_meet_from(progress, grow, box)
                assert kept or not corridor.intersects(shapely.box(*box)), (n, progress, box)
                dropped += not kept
    assert dropped > 0
    straight = TA.InterpolatedPath(np.column_stack([np.zeros(40), np.arange(40.0), np.full(40, math.pi / 2)]))
    points, _ = straight.bounds_from(20.3)
    behind = (-1.0, 14.0, 1.0, 18.0)  # a follower 2-6 m behind the agent at y = 20.3, on its lane
    assert not straight.may_meet_from(20.3, TA._buffer_grow(points, 1.0), behind)
    assert straight.may_meet_from(20.3, TA._buffer_grow(points, 1.0), (-1.0, 24.0, 1.0, 28.0))  # a lead ahead


def test_a_lead_deep_in_the_corridor_is_met_by_the_buffered_path_to_go():
    """`_lead_deep_in_corridor` says yes only where the corridor GEOS builds (the path to go buffered by half the
    width) does hold the lead's box centre, so meets its footprint: leads at random progress ahead on S-bends of
    dense and sparse samples (map coordinates); no for a lead behind, on another path or next to the path's end."""
    import shapely

    rng = np.random.default_rng(11)
    said_yes = 0
    for n, spacing in ((25, 2.0), (60, 0.5), (120, 0.35)):
        s = np.arange(0.0, n * spacing, spacing)
        xy = np.column_stack([664_000.0 + 10 * np.sin(s / 7), 3_996_000.0 + s + 2 * np.cos(s / 4)])
        heading = np.arctan2(np.gradient(xy[:, 1]), np.gradient(xy[:, 0]))
        path = TA.InterpolatedPath(np.column_stack([xy, heading]))
        for progress in rng.uniform(path.start, path.end, 15):
            agent = _agent(path, progress)
            corridor = shapely.LineString(path.xy_from(path.clamp(progress))).buffer(agent.width / 2, cap_style="flat")
            for lead_progress in rng.uniform(path.start, path.end, 20):
                lead = _agent(path, lead_progress)
                if TA._lead_deep_in_corridor(agent, path.clamp(progress), lead):
                    said_yes += 1
                    x, y, _ = lead.pose()
                    assert lead_progress > progress
                    assert corridor.contains(shapely.Point(x, y)), (n, progress, lead_progress)
                    assert corridor.intersects(lead.projected_footprint()), (n, progress, lead_progress)
    assert said_yes > 100
    straight = TA.InterpolatedPath(np.column_stack([np.zeros(40), np.arange(40.0), np.full(40, math.pi / 2)]))
    other = TA.InterpolatedPath(np.column_stack([np.zeros(40), np.arange(40.0), np.full(40, math.pi / 2)]))
    agent = _agent(straight, 10.0)
    assert TA._lead_deep_in_corridor(agent, 10.0, _agent(straight, 18.0))
    assert not TA._lead_deep_in_corridor(agent, 10.0, _agent(straight, 4.0))  # behind
    assert not TA._lead_deep_in_corridor(agent, 10.0, _agent(other, 18.0))  # the same line, another lane's path
    assert not TA._lead_deep_in_corridor(agent, 10.0, _agent(straight, straight.end - 1.0))  # by the path's end
    assert not TA._lead_deep_in_corridor(agent, 10.0, _agent(straight, 11.5))  # by the corridor's start
    assert not TA._lead_deep_in_corridor(agent, 10.0, None)  # a static object or the ego


def test_trimmed_paths_are_the_interpolated_states_and_samples_bit_for_bit():
    """nuplan trim_path / trim_path_up_to_progress: the interpolated end states around the samples strictly between."""
    s = np.arange(0.0, 30.0, 1.0)
    curve = TA.InterpolatedPath(np.column_stack([15 * np.cos(s / 15), 15 * np.sin(s / 15), s / 15 + math.pi / 2]))
    rng = np.random.default_rng(1)
    for start, length in zip(rng.uniform(curve.start, curve.end, 50), rng.uniform(0.0, 8.0, 50), strict=True):
        end = min(start + length, curve.end)
        ends = curve.states_at([start, end])[:, :2]
        inner = curve.points[(curve.progress > start) & (curve.progress < end), :2]
        assert np.array_equal(curve.xy_between(start, end), np.vstack([ends[:1], inner, ends[1:]]))
        beyond = curve.points[curve.progress > start, :2]
        if len(beyond):
            assert np.array_equal(curve.xy_from(start), np.vstack([curve.states_at(start)[None, :2], beyond]))


def test_radius_check_is_the_devkit_hypot_comparison():
    """Far from the 100 m radius the squared distance decides; near it np.hypot does, as in the devkit."""
    rng = np.random.default_rng(3)
    ego = (664123.25, 3997456.5)
    angles = rng.uniform(-math.pi, math.pi, 400)
    radii = np.concatenate([rng.uniform(0.0, 300.0, 200), TA.IDM_RADIUS * (1 + rng.uniform(-3e-9, 3e-9, 100)),
                            np.nextafter(TA.IDM_RADIUS, [0.0, 1e3] * 50)])
    for a, r in zip(angles, radii, strict=True):
        pose = (ego[0] + r * math.cos(a), ego[1] + r * math.sin(a), 0.0)
        expected = bool(np.hypot(pose[0] - ego[0], pose[1] - ego[1]) > TA.IDM_RADIUS)
        assert TA._beyond_radius(pose, ego) == expected, (r, a)


def test_human_filter_is_simulated_only_where_it_can_change_the_row():
    """The filter sets a metric the human fails to 1: an agent passing every filtered metric keeps its row whatever
    the human does (v2_row with every metric failed by the human equals v2_row with none), so no human simulation is
    needed; an agent short of full progress can be changed by it."""
    from navsim_agents.scoring.pdm_score import V2_FILTERED, v2_row

    def result(progress):
        res = {c: np.array([0.0, 1.0]) for c in V2_FILTERED}
        res["ego_progress"] = np.array([0.3, progress])
        res["weighted"] = np.stack([res["ego_progress"], res["time_to_collision_within_bound"], res["lane_keeping"],
                                    res["history_comfort"], np.zeros(2)])
        res["weights"] = np.array([5.0, 5.0, 2.0, 2.0, 2.0])
        return res

    def row_without_arrays(row):
        return {k: v for k, v in row.items() if not k.startswith("_")}

    passing = result(1.0)
    assert row_without_arrays(v2_row(passing, 1, list(V2_FILTERED))) == pytest.approx(
        row_without_arrays(v2_row(passing, 1, [])), nan_ok=True)
    runner = TA.TrafficScoreRunner()
    assert not runner._filter_can_change(passing, 1)
    assert runner._filter_can_change(result(0.8), 1)  # a human failing ego_progress would raise it to 1
    assert runner._filter_can_change(passing, 0)  # proposal 0 fails every metric
    assert not TA.TrafficScoreRunner(human_penalty_filter=False)._filter_can_change(result(0.8), 1)
    short = v2_row(result(0.8), 1, ["ego_progress"])
    assert short["ego_progress"] == 1.0 and short["score"] == 1.0
