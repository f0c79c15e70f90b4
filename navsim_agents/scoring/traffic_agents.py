"""navsim's traffic agents policies beyond log replay: reactive IDM vehicles (`navsim_IDM_traffic_agents`, the
two-stage default) and constant-velocity vehicles (`constant_velocity_traffic_agents`).

Constant velocity (`traffic_agents_policies/constant_velocity_traffic_agents.py`): every current vehicle moves on
with its velocity and heading.

Follows navsim main 0a380a9 `traffic_agents_policies/navsim_IDM_traffic_agents.py`,
`planning/simulation/observation/navsim_idm_agents.py` and `navsim_idm/{navsim_idm_agents_builder,
navsim_idm_agent_manager}.py` over nuplan-devkit v1.2 `simulation/observation/idm/{idm_agent, idm_agent_manager,
idm_policy, idm_agents_builder, utils}.py`, `simulation/path/{interpolated_path, utils}.py` and
`occupancy_map/strtree_occupancy_map.py`:

- Vehicles of the current frame are snapped to the lane (or, in an intersection, the lane connector) whose baseline
  heading is closest (`get_starting_segment`); those more than 3 m off it, or whose snapped box meets the ego or an
  earlier agent, are not simulated.
- Every 0.1 s each agent looks along its path to go for the nearest object (ego, other agents) meeting the path
  buffered by half its width, and moves by one forward-Euler IDM step; its occupancy becomes its footprint
  stretched by speed x headway.
- Unsimulated vehicles come back as static objects when parked off the lanes or more than 3 m off a lane.
- Everything else (pedestrians, bicycles, static objects) is the log replay.

`_propagate` gives the results of that query-by-query rule (`_propagate_plain`, held equal to it in tests) while
building only the geometry a query needs: corridors and footprints whose bounds meet no other entry are never built
(an entry is near an agent's path to go when its bounds meet a chunk of PATH_CHUNK segments, grown as a buffer grows;
the bounds of the whole path hold its follower too), and a lead on the agent's own path, its box centre deep inside the
corridor, is a hit without building the corridor (`_lead_deep_in_corridor`).
Corridors, footprints (with their simplify passes), nearest-object results and whole agent steps are kept per
process by their exact inputs (`_Memo`): the human-filter simulation of a scene and the synthetic scenes started from
one original scene move the same vehicles the same way until the ego makes a difference. A step is keyed by all its
query reads: the agent's state, its own occupancy entry and the entries near its path (their geometries and what the
lead velocity takes from them; a geometry by its simplify pass, or the fixed point once reached); a step decided by
the devkit's whole-occupancy tree (a tie) is not kept. Buffers and unions go through `geos_calls` (the same GEOS
calls without shapely's argument handling).

Devkit behaviour reproduced on purpose (see the conformance README):
- The metric cache has no `traffic_light_status`, so agents never extend their route: each keeps its starting
  lane and stops at its end (`plan_route` is never called).
- The ego used by the agents at step k is the simulated state k-1, as a box whose CENTER is the simulated rear axle
  (`build_ego_state_from_simulated_ego_states` passes the rear-axle pose to `CarFootprint(center=...)`).
- Nearest-object search skips ids that are substrings of the agent's id (`_get_other_geometries`).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import CAP_STYLE
from shapely.ops import nearest_points, unary_union
from shapely.strtree import STRtree

from navsim_agents.data.maps import SemanticMapLayer, get_maps_api, resolve_maps_root
from navsim_agents.idm import NAVSIM_IDM_TRAFFIC, pdm_idm_step
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import normalize_angle
from navsim_agents.scoring.geos_calls import flat_buffer, polygon, same_coordinates, simplify_kept, union_pair
from navsim_agents.scoring.metric_cache_file import REACTIVE_TYPE_NAME, MetricCache
from navsim_agents.scoring.observation import Observation, OccupancyMap, TrackInfo
from navsim_agents.scoring.pdm_closed import Track
from rap_backbone.nuplan_rig import PACIFICA

# navsim config/common/traffic_agents_policy/navsim_IDM_traffic_agents.yaml (its IDM parameters: idm.py)
IDM_TARGET_VELOCITY = 10.0  # [m/s], used when the lane has no speed limit
IDM_RADIUS = 100.0  # [m] agents farther from the ego are dropped
IDM_SNAP_THRESHOLD = 3.0  # [m] largest distance from the lane baseline an agent is snapped over
# navsim_idm_agents.py: `tspan = 0.1`, parked vehicles are slower than 0.1 m/s
IDM_STEP_S = 0.1
PARKED_SPEED_THRESHOLD = 0.1
# navsim_idm_agent_manager.py `simplify_occupancy_map_geometries(tolerance=1e-5)`
OCCUPANCY_SIMPLIFY_TOLERANCE = 1e-5

EGO_ID = "ego"
PATH_CHUNK = 8  # path segments per bounds box of the corridor pre-check (`InterpolatedPath.may_meet_from`)

# navsim config/common/traffic_agents_policy/*.yaml names (log replay is the metric cache's own observation)
LOG_REPLAY_POLICY = "log_replay_traffic_agents"
IDM_POLICY = "navsim_IDM_traffic_agents"
CONSTANT_VELOCITY_POLICY = "constant_velocity_traffic_agents"
TRAFFIC_AGENTS_POLICIES = (LOG_REPLAY_POLICY, IDM_POLICY, CONSTANT_VELOCITY_POLICY)


class InterpolatedPath:
    """nuplan `create_path_from_se2` + `InterpolatedPath`: progress = cumulative xy distance (a point whose next point
    repeats its progress dropped), x / y linear in progress, heading unwrapped then linear.

    The devkit also drops the last point of every path: it zips the points with the N - 1 repeat flags, so the zip
    stops one short (nuplan-devkit nuplan/planning/simulation/observation/idm/utils.py, create_path_from_se2, the
    list comprehension over ``zip(states, progress_list, repeated_states_mask)``). An IDM vehicle without route
    extension therefore stops one baseline sample before its lane end. ``keep_last_point=True`` keeps it (the
    evident intent); the default reproduces the devkit."""

    def __init__(self, discrete_path: np.ndarray, keep_last_point: bool = False):
        path = np.asarray(discrete_path, dtype=np.float64)
        progress = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(path[:, 0]), np.diff(path[:, 1])))])
        keep = np.append(~np.isclose(np.diff(progress), 0.0), keep_last_point)
        self.points = path[keep]
        self.progress = progress[keep]
        if len(self.points) < 2:
            raise ValueError("a path needs at least 2 distinct points")
        self._heading = np.unwrap(self.points[:, 2])
        # plain floats for the one-state lookups of every agent at every step
        self._progress_list = self.progress.tolist()
        self._xyh = np.column_stack([self.points[:, :2], self._heading]).tolist()
        self._xs, self._ys = self.points[:, 0].tolist(), self.points[:, 1].tolist()
        self._x, self._y = np.ascontiguousarray(self.points[:, 0]), np.ascontiguousarray(self.points[:, 1])
        self._start, self._end = self._progress_list[0], self._progress_list[-1]
        self.last_xy = (self._xs[-1], self._ys[-1])
        # bounds of points[i:] for every i (the path to go of `xy_from`)
        self._suffix_lo = np.minimum.accumulate(self.points[::-1, :2], axis=0)[::-1].tolist()
        self._suffix_hi = np.maximum.accumulate(self.points[::-1, :2], axis=0)[::-1].tolist()
        # bounds of each run of PATH_CHUNK segments (samples [c * PATH_CHUNK, (c + 1) * PATH_CHUNK], both ends)
        self._chunks = [(min(xs), min(ys), max(xs), max(ys))
                        for c in range(0, len(self._xs) - 1, PATH_CHUNK)
                        for xs, ys in [(self._xs[c:c + PATH_CHUNK + 1], self._ys[c:c + PATH_CHUNK + 1])]]

    @property
    def start(self) -> float:
        return self._start

    @property
    def end(self) -> float:
        return self._end

    def states_at(self, progress) -> np.ndarray:
        """[..., 3] x, y, heading at `progress` (within the path)."""
        p = np.asarray(progress, dtype=np.float64)
        if p.ndim == 0:  # one state: avoid three array interpolations
            return np.array(self.state_at(float(p)))
        x = np.interp(p, self.progress, self.points[:, 0])
        y = np.interp(p, self.progress, self.points[:, 1])
        h = normalize_angle(np.interp(p, self.progress, self._heading))
        return np.stack([x, y, h], axis=-1)

    def state_at(self, progress: float) -> Tuple[float, float, float]:
        """(x, y, heading) at one `progress` (within the path), as `states_at` computes it, in plain floats."""
        samples = self._progress_list
        i = min(max(bisect.bisect_right(samples, progress) - 1, 0), len(samples) - 2)
        f = (progress - samples[i]) / (samples[i + 1] - samples[i])
        (ax, ay, ah), (bx, by, bh) = self._xyh[i], self._xyh[i + 1]
        h = ah + f * (bh - ah)
        return ax + f * (bx - ax), ay + f * (by - ay), math.atan2(math.sin(h), math.cos(h))

    def clamp(self, progress: float) -> float:
        return max(self._start, min(progress, self._end))

    def xy_from(self, progress: float) -> np.ndarray:
        """nuplan `trim_path_up_to_progress`: the state at `progress`, then every sampled point beyond it."""
        after = bisect.bisect_right(self._progress_list, progress)  # the first sample beyond `progress`
        if after == len(self._progress_list):
            return self.points[-2:, :2]
        out = np.empty((len(self._progress_list) - after + 1, 2))
        out[0] = self.states_at(progress)[:2]
        out[1:] = self.points[after:, :2]
        return out

    def bounds_from(self, progress: float) -> Tuple[int, Tuple[float, float, float, float]]:
        """(number of points, bounds) of `xy_from(progress)` without building it: its first point lies on the segment
        ending at the first sample beyond `progress`, so the samples from that segment's start on bound it."""
        n = len(self._progress_list)
        first = min(max(bisect.bisect_right(self._progress_list, progress) - 1, 0), n - 2)
        (lx, ly), (hx, hy) = self._suffix_lo[first], self._suffix_hi[first]
        return n - first, (lx, ly, hx, hy)

    def may_meet_from(self, progress: float, grow: float, bounds) -> bool:
        """False only where nothing within `grow` of `xy_from(progress)` lies in `bounds`: its part up to the end of
        the first chunk of PATH_CHUNK segments, then each later chunk's bounds, grown by `grow`, are tested in turn
        (the bounds of the whole path to go hold far more than its corridor: on a curve, or behind the agent)."""
        xs, ys, n = self._xs, self._ys, len(self._progress_list)
        after = bisect.bisect_right(self._progress_list, progress)  # as `xy_from`
        if after >= n:
            head_x, head_y, rest = xs[-2:], ys[-2:], n
        else:
            x, y, _ = self.state_at(progress)
            end = ((after - 1) // PATH_CHUNK + 1) * PATH_CHUNK  # the last sample of the chunk holding the first point
            head_x, head_y, rest = [x, *xs[after:end + 1]], [y, *ys[after:end + 1]], end // PATH_CHUNK
        lx, ly, hx, hy = bounds[0] - grow, bounds[1] - grow, bounds[2] + grow, bounds[3] + grow
        if min(head_x) <= hx and max(head_x) >= lx and min(head_y) <= hy and max(head_y) >= ly:
            return True
        for cx, cy, cX, cY in self._chunks[rest:]:
            if cx <= hx and cX >= lx and cy <= hy and cY >= ly:
                return True
        return False

    def bounds_between(self, start: float, end: float) -> Tuple[int, Tuple[float, float, float, float]]:
        """(number of points, bounds) of a superset of `xy_between(start, end)`: the samples from the segment holding
        `start` to the one holding `end`."""
        n, progress = len(self._progress_list), self._progress_list
        front = bisect.bisect_right(progress, start)
        tail = bisect.bisect_left(progress, end) - 1
        lo = max(min(front - 1, tail, n - 2), 0)
        hi = min(max(front, tail + 1, 1), n - 1)
        xs, ys = self._xs[lo:hi + 1], self._ys[lo:hi + 1]
        return hi + 1 - lo, (min(xs), min(ys), max(xs), max(ys))

    def xy_between(self, start: float, end: float) -> np.ndarray:
        """nuplan `trim_path`: states at `start` and `end` around the sampled points strictly between them."""
        front = bisect.bisect_right(self._progress_list, start)  # the first sample beyond `start`
        if front == len(self._progress_list):
            return self.points[-2:, :2]
        tail = bisect.bisect_left(self._progress_list, end)  # one past the last sample before `end`
        if tail == 0:
            return self.points[:2, :2]
        inner = self.points[front:tail, :2]
        out = np.empty((len(inner) + 2, 2))
        ends = np.array((start, end))  # x, y as `states_at` interpolates them for several states
        (out[0, 0], out[-1, 0]), (out[0, 1], out[-1, 1]) = np.interp(ends, self.progress, self._x), \
            np.interp(ends, self.progress, self._y)
        out[1:-1] = inner
        return out


def _box_corners(x: float, y: float, heading: float, length: float, width: float) -> list:
    """Corners FL, RL, RR, FR (nuplan `OrientedBox.geometry`)."""
    c, s = math.cos(heading), math.sin(heading)
    hl, hw = length / 2.0, width / 2.0
    return [(x + hl * c - hw * s, y + hl * s + hw * c), (x - hl * c - hw * s, y - hl * s + hw * c),
            (x - hl * c + hw * s, y - hl * s - hw * c), (x + hl * c + hw * s, y + hl * s - hw * c)]


def _box_polygon(x: float, y: float, heading: float, length: float, width: float):
    return polygon(_box_corners(x, y, heading, length, width))


@dataclass
class IDMAgent:
    """One IDM vehicle on its starting lane (nuplan `IDMAgent` without route planning)."""

    token: str
    length: float
    width: float
    path: InterpolatedPath
    progress: float
    velocity: float
    target_velocity: float
    speed_limit: Optional[float]
    # the pose at a progress and the box there: asked for several times per step
    _pose_at: Optional[float] = field(default=None, init=False, repr=False, compare=False)
    _pose: Optional[Tuple[float, float, float]] = field(default=None, init=False, repr=False, compare=False)
    _polygon: object = field(default=None, init=False, repr=False, compare=False)

    def pose(self) -> Tuple[float, float, float]:
        """(x, y, heading) on the path at the (clamped) progress."""
        progress = self.path.clamp(self.progress)
        if self._pose_at != progress:
            self._pose_at, self._pose, self._polygon = progress, self.path.state_at(progress), None
        return self._pose

    def corners(self) -> list:
        pose = self.pose()
        return _box_corners(pose[0], pose[1], pose[2], self.length, self.width)

    def polygon(self):
        self.pose()  # drops the kept box when the agent has moved
        if self._polygon is None:
            self._polygon = shapely.polygons(self.corners())
        return self._polygon

    def progress_to_go(self) -> float:
        return self.path.end - self.progress

    def propagate(self, lead_distance: float, lead_velocity: float, lead_length_rear: float, dt: float) -> None:
        """One forward-Euler step of the IDM (nuplan `IDMPolicy.solve_forward_euler_idm_policy`), the agent at
        progress 0 and the lead `lead_distance` ahead."""
        if self.speed_limit is not None and self.speed_limit > 0.0:
            self.target_velocity = self.speed_limit
        moved, velocity = pdm_idm_step(0.0, self.velocity, lead_distance, lead_velocity, lead_length_rear,
                                       self.target_velocity, dt, NAVSIM_IDM_TRAFFIC)
        self.progress += float(moved)
        self.velocity = max(float(velocity), 0.0)

    def projected_footprint(self):
        """The box united with the path ahead over length / 2 + speed x headway, buffered by half the width."""
        start, end = self.footprint_span()
        return _footprint(self.path, start, end, self.width, self.polygon())

    def footprint_span(self) -> Tuple[float, float]:
        return (self.path.clamp(self.progress - self.length / 2),
                self.path.clamp(self.progress + self.length / 2 + self.velocity * NAVSIM_IDM_TRAFFIC.headway_time))


def _footprint_of_box(path: InterpolatedPath, start: float, end: float, width: float, box: "_Once"):
    """`_footprint` through the direct GEOS calls (the same floats)."""
    return union_pair(flat_buffer(path.xy_between(start, end), width / 2), box())


def _footprint(path: InterpolatedPath, start: float, end: float, width: float, polygon):
    line = LineString(path.xy_between(start, end))
    return unary_union([line.buffer(width / 2, cap_style=CAP_STYLE.flat), polygon])


class _OccupancyMap:
    """nuplan `STRTreeOccupancyMap`: id -> geometry in insertion order, queries through a fresh STR-tree."""

    def __init__(self, geometries: Optional[Dict[str, object]] = None):
        self.geometries: Dict[str, object] = dict(geometries or {})
        # id -> the geometry object that `simplify` left unchanged: simplify is deterministic, so simplifying it again
        # (as the devkit does before every agent's query) gives the same coordinates and can be skipped
        self._simplified: Dict[str, object] = {}

    def intersects(self, geometry) -> "_OccupancyMap":
        ids, geoms = list(self.geometries), list(self.geometries.values())
        tree = STRtree(geoms)
        return _OccupancyMap({ids[i]: geoms[i] for i in tree.query(geometry) if geoms[i].intersects(geometry)})

    def nearest_to(self, geometry_id: str) -> Tuple[str, float]:
        """(id, distance) of the nearest other geometry; ids contained in `geometry_id` are skipped as in nuplan."""
        others = {k: g for k, g in self.geometries.items() if k not in geometry_id}
        ids, geoms = list(others), list(others.values())
        index = int(STRtree(geoms).nearest(self.geometries[geometry_id]))
        p1, p2 = nearest_points(self.geometries[geometry_id], geoms[index])
        return ids[index], float(p1.distance(p2))

    def simplify(self) -> None:
        for k, g in self.geometries.items():
            if self._simplified.get(k) is g:
                continue
            simple = g.simplify(OCCUPANCY_SIMPLIFY_TOLERANCE, preserve_topology=True)
            if shapely.equals_exact(simple, g, tolerance=0.0):
                self._simplified[k] = g  # a fixed point: keep the object so the identity check above holds
            else:
                self.geometries[k] = simple


def _track_polygon(track: Track):
    return _box_polygon(track.x, track.y, track.heading, track.length, track.width)


def current_tracks(cache: MetricCache) -> List[Track]:
    """Every object of the current frame (global boxes; velocities of agents)."""
    return [Track(str(tok), str(kind), *map(float, row))
            for (tok, kind), row in zip(cache.meta["current_tracks"], cache.arrays["current_tracks"], strict=True)]


def _nearest_pose(segment, x: float, y: float):
    """The pose on `segment`'s baseline nearest to (x, y) (kept: vehicles' lanes are looked up again and again)."""
    return _POSES.get((segment, x, y), lambda: segment.baseline_path.get_nearest_pose_from_position((x, y)))


def starting_segment(map_api, x: float, y: float, heading: float):
    """nuplan `get_starting_segment`: (lane or connector with the closest baseline heading, progress) or (None,
    None). Heading differences are not wrapped, as in nuplan."""
    if map_api.is_in_layer((x, y), SemanticMapLayer.LANE):
        layer = SemanticMapLayer.LANE
    elif map_api.is_in_layer((x, y), SemanticMapLayer.INTERSECTION):
        layer = SemanticMapLayer.LANE_CONNECTOR
    else:
        return None, None
    segments = map_api.get_all_map_objects((x, y), layer)
    if not segments:
        return None, None
    diffs = [_nearest_pose(seg, x, y)[2] - heading for seg in segments]
    best = segments[int(np.argmin(np.abs(diffs)))]
    return best, best.baseline_path.get_nearest_arc_length_from_position((x, y))


def _ego_boxes(states: np.ndarray) -> np.ndarray:
    """The ego as the IDM agents see it at each of `states` [T, 11]: Pacifica box centred at the simulated rear axle
    (devkit quirk); one vectorised call."""
    poses = np.asarray(states)[:, [S.X, S.Y, S.HEADING]].tolist()
    return shapely.polygons(np.array([_box_corners(x, y, h, PACIFICA.length, PACIFICA.width) for x, y, h in poses],
                                     dtype=np.float64).reshape(len(poses), 4, 2))


def _ego_box(state: np.ndarray):
    return _ego_boxes(np.asarray(state)[None])[0]


def _true_ego_box(state: np.ndarray):
    center = state[:2] + PACIFICA.rear_axle_to_center * np.array([np.cos(state[S.HEADING]), np.sin(state[S.HEADING])])
    return _box_polygon(center[0], center[1], state[S.HEADING], PACIFICA.length, PACIFICA.width)


@functools.lru_cache(maxsize=4096)
def _lane_path(segment, keep_last_point: bool) -> InterpolatedPath:
    """A lane's (or connector's) path, built once: paths never change, and vehicles of nearby scenes share lanes."""
    return InterpolatedPath(segment.baseline_path.discrete_path, keep_last_point)


@functools.lru_cache(maxsize=4096)
def _speed_limit(segment) -> Optional[float]:
    """A lane's speed limit, read once (a map-table row lookup)."""
    return segment.speed_limit_mps


def build_agents(vehicles: Sequence[Track], ego_state: np.ndarray, map_api, keep_last_path_point: bool = False,
                 segment_of: Optional[Callable] = None) -> Tuple[Dict[str, IDMAgent], _OccupancyMap]:
    """navsim `build_idm_agents_on_map_rails` (no open-loop detection types); `keep_last_path_point`: see
    `InterpolatedPath`; `segment_of(x, y, heading)`: `starting_segment` on `map_api` (e.g. memoised)."""
    segment_of = segment_of or functools.partial(starting_segment, map_api)
    placed = [_true_ego_box(ego_state)]  # the ego, then every vehicle placed so far
    occupancy = _OccupancyMap()
    agents: Dict[str, IDMAgent] = {}
    for v in vehicles:
        if v.token in agents:
            continue
        segment, progress = segment_of(v.x, v.y, v.heading)
        if segment is None:
            continue
        sx, sy, sh = _nearest_pose(segment, v.x, v.y)
        if np.hypot(sx - v.x, sy - v.y) > IDM_SNAP_THRESHOLD:
            continue
        box = _box_polygon(sx, sy, sh, v.length, v.width)
        # the devkit asks an STR-tree of the occupancy; its envelope filter only skips pairs that cannot intersect
        if shapely.intersects(placed, box).any():
            continue
        placed.append(box)
        occupancy.geometries[v.token] = box
        speed = float(np.hypot(v.vx, v.vy))
        if np.isnan(speed):
            speed = float(np.hypot(ego_state[S.VELOCITY_X], ego_state[S.VELOCITY_Y]))
        limit = _speed_limit(segment)
        agents[v.token] = IDMAgent(v.token, v.length, v.width, _lane_path(segment, keep_last_path_point),
                                   float(progress), speed, limit or IDM_TARGET_VELOCITY, limit)
    return agents, occupancy


def _lead_velocity(nearest: str, agent: IDMAgent, agents: Dict[str, IDMAgent], ego_state: np.ndarray) -> float:
    """The nearest object's speed along the agent's heading (0 for static objects)."""
    heading = agent.pose()[2]
    if EGO_ID in nearest:
        lead_speed = float(np.hypot(ego_state[S.VELOCITY_X], ego_state[S.VELOCITY_Y]))
        relative = ego_state[S.HEADING] - heading
    elif nearest in agents:
        lead_speed = agents[nearest].velocity
        relative = agents[nearest].pose()[2] - heading
    else:
        lead_speed, relative = 0.0, 0.0
    return lead_speed * float(np.cos(normalize_angle(relative)))


# squared radii that decide `hypot > IDM_RADIUS` without hypot's rounding mattering (it is within 1 ulp, far inside)
_INSIDE_RADIUS_SQ, _OUTSIDE_RADIUS_SQ = (IDM_RADIUS * (1 - 1e-9)) ** 2, (IDM_RADIUS * (1 + 1e-9)) ** 2


def _beyond_radius(pose: Sequence[float], ego_xy: Sequence[float]) -> bool:
    """np.hypot(dx, dy) > IDM_RADIUS, computed only near the radius."""
    dx, dy = pose[0] - ego_xy[0], pose[1] - ego_xy[1]
    squared = dx * dx + dy * dy
    if squared < _INSIDE_RADIUS_SQ:
        return False
    if squared > _OUTSIDE_RADIUS_SQ:
        return True
    return bool(np.hypot(dx, dy) > IDM_RADIUS)


def _propagate_plain(agents: Dict[str, IDMAgent], occupancy: _OccupancyMap, ego_state: np.ndarray) -> None:
    """navsim `NavsimIDMAgentManager.propagate_agents` without traffic lights or open-loop detections, query by query
    as the devkit does (the reference for `_propagate`)."""
    occupancy.geometries[EGO_ID] = _ego_box(ego_state)
    ego_xy = ego_state[:2]  # the box centre the agents see
    far = [t for t, a in agents.items() if np.hypot(*(np.asarray(a.pose()[:2]) - ego_xy)) > IDM_RADIUS]
    for token in far:
        occupancy.geometries.pop(token)
        agents.pop(token)
    for token, agent in agents.items():
        path_to_go = LineString(agent.path.xy_from(agent.path.clamp(agent.progress)))
        occupancy.simplify()
        hits = occupancy.intersects(path_to_go.buffer(agent.width / 2, cap_style=CAP_STYLE.flat))
        if token not in hits.geometries:
            raise AssertionError(f"IDM agent {token}: its baseline does not intersect the agent itself")
        if len(hits.geometries) > 1:
            nearest, distance = hits.nearest_to(token)
            agent.propagate(distance, _lead_velocity(nearest, agent, agents, ego_state), 0.0, IDM_STEP_S)
        else:
            agent.propagate(agent.progress_to_go(), 0.0, agent.length / 2, IDM_STEP_S)
        occupancy.geometries[token] = agent.projected_footprint()



# GEOS BufferParameters::DEFAULT_SIMPLIFY_FACTOR: buffer first simplifies its input line (OffsetCurveBuilder,
# BufferInputLineSimplifier) by up to this fraction of the distance per pass, at most one pass per vertex
GEOS_BUFFER_SIMPLIFY_FACTOR = 0.01
BOUNDS_SLACK = 1e-6  # [m] far above GEOS rounding at map coordinates (~1e6 m: ulp 1e-10)


def _buffer_grow(points: int, distance: float) -> float:
    """How far `LineString(xy).buffer(distance)` reaches from a line of `points` vertices, surely."""
    return distance * (1.0 + GEOS_BUFFER_SIMPLIFY_FACTOR * points) + BOUNDS_SLACK


def _buffer_bounds(points: int, bounds, distance: float) -> Tuple[float, float, float, float]:
    """Bounds that surely hold `LineString(xy).buffer(distance)` for a line of `points` vertices within `bounds`."""
    grow = _buffer_grow(points, distance)
    return bounds[0] - grow, bounds[1] - grow, bounds[2] + grow, bounds[3] + grow


def _meets(bounds, lx: float, ly: float, hx: float, hy: float) -> bool:
    return bounds[0] <= hx and bounds[2] >= lx and bounds[1] <= hy and bounds[3] >= ly


class _Once:
    """A geometry built on the first call and shared by every entry that stores the same one."""

    __slots__ = ("_make", "_value")

    def __init__(self, make):
        self._make, self._value = make, None

    def __call__(self):
        if self._make is not None:
            self._value, self._make = self._make(), None
        return self._value

    @property
    def made(self) -> bool:
        return self._make is None

    def set(self, value) -> None:
        """The value `make()` would give, made elsewhere (e.g. in one vectorised call with others)."""
        self._value, self._make = value, None


class _Simplified:
    """A geometry built on first use, then its devkit simplify passes (version k: k passes), each computed once; shared
    by every entry that stores the same geometry. Simplify is deterministic, so passes stop at a fixed point."""

    __slots__ = ("_make", "_versions", "_fixed")

    def __init__(self, make):
        self._make, self._versions, self._fixed = make, None, False

    @property
    def made(self) -> bool:
        return self._versions is not None

    def index(self, passes: int) -> int:
        """`passes`, or the fixed point's index where it is known and earlier (`version` gives the same object)."""
        return min(passes, len(self._versions) - 1) if self._fixed else passes

    def version(self, passes: int):
        if self._versions is None:
            self._versions, self._make = [self._make()], None
        versions = self._versions
        while len(versions) <= passes and not self._fixed:
            simple = simplify_kept(versions[-1], OCCUPANCY_SIMPLIFY_TOLERANCE)
            if same_coordinates(simple, versions[-1]):
                self._fixed = True
            else:
                versions.append(simple)
        return versions[min(passes, len(versions) - 1)]


class _Memo:
    """Values built from exact inputs, kept for the most recent `size` keys: a scene's traffic is simulated again for
    the human filter, and the synthetic scenes of one original start their vehicles alike, so the same corridors,
    footprints and nearest-object queries come back. Same inputs give the same floats, so a kept value is exact."""

    def __init__(self, size: int):
        self.size = size
        self._values: Dict[tuple, object] = {}

    def get(self, key: tuple, make: Callable[[], object]):
        value = self.find(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def find(self, key: tuple):
        """The kept value (now the most recent) or None."""
        value = self._values.pop(key, None)
        if value is not None:
            self._values[key] = value
        return value

    def put(self, key: tuple, value) -> None:
        values = self._values
        values.pop(key, None)
        if len(values) >= self.size:
            del values[next(iter(values))]  # the least recently used: dicts keep insertion order
        values[key] = value

    def clear(self) -> None:
        self._values.clear()


# bounded by memory: a corridor runs along the whole path to go (hundreds of vertices), a footprint is small
_CORRIDORS = _Memo(4096)
_FOOTPRINTS = _Memo(16384)
_NEAREST = _Memo(16384)
_SEGMENTS = _Memo(16384)
_POSES = _Memo(16384)
_STEPS = _Memo(65536)  # an agent's step from its query's inputs (a few floats each)


def clear_memos() -> None:
    """Forget every kept traffic geometry (results do not change; e.g. for timing a cold run)."""
    for memo in (_CORRIDORS, _FOOTPRINTS, _NEAREST, _SEGMENTS, _POSES, _STEPS):
        memo.clear()


class _LazyGeometry:
    """An occupancy geometry built only when a query needs it, then simplified as many times as the devkit would
    have by then (one pass per agent query since it was stored), with bounds that surely hold it from the start;
    `footprint`: an agent's projected footprint (it holds the box at the agent's pose); `ident`: hashable, equal only
    for the same geometry (default: the chain, shared by equal footprints)."""

    __slots__ = ("bounds", "footprint", "chain", "stored_at", "ident")

    def __init__(self, bounds, chain: _Simplified, stored_at: int, footprint: bool = False, ident=None):
        self.bounds, self.footprint, self.chain, self.stored_at = bounds, footprint, chain, stored_at
        # what decides the geometry exactly (the shared chain itself, or e.g. the ego's pose floats)
        self.ident = chain if ident is None else ident

    def at(self, passes: int):
        return self.chain.version(passes - self.stored_at)

    def version_index(self, passes: int) -> int:
        """Which of the chain's versions `at(passes)` gives, as far as known without building it: with the fixed
        point reached, later passes give the same geometry."""
        return self.chain.index(passes - self.stored_at)


class _LazyOccupancy:
    """`_OccupancyMap` with the same insertion order and simplify passes, its geometries built on demand: a query
    whose surely-holding bounds meet no other entry needs no geometry at all."""

    def __init__(self, geometries: Dict[str, object]):
        self.passes = 0  # `_OccupancyMap.simplify` calls so far
        self.entries: Dict[str, _LazyGeometry] = {}
        for key, geometry in geometries.items():
            self.put_geometry(key, geometry)

    def put_geometry(self, key: str, geometry, ident=None, bounds: Optional[tuple] = None) -> None:
        """Store a built geometry (`bounds`: its bounds, if known)."""
        bounds = tuple(shapely.bounds(geometry).tolist()) if bounds is None else bounds
        self.entries[key] = _LazyGeometry(bounds, _Simplified(lambda: geometry), self.passes, ident=ident)

    def put_footprint(self, key: str, bounds, chain: _Simplified) -> None:
        """Store an agent's footprint, surely held by `bounds`; an equal footprint (a stopped agent, the same vehicle
        in another simulation) shares its `chain`: built once and, as in the devkit, simplified again from scratch."""
        self.entries[key] = _LazyGeometry(bounds, chain, self.passes, footprint=True)

    def geometry(self, key: str):
        return self.entries[key].at(self.passes)

    def plain(self) -> _OccupancyMap:
        return _OccupancyMap({k: self.geometry(k) for k in self.entries})


def _nearest_hit(occupancy: _LazyOccupancy, token: str, hits: List[str],
                 corridor: Callable[[], tuple]) -> Tuple[str, float, bool]:
    """`_OccupancyMap.nearest_to` over the hits: the unique nearest by distance, or on a tie (the STR-tree's traversal
    order decides) or nothing to pick, the devkit's own tree over the whole occupancy in its order; the flag: whether
    the hits alone decided."""
    others = [k for k in hits if k not in token]
    if others:
        own = occupancy.geometry(token)
        geometries = tuple(occupancy.geometry(k) for k in others)
        # the kept geometries stay alive in the value, so their ids in the key are theirs
        _, _, best, distance = _NEAREST.get((id(own), *map(id, geometries)),
                                            lambda: (own, geometries, *_unique_nearest(own, geometries)))
        if best is not None:
            return others[best], distance, True
    return (*occupancy.plain().intersects(corridor()[0]).nearest_to(token), False)


def _unique_nearest(own, geometries: Sequence) -> Tuple[Optional[int], float]:
    """(index, nearest-points distance) of the unique nearest geometry, (None, nan) on a tie."""
    best = 0
    if len(geometries) > 1:
        distances = shapely.distance(own, geometries)
        best = int(np.argmin(distances))
        if int(np.count_nonzero(distances == distances[best])) > 1:
            return None, math.nan
    p1, p2 = nearest_points(own, geometries[best])
    return best, float(p1.distance(p2))


def _corridor(path: InterpolatedPath, progress: float, width: float) -> Tuple[object, Tuple[float, ...]]:
    """The path to go from `progress` buffered by half the width (flat caps), and its bounds."""
    corridor = flat_buffer(path.xy_from(progress), width / 2)
    return corridor, tuple(shapely.bounds(corridor).tolist())


def _propagate(agents: Dict[str, IDMAgent], occupancy: _LazyOccupancy, ego_state: np.ndarray,
               ego_box=None, ego_bounds: Optional[tuple] = None) -> List[Tuple[str, _Once, list]]:
    """`_propagate_plain` with the same results, doing only the geometry work a query needs: the corridor and the
    other entries are built only when their bounds meet, agents' footprints only when a later query needs them;
    `ego_box`: `_ego_box(ego_state)` if already built (`ego_bounds`: its bounds). Returns each agent's (token, box,
    box corners): the box is built by a query that needed it or, with the others, by `_make_boxes`."""
    ego_pose = tuple(ego_state[[S.X, S.Y, S.HEADING]].tolist())  # decides the ego box exactly
    occupancy.put_geometry(EGO_ID, _ego_box(ego_state) if ego_box is None else ego_box, ident=ego_pose,
                           bounds=ego_bounds)
    ego_xy = ego_pose[:2]  # the box centre the agents see
    ego_lead = (*ego_pose, float(ego_state[S.VELOCITY_X]), float(ego_state[S.VELOCITY_Y]))
    far = [t for t, a in agents.items() if _beyond_radius(a.pose(), ego_xy)]
    for token in far:
        occupancy.entries.pop(token)
        agents.pop(token)
    boxes: List[Tuple[str, _Once, list]] = []
    entries = occupancy.entries
    for token, agent in agents.items():
        occupancy.passes += 1  # the devkit simplifies every geometry before each query
        passes = occupancy.passes
        path = agent.path
        progress = path.clamp(agent.progress)
        points, path_bounds = path.bounds_from(progress)
        grow = _buffer_grow(points, agent.width / 2)
        lx, ly, hx, hy = _buffer_bounds(points, path_bounds, agent.width / 2)
        # the entries whose bounds meet (`_meets`, written out: it runs for every agent and entry)
        near = [k for k, e in entries.items()
                if (b := e.bounds)[0] <= hx and b[2] >= lx and b[1] <= hy and b[3] >= ly and k != token]
        if near:  # then chunk by chunk: an entry that can meet no part of the corridor cannot be a hit
            near = [k for k in near if path.may_meet_from(progress, grow, entries[k].bounds)]
        own = entries[token]
        if near or not own.footprint:
            # everything the query reads: the agent, its own entry and the near entries (their geometries, and what
            # the lead velocity takes from them); the same again gives the same step
            state = (token, agent.path, agent.progress, agent.velocity, agent.target_velocity, agent.speed_limit,
                     agent.length, agent.width)
            step_key = state + _query_reads(own, near, entries, passes, agents, ego_lead)
            outcome = _STEPS.find(step_key)
            if outcome is None:
                if _query_step(token, agent, near, occupancy, agents, ego_state):
                    outcome = (agent.progress, agent.velocity, agent.target_velocity)
                    _STEPS.put(step_key, outcome)
                    # the query may have reached simplify fixed points: later steps find it under those indices too
                    after = state + _query_reads(own, near, entries, passes, agents, ego_lead)
                    if after != step_key:
                        _STEPS.put(after, outcome)
            else:
                agent.progress, agent.velocity, agent.target_velocity = outcome
        else:
            agent.propagate(agent.progress_to_go(), 0.0, agent.length / 2, IDM_STEP_S)
        bounds, chain, box, corners = _FOOTPRINTS.get((path, agent.progress, agent.velocity, agent.length,
                                                       agent.width), functools.partial(_footprint_entry, agent))
        boxes.append((token, box, corners))
        occupancy.put_footprint(token, bounds, chain)
    return boxes


def _query_reads(own: _LazyGeometry, near: List[str], entries: Dict[str, _LazyGeometry], passes: int,
                 agents: Dict[str, IDMAgent], ego_lead: tuple) -> tuple:
    """What an agent's query reads of the occupancy: its own entry and the near entries (geometry, simplify version,
    what the lead velocity takes from them)."""
    return (own.ident, own.version_index(passes),
            *[(k, entries[k].ident, entries[k].version_index(passes),
               ego_lead if EGO_ID in k else _lead_state(agents.get(k))) for k in near])


def _lead_state(agent: Optional[IDMAgent]) -> Optional[Tuple[float, float]]:
    """What `_lead_velocity` reads of an agent (nothing of a static object)."""
    return None if agent is None else (agent.velocity, agent.pose()[2])


def _query_step(token: str, agent: IDMAgent, near: List[str], occupancy: _LazyOccupancy,
                agents: Dict[str, IDMAgent], ego_state: np.ndarray) -> bool:
    """One agent's occupancy query and IDM step, the other entries to consider being `near`; False where the devkit's
    tree over the whole occupancy picked the lead (a tie), so that more than `near` decided the step."""
    progress = agent.path.clamp(agent.progress)
    key = (agent.path, progress, agent.width)
    make = functools.partial(_corridor, agent.path, progress, agent.width)

    def corridor() -> Tuple[object, Tuple[float, ...]]:  # built only for a hit no lead on the path decides
        return _CORRIDORS.get(key, make)

    entries = occupancy.entries
    # an own footprint holds the box centred at the corridor's first point (the same pose floats, the progress
    # unchanged since), so it meets the corridor for sure; the starting box was snapped apart from the path
    # (it may even lie past the path's dropped last point) and is checked as in the devkit
    if not entries[token].footprint and not occupancy.geometry(token).intersects(corridor()[0]):
        raise AssertionError(f"IDM agent {token}: its baseline does not intersect the agent itself")
    hits = [k for k in near if (entries[k].footprint and _lead_deep_in_corridor(agent, progress, agents.get(k)))
            or (_meets(entries[k].bounds, *corridor()[1]) and occupancy.geometry(k).intersects(corridor()[0]))]
    if not hits:
        agent.propagate(agent.progress_to_go(), 0.0, agent.length / 2, IDM_STEP_S)
        return True
    nearest, distance, among_hits = _nearest_hit(occupancy, token, [token] + hits, corridor)
    agent.propagate(distance, _lead_velocity(nearest, agent, agents, ego_state), 0.0, IDM_STEP_S)
    return among_hits


# GEOS buffers a line within 1% of the distance per pass of its input-line simplifier, its arcs within 0.2%: a point
# on the line farther than twice the distance (Euclidean) from both its ends is about the distance deep inside
CORRIDOR_END_CLEARANCE = 2.5  # [half widths]


def _lead_deep_in_corridor(agent: IDMAgent, progress: float, lead: Optional[IDMAgent]) -> bool:
    """Whether `lead`'s footprint surely meets `agent`'s corridor (its path to go from `progress`, buffered by half its
    width), decided without building either: on the same path ahead, the lead's box centre (half the lead's width
    inside its footprint) lies on the path to go; more than CORRIDOR_END_CLEARANCE half widths from both its ends, it
    is deep inside the corridor (no point within a half width of it is cut off by a flat cap)."""
    path = agent.path
    if lead is None or lead.path is not path or path.clamp(lead.progress) <= progress:
        return False
    x, y, _ = lead.pose()
    sx, sy, _ = path.state_at(progress)
    ex, ey = path.last_xy
    clearance = (CORRIDOR_END_CLEARANCE * agent.width / 2) ** 2
    return (x - sx) ** 2 + (y - sy) ** 2 > clearance and (x - ex) ** 2 + (y - ey) ** 2 > clearance


def _footprint_entry(agent: IDMAgent) -> Tuple[Tuple[float, float, float, float], _Simplified, _Once, list]:
    """(bounds that surely hold it, chain, box, box corners) of the agent's projected footprint at its state; the
    footprint and the box are built when first needed."""
    path, width = agent.path, agent.width
    start, end = agent.footprint_span()
    corners = agent.corners()
    box = _Once(functools.partial(polygon, corners))
    points, span_bounds = path.bounds_between(start, end)
    lx, ly, hx, hy = _buffer_bounds(points, span_bounds, width / 2)
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = corners
    chain = _Simplified(functools.partial(_footprint_of_box, path, start, end, width, box))
    return (min(lx, ax, bx, cx, dx), min(ly, ay, by, cy, dy), max(hx, ax, bx, cx, dx), max(hy, ay, by, cy, dy)), \
        chain, box, corners


def _make_boxes(boxes: Sequence[Tuple[_Once, list]]) -> None:
    """Build the boxes no query built, from their corners, in one vectorised call."""
    pending = [(box, corners) for box, corners in boxes if not box.made]
    if pending:
        made = shapely.polygons(np.array([c for _, c in pending], dtype=np.float64))
        for (box, _), one in zip(pending, made, strict=True):
            box.set(one)


@dataclass
class SimulatedObject:
    token: str
    polygon: object


class _ParkedCandidate:
    """An unsimulated current vehicle and what decides whether it is kept as a parked (static) object."""

    def __init__(self, track: Track, map_api, segment_of: Optional[Callable] = None):
        self.track = track
        self.polygon = _track_polygon(track)
        self.stationary = float(np.hypot(track.vx, track.vy)) < PARKED_SPEED_THRESHOLD
        self.in_lanes = (map_api.is_in_layer((track.x, track.y), SemanticMapLayer.LANE)
                         or map_api.is_in_layer((track.x, track.y), SemanticMapLayer.INTERSECTION))
        segment, _ = (segment_of or functools.partial(starting_segment, map_api))(track.x, track.y, track.heading)
        self.lateral_deviation = None
        if segment is not None:
            sx, sy, _ = _nearest_pose(segment, track.x, track.y)
            self.lateral_deviation = float(np.hypot(sx - track.x, sy - track.y))


def _observe(active: Sequence[Tuple[str, object]], candidates: Dict[str, _ParkedCandidate]) -> List[SimulatedObject]:
    """navsim `NavsimIDMAgents.get_observation`: the active agents (token, box), then unsimulated vehicles kept as
    parked."""
    out = [SimulatedObject(t, polygon) for t, polygon in active]
    simulated = {t for t, _ in active}
    for token, c in candidates.items():
        if token in simulated:
            continue
        collides = any(c.polygon.intersects(o.polygon) for o in out)
        if collides:
            continue
        if c.stationary and not c.in_lanes:
            out.append(SimulatedObject(token, c.polygon))
        elif c.lateral_deviation is not None and c.lateral_deviation > IDM_SNAP_THRESHOLD:
            out.append(SimulatedObject(token, c.polygon))
    return out


def simulate_vehicles(cache: MetricCache, ego_states: np.ndarray, map_api, keep_last_path_point: bool = False,
                      query_by_query: bool = False) -> List[List[SimulatedObject]]:
    """Vehicles at each of the `len(ego_states) - 1` future 0.1 s steps, reacting to the ego `ego_states` [T,11];
    `query_by_query`: every occupancy query built in full as the devkit does (same results, slower; for tests)."""
    tracks = current_tracks(cache)
    vehicles = [t for t in tracks if t.type_name == REACTIVE_TYPE_NAME]
    # agents and parked candidates (and the simulations of other scenes from the same vehicles) share lane lookups
    def segment_of(x: float, y: float, heading: float):
        return _SEGMENTS.get((map_api, x, y, heading), functools.partial(starting_segment, map_api, x, y, heading))

    agents, initial = build_agents(vehicles, cache.ego_state, map_api, keep_last_path_point, segment_of)
    # every current vehicle: agents dropped out of range later come back through the parked-vehicle rule
    candidates = {v.token: _ParkedCandidate(v, map_api, segment_of) for v in vehicles}
    # the devkit's one-step lag: the agents of step k see the ego of step k - 1
    if query_by_query:
        frames = []
        for step in range(1, len(ego_states)):
            _propagate_plain(agents, initial, ego_states[step - 1])
            frames.append(_observe([(t, a.polygon()) for t, a in agents.items()], candidates))
        return frames
    if len(ego_states) < 2:
        return []
    occupancy = _LazyOccupancy(initial.geometries)
    ego_boxes = _ego_boxes(ego_states[:-1])
    ego_bounds = list(map(tuple, shapely.bounds(ego_boxes).tolist()))
    steps = [_propagate(agents, occupancy, ego_states[k], ego_boxes[k], ego_bounds[k])
             for k in range(len(ego_states) - 1)]
    _make_boxes([(box, corners) for boxes in steps for _, box, corners in boxes])
    return [_observe([(t, box()) for t, box, _ in boxes], candidates) for boxes in steps]


def simulate_constant_velocity(cache: MetricCache, num_steps: int) -> List[List[SimulatedObject]]:
    """Every current vehicle moved by its velocity at each 0.1 s step, heading kept."""
    frames = []
    vehicles = [t for t in current_tracks(cache) if t.type_name == REACTIVE_TYPE_NAME]
    for step in range(1, num_steps + 1):
        dt = step * IDM_STEP_S
        frames.append([SimulatedObject(v.token, _box_polygon(v.x + v.vx * dt, v.y + v.vy * dt, v.heading, v.length,
                                                             v.width)) for v in vehicles])
    return frames




def traffic_observation(cache: MetricCache, ego_states: np.ndarray, map_api, policy: str = IDM_POLICY,
                        keep_last_path_point: bool = False) -> Observation:
    """The scorer's observation under a vehicle policy: every current object at t0, then the simulated vehicles
    with the log replay of all other objects, plus the red lights of the metric cache (navsim
    `AbstractTrafficAgentsPolicy.simulate_environment` + `PDMObservation.update_detections_tracks`, nothing
    marked as collided)."""
    tracks = current_tracks(cache)
    replay = cache.observation("replay")
    red = cache.red_light_steps("v2")
    if policy == IDM_POLICY:
        simulated = simulate_vehicles(cache, ego_states, map_api, keep_last_path_point)
    elif policy == CONSTANT_VELOCITY_POLICY:
        simulated = simulate_constant_velocity(cache, len(ego_states) - 1)
    else:
        raise ValueError(f"unknown traffic agents policy {policy!r}; use {IDM_POLICY} or {CONSTANT_VELOCITY_POLICY}")
    unique: Dict[str, TrackInfo] = {}
    for t in tracks:
        unique.setdefault(t.token, TrackInfo(t.is_agent, t.heading, float(np.hypot(t.vx, t.vy))))
    maps = [OccupancyMap([t.token for t in tracks] + red[0][0], [_track_polygon(t) for t in tracks] + red[0][1])]
    for k, objects in enumerate(simulated, start=1):
        occ = replay[k]
        for token in occ.tokens:
            unique.setdefault(token, replay.unique[token])
        maps.append(OccupancyMap([o.token for o in objects] + list(occ.tokens) + red[k][0],
                                 [o.polygon for o in objects] + list(occ.polygons) + red[k][1]))
    return Observation(maps, unique, [], stride=1)


def cache_map_api(cache: MetricCache, maps_root: Optional[str] = None):
    """The map of a metric cache (`maps_root` overrides the root stored in it, as navsim `map_root_override`)."""
    root, version = resolve_maps_root(maps_root or cache.meta.get("map_root") or None,
                                      cache.meta.get("map_version") or None)
    return get_maps_api(root, version, cache.meta["map_name"])


class TrafficScoreRunner:
    """EPDMS (v2) of agent trajectories under a simulated vehicle policy (navsim `pdm_score` with a traffic agents
    policy): PDM-Closed and the agent scored in one batch against the traffic that reacts to the agent; the human
    penalty filter scores the human future against the traffic that reacts to it."""

    version = "v2"

    def __init__(self, *, human_penalty_filter: bool = True, maps_root: Optional[str] = None,
                 policy: str = IDM_POLICY, idm_keep_last_path_point: bool = False):
        """`idm_keep_last_path_point`: IDM vehicle paths keep their lane's last point (corrected rule; the devkit
        drops it, see `InterpolatedPath`)."""
        from navsim_agents.scoring.scorer import PDMScorer, ScorerConfig

        if policy not in (IDM_POLICY, CONSTANT_VELOCITY_POLICY):
            raise ValueError(f"unknown vehicle policy {policy!r}; use {IDM_POLICY} or {CONSTANT_VELOCITY_POLICY}")
        self.scorer = PDMScorer(ScorerConfig(version="v2", human_penalty_filter=human_penalty_filter))
        self.maps_root = maps_root
        self.policy = policy
        self.idm_keep_last_path_point = idm_keep_last_path_point
        self._human_failed: Dict[Tuple[str, int], List[str]] = {}

    def human_failed(self, cache: MetricCache, map_api) -> List[str]:
        """Metrics the logged human future fails under the traffic reacting to it (agent-independent: kept per
        token for the runner's lifetime, e.g. over the proposals of a training run)."""
        key = (cache.token, cache.meta["timestamp_us"])
        if key not in self._human_failed:
            self._human_failed[key] = self._human_failed_uncached(cache, map_api)
        return self._human_failed[key]

    def forget(self) -> None:
        """Drop what is kept between scenes (human-filter results, traffic geometries); results do not change."""
        self._human_failed.clear()
        clear_memos()

    def _human_failed_uncached(self, cache: MetricCache, map_api) -> List[str]:
        from navsim_agents.scoring.pdm_score import V2_FILTERED, agent_reference
        from navsim_agents.scoring.pdm_simulator import simulate_proposals
        from navsim_agents.scoring.scorer import PDMScorer, ScorerConfig

        human = simulate_proposals(agent_reference(cache, cache.arrays["human_future_poses"])[None], cache.ego_state)
        res = PDMScorer(ScorerConfig(version="v2")).score(human, traffic_observation(cache, human[0], map_api,
                                                                                     self.policy,
                                                                                     self.idm_keep_last_path_point),
                                                          cache.centerline(), cache.meta["route_lane_ids"],
                                                          cache.drivable(), None)
        return [c for c in V2_FILTERED if res[c][0] == 0]

    def score(self, cache: MetricCache, relative_poses) -> Tuple[dict, np.ndarray]:
        """Row values (as `PDMScoreRunner.score`, v2) and the agent's simulated states."""
        from navsim_agents.scoring.pdm_score import agent_reference, check_poses, reference_states, v2_row
        from navsim_agents.scoring.pdm_simulator import simulate_proposals

        poses = check_poses(relative_poses)
        refs = np.stack([reference_states(cache.arrays["pdm_poses_v2"]), agent_reference(cache, poses)])
        simulated = simulate_proposals(refs, cache.ego_state)
        map_api = cache_map_api(cache, self.maps_root)
        observation = traffic_observation(cache, simulated[1], map_api, self.policy, self.idm_keep_last_path_point)
        res = self.scorer.score(simulated, observation, cache.centerline(), cache.meta["route_lane_ids"],
                                cache.drivable(), cache.arrays["human_past_states"])
        failed = self.human_failed(cache, map_api) if self._filter_can_change(res, 1) else []
        return v2_row(res, 1, failed), simulated[1]

    def _filter_can_change(self, res: dict, index: int) -> bool:
        """Whether the human penalty filter can change proposal `index`'s row: it only turns a metric the agent fails
        into a pass (`v2_row`), so an agent passing every filtered metric needs no human simulation."""
        from navsim_agents.scoring.pdm_score import V2_FILTERED

        return self.scorer.config.human_penalty_filter and any(float(res[c][index]) != 1.0 for c in V2_FILTERED)
