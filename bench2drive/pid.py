"""Waypoint-following PID controller with the Bench2Drive constants (Bench2DriveZoo team_code/pid_controller.py).

Waypoints are in the frame the Bench2Drive agents feed it (the nuScenes-style lidar frame of UniAD/VAD):
x to the *right*, y *forward*, 2 Hz apart; a positive steer turns right. ``ego_to_pid`` converts from the
CARLA ego frame (x forward, y right).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# team_code/pid_controller.py defaults
TURN_KP, TURN_KI, TURN_KD, TURN_N = 0.75, 0.75, 0.3, 40
SPEED_KP, SPEED_KI, SPEED_KD, SPEED_N = 5.0, 0.5, 1.0, 40
MAX_THROTTLE = 0.75
BRAKE_SPEED = 0.4  # m/s: desired speed below this brakes
BRAKE_RATIO = 1.1  # brake when speed / desired_speed exceeds this
CLIP_DELTA = 0.25  # m/s: speed error fed to the speed PID is clipped to [0, this]
AIM_DIST = 4.0  # m: steering aims at the waypoint pair whose midpoint is nearest this distance
WAYPOINT_HZ = 2.0  # waypoints are 0.5 s apart: |delta| * 2 is a speed
SMALL_ANGLE = 0.03  # below this the route target's angle is used instead (team_code/pid_controller.py)
# Post-processing of the UniAD/VAD b2d agents (team_code/uniad_b2d_agent.py run_step)
MIN_BRAKE = 0.05
MAX_SPEED_FOR_THROTTLE = 5.0  # m/s: throttle is cut above this speed


def ego_to_pid(points: np.ndarray) -> np.ndarray:
    """CARLA ego frame (x forward, y right) [...,2] -> the PID's frame (x right, y forward)."""
    p = np.asarray(points, dtype=np.float64)
    return np.stack([p[..., 1], p[..., 0]], axis=-1)


class PID:
    """Windowed PID: integral = mean of the last ``n`` errors (window starts filled with zeros)."""

    def __init__(self, *, kp: float = 1.0, ki: float = 0.0, kd: float = 0.0, n: int = 20):
        self.kp, self.ki, self.kd = kp, ki, kd
        self._window = deque([0.0] * n, maxlen=n)

    def step(self, error: float) -> float:
        self._window.append(float(error))
        integral = float(np.mean(self._window))
        derivative = self._window[-1] - self._window[-2]
        return self.kp * error + self.ki * integral + self.kd * derivative


@dataclass
class PIDOutput:
    steer: float
    throttle: float
    brake: bool
    desired_speed: float
    aim: np.ndarray
    angle: float


class PIDController:
    """Turns planned waypoints into (steer, throttle, brake) as Bench2Drive's PIDController.control_pid."""

    def __init__(self, *, turn_kp: float = TURN_KP, turn_ki: float = TURN_KI, turn_kd: float = TURN_KD,
                 turn_n: int = TURN_N, speed_kp: float = SPEED_KP, speed_ki: float = SPEED_KI,
                 speed_kd: float = SPEED_KD, speed_n: int = SPEED_N, max_throttle: float = MAX_THROTTLE,
                 brake_speed: float = BRAKE_SPEED, brake_ratio: float = BRAKE_RATIO,
                 clip_delta: float = CLIP_DELTA, aim_dist: float = AIM_DIST):
        self.turn_controller = PID(kp=turn_kp, ki=turn_ki, kd=turn_kd, n=turn_n)
        self.speed_controller = PID(kp=speed_kp, ki=speed_ki, kd=speed_kd, n=speed_n)
        self.max_throttle, self.brake_speed, self.brake_ratio = max_throttle, brake_speed, brake_ratio
        self.clip_delta, self.aim_dist = clip_delta, aim_dist

    def control_pid(self, waypoints: np.ndarray, speed: float, target: np.ndarray) -> PIDOutput:
        """waypoints [N>=2, 2] (x right, y forward), speed m/s, target [2] route point in the same frame."""
        wps = np.asarray(waypoints, dtype=np.float64)[:, :2]
        if not np.isfinite(wps).all():
            raise ValueError("planned waypoints contain NaN/inf; the planner output is invalid")
        steps = np.linalg.norm(np.diff(wps, axis=0), axis=1)
        desired_speed = float(steps.sum() * WAYPOINT_HZ / len(steps))
        mid_norm = np.linalg.norm((wps[1:] + wps[:-1]) / 2.0, axis=1)
        # The reference keeps the first pair with the smallest |aim_dist - norm| and aims at its *first*
        # waypoint (waypoints[i], not the midpoint); argmin picks the first minimum the same way.
        aim = wps[int(np.argmin(np.abs(self.aim_dist - mid_norm)))]
        angle = float(np.degrees(np.pi / 2 - np.arctan2(aim[1], aim[0])) / 90)
        tgt = np.asarray(target, dtype=np.float64)
        angle_target = float(np.degrees(np.pi / 2 - np.arctan2(tgt[1], tgt[0])) / 90)
        angle_final = angle_target if abs(angle) < SMALL_ANGLE else angle
        steer = float(np.clip(self.turn_controller.step(angle_final), -1.0, 1.0))
        brake = bool(desired_speed < self.brake_speed or (speed / max(desired_speed, 1e-12)) > self.brake_ratio)
        delta = float(np.clip(desired_speed - speed, 0.0, self.clip_delta))
        throttle = float(np.clip(self.speed_controller.step(delta), 0.0, self.max_throttle))
        if brake:
            throttle = 0.0
        return PIDOutput(steer=steer, throttle=throttle, brake=brake, desired_speed=desired_speed, aim=aim,
                         angle=angle)


def pid_to_control(out: PIDOutput, speed: float) -> tuple[float, float, float]:
    """Apply the b2d agents' post-processing; returns (steer, throttle, brake) ready for VehicleControl."""
    brake = float(out.brake)
    throttle = out.throttle
    if brake < MIN_BRAKE:
        brake = 0.0
    if throttle > brake:
        brake = 0.0
    if speed > MAX_SPEED_FOR_THROTTLE:
        throttle = 0.0
    return (float(np.clip(out.steer, -1, 1)), float(np.clip(throttle, 0, MAX_THROTTLE)),
            float(np.clip(brake, 0, 1)))
