"""Camera corruptions, sensor faults and planner latency inside the closed loop: the one home of these hooks.

The in-process leaderboard agent (``bench2drive.agent``), the privileged expert agent of the embedded simulator
and any other front end (a planner server) call the same three pieces:

- :class:`RoutePerturbation` changes what the agent *receives*: every camera image through a registered
  corruption of ``rap_backbone.corruptions`` (parameters drawn once per route and camera, per-frame noise per
  tick, as ``apply_to_agent_input`` does open-loop), then the camera faults (frame drop, camera crash), and the
  GNSS / speedometer / compass readings through the state faults. Every random stream is keyed by
  ``(seed, route, sensor, tick)``, so a rerun of a route sees exactly the same perturbation.
- :class:`ActionDelay` is the action FIFO of a planner that needs time to think: what is decided from the
  observation of tick ``t`` takes effect at tick ``t + k``, the previous decision acts meanwhile.
- :func:`latency_ticks` / :func:`profile_latency_ms` turn ``latency=none|fixed|measured`` into ``k``.

Sensor faults follow Bench2Drive-Robust's kinds (frame drops, a dead camera, GNSS / speed / compass noise); the
severity tables below are our own calibration (no reference publishes them per level), units in the names.
"""

from __future__ import annotations

import csv
import math
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bench2drive.geo import gnss_to_local, local_to_gnss
from rap_backbone.corruptions import CORRUPTIONS, MAX_SEVERITY, corrupt, corruption_names, make_rng

TICK_S = 0.05  # s per simulation tick: the leaderboard runs CARLA at 20 Hz (leaderboard_evaluator.py frame_rate)

# ---- sensor faults (our calibration, severity 1..5) ------------------------------------------------------
FRAME_DROP_PROBABILITY = (0.1, 0.2, 0.3, 0.5, 0.7)  # per camera frame: the agent gets the last good frame
CAMERA_CRASH_PROBABILITY = (0.2, 0.4, 0.6, 0.8, 1.0)  # per route: one camera (drawn per route) is black
GNSS_NOISE_STD_M = (0.1, 0.25, 0.5, 1.0, 2.0)  # white noise on each horizontal position axis, metres
SPEED_NOISE_STD_MPS = (0.1, 0.25, 0.5, 1.0, 2.0)  # white noise on the speedometer, m/s (reading kept >= 0)
COMPASS_NOISE_STD_DEG = (1.0, 2.0, 5.0, 10.0, 20.0)  # white noise on the IMU compass, degrees
SENSOR_FAULTS = {
    "frame_drop": "camera frames lost at random; the agent sees each camera's last good frame (probability/frame)",
    "camera_crash": "one camera, drawn per route, delivers black frames for the whole route (probability/route)",
    "gnss_noise": "Gaussian noise on the GNSS position (std in metres per axis)",
    "speed_noise": "Gaussian noise on the speedometer (std in m/s)",
    "compass_noise": "Gaussian noise on the IMU compass (std in degrees)",
}
CAMERA_FAULTS = ("frame_drop", "camera_crash")
LATENCY_MODES = ("none", "fixed", "measured")
LIVE_PROFILE = "live"  # latency=measured latency.profile=live times the planner call on the spot
LATENCY_PROFILES = Path(__file__).with_name("latency_profiles.csv")
# its columns; a row is identified by the first four (one latency per machine, backbone, planner size and images)
LATENCY_PROFILE_COLUMNS = ("profile", "backbone", "planner_config", "image", "latency_ms", "where", "how", "date")
LATENCY_PROFILE_KEY = LATENCY_PROFILE_COLUMNS[:4]
_SAVE_STAMP = re.compile(r"_\d\d_\d\d_\d\d_\d\d_\d\d$")  # the evaluator's %m_%d_%H_%M_%S suffix of save_name


