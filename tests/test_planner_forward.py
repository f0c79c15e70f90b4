"""RAP planner: reference-point geometry by hand, batch independence, shapes per backbone, gradients, LoRA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale

from rap_backbone.backbones import build_backbone
from rap_backbone.planner import PlannerConfig, RAPPlanner, project_reference_points, reference_points_3d

H, W = 64, 96  # padded image size (multiple of 32)
FX = FY = 60.0


def tiny_config(**kw) -> PlannerConfig:
    return PlannerConfig(**{**dict(d_model=32, d_ffn=32, num_proposals=8, num_poses=4, grid_mask_prob=0.0), **kw})


def camera(position, yaw: float) -> torch.Tensor:
    """lidar2img of a pinhole camera at ``position`` looking along ``yaw`` (x right, y down, z forward)."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    rot = np.stack([right, down, forward])
    ext = np.eye(4)
    ext[:3, :3] = rot
    ext[:3, 3] = -rot @ np.asarray(position, dtype=float)
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = FX, FY, W / 2, H / 2
    return torch.tensor(k @ ext, dtype=torch.float32)


def rig(shift=(0.0, 0.0), dyaw: float = 0.0) -> torch.Tensor:
    """[b0, f0, l0, r0] cameras around the rear axle (nuPlan-like placement), optionally moved."""
    sx, sy = shift
    poses = [((-0.5 + sx, sy, 1.5), math.pi), ((1.7 + sx, sy, 1.5), 0.0),
             ((1.0 + sx, 0.9 + sy, 1.5), math.pi / 2), ((1.0 + sx, -0.9 + sy, 1.5), -math.pi / 2)]
    return torch.stack([camera(p, yaw + dyaw) for p, yaw in poses])


