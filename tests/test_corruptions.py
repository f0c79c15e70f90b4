"""Driving corruptions: shape/dtype, determinism, identity at severity 0, monotone degradation, geometry."""
from __future__ import annotations

import numpy as np
import pytest

from rap_backbone import corruptions as C

H, W = 64, 96
NAMES = C.corruption_names()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def scene():
    image, depth, k = C.procedural_road_scene(W, H)
    # an ego driving at 10 m/s, 2 Hz history: the scene 5, 10, 15 m back
    history = [C.procedural_road_scene(W, H, ego_forward_m=-5.0 * j)[0] for j in (3, 2, 1)]
    return image, depth, k, history


def run(scene, name, severity, **kw):
    image, depth, k, history = scene
    return C.corrupt(image, name, severity, depth=depth if name == "fog" else None, intrinsics=k,
                     history=history, **kw)


def test_registry_has_the_issue_list():
    wanted = {"gaussian_noise", "shot_noise", "motion_blur", "defocus_blur", "brightness", "contrast", "low_light",
              "night", "fog", "rain", "snow", "glare", "lens_dirt", "water_drops", "jpeg", "pixelate",
              "color_shift", "rolling_shutter", "frame_delay", "dropped_camera", "calibration_drift"}
    assert wanted <= set(C.corruption_names(aliases=True))


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_determinism_identity(scene, name):
    image = scene[0]
    out = run(scene, name, 3, seed=7)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, run(scene, name, 3, seed=7))
    np.testing.assert_array_equal(run(scene, name, 0, seed=7), image)
    np.testing.assert_array_equal(C.corrupt(image, "none", 3), image)
    as_float = image.astype(np.float32) / 255
    out_f = C.corrupt(as_float, name, 3, seed=7, depth=scene[1] if name == "fog" else None, intrinsics=scene[2],
                      history=[h.astype(np.float32) / 255 for h in scene[3]])
    assert out_f.dtype == np.float32 and out_f.shape == image.shape
    assert 0.0 <= out_f.min() and out_f.max() <= 1.0


@pytest.mark.parametrize("name", [n for n in NAMES if n != "dropped_camera"])
def test_psnr_falls_monotonically_with_severity(scene, name):
    image = scene[0]
    for seed in (0, 1):
        values = [psnr(run(scene, name, s, seed=seed), image) for s in range(1, 6)]
        assert all(a > b for a, b in zip(values, values[1:], strict=False)), (name, seed, values)


def test_dropped_camera_is_black_at_severity_5_and_never_recovers():
    image = np.full((H, W, 3), 120, np.uint8)
    for seed in range(20):
        dead = [bool(C.corrupt(image, "dropped_camera", s, seed=seed).max() == 0) for s in range(1, 6)]
        assert dead[-1]
        assert dead == sorted(dead)  # once dead at a severity, dead at every higher one


def test_gaussian_noise_has_the_imagenet_c_sigma():
    grey = np.full((200, 300, 3), 0.5, np.float32)
    for s, sigma in enumerate((0.08, 0.12, 0.18, 0.26, 0.38), start=1):
        diff = C.corrupt(grey, "gaussian_noise", s, seed=3).astype(np.float64) - 0.5
        if sigma < 0.15:  # no clipping at 0 / 1 within ~3 sigma: the std is the sigma itself
            assert abs(diff.std() - sigma) < 0.02 * sigma
        assert abs(diff.mean()) < 0.01


def test_contrast_and_brightness_follow_their_formulas():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.9, (8, 12, 3)).astype(np.float32)
    mean = x.mean(axis=(0, 1))
    np.testing.assert_allclose(C.corrupt(x, "contrast", 2), (x - mean) * 0.3 + mean, atol=1e-6)
    # over-exposure by 1 stop (severity 2) in linear light: ((x^2.2) * 2)^(1/2.2), clipped at 1
    expected = np.minimum(x.astype(np.float64) ** 2.2 * 2.0, 1.0) ** (1 / 2.2)
    np.testing.assert_allclose(C.corrupt(x, "brightness", 2), expected, atol=1e-5)


def test_pixelate_block_sizes_by_hand():
    # 1080 / 224 = 4.82 px per ImageNet-C px; / factor (0.6, 0.5, 0.4, 0.3, 0.25) = 8.04, 9.64, 12.05, 16.07, 19.29
    assert C.pixelate_block_sizes(1080) == (8, 10, 12, 16, 19)
    x = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3) / 100
    out = C.corrupt(x, "pixelate", 1)  # short side 4 -> blocks of 2
    np.testing.assert_allclose(out[0, 0], x[:2, :2].mean(axis=(0, 1)), atol=1e-6)
    np.testing.assert_allclose(out[1, 1], out[0, 0])


