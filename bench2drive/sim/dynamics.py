"""Ego vehicle: kinematic bicycle with a CARLA-like throttle / brake / steer mapping, and reactive IDM traffic."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench2drive.sim.world import EGO_LENGTH, EGO_WHEELBASE, EGO_WIDTH, Actor, RoadPath

PHYSICS_HZ = 20.0  # leaderboard_evaluator.py frame_rate
MAX_STEER_DEG = 70.0  # vehicle.lincoln.mkz_2020 front-wheel max steer angle: steer = 1 maps to it
ENGINE_ACCEL = 3.6  # m/s^2 at full throttle from rest (MKZ: 0-100 km/h in about 8 s)
TOP_SPEED = 50.0  # m/s: engine force fades to 0 here
BRAKE_DECEL = 8.0  # m/s^2 at full brake
ROLLING_DECEL = 0.15  # m/s^2 with the pedals released
# IDM (Treiber et al.) for the background / scenario vehicles
IDM_A, IDM_B, IDM_S0, IDM_T, IDM_DELTA = 1.5, 2.0, 2.0, 1.2, 4.0


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
    free = 1.0 - (v / max(v_des, 0.1)) ** IDM_DELTA
    if not math.isfinite(gap):
        return IDM_A * free
    s_star = IDM_S0 + v * IDM_T + v * (v - v_lead) / (2 * math.sqrt(IDM_A * IDM_B))
    return IDM_A * (free - (max(s_star, 0.0) / max(gap, 0.1)) ** 2)


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


def step_actors(actors: list[Actor], ego: EgoState, path: RoadPath, t: float, dt: float) -> None:
    """Advance every actor one step in place; vehicles react to the ego and to each other with IDM.

    Actors that drive off the end of the road are removed from ``actors``.
    """
    ego_item = (ego.xy, ego.speed, ego.length / 2)
    for a in actors:
        if a.behaviour == "static":
            continue
        heading = np.array([math.cos(a.yaw), math.sin(a.yaw)])
        if a.behaviour == "walker":
            p = a.params
            if "start" not in p:  # triggered by the ego reaching trigger_s along the route
                if float(path.frenet(ego.xy)[0][0]) < p["trigger_s"]:
                    continue
                p["start"] = t
            walking = p["start"] <= t < p["start"] + p["walk"]
            a.speed = p["v_des"] if walking else 0.0
            a.xy = a.xy + heading * a.speed * dt
            continue
        if a.behaviour == "emergency" and not a.params.get("active"):
            s_ego = float(path.frenet(ego.xy)[0][0])
            if s_ego < a.params["trigger_s"]:
                continue  # parked out of the world until triggered
            xy, yaw = path.pose(s_ego - a.params["gap"], a.params["d"])
            a.xy, a.yaw, a.speed, a.params["active"] = xy[0], float(yaw[0]), a.params["v_des"], True
            continue
        others = [ego_item] + [(o.xy, o.speed, o.length / 2) for o in actors if o is not a]
        gap, v_lead = _leader_gap(a, heading, others, corridor=2.0)
        v_des = a.params.get("v_des", 8.0)
        if a.behaviour == "hard_brake":
            s_a = float(path.frenet(a.xy)[0][0])
            p = a.params
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
            xy, yaw = path.pose(s_a, a.params.get("d", 0.0))
            if (sign < 0 and s_a <= 0) or (sign > 0 and s_a >= path.length - 0.5):
                a.params["despawn"] = True  # left the mapped road, as CARLA's background activity removes it
            a.xy, a.yaw = xy[0], float(yaw[0]) + (math.pi if sign < 0 else 0.0)
        else:  # straight
            a.xy = a.xy + heading * a.speed * dt
    actors[:] = [a for a in actors if not a.params.get("despawn")]