def features(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rigs = torch.stack([rig((0.4 * i, -0.3 * i), 0.15 * i) for i in range(batch)])
    ego = torch.randn(batch, 4, 11, generator=gen)
    return {"camera_feature": torch.randn(batch, 4, 3, H, W, generator=gen), "lidar2img": rigs,
            "img_shape": torch.tensor([H, W, 3.0]).expand(batch, 4, 3).clone(), "ego_status": ego}


@pytest.fixture(scope="module")
def tiny_planner():
    torch.manual_seed(0)
    backbone = build_backbone("dinov3-s", depth=1, embed_dim=32, num_heads=2)
    planner = RAPPlanner(backbone, tiny_config()).eval()
    with torch.no_grad():  # spread proposals a few metres so that the cameras see different anchors
        planner.refiner.decoder.mlp[6].weight.mul_(20.0)
    return planner


# ---- reference points ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["paired", "grid"])
def test_reference_points_project_to_hand_computed_pixels(mode):
    cfg = PlannerConfig(reference_points=mode)
    x, y, heading = 10.0, 2.0, 0.3
    # footprint centre: rear axle + 1.461 m along the heading; corners FL, FR, RR, RL at (+-2.838, +-1.2485)
    cx, cy = x + 1.461 * math.cos(heading), y + 1.461 * math.sin(heading)
    local = [(2.838, 1.2485), (2.838, -1.2485), (-2.838, -1.2485), (-2.838, 1.2485)]
    corners = [(cx + math.cos(heading) * lx - math.sin(heading) * ly,
                cy + math.sin(heading) * lx + math.cos(heading) * ly) for lx, ly in local]
    heights = [-2.0, -2.0 + 8 / 3, -2.0 + 16 / 3, 6.0]  # 4 pillar points over z in [-2, 6]
    front_at_origin = camera((0.0, 0.0, 0.0), 0.0)  # u = fx * (-y)/x + W/2, v = fy * (-z)/x + H/2
    expected = []
    for k in range(16):
        c = k % 4 if mode == "paired" else k // 4
        px, py = corners[c]
        pz = heights[k % 4]
        expected.append(((FX * -py / px + W / 2) / W, (FY * -pz / px + H / 2) / H))
    poses = torch.tensor([[[x, y, heading]]])
    l2i = torch.stack([front_at_origin, camera((0.0, 0.0, 0.0), math.pi)])[None]
    uv, visible = project_reference_points(poses, l2i, torch.tensor([[[H, W, 3.0]] * 2]), cfg)
    assert uv.shape == (1, 2, 1, 16, 2)
    assert torch.allclose(uv[0, 0, 0], torch.tensor(expected), atol=1e-5)
    inside = [0 < u < 1 and 0 < v < 1 for u, v in expected]  # all in front of this camera (x > 0)
    assert visible[0, 0, 0].tolist() == inside and 0 < sum(inside) < 16
    assert not visible[0, 1, 0].any()  # the backward camera has them all behind it
    pts = reference_points_3d(poses[0, 0], cfg)
    assert torch.allclose(pts[:, 2], torch.tensor([heights[k % 4] for k in range(16)]), atol=1e-6)


# ---- batch independence ---------------------------------------------------------------------------------

@pytest.mark.numerics
def test_batched_forward_equals_per_sample(tiny_planner):
    feats = features(3)
    with torch.no_grad():
        batched = tiny_planner(feats)
        singles = [tiny_planner({k: v[i:i + 1] for k, v in feats.items()}) for i in range(3)]
        _, vis = project_reference_points(batched["proposal_list"][0].flatten(1, 2), feats["lidar2img"],
                                          feats["img_shape"], tiny_planner.config)
    # the samples see different (camera, query) pairs, which RAP's batched code would mix up
    hits = vis.any(-1)
    assert hits.any() and not torch.equal(hits[0], hits[1]) and not torch.equal(hits[0], hits[2])
    for i, single in enumerate(singles):
        # fp32 kernels block differently with the batch size (7e-5 m on 15 m proposals on an Intel Xeon); mixed-up
        # samples would differ by metres
        for key in ("trajectory", "proposals", "pred_logit", "pdm_score"):
            assert_close_to_scale(batched[key][i], single[key][0], 1e-4, what=f"{key}[{i}]")
        for j in range(4):
            assert_close_to_scale(batched["proposal_list"][j][i], single["proposal_list"][j][0], 1e-4,
                                  what=f"proposal_list[{j}][{i}]")


@pytest.mark.numerics
def test_cross_attention_on_visible_rows_equals_all_rows(tiny_planner, monkeypatch):
    """On the CPU cross-attention samples only the (camera, query) rows that count; every output and gradient is
    the one of sampling all rows (the batched GPU / export path), where the other rows are multiplied by 0."""
    from rap_backbone import planner as planner_mod

    feats = features(3, seed=4)
    assert planner_mod.sample_visible_only(feats["camera_feature"])

    def run(visible_only: bool) -> tuple[dict, torch.Tensor]:
        monkeypatch.setattr(planner_mod, "sample_visible_only", lambda x: visible_only)
        tiny_planner.zero_grad()
        out = tiny_planner(feats)
        out["pred_logit"].square().sum().backward()
        grad = tiny_planner.refiner.layers[0].cross_attn.sampling_offsets.weight.grad.clone()
        return out, grad

    (visible, grad_visible), (every, grad_every) = run(True), run(False)
    _, vis = project_reference_points(every["proposal_list"][0].flatten(1, 2), feats["lidar2img"],
                                      feats["img_shape"], tiny_planner.config)
    hits = vis.any(-1)
    assert hits.any() and not hits.all()  # some rows are skipped, some computed
    for key in ("trajectory", "proposals", "pred_logit", "pdm_score"):
        # the same arithmetic per row: equal up to float32 rounding of a different memory layout
        assert_close_to_scale(visible[key], every[key], 1e-6, what=key)
    assert grad_every.abs().max() > 0
    assert_close_to_scale(grad_visible, grad_every, 1e-5, what="sampling_offsets gradient")


# ---- shapes per backbone ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [
    ("eupe-t", dict(depth=1)),
    ("dinov3-h", dict(depth=1, embed_dim=40, num_heads=2)),
    ("eupe-convnext-t", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 48))),
])
def test_shapes_for_backbones(name, kw):
    torch.manual_seed(0)
    backbone = build_backbone(name, **kw)
    cfg = tiny_config()
    planner = RAPPlanner(backbone, cfg).train()
    out = planner(features(2))
    p, t = cfg.num_proposals, cfg.num_poses
    assert planner.neck.lateral.in_channels == backbone.embed_dim  # only the projector input width changes
    assert out["trajectory"].shape == (2, t, 3) and out["proposals"].shape == (2, p, t, 3)
    assert len(out["proposal_list"]) == 4 and out["proposal_list"][3] is out["proposals"]
    assert out["pred_logit"].shape == (2, p, 6) and out["pdm_score"].shape == (2, p)
    stride = backbone.stride
    assert out["projected"].shape == (2, 4, cfg.d_model, H // stride, W // stride)
    assert out["pred_area_logit"].shape == (2, p * t, 10)
    assert out["pred_agents_states"].shape[:3] == (2, p, t) and out["pred_agents_states"].shape[-2:] == (2, 9)
    assert torch.equal(out["trajectory"], out["proposals"][torch.arange(2), out["pdm_score"].argmax(1)])
    planner.eval()
    with torch.no_grad():
        assert "pred_area_logit" not in planner(features(1))


# ---- gradients ------------------------------------------------------------------------------------------

def _loss(out):
    return (out["pred_logit"].sum() + out["proposals"].abs().sum() + out["pred_area_logit"].sum()
            + out["pred_agents_states"].sum())


def test_gradients_reach_projector_and_heads_not_frozen_backbone():
    torch.manual_seed(0)
    backbone = build_backbone("dinov3-s", depth=1, embed_dim=32, num_heads=2)
    planner = RAPPlanner(backbone, tiny_config(grid_mask_prob=1.0)).train()
    _loss(planner(features(2))).backward()
    for name in ("neck.lateral.weight", "neck.fpn.weight", "camera_embeds", "queries.weight",
                 "refiner.layers.0.cross_attn.value_proj.weight", "scorer.score.mlp.0.weight"):
        grad = planner.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in planner.backbone.parameters())
    assert not planner.backbone.model.training  # a frozen backbone stays in eval mode


