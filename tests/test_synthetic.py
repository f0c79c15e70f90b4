"""Synthetic navmini world: determinism, log schema, loader round trip, no overlaps, expert stays drivable."""

import functools
import pickle
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import conformance_path

from navsim_agents.data import synthetic
from navsim_agents.data.synthetic import SPLIT, generate_world, log_name

TINY = dict(num_train_logs=1, num_test_logs=1, frames_per_log=14, image_size=(96, 54), workers=1, warmup_s=3.0)
EGO_FRONT, EGO_REAR, EGO_HALF_WIDTH = 4.049, 1.127, 1.1485  # nuplan vehicle_parameters.py (Pacifica)


def _conformance() -> Path | None:
    root = conformance_path("navsim_dev")
    return root if root.is_dir() else None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("navmini_a")
    generate_world(root, seed=3, **TINY)
    return root


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(root: Path):
    for pkl in sorted((root / "navsim_logs" / SPLIT).glob("*.pkl")):
        with open(pkl, "rb") as handle:
            yield pkl.stem, pickle.load(handle)


def test_same_seed_is_byte_identical(world, tmp_path):
    generate_world(tmp_path, seed=3, **TINY)
    a, b = _files(world), _files(tmp_path)
    assert sorted(a) == sorted(b)
    assert any(k.endswith(".jpg") for k in a) and any(k.endswith(".gpkg") for k in a)
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"files differ between two generations: {different[:5]}"


def _reference_schema():
    """(key -> python type) of a frame and of its cams / anns entries, from the conformance pickles when
    present, else from the spec (navsim.md section 5)."""
    conf = _conformance()
    if conf is None:
        return None
    with open(next(iter(sorted((conf / "navsim_logs" / "navsim_dev").glob("*.pkl")))), "rb") as handle:
        return pickle.load(handle)[1]


SPEC_KEYS = ["token", "frame_idx", "timestamp", "log_name", "log_token", "scene_name", "scene_token", "map_location",
             "vehicle_name", "roadblock_ids", "can_bus", "lidar_path", "lidar2ego_translation", "lidar2ego_rotation",
             "ego2global_translation", "ego2global_rotation", "ego2global", "lidar2ego", "lidar2global",
             "ego_dynamic_state", "traffic_lights", "driving_command", "sample_prev", "sample_next", "cams", "anns"]
SPEC_SHAPES = {"can_bus": (18,), "lidar2ego_translation": (3,), "lidar2ego_rotation": (4,),
               "ego2global_translation": (3,), "ego2global_rotation": (4,), "ego2global": (4, 4), "lidar2ego": (4, 4),
               "lidar2global": (4, 4), "driving_command": (4,)}
CAMS = ["CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0"]


def _check_like(ours, ref, where):
    """Same python type; same dtype kind and rank for arrays."""
    if ref is None:
        return
    assert type(ours) is type(ref) or (isinstance(ours, str) and isinstance(ref, str)), \
        f"{where}: {type(ours).__name__} vs {type(ref).__name__}"
    if isinstance(ref, np.ndarray):
        assert ours.dtype.kind == ref.dtype.kind and ours.ndim == ref.ndim, f"{where}: {ours.dtype}{ours.shape}"


