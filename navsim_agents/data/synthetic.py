"""The ``navmini`` split: a deterministic synthetic world written in the official NAVSIM / OpenScene formats.

``ensure_navmini()`` returns a data root laid out exactly like OpenScene + nuPlan maps::

    <root>/navsim_logs/navmini/<log_name>.pkl          OpenScene frame dicts, 2 Hz
    <root>/sensor_blobs/navmini/<log_name>/CAM_*/<token>.jpg   RAP-style raster images, 1920x1080
    <root>/maps/nuplan-maps-v1.0.json, <root>/maps/<location>/<version>/map.gpkg

generating it on first use into ``$EUPE_DRIVE_CACHE`` (else ``~/.cache/eupe_drive``) under
``navmini-v<VERSION>``; a second call reuses it; an incomplete folder (no completion marker) is rebuilt. The
world is a small town (``synthetic_town``) with IDM traffic, crosswalk pedestrians and cyclic lights
(``synthetic_traffic``); each log follows one expert-driven ego through one scenario kind (``SCENARIOS``).
Images are rendered by ``rap_backbone.raster`` with RAP's rules for RAP's four cameras (CAM_F0, CAM_L0, CAM_R0,
CAM_B0; ``generate_world(cameras=...)`` renders more); the pickles list all eight nuPlan cameras with the real
nuPlan intrinsics / ego-relative extrinsics of ``rap_backbone.raster.default_camera_rig`` (``lidar2ego`` is the
identity) while the images use RAP's virtual camera (2 m back, 0.8 m up, rows cropped [20:-20]), exactly the
relation between RAP's rendered training images and their logs. There is no lidar: ``lidar_path`` names a file that is not written (ask a ``SensorConfig`` without ``lidar_pc``).

For reuse in a closed-loop simulator: ``build_town()`` (map + lane graph), ``Traffic`` (IDM traffic,
pedestrians, lights; ``step()``), ``Expert`` (ego driver) and ``Path`` are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path as FsPath

import cv2
import numpy as np
import shapely

from navsim_agents.data.dataclasses import yaw_quaternion
from navsim_agents.data.synthetic_town import (
    CROSSWALK_SPAN,
    LANE_WIDTH,
    MAP_VERSION_NAME,
    TownMap,
    build_town,
    write_maps,
)
from navsim_agents.data.synthetic_traffic import (
    DT,
    Expert,
    Path,
    Traffic,
    footprint,
    footprints,
)
from rap_backbone.nuplan_rig import OPENSCENE_CAMERA_KEYS, PACIFICA, RAP_CAMERA_NAMES, openscene_camera_key
from rap_backbone.raster import default_camera_rig, render_cameras

VERSION = 3  # bump whenever the generated content changes (3: the expert drives like a human, see DESIGN notes)
RENDERED_CAMERAS = tuple(map(openscene_camera_key, RAP_CAMERA_NAMES))  # images exist for these only
SPLIT = "navmini"
MAP_LOCATION = "us-pa-pittsburgh-hazelwood"
NUM_TRAIN_LOGS = 24
NUM_TEST_LOGS = 12
FRAMES_PER_LOG = 20  # 4 history + 10 future + 6 frames of margin (7 scenes per log)
STEPS_PER_FRAME = 5  # 10 Hz simulation, 2 Hz logs
FRAME_US = 500_000
WARMUP_S = 12.0
ANNOTATION_RADIUS = 100.0
RENDER_RADIUS = 150.0
PED_CLEAR_AHEAD = 120.0  # m of the ego's path (about what it drives in a log) whose crosswalks start empty
TRAFFIC_LIGHT_ALONG = 8.0  # RAP set_light_position: the light sits ~8 m into its lane connector
SCENARIOS = ("follow", "red_light", "left_turn", "right_turn", "lane_change", "ped_yield", "stopped_vehicle",
             "unsignalised", "cones")
JPEG_QUALITY = 90
MARKER = "navmini_complete.json"


def log_name(split: str, index: int) -> str:
    """OpenScene-like log name of the ``index``-th train or test log."""
    vehicle = {"train": 77, "test": 88}[split]
    return f"2021.09.{1 + index // 24:02d}.{index % 24:02d}.00.00_veh-{vehicle}_{index * 100:05d}_{index * 100 + FRAMES_PER_LOG:05d}"


NAVMINI_TRAIN_LOGS = [log_name("train", i) for i in range(NUM_TRAIN_LOGS)]
NAVMINI_TEST_LOGS = [log_name("test", i) for i in range(NUM_TEST_LOGS)]


def _token(*parts) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------
# scenario set-up
# -------------------------------------------------------------------------------------------------
@dataclass
class _Snapshot:
    ego: np.ndarray  # x, y, heading (rear axle), v, accel, yaw_rate
    boxes: np.ndarray  # [N, 7] global
    velocities: np.ndarray  # [N, 2] global
    names: list
    ids: list
    lights: list  # (connector id, status)


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _clear_around(traffic: Traffic, path: Path, s_lo: float, s_hi: float, lanes: set[int], keep=()) -> None:
    """Remove vehicles on ``lanes`` near the ego's path span and any that overlap its corridor."""
    corridor = shapely.LineString(path.pose_at(np.linspace(max(s_lo, 0), min(s_hi, path.length), 60))[:, :2])
    corridor = corridor.buffer(LANE_WIDTH)
    for a in list(traffic.vehicles()):
        if a.is_ego or a.id in keep:
            continue
        on_lane = any(lane in lanes for lane, _ in a.path.occupancy(a.s))
        if (on_lane and corridor.intersects(footprint(a))) or corridor.intersects(footprint(a).buffer(3.0)):
            del traffic.agents[a.id]
    for a in list(traffic.agents.values()):
        if a.static_pose is not None and a.id not in keep and corridor.intersects(footprint(a)):
            del traffic.agents[a.id]


