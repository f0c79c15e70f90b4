"""navsim_agents.devkit against a minimal stand-in of NAVSIM's devkit modules.

The real devkit (autonomousvision/navsim + nuplan-devkit) is not installable here (not on PyPI, pinned to
Python 3.9); the stand-in reproduces the devkit API the adapter relies on: AbstractAgent(torch.nn.Module)
with ``__init__(trajectory_sampling, requires_scene)``, SensorConfig, Trajectory, and the builder bases.
"""
from __future__ import annotations

import sys
import types
from abc import ABC
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from tests.test_rap_agent import TINY_BACKBONE, TINY_PLANNER, agent_input


def _stand_in_devkit() -> dict[str, types.ModuleType]:
    agent_mod = types.ModuleType("navsim.agents.abstract_agent")

    class AbstractAgent(torch.nn.Module, ABC):
        def __init__(self, trajectory_sampling: Any, requires_scene: bool = False):
            super().__init__()
            self.requires_scene = requires_scene
            self._trajectory_sampling = trajectory_sampling

    agent_mod.AbstractAgent = AbstractAgent
    dc_mod = types.ModuleType("navsim.common.dataclasses")

    @dataclass
    class SensorConfig:
        cam_f0: Any
        cam_l0: Any
        cam_l1: Any
        cam_l2: Any
        cam_r0: Any
        cam_r1: Any
        cam_r2: Any
        cam_b0: Any
        lidar_pc: Any

    @dataclass
    class Trajectory:
        poses: np.ndarray
        trajectory_sampling: Any = None

    dc_mod.SensorConfig, dc_mod.Trajectory = SensorConfig, Trajectory
    b_mod = types.ModuleType("navsim.planning.training.abstract_feature_target_builder")
    b_mod.AbstractFeatureBuilder = type("AbstractFeatureBuilder", (ABC,), {})
    b_mod.AbstractTargetBuilder = type("AbstractTargetBuilder", (ABC,), {})
    return {"agent": agent_mod, "dataclasses": dc_mod, "builders": b_mod}


def test_devkit_agent_on_stand_in():
    from navsim_agents.devkit import make_devkit_agent_class

    mods = _stand_in_devkit()
    cls = make_devkit_agent_class(mods)
    sampling = types.SimpleNamespace(num_poses=8, time_horizon=4, interval_length=0.5)
    torch.manual_seed(0)
    agent = cls(trajectory_sampling=sampling, backbone=TINY_BACKBONE, planner=dict(TINY_PLANNER), image_scale=0.5)
    assert isinstance(agent, mods["agent"].AbstractAgent)
    sc = agent.get_sensor_config()
    assert isinstance(sc, mods["dataclasses"].SensorConfig)
    assert sc.cam_f0 == [3] and sc.cam_b0 == [3] and sc.cam_l1 == [] and sc.lidar_pc == []
    fb = agent.get_feature_builders()[0]
    assert isinstance(fb, mods["builders"].AbstractFeatureBuilder) and fb.get_unique_name() == "rap_feature"
    traj = agent.compute_trajectory(agent_input())
    assert isinstance(traj, mods["dataclasses"].Trajectory) and traj.poses.shape == (8, 3)
    assert traj.trajectory_sampling is sampling
    assert "backbone: random" in agent.weights_source


def test_devkit_missing_is_a_clear_error():
    import navsim_agents.devkit as devkit

    if devkit.devkit_available():
        pytest.skip("the NAVSIM devkit is installed here")
    assert "navsim" not in sys.modules or not hasattr(sys.modules["navsim"], "agents")
    with pytest.raises(ImportError, match="NAVSIM devkit module navsim"):
        devkit.RAPDevkitAgent(trajectory_sampling=None)
