"""nuPlan GeoPackage map API on a hand-drawn map with known geometry (and the conformance map when present).

Hand-drawn map (metres, EPSG:32617), traffic drives east (+x) and, after a right turn, south (-y):

    roadblock 10: x 0..100, y 0..7; lanes 101 (y 3.5..7, index 0) and 102 (y 0..3.5, index 1)
    roadblock connector 20: x 100..120; lane connectors 201 (101 -> 301) and 202 (102 -> 302), straight
    roadblock connector 21: lane connector 211 (102 -> 401), right turn via (105.25, 1.75), 7 m long
    roadblock 30: x 120..220; lanes 301 (y 3.5..7, index 0) and 302 (y 0..3.5, index 1)
    roadblock 40: x 103.5..107, y -100..0; lane 401 going south
    crosswalk 60: x 90..94, y 0..7; walkway 70: y 7..10; carpark 80: x 0..30, y 20..40
    intersection 50: x 100..120, y 0..7; traffic-light stop polygon 90 on lane 102 at x 98..100
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import conformance_path
from shapely.geometry import LineString, box

from navsim_agents.data.maps import (
    SemanticMapLayer,
    StopLineType,
    clear_maps_cache,
    get_maps_api,
)

LOCATION = "us-pa-pittsburgh-hazelwood"
VERSION = "9.17.1937"
CRS = "EPSG:32617"


def _write_layer(path: Path, layer: str, rows: list[dict]) -> None:
    import geopandas as gpd

    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=CRS)
    frame.to_file(path, layer=layer, driver="GPKG", engine="pyogrio")


def write_hand_drawn_map(maps_root: Path) -> Path:
    """Write the map above in the nuPlan layout; returns the gpkg path."""
    import pandas as pd
    import pyogrio

    (maps_root / LOCATION / VERSION).mkdir(parents=True)
    (maps_root / "nuplan-maps-v1.0.json").write_text(json.dumps({LOCATION: {"version": VERSION}}))
    gpkg = maps_root / LOCATION / VERSION / "map.gpkg"

    def lane(fid, group, index, y0, y1, x0=0.0, x1=100.0, speed=13.4):
        return {"fid": fid, "lane_fid": fid, "lane_group_fid": group, "lane_index": index,
                "left_boundary_fid": 1000 + 2 * fid, "right_boundary_fid": 1001 + 2 * fid,
                "speed_limit_mps": speed, "creator_id": 0, "geometry": box(x0, y0, x1, y1)}

    lanes = [lane(101, 10, 0, 3.5, 7.0), lane(102, 10, 1, 0.0, 3.5),
             lane(301, 30, 0, 3.5, 7.0, 120, 220), lane(302, 30, 1, 0.0, 3.5, 120, 220),
             {**lane(401, 40, 0, -100.0, 0.0), "geometry": box(103.5, -100, 107, 0)}]
    _write_layer(gpkg, "lanes_polygons", lanes)
    _write_layer(gpkg, "lane_groups_polygons", [
        {"fid": 10, "from_edge_fid": 0, "to_edge_fid": 0, "creator_id": 0, "geometry": box(0, 0, 100, 7)},
        {"fid": 30, "from_edge_fid": 0, "to_edge_fid": 0, "creator_id": 0, "geometry": box(120, 0, 220, 7)},
        {"fid": 40, "from_edge_fid": 0, "to_edge_fid": 0, "creator_id": 0, "geometry": box(103.5, -100, 107, 0)},
    ])
    connector_lines = {201: LineString([(100, 5.25), (120, 5.25)]), 202: LineString([(100, 1.75), (120, 1.75)]),
                       211: LineString([(100, 1.75), (105.25, 1.75), (105.25, 0.0)])}
    _write_layer(gpkg, "lane_connectors", [
        {"fid": 201, "exit_lane_fid": 101, "entry_lane_fid": 301, "lane_group_connector_fid": 20,
         "intersection_fid": 50, "traffic_light_stop_line_fids": "", "speed_limit_mps": 13.4, "turn_type_fid": 0,
         "geometry": connector_lines[201]},
        {"fid": 202, "exit_lane_fid": 102, "entry_lane_fid": 302, "lane_group_connector_fid": 20,
         "intersection_fid": 50, "traffic_light_stop_line_fids": "90", "speed_limit_mps": 13.4, "turn_type_fid": 0,
         "geometry": connector_lines[202]},
        {"fid": 211, "exit_lane_fid": 102, "entry_lane_fid": 401, "lane_group_connector_fid": 21,
         "intersection_fid": 50, "traffic_light_stop_line_fids": "", "speed_limit_mps": 6.0, "turn_type_fid": 2,
         "geometry": connector_lines[211]},
    ])
    _write_layer(gpkg, "lane_group_connectors", [
        {"fid": 20, "from_lane_group_fid": 10, "to_lane_group_fid": 30, "intersection_fid": 50,
         "geometry": box(100, 0, 120, 7)},
        {"fid": 21, "from_lane_group_fid": 10, "to_lane_group_fid": 40, "intersection_fid": 50,
         "geometry": box(100, 0, 107, 3.5)},
    ])
    _write_layer(gpkg, "gen_lane_connectors_scaled_width_polygons", [
        {"fid": 201, "lane_connector_fid": 201, "left_boundary_fid": 1500, "right_boundary_fid": 1501,
         "geometry": box(100, 3.5, 120, 7)},
        {"fid": 202, "lane_connector_fid": 202, "left_boundary_fid": 1502, "right_boundary_fid": 1503,
         "geometry": box(100, 0, 120, 3.5)},
        {"fid": 211, "lane_connector_fid": 211, "left_boundary_fid": 1504, "right_boundary_fid": 1505,
         "geometry": box(103.5, 0, 107, 3.5)},
    ])
    baselines = [
        {"fid": 1, "lane_fid": 101.0, "lane_connector_fid": None, "geometry": LineString([(0, 5.25), (100, 5.25)])},
        {"fid": 2, "lane_fid": 102.0, "lane_connector_fid": None,
         "geometry": LineString([(0, 1.75), (50, 1.75), (100, 1.75)])},
        {"fid": 3, "lane_fid": 301.0, "lane_connector_fid": None, "geometry": LineString([(120, 5.25), (220, 5.25)])},
        {"fid": 4, "lane_fid": 302.0, "lane_connector_fid": None, "geometry": LineString([(120, 1.75), (220, 1.75)])},
        {"fid": 5, "lane_fid": 401.0, "lane_connector_fid": None,
         "geometry": LineString([(105.25, 0), (105.25, -100)])},
    ] + [{"fid": 5 + i, "lane_fid": None, "lane_connector_fid": float(k), "geometry": line}
         for i, (k, line) in enumerate(connector_lines.items(), start=1)]
    _write_layer(gpkg, "baseline_paths", baselines)
    boundaries = [{"fid": 1000 + 2 * f + s, "boundary_type_fid": 0,
                   "geometry": LineString([(0, y), (100, y)])}
                  for f, ys in ((101, (7.0, 3.5)), (102, (3.5, 0.0))) for s, y in enumerate(ys)]
    _write_layer(gpkg, "boundaries", boundaries)
    _write_layer(gpkg, "intersections", [{"fid": 50, "intersection_type_fid": 1, "geometry": box(100, 0, 120, 7)}])
    _write_layer(gpkg, "stop_polygons", [
        {"fid": 90, "stop_polygon_type_fid": int(StopLineType.TRAFFIC_LIGHT), "lane_fid": 102,
         "geometry": box(98, 0, 100, 3.5)},
        {"fid": 91, "stop_polygon_type_fid": int(StopLineType.TURN_STOP), "lane_fid": 101,
         "geometry": box(98, 3.5, 100, 7)},
    ])
    _write_layer(gpkg, "crosswalks", [{"fid": 60, "creator_id": 0, "geometry": box(90, 0, 94, 7)}])
    _write_layer(gpkg, "walkways", [{"fid": 70, "geometry": box(0, 7, 100, 10)}])
    _write_layer(gpkg, "carpark_areas", [{"fid": 80, "geometry": box(0, 20, 30, 40)}])
    _write_layer(gpkg, "road_segments", [{"fid": 75, "geometry": box(0, 0, 100, 7)}])
    _write_layer(gpkg, "generic_drivable_areas", [{"fid": 76, "geometry": box(30, 7, 40, 20)}])
    pyogrio.write_dataframe(
        pd.DataFrame({"key": ["projectedCoordSystem", "mapVersion"], "value": [CRS, VERSION]}), gpkg, layer="meta"
    )
    return gpkg


@pytest.fixture(scope="module")
def hand_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    write_hand_drawn_map(root)
    clear_maps_cache()
    return get_maps_api(root, "nuplan-maps-v1.0", LOCATION), root


def _ids(objects):
    return [obj.id for obj in objects]


def test_open_cache_and_alias(hand_map):
    nuplan_map, root = hand_map
    assert get_maps_api(str(root), "nuplan-maps-v1.0", LOCATION + ".gpkg") is nuplan_map
    assert nuplan_map.map_name == LOCATION and nuplan_map.map_version == VERSION
    with pytest.raises(ValueError) as info:
        get_maps_api(root, "nuplan-maps-v1.0", "us-ca-atlantis")
    assert LOCATION in str(info.value) and "us-ca-atlantis" in str(info.value)
    # "las_vegas" is an alias of the strip: known name, but this root has no such map
    with pytest.raises(ValueError, match="us-nv-las-vegas-strip"):
        get_maps_api(root, "nuplan-maps-v1.0", "las_vegas")
    # pickled (e.g. to a worker) as its file name and reopened once per process
    assert pickle.loads(pickle.dumps(nuplan_map)) is nuplan_map
    with pytest.raises(FileNotFoundError) as info:
        get_maps_api(root / "missing", "nuplan-maps-v1.0", LOCATION)
    assert "NUPLAN_MAPS_ROOT" in str(info.value) and str(root / "missing") in str(info.value)


def test_containment(hand_map):
    nuplan_map, _ = hand_map
    assert _ids(nuplan_map.get_all_map_objects((50, 5), SemanticMapLayer.LANE)) == ["101"]
    assert nuplan_map.get_one_map_object((50, 1), SemanticMapLayer.ROADBLOCK).id == "10"
    # points on a shared edge are inside neither polygon (strict containment, as nuplan)
    assert nuplan_map.get_all_map_objects((50, 3.5), SemanticMapLayer.LANE) == []
    # lane connectors are found by their polygons: (105, 1) is in 202 and in the turn 211
    assert _ids(nuplan_map.get_all_map_objects((105, 1), SemanticMapLayer.LANE_CONNECTOR)) == ["202", "211"]
    assert _ids(nuplan_map.get_all_map_objects((110, 1), SemanticMapLayer.LANE_CONNECTOR)) == ["202"]
    assert _ids(nuplan_map.get_all_map_objects((105, 1), SemanticMapLayer.ROADBLOCK_CONNECTOR)) == ["20", "21"]
    assert nuplan_map.is_in_layer((10, 30), SemanticMapLayer.CARPARK_AREA)
    assert not nuplan_map.is_in_layer((50, 15), SemanticMapLayer.LANE)
    assert nuplan_map.is_in_layer((92, 3), SemanticMapLayer.CROSSWALK)
    assert nuplan_map.is_in_layer((99, 5), SemanticMapLayer.TURN_STOP)
    assert not nuplan_map.is_in_layer((99, 1), SemanticMapLayer.TURN_STOP)  # traffic-light stop, not turn stop
    inside = nuplan_map.points_in_layer([[50, 5], [110, 3], [50, 15], [35, 15]], SemanticMapLayer.DRIVABLE_AREA)
    np.testing.assert_array_equal(inside, [True, True, False, True])
    inside = nuplan_map.points_in_layer([[50, 5], [110, 3], [104, -50]], SemanticMapLayer.ROADBLOCK)
    np.testing.assert_array_equal(inside, [True, False, True])


def test_radius_queries(hand_map):
    nuplan_map, _ = hand_map
    layers = [SemanticMapLayer.CROSSWALK, SemanticMapLayer.LANE, SemanticMapLayer.LANE_CONNECTOR]
    # square [92, 98] x [0.5, 6.5]: the crosswalk (90..94) and both lanes; connectors start at x = 100
    near = nuplan_map.get_proximal_map_objects((95, 3.5), 3.0, layers)
    assert _ids(near[SemanticMapLayer.CROSSWALK]) == ["60"]
    assert _ids(near[SemanticMapLayer.LANE]) == ["101", "102"]
    assert near[SemanticMapLayer.LANE_CONNECTOR] == []
    near = nuplan_map.get_proximal_map_objects((95, 3.5), 6.0, layers)
    assert _ids(near[SemanticMapLayer.LANE_CONNECTOR]) == ["201", "202", "211"]
    assert _ids(nuplan_map.get_proximal_map_objects((105.25, -60), 5.0, [SemanticMapLayer.LANE])[
        SemanticMapLayer.LANE]) == ["401"]
    # a square, not a disc (nuplan): the carpark corner (30, 40) is 4.24 m from (33, 43) but inside the square
    carpark = SemanticMapLayer.CARPARK_AREA
    assert _ids(nuplan_map.get_proximal_map_objects((33, 43), 3.5, [carpark])[carpark]) == ["80"]
    assert nuplan_map.get_proximal_map_objects((33, 43), 2.9, [carpark])[carpark] == []
    object_id, distance = nuplan_map.get_distance_to_nearest_map_object((10, 12), SemanticMapLayer.CARPARK_AREA)
    assert object_id == "80" and distance == pytest.approx(8.0)


def test_lane_graph(hand_map):
    nuplan_map, _ = hand_map
    lane_102 = nuplan_map.get_map_object("102", SemanticMapLayer.LANE)
    assert _ids(lane_102.outgoing_edges) == ["202", "211"] and lane_102.incoming_edges == []
    connector = nuplan_map.get_map_object(202, SemanticMapLayer.LANE_CONNECTOR)
    assert _ids(connector.outgoing_edges) == ["302"] and _ids(connector.incoming_edges) == ["102"]
    assert _ids(nuplan_map.get_map_object("302", SemanticMapLayer.LANE).incoming_edges) == ["202"]
    assert connector.get_roadblock_id() == "20" and connector.parent.id == "20"
    assert connector.has_traffic_lights() and _ids(connector.stop_lines) == ["90"]
    assert connector.polygon.equals(box(100, 0, 120, 3.5))
    turn = nuplan_map.get_map_object(211, SemanticMapLayer.LANE_CONNECTOR)
    assert turn.polygon.equals(box(103.5, 0, 107, 3.5)) and turn.polygon is turn.polygon  # read once, then kept
    assert connector.polygon.equals(box(100, 0, 120, 3.5))
    assert connector.baseline_path.length == pytest.approx(20.0)
    roadblock = nuplan_map.get_map_object("10", SemanticMapLayer.ROADBLOCK)
    assert _ids(roadblock.outgoing_edges) == ["20", "21"] and _ids(roadblock.interior_edges) == ["101", "102"]
    assert _ids(nuplan_map.get_map_object("20", SemanticMapLayer.ROADBLOCK_CONNECTOR).interior_edges) == ["201", "202"]
    assert _ids(nuplan_map.get_map_object("30", SemanticMapLayer.ROADBLOCK).incoming_edges) == ["20"]
    assert nuplan_map.get_map_object("21", SemanticMapLayer.ROADBLOCK_CONNECTOR).intersection.id == "50"
    lane_101 = nuplan_map.get_map_object("101", SemanticMapLayer.LANE)
    left, right = lane_101.adjacent_edges
    assert left is None and right.id == "102" and lane_101.is_left_of(lane_102)
    assert lane_101.speed_limit_mps == pytest.approx(13.4) and lane_101.parent.id == "10"
    assert lane_101.left_boundary.linestring.equals(LineString([(0, 7), (100, 7)]))
    # discrete path headings: east along 102, the last vertex repeats the previous heading
    np.testing.assert_allclose(lane_102.baseline_path.discrete_path[:, 2], [0, 0, 0])
    np.testing.assert_allclose(
        nuplan_map.get_map_object("211", SemanticMapLayer.LANE_CONNECTOR).baseline_path.discrete_path[:, 2],
        [0, -np.pi / 2, -np.pi / 2],
    )
    assert nuplan_map.get_map_object("999", SemanticMapLayer.LANE) is None


def conformance_scenes():
    """(token, scene) of the navsim_dev conformance set with its nuPlan map; skips the test when it is absent."""
    root = conformance_path("navsim_dev")
    if not (root / "maps" / "nuplan-maps-v1.0.json").is_file():
        pytest.skip(f"conformance set navsim_dev not found at {root}")
    from navsim_agents.data.dataclasses import SceneFilter
    from navsim_agents.data.scene_loader import SceneLoader

    tokens = json.loads((root / "scene_tokens.json").read_text())
    loader = SceneLoader(root / "navsim_logs" / "navsim_dev", None, SceneFilter(4, 10, 1, tokens=tokens),
                         map_root=root / "maps", map_version="nuplan-maps-v1.0")
    for token in loader.tokens:
        yield token, loader.get_scene_from_token(token)


def test_conformance_ego_stands_on_its_route():
    for token, scene in conformance_scenes():
        current = scene.frames[3]
        pose = current.ego_status.ego_pose
        # the ego stands in a roadblock (or connector) of its own route
        route = set(current.roadblock_ids)
        containing = {b.id for layer in (SemanticMapLayer.ROADBLOCK, SemanticMapLayer.ROADBLOCK_CONNECTOR)
                      for b in scene.map_api.get_all_map_objects(pose[:2], layer)}
        assert containing & route, token
