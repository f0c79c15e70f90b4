"""Metric cache: everything scoring needs that does not depend on the agent, in a versioned safe format.

One `.npz` per token (arrays only, loaded with `allow_pickle=False`) + JSON metadata inside it. Built from the
OpenScene log frames and the nuPlan map following navsim `metric_caching/metric_cache_processor.py` (v1.1: 5 s
observation without traffic lights; v2: 4 s with red lights and tracks already touching the ego removed).
"""

from __future__ import annotations

import numpy as np
import shapely

from navsim_agents.data.dataclasses import quaternion_yaw
from navsim_agents.data.maps import get_maps_api, resolve_maps_root
from navsim_agents.scoring import constants as C
from navsim_agents.scoring.geometry import absolute_to_relative, box_coords, normalize_angle
from navsim_agents.scoring.interpolation import LinearInterpolator
from navsim_agents.scoring.metric_cache_file import REACTIVE_TYPE_NAME, MetricCache, wkb_pack
from navsim_agents.scoring.pdm_closed import (
    Track,
    build_route_context,
    pdm_closed_trajectories,
    red_light_geometries,
)
from navsim_agents.scoring.pdm_score import precompute_reference_terms
from rap_backbone.nuplan_rig import PACIFICA

NUM_HISTORY_FRAMES = 4
NUM_FUTURE_FRAMES = 10


def frame_ego_state(frame: dict) -> np.ndarray:
    """State array [11] of a frame: global rear-axle pose, local velocity / acceleration (float32 as NAVSIM)."""
    t = frame["ego2global_translation"]
    dyn = np.asarray(frame["ego_dynamic_state"], dtype=np.float32).astype(np.float64)
    state = np.zeros(C.STATE_SIZE)
    state[:3] = (t[0], t[1], float(quaternion_yaw(frame["ego2global_rotation"])))
    state[3:7] = dyn[:4]
    return state


def frame_tracks(frame: dict, ego: np.ndarray) -> list[Track]:
    """Annotated boxes of a frame in global coordinates (navsim `annotations_to_detection_tracks`)."""
    anns = frame.get("anns") or {}
    boxes = np.asarray(anns.get("gt_boxes", np.zeros((0, 7))), dtype=np.float64).reshape(-1, 7)
    c, s = np.cos(ego[2]), np.sin(ego[2])
    out = []
    for i, b in enumerate(boxes):
        name = str(anns["gt_names"][i])
        x, y = ego[0] + b[0] * c - b[1] * s, ego[1] + b[0] * s + b[1] * c
        heading = float(normalize_angle(normalize_angle(b[6] + ego[2])))
        vx = vy = 0.0
        if name in C.AGENT_TYPE_NAMES:
            v = np.asarray(anns["gt_velocity_3d"][i], dtype=np.float64)
            vx, vy = v[0] * c - v[1] * s, v[0] * s + v[1] * c
        out.append(Track(str(anns["track_tokens"][i]), name, x, y, heading, float(b[3]), float(b[4]), vx, vy))
    return out


def interpolate_tracks(frames_tracks: list[list[Track]], horizon_s: float) -> list[list[Track]]:
    """2 Hz tracks -> 10 Hz tracks over [0, horizon] (navsim `_interpolate_gt_observation`)."""
    states, first = {}, {}
    for k, tracks in enumerate(frames_tracks):
        for t in tracks:
            row = [k * 0.5, t.x, t.y, t.heading, t.vx, t.vy]
            states.setdefault(t.token, []).append(row)
            first.setdefault(t.token, t)
    steps = np.arange(0, int(round(horizon_s / C.PROPOSAL_INTERVAL)) + 1) * C.PROPOSAL_INTERVAL
    out = [[] for _ in steps]
    for token, rows in states.items():
        arr = np.array(rows, dtype=np.float64)
        arr[:, 3] = np.unwrap(arr[:, 3])
        base = first[token]
        t0, t1 = arr[0, 0], arr[-1, 0]
        if t0 == t1:
            for lst in out:
                lst.append(base)
            continue
        inside = np.nonzero((t0 <= steps) & (steps <= t1))[0]
        values = LinearInterpolator(arr[:, 0], arr[:, 1:])(steps[inside])
        values[:, 2] = normalize_angle(values[:, 2])
        for i, v in zip(inside, values, strict=False):
            out[i].append(Track(token, base.type_name, float(v[0]), float(v[1]), float(v[2]), base.length,
                                base.width, float(v[3]) if base.is_agent else 0.0,
                                float(v[4]) if base.is_agent else 0.0))
    return out