def _setup_scenario(kind: str, town: TownMap, traffic: Traffic, rng: np.random.Generator) -> Expert:
    """Insert the ego for scenario ``kind`` into a warmed-up ``traffic``; returns its Expert."""
    inters = sorted(town.intersections.values(), key=lambda i: i.id)
    signalised = [i for i in inters if i.signalised]
    unsignalised = [i for i in inters if not i.signalised]
    pool = {"red_light": signalised, "unsignalised": unsignalised}.get(kind, inters)
    inter = _pick(rng, pool)
    approach = _pick(rng, sorted(inter.incoming))
    group = town.groups[inter.incoming[approach]]
    turn = {"left_turn": "left", "right_turn": "right", "ped_yield": "right", "lane_change": "left"}.get(kind)
    if turn is None:
        turn = "straight" if kind != "follow" else _pick(rng, ["straight", "straight", "left", "right"])
    lane_idx = {"left": 0, "right": 1}.get(turn, int(rng.integers(2)))
    if kind in ("stopped_vehicle", "cones"):
        lane_idx, turn = 1, "straight"
    start_idx = 1 if kind == "lane_change" else lane_idx
    in_lane = town.lanes[group["lanes"][start_idx]]
    exit_lane = town.lanes[group["lanes"][lane_idx]]
    conn = next(c for c in exit_lane.successors if town.lanes[c].turn == turn and town.lanes[c].index == lane_idx)
    out_lane = town.lanes[conn].successors[0]
    tail = traffic.random_route(out_lane)
    # distance of the ego's front to the stop line: turns happen inside the 10 s log
    dist = {"follow": 45.0, "red_light": 45.0, "lane_change": 85.0, "stopped_vehicle": 75.0,
            "cones": 75.0}.get(kind, float(rng.uniform(15.0, 28.0)))
    s_front = max(in_lane.length - dist, 5.0 + PACIFICA.front_length)
    s_rear = s_front - PACIFICA.front_length
    v0 = float(rng.uniform(7.0, 10.0))
    route = [exit_lane.id, conn] + tail
    if start_idx != lane_idx:
        path = Path.with_lane_change(town, [in_lane.id], route, s_rear, change_at=12.0, change_len=30.0)
    elif kind in ("stopped_vehicle", "cones"):
        other = town.lanes[group["lanes"][0]]
        route = [other.id] + [c for c in other.successors if town.lanes[c].turn == "straight"][:1]
        route.append(town.lanes[route[-1]].successors[0])
        path = Path.with_lane_change(town, [in_lane.id], route, s_rear, change_at=10.0, change_len=28.0)
    else:
        path = Path.along(town, route, s_rear)
    lanes_used = {g.lane_id for g in path.segments} | {in_lane.id}
    _clear_around(traffic, path, -30.0, 70.0, lanes_used)
    if kind == "red_light":
        traffic.signals.offsets[inter.id] = traffic.signals.offset_for(approach, traffic.t, red_for=9.0)
    elif inter.signalised:
        # turns and through scenes should happen inside the log: the ego's approach turns green now
        traffic.signals.offsets[inter.id] = traffic.signals.offset_green(approach, traffic.t, 0.0)
    else:
        # unsignalised: the ego's approach has the right of way next (first come, first served); vehicles of
        # other approaches still inside the intersection are cleared, as the ego would otherwise wait for them
        for a in list(traffic.vehicles()):
            if any(iid == inter.id and appr != approach and a.rear() < s1 and a.front() > s0 - 0.5
                   for iid, appr, s0, s1 in a.connector_spans):
                del traffic.agents[a.id]
        traffic.owner[inter.id] = approach
        traffic.owner_since[inter.id] = traffic.t
    expert = Expert(traffic, path, 0.0, v0)
    if kind != "ped_yield":
        # pedestrians already crossing the ego's way would make it wait out the scenario (as vehicles in its
        # corridor would, see _clear_around); ones that step out later are part of the traffic
        crossed = {c.crosswalk for c in expert.agent.crossings if c.s_in < PED_CLEAR_AHEAD}
        for other in [p for p in traffic.agents.values() if p.kind == "pedestrian" and p.crosswalk in crossed]:
            del traffic.agents[other.id]
    if kind == "follow":
        lead_path = Path.along(town, route, s_rear + 20.0)
        traffic.add_vehicle(lead_path, 2.5, v0 * 0.9, v0_scale=0.8)
    elif kind == "ped_yield":
        cw = next(cid for cid in inter.crosswalks if path.points is not None and
                  shapely.LineString(path.points[:80]).intersects(town.crosswalks[cid].polygon)
                  and cid != _entry_crosswalk(town, inter, approach))
        for other in [p for p in traffic.agents.values() if p.kind == "pedestrian" and p.crosswalk == cw]:
            del traffic.agents[other.id]
        # the pedestrian steps off the kerb nearest to the ego's lane, so the ego meets it there and yields
        crossing = next(c for c in expert.agent.crossings if c.crosswalk == cw)
        ends = town.crosswalks[cw].ends
        reverse = (crossing.u_lo + crossing.u_hi) / 2 > np.linalg.norm(ends[1] - ends[0]) / 2
        start = ends[1 if reverse else 0]
        for other in [p for p in traffic.agents.values() if p.kind == "pedestrian"
                      and np.hypot(*(p.pose()[:2] - start)) < 2.0]:
            del traffic.agents[other.id]
        ped = traffic.add_pedestrian(cw, reverse)
        ped.walking = True
    elif kind in ("stopped_vehicle", "cones"):
        # the obstacle stands in the ego's start lane, 55 m ahead of the ego's rear axle
        o = s_rear + 55.0
        base = np.array([np.interp(o, in_lane.s, in_lane.centerline[:, 0]),
                         np.interp(o, in_lane.s, in_lane.centerline[:, 1])])
        span = in_lane.centerline[-1] - in_lane.centerline[0]  # lanes between intersections are straight
        heading = math.atan2(span[1], span[0])
        d = np.array([math.cos(heading), math.sin(heading)])
        if kind == "stopped_vehicle":
            traffic.add_static("vehicle", [base[0], base[1], heading], (4.8, 2.0, 1.6))
        else:
            for k in range(3):
                q = base + d * 3.0 * k
                traffic.add_static("traffic_cone", [q[0], q[1], 0.0], (0.5, 0.5, 0.8))
    return expert


