"""Backbone cost: params, GFLOPs, peak memory and latency at 256x256 and at RAP's input (4 x 768x448).

    python benchmarks/backbones.py                    # every backbone but dinov3-7b (does not fit 24 GiB)
    python benchmarks/backbones.py --names eupe-t eupe-b dinov3-h --repeats 2
    python benchmarks/backbones.py --names edge-vit-96 edge-vit-128 edge-tinyvit-5m   # merged into the saved table

Each backbone is measured in its own process so that peak memory (max RSS on CPU, the allocator's peak on
GPU) is its own. On a GPU the forward runs in bf16 with SDPA attention, optionally torch.compile'd, and the
fraction of the card's bf16 peak is reported. Writes results/backbones.md and .csv.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, time_call, write_table  # noqa: E402

from rap_backbone.backbones import build_backbone  # noqa: E402

NAMES = ["eupe-t", "eupe-s", "eupe-b", "eupe-convnext-t", "eupe-convnext-s", "eupe-convnext-b",
         "dinov3-s", "dinov3-b", "dinov3-l", "dinov3-h", "edge-vit-96", "edge-vit-128", "edge-tinyvit-5m"]
SMALL = (1, 3, 256, 256)
RAP_INPUT = (4, 3, 448, 768)  # 4 cameras, 1920x1080 x0.4 padded to /32 (spec rap.md)
# Dense bf16 tensor-core peak (TFLOP/s) of cards we may run on, from NVIDIA's data sheets.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def gflops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    with torch.device("meta"):
        x = torch.empty(shape)
    meta_model = model.to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta_model(x)
    return counter.get_total_flops() / 1e9


def _peak_rss_mib() -> float:
    # VmHWM is per address space, so unlike ru_maxrss it does not carry the parent's peak over exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(name: str, repeats: int, device: str, compile_: bool, queue) -> None:
    torch.manual_seed(0)
    base_rss = _peak_rss_mib()
    backbone = build_backbone(name)
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    row = {"name": name, "params_M": params}
    cuda = device == "cuda"
    if cuda:
        backbone = backbone.to(device=device, dtype=torch.bfloat16)
    runner = torch.compile(backbone) if compile_ else backbone
    for label, shape in (("256", SMALL), ("rap", RAP_INPUT)):
        x = torch.rand(shape, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            ms = time_call(lambda x=x: runner(x), repeats=repeats, warmup=1, cuda=cuda)
        row[f"ms_{label}"] = ms
        row[f"img_s_{label}"] = shape[0] / ms * 1e3
        if cuda:
            row[f"peak_MiB_{label}"] = torch.cuda.max_memory_allocated() / 2**20
    if not cuda:
        row["peak_MiB_rap"] = _peak_rss_mib() - base_rss
    queue.put(row)


def measure(name: str, repeats: int, device: str, compile_: bool) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(name, repeats, device, compile_, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="+", default=NAMES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (GPU)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items()
                 if device == "cuda" and k in torch.cuda.get_device_name(0)), None)

    rows = []
    for name in args.names:
        flops_small = gflops(build_backbone(name), SMALL)
        flops_rap = gflops(build_backbone(name), RAP_INPUT)
        r = measure(name, args.repeats, device, args.compile)
        row = [name, r["params_M"], flops_small, flops_rap, r["ms_256"], r["ms_rap"], r["img_s_rap"],
               r.get("peak_MiB_rap", float("nan"))]
        if peak:
            row.append(100 * flops_rap / (r["ms_rap"] / 1e3) / (peak * 1e3))
        rows.append(row)
        print(f"{name}: {r}", flush=True)

    columns = ["backbone", "params (M)", "GFLOPs 256x256", "GFLOPs RAP 4x768x448", "ms 256 b1",
               "ms RAP 4 cams", "images/s RAP", "peak MiB"]
    if peak:
        columns.append("% bf16 peak")
    notes = [f"device: {device}" + (" (bf16, SDPA)" if device == "cuda" else " (fp32)"),
             "GFLOPs counted by torch.utils.flop_counter (matmul/conv; 1 multiply-add = 2 FLOPs).",
             "peak MiB: CUDA allocator peak on GPU, growth of the process max RSS on CPU (weights included)."]
    by_name = {r[0]: r for r in rows}
    if "eupe-b" in by_name and "dinov3-h" in by_name:
        ratio = by_name["dinov3-h"][5] / by_name["eupe-b"][5]
        notes.append(f"eupe-b is {ratio:.1f}x faster than dinov3-h at RAP's input (target >= 8x) on {machine()}.")
    write_table("backbones", columns, rows, title="Backbone cost", notes=notes)


if __name__ == "__main__":
    main()