@pytest.mark.numerics
def test_lora_trains_adapters_only_and_starts_as_identity():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 48)
    plain = build_backbone("dinov3-s", depth=1, embed_dim=32, num_heads=2)
    with torch.no_grad():
        before = plain(images, normalized=True)[1]
    planner = RAPPlanner(plain, tiny_config(lora_rank=2)).train()
    with torch.no_grad():
        after = planner.backbone(images, normalized=True)[1]
    assert torch.allclose(before, after, atol=1e-6)
    _loss(planner(features(1))).backward()
    lora_b = [p for n, p in planner.backbone.named_parameters() if n.endswith("lora_b")]
    assert len(lora_b) == 2 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is None for n, p in planner.backbone.named_parameters() if "lora_" not in n)
    from rap_backbone.planner import merge_lora

    with torch.no_grad():
        lora_b[0].add_(0.1)  # a trained adapter
        adapted = planner.backbone(images, normalized=True)[1]
        assert merge_lora(planner.backbone) == 2 and not any("lora_" in n for n, _ in planner.named_parameters())
        assert_close_to_scale(planner.backbone(images, normalized=True)[1], adapted, 1e-5, what="merged LoRA")


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_inputs_name_the_field(tiny_planner):
    feats = features(1)
    with pytest.raises(ValueError, match="ego_status"):
        tiny_planner({**feats, "ego_status": feats["ego_status"] * float("nan")})
    with pytest.raises(KeyError, match="lidar2img"):
        tiny_planner({k: v for k, v in feats.items() if k != "lidar2img"})
    with pytest.raises(ValueError, match="3 cameras"):
        tiny_planner({**feats, "camera_feature": feats["camera_feature"][:, :3]})
    with pytest.raises(ValueError, match="reference_points"):
        PlannerConfig(reference_points="all")


def test_grid_mask_keeps_rap_stripes():
    """GridMask (mode 1) keeps the stripes RAP's loop (grid_mask.py) draws on the 1.5x canvas, zeroes the rest."""
    from rap_backbone.planner import grid_mask

    images = torch.ones(2, 3, 20, 30)
    out = grid_mask(images, generator=np.random.default_rng(3))
    rng = np.random.default_rng(3)  # the same draws, in RAP's order: d, then the two phases
    h, w = 20, 30
    hh, ww = int(1.5 * h), int(1.5 * w)
    d = int(rng.integers(2, h))
    stripe = min(max(int(d * 0.5 + 0.5), 1), d - 1)
    st_h, st_w = int(rng.integers(d)), int(rng.integers(d))
    mask = np.ones((hh, ww), np.float32)
    for i in range(hh // d):
        s = d * i + st_h
        mask[s:min(s + stripe, hh), :] = 0
    for i in range(ww // d):
        s = d * i + st_w
        mask[:, s:min(s + stripe, ww)] = 0
    keep = 1 - mask[(hh - h) // 2:(hh - h) // 2 + h, (ww - w) // 2:(ww - w) // 2 + w]
    assert torch.equal(out, torch.from_numpy(keep).expand_as(images))
