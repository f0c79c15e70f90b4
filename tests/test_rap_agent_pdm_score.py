"""`run_pdm_score.py backbone=eupe-t` with the RAP agent (the default agent) end to end on navmini."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_run_pdm_score_rap_eupe_t_writes_valid_csv(tmp_path):
    cmd = [sys.executable, str(REPO / "navsim_agents" / "run_pdm_score.py"), "backbone=eupe-t",
           "+backbone.overrides.depth=2", "agent.planner=tiny", "agent.image_scale=0.1",
           "split.scene_filter.max_scenes=4", f"exp_root={tmp_path}", "experiment_name=rap_e2e", "progress=false"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    csvs = sorted((tmp_path / "rap_e2e").glob("*.csv"))
    assert csvs, f"no CSV written; output:\n{proc.stdout[-2000:]}"
    df = pd.read_csv(csvs[-1], index_col=0)
    assert list(df.columns) == ["token", "valid", "no_at_fault_collisions", "drivable_area_compliance",
                                "ego_progress", "time_to_collision_within_bound", "comfort",
                                "driving_direction_compliance", "score"]
    rows, avg = df.iloc[:-1], df.iloc[-1]
    assert len(rows) == 4 and rows["valid"].all() and avg["token"] == "average"
    assert rows["score"].between(0, 1).all()
    assert avg["score"] == pytest.approx(rows["score"].mean())
    # the run says which backbone and which (random) weights produced the numbers
    assert "random" in (proc.stdout + proc.stderr).lower()
