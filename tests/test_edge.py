"""Edge students as backbones, exported encoders (ONNX, torch.export), int8 and backbone.runtime=onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from eupe.export import (
    INT8_RECIPES,
    EncoderInfo,
    ExportError,
    OnnxEncoder,
    activation_products,
    export_onnx,
    feature_cosine,
    load_program,
    quantize_int8,
)
from eupe.models import count_parameters, create_model, get_spec
from rap_backbone.backbones import OnnxBackbone, build_backbone, export_view

pytest.importorskip("onnxruntime")


def eupe_vit_params(width: int, depth: int = 12, patch: int = 16, prefix: int = 5) -> int:
    """EUPE ViT (timm vit_*_patch16_dinov3_qkvb) parameters from its config, counted tensor by tensor."""
    block = (2 * width          # layer-scale gammas
             + 2 * width        # norm1
             + 2 * width        # q and v biases (the k bias is a fixed zero buffer)
             + 3 * width ** 2   # qkv weight
             + width ** 2 + width  # proj
             + 2 * width        # norm2
             + 4 * width ** 2 + 4 * width  # fc1
             + 4 * width ** 2 + width)     # fc2
    return prefix * width + 3 * patch * patch * width + width + depth * block + 2 * width


def tinyvit_params(dims, depths, heads, windows, mlp_ratio=4, expand=4) -> int:
    """TinyViT (microsoft/Cream, timm tiny_vit.py) parameters from its config; convs carry no bias, each
    followed by a BatchNorm (2 C)."""
    half = dims[0] // 2
    total = 3 * half * 9 + 2 * half + half * dims[0] * 9 + 2 * dims[0]  # stem: two 3x3 stride-2 convs
    for _ in range(depths[0]):  # stage 0: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project)
        c, m = dims[0], expand * dims[0]
        total += c * m + 2 * m + 9 * m + 2 * m + m * c + 2 * c
    for i in range(1, len(dims)):
        cin, c = dims[i - 1], dims[i]
        total += cin * c + 2 * c + 9 * c + 2 * c + c * c + 2 * c  # patch merging
        hidden = mlp_ratio * c
        block = (2 * c + 3 * c * c + 3 * c + c * c + c  # attention: norm, qkv, proj
                 + heads[i] * windows[i] ** 2             # one bias per head and window offset
                 + 9 * c + 2 * c                           # depthwise local conv + BN
                 + 2 * c + c * hidden + hidden + hidden * c + c)  # MLP with its norm
        total += depths[i] * block
    return total + 2 * dims[-1]  # head norm


@pytest.mark.parametrize("name,width", [("edge-vit-96", 96), ("edge-vit-128", 128), ("eupe-t", 192)])
def test_edge_vit_parameter_count_by_hand(name, width):
    model = create_model(name, device="meta")
    assert count_parameters(model) == eupe_vit_params(width)
    assert get_spec(name).arch == get_spec("eupe-t").arch  # EUPE ViT-T's own architecture, narrower


def test_edge_vit_sizes():
    # 144 C^2 + 944 C: the closed form in eupe/models.py, 1.5-3M for the edge widths
    assert eupe_vit_params(96) == 144 * 96 ** 2 + 944 * 96 == 1_417_728
    assert eupe_vit_params(128) == 2_480_128
    assert eupe_vit_params(192) == 5_489_664  # EUPE ViT-T, 5.49M (specs/eupe.md)


def test_tinyvit_parameter_count_by_hand():
    model = create_model("edge-tinyvit-5m", device="meta")
    assert count_parameters(model) == tinyvit_params((64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10),
                                                     (7, 7, 14, 7))


@pytest.mark.parametrize("name,stride,width", [("edge-vit-96", 16, 96), ("edge-tinyvit-5m", 32, 320)])
@pytest.mark.parametrize("hw", [(224, 384), (96, 160)])
def test_edge_patch_map_at_rap_sizes(name, stride, width, hw):
    kw = {"depth": 2} if name.startswith("edge-vit") else {"depths": (1, 1, 2, 1)}
    bb = build_backbone(name, **kw)
    assert bb.stride == stride and bb.embed_dim == width
    summary, patch = bb(torch.rand(2, 3, *hw))
    assert summary.shape == (2, width) and patch.shape == (2, width, hw[0] // stride, hw[1] // stride)
    if name.startswith("edge-vit"):
        # geometry: without blocks no token mixes with another, so blanking the top half of the image changes
        # exactly the top half of the map's rows, and nothing in its columns order
        flat = build_backbone(name, depth=0)
        x = torch.rand(1, 3, *hw)
        y = x.clone()
        y[..., : hw[0] // 2, :] = 0
        changed = (flat(x)[1] - flat(y)[1]).abs().amax(dim=(0, 1, 3)) > 0
        rows = hw[0] // stride
        assert changed.tolist() == [True] * (rows // 2) + [False] * (rows - rows // 2)


# TinyViT-5M's windows, one block per stage, narrow stages: every code path, a fraction of the cost
TINY_TINYVIT = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 1, 1, 1))


def test_tinyvit_checkpoint_with_other_windows_is_resized(tmp_path):
    """timm's TinyViT filter rebuilds attention-bias tables for new windows: a constant table stays constant."""
    from safetensors.torch import save_file

    small = create_model("edge-tinyvit-5m", **TINY_TINYVIT)
    with torch.no_grad():
        for name, p in small.named_parameters():
            if "attention_biases" in name:
                p.fill_(0.25)
    path = tmp_path / "tinyvit-w7.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    big = create_model("edge-tinyvit-5m", weights=path, **TINY_TINYVIT, window_sizes=(7, 7, 12, 12))
    table = big.stages[2].blocks[0].attn.attention_biases
    assert table.shape == (1, 144)  # one head, 12 x 12 window offsets (7 x 7 in the file)
    assert torch.allclose(table, torch.full_like(table, 0.25), rtol=1e-5)


