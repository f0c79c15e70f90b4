"""End-to-end RAP planner latency per frame (4 cameras) for every backbone: frames/s and peak memory.

    python benchmarks/planner.py                                 # CPU, reduced size (x0.2 images, small planner)
    python benchmarks/planner.py --size full --names eupe-t eupe-b   # CPU, RAP's size (768x448, d_model 1280)
    python benchmarks/planner.py --device cuda                   # GPU, RAP's size, bf16 autocast
    python benchmarks/planner.py --flops-only                    # FLOPs per frame, both sizes (meta device)

A frame is RAP's feature dict for one sample: 4 cameras, lidar2img, ego status; the whole forward (backbone,
neck, 4 refinements, scorer, selection) is timed. Backbones have random weights (speed does not depend on
them). Each backbone runs in its own process so its peak memory is its own. Target (issue 6): RAP with eupe-b
at least 5x the frames/s of RAP with dinov3-h on the same machine; RAP-DINO is quoted at ~18 FPS.
Writes results/planner[_<device>_<size>].md and .csv.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, time_call, write_table  # noqa: E402

from rap_backbone.backbones import build_backbone  # noqa: E402
from rap_backbone.planner import PlannerConfig, RAPPlanner  # noqa: E402
from rap_backbone.planner_config import planner_profile  # noqa: E402

NAMES = ["eupe-t", "eupe-s", "eupe-b", "eupe-convnext-t", "eupe-convnext-s", "eupe-convnext-b",
         "dinov3-s", "dinov3-b", "dinov3-l", "dinov3-h"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "planner"
RAW_IMAGE = (1080, 1920)  # nuPlan camera (H, W)
# rap.md: resize x0.4 -> 768x432, padded to a multiple of 32 -> 768x448
SIZES = {"full": (0.4, "rap_paper"), "reduced": (0.2, "small")}
PAD = 32


def planner_config(name: str) -> PlannerConfig:
    return planner_profile(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))).planner_config()


def frame(scale: float, device: str) -> dict[str, torch.Tensor]:
    """One sample of RAP's feature dict at ``scale`` of the nuPlan image size (padded to /32)."""
    h = math.ceil(RAW_IMAGE[0] * scale / PAD) * PAD
    w = math.ceil(RAW_IMAGE[1] * scale / PAD) * PAD
    l2i = torch.eye(4).repeat(1, 4, 1, 1)
    l2i[..., 0, 2], l2i[..., 1, 2] = w / 2, h / 2  # some points project into the images
    return {"camera_feature": torch.randn(1, 4, 3, h, w, device=device),
            "lidar2img": l2i.to(device), "img_shape": torch.tensor([h, w, 3.0], device=device).repeat(1, 4, 1),
            "ego_status": torch.randn(1, 4, 11, device=device)}


def _measure(name: str, size: str, device: str, repeats: int, queue) -> None:
    try:
        torch.manual_seed(0)
        scale, planner_name = SIZES[size]
        cuda = device == "cuda"
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        backbone = build_backbone(name, device=device) if cuda else build_backbone(name)
        planner = RAPPlanner(backbone, planner_config(planner_name)).to(device).eval()
        params = sum(p.numel() for p in planner.parameters()) / 1e6
        head = params - sum(p.numel() for p in planner.backbone.parameters()) / 1e6
        feats = frame(scale, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def run():
            with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cuda):
                return planner(feats)

        run()  # warm-up
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        # very slow configurations (a huge backbone on a shared CPU) are timed once
        reps = repeats if first < 20 else 1
        ms = time_call(run, repeats=reps, warmup=0, cuda=cuda) if reps > 1 else first * 1e3
        if cuda:
            mem = torch.cuda.max_memory_allocated() / 2**30
        else:
            mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 2**20
        h, w = feats["camera_feature"].shape[-2:]
        queue.put(dict(name=name, params_M=params, head_M=head, image=f"4x{w}x{h}", d_model=planner.config.d_model,
                       ms=ms, fps=1e3 / ms, mem_GiB=mem, repeats=reps))
    except Exception as exc:  # record the failure and go on with the next backbone
        queue.put(dict(name=name, error=f"{type(exc).__name__}: {exc}"))


