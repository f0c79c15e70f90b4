"""apply_to_agent_input: per-scene consistency over history frames, nominal calibration, camera selection."""
from __future__ import annotations

import numpy as np
import pytest

from navsim_agents.data import dataclasses as dc
from navsim_agents.data import scene_raster
from rap_backbone import corruptions as C

H, W = 48, 80
K = np.array([[60.0, 0, 39.5], [0, 60.0, 23.5], [0, 0, 1]], np.float32)


def make_agent_input(frames: list[np.ndarray]) -> dc.AgentInput:
    """Every camera of frame i shows frames[i] (plus a per-camera offset so the cameras differ)."""
    cameras = []
    for image in frames:
        cams = {}
        for j, name in enumerate(C.CAMERA_NAMES):
            cams[name] = dc.Camera(image=np.clip(image.astype(int) + 3 * j, 0, 255).astype(np.uint8),
                                   sensor2lidar_rotation=np.eye(3, dtype=np.float32),
                                   sensor2lidar_translation=np.array([1.0, 0.0, 1.6], np.float32),
                                   intrinsics=K.copy(), distortion=np.zeros(5, np.float32),
                                   camera_path=f"log/{name}/frame.jpg")
        cameras.append(dc.Cameras(**cams))
    return dc.AgentInput(ego_statuses=[], cameras=cameras, lidars=[])


@pytest.fixture()
def static_scene():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (H, W, 3), dtype=np.uint8)
    return make_agent_input([image] * 4)


def cfg(name, severity=3, cameras="all", seed=0):
    return {"name": name, "severity": severity, "cameras": cameras, "seed": seed}


@pytest.mark.parametrize("name", ["calibration_drift", "color_shift", "motion_blur", "lens_dirt", "glare"])
def test_same_parameters_for_every_history_frame(static_scene, name):
    out = C.apply_to_agent_input(static_scene, cfg(name), seed_key="tok1")
    for cam in ("cam_f0", "cam_b0"):
        images = [getattr(f, cam).image for f in out.cameras]
        assert not np.array_equal(images[0], getattr(static_scene.cameras[0], cam).image)
        for img in images[1:]:  # a static scene corrupted with the scene's parameters looks the same every frame
            np.testing.assert_array_equal(img, images[0])


def test_parameters_depend_on_camera_token_and_seed(static_scene):
    drift = C.apply_to_agent_input(static_scene, cfg("calibration_drift"), seed_key="tok1")
    # cam_l0 shows the same picture shifted by a constant; different drift => different warp of the shared part
    f0 = drift.cameras[0].cam_f0.image.astype(int)
    l0 = drift.cameras[0].cam_l0.image.astype(int) - 3
    assert np.abs(f0 - l0)[8:-8, 8:-8].mean() > 2
    other = C.apply_to_agent_input(static_scene, cfg("calibration_drift"), seed_key="tok2")
    assert not np.array_equal(other.cameras[0].cam_f0.image, drift.cameras[0].cam_f0.image)
    again = C.apply_to_agent_input(static_scene, cfg("calibration_drift"), seed_key="tok1")
    np.testing.assert_array_equal(again.cameras[3].cam_r2.image, drift.cameras[3].cam_r2.image)
    reseeded = C.apply_to_agent_input(static_scene, cfg("calibration_drift", seed=1), seed_key="tok1")
    assert not np.array_equal(reseeded.cameras[0].cam_f0.image, drift.cameras[0].cam_f0.image)


def test_sensor_noise_changes_from_frame_to_frame(static_scene):
    out = C.apply_to_agent_input(static_scene, cfg("gaussian_noise"), seed_key="tok1")
    assert not np.array_equal(out.cameras[0].cam_f0.image, out.cameras[1].cam_f0.image)