def _entry_crosswalk(town: TownMap, inter, approach: str) -> int:
    c = inter.center
    arm = {"E": np.array([1.0, 0.0]), "N": np.array([0.0, 1.0]), "W": np.array([-1.0, 0.0]),
           "S": np.array([0.0, -1.0])}[approach]
    return min(inter.crosswalks, key=lambda cid: np.linalg.norm(
        np.asarray(town.crosswalks[cid].polygon.centroid.coords[0]) - (c + np.mean(CROSSWALK_SPAN) * arm)))


# -------------------------------------------------------------------------------------------------
# simulation of one log
# -------------------------------------------------------------------------------------------------
class ScenarioFailed(RuntimeError):
    """A simulated log broke an invariant (overlap, off-road ego); the generator retries with a new seed."""


def _light_positions(town: TownMap) -> dict[int, np.ndarray]:
    out = {}
    for inter in town.intersections.values():
        if not inter.signalised:
            continue
        for cid in inter.connectors:
            lane = town.lanes[cid]
            k = int(np.searchsorted(lane.s, TRAFFIC_LIGHT_ALONG, side="right"))
            out[cid] = lane.centerline[min(k, len(lane.centerline) - 1)]
    return out


def _snapshot(traffic: Traffic, expert: Expert, town: TownMap) -> _Snapshot:
    ego_xy = expert.state[:2]
    boxes, vels, names, ids = [], [], [], []
    for a in sorted(traffic.agents.values(), key=lambda a: a.id):
        if a.is_ego or a.done:
            continue
        x, y, h = a.pose()
        if math.hypot(x - ego_xy[0], y - ego_xy[1]) > ANNOTATION_RADIUS:
            continue
        v = a.v if (a.kind != "pedestrian" or a.walking) and a.static_pose is None else 0.0
        boxes.append([x, y, a.height / 2, a.length, a.width, a.height, h])
        vels.append([v * math.cos(h), v * math.sin(h)])
        names.append(a.kind)
        ids.append(a.id)
    lights = []
    for inter in sorted(town.intersections.values(), key=lambda i: i.id):
        if inter.signalised:
            for cid in inter.connectors:
                lights.append((cid, traffic.signals.state(inter.id, town.lanes[cid].approach, traffic.t)))
    x, y, h, v = expert.state
    return _Snapshot(np.array([x, y, h, v, expert.accel, expert.yaw_rate]), np.array(boxes).reshape(-1, 7),
                     np.array(vels).reshape(-1, 2), names, ids, lights)


