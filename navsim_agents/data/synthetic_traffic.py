"""Traffic of the synthetic town: lane-graph paths, IDM vehicles, crosswalk pedestrians, cyclic lights and
an expert ego (IDM speed + pure pursuit on a kinematic bicycle).

Building blocks, reusable by a closed-loop simulator:

- ``Path(town, segments)``: a drivable path along lane ids with arc-length queries (``pose_at``) and the
  lane occupied at any arc length (``lane_at``); ``Path.along(town, lane_ids)``, ``Path.with_lane_change``.
- speeds from the Intelligent Driver Model with PDM-Closed's parameters (``navsim_agents.idm``).
- ``SignalPlan``: protected-phase traffic lights per signalised intersection (``state(inter, approach, t)``).
- ``Traffic(town, rng)``: the world state; ``step()`` advances all agents by ``DT``; vehicles yield at
  lights, unsignalised intersections (first come, first served), and crosswalks with pedestrians.
- ``Expert``: the ego driver: same rules as the traffic, lateral control by pure pursuit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import shapely

from navsim_agents.data.synthetic_town import LANE_WIDTH, TownMap, arc_length, polyline_headings
from navsim_agents.idm import PDM_CLOSED, idm_acceleration
from rap_backbone.nuplan_rig import PACIFICA

DT = 0.1  # simulation step (s); logs are sampled every 5 steps (2 Hz)
# IDM: the textbook form with PDM-Closed's parameters (navsim_agents/idm.py); only the emergency brake limit is the
# generator's own (PDM-Closed clips at its decel_max, which would let a traffic vehicle that another cuts in front
# of fail to stop)
MAX_BRAKE = 8.0
# drivers slow down before curves so that v^2 * curvature stays at half NAVSIM's lateral-acceleration comfort
# bound (pdm_comfort_metrics.py: 4.89 m/s^2, scoring.constants.MAX_ABS_LAT_ACCEL, which the world generator may
# not import: the scoring package sits above data; tests/test_synthetic.py checks the two agree), a relaxed urban
# turn (about 4 m/s through the town's 6.75 m right turns)
CURVE_LAT_ACCEL = 0.5 * 4.89
# deceleration drivers plan with towards a lower speed limit or a curve, and how far ahead they look for curves
ANTICIPATION_DECEL = 1.0
CURVE_LOOKAHEAD = 90.0
# drivers let a pedestrian pass their lane with this much room, and go first only if they are across the
# crosswalk this long before the pedestrian reaches their lane
PED_CLEARANCE = 1.0
PED_TIME_MARGIN = 2.0
TRACKING_LENGTH = 5.0  # m of travel over which the expert steers back onto its path
# light plan: each approach gets its own protected phase
GREEN, YELLOW, ALL_RED = 7.0, 3.0, 2.0
PED_SPEED = (1.1, 1.5)


@dataclass
class Segment:
    lane_id: int
    s0: float  # start on the path
    s1: float  # end on the path
    o0: float  # lane's own arc length at s0


class Path:
    """A polyline along lanes. ``segments`` map path arc length to (lane, lane arc length)."""

    def __init__(self, points: np.ndarray, segments: list[Segment]):
        self.points = points
        self.s = arc_length(points)
        self.heading = np.unwrap(polyline_headings(points))
        self.length = float(self.s[-1])
        self.segments = segments
        self.change = None  # (start, end, from lane, to lane) of a lane change, see ``with_lane_change``
        # signed curvature (1/m, left positive) and the squared speed at which a vehicle on the path feels
        # CURVE_LAT_ACCEL (inf on straights)
        self.curvature = np.gradient(self.heading, self.s) if len(points) > 2 else np.zeros(len(points))
        with np.errstate(divide="ignore"):
            self.curve_speed_sq = CURVE_LAT_ACCEL / np.abs(self.curvature)

    @classmethod
    def along(cls, town: TownMap, lane_ids: list[int], start_offset: float = 0.0) -> "Path":
        """Path through consecutive ``lane_ids`` from ``start_offset`` metres into the first lane."""
        pts, segs, s = [], [], 0.0
        for k, lid in enumerate(lane_ids):
            lane = town.lanes[lid]
            o0 = start_offset if k == 0 else 0.0
            cl = lane.centerline[lane.s >= o0 - 1e-9] if o0 > 0 else lane.centerline
            if o0 > 0:
                cl = np.concatenate([[_interp(lane.centerline, lane.s, o0)], cl[1:] if len(cl) and
                                     np.allclose(cl[0], _interp(lane.centerline, lane.s, o0)) else cl])
            if pts:
                cl = cl[1:]
            pts.append(cl)
            seg_len = lane.length - o0
            segs.append(Segment(lid, s, s + seg_len, o0))
            s += seg_len
        return cls(np.concatenate(pts), segs)

    @classmethod
    def with_lane_change(cls, town: TownMap, first: list[int], second: list[int], start_offset: float,
                         change_at: float, change_len: float = 30.0) -> "Path":
        """Along ``first`` lanes, then a smooth change over ``change_len`` m (starting ``change_at`` m into
        the path) onto the parallel ``second`` lane sequence (``second[0]`` parallel to ``first[0]``)."""
        a = cls.along(town, first, start_offset)
        b = cls.along(town, second, start_offset)
        s = np.arange(0.0, min(a.length, b.length), 1.0)
        pa = np.stack([np.interp(s, a.s, a.points[:, 0]), np.interp(s, a.s, a.points[:, 1])], axis=1)
        pb = np.stack([np.interp(s, b.s, b.points[:, 0]), np.interp(s, b.s, b.points[:, 1])], axis=1)
        t = np.clip((s - change_at) / change_len, 0.0, 1.0)
        w = (t * t * (3 - 2 * t))[:, None]  # smoothstep
        pts = (1 - w) * pa + w * pb
        mid = change_at + change_len / 2
        segs = [Segment(g.lane_id, g.s0, min(g.s1, mid), g.o0) for g in a.segments if g.s0 < mid]
        segs += [Segment(g.lane_id, max(g.s0, mid), g.s1, g.o0 + max(0.0, mid - g.s0))
                 for g in b.segments if g.s1 > mid]
        path = cls(pts, [g for g in segs if g.s1 > g.s0])
        path.change = (change_at, change_at + change_len, first[0], second[0])
        return path

    def pose_at(self, s):
        """(x, y, heading) at arc length(s) ``s`` (clipped to the path)."""
        s = np.clip(s, 0.0, self.length)
        x = np.interp(s, self.s, self.points[:, 0])
        y = np.interp(s, self.s, self.points[:, 1])
        h = np.interp(s, self.s, self.heading)
        return np.stack([x, y, h], axis=-1)

    def lane_at(self, s: float) -> tuple[int, float]:
        """(lane id, arc length on that lane) at path arc length ``s``."""
        for g in self.segments:
            if s < g.s1 or g is self.segments[-1]:
                return g.lane_id, g.o0 + (s - g.s0)
        raise ValueError("empty path")

    def occupancy(self, s: float) -> list[tuple[int, float]]:
        """Lanes occupied at ``s``: one, or both lanes during a lane change."""
        occ = [self.lane_at(s)]
        if self.change is not None and self.change[0] <= s <= self.change[1]:
            for g in self.segments:
                if g.lane_id in (self.change[2], self.change[3]) and g.lane_id != occ[0][0]:
                    occ.append((g.lane_id, g.o0 + (s - g.s0)))
        return occ

    def lane_start(self, lane_id: int) -> float | None:
        """Path arc length where ``lane_id``'s own arc length is 0 (None if not on the path)."""
        for g in self.segments:
            if g.lane_id == lane_id:
                return g.s0 - g.o0
        return None

    def project(self, xy, s_guess: float, window: float = 10.0) -> float:
        """Arc length of the closest path point to ``xy`` near ``s_guess``."""
        lo, hi = np.searchsorted(self.s, [s_guess - window, s_guess + window])
        lo, hi = max(lo - 1, 0), min(hi + 1, len(self.s) - 1)
        p0, p1 = self.points[lo:hi], self.points[lo + 1:hi + 1]
        d = p1 - p0
        t = np.clip(np.einsum("ij,ij->i", xy - p0, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-9), 0, 1)
        dist = np.linalg.norm(p0 + t[:, None] * d - xy, axis=1)
        k = int(np.argmin(dist))
        return float(self.s[lo + k] + t[k] * (self.s[lo + k + 1] - self.s[lo + k]))

    def roadblock_ids(self, town: TownMap) -> list[str]:
        out = []
        for g in self.segments:
            rb = str(town.lanes[g.lane_id].group_id)
            if not out or out[-1] != rb:
                out.append(rb)
        return out


