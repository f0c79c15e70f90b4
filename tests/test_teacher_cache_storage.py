"""TinyViT-style stored teacher features: colour draws replayed pixel for pixel, fp16 / int8 / PCA storage
within its stated precision, PCA error = discarded variance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eupe.distill.cache import CachedDistillDataset, CacheWriter, TeacherCache
from eupe.distill.compress import (
    FP16_RELATIVE_ERROR,
    FeatureStorage,
    fit_pca,
    pca_decode,
    pca_encode,
)
from eupe.distill.data import (
    GEOMETRY_DIM,
    AugmentConfig,
    DistillImageDataset,
    ProceduralSource,
    apply_color,
    collate_samples,
)
from eupe.teachers import build_teacher

# DINOv3's colour draws (dinov3/data/augmentations.py), always applied so every sample is jittered
COLOUR = AugmentConfig(color_jitter=1.0, grayscale=0.5)
# torchvision rgb_to_grayscale: ITU-R 601-2 luma weights
LUMA = (0.2989, 0.587, 0.114)


def _color(*, jitter=0, b=1.0, c=1.0, s=1.0, h=0.0, order=(0, 1, 2, 3), gray=0) -> np.ndarray:
    return np.array([jitter, b, c, s, h, *order, gray], dtype=np.float32)


def test_colour_ops_by_hand():
    flat = torch.full((3, 2, 2), 0.6)
    torch.testing.assert_close(apply_color(flat, _color(jitter=1, b=0.5)), torch.full((3, 2, 2), 0.3))
    red = torch.zeros(3, 1, 1)
    red[0] = 1.0
    torch.testing.assert_close(apply_color(red, _color(gray=1)), torch.full((3, 1, 1), LUMA[0]))
    # a hue shift of +1/3 turns pure red (h = 0) into pure green (h = 1/3)
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(apply_color(red, _color(jitter=1, h=1 / 3)), green, atol=1e-6, rtol=0)
    # the stored order matters: brightness 2 then contrast 0 on gray pixels 0.3 / 0.7 clips 1.4 to 1, then
    # takes the mean (0.6 + 1.0) / 2 = 0.8; contrast first gives 0.5, then brightness 1.0
    two = torch.tensor([0.3, 0.7]).view(1, 1, 2).expand(3, 1, 2).contiguous()
    first_b = apply_color(two, _color(jitter=1, b=2.0, c=0.0, order=(0, 1, 2, 3)))
    first_c = apply_color(two, _color(jitter=1, b=2.0, c=0.0, order=(1, 0, 2, 3)))
    gray_sum = sum(LUMA)  # contrast's mean is the luma of the gray pixels
    torch.testing.assert_close(first_b, torch.full((3, 1, 2), 0.8 * gray_sum), atol=1e-6, rtol=0)
    torch.testing.assert_close(first_c, torch.full((3, 1, 2), min(1.0, 2 * 0.5 * gray_sum)), atol=1e-6, rtol=0)


def test_colour_draws_follow_dinov3_ranges():
    from eupe.distill.data import draw_aug_params, sample_rng

    draws = np.stack([draw_aug_params(sample_rng(0, 0, i), AugmentConfig(color_jitter=0.8, grayscale=0.2), (40, 60))
                      for i in range(400)])[:, GEOMETRY_DIM:]
    on = draws[:, 0] == 1
    assert 0.7 < on.mean() < 0.9 and 0.1 < draws[:, 9].mean() < 0.3
    assert (draws[on, 1] >= 0.6).all() and (draws[on, 1] <= 1.4).all()  # brightness 0.4
    assert (draws[on, 3] >= 0.8).all() and (draws[on, 3] <= 1.2).all()  # saturation 0.2
    assert (np.abs(draws[on, 4]) <= 0.1).all()  # hue 0.1
    assert all(sorted(row) == [0, 1, 2, 3] for row in draws[on, 5:9])  # a permutation of the 4 ops
    assert (draws[~on, 1:5] == [1, 1, 1, 0]).all()  # no jitter: neutral factors
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        AugmentConfig.from_dict({"colour": 0.5})


@pytest.fixture(scope="module")
def teacher_batch():
    """Six procedural images with crop, flip and colour draws, and a 1-block random EUPE ViT-T teacher."""
    torch.manual_seed(0)
    ds = DistillImageDataset(ProceduralSource(6, size=48, seed=3), size=32, aug=COLOUR, seed=0)
    batch = collate_samples([ds[(i, 0)] for i in range(6)])
    teacher = build_teacher("eupe-t", img_size=32, depth=1)
    with torch.no_grad():
        out = teacher(batch["image"])
    return ds, batch, teacher, out


def _write(root, ds, batch, out, storage):
    writer = CacheWriter(root, teachers={"t": {"name": "eupe-t", "summary_dim": 192, "patch_dim": 192,
                                               "weights_source": "random"}},
                         image_size=32, seed=0, augment=ds.aug, num_samples=6, batch_size=6, shard_rows=6,
                         storage=storage)
    writer.add(index=batch["index"], epoch=torch.zeros(6, dtype=torch.long), aug=batch["aug"], features={"t": out},
               sizes={"t": 32}, position=0)
    writer.close()
    return CachedDistillDataset(TeacherCache(root), ds)


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_stored_features_equal_the_online_teacher_on_the_replayed_crop(tmp_path, teacher_batch, dtype):
    ds, batch, teacher, out = teacher_batch
    colour = batch["aug"][:, GEOMETRY_DIM:]
    assert colour[:, 0].all() and colour[:, 9].any()  # every row jittered, some gray: the replay has work to do
    cached = _write(tmp_path, ds, batch, out, FeatureStorage(dtype=dtype))
    # int8 scales by definition: summary per channel over the shard's rows, patch per channel over a row's tokens
    summary_scale = out.summary.abs().amax(0) / 127
    for row in range(6):
        item = cached[(0, row)]
        assert item["index"] == int(batch["index"][row])
        assert torch.equal(item["image"], batch["image"][row])  # replayed crop + flip + colour, pixel for pixel
        with torch.no_grad():
            online = teacher(item["image"][None])
        for part, on in (("summary", online.summary[0]), ("patch", online.patch[0])):
            stored = item["teacher"]["t"][part].float()
            numerics = 1e-5 * float(on.abs().max())  # batch of 6 vs 1 image: fp32 sums reassociate
            if dtype == "fp16":
                bound = FP16_RELATIVE_ERROR * on.abs() + numerics
            else:
                scale = summary_scale if part == "summary" else out.patch[row].abs().amax(0) / 127
                bound = scale / 2 * (1 + 1e-6) + numerics
            assert ((stored - on).abs() <= bound).all(), (part, float(((stored - on).abs() - bound).max()))


def test_pca_error_equals_the_discarded_variance():
    # 8 tokens in 5 channels on 3 orthogonal zero-mean +-1 patterns (Hadamard columns) with standard deviations
    # 2, 1, 0.5, rotated into the channels and shifted: covariance eigenvalues 4, 1, 0.25, 0, 0
    hadamard = torch.tensor([[1.0]])
    for _ in range(3):
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    z = hadamard[:, 1:4].double() * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    tokens = z @ q.T + torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=torch.float64)
    for k, discarded in ((1, 1.25), (2, 0.25), (3, 0.0)):
        pca = fit_pca(tokens, k)
        torch.testing.assert_close(pca.variances[:3], torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64))
        assert pca.discarded_variance == pytest.approx(discarded, abs=1e-9)
        recon = pca_decode(pca_encode(tokens, pca), pca.mean, pca.basis).double()
        mse = float(((recon - tokens) ** 2).sum(-1).mean())
        assert mse == pytest.approx(discarded, rel=1e-5, abs=1e-9)


def test_pca_cache_round_trip_and_bad_storage(tmp_path, teacher_batch):
    ds, batch, teacher, out = teacher_batch
    k = 4  # 6 rows x 4 tokens: the shard's basis keeps 4 of 192 channels
    cached = _write(tmp_path, ds, batch, out, FeatureStorage(dtype="fp16", pca=k))
    manifest = cached.cache.manifest
    assert manifest["storage"] == {"dtype": "fp16", "pca": k} and manifest["version"] == 2
    stored = torch.stack([cached[(0, r)]["teacher"]["t"]["patch"] for r in range(6)])
    expected = fit_pca(out.patch, k).discarded_variance  # the shard's own tokens
    mse = float(((stored.double() - out.patch.double()) ** 2).sum(-1).mean())
    # fp16 coefficients add at most ~2**-11 relative on top of the truncation
    assert mse == pytest.approx(expected, rel=1e-2)
    with pytest.raises(ValueError, match=r"cache_pca=192 keeps as many components as teachers \{'t': 192\}"):
        _write(tmp_path / "big", ds, batch, out, FeatureStorage(pca=192))
    with pytest.raises(ValueError, match="cache_storage='bf16' unknown"):
        FeatureStorage(dtype="bf16")


def test_run_distill_builds_and_trains_from_an_int8_pca_cache(tmp_path):
    import json
    import logging

    from hydra import compose, initialize_config_dir

    from eupe import run_distill
    from eupe.config_errors import ConfigError

    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base=None):
            return compose(config_name="run_distill", overrides=["distill=edge_cpu", f"stages_root={tmp_path}",
                                                                  "distill.max_steps=2", "cache_shard_rows=8",
                                                                  "distill.data.sources.0.num_images=16",
                                                                  "cache_storage=int8", "cache_pca=8", *overrides])

    logging.disable(logging.WARNING)
    try:
        run_distill.build_cache(cfg("cache=build"))
        manifest = json.loads((tmp_path / "cache" / "edge_cpu" / "manifest.json").read_text())
        assert manifest["storage"] == {"dtype": "int8", "pca": 8} and manifest["augment"]["color_jitter"] == 0.8
        run_distill.train(cfg("cache=read"))
        with pytest.raises(ConfigError, match="cache_storage='bf16' unknown"):
            run_distill.validate_config(cfg("cache_storage=bf16"))
    finally:
        logging.disable(logging.NOTSET)
