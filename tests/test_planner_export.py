"""The whole RAP planner with its backbone as a torch.export program and ONNX: outputs equal the eager planner."""
from __future__ import annotations

import pytest
import torch
from test_planner_forward import features

from eupe.export import ExportError
from rap_backbone.backbones import build_backbone
from rap_backbone.planner import build_planner, project_reference_points
from rap_backbone.planner_export import (
    PLANNER_INPUTS,
    PLANNER_OUTPUTS,
    OnnxPlanner,
    ProgramPlanner,
    export_planner_onnx,
    export_planner_program,
    trace_planner,
)

pytest.importorskip("onnxruntime")

TINY = dict(d_model=32, d_ffn=32, num_heads=2, num_proposals=4, num_refinements=2, agent_pred=False,
            area_pred=False, grid_mask_prob=0.0)
HW = (64, 96)


def _sample(seed: int) -> dict[str, torch.Tensor]:
    from navsim_agents.run_export import planner_sample

    return planner_sample(HW, seed=seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    planner = build_planner(build_backbone("edge-vit-96", depth=1), TINY).eval()
    with torch.no_grad():  # proposals spread over tens of metres: the cameras of a rig see different queries
        planner.refiner.decoder.mlp[6].weight.mul_(20.0)
    program, info = trace_planner(planner, _sample(0))
    root = tmp_path_factory.mktemp("planner")
    return planner, program, info, root


@pytest.fixture(scope="module")
def onnx_file(exported):
    """The fixture planner's ONNX, written once for the tests that read it."""
    _, program, info, root = exported
    return export_planner_onnx(program, info, root / "p.onnx")


def _compare(got: dict, ref: dict) -> None:
    for key in PLANNER_OUTPUTS:  # fp32 kernels may reassociate sums: tolerance scales with each output
        torch.testing.assert_close(got[key].float(), ref[key].float(), rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(ref[key].abs().max())))


def test_planner_program_equals_eager(exported):
    planner, program, info, root = exported
    path = export_planner_program(program, info, root / "p.pt2")
    runner = ProgramPlanner(path)
    assert runner.info["backbone"] == "edge-vit-96" and runner.info["input_shapes"]["camera_feature"] == [1, 4, 3, *HW]
    check = _sample(1)  # not the trace's sample
    with torch.no_grad():
        ref = planner(check)
    _compare(runner(check), ref)
    assert ref["trajectory"].shape == (1, 8, 3) and ref["pdm_score"].shape == (1, 4)


def test_planner_onnx_equals_eager(exported, onnx_file):
    planner = exported[0]
    runner = OnnxPlanner(onnx_file)
    check = _sample(2)
    with torch.no_grad():
        ref = planner(check)
    _compare(runner(check), ref)
    wrong = dict(check, camera_feature=torch.zeros(1, 4, 3, 32, 96))
    with pytest.raises(ExportError, match=r"camera_feature has shape \[1, 4, 3, 32, 96\], the file was exported for "
                                          r"\[1, 4, 3, 64, 96\]"):
        runner(wrong)


def test_planner_export_bad_input(exported, tmp_path):
    planner, _, _, _ = exported
    with pytest.raises(ExportError, match=r"lacks \['ego_status'\]"):
        trace_planner(planner, {k: v for k, v in _sample(0).items() if k != "ego_status"})
    with pytest.raises(ValueError, match="multiples of 16"):
        trace_planner(planner, dict(_sample(0), camera_feature=torch.zeros(1, 4, 3, 40, 96)))
    with pytest.raises(ExportError, match="does not exist"):
        ProgramPlanner(tmp_path / "missing.pt2")


