"""Distillation data, teacher registry and bad input: corrupt images / shards, unknown teachers, bad checkpoints."""

import io
import logging
import tarfile

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_close_to_scale
from safetensors.torch import save_file

from eupe.distill.data import (
    AugmentConfig,
    DistillImageDataset,
    ImageFolderSource,
    MixedPlan,
    ProceduralSource,
    ResumableBatchSampler,
    ShuffledPlan,
    TarShardSource,
    apply_aug,
    build_source,
    collate_samples,
    draw_aug_params,
    make_plan,
    sample_rng,
    slot_counts,
    source_shares,
)
from eupe.student_checkpoint import read_student_meta
from eupe.teachers import build_teacher, get_teacher_spec, teacher_names


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _png(color, size=(20, 30)):
    img = np.zeros((*size, 3), np.uint8)
    img[:] = color
    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    assert ok
    return buf.tobytes()


def test_folder_skips_and_counts_corrupt_images(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"not an image")
    (tmp_path / "c.png").write_bytes(_png((0, 0, 255)))
    src = ImageFolderSource(tmp_path)
    assert len(src) == 3
    ds = DistillImageDataset(src, size=16, aug=AugmentConfig(enabled=False))
    batch = collate_samples([ds[(i, 0)] for i in range(3)])
    assert batch["skipped"] == 1 and batch["image"].shape == (2, 3, 16, 16)
    # RGB order kept: first file is red, the other blue
    assert batch["image"][0, 0].mean() == pytest.approx(1.0) and batch["image"][0, 2].mean() == pytest.approx(0.0)
    assert batch["image"][1, 2].mean() == pytest.approx(1.0)
    bad = [i for i in range(3) if src.describe(i).endswith("b.jpg")][0]
    with pytest.raises(ValueError, match="b.jpg"):
        src.load(bad)


def test_tar_shards_read_and_corrupt_shard_skipped(tmp_path):
    good = tmp_path / "shard-000.tar"
    with tarfile.open(good, "w") as tf:
        for i, color in enumerate([(0, 255, 0), (10, 20, 30)]):
            data = _png(color)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        meta = b'{"label": 1}'
        info = tarfile.TarInfo("000000.json")
        info.size = len(meta)
        tf.addfile(info, io.BytesIO(meta))
    (tmp_path / "shard-001.tar").write_bytes(b"\x00garbage" * 10)
    src = TarShardSource(tmp_path)
    assert len(src) == 2 and src.bad_shards == [str(tmp_path / "shard-001.tar")]
    assert src.load(1)[0, 0].tolist() == [10, 20, 30]
    assert "shard-000.tar:000001.png" in src.describe(1)
    with pytest.raises(ValueError, match="no readable images"):
        TarShardSource([tmp_path / "shard-001.tar"])


def test_augmentation_is_parametrised_and_reproducible():
    cfg = AugmentConfig()
    p1 = draw_aug_params(sample_rng(0, 3, 17), cfg, (40, 60))
    p2 = draw_aug_params(sample_rng(0, 3, 17), cfg, (40, 60))
    assert np.array_equal(p1, p2)
    top, left, h, w, _ = p1[:5]
    assert 0 <= top and top + h <= 1 + 1e-6 and 0 <= left and left + w <= 1 + 1e-6
    assert cfg.crop_scale[0] - 0.05 <= h * w <= 1.0
    # a left-half crop with flip of a left-dark / right-bright image gives a bright left column
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 2:4] = 255
    out = apply_aug(img, np.array([0, 0, 1, 0.5, 1.0], np.float32), 4)
    assert out.shape == (3, 4, 4)
    assert out[0, :, 0].mean() > 0.9 and out[0, :, 3].mean() < 0.1


def test_resumable_sampler_positions():
    plan = ShuffledPlan(10, batch_size=3, seed=0)
    full = list(ResumableBatchSampler(plan, total=6))
    assert list(ResumableBatchSampler(plan, total=6, start=4)) == full[4:]
    epoch0 = [i for b in full[:3] for i, _ in b]
    assert len(set(epoch0)) == 9  # a permutation within an epoch
    assert full[3][0][1] == 1 and full[0][0][1] == 0
    ranks = [ShuffledPlan(10, batch_size=2, seed=0, rank=r, world_size=2).batch(0) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])


