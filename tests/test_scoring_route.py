"""PDM route search (navsim_agents.scoring.route) through its one caller, PDM-Closed's build_route_context.

Runs on the hand-drawn map of test_data_maps (lanes 101/102 east on roadblock 10, connectors 20/21, roadblock
30 east and 40 south; see that module's docstring) and on the conformance set when present.
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import LineString
from test_data_maps import LOCATION, conformance_scenes, write_hand_drawn_map

from navsim_agents.data.maps import clear_maps_cache, get_maps_api
from navsim_agents.scoring.pdm_closed import build_route_context
from navsim_agents.scoring.route import PDMPath, load_route_dicts


@pytest.fixture(scope="module")
def hand_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    write_hand_drawn_map(root)
    clear_maps_cache()
    return get_maps_api(root, "nuplan-maps-v1.0", LOCATION)


def _centerline(nuplan_map, roadblock_ids, ego_rear):
    return build_route_context(nuplan_map, roadblock_ids, np.array(ego_rear, dtype=np.float64)).centerline


def test_route_centerline_straight_and_turn(hand_map):
    # ego on lane 102 heading east; route 10 -> 20 -> 30: lanes 102, 202, 302 = 100 + 20 + 100 m
    context = build_route_context(hand_map, ["10", "20", "30"], np.array([10.0, 1.75, 0.0]))
    assert context.start_lane_id == "102" and context.route_block_ids == ["10", "20", "30"]
    centerline = context.centerline
    assert isinstance(centerline, PDMPath)
    assert centerline.length == pytest.approx(220.0)
    assert centerline.project((150.0, 2.75)) == pytest.approx(150.0)
    np.testing.assert_allclose(centerline.project(np.array([[10.0, 0.0], [230.0, 1.75]])), [10.0, 220.0])
    np.testing.assert_allclose(centerline.interpolate([150.0]), [[150.0, 1.75, 0.0]], atol=1e-9)
    # ego on lane 101: the left lanes 101, 201, 301
    centerline = _centerline(hand_map, ["10", "20", "30"], (10.0, 5.25, 0.0))
    assert centerline.project((150.0, 5.25)) == pytest.approx(150.0)
    assert centerline.linestring.distance(shapely.Point(150, 5.25)) == pytest.approx(0.0)
    # right turn 10 -> 21 -> 40 from lane 102: 100 + 7 + 100 m; (105.25, -50) is 100 + 7 + 50 m along
    centerline = _centerline(hand_map, ["10", "21", "40"], (10.0, 1.75, 0.0))
    assert centerline.length == pytest.approx(207.0)
    assert centerline.project((106.0, -50.0)) == pytest.approx(157.0)
    np.testing.assert_allclose(centerline.interpolate(157.0), [105.25, -50.0, -np.pi / 2], atol=1e-9)
    # repeated ids are dropped, unknown ids skipped
    assert list(load_route_dicts(hand_map, ["10", "10", "20", "777", "30"])[0]) == ["10", "20", "30"]


def test_route_correction_prepends_missing_start(hand_map):
    # the route starts at the connector but the ego is still on roadblock 10: a backward search prepends 10
    context = build_route_context(hand_map, ["20", "30"], np.array([50.0, 1.75, 0.0]))
    assert context.route_block_ids[0] == "10"
    assert context.centerline.length == pytest.approx(220.0)
    assert context.centerline.project((50.0, 1.75)) == pytest.approx(50.0)


def test_unknown_route_names_the_roadblocks(hand_map):
    with pytest.raises(ValueError, match="777"):
        build_route_context(hand_map, ["777"], np.array([10.0, 1.75, 0.0]))


def test_pdm_path_substring_and_headings():
    path = PDMPath(np.array([[0, 0, 0], [10, 0, 0], [10, 10, np.pi / 2]], dtype=float))
    assert path.length == pytest.approx(20.0)
    np.testing.assert_allclose(path.progress, [0, 10, 20])
    # halfway along the second leg; heading linearly interpolated between the vertices
    np.testing.assert_allclose(path.interpolate(15.0), [10, 5, np.pi / 4])
    np.testing.assert_allclose(path.interpolate([-1.0, 99.0])[:, :2], [[1e-5, 0], [10, 10]], atol=1e-9)
    # one vertex inside [5, 15]: falls back to shapely's substring (5, 0) -> (10, 0) -> (10, 5)
    assert path.substring(5.0, 15.0).length == pytest.approx(10.0)
    assert path.substring(0.0, 10.0).equals(LineString([(0, 0), (10, 0)]))


def test_distances_up_to_a_limit_are_the_full_line_distances():
    """Within the limit: the floats of shapely.distance to the whole path; beyond it: above the limit. Points along
    and across a winding path at map coordinates, some exactly on vertices, some far away."""
    rng = np.random.default_rng(3)
    heading = np.cumsum(rng.normal(0.0, 0.15, 300))
    xy = np.array([664_000.0, 3_996_000.0]) + np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]), axis=0)
    path = PDMPath(np.column_stack([xy, heading]))
    for spread in (0.3, 0.6, 3.0, 40.0):
        start = int(rng.integers(0, 250))
        points = xy[start: start + 40] + rng.normal(0.0, spread, (40, 2))
        points[::7] = xy[start: start + 40: 7]  # on the path: distance 0
        for shape in ((40, 2), (4, 10, 2)):
            full = shapely.distance(shapely.points(points), path.linestring).reshape(shape[:-1])
            near = path.distances_up_to(points.reshape(shape), 0.5)
            assert near.shape == shape[:-1]
            inside = full <= 0.5
            assert np.array_equal(near[inside], full[inside])
            assert np.all(near[~inside] > 0.5)
    assert np.all(path.distances_up_to(xy[:5] + 100.0, 0.5) > 0.5)  # nothing of the path nearby


def test_conformance_route_follows_the_logged_future():
    from navsim_agents.data.dataclasses import convert_relative_to_absolute_se2_array

    for token, scene in conformance_scenes():
        current = scene.frames[3]
        pose = np.asarray(current.ego_status.ego_pose, dtype=np.float64)
        # the logged future of this set drives along the lane centres of the route
        centerline = _centerline(scene.map_api, current.roadblock_ids, pose)
        future = convert_relative_to_absolute_se2_array(pose, scene.get_future_trajectory().poses)
        distances = shapely.distance(centerline.linestring, shapely.points(future[:, :2]))
        assert distances.max() < 0.05, token
