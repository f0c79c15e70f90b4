"""Metric cache: everything scoring needs that does not depend on the agent, in a versioned safe format.

One `.npz` per token (arrays only, loaded with `allow_pickle=False`) + JSON metadata inside it. Built from the
OpenScene log frames and the nuPlan map following navsim `metric_caching/metric_cache_processor.py` (v1.1: 5 s
observation without traffic lights; v2: 4 s with red lights and tracks already touching the ego removed).
"""

from __future__ import annotations

import json
import pickle
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy.interpolate import interp1d

from eupe.atomic_io import atomic_path
from navsim_agents.data.maps import get_maps_api, resolve_maps_root
from navsim_agents.scoring import constants as C
from navsim_agents.scoring.constants import PACIFICA
from navsim_agents.scoring.geometry import absolute_to_relative, box_coords, normalize_angle
from navsim_agents.scoring.pdm_closed import (
    Track,
    build_route_context,
    pdm_closed_trajectories,
    red_light_geometries,
)
from navsim_agents.scoring.scorer import CenterlinePath
from navsim_agents.scoring.world import DrivableMap, Observation, OccupancyMap, TrackInfo

# 3: corrected route (navsim route_roadblock_correction); 4: devkit jerk-penalty matrix; 5: current tracks and the
# unfiltered log replay of non-vehicles for reactive traffic, map location of the cache
CACHE_FORMAT_VERSION = 5
# what a truncated, emptied or overwritten .npz raises when read
CACHE_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
NUM_HISTORY_FRAMES = 4
# the object type navsim's reactive IDM policy simulates (TrackedObjectType.VEHICLE); others are log replay
REACTIVE_TYPE_NAME = "vehicle"
NUM_FUTURE_FRAMES = 10


def quaternion_yaw(q) -> float:
    """Yaw of a (w, x, y, z) quaternion (pyquaternion `yaw_pitch_roll[0]`)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def frame_ego_state(frame: dict) -> np.ndarray:
    """State array [11] of a frame: global rear-axle pose, local velocity / acceleration (float32 as NAVSIM)."""
    t = frame["ego2global_translation"]
    dyn = np.asarray(frame["ego_dynamic_state"], dtype=np.float32).astype(np.float64)
    state = np.zeros(C.STATE_SIZE)
    state[:3] = (t[0], t[1], quaternion_yaw(frame["ego2global_rotation"]))
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
        values = interp1d(arr[:, 0], arr[:, 1:], axis=0)(steps[inside])
        values[:, 2] = normalize_angle(values[:, 2])
        for i, v in zip(inside, values, strict=False):
            out[i].append(Track(token, base.type_name, float(v[0]), float(v[1]), float(v[2]), base.length,
                                base.width, float(v[3]) if base.is_agent else 0.0,
                                float(v[4]) if base.is_agent else 0.0))
    return out


def _track_ring(t: Track) -> np.ndarray:
    c = box_coords(np.array([t.x, t.y]), np.asarray(t.heading), t.length, t.width)
    return c[:4]


def _wkb_pack(geoms) -> tuple[np.ndarray, np.ndarray]:
    blobs = [shapely.to_wkb(g) for g in geoms]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)
    return data, offsets


def _wkb_unpack(data: np.ndarray, offsets: np.ndarray) -> list:
    raw = data.tobytes()
    return [shapely.from_wkb(raw[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]


@dataclass
class MetricCache:
    """Agent-independent scoring inputs of one token (arrays; see `save` / `load`)."""

    meta: dict
    arrays: dict = field(default_factory=dict)

    # --- reconstruction helpers ----------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return self.meta["token"]

    @property
    def ego_state(self) -> np.ndarray:
        return self.arrays["ego_state"]

    def centerline(self) -> CenterlinePath:
        return CenterlinePath(self.arrays["centerline"])

    def drivable(self) -> DrivableMap:
        polys = _wkb_unpack(self.arrays["drivable_wkb"], self.arrays["drivable_offsets"])
        return DrivableMap(self.meta["drivable_tokens"], self.meta["drivable_kinds"], polys)

    def red_light_steps(self, version: str) -> list[tuple[list[str], list]]:
        """(tokens, polygons) of the red on-route lane connectors at each 0.1 s step (the devkit's
        `_occupancy_maps_tl`)."""
        red_tokens = self.meta.get(f"red_{version}_tokens", [])
        n_steps = int(self.meta[f"obs_{version}_steps"])
        if not red_tokens:
            return [([], []) for _ in range(n_steps)]
        polys = _wkb_unpack(self.arrays[f"red_{version}_wkb"], self.arrays[f"red_{version}_offsets"])
        mask = self.arrays[f"red_{version}_mask"]
        return [([t for j, t in enumerate(red_tokens) if mask[k, j]], [p for j, p in enumerate(polys) if mask[k, j]])
                for k in range(n_steps)]

    def observation(self, version: str) -> Observation:
        a = self.arrays
        tokens = self.meta[f"obs_{version}_tokens"]
        step, tok, rings = a[f"obs_{version}_step"], a[f"obs_{version}_token"], a[f"obs_{version}_rings"]
        n_steps = int(self.meta[f"obs_{version}_steps"])
        closed = np.concatenate([rings, rings[:, :1]], axis=1)
        polys = shapely.polygons(closed) if len(closed) else np.array([], dtype=object)
        red_tokens = self.meta.get(f"red_{version}_tokens", [])
        red_polys = _wkb_unpack(a[f"red_{version}_wkb"], a[f"red_{version}_offsets"]) if red_tokens else []
        red_mask = a.get(f"red_{version}_mask")
        maps = []
        order = np.argsort(step, kind="stable")
        bounds = np.searchsorted(step[order], np.arange(n_steps + 1))
        for k in range(n_steps):
            sel = order[bounds[k]:bounds[k + 1]]
            toks = [tokens[i] for i in tok[sel]]
            geoms = list(polys[sel])
            if red_tokens:
                for j, rt in enumerate(red_tokens):
                    if red_mask[k, j]:
                        toks.append(rt)
                        geoms.append(red_polys[j])
            maps.append(OccupancyMap(toks, geoms))
        info = a[f"obs_{version}_info"]
        unique = {t: TrackInfo(bool(info[i, 0]), float(info[i, 1]), float(info[i, 2])) for i, t in enumerate(tokens)}
        return Observation(maps, unique, [], stride=1)

    # --- io ------------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically (a per-process temporary file, then a rename: ranks may write the same token)."""
        meta = dict(self.meta, format_version=CACHE_FORMAT_VERSION)
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, meta_json=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                                **self.arrays)

    @staticmethod
    def stored_format_version(path: Path) -> int | None:
        """Format version written in the cache file at `path` (None when it is absent or unreadable)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return json.loads(data["meta_json"].tobytes().decode()).get("format_version")
        except CACHE_READ_ERRORS:
            return None

    @classmethod
    def load(cls, path: Path) -> "MetricCache":
        """Read a cache file; ``FileNotFoundError`` when absent, ``MetricCacheError`` (naming the file) when it
        cannot be read or was written by another format."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"metric cache file {path} not found; run navsim_agents/run_metric_caching.py")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta_json"].tobytes().decode())
                if meta.get("format_version") != CACHE_FORMAT_VERSION:
                    raise MetricCacheError(f"metric cache {path} has format {meta.get('format_version')}, expected "
                                           f"{CACHE_FORMAT_VERSION}; rebuild it with run_metric_caching.py")
                arrays = {k: data[k] for k in data.files if k != "meta_json"}
        except MetricCacheError:
            raise
        except CACHE_READ_ERRORS as err:
            raise MetricCacheError(f"metric cache {path} cannot be read ({type(err).__name__}: {err}); rebuild it "
                                   "with run_metric_caching.py force=true") from err
        return cls(meta, arrays)


