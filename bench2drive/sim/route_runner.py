"""The embedded closed-loop simulator: runs leaderboard agents on routes and writes the leaderboard's files.

``run_routes`` is the counterpart of leaderboard_evaluator.py: one results/checkpoint JSON for a list of routes
(resumable), ``<save_path>/<save_name>/metric_info.json`` per route, 20 Hz ticks.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from bench2drive.geo import ROAD_OPTION, local_to_gnss
from bench2drive.progress import RunProgress
from bench2drive.results import (
    compute_global_statistics,
    compute_route_statistics,
    crashed_route_record,
    empty_results,
    load_results,
    new_route_record,
    resume_index,
    save_results,
    set_entry_status,
)
from bench2drive.rig import CameraSpec
from bench2drive.routes import Route
from bench2drive.sim.dynamics import (
    PHYSICS_HZ,
    EgoState,
    step_actor_flow,
    step_actors,
    step_ego,
    step_opposite_flow,
)
from bench2drive.sim.monitors import RouteMonitors, box_corners, boxes_overlap
from bench2drive.sim.scenarios import CONTROL_LOSS_RADIUS, RoadPath, build_scenario
from bench2drive.sim.sensors import input_data
from eupe.atomic_io import atomic_write_text

# Bench2Drive's scenario_manager.py raises TickRuntimeError once a route passes 4000 ticks (200 s at 20 Hz); the
# evaluator records it as "Failed - TickRuntime". Since RouteTimeoutBehavior allows at least 300 s and a
# ScenarioTimeout 240 s, neither route nor scenario timeouts can happen under this cap (only with a larger one,
# as the plain CARLA leaderboard 2.0 has).
MAX_TICKS = 4000
TICK_RUNTIME = "TickRuntime"  # leaderboard_evaluator.py's crash message for TickRuntimeError


class Agent(Protocol):
    def setup(self, path_to_conf_file: str) -> None: ...
    def set_global_plan(self, global_plan_gps, global_plan_world_coord) -> None: ...
    def run_step(self, input_data: dict, timestamp: float): ...
    def destroy(self) -> None: ...


@dataclass
class Location:
    x: float
    y: float
    z: float = 0.0


@dataclass
class Rotation:
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0


@dataclass
class Transform:
    """Stand-in for carla.Transform in the global plan (same attribute names)."""

    location: Location
    rotation: Rotation


def global_plan(path: RoadPath, junction: tuple[float, float] | None, *, lat_ref: float = 0.0,
                lon_ref: float = 0.0) -> tuple[list, list]:
    """(gps plan, world plan) at 1 m with RoadOption values: RIGHT/LEFT inside the junction, LANEFOLLOW elsewhere."""
    cmds = np.full(len(path.s), ROAD_OPTION["LANEFOLLOW"])
    if junction is not None:
        inside = (path.s >= junction[0]) & (path.s <= junction[1])
        turn = np.unwrap(path.yaw)[-1] - path.yaw[0]
        cmds[inside] = ROAD_OPTION["RIGHT"] if turn > 0.3 else (ROAD_OPTION["LEFT"] if turn < -0.3
                                                                  else ROAD_OPTION["STRAIGHT"])
    ll = local_to_gnss(path.xy, lat_ref, lon_ref)
    world = [(Transform(Location(float(x), float(y)), Rotation(yaw=math.degrees(float(yw)))), int(c))
             for (x, y), yw, c in zip(path.xy, path.yaw, cmds, strict=False)]
    gps = [({"lat": float(a), "lon": float(b), "z": 0.0}, int(c)) for (a, b), c in zip(ll, cmds, strict=False)]
    return gps, world


def metric_info_entry(ego: EgoState) -> dict:
    """What AutonomousAgent.get_metric_info returns for the hero (CARLA units: angular velocity in deg/s)."""
    fwd, right = ego.forward, ego.right
    return {"acceleration": [ego.accel_world[0], ego.accel_world[1], 0.0],
            "angular_velocity": [0.0, 0.0, math.degrees(ego.yaw_rate)],
            "forward_vector": [float(fwd[0]), float(fwd[1]), 0.0],
            "right_vector": [float(right[0]), float(right[1]), 0.0],
            "location": [ego.x, ego.y, 0.0],
            "rotation": [0.0, 0.0, math.degrees(ego.yaw)]}


@dataclass
class SimSettings:
    rig: Sequence[CameraSpec] = ()
    max_ticks: int = MAX_TICKS
    render: bool = True
    renderer: str = "raster"  # raster (RAP rasterizer) | simple (bench2drive.sim.sensors.render_camera)
    seed: int = 0


class ClosedLoopSim:
    """One route: ego, actors, monitors. ``tick(control)`` advances 1/20 s."""

    def __init__(self, route: Route, settings: SimSettings):
        self.route, self.settings = route, settings
        self.path = RoadPath(route.waypoints)
        self.scenario = build_scenario(route, self.path, seed=settings.seed)
        self.actors = self.scenario.actors
        s0, d0 = self.scenario.ego_start or (0.0, 0.0)
        xy0, yaw0 = self.path.pose(s0, d0)
        self.ego = EgoState(x=float(xy0[0, 0]), y=float(xy0[0, 1]), yaw=float(yaw0[0]))
        self.monitors = RouteMonitors(self.path, self.scenario)
        self.frame, self.dt = 0, 1.0 / PHYSICS_HZ
        self._scenario_cleared = False
        self._rng = np.random.default_rng(settings.seed)
        self._next_id = 5000  # ids of actors spawned during the run (opposite flows)
        if settings.renderer not in ("raster", "simple"):
            raise ValueError(f"unknown renderer '{settings.renderer}'; use 'raster' or 'simple'")
        self._raster_models = None
        if settings.render and settings.renderer == "raster" and settings.rig:
            from bench2drive.sim.sensors import raster_camera_models

            self._raster_models = raster_camera_models(list(settings.rig))

    @property
    def time(self) -> float:
        return self.frame * self.dt

    def sensors(self) -> dict:
        lights = [(lt.s, lt.is_red(self.time)) for lt in self.scenario.lights]
        return input_data(self.frame, list(self.settings.rig), self.ego, self.actors, self.path,
                          render=self.settings.render, renderer=self.settings.renderer,
                          raster_models=self._raster_models, light_states=lights)

    def tick(self, steer: float, throttle: float, brake: float) -> None:
        prev = self.ego
        for xy, th_m, th_s, st_m, st_s in self.scenario.control_noise:  # ControlLoss: AddNoiseToRouteEgo
            if np.linalg.norm(self.ego.xy - xy) < CONTROL_LOSS_RADIUS:
                throttle = float(np.clip(throttle + self._rng.normal(th_m, th_s), 0.0, 1.0))
                steer = float(np.clip(steer + self._rng.normal(st_m, st_s), -1.0, 1.0))
        ego = step_ego(self.ego, steer, throttle, brake, self.dt)
        flow = self.scenario.opposite_flow
        if flow is not None and not flow.stopped:
            new = step_opposite_flow(flow, self.actors, ego, self.path, self.time, self.scenario.speed_limit_kmh,
                                     self._rng, self._next_id)
            if new is not None:
                self.actors.append(new)
                self._next_id += 1
            self.scenario.wrong_lane_allowed = flow.active  # SwitchWrongDirectionTest(False)
        if self.monitors.scenario_start is not None:  # ActorFlows run from the scenario's start to its end
            for af in self.scenario.actor_flows:
                new = step_actor_flow(af, self.actors, self._rng, self._next_id)
                self.actors.extend(new)
                self._next_id += len(new)
        step_actors(self.actors, ego, self.path, self.time, self.dt)
        self.frame += 1
        if self._hits_vehicle(ego):
            # a car does not drive through another one: the crash is recorded and stops the ego where it was
            # (props like cones are knocked away and do not stop it)
            self.monitors.check_collisions(ego, self.actors, self.time)
            ego = EgoState(x=prev.x, y=prev.y, yaw=prev.yaw, speed=0.0)
        self.ego = ego
        self.monitors.update(self.ego, self.actors, self.time, prev)
        self._scenario_events()

    def _scenario_events(self) -> None:
        """Scenario start sets the scenario-timed lights; its end destroys its actors (ActorDestroy)."""
        mon = self.monitors
        if mon.scenario_start is not None:
            for light in self.scenario.lights:
                if light.relative and light.t0 is None:
                    light.t0 = mon.scenario_start
        if mon.scenario_end is not None and not self._scenario_cleared:
            self._scenario_cleared = True
            self.actors[:] = [a for a in self.actors if a.role != "scenario"]
            for af in self.scenario.actor_flows:
                af.stopped = True
            flow = self.scenario.opposite_flow
            if flow is not None:  # the flow stops; SwitchWrongDirectionTest(True) unless the scenario's quirk
                flow.stopped = True
                self.scenario.wrong_lane_allowed = flow.active and flow.keep_switch_off

    def _hits_vehicle(self, e: EgoState) -> bool:
        cars = [a for a in self.actors if a.kind == "vehicle"]
        if not cars:
            return False
        box = box_corners(e.xy[None], np.array([e.yaw]), np.array([e.length]), np.array([e.width]))[0]
        boxes = box_corners(np.stack([a.xy for a in cars]), np.array([a.yaw for a in cars]),
                         np.array([a.length for a in cars]), np.array([a.width for a in cars]))
        return bool(boxes_overlap(box, boxes).any())


def run_route(route: Route, agent: Agent, *, record: dict, index: int, save_path: Path,
              settings: SimSettings, on_sim: Callable[[ClosedLoopSim], None] | None = None,
              progress: RunProgress | None = None) -> dict:
    """Drive one route with ``agent``; fills and returns ``record`` and writes metric_info.json."""
    t_start = time.time()
    sim = ClosedLoopSim(route, settings)
    bar = (progress or RunProgress(enabled=False)).route(record["route_id"], settings.max_ticks)
    if on_sim is not None:
        on_sim(sim)  # lets privileged (expert) controllers see the simulator
    gps, world = global_plan(sim.path, sim.scenario.junction)
    metric_info: dict[int, dict] = {}
    failure = ""
    # agent errors are the evaluator's "Agent crashed" (the route keeps its criteria so far, the run goes on);
    # errors of the simulator itself propagate to run_routes as a simulation crash
    try:
        agent.set_global_plan(gps, world)
    except Exception:
        print(f"route {route.id}: the agent crashed:\n{traceback.format_exc()}", flush=True)
        failure = "Agent crashed"
    while not failure and sim.frame < settings.max_ticks:
        data = sim.sensors()
        try:
            control = agent.run_step(data, sim.time)
        except Exception:
            print(f"route {route.id}: the agent crashed:\n{traceback.format_exc()}", flush=True)
            failure = "Agent crashed"
            break
        sim.tick(control.steer, control.throttle, control.brake)
        metric_info[sim.frame - 1] = metric_info_entry(sim.ego)
        bar.update(sim)
        if sim.monitors.terminated or sim.monitors.timed_out:
            break
    bar.close()
    timed_out = sim.monitors.timed_out
    if not failure and not timed_out and not sim.monitors.terminated and sim.frame >= settings.max_ticks:
        failure = TICK_RUNTIME
    out_dir = save_path / record["save_name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metric_info.json", json.dumps(metric_info, indent=4))
    compute_route_statistics(record, index=index, events=sim.monitors.events(), route_length=sim.path.length,
                             duration_game=sim.time, duration_system=time.time() - t_start,
                             timed_out=timed_out and not failure, failure_message=failure)
    return record


def route_name(route: Route, repetition: int = 0) -> str:
    return f"RouteScenario_{route.id}_rep{repetition}"


def run_routes(routes: Sequence[Route], make_agent: Callable[[str], Agent], *, checkpoint: str | Path,
               save_path: str | Path, resume: bool = True, settings: SimSettings | None = None,
               max_routes: int | None = None, on_sim: Callable[[ClosedLoopSim], None] | None = None,
               progress: RunProgress | None = None) -> dict:
    """Run ``routes`` like leaderboard_evaluator.run: resumable checkpoint JSON, global statistics at the end.

    ``make_agent(save_name)`` builds a set-up agent per route. ``max_routes`` stops after that many routes of
    this call (an interrupted run). ``progress`` shows bars over routes and per route. Returns the results dict.
    """
    progress = progress or RunProgress(enabled=False)
    settings = settings or SimSettings()
    checkpoint, save_path = Path(checkpoint), Path(save_path)
    names = [route_name(r) for r in routes]
    results, start = empty_results(), 0
    if resume:
        data = load_results(checkpoint, strict=False)
        idx = resume_index(data, names)
        if idx is not None:
            results, start = data, idx
            results["_checkpoint"]["records"] = results["_checkpoint"]["records"][:idx]
    results["_checkpoint"]["progress"] = [start, len(routes)]
    save_results(checkpoint, results)
    progress.start(len(routes), start)
    try:
        return _run_from(routes, make_agent, names, results, start, checkpoint=checkpoint, save_path=save_path,
                         settings=settings, max_routes=max_routes, on_sim=on_sim, progress=progress)
    finally:
        progress.close()


def _run_from(routes, make_agent, names, results, start, *, checkpoint, save_path, settings, max_routes, on_sim,
              progress) -> dict:
    done = 0
    for i in range(start, len(routes)):
        if max_routes is not None and done >= max_routes:
            return results
        r = routes[i]
        stamp = datetime.now().strftime("%m_%d_%H_%M_%S")
        record = new_route_record(route_id=names[i], scenario_name=r.scenario_name, weather_id=0,
                                  save_name=f"{names[i]}_{r.town}_{r.scenario_name}_0_{stamp}", town_name=r.town)
        records = results["_checkpoint"]["records"]
        records[i:] = [record]
        try:
            agent = make_agent(record["save_name"])
        except Exception:  # the evaluator's "Agent couldn't be set up": record it, go on with the next route
            print(f"route {r.id}: the agent could not be set up:\n{traceback.format_exc()}", flush=True)
            crashed_route_record(record, index=i, kind="Agent_init")
            agent = None
        if agent is not None:
            try:
                run_route(r, agent, record=record, index=i, save_path=save_path, settings=settings, on_sim=on_sim,
                          progress=progress)
            except Exception:  # the world could not be built or stepped: "Simulation crashed", stop the run
                print(f"route {r.id}: the simulation crashed:\n{traceback.format_exc()}", flush=True)
                _, entry = crashed_route_record(record, index=i, kind="Simulation")
                results["_checkpoint"]["progress"] = [i + 1, len(routes)]
                set_entry_status(results, entry)
                save_results(checkpoint, results)
                return results
            finally:
                agent.destroy()
        results["_checkpoint"]["progress"] = [i + 1, len(routes)]
        save_results(checkpoint, results)
        progress.route_done(record)
        done += 1
    compute_global_statistics(results, len(routes))
    save_results(checkpoint, results)
    return results
