"""Edge deployment table: encoder x runtime x threads at RAP's reduced and full inputs, plus planner Hz.

    python benchmarks/edge.py                                   # every row (long on a 2-core CPU)
    python benchmarks/edge.py --encoders edge-vit-96 eupe-t --runtimes eager onnx-int8 --inputs reduced

Runtimes: ``eager`` (torch fp32), ``compile`` (torch.compile), ``onnx-fp32`` and ``onnx-int8`` (onnxruntime,
the files of ``navsim_agents/run_export.py``; int8 calibrated on embedded-world camera images). Per row: params,
GFLOPs, the encoder's latency on 4 cameras, peak memory growth of the measuring process, and end-to-end Hz of
the small RAP planner (``configs/planner/small.yaml``) with that encoder. Each row runs in its own process.
Rows merge into ``results/edge.md`` / ``.csv`` by (encoder, runtime, threads, input): a rerun replaces its own
rows and keeps the others; every row records the machine's 1-minute load when it was taken.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import _peak_rss_mib, gflops  # noqa: E402
from common import RESULTS, in_process, machine, time_call, write_table  # noqa: E402
from planner import SIZES, frame, planner_config  # noqa: E402

ENCODERS = ["edge-vit-96", "edge-vit-128", "edge-tinyvit-5m", "eupe-t", "eupe-s", "eupe-b", "eupe-convnext-t",
            "dinov3-h"]
RUNTIMES = ["eager", "compile", "onnx-fp32", "onnx-int8"]
INPUTS = {"reduced": (224, 384), "full": (448, 768)}  # 4 cameras each; planner.py SIZES (x0.2 / x0.4, padded)
COLUMNS = ["encoder", "runtime", "threads", "input", "params (M)", "GFLOPs", "encoder ms", "encoder Hz",
           "planner Hz", "peak MiB", "load 1m", "note"]
KEY = 4  # the first four columns identify a row
CALIBRATION_IMAGES = 16


def export_files(name: str, export_dir: Path) -> tuple[Path, Path]:
    """fp32 and int8 ONNX files of ``name`` (random weights) traced at the reduced input, written once and reused
    by later rows (TinyViT's files take that size only)."""
    from eupe.export import export_onnx, quantize_int8, trace
    from navsim_agents.run_export import world_images
    from rap_backbone.backbones import build_backbone, export_view

    fp32, int8 = export_dir / f"{name}.onnx", export_dir / f"{name}.int8.onnx"
    if not fp32.is_file():
        module, info = export_view(build_backbone(name), INPUTS["reduced"])
        export_onnx(module, info, fp32, program=trace(module, info, sample_hw=INPUTS["reduced"]))
    if not int8.is_file():
        backbone = build_backbone(name)
        images = backbone.normalize(world_images(["cam_f0", "cam_l0", "cam_r0", "cam_b0"], INPUTS["reduced"],
                                                 CALIBRATION_IMAGES, train_logs=True))
        quantize_int8(fp32, int8, list(torch.split(images, 4)))
    return fp32, int8


def _measure(name: str, runtime: str, threads: int, size: str, export_dir: str, repeats: int, queue) -> None:
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        from rap_backbone.backbones import build_backbone
        from rap_backbone.planner import RAPPlanner

        base_rss = _peak_rss_mib()
        eager = build_backbone(name)
        params = sum(p.numel() for p in eager.parameters()) / 1e6
        if runtime.startswith("onnx"):
            fp32, int8 = export_files(name, Path(export_dir))
            backbone = build_backbone(name, weights=int8 if runtime == "onnx-int8" else fp32, runtime="onnxruntime")
        else:
            backbone = eager
        scale, planner_name = SIZES[size]
        feats = frame(scale, "cpu")
        images = feats["camera_feature"][0]  # [4, 3, H, W]
        encoder = torch.compile(backbone) if runtime == "compile" else backbone
        with torch.no_grad():
            enc_ms = time_call(lambda: encoder(images, normalized=True), repeats=repeats, warmup=1)
        planner = RAPPlanner(backbone, planner_config(planner_name)).eval()
        if runtime == "compile":
            planner.backbone = encoder
        with torch.no_grad():
            plan_ms = time_call(lambda: planner(feats), repeats=repeats, warmup=1)
        queue.put(dict(params=params, enc_ms=enc_ms, plan_hz=1e3 / plan_ms, peak=_peak_rss_mib() - base_rss))
    except Exception as exc:  # record the failure and go on with the next row
        queue.put(dict(error=f"{type(exc).__name__}: {str(exc)[:160]}"))


def read_rows() -> list[list[str]]:
    path = RESULTS / "edge.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return [r for r in rows[1:] if len(r) == len(COLUMNS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=ENCODERS)
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "eupe-edge-exports")
    args = parser.parse_args()
    args.export_dir.mkdir(parents=True, exist_ok=True)

    rows = {tuple(r[:KEY]): r for r in read_rows()}
    from rap_backbone.backbones import build_backbone

    for name in args.encoders:
        flops = {size: gflops(build_backbone(name), (4, 3, *hw)) for size, hw in INPUTS.items()}
        for size in args.inputs:
            for runtime in args.runtimes:
                for threads in args.threads:
                    r = in_process(_measure, name, runtime, threads, size, str(args.export_dir), args.repeats)
                    load = os.getloadavg()[0]
                    key = [name, runtime, str(threads), f"4x{INPUTS[size][1]}x{INPUTS[size][0]}"]
                    if "error" in r:
                        row = key + [""] * 6 + [f"{load:.1f}", r["error"]]
                    else:
                        row = key + [f"{r['params']:.3g}", f"{flops[size]:.3g}", f"{r['enc_ms']:.3g}",
                                     f"{1e3 / r['enc_ms']:.3g}", f"{r['plan_hz']:.3g}", f"{r['peak']:.0f}",
                                     f"{load:.1f}", "random weights"]
                    rows[tuple(row[:KEY])] = row
                    print(" | ".join(row), flush=True)
                    write(rows)


def write(rows: dict) -> None:
    order = {n: i for i, n in enumerate(ENCODERS)}
    ordered = sorted(rows.values(), key=lambda r: (r[3], order.get(r[0], 99), RUNTIMES.index(r[1])
                                                     if r[1] in RUNTIMES else 9, r[2]))
    notes = [
        "encoder ms: 4 camera images in one batch, already normalised; planner Hz: the small RAP planner "
        "(configs/planner/small.yaml) end to end on one frame of 4 cameras, encoder included.",
        "GFLOPs by torch.utils.flop_counter on the torch model (1 multiply-add = 2 FLOPs), 4 images.",
        "onnx-int8: onnxruntime static QDQ quantisation (MatMul/Gemm/Conv int8, per-channel weights), calibrated "
        f"on {CALIBRATION_IMAGES} embedded-world camera images; onnx rows use onnxruntime's CPU provider.",
        "peak MiB: growth of the measuring process's peak RSS (weights, exported session and activations).",
        "load 1m: the machine's 1-minute load average right after the row (2 cores, shared with other jobs: "
        "rows with a load well above 2 are slower than an idle machine gives; rerun them with --encoders ... ).",
        "All encoders have random weights (no checkpoints here): latency is what the table measures.",
        "No GPU was available: no bf16 CUDA rows.",
        f"Last run on {machine()} ({time.strftime('%Y-%m-%d %H:%M')}).",
    ]
    write_table("edge", COLUMNS, ordered, title="Edge encoders: runtime x threads x input (CPU)", notes=notes)


if __name__ == "__main__":
    main()
