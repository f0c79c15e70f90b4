"""The embedded two-stage split: synthetic scenes at perturbed endpoints, their images, and a two-stage run."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from navsim_agents import run_pdm_score
from navsim_agents.data import navmini_two_stage as N
from navsim_agents.data.dataclasses import SensorConfig
from navsim_agents.data.splits import build_two_stage_loader

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One test log at a small image size, placed where ensure_navmini_two_stage finds it."""
    base = tmp_path_factory.mktemp("cache")
    root = base / f"{N.SPLIT_NAME}-v{N.VERSION}"
    N.generate_two_stage_world(root, num_logs=1, image_size=(320, 180), cameras=("CAM_F0",))
    (root / N.MARKER).write_text("{}\n")
    return base, root


def _split(base):
    return {"data_split": "navmini", "synthetic": True, "subset": "two_stage", "data_root": str(base),
            "map_version": "nuplan-maps-v1.0", "scene_filter": {}}


def test_synthetic_scenes_start_at_the_perturbed_endpoints(world):
    base, root = world
    log = next((root / "navsim_logs" / "navmini").glob("*.pkl"))
    frames = pickle.loads(log.read_bytes())
    loader = build_two_stage_loader(_split(base))
    assert sorted(loader.tokens_stage_one) == sorted([frames[N.NOW_FRAME]["token"], frames[N.NOW_FRAME - 1]["token"]])
    assert len(loader.reactive_tokens_stage_two) == 2 * len(N.PERTURBATIONS)
    endpoint = frames[N.NOW_FRAME + N.NUM_FUTURE]
    x0, y0 = endpoint["ego2global_translation"][:2]
    w, _, _, z = endpoint["ego2global_rotation"]
    h = math.atan2(2 * w * z, 1 - 2 * z * z)
    by_original = {}
    for token in loader.reactive_tokens_stage_two:
        scene = loader.synthetic_scenes[token]
        assert len(token) == 17 and scene.metadata["num_future_frames"] == 8
        by_original.setdefault(scene.metadata["corresponding_original_scene"], []).append(scene)
    now_scenes = by_original[endpoint["token"]]
    assert len(now_scenes) == len(N.PERTURBATIONS)
    starts = sorted((s.frames[3]["ego2global_translation"][0], s.frames[3]["ego2global_translation"][1])
                    for s in now_scenes)
    expected = sorted((x0 + dl * math.cos(h) - dy * math.sin(h), y0 + dl * math.sin(h) + dy * math.cos(h))
                      for dl, dy in N.PERTURBATIONS)
    np.testing.assert_allclose(starts, expected, atol=1e-9)
    # the traffic is the logged one: boxes seen from the shifted ego are the same global boxes
    scene = now_scenes[0]
    cur = scene.frames[3]
    c, s = math.cos(h), math.sin(h)
    ox, oy = cur["ego2global_translation"][:2]
    boxes = np.asarray(cur["anns"]["gt_boxes"])
    glob = np.column_stack([ox + c * boxes[:, 0] - s * boxes[:, 1], oy + s * boxes[:, 0] + c * boxes[:, 1]])
    logged = np.asarray(endpoint["anns"]["gt_boxes"])
    logged_glob = np.column_stack([x0 + c * logged[:, 0] - s * logged[:, 1], y0 + s * logged[:, 0] + c * logged[:, 1]])
    np.testing.assert_allclose(glob, logged_glob, atol=1e-9)


def test_image_agents_get_the_rerendered_history(world):
    base, _ = world
    loader = build_two_stage_loader(_split(base), SensorConfig(cam_f0=[3], cam_l0=False, cam_l1=False, cam_l2=False, cam_r0=False, cam_r1=False,
                                                               cam_r2=False, cam_b0=False, lidar_pc=False))
    token = loader.reactive_tokens_stage_two[0]
    image = loader.get_agent_input_from_token(token).cameras[3].cam_f0.image
    assert image is not None and image.shape == (180, 320, 3) and image.std() > 0


def test_two_stage_run_weights_the_unperturbed_start_by_the_gaussian(world, tmp_path):
    base, _ = world
    overrides = ["agent=human", "scorer=epdms_two_stage", "split=navmini_two_stage", f"split.data_root={base}",
                 f"exp_root={tmp_path}", f"metric_cache_path={tmp_path / 'mc'}", "progress=false"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run_pdm_score", overrides=overrides)
    path = run_pdm_score.run(cfg)
    df = pd.read_csv(path, index_col=0)
    assert df.iloc[:-3]["valid"].all() and len(df) == 3 + 2 + 2 * len(N.PERTURBATIONS)
    weights = pd.read_csv(path.with_name(f"{path.stem}_weights.csv")).set_index("token")
    loader = build_two_stage_loader(_split(base))
    logged = {f["token"]: f for f in pickle.loads(next((base.glob("*/navsim_logs/navmini/*.pkl"))).read_bytes())}
    # the human's 4 s endpoint is the logged endpoint: exp(-d^2 / 0.2) from it to each synthetic start, normalised
    # over the synthetic scenes of the same original endpoint
    groups: dict[str, dict[str, float]] = {}
    for token in loader.reactive_tokens_stage_two:
        scene = loader.synthetic_scenes[token]
        end = logged[scene.metadata["corresponding_original_scene"]]["ego2global_translation"][:2]
        start = scene.frames[3]["ego2global_translation"][:2]
        groups.setdefault(scene.metadata["corresponding_original_scene"], {})[token] = math.exp(
            -((end[0] - start[0]) ** 2 + (end[1] - start[1]) ** 2) / 0.2)
    for group in groups.values():
        total = sum(group.values())
        for token, raw in group.items():
            assert weights.loc[token, "weight"] == pytest.approx(raw / total, rel=1e-6)
        assert max(group.values()) == 1.0  # one start is the endpoint itself
