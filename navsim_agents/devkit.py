"""Our RAP agent under NAVSIM's own devkit (``navsim`` package), for the devkit's scripts.

When the devkit is importable, :data:`RAPDevkitAgent` is a subclass of the devkit's
``navsim.agents.abstract_agent.AbstractAgent`` wrapping :class:`navsim_agents.agents.rap_agent.RAPAgent`; its
feature/target builders subclass the devkit's ``AbstractFeatureBuilder`` / ``AbstractTargetBuilder`` and
its sensor config and trajectories are the devkit's dataclasses. Put ``configs/agent/rap_devkit.yaml`` in the
devkit's ``navsim/planning/script/config/common/agent/`` (or add ours, installed with eupe-drive:
``'hydra.searchpath=[pkg://eupe_drive_configs]'``) and run e.g. ``run_pdm_score.py agent=rap_devkit``.

Without the devkit, calling ``RAPDevkitAgent`` or :func:`make_devkit_agent_class` raises ImportError saying so.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

DEVKIT_MODULES = {
    "agent": "navsim.agents.abstract_agent",
    "dataclasses": "navsim.common.dataclasses",
    "builders": "navsim.planning.training.abstract_feature_target_builder",
}


def load_devkit() -> dict[str, ModuleType]:
    """Import the devkit modules we build on; ImportError naming the missing module otherwise."""
    mods = {}
    for key, name in DEVKIT_MODULES.items():
        try:
            mods[key] = importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"NAVSIM devkit module {name} is not importable ({error}); install the devkit "
                              "(github.com/autonomousvision/navsim, pip install -e .) to use the devkit agent, "
                              "or use navsim_agents/run_pdm_score.py") from error
    return mods


def make_devkit_agent_class(modules: dict[str, ModuleType] | None = None) -> type:
    """Build the devkit agent class on the devkit's base classes (``modules`` as returned by load_devkit)."""
    mods = modules or load_devkit()
    base_agent = mods["agent"].AbstractAgent
    devkit_dc = mods["dataclasses"]
    feature_base = mods["builders"].AbstractFeatureBuilder
    target_base = mods["builders"].AbstractTargetBuilder

    class DevkitFeatureBuilder(feature_base):
        """The devkit's feature builder interface around :class:`RAPFeatureBuilder` (duck-typed inputs)."""

        def __init__(self, inner: Any):
            self._inner = inner

        def get_unique_name(self) -> str:
            return self._inner.get_unique_name()

        def compute_features(self, agent_input: Any) -> dict[str, torch.Tensor]:
            return self._inner.compute_features(agent_input)

    class DevkitTargetBuilder(target_base):
        def __init__(self, inner: Any):
            self._inner = inner

        def get_unique_name(self) -> str:
            return self._inner.get_unique_name()

        def compute_targets(self, scene: Any) -> dict[str, torch.Tensor]:
            return self._inner.compute_targets(scene)

    class RAPDevkitAgent(base_agent):
        """RAP with a swappable backbone as a NAVSIM devkit agent; keyword arguments as RAPAgent's."""

        def __init__(self, trajectory_sampling: Any, **rap_kwargs: Any):
            try:
                super().__init__(trajectory_sampling=trajectory_sampling, requires_scene=False)
            except TypeError:  # devkit v1.x: AbstractAgent(requires_scene=False)
                super().__init__(requires_scene=False)
                self._trajectory_sampling = trajectory_sampling
            from navsim_agents.agents.rap_agent import RAPAgent

            self._trajectory_sampling = trajectory_sampling
            self.rap = RAPAgent(trajectory_sampling=trajectory_sampling, **rap_kwargs)

        def name(self) -> str:
            return self.__class__.__name__

        def initialize(self) -> None:
            self.rap.initialize()

        def get_sensor_config(self) -> Any:
            from navsim_agents.agents.rap_agent import CURRENT_FRAME_INDEX
            from rap_backbone.nuplan_rig import CAMERA_NAMES, RAP_CAMERA_NAMES

            cams = {name: [] for name in CAMERA_NAMES}
            for name in RAP_CAMERA_NAMES:
                cams[name] = [CURRENT_FRAME_INDEX]
            return devkit_dc.SensorConfig(**cams, lidar_pc=[])

        def get_feature_builders(self) -> list:
            return [DevkitFeatureBuilder(b) for b in self.rap.get_feature_builders()]

        def get_target_builders(self) -> list:
            return [DevkitTargetBuilder(b) for b in self.rap.get_target_builders()]

        def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return self.rap.forward(features)

        def compute_trajectory(self, agent_input: Any) -> Any:
            self.eval()
            features = self.rap.get_feature_builders()[0].compute_features(agent_input)
            batch = {k: v.unsqueeze(0) for k, v in features.items()}
            with torch.no_grad():
                poses = self.forward(batch)["trajectory"].squeeze(0).float().cpu().numpy()
            return devkit_dc.Trajectory(poses, self._trajectory_sampling)

        def compute_loss(self, features: dict, targets: dict, predictions: dict) -> torch.Tensor:
            return self.rap.compute_loss(features, targets, predictions)["loss"]

        def get_optimizers(self) -> Any:
            return self.rap.get_optimizers()

        def get_training_callbacks(self) -> list:
            return self.rap.get_training_callbacks()

        @property
        def weights_source(self) -> str:
            return self.rap.weights_source

    return RAPDevkitAgent


def devkit_available() -> bool:
    try:
        load_devkit()
    except ImportError:
        return False
    return True


def _devkit_missing(*args: Any, **kwargs: Any) -> Any:
    load_devkit()  # raises ImportError naming the missing devkit module
    raise ImportError("NAVSIM devkit became importable after navsim_agents.devkit was imported; re-import it")


RAPDevkitAgent = make_devkit_agent_class() if devkit_available() else _devkit_missing
