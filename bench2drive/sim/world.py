"""Road geometry, actors and the synthetic route set of the embedded closed-loop simulator.

Everything is in CARLA's world frame (x, y metres, yaw from +x towards +y), so the route XML, the GNSS
conversion and the agent are the same as in CARLA. Lateral offsets ``d`` are positive to the right of the route,
as CARLA's +y is to the right of +x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench2drive.routes import Route, Scenario

LANE_WIDTH = 3.5  # m
ROUTE_RESOLUTION = 1.0  # m, the leaderboard interpolates routes with GlobalRoutePlanner(map, 1.0)
# CARLA vehicle.lincoln.mkz_2020 (Bench2Drive's ego): bounding-box extent and wheelbase
EGO_LENGTH, EGO_WIDTH, EGO_WHEELBASE = 4.89, 2.12, 2.875
CAR_LENGTH, CAR_WIDTH = 4.6, 2.0
WALKER_SIZE = 0.6
SYNTHETIC_TOWN = "Synthetic01"
WEATHER = {"cloudiness": "5.0", "fog_density": "0.0", "precipitation": "0.0", "precipitation_deposits": "0.0",
           "sun_altitude_angle": "60.0", "sun_azimuth_angle": "0.0", "wetness": "0.0", "wind_intensity": "10.0"}


class RoadPath:
    """A polyline resampled at 1 m with arc length, heading and Frenet projection (vectorised)."""

    def __init__(self, points_xy: np.ndarray, *, resolution: float = ROUTE_RESOLUTION):
        pts = np.asarray(points_xy, dtype=np.float64)[:, :2]
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        keep = np.concatenate([[True], seg > 1e-6])
        pts = pts[keep]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        n = max(2, int(math.floor(s[-1] / resolution)) + 1)
        si = np.linspace(0.0, s[-1], n)
        self.xy = np.stack([np.interp(si, s, pts[:, 0]), np.interp(si, s, pts[:, 1])], axis=1)
        self.s = si
        d = np.diff(self.xy, axis=0)
        yaw = np.arctan2(d[:, 1], d[:, 0])
        self.yaw = np.concatenate([yaw, yaw[-1:]])
        self.length = float(si[-1])

    def frenet(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points [N,2] -> (s [N], d [N] positive right, index of the nearest segment start [N])."""
        p = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        a, b = self.xy[:-1], self.xy[1:]
        ab = b - a
        t = np.clip(np.einsum("nkj,kj->nk", p[:, None] - a[None], ab) / np.einsum("kj,kj->k", ab, ab), 0, 1)
        proj = a[None] + t[..., None] * ab[None]
        dist = np.linalg.norm(p[:, None] - proj, axis=-1)
        k = np.argmin(dist, axis=1)
        rows = np.arange(len(p))
        s = self.s[k] + t[rows, k] * np.linalg.norm(ab[k], axis=1)
        rel = p - a[k]
        cross = ab[k, 0] * rel[:, 1] - ab[k, 1] * rel[:, 0]  # > 0 to the right in CARLA's frame
        return s, np.sign(cross) * dist[rows, k], k

    def pose(self, s: np.ndarray, d: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Arc length (and lateral offset, right positive) -> (xy [N,2], yaw [N])."""
        s = np.clip(np.atleast_1d(np.asarray(s, dtype=np.float64)), 0, self.length)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        yaw = np.interp(s, self.s, np.unwrap(self.yaw))
        d = np.broadcast_to(np.asarray(d, dtype=np.float64), s.shape)
        return np.stack([x - np.sin(yaw) * d, y + np.cos(yaw) * d], axis=1), yaw


@dataclass
class Actor:
    """A non-ego actor. ``kind``: vehicle | walker | static; ``behaviour`` drives it (see sim.traffic)."""

    id: int
    kind: str
    xy: np.ndarray
    yaw: float
    speed: float = 0.0
    length: float = CAR_LENGTH
    width: float = CAR_WIDTH
    role: str = "scenario"  # 'background' actors feed the min-speed criterion
    behaviour: str = "static"
    params: dict = field(default_factory=dict)

    @property
    def type_id(self) -> str:
        return {"vehicle": "vehicle.lincoln.mkz_2020", "walker": "walker.pedestrian.0001",
                "static": "static.prop.constructioncone"}[self.kind]


@dataclass
class TrafficLight:
    id: int
    s: float  # stop line along the route
    red_until: float  # s of game time; green afterwards
    red_from: float = 0.0

    def is_red(self, t: float) -> bool:
        return self.red_from <= t < self.red_until


@dataclass
class StopSign:
    id: int
    s: float


@dataclass
class SimScenario:
    """What the simulator builds from a route: actors, lights, stop signs, junction span, lane-test exemptions."""

    actors: list[Actor]
    lights: list[TrafficLight]
    stops: list[StopSign]
    junction: tuple[float, float] | None
    outside_lane_exempt: list[tuple[float, float]]
    speed_limit_kmh: float = 50.0
    # YieldToEmergencyVehicle: the emergency vehicle's id and the route position where its scenario ends
    yield_ev: int | None = None
    yield_end_s: float | None = None


# ------------------------------------------------------------------------------------------ synthetic routes
# Scenario types the embedded simulator can build, by Bench2Drive ability (tools/ability_benchmark.py).
SUPPORTED = {
    "ParkedObstacle": "Overtaking",
    "Accident": "Overtaking",
    "InterurbanActorFlow": "Merging",
    "HardBreakRoute": "Emergency_Brake",
    "PedestrianCrossing": "Emergency_Brake",
    "DynamicObjectCrossing": "Emergency_Brake",
    "InvadingTurn": "Give_Way",
    "YieldToEmergencyVehicle": "Give_Way",
    "VanillaSignalizedTurnEncounterRedLight": "Traffic_Signs",
    "VanillaNonSignalizedTurnEncounterStopsign": "Traffic_Signs",
}
JUNCTION_S = (60.0, 72.0)  # junction span along a synthetic route with a junction


def _route_points(kind: str, length: float) -> np.ndarray:
    """Route polyline starting at the origin heading +x; 'turn' goes right (+y) after the junction."""
    if kind == "straight":
        xs = np.arange(0.0, length + 1e-9, 2.0)
        return np.stack([xs, np.zeros_like(xs)], axis=1)
    a = np.stack([np.arange(0.0, JUNCTION_S[0], 2.0), np.zeros(int(JUNCTION_S[0] / 2))], axis=1)
    r = (JUNCTION_S[1] - JUNCTION_S[0]) * 2 / math.pi  # quarter circle of arc length 12 m
    th = np.linspace(0, math.pi / 2, 8)[1:]
    b = np.stack([JUNCTION_S[0] + r * np.sin(th), r * (1 - np.cos(th))], axis=1)
    ys = np.arange(r + 2.0, r + length - JUNCTION_S[1], 2.0)
    c = np.stack([np.full_like(ys, JUNCTION_S[0] + r), ys], axis=1)
    return np.concatenate([a, b, c])


def synthetic_routes(scenario_types: list[str] | None = None, *, length: float = 120.0) -> list[Route]:
    """One Synthetic01 route per supported scenario type (covering the five abilities), ids 1, 2, ..."""
    types = scenario_types or list(SUPPORTED)
    bad = [t for t in types if t not in SUPPORTED]
    if bad:
        raise ValueError(f"the embedded simulator cannot build scenario type(s) {bad}; it builds {list(SUPPORTED)}")
    routes = []
    for i, t in enumerate(types, start=1):
        kind = "turn" if SUPPORTED[t] == "Traffic_Signs" else "straight"
        pts = _route_points(kind, length)
        wps = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
        trig = (float(pts[5, 0]), float(pts[5, 1]), 0.0, 0.0)
        routes.append(Route(id=str(i), town=SYNTHETIC_TOWN, waypoints=wps,
                            scenarios=[Scenario(name=f"{t}_1", type=t, trigger=trig)],
                            weathers=[{**WEATHER, "route_percentage": "0"}, {**WEATHER, "route_percentage": "100"}]))
    return routes


def junction_span(route: Route) -> tuple[float, float] | None:
    """Junction span (s0, s1) along a synthetic route, None when it has none.

    Routes of the scenario types that tools/ability_benchmark.py counts for Traffic_Signs cross a junction (it
    needs one for the partial credit): turning ones for the sign scenarios, straight through for the others.
    """
    from bench2drive.metrics import ABILITIES

    return JUNCTION_S if route.scenario_type in ABILITIES["Traffic_Signs"] else None


def synthetic_junction_completion(route: Route) -> float:
    """ability_benchmark.py's (first junction index + 1 + 8) / len on the 1 m route of a synthetic route."""
    from bench2drive.metrics import junction_completion_from_flags

    path = RoadPath(route.waypoints)
    span = junction_span(route)
    if span is None:
        raise ValueError(f"route {route.id} has no junction")
    return junction_completion_from_flags((path.s >= span[0]) & (path.s <= span[1]))


def build_scenario(route: Route, path: RoadPath, *, seed: int = 0) -> SimScenario:
    """Actors and signals for the route's scenario type, plus two background vehicles in the left lane."""
    t = route.scenario_type
    if t not in SUPPORTED:
        raise ValueError(f"route {route.id}: the embedded simulator cannot build scenario type '{t}'; "
                         f"it builds {list(SUPPORTED)}")
    rng = np.random.default_rng(seed)
    actors: list[Actor] = []
    lights: list[TrafficLight] = []
    stops: list[StopSign] = []
    exempt: list[tuple[float, float]] = []

    def on_path(s, d=0.0):
        xy, yaw = path.pose(s, d)
        return xy[0], float(yaw[0])

    next_id = iter(range(100, 10000))
    for s0 in (25.0, 55.0):  # background traffic ahead in the left (same-direction) lane
        xy, yaw = on_path(s0 + rng.uniform(-3, 3), -LANE_WIDTH)
        actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw, speed=7.0, role="background",
                            behaviour="lane", params={"d": -LANE_WIDTH, "v_des": 7.0}))
    if t == "ParkedObstacle":
        # the background lane is the passing lane here: keep it clear around the obstacle
        actors = []
        xy, yaw = on_path(70.0)
        actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw, behaviour="static"))
        xy, yaw = on_path(64.0)  # a warning cone behind it (a static prop: COLLISION_STATIC if hit)
        actors.append(Actor(id=next(next_id), kind="static", xy=xy, yaw=yaw, length=0.4, width=0.4,
                            behaviour="static"))
        exempt.append((45.0, 95.0))  # the leaderboard switches the lane test off while passing (blackboard)
    elif t == "Accident":
        # two crashed cars in the lane with a cone before them; passing is allowed (lane test switched off)
        actors = []
        for s_car, d_car, yaw_off in ((66.0, 0.3, 0.4), (72.0, -0.2, -0.2)):
            xy, yaw = on_path(s_car, d_car)
            actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw + yaw_off, behaviour="static"))
        xy, yaw = on_path(60.0)
        actors.append(Actor(id=next(next_id), kind="static", xy=xy, yaw=yaw, length=0.4, width=0.4,
                            behaviour="static"))
        exempt.append((40.0, 95.0))
    elif t == "DynamicObjectCrossing":
        # a pedestrian steps out from behind a parked car on the right when the ego is 18 m away
        xy, yaw = on_path(58.0, LANE_WIDTH)
        actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw, behaviour="static"))
        cxy, cyaw = on_path(62.0)
        xy = cxy + 3.5 * np.array([-math.sin(cyaw), math.cos(cyaw)])
        actors.append(Actor(id=next(next_id), kind="walker", xy=xy, yaw=cyaw - math.pi / 2, length=WALKER_SIZE,
                            width=WALKER_SIZE, behaviour="walker",
                            params={"v_des": 2.0, "trigger_s": 62.0 - 18.0, "walk": 7.0 / 2.0}))
    elif t == "InterurbanActorFlow":
        sj = 70.0
        cxy, cyaw = on_path(sj)
        for k in range(3):  # flow crossing the route from right to left, 25 m apart
            d0 = 18.0 + 25.0 * k
            xy = cxy + d0 * np.array([-math.sin(cyaw), math.cos(cyaw)])
            actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=cyaw - math.pi / 2, speed=8.0,
                                behaviour="straight", params={"v_des": 8.0}))
    elif t == "HardBreakRoute":
        xy, yaw = on_path(22.0)
        actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw, speed=6.0, behaviour="hard_brake",
                            params={"d": 0.0, "v_des": 6.0, "brake_at_s": 55.0, "hold": 6.0}))
    elif t == "PedestrianCrossing":
        cxy, cyaw = on_path(60.0)
        xy = cxy + 6.0 * np.array([-math.sin(cyaw), math.cos(cyaw)])
        actors.append(Actor(id=next(next_id), kind="walker", xy=xy, yaw=cyaw - math.pi / 2, length=WALKER_SIZE,
                            width=WALKER_SIZE, behaviour="walker", params={"v_des": 1.4, "start": 3.0,
                                                                            "walk": 12.0 / 1.4}))
    elif t == "InvadingTurn":
        for s0 in (70.0, 95.0):  # oncoming cars cutting 1 m into the ego lane
            xy, yaw = on_path(s0, -LANE_WIDTH + 1.0)
            actors.append(Actor(id=next(next_id), kind="vehicle", xy=xy, yaw=yaw + math.pi, speed=6.0,
                                behaviour="oncoming", params={"d": -LANE_WIDTH + 1.0, "v_des": 6.0}))
    elif t == "YieldToEmergencyVehicle":
        # an ambulance comes up from behind in the ego lane once the ego passes 25 m; the left lane is free
        actors = []
        ev_id = next(next_id)
        actors.append(Actor(id=ev_id, kind="vehicle", xy=np.array([1e5, 1e5]), yaw=0.0, behaviour="emergency",
                            params={"d": 0.0, "v_des": 14.0, "trigger_s": 25.0, "gap": 22.0}))
        sc = SimScenario(actors=actors, lights=[], stops=[], junction=None, outside_lane_exempt=[],
                         yield_ev=ev_id, yield_end_s=95.0)
        return sc
    elif t == "VanillaSignalizedTurnEncounterRedLight":
        lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_until=12.0))
    elif t == "VanillaNonSignalizedTurnEncounterStopsign":
        stops.append(StopSign(id=1, s=JUNCTION_S[0] - 2.0))
    if SUPPORTED[t] == "Traffic_Signs":
        actors = [a for a in actors if a.role != "background"]  # the left lane ends at the junction
    return SimScenario(actors=actors, lights=lights, stops=stops, junction=junction_span(route),
                       outside_lane_exempt=exempt)
