"""transformers' DINOv3ViTModel and our timm model built from its config and weights give the same tokens."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_close_to_scale

from eupe.hf_dinov3 import (
    HFCheckpointError,
    is_hf_snapshot,
    load_hf_dinov3,
    timm_kwargs_from_hf_config,
    timm_to_hf_state_dict,
)

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, hidden_act="silu",
            use_gated_mlp=True, num_register_tokens=4, patch_size=16, layerscale_value=0.5, key_bias=False,
            query_bias=True, value_bias=True, proj_bias=True, mlp_bias=True, rope_theta=100.0, layer_norm_eps=1e-5)


def _hf_model(**overrides):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (optional extra 'hf'); "
                                                              "HF-vs-timm equivalence not checked")
    torch.manual_seed(0)
    cfg = transformers.DINOv3ViTConfig(**{**TINY, **overrides})
    model = transformers.DINOv3ViTModel(cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere (biases and layer scales start at constants)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, {**TINY, **overrides}


@pytest.mark.parametrize("overrides", [{}, dict(use_gated_mlp=False, hidden_act="gelu", num_register_tokens=0,
                                                 intermediate_size=128)])
@pytest.mark.numerics
def test_last_hidden_state_matches_transformers(overrides):
    hf, cfg = _hf_model(**overrides)
    ours = load_hf_dinov3(cfg, state_dict=hf.state_dict())
    assert ours.weights_source == "state_dict"
    for shape in [(2, 3, 64, 64), (1, 3, 48, 96)]:  # square and non-square
        x = torch.randn(shape)
        with torch.no_grad():
            expected = hf(pixel_values=x).last_hidden_state
            actual = ours.forward_features(x)
        assert actual.shape == expected.shape
        assert_close_to_scale(actual, expected, 1e-5, what=f"last_hidden_state {shape}")


@pytest.mark.numerics
def test_transformers5_nesting_and_snapshot_dir(tmp_path):
    hf, cfg = _hf_model()
    from safetensors.torch import save_file

    nested = {f"model.{k}": v.contiguous() for k, v in hf.state_dict().items()}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "dinov3_vit"}))
    save_file(nested, str(tmp_path / "model.safetensors"))
    assert is_hf_snapshot(tmp_path) and not is_hf_snapshot(tmp_path / "config.json")
    ours = load_hf_dinov3(tmp_path)
    assert ours.weights_source == str(tmp_path)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert_close_to_scale(ours.forward_features(x), hf(pixel_values=x).last_hidden_state, 1e-5, what="snapshot")
    import eupe

    via_registry = eupe.create_model("dinov3-h", weights=tmp_path)  # a facebook/dinov3-* snapshot directory
    assert via_registry.weights_source == str(tmp_path)
    with torch.no_grad():
        assert_close_to_scale(via_registry.forward_features(x), hf(pixel_values=x).last_hidden_state, 1e-5,
                              what="registry")


def test_state_dict_round_trip_and_errors():
    gen = torch.Generator().manual_seed(1)
    model = load_hf_dinov3(TINY)
    hf = timm_to_hf_state_dict(model.state_dict(), TINY)
    hf = {k: torch.randn(v.shape, generator=gen) for k, v in hf.items()}
    ours = load_hf_dinov3(TINY, state_dict=hf)
    assert torch.equal(ours.blocks[0].attn.qkv.weight[64:128], hf["layer.0.attention.k_proj.weight"])
    back = timm_to_hf_state_dict(ours.state_dict(), TINY, extras=ours.hf_extras)
    assert set(back) == set(hf) and all(torch.equal(back[k], hf[k]) for k in hf)
    broken = dict(hf)
    del broken["layer.1.norm2.bias"]
    with pytest.raises(HFCheckpointError, match=r"layer\.1\.norm2\.bias"):
        load_hf_dinov3(TINY, state_dict=broken)
    with pytest.raises(HFCheckpointError, match=r"layer\.2\.norm1\.weight"):
        load_hf_dinov3(TINY, state_dict={**hf, "layer.2.norm1.weight": torch.ones(64)})


def test_vith16plus_defaults_match_timm_dinov3_h():
    """RAP's default config builds the same architecture timm registers as vit_huge_plus_patch16_dinov3."""
    kw = timm_kwargs_from_hf_config(None)
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["num_reg_tokens"]) == (1280, 32, 20, 4)
    assert kw["swiglu_mlp"] and int(kw["embed_dim"] * kw["mlp_ratio"]) == 5120
    with pytest.raises(NotImplementedError, match="key_bias"):
        timm_kwargs_from_hf_config({**TINY, "key_bias": True})