def test_every_frame_matches_the_log_schema(world):
    ref = _reference_schema()
    n = 0
    for name, frames in _frames(world):
        assert len(frames) == 14
        for k, frame in enumerate(frames):
            n += 1
            assert sorted(frame) == sorted(SPEC_KEYS)
            if ref is not None:
                assert sorted(frame) == sorted(ref)
                for key in SPEC_KEYS:
                    if key not in ("sample_prev", "sample_next", "cams", "anns"):
                        _check_like(frame[key], ref[key], key)
                for key in ref["anns"]:
                    _check_like(frame["anns"][key], ref["anns"][key], f"anns.{key}")
                for key in ref["cams"]["CAM_F0"]:
                    _check_like(frame["cams"]["CAM_F0"][key], ref["cams"]["CAM_F0"][key], f"cams.{key}")
            for key, shape in SPEC_SHAPES.items():
                assert np.shape(frame[key]) == shape, key
            assert frame["log_name"] == name and frame["frame_idx"] == k
            assert frame["sample_prev"] == (frames[k - 1]["token"] if k else None)
            assert frame["sample_next"] == (frames[k + 1]["token"] if k + 1 < len(frames) else None)
            assert frame["timestamp"] - frames[0]["timestamp"] == 500_000 * k
            assert frame["driving_command"].sum() == 1
            assert len(frame["ego_dynamic_state"]) == 4
            assert frame["roadblock_ids"] and all(isinstance(r, str) for r in frame["roadblock_ids"])
            assert all(isinstance(c, int) and isinstance(r, bool) for c, r in frame["traffic_lights"])
            assert sorted(frame["cams"]) == sorted(CAMS)
            for cam in frame["cams"].values():
                assert cam["sensor2lidar_rotation"].shape == (3, 3) and cam["cam_intrinsic"].shape == (3, 3)
                assert cam["sensor2lidar_translation"].shape == (3,) and cam["distortion"].shape == (5,)
            anns = frame["anns"]
            m = len(anns["gt_boxes"])
            assert anns["gt_boxes"].shape == (m, 7) and anns["gt_velocity_3d"].shape == (m, 3)
            assert len(anns["gt_names"]) == len(anns["instance_tokens"]) == len(anns["track_tokens"]) == m
            assert set(map(str, anns["gt_names"])) <= {"vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier",
                                                        "czone_sign", "generic_object"}
            # transforms agree with the quaternion (yaw) and translation
            yaw = 2 * np.arctan2(frame["ego2global_rotation"][3], frame["ego2global_rotation"][0])
            np.testing.assert_allclose(frame["ego2global"][:2, :2],
                                       [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]], atol=1e-9)
            np.testing.assert_allclose(frame["ego2global"][:3, 3], frame["ego2global_translation"])
            np.testing.assert_allclose(frame["lidar2global"], frame["ego2global"] @ frame["lidar2ego"])
    assert n == 28
    # the scene loader's own frame validator agrees
    from navsim_agents.data.scene_loader import validate_frame

    for _, frames in _frames(world):
        for frame in frames:
            assert validate_frame(frame) == []


def test_images_exist_for_rap_cameras(world):
    import cv2

    for _, frames in _frames(world):
        for frame in frames[:2]:
            for cam in ("CAM_F0", "CAM_L0", "CAM_R0", "CAM_B0"):
                img = cv2.imread(str(world / "sensor_blobs" / SPLIT / frame["cams"][cam]["data_path"]))
                assert img is not None and img.shape == (54, 96, 3)
            f0 = cv2.imread(str(world / "sensor_blobs" / SPLIT / frame["cams"]["CAM_F0"]["data_path"]))
            assert f0.max() > 50  # the road ahead is drawn


def test_scene_loader_reads_it_back(world):
    from navsim_agents.data.dataclasses import SceneFilter, SensorConfig
    from navsim_agents.data.scene_loader import SceneLoader

    scene_filter = SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1, has_route=True)
    sensors = SensorConfig.build_no_sensors()
    sensors.cam_f0 = [3]
    loader = SceneLoader(world / "navsim_logs" / SPLIT, world / "sensor_blobs" / SPLIT, scene_filter, sensors)
    # 14-frame logs give one 14-frame window each; the token is the 4th frame
    assert len(loader.tokens) == 2
    per_log = loader.get_tokens_list_per_log()
    assert sorted(per_log) == sorted([log_name("train", 0), log_name("test", 0)])
    frames = dict(_frames(world))
    for name, tokens in per_log.items():
        assert tokens == [frames[name][3]["token"]]
    agent_input = loader.get_agent_input_from_token(loader.tokens[0])
    assert agent_input.cameras[-1].cam_f0.image.shape == (54, 96, 3)
    scene = loader.get_scene_from_token(loader.tokens[0])
    future = scene.get_future_trajectory(8)
    assert future.poses.shape == (8, 3)


