"""GNSS <-> CARLA metres, compass <-> yaw, and the route planner that yields the next route target.

CARLA's world frame is left-handed: x east, y *south*, z up; a yaw (degrees) turns x towards y (clockwise seen
from above). The GNSS sensor maps a location to (lat, lon) with CARLA's Mercator geo-reference
(LibCarla GeoLocation / Bench2DriveZoo team_code ``gps_to_location``); the IMU compass is in radians, 0 facing
north (-y) and growing clockwise, so ``compass = yaw + pi/2``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np

EARTH_RADIUS_EQUA = 6378137.0  # m, LibCarla/source/carla/geom/GeoLocation.cpp
# RoadOption values (agents/navigation/local_planner.py)
ROAD_OPTION = {"VOID": -1, "LEFT": 1, "RIGHT": 2, "STRAIGHT": 3, "LANEFOLLOW": 4,
               "CHANGELANELEFT": 5, "CHANGELANERIGHT": 6}
ROUTE_MIN_DISTANCE = 4.0  # m, team_code RoutePlanner(4.0, 50.0) in the b2d agents
ROUTE_MAX_DISTANCE = 50.0


def _scale(lat_ref: float) -> float:
    return math.cos(math.radians(lat_ref))


def local_to_gnss(xy: np.ndarray, lat_ref: float = 0.0, lon_ref: float = 0.0) -> np.ndarray:
    """CARLA world x, y [...,2] (m) -> (lat, lon) [...,2] in degrees, as CARLA's GNSS sensor computes them."""
    xy = np.asarray(xy, dtype=np.float64)
    s = _scale(lat_ref)
    mx = s * lon_ref * math.pi * EARTH_RADIUS_EQUA / 180.0 + xy[..., 0]
    my = s * EARTH_RADIUS_EQUA * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - xy[..., 1]
    lon = mx * 180.0 / (math.pi * EARTH_RADIUS_EQUA * s)
    lat = 360.0 / math.pi * np.arctan(np.exp(my / (EARTH_RADIUS_EQUA * s))) - 90.0
    return np.stack([lat, lon], axis=-1)


def gnss_to_local(latlon: np.ndarray, lat_ref: float = 0.0, lon_ref: float = 0.0) -> np.ndarray:
    """(lat, lon) [...,2] degrees -> CARLA world x, y [...,2] metres (inverse of local_to_gnss)."""
    ll = np.asarray(latlon, dtype=np.float64)
    s = _scale(lat_ref)
    my = np.log(np.tan((ll[..., 0] + 90.0) * math.pi / 360.0)) * (EARTH_RADIUS_EQUA * s)
    mx = ll[..., 1] * (math.pi * EARTH_RADIUS_EQUA * s) / 180.0
    y = s * EARTH_RADIUS_EQUA * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - my
    x = mx - s * lon_ref * math.pi * EARTH_RADIUS_EQUA / 180.0
    return np.stack([x, y], axis=-1)


def solve_geo_reference(location_xy: Sequence[float], latlon: Sequence[float]) -> tuple[float, float]:
    """(lat_ref, lon_ref) from one point known in both frames, as the b2d agents' ``_init`` fsolve does.

    Quirk kept: their first equation multiplies ``locx`` by the unknown lat_ref, so with lat_ref = 0 the solved
    lon_ref is the point's own longitude and local x is shifted by ``-locx``. Ego and route go through the same
    conversion, so relative geometry (what the planner and PID see) is unaffected.
    """
    from scipy.optimize import fsolve

    locx, locy = float(location_xy[0]), float(location_xy[1])
    lat, lon = float(latlon[0]), float(latlon[1])

    def equations(v):
        x, y = v
        c = math.cos(x * math.pi / 180)
        eq1 = lon * c - (locx * x * 180) / (math.pi * EARTH_RADIUS_EQUA) - c * y
        eq2 = (math.log(math.tan((lat + 90) * math.pi / 360)) * EARTH_RADIUS_EQUA * c + locy
               - c * EARTH_RADIUS_EQUA * math.log(math.tan((90 + x) * math.pi / 360)))
        return [eq1, eq2]

    lat_ref, lon_ref = fsolve(equations, [0.0, 0.0])
    return float(lat_ref), float(lon_ref)