def test_run_export_takes_encoder_and_planner_from_a_checkpoint(tmp_path):
    from hydra import compose, initialize_config_dir

    from eupe.export import load_program
    from navsim_agents import run_export
    from navsim_agents.agents.rap_agent import build_planner_from_config

    overrides = ["backbone=edge-vit-96", "+backbone.overrides.depth=1", "planner=tiny", "planner.num_refinements=1",
                 "planner.num_bev_layers=1", f"out_dir={tmp_path}", "formats=[program]", "int8.enabled=false",
                 "sample_hw=[64,96]", "verify_hw=[[64,96]]", "planner_export.enabled=true",
                 "planner_export.image_hw=[64,96]", "planner_export.formats=[program]"]
    with initialize_config_dir(config_dir=str(run_export.Path(__file__).resolve().parents[1] / "configs"),
                               version_base=None):
        cfg = compose(config_name="run_export", overrides=overrides)
    # a Lightning checkpoint of our agent (keys agent.planner.*) with its own random backbone
    torch.manual_seed(123)
    trained = build_planner_from_config(cfg.planner, build_backbone("edge-vit-96", depth=1)).eval()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"agent.planner.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    cfg.checkpoint = str(ckpt)
    torch.manual_seed(0)  # the config's backbone starts from other random weights
    report = run_export.run(cfg)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = trained.backbone(images, normalized=True)
    encoder, _ = load_program(report["files"]["program"])
    for a, b in zip(encoder(images), ref, strict=True):  # the checkpoint's encoder
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    planner = report["planner"]
    assert planner["weights"] == str(ckpt) and not planner["errors"]
    assert set(planner["max_abs_diff"]) == {"program"} and planner["files"]["program"].endswith("edge-vit-96.planner.pt2")
    check = run_export.planner_sample((64, 96), seed=1)
    with torch.no_grad():
        expected = trained(check)
    _compare(ProgramPlanner(planner["files"]["program"])(check), expected)  # the checkpoint's planner


# int8 weight products change each output by a few per cent of its magnitude at most (random weights, 1-block ViT)
INT8_RELATIVE_TOLERANCE = 0.05


def test_planner_int8_stays_close_to_eager(exported, onnx_file):
    from rap_backbone.planner_export import quantize_planner_int8

    planner, _, _, root = exported
    fp32 = onnx_file
    int8 = OnnxPlanner(quantize_planner_int8(fp32, root / "q.int8.onnx"), expect=planner)
    assert int8.info["precision"] == "int8" and (root / "q.int8.onnx").stat().st_size < fp32.stat().st_size
    check = _sample(3)
    with torch.no_grad():
        ref = planner(check)
    got = int8(check)
    for key in ("proposals", "pred_logit", "pdm_score"):  # the argmax trajectory may pick another proposal
        scale = float(ref[key].abs().max())
        assert float((got[key] - ref[key]).abs().max()) <= INT8_RELATIVE_TOLERANCE * scale, key
    with pytest.raises(ExportError, match="already int8"):
        quantize_planner_int8(root / "q.int8.onnx", root / "again.onnx")


def test_planner_runtime_onnxruntime_in_the_agent_and_a_file_for_another_planner(exported, onnx_file):
    from navsim_agents.agents.rap_agent import RAPAgent

    planner, path = exported[0], onnx_file
    backbone = {"name": "edge-vit-96", "overrides": {"depth": 1}}
    agent = RAPAgent(backbone=backbone, planner=dict(TINY, runtime="onnxruntime", exported=str(path))).eval()
    agent.planner.load_state_dict(planner.state_dict())  # the exported weights, for the eager reference
    check = _sample(4)
    with torch.no_grad():
        _compare(agent(check), planner(check))
    assert "onnxruntime fp32" in agent.weights_source
    with pytest.raises(ExportError, match=r"not an export of this planner \(num_proposals: file 4, config 8\)"):
        RAPAgent(backbone=backbone, planner=dict(TINY, num_proposals=8, runtime="onnxruntime", exported=str(path)))
    with pytest.raises(ExportError, match=r"backbone: file 'edge-vit-96', config 'edge-vit-128'"):
        RAPAgent(backbone={"name": "edge-vit-128", "overrides": {"depth": 1}},
                 planner=dict(TINY, runtime="onnxruntime", exported=str(path)))
    with pytest.raises(ValueError, match="planner.runtime=onnxruntime needs planner.exported"):
        RAPAgent(backbone=backbone, planner=dict(TINY, runtime="onnxruntime"))