def _severity(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= MAX_SEVERITY:
        raise ValueError(f"{what}={value!r} is not allowed; use an integer 1..{MAX_SEVERITY}")
    return int(value)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
        return cfg[key] if key in cfg else default
    return getattr(cfg, key, default)


@dataclass(frozen=True)
class CameraCorruption:
    """``corruption`` config in the closed loop: name, severity 1..5 (``none`` = off), cameras ('all' or rig ids)."""

    name: str = "none"
    severity: int = 0
    cameras: tuple[str, ...] | None = None  # None = every camera of the rig

    @property
    def active(self) -> bool:
        return self.name != "none"

    @classmethod
    def from_cfg(cls, cfg: Any) -> CameraCorruption:
        name = str(_get(cfg, "name", "none"))
        if name == "none":
            return cls()
        if name not in CORRUPTIONS:
            raise ValueError(f"corruption={name!r} is unknown; choose one of: none, {', '.join(corruption_names())}")
        severity = _severity(_get(cfg, "severity"), f"corruption.severity (corruption={name})")
        cams = _get(cfg, "cameras", "all")
        cameras = None if cams in (None, "all") else tuple(str(c) for c in ([cams] if isinstance(cams, str) else cams))
        return cls(name=name, severity=severity, cameras=cameras)


@dataclass(frozen=True)
class SensorFault:
    """``sensor_fault`` config: one of :data:`SENSOR_FAULTS` (or ``none``) with a severity 1..5."""

    name: str = "none"
    severity: int = 0

    @property
    def active(self) -> bool:
        return self.name != "none"

    @classmethod
    def from_cfg(cls, cfg: Any) -> SensorFault:
        name = str(_get(cfg, "name", "none"))
        if name == "none":
            return cls()
        if name not in SENSOR_FAULTS:
            raise ValueError(f"sensor_fault={name!r} is unknown; choose one of: none, {', '.join(SENSOR_FAULTS)}")
        return cls(name=name, severity=_severity(_get(cfg, "severity"), f"sensor_fault.severity ({name})"))

    def value(self) -> float:
        """The fault's parameter at its severity (probability, or std in the unit of its table)."""
        table = {"frame_drop": FRAME_DROP_PROBABILITY, "camera_crash": CAMERA_CRASH_PROBABILITY,
                 "gnss_noise": GNSS_NOISE_STD_M, "speed_noise": SPEED_NOISE_STD_MPS,
                 "compass_noise": COMPASS_NOISE_STD_DEG}[self.name]
        return float(table[self.severity - 1])


@dataclass(frozen=True)
class Latency:
    """``latency`` config: ``none``; ``fixed`` with ``ms``; ``measured`` with a hardware ``profile`` of
    :data:`LATENCY_PROFILES` (looked up by backbone and planner size) or ``live`` (each planner call timed)."""

    mode: str = "none"
    ms: float = 0.0
    profile: str | None = None

    @property
    def live(self) -> bool:
        return self.mode == "measured" and self.profile == LIVE_PROFILE

    @classmethod
    def from_cfg(cls, cfg: Any, *, backbone: str | None = None, planner_config: str | None = None,
                 table: Path | None = None) -> Latency:
        mode = str(_get(cfg, "mode", "none"))
        if mode not in LATENCY_MODES:
            raise ValueError(f"latency={mode!r} is unknown; choose one of: {', '.join(LATENCY_MODES)}")
        if mode == "none":
            return cls()
        if mode == "fixed":
            ms = _get(cfg, "ms")
            try:
                ms = float(ms)
            except (TypeError, ValueError):
                raise ValueError(f"latency.ms={ms!r} is not a number; give milliseconds >= 0, e.g. "
                                 "latency=fixed latency.ms=100") from None
            if not math.isfinite(ms) or ms < 0:
                raise ValueError(f"latency.ms={ms!r} is not allowed; give milliseconds >= 0 (finite)")
            return cls(mode=mode, ms=ms)
        profile = str(_get(cfg, "profile", LIVE_PROFILE))
        if profile == LIVE_PROFILE:
            return cls(mode=mode, profile=profile)
        ms = profile_latency_ms(profile, backbone or "", planner_config or "", table=table)
        return cls(mode=mode, ms=ms, profile=profile)

    def ticks(self, measured_s: float | None = None) -> int:
        """k: the ticks between the observation a plan is made from and the tick it takes effect."""
        if self.mode == "none":
            return 0
        if self.live:
            return latency_ticks(1000.0 * (measured_s or 0.0))
        return latency_ticks(self.ms)

    def describe(self) -> str:
        if self.mode == "none":
            return "none"
        if self.live:
            return "measured (each planner call timed)"
        src = f", profile {self.profile}" if self.profile else ""
        return f"{self.ms:g} ms = {self.ticks()} ticks{src}"


def latency_ticks(ms: float) -> int:
    """ceil(latency / 50 ms): a plan ready after ``ms`` acts from that many ticks after its observation."""
    return int(math.ceil(float(ms) / (1000.0 * TICK_S) - 1e-9)) if ms > 0 else 0


def read_latency_profiles(table: Path | None = None) -> list[dict]:
    """Rows of the hardware-profile table (profile, backbone, planner_config, image, latency_ms, where, how)."""
    path = Path(table) if table is not None else LATENCY_PROFILES
    if not path.is_file():
        raise FileNotFoundError(f"latency profile table {path} does not exist; write it with "
                                "`python benchmarks/closed_loop.py` or use latency=fixed latency.ms=N")
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("profile") and not row["profile"].startswith("#")]


