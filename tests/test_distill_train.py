"""Distillation end to end on tiny random-init models (CPU, seeded): learning, resume, cache, export."""

import logging

import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_close_to_scale

from eupe.distill.cache import CachedDistillDataset, CachePlan, CacheWriter, TeacherCache
from eupe.distill.data import (
    AugmentConfig,
    DistillDataModule,
    DistillImageDataset,
    ProceduralSource,
    ShuffledPlan,
    collate_samples,
)
from eupe.distill.module import DistillModule
from eupe.models import load_student
from eupe.student_checkpoint import read_student_meta
from eupe.teachers import encode_timm

# Two teachers of different widths (48 / 64) and patch grids (4x4 at 32 px / 3x3 at 48 px); the student
# (width 32) has a 4x4 grid, so teacher B's grid is resized bicubically to the student's.
TEACHERS = [
    dict(name="timm:vit_small_patch16_dinov3", key="ta", img_size=32,
         kwargs=dict(embed_dim=48, depth=2, num_heads=2, patch_size=8, num_reg_tokens=0)),
    dict(name="timm:vit_small_patch16_dinov3", key="tb", img_size=48,
         kwargs=dict(embed_dim=64, depth=2, num_heads=2, patch_size=16, num_reg_tokens=0)),
]
STUDENT = "vit_small_patch16_dinov3"
STUDENT_KW = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, num_reg_tokens=0,
                  num_classes=0, global_pool="token")


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    # one thread: the test machine is shared; results are also bitwise reproducible that way
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)
    torch.set_num_threads(threads)


def make_module(**kw):
    torch.manual_seed(0)
    args = dict(student_name=STUDENT, student_kwargs=STUDENT_KW, teachers=TEACHERS, head_hidden=64,
                normalizer_warmup=10, student_size=32, lr=3e-3, weight_decay=1e-4, warmup_steps=10, max_steps=200,
                seed=0)
    args.update(kw)
    return DistillModule(**args)


def make_dataset(n=4096, seed=1, aug=True):
    return DistillImageDataset(ProceduralSource(n, size=48, seed=seed), size=48,
                               aug=AugmentConfig(enabled=aug), seed=0)


def trainer(max_steps, callbacks=(), **kw):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks), use_distributed_sampler=False,
                      deterministic=True, **kw)


class RecordTerms(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def held_out_images(n=64):
    ds = make_dataset(n, seed=99, aug=False)
    return torch.stack([ds[i]["image"] for i in range(n)])


@pytest.mark.slow
def test_student_learns_both_teachers():
    module = make_module()
    held = held_out_images()
    before = module.feature_similarity(held)
    # untrained heads give near-orthogonal predictions
    assert all(abs(v) < 0.3 for v in before.values()), before
    rec = RecordTerms()
    steps = 200
    trainer(steps, [rec], enable_checkpointing=False).fit(
        module, datamodule=DistillDataModule(make_dataset(), ShuffledPlan(4096, batch_size=16, seed=0),
                                             total_batches=steps))
    after = module.feature_similarity(held)
    # Threshold 0.6: 2x the largest |cos| an untrained student shows (< 0.3) and what a linear-in-features fit
    # cannot reach by chance on 64 unseen images; this seed reaches 0.69-0.95 (summary and patch, both teachers).
    assert all(v > 0.6 for v in after.values()), after
    first, last = rec.rows[10:30], rec.rows[-20:]  # skip the normaliser warm-up (first 10 steps)
    for term in [k for k in rec.rows[-1] if k.split("/")[-1] in ("summary_cos", "patch_cos", "patch_smooth_l1")]:
        early = sum(r[term] for r in first) / len(first)
        late = sum(r[term] for r in last) / len(last)
        assert late < 0.8 * early, (term, early, late)


def _fit_losses(module, dm, max_steps, tmp_path=None, ckpt_path=None, every=None):
    rec = RecordTerms()
    callbacks = [rec]
    if every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_last=True,
                                                      save_top_k=-1))
    trainer(max_steps, callbacks, enable_checkpointing=bool(every)).fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return [r["train/loss"] for r in rec.rows]


