"""The devkit's trainable baseline: an MLP from the current ego status to the trajectory
(navsim `agents/ego_status_mlp_agent.py`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from navsim_agents.agents.abstract_agent import AbstractAgent, AbstractFeatureBuilder, AbstractTargetBuilder
from navsim_agents.data.dataclasses import AgentInput, Scene, SensorConfig, TrajectorySampling

logger = logging.getLogger(__name__)


class EgoStatusFeatureBuilder(AbstractFeatureBuilder):
    """Velocity (2), acceleration (2) and the one-hot driving command (4) of the current frame."""

    def get_unique_name(self) -> str:
        return "ego_status_feature"

    def compute_features(self, agent_input: AgentInput) -> Dict[str, torch.Tensor]:
        status = agent_input.ego_statuses[-1]
        feature = torch.cat([torch.as_tensor(status.ego_velocity), torch.as_tensor(status.ego_acceleration),
                             torch.as_tensor(status.driving_command)], dim=-1)
        return {"ego_status": feature}


class TrajectoryTargetBuilder(AbstractTargetBuilder):
    """The logged future poses."""

    def __init__(self, trajectory_sampling: TrajectorySampling):
        self._trajectory_sampling = trajectory_sampling

    def get_unique_name(self) -> str:
        return "trajectory_target"

    def compute_targets(self, scene: Scene) -> Dict[str, torch.Tensor]:
        future = scene.get_future_trajectory(num_trajectory_frames=self._trajectory_sampling.num_poses)
        return {"trajectory": torch.as_tensor(future.poses)}


class EgoStatusMLPAgent(AbstractAgent):
    """4-layer MLP (8 -> hidden x3 -> num_poses*3), L1 loss, Adam."""

    def __init__(self, hidden_layer_dim: int = 512, lr: float = 1e-4, checkpoint_path: Optional[str] = None,
                 trajectory_sampling: Optional[TrajectorySampling] = None):
        super().__init__(trajectory_sampling)
        self._checkpoint_path = checkpoint_path
        self._lr = lr
        n = self._trajectory_sampling.num_poses
        self._mlp = torch.nn.Sequential(
            torch.nn.Linear(8, hidden_layer_dim), torch.nn.ReLU(),
            torch.nn.Linear(hidden_layer_dim, hidden_layer_dim), torch.nn.ReLU(),
            torch.nn.Linear(hidden_layer_dim, hidden_layer_dim), torch.nn.ReLU(),
            torch.nn.Linear(hidden_layer_dim, n * 3),
        )

    def name(self) -> str:
        return self.__class__.__name__

    @property
    def weights_source(self) -> str:
        return str(self._checkpoint_path) if self._checkpoint_path else "random (no agent.checkpoint_path)"

    def initialize(self) -> None:
        """Load a Lightning checkpoint (`state_dict` with `agent.` prefixes) when one is given."""
        if not self._checkpoint_path:
            logger.warning("EgoStatusMLPAgent: no checkpoint_path, running with RANDOM weights")
            return
        path = Path(self._checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"ego_status_mlp checkpoint {path} not found")
        blob: Dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        state = blob.get("state_dict", blob)
        missing, unexpected = self.load_state_dict({k.replace("agent.", ""): v for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise KeyError(f"checkpoint {path}: missing keys {missing}, unexpected keys {unexpected}")

    def get_sensor_config(self) -> SensorConfig:
        return SensorConfig.build_no_sensors()

    def get_feature_builders(self) -> List[AbstractFeatureBuilder]:
        return [EgoStatusFeatureBuilder()]

    def get_target_builders(self) -> List[AbstractTargetBuilder]:
        return [TrajectoryTargetBuilder(self._trajectory_sampling)]

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        poses = self._mlp(features["ego_status"].to(torch.float32))
        return {"trajectory": poses.reshape(-1, self._trajectory_sampling.num_poses, 3)}

    def compute_loss(self, features, targets, predictions) -> torch.Tensor:
        return torch.nn.functional.l1_loss(predictions["trajectory"], targets["trajectory"])

    def get_optimizers(self):
        return torch.optim.Adam(self._mlp.parameters(), lr=self._lr)
