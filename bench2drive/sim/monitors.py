"""Infraction monitors and route completion with the leaderboard's rules and constants.

Each monitor mirrors a criterion of scenario_runner/srunner/scenariomanager/scenarioatomics/atomic_criteria.py
(or timer.RouteTimeoutBehavior) as leaderboard/scenarios/route_scenario.py sets it up, on the simulator's
geometry, and emits ``TrafficEvent``s with the same types and message formats.
"""

from __future__ import annotations

import math

import numpy as np

from bench2drive.results import TrafficEvent
from bench2drive.sim.dynamics import EgoState
from bench2drive.sim.scenarios import LANE_WIDTH, Actor, RoadPath, SimScenario

COMPLETION_WINDOW, COMPLETION_DISTANCE, COMPLETION_PERCENTAGE = 2, 10.0, 99  # RouteCompletionTest
COLLISION_RADIUS, COLLISION_MAX_ID_TIME, COLLISION_EPSILON = 5.0, 5.0, 0.1  # CollisionTest
INROUTE_MAX, INROUTE_WINDOW, INROUTE_MAX_PERCENTAGE = 30.0, 5, 30  # InRouteTest(offroad_max=30)
BLOCKED_MIN_SPEED, BLOCKED_MAX_TIME = 0.1, 60.0  # ActorBlockedTest in route_scenario.py
MINSPEED_CHECKPOINTS, MINSPEED_WINDOW = 20, 2  # MinimumSpeedRouteTest(checkpoints=20)
STOP_PROXIMITY, STOP_SPEED = 4.0, 0.1  # RunningStopTest
OUTSIDE_ALLOWED = 0.5  # OutsideRouteLanesTest.ALLOWED_OUT_DISTANCE
TIMEOUT_MIN, TIMEOUT_ROUTE_PERC = 300.0, 10  # timer.RouteTimeoutBehavior
TRIGGER_DISTANCE = 2.0  # route_parser.py DIST_THRESHOLD, the ScenarioTriggerer's radius


def box_corners(xy: np.ndarray, yaw: np.ndarray, length: np.ndarray, width: np.ndarray) -> np.ndarray:
    """[N,4,2] corners of oriented boxes."""
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = length / 2, width / 2
    local = np.stack([np.stack([hl, hw], -1), np.stack([hl, -hw], -1), np.stack([-hl, -hw], -1),
                      np.stack([-hl, hw], -1)], axis=1)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], axis=1)  # [N,2,2]
    return xy[:, None, :] + np.einsum("nij,nkj->nki", rot, local)


def boxes_overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Separating-axis test of one box [4,2] against boxes [N,4,2]; returns [N] bool."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    a = np.broadcast_to(box, boxes.shape)
    axes = np.concatenate([a[:, 1:3] - a[:, 0:2], boxes[:, 1:3] - boxes[:, 0:2]], axis=1)  # [N,4,2]
    pa = np.einsum("nkj,naj->nak", a, axes)
    pb = np.einsum("nkj,naj->nak", boxes, axes)
    sep = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
    return ~sep.any(-1)


def _loc(xy) -> str:
    return f"(x={round(float(xy[0]), 3)}, y={round(float(xy[1]), 3)}, z=0.0)"


