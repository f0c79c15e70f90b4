"""Edge deployment table: encoder x runtime x threads at RAP's reduced and full inputs, plus planner Hz.

    python benchmarks/edge.py --preset final                    # the published table (about 8 min, idle 2 cores)
    python benchmarks/edge.py --preset smoke                    # minutes: the machinery, writes nothing
    python benchmarks/edge.py --preset goal                     # the 10 Hz / 2 Hz goal rows (merged into the table)
    python benchmarks/edge.py --encoders edge-vit-96 eupe-t --runtimes eager onnx-int8 --inputs reduced
    python benchmarks/edge.py --encoders dinov3-h --inputs full --threads 2 --max-seconds-per-row 900

``--preset final`` measures a chosen matrix (``FINAL``) and replaces the saved table: every runtime for the smallest student and EUPE ViT-T,
eager and int8 for the other students, eager for the larger encoders with fewer repeats, DINOv3-H+ as one call.
``--max-seconds-per-row``: when the warm-up call shows that the repeats would overrun it, the row keeps that
single (cold) call as its encoder time and says so; the planner is then timed once, or not at all when even that
would overrun.

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
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import _peak_rss_mib, gflops  # noqa: E402
from common import RESULTS, in_process, machine, read_section, replace_section, write_table  # noqa: E402
from edge_int8_pdms import SECTION as INT8_PDMS_SECTION  # noqa: E402
from planner import SIZES, planner_config  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eupe.export import DEFAULT_INT8_RECIPE  # noqa: E402

ENCODERS = ["edge-vit-96", "edge-vit-128", "edge-tinyvit-5m", "eupe-t", "eupe-s", "eupe-b", "eupe-convnext-t",
            "dinov3-h"]
# onnx-int8: eupe/export.py's default int8 recipe; onnx-int8-<recipe>: the other recipes (INT8_RECIPES);
# planner-onnx-*: the whole planner (encoder and head) exported to ONNX and run by onnxruntime
RUNTIMES = ["eager", "compile", "onnx-fp32", "onnx-int8", "onnx-int8-static-weights", "onnx-int8-static-all",
            "planner-onnx-fp32", "planner-onnx-int8"]
INPUTS = {"reduced": (224, 384), "full": (448, 768)}  # 4 cameras each; planner.py SIZES (x0.2 / x0.4, padded)
COLUMNS = ["encoder", "runtime", "threads", "input", "params (M)", "GFLOPs", "encoder ms", "encoder Hz",
           "planner Hz", "peak MiB", "load 1m", "note"]
KEY = 4  # the first four columns identify a row
CALIBRATION_IMAGES = 16
SINGLE_CALL = "single cold call (--max-seconds-per-row)"
SPLIT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "split" / "navmini.yaml"


@dataclass(frozen=True)
class Row:
    encoder: str
    runtime: str
    threads: int
    input: str
    repeats: int = 3


def _rows(encoders, runtimes, threads, inputs, repeats) -> list[Row]:
    return [Row(e, r, t, i, repeats) for e in encoders for i in inputs for r in runtimes for t in threads]


# The published table in about 8 minutes on an idle 2-core CPU (estimated from the smoke preset's CPU time on the
# shared development machine): where the goals are decided (the smallest student, EUPE ViT-T) eager and int8 at
# 1 and 2 threads, torch.compile and onnxruntime fp32 at 2; int8 and eager for the other students; eager with
# few repeats for the large encoders; DINOv3-H+ as a single call. DINOv3-H+ at the full input takes minutes per
# call on this CPU: --encoders dinov3-h --inputs full --threads 2 --runtimes eager --max-seconds-per-row 900.
FINAL = (_rows(["edge-vit-96", "eupe-t"], ["eager", "onnx-int8"], [1, 2], ["reduced"], 3)
         + _rows(["edge-vit-96", "eupe-t"], ["compile", "onnx-fp32"], [2], ["reduced"], 3)
         + _rows(["edge-vit-128", "edge-tinyvit-5m"], ["eager", "onnx-int8"], [2], ["reduced"], 3)
         + _rows(["eupe-s", "eupe-convnext-t"], ["eager"], [2], ["reduced"], 2)
         + _rows(["eupe-b"], ["eager"], [2], ["reduced"], 1)
         + _rows(["dinov3-h"], ["eager"], [2], ["reduced"], 0)
         + _rows(["edge-vit-96", "eupe-t"], ["eager", "onnx-int8"], [2], ["full"], 2)
         + _rows(["eupe-s"], ["eager"], [2], ["full"], 1)
         + _rows(["eupe-b"], ["eager"], [2], ["full"], 0))
# One row per runtime with 1-block edge-vit-96, and one single-call row at the full input: the machinery end to
# end in a few minutes; writes nothing.
SMOKE = _rows(["edge-vit-96"], RUNTIMES, [1], ["reduced"], 1) + _rows(["edge-vit-96"], ["eager"], [1], ["full"], 0)
# The 10 Hz goal (RAP + the smallest student at the reduced input, int8 onnxruntime, 2 threads) and the 2 Hz one
# (eupe-t) decided from one table: eager, encoder-only onnxruntime fp32 and each int8 recipe, and the whole
# planner in onnxruntime fp32 / int8. Merges its rows into the saved table. About 7 minutes on an idle 2-core CPU,
# most of it the one-off exports (encoder files, 3 int8 recipes, the whole planner twice per encoder).
GOAL = _rows(["edge-vit-96", "eupe-t"], ["eager", "onnx-fp32", "onnx-int8", "onnx-int8-static-weights",
                                         "onnx-int8-static-all", "planner-onnx-fp32", "planner-onnx-int8"],
             [2], ["reduced"], 3)
PRESETS = {"final": FINAL, "smoke": SMOKE, "goal": GOAL}
MERGING_PRESETS = ("goal",)  # presets that add their rows to the saved table instead of replacing it


def navmini_frame(scale: float) -> dict[str, torch.Tensor]:
    """RAP's feature dict (batch of 1) of the first navmini token, built by the agent's own feature builder at
    ``scale`` of the nuPlan image size: the embedded world's camera images and the nuPlan rig's calibration
    (intrinsics scaled, lidar2img per camera), so each query projects into the cameras that really see it."""
    from omegaconf import OmegaConf

    from navsim_agents.agents.rap_agent import rap_sensor_config
    from navsim_agents.agents.rap_features import RAPFeatureBuilder
    from navsim_agents.data.splits import build_scene_loader

    loader = build_scene_loader(OmegaConf.load(SPLIT_CONFIG), rap_sensor_config())
    if not loader.tokens:
        raise RuntimeError(f"navmini ({SPLIT_CONFIG}) has no tokens; delete the embedded world's cache to regenerate it")
    agent_input = loader.get_agent_input_from_token(loader.tokens[0])
    features = RAPFeatureBuilder(image_scale=scale).compute_features(agent_input)
    return {k: v[None] for k, v in features.items()}


def visible_rows(planner, feats: dict) -> tuple[float, list[float]]:
    """Of the eager planner's forward on ``feats``: the fraction of (camera, query) rows cross-attention samples
    (a query counts in a camera where one of its anchors is visible), and the fractions of queries seen by 0, 1,
    2, 3 and 4 cameras; over all refinements."""
    from rap_backbone.planner import project_reference_points

    with torch.no_grad():
        decodes = planner(feats)["proposal_list"]
    hits = torch.stack([project_reference_points(p.flatten(1, 2), feats["lidar2img"], feats["img_shape"],
                                                 planner.config)[1].any(-1) for p in decodes])  # [R, B, N, Q]
    seen_by = hits.sum(2).flatten()
    cameras = hits.shape[2]
    return float(hits.float().mean()), [float((seen_by == k).float().mean()) for k in range(cameras + 1)]


def export_files(name: str, export_dir: Path, kwargs: dict, recipe: str = DEFAULT_INT8_RECIPE) -> tuple[Path, Path]:
    """fp32 and int8 (``recipe``) ONNX files of ``name`` (random weights, ``kwargs`` for the smoke preset's 1-block
    models) traced at the reduced input, written once and reused by later rows (TinyViT's files take that size
    only)."""
    from eupe.export import export_onnx, quantize_int8, trace
    from navsim_agents.run_export import world_images
    from rap_backbone.backbones import build_backbone, export_view

    tag = "-depth1" if kwargs else ""
    fp32, int8 = export_dir / f"{name}{tag}.onnx", export_dir / f"{name}{tag}.int8-{recipe}.onnx"
    if not fp32.is_file():
        module, info = export_view(build_backbone(name, **kwargs), INPUTS["reduced"])
        export_onnx(module, info, fp32, program=trace(module, info, sample_hw=INPUTS["reduced"]))
    if not int8.is_file():
        backbone = build_backbone(name, **kwargs)
        images = backbone.normalize(world_images(["cam_f0", "cam_l0", "cam_r0", "cam_b0"], INPUTS["reduced"],
                                                 CALIBRATION_IMAGES, train_logs=True))
        quantize_int8(fp32, int8, list(torch.split(images, 4)), recipe=recipe)
    return fp32, int8


def planner_files(planner, feats: dict, name: str, size: str, export_dir: Path, smoke: bool) -> tuple[Path, Path]:
    """fp32 and int8 ONNX files of the whole ``planner`` (its random weights) at the shapes of ``feats``; written
    once per (encoder, input) and reused: timing does not depend on the weights' values."""
    from rap_backbone.planner_export import export_planner_onnx, quantize_planner_int8, trace_planner

    stem = f"{name}{'-depth1' if smoke else ''}.planner-{size}"
    fp32, int8 = export_dir / f"{stem}.onnx", export_dir / f"{stem}.int8.onnx"
    if not fp32.is_file():
        program, info = trace_planner(planner, {k: feats[k] for k in feats if k != "backbone_patch"})
        export_planner_onnx(program, info, fp32)
    if not int8.is_file():
        quantize_planner_int8(fp32, int8)
    return fp32, int8


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _median_ms(fn, repeats: int) -> float:
    times = sorted(_timed(fn) for _ in range(repeats))
    return times[len(times) // 2]


def _measure(name: str, runtime: str, threads: int, size: str, feats: dict, export_dir: str, repeats: int,
             max_seconds: float, smoke: bool, queue) -> None:
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        from rap_backbone.backbones import build_backbone
        from rap_backbone.planner import RAPPlanner

        kwargs = {"depth": 1} if smoke else {}
        base_rss = _peak_rss_mib()
        eager = build_backbone(name, **kwargs)
        params = sum(p.numel() for p in eager.parameters()) / 1e6
        if runtime.startswith("onnx"):
            recipe = runtime.removeprefix("onnx-int8-") if runtime.startswith("onnx-int8-") else DEFAULT_INT8_RECIPE
            fp32, int8 = export_files(name, Path(export_dir), kwargs, recipe)
            backbone = build_backbone(name, weights=fp32 if runtime == "onnx-fp32" else int8, runtime="onnxruntime")
        else:
            backbone = eager
        planner_name = SIZES[size][1]
        images = feats["camera_feature"][0]  # [4, 3, H, W]
        encoder = torch.compile(backbone) if runtime == "compile" else backbone
        planner = RAPPlanner(backbone, planner_config(planner_name)).eval()
        visible, seen_by = visible_rows(planner, feats)
        if runtime == "compile":
            planner.backbone = encoder
        if runtime.startswith("planner-onnx"):  # the encoder column: the eager encoder; Hz: the whole file
            from rap_backbone.planner_export import OnnxPlanner

            files = planner_files(planner, feats, name, size, Path(export_dir), smoke)
            planner = OnnxPlanner(files[runtime.endswith("int8")], expect=planner, threads=threads)
        note = ""
        with torch.no_grad():
            if runtime == "compile":  # the first call compiles: never a measurement
                encoder(images, normalized=True)
            first = _timed(lambda: encoder(images, normalized=True))
            budget = max_seconds * 1e3
            if repeats and first * (2 * repeats + 1) <= budget:
                enc_ms = _median_ms(lambda: encoder(images, normalized=True), repeats)
                planner(feats)  # warm-up
                plan_ms = _median_ms(lambda: planner(feats), repeats)
            else:
                enc_ms, note = first, SINGLE_CALL
                plan_ms = _timed(lambda: planner(feats)) if 2 * first <= budget else float("nan")
        seen = "/".join(f"{100 * f:.0f}" for f in seen_by)
        note = "; ".join(n for n in (note, f"visible rows {100 * visible:.0f}% (queries in 0/1/2/3/4 cameras: "
                                           f"{seen} %)") if n)
        queue.put(dict(params=params, enc_ms=enc_ms, plan_hz=1e3 / plan_ms, peak=_peak_rss_mib() - base_rss,
                       note=note))
    except Exception as exc:  # record the failure and go on with the next row
        queue.put(dict(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"))


def read_rows() -> list[list[str]]:
    path = RESULTS / "edge.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return [r for r in rows[1:] if len(r) == len(COLUMNS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a fixed row list (ignores the "
                        "selection options below)")
    parser.add_argument("--encoders", nargs="+", default=ENCODERS)
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-seconds-per-row", type=float, default=60.0)
    parser.add_argument("--export-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "eupe-edge-exports")
    args = parser.parse_args()
    args.export_dir.mkdir(parents=True, exist_ok=True)
    smoke = args.preset == "smoke"
    plan = PRESETS[args.preset] if args.preset else _rows(args.encoders, args.runtimes, args.threads, args.inputs,
                                                          args.repeats)
    # a preset is the whole table from one run; a selection merges into the saved rows
    rows = {} if args.preset and args.preset not in MERGING_PRESETS else {tuple(r[:KEY]): r for r in read_rows()}
    from rap_backbone.backbones import build_backbone

    flops: dict[tuple[str, str], float] = {}
    frames = {size: navmini_frame(SIZES[size][0]) for size in {spec.input for spec in plan}}  # loaded once
    start = time.perf_counter()
    for spec in tqdm(plan, desc="edge rows", unit="row"):
        if (spec.encoder, spec.input) not in flops:
            meta = build_backbone(spec.encoder, device="meta", **({"depth": 1} if smoke else {}))
            flops[(spec.encoder, spec.input)] = gflops(meta, (4, 3, *INPUTS[spec.input]))
        r = in_process(_measure, spec.encoder, spec.runtime, spec.threads, spec.input, frames[spec.input],
                       str(args.export_dir), spec.repeats, args.max_seconds_per_row, smoke)
        load = os.getloadavg()[0]
        key = [spec.encoder, spec.runtime, str(spec.threads), f"4x{INPUTS[spec.input][1]}x{INPUTS[spec.input][0]}"]
        if "error" in r:
            row = key + [""] * 6 + [f"{load:.1f}", r["error"]]
        else:
            note = "; ".join(n for n in ("random weights", r["note"]) if n)
            row = key + [f"{r['params']:.3g}", f"{flops[(spec.encoder, spec.input)]:.3g}", f"{r['enc_ms']:.3g}",
                         f"{1e3 / r['enc_ms']:.3g}", f"{r['plan_hz']:.3g}", f"{r['peak']:.0f}", f"{load:.1f}", note]
        rows[tuple(row[:KEY])] = row
        tqdm.write(" | ".join(row))
        if not smoke:
            write(rows)
    print(f"{len(plan)} rows in {time.perf_counter() - start:.0f} s"
          + (" (smoke: 1-block models, nothing written)" if smoke else ""))
    failed = [r for r in rows.values() if not r[6] and r[1] != "compile"]  # compile may be unsupported here
    if smoke and failed:
        raise SystemExit("smoke rows failed: " + "; ".join(f"{r[1]}: {r[-1]}" for r in failed))


def write(rows: dict) -> None:
    order = {n: i for i, n in enumerate(ENCODERS)}
    ordered = sorted(rows.values(), key=lambda r: (r[3], order.get(r[0], 99), RUNTIMES.index(r[1])
                                                     if r[1] in RUNTIMES else 9, r[2]))
    notes = [
        "encoder ms: 4 camera images in one batch, already normalised; planner Hz: the small RAP planner "
        "(configs/planner/small.yaml) end to end on one frame of 4 cameras, encoder included.",
        "GFLOPs by torch.utils.flop_counter on the torch model (1 multiply-add = 2 FLOPs), 4 images.",
        f"onnx-int8: eupe/export.py's default int8 recipe ({DEFAULT_INT8_RECIPE}: weight MatMuls int8 with per-channel "
        "weights, activations quantised per call, attention products and softmax fp32); onnx-int8-static-weights: "
        "QDQ on the same products; onnx-int8-static-all: QDQ on every MatMul/Gemm/Conv (attention products too, "
        f"QLinearSoftmax); static recipes calibrated on {CALIBRATION_IMAGES} embedded-world camera images; onnx rows "
        "use onnxruntime's CPU provider.",
        "planner-onnx-fp32 / -int8: the whole small planner, encoder included, exported to ONNX (rap_backbone/"
        "planner_export.py) and run by onnxruntime (int8: the default recipe on every weight MatMul); encoder ms "
        "is then the eager encoder's. Its cross-attention samples only the visible (camera, query) rows, as the "
        "eager CPU planner (rap_backbone/planner_export.py sampling=visible; dense: every row, for GPU compilers).",
        "Frame: the first navmini token through the agent's feature builder (RAPFeatureBuilder at image scale 0.2 "
        "or 0.4: the embedded world's images, the nuPlan rig's lidar2img); the note gives the share of (camera, "
        "query) rows the random-weight planner's proposals make visible and how many cameras see each query.",
        "peak MiB: growth of the measuring process's peak RSS (weights, exported session and activations).",
        "load 1m: the machine's 1-minute load average right after the row (2 cores, shared with other jobs: "
        "rows with a load well above 2 are slower than an idle machine gives; rerun them with --encoders ... ).",
        "All encoders have random weights (no checkpoints here): latency is what the table measures.",
        f"'{SINGLE_CALL}': the row's encoder time is one cold call (no warm-up) because the repeats would overrun "
        "the per-row budget; its planner Hz is one call too, or empty when that would overrun as well.",
        "compile: torch.compile (inductor) of the encoder, timed after its compiling first call; a failure on this "
        "CPU is recorded in the row's note.",
        "No GPU was available: no bf16 CUDA rows.",
        f"Last run on {machine()} ({time.strftime('%Y-%m-%d %H:%M')}).",
    ]
    kept = read_section(RESULTS / "edge.md", INT8_PDMS_SECTION)  # written by edge_int8_pdms.py
    write_table("edge", COLUMNS, ordered, title="Edge encoders: runtime x threads x input (CPU)", notes=notes)
    replace_section(RESULTS / "edge.md", INT8_PDMS_SECTION, kept)


if __name__ == "__main__":
    main()
