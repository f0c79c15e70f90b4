"""RAP checkpoint import/export on a state dict this test writes in RAP's layout.

Names and shapes come from RAP's code (vita-epfl/RAP 5fd8630: rap_model.py, image_encoder.py with mmdet FPN,
bev_refiner.py / encoder.py with mmcv's BaseTransformerLayer, FFN and LayerNorms, temporal_self_attention.py,
spatial_cross_attention.py, transformer_decoder.py MLP, scorer.py) and transformers' DINOv3ViTModel; they are
written out here independently of the loader's key table.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import conformance_path

from rap_backbone.checkpoints import (
    CheckpointKeyError,
    load_planner_checkpoint,
    load_rap_checkpoint,
    save_rap_checkpoint,
)

P = "agent._rap_model."
D, FFN, HEADS, LAYERS, PROPOSALS, POSES, PILLAR = 32, 48, 8, 2, 64, 8, 4
HF_CFG = dict(model_type="dinov3_vit", hidden_size=24, intermediate_size=40, num_hidden_layers=2,
              num_attention_heads=2, hidden_act="silu", use_gated_mlp=True, num_register_tokens=4, patch_size=16,
              layerscale_value=1.0, key_bias=False, query_bias=True, value_bias=True, rope_theta=100.0)


def _mlp(prefix: str, d_in: int, hidden: int, d_out: int) -> dict[str, tuple]:
    return {f"{prefix}.mlp.0.weight": (hidden, d_in), f"{prefix}.mlp.0.bias": (hidden,),
            f"{prefix}.mlp.1.weight": (hidden,), f"{prefix}.mlp.1.bias": (hidden,),
            f"{prefix}.mlp.3.weight": (hidden, hidden), f"{prefix}.mlp.3.bias": (hidden,),
            f"{prefix}.mlp.4.weight": (hidden,), f"{prefix}.mlp.4.bias": (hidden,),
            f"{prefix}.mlp.6.weight": (d_out, hidden), f"{prefix}.mlp.6.bias": (d_out,)}


def rap_shapes() -> dict[str, tuple]:
    """Every key of RAPModel.state_dict() at the test sizes, with its shape."""
    c, f = HF_CFG["hidden_size"], HF_CFG["intermediate_size"]
    s: dict[str, tuple] = {
        "_backbone.level_embeds": (2, D), "_backbone.cams_embeds": (4, D),
        "_backbone.img_backbone.embeddings.cls_token": (1, 1, c),
        "_backbone.img_backbone.embeddings.mask_token": (1, 1, c),
        "_backbone.img_backbone.embeddings.register_tokens": (1, 4, c),
        "_backbone.img_backbone.embeddings.patch_embeddings.weight": (c, 3, 16, 16),
        "_backbone.img_backbone.embeddings.patch_embeddings.bias": (c,),
        "_backbone.img_backbone.norm.weight": (c,), "_backbone.img_backbone.norm.bias": (c,),
        "_backbone.img_neck.lateral_convs.0.conv.weight": (D, c, 1, 1),
        "_backbone.img_neck.lateral_convs.0.conv.bias": (D,),
        "_backbone.img_neck.fpn_convs.0.conv.weight": (D, D, 3, 3),
        "_backbone.img_neck.fpn_convs.0.conv.bias": (D,),
        "hist_encoding.weight": (D, 11), "hist_encoding.bias": (D,),
        "init_feature.weight": (PROPOSALS * POSES, D),
        "domain_classifier.classifier.0.weight": (512, D), "domain_classifier.classifier.0.bias": (512,),
        "domain_classifier.classifier.2.weight": (512, 512), "domain_classifier.classifier.2.bias": (512,),
        "domain_classifier.classifier.4.weight": (1, 512), "domain_classifier.classifier.4.bias": (1,),
        **_mlp("scorer.pred_score", D, FFN, 6),
        **_mlp("scorer.pred_col_agent", D, FFN, 720),
        **_mlp("scorer.pred_area", D, FFN, 10),
    }
    for i in range(HF_CFG["num_hidden_layers"]):
        b = f"_backbone.img_backbone.layer.{i}."
        s.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,), b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                  b + "attention.q_proj.weight": (c, c), b + "attention.q_proj.bias": (c,),
                  b + "attention.k_proj.weight": (c, c),
                  b + "attention.v_proj.weight": (c, c), b + "attention.v_proj.bias": (c,),
                  b + "attention.o_proj.weight": (c, c), b + "attention.o_proj.bias": (c,),
                  b + "layer_scale1.lambda1": (c,), b + "layer_scale2.lambda1": (c,),
                  b + "mlp.gate_proj.weight": (f, c), b + "mlp.gate_proj.bias": (f,),
                  b + "mlp.up_proj.weight": (f, c), b + "mlp.up_proj.bias": (f,),
                  b + "mlp.down_proj.weight": (c, f), b + "mlp.down_proj.bias": (c,)})
    q = PROPOSALS * POSES
    for r in range(4):
        h = f"_trajectory_head.{r}."
        s.update({h + "Bev_refiner.positional_encoding.row_embed.weight": (PROPOSALS, D // 2),
                  h + "Bev_refiner.positional_encoding.col_embed.weight": (POSES, D // 2),
                  h + "Bev_refiner.bev_decoder.reference_points": (PILLAR, 1, q, 4),
                  h + "Bev_refiner.bev_decoder.ref_3d": (1, PILLAR, q, 3),
                  h + "Bev_refiner.bev_decoder.hybird_ref_2d": (2, q, 1, 2),
                  h + "Bev_refiner.bev_decoder.ref_2d": (1, q, 1, 2),
                  **_mlp(h + "traj_decoder", D, FFN, 3)})
        for i in range(LAYERS):
            b = h + f"Bev_refiner.bev_decoder.layers.{i}."
            tsa, sca = b + "attentions.0.", b + "attentions.1.deformable_attention."
            s.update({tsa + "sampling_offsets.weight": (2 * HEADS * 4 * 2, 2 * D),
                      tsa + "sampling_offsets.bias": (2 * HEADS * 4 * 2,),
                      tsa + "attention_weights.weight": (2 * HEADS * 4, 2 * D),
                      tsa + "attention_weights.bias": (2 * HEADS * 4,),
                      tsa + "value_proj.weight": (D, D), tsa + "value_proj.bias": (D,),
                      tsa + "output_proj.weight": (D, D), tsa + "output_proj.bias": (D,),
                      sca + "sampling_offsets.weight": (HEADS * 16 * 2, D), sca + "sampling_offsets.bias": (HEADS * 32,),
                      sca + "attention_weights.weight": (HEADS * 16, D), sca + "attention_weights.bias": (HEADS * 16,),
                      sca + "value_proj.weight": (D, D), sca + "value_proj.bias": (D,),
                      b + "attentions.1.output_proj.weight": (D, D), b + "attentions.1.output_proj.bias": (D,),
                      b + "ffns.0.layers.0.0.weight": (FFN, D), b + "ffns.0.layers.0.0.bias": (FFN,),
                      b + "ffns.0.layers.1.weight": (D, FFN), b + "ffns.0.layers.1.bias": (D,)})
            for k in range(3):
                s.update({b + f"norms.{k}.weight": (D,), b + f"norms.{k}.bias": (D,)})
    return s


def rap_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct random values per key; the 4 refiner copies share values (one tied module in RAP)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in rap_shapes().items():
        tied = key.replace("_trajectory_head.1.", "_trajectory_head.0.").replace(
            "_trajectory_head.2.", "_trajectory_head.0.").replace("_trajectory_head.3.", "_trajectory_head.0.")
        if tied != key:
            state[P + key] = state[P + tied].clone()
        else:
            state[P + key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def write(tmp_path: Path, state: dict, name: str = "rap.ckpt") -> Path:
    path = tmp_path / name
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    state = rap_state()
    path = write(tmp_path_factory.mktemp("rap"), state)
    return state, load_rap_checkpoint(path, backbone_config=HF_CFG), path


def test_every_tensor_lands_in_place(loaded):
    state, planner, _ = loaded
    cfg = planner.config
    assert (cfg.d_model, cfg.d_ffn, cfg.num_bev_layers, cfg.num_proposals, cfg.num_poses) == (D, FFN, LAYERS, 64, 8)
    assert (cfg.num_heads, cfg.tsa_num_points, cfg.num_points_in_pillar) == (8, 4, 4)
    assert planner.backbone.embed_dim == HF_CFG["hidden_size"] and not planner.training
    h0 = P + "_trajectory_head.0.Bev_refiner."
    layer1 = planner.refiner.layers[1]
    pairs = [
        (planner.neck.lateral.weight, P + "_backbone.img_neck.lateral_convs.0.conv.weight"),
        (planner.neck.fpn.bias, P + "_backbone.img_neck.fpn_convs.0.conv.bias"),
        (planner.camera_embeds, P + "_backbone.cams_embeds"),
        (planner.level_embeds, P + "_backbone.level_embeds"),
        (planner.ego_encoder.weight, P + "hist_encoding.weight"),
        (planner.queries.weight, P + "init_feature.weight"),
        (planner.refiner.pos_pose.weight, h0 + "positional_encoding.col_embed.weight"),
        (planner.refiner.pos_proposal.weight, h0 + "positional_encoding.row_embed.weight"),
        (layer1.self_attn.sampling_offsets.weight, h0 + "bev_decoder.layers.1.attentions.0.sampling_offsets.weight"),
        (layer1.self_attn.output_proj.bias, h0 + "bev_decoder.layers.1.attentions.0.output_proj.bias"),
        (layer1.cross_attn.value_proj.weight,
         h0 + "bev_decoder.layers.1.attentions.1.deformable_attention.value_proj.weight"),
        (layer1.cross_attn.output_proj.weight, h0 + "bev_decoder.layers.1.attentions.1.output_proj.weight"),
        (layer1.ffn[0].weight, h0 + "bev_decoder.layers.1.ffns.0.layers.0.0.weight"),
        (layer1.ffn[3].bias, h0 + "bev_decoder.layers.1.ffns.0.layers.1.bias"),
        (layer1.norms[2].weight, h0 + "bev_decoder.layers.1.norms.2.weight"),
        (planner.refiner.decoder.mlp[6].weight, P + "_trajectory_head.0.traj_decoder.mlp.6.weight"),
        (planner.scorer.score.mlp[4].bias, P + "scorer.pred_score.mlp.4.bias"),
        (planner.scorer.collision.mlp[6].weight, P + "scorer.pred_col_agent.mlp.6.weight"),
        (planner.scorer.area.mlp[0].weight, P + "scorer.pred_area.mlp.0.weight"),
        (planner.domain_classifier.classifier[2].weight, P + "domain_classifier.classifier.2.weight"),
    ]
    for ours, key in pairs:
        assert torch.equal(ours, state[key]), key
    vit = planner.backbone.model
    hf = P + "_backbone.img_backbone."
    assert torch.equal(vit.blocks[1].attn.qkv.weight, torch.cat([state[hf + f"layer.1.attention.{n}_proj.weight"]
                                                                  for n in "qkv"]))
    assert torch.equal(vit.blocks[1].attn.q_bias, state[hf + "layer.1.attention.q_proj.bias"])
    assert torch.equal(vit.blocks[0].attn.v_bias, state[hf + "layer.0.attention.v_proj.bias"])
    assert torch.equal(vit.blocks[0].gamma_2, state[hf + "layer.0.layer_scale2.lambda1"])
    assert torch.equal(vit.blocks[0].mlp.fc1_g.weight, state[hf + "layer.0.mlp.gate_proj.weight"])
    assert torch.equal(vit.blocks[0].mlp.fc1_x.weight, state[hf + "layer.0.mlp.up_proj.weight"])
    assert torch.equal(vit.reg_token, state[hf + "embeddings.register_tokens"])
    assert torch.equal(vit.patch_embed.proj.weight, state[hf + "embeddings.patch_embeddings.weight"])
    assert torch.equal(vit.norm.bias, state[hf + "norm.bias"])


def test_round_trip_writes_rap_layout(loaded, tmp_path):
    state, planner, _ = loaded
    out = save_rap_checkpoint(planner, tmp_path / "back.ckpt")
    back = torch.load(out, weights_only=True)["state_dict"]
    assert set(back) == set(state)
    for key, tensor in state.items():
        if key.endswith(("reference_points", "ref_3d", "hybird_ref_2d", "ref_2d")):
            continue  # regenerated from the config (compared with RAP's own in test_rap_conformance)
        assert torch.equal(back[key], tensor), key
    again = load_rap_checkpoint(out, backbone_config=HF_CFG)
    _assert_same_state(planner, again)


def test_missing_key_is_named(tmp_path):
    state = rap_state()
    key = P + "scorer.pred_score.mlp.3.weight"
    del state[key]
    with pytest.raises(CheckpointKeyError, match="scorer.pred_score.mlp.3.weight"):
        load_rap_checkpoint(write(tmp_path, state), backbone_config=HF_CFG)


def test_missing_backbone_key_is_named(tmp_path):
    state = rap_state()
    del state[P + "_backbone.img_backbone.layer.1.mlp.down_proj.weight"]
    with pytest.raises(KeyError, match=r"_backbone\.img_backbone\.layer\.1\.mlp\.down_proj\.weight"):
        load_rap_checkpoint(write(tmp_path, state), backbone_config=HF_CFG)


def test_extra_key_is_named(tmp_path):
    state = rap_state()
    state[P + "scorer.pred_score2.mlp.0.weight"] = torch.zeros(FFN, D)
    with pytest.raises(CheckpointKeyError, match="scorer.pred_score2.mlp.0.weight"):
        load_rap_checkpoint(write(tmp_path, state), backbone_config=HF_CFG)


def test_differing_refiner_copies_are_named(tmp_path):
    state = rap_state()
    key = P + "_trajectory_head.2.Bev_refiner.bev_decoder.layers.0.attentions.1.output_proj.weight"
    state[key] = state[key] + 1e-3
    with pytest.raises(CheckpointKeyError, match=r"_trajectory_head\.2\..*attentions\.1\.output_proj\.weight"):
        load_rap_checkpoint(write(tmp_path, state), backbone_config=HF_CFG)


def test_matches_conformance_key_layout():
    """Our hand-written RAP names are the names RAP's code writes (its conformance checkpoint, when present)."""

    root = conformance_path()
    ckpt = root / "rap_dev" / "rap_dev.ckpt"
    if not ckpt.is_file():
        pytest.skip(f"RAP conformance set not found at {ckpt.parent}")
    theirs = set(torch.load(ckpt, weights_only=True)["state_dict"])
    assert theirs == set(rap_state())


