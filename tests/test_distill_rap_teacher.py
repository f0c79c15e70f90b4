"""The ``rap-3d`` teacher from a checkpoint in RAP's own layout (conformance set ``rap_dev``, RAP 5fd8630).

Its patch tokens must be what the planner loaded from the same file computes for the same camera images
(backbone -> image neck, ``RAPPlanner.encode_images``), and what RAP's own code computed (``neck_out`` in
``reference_outputs.pt``, within the set's tolerance). See ``shared/conformance/rap_dev/README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close_to_scale, conformance_path

import rap_backbone.teacher  # noqa: F401  (registers rap-3d with eupe.teachers)
from eupe.teachers import build_teacher
from rap_backbone.checkpoints import load_rap_checkpoint


def _rap_dev() -> Path:
    path = conformance_path("rap_dev")
    if not (path / "rap_dev.ckpt").is_file():
        pytest.skip(f"RAP conformance set not found at {path} (set EUPE_DRIVE_CONFORMANCE to the folder "
                    "holding rap_dev/)")
    return path


@pytest.fixture(scope="module")
def rap_dev():
    path = _rap_dev()
    teacher = build_teacher("rap-3d", weights=path / "rap_dev.ckpt", backbone_config=path / "backbone_config.json")
    planner = load_rap_checkpoint(path / "rap_dev.ckpt", backbone_config=path / "backbone_config.json")
    inputs = torch.load(path / "inputs.pt", weights_only=True)
    ref = torch.load(path / "reference_outputs.pt", weights_only=True)
    tol = json.loads((path / "tolerances.json").read_text())
    return path, teacher, planner, inputs, ref, tol


def _images01(camera_feature: torch.Tensor, teacher) -> torch.Tensor:
    """RAP's ImageNet-normalised cameras [1,4,3,H,W] back to RGB in [0,1] (the teacher's input), [4,3,H,W]."""
    return camera_feature[0] * teacher.std + teacher.mean


@pytest.mark.numerics
def test_rap_3d_teacher_equals_planner_and_rap(rap_dev):
    path, teacher, planner, inputs, ref, tol = rap_dev
    assert teacher.weights_source == str(path / "rap_dev.ckpt")
    assert not any(p.requires_grad for p in teacher.parameters())
    # README: d = 128 neck channels; RAP's 0.4-scaled, bottom-padded 160x256 cameras -> 10x16 patch grid
    assert (teacher.summary_dim, teacher.patch_dim) == (128, 128)
    cams = inputs["camera_feature"]
    out = teacher(_images01(cams, teacher), size=(160, 256))
    assert out.grid == (10, 16) and out.patch.shape == (4, 160, 128) and out.summary.shape == (4, 128)

    # the planner from the same checkpoint, on the same (normalised) images: neck output per camera
    with torch.no_grad():
        neck, projected = planner.encode_images(cams)
    expected = neck[0].flatten(2).transpose(1, 2)  # [4 cams, h*w, C], row-major like the teacher's tokens
    assert_close_to_scale(out.patch, expected, 1e-5, what="patch tokens")
    assert_close_to_scale(out.summary, expected.mean(1), 1e-5, what="summary")
    # projected = neck + per-camera and level embeddings (constant offsets, the teacher leaves them out)
    offsets = (projected - neck)[0].flatten(2)
    embeds = (planner.camera_embeds[:4] + planner.level_embeds[0]).detach()[:, :, None].expand_as(offsets)
    assert_close_to_scale(offsets, embeds, 1e-5, scale=float(projected.abs().max()), what="embeddings")

    # and RAP's own code on the same inputs
    spec = tol["intermediates"]["neck_out"]
    rap_tokens = ref["intermediates"]["neck_out"].flatten(2).transpose(1, 2)
    assert torch.allclose(out.patch, rap_tokens, atol=spec["atol"], rtol=spec["rtol"]), \
        float((out.patch - rap_tokens).abs().max())


def test_rap_3d_teacher_default_size_and_bf16(rap_dev):
    _, teacher, _, inputs, _, _ = rap_dev
    images = _images01(inputs["camera_feature"], teacher)
    square = teacher(images)  # default: the registry's 256 px, square -> 16x16 grid
    assert square.grid == (16, 16) and torch.isfinite(square.patch).all()
    fp32 = teacher(images, size=(160, 256)).patch
    teacher.precision = "bf16"
    try:
        bf16 = teacher(images, size=(160, 256)).patch
    finally:
        teacher.precision = "auto"
    assert bf16.dtype == torch.float32
    rel = float((bf16 - fp32).norm() / fp32.norm())
    assert 0 < rel < 0.05  # bf16 rounding of the same function