def _check_step(traffic: Traffic, expert: Expert, town: TownMap) -> None:
    """Invariants at every simulation step: the ego footprint is drivable and no two agents overlap."""
    ego_fp = footprint(expert.agent)
    if not town.drivable_area.contains(ego_fp):
        raise ScenarioFailed(f"ego left the drivable area at t={traffic.t:.1f}")
    agents = [a for a in traffic.agents.values() if not a.done]
    polys = footprints(agents)
    tree = shapely.STRtree(polys)
    pairs = tree.query(polys, predicate="intersects")
    for i, j in zip(*pairs, strict=True):
        if i < j:
            raise ScenarioFailed(f"agents {agents[i].kind} {agents[i].id} and {agents[j].kind} {agents[j].id} "
                                 f"overlap at t={traffic.t:.1f}")


def simulate_log(town: TownMap, kind: str, seed: int, num_frames: int = FRAMES_PER_LOG,
                 max_attempts: int = 8, warmup_s: float = WARMUP_S) -> tuple[list[_Snapshot], Path, int]:
    """Simulate one log of scenario ``kind``; returns the 2 Hz snapshots, the ego path and the attempt used."""
    last = None
    for attempt in range(max_attempts):
        rng = np.random.default_rng([seed, attempt])
        traffic = Traffic(town, rng)
        traffic.populate()
        for _ in range(int(round(warmup_s / DT))):
            traffic.step()
        try:
            expert = _setup_scenario(kind, town, traffic, rng)
            snaps = []
            for step in range(num_frames * STEPS_PER_FRAME):
                if step % STEPS_PER_FRAME == 0:
                    snaps.append(_snapshot(traffic, expert, town))
                traffic.step()
                _check_step(traffic, expert, town)
            return snaps, expert.path, attempt
        except (ScenarioFailed, StopIteration) as error:
            last = error
    raise RuntimeError(f"navmini: scenario {kind!r} (seed {seed}) failed {max_attempts} times: {last}")


