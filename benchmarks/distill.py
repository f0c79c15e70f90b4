"""Distillation throughput: student training images/s with online teachers vs from the teacher-feature cache.

    python benchmarks/distill.py                 # CPU, small random-init models (default)
    python benchmarks/distill.py --preset gpu    # GPU, real sizes: DINOv3-H+ teacher -> EUPE ViT-B student

Each mode runs in its own process (peak memory is per process): ``online`` runs the teachers every step,
``cache`` reads their fp16 features from a cache built beforehand (build time reported separately). A step is
data + forward + backward + AdamW update. Models have random weights: throughput does not depend on them.
Writes ``benchmarks/results/distill.md`` and ``.csv`` (rows of other presets are kept).
Target (issue 7): cache >= 3x online images/s when the teacher costs more than the student.
"""

from __future__ import annotations

import argparse
import csv
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from eupe.atomic_io import atomic_path, atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, in_process  # noqa: E402

TARGET_SPEEDUP = 3.0

PRESETS = {
    # teacher ~ a ViT-S/16-like depth-8 encoder at 96 px (36 tokens x 384), student a 2-layer width-64 ViT
    "cpu": dict(
        device="cpu", batch=16, steps=8, warmup=2, image=96, threads=1,
        student=("vit_small_patch16_dinov3", dict(embed_dim=64, depth=2, num_heads=2, img_size=64,
                                                  num_classes=0, global_pool="token")),
        student_size=64,
        teachers=[dict(name="dinov3-s", key="teacher", img_size=96,
                       kwargs=dict(embed_dim=384, depth=8, num_heads=6))],
        head_hidden=256,
    ),
    # EUPE stage 2 shape: DINOv3-H+ teacher (840M) -> EUPE ViT-B student at 256 px, heads 3072
    "gpu": dict(
        device="cuda", batch=64, steps=20, warmup=3, image=256, threads=8,
        student=("eupe-b", {}), student_size=256,
        teachers=[dict(name="dinov3-h", key="dinov3-h", img_size=256)],
        head_hidden=3072,
    ),
}


def _module(p, teacher_dims=None):
    from eupe.distill.module import DistillModule

    return DistillModule(student_name=p["student"][0], student_kwargs=p["student"][1], teachers=p["teachers"],
                         teacher_dims=teacher_dims, head_hidden=p["head_hidden"], normalizer_warmup=1,
                         student_size=p["student_size"], lr=1e-4, max_steps=1000, seed=0)


def _dataset(p, n):
    from eupe.distill.data import DistillImageDataset, ProceduralSource

    return DistillImageDataset(ProceduralSource(n, size=p["image"], seed=0), size=p["image"], seed=0)


def _build_cache(p, root: Path) -> float:
    """Write a cache of (warmup + steps) batches; returns seconds per image of the teacher pass."""
    from eupe.distill.cache import CacheWriter
    from eupe.distill.data import ShuffledPlan, collate_samples

    module = _module(p).to(p["device"])
    n = p["batch"] * (p["warmup"] + p["steps"])
    ds, plan = _dataset(p, n), ShuffledPlan(n, batch_size=p["batch"], seed=0)
    teachers = module.teachers
    writer = CacheWriter(root, teachers={k: {"name": k, "summary_dim": t.summary_dim, "patch_dim": t.patch_dim,
                                             "weights_source": t.weights_source} for k, t in teachers.items()},
                         image_size=p["image"], seed=0, augment=ds.aug, num_samples=n, batch_size=p["batch"],
                         shard_rows=p["batch"] * 4)
    t0 = time.perf_counter()
    for pos in range(plan.per_epoch):
        b = collate_samples([ds[i] for i in plan.batch(pos)])
        _, sizes = module.draw_sizes(pos)
        writer.add(index=b["index"], epoch=torch.zeros_like(b["index"]), aug=b["aug"],
                   features=module.run_teachers(b["image"].to(p["device"]), sizes),
                   sizes={k: teachers[k].img_size for k in teachers}, position=pos)
    writer.close()
    return (time.perf_counter() - t0) / n


