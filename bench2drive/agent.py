"""Leaderboard agent that drives with the RAP planner (any backbone), for CARLA and the embedded simulator.

    leaderboard_evaluator.py --agent=bench2drive/agent.py --agent-config=configs/closed_loop/agent.yaml

The agent declares the rig the planner was trained on (``rig: rap4`` by default), converts CARLA data (BGRA
images, GNSS, compass, speed, IMU) into RAP's feature dict (``camera_feature``, ``lidar2img``, ``img_shape``,
``ego_status``), plans at 2 Hz, holds the plan in world coordinates between planner ticks and turns it into
controls with Bench2Drive's PID. With ``SAVE_PATH`` set it saves ``metric_info.json`` every step like the
Bench2Drive agents. The agent-config is a YAML file; the evaluator appends ``+<save_name>`` to its path.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from bench2drive import geo, pid, rig
from bench2drive.robustness import TICK_S, ActionDelay, Perturbations
from eupe.atomic_io import atomic_write_text
from navsim_agents.agents.rap_features import preprocess_image
from rap_backbone.nuplan_rig import NUPLAN_IMAGE_SIZE

try:  # the leaderboard is importable only inside a Bench2Drive checkout (BENCH2DRIVE_ROOT on PYTHONPATH)
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track  # type: ignore
except Exception:  # any import failure means: run standalone (embedded simulator, tests)
    AutonomousAgent, Track = object, None

try:
    import carla  # type: ignore
except ImportError:  # the `carla` extra is optional for the embedded simulator
    carla = None

PLAN_EVERY = 10  # ticks: 20 Hz simulation, 2 Hz planner (NAVSIM trajectories are 0.5 s apart)
HISTORY = 4  # ego-status frames at 2 Hz (NAVSIM num_history_frames)
# NAVSIM driving command one-hot [left, straight, right, unknown] from the route's RoadOption
COMMAND_INDEX = {geo.ROAD_OPTION["LEFT"]: 0, geo.ROAD_OPTION["STRAIGHT"]: 1, geo.ROAD_OPTION["LANEFOLLOW"]: 1,
                 geo.ROAD_OPTION["RIGHT"]: 2}
# image_width / image_height None: the planner size's image_scale of nuPlan's 1920x1080 (small: 384x216,
# rap_paper: RAP's 768x432)
DEFAULTS = {"rig": "rap4", "image_width": None, "image_height": None, "planner": "rap", "backbone": {"name": "eupe-t"},
            "planner_config": "small", "checkpoint": None, "device": "cpu", "max_speed_for_throttle": None,
            "save_metric_info": True, "torch_threads": None, "seed": 0,
            # closed-loop robustness (bench2drive/robustness.py): what the agent receives and when plans act
            "corruption": {"name": "none"}, "sensor_fault": {"name": "none"}, "latency": {"mode": "none"}}
PLANNERS = ("rap", "constant_velocity", "expert")  # expert: the embedded simulator's privileged agent


def get_entry_point() -> str:
    return "RAPLeaderboardAgent"


class VehicleControlLite:
    """carla.VehicleControl stand-in when the carla client is not installed."""

    def __init__(self, throttle=0.0, steer=0.0, brake=0.0):
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake, self.manual_gear_shift = False, False


def make_control(steer: float, throttle: float, brake: float):
    if carla is not None:
        return carla.VehicleControl(throttle=float(throttle), steer=float(steer), brake=float(brake))
    return VehicleControlLite(throttle=throttle, steer=steer, brake=brake)


class ConstantVelocityPlanner:
    """Baseline planner (no network): keeps the current speed straight ahead. Outputs say so in ``source``."""

    source = "constant-velocity baseline (no learned planner)"

    def __call__(self, features: dict) -> dict:
        import torch

        status = features["ego_status"][:, -1]
        v = status[:, 3:4].clamp(min=2.0)
        t = torch.arange(1, 9, dtype=torch.float32)[None] * 0.5
        traj = torch.stack([v * t, torch.zeros_like(t.expand_as(v * t)), torch.zeros_like(v * t)], dim=-1)
        return {"trajectory": traj}


class TorchPlanner:
    """A RAP planner module on ``device`` behind the feature-dict call; ``source`` says where weights come from."""

    def __init__(self, module, *, device: str, source: str):
        self.module, self.device, self.source = module.eval().to(device), device, source

    def __call__(self, features: dict) -> dict:
        import torch

        with torch.inference_mode():  # no autograd bookkeeping in the loop
            return self.module({k: v.to(self.device) for k, v in features.items()})


def build_planner(cfg: dict):
    """The planner of the agent config: 'rap' (RAP with the ``backbone`` group, ``planner_config`` and
    ``checkpoint``, built like the NAVSIM RAP agent) or 'constant_velocity'."""
    if cfg["torch_threads"]:  # intra-op threads of the planner process (torch's default: all cores)
        import torch

        torch.set_num_threads(int(cfg["torch_threads"]))
    if cfg["planner"] == "constant_velocity":
        return ConstantVelocityPlanner()
    if cfg["planner"] == "rap":
        from eupe.seeding import seed_everything

        seed_everything(int(cfg["seed"]))  # random weights (no checkpoint) follow the run's seed
        try:
            from navsim_agents.agents.rap_agent import RAPAgent
        except ImportError as exc:
            raise ImportError("the RAP agent (navsim_agents.agents.rap_agent) is not importable; install "
                              "eupe-drive fully or set planner: constant_velocity in the agent config") from exc
        backbone = cfg["backbone"]
        if isinstance(backbone, str):
            backbone = {"name": backbone}
        navsim_agent = RAPAgent(backbone=backbone, planner=cfg["planner_config"], checkpoint=cfg["checkpoint"])
        source = navsim_agent.weights_source
        print(f"closed-loop RAP planner weights: {source}", flush=True)
        # planner.runtime=onnxruntime: the agent's forward runs the exported planner file
        module = navsim_agent if navsim_agent.exported_planner is not None else navsim_agent.planner
        return TorchPlanner(module, device=cfg["device"], source=source)
    if cfg["planner"] == "expert":
        raise ValueError("agent.planner=expert is the embedded simulator's privileged expert: run it with "
                         "closed_loop=raster (it has no network and reads the simulator, not the cameras)")
    raise ValueError(f"unknown planner '{cfg['planner']}' in the agent config; use 'rap', 'constant_velocity' or "
                     "'expert' (embedded simulator only)")


def load_agent_config(path_to_conf_file: str) -> tuple[dict, str | None]:
    """YAML agent config (path possibly followed by '+<save_name>') -> (config with defaults, save_name)."""
    conf, save_name = path_to_conf_file, None
    if "+" in path_to_conf_file:
        conf, save_name = path_to_conf_file.rsplit("+", 1)
    cfg = dict(DEFAULTS)
    if conf:
        p = Path(conf)
        if not p.is_file():
            raise FileNotFoundError(f"agent config {p} does not exist (see configs/closed_loop/agent.yaml)")
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(p), resolve=True) or {}
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise KeyError(f"agent config {p}: unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        cfg.update(loaded)
    cfg["image_width"], cfg["image_height"] = image_size(cfg)
    return cfg, save_name


def image_size(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of the camera images: the agent config's, a null one from the planner size's image_scale
    of nuPlan's 1920x1080."""
    width, height = cfg["image_width"], cfg["image_height"]
    if width is None or height is None:
        from navsim_agents.agents.rap_agent import load_planner_profile

        scale = load_planner_profile(cfg["planner_config"]).image_scale
        width = width or int(NUPLAN_IMAGE_SIZE[0] * scale)
        height = height or int(NUPLAN_IMAGE_SIZE[1] * scale)
    return int(width), int(height)