def test_fog_uses_the_depth_map():
    x = np.full((H, W, 3), 0.2, np.float32)
    depth = np.full((H, W), 1.0, np.float32)
    depth[:, W // 2:] = np.inf  # sky: only airlight
    out = C.corrupt(x, "fog", 3, depth=depth)
    np.testing.assert_allclose(out[:, W // 2:], C.FOG_AIRLIGHT, atol=1e-6)
    # at 1 m with visibility 100 m (severity 3) the transmission is exp(-3.912/100 * 1 * (1 +- 0.3 * field))
    assert np.all(np.abs(out[:, : W // 2] - 0.2) < (1 - np.exp(-0.04 * 2.5)) * (C.FOG_AIRLIGHT - 0.2))
    with pytest.raises(ValueError, match="depth"):
        C.corrupt(x, "fog", 3, depth=np.ones((3, 3)))


def test_frame_delay_shows_the_older_frame():
    frames = [np.full((H, W, 3), v, np.uint8) for v in (10, 20, 30, 40)]  # oldest .. current
    # severity 2 = 0.5 s = one frame at 2 Hz: exactly the previous frame
    np.testing.assert_array_equal(C.corrupt(frames[3], "frame_delay", 2, history=frames[:3]), frames[2])
    # severity 1 = 0.25 s: halfway between current and previous
    np.testing.assert_array_equal(C.corrupt(frames[3], "frame_delay", 1, history=frames[:3]), 35)
    # severity 5 = 1.5 s = 3 frames back; with only 1 earlier frame it clamps to that one
    np.testing.assert_array_equal(C.corrupt(frames[3], "frame_delay", 5, history=frames[:3]), frames[0])
    np.testing.assert_array_equal(C.corrupt(frames[3], "frame_delay", 5, history=frames[2:3]), frames[2])
    with pytest.raises(ValueError, match="history"):
        C.corrupt(frames[3], "frame_delay", 2)


def test_drift_homography_of_a_pure_yaw_by_hand():
    f, cx, cy = 500.0, 47.5, 31.5
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    theta = np.deg2rad(2.0)
    r_y = np.array([[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0, np.cos(theta)]])
    p = C.drift_homography(k, r_y) @ np.array([cx, cy, 1.0])
    # the optical axis (0,0,1) becomes (sin t, 0, cos t): u = cx + f tan t, v = cy
    np.testing.assert_allclose(p[:2] / p[2], [cx + f * np.tan(theta), cy], atol=1e-9)


def test_drift_rotation_angle_per_severity():
    for s, deg in enumerate((0.5, 1.0, 2.0, 3.0, 5.0), start=1):
        r = C.drift_rotation(s, C.make_rng(4))
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        angle = np.degrees(np.arccos((np.trace(r) - 1) / 2))  # rotation angle from the trace
        assert abs(angle - deg) < 1e-6


def test_calibration_drift_moves_a_known_pixel_where_the_homography_predicts():
    f, cx, cy = 80.0, (W - 1) / 2, (H - 1) / 2
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    u0, v0 = 40.0, 28.0
    yy, xx = np.mgrid[0:H, 0:W]
    blob = np.exp(-((xx - u0) ** 2 + (yy - v0) ** 2) / (2 * 1.5**2)).astype(np.float32)
    image = np.repeat(blob[..., None], 3, axis=2)
    severity, seed = 5, 11  # 5 degrees
    out = C.corrupt(image, "calibration_drift", severity, rng=C.make_rng(seed), intrinsics=k)[..., 0]
    r = C.drift_rotation(severity, C.make_rng(seed))
    # by hand: the ray through (u0, v0) is K^-1 p; the drifted camera sees it at K R K^-1 p
    ray = np.linalg.solve(k, [u0, v0, 1.0])
    q = k @ (r @ ray)
    expected = q[:2] / q[2]
    weight = out / out.sum()
    centroid = np.array([(weight * xx).sum(), (weight * yy).sum()])
    assert np.hypot(*(expected - [u0, v0])) > 2.0  # it really moved
    np.testing.assert_allclose(centroid, expected, atol=0.25)


def test_bad_inputs_raise_with_the_name_at_fault():
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(KeyError, match="unknown corruption 'smog'"):
        C.corrupt(image, "smog", 1)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(image, "fog", 6)
    with pytest.raises(ValueError, match="HxWx3"):
        C.corrupt(image[..., 0], "fog", 1)
    with pytest.raises(KeyError, match="cam_x9"):
        C.CorruptionConfig.from_cfg({"name": "fog", "severity": 2, "cameras": ["cam_x9"], "seed": 0})


def test_gallery_cli_writes_a_png(tmp_path):
    import cv2

    src = tmp_path / "cam.png"
    cv2.imwrite(str(src), np.full((36, 64, 3), 128, np.uint8))
    out = tmp_path / "grid.png"
    C.main(["show", "--image", str(src), "--out", str(out), "--thumb-width", "32", "--names", "fog", "frame_delay"])
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[0] > 2 * 18 and grid.shape[1] > 6 * 32


def test_navsim_gallery_adds_the_synthetic_world_as_a_source(tmp_path, monkeypatch):
    import cv2

    from navsim_agents import corruption_gallery
    from navsim_agents.data import synthetic

    monkeypatch.setattr(synthetic, "default_cache_root", lambda: tmp_path / "no-world")
    assert corruption_gallery.synthetic_gallery_image(generate=False) is None  # navmini not generated here
    out = tmp_path / "grid.png"
    corruption_gallery.main(["show", "--out", str(out), "--thumb-width", "32", "--names", "fog"])  # auto
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[1] == 150 + 6 * 32  # label column + severities 0..5
    with pytest.raises(SystemExit):  # rap_backbone's own CLI knows no synthetic world
        C.main(["show", "--source", "synthetic", "--out", str(out)])