# -------------------------------------------------------------------------------------------------
# OpenScene frame dicts
# -------------------------------------------------------------------------------------------------
def _driving_command(path: Path, s_rear: float, pose: np.ndarray) -> np.ndarray:
    """One-hot (left, straight, right, unknown) as RAP/NAVSIM's get_driving_command: the route point 20 m
    ahead, +-2 m lateral threshold in the current pose's frame."""
    s_now = path.project(pose[None, :2], s_rear, window=30.0)
    cur = path.pose_at(s_now)
    tgt = path.pose_at(s_now + 20.0)
    d = tgt[:2] - cur[:2]
    lat = -math.sin(cur[2]) * d[0] + math.cos(cur[2]) * d[1]
    out = np.zeros(4, dtype=np.int64)
    out[0 if lat >= 2.0 else (2 if lat <= -2.0 else 1)] = 1
    return out


def _frame_dicts(name: str, seed: int, snaps: list[_Snapshot], path: Path, town: TownMap,
                 cameras) -> list[dict]:
    log_token = _token(seed, name, "log")
    scene_token = _token(seed, name, "scene")
    base_us = 1630486800_000000 + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) * 1_000_000
    tokens = [_token(seed, name, k) for k in range(len(snaps))]
    roadblocks = path.roadblock_ids(town)
    frames = []
    s_rear = 0.0
    for k, snap in enumerate(snaps):
        x, y, h, v, acc, yaw_rate = snap.ego
        s_rear = path.project(np.array([[x, y]]), s_rear, window=30.0)
        e2g = np.eye(4)
        e2g[:3, :3] = [[math.cos(h), -math.sin(h), 0.0], [math.sin(h), math.cos(h), 0.0], [0.0, 0.0, 1.0]]
        e2g[:3, 3] = [x, y, 0.0]
        l2e = np.eye(4)  # nuPlan camera extrinsics are ego-relative: the "lidar" frame is the ego frame
        quat = yaw_quaternion(h)
        ego_dyn = [float(v), 0.0, float(acc), float(v * yaw_rate)]
        can_bus = np.array([x, y, 0.0, *quat, acc, v * yaw_rate, 0.0, v, 0.0, 0.0, 0.0, 0.0, yaw_rate, 0.0, 0.0])
        rot_inv = e2g[:2, :2].T
        boxes = snap.boxes.copy()
        if len(boxes):
            boxes[:, :2] = (boxes[:, :2] - [x, y]) @ rot_inv.T
            boxes[:, 6] = boxes[:, 6] - h
        vel = np.zeros((len(boxes), 3))
        if len(boxes):
            vel[:, :2] = snap.velocities @ rot_inv.T
        token = tokens[k]
        cams = {}
        for cam in cameras:
            cams[cam.name] = {
                "data_path": f"{name}/{cam.name}/{token}.jpg",
                "sensor2lidar_rotation": np.array(cam.sensor2lidar_rotation, dtype=np.float64),
                "sensor2lidar_translation": np.array(cam.sensor2lidar_translation, dtype=np.float64),
                "cam_intrinsic": np.array(cam.intrinsics, dtype=np.float64),
                "distortion": np.zeros(5),
            }
        frames.append({
            "token": token,
            "frame_idx": k,
            "timestamp": base_us + k * FRAME_US,
            "log_name": name,
            "log_token": log_token,
            "scene_name": f"log-{name[-11:-6]}",
            "scene_token": scene_token,
            "map_location": MAP_LOCATION,
            "vehicle_name": name.split("_")[1],
            "roadblock_ids": list(roadblocks),
            "can_bus": can_bus,
            "lidar_path": f"{name}/MergedPointCloud/{token}.pcd",
            "lidar2ego_translation": l2e[:3, 3].copy(),
            "lidar2ego_rotation": np.array([1.0, 0.0, 0.0, 0.0]),
            "ego2global_translation": e2g[:3, 3].copy(),
            "ego2global_rotation": quat,
            "ego_dynamic_state": ego_dyn,
            "traffic_lights": [(int(cid), bool(state == 2)) for cid, state in snap.lights],
            "driving_command": _driving_command(path, s_rear, np.array([x, y, h])),
            "cams": cams,
            "sample_prev": tokens[k - 1] if k > 0 else None,
            "sample_next": tokens[k + 1] if k + 1 < len(snaps) else None,
            "ego2global": e2g,
            "lidar2ego": l2e,
            "lidar2global": e2g @ l2e,
            "anns": {
                "gt_boxes": boxes.astype(np.float64),
                "gt_names": np.array(snap.names, dtype="<U16") if snap.names else np.zeros(0, dtype="<U16"),
                "gt_velocity_3d": vel,
                "instance_tokens": [_token(seed, name, "inst", i, k) for i in snap.ids],
                "track_tokens": [_token(seed, name, "track", i) for i in snap.ids],
            },
        })
    return frames


