"""benchmarks/edge.py's planner frame: a navmini token through the agent's feature builder (real rig)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_edge_frame_is_a_navmini_token_with_the_rigs_projection():
    from edge import INPUTS, SPLIT_CONFIG, navmini_frame, visible_rows
    from omegaconf import OmegaConf

    from navsim_agents.agents.rap_agent import rap_sensor_config
    from navsim_agents.agents.rap_features import lidar2img_matrix
    from navsim_agents.data.splits import build_scene_loader
    from rap_backbone.backbones import build_backbone
    from rap_backbone.nuplan_rig import RAP_CAMERA_NAMES
    from rap_backbone.planner import build_planner

    feats = navmini_frame(0.2)
    h, w = INPUTS["reduced"]
    assert feats["camera_feature"].shape == (1, len(RAP_CAMERA_NAMES), 3, h, w)
    assert feats["img_shape"][0].tolist() == [[h, w, 3.0]] * len(RAP_CAMERA_NAMES)
    # the front camera's projection from its calibration: lidar2img = diag(s, s, 1, 1) K [R^T | -R^T t]
    loader = build_scene_loader(OmegaConf.load(SPLIT_CONFIG), rap_sensor_config())
    front = loader.get_agent_input_from_token(loader.tokens[0]).cameras[-1].cam_f0
    expected = lidar2img_matrix(front.intrinsics, front.sensor2lidar_rotation, front.sensor2lidar_translation, 0.2)
    np.testing.assert_allclose(feats["lidar2img"][0, RAP_CAMERA_NAMES.index("cam_f0")].double().numpy(), expected,
                               rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # four cameras around the car: no query in more than two of them, so at most half the rows are sampled
    torch.manual_seed(0)
    planner = build_planner(build_backbone("edge-vit-96", depth=1),
                            dict(d_model=32, d_ffn=32, num_heads=2, num_proposals=4, num_refinements=1,
                                 agent_pred=False, area_pred=False, grid_mask_prob=0.0)).eval()
    fraction, seen_by = visible_rows(planner, feats)
    assert abs(sum(seen_by) - 1.0) < 1e-6 and seen_by[3] == seen_by[4] == 0.0
    assert 0.0 < fraction <= 0.5
    assert abs(fraction - sum(k * f for k, f in enumerate(seen_by)) / len(RAP_CAMERA_NAMES)) < 1e-6
