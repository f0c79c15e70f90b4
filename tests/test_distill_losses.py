"""Distillation losses, heads and normalisers against hand-derived values."""

import math

import pytest
import torch
from torch import nn

from eupe.distill.heads import AdaptorMLP, build_heads
from eupe.distill.losses import (
    PATCH_COS_WEIGHT,
    PATCH_SMOOTH_L1_WEIGHT,
    TeacherLossWeights,
    cosine_loss,
    distill_loss,
    match_grids,
    patch_loss,
    resize_grid,
    smooth_l1_loss,
)
from eupe.distill.normalizer import FeatureNormalizer, equal_diagonal_rotation, hadamard


def test_recipe_constants():
    assert (PATCH_COS_WEIGHT, PATCH_SMOOTH_L1_WEIGHT) == (0.9, 0.1)


def test_cosine_loss_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [3.0, 3.0], [-1.0, 0.0]])
    # cosines 0, 1, -1 -> losses 1, 0, 2 -> mean 1
    assert cosine_loss(pred, target).item() == pytest.approx(1.0)


def test_smooth_l1_by_hand():
    pred = torch.tensor([0.5, 2.0, -0.2, 0.0])
    target = torch.zeros(4)
    # |d| < 1: 0.5 d^2 ; else |d| - 0.5  ->  0.125, 1.5, 0.02, 0
    assert smooth_l1_loss(pred, target).item() == pytest.approx((0.125 + 1.5 + 0.02 + 0.0) / 4)


def test_patch_mix_by_hand():
    s = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)
    # cosine term 1 - 0 = 1 ; smooth-L1: |1| -> 0.5, |3| -> 2.5 -> mean 1.5 ; mix 0.9 * 1 + 0.1 * 1.5
    mixed, cos, l1 = patch_loss(s, t)
    assert cos.item() == pytest.approx(1.0)
    assert l1.item() == pytest.approx(1.5)
    assert mixed.item() == pytest.approx(0.9 + 0.15)


# PyTorch bicubic = Keys cubic convolution with A = -0.75, half-pixel centres, clamped borders.
# Upsampling [0, 1] to 4 samples: sources x = -0.25, 0.25, 0.75, 1.25; weights for t=0.25:
# w(1.25) = -0.10546875, w(0.25) = 0.87890625, w(0.75) = 0.26171875, w(1.75) = -0.03515625.
KEYS_RAMP = [-0.10546875, 0.2265625, 0.7734375, 1.10546875]


def test_bicubic_resize_matches_keys_kernel():
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    out = resize_grid(x, (1, 4))
    assert out.flatten().tolist() == pytest.approx(KEYS_RAMP, abs=1e-6)


@pytest.mark.parametrize("student_is_smaller", [True, False])
def test_patch_loss_resizes_smaller_grid_to_larger(student_is_smaller):
    small = torch.stack([torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)])[None]  # [1,2,1,2]
    large = torch.stack([torch.tensor([KEYS_RAMP]), torch.ones(1, 4)])[None]   # [1,2,1,4]
    s, t = (small, large) if student_is_smaller else (large, small)
    rs, rt = match_grids(s, t)
    assert rs.shape == rt.shape == (1, 2, 1, 4)
    mixed, cos, l1 = patch_loss(s, t)
    assert mixed.item() == pytest.approx(0.0, abs=1e-6)
    # a real mismatch on the larger grid: flip the ramp channel of the large map
    bad = large.clone()
    bad[:, 0] = -bad[:, 0]
    assert patch_loss(small, bad)[0].item() > 0.1


