"""Raster-to-Real alignment and RAP augmentations against hand-derived values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rap_backbone.alignment import (
    AlignmentConfig,
    DomainClassifier,
    EgoPerturbation,
    alignment_losses,
    apply_ego_perturbation,
    dann_lambda,
    domain_loss,
    grad_reverse,
    perturbed_global_pose,
    sample_ego_perturbation,
    select_pseudo_egos,
    spatial_alignment_loss,
)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)


def test_gradient_reversal_flips_and_scales():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    lam = dann_lambda(0.3)
    (grad_reverse(x, lam) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -lam * np.array([1.0, 2.0, 3.0]), rtol=1e-6)


def test_spatial_loss_detaches_raster_side():
    raster = torch.ones(2, 4, 3, 2, 2, requires_grad=True)
    real = torch.zeros(2, 4, 3, 2, 2, requires_grad=True)
    loss = spatial_alignment_loss(raster, real)
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()
    assert raster.grad is None
    np.testing.assert_allclose(real.grad.numpy(), -2.0 / real.numel())


def test_domain_loss_balanced_bce():
    logits = torch.tensor([0.0, 0.0, 0.0, 2.0])  # 3 raster (label 0), 1 real (label 1)
    got = float(domain_loss(logits, 3))
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    # raster: -log(1-sigmoid(0)) = log 2; real: pos_weight 3 * -log(sigmoid(2)) = 3 * softplus(-2)
    assert got == pytest.approx((3 * math.log(2) + 3 * sp(-2.0)) / 4, rel=1e-6)


def test_alignment_losses_gradients():
    torch.manual_seed(0)
    proj = torch.randn(3, 4, 8, 2, 3, requires_grad=True)  # 2 raster + 1 real (pairs with raster 1)
    clf = DomainClassifier(d_in=8, hidden=16)
    out = alignment_losses(proj, n_raster=2, real_index=torch.tensor([1]), classifier=clf, progress=0.5)
    expected_spatial = float(((proj[2] - proj[1]) ** 2).mean())
    assert float(out["spatial"]) == pytest.approx(expected_spatial, rel=1e-6)
    cfg = AlignmentConfig()
    assert cfg.spatial_weight == 0.002 and cfg.domain_weight == 0.001
    assert float(out["loss"]) == pytest.approx(0.002 * float(out["spatial"]) + 0.001 * float(out["domain"]), rel=1e-6)
    out["loss"].backward()
    assert proj.grad[:2].abs().sum() == 0  # raster side detached in both terms
    assert proj.grad[2].abs().sum() > 0


def test_perturbation_ranges_and_reexpression():
    rng = np.random.default_rng(0)
    draws = [sample_ego_perturbation(rng) for _ in range(500)]
    assert max(abs(d.dx) for d in draws) <= 0.5 and max(abs(d.dy) for d in draws) <= 0.5
    assert max(abs(d.dyaw) for d in draws) <= math.radians(15) + 1e-12
    assert max(abs(d.velocity_scale[0] - 1) for d in draws) <= 0.2
    assert max(abs(d.acceleration_scale[1] - 1) for d in draws) <= 0.1
    assert max(abs(d.dyaw) for d in draws) > math.radians(13)  # the range is actually used

    p = EgoPerturbation(dx=0.5, dy=0.0, dyaw=math.pi / 2, velocity_scale=(1.2, 1.0), acceleration_scale=(0.9, 1.0))
    out = apply_ego_perturbation(p, velocity=np.array([10.0, 0.0]), acceleration=np.array([1.0, 0.0]),
                                 trajectory=np.array([[5.5, 0.0, 0.0]]),
                                 boxes=np.array([[0.5, 3.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2]]))
    # ego at (0.5, 0) facing +y: a point 5 m ahead in the old frame is 5 m to the new ego's right
    np.testing.assert_allclose(out["trajectory"][0], [0.0, -5.0, -math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(out["boxes"][0, [0, 1, 6]], [3.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["velocity"], [12.0, 0.0])
    np.testing.assert_allclose(out["acceleration"], [0.9, 0.0])
    np.testing.assert_allclose(perturbed_global_pose(np.array([10.0, 0.0, math.pi / 2]), p),
                               [10.0, 0.5, -math.pi], atol=1e-12)


def test_select_pseudo_egos():
    frames, dt = 20, 0.5
    t = np.arange(frames) * dt
    straight = np.stack([10 * t, np.zeros_like(t)], -1)  # constant velocity: CV error 0 -> rejected
    turning = np.stack([10 * t, 0.5 * t ** 2], -1)  # accelerating sideways -> CV misses by > 0.5 m
    gappy = turning.copy()
    gappy[12] = np.nan  # absent inside the window
    late = turning.copy()
    late[:5] = np.nan  # appears after the window start
    tracks = np.stack([straight, turning, gappy, late], 1)
    mask = select_pseudo_egos(tracks, current_index=5)
    assert mask.tolist() == [False, True, False, False]
    assert not select_pseudo_egos(tracks, current_index=10).any()  # 10 - 3 + 14 = 21 > 20 frames
    assert not select_pseudo_egos(tracks, current_index=2).any()  # 2 - 3 < 0
