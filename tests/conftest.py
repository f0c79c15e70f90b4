"""Shared test fixtures: the conformance folder beside the repo, and a quiet single-threaded torch."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def conformance_path(name: str = "") -> Path:
    """``../shared/conformance[/name]`` beside the checkout, or under ``$EUPE_DRIVE_CONFORMANCE`` (may not exist)."""
    env = os.environ.get("EUPE_DRIVE_CONFORMANCE")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "conformance"
    return root / name if name else root


def conformance_root() -> Path | None:
    """The conformance folder, or None when it is absent."""
    root = conformance_path()
    return root if root.is_dir() else None


@pytest.fixture
def conformance() -> Path:
    root = conformance_root()
    if root is None:
        pytest.skip("conformance data not found: expected ../shared/conformance beside the repo "
                    "or EUPE_DRIVE_CONFORMANCE=/path/to/conformance")
    return root


def csv_row_problems(ours, expected, continuous_tol: float, discrete_tol: float, is_continuous) -> list[str]:
    """Cells of `expected` (DataFrame indexed by token) that `ours` misses: `valid` must agree, NaN must equal NaN,
    numbers within `continuous_tol` where `is_continuous(column)` else `discrete_tol`."""
    problems = []
    for token, exp_row in expected.iterrows():
        row = ours.loc[token]
        if bool(row["valid"]) != bool(exp_row["valid"]):
            problems.append(f"{token} valid: ours {row['valid']} official {exp_row['valid']}")
        for col in expected.columns:
            if col == "valid":
                continue
            a, b = float(row[col]), float(exp_row[col])
            tol = continuous_tol if is_continuous(col) else discrete_tol
            if np.isnan(a) != np.isnan(b) or (not np.isnan(b) and abs(a - b) > tol):
                problems.append(f"{token} {col}: ours {a} official {b}")
    return problems


def conformance_agent(name: str, root: Path):
    """The agents of the conformance sets: `human`, `constant_velocity`, or `trajectory_file` replaying
    `<root>/trajectories.json`."""
    from navsim_agents.agents.constant_velocity_agent import ConstantVelocityAgent
    from navsim_agents.agents.human_agent import HumanAgent
    from navsim_agents.agents.trajectory_file_agent import TrajectoryFileAgent

    if name == "human":
        return HumanAgent()
    if name == "constant_velocity":
        return ConstantVelocityAgent()
    agent = TrajectoryFileAgent(str(root / "trajectories.json"))
    agent.initialize()
    return agent
