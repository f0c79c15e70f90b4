"""Small vectorised SE(2) helpers shared by the simulator, PDM-Closed and the scorer."""

from __future__ import annotations

import numpy as np
import shapely

from navsim_agents.scoring.constants import BBCoordsIndex as BB
from navsim_agents.scoring.constants import StateIndex as S
from rap_backbone.nuplan_rig import PACIFICA, VehicleParameters


def normalize_angle(angle):
    """Wrap angles to [-pi, pi] via atan2 (navsim `pdm_geometry_utils.normalize_angle`)."""
    return np.arctan2(np.sin(angle), np.cos(angle))


def principal_value(angle, min_: float = -np.pi):
    """Wrap angles to [min_, min_ + 2 pi) (nuplan `geometry/compute.py::principal_value`)."""
    return (angle - min_) % (2 * np.pi) + min_


def translate_lon_lat(centers: np.ndarray, headings: np.ndarray, lon: float, lat: float) -> np.ndarray:
    """Points [...,2] moved by `lon` along and `lat` left of `headings`."""
    half_pi = np.pi / 2.0
    shift = np.stack([lat * np.cos(headings + half_pi) + lon * np.cos(headings),
                      lat * np.sin(headings + half_pi) + lon * np.sin(headings)], axis=-1)
    return centers + shift


# the signs of the corners FL, RL, RR, FR (BBCoordsIndex 0..3) along and across the heading
_CORNER_LON, _CORNER_LAT = np.array([1.0, -1.0, -1.0, 1.0]), np.array([1.0, 1.0, -1.0, -1.0])


def box_coords(centers: np.ndarray, headings: np.ndarray, length: float | np.ndarray,
               width: float | np.ndarray) -> np.ndarray:
    """Corners FL, RL, RR, FR and the center of boxes: [...,5,2]."""
    hl = np.asarray(length) / 2.0
    hw = np.asarray(width) / 2.0
    cos, sin = np.cos(headings), np.sin(headings)
    out = np.zeros(centers.shape[:-1] + (5, 2))
    if centers.size <= 64:  # a few boxes: the four corners in one broadcast pass (same operations, same floats)
        dlon, dlat = _CORNER_LON * hl[..., None], _CORNER_LAT * hw[..., None]
        out[..., :4, 0] = centers[..., 0, None] + dlon * cos[..., None] - dlat * sin[..., None]
        out[..., :4, 1] = centers[..., 1, None] + dlon * sin[..., None] + dlat * cos[..., None]
        out[..., BB.CENTER, :] = centers
        return out
    for idx, (lo, la) in ((BB.FRONT_LEFT, (1, 1)), (BB.REAR_LEFT, (-1, 1)), (BB.REAR_RIGHT, (-1, -1)),
                          (BB.FRONT_RIGHT, (1, -1))):
        dlon, dlat = lo * hl, la * hw
        out[..., idx, 0] = centers[..., 0] + dlon * cos - dlat * sin
        out[..., idx, 1] = centers[..., 1] + dlon * sin + dlat * cos
    out[..., BB.CENTER, :] = centers
    return out


def ego_coords(states: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Ego box corners + center [B,T,5,2] from rear-axle states [B,T,11] (navsim `state_array_to_coords_array`)."""
    headings = states[..., S.HEADING]
    cos, sin = np.cos(headings), np.sin(headings)
    centers = states[..., :2] + np.stack([vehicle.rear_axle_to_center * cos, vehicle.rear_axle_to_center * sin], -1)
    out = np.zeros(states.shape[:-1] + (5, 2))
    out[..., BB.CENTER, :] = centers
    out[..., BB.FRONT_LEFT, :] = translate_lon_lat(centers, headings, vehicle.half_length, vehicle.half_width)
    out[..., BB.FRONT_RIGHT, :] = translate_lon_lat(centers, headings, vehicle.half_length, -vehicle.half_width)
    out[..., BB.REAR_LEFT, :] = translate_lon_lat(centers, headings, -vehicle.half_length, vehicle.half_width)
    out[..., BB.REAR_RIGHT, :] = translate_lon_lat(centers, headings, -vehicle.half_length, -vehicle.half_width)
    return out


def coords_to_polygons(coords: np.ndarray) -> np.ndarray:
    """Shapely polygons from box coords [...,5,2] (center replaced by the first corner to close the ring)."""
    ring = coords.copy()
    ring[..., BB.CENTER, :] = ring[..., BB.FRONT_LEFT, :]
    return shapely.polygons(ring)


def center_states(states: np.ndarray, vehicle: VehicleParameters = PACIFICA) -> np.ndarray:
    """Rear-axle states moved to the vehicle center (velocity / acceleration of a rigid body)."""
    d = vehicle.rear_axle_to_center
    out = np.zeros(states.shape)
    h = states[..., S.HEADING]
    out[..., S.X] = states[..., S.X] + np.cos(h) * d
    out[..., S.Y] = states[..., S.Y] + np.sin(h) * d
    out[..., S.HEADING] = h
    w = states[..., S.ANGULAR_VELOCITY]
    dw = states[..., S.ANGULAR_ACCELERATION]
    out[..., S.VELOCITY_X] = states[..., S.VELOCITY_X]
    out[..., S.VELOCITY_Y] = states[..., S.VELOCITY_Y] + d * w
    # navsim get_acceleration_shifted: displacement * w^2 + displacement * dw, displacement = (d, 0)
    out[..., S.ACCELERATION_X] = states[..., S.ACCELERATION_X] + d * w**2 + d * dw
    out[..., S.ACCELERATION_Y] = states[..., S.ACCELERATION_Y]
    out[..., S.STEERING_ANGLE:] = states[..., S.STEERING_ANGLE:]
    return out


def relative_to_absolute(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Poses [N,3] in the frame of `origin` (x, y, heading) -> global poses [N,3] (nuplan convert)."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    x = origin[0] + c * poses[:, 0] - s * poses[:, 1]
    y = origin[1] + s * poses[:, 0] + c * poses[:, 1]
    heading = np.arctan2(np.sin(origin[2] + poses[:, 2]), np.cos(origin[2] + poses[:, 2]))
    return np.stack([x, y, heading], axis=-1)


def absolute_to_relative(origin: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Global poses [N,3] -> poses in the frame of `origin`."""
    c, s = np.cos(origin[2]), np.sin(origin[2])
    dx, dy = poses[:, 0] - origin[0], poses[:, 1] - origin[1]
    heading = np.arctan2(np.sin(poses[:, 2] - origin[2]), np.cos(poses[:, 2] - origin[2]))
    return np.stack([c * dx + s * dy, -s * dx + c * dy, heading], axis=-1)
