"""EUPE / DINOv3 encoders through timm: sizes, official-checkpoint loading, EUPE's forward."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import eupe
from eupe.models import WeightsError, count_parameters

# Parameter counts published with EUPE (facebookresearch/EUPE README; spec eupe.md section 1).
EUPE_VIT_PARAMS = {"eupe-t": 5.49e6, "eupe-s": 21.60e6, "eupe-b": 85.67e6}
# ConvNeXt paper / timm model cards, with the 1000-class ImageNet head: T 28.6M, S 50.2M, B 88.6M.
CONVNEXT_PARAMS_WITH_IN1K_HEAD = {"eupe-convnext-t": 28.59e6, "eupe-convnext-s": 50.22e6,
                                  "eupe-convnext-b": 88.59e6}


@pytest.mark.parametrize("name", sorted(EUPE_VIT_PARAMS))
def test_eupe_vit_parameter_counts(name):
    model = eupe.create_model(name, device="meta")
    assert count_parameters(model) == pytest.approx(EUPE_VIT_PARAMS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(CONVNEXT_PARAMS_WITH_IN1K_HEAD))
def test_eupe_convnext_parameter_counts(name):
    model = eupe.create_model(name, device="meta")
    width = model.num_features
    with_head = count_parameters(model) + width * 1000 + 1000
    assert with_head == pytest.approx(CONVNEXT_PARAMS_WITH_IN1K_HEAD[name], rel=0.01)


def test_every_name_builds_and_dinov3_h_is_rap_size():
    for name in eupe.model_names():
        model = eupe.create_model(name, device="meta")
        assert model.weights_source == "random"
    # DINOv3 ViT-H+/16: 840M parameters (spec rap.md), width 1280, 32 blocks.
    huge = eupe.create_model("dinov3-h", device="meta")
    assert count_parameters(huge) == pytest.approx(840e6, rel=0.01)
    assert huge.embed_dim == 1280 and len(huge.blocks) == 32


def test_unknown_name_lists_known():
    with pytest.raises(KeyError, match="eupe-b"):
        eupe.create_model("eupe-xl")


def test_cls_pooling_storage_tokens_and_nonsquare_grid():
    torch.manual_seed(0)
    model = eupe.create_model("eupe-t", depth=2).eval()
    x = torch.randn(1, 3, 256, 384)
    tokens = model.forward_features(x)
    # token 0 = CLS, 1..4 = storage tokens, then a 16 x 24 patch grid
    assert model.num_prefix_tokens == 5 and model.reg_token.shape == (1, 4, 192)
    assert tokens.shape == (1, 5 + (256 // 16) * (384 // 16), 192)
    pooled = model(x)  # EUPE's forward: the normed CLS token, no classifier
    torch.testing.assert_close(pooled, tokens[:, 0])


def _official_eupe_vit_state(depth: int, dim: int, heads: int) -> dict[str, torch.Tensor]:
    """A state dict in the official EUPE/DINOv3 key layout (spec eupe.md, section 1), random values."""
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "cls_token": r(1, 1, dim), "storage_tokens": r(1, 4, dim), "mask_token": r(1, dim),
        "patch_embed.proj.weight": r(dim, 3, 16, 16), "patch_embed.proj.bias": r(dim),
        "rope_embed.periods": r(dim // heads // 4),
        "norm.weight": r(dim), "norm.bias": r(dim),
        "projectors.0.weight": r(8, dim),  # training-only head, must be skipped
    }
    for i in range(depth):
        b = f"blocks.{i}."
        bias = r(3 * dim)
        bias[dim:2 * dim] = 0  # EUPE masks the key bias to zero
        sd.update({
            b + "norm1.weight": r(dim), b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": bias,
            b + "attn.qkv.bias_mask": torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)]),
            b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": r(dim), b + "norm2.weight": r(dim), b + "norm2.bias": r(dim),
            b + "mlp.fc1.weight": r(4 * dim, dim), b + "mlp.fc1.bias": r(4 * dim),
            b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim), b + "ls2.gamma": r(dim),
        })
    return sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_eupe_checkpoint_lands_in_place(tmp_path, suffix):
    sd = _official_eupe_vit_state(depth=2, dim=192, heads=3)
    path = tmp_path / f"EUPE-ViT-T{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    model = eupe.create_model("eupe-t", weights=path, depth=2)
    assert model.weights_source == str(path)
    torch.testing.assert_close(model.cls_token, sd["cls_token"])
    torch.testing.assert_close(model.reg_token, sd["storage_tokens"])
    torch.testing.assert_close(model.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    for i in range(2):
        blk, b = model.blocks[i], f"blocks.{i}."
        torch.testing.assert_close(blk.attn.qkv.weight, sd[b + "attn.qkv.weight"])
        torch.testing.assert_close(blk.attn.q_bias, sd[b + "attn.qkv.bias"][:192])
        torch.testing.assert_close(blk.attn.v_bias, sd[b + "attn.qkv.bias"][384:])
        torch.testing.assert_close(blk.gamma_1, sd[b + "ls1.gamma"])
        torch.testing.assert_close(blk.gamma_2, sd[b + "ls2.gamma"])
        torch.testing.assert_close(blk.mlp.fc2.weight, sd[b + "mlp.fc2.weight"])
    torch.testing.assert_close(model.norm.weight, sd["norm.weight"])


def test_timm_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = eupe.create_model("eupe-t", depth=1).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = eupe.create_model("eupe-t", weights=path, depth=1).eval()
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(loaded.forward_features(x), model.forward_features(x))


def test_wrong_shape_missing_key_and_corrupt_file_name_the_culprit(tmp_path):
    sd = _official_eupe_vit_state(depth=1, dim=192, heads=3)
    bad_shape = dict(sd, **{"blocks.0.mlp.fc1.weight": torch.zeros(10, 192)})
    p1 = tmp_path / "bad_shape.pth"
    torch.save(bad_shape, p1)
    with pytest.raises(WeightsError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        eupe.create_model("eupe-t", weights=p1, depth=1)

    missing = {k: v for k, v in sd.items() if k != "blocks.0.norm2.bias"}
    p2 = tmp_path / "missing.pth"
    torch.save(missing, p2)
    with pytest.raises(WeightsError, match=r"blocks\.0\.norm2\.bias"):
        eupe.create_model("eupe-t", weights=p2, depth=1)

    p3 = tmp_path / "corrupt.pth"
    p3.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt.pth"):
        eupe.create_model("eupe-t", weights=p3, depth=1)

    with pytest.raises(WeightsError, match="not found"):
        eupe.create_model("eupe-t", weights=tmp_path / "absent.pt")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cls_token": torch.zeros(1), "note": object()}, path)
    with pytest.raises(WeightsError, match="evil.pt"):
        eupe.create_model("eupe-t", weights=path, depth=1)


def test_other_architecture_file_is_named(tmp_path):
    other = eupe.create_model("eupe-convnext-t")
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="convnext.safetensors"):
        eupe.create_model("eupe-t", weights=path, depth=1)


def test_student_checkpoint_loads_through_create_model(tmp_path):
    from eupe.distill.export import save_student

    torch.manual_seed(0)
    student = eupe.create_model("eupe-t", depth=1).eval()
    path = save_student(tmp_path / "student.safetensors", "eupe-t", {"depth": 1}, student.state_dict(),
                        {}, {"stage": "test"})
    loaded = eupe.create_model("eupe-t", weights=path, depth=1).eval()
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(loaded.forward_features(x), student.forward_features(x))