def flops_table(names: list[str]) -> None:
    """GFLOPs per frame at both sizes, counted on the meta device (nothing allocated, any machine)."""
    rows = []
    for name in names:
        row = [name]
        for size in ("reduced", "full"):
            scale, planner_name = SIZES[size]
            with torch.device("meta"):
                planner = RAPPlanner(build_backbone(name, device="meta"), planner_config(planner_name)).eval()
                feats = frame(scale, "meta")
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                planner(feats)
            backbone = sum(v for k, v in counter.get_flop_counts().get("RAPPlanner.backbone", {}).items())
            row += [counter.get_total_flops() / 1e9, backbone / 1e9]
        rows.append(row)
    by_name = {r[0]: r for r in rows}
    notes = ["FLOPs of matmuls, convolutions and attention (torch FlopCounterMode on the meta device); bilinear "
             "deformable sampling is not counted. reduced: 4x384x224 images, small planner (d_model 128); full: "
             "4x768x448 (RAP), rap_paper planner (d_model 1280)"]
    if "eupe-b" in by_name and "dinov3-h" in by_name:
        for i, size in ((1, "reduced"), (3, "full")):
            notes.append(f"{size}: RAP+dinov3-h / RAP+eupe-b FLOPs = {by_name['dinov3-h'][i] / by_name['eupe-b'][i]:.2f}")
    columns = ["name", "gflops_reduced", "backbone_gflops_reduced", "gflops_full", "backbone_gflops_full"]
    write_table("planner_flops", columns, [r[:5] for r in rows], title="RAP planner FLOPs per frame", notes=notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", default=NAMES)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on GPU, reduced on CPU")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device, time nothing")
    args = parser.parse_args()
    if args.flops_only:
        flops_table(args.names)
        return
    size = args.size or ("full" if args.device == "cuda" else "reduced")
    ctx = mp.get_context("spawn")
    rows, failures = [], []
    for name in args.names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(name, size, args.device, args.repeats, queue))
        proc.start()
        proc.join()
        result = queue.get() if not queue.empty() else dict(name=name, error=f"process exited {proc.exitcode}")
        if "error" in result:
            failures.append(f"{name}: {result['error']}")
            print("FAILED", failures[-1], flush=True)
            continue
        print(result, flush=True)
        rows.append(result)
        _write(rows, failures, args.device, size)  # after every backbone, so a cut-off run keeps its rows
    print(machine())


def _write(rows: list[dict], failures: list[str], device: str, size: str) -> None:
    by_name = {r["name"]: r for r in rows}
    notes = [f"device {device}, size {size} ({'bf16 autocast' if device == 'cuda' else 'fp32'}), "
             f"batch 1 frame = 4 cameras; random weights (timing only)",
             "params_M: whole planner; head_M: planner without the backbone; FLOPs: results/planner_flops.md",
             "load average (1/5/15 min) at the end: %.1f / %.1f / %.1f on %d cores (CPU numbers on a shared "
             "machine scale with it)" % (*os.getloadavg(), os.cpu_count() or 0)]
    if "eupe-b" in by_name and "dinov3-h" in by_name:
        ratio = by_name["eupe-b"]["fps"] / by_name["dinov3-h"]["fps"]
        notes.append(f"RAP+eupe-b / RAP+dinov3-h frames/s = {ratio:.2f} (target >= 5)")
    notes += [f"failed: {f}" for f in failures]
    columns = ["name", "params_M", "head_M", "image", "d_model", "ms", "fps", "mem_GiB", "repeats"]
    suffix = "" if (device, size) == ("cpu", "reduced") else f"_{device}_{size}"
    write_table(f"planner{suffix}", columns, [[r[c] for c in columns] for r in rows],
                title=f"RAP planner end-to-end latency per frame ({device}, {size})", notes=notes)


if __name__ == "__main__":
    main()