def profile_latency_ms(profile: str, backbone: str, planner_config: str, *, table: Path | None = None) -> float:
    """The planner latency (ms) of ``backbone`` + ``planner_config`` on hardware ``profile``."""
    rows = read_latency_profiles(table)
    profiles = sorted({r["profile"] for r in rows})
    if profile not in profiles:
        raise ValueError(f"latency.profile={profile!r} is not in {table or LATENCY_PROFILES}; profiles: "
                         f"{', '.join(profiles) or '(none)'}, or {LIVE_PROFILE!r} to time the planner on the spot")
    mine = [r for r in rows if r["profile"] == profile]
    hit = [r for r in mine if r["backbone"] == backbone and r["planner_config"] == planner_config]
    if not hit:
        have = sorted(f"{r['backbone']} ({r['planner_config']})" for r in mine)
        raise ValueError(f"latency profile {profile!r} has no row for backbone {backbone!r} with planner "
                         f"{planner_config!r}; it has: {', '.join(have)}. Measure it with `python "
                         f"benchmarks/closed_loop.py --backbones {backbone}` or use latency=fixed latency.ms=N")
    return float(hit[-1]["latency_ms"])


def route_key(save_name: str | None) -> str:
    """The stable part of a leaderboard save_name (the evaluator appends a wall-clock stamp)."""
    return _SAVE_STAMP.sub("", save_name or "")


class RoutePerturbation:
    """What one route's agent receives, perturbed: ``cameras(images, tick)`` and ``state(input_data, tick)``.

    ``camera_ids`` are the rig's ids in order; ``seed`` the run's seed; ``key`` names the route.
    """

    def __init__(self, corruption: CameraCorruption, fault: SensorFault, camera_ids: Sequence[str], *,
                 seed: int, key: str, frame_interval_s: float, intrinsics: Mapping[str, np.ndarray] | None = None):
        self.corruption, self.fault, self.seed, self.key = corruption, fault, int(seed), key
        self.camera_ids = list(camera_ids)
        self.intrinsics = dict(intrinsics or {})  # per camera: fog's ground-plane depth, drift's homography
        self.frame_interval_s = frame_interval_s
        lower = {c.lower(): c for c in self.camera_ids}
        if corruption.cameras is None:
            self.corrupted = set(self.camera_ids)
        else:
            bad = [c for c in corruption.cameras if c.lower() not in lower]
            if bad:
                raise ValueError(f"corruption.cameras has {bad}, not cameras of the rig; use 'all' or some of "
                                 f"{self.camera_ids}")
            self.corrupted = {lower[c.lower()] for c in corruption.cameras}
        self.crashed: str | None = None
        if fault.name == "camera_crash":
            rng = make_rng(self.seed, key, "camera_crash")
            if rng.random() < fault.value():
                self.crashed = self.camera_ids[int(rng.integers(len(self.camera_ids)))]
        self._history: dict[str, deque] = {c: deque(maxlen=8) for c in self.camera_ids}
        self._last_good: dict[str, np.ndarray] = {}

    @property
    def active(self) -> bool:
        return self.corruption.active or self.fault.active

    def camera(self, cam_id: str, rgb: np.ndarray, tick: int) -> np.ndarray:
        """The image (HxWx3 uint8 RGB) the agent gets from camera ``cam_id`` at ``tick``."""
        out = rgb
        if self.corruption.active and cam_id in self.corrupted:
            c = self.corruption
            # scene parameters from (seed, route, camera) only: the same dirt, drops and drift every frame
            out = corrupt(rgb, c.name, c.severity, rng=make_rng(self.seed, self.key, cam_id),
                          noise_rng=make_rng(self.seed, self.key, cam_id, f"tick{tick}"),
                          history=list(self._history[cam_id]), frame_interval_s=self.frame_interval_s,
                          intrinsics=self.intrinsics.get(cam_id))
            self._history[cam_id].append(rgb)
        if self.fault.name == "camera_crash" and cam_id == self.crashed:
            return np.zeros_like(out)
        if self.fault.name == "frame_drop":
            dropped = make_rng(self.seed, self.key, cam_id, "drop", tick).random() < self.fault.value()
            if dropped and cam_id in self._last_good:
                return self._last_good[cam_id]
            if not dropped:
                self._last_good[cam_id] = out
        return out

    def state(self, input_data: dict, tick: int) -> dict:
        """``input_data`` with the GNSS, speedometer or compass reading of ``tick`` perturbed (a shallow copy;
        camera entries untouched)."""
        name = self.fault.name
        if name not in ("gnss_noise", "speed_noise", "compass_noise"):
            return input_data
        rng = make_rng(self.seed, self.key, name, tick)
        std = self.fault.value()
        out = _shallow_copy(input_data)
        if name == "gnss_noise":
            frame, gps = input_data["GPS"]
            gps = np.array(gps, dtype=np.float64)
            xy = gnss_to_local(gps[:2]) + rng.normal(0.0, std, 2)  # metres in CARLA's frame, then back
            gps[:2] = local_to_gnss(xy)
            dict.__setitem__(out, "GPS", (frame, gps))
        elif name == "speed_noise":
            frame, speed = input_data["SPEED"]
            dict.__setitem__(out, "SPEED", (frame, {**speed, "speed": max(0.0, speed["speed"] + rng.normal(0.0, std))}))
        else:
            frame, imu = input_data["IMU"]
            imu = np.array(imu, dtype=np.float64)
            imu[-1] = (imu[-1] + math.radians(rng.normal(0.0, std))) % (2 * math.pi)
            dict.__setitem__(out, "IMU", (frame, imu))
        return out


