"""Our PDMS / EPDMS against the official devkit's per-scene CSVs on the navsim_dev conformance set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import conformance_agent, conformance_path, csv_row_problems

from navsim_agents.data.dataclasses import SceneFilter
from navsim_agents.data.scene_loader import SceneLoader
from navsim_agents.scoring import evaluate as E
from navsim_agents.scoring.pdm_score import PDMScoreRunner

ROOT = conformance_path("navsim_dev")
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance set not found at {ROOT} "
                                 "(set EUPE_DRIVE_CONFORMANCE to the folder holding navsim_dev/)")
DISCRETE_TOL = 1e-6  # navsim_dev/README.md
# The README allows 1e-3 for ego_progress / score; every row matches to < 1e-6, and the bound is kept tight
# because 1e-3 hid a simulator difference (the devkit's jerk-penalty matrix) that moved v2 rows by up to 6e-4.
CONTINUOUS_TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokens = json.loads((ROOT / "scene_tokens.json").read_text())
    scene_filter = SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1, has_route=True,
                               tokens=list(tokens))
    loader = SceneLoader(ROOT / "navsim_logs" / "navsim_dev", ROOT / "sensor_blobs" / "navsim_dev", scene_filter,
                         map_root=ROOT / "maps", map_version="nuplan-maps-v1.0")
    cache_root = tmp_path_factory.mktemp("metric_cache")
    caches = {t: E.ensure_metric_cache(loader.scene_frames_dicts[t], cache_root, str(ROOT / "maps"),
                                       "nuplan-maps-v1.0") for t in loader.tokens}
    return loader, caches


def _scores(setup, agent_name: str, version: str) -> pd.DataFrame:
    loader, caches = setup
    agent = conformance_agent(agent_name, ROOT)
    runner = PDMScoreRunner(version, human_penalty_filter=version == "v2")

    def trajectory(token):
        agent_input = loader.get_agent_input_from_token(token)
        if agent.requires_scene:
            return lambda: agent.compute_trajectory(agent_input, loader.get_scene_from_token(token))
        return lambda: agent.compute_trajectory(agent_input)

    rows = [E.score_token(t, caches[t], trajectory(t), runner) for t in loader.tokens]
    return E.finalize(rows, version)


@pytest.mark.parametrize("version,folder", [("v1", "v1.1"), ("v2", "v2")])
@pytest.mark.parametrize("agent_name", ["trajectory_file", "human", "constant_velocity"])
def test_matches_official_rows(setup, agent_name, version, folder):
    ours = _scores(setup, agent_name, version)
    expected = pd.read_csv(ROOT / "expected" / folder / f"{agent_name}.csv", index_col=0)
    assert list(ours.columns) == list(expected.columns), "CSV columns differ from the devkit's"
    expected = expected[~expected["token"].str.startswith("average")].set_index("token")
    ours = ours[~ours["token"].str.startswith("average")].set_index("token")
    assert sorted(ours.index) == sorted(expected.index)
    problems = csv_row_problems(ours, expected, CONTINUOUS_TOL, DISCRETE_TOL,
                                lambda col: col in ("ego_progress", "score"))
    assert not problems, "\n".join(problems)


def test_human_scores_near_top_and_constant_velocity_lower(setup):
    human = _scores(setup, "human", "v1")
    cv = _scores(setup, "constant_velocity", "v1")
    h = human.loc[human.token == "average", "score"].item()
    c = cv.loc[cv.token == "average", "score"].item()
    assert h > 0.9 and c < h


def test_route_context_uses_the_corrected_route_of_the_data_layer_map():
    """navsim's PDM-Closed corrects the route at the first iteration: a route missing its roadblock connector gets
    it back (BFS between consecutive roadblocks), so the centerline equals the one of the complete route."""
    from navsim_agents.data.maps import get_maps_api
    from navsim_agents.data.scene_loader import load_log
    from navsim_agents.scoring.metric_cache import frame_ego_state, scene_frames
    from navsim_agents.scoring.pdm_closed import build_route_context

    log = next(p for p in sorted((ROOT / "navsim_logs" / "navsim_dev").glob("*.pkl")) if "00121_00147" in p.name)
    current = scene_frames(load_log(log), "4e1b0dbeff2032d7")[3]
    ego = frame_ego_state(current)[:3]
    map_api = get_maps_api(ROOT / "maps", "nuplan-maps-v1.0", current["map_location"])
    full = build_route_context(map_api, current["roadblock_ids"], ego)
    assert full.route_block_ids == ["10002", "20001", "10005"]
    gapped = build_route_context(map_api, ["10002", "10005"], ego)
    assert gapped.route_block_ids == full.route_block_ids
    np.testing.assert_array_equal(gapped.centerline.poses, full.centerline.poses)
    # the ego drives in the middle of a straight lane: the centerline passes under its rear axle with its heading
    assert full.centerline.length > 100.0
    pose = full.centerline.interpolate(np.array([full.centerline.project(ego[:2])]))[0]
    assert np.hypot(*(pose[:2] - ego[:2])) < 0.5 and abs(pose[2] - ego[2]) < 1e-6