def _ego_footprint(frame):
    """Ego rear-axle-frame footprint in global coordinates."""
    corners = np.array([[EGO_FRONT, EGO_HALF_WIDTH], [EGO_FRONT, -EGO_HALF_WIDTH], [-EGO_REAR, -EGO_HALF_WIDTH],
                        [-EGO_REAR, EGO_HALF_WIDTH]])
    e2g = frame["ego2global"]
    return shapely.Polygon(corners @ e2g[:2, :2].T + e2g[:2, 3])


def _box_polygon(box, e2g):
    x, y, _, length, width, _, yaw = box
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[length / 2, width / 2], [length / 2, -width / 2], [-length / 2, -width / 2],
                      [-length / 2, width / 2]])
    pts = local @ np.array([[c, -s], [s, c]]).T + [x, y]
    return shapely.Polygon(pts @ e2g[:2, :2].T + e2g[:2, 3])


def test_no_two_agents_overlap(world):
    for name, frames in _frames(world):
        for frame in frames:
            polys = [_ego_footprint(frame)] + [_box_polygon(b, frame["ego2global"]) for b in frame["anns"]["gt_boxes"]]
            for i in range(len(polys)):
                for j in range(i + 1, len(polys)):
                    assert not polys[i].intersects(polys[j]), f"{name} frame {frame['frame_idx']}: {i} and {j} overlap"


def test_expert_stays_in_the_drivable_area(world):
    import geopandas as gpd

    gpkg = world / "maps" / synthetic.MAP_LOCATION
    gpkg = next(gpkg.rglob("map.gpkg"))
    layers = ("lane_groups_polygons", "lane_group_connectors", "intersections", "carpark_areas")
    drivable = shapely.union_all([g for layer in layers for g in gpd.read_file(gpkg, layer=layer).geometry])
    for name, frames in _frames(world):
        for frame in frames:
            assert drivable.contains(_ego_footprint(frame)), f"{name} frame {frame['frame_idx']} leaves the road"


def test_map_has_the_nuplan_layers_and_columns(world):
    import pyogrio

    gpkg = next((world / "maps").rglob("us-pa-pittsburgh-hazelwood/*/map.gpkg"))
    ours = {name: set(pyogrio.read_info(gpkg, layer=name)["fields"]) for name, _ in pyogrio.list_layers(gpkg)}
    needed = ["lanes_polygons", "lane_groups_polygons", "lane_connectors", "lane_group_connectors",
              "gen_lane_connectors_scaled_width_polygons", "baseline_paths", "boundaries", "intersections",
              "carpark_areas", "stop_polygons", "crosswalks", "walkways", "meta"]
    assert set(needed) <= set(ours)
    assert {"lane_fid", "lane_group_fid", "lane_index", "speed_limit_mps"} <= ours["lanes_polygons"]
    assert {"exit_lane_fid", "entry_lane_fid", "traffic_light_stop_line_fids"} <= ours["lane_connectors"]
    conf = _conformance()
    if conf is not None:
        ref_gpkg = next((conf / "maps").rglob("us-pa-pittsburgh-hazelwood/*/map.gpkg"))
        for name, _ in pyogrio.list_layers(ref_gpkg):
            assert set(pyogrio.read_info(ref_gpkg, layer=name)["fields"]) == ours[name], name
    assert (world / "maps" / "nuplan-maps-v1.0.json").is_file()