def _interp(pts, s, o):
    return np.array([np.interp(o, s, pts[:, 0]), np.interp(o, s, pts[:, 1])])


class SignalPlan:
    """Protected phases per signalised intersection: approaches E, N, W, S in turn get green, yellow and
    all-red; ``offsets`` shifts each intersection's cycle."""

    order = ("E", "N", "W", "S")
    phase = GREEN + YELLOW + ALL_RED

    def __init__(self, offsets: dict[int, float]):
        self.offsets = offsets

    def state(self, inter_id: int, approach: str, t: float) -> int:
        """nuPlan status code: 0 green, 1 yellow, 2 red."""
        tc = (t + self.offsets.get(inter_id, 0.0)) % (self.phase * 4)
        k = int(tc // self.phase)
        if self.order[k] != approach:
            return 2
        r = tc - k * self.phase
        return 0 if r < GREEN else (1 if r < GREEN + YELLOW else 2)

    def offset_green(self, approach: str, t: float, green_in: float) -> float:
        """An offset that starts ``approach``'s green ``green_in`` s after time ``t``."""
        k = self.order.index(approach)
        return (k * self.phase - green_in - t) % (self.phase * 4)

    def offset_for(self, approach: str, t: float, red_for: float) -> float:
        """An offset that makes ``approach`` red at time ``t`` with its green starting ``red_for`` s later."""
        k = self.order.index(approach)
        return (k * self.phase - red_for - t) % (self.phase * 4)


@dataclass
class Agent:
    """A traffic participant. Vehicles move along ``path`` (``s`` = box centre arc length);
    pedestrians along ``path`` too (their crossing line)."""

    id: int
    kind: str  # vehicle | pedestrian | traffic_cone | barrier | generic_object
    length: float
    width: float
    height: float
    path: Path | None = None
    s: float = 0.0
    v: float = 0.0
    a: float = 0.0
    v0: float = 10.0
    static_pose: np.ndarray | None = None
    ego_pose: np.ndarray | None = None  # the expert's box pose (it does not sit exactly on its path)
    done: bool = False
    waiting_since: float | None = None
    crosswalk: int | None = None
    walking: bool = False
    is_ego: bool = False
    crossings: list = field(default_factory=list)  # (crosswalk id, s_in, s_out) on the path
    connector_spans: list = field(default_factory=list)  # (intersection id, approach, s0, s1)
    _pose_s: float | None = None
    _pose: np.ndarray | None = None

    def pose(self) -> np.ndarray:
        if self.static_pose is not None:
            return self.static_pose
        if self.ego_pose is not None:
            return self.ego_pose
        if self._pose_s != self.s:  # memo: poses are read many times per step
            self._pose = self.path.pose_at(self.s)
            self._pose_s = self.s
        return self._pose

    def front(self) -> float:
        return self.s + self.length / 2

    def rear(self) -> float:
        return self.s - self.length / 2


class Crossing(NamedTuple):
    """Where a vehicle's path crosses a crosswalk: its path span [s_in, s_out] (crosswalk buffered by 1.2 m)
    and the span [u_lo, u_hi] of the crossing line (metres from the crosswalk's first end) that the vehicle's
    box covers on the way."""

    crosswalk: int
    s_in: float
    s_out: float
    u_lo: float
    u_hi: float


def annotate_path(agent: Agent, town: TownMap) -> None:
    """Pre-compute the crosswalk and intersection spans of a vehicle's path."""
    path = agent.path
    line = shapely.LineString(path.points)
    swept = None
    agent.crossings = []
    for cw in town.crosswalks.values():
        zone = cw.polygon.buffer(1.2)
        if not line.intersects(zone):
            continue
        inter = line.intersection(zone)
        pts = [p for g in getattr(inter, "geoms", [inter]) for p in np.asarray(g.coords)]
        proj = [line.project(shapely.Point(p)) for p in pts]
        if swept is None:
            swept = line.buffer(agent.width / 2)
        walk = shapely.LineString(cw.ends)
        covered = walk.intersection(swept)
        u = [walk.project(shapely.Point(p)) for g in getattr(covered, "geoms", [covered]) for p in np.asarray(g.coords)]
        u_lo, u_hi = (min(u), max(u)) if u else (0.0, walk.length)
        agent.crossings.append(Crossing(cw.id, min(proj), max(proj), u_lo, u_hi))
    agent.connector_spans = []
    for g in path.segments:
        lane = town.lanes[g.lane_id]
        if lane.is_connector:
            agent.connector_spans.append((lane.intersection_id, lane.approach, g.s0, g.s1))


class Traffic:
    """World state of the town: vehicles, pedestrians, static objects, lights; ``step()`` advances by DT."""

    def __init__(self, town: TownMap, rng: np.random.Generator, *, signal_offsets: dict | None = None,
                 spawn_rate: float = 0.05, ped_rate: float = 0.002, max_vehicles: int = 40):
        self.town = town
        self.rng = rng
        self.t = 0.0
        self.agents: dict[int, Agent] = {}
        self.next_id = 1
        self.signals = SignalPlan(signal_offsets if signal_offsets is not None else {
            i: float(rng.uniform(0, SignalPlan.phase * 4)) for i in sorted(town.intersections)})
        self.spawn_rate = spawn_rate
        self.ped_rate = ped_rate
        self.max_vehicles = max_vehicles
        self.owner: dict[int, str | None] = {i: None for i in town.intersections}
        self.owner_since: dict[int, float] = {i: 0.0 for i in town.intersections}
        self.expert: Expert | None = None
        self._occ = None
        self._walking = None

    # ---- population ------------------------------------------------------------------------------
    def random_route(self, lane_id: int, min_length: float = 400.0) -> list[int]:
        """Lane ids from ``lane_id`` choosing a legal turn at each intersection until the map border."""
        route = [lane_id]
        total = self.town.lanes[lane_id].length
        while True:
            succ = self.town.lanes[route[-1]].successors
            if not succ:
                return route
            weights = np.array([{"straight": 3.0, "left": 1.0, "right": 1.0}[self.town.lanes[c].turn]
                                for c in succ])
            conn = succ[int(self.rng.choice(len(succ), p=weights / weights.sum()))]
            route += [conn, self.town.lanes[conn].successors[0]]
            total += self.town.lanes[conn].length + self.town.lanes[route[-1]].length
            if total > 3 * min_length:
                return route

    def add_vehicle(self, path: Path, s: float, v: float, *, dims=None, v0_scale=None) -> Agent:
        length, width, height = dims if dims is not None else (
            float(self.rng.uniform(4.2, 5.2)), float(self.rng.uniform(1.8, 2.1)), float(self.rng.uniform(1.4, 1.9)))
        lane_id, _ = path.lane_at(s)
        scale = v0_scale if v0_scale is not None else float(self.rng.uniform(0.85, 1.05))
        agent = Agent(self.next_id, "vehicle", length, width, height, path=path, s=s, v=v,
                      v0=self.town.lanes[lane_id].speed_limit * scale)
        annotate_path(agent, self.town)
        self.agents[agent.id] = agent
        self.next_id += 1
        return agent

    def add_static(self, kind: str, pose, dims) -> Agent:
        agent = Agent(self.next_id, kind, *dims, static_pose=np.asarray(pose, dtype=np.float64))
        self.agents[agent.id] = agent
        self.next_id += 1
        return agent

    def add_pedestrian(self, crosswalk_id: int, reverse: bool) -> Agent:
        cw = self.town.crosswalks[crosswalk_id]
        ends = cw.ends[::-1] if reverse else cw.ends
        path = Path(np.asarray(ends, dtype=np.float64), [])
        agent = Agent(self.next_id, "pedestrian", 0.7, 0.7, 1.75, path=path, s=0.0, v=0.0,
                      v0=float(self.rng.uniform(*PED_SPEED)), crosswalk=crosswalk_id)
        self.agents[agent.id] = agent
        self.next_id += 1
        return agent

    def populate(self, density: float = 0.5) -> None:
        """Place vehicles along the lanes at t = 0 (so that a short warm-up suffices)."""
        for lane_id in sorted(self.town.lanes):
            lane = self.town.lanes[lane_id]
            if lane.is_connector:
                continue
            for o in np.arange(10.0, lane.length - 20.0, 35.0):
                if self.rng.random() < density:
                    route = self.random_route(lane_id)
                    self.add_vehicle(Path.along(self.town, route, 0.0), float(o + self.rng.uniform(-3, 3)),
                                     float(self.rng.uniform(4.0, 8.0)))

    def vehicles(self) -> list[Agent]:
        return [a for a in self.agents.values() if a.kind == "vehicle" and not a.done and a.static_pose is None]

    def _lane_index(self) -> dict[int, list[tuple[Agent, float]]]:
        """lane id -> [(agent, its centre's arc length on that lane)] for every moving vehicle and the ego."""
        idx: dict[int, list] = {}
        for a in self.vehicles():
            for lane_id, o in a.path.occupancy(a.s):
                idx.setdefault(lane_id, []).append((a, o))
        return idx

    def spawn(self) -> None:
        """Spawn vehicles at free entry lanes and pedestrians at crosswalks (Bernoulli per step)."""
        idx = self._lane_index()
        n_veh = len(self.vehicles())
        for lane_id in self.town.entry_lanes:
            if n_veh >= self.max_vehicles or self.rng.random() > self.spawn_rate * DT * 10:
                continue
            if any(o < 30.0 for _, o in idx.get(lane_id, [])):
                continue
            route = self.random_route(lane_id)
            self.add_vehicle(Path.along(self.town, route), 3.0, float(self.rng.uniform(6.0, 9.0)))
            n_veh += 1
        for cw_id in sorted(self.town.crosswalks):
            if self.rng.random() > self.ped_rate * DT * 10:
                continue
            if any(a.crosswalk == cw_id for a in self.agents.values() if a.kind == "pedestrian" and not a.done):
                continue
            reverse = bool(self.rng.random() < 0.5)
            start = self.town.crosswalks[cw_id].ends[1 if reverse else 0]
            if any(np.hypot(*(a.pose()[:2] - start)) < 2.0 for a in self.agents.values() if a.kind == "pedestrian"):
                continue
            self.add_pedestrian(cw_id, reverse)

    # ---- rules -----------------------------------------------------------------------------------
    def occupants(self, inter_id: int) -> set[str]:
        """Approaches of vehicles whose footprint span overlaps a connector of ``inter_id`` (cached per step)."""
        if self._occ is None:
            occ = {i: set() for i in self.town.intersections}
            for a in self.vehicles():
                for iid, appr, s0, s1 in a.connector_spans:
                    if a.rear() < s1 and a.front() > s0 - 0.5:
                        occ[iid].add(appr)
            self._occ = occ
        return self._occ[inter_id]

    def committed(self, a: Agent, s_stop: float) -> bool:
        """True if ``a`` cannot stop comfortably before ``s_stop`` (or is past it)."""
        return s_stop - a.front() < a.v * a.v / (2 * PDM_CLOSED.decel_max) + 0.5

    def may_enter(self, a: Agent, inter_id: int, approach: str, s_stop: float) -> bool:
        inter = self.town.intersections[inter_id]
        occ = self.occupants(inter_id) - {approach}
        if occ:
            return False
        if inter.signalised:
            state = self.signals.state(inter_id, approach, self.t)
            return state == 0 or (state == 1 and self.committed(a, s_stop))
        return self.owner[inter_id] in (None, approach)

    def update_owners(self) -> None:
        """Unsignalised intersections: the right of way belongs to one approach at a time, first come first
        served, handed over after 6 s when others wait."""
        for iid, inter in self.town.intersections.items():
            if inter.signalised:
                continue
            occ = self.occupants(iid)
            waiting = []
            for a in self.vehicles():
                for jid, appr, s0, _ in a.connector_spans:
                    if jid == iid and a.front() <= s0 - 0.5 and s0 - a.front() < 25.0:
                        since = a.waiting_since if a.waiting_since is not None else self.t
                        waiting.append((since, appr, a, s0))
            cur = self.owner[iid]
            if cur is not None and occ - {cur}:
                # the owner's 6 s start when the others have left the intersection: it cannot go before
                self.owner_since[iid] = self.t
            if cur is None and occ:
                self.owner[iid] = sorted(occ)[0]
                self.owner_since[iid] = self.t
                continue
            # keep the owner while one of its vehicles cannot stop any more
            if cur is not None and any(appr == cur and self.committed(a, s0 - 0.5) for _, appr, a, s0 in waiting):
                continue
            if not waiting:
                if not occ:
                    self.owner[iid] = None
                continue
            others = [w for w in waiting if w[1] != cur]
            mine = [w for w in waiting if w[1] == cur]
            # hand over to the longest-waiting other approach after 6 s (its vehicles still wait for the
            # intersection to clear: ``may_enter`` checks the occupants)
            if cur is None or (others and (not mine or self.t - self.owner_since[iid] > 6.0)):
                pool = others if others else waiting
                pool.sort(key=lambda w: (w[0], w[1], w[2].id))
                self.owner[iid] = pool[0][1]
                self.owner_since[iid] = self.t

    def stop_gap(self, a: Agent) -> float:
        """Distance from ``a``'s front bumper to the nearest point it must stop at (inf if none)."""
        best = math.inf
        for iid, appr, s0, _ in a.connector_spans:
            s_stop = s0 - 0.5
            if a.front() > s_stop or s_stop - a.front() > 80.0:
                continue
            if not self.may_enter(a, iid, appr, s_stop):
                best = min(best, s_stop - a.front())
                break
        if self._walking is None:
            self._walking = {}
            for p in self.agents.values():
                if p.kind == "pedestrian" and p.walking and not p.done:
                    self._walking.setdefault(p.crosswalk, []).append(p)
        for crossing in a.crossings:
            if (crossing.crosswalk in self._walking and a.front() <= crossing.s_in
                    and crossing.s_in - a.front() < 60.0 and self.pedestrian_conflict(a, crossing)):
                best = min(best, crossing.s_in - a.front())
        return best

    def pedestrian_conflict(self, a: Agent, crossing: Crossing) -> bool:
        """True if a walking pedestrian on ``crossing`` is in ``a``'s way: inside the span of the crossing line
        that ``a`` covers (plus PED_CLEARANCE), or heading into it before ``a`` could be across (plus
        PED_TIME_MARGIN). Pedestrians past that span, or walking away from it, no longer hold ``a`` up."""
        ends = np.asarray(self.town.crosswalks[crossing.crosswalk].ends, dtype=np.float64)
        axis = ends[1] - ends[0]
        axis /= np.linalg.norm(axis)
        t_clear = None
        for p in self._walking[crossing.crosswalk]:
            u = float(np.dot(p.pose()[:2] - ends[0], axis))
            forward = float(np.dot(p.path.points[-1] - p.path.points[0], axis)) > 0
            margin = PED_CLEARANCE + p.width / 2
            lo, hi = crossing.u_lo - margin, crossing.u_hi + margin
            to_band = lo - u if forward else u - hi
            if (u > hi if forward else u < lo):
                continue  # past the vehicle's span
            if to_band <= 0:
                return True
            if t_clear is None:
                t_clear = self.time_to_reach(a, crossing.s_out + a.length)
            if t_clear + PED_TIME_MARGIN > to_band / max(p.v0, 0.1):
                return True
        return False

    def time_to_reach(self, a: Agent, s: float) -> float:
        """Seconds until ``a``'s front reaches path arc length ``s``, accelerating at PDM-Closed's accel_max up to the
        speed its curves and speed limits allow on the way."""
        d = max(0.0, s - a.front())
        k0, k1 = np.searchsorted(a.path.s, [a.rear(), s])
        v_cap = min(math.sqrt(float(np.min(a.path.curve_speed_sq[k0:k1 + 1], initial=np.inf))), a.v0)
        v_cap = max(v_cap, a.v, 0.1)
        t_acc = (v_cap - a.v) / PDM_CLOSED.accel_max
        d_acc = (a.v + v_cap) / 2 * t_acc
        return t_acc + (d - d_acc) / v_cap if d > d_acc else (math.sqrt(a.v * a.v + 2 * PDM_CLOSED.accel_max * d) - a.v) / PDM_CLOSED.accel_max

    def leader(self, a: Agent, idx) -> tuple[float, float]:
        """(bumper gap, lead speed) to the closest vehicle ahead on ``a``'s path (inf if none)."""
        best, v_lead = math.inf, 0.0
        for g in a.path.segments:
            if g.s1 < a.s - 1.0 or g.s0 > a.s + 80.0:
                continue
            base = g.s0 - g.o0
            cands = list(idx.get(g.lane_id, []))
            lane = self.town.lanes[g.lane_id]
            # vehicles that just left this lane's predecessor on a sibling connector still overlap it
            for pred in lane.predecessors if lane.is_connector else []:
                for sib in self.town.lanes[pred].successors:
                    if sib != g.lane_id:
                        cands += [(b, o) for b, o in idx.get(sib, []) if o < 20.0]
            for b, o in cands:
                if b is a:
                    continue
                gap = base + o - a.s - (a.length + b.length) / 2
                if base + o > a.s and gap < best:
                    best, v_lead = gap, b.v
        # static objects on the path (cones, parked vehicles)
        for b in self.agents.values():
            if b.static_pose is None or b.kind == "pedestrian":
                continue
            if np.hypot(*(b.static_pose[:2] - a.pose()[:2])) > 90.0:
                continue
            s_b = a.path.project(b.static_pose[:2][None], a.s + 20.0, window=60.0)
            p = a.path.pose_at(s_b)
            lat = np.linalg.norm(p[:2] - b.static_pose[:2])
            if s_b > a.s and lat < (a.width + b.width) / 2 + 0.3:
                gap = s_b - a.s - (a.length + b.length) / 2
                if gap < best:
                    best, v_lead = gap, 0.0
        return best, v_lead

    def desired_speed(self, a: Agent) -> float:
        """``a``'s desired speed: its own, lowered ahead of slower lanes and of curves so that it can slow down
        at ANTICIPATION_DECEL."""
        v0 = a.v0
        for g in a.path.segments:
            if g.s1 < a.s or g.s0 > a.s + 40.0:
                continue
            lane = self.town.lanes[g.lane_id]
            lim = lane.speed_limit * (a.v0 / max(self.town.lanes[a.path.lane_at(a.s)[0]].speed_limit, 0.1))
            d = max(0.0, g.s0 - a.front())
            v0 = min(v0, math.sqrt(lim * lim + 2 * ANTICIPATION_DECEL * d))
        k0, k1 = np.searchsorted(a.path.s, [a.rear(), a.front() + CURVE_LOOKAHEAD])
        if k1 > k0:
            ahead = np.maximum(a.path.s[k0:k1] - a.front(), 0.0)
            v0 = min(v0, math.sqrt(float(np.min(a.path.curve_speed_sq[k0:k1] + 2 * ANTICIPATION_DECEL * ahead))))
        return v0

    def vehicle_accel(self, a: Agent, idx) -> float:
        gap, v_lead = self.leader(a, idx)
        stop = self.stop_gap(a)
        if stop < gap:
            gap, v_lead = stop, 0.0
        return idm_acceleration(a.v, self.desired_speed(a), gap, v_lead, PDM_CLOSED, max_brake=MAX_BRAKE)

    def pedestrians_step(self) -> None:
        for p in self.agents.values():
            if p.kind != "pedestrian" or p.done:
                continue
            if not p.walking:
                if self.crosswalk_clear(p.crosswalk):
                    p.walking = True
                else:
                    continue
            p.v = p.v0
            p.s += p.v * DT
            if p.s >= p.path.length:
                p.done = True

    def crosswalk_clear(self, cw_id: int) -> bool:
        """A pedestrian may start: no vehicle on the crosswalk, none about to reach it at speed."""
        cw = self.town.crosswalks[cw_id]
        zone = cw.polygon.buffer(1.5)
        center = np.asarray(cw.ends).mean(axis=0)
        for a in self.vehicles():
            for cid, s_in, s_out, _, _ in a.crossings:
                if cid != cw_id:
                    continue
                dist = s_in - a.front()
                if a.rear() < s_out and dist < a.v * a.v / (2 * 2.0) + 8.0 and (a.v > 1.0 or dist < 0):
                    return False
            # vehicles not crossing it may still touch its buffered zone (crosswalk half length + a car)
            if np.hypot(*(a.pose()[:2] - center)) < 14.0 and shapely.intersects(zone, footprint(a)):
                return False
        return True

    # ---- stepping --------------------------------------------------------------------------------
    def step(self) -> None:
        """Advance lights, owners, pedestrians, vehicles and the expert by DT; spawn new agents."""
        self._occ = self._walking = None
        self.update_owners()
        idx = self._lane_index()
        moves = {}
        for a in self.vehicles():
            if a.is_ego:
                continue
            moves[a.id] = self.vehicle_accel(a, idx)
        if self.expert is not None:
            self.expert.control(self, idx)
        for aid, acc in moves.items():
            a = self.agents[aid]
            a.a = acc
            v_new = max(0.0, a.v + acc * DT)
            a.s += 0.5 * (a.v + v_new) * DT
            a.v = v_new
            if a.v < 0.3:
                a.waiting_since = a.waiting_since if a.waiting_since is not None else self.t
            else:
                a.waiting_since = None
            if a.s > a.path.length - a.length / 2:
                a.done = True
        if self.expert is not None:
            self.expert.advance(self)
        self._occ = None
        self.pedestrians_step()
        self.spawn()
        self.t += DT
        for aid in [k for k, a in self.agents.items() if a.done]:
            del self.agents[aid]


def footprint(a: Agent, pose=None):
    """Shapely rectangle of an agent's footprint (box centred at its pose)."""
    x, y, h = a.pose() if pose is None else pose
    c, s = math.cos(h), math.sin(h)
    hl, hw = a.length / 2, a.width / 2
    corners = [(x + c * dx - s * dy, y + s * dx + c * dy) for dx, dy in ((hl, hw), (hl, -hw), (-hl, -hw), (-hl, hw))]
    return shapely.Polygon(corners)


def footprints(agents: list[Agent]) -> np.ndarray:
    """Shapely footprints of many agents at once (vectorised ``footprint``)."""
    if not agents:
        return np.zeros(0, dtype=object)
    pose = np.array([a.pose() for a in agents])
    dims = np.array([[a.length / 2, a.width / 2] for a in agents])
    sx = np.array([1.0, 1.0, -1.0, -1.0])
    sy = np.array([1.0, -1.0, -1.0, 1.0])
    dx, dy = dims[:, :1] * sx, dims[:, 1:] * sy
    c, s = np.cos(pose[:, 2:3]), np.sin(pose[:, 2:3])
    corners = np.stack([pose[:, :1] + c * dx - s * dy, pose[:, 1:2] + s * dx + c * dy], axis=-1)
    return shapely.polygons(corners)


class Expert:
    """The ego driver: IDM speed with the traffic rules above; steering of a kinematic bicycle (rear axle state x,
    y, heading, v) that follows the path's curvature and corrects lateral and heading errors critically damped
    over TRACKING_LENGTH of travel (pure pursuit cuts the town's tight corners by metres and overshoots the
    exit). ``agent`` is its vehicle in the traffic (box centre on the path)."""

    center_offset = (PACIFICA.front_length - PACIFICA.rear_length) / 2  # rear axle -> box centre

    def __init__(self, traffic: Traffic, path: Path, s_rear: float, v: float):
        self.path = path
        x, y, h = path.pose_at(s_rear)
        self.state = np.array([x, y, h, v])
        self.s_rear = s_rear
        self.accel = 0.0
        self.yaw_rate = 0.0
        self.steer = 0.0
        agent = Agent(traffic.next_id, "vehicle", PACIFICA.length, PACIFICA.width, PACIFICA.height, path=path,
                      s=s_rear + self.center_offset, v=v, v0=traffic.town.lanes[path.lane_at(s_rear)[0]].speed_limit,
                      is_ego=True)
        annotate_path(agent, traffic.town)
        traffic.next_id += 1
        traffic.agents[agent.id] = agent
        traffic.expert = self
        self.agent = agent
        agent.ego_pose = self.box_pose()

    def control(self, traffic: Traffic, idx) -> None:
        a = self.agent
        a.v0 = traffic.town.lanes[self.path.lane_at(self.s_rear)[0]].speed_limit
        self.accel = traffic.vehicle_accel(a, idx)
        x, y, h, v = self.state
        px, py, ph = self.path.pose_at(self.s_rear)
        lateral = -math.sin(ph) * (x - px) + math.cos(ph) * (y - py)
        heading = math.remainder(h - ph, math.tau)
        curvature = float(np.interp(self.s_rear + 0.5 * v * DT, self.path.s, self.path.curvature))
        # e'' + 2 e' / L + e / L^2 = 0 in travelled distance for the lateral error e
        curvature -= lateral / TRACKING_LENGTH**2 + 2.0 * heading / TRACKING_LENGTH
        self.steer = math.atan(PACIFICA.wheel_base * curvature)

    def advance(self, traffic: Traffic) -> None:
        x, y, h, v = self.state
        v_new = max(0.0, v + self.accel * DT)
        v_mid = 0.5 * (v + v_new)
        self.yaw_rate = v_mid * math.tan(self.steer) / PACIFICA.wheel_base
        h_mid = h + 0.5 * self.yaw_rate * DT
        x += v_mid * math.cos(h_mid) * DT
        y += v_mid * math.sin(h_mid) * DT
        h += self.yaw_rate * DT
        self.state = np.array([x, y, h, v_new])
        self.s_rear = self.path.project(np.array([[x, y]]), self.s_rear + v_mid * DT)
        a = self.agent
        a.s = self.s_rear + self.center_offset
        a.v = v_new
        a.a = self.accel
        a.ego_pose = self.box_pose()

    def box_pose(self) -> np.ndarray:
        """Box centre pose of the ego footprint."""
        x, y, h, _ = self.state
        return np.array([x + self.center_offset * math.cos(h), y + self.center_offset * math.sin(h), h])


__all__ = ["DT", "Agent", "Crossing", "Expert", "Path", "Segment", "SignalPlan", "Traffic", "annotate_path", "footprint",
           "LANE_WIDTH"]