def test_slot_counts_largest_remainder():
    # 0.9 / 0.1 of 16 slots: exact 14.4 / 1.6 -> floors 14 / 1, the larger remainder (0.6) gets the last slot
    assert slot_counts([0.9, 0.1], 16) == [14, 2]
    assert slot_counts([1, 1, 1], 10) == [4, 3, 3]  # ties go to the first source
    assert slot_counts([3, 0], 5) == [5, 0]
    with pytest.raises(ValueError, match="shares"):
        slot_counts([0, 0], 4)


def test_mixed_plan_fixed_shares_per_batch():
    # sources of 100 and 10 images at 90% / 10%: every global batch of 2 x 8 = 16 holds 14 + 2
    ranks = [MixedPlan([100, 10], [0.9, 0.1], batch_size=8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    small_seen = []
    for position in range(5):
        a, b = ranks[0].batch(position), ranks[1].batch(position)
        assert len(a) == len(b) == 8 and not {i for i, _ in a} & {i for i, _ in b}
        both = a + b
        assert sum(i >= 100 for i, _ in both) == 2 and sum(i < 100 for i, _ in both) == 14
        small_seen += [i for i, e in both if i >= 100 and e == 0]
    # five batches x 2 slots walk once through the 10 small-source images (one epoch of that source) ...
    assert sorted(small_seen) == list(range(100, 110))
    # ... and the sixth batch starts its second epoch, while the large source is still in its first
    sixth = ranks[0].batch(5) + ranks[1].batch(5)
    assert {e for i, e in sixth if i >= 100} == {1} and {e for i, e in sixth if i < 100} == {0}
    assert ranks[0].batch(2) == MixedPlan([100, 10], [0.9, 0.1], batch_size=8, seed=3, rank=0,
                                          world_size=2).batch(2)  # resumable: a function of the position
    assert ranks[0].per_epoch == 110 // 16


def test_source_shares_from_config(tmp_path):
    specs = [{"type": "procedural", "num_images": 30, "share": 0.75}, {"type": "procedural", "num_images": 6,
                                                                        "seed": 2, "share": 0.25}]
    assert source_shares(specs) == [0.75, 0.25]
    ds = DistillImageDataset(build_source(specs), size=16)
    assert len(ds) == 36  # 'share' is not a source argument
    plan = make_plan(ds, source_shares(specs), batch_size=4)
    assert isinstance(plan, MixedPlan) and plan.counts == [3, 1]
    assert isinstance(make_plan(ds, None, batch_size=4), ShuffledPlan)
    with pytest.raises(ValueError, match="every source or on none"):
        source_shares([{"type": "procedural", "num_images": 3, "share": 0.5}, {"type": "procedural", "num_images": 3}])


def test_build_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data source type"):
        build_source([{"type": "s3"}])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_source([{"type": "folder", "root": str(tmp_path / "nowhere")}])
    src = build_source([{"type": "procedural", "num_images": 3, "size": 16}])
    assert len(src) == 3 and src.load(2).shape == (16, 16, 3)
    assert np.array_equal(ProceduralSource(3, size=16).load(1), ProceduralSource(3, size=16).load(1))


def test_synthetic_world_source(tmp_path):
    import navsim_agents.data.camera_source  # noqa: F401  (registers the navsim and synthetic source types)
    from navsim_agents.data import synthetic

    # a tiny world in the navmini layout (the default one takes about a minute to generate)
    root = synthetic.generate_world(tmp_path / "world", num_train_logs=1, num_test_logs=1, frames_per_log=14,
                                    image_size=(96, 54), warmup_s=3)
    src = build_source([{"type": "navsim", "data_path": str(root / "navsim_logs" / "navmini"),
                         "sensor_blobs_path": str(root / "sensor_blobs" / "navmini"), "cameras": ["cam_f0"],
                         "log_names": synthetic.NAVMINI_TRAIN_LOGS[:1]}])
    img = src.load(0)
    # 14 frames hold exactly one 4 + 10 frame NAVSIM window, so one camera image per scene
    assert img.shape == (54, 96, 3) and len(src) == 1


def test_teacher_registry_and_errors(tmp_path):
    import rap_backbone.teacher  # noqa: F401  (a higher layer registers rap-3d)

    names = teacher_names()
    for n in ("pe-core-g", "pe-lang-g", "pe-spatial-l", "dinov3-h", "dinov3-7b", "siglip2-b", "sam-b", "radio-b",
              "eupe-proxy", "rap-3d"):
        assert n in names
    assert get_teacher_spec("pe-core-g").img_size == 448 and get_teacher_spec("dinov3-h").img_size == 256
    with pytest.raises(KeyError, match="known teachers: .*dinov3-b"):
        build_teacher("dinov9-z")
    with pytest.raises(KeyError, match="timm does not know"):
        build_teacher("timm:not_a_model_xyz")
    # a checkpoint of another width does not fit: the error names the teacher and the file
    small = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8, num_reg_tokens=0)
    t = build_teacher("dinov3-s", img_size=32, **small)
    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, str(ckpt))
    ok = build_teacher("dinov3-s", weights=str(ckpt), img_size=32, **small)
    x = torch.rand(2, 3, 40, 40)
    assert torch.equal(ok(x).summary, t(x).summary)  # same file -> same features
    with pytest.raises(ValueError, match=r"dinov3-s: checkpoint .*other.safetensors does not fit"):
        build_teacher("dinov3-s", weights=str(ckpt), img_size=32, **dict(small, embed_dim=48))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_teacher("dinov3-s", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="student checkpoint"):
        build_teacher("eupe-proxy")


