"""Constant-velocity baseline (navsim `agents/constant_velocity_agent.py`)."""

from __future__ import annotations

import numpy as np

from navsim_agents.agents.abstract_agent import AbstractAgent
from navsim_agents.data.dataclasses import AgentInput, SensorConfig, Trajectory, TrajectorySampling


class ConstantVelocityAgent(AbstractAgent):
    """Drives straight ahead at the current speed."""

    requires_scene = False

    def __init__(self, trajectory_sampling: TrajectorySampling | None = None):
        super().__init__(trajectory_sampling)

    def name(self) -> str:
        return self.__class__.__name__

    def initialize(self) -> None:
        pass

    def get_sensor_config(self) -> SensorConfig:
        return SensorConfig.build_no_sensors()

    def compute_trajectory(self, agent_input: AgentInput) -> Trajectory:
        velocity = np.asarray(agent_input.ego_statuses[-1].ego_velocity, dtype=np.float32)
        speed = (velocity**2).sum(-1) ** 0.5
        n, dt = self._trajectory_sampling.num_poses, self._trajectory_sampling.interval_length
        poses = np.array([[(i + 1) * dt * speed, 0.0, 0.0] for i in range(n)], dtype=np.float32)
        return Trajectory(poses, self._trajectory_sampling)