def test_own_lightning_checkpoint_round_trip(loaded, tmp_path):
    """Our agent's Lightning checkpoints (planner under ``agent.<attr>.``) load strictly with the same backbone."""
    _, planner, _ = loaded
    path = tmp_path / "ours.ckpt"
    torch.save({"state_dict": {f"agent.planner.{k}": v for k, v in planner.state_dict().items()}}, path)
    again = load_planner_checkpoint(path, planner.backbone)
    _assert_same_state(planner, again)
    state = torch.load(path, weights_only=True)["state_dict"]
    del state["agent.planner.refiner.layers.0.norms.1.bias"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointKeyError, match=r"agent\.planner\.refiner\.layers\.0\.norms\.1\.bias"):
        load_planner_checkpoint(path, planner.backbone)


def test_wrong_backbone_config_says_what_to_pass(tmp_path):
    path = write(tmp_path, rap_state())
    with pytest.raises(CheckpointKeyError, match="backbone_config"):
        load_rap_checkpoint(path)  # default: DINOv3 ViT-H+/16 (width 1280, 32 layers)


def test_paper_size_every_weight_maps():
    """backbone=dinov3-h, d_model 1280: every planner tensor has a RAP name and the DINOv3 inside RAP maps onto
    timm's dinov3-h shapes (built on the meta device, nothing allocated)."""
    from eupe.hf_dinov3 import build_timm_dinov3, timm_to_hf_state_dict
    from rap_backbone.backbones import build_backbone
    from rap_backbone.checkpoints import planner_key_table, refiner_key_table
    from rap_backbone.planner import PlannerConfig, RAPPlanner

    with torch.device("meta"):
        backbone = build_backbone("dinov3-h", device="meta")
        planner = RAPPlanner(backbone, PlannerConfig())
        from_hf = build_timm_dinov3(None)  # RAP's DINOv3 ViT-H+/16 config
    cfg = planner.config
    own = {k for k in planner.state_dict() if not k.startswith("backbone.")}
    table = {**planner_key_table(cfg), **refiner_key_table(cfg)}
    assert set(table) == own
    assert len(set(table.values())) == len(table)  # one RAP key per tensor (x4 for the refiner copies)
    timm_shapes = {k: v.shape for k, v in backbone.model.state_dict().items()}
    hf_shapes = {k: v.shape for k, v in from_hf.state_dict().items()}
    # transformers' ViT-H+/16 config keeps query/value biases (zeros in the released weights); timm's
    # vit_huge_plus_patch16_dinov3 drops them: otherwise the two are the same architecture
    extra = {k for k in hf_shapes if k.endswith((".attn.q_bias", ".attn.v_bias"))}
    assert len(extra) == 2 * 32 and timm_shapes == {k: v for k, v in hf_shapes.items() if k not in extra}
    hf = timm_to_hf_state_dict(backbone.model.state_dict(), None)
    assert hf["layer.31.mlp.gate_proj.weight"].shape == (5120, 1280) and "layer.0.attention.k_proj.bias" not in hf


def test_transformers5_nesting_loads(tmp_path):
    """transformers 5.x writes the DINOv3 encoder under ``img_backbone.model.``; both layouts load alike."""
    state = rap_state()
    nested = {k.replace("_backbone.img_backbone.", "_backbone.img_backbone.model."): v for k, v in state.items()}
    planner = load_rap_checkpoint(write(tmp_path, nested), backbone_config=HF_CFG)
    key = P + "_backbone.img_backbone.layer.1.layer_scale1.lambda1"
    assert torch.equal(planner.backbone.model.blocks[1].gamma_1, state[key])
    del nested[key.replace("img_backbone.", "img_backbone.model.")]
    with pytest.raises(KeyError, match=r"img_backbone\.model\.layer\.1\.layer_scale1\.lambda1"):
        load_rap_checkpoint(write(tmp_path, nested, "broken.ckpt"), backbone_config=HF_CFG)
