"""The NAVSIM leaderboard's submission pickle: write it for any agent, read it back to score offline.

Layout (navsim main 0a380a9 `planning/script/run_create_submission_pickle.py`)::

    {"team_name", "authors", "email", "institution", "country / region",
     "first_stage_predictions": [{token: navsim.common.dataclasses.Trajectory}],
     "second_stage_predictions": [{token: Trajectory}]}

with `Trajectory(poses, trajectory_sampling)` and nuPlan's `TrajectorySampling(num_poses, time_horizon,
interval_length)`. The pickle names those devkit classes, so the leaderboard (and the devkit's
`run_pdm_score_from_submission.py`) unpickle it; we write and read it without the devkit installed by standing in
for the two classes while pickling / unpickling.
"""

from __future__ import annotations

import pickle
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

__all__ = ["write_submission", "read_submission", "SUBMISSION_KEYS"]

TRAJECTORY_CLASS = ("navsim.common.dataclasses", "Trajectory")
SAMPLING_CLASS = ("nuplan.planning.simulation.trajectory.trajectory_sampling", "TrajectorySampling")
SUBMISSION_KEYS = ("team_name", "authors", "email", "institution", "country / region")


@dataclass
class _Trajectory:  # state of navsim.common.dataclasses.Trajectory
    poses: np.ndarray
    trajectory_sampling: Any


@dataclass
class _TrajectorySampling:  # state of nuplan's TrajectorySampling
    num_poses: Optional[int] = None
    time_horizon: Optional[float] = None
    interval_length: Optional[float] = None


@contextmanager
def _devkit_class_names() -> Iterator[None]:
    """Make the stand-ins importable under the devkit's module paths while pickling (only where those modules are
    not importable for real)."""
    added = []
    for (module, name), cls in ((TRAJECTORY_CLASS, _Trajectory), (SAMPLING_CLASS, _TrajectorySampling)):
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in sys.modules:
                sys.modules[prefix] = types.ModuleType(prefix)
                added.append(prefix)
        setattr(sys.modules[module], name, cls)
        cls.__module__, cls.__qualname__ = module, name
    try:
        yield
    finally:
        for prefix in added:
            sys.modules.pop(prefix, None)
        _Trajectory.__module__ = _TrajectorySampling.__module__ = __name__
        _Trajectory.__qualname__, _TrajectorySampling.__qualname__ = "_Trajectory", "_TrajectorySampling"


def _to_devkit(poses, interval_length: float) -> _Trajectory:
    poses = np.asarray(poses, dtype=np.float32)
    if poses.ndim != 2 or poses.shape[1] != 3:
        raise ValueError(f"trajectory poses must be (N, 3) x, y, heading; got {poses.shape}")
    sampling = _TrajectorySampling(len(poses), float(len(poses) * interval_length), float(interval_length))
    return _Trajectory(poses, sampling)


def write_submission(path: str | Path, first_stage: Mapping[str, Any], second_stage: Mapping[str, Any],
                     team: Mapping[str, str], interval_length: float = 0.5) -> Path:
    """Write the leaderboard pickle: stage outputs are {token: poses (N, 3) or an object with `.poses`}; `team`
    gives the five `SUBMISSION_KEYS` (missing ones are written empty)."""
    def convert(stage: Mapping[str, Any]) -> Dict[str, _Trajectory]:
        return {str(t): _to_devkit(getattr(p, "poses", p), interval_length) for t, p in stage.items()}

    data = {key: str(team.get(key, "")) for key in SUBMISSION_KEYS}
    with _devkit_class_names():
        data["first_stage_predictions"] = [convert(first_stage)]
        data["second_stage_predictions"] = [convert(second_stage)]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            _Pickler(fh).dump(data)
        tmp.replace(path)
    return path


class _Pickler(pickle.Pickler):
    """Arrays as `numpy.array(list, dtype)`: numpy 2 pickles name `numpy._core`, which the devkit's numpy 1 lacks."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            return np.array, (obj.tolist(), obj.dtype.str)
        return NotImplemented


class _SubmissionUnpickler(pickle.Unpickler):
    """Maps the devkit's Trajectory / TrajectorySampling onto plain stand-ins; refuses every other class."""

    _ALLOWED = {("numpy", "array"), ("numpy", "dtype"), ("numpy", "ndarray"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module: str, name: str):
        if (module, name) == TRAJECTORY_CLASS:
            return _Trajectory
        if (module, name) == SAMPLING_CLASS:
            return _TrajectorySampling
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"submission pickle refers to {module}.{name}; only navsim Trajectory objects "
                                     "and numpy arrays are expected")


def read_submission(path: str | Path) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, str]]:
    """(first-stage {token: poses}, second-stage {token: poses}, team fields) of a submission pickle.

    :raises FileNotFoundError: no file at `path`.
    :raises ValueError: not a single-seed submission in the leaderboard layout (names the key at fault).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission file {path} not found; write one with run_create_submission_pickle.py")
    with open(path, "rb") as fh:
        try:
            data = _SubmissionUnpickler(fh).load()
        except Exception as err:
            raise ValueError(f"{path} is not a readable submission pickle ({type(err).__name__}: {err})") from err
    stages = []
    for key in ("first_stage_predictions", "second_stage_predictions"):
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
            raise ValueError(f"{path}: '{key}' must be a list with one {{token: Trajectory}} dict (single seed, as "
                             "run_pdm_score_from_submission requires)")
        stages.append({str(t): np.asarray(getattr(tr, "poses", tr)) for t, tr in value[0].items()})
    team = {k: str(data.get(k, "")) for k in SUBMISSION_KEYS}
    return stages[0], stages[1], team
