"""Road geometry, actors and the synthetic route set of the embedded closed-loop simulator.

Everything is in CARLA's world frame (x, y metres, yaw from +x towards +y), so the route XML, the GNSS
conversion and the agent are the same as in CARLA. Lateral offsets ``d`` are positive to the right of the route,
as CARLA's +y is to the right of +x.

Each built scenario type (``SUPPORTED``) is laid out after its scenario_runner class (srunner/scenarios/*.py):
its actors, distances, speeds, trigger conditions, end condition and ScenarioTimeout; ``NOT_BUILT`` names the
other Bench2Drive types and why the synthetic roads cannot hold them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench2drive.abilities import ABILITIES, junction_completion_from_flags
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
    blueprint: str = ""  # CARLA blueprint id when it is not the kind's default (bicycles, warning signs)

    @property
    def type_id(self) -> str:
        if self.blueprint:
            return self.blueprint
        return {"vehicle": "vehicle.lincoln.mkz_2020", "walker": "walker.pedestrian.0001",
                "static": "static.prop.constructioncone"}[self.kind]


@dataclass
class TrafficLight:
    """The ego's light: red in [red_from, red_until) s of game time, or of scenario time when ``relative``
    (counted from the moment the route's scenario starts, ``t0``, set by the simulator; green before it)."""

    id: int
    s: float  # stop line along the route
    red_until: float  # green afterwards
    red_from: float = 0.0
    relative: bool = False
    t0: float | None = None

    def is_red(self, t: float) -> bool:
        if self.relative:
            if self.t0 is None:
                return False
            t = t - self.t0
        return self.red_from <= t < self.red_until


@dataclass
class StopSign:
    id: int
    s: float


FLOW_TIME_DISTANCE, FLOW_BASE_DISTANCE = 1.5, 30.0  # OppositeActorFlow: source 1.5 * speed limit (km/h) + 30 m
OPPOSITE_WAIT = 5.0  # s, the TwoWays scenarios' Idle(_wait_duration) before the opposite lane opens


@dataclass
class OppositeFlow:
    """The opposite-lane traffic of a TwoWays scenario (OppositeActorFlow / ChangeOppositeBehavior).

    Once the trigger holds (the ego within ``near`` m of the obstacle at route position ``ref_s``, or with
    ``tta`` / ``min_dist`` of it) and OPPOSITE_WAIT s more passed, the wrong-direction lane test is switched off
    (SwitchWrongDirectionTest(False)) and cars at the ego's speed limit come from FLOW_TIME_DISTANCE * limit +
    FLOW_BASE_DISTANCE m beyond ``ref_s`` in the opposite lane, one each time the last one is ``interval`` m
    (uniform) away from the source. When the scenario ends the flow stops and the test is switched back on,
    unless ``keep_switch_off`` (HazardAtSideLaneTwoWays' quirk: its end sends SwitchWrongDirectionTest(False)
    again, so the test stays off for the rest of the route).
    """

    ref_s: float
    interval: tuple[float, float]
    near: float | None = None
    tta: float | None = None
    min_dist: float = 0.0
    keep_switch_off: bool = False
    # run-time state
    triggered_at: float | None = None
    active: bool = False
    stopped: bool = False
    spawn_gap: float = 0.0
    last_id: int | None = None


@dataclass
class ActorFlow:
    """scenario_runner's ActorFlow (atomic_behaviors.py): from the scenario's start, a car is spawned at the
    start of ``route`` (its source) whenever the last one is more than ``spawn_gap`` m from the source (drawn
    uniform in ``interval`` after each spawn); the cars follow ``route`` at ``speed`` m/s ignoring every other
    vehicle, the ego included (enable_constant_velocity, ignore_vehicles_percentage 100), and are destroyed
    within ``sink_dist`` m of its end (the sink). It stops with the scenario."""

    route: RoadPath
    interval: tuple[float, float]
    speed: float
    sink_dist: float = 2.0
    # initial_actors: at the start the route is populated, a car every spawn gap from the source on, none on the
    # route span ``junction`` (ActorFlow.initialise skips junction waypoints)
    initial_actors: bool = False
    junction: tuple[float, float] = (0.0, 0.0)
    # run-time state
    spawn_gap: float | None = None
    last_id: int | None = None
    stopped: bool = False

    @property
    def source(self) -> np.ndarray:
        return self.route.xy[0]

    @property
    def sink(self) -> np.ndarray:
        return self.route.xy[-1]

    @property
    def yaw(self) -> float:
        """Heading at the source."""
        return float(self.route.yaw[0])


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
    # ControlLoss: (xy, throttle mean, throttle std, steer mean, steer std) of the noise added to the ego's
    # control while it is within CONTROL_LOSS_RADIUS of each debris (AddNoiseToRouteEgo)
    control_noise: list[tuple[np.ndarray, float, float, float, float]] = field(default_factory=list)
    # the scenario's life: it starts when the ego's route position reaches its trigger point (the leaderboard's
    # ScenarioTriggerer) and ends when the ego's centre passes ``end_s`` (WaitUntilInFrontPosition /
    # DriveDistance) or ``end_after`` s after the ego came within ``end_near`` m of actor ``end_actor``
    # (BlockedIntersection), or, for scenarios with a ScenarioTimeout behaviour, ``timeout`` s after it started
    # (SCENARIO_TIMEOUT). Its actors are then destroyed (ActorDestroy of other_actors).
    start_s: float = 0.0
    end_s: float | None = None
    timeout: float | None = None
    end_actor: int | None = None
    end_mode: str = ""  # "near": end_after s after the ego came within end_near m; "past": end_after m driven
    end_near: float = 0.0  # after the ego got in front of the actor
    end_after: float = 0.0
    road: str = "straight"  # SUPPORTED's road kind
    ego_start: tuple[float, float] | None = None  # (s, d) where the scenario puts the ego (ParkingExit)
    opposite_flow: OppositeFlow | None = None
    wrong_lane_allowed: bool = False  # run-time: SwitchWrongDirectionTest(False) is in force
    actor_flows: list[ActorFlow] = field(default_factory=list)  # flows started with the scenario


# ------------------------------------------------------------------------------------------ synthetic routes
# Scenario types the embedded simulator builds, with the synthetic road each one is built on: 'straight' (the
# route lane plus a same-direction lane to its left and a parking / side lane to its right), 'twoway' (the
# route lane, an opposite-direction lane to its left and a parking lane to its right), 'turn' (a right turn at
# a junction, one lane), 'left' (a left turn at a junction across the opposite lane of the approach road, one
# lane each way) or 'cross' (straight through a junction crossed by a perpendicular road, one lane). Their
# abilities are the ones tools/ability_benchmark.py lists (bench2drive.abilities.ABILITIES).
SUPPORTED = {
    # Overtaking
    "ParkedObstacle": "straight",
    "Accident": "straight",
    "ConstructionObstacle": "straight",
    "HazardAtSideLane": "straight",
    "ParkedObstacleTwoWays": "twoway",
    "AccidentTwoWays": "twoway",
    "ConstructionObstacleTwoWays": "twoway",
    "VehicleOpensDoorTwoWays": "twoway",
    "HazardAtSideLaneTwoWays": "twoway",
    # Merging
    "InterurbanActorFlow": "straight",
    "ParkingExit": "straight",
    # Merging + Traffic_Signs
    "SignalizedJunctionLeftTurn": "left",
    "NonSignalizedJunctionLeftTurn": "left",
    "SignalizedJunctionLeftTurnEnterFlow": "left",
    "NonSignalizedJunctionLeftTurnEnterFlow": "left",
    "SignalizedJunctionRightTurn": "turn",
    "NonSignalizedJunctionRightTurn": "turn",
    # Emergency_Brake
    "HardBreakRoute": "straight",
    "DynamicObjectCrossing": "straight",
    "ParkingCrossingPedestrian": "straight",
    "ParkingCutIn": "straight",
    "StaticCutIn": "straight",
    "ControlLoss": "straight",
    # Emergency_Brake + Traffic_Signs
    "PedestrianCrossing": "cross",
    "OppositeVehicleRunningRedLight": "cross",
    "OppositeVehicleTakingPriority": "cross",
    "VehicleTurningRoute": "turn",
    "VehicleTurningRoutePedestrian": "turn",
    "BlockedIntersection": "turn",
    # Give_Way
    "InvadingTurn": "straight",
    "YieldToEmergencyVehicle": "straight",
    # Traffic_Signs
    "VanillaSignalizedTurnEncounterRedLight": "turn",
    "VanillaSignalizedTurnEncounterGreenLight": "turn",
    "VanillaNonSignalizedTurn": "turn",
    "VanillaNonSignalizedTurnEncounterStopsign": "turn",
    "T_Junction": "turn",
}
# Bench2Drive scenario types not built here, and why (see the module docs of bench2drive.sim).
NOT_BUILT = {
    "CrossingBicycleFlow": "needs a bicycle lane through a large junction (the synthetic left turn ends before it)",
    "EnterActorFlow": "needs a merge into a highway flow from an on-ramp (no ramp geometry)",
    "HighwayCutIn": "needs an on-ramp merging into the ego lane (no ramp geometry)",
    "HighwayExit": "needs an off-ramp crossing a lane flow (no ramp geometry)",
    "InterurbanAdvancedActorFlow": "needs a two-flow interurban junction with a left turn",
    "MergerIntoSlowTraffic": "needs an on-ramp into a slow queue (no ramp geometry)",
    "MergerIntoSlowTrafficV2": "needs an on-ramp into a slow queue (no ramp geometry)",
    "SequentialLaneChange": "needs a multi-lane road with route lane changes (the route keeps one lane)",
}
JUNCTION_S = (60.0, 72.0)  # junction span along a synthetic route with a junction
# The scenario behaviours that hold a ScenarioTimeout(240 s) next to their end condition (scenario_runner's
# route_obstacles.py, construction_crash_vehicle.py, actor_flow.py, blocked_intersection.py, invading_turn.py,
# t_junction.py, ...: ``self._scenario_timeout = 240``); all of them also set up a ScenarioTimeoutTest.
# The vanilla_turn.py scenarios set up the test without the behaviour, so they never time out.
SCENARIO_TIMEOUT = 240.0  # s
TIMEOUT_SCENARIOS = frozenset({
    "Accident", "AccidentTwoWays", "BlockedIntersection", "ConstructionObstacle", "ConstructionObstacleTwoWays",
    "CrossingBicycleFlow", "EnterActorFlow", "HazardAtSideLane", "HazardAtSideLaneTwoWays", "HighwayExit",
    "InterurbanActorFlow", "InterurbanAdvancedActorFlow", "InvadingTurn", "MergerIntoSlowTraffic",
    "MergerIntoSlowTrafficV2", "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionLeftTurnEnterFlow",
    "NonSignalizedJunctionRightTurn", "ParkedObstacle", "ParkedObstacleTwoWays", "ParkingExit",
    "SequentialLaneChange", "SignalizedJunctionLeftTurn", "SignalizedJunctionLeftTurnEnterFlow",
    "SignalizedJunctionRightTurn", "T_Junction", "VehicleOpensDoorTwoWays",
})
# control_loss.py: debris 14, 48 and 74 m past the trigger; noise N(+-0.03, 0.01) on throttle and N(+-0.055,
# 0.015) on steer (signs drawn per debris) while the ego is within 2 m (_trigger_dist) of one
CONTROL_LOSS_DEBRIS = (14.0, 48.0, 74.0)
CONTROL_LOSS_NOISE = (0.03, 0.01, 0.055, 0.015)
CONTROL_LOSS_RADIUS = 2.0
TRIGGER_S = 10.0  # the scenario trigger point of a synthetic route (route point 5, 2 m apart)
TRIGGER_DISTANCE = 2.0  # route_parser.py DIST_THRESHOLD: the ScenarioTriggerer's trigger radius


def _route_points(kind: str, length: float) -> np.ndarray:
    """Route polyline starting at the origin heading +x; 'turn' goes right (+y) after the junction, 'left' is
    its mirror image (left, -y)."""
    if kind == "left":
        return _route_points("turn", length) * np.array([1.0, -1.0])
    if kind in ("straight", "twoway", "cross"):
        xs = np.arange(0.0, length + 1e-9, 2.0)
        return np.stack([xs, np.zeros_like(xs)], axis=1)
    a = np.stack([np.arange(0.0, JUNCTION_S[0], 2.0), np.zeros(int(JUNCTION_S[0] / 2))], axis=1)
    r = (JUNCTION_S[1] - JUNCTION_S[0]) * 2 / math.pi  # quarter circle of arc length 12 m
    th = np.linspace(0, math.pi / 2, 8)[1:]
    b = np.stack([JUNCTION_S[0] + r * np.sin(th), r * (1 - np.cos(th))], axis=1)
    ys = np.arange(r + 2.0, r + length - JUNCTION_S[1], 2.0)
    c = np.stack([np.full_like(ys, JUNCTION_S[0] + r), ys], axis=1)
    return np.concatenate([a, b, c])


def scenario_abilities(scenario_type: str) -> list[str]:
    """The Bench2Drive abilities (tools/ability_benchmark.py) a scenario type counts for."""
    return [a for a, names in ABILITIES.items() if scenario_type in names]


def synthetic_routes(scenario_types: list[str] | None = None, *, length: float = 120.0) -> list[Route]:
    """One Synthetic01 route per supported scenario type (covering the five abilities), ids 1, 2, ..."""
    types = scenario_types or list(SUPPORTED)
    bad = [t for t in types if t not in SUPPORTED]
    if bad:
        raise ValueError(f"the embedded simulator cannot build scenario type(s) {bad}; it builds {list(SUPPORTED)}")
    routes = []
    for i, t in enumerate(types, start=1):
        pts = _route_points(SUPPORTED[t], length)
        wps = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
        k = 0 if t == "ParkingExit" else 5  # parking_exit.py: its trigger must be the route's first point
        trig = (float(pts[k, 0]), float(pts[k, 1]), 0.0, 0.0)
        routes.append(Route(id=str(i), town=SYNTHETIC_TOWN, waypoints=wps,
                            scenarios=[Scenario(name=f"{t}_1", type=t, trigger=trig)],
                            weathers=[{**WEATHER, "route_percentage": "0"}, {**WEATHER, "route_percentage": "100"}]))
    return routes


def junction_span(route: Route) -> tuple[float, float] | None:
    """Junction span (s0, s1) along a synthetic route, None when it has none.

    Routes of the scenario types that tools/ability_benchmark.py counts for Traffic_Signs cross a junction (it
    needs one for the partial credit): turning ones for the sign and turning scenarios, straight through for the
    crossing-vehicle ones.
    """
    return JUNCTION_S if SUPPORTED.get(route.scenario_type) in ("turn", "left", "cross") else None


def synthetic_junction_completion(route: Route) -> float:
    """ability_benchmark.py's (first junction index + 1 + 8) / len on the 1 m route of a synthetic route."""
    path = RoadPath(route.waypoints)
    span = junction_span(route)
    if span is None:
        raise ValueError(f"route {route.id} has no junction")
    return junction_completion_from_flags((path.s >= span[0]) & (path.s <= span[1]))


def build_scenario(route: Route, path: RoadPath, *, seed: int = 0) -> SimScenario:
    """Actors, signals and the scenario's life (trigger, end, timeout) for the route's scenario type.

    Straight routes get two background vehicles in the left (same-direction) lane unless that lane is the
    passing lane of the scenario; junction routes have a single lane and no background traffic. Positions
    follow the scenario_runner classes: the obstacle / adversary lies ``distance`` m (the route XML parameter,
    a value of bench2drive220.xml) past the trigger point, with the class's own offsets, speeds and triggers.
    """
    t = route.scenario_type
    if t not in SUPPORTED:
        raise ValueError(f"route {route.id}: the embedded simulator cannot build scenario type '{t}'; "
                         f"it builds {list(SUPPORTED)}")
    rng = np.random.default_rng(seed)
    actors: list[Actor] = []
    lights: list[TrafficLight] = []
    stops: list[StopSign] = []
    exempt: list[tuple[float, float]] = []
    life: dict = {"start_s": TRIGGER_S, "timeout": SCENARIO_TIMEOUT if t in TIMEOUT_SCENARIOS else None}

    def on_path(s, d=0.0):
        xy, yaw = path.pose(s, d)
        return xy[0], float(yaw[0])

    def side(s, d):
        """A point d m to the right of the route at s (beyond its end the route's last heading continues)."""
        cxy, cyaw = on_path(s)
        return cxy + d * np.array([-math.sin(cyaw), math.cos(cyaw)]), cyaw

    next_id = iter(range(100, 10000))

    def add(kind, xy, yaw, **kw):
        a = Actor(id=next(next_id), kind=kind, xy=np.asarray(xy, dtype=np.float64), yaw=yaw, **kw)
        actors.append(a)
        return a

    def parked(s, d=LANE_WIDTH, **params):
        xy, yaw = on_path(s, d)
        return add("vehicle", xy, yaw, behaviour="static", params=params)

    def cone(s, d=0.0, **params):
        xy, yaw = on_path(s, d)
        return add("static", xy, yaw, length=0.4, width=0.4, behaviour="static", params=params)

    if SUPPORTED[t] == "straight" and t not in _PASSING_LANE_SCENARIOS and t != "ParkingExit":
        for s0 in (25.0, 55.0):  # background traffic ahead in the left (same-direction) lane
            xy, yaw = on_path(s0 + rng.uniform(-3, 3), -LANE_WIDTH)
            add("vehicle", xy, yaw, speed=7.0, role="background", behaviour="lane",
                params={"d": -LANE_WIDTH, "v_des": 7.0})
    if t == "ParkedObstacle":
        parked(70.0, 0.0, **{"pass": True})
        cone(64.0, **{"pass": True})  # a warning prop behind it (a static prop: COLLISION_STATIC if hit)
        exempt.append((45.0, 95.0))  # the leaderboard switches the lane test off while passing (blackboard)
        life["end_s"] = 70.0 + 50.0  # route_obstacles.py: _end_distance 50 past the vehicle
    elif t == "Accident":
        # two crashed cars in the lane with a cone before them; passing is allowed (lane test switched off)
        for s_car, d_car, yaw_off in ((66.0, 0.3, 0.4), (72.0, -0.2, -0.2)):
            xy, yaw = on_path(s_car, d_car)
            add("vehicle", xy, yaw + yaw_off, behaviour="static", params={"pass": True})
        cone(60.0, **{"pass": True})
        exempt.append((40.0, 95.0))
        life["end_s"] = 72.0 + 50.0
    elif t == "ConstructionObstacle":
        # ``distance`` (45) m past the trigger; _end_distance 50
        s_c = TRIGGER_S + 45.0
        _construction_site(s_c, add, cone, on_path)
        life["end_s"] = s_c + 50.0
    elif t == "HazardAtSideLane":
        # route_obstacles.py: two bicycles ``distance`` (45) m and 9 m further on, 0.55 * lane_width / 2 right of
        # the lane centre, riding at bicycle_speed (10 km/h) for bicycle_drive_distance (50 m), then stopping;
        # the scenario ends 50 m after the ego got in front of the last one
        s_b = TRIGGER_S + 45.0
        d_b = 0.55 * LANE_WIDTH / 2
        for s0 in (s_b, s_b + 9.0):
            xy, yaw = on_path(s0, d_b)
            last = add("vehicle", xy, yaw, length=1.6, width=0.8, behaviour="lane", blueprint="vehicle.bh.crossbike",
                       params={"d": d_b, "v_des": 10.0 / 3.6, "s_stop": s0 + 50.0, "pass": True})
        life.update(end_actor=last.id, end_mode="past", end_after=50.0)
    elif t in ("ParkedObstacleTwoWays", "AccidentTwoWays", "ConstructionObstacleTwoWays", "HazardAtSideLaneTwoWays",
               "VehicleOpensDoorTwoWays"):
        life.update(_two_ways(t, add, parked, cone, on_path, side))
    elif t == "DynamicObjectCrossing":
        # a pedestrian steps out from behind a parked car on the right when the ego is 18 m away
        parked(58.0)
        cxy, cyaw = on_path(62.0)
        xy = cxy + 3.5 * np.array([-math.sin(cyaw), math.cos(cyaw)])
        add("walker", xy, cyaw - math.pi / 2, length=WALKER_SIZE, width=WALKER_SIZE, behaviour="walker",
            params={"v_des": 2.0, "trigger_s": 62.0 - 18.0, "walk": 7.0 / 2.0})
    elif t == "ParkingCrossingPedestrian":
        # object_crash_vehicle.py: a car parked on the right ``distance`` (41) m past the trigger, a pedestrian
        # in front of it crossing at 2.0 m/s once the ego is 2.15 s (or 6 m) from the crossing point
        s_x = TRIGGER_S + 41.0
        parked(s_x - 3.5)
        xy, cyaw = side(s_x, LANE_WIDTH / 2 + 1.0)
        add("walker", xy, cyaw - math.pi / 2, length=WALKER_SIZE, width=WALKER_SIZE, behaviour="walker",
            params={"v_des": 2.0, "at_s": s_x, "tta": 2.15, "min_dist": 6.0, "walk": 8.0 / 2.0})
    elif t == "ParkingCutIn":
        # parking_cut_in.py: a blocker parked 28 m past the trigger, the adversary parked at 35 m pulls out into
        # the ego lane at 13 m/s once the ego is 2.35 s (or 10 m) away, and both are removed after 30 m
        parked(TRIGGER_S + 28.0)
        s_a = TRIGGER_S + 35.0
        parked(s_a, cut_in=True, at_s=s_a, tta=2.35, min_dist=10.0, v_des=13.0, d_from=LANE_WIDTH, drive=30.0)
    elif t == "StaticCutIn":
        # cut_in_with_static_vehicle.py: a queue of stopped cars in the lane to the right (2 behind, 3 in front,
        # 11 m apart), the one ``distance`` (45) m past the trigger cuts in at 60 km/h once the ego is 2.7 s (or
        # 15 m) away, driving 70 m
        s_a = TRIGGER_S + 45.0
        for k in (-2, -1, 1, 2, 3):
            parked(s_a + k * (CAR_LENGTH + 11.0))
        parked(s_a, cut_in=True, at_s=s_a, tta=2.7, min_dist=15.0, v_des=60.0 / 3.6, d_from=LANE_WIDTH, drive=70.0)
    elif t == "ControlLoss":
        # three flat dirt debris the ego drives over (no physics), each with its burst of control noise
        th_m, th_s, st_m, st_s = CONTROL_LOSS_NOISE
        for dist in CONTROL_LOSS_DEBRIS:
            xy, yaw = on_path(TRIGGER_S + dist)
            add("static", xy, yaw, length=1.0, width=1.0, behaviour="static", blueprint="static.prop.dirtdebris01",
                params={"drive_over": True})
            life.setdefault("control_noise", []).append(
                (xy, float(rng.choice([th_m, -th_m])), th_s, float(rng.choice([st_m, -st_m])), st_s))
        life["end_s"] = TRIGGER_S + 110.0  # _end_distance
    elif t == "ParkingExit":
        # parking_exit.py (direction right, front / behind_vehicle_distance 9 m of bench2drive220.xml): the ego
        # starts in the parking lane beside the route's first point, pushed to the kerb by (lane width - half
        # width) / 4, between two parked cars 9 m ahead and behind; a car on autopilot starts beside it in the
        # route lane and is removed after 50 m; the scenario ends when the ego drove front distance + 15 m
        fwd0 = np.array([math.cos(path.yaw[0]), math.sin(path.yaw[0])])
        right0 = np.array([-fwd0[1], fwd0[0]])
        d_car = LANE_WIDTH + (LANE_WIDTH - CAR_WIDTH / 2) / 4
        for ds in (9.0, -9.0):  # the one behind lies before the route's start: extend the straight road
            add("vehicle", path.xy[0] + ds * fwd0 + d_car * right0, float(path.yaw[0]), behaviour="static")
        add("vehicle", path.xy[0], float(path.yaw[0]), behaviour="lane",
            params={"d": 0.0, "v_des": 50.0 / 3.6, "s_remove": 50.0})
        life.update(start_s=0.0, end_s=9.0 + 15.0,
                    ego_start=(0.0, LANE_WIDTH + (LANE_WIDTH - EGO_WIDTH / 2) / 4))
    elif t == "InterurbanActorFlow":
        sj = 70.0
        cxy, cyaw = on_path(sj)
        for k in range(3):  # flow crossing the route from right to left, 25 m apart
            d0 = 18.0 + 25.0 * k
            xy = cxy + d0 * np.array([-math.sin(cyaw), math.cos(cyaw)])
            add("vehicle", xy, cyaw - math.pi / 2, speed=8.0, behaviour="straight", params={"v_des": 8.0})
        life["end_s"] = sj + 6.0  # WaitEndIntersection
    elif t in LEFT_TURN_FLOW:
        life.update(_junction_left_turn(t, path, lights))
    elif t in RIGHT_TURN_FLOW:
        life.update(_junction_right_turn(t, path, lights))
    elif t == "HardBreakRoute":
        xy, yaw = on_path(22.0)
        add("vehicle", xy, yaw, speed=6.0, behaviour="hard_brake",
            params={"d": 0.0, "v_des": 6.0, "brake_at_s": 55.0, "hold": 6.0})
    elif t == "PedestrianCrossing":
        cxy, cyaw = on_path(60.0)
        xy = cxy + 6.0 * np.array([-math.sin(cyaw), math.cos(cyaw)])
        add("walker", xy, cyaw - math.pi / 2, length=WALKER_SIZE, width=WALKER_SIZE, behaviour="walker",
            params={"v_des": 1.4, "start": 3.0, "walk": 12.0 / 1.4})
    elif t in ("OppositeVehicleRunningRedLight", "OppositeVehicleTakingPriority"):
        # opposite_vehicle_taking_priority.py: an adversary at 60 km/h on the crossing road, from the right,
        # 30 m (_source_dist) before the junction, launched when the ego is 2.2 s (or 12 m) from the collision
        # point, so both would meet there; the ego has green (RunningRedLight) or priority (TakingPriority)
        s_x = (JUNCTION_S[0] + JUNCTION_S[1]) / 2 - LANE_WIDTH / 2  # its right-hand lane on the crossing road
        xy, cyaw = side(s_x, (JUNCTION_S[1] - JUNCTION_S[0]) / 2 + 30.0)
        add("vehicle", xy, cyaw - math.pi / 2, behaviour="straight",
            params={"v_des": 60.0 / 3.6, "at_s": s_x, "tta": 2.2, "min_dist": 12.0, "launch": True})
        if t == "OppositeVehicleRunningRedLight":
            lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_until=0.0))  # green for the ego
    elif t in ("VehicleTurningRoute", "VehicleTurningRoutePedestrian"):
        # object_crash_intersection.py: a bicycle (or a pedestrian) 11 m after the junction exit, 1.5 half lane
        # widths to the right, crossing at 1.8 m/s when the ego is 1.8 s (2.2 s for the pedestrian) or 6 m away
        s_x = JUNCTION_S[1] + 11.0
        xy, cyaw = side(s_x, 1.5 * LANE_WIDTH / 2)
        params = {"v_des": 1.8, "at_s": s_x, "tta": 1.8, "min_dist": 6.0, "walk": 3.0 * LANE_WIDTH / 1.8}
        if t == "VehicleTurningRoute":
            add("vehicle", xy, cyaw - math.pi / 2, length=1.6, width=0.8, behaviour="walker",
                blueprint="vehicle.bh.crossbike", params=params)
        else:
            add("walker", xy, cyaw - math.pi / 2, length=WALKER_SIZE, width=WALKER_SIZE, behaviour="walker",
                params={**params, "tta": 2.2})
    elif t == "BlockedIntersection":
        # blocked_intersection.py: a stopped car 5 m past the junction exit; 10 s after the ego came within
        # 13 m of it, it is removed and the scenario ends
        blocker = parked(JUNCTION_S[1] + 5.0, 0.0)
        life.update(end_actor=blocker.id, end_mode="near", end_near=13.0, end_after=10.0)
    elif t == "InvadingTurn":
        for s0 in (70.0, 95.0):  # oncoming cars cutting 1 m into the ego lane
            xy, yaw = on_path(s0, -LANE_WIDTH + 1.0)
            add("vehicle", xy, yaw + math.pi, speed=6.0, behaviour="oncoming",
                params={"d": -LANE_WIDTH + 1.0, "v_des": 6.0})
        life["end_s"] = TRIGGER_S + 100.0  # invading_turn.py: _distance 100 past the trigger
    elif t == "YieldToEmergencyVehicle":
        # an ambulance comes up from behind in the ego lane once the ego passes 25 m; the left lane is free
        ev = add("vehicle", np.array([1e5, 1e5]), 0.0, behaviour="emergency",
                 params={"d": 0.0, "v_des": 14.0, "trigger_s": 25.0, "gap": 22.0})
        return SimScenario(actors=[ev], lights=[], stops=[], junction=None, outside_lane_exempt=[],
                           yield_ev=ev.id, yield_end_s=95.0)
    elif t == "VanillaSignalizedTurnEncounterRedLight":
        lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_until=12.0))
    elif t == "VanillaSignalizedTurnEncounterGreenLight":
        # vanilla_turn.py: the ego's light frozen green for 5 s from the scenario start, then every light of the
        # junction frozen red for 5 s (_green_light_delay), then the normal cycle (green for the ego here)
        lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_from=5.0, red_until=10.0, relative=True))
    elif t == "VanillaNonSignalizedTurnEncounterStopsign":
        stops.append(StopSign(id=1, s=JUNCTION_S[0] - 2.0))
    elif t == "T_Junction":
        life["end_s"] = TRIGGER_S + 200.0  # t_junction.py: DriveDistance(200) next to the ScenarioTimeout
    # VanillaNonSignalizedTurn: the turn itself, no actor
    return SimScenario(actors=actors, lights=lights, stops=stops, junction=junction_span(route),
                       outside_lane_exempt=exempt, road=SUPPORTED[t], **life)


