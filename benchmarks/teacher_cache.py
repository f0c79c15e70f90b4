"""Teacher-feature cache storage: bytes per million images and the error of stored features vs the online teacher.

    python benchmarks/teacher_cache.py                                  # stage4_edge's teacher and resolution
    python benchmarks/teacher_cache.py --images 4 --pca 8 --teacher eupe-t   # seconds

The teacher and resolution come from ``configs/distill/stage4_edge.yaml`` (EUPE ViT-B at 256 px: 16x16 patch
tokens of 768 channels), the augmentation too (crop, flip, DINOv3 colour draws); the images are camera images of
the embedded world (navmini train logs). For each storage mode (``cache_storage`` x ``cache_pca``) a cache is
written, every row is replayed (the image rebuilt from its stored augmentation must equal the one the teacher saw,
pixel for pixel) and its stored features are compared with the teacher run again on the replayed crops:
cosine (mean over summaries / patch tokens) and relative L2. Storage per million images (one augmented view
each) is ``compress.row_bytes`` at the recipe's shard size (``cache_shard_rows``); the measured bytes per row of
the small benchmark shards (safetensors header included, per-shard tensors shared by few rows) are shown too.
Writes ``results/teacher_cache.md`` / ``.csv``. Random teacher weights unless ``--weights``: PCA errors depend
on the features' spectrum, so the PCA rows say little about a trained EUPE teacher.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["storage", "pca k", "GB per 1M images", "bytes/row (measured)", "summary 1-cosine", "summary rel L2",
           "patch 1-cosine", "patch rel L2"]
CAMERAS = ("cam_f0", "cam_l0", "cam_r0", "cam_b0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--pca", type=int, nargs="*", default=[32, 128], help="PCA components to try (0 = none)")
    parser.add_argument("--teacher", default=None, help="default: stage4_edge's first teacher")
    parser.add_argument("--weights", default=None, help="teacher weights (default: random)")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from eupe.distill.cache import CachedDistillDataset, CacheWriter, TeacherCache
    from eupe.distill.compress import FeatureStorage, row_bytes, stored_error
    from eupe.distill.data import AUG_DIM, AugmentConfig, DistillImageDataset, collate_samples
    from eupe.teachers import build_teacher
    from navsim_agents.data.camera_source import synthetic_source

    recipe = OmegaConf.load(ROOT / "configs" / "distill" / "stage4_edge.yaml")
    shard_rows = int(OmegaConf.load(ROOT / "configs" / "run_distill.yaml").cache_shard_rows)
    spec = recipe.teachers[0]
    name = args.teacher or spec.name
    size = int(recipe.data.image_size)
    augment = AugmentConfig.from_dict(OmegaConf.to_container(recipe.data.augment))
    dataset = DistillImageDataset(synthetic_source(cameras=CAMERAS, train_logs=True), size=size, aug=augment, seed=0)
    step = max(1, len(dataset) // args.images)
    items = [((i * step) % len(dataset), 0) for i in range(args.images)]
    torch.manual_seed(0)
    teacher = build_teacher(name, weights=args.weights, img_size=int(spec.img_size))
    batches = [collate_samples([dataset[it] for it in items[i:i + args.batch]])
               for i in range(0, len(items), args.batch)]
    with torch.no_grad():
        feats = [teacher(b["image"]) for b in batches]
    dims = {"summary_dim": teacher.summary_dim, "patch_dim": teacher.patch_dim}
    tokens = feats[0].patch.shape[1]
    modes = [FeatureStorage(dtype=d, pca=k) for k in [0, *[k for k in args.pca if k]] for d in ("fp16", "int8")]
    rows, online = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for storage in modes:
            root = Path(tmp) / f"{storage.dtype}-{storage.pca}"
            writer = CacheWriter(root, teachers={"t": {"name": name, "weights_source": teacher.weights_source, **dims}},
                                 image_size=size, seed=0, augment=augment, num_samples=len(dataset),
                                 batch_size=args.batch, shard_rows=len(items), storage=storage)
            for pos, (b, f) in enumerate(zip(batches, feats, strict=True)):
                writer.add(index=b["index"], epoch=torch.zeros_like(b["index"]), aug=b["aug"], features={"t": f},
                           sizes={"t": int(spec.img_size)}, position=pos)
            writer.close()
            cache = TeacherCache(root)
            replay = collate_samples([CachedDistillDataset(cache, dataset)[(0, r)] for r in range(len(items))])
            seen = torch.cat([b["image"] for b in batches])
            if not torch.equal(replay["image"], seen):
                raise AssertionError(f"{storage}: replayed augmentation differs from the teacher's images")
            if online is None:  # the teacher again, on the replayed crops (the same for every mode)
                with torch.no_grad():
                    online = teacher(replay["image"])
            stored = replay["teacher"]["t"]
            s_err = stored_error(stored["summary"], online.summary)
            p_err = stored_error(stored["patch"], online.patch)
            measured = sum((root / s["file"]).stat().st_size for s in cache.shards) / len(items)
            per_row = row_bytes(storage, tokens=tokens, shard_rows=shard_rows, aug_dim=AUG_DIM, **dims)
            rows.append([storage.dtype, storage.pca or "-", f"{per_row * 1e6 / 1e9:.1f}", f"{measured:.0f}",
                         f"{1 - s_err['cosine']:.2e}", f"{s_err['rel_l2']:.2e}", f"{1 - p_err['cosine']:.2e}",
                         f"{p_err['rel_l2']:.2e}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    notes = [
        f"Teacher {name} ({teacher.weights_source} weights) at {spec.img_size} px: summary {dims['summary_dim']}, "
        f"patch {tokens} tokens x {dims['patch_dim']} (configs/distill/stage4_edge.yaml); images {size} px with "
        f"the recipe's crop / flip / colour draws, {len(items)} embedded-world camera images.",
        f"GB per 1M images: compress.row_bytes x 1e6 at the recipe's cache_shard_rows={shard_rows} (index, epoch, "
        f"{AUG_DIM} augmentation values, features and per-shard scales / PCA basis shared over the shard).",
        "bytes/row (measured): the benchmark's shard files / rows; its shards hold only "
        f"{len(items)} rows, so per-shard tensors (PCA basis) weigh more than at the recipe's shard size.",
        "Errors: stored (decoded) features against the teacher run again on the replayed crops, in float64; every "
        "replayed image was checked equal to the teacher's, pixel for pixel. int8: |error| <= scale / 2 per "
        "channel; PCA: mean squared error per token = the discarded variance of the shard's tokens (tests/"
        "test_teacher_cache_storage.py). The PCA basis is fitted per shard on that shard's tokens.",
        "Random teacher weights say little about a trained EUPE teacher: its LayerScale starts at 1e-5, so a random "
        "EUPE ViT's blocks barely act, its summary is nearly the same for every image (int8 summary scales then "
        "fit each value almost exactly) and its patch tokens are little more than the patch embedding. Rerun "
        "with --weights hub (or a file) where the weights exist.",
        f"Run on {machine()} ({time.strftime('%Y-%m-%d %H:%M')}); not a timing table.",
    ]
    write_table("teacher_cache", COLUMNS, rows, title="Teacher-feature cache: storage per million images and error "
                "of the stored features", notes=notes, key_columns=2)


if __name__ == "__main__":
    main()