class RouteMonitors:
    """All route criteria of one run; call ``update`` once per tick, then ``events(final=True)``."""

    def __init__(self, path: RoadPath, scenario: SimScenario):
        self.path, self.sc = path, scenario
        n = len(path.s)
        self.accum_perc = path.s / path.length * 100
        self.fwd = np.stack([np.cos(path.yaw), np.sin(path.yaw)], axis=1)
        # completion
        self.c_index, self.completion, self.c_success = 0, 0.0, False
        # collisions
        self.col_id, self.col_time, self.col_loc = None, None, None
        self.collisions: list[TrafficEvent] = []
        # in-route
        self.ir_index, self.ir_out_dist, self.ir_safe, self.deviated = 0, 0.0, True, None
        # blocked
        self.last_valid_t, self.blocked = 0.0, None
        # lights and stops
        self.red_events: list[TrafficEvent] = []
        self.light_done: set[int] = set()
        self.stop_events: list[TrafficEvent] = []
        self.stop_state: dict[int, bool] = {}
        # outside route lanes
        self.wrong_dist, self.total_dist, self.prev_s = 0.0, 0.0, 0.0
        # min speed
        self.ms_index, self.ms_current, self.ms_values = 0, 0.0, []
        self.ms_mean, self.ms_actor, self.ms_points = 0.0, 0.0, 0
        self.ms_checkpoint = path.length / MINSPEED_CHECKPOINTS
        # route timeout
        self.t_index, self.timeout_value, self.timed_out = 0, TIMEOUT_MIN, False
        # YieldToEmergencyVehicleTest: decided when the scenario ends (the ego passes yield_end_s)
        self.yield_event: TrafficEvent | None = None
        self.yield_done = False
        self._last_state: tuple[EgoState, list[Actor]] | None = None
        # the route's scenario: ScenarioTriggerer start, its end condition, ScenarioTimeout + ScenarioTimeoutTest
        self.scenario_start: float | None = None
        self.scenario_end: float | None = None
        self.scenario_timeout_event: TrafficEvent | None = None
        self.blocked_active = True  # ScenarioTimeout switches ActorBlockedTest off while it runs
        self._end_mark: float | None = None  # time the ego came near ('near') / s it got in front ('past')
        self.n = n

    def _advance(self, index: int, window: int, xy: np.ndarray) -> int:
        hi = min(index + window + 1, self.n)
        idx = np.arange(index, hi)
        passed = ((xy - self.path.xy[idx]) * self.fwd[idx]).sum(1) > 0
        return int(idx[passed][-1]) if passed.any() else index

    def update(self, ego: EgoState, actors: list[Actor], t: float, prev_ego: EgoState) -> None:
        self._last_state = (ego, actors)
        xy = ego.xy
        # RouteCompletionTest
        if not self.c_success:
            self.c_index = self._advance(self.c_index, COMPLETION_WINDOW, xy)
            self.completion = round(float(self.accum_perc[self.c_index]), 2)
            if self.completion > COMPLETION_PERCENTAGE and np.linalg.norm(xy - self.path.xy[-1]) < COMPLETION_DISTANCE:
                self.c_success, self.completion = True, 100.0
        # RouteTimeoutBehavior
        new = self._advance(self.t_index, 3, xy)
        if new > self.t_index:
            self.timeout_value += (self.path.s[new] - self.path.s[self.t_index]) / (
                self.sc.speed_limit_kmh / 3.6 * TIMEOUT_ROUTE_PERC / 100)
            self.t_index = new
        if t > self.timeout_value:
            self.timed_out = True
        self.check_collisions(ego, actors, t)
        self._in_route(xy)
        s_now, d_now, _ = self.path.frenet(xy)
        s_now, d_now = float(s_now[0]), float(d_now[0])
        self._scenario_life(ego, actors, t, s_now)
        if self.blocked_active:  # ActorBlockedTest, switched off while a ScenarioTimeout runs
            if ego.speed >= BLOCKED_MIN_SPEED:
                self.last_valid_t = t
            elif t - self.last_valid_t > BLOCKED_MAX_TIME and self.blocked is None:
                self.blocked = TrafficEvent("VEHICLE_BLOCKED", f"Agent got blocked at {_loc(xy)}")
        self._lights(ego, prev_ego, t)
        self._stops(ego, s_now, d_now)
        self._outside_lanes(s_now, d_now, ego)
        self._min_speed(ego, actors)
        if self.sc.yield_ev is not None and not self.yield_done and s_now >= self.sc.yield_end_s:
            self.yield_check(ego, actors)

    def _scenario_life(self, ego: EgoState, actors: list[Actor], t: float, s: float) -> None:
        """Start, end and timeout of the route's scenario, as its behaviour tree and ScenarioTimeout run it.

        It starts when the ego's route position comes within TRIGGER_DISTANCE of the trigger point; a scenario
        with a ScenarioTimeout then switches ActorBlockedTest off (AC_SwitchActorBlockedTest) until it ends,
        either by its own end condition or ``timeout`` s after the start; the switch back restarts the blocked
        timer. ScenarioTimeoutTest records one SCENARIO_TIMEOUT when the scenario ended by timing out.
        """
        sc = self.sc
        if self.scenario_start is None:
            if s < sc.start_s - TRIGGER_DISTANCE:
                return
            self.scenario_start = t
            if sc.timeout is not None:
                self.blocked_active = False
            return
        if self.scenario_end is not None:
            return
        ended, timed_out = False, False
        if sc.timeout is not None and t - self.scenario_start > sc.timeout:
            ended = timed_out = True
        elif sc.end_s is not None and s >= sc.end_s:
            ended = True
        elif sc.end_actor is not None:
            other = next((a for a in actors if a.id == sc.end_actor), None)
            if sc.end_mode == "near":
                if self._end_mark is None and other is not None and np.linalg.norm(other.xy - ego.xy) < sc.end_near:
                    self._end_mark = t
                ended = self._end_mark is not None and t - self._end_mark > sc.end_after
            elif sc.end_mode == "past":
                if self._end_mark is None and (other is None or s > float(self.path.frenet(other.xy)[0][0])):
                    self._end_mark = s
                ended = self._end_mark is not None and s - self._end_mark >= sc.end_after
        if not ended:
            return
        self.scenario_end = t
        if sc.timeout is not None:
            self.blocked_active, self.last_valid_t = True, t
        if timed_out:
            self.scenario_timeout_event = TrafficEvent("SCENARIO_TIMEOUT", "Agent timed out a scenario")

    def yield_check(self, ego: EgoState, actors: list[Actor]) -> None:
        """FAILURE when the ego is still ahead of the emergency vehicle (ev forward . (ego - ev) > 0)."""
        self.yield_done = True
        ev = next((a for a in actors if a.id == self.sc.yield_ev), None)
        if ev is None or not ev.params.get("active"):
            return
        if np.dot([math.cos(ev.yaw), math.sin(ev.yaw)], ego.xy - ev.xy) > 0:
            self.yield_event = TrafficEvent("YIELD_TO_EMERGENCY_VEHICLE",
                                            "Agent failed to yield to an emergency vehicle")

    def check_collisions(self, ego: EgoState, actors: list[Actor], t: float) -> None:
        """CollisionTest on the current overlap of the ego with ``actors`` (one event per new collision)."""
        if self.col_loc is not None and np.linalg.norm(ego.xy - self.col_loc) > COLLISION_RADIUS:
            self.col_loc = None
        if self.col_id is not None and t - self.col_time > COLLISION_MAX_ID_TIME:
            self.col_id = None
        actors = [a for a in actors if not a.params.get("drive_over")]  # flat debris: driven over, no collision
        if not actors:
            return
        ego_box = box_corners(ego.xy[None], np.array([ego.yaw]), np.array([ego.length]), np.array([ego.width]))[0]
        boxes = box_corners(np.stack([a.xy for a in actors]), np.array([a.yaw for a in actors]),
                         np.array([a.length for a in actors]), np.array([a.width for a in actors]))
        for i in np.nonzero(boxes_overlap(ego_box, boxes))[0]:
            other = actors[i]
            if other.id == self.col_id:
                continue
            if self.col_loc is not None and np.linalg.norm(ego.xy - self.col_loc) <= COLLISION_RADIUS:
                continue
            if ego.speed < COLLISION_EPSILON:  # not the ego's fault
                continue
            self.col_time, self.col_loc, self.col_id = t, ego.xy.copy(), other.id
            kind = {"vehicle": "COLLISION_VEHICLE", "walker": "COLLISION_PEDESTRIAN", "static": "COLLISION_STATIC"}
            self.collisions.append(TrafficEvent(kind[other.kind], f"Agent collided against object with "
                                                f"type={other.type_id} and id={other.id} at {_loc(ego.xy)}"))

    def _in_route(self, xy: np.ndarray) -> None:
        if self.deviated is not None:
            return
        hi = min(self.ir_index + INROUTE_WINDOW + 1, self.n)
        dist = np.linalg.norm(self.path.xy[self.ir_index:hi] - xy, axis=1)
        closest = self.ir_index + int(len(dist) - 1 - np.argmin(dist[::-1]))  # '<=': the last minimum wins
        shortest = float(dist.min())
        off = True
        if shortest < INROUTE_MAX:
            off = False
            self.ir_safe = shortest < INROUTE_MAX / 2
        if closest != self.ir_index:
            if not self.ir_safe:
                self.ir_out_dist += self.path.s[closest] - self.path.s[self.ir_index]
                if 100 * self.ir_out_dist / self.path.length > INROUTE_MAX_PERCENTAGE:
                    off = True
            self.ir_index = closest
        if off:
            self.deviated = TrafficEvent("ROUTE_DEVIATION", f"Agent deviated from the route at {_loc(xy)}")

    def _lights(self, ego: EgoState, prev: EgoState, t: float) -> None:
        # RunningRedLightTest: the segment behind the centre (0.8 to 1 + extent) crossing the stop line on red
        for light in self.sc.lights:
            if light.id in self.light_done or not light.is_red(t):
                continue
            tail_now = ego.xy - ego.forward * 0.8 * ego.length / 2
            tail_prev = prev.xy - prev.forward * 0.8 * prev.length / 2
            s_now = float(self.path.frenet(tail_now)[0][0])
            s_prev = float(self.path.frenet(tail_prev)[0][0])
            if s_prev < light.s <= s_now:
                lxy = self.path.pose(light.s, LANE_WIDTH)[0][0]
                self.red_events.append(TrafficEvent("TRAFFIC_LIGHT_INFRACTION",
                                                    f"Agent ran a red light {light.id} at {_loc(lxy)}"))
                self.light_done.add(light.id)

    def _stops(self, ego: EgoState, s: float, d: float) -> None:
        front = s + ego.length / 2
        for stop in self.sc.stops:
            affected = stop.s - STOP_PROXIMITY <= front <= stop.s + ego.length and abs(d) < LANE_WIDTH
            stopped = self.stop_state.get(stop.id)
            if affected:
                if stopped is None:
                    self.stop_state[stop.id] = False
                if ego.speed < STOP_SPEED:
                    self.stop_state[stop.id] = True
            elif stopped is not None and stopped is not True and front > stop.s:
                sxy = self.path.pose(stop.s, LANE_WIDTH)[0][0]
                self.stop_events.append(TrafficEvent("STOP_INFRACTION",
                                                     f"Agent ran a stop with id={stop.id} at {_loc(sxy)}"))
                self.stop_state[stop.id] = True  # one infraction per stop

    def _outside_lanes(self, s: float, d: float, ego: EgoState) -> None:
        ds = max(0.0, s - self.prev_s)
        self.prev_s = max(self.prev_s, s)
        if ds <= 0:
            return
        self.total_dist += ds
        exempt = any(a <= s <= b for a, b in self.sc.outside_lane_exempt)
        # route lane (d ~ 0) and the same-direction lane to its left are driving lanes of the route's road;
        # the Traffic_Signs routes have a single lane (the left one ends at the junction)
        left_ok = self.sc.junction is None
        lo = (-1.5 * LANE_WIDTH if left_ok else -0.5 * LANE_WIDTH) - OUTSIDE_ALLOWED
        # OutsideRouteLanesTest accepts parking lanes as well as driving lanes: the lane to the right of the
        # straight and two-way roads (where cars park)
        hi = (1.5 if self.sc.road in ("straight", "twoway") else 0.5) * LANE_WIDTH + OUTSIDE_ALLOWED
        outside = not lo <= d <= hi
        if self.sc.road == "twoway" and not self.sc.wrong_lane_allowed:
            # the left lane runs the other way: the ego's centre in it is a wrong-direction lane
            outside = outside or d < -0.5 * LANE_WIDTH
        if not exempt and outside:
            self.wrong_dist += ds

    def _min_speed(self, ego: EgoState, actors: list[Actor]) -> None:
        self.ms_index = self._advance(self.ms_index, MINSPEED_WINDOW, ego.xy)
        if self.path.s[self.ms_index] - self.ms_current > self.ms_checkpoint:
            self._checkpoint()
            self.ms_current = self.path.s[self.ms_index]
            self.ms_mean = self.ms_actor = 0.0
            self.ms_points = 0
        bg = [a.speed for a in actors if a.role == "background" and a.kind == "vehicle"]
        if bg:
            self.ms_mean += sum(bg) / len(bg)
            self.ms_actor += ego.speed
            self.ms_points += 1

    def _checkpoint(self) -> None:
        if self.ms_points > 0 and self.ms_mean:
            value = round(self.ms_actor / self.ms_points / (self.ms_mean / self.ms_points) * 100, 2)
        else:
            value = 100
        self.ms_values.append(TrafficEvent("MIN_SPEED_INFRACTION",
                                           f"Average speed is {value}% of the surrounding traffic's one",
                                           {"percentage": value}))

    def events(self) -> list[TrafficEvent]:
        """Events at the end of the route, in the criteria order of route_scenario._create_test_criteria."""
        if self.path.s[self.ms_index] / self.path.length > 0.95:
            self._checkpoint()  # MinimumSpeedRouteTest.terminate records the last checkpoint
        if self.sc.yield_ev is not None and not self.yield_done and self._last_state is not None:
            self.yield_check(*self._last_state)  # the route ended before the scenario did
        out = [TrafficEvent("ROUTE_COMPLETION", f"Agent has completed {self.completion} of the route",
                            {"route_completed": self.completion})]
        if self.wrong_dist > 0:
            pct = self.wrong_dist / max(self.total_dist, 1e-9) * 100
            out.append(TrafficEvent("OUTSIDE_ROUTE_LANES_INFRACTION",
                                    f"Agent went outside its route lanes for about {round(self.wrong_dist, 3)} "
                                    f"meters ({round(pct, 2)}% of the completed route)",
                                    {"percentage": pct, "distance": self.wrong_dist}))
        out += self.collisions + self.red_events + self.stop_events + self.ms_values
        if self.yield_event is not None:
            out.append(self.yield_event)
        if self.scenario_timeout_event is not None:
            out.append(self.scenario_timeout_event)
        if self.deviated is not None:
            out.append(self.deviated)
        if self.blocked is not None:
            out.append(self.blocked)
        return out

    @property
    def terminated(self) -> bool:
        """The route ends early on success, deviation or blocking (terminate_on_failure criteria)."""
        return self.c_success or self.deviated is not None or self.blocked is not None