def _construction_site(s_c: float, add, cone, on_path) -> None:
    """construction_crash_vehicle.py's site at route position ``s_c``: a traffic-warning sign, a taper of cones
    closing the lane before it and a row along the lane's left edge after it (all passable obstacles)."""
    xy, yaw = on_path(s_c)
    add("static", xy, yaw, length=1.0, width=2.2, behaviour="static", params={"pass": True},
        blueprint="static.prop.trafficwarning")
    for k, dd in enumerate((1.2, 0.6, 0.0, -0.6)):
        cone(s_c - 8.0 + 2.0 * k, dd, **{"pass": True})
    for k in range(3):
        cone(s_c + 3.0 + 3.0 * k, -1.4, **{"pass": True})


def _two_ways(t: str, add, parked, cone, on_path, side) -> dict:
    """Obstacles of the TwoWays scenarios (the route XML's typical ``distance`` past the trigger) and their
    opposite flow; returns the scenario-life fields (end_s / end_actor, opposite_flow)."""
    if t == "ParkedObstacleTwoWays":
        # route_obstacles.py: the parked car, a warning prop; InTriggerDistanceToLocation 50 m; end 50 m past;
        # distance 44 and frequency 31..151 m of bench2drive220.xml route 2664
        s_o = TRIGGER_S + 44.0
        parked(s_o, 0.0, **{"pass": True})
        cone(s_o - 6.0, **{"pass": True})
        return {"end_s": s_o + 50.0, "opposite_flow": OppositeFlow(ref_s=s_o, near=50.0, interval=(31.0, 151.0))}
    if t == "AccidentTwoWays":
        # police car, then two crashed cars 10 m and 6 m further (_first_distance, _second_distance); distance
        # 44 and frequency 32..184 m of route 1852
        s_o = TRIGGER_S + 44.0
        for s_car, d_car, yaw_off in ((s_o, 0.2, 0.0), (s_o + 10.0, 0.3, 0.4), (s_o + 16.0, -0.2, -0.2)):
            xy, yaw = on_path(s_car, d_car)
            add("vehicle", xy, yaw + yaw_off, behaviour="static", params={"pass": True})
        cone(s_o - 6.0, **{"pass": True})
        return {"end_s": s_o + 16.0 + 50.0,
                "opposite_flow": OppositeFlow(ref_s=s_o + 16.0, near=50.0, interval=(32.0, 184.0))}
    if t == "ConstructionObstacleTwoWays":
        # construction_crash_vehicle.py: _trigger_distance 30 m, the opposite flow then waits 5 s; distance 45
        # and frequency 48..200 m of route 2606
        s_c = TRIGGER_S + 45.0
        _construction_site(s_c, add, cone, on_path)
        return {"end_s": s_c + 50.0, "opposite_flow": OppositeFlow(ref_s=s_c, near=30.0, interval=(48.0, 200.0))}
    if t == "HazardAtSideLaneTwoWays":
        # the bicycles of HazardAtSideLane; ChangeOppositeBehavior(spawn_dist=frequency) instead of a flow;
        # distance 44, frequency 85 m, bicycle_speed 9 km/h, bicycle_drive_distance 116 m of route 3436
        s_b = TRIGGER_S + 44.0
        d_b = 0.55 * LANE_WIDTH / 2
        for s0 in (s_b, s_b + 9.0):
            xy, yaw = on_path(s0, d_b)
            last = add("vehicle", xy, yaw, length=1.6, width=0.8, behaviour="lane", blueprint="vehicle.bh.crossbike",
                       params={"d": d_b, "v_des": 9.0 / 3.6, "s_stop": s0 + 116.0, "pass": True})
        return {"end_actor": last.id, "end_mode": "past", "end_after": 50.0,
                "opposite_flow": OppositeFlow(ref_s=s_b, near=50.0, interval=(85.0, 85.0), keep_switch_off=True)}
    # VehicleOpensDoorTwoWays (vehicle_opens_door.py): a car parked on the right ``distance`` (39) m past the
    # trigger opens its door into the ego lane when the ego is 3 s (or 10 m) from it; 5 s later the opposite
    # lane opens; end 50 m past it. The open door is a box on the car's lane side (collisions count as vehicle).
    s_p = TRIGGER_S + 39.0  # distance 39 and frequency 31..98 m of route 3482
    d_car, door = LANE_WIDTH - 0.5, 1.1  # the car pulled to the kerb side; a door opens about 1.1 m
    car = parked(s_p, d_car)
    xy, yaw = side(s_p + 1.0, d_car - CAR_WIDTH / 2 - door / 2)
    add("vehicle", np.array([1e5, 1e5]), yaw, length=1.0, width=door, behaviour="door", blueprint=car.type_id,
        params={"open_xy": xy, "at_s": s_p, "tta": 3.0, "min_dist": 10.0, "pass": True})
    return {"end_s": s_p + 50.0,
            "opposite_flow": OppositeFlow(ref_s=s_p, tta=3.0, min_dist=10.0, interval=(31.0, 98.0))}


