"""Export the selected backbone as ONNX / a torch.export program and quantise it to int8.

    python -m navsim_agents.run_export backbone=edge-vit-128 out_dir=exports

Writes ``<out_dir>/<name>.onnx``, ``<name>.pt2``, ``<name>.int8.onnx`` and ``<name>.export.json`` (largest
difference to the eager encoder at each ``verify_hw`` size, int8 feature cosine on held-out embedded-world
images, file sizes). The files run back through ``backbone.runtime=onnxruntime backbone.weights=FILE``.
With ``planner_export.enabled=true`` the whole RAP planner around the backbone is exported too
(``<name>.planner.pt2`` / ``.planner.onnx``, ``rap_backbone.planner_export``), with its largest difference to
the eager planner in the report.

It lives here, not in ``eupe``, because it builds backbones (``rap_backbone``) and reads the embedded world
(``navsim_agents``); the machinery is ``eupe.export``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from eupe.config_tree import hydra_config_path
from eupe.export import (
    ExportError,
    OnnxEncoder,
    export_onnx,
    export_program,
    feature_cosine,
    load_program,
    quantize_int8,
    trace,
)
from navsim_agents.agents.rap_agent import build_planner_from_config, load_planner_profile
from navsim_agents.data.camera_source import synthetic_source
from rap_backbone.backbones import build_backbone_from_config, export_view
from rap_backbone.checkpoints import load_checkpoint_backbone, load_planner_checkpoint
from rap_backbone.nuplan_rig import RAP_CAMERA_NAMES
from rap_backbone.planner import EGO_STATUS_DIM
from rap_backbone.planner_export import (
    PLANNER_OUTPUTS,
    OnnxPlanner,
    ProgramPlanner,
    export_planner_onnx,
    export_planner_program,
    quantize_planner_int8,
    trace_planner,
)

log = logging.getLogger("run_export")
FORMATS = ("onnx", "program")
EGO_FRAMES = 4  # frames of ego_status in the sample (the planner reads the last one only)


def world_images(cameras: list[str], hw: tuple[int, int], count: int, *, train_logs: bool) -> torch.Tensor:
    """``count`` camera images of the embedded world (cycling over ``cameras``), resized to ``hw``, RGB in [0,1]."""
    source = synthetic_source(cameras=tuple(cameras), train_logs=train_logs)
    if len(source) == 0:
        raise RuntimeError("the embedded world has no camera images; delete its cache folder to regenerate it")
    step = max(1, len(source) // count)
    images = [cv2.resize(source.load((i * step) % len(source)), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
              for i in range(count)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def max_differences(ours: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    return {name: float((a - b).abs().max()) for name, a, b in zip(("summary", "patch"), ours, ref, strict=False)}


def run(cfg: DictConfig) -> dict[str, Any]:
    unknown = sorted(set(cfg.formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; use {list(FORMATS)}")
    if cfg.int8.enabled and "onnx" not in cfg.formats:
        raise ValueError("int8.enabled needs the onnx format: add onnx to formats or set int8.enabled=false")
    backbone = build_backbone_from_config(cfg.backbone)
    if cfg.checkpoint:
        load_checkpoint_backbone(cfg.checkpoint, backbone)
    module, info = export_view(backbone, tuple(cfg.sample_hw))
    out = Path(cfg.out_dir)
    stem = info.name.replace(":", "-")
    report: dict[str, Any] = {"encoder": info.name, "weights": info.weights_source, "files": {}, "max_abs_diff": {},
                              "sample_hw": list(cfg.sample_hw)}
    program = trace(module, info, sample_hw=tuple(cfg.sample_hw))
    runners = {}
    if "program" in cfg.formats:
        path = export_program(module, info, out / f"{stem}.pt2", program=program)
        runners["program"] = load_program(path, expect_name=info.name)[0]
        report["files"]["program"] = str(path)
    if "onnx" in cfg.formats:
        path = export_onnx(module, info, out / f"{stem}.onnx", program=program)
        runners["onnx"] = OnnxEncoder(path, expect_name=info.name)
        report["files"]["onnx"] = str(path)
    gen = torch.Generator().manual_seed(0)
    for hw in [info.fixed_hw] if info.fixed_hw else cfg.verify_hw:
        x = torch.randn(2, 3, *hw, generator=gen)
        with torch.no_grad():
            ref = module(x)
            for fmt, runner in runners.items():
                report["max_abs_diff"][f"{fmt}@{hw[0]}x{hw[1]}"] = max_differences(runner(x), ref)
    if cfg.int8.enabled:
        hw = tuple(cfg.int8.image_hw)
        calib = backbone.normalize(world_images(cfg.int8.cameras, hw, cfg.int8.calibration_images, train_logs=True))
        held = backbone.normalize(world_images(cfg.int8.cameras, hw, cfg.int8.held_out_images, train_logs=False))
        path = quantize_int8(report["files"]["onnx"], out / f"{stem}.int8.onnx",
                             list(torch.split(calib, cfg.int8.batch_size)), recipe=cfg.int8.recipe)
        int8 = OnnxEncoder(path, expect_name=info.name)
        with torch.no_grad():
            report["int8_cosine_held_out"] = feature_cosine(int8(held), module(held))
        report["files"]["int8"] = str(path)
    if cfg.planner_export.enabled:
        report["planner"] = export_whole_planner(cfg, backbone, out, f"{stem}.planner")
        report["files"].update({f"planner_{k}": v for k, v in report["planner"]["files"].items()})
    report["megabytes"] = {k: Path(v).stat().st_size / 2**20 for k, v in report["files"].items()}
    (out / f"{stem}.export.json").write_text(json.dumps(report, indent=1))
    log.info("%s", json.dumps(report, indent=1))
    return report


def planner_sample(hw: tuple[int, int], *, seed: int) -> dict[str, torch.Tensor]:
    """One random frame of RAP's feature dict with cameras of size ``hw``: the principal point at the image
    centre, so reference points project into the images."""
    gen = torch.Generator().manual_seed(seed)
    h, w = hw
    cams = len(RAP_CAMERA_NAMES)
    l2i = torch.eye(4).repeat(1, cams, 1, 1)
    l2i[..., 0, 2], l2i[..., 1, 2] = w / 2, h / 2
    return {"camera_feature": torch.randn(1, cams, 3, h, w, generator=gen), "lidar2img": l2i,
            "img_shape": torch.tensor([h, w, 3.0]).repeat(1, cams, 1),
            "ego_status": torch.randn(1, EGO_FRAMES, EGO_STATUS_DIM, generator=gen)}


def export_whole_planner(cfg: DictConfig, backbone: torch.nn.Module, out: Path, stem: str) -> dict[str, Any]:
    """Export the planner group around ``backbone`` (weights from ``checkpoint`` when set) in each format of
    ``planner_export.formats``; the report holds the files, the largest output difference to the eager planner
    on a second random frame, and the error of a format that cannot be written."""
    pe = cfg.planner_export
    unknown = sorted(set(pe.formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown planner_export.formats {unknown}; use {list(FORMATS)}")
    if cfg.checkpoint:
        planner = load_planner_checkpoint(cfg.checkpoint, backbone, load_planner_profile(cfg.planner).planner_config())
    else:
        planner = build_planner_from_config(cfg.planner, backbone).eval()
    hw = tuple(pe.image_hw)
    report: dict[str, Any] = {"weights": str(cfg.checkpoint or "random planner"), "image_hw": list(hw), "files": {},
                              "max_abs_diff": {}, "errors": {}, "sampling": {}}
    program, info = _trace_or_dense(planner, planner_sample(hw, seed=0), pe.sampling, report)
    report["sampling"]["program"] = info.sampling  # per format: a refused visible path falls back to dense
    runners = {}
    if "program" in pe.formats:
        path = export_planner_program(program, info, out / f"{stem}.pt2")
        runners["program"] = ProgramPlanner(path)
        report["files"]["program"] = str(path)
    if "onnx" in pe.formats:
        try:
            try:
                path = export_planner_onnx(program, info, out / f"{stem}.onnx")
                report["sampling"]["onnx"] = info.sampling
            except ExportError as err:
                if info.sampling == "dense":
                    raise
                log.error("%s; exporting ONNX with dense sampling instead", err)
                report["errors"]["onnx_visible_sampling"] = str(err)
                program_dense, info_dense = trace_planner(planner, planner_sample(hw, seed=0), sampling="dense")
                path = export_planner_onnx(program_dense, info_dense, out / f"{stem}.onnx")
                report["sampling"]["onnx"] = "dense"
            runners["onnx"] = OnnxPlanner(path)
            report["files"]["onnx"] = str(path)
            if pe.int8:
                int8 = quantize_planner_int8(path, out / f"{stem}.int8.onnx")
                runners["onnx_int8"] = OnnxPlanner(int8)
                report["files"]["onnx_int8"] = str(int8)
        except ExportError as err:  # the program is still useful: record why ONNX is missing
            log.error("%s", err)
            report["errors"]["onnx"] = str(err)
    check = planner_sample(hw, seed=1)
    with torch.no_grad():
        ref = planner(check)
        for fmt, runner in runners.items():
            got = runner(check)
            report["max_abs_diff"][fmt] = {k: float((got[k].float() - ref[k].float()).abs().max())
                                           for k in PLANNER_OUTPUTS}
    return report


def _trace_or_dense(planner, sample: dict[str, torch.Tensor], sampling: str, report: dict[str, Any]):
    """``trace_planner`` with ``sampling``; when torch.export refuses the visible-row path, the dense one (and
    the refusal in ``report["errors"]``)."""
    try:
        return trace_planner(planner, sample, sampling=sampling)
    except ExportError:
        raise  # bad input or an unknown mode: not the tracer's refusal
    except Exception as err:
        if sampling == "dense":
            raise
        log.error("torch.export refused %s sampling (%s); tracing dense sampling instead", sampling, err)
        report["errors"]["program_visible_sampling"] = f"{type(err).__name__}: {str(err)[:400]}"
        return trace_planner(planner, sample, sampling="dense")


@hydra.main(config_path=hydra_config_path(), config_name="run_export", version_base=None)
def main(cfg: DictConfig) -> None:
    log.info("export config:\n%s", OmegaConf.to_yaml(cfg))
    run(cfg)


if __name__ == "__main__":
    main()