def test_edge_student_round_trip(tmp_path):
    from eupe.distill.export import save_student

    kw = {"depth": 2}
    model = create_model("edge-vit-96", **kw).eval()
    path = save_student(tmp_path / "edge.safetensors", "edge-vit-96", kw, model.state_dict(), {},
                        {"stage": "stage4_edge"})
    bb = build_backbone("student", weights=path)
    assert bb.name == "student:edge-vit-96" and bb.stride == 16 and bb.embed_dim == 96
    ref = build_backbone("edge-vit-96", **kw)
    ref.model.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 96)
    assert all(torch.equal(a, b) for a, b in zip(bb(x), ref(x), strict=False))


# ---- export -------------------------------------------------------------------------------------------------
def _export_cfg(*overrides):
    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        return compose(config_name="run_export", overrides=list(overrides))


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    """A 1-block edge ViT through navsim_agents/run_export.py: ONNX, torch.export program and int8 ONNX (4
    calibration images of the embedded world)."""
    from safetensors.torch import save_file

    from navsim_agents import run_export

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    weights = root / "edge-vit-96-depth1.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("edge-vit-96", depth=1).state_dict().items()}, str(weights))
    cfg = _export_cfg("backbone=edge-vit-96", f"backbone.weights={weights}", "+backbone.overrides.depth=1",
                      f"out_dir={root}", "sample_hw=[32,48]", "verify_hw=[[32,48]]", "int8.image_hw=[48,96]",
                      "int8.calibration_images=4", "int8.held_out_images=2", "int8.batch_size=2")
    report = run_export.run(cfg)
    bb = build_backbone("edge-vit-96", weights=weights, depth=1)
    module, info = export_view(bb, (32, 48))
    return bb, module, info, report