# straight scenarios whose left lane is the passing lane: no background traffic there
_PASSING_LANE_SCENARIOS = frozenset({"ParkedObstacle", "Accident", "ConstructionObstacle", "HazardAtSideLane"})


# signalized_junction_left_turn.py (JunctionLeftTurn): flow_speed and source_dist_interval of bench2drive220.xml
# routes (SignalizedJunctionLeftTurn triggered at (2170.1, 4877.2), NonSignalizedJunctionLeftTurn at
# (39.6, 4867.9)); the flow comes from 4 * flow_speed m before the opposite entry of the junction and is removed
# 2.5 * flow_speed m past its exit (within ActorFlow's sink_dist 2 m); the scenario ends when the ego drove
# _end_distance (10 m) after leaving the junction (WaitEndIntersection + DriveDistance)
LEFT_TURN_FLOW = {"SignalizedJunctionLeftTurn": (9.0, (18.0, 28.0)),
                  "NonSignalizedJunctionLeftTurn": (10.0, (21.0, 30.0)),
                  # left_turn_enter_flow.py (JunctionLeftTurnEnterFlow): the same flow turns right into the
                  # ego's exit road (generate_target_waypoint(source, 1)); routes triggered at (204.5, -274.4)
                  # and (2385.7, 2376.7)
                  "SignalizedJunctionLeftTurnEnterFlow": (8.0, (24.0, 28.0)),
                  "NonSignalizedJunctionLeftTurnEnterFlow": (9.0, (16.0, 30.0))}