def _track_ring(t: Track) -> np.ndarray:
    c = box_coords(np.array([t.x, t.y]), np.asarray(t.heading), t.length, t.width)
    return c[:4]


def _pack_observation(steps: list[list[Track]], version: str, meta: dict, arrays: dict) -> None:
    tokens: list[str] = []
    index: dict[str, int] = {}
    info = []
    rows_step, rows_tok, rings = [], [], []
    geometry = []
    for k, tracks in enumerate(steps):
        for t in tracks:
            if t.token not in index:  # first sight defines heading / speed (navsim unique_objects)
                index[t.token] = len(tokens)
                tokens.append(t.token)
                info.append((float(t.is_agent), t.heading, float(np.hypot(t.vx, t.vy))))
            rows_step.append(k)
            rows_tok.append(index[t.token])
            geometry.append((t.x, t.y, t.heading, t.length, t.width))
    g = np.asarray(geometry, dtype=np.float64).reshape(-1, 5)
    rings = box_coords(g[:, :2], g[:, 2], g[:, 3], g[:, 4])[:, :4] if len(g) else np.zeros((0, 4, 2))
    meta[f"obs_{version}_tokens"] = tokens
    meta[f"obs_{version}_steps"] = len(steps)
    arrays[f"obs_{version}_step"] = np.asarray(rows_step, dtype=np.int32)
    arrays[f"obs_{version}_token"] = np.asarray(rows_tok, dtype=np.int32)
    arrays[f"obs_{version}_rings"] = np.asarray(rings, dtype=np.float64).reshape(-1, 4, 2)
    arrays[f"obs_{version}_info"] = np.asarray(info, dtype=np.float64).reshape(-1, 3)


def _interp_states(times_us: np.ndarray, states: np.ndarray, query_us: np.ndarray) -> np.ndarray:
    """Linear interpolation of ego states; heading unwrapped then wrapped (nuplan InterpolatedTrajectory)."""
    out = np.zeros((len(query_us), C.STATE_SIZE))
    times, query = times_us.astype(np.float64), query_us.astype(np.float64)
    out[:, [0, 1, 3, 4, 5, 6, 7]] = LinearInterpolator(times, states[:, [0, 1, 3, 4, 5, 6, 7]])(query)
    head = np.interp(query, times, np.unwrap(states[:, 2]))  # what interp1d runs for one column
    out[:, 2] = (head + np.pi) % (2 * np.pi) - np.pi
    return out