def test_closed_loop_agent_runs_the_exported_planner(exported, onnx_file):
    from bench2drive.agent import DEFAULTS, TorchPlanner, build_planner

    planner, path = exported[0], onnx_file
    cfg = dict(DEFAULTS, backbone={"name": "edge-vit-96", "overrides": {"depth": 1}},
               planner_config=dict(TINY, runtime="onnxruntime", exported=str(path)))
    loop_planner = build_planner(cfg)
    assert isinstance(loop_planner, TorchPlanner) and "onnxruntime fp32" in loop_planner.source
    check = _sample(5)
    with torch.no_grad():
        ref = planner(check)
    _compare(loop_planner(check), ref)  # the file's weights, not the loop's random planner


def _cameras_per_query(planner, features: dict) -> set[int]:
    """How many cameras see a query (one of its anchors visible), over every refinement of the eager forward."""
    with torch.no_grad():
        decodes = planner(features)["proposal_list"]
    return {int(c) for p in decodes for c in project_reference_points(
        p.flatten(1, 2), features["lidar2img"], features["img_shape"], planner.config)[1].any(-1).sum(1).flatten()}


def _centre_rig() -> torch.Tensor:
    """lidar2img of 4 cameras that see every point in front of them: 1 pixel per metre around the image centre,
    depth 1, so every anchor within 32 m lands inside a 64x96 image."""
    l2i = torch.zeros(4, 4)
    l2i[0, 0], l2i[1, 1], l2i[0, 3], l2i[1, 3], l2i[2, 3], l2i[3, 3] = 1.0, 1.0, HW[1] / 2, HW[0] / 2, 1.0, 1.0
    return l2i.repeat(1, 4, 1, 1)


def test_planner_onnx_samples_visible_rows_and_equals_eager(exported, onnx_file):
    """The default export samples each camera's visible rows (NonZero / GridSample on those rows / ScatterND):
    outputs equal eager where queries are seen by 0, 1 or 2 cameras, where one camera sees nothing, and where
    every query is in every camera."""
    import onnx

    planner = exported[0]
    assert exported[2].sampling == "visible" and OnnxPlanner(onnx_file).info["sampling"] == "visible"
    ops = [n.op_type for n in onnx.load(str(onnx_file)).graph.node]
    # one NonZero per camera and refinement (a refinement's layers share the projected anchors)
    assert ops.count("NonZero") == TINY["num_refinements"] * 4
    runner = OnnxPlanner(onnx_file)
    rig = features(1, seed=2)  # b0, f0, l0, r0 around the rear axle
    blind = dict(rig, lidar2img=rig["lidar2img"].clone())
    blind["lidar2img"][0, 2] = 0.0  # an uncalibrated camera (the feature builder's zeros): no visible row
    every = dict(rig, lidar2img=_centre_rig())
    for frame, counts in ((rig, {0, 1, 2}), (blind, {0, 1}), (every, {4})):
        assert counts <= _cameras_per_query(planner, frame)
        with torch.no_grad():
            ref = planner(frame)
        _compare(runner(frame), ref)
    assert _cameras_per_query(planner, every) == {4}


def test_planner_dense_sampling_stays_selectable(exported):
    """sampling="dense": every query in every camera, no data-dependent op; same outputs."""
    planner = exported[0]
    program, info = trace_planner(planner, _sample(0), sampling="dense")
    targets = {str(n.target) for n in program.graph.nodes}
    assert info.sampling == "dense" and not any("nonzero" in t for t in targets)
    check = features(1, seed=2)
    with torch.no_grad():
        ref = planner(check)
    _compare(dict(zip(PLANNER_OUTPUTS, program.module()(*[check[k] for k in PLANNER_INPUTS]), strict=True)), ref)
    with pytest.raises(ExportError, match=r"unknown planner sampling 'sparse'; use one of \['visible', 'dense'\]"):
        trace_planner(planner, _sample(0), sampling="sparse")