def test_ensure_navmini_reuses_and_rebuilds(tmp_path, monkeypatch):
    calls = []

    def fake_generate(root, **kw):
        calls.append(root)
        (Path(root) / "navsim_logs" / SPLIT).mkdir(parents=True)
        return root

    monkeypatch.setattr(synthetic, "generate_world", fake_generate)
    target = tmp_path / f"navmini-v{synthetic.VERSION}"
    target.mkdir()
    (target / "half_written.pkl").write_bytes(b"junk")  # an interrupted run: no completion marker
    first = synthetic.ensure_navmini(tmp_path, progress=False)
    assert first == target and len(calls) == 1
    assert not (target / "half_written.pkl").exists() and (target / synthetic.MARKER).is_file()
    assert synthetic.ensure_navmini(tmp_path, progress=False) == target
    assert len(calls) == 1  # reused
    monkeypatch.setenv("EUPE_DRIVE_CACHE", str(tmp_path / "env"))
    assert synthetic.default_cache_root() == tmp_path / "env"


def test_map_reader_primitives_render_like_the_town(world):
    """The gpkg read back through the nuPlan map API re-renders the same scene as the in-memory town."""
    from navsim_agents.data.maps import get_maps_api
    from navsim_agents.data.scene_raster import primitives_from_map_api
    from navsim_agents.data.synthetic_town import build_town
    from rap_backbone.raster import default_camera_rig, render_cameras

    map_api = get_maps_api(world / "maps", "nuplan-maps-v1.0", synthetic.MAP_LOCATION)
    frame = next(_frames(world))[1][5]
    e2g = frame["ego2global"]
    pose = (e2g[0, 3], e2g[1, 3], np.arctan2(e2g[1, 0], e2g[0, 0]))
    cams = default_camera_rig(["CAM_F0", "CAM_B0"], (240, 135))
    a = render_cameras(cams, ego_pose=pose, map_primitives=primitives_from_map_api(map_api, pose[:2], 150.0))
    b = render_cameras(cams, ego_pose=pose, map_primitives=build_town().render_primitives(pose[:2], 150.0))
    for name in a:
        drawn = (a[name].sum(-1) > 0) | (b[name].sum(-1) > 0)
        same = (np.abs(a[name].astype(int) - b[name].astype(int)).sum(-1) <= 30) & drawn
        assert drawn.sum() > 100 and same.sum() / drawn.sum() > 0.8


def test_traffic_drives_with_pdm_closed_idm():
    """A car behind a slower one on a straight lane accelerates as PDM-Closed's IDM step (navsim
    batch_idm_policy.py: a 1.5, b 3.0, s0 1.0 m, T 1.5 s, exponent 10), where neither clip acts; on a free
    road a * (1 - (v / v0)^10)."""
    from navsim_agents.data.synthetic_traffic import Path, Traffic
    from navsim_agents.idm import pdm_idm_step

    town = _town()
    lane = next(ln for ln in town.lanes.values() if not ln.is_connector and ln.length > 100.0)
    traffic = Traffic(town, np.random.default_rng(0))
    traffic.agents.clear()
    path = Path.along(town, [lane.id])
    follower = traffic.add_vehicle(path, 20.0, 8.0, dims=(4.5, 2.0, 1.5), v0_scale=1.0)
    assert traffic.vehicle_accel(follower, traffic._lane_index()) == pytest.approx(
        1.5 * (1 - (8.0 / lane.speed_limit) ** 10))
    leader = traffic.add_vehicle(path, 50.0, 6.0, dims=(4.5, 2.0, 1.5), v0_scale=1.0)
    gap = leader.rear() - follower.front()
    _, v_next = pdm_idm_step(0.0, 8.0, gap + 4.5 / 2, 6.0, 4.5 / 2, lane.speed_limit, 0.1)
    expected = (v_next - 8.0) / 0.1
    assert -3.0 < expected < 1.5
    assert traffic.vehicle_accel(follower, traffic._lane_index()) == pytest.approx(expected, rel=1e-9)


