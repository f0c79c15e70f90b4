"""Ego vehicle: kinematic bicycle with a CARLA-like throttle / brake / steer mapping; reactive IDM traffic, the
scenario adversaries (walkers, cut-ins, junction runners, opening doors), the TwoWays opposite-lane flows and
the ActorFlows of the junction scenarios."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench2drive.sim.scenarios import (
    EGO_LENGTH,
    EGO_WHEELBASE,
    EGO_WIDTH,
    FLOW_BASE_DISTANCE,
    FLOW_TIME_DISTANCE,
    LANE_WIDTH,
    OPPOSITE_WAIT,
    Actor,
    ActorFlow,
    OppositeFlow,
    RoadPath,
)
from navsim_agents.idm import EMBEDDED_CLOSED_LOOP, idm_acceleration

PHYSICS_HZ = 20.0  # leaderboard_evaluator.py frame_rate
MAX_STEER_DEG = 70.0  # vehicle.lincoln.mkz_2020 front-wheel max steer angle: steer = 1 maps to it
ENGINE_ACCEL = 3.6  # m/s^2 at full throttle from rest (MKZ: 0-100 km/h in about 8 s)
TOP_SPEED = 50.0  # m/s: engine force fades to 0 here
BRAKE_DECEL = 8.0  # m/s^2 at full brake
ROLLING_DECEL = 0.15  # m/s^2 with the pedals released


@dataclass
class EgoState:
    x: float
    y: float
    yaw: float  # rad, CARLA convention
    speed: float = 0.0
    yaw_rate: float = 0.0  # rad/s
    accel_world: tuple[float, float] = (0.0, 0.0)
    length: float = EGO_LENGTH
    width: float = EGO_WIDTH

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y])

    @property
    def forward(self) -> np.ndarray:
        return np.array([math.cos(self.yaw), math.sin(self.yaw)])

    @property
    def right(self) -> np.ndarray:
        return np.array([-math.sin(self.yaw), math.cos(self.yaw)])


def step_ego(ego: EgoState, steer: float, throttle: float, brake: float, dt: float = 1 / PHYSICS_HZ) -> EgoState:
    """Advance the ego one physics step; returns a new EgoState (acceleration and yaw rate filled in)."""
    steer = float(np.clip(steer, -1, 1))
    throttle = float(np.clip(throttle, 0, 1))
    brake = float(np.clip(brake, 0, 1))
    drive = throttle * ENGINE_ACCEL * max(0.0, 1.0 - ego.speed / TOP_SPEED)
    decel = brake * BRAKE_DECEL + (ROLLING_DECEL if throttle == 0 else 0.0)
    v = max(0.0, ego.speed + (drive - decel) * dt)  # no reversing
    delta = math.radians(MAX_STEER_DEG) * steer
    lr = EGO_WHEELBASE / 2
    beta = math.atan(lr / EGO_WHEELBASE * math.tan(delta))  # slip angle at the box centre
    v_mid = 0.5 * (ego.speed + v)
    yaw_rate = v_mid / lr * math.sin(beta)
    yaw = ego.yaw + yaw_rate * dt
    heading = ego.yaw + 0.5 * yaw_rate * dt + beta
    x = ego.x + v_mid * math.cos(heading) * dt
    y = ego.y + v_mid * math.sin(heading) * dt
    yaw = math.atan2(math.sin(yaw), math.cos(yaw))
    acc = (np.array([math.cos(yaw), math.sin(yaw)]) * v - ego.forward * ego.speed) / dt
    return EgoState(x=x, y=y, yaw=yaw, speed=v, yaw_rate=yaw_rate, accel_world=(float(acc[0]), float(acc[1])))


def idm_accel(v: float, v_des: float, gap: float, v_lead: float) -> float:
    """IDM acceleration for speed v, desired speed, bumper gap and leader speed (gap=inf: free road)."""
    return idm_acceleration(v, v_des, gap, v_lead, EMBEDDED_CLOSED_LOOP)


def _leader_gap(me: Actor, heading: np.ndarray, others: list[tuple[np.ndarray, float, float]],
                corridor: float) -> tuple[float, float]:
    """Nearest (gap, speed) of ``others`` (xy, speed, half length) ahead of ``me`` inside a lateral corridor."""
    if not others:
        return math.inf, 0.0
    xy = np.stack([o[0] for o in others])
    rel = xy - me.xy
    lon = rel @ heading
    lat = np.abs(rel @ np.array([-heading[1], heading[0]]))
    half = np.array([o[2] for o in others])
    ok = (lon > 0) & (lat < corridor)
    if not ok.any():
        return math.inf, 0.0
    i = np.argmin(np.where(ok, lon, np.inf))
    return float(lon[i] - half[i] - me.length / 2), float(others[i][1])


def adversary_triggered(p: dict, s_ego: float, v_ego: float) -> bool:
    """The scenario_runner trigger of an adversary: the ego's route position passed ``trigger_s``, or (with
    ``at_s``) the ego is closer than ``min_dist`` to the collision point or reaches it within ``tta`` s
    (InTriggerDistanceToLocation | InTimeToArrivalToLocation)."""
    if "trigger_s" in p:
        return s_ego >= p["trigger_s"]
    dist = p["at_s"] - s_ego
    return dist < p["min_dist"] or dist < v_ego * p["tta"]


CUT_IN_ACCEL = 3.0  # m/s^2 of a cutting-in car pulling away (BasicAgent's throttle, roughly)
CUT_IN_LENGTH = 12.0  # m driven while moving from its lane into the ego lane


def step_actors(actors: list[Actor], ego: EgoState, path: RoadPath, t: float, dt: float) -> None:
    """Advance every actor one step in place; vehicles react to the ego and to each other with IDM.

    Actors that drive off the end of the road are removed from ``actors``.
    """
    ego_item = (ego.xy, ego.speed, ego.length / 2)
    s_ego = float(path.frenet(ego.xy)[0][0])
    for a in actors:
        p = a.params
        if a.behaviour == "static":
            if p.get("cut_in") and adversary_triggered(p, s_ego, ego.speed):
                a.behaviour = "cut_in"
                p["s0"] = float(path.frenet(a.xy)[0][0])
            continue
        heading = np.array([math.cos(a.yaw), math.sin(a.yaw)])
        if a.behaviour == "door":  # OpenVehicleDoor once the ego is close enough
            if "opened" not in p and adversary_triggered(p, s_ego, ego.speed):
                p["opened"], a.xy = t, np.asarray(p["open_xy"], dtype=np.float64)
            continue
        if a.behaviour == "walker":
            if "start" not in p:  # triggered by the ego (trigger_s, or distance / time to the crossing point)
                if not adversary_triggered(p, s_ego, ego.speed):
                    continue
                p["start"] = t
            walking = p["start"] <= t < p["start"] + p["walk"]
            a.speed = p["v_des"] if walking else 0.0
            a.xy = a.xy + heading * a.speed * dt
            continue
        if a.behaviour == "cut_in":
            # out of its parking slot / queue into the ego lane, then along the lane; removed after ``drive`` m
            a.speed = min(p["v_des"], a.speed + CUT_IN_ACCEL * dt)
            s_a = float(path.frenet(a.xy)[0][0]) + a.speed * dt
            frac = min(1.0, (s_a - p["s0"]) / CUT_IN_LENGTH)
            d_a = p["d_from"] * (1.0 - frac)
            xy, yaw = path.pose(s_a, d_a)
            slope = -p["d_from"] / CUT_IN_LENGTH if frac < 1.0 else 0.0
            a.xy, a.yaw = xy[0], float(yaw[0]) + math.atan(slope)
            if s_a - p["s0"] >= p["drive"] or s_a >= path.length - 0.5:
                p["despawn"] = True  # ActorDestroy after DriveDistance
            continue
        if a.behaviour == "constant":  # an ActorFlow car: constant velocity along its route, blind to vehicles
            p["flow_s"] += a.speed * dt
            xy, yaw = p["actor_flow"].route.pose(p["flow_s"])
            a.xy, a.yaw = xy[0], float(yaw[0])
            continue
        if a.behaviour == "straight" and p.get("launch") and "start" not in p:
            if not adversary_triggered(p, s_ego, ego.speed):
                continue
            p["start"], a.speed = t, p["v_des"]
        if a.behaviour == "straight" and p.get("launch"):
            a.xy = a.xy + heading * a.speed * dt  # a junction runner: it keeps its speed through the junction
            continue
        if a.behaviour == "emergency" and not p.get("active"):
            if s_ego < p["trigger_s"]:
                continue  # parked out of the world until triggered
            xy, yaw = path.pose(s_ego - p["gap"], p["d"])
            a.xy, a.yaw, a.speed, p["active"] = xy[0], float(yaw[0]), p["v_des"], True
            continue
        if a.behaviour == "lane" and "s_stop" in p and float(path.frenet(a.xy)[0][0]) >= p["s_stop"]:
            a.speed = 0.0  # HazardAtSideLane's bicycles stop (hand brake) after their drive distance
            continue
        if a.behaviour == "lane" and "s_remove" in p and float(path.frenet(a.xy)[0][0]) >= p["s_remove"]:
            p["despawn"] = True  # ParkingExit's side car is taken away after its drive distance
            continue
        others = [ego_item] + [(o.xy, o.speed, o.length / 2) for o in actors if o is not a]
        gap, v_lead = _leader_gap(a, heading, others, corridor=2.0)
        v_des = p.get("v_des", 8.0)
        if a.behaviour == "hard_brake":
            s_a = float(path.frenet(a.xy)[0][0])
            if s_a >= p["brake_at_s"] and "stopped_at" not in p:
                if a.speed > 0.05:
                    a.speed = max(0.0, a.speed - 6.0 * dt)  # emergency stop of the lead vehicle
                    a.xy = a.xy + heading * a.speed * dt
                    continue
                p["stopped_at"] = t
            if "stopped_at" in p and t - p["stopped_at"] < p["hold"]:
                a.speed = 0.0
                continue
        acc = idm_accel(a.speed, v_des, gap, v_lead)
        a.speed = max(0.0, a.speed + acc * dt)
        if a.behaviour in ("lane", "hard_brake", "oncoming", "emergency"):
            sign = -1.0 if a.behaviour == "oncoming" else 1.0
            s_a = float(path.frenet(a.xy)[0][0]) + sign * a.speed * dt
            xy, yaw = path.pose(s_a, p.get("d", 0.0))
            if (sign < 0 and s_a <= 0) or (sign > 0 and s_a >= path.length - 0.5):
                p["despawn"] = True  # left the mapped road, as CARLA's background activity removes it
            a.xy, a.yaw = xy[0], float(yaw[0]) + (math.pi if sign < 0 else 0.0)
        else:  # straight
            a.xy = a.xy + heading * a.speed * dt
    actors[:] = [a for a in actors if not a.params.get("despawn")]


def opposite_flow_source(flow: OppositeFlow, path: RoadPath, speed_limit_kmh: float) -> tuple[np.ndarray, float]:
    """(source xy in the opposite lane, sink route position) of an opposite flow on a straight two-way road."""
    dist = FLOW_TIME_DISTANCE * speed_limit_kmh + FLOW_BASE_DISTANCE
    fwd = np.array([math.cos(path.yaw[0]), math.sin(path.yaw[0])])
    left = LANE_WIDTH * np.array([fwd[1], -fwd[0]])  # the lane to the left (CARLA: -y of +x)
    return path.xy[0] + (flow.ref_s + dist) * fwd + left, flow.ref_s - dist


def step_opposite_flow(flow: OppositeFlow, actors: list[Actor], ego: EgoState, path: RoadPath, t: float,
                       speed_limit_kmh: float, rng: np.random.Generator, new_id: int) -> Actor | None:
    """Trigger, open and feed a TwoWays scenario's opposite-lane flow (see OppositeFlow); returns the car it
    spawned this tick, if any (the caller appends it). Flow cars drive with IDM along the opposite lane and
    are removed past the sink or when the scenario ends."""
    s_ego = float(path.frenet(ego.xy)[0][0])
    if flow.triggered_at is None:
        ref = path.pose(flow.ref_s)[0][0]
        if flow.near is not None:
            hit = np.linalg.norm(ref - ego.xy) < flow.near  # InTriggerDistanceToLocation
        else:
            hit = adversary_triggered({"at_s": flow.ref_s, "tta": flow.tta, "min_dist": flow.min_dist}, s_ego,
                                      ego.speed)
        if hit:
            flow.triggered_at = t
        return None
    if not flow.active:
        if flow.stopped or t - flow.triggered_at < OPPOSITE_WAIT:
            return None
        flow.active = True
        flow.spawn_gap = float(rng.uniform(*flow.interval))
    if flow.stopped:
        return None
    src, sink_s = opposite_flow_source(flow, path, speed_limit_kmh)
    for a in actors:
        if a.params.get("flow") and float(path.frenet(a.xy)[0][0]) <= max(sink_s, 0.5):
            a.params["despawn"] = True
    heading = path.yaw[-1] + math.pi  # the synthetic two-way road is straight
    last = next((a for a in actors if a.id == flow.last_id), None)
    if last is not None and np.linalg.norm(last.xy - src) <= flow.spawn_gap:
        return None
    flow.spawn_gap, flow.last_id = float(rng.uniform(*flow.interval)), new_id
    v = speed_limit_kmh / 3.6
    return Actor(id=new_id, kind="vehicle", xy=src, yaw=float(heading), speed=v, behaviour="straight",
                 params={"v_des": v, "flow": True})


def step_actor_flow(flow: ActorFlow, actors: list[Actor], rng: np.random.Generator, new_id: int) -> list[Actor]:
    """One ActorFlow update (see world.ActorFlow): marks its cars near the sink for removal and returns the cars
    it spawns this tick, ids from ``new_id`` on (the caller appends them)."""
    if flow.stopped:
        return []

    def car(s: float, i: int) -> Actor:
        xy, yaw = flow.route.pose(s)
        return Actor(id=i, kind="vehicle", xy=xy[0], yaw=float(yaw[0]), speed=flow.speed, behaviour="constant",
                     params={"flow": True, "actor_flow": flow, "flow_s": float(s)})

    new: list[Actor] = []
    if flow.spawn_gap is None:  # the flow's first update (initialise)
        flow.spawn_gap = float(rng.uniform(*flow.interval))
        if flow.initial_actors:
            ref = 0.0
            for s in flow.route.s:
                if flow.junction[0] <= s <= flow.junction[1] or s - ref < flow.spawn_gap:
                    continue
                new.append(car(s, new_id + len(new)))
                ref, flow.spawn_gap = float(s), float(rng.uniform(*flow.interval))
            if new:
                flow.last_id = new[-1].id
            return new
    for a in actors:
        if a.params.get("actor_flow") is flow and np.linalg.norm(a.xy - flow.sink) < flow.sink_dist:
            a.params["despawn"] = True
    last = next((a for a in actors if a.id == flow.last_id), None)
    if last is not None and np.linalg.norm(last.xy - flow.source) <= flow.spawn_gap:
        return []
    flow.spawn_gap, flow.last_id = float(rng.uniform(*flow.interval)), new_id
    return [car(0.0, new_id)]