def test_resume_equals_uninterrupted_run(tmp_path):
    def dm(total):
        return DistillDataModule(make_dataset(256), ShuffledPlan(256, batch_size=8, seed=0), total_batches=total)

    kw = dict(normalizer_warmup=3, ema_decay=0.9, max_steps=8)
    full = _fit_losses(make_module(**kw), dm(8), 8)
    first = _fit_losses(make_module(**kw), dm(8), 4, tmp_path=tmp_path, every=1)
    resumed = _fit_losses(make_module(**kw), dm(8), 8, ckpt_path=str(tmp_path / "last.ckpt"))
    assert len(full) == 8 and len(first) == 4 and len(resumed) == 4
    assert first == pytest.approx(full[:4], rel=1e-6)
    assert resumed == pytest.approx(full[4:], rel=1e-6)


def _online_batch(ds, plan, position):
    return collate_samples([ds[item] for item in plan.batch(position)])


def test_cache_round_trip_gives_online_loss(tmp_path):
    module = make_module(normalizer_warmup=2)
    ds = make_dataset(64)
    plan = ShuffledPlan(64, batch_size=8, seed=0)
    writer = CacheWriter(tmp_path, teachers={k: {"name": k, "summary_dim": t.summary_dim, "patch_dim": t.patch_dim,
                                                 "weights_source": t.weights_source}
                                             for k, t in module.teachers.items()},
                         image_size=48, seed=0, augment=ds.aug, num_samples=64, batch_size=8, shard_rows=16)
    for position in range(plan.per_epoch):
        batch = _online_batch(ds, plan, position)
        _, sizes = module.draw_sizes(position)
        writer.add(index=batch["index"], epoch=torch.zeros_like(batch["index"]), aug=batch["aug"],
                   features=module.run_teachers(batch["image"], sizes), sizes={"ta": 32, "tb": 48}, position=position)
    writer.close()
    cache = TeacherCache(tmp_path)
    assert len(cache.shards) == 4 and cache.teacher_dims() == {"ta": (48, 48), "tb": (64, 64)}
    cached_ds = CachedDistillDataset(cache, ds)
    # shard 1, rows in stored order == build position 2 (16 rows per shard, 8 per batch)
    cached = collate_samples([cached_ds[(1, r)] for r in range(8)])
    online = _online_batch(ds, plan, 2)
    assert torch.equal(cached["index"], online["index"])
    assert torch.equal(cached["image"], online["image"])  # same image rebuilt from (index, aug)
    for _ in range(2):  # freeze the normaliser first, so both losses use the same statistics
        module.compute_loss(online, 0, observe=True)
    with torch.no_grad():
        loss_online, _ = module.compute_loss(online, 5, observe=False)
        loss_cached, _ = module.compute_loss(cached, 5, observe=False)
    # only difference: fp16 storage of teacher features (relative rounding 2^-11)
    assert loss_cached.item() == pytest.approx(loss_online.item(), rel=2e-3)
    # training from the cache never builds teachers: dims come from the manifest
    from_cache = make_module(teacher_dims=cache.teacher_dims())
    assert from_cache._teachers == {}
    plan_c = CachePlan([s["rows"] for s in cache.shards], batch_size=8, seed=0)
    batch = collate_samples([cached_ds[i] for i in plan_c.batch(0)])
    loss, terms = from_cache.compute_loss(batch, 0, observe=True)
    assert torch.isfinite(loss) and from_cache._teachers == {}