def test_vehicles_slow_down_for_curves():
    """On an arc of radius R the desired speed is sqrt(a_lat R) (a_lat half NAVSIM's comfort bound); 40 m before
    it, sqrt(a_lat R + 2 b 40) with the anticipation deceleration b."""
    from navsim_agents.data.synthetic_traffic import (
        ANTICIPATION_DECEL,
        CURVE_LAT_ACCEL,
        Agent,
        Path,
        Traffic,
    )
    from navsim_agents.scoring.constants import MAX_ABS_LAT_ACCEL

    assert CURVE_LAT_ACCEL == pytest.approx(MAX_ABS_LAT_ACCEL / 2)
    radius = 12.0
    lead_in = np.stack([np.linspace(-100.0, 0.0, 201), np.zeros(201)], axis=1)
    angle = np.linspace(0.0, np.pi / 2, 200)[1:]
    arc = np.stack([radius * np.sin(angle), radius - radius * np.cos(angle)], axis=1)
    path = Path(np.concatenate([lead_in, arc]), [])
    on_arc = path.curve_speed_sq[210:390]
    np.testing.assert_allclose(on_arc, CURVE_LAT_ACCEL * radius, rtol=1e-2)
    traffic = Traffic(_town(), np.random.default_rng(0))
    car = Agent(1, "vehicle", 4.0, 2.0, 1.5, path=path, v0=30.0)
    car.s = 100.0 - 2.0 + 5.0  # front 5 m into the arc (the car is 4 m long)
    assert traffic.desired_speed(car) == pytest.approx(np.sqrt(CURVE_LAT_ACCEL * radius), rel=1e-2)
    car.s = 100.0 - 2.0 - 40.0  # front 40 m before it
    expected = np.sqrt(CURVE_LAT_ACCEL * radius + 2 * ANTICIPATION_DECEL * 40.0)
    assert traffic.desired_speed(car) == pytest.approx(expected, rel=1e-2)


def _crossing_scene(ped_u: float, forward: bool, car_s: float, car_v: float):
    """A vehicle driving straight through crosswalk 0 of the town's first intersection and one walking
    pedestrian at ``ped_u`` metres along that crosswalk's line; returns (traffic, car, crossing)."""
    from navsim_agents.data.synthetic_traffic import Agent, Path, Traffic, annotate_path

    town = _town()
    traffic = Traffic(town, np.random.default_rng(0))
    traffic.agents.clear()
    cw = town.crosswalks[min(town.crosswalks)]
    ends = np.asarray(cw.ends)
    axis = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    mid = ends.mean(axis=0)
    lane_point = mid + axis * 3.0  # 3 m off the crosswalk's middle, across it
    normal = np.array([-axis[1], axis[0]])
    points = lane_point + np.outer(np.linspace(-80.0, 40.0, 121), normal)
    car = Agent(1, "vehicle", 4.5, 2.0, 1.5, path=Path(points, []), s=car_s, v=car_v, v0=10.0)
    annotate_path(car, town)
    traffic.agents[car.id] = car
    traffic.next_id = 2
    ped = traffic.add_pedestrian(cw.id, reverse=not forward)
    ped.walking, ped.v0 = True, 1.25
    ped.s = ped_u if forward else np.linalg.norm(ends[1] - ends[0]) - ped_u
    crossing = next(c for c in car.crossings if c.crosswalk == cw.id)
    return traffic, car, crossing


@functools.lru_cache(maxsize=1)
def _town():
    from navsim_agents.data.synthetic_town import build_town

    return build_town()