def test_calibration_handed_to_the_planner_stays_nominal(static_scene):
    before = [f.cam_f0.image.copy() for f in static_scene.cameras]
    out = C.apply_to_agent_input(static_scene, cfg("calibration_drift", severity=5), seed_key="tok1")
    for new, old, clean in zip(out.cameras, static_scene.cameras, before, strict=True):
        for name in C.CAMERA_NAMES:
            a, b = getattr(new, name), getattr(old, name)
            np.testing.assert_array_equal(a.intrinsics, K)
            np.testing.assert_array_equal(a.sensor2lidar_rotation, np.eye(3))
            np.testing.assert_array_equal(a.sensor2lidar_translation, np.array([1.0, 0.0, 1.6], np.float32))
            np.testing.assert_array_equal(a.distortion, b.distortion)
            assert a.camera_path == b.camera_path
        np.testing.assert_array_equal(old.cam_f0.image, clean)  # the input is not modified
    assert out is not static_scene and out.cameras[0] is not static_scene.cameras[0]


def test_drift_warp_uses_the_camera_intrinsics(static_scene):
    out = C.apply_to_agent_input(static_scene, cfg("calibration_drift", severity=4), seed_key="tok")
    rotation = C.drift_rotation(4, C.make_rng(0, "tok", "cam_f0"))
    expected = C.corrupt(static_scene.cameras[0].cam_f0.image, "calibration_drift", 4,
                         rng=C.make_rng(0, "tok", "cam_f0"), intrinsics=K)
    np.testing.assert_array_equal(out.cameras[0].cam_f0.image, expected)
    seen = []
    C.apply_to_agent_input(static_scene, cfg("calibration_drift", severity=4, cameras=["cam_f0"]), seed_key="tok",
                           rerender_fn=lambda cam, i, r: seen.append((cam, i, r)) or np.zeros((H, W, 3), np.uint8))
    assert [(c, i) for c, i, _ in seen] == [("cam_f0", i) for i in range(4)]
    for _, _, r in seen:
        np.testing.assert_allclose(r, rotation)


def test_camera_selection_and_dropped_camera(static_scene):
    out = C.apply_to_agent_input(static_scene, cfg("dropped_camera", severity=5, cameras=["cam_f0", "cam_l0"]),
                                 seed_key="tok")
    for frame, clean in zip(out.cameras, static_scene.cameras, strict=True):
        assert frame.cam_f0.image.max() == 0 and frame.cam_l0.image.max() == 0
        np.testing.assert_array_equal(frame.cam_b0.image, clean.cam_b0.image)


