"""Sensor rigs for the leaderboard agent and their camera projections.

Frames:
- CARLA vehicle / sensor frame (Unreal): x forward, y right, z up (left-handed); rotations roll/pitch/yaw in
  degrees composed as ``carla.Transform.get_matrix``.
- Camera optical frame (OpenCV): x right, y down, z forward.
- Planner ego frame (nuPlan / NAVSIM): x forward, y left, z up, origin ``planner_origin`` in the CARLA vehicle
  frame (default the rear axle on the ground, 0.39 m behind the box centre as in RAP's b2d config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rap_backbone.nuplan_rig import NUPLAN_IMAGE_SIZE

# Bench2DriveZoo team_code/uniad_b2d_agent.py sensors(): (id, x, y, z, yaw, fov), 1600x900, roll = pitch = 0
B2D_SIX_CAMERAS = (
    ("CAM_FRONT", 0.80, 0.0, 1.60, 0.0, 70.0),
    ("CAM_FRONT_LEFT", 0.27, -0.55, 1.60, -55.0, 70.0),
    ("CAM_FRONT_RIGHT", 0.27, 0.55, 1.60, 55.0, 70.0),
    ("CAM_BACK", -2.0, 0.0, 1.60, 180.0, 110.0),
    ("CAM_BACK_LEFT", -0.32, -0.55, 1.60, -110.0, 70.0),
    ("CAM_BACK_RIGHT", -0.32, 0.55, 1.60, 110.0, 70.0),
)
B2D_IMAGE_SIZE = (1600, 900)
# RAP's four NAVSIM cameras in the planner's order [b0, f0, l0, r0] (rap_features LoadMultiViewImageFromFiles),
# placed as nuPlan's (vita-epfl/RAP process_data/helpers/renderer.py camera_params, rear-axle frame) moved to
# CARLA's box-centre frame (x - 0.39, y flipped), yaw from each camera's optical axis; 1920x1080 with
# horizontal fov 2*atan(960/1545) = 63.7 deg.
NUPLAN_FOV = math.degrees(2 * math.atan(960.0 / 1545.0))
RAP_FOUR_CAMERAS = (
    ("CAM_B0", -0.86, -0.02, 1.43, -179.5, NUPLAN_FOV),
    ("CAM_F0", 1.27, 0.01, 1.49, 0.4, NUPLAN_FOV),
    ("CAM_L0", 1.24, -0.12, 1.48, -54.9, NUPLAN_FOV),
    ("CAM_R0", 1.23, 0.16, 1.49, 55.5, NUPLAN_FOV),
)
REAR_AXLE_TO_CENTER = 0.39  # m, RAP navsim/agents/pad/b2d_config.py
# Non-camera sensors of the b2d agents (team_code/uniad_b2d_agent.py)
IMU_TICK, GNSS_TICK, SPEED_HZ = 0.05, 0.01, 20
IMU_GNSS_POSITION = (-1.4, 0.0, 0.0)


@dataclass(frozen=True)
class CameraSpec:
    """One RGB camera: id, pose in the CARLA vehicle frame (m, degrees), image size and horizontal fov."""

    id: str
    x: float
    y: float
    z: float
    yaw: float
    fov: float
    width: int
    height: int
    roll: float = 0.0
    pitch: float = 0.0

    def sensor_dict(self) -> dict:
        """The leaderboard ``sensors()`` entry."""
        return {"type": "sensor.camera.rgb", "x": self.x, "y": self.y, "z": self.z, "roll": self.roll,
                "pitch": self.pitch, "yaw": self.yaw, "width": self.width, "height": self.height,
                "fov": self.fov, "id": self.id}


RIGS = ("rap4", "b2d6")


def build_rig(name: str, *, width: int | None = None, height: int | None = None) -> list[CameraSpec]:
    """``"rap4"`` (RAP's four cameras, nuPlan-like) or ``"b2d6"`` (Bench2Drive's six); optional image size."""
    if name == RIGS[0]:
        table, (w, h) = RAP_FOUR_CAMERAS, NUPLAN_IMAGE_SIZE
    elif name == RIGS[1]:
        table, (w, h) = B2D_SIX_CAMERAS, B2D_IMAGE_SIZE
    else:
        raise ValueError(f"unknown rig '{name}'; choose 'rap4' (RAP's four cameras) or 'b2d6' (Bench2Drive six)")
    return [CameraSpec(id=i, x=x, y=y, z=z, yaw=yaw, fov=fov, width=width or w, height=height or h)
            for i, x, y, z, yaw, fov in table]


def other_sensors() -> list[dict]:
    """IMU, GNSS and speedometer entries as the b2d agents declare them."""
    x, y, z = IMU_GNSS_POSITION
    pose = {"x": x, "y": y, "z": z, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
    return [{"type": "sensor.other.imu", **pose, "sensor_tick": IMU_TICK, "id": "IMU"},
            {"type": "sensor.other.gnss", **pose, "sensor_tick": GNSS_TICK, "id": "GPS"},
            {"type": "sensor.speedometer", "reading_frequency": SPEED_HZ, "id": "SPEED"}]


def carla_matrix(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    """4x4 sensor->parent matrix exactly as ``carla.Transform(Location, Rotation).get_matrix()``."""
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    return np.array([[cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr, x],
                     [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr, y],
                     [sp, -cp * sr, cp * cr, z],
                     [0.0, 0.0, 0.0, 1.0]])


def intrinsics(spec: CameraSpec) -> np.ndarray:
    """3x3 pinhole matrix of a CARLA camera: f = w / (2 tan(fov/2)), principal point at the image centre."""
    f = spec.width / (2.0 * math.tan(math.radians(spec.fov) / 2.0))
    return np.array([[f, 0.0, spec.width / 2.0], [0.0, f, spec.height / 2.0], [0.0, 0.0, 1.0]])


# Unreal sensor axes (x fwd, y right, z up) -> OpenCV optical axes (x right, y down, z fwd)
UE_TO_CV = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def planner_to_carla_vehicle(planner_origin: tuple[float, float, float] = (-REAR_AXLE_TO_CENTER, 0.0, 0.0)
                             ) -> np.ndarray:
    """4x4 map from planner ego coordinates (x fwd, y left, z up) to the CARLA vehicle frame."""
    m = np.diag([1.0, -1.0, 1.0, 1.0])
    m[:3, 3] = planner_origin
    return m


def lidar2img(spec: CameraSpec, *, planner_origin: tuple[float, float, float] = (-REAR_AXLE_TO_CENTER, 0.0, 0.0)
              ) -> np.ndarray:
    """4x4 projection from the planner ego frame to homogeneous pixels (u*d, v*d, d, 1) of ``spec``."""
    sensor_to_vehicle = carla_matrix(spec.x, spec.y, spec.z, spec.roll, spec.pitch, spec.yaw)
    planner_to_cv = UE_TO_CV @ np.linalg.inv(sensor_to_vehicle) @ planner_to_carla_vehicle(planner_origin)
    k4 = np.eye(4)
    k4[:3, :3] = intrinsics(spec)
    return k4 @ planner_to_cv


def project(points: np.ndarray, l2i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points [N,3] with a lidar2img matrix; returns (pixels [N,2], depth [N])."""
    pts = np.concatenate([np.asarray(points, dtype=np.float64), np.ones((len(points), 1))], axis=1)
    hom = pts @ l2i.T
    depth = hom[:, 2]
    return hom[:, :2] / np.where(np.abs(depth) < 1e-9, 1e-9, depth)[:, None], depth