def test_exported_encoders_match_eager_at_two_sizes(small_vit):
    bb, module, info, report = small_vit
    onnx_path, program_path = report["files"]["onnx"], report["files"]["program"]
    assert max(max(d.values()) for d in report["max_abs_diff"].values()) < 1e-3
    onnx_enc = OnnxEncoder(onnx_path, expect_name="edge-vit-96")
    program, program_info = load_program(program_path, expect_name="edge-vit-96")
    assert onnx_enc.info == program_info == info
    gen = torch.Generator().manual_seed(1)
    for shape in ((1, 3, 224, 384), (3, 3, 64, 32)):  # neither is the export's sample size
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = module(x)
            prog = program(x)
        onnx_out = onnx_enc(x)
        for got in (prog, onnx_out):
            assert got[1].shape == (shape[0], 96, shape[2] // 16, shape[3] // 16)
            for a, b in zip(got, ref, strict=False):  # fp32 kernels may reassociate sums: tolerance scales with the features
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_tinyvit_exports_at_a_fixed_size(tmp_path):
    bb = build_backbone("edge-tinyvit-5m", **TINY_TINYVIT)
    module, info = export_view(bb, (64, 96))
    assert info.fixed_hw == (64, 96)
    path = export_onnx(module, info, tmp_path / "tiny.onnx", sample_hw=(64, 96))
    enc = OnnxEncoder(path)
    x = torch.randn(3, 3, 64, 96)  # another batch size than the trace's
    with torch.no_grad():
        ref = module(x)
    for a, b in zip(enc(x), ref, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    with pytest.raises(ExportError, match=r"exported for 64x96 images only, got 224x384"):
        enc(torch.zeros(1, 3, 224, 384))


INT8_MIN_COSINE = 0.98  # patch and summary features of the int8 encoder against fp32, held-out images


def test_int8_keeps_features_and_names_its_encoder(small_vit, tmp_path):
    from navsim_agents.run_export import world_images

    bb, module, info, report = small_vit
    onnx_path, int8 = Path(report["files"]["onnx"]), Path(report["files"]["int8"])
    enc = OnnxEncoder(int8, expect_name="edge-vit-96")
    assert enc.info.precision == "int8" and int8.stat().st_size < onnx_path.stat().st_size
    held_out = bb.normalize(world_images(["cam_f0", "cam_b0"], (48, 96), 4, train_logs=False))  # test logs
    with torch.no_grad():
        cos = feature_cosine(enc(held_out), module(held_out))
    assert cos["summary"] >= INT8_MIN_COSINE and cos["patch"] >= INT8_MIN_COSINE, cos
    # an int8 file for another encoder is refused by name
    with pytest.raises(ExportError, match=r"holds encoder 'edge-vit-96' \(int8\), not 'eupe-t'"):
        build_backbone("eupe-t", weights=int8, runtime="onnxruntime")
    with pytest.raises(ExportError, match="already int8"):
        quantize_int8(int8, tmp_path / "again.onnx", [held_out])


def test_int8_recipes_keep_features_and_quantise_what_they_say(small_vit, tmp_path):
    import onnx

    from navsim_agents.run_export import world_images

    bb, module, _, report = small_vit
    fp32 = onnx.load(report["files"]["onnx"])
    attention = activation_products(fp32)
    assert len(attention) == 2  # one block: q @ k^T and attn @ v
    weight_products = sum(n.op_type == "MatMul" for n in fp32.graph.node) - 2
    calib = [bb.normalize(world_images(["cam_f0", "cam_l0"], (48, 96), 2, train_logs=True))]
    held_out = bb.normalize(world_images(["cam_f0", "cam_b0"], (48, 96), 4, train_logs=False))
    for recipe in INT8_RECIPES:
        path = quantize_int8(report["files"]["onnx"], tmp_path / f"{recipe}.onnx", calib, recipe=recipe)
        with torch.no_grad():
            cos = feature_cosine(OnnxEncoder(path, expect_name="edge-vit-96")(held_out), module(held_out))
        assert cos["summary"] >= INT8_MIN_COSINE and cos["patch"] >= INT8_MIN_COSINE, (recipe, cos)
        graph = onnx.load(str(path)).graph
        ops = [n.op_type for n in graph.node]
        from_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        quantised_attention = [n.name for n in graph.node if n.name in attention and set(n.input) <= from_dq]
        if recipe == "dynamic":  # weight products to MatMulInteger, no Q/DQ pairs, attention in float
            assert ops.count("MatMulInteger") == weight_products and "QuantizeLinear" not in ops
            assert ops.count("MatMul") == 2
        else:
            assert quantised_attention == (attention if recipe == "static-all" else []), recipe
    with pytest.raises(ExportError, match=r"unknown int8 recipe 'fast'; use one of"):
        quantize_int8(report["files"]["onnx"], tmp_path / "x.onnx", calib, recipe="fast")
    with pytest.raises(ExportError, match=r"'static-weights' needs at least one calibration image batch"):
        quantize_int8(report["files"]["onnx"], tmp_path / "x.onnx", [], recipe="static-weights")


def test_onnxruntime_backbone_in_the_planner(small_vit):
    from rap_backbone.planner import build_planner

    bb, _, _, report = small_vit
    onnx_path = report["files"]["onnx"]
    ort_bb = build_backbone("edge-vit-96", weights=onnx_path, runtime="onnxruntime")
    assert isinstance(ort_bb, OnnxBackbone) and ort_bb.stride == 16 and ort_bb.embed_dim == 96
    assert "onnxruntime" in ort_bb.weights_source
    x = torch.rand(2, 3, 64, 96)
    for a, b in zip(ort_bb(x), bb(x), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    cfg = dict(d_model=32, d_ffn=32, num_heads=2, num_proposals=4, num_refinements=1, agent_pred=False,
               area_pred=False, grid_mask_prob=0.0)
    torch.manual_seed(0)
    p_torch = build_planner(bb, cfg).eval()
    torch.manual_seed(0)
    p_ort = build_planner(ort_bb, cfg).eval()
    p_ort.load_state_dict(p_torch.state_dict(), strict=False)
    assert p_ort.backbone_is_deterministic
    cams = torch.rand(1, 4, 3, 64, 96)
    with torch.no_grad():
        a, b = p_torch.backbone_patch(cams), p_ort.backbone_patch(cams)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_export_bad_input(small_vit, tmp_path):
    import onnx

    bb, module, info, report = small_vit
    onnx_path = report["files"]["onnx"]
    with pytest.raises(ExportError, match=r"'edge-vit-96' at 40x48: sizes must be positive multiples of its stride 16"):
        export_onnx(module, info, tmp_path / "bad.onnx", sample_hw=(40, 48))
    with pytest.raises(ExportError, match="multiples of its stride 16"):
        OnnxEncoder(onnx_path)(torch.zeros(1, 3, 40, 48))
    # a file whose input is named otherwise breaks the contract
    model = onnx.load(str(onnx_path))
    model.graph.input[0].name = "pixel_values"
    for node in model.graph.node:
        node.input[:] = ["pixel_values" if i == "images" else i for i in node.input]
    renamed = tmp_path / "renamed.onnx"
    onnx.save(model, str(renamed))
    with pytest.raises(ExportError, match=r"inputs \['pixel_values'\].*do not match the encoder contract"):
        OnnxEncoder(renamed)
    # a file without our description
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ExportError, match="no 'eupe_encoder' metadata"):
        build_backbone("edge-vit-96", weights=bare, runtime="onnxruntime")
    # a file with a wrong width in its description: outputs break the stated shapes
    model = onnx.load(str(onnx_path))
    model.metadata_props[0].value = EncoderInfo(**{**info.__dict__, "embed_dim": 128}).to_json()
    wide = tmp_path / "wide.onnx"
    onnx.save(model, str(wide))
    with pytest.raises(ExportError, match=r"patch \[\S+, 96, .*do not match .*\[B,128,H/16,W/16\]"):
        OnnxEncoder(wide)
    with pytest.raises(ExportError, match="does not exist"):
        OnnxEncoder(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="backbone.runtime=onnxruntime needs the exported encoder"):
        build_backbone("edge-vit-96", runtime="onnxruntime")
    with pytest.raises(ValueError, match="unknown backbone.runtime 'tensorrt'"):
        build_backbone("edge-vit-96", runtime="tensorrt")


# ---- stage4_edge ----------------------------------------------------------------------------------------------
class _Losses(pl.Callback):
    """Records the training loss of every step; optionally stops the run after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_after = stop_after

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        if self.stop_after is not None and trainer.global_step >= self.stop_after:
            trainer.should_stop = True


def _distill_cfg(*overrides):
    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        return compose(config_name="run_distill", overrides=list(overrides))


def test_stage4_edge_recipe():
    d = _distill_cfg("distill=stage4_edge").distill
    assert d.student.name.startswith("edge-") and d.student.size == 256
    assert [t.name for t in d.teachers] == ["eupe-b"] and d.heads.hidden == 3072
    assert (d.loss.patch_cos_weight, d.loss.patch_smooth_l1_weight) == (0.9, 0.1)


def test_edge_smoke_run_learns_and_resumes_exactly(tmp_path):
    import logging

    from eupe import run_distill

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    try:
        steps = 16
        common = ["distill=edge_cpu", f"distill.max_steps={steps}", "trainer.checkpoint_every_n_steps=1",
                  "trainer.accelerator=cpu", "trainer.devices=1"]
        full = _Losses()
        export = run_distill.train(_distill_cfg(*common, f"stages_root={tmp_path / 'full'}"), callbacks=(full,))
        first, second = _Losses(stop_after=steps // 2), _Losses()
        part = [*common, f"stages_root={tmp_path / 'part'}"]
        run_distill.train(_distill_cfg(*part), callbacks=(first,))
        run_distill.train(_distill_cfg(*part), callbacks=(second,))
    finally:
        logging.disable(logging.NOTSET)
        torch.set_num_threads(threads)
    assert len(full.losses) == steps
    # after the normaliser's 5 warm-up steps the loss falls
    assert np.mean(full.losses[-4:]) < 0.9 * np.mean(full.losses[5:9]), full.losses
    np.testing.assert_allclose(first.losses + second.losses, full.losses, rtol=1e-6)
    bb = build_backbone("student", weights=export)
    assert bb.name == "student:edge-vit-96" and bb(torch.rand(1, 3, 64, 96))[1].shape == (1, 96, 4, 6)