def _run(mode: str, p: dict, cache_dir: str, queue) -> None:
    torch.set_num_threads(p["threads"])
    logging.disable(logging.WARNING)
    from eupe.distill.cache import CachedDistillDataset, CachePlan, TeacherCache
    from eupe.distill.data import ShuffledPlan, collate_samples

    dev = torch.device(p["device"])
    n = p["batch"] * (p["warmup"] + p["steps"])
    ds = _dataset(p, n)
    if mode == "cache":
        cache = TeacherCache(cache_dir)
        module = _module(p, teacher_dims=cache.teacher_dims())  # teachers are never built
        data, plan = CachedDistillDataset(cache, ds), CachePlan([s["rows"] for s in cache.shards],
                                                                batch_size=p["batch"], seed=0)
    else:
        module = _module(p)
        data, plan = ds, ShuffledPlan(n, batch_size=p["batch"], seed=0)
    module = module.to(dev)
    opt = module.configure_optimizers()["optimizer"]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    elapsed = 0.0
    for step in range(p["warmup"] + p["steps"]):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batch = collate_samples([data[i] for i in plan.batch(step)])
        batch["image"] = batch["image"].to(dev, non_blocking=True)
        if "teacher" in batch:
            for f in batch["teacher"].values():
                f["summary"], f["patch"] = f["summary"].to(dev), f["patch"].to(dev)
        with amp:
            loss, _ = module.compute_loss(batch, step, observe=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= p["warmup"]:
            elapsed += time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put({"mode": mode, "images_per_s": p["batch"] * p["steps"] / elapsed, "peak_mem_mib": peak,
               "peak_kind": "GPU allocated" if dev.type == "cuda" else "process RSS"})


def _cache_worker(p, root, q):
    torch.set_num_threads(p["threads"])
    logging.disable(logging.WARNING)
    q.put(_build_cache(p, Path(root)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("preset gpu needs a CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        build_s_per_img = in_process(_cache_worker, p, tmp)
        online = in_process(_run, "online", p, tmp)
        cached = in_process(_run, "cache", p, tmp)
    speedup = cached["images_per_s"] / online["images_per_s"]
    device = torch.cuda.get_device_name(0) if p["device"] == "cuda" else f"CPU ({p['threads']} thread)"
    rows = [{"preset": args.preset, "device": device, "mode": r["mode"], "batch": p["batch"],
             "images_per_s": round(r["images_per_s"], 2), "peak_mem_mib": round(r["peak_mem_mib"], 1),
             "peak_kind": r["peak_kind"], "speedup_vs_online": round(r["images_per_s"] / online["images_per_s"], 2)}
            for r in (online, cached)]
    rows.append({"preset": args.preset, "device": device, "mode": "cache build (teachers once)", "batch": p["batch"],
                 "images_per_s": round(1.0 / build_s_per_img, 2), "peak_mem_mib": "", "peak_kind": "",
                 "speedup_vs_online": ""})
    _write(rows, args.preset)
    print(f"{'mode':<28} {'img/s':>9} {'peak MiB':>10} {'x online':>9}")
    for r in rows:
        print(f"{r['mode']:<28} {r['images_per_s']:>9} {r['peak_mem_mib']!s:>10} {r['speedup_vs_online']!s:>9}")
    print(f"cache speedup {speedup:.2f}x (target >= {TARGET_SPEEDUP}x): {'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'}")


def _write(rows: list[dict], preset: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / "distill.csv"
    keep = []
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            keep = [r for r in csv.DictReader(f) if r["preset"] != preset]
    all_rows = keep + rows
    fields = list(rows[0])
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(all_rows)
    lines = ["# Distillation throughput: online teachers vs teacher-feature cache", "",
             "Student training step = data + forward + backward + AdamW. Random weights (throughput only).",
             f"Target: cache >= {TARGET_SPEEDUP}x online images/s when the teacher costs more than the student.", "",
             "Presets: " + "; ".join(
                 f"`{k}`: teacher {v['teachers'][0]['name']} {v['teachers'][0].get('kwargs', '')} at "
                 f"{v['teachers'][0]['img_size']} px, student {v['student'][0]} {v['student'][1]} at "
                 f"{v['student_size']} px, batch {v['batch']}" for k, v in PRESETS.items()), "",
             "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(r[k]) for k in fields) + " |" for r in all_rows]
    atomic_write_text(RESULTS / "distill.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