def _shallow_copy(input_data: dict) -> dict:
    """A copy that keeps a lazily rendering sensor dict lazy (its class and render hook are kept)."""
    import copy

    return copy.copy(input_data)


class ActionDelay:
    """Action FIFO: ``push(item, ready_tick)``; ``due(tick)`` gives the newest item ready by ``tick`` (and drops
    older ones), or None when none became ready since the last call."""

    def __init__(self) -> None:
        self._queue: deque = deque()

    def push(self, item: Any, ready_tick: int) -> None:
        self._queue.append((int(ready_tick), item))

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def due(self, tick: int) -> Any:
        item = None
        while self._queue and self._queue[0][0] <= tick:
            item = self._queue.popleft()[1]
        return item


@dataclass(frozen=True)
class Perturbations:
    """The validated ``corruption`` / ``sensor_fault`` / ``latency`` settings of a run, and the seed."""

    corruption: CameraCorruption = CameraCorruption()
    fault: SensorFault = SensorFault()
    latency: Latency = Latency()
    seed: int = 0

    @classmethod
    def from_cfg(cls, *, corruption: Any = None, sensor_fault: Any = None, latency: Any = None, seed: int = 0,
                 backbone: str | None = None, planner_config: str | None = None) -> Perturbations:
        """Validate everything before a simulation starts; errors name the setting and the allowed values."""
        return cls(corruption=CameraCorruption.from_cfg(corruption), fault=SensorFault.from_cfg(sensor_fault),
                   latency=Latency.from_cfg(latency, backbone=backbone, planner_config=planner_config),
                   seed=int(seed))

    def for_route(self, save_name: str | None, camera_ids: Sequence[str], *, frame_interval_s: float,
                  intrinsics: Mapping[str, np.ndarray] | None = None) -> RoutePerturbation:
        return RoutePerturbation(self.corruption, self.fault, camera_ids, seed=self.seed, key=route_key(save_name),
                                 frame_interval_s=frame_interval_s, intrinsics=intrinsics)

    def describe(self) -> str:
        parts = []
        if self.corruption.active:
            parts.append(f"corruption {self.corruption.name} severity {self.corruption.severity}")
        if self.fault.active:
            parts.append(f"sensor fault {self.fault.name} severity {self.fault.severity}")
        if self.latency.mode != "none":
            parts.append(f"latency {self.latency.describe()}")
        return ", ".join(parts) or "clean sensors, no latency"
