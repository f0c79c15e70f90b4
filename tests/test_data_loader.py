"""SceneLoader and NAVSIM dataclasses on a hand-written two-log data set in the OpenScene pickle format."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import conformance_path

from navsim_agents.data.dataclasses import (
    SceneFilter,
    SceneLoadError,
    SensorConfig,
    Trajectory,
    TrajectorySampling,
    quaternion_yaw,
)
from navsim_agents.data.scene_loader import SceneLoader, load_log, validate_frame

CAMS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")
IMAGE_HW = (6, 8)


def _quat_from_yaw(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def _pose_matrix(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    matrix[:3, 3] = [x, y, z]
    return matrix


def _frame(log: str, idx: int, pose, roadblocks=("rb1",)) -> dict:
    x, y, yaw = pose
    token = f"{log}-t{idx:02d}"
    return {
        "token": token,
        "frame_idx": idx,
        "timestamp": 1_000_000 + idx * 500_000,
        "log_name": log,
        "log_token": f"{log}-log",
        "scene_name": f"{log}-scene",
        "scene_token": f"{log}-scene",
        "map_location": "us-pa-pittsburgh-hazelwood",
        "vehicle_name": "veh-1",
        "roadblock_ids": list(roadblocks),
        "can_bus": np.zeros(18),
        "lidar_path": f"{log}/MergedPointCloud/{token}.pcd",
        "lidar2ego_translation": np.array([1.5, 0.0, 1.9]),
        "lidar2ego_rotation": np.array([1.0, 0.0, 0.0, 0.0]),
        "ego2global_translation": np.array([x, y, 0.0]),
        "ego2global_rotation": _quat_from_yaw(yaw),
        "ego2global": _pose_matrix(x, y, yaw),
        "lidar2ego": _pose_matrix(1.5, 0.0, 0.0, z=1.9),
        "lidar2global": _pose_matrix(x, y, yaw) @ _pose_matrix(1.5, 0.0, 0.0, z=1.9),
        "ego_dynamic_state": [float(idx), 0.5, 0.1, 0.0],
        "traffic_lights": [("7", False)],
        "driving_command": np.array([0, 1, 0, 0]),
        "sample_prev": None,
        "sample_next": None,
        "cams": {
            cam: {
                "data_path": f"{log}/{cam}/{token}.jpg",
                "sensor2lidar_rotation": np.eye(3),
                "sensor2lidar_translation": np.zeros(3),
                "cam_intrinsic": np.eye(3),
                "distortion": np.zeros(5),
            }
            for cam in CAMS
        },
        "anns": {
            "gt_boxes": np.array([[5.0, 0.0, 0.5, 4.0, 2.0, 1.5, 0.0]]),
            "gt_names": np.array(["vehicle"]),
            "gt_velocity_3d": np.zeros((1, 3)),
            "instance_tokens": ["i1"],
            "track_tokens": ["trk1"],
        },
    }


# Log A: 16 frames; frame 3 at (10, 5) heading north; frame 0 at (4, 5) heading east; frame 4 has no route.
# Log B: 10 frames, shorter than one 14-frame window.
def _log_a_poses():
    poses = [(4.0 + 2.0 * i, 5.0, 0.0) for i in range(16)]
    poses[3] = (10.0, 5.0, math.pi / 2)
    return poses


@pytest.fixture()
def dataset(tmp_path: Path):
    logs = tmp_path / "navsim_logs" / "mini"
    blobs = tmp_path / "sensor_blobs" / "mini"
    logs.mkdir(parents=True)
    frames_a = [_frame("logA", i, p, roadblocks=() if i == 4 else ("rb1",)) for i, p in enumerate(_log_a_poses())]
    frames_b = [_frame("logB", i, (0.0, float(i), 0.0)) for i in range(10)]
    for name, frames in (("logA", frames_a), ("logB", frames_b)):
        with open(logs / f"{name}.pkl", "wb") as handle:
            pickle.dump(frames, handle)
    return tmp_path, logs, blobs, frames_a


def _write_jpeg(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*IMAGE_HW, 3), value, dtype=np.uint8)).save(path, quality=95)


def test_windowing_token_choice_and_filters(dataset):
    _, logs, blobs, _ = dataset
    # 16 frames, 14-frame windows at stride 1 start at 0, 1, 2 -> current frames 3, 4, 5; frame 4 has no route;
    # log B (10 frames) is too short for any window
    loader = SceneLoader(logs, blobs, SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1))
    assert loader.tokens == ["logA-t03", "logA-t05"]
    assert loader.get_tokens_list_per_log() == {"logA": ["logA-t03", "logA-t05"]}
    # without the route requirement the empty-roadblock window stays
    no_route = SceneLoader(logs, blobs, SceneFilter(4, 10, 1, has_route=False))
    assert no_route.tokens == ["logA-t03", "logA-t04", "logA-t05"]
    # default frame_interval = num_frames: windows at 0 and 14 (the second is short)
    assert SceneLoader(logs, blobs, SceneFilter(4, 10)).tokens == ["logA-t03"]
    # short windows: 2 history + 1 future over log B (10 frames, stride 1) -> starts 0..7, current = start + 1
    short = SceneLoader(logs, blobs, SceneFilter(2, 1, 1, log_names=["logB"]))
    assert short.tokens == [f"logB-t{i:02d}" for i in range(1, 9)]
    assert SceneLoader(logs, blobs, SceneFilter(4, 10, 1, tokens=["logA-t05"])).tokens == ["logA-t05"]
    assert SceneLoader(logs, blobs, SceneFilter(2, 1, 1, max_scenes=3)).tokens == ["logA-t01", "logA-t02", "logA-t03"]
    assert len(SceneLoader(logs, blobs, SceneFilter(4, 10, 1, log_names=["logB"]))) == 0


def test_history_in_current_ego_frame(dataset):
    _, logs, blobs, _ = dataset
    loader = SceneLoader(logs, blobs, SceneFilter(4, 10, 1))
    agent_input = loader.get_agent_input_from_token("logA-t03")
    assert len(agent_input.ego_statuses) == 4
    # frame 0 at (4, 5) heading east; current ego at (10, 5) heading north: the old pose lies 6 m to the west,
    # i.e. 6 m to the ego's left (+y), and its heading is -90 deg in the ego frame
    np.testing.assert_allclose(agent_input.ego_statuses[0].ego_pose, [0.0, 6.0, -math.pi / 2], atol=1e-5)
    np.testing.assert_allclose(agent_input.ego_statuses[3].ego_pose, [0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(agent_input.ego_statuses[1].ego_velocity, [1.0, 0.5])
    assert agent_input.ego_statuses[0].in_global_frame is False

    scene = loader.get_scene_from_token("logA-t03")
    assert scene.scene_metadata.initial_token == "logA-t03" and scene.scene_metadata.log_name == "logA"
    assert len(scene.frames) == 14 and scene.frames[3].ego_status.in_global_frame
    np.testing.assert_allclose(scene.frames[3].ego_status.ego_pose, [10.0, 5.0, math.pi / 2], atol=1e-12)
    # the scene's agent input equals the loader's
    np.testing.assert_allclose(scene.get_agent_input().ego_statuses[0].ego_pose, [0.0, 6.0, -math.pi / 2], atol=1e-6)
    # future frame 4 at (12, 5) heading east: 2 m to the right (-y) of the north-facing ego
    future = scene.get_future_trajectory()
    assert future.poses.shape == (10, 3) and future.trajectory_sampling.interval_length == 0.5
    np.testing.assert_allclose(future.poses[0], [0.0, -2.0, -math.pi / 2], atol=1e-9)
    assert scene.get_history_trajectory().poses.shape == (4, 3)
    assert scene.frames[0].annotations.track_tokens == ["trk1"]


def test_lazy_sensors(dataset):
    _, logs, blobs, frames = dataset
    # no image exists yet: loading without sensors must not touch sensor_blobs
    loader = SceneLoader(logs, blobs, SceneFilter(4, 10, 1))
    assert loader.get_agent_input_from_token("logA-t03").cameras[0].cam_f0.image is None
    for idx in (2, 3):
        _write_jpeg(blobs / frames[idx]["cams"]["CAM_F0"]["data_path"], 40 * idx)
    config = SensorConfig.build_no_sensors()
    config.cam_f0 = [2, 3]
    loader = SceneLoader(logs, blobs, SceneFilter(4, 10, 1), sensor_config=config)
    agent_input = loader.get_agent_input_from_token("logA-t03")
    assert agent_input.cameras[0].cam_f0.image is None and agent_input.cameras[1].cam_f0.image is None
    image = agent_input.cameras[3].cam_f0.image
    assert image.shape == (*IMAGE_HW, 3) and image.dtype == np.uint8
    assert abs(int(image.mean()) - 120) <= 2 and abs(int(agent_input.cameras[2].cam_f0.image.mean()) - 80) <= 2
    assert agent_input.cameras[3].cam_l0.image is None and agent_input.lidars[3].lidar_pc is None
    assert agent_input.cameras[3].cam_f0.camera_path == frames[3]["cams"]["CAM_F0"]["data_path"]
    assert config.get_sensors_at_iteration(3) == ["cam_f0"]
    assert SensorConfig.build_all_sensors().get_sensors_at_iteration(0)[-1] == "lidar_pc"


def test_corrupt_or_missing_jpeg_names_token_and_file(dataset):
    _, logs, blobs, frames = dataset
    bad = blobs / frames[3]["cams"]["CAM_F0"]["data_path"]
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    config = SensorConfig.build_no_sensors()
    config.cam_f0 = [3]
    loader = SceneLoader(logs, blobs, SceneFilter(4, 10, 1), sensor_config=config)
    with pytest.raises(SceneLoadError) as info:
        loader.get_agent_input_from_token("logA-t03")
    assert info.value.token == "logA-t03" and info.value.file == bad and str(bad) in str(info.value)
    config.cam_f0 = [2]
    with pytest.raises(SceneLoadError, match="not found") as info:
        loader.get_scene_from_token("logA-t03")
    assert info.value.token == "logA-t02"


def test_missing_dir_and_corrupt_pickle(dataset, tmp_path):
    _, logs, blobs, _ = dataset
    missing = tmp_path / "nowhere" / "navsim_logs" / "test"
    with pytest.raises(FileNotFoundError) as info:
        SceneLoader(missing, blobs, SceneFilter())
    assert "OPENSCENE_DATA_ROOT" in str(info.value) and str(missing) in str(info.value)

    corrupt = logs / "logC.pkl"
    corrupt.write_bytes((logs / "logA.pkl").read_bytes()[:300])  # a truncated download
    with pytest.raises(SceneLoadError) as info:
        SceneLoader(logs, blobs, SceneFilter(4, 10, 1))
    assert info.value.file == corrupt
    with pytest.warns(UserWarning, match="logC"):
        loader = SceneLoader(logs, blobs, SceneFilter(4, 10, 1), on_corrupt_log="skip")
    assert loader.tokens == ["logA-t03", "logA-t05"] and [e.file for e in loader.load_errors] == [corrupt]


def test_quaternion_yaw_and_trajectory_sampling():
    yaws = np.array([0.0, 0.3, -2.0, math.pi - 1e-3])
    quats = np.stack([_quat_from_yaw(y) for y in yaws]) * 3.0  # unnormalised on purpose
    np.testing.assert_allclose(quaternion_yaw(quats), yaws, atol=1e-12)
    sampling = TrajectorySampling(time_horizon=4, interval_length=0.5)
    assert sampling.num_poses == 8
    assert TrajectorySampling(num_poses=40, interval_length=0.1).time_horizon == pytest.approx(4.0)
    assert Trajectory(np.zeros((8, 3))).trajectory_sampling == sampling
    with pytest.raises(ValueError):
        Trajectory(np.zeros((7, 3)))
    with pytest.raises(ValueError):
        TrajectorySampling(time_horizon=4, interval_length=0.3)


def test_validate_frame_schema(dataset):
    _, _, _, frames = dataset
    assert validate_frame(frames[3]) == []
    broken = dict(frames[3])
    del broken["can_bus"]
    broken["driving_command"] = np.array([1, 1, 0, 0])
    broken["ego2global_translation"] = np.array([11.0, 5.0, 0.0])  # no longer matches ego2global
    broken["anns"] = {**broken["anns"], "gt_names": np.array(["vehicle", "ufo"])}
    problems = " | ".join(validate_frame(broken))
    assert "can_bus" in problems and "one-hot" in problems
    assert "ego2global translation does not match" in problems
    assert "lengths differ" in problems and "ufo" in problems
    private = {k: v for k, v in frames[3].items() if k != "anns"}
    assert validate_frame(private, require_annotations=False) == []
    assert "anns" in validate_frame(private)[0]


def test_conformance_navsim_dev_logs():
    root = conformance_path("navsim_dev")
    if not (root / "navsim_logs" / "navsim_dev").is_dir():
        pytest.skip(f"conformance set navsim_dev not found at {root}")
    tokens = json.loads((root / "scene_tokens.json").read_text())
    scene_filter = SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1, has_route=True,
                               tokens=tokens)
    loader = SceneLoader(root / "navsim_logs" / "navsim_dev", root / "sensor_blobs" / "navsim_dev", scene_filter)
    assert sorted(loader.tokens) == sorted(tokens) and len(tokens) == 25
    # every frame of the official-format logs passes the schema check
    for log_path in sorted((root / "navsim_logs" / "navsim_dev").glob("*.pkl")):
        for frame in load_log(log_path):
            assert validate_frame(frame) == [], (log_path.name, frame["token"])
    # the "human" trajectories of the set are the logged future poses in the current ego frame
    meta = json.loads((root / "trajectories_meta.json").read_text())
    trajectories = json.loads((root / "trajectories.json").read_text())
    human = [token for token, entry in meta.items() if entry["kind"] == "human"]
    assert human
    for token in human:
        scene = loader.get_scene_from_token(token)
        assert scene.scene_metadata.log_name == meta[token]["log"]
        np.testing.assert_allclose(scene.get_future_trajectory(8).poses, trajectories[token], atol=1e-5)


def test_lidar_pcd_binary_read(dataset):
    _, logs, blobs, frames = dataset
    points = np.array([[1.0, 2.0, 3.0, 0.5, 7.0, 1.0], [-4.0, 5.5, 0.25, 0.75, 3.0, 2.0]], dtype=np.float32)
    header = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity ring lidar_id\nSIZE 4 4 4 4 4 4\nTYPE F F F F F F\n"
        "COUNT 1 1 1 1 1 1\nWIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA binary\n"
    )
    path = blobs / frames[3]["lidar_path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode("ascii") + points.tobytes())
    config = SensorConfig.build_no_sensors()
    config.lidar_pc = [3]
    agent_input = SceneLoader(logs, blobs, SceneFilter(4, 10, 1), sensor_config=config).get_agent_input_from_token(
        "logA-t03"
    )
    np.testing.assert_array_equal(agent_input.lidars[3].lidar_pc, points.T)
    assert agent_input.lidars[2].lidar_pc is None