def test_teacher_output_grids_and_frozen():
    t = build_teacher("timm:vit_small_patch16_dinov3", img_size=32, embed_dim=48, depth=1, num_heads=2,
                      patch_size=8, num_reg_tokens=4)
    out = t(torch.rand(3, 3, 50, 70))  # resized to the native 32 px
    assert out.grid == (4, 4) and out.patch.shape == (3, 16, 48) and out.summary.shape == (3, 48)
    assert t(torch.rand(1, 3, 32, 32), size=48).grid == (6, 6)
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training


@pytest.mark.numerics
def test_rap_3d_teacher_from_our_planner_checkpoint(tmp_path):
    import rap_backbone.teacher  # noqa: F401  (registers rap-3d)
    from rap_backbone.backbones import build_backbone
    from rap_backbone.planner import PlannerConfig, RAPPlanner
    backbone = build_backbone("eupe-t", depth=1)
    planner = RAPPlanner(backbone, PlannerConfig(d_model=32, d_ffn=64, num_proposals=16, grid_mask_prob=0.0)).eval()
    ckpt = tmp_path / "planner.ckpt"
    torch.save({"state_dict": {"agent.planner." + k: v for k, v in planner.state_dict().items()}}, ckpt)
    t = build_teacher("rap-3d", weights=str(ckpt), img_size=64, backbone="eupe-t", backbone_kwargs={"depth": 1})
    x = torch.rand(2, 3, 64, 64)
    out = t(x)
    assert out.grid == (4, 4) and out.patch.shape == (2, 16, 32) and t.weights_source == str(ckpt)
    # the teacher's tokens are the planner's own neck output (Raster-to-Real space) for the same image
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        neck, _ = planner.encode_images(((x - mean) / std)[:, None])
    assert_close_to_scale(out.patch, neck[:, 0].flatten(2).transpose(1, 2), 1e-5, what="patch tokens")
    assert_close_to_scale(out.summary, out.patch.mean(1), 1e-5, what="summary")
    with pytest.raises(ValueError, match=r"rap-3d: checkpoint .*planner.ckpt does not fit"):
        build_teacher("rap-3d", weights=str(ckpt), backbone="eupe-t", backbone_kwargs={"depth": 2})
    with pytest.raises(ValueError, match="needs weights"):
        build_teacher("rap-3d")


def test_student_meta_rejects_foreign_files(tmp_path):
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="no 'eupe_student' metadata"):
        read_student_meta(foreign)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_student_meta(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        read_student_meta(tmp_path / "absent.safetensors")


def test_navsim_source_names_an_unknown_camera(tmp_path):
    from navsim_agents.data.camera_source import NavsimCameraSource

    with pytest.raises(KeyError, match="cam_x9"):
        NavsimCameraSource(tmp_path, tmp_path, cameras=["cam_f0", "cam_x9"])
