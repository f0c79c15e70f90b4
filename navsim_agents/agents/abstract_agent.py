"""NAVSIM's agent interface (navsim `agents/abstract_agent.py`): one nn.Module per planner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Union

import torch
from torch import nn

from navsim_agents.data.dataclasses import AgentInput, Scene, SensorConfig, Trajectory, TrajectorySampling


class AbstractFeatureBuilder(ABC):
    """Computes a dict of tensors from an AgentInput."""

    @abstractmethod
    def get_unique_name(self) -> str: ...

    @abstractmethod
    def compute_features(self, agent_input: AgentInput) -> Dict[str, torch.Tensor]: ...


class AbstractTargetBuilder(ABC):
    """Computes a dict of target tensors from a Scene."""

    @abstractmethod
    def get_unique_name(self) -> str: ...

    @abstractmethod
    def compute_targets(self, scene: Scene) -> Dict[str, torch.Tensor]: ...


class AbstractAgent(nn.Module, ABC):
    """A planner: `compute_trajectory(agent_input)` -> Trajectory of 8 poses (0.5 s, current rear-axle frame)."""

    requires_scene: bool = False

    def __init__(self, trajectory_sampling: Optional[TrajectorySampling] = None, requires_scene: bool = False):
        super().__init__()
        self._trajectory_sampling = trajectory_sampling or TrajectorySampling(time_horizon=4, interval_length=0.5)
        self.requires_scene = requires_scene

    @abstractmethod
    def name(self) -> str:
        """Agent name used in logs and result tables."""

    @abstractmethod
    def get_sensor_config(self) -> SensorConfig:
        """Sensors the agent reads."""

    @abstractmethod
    def initialize(self) -> None:
        """Load weights or other state before the first trajectory."""

    @property
    def weights_source(self) -> str:
        """Where the agent's weights come from ('none' for rule-based agents)."""
        return "none (rule-based)"

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Batched features -> dict with 'trajectory' [B,T,3]."""
        raise NotImplementedError(f"{self.name()} has no learned forward pass")

    def get_feature_builders(self) -> List[AbstractFeatureBuilder]:
        raise NotImplementedError(f"{self.name()} has no feature builders")

    def get_target_builders(self) -> List[AbstractTargetBuilder]:
        raise NotImplementedError(f"{self.name()} has no target builders")

    def compute_trajectory(self, agent_input: AgentInput) -> Trajectory:
        """Run the feature builders, add a batch dim, forward under no_grad and return the Trajectory."""
        self.eval()
        features: Dict[str, torch.Tensor] = {}
        for builder in self.get_feature_builders():
            features.update(builder.compute_features(agent_input))
        features = {k: v.unsqueeze(0) for k, v in features.items()}
        with torch.no_grad():
            poses = self.forward(features)["trajectory"].squeeze(0).float().cpu().numpy()
        return Trajectory(poses, self._trajectory_sampling)

    def compute_loss(self, features: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor],
                     predictions: Dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name()} is not trainable")

    def get_optimizers(self) -> Union[torch.optim.Optimizer, Dict[str, Any]]:
        raise NotImplementedError(f"{self.name()} is not trainable")

    def get_training_callbacks(self) -> list:
        return []
