"""Shared test fixtures and checks: the conformance folder beside the repo, a quiet torch, tolerances that
scale with magnitude, and a CI run that fails where conformance data would be skipped."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# OMP_NUM_THREADS=1 is the single-thread pass CI runs on `-m numerics`; otherwise at most 2 (a shared CPU)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, min(2, os.cpu_count() or 1)))

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


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


def assert_close_to_scale(actual, expected, rtol: float, *, scale: float | None = None, what: str = "") -> None:
    """Every entry of ``actual`` within ``rtol * scale`` of ``expected`` (compared in float64).

    ``scale`` defaults to max |expected|: the rounding of a float32 computation grows with the largest values
    it mixes, so an entry near zero gets the same absolute slack as the largest one (an elementwise rtol would
    give it almost none, a bare atol ignores the magnitude)."""
    a = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual).detach().double()
    e = torch.as_tensor(np.asarray(expected) if not torch.is_tensor(expected) else expected).detach().double()
    a, e = torch.broadcast_tensors(a, e)
    if scale is None:
        scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} x scale {scale:.4g}"


# ---- conformance skips: listed by -ra and counted below; a failure in CI, which always has the data ----

def _is_conformance_skip(report: pytest.TestReport) -> bool:
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.lower()
    return "conformance" in reason and "not found" in reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and _is_conformance_skip(report):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"CI=true but the conformance data is missing ({reason}); CI must have "
                           "../shared/conformance beside the checkout or EUPE_DRIVE_CONFORMANCE set")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if _is_conformance_skip(r)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} conformance tests skipped: data not found at {conformance_path()} "
            "(set EUPE_DRIVE_CONFORMANCE; under CI=true these fail)", yellow=True, bold=True)


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
