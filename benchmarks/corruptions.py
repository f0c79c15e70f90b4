"""Corruption cost at 1920x1080 (one nuPlan camera image) next to a backbone forward.

    python benchmarks/corruptions.py                         # all corruptions, severity 3, eupe-t on CPU
    python benchmarks/corruptions.py --repeats 5 --backbone eupe-t --device cuda

Each corruption runs on a uint8 1920x1080 RGB image as the scene loader delivers it (conversion to float and
back included), with its depth map (fog) and three history frames (frame delay). The backbone forward runs on
one camera at RAP's input size (768x448, the image x0.4 padded to /32) and at the full 1920x1080 image padded to
the stride (1920x1088), batch 1, under ``torch.no_grad``. Writes results/corruptions.md and .csv.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_call, write_table  # noqa: E402

from rap_backbone import corruptions as C  # noqa: E402

FULL = (1080, 1920)
RAP_INPUT = (448, 768)  # spec rap.md: 1920x1080 x0.4 padded to a multiple of 32


def backbone_ms(name: str, device: str, repeats: int) -> dict[str, float]:
    """Median forward ms of ``name`` at RAP's input and at 1920x1088 (NaN when it cannot be built)."""
    from rap_backbone.backbones import build_backbone

    backbone = build_backbone(name).to(device).eval()
    out = {}
    for label, (h, w) in (("RAP input 768x448", RAP_INPUT), ("full 1920x1088", (1088, 1920))):
        x = torch.rand(1, 3, h, w, device=device)
        with torch.no_grad():
            out[label] = time_call(lambda x=x: backbone(x), repeats=repeats, warmup=1, cuda=device == "cuda")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbone", default="eupe-t")
    parser.add_argument("--device", default="cpu", help="device of the backbone forward (corruptions: CPU)")
    parser.add_argument("--names", nargs="*", default=None)
    args = parser.parse_args()

    image, depth, k = C.procedural_road_scene(FULL[1], FULL[0])
    history = [C.procedural_road_scene(FULL[1], FULL[0], ego_forward_m=-5.0 * j)[0] for j in (3, 2, 1)]
    backbone = backbone_ms(args.backbone, args.device, max(1, args.repeats // 2))
    reference = backbone.get("RAP input 768x448", float("nan"))
    full = backbone.get("full 1920x1088", float("nan"))
    rows = []
    for name in args.names or C.corruption_names():
        kw = {"depth": depth} if name == "fog" else {}
        ms = time_call(lambda name=name, kw=kw: C.corrupt(image, name, args.severity, seed=0, intrinsics=k,
                                                          history=history, **kw), repeats=args.repeats)
        rows.append([name, ms, ms / reference if reference == reference else float("nan"),
                     ms / full if full == full else float("nan")])
    ms_all = np.array([r[1] for r in rows])
    rows.append(["(median over corruptions)", float(np.median(ms_all)), float(np.median(ms_all)) / reference,
                 float(np.median(ms_all)) / full])
    notes = [f"corruptions: numpy/OpenCV on the CPU ({torch.get_num_threads()} torch threads, OpenCV "
             f"{__import__('cv2').getNumThreads()} threads), uint8 1920x1080 in and out, severity {args.severity}, "
             f"median of {args.repeats}",
             f"{args.backbone} forward on {args.device}, batch 1: RAP input 768x448 {reference:.1f} ms, "
             f"1920x1088 {full:.1f} ms (random weights: the cost does not depend on them)",
             "ratio < 1: the corruption costs less than the backbone forward on the same image",
             f"load average during the run (shared machine): {os.getloadavg()[0]:.1f}; absolute ms scale with "
             "it, the ratios much less"]
    write_table("corruptions", ["corruption", "ms 1920x1080",
                                f"x {args.backbone} fwd 768x448", f"x {args.backbone} fwd 1920x1088"], rows,
                title="Corruption cost at 1920x1080 vs a backbone forward", notes=notes)


if __name__ == "__main__":
    main()