def test_frame_delay_reads_the_history_frames():
    frames = [np.full((H, W, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    out = C.apply_to_agent_input(make_agent_input(frames), cfg("frame_delay", severity=2), seed_key="tok")
    got = [int(f.cam_f0.image[0, 0, 0]) for f in out.cameras]
    assert got == [10, 10, 20, 30]  # 0.5 s late = previous frame; the oldest frame has none and stays


def test_none_and_severity_zero_are_identity(static_scene):
    for c in (cfg("none"), cfg("fog", severity=0), None):
        out = C.apply_to_agent_input(static_scene, c, seed_key="tok")
        for a, b in zip(out.cameras, static_scene.cameras, strict=True):
            assert a.cam_f0.image is b.cam_f0.image


def test_cameras_without_image_are_skipped(static_scene):
    static_scene.cameras[0].cam_r1 = dc.Camera()
    out = C.apply_to_agent_input(static_scene, cfg("fog"), seed_key="tok")
    assert out.cameras[0].cam_r1.image is None


def test_hydra_config_files_parse():
    from pathlib import Path

    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1] / "configs" / "corruption"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    assert set(names) == {"none", *C.corruption_names()}
    for name in names:
        parsed = C.CorruptionConfig.from_cfg(OmegaConf.load(root / f"{name}.yaml"))
        assert parsed.name == name and parsed.cameras == C.CAMERA_NAMES
        assert parsed.severity == (0 if name == "none" else 3)


def test_raster_rerender_of_a_drift_matches_the_homography():
    """A pure camera rotation is a homography whatever the depth: the re-render and the warp agree."""
    from types import SimpleNamespace

    h, w = 72, 128
    k = np.array([[90.0, 0, (w - 1) / 2], [0, 90.0, (h - 1) / 2], [0, 0, 1]])
    front = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)  # camera z forward = ego x, y down = -z
    cam = dc.Camera(image=np.zeros((h, w, 3), np.uint8), sensor2lidar_rotation=front,
                    sensor2lidar_translation=np.array([1.5, 0.0, 1.6]), intrinsics=k, distortion=np.zeros(5))
    others = {n: dc.Camera() for n in C.CAMERA_NAMES if n != "cam_f0"}
    agent_input = dc.AgentInput(ego_statuses=[], cameras=[dc.Cameras(cam_f0=cam, **others)], lidars=[])
    boxes = np.array([[14.0, 1.0, 0.8, 4.0, 2.0, 1.6, 0.3]])
    frame = SimpleNamespace(ego_status=SimpleNamespace(ego_pose=np.zeros(3)),
                            annotations=SimpleNamespace(boxes=boxes))
    depth_fn, rerender_fn = scene_raster.raster_hooks(SimpleNamespace(map_api=None, frames=[frame]), agent_input)
    nominal = rerender_fn("cam_f0", 0, np.eye(3))
    assert nominal.max() > 0  # the box is in view
    depth = depth_fn("cam_f0", 0)
    assert depth.shape == (h, w) and np.isfinite(depth[nominal.sum(axis=2) > 0]).all()
    rotation = C.drift_rotation(4, C.make_rng(2))
    drifted = rerender_fn("cam_f0", 0, rotation)
    warped = C.corrupt(nominal, "calibration_drift", 4, rng=C.make_rng(2), intrinsics=k)

    def centroid(img):
        m = img.astype(float).sum(axis=2)
        yy, xx = np.mgrid[0:h, 0:w]
        return np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()

    assert np.hypot(*(centroid(drifted) - centroid(nominal))) > 3  # it moved
    np.testing.assert_allclose(centroid(drifted), centroid(warped), atol=1.0)


def test_scene_argument_uses_the_rasterizer_for_drift_and_fog():
    from types import SimpleNamespace

    h, w = 36, 64
    k = np.array([[45.0, 0, (w - 1) / 2], [0, 45.0, (h - 1) / 2], [0, 0, 1]])
    front = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)
    cam = dc.Camera(image=np.full((h, w, 3), 77, np.uint8), sensor2lidar_rotation=front,
                    sensor2lidar_translation=np.array([1.5, 0.0, 1.6]), intrinsics=k, distortion=np.zeros(5))
    others = {n: dc.Camera() for n in C.CAMERA_NAMES if n != "cam_f0"}
    agent_input = dc.AgentInput(ego_statuses=[], cameras=[dc.Cameras(cam_f0=cam, **others)], lidars=[])
    frame = SimpleNamespace(ego_status=SimpleNamespace(ego_pose=np.zeros(3)),
                            annotations=SimpleNamespace(boxes=np.array([[12.0, 0.0, 0.8, 4.0, 2.0, 1.6, 0.0]])))
    scene = SimpleNamespace(map_api=None, frames=[frame])
    drift = scene_raster.corrupt_agent_input(agent_input, cfg("calibration_drift"), seed_key="t", scene=scene)
    depth_fn, rerender_fn = scene_raster.raster_hooks(scene, agent_input)
    expected = rerender_fn("cam_f0", 0, C.drift_rotation(3, C.make_rng(0, "t", "cam_f0")))
    np.testing.assert_array_equal(drift.cameras[0].cam_f0.image, expected)  # a re-render, not a warp of 77s
    fog = scene_raster.corrupt_agent_input(agent_input, cfg("fog"), seed_key="t", scene=scene)
    np.testing.assert_array_equal(
        fog.cameras[0].cam_f0.image,
        C.corrupt(cam.image, "fog", 3, rng=C.make_rng(0, "t", "cam_f0"), depth=depth_fn("cam_f0", 0), intrinsics=k))
