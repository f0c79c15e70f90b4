"""run_pdm_score end to end on the navsim_dev conformance data: CSV layout, resume, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from navsim_agents import run_pdm_score
from navsim_agents.scoring import evaluate as E


def _conformance_root() -> Path:
    env = os.environ.get("EUPE_DRIVE_CONFORMANCE")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "conformance"
    return base / "navsim_dev"


ROOT = _conformance_root()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance set not found at {ROOT} "
                                 "(set EUPE_DRIVE_CONFORMANCE to the folder holding navsim_dev/)")
# three consecutive frames of one log (so v2 pairs two of them for extended comfort) + one of another log
TOKENS = ["4e1b0dbeff2032d7", "5cc0d0f851085ef2", "4db1a6c19d7a6e9e", "03cc4522c624ed52"]
V1_HEADER = ["", "token", "valid", "no_at_fault_collisions", "drivable_area_compliance", "ego_progress",
             "time_to_collision_within_bound", "comfort", "driving_direction_compliance", "score"]
V2_HEADER = ["", "token", "valid", "no_at_fault_collisions", "drivable_area_compliance",
             "driving_direction_compliance", "traffic_light_compliance", "ego_progress",
             "time_to_collision_within_bound", "lane_keeping", "history_comfort", "two_frame_extended_comfort",
             "score"]


def _cfg(tmp_path: Path, *extra: str, tokens=TOKENS, name="exp", maps=None):
    overrides = [
        "agent=constant_velocity", "split=custom", "split.data_split=navsim_dev", f"split.data_root={ROOT}",
        f"split.maps_root={maps or ROOT / 'maps'}", "split.map_version=nuplan-maps-v1.0",
        f"split.scene_filter.tokens=[{','.join(tokens)}]", f"exp_root={tmp_path}", f"experiment_name={name}",
        f"metric_cache_path={tmp_path / 'mc'}", "progress=false", *extra,
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="run_pdm_score", overrides=overrides)


@pytest.mark.parametrize("scorer,header,average", [("pdms", V1_HEADER, "average"),
                                                   ("epdms", V2_HEADER, "average_all_frames")])
def test_csv_has_the_devkit_columns_and_average_row(tmp_path, scorer, header, average):
    path = run_pdm_score.run(_cfg(tmp_path, f"scorer={scorer}"))
    assert path.parent == tmp_path / "exp" and path.suffix == ".csv"
    with open(path) as fh:
        assert fh.readline().strip().split(",") == header
    df = pd.read_csv(path, index_col=0)
    assert set(df["token"].iloc[:-1]) == set(TOKENS)
    assert df["token"].iloc[-1] == average
    body = df.iloc[:-1]
    assert body["valid"].all()
    assert np.isclose(df["score"].iloc[-1], body["score"].mean())
    assert not list((tmp_path / "exp").glob("partial_*"))


def test_interrupted_run_resumes_to_the_same_csv(tmp_path):
    full = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", name="full")), index_col=0)
    cfg = _cfg(tmp_path, "scorer=epdms", name="resumed")
    partial = run_pdm_score.partial_path(cfg)
    partial.parent.mkdir(parents=True)
    from omegaconf import OmegaConf

    # an interrupted run: two rows written to the partial file, then the process died (torn last line)
    rows = run_pdm_score.score_chunk(OmegaConf.to_container(cfg, resolve=True), TOKENS[:2])
    for row in rows:
        E.append_partial(partial, row)
    with open(partial, "a") as fh:
        fh.write('{"token": "4db1a6c19d7a6e9e", "val')
    resumed = pd.read_csv(run_pdm_score.run(cfg), index_col=0)
    pd.testing.assert_frame_equal(full, resumed)


def test_bad_trajectories_and_unknown_tokens_become_invalid_rows(tmp_path):
    good = json.loads((ROOT / "trajectories.json").read_text())
    data = {
        TOKENS[0]: [[float("nan"), 0.0, 0.0]] * 8,  # NaN
        TOKENS[1]: good[TOKENS[1]][:5],  # wrong number of poses
        TOKENS[2]: good[TOKENS[2]],  # fine
        # TOKENS[3] missing from the file
    }
    path = tmp_path / "traj.json"
    path.write_text(json.dumps(data))
    tokens = TOKENS + ["ffffffffffffffff"]  # not a scene of the split
    cfg = _cfg(tmp_path, "agent=trajectory_file", f"agent.path={path}", "scorer=pdms", tokens=tokens)
    df = pd.read_csv(run_pdm_score.run(cfg), index_col=0).set_index("token")
    assert df.loc[TOKENS[2], "valid"]
    for token in (TOKENS[0], TOKENS[1], TOKENS[3], "ffffffffffffffff"):
        assert not df.loc[token, "valid"], token
        assert np.isnan(df.loc[token, "score"])
    assert not df.loc["average", "valid"]


def test_missing_map_gives_invalid_rows_not_a_crash(tmp_path):
    empty = tmp_path / "no_maps"
    empty.mkdir()
    df = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=pdms", maps=empty, tokens=TOKENS[:2])), index_col=0)
    assert not df["valid"].iloc[:-1].any()


def test_ray_worker_gives_the_sequential_csv(tmp_path):
    pytest.importorskip("ray", reason="ray is an optional extra (pip install ray)")
    seq = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", name="seq")), index_col=0)
    ray_df = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", "worker=ray", "worker.tokens_per_task=2",
                                                name="ray")), index_col=0)
    pd.testing.assert_frame_equal(seq, ray_df)
