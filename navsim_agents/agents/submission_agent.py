"""Replays a leaderboard submission pickle (both stages), so `run_pdm_score.py` scores offline what is uploaded.

    python navsim_agents/run_pdm_score.py agent=submission agent.path=submission.pkl scorer=epdms_two_stage ...

Tokens of the split that the submission lacks become invalid rows (their two-stage entries are left out of the
aggregates); navsim's `run_pdm_score_from_submission.py` instead scores only the submitted tokens.
"""

from __future__ import annotations

import numpy as np

from navsim_agents.agents.trajectory_file_agent import TrajectoryFileAgent


class SubmissionAgent(TrajectoryFileAgent):
    """The trajectories of a submission pickle (`navsim_agents.submission` layout); the token comes from the scene."""

    @property
    def weights_source(self) -> str:
        return f"submission {self._path}"

    def initialize(self) -> None:
        from navsim_agents.submission import read_submission

        if self._path is None:
            raise FileNotFoundError("no submission file: pass agent.path=submission.pkl")
        first, second, _ = read_submission(self._path)
        overlap = set(first) & set(second)
        if overlap:
            raise ValueError(f"{self._path}: tokens {sorted(overlap)[:3]} appear in both stages")
        # float32 as submitted: the devkit scores exactly these poses
        self._trajectories = {t: np.asarray(p) for t, p in (first | second).items()}
