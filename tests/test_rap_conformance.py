"""Our planner loaded with RAP's own checkpoint reproduces RAP's forward (conformance set ``rap_dev``).

The reference tensors were produced by RAP's code (vita-epfl/RAP 5fd8630) on CPU in fp32; tolerances come from
the set's ``tolerances.json``. See ``shared/conformance/rap_dev/README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import conformance_path

from rap_backbone.checkpoints import RAP_PREFIX, load_rap_checkpoint, refiner_geometry
from rap_backbone.planner import project_reference_points


def _rap_dev() -> Path:
    root = conformance_path()
    path = root / "rap_dev"
    if not (path / "rap_dev.ckpt").is_file():
        pytest.skip(f"RAP conformance set not found at {path} (set EUPE_DRIVE_CONFORMANCE to the folder holding rap_dev/)")
    return path


@pytest.fixture(scope="module")
def rap_dev():
    path = _rap_dev()
    planner = load_rap_checkpoint(path / "rap_dev.ckpt", backbone_config=path / "backbone_config.json")
    inputs = torch.load(path / "inputs.pt", weights_only=True)
    ref = torch.load(path / "reference_outputs.pt", weights_only=True)
    tol = json.loads((path / "tolerances.json").read_text())
    with torch.no_grad():
        out = planner(inputs)
    return planner, inputs, ref, tol, out, path


def _close(name, actual, expected, spec):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=spec["atol"], rtol=spec["rtol"]), f"{name}: max abs err {err}"


def test_sizes_inferred_from_checkpoint(rap_dev):
    planner, *_, path = rap_dev
    rap_cfg = json.loads((path / "rap_config.json").read_text())
    cfg = planner.config
    assert (cfg.d_model, cfg.d_ffn) == (rap_cfg["tf_d_model"], rap_cfg["tf_d_ffn"])
    assert (cfg.num_proposals, cfg.num_poses) == (rap_cfg["proposal_num"], rap_cfg["num_poses"])
    assert cfg.num_bev_layers == rap_cfg["num_bev_layers"] and cfg.num_refinements == rap_cfg["ref_num"]
    assert cfg.num_points_in_pillar == rap_cfg["num_points_in_pillar"]
    assert planner.backbone.embed_dim == rap_cfg["backbone_hidden_size_fpn_in_channels"]
    assert not planner.training and planner.backbone.frozen


@pytest.mark.numerics
def test_outputs_match_rap(rap_dev):
    _, _, ref, tol, out, _ = rap_dev
    spec = tol["outputs"]
    for i in range(4):
        _close(f"proposal_list[{i}]", out["proposal_list"][i], ref["outputs"]["proposal_list"][i],
               spec[f"proposal_list[{i}]"])
    for key in ("proposals", "trajectory", "pred_logit", "pdm_score"):
        _close(key, out[key], ref["outputs"][key], spec[key])
    expected_index = ref["outputs"]["pdm_score"].argmax(1)
    assert torch.equal(out["selected_index"], expected_index)
    assert expected_index.item() == 44  # README: best proposal index
    # pdm_score is the sigmoid of the last of the 6 logits (behaviour 4)
    assert torch.allclose(out["pdm_score"], ref["outputs"]["pred_logit"].sigmoid()[..., -1], atol=5e-5)


@pytest.mark.numerics
def test_intermediates_match_rap(rap_dev):
    planner, inputs, ref, tol, out, _ = rap_dev
    spec, inter = tol["intermediates"], ref["intermediates"]
    with torch.no_grad():
        hidden = planner.backbone.model.forward_features(inputs["camera_feature"].flatten(0, 1))
        neck, _ = planner.encode_images(inputs["camera_feature"])
        ego = planner.ego_encoder(inputs["ego_status"][:, -1])
        poses = out["proposal_list"][0].reshape(1, -1, 3)
        ref_cam, visible = project_reference_points(poses, inputs["lidar2img"], inputs["img_shape"], planner.config)
    _close("backbone_last_hidden_state", hidden, inter["backbone_last_hidden_state"], spec["backbone_last_hidden_state"])
    _close("neck_out", neck[0], inter["neck_out"], spec["neck_out"])
    _close("ego_feature", ego, inter["ego_feature"], spec["ego_feature"])
    # RAP's layout is [cams, B, queries, anchors, ...]; ours [B, cams, ...]
    visible = visible.permute(1, 0, 2, 3)
    ref_cam = ref_cam.permute(1, 0, 2, 3, 4)
    assert torch.equal(visible, inter["bev_mask"])
    mask = inter["bev_mask"]
    _close("reference_points_cam", ref_cam[mask], inter["reference_points_cam"][mask], spec["reference_points_cam"])


@pytest.mark.slow
def test_grid_reference_points_differ_from_rap(rap_dev):
    """The all-pairs variant (earlier RAP commit) is a different model on this checkpoint (README: ~1.7 m)."""
    planner, inputs, ref, *_ = rap_dev
    planner.config.reference_points = "grid"
    try:
        with torch.no_grad():
            out = planner(inputs)
    finally:
        planner.config.reference_points = "paired"
    assert (out["proposals"] - ref["outputs"]["proposals"]).abs().max() > 0.1


def test_geometry_buffers_regenerated_like_rap(rap_dev):
    planner, *_, path = rap_dev
    state = torch.load(path / "rap_dev.ckpt", weights_only=True)["state_dict"]
    for name, tensor in refiner_geometry(planner.config).items():
        stored = state[f"{RAP_PREFIX}_trajectory_head.0.Bev_refiner.bev_decoder.{name}"]
        assert stored.shape == tensor.shape and torch.allclose(stored, tensor, atol=1e-6), name