def sensor_list(cams: list[rig.CameraSpec]) -> list[dict]:
    """The leaderboard ``sensors()`` of a rig: its cameras, then IMU, GNSS and speedometer."""
    return [c.sensor_dict() for c in cams] + rig.other_sensors()


def localize(input_data: dict, gps_to_local) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(centre xy, CARLA yaw rad, speed m/s, IMU acceleration [2]) from the GNSS, IMU and speedometer readings;
    ``gps_to_local`` maps (lat, lon) to metres."""
    gps = np.asarray(input_data["GPS"][1])[:2]
    imu = np.asarray(input_data["IMU"][1], dtype=np.float64)
    yaw = geo.compass_to_yaw(float(imu[-1]))
    # the GNSS reads its mount point; the b2d agents use it as the ego position, we move it to the centre
    gx, gy = rig.IMU_GNSS_POSITION[:2]
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    xy = gps_to_local(gps) - gx * fwd - gy * right
    acc = imu[:2] if np.isfinite(imu[-1]) else np.zeros(2)
    return xy, yaw, float(input_data["SPEED"][1]["speed"]), acc


class RAPLeaderboardAgent(AutonomousAgent):
    """Bench2Drive leaderboard agent around the RAP planner."""

    def __init__(self, carla_host=None, carla_port=None, debug=False, *, planner=None):
        if AutonomousAgent is not object:
            super().__init__(carla_host, carla_port, debug)
        else:
            self.hero_actor = None
            self._global_plan = self._global_plan_world_coord = None
        self._planner_override = planner

    # ---------------------------------------------------------------- leaderboard API
    def setup(self, path_to_conf_file: str) -> None:
        self.cfg, self.save_name = load_agent_config(path_to_conf_file)
        if Track is not None:
            self.track = Track.SENSORS
        self.rig = rig.build_rig(self.cfg["rig"], width=self.cfg["image_width"], height=self.cfg["image_height"])
        self.l2i = np.stack([rig.lidar2img(c) for c in self.rig]).astype(np.float32)
        self.planner = self._planner_override or build_planner(self.cfg)
        # validated here too, so a bad setting fails at set-up (the evaluator's "Agent couldn't be set up")
        self.perturbations = Perturbations.from_cfg(corruption=self.cfg["corruption"],
                                                    sensor_fault=self.cfg["sensor_fault"],
                                                    latency=self.cfg["latency"], seed=self.cfg["seed"])
        self.perturb = self.perturbations.for_route(self.save_name, [c.id for c in self.rig],
                                                    frame_interval_s=PLAN_EVERY * TICK_S,
                                                    intrinsics={c.id: rig.intrinsics(c) for c in self.rig})
        self.delay = ActionDelay()
        self.pid = pid.PIDController()
        self.step = -1
        self.route_planner: geo.RoutePlanner | None = None
        self.plan_world: np.ndarray | None = None
        self.history: deque = deque(maxlen=HISTORY)
        self.metric_info: dict[int, dict] = {}
        save_root = os.environ.get("SAVE_PATH")
        self.save_dir = Path(save_root) / self.save_name if save_root and self.save_name else None
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)

    def sensors(self) -> list[dict]:
        return sensor_list(self.rig)

    def set_global_plan(self, global_plan_gps, global_plan_world_coord) -> None:
        if AutonomousAgent is not object:
            super().set_global_plan(global_plan_gps, global_plan_world_coord)
            global_plan_gps, global_plan_world_coord = self._global_plan, self._global_plan_world_coord
        else:  # the base class's 50 m downsampling, without the leaderboard installed
            xy = np.array([[t.location.x, t.location.y] for t, _ in global_plan_world_coord])
            ids = geo.downsample_route(xy, [int(getattr(c, "value", c)) for _, c in global_plan_world_coord])
            global_plan_world_coord = [global_plan_world_coord[i] for i in ids]
            global_plan_gps = [global_plan_gps[i] for i in ids]
        self.set_route_plan(global_plan_gps, global_plan_world_coord)

    def set_route_plan(self, global_plan_gps, global_plan_world_coord) -> None:
        """The route already downsampled to 50 m (a bridge client's leaderboard did it)."""
        self._global_plan_world_coord, self._global_plan = global_plan_world_coord, global_plan_gps
        self.route_planner = None

    def destroy(self) -> None:
        self.planner = None

    # ---------------------------------------------------------------- conversion
    def _init_route(self) -> None:
        first_world, _ = self._global_plan_world_coord[0]
        first_gps = self._global_plan[0][0]
        try:  # the map's geo-reference from the first plan point, as the b2d agents' _init does
            self.lat_ref, self.lon_ref = geo.solve_geo_reference(
                (first_world.location.x, first_world.location.y), (first_gps["lat"], first_gps["lon"]))
        except Exception as exc:  # the agents fall back to (0, 0) the same way
            print(f"geo reference could not be solved ({exc}); using (0, 0)", flush=True)
            self.lat_ref, self.lon_ref = 0.0, 0.0
        pts = np.array([[p[0]["lat"], p[0]["lon"]] for p in self._global_plan])
        cmds = [int(getattr(c, "value", c)) for _, c in self._global_plan]
        self.route_planner = geo.RoutePlanner()
        self.route_planner.set_route(self.gps_to_local(pts), cmds)

    def gps_to_local(self, latlon: np.ndarray) -> np.ndarray:
        """GNSS (lat, lon) -> the agent's metric frame (CARLA axes; x may be shifted by a constant)."""
        return geo.gnss_to_local(latlon, self.lat_ref, self.lon_ref)

    def _images(self, input_data: dict) -> np.ndarray:
        imgs = []
        w, h = self.cfg["image_width"], self.cfg["image_height"]
        for c in self.rig:
            frame = input_data[c.id][1]
            img = cv2.cvtColor(np.asarray(frame)[:, :, :3], cv2.COLOR_BGR2RGB)
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            if self.perturb.active:  # between the sensor and the planner: corruption, then camera faults
                img = self.perturb.camera(c.id, img, self.step)
            # the rig already renders at the planner's size: RAP's normalise + pad, no further resize
            imgs.append(preprocess_image(img, scale=1.0))
        return np.stack(imgs)

    def _ego_status(self, xy: np.ndarray, yaw: float, speed: float, acc: np.ndarray, command: int) -> np.ndarray:
        """[T,11] = pose (x, y, heading in the current planner frame), velocity, acceleration, command one-hot."""
        onehot = np.zeros(4, np.float32)
        onehot[COMMAND_INDEX.get(command, 3)] = 1.0
        self.history.append((xy.copy(), yaw))
        rows = []
        for hxy, hyaw in list(self.history)[:-1] + [(xy, yaw)]:
            local = geo.world_to_ego(hxy, xy, yaw)  # CARLA ego frame (x fwd, y right)
            rows.append([local[0], -local[1], -(hyaw - yaw), speed, 0.0, acc[0], -acc[1], *onehot])
        while len(rows) < HISTORY:
            rows.insert(0, rows[0])
        return np.asarray(rows, np.float32)

    def build_features(self, input_data: dict, xy, yaw, speed, acc, command) -> dict:
        """RAP's feature dict (batch of one) from the sensor data."""
        import torch

        imgs = self._images(input_data)
        # img_shape is the padded shape, as RAP's feature builder gives it
        shape = np.array([[imgs.shape[2], imgs.shape[3], 3]] * len(self.rig), np.float32)
        return {"camera_feature": torch.from_numpy(imgs)[None],
                "lidar2img": torch.from_numpy(self.l2i)[None],
                "img_shape": torch.from_numpy(shape)[None],
                "ego_status": torch.from_numpy(self._ego_status(xy, yaw, speed, acc, command))[None]}

    def localize(self, input_data: dict) -> tuple[np.ndarray, float, float, np.ndarray]:
        """(centre xy in the agent's frame, CARLA yaw rad, speed m/s, IMU acceleration [2]) from the sensors."""
        return localize(input_data, self.gps_to_local)

    # ---------------------------------------------------------------- step
    def run_step(self, input_data: dict, timestamp: float):
        self.step += 1
        if self.route_planner is None:
            self._init_route()
        input_data = self.perturb.state(input_data, self.step)  # GNSS / speed / compass faults
        xy, yaw, speed, acc = self.localize(input_data)
        target, command = self.route_planner.run_step(xy)
        if self.step % PLAN_EVERY == 0 or (self.plan_world is None and not self.delay.pending):
            import time

            t0 = time.perf_counter()
            out = self.planner(self.build_features(input_data, xy, yaw, speed, acc, command))
            seconds = time.perf_counter() - t0
            traj = np.asarray(out["trajectory"][0].detach().cpu().numpy(), np.float64)[:, :2]
            if not np.isfinite(traj).all():
                raise ValueError("planner returned NaN/inf waypoints")
            # planner frame (x fwd, y left, rear axle) -> CARLA ego frame -> world, held until the next plan
            ego_pts = np.stack([traj[:, 0] - rig.REAR_AXLE_TO_CENTER, -traj[:, 1]], axis=1)
            c, s = math.cos(yaw), math.sin(yaw)
            # the plan acts once the planner is done thinking (latency); the previous one is followed meanwhile
            self.delay.push(xy + ego_pts @ np.array([[c, s], [-s, c]]),
                            self.step + self.perturbations.latency.ticks(seconds))
        plan = self.delay.due(self.step)
        if plan is not None:
            self.plan_world = plan
        if self.plan_world is None:  # no plan has acted yet (latency at the start): stand still
            return make_control(0.0, 0.0, 1.0)
        local = geo.world_to_ego(self.plan_world, xy, yaw)
        wps = pid.ego_to_pid(np.concatenate([np.zeros((1, 2)), local]))
        tgt = pid.ego_to_pid(geo.world_to_ego(target, xy, yaw))
        out = self.pid.control_pid(wps, speed, tgt)
        limit = self.cfg["max_speed_for_throttle"]
        steer, throttle, brake = pid.pid_to_control(out, speed if limit is not None else 0.0)
        if limit is not None and speed > limit:
            throttle = 0.0
        if self.cfg["save_metric_info"] and self.save_dir is not None and getattr(self, "hero_actor", None):
            self.metric_info[self.step] = self.get_metric_info()
            atomic_write_text(self.save_dir / "metric_info.json", json.dumps(self.metric_info, indent=4))
        return make_control(steer, throttle, brake)