class MetricCacheError(ValueError):
    """A metric cache file that exists but cannot be used (truncated, corrupt, another format)."""


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
    lin = interp1d(times_us.astype(np.float64), states[:, [0, 1, 3, 4, 5, 6, 7]], axis=0)(query_us.astype(np.float64))
    out[:, [0, 1, 3, 4, 5, 6, 7]] = lin
    head = interp1d(times_us.astype(np.float64), np.unwrap(states[:, 2]))(query_us.astype(np.float64))
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
    arrays["drivable_wkb"], arrays["drivable_offsets"] = _wkb_pack(route.drivable.polygons)
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
    for k in range(len(steps)):
        frame = frames[cur + k // 5] if cur + k // 5 < len(frames) else None
        lights = frame["traffic_lights"] if frame is not None else []
        toks, polys = red_light_geometries(map_api, lights, route.route_lane_ids)
        row = set()
        for tk, pg in zip(toks, polys, strict=False):
            if tk not in red_tokens:
                red_tokens.append(tk)
                red_polys.append(pg)
            row.add(tk)
        mask_rows.append(row)
    meta["red_v2_tokens"] = red_tokens
    arrays["red_v2_mask"] = np.array([[tk in row for tk in red_tokens] for row in mask_rows], dtype=bool).reshape(len(steps), len(red_tokens))
    arrays["red_v2_wkb"], arrays["red_v2_offsets"] = _wkb_pack(red_polys)
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
    from navsim_agents.scoring.pdm_score import precompute_reference_terms  # scoring imports this module

    precompute_reference_terms(cache)
    return cache


def load_log(path: Path) -> list[dict]:
    """Frames of one OpenScene log pickle (the official data format)."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def scene_frames(log_frames: list[dict], token: str) -> list[dict]:
    """History + future frames of the scene whose current frame is `token`."""
    for i, f in enumerate(log_frames):
        if f["token"] == token:
            start = i - (NUM_HISTORY_FRAMES - 1)
            if start < 0 or i + NUM_FUTURE_FRAMES >= len(log_frames):
                raise ValueError(f"token {token} has no full scene window in log {f['log_name']}")
            return log_frames[start: i + NUM_FUTURE_FRAMES + 1]
    raise KeyError(f"token {token} not found in log")