LEFT_TURN_SOURCE_TIME, LEFT_TURN_SINK_TIME = 4.0, 2.5  # s: _source_dist = 4 * speed, _sink_dist = 2.5 * speed
LEFT_TURN_END_DISTANCE = 10.0
ENTER_FLOW_TURN_RADIUS = 5.25  # m, the flow's right turn into the ego's exit lane (1.5 lane widths)
GREEN_LIGHT_DELAY = 5.0  # s, TrafficLightFreezer: the ego's light held red, the flow's green, from the start


def _junction_left_turn(t: str, path: RoadPath, lights: list[TrafficLight]) -> dict:
    """The opposite flow of a JunctionLeftTurn scenario (in the approach road's opposite lane towards the ego,
    straight through the junction, or for the EnterFlow types turning right into the ego's exit lane) and, for
    the signalized ones, the ego's light red for the first GREEN_LIGHT_DELAY s of the scenario (then green:
    TrafficLightFreezer of the flow's state)."""
    speed, interval = LEFT_TURN_FLOW[t]
    fwd = np.array([math.cos(path.yaw[0]), math.sin(path.yaw[0])])
    left = np.array([fwd[1], -fwd[0]])  # CARLA: left of the approach heading
    o = path.xy[0]
    lane = LANE_WIDTH  # the approach road's opposite lane, left of the route
    entry = o + JUNCTION_S[1] * fwd + lane * left  # where the flow enters the junction
    source = entry + LEFT_TURN_SOURCE_TIME * speed * fwd
    if t.endswith("EnterFlow"):
        # the ego's exit lane runs along ``left`` from the end of its turn; the flow turns into it with
        # ENTER_FLOW_TURN_RADIUS and is removed 2.5 * speed m past the junction exit
        x_exit = float((path.xy[-1] - o) @ fwd)  # the exit lane's axis: where the route ends
        rad = ENTER_FLOW_TURN_RADIUS
        centre = o + (x_exit + rad) * fwd + (lane + rad) * left
        phi = np.linspace(-math.pi / 2, -math.pi, 10)
        arc = centre + rad * (np.cos(phi)[:, None] * fwd + np.sin(phi)[:, None] * left)
        sink = arc[-1] + LEFT_TURN_SINK_TIME * speed * left
        points = np.concatenate([source[None], arc, sink[None]])
    else:
        exit_ = o + JUNCTION_S[0] * fwd + lane * left  # where it leaves it, on the ego's approach road
        points = np.stack([source, exit_ - LEFT_TURN_SINK_TIME * speed * fwd])
    flow = ActorFlow(route=RoadPath(points), interval=interval, speed=speed)
    if t.startswith("Signalized"):
        lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_until=GREEN_LIGHT_DELAY, relative=True))
    return {"actor_flows": [flow], "end_s": JUNCTION_S[1] + LEFT_TURN_END_DISTANCE}