def _render_log(frames: list[dict], snaps: list[_Snapshot], town: TownMap, cameras, blobs: FsPath,
                light_xy: dict[int, np.ndarray], raster_config=None) -> None:
    for frame, snap in zip(frames, snaps, strict=True):
        x, y, h = snap.ego[:3]
        prims = town.render_primitives((x, y), RENDER_RADIUS)
        lights = np.array([[*light_xy[cid], state] for cid, state in snap.lights
                           if np.hypot(*(light_xy[cid] - [x, y])) < RENDER_RADIUS]).reshape(-1, 3)
        images = render_cameras(cameras, ego_pose=(x, y, h), map_primitives=prims, boxes=snap.boxes,
                                box_names=snap.names, traffic_lights=lights, config=raster_config)
        for cam in cameras:
            target = blobs / frame["cams"][cam.name]["data_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", images[cam.name][:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"navmini: JPEG encoding failed for {target}")
            target.write_bytes(buf.tobytes())


_TOWN = None


def _generate_log(args) -> tuple[str, dict]:
    """Simulate, write and render one log (a worker task of ``generate_world``)."""
    global _TOWN
    root, seed, split, i, frames_per_log, image_size, cameras, render, raster_config, warmup_s = args
    if _TOWN is None:
        _TOWN = build_town()
    town = _TOWN
    name = log_name(split, i)
    kind = SCENARIOS[(i + (3 if split == "test" else 0)) % len(SCENARIOS)]
    log_seed = int(hashlib.sha256(f"{seed}/{name}".encode()).hexdigest()[:8], 16)
    snaps, path, attempt = simulate_log(town, kind, log_seed, frames_per_log, warmup_s=warmup_s)
    # the pickles list all 8 nuPlan cameras, as OpenScene; images exist for ``cameras`` only
    frames = _frame_dicts(name, seed, snaps, path, town, default_camera_rig(OPENSCENE_CAMERA_KEYS, image_size))
    rig = default_camera_rig(cameras, image_size)
    with open(root / "navsim_logs" / SPLIT / f"{name}.pkl", "wb") as handle:
        pickle.dump(frames, handle, protocol=4)
    if render:
        _render_log(frames, snaps, town, rig, root / "sensor_blobs" / SPLIT, _light_positions(town), raster_config)
    return name, {"split": split, "scenario": kind, "attempt": attempt}


def generate_world(root, *, seed: int = 0, num_train_logs: int = NUM_TRAIN_LOGS, num_test_logs: int = NUM_TEST_LOGS,
                   frames_per_log: int = FRAMES_PER_LOG, image_size: tuple[int, int] = (1920, 1080),
                   cameras=RENDERED_CAMERAS, render: bool = True, progress: bool = False,
                   workers: int | None = None, raster_config=None, warmup_s: float = WARMUP_S) -> FsPath:
    """Write a complete navmini data set under ``root`` (maps, logs, images) and return ``root``.

    Args:
        root: target folder (created).
        seed: world seed; the same seed gives byte-identical files.
        num_train_logs / num_test_logs: logs named ``log_name("train"|"test", i)``.
        frames_per_log: frames per log at 2 Hz (>= 14 for NAVSIM's 4 + 10 window).
        image_size: (width, height) of the camera images; intrinsics are scaled from 1920x1080.
        cameras: camera names to render (default RAP's four); the pickles always list all 8 nuPlan cameras,
            the others name images that are not written (loading them raises, naming the file).
        render: False writes no images (the pickles still name them).
        workers: processes (default: up to 2); the output does not depend on it.
        warmup_s: simulated seconds of traffic before the ego enters (vehicles are pre-placed on the lanes).
        raster_config: ``rap_backbone.raster.RasterConfig``; default RAP's rules, i.e. the virtual camera
            2 m behind / 0.8 m above the logged extrinsics and the [20:-20] row crop, so the images relate to
            the pickles' camera parameters as RAP's rendered training data do. ``RasterConfig(
            virtual_offset=(0, 0, 0), crop_rows=0)`` renders exactly the logged pinhole cameras.
    """
    root = FsPath(root)
    town = build_town()
    maps_root = root / "maps"
    write_maps(town, maps_root)
    logs_dir = root / "navsim_logs" / SPLIT
    blobs = root / "sensor_blobs" / SPLIT
    logs_dir.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(parents=True, exist_ok=True)
    unknown = [c for c in cameras if c not in OPENSCENE_CAMERA_KEYS]
    if unknown:
        raise KeyError(f"unknown cameras {unknown}; known: {list(OPENSCENE_CAMERA_KEYS)}")
    jobs = [("train", i) for i in range(num_train_logs)] + [("test", i) for i in range(num_test_logs)]
    args = [(root, seed, split, i, frames_per_log, tuple(image_size), tuple(cameras), render, raster_config,
             warmup_s) for split, i in jobs]
    workers = max(1, min(workers if workers is not None else min(2, os.cpu_count() or 1), len(jobs)))
    stats = {}
    t0 = time.time()
    if workers == 1:
        results = map(_generate_log, args)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_generate_log, args)
    try:
        for n, (name, info) in enumerate(results):
            stats[name] = info
            if progress:
                print(f"navmini: {n + 1}/{len(jobs)} {name} ({info['scenario']}) {time.time() - t0:.1f}s", flush=True)
    finally:
        if workers > 1:
            pool.close()
            pool.join()
    with open(root / "navmini_logs.json", "w") as handle:
        json.dump(stats, handle, indent=1, sort_keys=True)
    return root


