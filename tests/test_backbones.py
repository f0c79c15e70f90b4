"""The backbone contract: (summary [B,C], patch [B,C,H/s,W/s]), normalisation, freezing, errors."""
from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf

from rap_backbone.backbones import BACKBONE_NAMES, Backbone, build_backbone, build_backbone_from_config


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone("eupe-t", depth=2)


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return build_backbone("eupe-convnext-t", depths=(1, 1, 1, 1))


@pytest.mark.parametrize("size", [(224, 224), (448, 768)])
def test_vit_shapes(vit, size):
    h, w = size
    summary, patch = vit(torch.rand(4, 3, h, w))  # a batch of 4 cameras
    assert vit.stride == 16 and vit.embed_dim == 192
    assert summary.shape == (4, 192) and patch.shape == (4, 192, h // 16, w // 16)


@pytest.mark.parametrize("size", [(224, 224), (448, 768)])
def test_convnext_shapes(convnext, size):
    h, w = size
    summary, patch = convnext(torch.rand(4, 3, h, w))
    assert convnext.stride == 32 and convnext.embed_dim == 768
    assert summary.shape == (4, 768) and patch.shape == (4, 768, h // 32, w // 32)


def test_vit_patch_map_is_token_grid_after_prefix(vit):
    x = torch.rand(1, 3, 64, 96)
    tokens = vit.model.forward_features(vit.normalize(x))
    summary, patch = vit(x)
    torch.testing.assert_close(summary, tokens[:, 0])
    # cell (row 1, col 2) of a 4 x 6 grid is token 5 + 1*6 + 2
    torch.testing.assert_close(patch[0, :, 1, 2], tokens[0, 5 + 1 * 6 + 2])


def test_convnext_summary_is_normed_mean_of_last_stage(convnext):
    x = torch.rand(2, 3, 64, 64)
    feats = convnext.model.forward_features(convnext.normalize(x))
    pooled = feats.mean(dim=(2, 3))
    expected = torch.nn.functional.layer_norm(pooled, (768,), convnext.model.head.norm.weight,
                                              convnext.model.head.norm.bias, eps=1e-6)
    summary, _ = convnext(x)
    torch.testing.assert_close(summary, expected, rtol=1e-4, atol=1e-5)


def test_normalisation_is_imagenet_and_normalized_flag(vit):
    x = torch.rand(1, 3, 32, 32)
    manual = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(vit.normalize(x), manual)
    torch.testing.assert_close(vit(manual, normalized=True)[1], vit(x)[1])


def test_frozen_backbone_has_no_trainable_parameter_and_no_graph(vit):
    assert vit.frozen and not any(p.requires_grad for p in vit.parameters())
    vit.train()
    assert not vit.model.training  # stays in eval
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    summary, patch = vit(x)
    assert not summary.requires_grad and not patch.requires_grad


def test_unfrozen_backbone_trains():
    bb = build_backbone("eupe-t", freeze=False, depth=1)
    assert not bb.frozen
    _, patch = bb(torch.rand(1, 3, 32, 32))
    patch.sum().backward()
    assert bb.model.patch_embed.proj.weight.grad is not None


def test_bad_inputs():
    with pytest.raises(KeyError, match="eupe-b"):
        build_backbone("resnet-9000")
    bb = build_backbone("eupe-t", depth=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        bb(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match="student"):
        build_backbone("student")


def test_random_weights_warn_and_are_recorded(caplog):
    with caplog.at_level(logging.WARNING):
        bb = build_backbone("eupe-t", depth=1)
    assert bb.weights_source == "random"
    assert "backbone.weights" in caplog.text


def test_config_group_builds_every_name():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "backbone"
    names = {p.stem for p in root.glob("*.yaml")}
    assert names == set(BACKBONE_NAMES)
    cfg = OmegaConf.load(root / "eupe-s.yaml")
    cfg.overrides = {"depth": 1}
    bb = build_backbone_from_config(cfg)
    assert isinstance(bb, Backbone) and bb.embed_dim == 384
