"""Two-stage run_pdm_score end to end, submissions, devkit split yamls and bad input, on navsim_two_stage_dev."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import conformance_path
from hydra import compose, initialize_config_dir

from navsim_agents import run_pdm_score
from navsim_agents.data.devkit_splits import read_devkit_split
from navsim_agents.run_create_submission_pickle import create_submission
from navsim_agents.scoring import two_stage as T
from navsim_agents.submission import read_submission, write_submission

ROOT = conformance_path("navsim_two_stage_dev")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance set not found at {ROOT} "
                                "(set EUPE_DRIVE_CONFORMANCE to the folder holding navsim_two_stage_dev/)")
LOG = "2021.05.25.15.41.09_veh-35_00121_00147"  # one stage-one pair (now, prev) with 3 synthetic pairs


def _small_split(tmp_path: Path, synthetic_dir: Path | None = None) -> Path:
    """A devkit split yaml (+ scene filter beside it) holding the first pair of two_stage_dev only."""
    full = read_devkit_split(ROOT / "config" / "train_test_split" / "two_stage_dev.yaml")
    entry = full.reactive_all_mapping[0]
    folder = tmp_path / "train_test_split"
    (folder / "scene_filter").mkdir(parents=True)
    tokens = [entry[0], entry[1]]
    synthetic = [t for pair in entry[2] for t in pair]
    sf = dict(full.scene_filter, log_names=[LOG], tokens=tokens, reactive_synthetic_initial_tokens=synthetic)
    (folder / "scene_filter" / "small.yaml").write_text(yaml.safe_dump(sf))
    (folder / "small.yaml").write_text(yaml.safe_dump({"defaults": [{"scene_filter": "small"}],
                                                       "data_split": "two_stage_dev",
                                                       "reactive_all_mapping": [entry]}))
    return folder / "small.yaml"


def _cfg(tmp_path: Path, split_yaml: Path, *extra: str, synthetic_dir: Path | None = None, name="exp",
         config="run_pdm_score"):
    overrides = [
        "split=navhard_two_stage", f"split.devkit_config={split_yaml}", f"split.data_root={ROOT}",
        f"split.maps_root={ROOT / 'maps'}", "split.map_version=nuplan-maps-v1.0",
        f"split.synthetic_scenes_path={synthetic_dir or ROOT / 'two_stage_dev' / 'synthetic_scene_pickles'}",
        f"exp_root={tmp_path}", "progress=false", *extra,
    ]
    if config == "run_pdm_score":
        overrides += ["scorer=epdms_two_stage", f"experiment_name={name}", f"metric_cache_path={tmp_path / 'mc'}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=config, overrides=overrides)


def test_devkit_split_yaml_resolves_its_scene_filter(tmp_path):
    split = read_devkit_split(ROOT / "config" / "train_test_split" / "two_stage_dev.yaml")
    assert split.data_split == "two_stage_dev" and split.name == "two_stage_dev"
    assert split.scene_filter["num_future_frames"] == 8 and split.scene_filter["include_synthetic_scenes"]
    assert len(split.scene_filter["tokens"]) == 8 and len(split.reactive_all_mapping) == 5
    assert "_target_" not in split.scene_filter
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n- scene_filter: nowhere\ndata_split: x\n")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_devkit_split(bad)


def test_two_stage_run_writes_the_devkit_csv_and_provenance(tmp_path):
    cfg = _cfg(tmp_path, _small_split(tmp_path), "agent=constant_velocity")
    path = run_pdm_score.run(cfg)
    df = pd.read_csv(path, index_col=0)
    expected = pd.read_csv(ROOT / "expected" / "constant_velocity.csv", index_col=0)
    assert list(df.columns) == list(expected.columns)
    expected = expected.set_index("token")
    assert list(df["token"].iloc[-3:]) == list(T.AGGREGATE_TOKENS)
    body = df.iloc[:-3].set_index("token")
    assert len(body) == 8 and body["valid"].all()
    # the rows of this pair are scored as in the full set (rows do not depend on other pairs)
    for token, row in body.iterrows():
        np.testing.assert_allclose(row["score"], expected.loc[token, "score"], atol=1e-6)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["scoring_rules"]["stages"] == 2
    assert sidecar["scoring_rules"]["traffic_agents_policy"] == "navsim_IDM_traffic_agents"
    assert sidecar["two_stage"]["num_stage_one"] == 2 and sidecar["two_stage"]["num_stage_two"] == 6
    weights = pd.read_csv(path.with_name(f"{path.stem}_weights.csv")).set_index("token")
    official = pd.read_csv(ROOT / "expected" / "constant_velocity_weights.csv").set_index("token")
    np.testing.assert_allclose(weights["weight"], official.loc[weights.index, "weight"], atol=1e-6)


def test_submission_round_trip_scores_like_the_agent(tmp_path):
    split = _small_split(tmp_path)
    sub_cfg = _cfg(tmp_path, split, "agent=constant_velocity", "team_name=t", "authors=a", "email=e",
                   "institution=i", "country=c", f"output_path={tmp_path / 'submission.pkl'}",
                   config="run_create_submission_pickle")
    path = create_submission(sub_cfg)
    first, second, team = read_submission(path)
    assert len(first) == 2 and len(second) == 6 and team["country / region"] == "c"
    assert all(p.dtype == np.float32 and p.shape == (8, 3) for p in first.values())
    # the pickle names the devkit's classes, so the leaderboard unpickles it
    raw = path.read_bytes()
    assert b"navsim.common.dataclasses" in raw and b"trajectory_sampling" in raw
    direct = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, split, "agent=constant_velocity", name="direct")),
                         index_col=0)
    replay = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, split, "agent=submission", f"agent.path={path}",
                                                name="replay")), index_col=0)
    pd.testing.assert_frame_equal(direct.set_index("token").sort_index(), replay.set_index("token").sort_index(),
                                  rtol=1e-6)


def test_submission_refuses_foreign_classes(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"first_stage_predictions": [{"a": pd.DataFrame()}]}))
    with pytest.raises(ValueError, match="pandas"):
        read_submission(bad)
    one_stage = write_submission(tmp_path / "ok.pkl", {"a": np.zeros((8, 3))}, {}, {})
    assert read_submission(one_stage)[1] == {}


def test_missing_synthetic_scene_leaves_its_entry_out(tmp_path):
    """A synthetic pickle that cannot be read: warned and skipped (as the devkit skips unknown tokens); the pair
    that needs it is left out of the aggregates, the rest is scored."""
    synthetic = tmp_path / "synthetic"
    shutil.copytree(ROOT / "two_stage_dev" / "synthetic_scene_pickles", synthetic)
    entry = read_devkit_split(ROOT / "config" / "train_test_split" / "two_stage_dev.yaml").reactive_all_mapping[0]
    (synthetic / f"{entry[2][0][0]}.pkl").write_bytes(b"not a pickle")
    cfg = _cfg(tmp_path, _small_split(tmp_path), "agent=constant_velocity", synthetic_dir=synthetic)
    df = pd.read_csv(run_pdm_score.run(cfg), index_col=0)
    assert entry[2][0][0] not in set(df["token"])
    aggregates = df[df["token"].isin(T.AGGREGATE_TOKENS)]
    assert not aggregates["valid"].any()  # the only entry is incomplete: no aggregate is claimed valid
    assert df.iloc[:-3]["valid"].all() and len(df) == 3 + 7
