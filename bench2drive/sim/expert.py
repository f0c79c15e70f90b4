"""Scripted privileged controllers for the embedded simulator (a rule-based expert and a never-braking driver).

They speak the leaderboard agent interface (``run_step`` returns an object with steer / throttle / brake) and
read the simulator's state directly; attach them with ``run_routes(..., on_sim=expert.attach)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench2drive.sim.dynamics import BRAKE_DECEL, ENGINE_ACCEL, MAX_STEER_DEG, idm_accel
from bench2drive.sim.world import EGO_WHEELBASE, LANE_WIDTH

GIVE_WAY_SHIFT = 0.6  # m to the right of the lane centre while oncoming cars invade the lane


@dataclass
class Control:
    """Minimal stand-in for carla.VehicleControl."""

    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 0.0


class ScriptedExpert:
    """Pure-pursuit lateral control, IDM longitudinal control that respects actors, red lights and stops.

    ``brakes=False`` gives the never-braking driver of the tests: same steering, full cruise throttle;
    ``overtake=False`` keeps it in its lane behind parked obstacles.
    """

    def __init__(self, *, cruise: float = 8.0, brakes: bool = True, overtake: bool = True):
        self.cruise, self.brakes, self.overtake = cruise, brakes, overtake
        self.sim = None
        self._stopped_at: set[int] = set()

    def attach(self, sim) -> None:
        self.sim = sim
        self._stopped_at = set()

    def setup(self, path_to_conf_file: str = "") -> None:
        pass

    def set_global_plan(self, gps, world) -> None:
        pass

    def destroy(self) -> None:
        pass

    def _obstacle_gap(self, s: float, d_target: float) -> tuple[float, float]:
        sim, ego = self.sim, self.sim.ego
        gap, v_lead = math.inf, 0.0
        if not sim.actors:
            return gap, v_lead
        xy = np.stack([a.xy for a in sim.actors])
        heads = np.stack([[math.cos(a.yaw), math.sin(a.yaw)] for a in sim.actors])
        speeds = np.array([a.speed for a in sim.actors])
        half_l = np.array([a.length / 2 for a in sim.actors])
        half_w = np.array([a.width / 2 for a in sim.actors])
        for horizon in (0.0, 1.0, 2.0, 3.0):  # predicted positions: crossing traffic and walkers
            sa, da, _ = sim.path.frenet(xy + heads * speeds[:, None] * horizon)
            ahead = sa - half_l - s - ego.length / 2
            lateral = np.abs(da - d_target) < half_w + ego.width / 2 + 0.5
            ok = lateral & (ahead > -ego.length) & (ahead < 60)
            if ok.any():
                i = int(np.argmin(np.where(ok, ahead, np.inf)))
                g = max(float(ahead[i]), 0.0)
                if g < gap:
                    moving_along = horizon == 0.0 and abs(sim.actors[i].yaw - ego.yaw) % (2 * math.pi) < 0.5
                    gap, v_lead = g, float(speeds[i]) if moving_along else 0.0
        return gap, v_lead

    def run_step(self, input_data: dict, timestamp: float) -> Control:
        sim, ego = self.sim, self.sim.ego
        s_arr, d_arr, _ = sim.path.frenet(ego.xy)
        s = float(s_arr[0])
        d_target = 0.0
        for a in sim.actors:  # pass a parked obstacle in the left lane
            if a.behaviour == "static" and self.overtake:
                sa_arr, da_arr, _ = sim.path.frenet(a.xy)
                sa = float(sa_arr[0])
                if -12.0 < sa - s < 30.0 and abs(float(da_arr[0])) < LANE_WIDTH / 2:  # blocks the ego lane
                    d_target = -LANE_WIDTH
            if a.behaviour == "emergency" and a.params.get("active"):  # give way: move to the left lane
                sa = float(sim.path.frenet(a.xy)[0][0])
                if -45.0 < sa - s < 8.0:
                    d_target = -LANE_WIDTH
            if a.behaviour == "oncoming":  # keep right of cars cutting into the lane
                sa = float(sim.path.frenet(a.xy)[0][0])
                if -8.0 < sa - s < 40.0:
                    d_target = max(d_target, GIVE_WAY_SHIFT)
        ld = max(4.0, ego.speed * 1.0 + 3.0)
        goal, _ = sim.path.pose(s + ld, d_target)
        rel = goal[0] - ego.xy
        alpha = math.atan2(rel @ ego.right, rel @ ego.forward)
        delta = math.atan2(2 * EGO_WHEELBASE * math.sin(alpha), ld)
        steer = float(np.clip(delta / math.radians(MAX_STEER_DEG), -1, 1))
        if not self.brakes:
            return Control(steer=steer, throttle=0.75, brake=0.0)
        gap, v_lead = self._obstacle_gap(s, d_target)
        front = s + ego.length / 2
        for light in sim.scenario.lights:
            if light.is_red(sim.time) and front < light.s + 0.5:
                gap, v_lead = min(gap, max(light.s - front - 1.0, 0.0)), 0.0
        for stop in sim.scenario.stops:
            if stop.id not in self._stopped_at and front < stop.s + 0.5:
                if ego.speed < 0.05 and stop.s - front < 4.0:
                    self._stopped_at.add(stop.id)
                else:
                    gap, v_lead = min(gap, max(stop.s - front - 1.0, 0.0)), 0.0
        acc = idm_accel(ego.speed, self.cruise, gap, v_lead)
        if gap < 1.0 and ego.speed < 1.0:
            acc = -BRAKE_DECEL
        if acc >= 0:
            return Control(steer=steer, throttle=float(min(acc / ENGINE_ACCEL, 0.75)), brake=0.0)
        return Control(steer=steer, throttle=0.0, brake=float(min(-acc / BRAKE_DECEL, 1.0)))
