"""RAP's training-time proposal targets: per-proposal progress normalisation and the key-agent corners."""
from __future__ import annotations

import math

import numpy as np
from shapely.geometry import Polygon

from navsim_agents.agents.rap_scoring import key_agent_targets, rap_progress_and_score
from navsim_agents.scoring.geometry import box_coords
from navsim_agents.scoring.observation import Observation, OccupancyMap, TrackInfo
from navsim_agents.scoring.scorer import ScorerConfig


def test_rap_progress_is_normalised_per_proposal_against_pdm_closed():
    from navsim_agents.scoring.scorer import PDMScorer

    # a v1 result of 4 proposals: multi = NC * DAC, weighted rows (EP, TTC, C, DDC) with weights (5, 5, 2, 0)
    ttc, comfort = np.array([1.0, 0, 1, 1]), np.array([1.0, 1, 0, 1])
    res = {"raw_progress": np.array([20.0, 10.0, 3.0, 30.0]), "multi": np.array([1.0, 1, 1, 0]),
           "weighted": np.stack([np.full(4, np.nan), ttc, comfort, np.ones(4)]),
           "weights": np.array([5.0, 5.0, 2.0, 0.0])}
    out = rap_progress_and_score(res, 15.0, 5.0)
    # masked progress [20, 10, 3, 0]; normaliser max(masked, 15) = [20, 15, 15, 15]
    assert np.allclose(out["ego_progress"], [1.0, 10 / 15, 3 / 15, 0.0])
    assert np.allclose(out["score"], [1.0, (5 * 10 / 15 + 2) / 12, (5 * 3 / 15 + 5) / 12, 0.0])
    # below the 5 m threshold every proposal gets EP 1, except those failing NC / DAC (0)
    slow = dict(res, raw_progress=np.array([3.0, 1.0, 0.0, 2.0]))
    assert np.allclose(rap_progress_and_score(slow, 2.0, 5.0)["ego_progress"], [1.0, 1.0, 1.0, 0.0])
    # the weights are the v1 scorer's own: PDMS = multi * (5 EP + 5 TTC + 2 C) / 12
    config = ScorerConfig(version="v1")
    assert (config.progress_weight, config.ttc_weight, config.comfortable_weight) == (5.0, 5.0, 2.0)
    assert PDMScorer(config).config.progress_distance_threshold == 5.0


def test_key_agent_corners_in_the_ego_frame_up_to_the_first_event_step():
    # ego at (3, 4) heading +y; a 4 x 2 car centred 10 m ahead of it, also heading +y, missing at step 3
    car = Polygon(box_coords(np.array([3.0, 14.0]), np.asarray(math.pi / 2), 4.0, 2.0)[:4])
    maps = [OccupancyMap([], []) if k == 3 else OccupancyMap(["car"], [car]) for k in range(41)]
    obs = Observation(maps, {"car": TrackInfo(True, math.pi / 2, 0.0)})
    events = [([["car"], []], np.array([5.0, np.inf])), ([[], ["car", "x"]], np.array([np.inf, 2.0]))]
    corners, valid = key_agent_targets(obs, np.array([3.0, 4.0, math.pi / 2]), events, 40)
    assert corners.shape == (2, 40, 2, 4, 2) and valid.shape == (2, 40, 2)
    # proposal 0, at-fault agent: steps 1..5 -> rows 0..4, except step 3 (row 2) where the car is absent
    assert valid[0, :, 0].tolist() == [True, True, False, True, True] + [False] * 35
    assert not valid[0, :, 1].any() and not valid[1, :, 0].any()
    assert valid[1, :, 1].tolist() == [True, True] + [False] * 38  # TTC agent, first step 2
    expected = np.array([[12.0, 1.0], [8.0, 1.0], [8.0, -1.0], [12.0, -1.0]])  # FL, RL, RR, FR ahead of the ego
    assert np.allclose(corners[0, 0, 0], expected) and np.allclose(corners[1, 1, 1], expected)
    assert np.all(corners[~valid] == 0.0)


def _drive_into_a_track(cache) -> np.ndarray:
    """Poses [8,3] (ego frame) reaching the nearest standing object at 2 s and staying on it."""
    observation = cache.observation("v1")
    occupancy = observation[0]
    x, y, heading = cache.ego_state[:3]
    c, s = np.cos(heading), np.sin(heading)
    local = []
    for token in occupancy.tokens:
        if token in observation.unique and observation.unique[token].speed < 0.5:
            d = np.array(occupancy[token].centroid.coords[0]) - (x, y)
            local.append(np.array([d[0] * c + d[1] * s, -d[0] * s + d[1] * c]))
    goal = min(local, key=np.linalg.norm) if local else np.array([40.0, 0.0])
    fraction = np.minimum(np.arange(1, 9) * 0.5 / 2.0, 1.0)[:, None]
    return np.concatenate([fraction * goal, np.zeros((8, 1))], axis=1)


def test_training_scorer_targets_on_a_synthetic_token(tmp_path):
    """Proposals of navmini tokens: the logged future scores well; a proposal driven onto another road user gets
    collision / TTC targets exactly where the scorer reports those failures."""
    from navsim_agents.agents.rap_scoring import MetricCacheProposalScorer
    from navsim_agents.data.dataclasses import SceneFilter
    from navsim_agents.data.scene_loader import SceneLoader
    from navsim_agents.data.synthetic import NAVMINI_TEST_LOGS, ensure_navmini
    from navsim_agents.scoring.evaluate import ensure_metric_cache

    root = ensure_navmini()
    loader = SceneLoader(root / "navsim_logs" / "navmini", root / "sensor_blobs" / "navmini",
                         SceneFilter(log_names=list(NAVMINI_TEST_LOGS[:6])),
                         map_root=root / "maps", map_version="nuplan-maps-v1.0")
    human, failures = [], 0
    files = {t: ensure_metric_cache(loader.scene_frames_dicts[t], tmp_path, str(root / "maps"), "nuplan-maps-v1.0")
             for t in loader.tokens}
    scorer = MetricCacheProposalScorer(files)
    for token in loader.tokens:
        future = loader.get_scene_from_token(token).get_future_trajectory(num_trajectory_frames=8).poses
        out = scorer([token], np.stack([future, _drive_into_a_track(scorer._cache(token))])[None])
        human.append(out.sub_scores[0, 0, -1])
        assert out.agent_corners.shape == (1, 2, 40, 2, 4, 2) and out.ego_areas.shape == (1, 2, 40, 2)
        subs, valid = out.sub_scores[0], out.agent_valid[0]
        for p in range(2):  # NC < 1 <=> some at-fault agent target; TTC 0 <=> some TTC agent target
            assert (subs[p, 0] < 1.0) == bool(valid[p, :, 0].any()), token
            assert (subs[p, 3] == 0.0) == bool(valid[p, :, 1].any()), token
        failures += int(subs[1, 0] < 1.0) + int(subs[1, 3] == 0.0)
    assert np.mean(human) > 0.8
    assert failures > 0, "no proposal failed NC or TTC: the test checks nothing"