@pytest.mark.numerics
def test_export_loads_with_same_features(tmp_path):
    module = make_module(ema_decay=0.0)
    with torch.no_grad():  # move weights away from init so a wrong load would show
        for p in module.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = module.export(tmp_path / "student.safetensors")
    meta = read_student_meta(path)
    assert meta["model_name"] == STUDENT and meta["timm_kwargs"] == STUDENT_KW and not meta["has_heads"]
    model, meta = load_student(path)
    assert set(meta["normalizer"]) >= {"ta.summary.mean", "tb.patch.std"}
    x = torch.rand(2, 3, 32, 32)
    xn = (x - module.student_mean) / module.student_std
    module.student.eval()
    with torch.no_grad():
        ref = encode_timm(module.student, xn)
        got = encode_timm(model, xn)
    assert torch.equal(ref.summary, got.summary) and torch.equal(ref.patch, got.patch)
    from rap_backbone.backbones import build_backbone

    bb = build_backbone("student", weights=str(path))
    assert bb.weights_source == str(path) and bb.stride == 8 and bb.embed_dim == 32
    with torch.no_grad():
        summary, patch = bb(x)
    assert_close_to_scale(summary, ref.summary, 1e-5, what="summary")
    assert_close_to_scale(patch, ref.patch.transpose(1, 2).reshape(2, 32, 4, 4), 1e-5, what="patch")


def test_multires_draws_scales_independently():
    module = make_module(student_pyramid=[32, 48, 64], teacher_pyramid=[32, 48, 64], normalizer_warmup=1)
    draws = [module.draw_sizes(step) for step in range(30)]
    students = {s for s, _ in draws}
    teachers = {t["ta"] for _, t in draws}
    assert students == teachers == {32, 48, 64}
    assert any(s != t["ta"] for s, t in draws)  # independent draws
    assert all(t["ta"] == t["tb"] for _, t in draws)  # one teacher scale per iteration
    assert draws == [module.draw_sizes(step) for step in range(30)]  # reproducible from (seed, step)
    batch = collate_samples([make_dataset(8)[(i, 0)] for i in range(4)])
    step = next(i for i, (s, t) in enumerate(draws) if s == 48 and t["ta"] == 64)
    loss, terms = module.compute_loss(batch, step, observe=True)
    assert torch.isfinite(loss) and terms["student_size"].item() == 48


def test_corrupt_cache_shard_is_named(tmp_path):
    module = make_module()
    ds = make_dataset(16)
    writer = CacheWriter(tmp_path, teachers={k: {"name": k, "summary_dim": t.summary_dim, "patch_dim": t.patch_dim,
                                                 "weights_source": "random"} for k, t in module.teachers.items()},
                         image_size=48, seed=0, augment=ds.aug, num_samples=16, batch_size=8, shard_rows=8)
    batch = collate_samples([ds[(i, 0)] for i in range(8)])
    writer.add(index=batch["index"], epoch=torch.zeros(8, dtype=torch.long), aug=batch["aug"],
               features=module.run_teachers(batch["image"], {"ta": None, "tb": None}), sizes={"ta": 32, "tb": 48},
               position=0)
    with pytest.raises(Exception, match="incomplete"):
        TeacherCache(tmp_path)  # not closed yet
    writer.close()
    (tmp_path / "shard-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception, match="shard-00000.safetensors"):
        CachedDistillDataset(TeacherCache(tmp_path), ds)[(0, 0)]


def test_normalizer_warmup_counts_optimizer_steps_under_accumulation():
    # warm-up of 3 iterations with 2 micro-batches of 8 per optimizer step: after 2 steps the statistics
    # have seen 4 micro-batches (32 images) and are still open; after 3 steps (48 images) they freeze
    def fit(max_steps):
        module = make_module(normalizer_warmup=3, max_steps=max_steps)
        dm = DistillDataModule(make_dataset(64), ShuffledPlan(64, batch_size=8, seed=0), total_batches=2 * max_steps)
        trainer(max_steps, enable_checkpointing=False, accumulate_grad_batches=2).fit(module, datamodule=dm)
        return module.normalizers["ta__summary"]

    two, three = fit(2), fit(3)
    assert (int(two.iters), bool(two.frozen), float(two.count)) == (2, False, 32.0)
    assert (int(three.iters), bool(three.frozen), float(three.count)) == (3, True, 48.0)