def test_vehicles_yield_only_to_pedestrians_in_their_way():
    from navsim_agents.data.synthetic_traffic import PED_CLEARANCE

    traffic, car, crossing = _crossing_scene(ped_u=8.0, forward=True, car_s=50.0, car_v=5.0)
    centre = (crossing.u_lo + crossing.u_hi) / 2
    # the crossing line is 2 x (7 m road + 1 m shoulder + 1 m onto the sidewalk) long; the car covers its width
    assert crossing.u_hi - crossing.u_lo == pytest.approx(2.0, abs=0.05)
    assert centre == pytest.approx(9.0 + 3.0, abs=0.05)

    def stops(ped_u, forward, car_s=50.0, car_v=5.0):
        traffic, car, crossing = _crossing_scene(ped_u, forward, car_s, car_v)
        return np.isfinite(traffic.stop_gap(car))

    half = 0.7 / 2 + PED_CLEARANCE
    assert stops(centre, True)  # in the car's lane
    assert stops(crossing.u_hi + half - 0.1, True)  # still within the clearance
    assert not stops(crossing.u_hi + half + 0.1, True)  # past the lane and its clearance
    assert not stops(crossing.u_lo - half - 0.1, False)  # walking the other way, past it
    # 9 m short of the lane at 1.25 m/s: 7.2 s. A car whose front is 19.75 m before the crosswalk at 10 m/s has
    # its rear across it (6.4 m crosswalk span + 4.5 m car) after 3.07 s, + 2 s margin: it goes first
    assert not stops(crossing.u_lo - half - 9.0, True, car_s=crossing.s_in - 22.0, car_v=10.0)
    # standing there, it needs sqrt(2 x 30.65 m / 1.5 m/s^2) = 6.4 s, + 2 s > 7.2 s: it waits
    assert stops(crossing.u_lo - half - 9.0, True, car_s=crossing.s_in - 22.0, car_v=0.0)


def test_expert_follows_a_tight_turn_closely():
    """Through the kerb-lane right turn the expert's rear axle stays within 0.3 m of the lane centre (pure
    pursuit cut it by metres) and its lateral acceleration stays at the curve limit, under the comfort bound."""
    from navsim_agents.data.synthetic_traffic import CURVE_LAT_ACCEL, Expert, Path, Traffic
    from navsim_agents.scoring.constants import MAX_ABS_LAT_ACCEL

    town = _town()
    right = next(ln for ln in town.lanes.values() if ln.is_connector and ln.turn == "right"
                 and not town.intersections[ln.intersection_id].signalised)
    route = [right.predecessors[0], right.id, right.successors[0]]
    traffic = Traffic(town, np.random.default_rng(0))
    traffic.agents.clear()
    traffic.owner[right.intersection_id] = right.approach  # the right of way, and no one else about
    path = Path.along(town, route, town.lanes[route[0]].length - 60.0)
    expert = Expert(traffic, path, 0.0, 8.0)
    lateral, lat_accel = [], []
    for _ in range(160):
        traffic.agents = {k: a for k, a in traffic.agents.items() if a.is_ego}
        traffic.step()
        x, y, h, v = expert.state
        px, py, ph = path.pose_at(expert.s_rear)
        lateral.append(abs(-np.sin(ph) * (x - px) + np.cos(ph) * (y - py)))
        lat_accel.append(abs(v * expert.yaw_rate))
    assert expert.s_rear > path.lane_start(route[2]) + 10.0, "the expert did not get through the turn"
    assert max(lateral) < 0.3
    assert max(lat_accel) < min(1.2 * CURVE_LAT_ACCEL, MAX_ABS_LAT_ACCEL)


def test_signal_plan_gives_one_approach_at_a_time():
    from navsim_agents.data.synthetic_traffic import SignalPlan

    plan = SignalPlan({1: 3.0})
    for t in np.arange(0.0, 80.0, 0.25):
        states = [plan.state(1, a, t) for a in "ENWS"]
        assert sum(s != 2 for s in states) <= 1
    plan.offsets[1] = plan.offset_for("N", 10.0, red_for=9.0)
    assert plan.state(1, "N", 10.0) == 2 and plan.state(1, "N", 18.9) == 2 and plan.state(1, "N", 19.1) == 0