def default_cache_root() -> FsPath:
    """``$EUPE_DRIVE_CACHE`` or ``~/.cache/eupe_drive``."""
    env = os.environ.get("EUPE_DRIVE_CACHE")
    return FsPath(env).expanduser() if env else FsPath.home() / ".cache" / "eupe_drive"


def generate_once(target: FsPath, marker: str, generate, *, label: str, note: str, progress: bool = True) -> FsPath:
    """``target``, built by ``generate(tmp) -> dict`` on first use.

    Generation writes into a temporary sibling folder and renames it into place after the completion ``marker``
    (the returned dict plus the build time, as JSON) is written, so an interrupted run leaves no half-written data
    set behind; a folder without the marker is deleted and rebuilt; when another process finishes first, its
    copy is kept.
    """
    target = FsPath(target)
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if progress:
            print(f"{label}: {target} is incomplete (no {marker}); rebuilding", flush=True)
        shutil.rmtree(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.time()
    if progress:
        print(f"{label}: generating into {target} (first use, {note})", flush=True)
    info = generate(tmp)
    with open(tmp / marker, "w") as handle:
        json.dump({**info, "seconds": round(time.time() - t0, 1)}, handle, indent=1)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / marker).is_file():
            raise
    return target


def ensure_navmini(root=None, *, progress: bool = True) -> FsPath:
    """The navmini data root (``OPENSCENE_DATA_ROOT``-style; maps under ``<root>/maps``), generated on first use
    (``generate_once``)."""
    base = FsPath(root) if root is not None else default_cache_root()

    def generate(tmp: FsPath) -> dict:
        generate_world(tmp, seed=0, progress=progress)
        return {"version": VERSION, "seed": 0, "train_logs": NAVMINI_TRAIN_LOGS, "test_logs": NAVMINI_TEST_LOGS,
                "map_version": MAP_VERSION_NAME, "map_location": MAP_LOCATION}

    return generate_once(base / f"navmini-v{VERSION}", MARKER, generate, label="navmini", note="about a minute",
                         progress=progress)


__all__ = [
    "MAP_LOCATION", "NAVMINI_TEST_LOGS", "NAVMINI_TRAIN_LOGS", "SCENARIOS", "SPLIT", "VERSION", "Expert", "Path",
    "Traffic", "TownMap", "build_town", "default_cache_root", "ensure_navmini", "generate_world", "log_name",
    "simulate_log",
]
