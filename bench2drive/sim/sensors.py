"""The leaderboard's ``input_data`` for the simulated ego: cameras (BGRA), IMU, GNSS and speedometer.

Cameras come from the RAP rasterizer (``rap_backbone.raster.render_cameras``, renderer="raster"): the world is
mirrored into its right-handed frame (y -> -y, yaw -> -yaw) and each rig camera becomes a ``CameraModel`` with
the rig's exact extrinsics, so the images look like RAP's training renders. ``renderer="simple"`` is a small
pinhole renderer here (sky, ground, lane lines, actor boxes) for runs without the rasterizer.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from bench2drive.geo import local_to_gnss, yaw_to_compass
from bench2drive.rig import (
    IMU_GNSS_POSITION,
    UE_TO_CV,
    CameraSpec,
    carla_matrix,
    intrinsics,
    planner_to_carla_vehicle,
)
from bench2drive.sim.dynamics import EgoState
from bench2drive.sim.scenarios import LANE_WIDTH, Actor, RoadPath

GRAVITY = 9.81
SKY, GROUND, LANE, VEHICLE, WALKER, STATIC = ((235, 206, 135), (90, 90, 90), (255, 255, 255), (40, 40, 200),
                                              (40, 200, 40), (0, 140, 255))  # BGR


def _world_to_cv(spec: CameraSpec, ego: EgoState) -> np.ndarray:
    vehicle_to_world = carla_matrix(ego.x, ego.y, 0.0, 0.0, 0.0, math.degrees(ego.yaw))
    sensor_to_vehicle = carla_matrix(spec.x, spec.y, spec.z, spec.roll, spec.pitch, spec.yaw)
    return UE_TO_CV @ np.linalg.inv(vehicle_to_world @ sensor_to_vehicle)


def render_camera(spec: CameraSpec, ego: EgoState, actors: list[Actor], path: RoadPath) -> np.ndarray:
    """BGRA uint8 [H,W,4] image of the scene from ``spec`` mounted on ``ego``."""
    h, w = spec.height, spec.width
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2] = SKY
    img[h // 2:] = GROUND
    k = intrinsics(spec)
    m = _world_to_cv(spec, ego)

    def proj(pts3):
        hom = np.concatenate([pts3, np.ones((len(pts3), 1))], 1) @ m.T
        z = hom[:, 2]
        uv = (hom[:, :3] @ k.T)[:, :2] / np.maximum(z, 1e-6)[:, None]
        return uv, z

    # lane boundaries within 60 m of the ego
    near = np.linalg.norm(path.xy - ego.xy, axis=1) < 60
    for d in (-1.5 * LANE_WIDTH, -0.5 * LANE_WIDTH, 0.5 * LANE_WIDTH):
        xy, _ = path.pose(path.s[near], d)
        if len(xy) < 2:
            continue
        uv, z = proj(np.concatenate([xy, np.zeros((len(xy), 1))], 1))
        ok = z > 0.5
        pts = uv[ok].round().astype(np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, LANE, max(1, w // 200))
    # actor boxes, far to near
    order = sorted(actors, key=lambda a: -np.linalg.norm(a.xy - ego.xy))
    for a in order:
        height = 1.8 if a.kind == "walker" else (1.5 if a.kind == "vehicle" else 0.8)
        c, s = math.cos(a.yaw), math.sin(a.yaw)
        hl, hw = a.length / 2, a.width / 2
        base = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]]) @ np.array([[c, s], [-s, c]]) + a.xy
        pts3 = np.concatenate([np.concatenate([base, np.zeros((4, 1))], 1),
                               np.concatenate([base, np.full((4, 1), height)], 1)])
        uv, z = proj(pts3)
        if (z <= 0.5).any():
            continue
        hull = cv2.convexHull(uv.round().astype(np.int32))
        color = {"vehicle": VEHICLE, "walker": WALKER, "static": STATIC}[a.kind]
        cv2.fillConvexPoly(img, hull, color)
    return np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)


def raster_camera_models(rig: list[CameraSpec]) -> list:
    """Rig cameras as rap_backbone.raster CameraModels (ego = rear axle, x fwd, y left, z up)."""
    from rap_backbone.raster import CameraModel

    models = []
    for spec in rig:
        cv_from_planner = UE_TO_CV @ np.linalg.inv(
            carla_matrix(spec.x, spec.y, spec.z, spec.roll, spec.pitch, spec.yaw)) @ planner_to_carla_vehicle()
        planner_from_cv = np.linalg.inv(cv_from_planner)
        models.append(CameraModel(spec.id, intrinsics(spec), planner_from_cv[:3, :3], planner_from_cv[:3, 3],
                                  spec.width, spec.height))
    return models


def _mirror(xy: np.ndarray) -> np.ndarray:
    return np.stack([xy[..., 0], -xy[..., 1]], axis=-1)


def render_raster(models: list, ego: EgoState, actors: list[Actor], path: RoadPath, light_states: list) -> dict:
    """BGRA images {camera id: [H,W,4]} from the RAP rasterizer. ``light_states``: [(s, red: bool)]."""
    from rap_backbone.raster import MapPrimitives, render_cameras

    near = np.linalg.norm(path.xy - ego.xy, axis=1) < 80
    s = path.s[near]
    lanes = [_mirror(path.pose(s, d)[0]) for d in (-1.5 * LANE_WIDTH, -0.5 * LANE_WIDTH, 0.5 * LANE_WIDTH)]
    bounds = [_mirror(path.pose(s, d)[0]) for d in (-1.5 * LANE_WIDTH - 0.5, 0.5 * LANE_WIDTH + 0.5)]
    boxes = np.array([[a.xy[0], -a.xy[1], h / 2, a.length, a.width, h, -a.yaw] for a in actors
                      for h in [1.8 if a.kind == "walker" else (1.5 if a.kind == "vehicle" else 0.8)]]
                     ).reshape(-1, 7)
    tl = []
    for s_light, red in light_states:
        xy = path.pose(s_light, 0.5 * LANE_WIDTH + 1.0)[0][0]
        tl.append([xy[0], -xy[1], 2.0 if red else 0.0])  # nuPlan status: 0 green, 2 red
    rear = ego.xy - ego.forward * 0.39  # the rasterizer's ego pose is the rear axle
    imgs = render_cameras(models, ego_pose=(rear[0], -rear[1], -ego.yaw),
                          map_primitives=MapPrimitives(lanes=lanes, boundaries=bounds), boxes=boxes,
                          traffic_lights=np.array(tl).reshape(-1, 3))
    return {k: cv2.cvtColor(v, cv2.COLOR_RGB2BGRA) for k, v in imgs.items()}


class LazyCameras(dict):
    """A sensor dict whose camera entries are rendered on first access (then cached)."""

    def __init__(self, frame: int, camera_ids: list[str], render_all):
        super().__init__()
        self._frame, self._ids, self._render, self._images = frame, set(camera_ids), render_all, None

    def __getitem__(self, key):
        if key in self._ids and not dict.__contains__(self, key):
            if self._images is None:
                self._images = self._render()
            dict.__setitem__(self, key, (self._frame, self._images[key]))
        return dict.__getitem__(self, key)

    def __contains__(self, key) -> bool:
        return key in self._ids or dict.__contains__(self, key)


def input_data(frame: int, rig: list[CameraSpec], ego: EgoState, actors: list[Actor], path: RoadPath, *,
               lat_ref: float = 0.0, lon_ref: float = 0.0, render: bool = True, renderer: str = "simple",
               raster_models: list | None = None, light_states: list | None = None) -> dict:
    """``{id: (frame, data)}`` as the leaderboard's SensorInterface hands it to ``run_step``.

    Camera images are rendered when the agent first reads one of them (agents planning at 2 Hz read them on
    one tick in ten), all cameras of the tick at once.
    """
    def render_all() -> dict:
        if render and renderer == "raster" and rig:
            return render_raster(raster_models or raster_camera_models(rig), ego, actors, path, light_states or [])
        return {spec.id: (render_camera(spec, ego, actors, path) if render
                          else np.zeros((spec.height, spec.width, 4), np.uint8)) for spec in rig}

    out = LazyCameras(frame, [spec.id for spec in rig], render_all)
    # the GNSS reads its own mount point (IMU_GNSS_POSITION in the vehicle frame), as CARLA's sensor does
    gnss_xy = ego.xy + IMU_GNSS_POSITION[0] * ego.forward + IMU_GNSS_POSITION[1] * ego.right
    lat, lon = local_to_gnss(gnss_xy, lat_ref, lon_ref)
    ax, ay = ego.accel_world
    a_lon = ax * math.cos(ego.yaw) + ay * math.sin(ego.yaw)
    a_lat = -ax * math.sin(ego.yaw) + ay * math.cos(ego.yaw)
    # CARLA IMU: accelerometer (m/s^2, incl. gravity), gyroscope (rad/s), compass (rad)
    out["IMU"] = (frame, np.array([a_lon, a_lat, GRAVITY, 0.0, 0.0, ego.yaw_rate, yaw_to_compass(ego.yaw)]))
    out["GPS"] = (frame, np.array([lat, lon, 0.0]))
    out["SPEED"] = (frame, {"speed": ego.speed})
    return out
