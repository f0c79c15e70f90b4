"""Replays exported trajectories: a JSON file `{token: [[x, y, heading] x 8]}` (current rear-axle frame, 0.5 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from navsim_agents.agents.abstract_agent import AbstractAgent
from navsim_agents.data.dataclasses import AgentInput, Scene, SensorConfig, Trajectory, TrajectorySampling


def _shape(poses: object) -> tuple[int, ...] | str:
    """Shape of one token's poses, or a word saying why it has none."""
    try:
        return np.asarray(poses, dtype=np.float64).shape
    except (TypeError, ValueError):
        return "not a numeric array"


class TrajectoryFileAgent(AbstractAgent):
    """Scores any planner's exported output; the token comes from the scene."""

    requires_scene = True

    def __init__(self, path: str, trajectory_sampling: TrajectorySampling | None = None):
        super().__init__(trajectory_sampling, requires_scene=True)
        self._path = Path(path) if path else None
        self._trajectories: dict[str, list] | None = None

    def name(self) -> str:
        return self.__class__.__name__

    @property
    def weights_source(self) -> str:
        return f"trajectory file {self._path}"

    def initialize(self) -> None:
        if self._path is None or not self._path.is_file():
            raise FileNotFoundError(f"trajectory file {self._path} not found; pass agent.path=FILE.json")
        try:
            data = json.loads(self._path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"trajectory file {self._path} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"trajectory file {self._path} must hold an object {{token: [[x, y, heading] x 8]}}")
        n = self._trajectory_sampling.num_poses
        shapes = {token: _shape(poses) for token, poses in data.items()}
        if data and not any(shape == (n, 3) for shape in shapes.values()):
            token, shape = next(iter(shapes.items()))
            raise ValueError(f"trajectory file {self._path}: no token has {n} poses of [x, y, heading] (e.g. token "
                             f"{token} has shape {shape}); write {{token: [[x, y, heading] x {n}]}} in the current "
                             f"rear-axle frame at {self._trajectory_sampling.interval_length} s steps")
        self._trajectories = data

    def get_sensor_config(self) -> SensorConfig:
        return SensorConfig.build_no_sensors()

    def trajectory_for_token(self, token: str) -> Trajectory:
        """The stored trajectory of `token` (KeyError naming the file when it is absent)."""
        if self._trajectories is None:
            self.initialize()
        if token not in self._trajectories:
            raise KeyError(f"token {token} not in trajectory file {self._path}")
        poses = np.asarray(self._trajectories[token])
        poses = poses if poses.dtype in (np.float32, np.float64) else poses.astype(np.float64)
        n = self._trajectory_sampling.num_poses
        if poses.ndim != 2 or poses.shape != (n, 3):
            raise ValueError(f"token {token}: trajectory must be {n} poses of [x, y, heading], got {poses.shape}")
        return Trajectory(poses, self._trajectory_sampling)

    def compute_trajectory(self, agent_input: AgentInput, scene: Scene | None = None) -> Trajectory:
        if scene is None:
            raise ValueError("TrajectoryFileAgent needs the scene (for its token)")
        return self.trajectory_for_token(scene.scene_metadata.initial_token)