# signalized_junction_right_turn.py (JunctionRightTurn): flow_speed and source_dist_interval of bench2drive220.xml
# routes (SignalizedJunctionRightTurn triggered at (3101.9, 5224.7), NonSignalizedJunctionRightTurn at (3230.1,
# 3143.3)); the flow comes from the junction entry on the ego's left, 5 * flow_speed m before it, straight
# through into the ego's exit lane, removed 3 * flow_speed m past the junction (initial_actors=True)
RIGHT_TURN_FLOW = {"SignalizedJunctionRightTurn": (10.0, (19.0, 37.0)),
                   "NonSignalizedJunctionRightTurn": (8.0, (16.0, 30.0))}
RIGHT_TURN_SOURCE_TIME, RIGHT_TURN_SINK_TIME = 5.0, 3.0  # s: _source_dist = 5 * speed, _sink_dist = 3 * speed


def _junction_right_turn(t: str, path: RoadPath, lights: list[TrafficLight]) -> dict:
    """The flow of a JunctionRightTurn scenario: on the crossing road from the ego's left, straight through the
    junction into the lane the ego turns right into; the signalized one holds the ego's light red for the first
    GREEN_LIGHT_DELAY s of the scenario (TrafficLightFreezer)."""
    speed, interval = RIGHT_TURN_FLOW[t]
    fwd = np.array([math.cos(path.yaw[0]), math.sin(path.yaw[0])])
    right = np.array([-fwd[1], fwd[0]])  # CARLA: right of the approach heading, the exit road's direction
    o = path.xy[0]
    x_exit = float((path.xy[-1] - o) @ fwd)  # the exit lane's axis: where the route ends
    y_in = -1.5 * LANE_WIDTH  # the junction's edge on the ego's left (far side of the approach road)
    y_out = float((path.pose(JUNCTION_S[1])[0][0] - o) @ right)  # where the ego's turn ends
    y0 = y_in - RIGHT_TURN_SOURCE_TIME * speed
    points = np.stack([o + x_exit * fwd + y0 * right, o + x_exit * fwd + (y_out + RIGHT_TURN_SINK_TIME * speed) * right])
    flow = ActorFlow(route=RoadPath(points), interval=interval, speed=speed, initial_actors=True,
                     junction=(y_in - y0, y_out - y0))
    if t.startswith("Signalized"):
        lights.append(TrafficLight(id=1, s=JUNCTION_S[0] - 2.0, red_until=GREEN_LIGHT_DELAY, relative=True))
    return {"actor_flows": [flow], "end_s": JUNCTION_S[1] + LEFT_TURN_END_DISTANCE}  # _end_distance 10 as well