def test_distill_loss_sums_weighted_teachers():
    g = torch.Generator().manual_seed(0)
    ss = {k: torch.randn(3, 4, generator=g) for k in "ab"}
    ts = {k: torch.randn(3, 4, generator=g) for k in "ab"}
    sp = {k: torch.randn(3, 4, 2, 2, generator=g) for k in "ab"}
    tp = {k: torch.randn(3, 4, 2, 2, generator=g) for k in "ab"}
    w = {"a": TeacherLossWeights(summary=2.0, patch=0.5), "b": TeacherLossWeights()}
    total, terms = distill_loss(ss, sp, ts, tp, w)
    expect = 0.0
    for k in "ab":
        s_l = cosine_loss(ss[k], ts[k]).item()
        p_l = 0.9 * cosine_loss(sp[k], tp[k], dim=1).item() + 0.1 * smooth_l1_loss(sp[k], tp[k]).item()
        assert terms[f"{k}/summary_cos"].item() == pytest.approx(s_l, rel=1e-5)
        assert terms[f"{k}/patch"].item() == pytest.approx(p_l, rel=1e-5)
        expect += w[k].summary * s_l + w[k].patch * p_l
    assert total.item() == pytest.approx(expect, rel=1e-5)
    assert {"a/patch_cos", "a/patch_smooth_l1", "b/total"} <= set(terms)


def test_adaptor_head_layout():
    head = AdaptorMLP(in_dim=8, hidden_dim=16, out_dim=5)
    layers = list(head.children())
    assert [type(m) for m in layers] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert layers[0].bias is None and layers[3].bias is None
    heads = build_heads(student_dim=8, teacher_dims={"pe.core": (6, 7)}, hidden_dim=16)
    s, p = heads["pe_core"](torch.randn(2, 8), torch.randn(2, 9, 8))
    assert s.shape == (2, 6) and p.shape == (2, 9, 7)


def test_normalizer_freezes_on_stats_of_features_seen():
    g = torch.Generator().manual_seed(0)
    seen = [torch.randn(4, 10, 6, generator=g) * torch.arange(1, 7) + 5 for _ in range(3)]
    norm = FeatureNormalizer(6, warmup_iters=3)
    for x in seen:
        norm.observe(x)
    assert bool(norm.frozen)
    norm.observe(torch.randn(4, 10, 6) * 100)  # after freezing: ignored
    flat = torch.cat([x.reshape(-1, 6) for x in seen]).double()
    assert torch.allclose(norm.mean.double(), flat.mean(0), atol=1e-5)
    assert torch.allclose(norm.std.double(), flat.std(0, correction=0), atol=1e-5)
    y = norm(flat.float())
    assert torch.allclose(y.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(y.std(0, correction=0), torch.ones(6), atol=1e-4)


@pytest.mark.parametrize("dim", [8, 6])
def test_phi_s_gives_equal_unit_variance(dim):
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(dim, dim, generator=g)
    xs = [torch.randn(500, dim, generator=g) @ mix + 2.0 for _ in range(2)]
    norm = FeatureNormalizer(dim, mode="phi_s", warmup_iters=2)
    for x in xs:
        norm.observe(x)
    y = norm(torch.cat(xs))
    cov = torch.cov(y.T, correction=0)
    assert torch.allclose(cov.diagonal(), torch.ones(dim), atol=1e-4)  # PHI-S: every coordinate variance 1
    assert torch.allclose(y.mean(0), torch.zeros(dim), atol=1e-4)
    t = norm.transform.double()
    # the transform is alpha * orthogonal with alpha = 1 / sqrt(mean eigenvalue)
    lam = torch.linalg.eigvalsh(torch.cov(torch.cat(xs).T.double(), correction=0))
    assert torch.allclose(t @ t.T, torch.eye(dim, dtype=torch.float64) / lam.mean(), atol=1e-4)


def test_hadamard_and_equal_diagonal_rotation():
    h = hadamard(4)
    assert torch.allclose(h @ h.T, torch.eye(4, dtype=torch.float64))
    assert torch.allclose(h.abs(), torch.full((4, 4), 0.5, dtype=torch.float64))
    lam = torch.tensor([5.0, 1.0, 0.5, 0.25, 0.25])
    r = equal_diagonal_rotation(lam)
    assert torch.allclose(r @ r.T, torch.eye(5, dtype=torch.float64), atol=1e-10)
    diag = (r @ torch.diag(lam.double()) @ r.T).diagonal()
    assert torch.allclose(diag, torch.full((5,), float(lam.mean()), dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError):
        hadamard(6)
    assert math.isclose(float(hadamard(1)), 1.0)
