"""Scripted privileged controllers for the embedded simulator (a rule-based expert and a never-braking driver).

They speak the leaderboard agent interface (``run_step`` returns an object with steer / throttle / brake) and
read the simulator's state directly; attach them with ``run_routes(..., on_sim=expert.attach)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench2drive.sim.dynamics import (
    BRAKE_DECEL,
    ENGINE_ACCEL,
    MAX_STEER_DEG,
    PHYSICS_HZ,
    TOP_SPEED,
    idm_accel,
    opposite_flow_source,
)
from bench2drive.sim.monitors import box_corners
from bench2drive.sim.scenarios import CAR_LENGTH, CAR_WIDTH, EGO_WHEELBASE, LANE_WIDTH, ActorFlow

GIVE_WAY_SHIFT = 0.6  # m to the right of the lane centre while oncoming cars invade the lane
PASS_CLEARANCE = 12.0  # m past the last obstacle before the ego returns to its lane
PASS_RETURN_TIME = 0.8  # s the ego still needs after that to leave the opposite lane
PASS_ACCEL = 0.75 * ENGINE_ACCEL  # m/s^2 while passing in the opposite lane (the expert's throttle cap)
PASS_SPEED = 13.0  # m/s while in the opposite lane (under the synthetic roads' 50 km/h limit)
PASS_MARGIN = 1.0  # s of spare time to the next oncoming car
# on two-way roads an obstacle at the lane's right edge is passed inside the lane when a shift left of at most
# 1.2 m (the ego's left side 0.5 m over the centre line) leaves NUDGE_CLEARANCE to it (more than the 0.5 m the
# following logic keeps laterally, so the ego does not brake for it)
NUDGE_MAX, NUDGE_CLEARANCE = -1.2, 0.6
# crossing or joining an ActorFlow (a turn across or into a junction flow): the ego waits with its centre FLOW_HOLD_BACK m
# before the first route position where its box meets the flow's lane band (car width + FLOW_LAT_MARGIN each
# side), so that it gets a run-up, and goes when, accelerating at PASS_ACCEL up to its cruise speed, its box
# stays FLOW_GAP m (along the flow) clear of every present or coming flow car for as long as it is in the band
FLOW_HOLD_BACK, FLOW_LAT_MARGIN, FLOW_GAP = 7.0, 0.5, 1.0
FLOW_GRID = 0.25  # m, route sampling of the conflict table
FLOW_PLAN_HORIZON = 20.0  # s of the ego's planned crossing looked at


@dataclass
class _FlowConflict:
    """Where the ego's route crosses an ActorFlow's lane: on the route grid ``s`` (ego centre), whether the ego's
    box meets the band (``hit``) and the span [a_lo, a_hi] of the flow's route (arc length from its source)
    that it covers; [s_in, s_out] bounds the hits."""

    s: np.ndarray
    hit: np.ndarray
    a_lo: np.ndarray
    a_hi: np.ndarray
    s_in: float
    s_out: float


def flow_conflict(path, flow: ActorFlow, length: float, width: float) -> _FlowConflict | None:
    """The conflict of a route (``path``, ego box ``length`` x ``width`` on the route centre) with ``flow``'s lane;
    None when the route never meets it."""
    s = np.arange(0.0, path.length, FLOW_GRID)
    xy, yaw = path.pose(s)
    corners = box_corners(xy, yaw, np.full(len(s), length), np.full(len(s), width))  # [N,4,2]
    along, lat, _ = flow.route.frenet(corners.reshape(-1, 2))
    along, lat = along.reshape(-1, 4), lat.reshape(-1, 4)
    band = CAR_WIDTH / 2 + FLOW_LAT_MARGIN
    hit = (lat.min(axis=1) < band) & (lat.max(axis=1) > -band) & (along.max(axis=1) > 0)
    if not hit.any():
        return None
    k = np.nonzero(hit)[0]
    return _FlowConflict(s=s, hit=hit, a_lo=along.min(axis=1), a_hi=along.max(axis=1), s_in=float(s[k[0]]),
                         s_out=float(s[k[-1]]) + FLOW_GRID)


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
        self._committed = False
        self._conflicts: list[tuple[ActorFlow, _FlowConflict]] = []
        self._flow_go = False

    def attach(self, sim) -> None:
        self.sim = sim
        self._stopped_at = set()
        self._committed = False
        self._flow_go = False
        self._conflicts = []
        for af in sim.scenario.actor_flows:
            c = flow_conflict(sim.path, af, sim.ego.length, sim.ego.width)
            if c is not None:
                self._conflicts.append((af, c))

    def _ego_plan(self, s: float, s_out: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, route positions) of the ego from s until s_out, accelerating at PASS_ACCEL (with the engine's
        fade) up to its cruise speed."""
        v0, dt = self.sim.ego.speed, 1.0 / PHYSICS_HZ
        k = np.arange(int(FLOW_PLAN_HORIZON * PHYSICS_HZ) + 1)
        # v_{k+1} = v_k + PASS_ACCEL * (1 - v_k / TOP_SPEED) * dt, in closed form, held at the cruise speed
        q = 1.0 - PASS_ACCEL * dt / TOP_SPEED
        v = TOP_SPEED - (TOP_SPEED - v0) * q ** k
        v = np.minimum(v, self.cruise) if v0 < self.cruise else np.full(len(k), v0)
        ss = s + np.concatenate([[0.0], np.cumsum(0.5 * (v[:-1] + v[1:]) * dt)])
        keep = ss < s_out
        return k[keep] * dt, ss[keep]

    def _flow_clear(self, s: float) -> bool:
        """Gap acceptance across every ActorFlow: while the ego, leaving now, is in a flow's band, every present
        or coming car of that flow stays FLOW_GAP m clear of the span the ego's box covers along the flow."""
        sim = self.sim
        for af, c in self._conflicts:
            if s >= c.s_out:
                continue
            # the flow's cars are destroyed when the scenario ends (ActorDestroy): nothing to meet beyond
            ts, ss = self._ego_plan(s, min(c.s_out, sim.scenario.end_s or math.inf))
            k = np.clip(np.round(ss / FLOW_GRID).astype(int), 0, len(c.s) - 1)
            inside = c.hit[k]
            ts, lo, hi = ts[inside], c.a_lo[k][inside], c.a_hi[k][inside]
            # (position along the flow's route now, or of the source when it appears; earliest and latest
            # appearance time)
            cars = [(a.params["flow_s"], 0.0, 0.0) for a in sim.actors if a.params.get("actor_flow") is af]
            if not af.stopped:
                last = next((a for a in sim.actors if a.id == af.last_id), None)
                gap = af.spawn_gap if af.spawn_gap is not None else af.interval[0]
                t1 = 0.0 if last is None else max(0.0, (gap - float(np.linalg.norm(last.xy - af.source))) / af.speed)
                for n in range(8):  # the next car exactly, the later ones anywhere in the spawn interval
                    cars.append((0.0, t1 + n * af.interval[0] / af.speed, t1 + n * af.interval[1] / af.speed))
            for a0, t_early, t_late in cars:
                front = a0 + af.speed * (ts - t_early) + CAR_LENGTH / 2 + FLOW_GAP
                rear = a0 + af.speed * (ts - t_late) - CAR_LENGTH / 2 - FLOW_GAP
                if ((front > lo) & (rear < hi)).any():
                    return False
        return True

    def _opposite_clear(self, s: float, s_end: float, v_end: float = 0.0) -> bool:
        """Gap acceptance in the opposite lane: it is open (the scenario switched the wrong-direction test off)
        and no oncoming car reaches the passing zone [s, s_end] (its end moving at ``v_end``) before the ego,
        accelerating at PASS_ACCEL to PASS_SPEED, has cleared it (with PASS_MARGIN s to spare)."""
        sim = self.sim
        if not sim.scenario.wrong_lane_allowed:
            return False
        v, t_clear = sim.ego.speed, 0.0
        for _ in range(3):  # the zone's end moves on while the ego passes
            dist = s_end - s + v_end * t_clear
            d_acc = max(0.0, (PASS_SPEED ** 2 - v ** 2) / (2 * PASS_ACCEL))
            if dist <= d_acc:
                t_clear = (math.sqrt(v ** 2 + 2 * PASS_ACCEL * dist) - v) / PASS_ACCEL
            else:
                t_clear = (PASS_SPEED - v) / PASS_ACCEL + (dist - d_acc) / PASS_SPEED
        s_end = s_end + v_end * t_clear
        fwd = np.array([math.cos(sim.path.yaw[0]), math.sin(sim.path.yaw[0])])  # two-way roads are straight
        for a in sim.actors:
            if not a.params.get("flow"):
                continue
            so = float((a.xy - sim.path.xy[0]) @ fwd) - a.length / 2  # also beyond the route's end
            if so < s - sim.ego.length:
                continue  # already behind the ego
            if so <= s_end or (so - s_end) / max(a.speed, 0.1) < t_clear + PASS_MARGIN:
                return False
        # the next car of the flow: it appears at the source once the last one is spawn_gap away from it
        flow, v_flow = sim.scenario.opposite_flow, sim.scenario.speed_limit_kmh / 3.6
        src, _ = opposite_flow_source(flow, sim.path, sim.scenario.speed_limit_kmh)
        last = next((a for a in sim.actors if a.id == flow.last_id), None)
        t_spawn = 0.0 if last is None else max(0.0, (flow.spawn_gap - np.linalg.norm(last.xy - src)) / v_flow)
        s_src = float((src - sim.path.xy[0]) @ fwd) - CAR_LENGTH / 2
        return t_spawn + (s_src - s_end) / v_flow >= t_clear + PASS_MARGIN

    def _lane_busy(self, s: float) -> bool:
        """A vehicle in the route lane from 20 m behind to just ahead of the ego (merging from the kerb)."""
        for a in self.sim.actors:
            if a.kind != "vehicle" or a.behaviour == "static":
                continue
            sa, da, _ = self.sim.path.frenet(a.xy)
            if abs(float(da[0])) < LANE_WIDTH / 2 and -20.0 < float(sa[0]) - s < self.sim.ego.length + 3.0:
                return True
        return False

    def setup(self, path_to_conf_file: str = "") -> None:
        pass

    def set_global_plan(self, gps, world) -> None:
        pass

    def destroy(self) -> None:
        pass

    def _obstacle_gap(self, s: float, d_target: float) -> tuple[float, float]:
        sim, ego = self.sim, self.sim.ego
        gap, v_lead = math.inf, 0.0
        # gap acceptance handles opposite flows; flat debris is driven over
        actors = [a for a in sim.actors if not a.params.get("flow") and not a.params.get("drive_over")]
        if not actors:
            return gap, v_lead
        xy = np.stack([a.xy for a in actors])
        heads = np.stack([[math.cos(a.yaw), math.sin(a.yaw)] for a in actors])
        speeds = np.array([a.speed for a in actors])
        half_l = np.array([a.length / 2 for a in actors])
        half_w = np.array([a.width / 2 for a in actors])
        for horizon in (0.0, 1.0, 2.0, 3.0):  # predicted positions: crossing traffic and walkers
            sa, da, _ = sim.path.frenet(xy + heads * speeds[:, None] * horizon)
            ahead = sa - half_l - s - ego.length / 2
            lateral = np.abs(da - d_target) < half_w + ego.width / 2 + 0.5
            ok = lateral & (ahead > -ego.length) & (ahead < 60)
            if ok.any():
                i = int(np.argmin(np.where(ok, ahead, np.inf)))
                g = max(float(ahead[i]), 0.0)
                if g < gap:
                    moving_along = horizon == 0.0 and abs(actors[i].yaw - ego.yaw) % (2 * math.pi) < 0.5
                    gap, v_lead = g, float(speeds[i]) if moving_along else 0.0
        return gap, v_lead

    def run_step(self, input_data: dict, timestamp: float) -> Control:
        sim, ego = self.sim, self.sim.ego
        s_arr, d_arr, _ = sim.path.frenet(ego.xy)
        s = float(s_arr[0])
        d_target = 0.0
        blockers, nudge = [], 0.0
        for a in sim.actors:  # pass obstacles the scenario means to be passed (parked cars, cones, bicycles)
            if a.params.get("pass") and self.overtake:
                sa_arr, da_arr, _ = sim.path.frenet(a.xy)
                sa, da = float(sa_arr[0]), float(da_arr[0])
                if -12.0 < sa - s < 30.0 and abs(da) - a.width / 2 < ego.width / 2 + 0.3:
                    blockers.append((sa, a.speed))  # it reaches into the band the ego sweeps in its lane
                    # the shift left that clears it, or -inf when it needs the other lane
                    need = da - a.width / 2 - ego.width / 2 - NUDGE_CLEARANCE if da > 0 else -math.inf
                    nudge = min(nudge, need)
        if not blockers:
            self._committed = False
        elif sim.scenario.road != "twoway":
            d_target = -LANE_WIDTH
        elif nudge >= NUDGE_MAX and not self._committed:
            d_target = nudge  # a door or a bicycle at the lane's edge: pass it inside the own lane
        elif self._committed or self._opposite_clear(
                s, max(b for b, _ in blockers) + PASS_CLEARANCE + PASS_SPEED * PASS_RETURN_TIME + ego.length / 2,
                max(v for _, v in blockers)):
            d_target, self._committed = -LANE_WIDTH, True
        for a in sim.actors:
            if a.behaviour == "emergency" and a.params.get("active"):  # give way: move to the left lane
                sa = float(sim.path.frenet(a.xy)[0][0])
                if -45.0 < sa - s < 8.0:
                    d_target = -LANE_WIDTH
            if a.behaviour == "oncoming":  # keep right of cars cutting into the lane
                sa = float(sim.path.frenet(a.xy)[0][0])
                if -8.0 < sa - s < 40.0:
                    d_target = max(d_target, GIVE_WAY_SHIFT)
        if self.brakes and float(d_arr[0]) > LANE_WIDTH / 2 + 0.5 and self._lane_busy(s):
            return Control(steer=0.0, throttle=0.0, brake=1.0)  # out of a parking slot only into a free lane
        ld = max(4.0, ego.speed * 1.0 + 3.0)
        if self._conflicts:  # a shorter look-ahead cuts the turn less, so the ego meets a crossing flow where planned
            ld = max(3.0, 0.5 * ego.speed + 2.0)
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
        for _, c in self._conflicts:  # wait for a gap in the crossing flow before its lane
            if not self._flow_go and s < c.s_in:
                if s > c.s_in - FLOW_HOLD_BACK - 15.0 and self._flow_clear(s):
                    self._flow_go = True
                else:
                    gap, v_lead = min(gap, max(c.s_in - FLOW_HOLD_BACK - s, 0.0)), 0.0
        cruise = PASS_SPEED if self._committed else self.cruise
        acc = idm_accel(ego.speed, cruise, gap, v_lead)
        if (self._committed or self._flow_go) and not math.isfinite(gap) and ego.speed < cruise:
            acc = max(acc, PASS_ACCEL)  # clear the opposite lane briskly, as the gap acceptance assumed
        if gap < 1.0 and ego.speed < 1.0:
            acc = -BRAKE_DECEL
        if acc >= 0:
            return Control(steer=steer, throttle=float(min(acc / ENGINE_ACCEL, 0.75)), brake=0.0)
        return Control(steer=steer, throttle=0.0, brake=float(min(-acc / BRAKE_DECEL, 1.0)))


