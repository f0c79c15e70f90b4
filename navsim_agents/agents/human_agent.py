"""Privileged human agent: replays the logged future of the ego (navsim `agents/human_agent.py`)."""

from __future__ import annotations

from navsim_agents.agents.abstract_agent import AbstractAgent
from navsim_agents.data.dataclasses import AgentInput, Scene, SensorConfig, Trajectory, TrajectorySampling


class HumanAgent(AbstractAgent):
    """Returns the human operator's future poses; needs the scene."""

    requires_scene = True

    def __init__(self, trajectory_sampling: TrajectorySampling | None = None):
        super().__init__(trajectory_sampling, requires_scene=True)

    def name(self) -> str:
        return self.__class__.__name__

    def initialize(self) -> None:
        pass

    @property
    def weights_source(self) -> str:
        return "none (logged human trajectory)"

    def get_sensor_config(self) -> SensorConfig:
        return SensorConfig.build_no_sensors()

    def compute_trajectory(self, agent_input: AgentInput, scene: Scene | None = None) -> Trajectory:
        if scene is None:
            raise ValueError("HumanAgent needs the scene: call compute_trajectory(agent_input, scene)")
        return scene.get_future_trajectory(self._trajectory_sampling.num_poses)
