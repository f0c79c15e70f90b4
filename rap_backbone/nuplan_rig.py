"""The nuPlan ego vehicle and its camera names: the one home of these facts for every layer above.

- Ego vehicle: motional/nuplan-devkit ``nuplan/common/actor_state/vehicle_parameters.py``
  (``get_pacifica_parameters``: a Chrysler Pacifica), as NAVSIM's PDM scorer and RAP use it.
- Camera names: autonomousvision/navsim ``navsim/common/dataclasses.py`` (``Cameras`` fields, in that order);
  OpenScene log pickles key the same cameras in upper case (``cams["CAM_F0"]``).
- RAP's cameras: vita-epfl/RAP ``navsim/agents/rap_dino/rap_features.py`` (back camera first).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VehicleParameters:
    """Ego footprint about the rear axle; nuplan ``vehicle_parameters.py::get_pacifica_parameters``."""

    width: float = 1.1485 * 2.0
    front_length: float = 4.049
    rear_length: float = 1.127
    wheel_base: float = 3.089
    cog_position_from_rear_axle: float = 1.67
    height: float = 1.777

    @property
    def length(self) -> float:
        return self.front_length + self.rear_length

    @property
    def half_length(self) -> float:
        return self.length / 2.0

    @property
    def half_width(self) -> float:
        return self.width / 2.0

    @property
    def rear_axle_to_center(self) -> float:
        # nuplan VehicleParameters.rear_axle_to_center
        return self.half_length - self.rear_length

    def footprint(self) -> tuple[tuple[float, float], ...]:
        """Corners (x, y) in the rear-axle frame: front-left, front-right, rear-right, rear-left."""
        w = self.half_width
        return ((self.front_length, w), (self.front_length, -w), (-self.rear_length, -w), (-self.rear_length, w))


PACIFICA = VehicleParameters()

NUPLAN_IMAGE_SIZE = (1920, 1080)  # (width, height) of every nuPlan camera image

# navsim/common/dataclasses.py Cameras (and SensorConfig) field order
CAMERA_NAMES: tuple[str, ...] = ("cam_f0", "cam_l0", "cam_l1", "cam_l2", "cam_r0", "cam_r1", "cam_r2", "cam_b0")
# RAP rap_features.py / bev_feature_build.py: the four cameras in this order, back camera first
RAP_CAMERA_NAMES: tuple[str, ...] = ("cam_b0", "cam_f0", "cam_l0", "cam_r0")


def openscene_camera_key(name: str) -> str:
    """The key of camera ``name`` (``cam_f0``) in an OpenScene frame's ``cams`` dict (``CAM_F0``)."""
    return name.upper()


OPENSCENE_CAMERA_KEYS: tuple[str, ...] = tuple(openscene_camera_key(n) for n in CAMERA_NAMES)

__all__ = ["CAMERA_NAMES", "NUPLAN_IMAGE_SIZE", "OPENSCENE_CAMERA_KEYS", "PACIFICA", "RAP_CAMERA_NAMES", "VehicleParameters",
           "openscene_camera_key"]