def compute_metric_cache(frames: list[dict], map_root: str, map_version: str = "nuplan-maps-v1.0") -> MetricCache:
    """Cache for the scene `frames` (history 4 + future 10 OpenScene frame dicts; token = frame 3)."""
    cur = NUM_HISTORY_FRAMES - 1
    current = frames[cur]
    ego_states = [frame_ego_state(f) for f in frames]
    ego = ego_states[cur]
    map_name = current["map_location"]
    map_api = get_maps_api(*resolve_maps_root(map_root or None, map_version), map_name)
    route = build_route_context(map_api, current["roadblock_ids"], ego[:3])
    tracks_now = frame_tracks(current, ego)
    meta = {"token": current["token"], "log_name": current["log_name"], "map_name": map_name,
            "map_root": str(map_root or ""), "map_version": map_version,
            "timestamp_us": int(current["timestamp"]), "route_lane_ids": route.route_lane_ids,
            "drivable_tokens": route.drivable.tokens, "drivable_kinds": route.drivable.kinds}
    arrays = {"ego_state": ego, "centerline": route.centerline.poses}
    arrays["drivable_wkb"], arrays["drivable_offsets"] = wkb_pack(route.drivable.polygons)
    for version, poses in pdm_closed_trajectories(map_api, route, ego, tracks_now, current["traffic_lights"]).items():
        arrays[f"pdm_poses_{version}"] = poses
    per_frame = [frame_tracks(f, s) for f, s in zip(frames[cur:], ego_states[cur:], strict=False)]
    # v1.1: 5 s of interpolated tracks, no lights, nothing filtered
    _pack_observation(interpolate_tracks(per_frame[:11], 5.0), "v1", meta, arrays)
    # v2: 4 s, drop tracks touching the ego box at t0 (navsim LogReplayTrafficAgents), red lights per frame
    steps = interpolate_tracks(per_frame[:9], 4.0)
    ego_ring = box_coords(ego[:2] + PACIFICA.rear_axle_to_center * np.array([np.cos(ego[2]), np.sin(ego[2])]),
                          np.asarray(ego[2]), PACIFICA.length, PACIFICA.width)[:4]
    ego_poly = shapely.Polygon(ego_ring)
    touching = {t.token for t in steps[0] if shapely.Polygon(_track_ring(t)).intersects(ego_poly)}
    # reactive traffic (navsim AbstractTrafficAgentsPolicy.simulate_environment): every current track at t0 and
    # the log replay of the objects the policy does not simulate; nothing is filtered there
    meta["current_tracks"] = [[t.token, t.type_name] for t in tracks_now]
    arrays["current_tracks"] = np.array([[t.x, t.y, t.heading, t.length, t.width, t.vx, t.vy] for t in tracks_now],
                                        dtype=np.float64).reshape(-1, 7)
    _pack_observation([[t for t in s if t.type_name != REACTIVE_TYPE_NAME] for s in steps], "replay", meta, arrays)
    steps = [[t for t in s if t.token not in touching] for s in steps]
    _pack_observation(steps, "v2", meta, arrays)
    red_tokens: list[str] = []
    red_polys = []
    mask_rows = []
    per_frame: dict[int, tuple[list[str], list]] = {}  # a 2 Hz frame's lights hold for its five 0.1 s steps
    for k in range(len(steps)):
        index = cur + k // 5
        if index not in per_frame:
            lights = frames[index]["traffic_lights"] if index < len(frames) else []
            per_frame[index] = red_light_geometries(map_api, lights, route.route_lane_ids)
        toks, polys = per_frame[index]
        row = set()
        for tk, pg in zip(toks, polys, strict=False):
            if tk not in red_tokens:
                red_tokens.append(tk)
                red_polys.append(pg)
            row.add(tk)
        mask_rows.append(row)
    meta["red_v2_tokens"] = red_tokens
    arrays["red_v2_mask"] = np.array([[tk in row for tk in red_tokens] for row in mask_rows], dtype=bool).reshape(len(steps), len(red_tokens))
    arrays["red_v2_wkb"], arrays["red_v2_offsets"] = wkb_pack(red_polys)
    # human past (-1.5..0 s) sampled at 0.1 s with the devkit's arange(start, end)[:-1]
    past = np.array(ego_states[: cur + 1])
    times = np.array([int(f["timestamp"]) for f in frames[: cur + 1]], dtype=np.int64)
    query = np.arange(times[0], times[-1], int(0.1 * 1e6), dtype=np.int64)
    query = np.clip(query, times[0], times[-1])[:-1]
    arrays["human_past_states"] = _interp_states(times, past, query)
    fut = np.array([s[:3] for s in ego_states[cur: cur + 9]])
    arrays["human_future_poses"] = absolute_to_relative(fut[0], fut[1:])
    meta["start_time_s"] = int(current["timestamp"]) / 1e6
    cache = MetricCache(meta, arrays)
    precompute_reference_terms(cache)
    return cache


def scene_frames(log_frames: list[dict], token: str) -> list[dict]:
    """History + future frames of the scene whose current frame is `token`."""
    for i, f in enumerate(log_frames):
        if f["token"] == token:
            start = i - (NUM_HISTORY_FRAMES - 1)
            if start < 0 or i + NUM_FUTURE_FRAMES >= len(log_frames):
                raise ValueError(f"token {token} has no full scene window in log {f['log_name']}")
            return log_frames[start: i + NUM_FUTURE_FRAMES + 1]
    raise KeyError(f"token {token} not found in log")