class _MeasuredSim:
    """The simulator as the expert sees it through noisy sensors: its own ego state replaced by the measured one."""

    def __init__(self, sim, ego):
        self._sim, self.ego = sim, ego

    def __getattr__(self, name):
        return getattr(self._sim, name)


class ExpertAgent:
    """``agent.planner=expert``: the scripted expert as a privileged leaderboard agent (no cameras), under the
    run's sensor faults and latency (bench2drive/robustness.py), as an upper-bound row.

    Without a state fault it reads the simulator's exact ego state; with GNSS / speed / compass noise it drives
    on the ego state measured by those sensors (the rest of the world stays privileged). With latency, the
    control decided from the observation of tick t is applied at tick t + k (the previous one meanwhile).
    """

    def __init__(self, perturbations, *, cruise: float = 8.0):
        self.expert = ScriptedExpert(cruise=cruise)
        self.perturbations = perturbations
        self.step = -1
        self.control = Control(brake=1.0)  # before a decision has acted: stand still

    def setup(self, path_to_conf_file: str = "") -> None:
        from bench2drive.robustness import ActionDelay

        save_name = path_to_conf_file.rsplit("+", 1)[1] if "+" in path_to_conf_file else path_to_conf_file
        self.perturb = self.perturbations.for_route(save_name, [], frame_interval_s=0.0)
        self.delay = ActionDelay()

    def attach(self, sim) -> None:
        self.sim = sim
        self.expert.attach(sim)

    def set_global_plan(self, gps, world) -> None:
        pass

    def destroy(self) -> None:
        pass

    def sensors(self) -> list[dict]:
        from bench2drive.rig import other_sensors

        return other_sensors()

    def _measured_ego(self, input_data: dict):
        from bench2drive.agent import localize
        from bench2drive.geo import gnss_to_local
        from bench2drive.sim.dynamics import EgoState

        xy, yaw, speed, _ = localize(input_data, gnss_to_local)  # the simulator's GNSS reference is (0, 0)
        true = self.sim.ego
        return EgoState(x=float(xy[0]), y=float(xy[1]), yaw=yaw, speed=speed, yaw_rate=true.yaw_rate,
                        accel_world=true.accel_world)

    def run_step(self, input_data: dict, timestamp: float) -> Control:
        self.step += 1
        fault = self.perturbations.fault.name
        if fault in ("gnss_noise", "speed_noise", "compass_noise"):
            measured = self.perturb.state(input_data, self.step)
            self.expert.sim = _MeasuredSim(self.sim, self._measured_ego(measured))
            try:
                decided = self.expert.run_step(measured, timestamp)
            finally:
                self.expert.sim = self.sim
        else:
            decided = self.expert.run_step(input_data, timestamp)
        self.delay.push(decided, self.step + self.perturbations.latency.ticks(0.0))
        due = self.delay.due(self.step)
        if due is not None:
            self.control = due
        return self.control