def compass_to_yaw(compass: float) -> float:
    """IMU compass (rad, 0 = north, clockwise) -> CARLA yaw in radians wrapped to (-pi, pi]; NaN -> 0 like the agents."""
    if not math.isfinite(compass):
        compass = 0.0  # the compass reads NaN for the first frames (team_code b2d agents)
    yaw = compass - math.pi / 2
    return math.atan2(math.sin(yaw), math.cos(yaw))


def yaw_to_compass(yaw_rad: float) -> float:
    """CARLA yaw (rad) -> IMU compass in [0, 2*pi)."""
    return (yaw_rad + math.pi / 2) % (2 * math.pi)


def world_to_ego(points_xy: np.ndarray, ego_xy: Sequence[float], yaw_rad: float) -> np.ndarray:
    """World x, y [...,2] -> ego frame (x forward, y right, CARLA-handed) for an ego at ``ego_xy`` with ``yaw``."""
    d = np.asarray(points_xy, dtype=np.float64) - np.asarray(ego_xy, dtype=np.float64)
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


PLAN_SAMPLE_DISTANCE = 50.0  # m, AutonomousAgent.set_global_plan: downsample_route(route, 50)


def downsample_route(points_xy: np.ndarray, commands: Sequence[int], sample_factor: float = PLAN_SAMPLE_DISTANCE
                     ) -> list[int]:
    """Indices kept by leaderboard/utils/route_manipulation.py downsample_route.

    Kept: the first point, lane changes, option changes (junction entry / exit, unless coming from a lane
    change), a point once more than ``sample_factor`` metres were travelled, and the last point.
    """
    pts = np.asarray(points_xy, dtype=np.float64)[:, :2]
    lane_change = (ROAD_OPTION["CHANGELANELEFT"], ROAD_OPTION["CHANGELANERIGHT"])
    ids, prev, dist = [], None, 0.0
    for i, cur in enumerate(commands):
        if prev is None or cur in lane_change or (prev != cur and prev not in lane_change) or dist > sample_factor \
                or i == len(commands) - 1:
            ids.append(i)
            dist = 0.0
        else:
            dist += float(np.linalg.norm(pts[i] - pts[i - 1]))
        prev = cur
    return ids


class RoutePlanner:
    """Pops route points the ego has reached and returns the next one with its RoadOption value.

    Same rule as Bench2DriveZoo team_code/planner.py: among the points within ``max_distance`` along the route,
    the farthest one closer than ``min_distance`` to the ego and every point before it are popped (at least two
    points are kept); the answer is ``route[1]``.
    """

    def __init__(self, *, min_distance: float = ROUTE_MIN_DISTANCE, max_distance: float = ROUTE_MAX_DISTANCE):
        self.min_distance, self.max_distance = min_distance, max_distance
        self.route: deque[tuple[np.ndarray, int]] = deque()

    def set_route(self, points_xy: np.ndarray, commands: Sequence[int]) -> None:
        """points_xy [N,2] CARLA world metres, commands [N] RoadOption values."""
        if len(points_xy) != len(commands) or len(points_xy) == 0:
            raise ValueError("route planner needs as many commands as points, and at least one point")
        self.route = deque((np.asarray(p, dtype=np.float64)[:2], int(c)) for p, c in zip(points_xy, commands, strict=False))

    def run_step(self, ego_xy: np.ndarray) -> tuple[np.ndarray, int]:
        if len(self.route) == 1:
            return self.route[0]
        pts = np.stack([p for p, _ in self.route])
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        # point i (>=1) is examined while the cumulative length up to i-1 is <= max_distance
        cum_before = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
        examined = np.nonzero(cum_before <= self.max_distance)[0] + 1
        dist = np.linalg.norm(pts[examined] - np.asarray(ego_xy)[:2], axis=1)
        to_pop, farthest = 0, -np.inf
        for i, d in zip(examined, dist, strict=False):
            if d <= self.min_distance and d > farthest:
                farthest, to_pop = d, int(i)
        for _ in range(to_pop):
            if len(self.route) > 2:
                self.route.popleft()
        return self.route[1]
