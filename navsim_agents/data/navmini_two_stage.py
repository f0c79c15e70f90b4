"""``navmini_two_stage``: the embedded world's two-stage split, in the official navhard_two_stage layout.

``ensure_navmini_two_stage()`` returns a data root laid out as the devkit's two-stage downloads::

    <root>/navsim_logs/navmini/<log>.pkl                         original logs (21 frames at 2 Hz)
    <root>/navmini/synthetic_scene_pickles/<token>.pkl            synthetic scenes (Scene.save_to_disk layout)
    <root>/sensor_blobs/navmini/...                               original and synthetic camera images
    <root>/config/train_test_split/navmini_two_stage.yaml         split with reactive_all_mapping
    <root>/config/train_test_split/scene_filter/navmini_two_stage.yaml
    <root>/maps/...

Per test log, stage one is the (now, prev) pair at frames 4 / 3 (4 history + 8 future frames). Stage two: for each
perturbation (dl along the heading, dy to the left) of ``PERTURBATIONS``, a synthetic now scene whose current frame
is the logged 4 s endpoint of the now scene (frame 12) and a synthetic prev scene at the endpoint of the prev scene
(frame 11), with the ego shifted by the perturbation in every frame of its window and the logged traffic around
it; their history cameras are rendered by ``rap_backbone.raster`` at the shifted poses (the embedded stand-in for
the released Gaussian-splatting renders). Synthetic tokens have 17 hex digits (navsim tells them by length).
The traffic-light colour of a non-red light is not in the logs (only ``is_red``): it is rendered green.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

from navsim_agents.data import synthetic as world
from navsim_agents.data.dataclasses import quaternion_yaw
from navsim_agents.data.synthetic_scenes import SYNTHETIC_TOKEN_LENGTH

VERSION = 2  # bump whenever the generated content changes
DATA_SPLIT = world.SPLIT
SPLIT_NAME = "navmini_two_stage"
NUM_LOGS = 12
FRAMES_PER_LOG = 21  # stage one at frame 4 (history 1..4, prev at 3), synthetic now at 12 needs frames 9..20
NOW_FRAME = 4
NUM_HISTORY, NUM_FUTURE = 4, 8  # navsim scene_filter/navhard_two_stage.yaml
# (dl, dy) [m] of the synthetic starts around the logged endpoint: on it, behind / ahead, beside
PERTURBATIONS = ((0.0, 0.0), (-1.5, 0.0), (1.5, 0.0), (0.0, 0.6))
MARKER = "navmini_two_stage_complete.json"
STATUS_RED, STATUS_GREEN = 2, 0  # nuPlan traffic-light status codes


def _token(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:SYNTHETIC_TOKEN_LENGTH]


def _shifted_pose(frame: dict, dl: float, dy: float) -> np.ndarray:
    x, y = frame["ego2global_translation"][:2]
    h = float(quaternion_yaw(frame["ego2global_rotation"]))
    return np.array([x + dl * math.cos(h) - dy * math.sin(h), y + dl * math.sin(h) + dy * math.cos(h), h])


def synthetic_scene(log_frames: list[dict], current: int, dl: float, dy: float, original_initial: str) -> dict:
    """The ``Scene.save_to_disk`` dict of the window around `current`, the ego shifted by (dl, dy) in its frame."""
    name = log_frames[current]["log_name"]
    window = log_frames[current - NUM_HISTORY + 1: current + NUM_FUTURE + 1]
    tokens = [_token(name, current, dl, dy, k) for k in range(len(window))]
    frames = []
    for k, f in enumerate(window):
        boxes = np.asarray(f["anns"]["gt_boxes"], dtype=np.float64).copy().reshape(-1, 7)
        boxes[:, :2] -= (dl, dy)  # same heading: the boxes only move by the shift in the ego frame
        cameras = {}
        for cam, entry in f["cams"].items():
            if k < NUM_HISTORY:
                cameras[cam.lower()] = {"data_path": f"{tokens[NUM_HISTORY - 1]}/{cam}/{tokens[k]}.jpg",
                                        "sensor2lidar_rotation": entry["sensor2lidar_rotation"],
                                        "sensor2lidar_translation": entry["sensor2lidar_translation"],
                                        "cam_intrinsic": entry["cam_intrinsic"], "distortion": entry["distortion"]}
            else:
                cameras[cam.lower()] = {}
        dyn = np.asarray(f["ego_dynamic_state"], dtype=np.float32)
        frames.append({
            "token": tokens[k], "timestamp": int(f["timestamp"]), "roadblock_ids": list(f["roadblock_ids"]),
            "traffic_lights": list(f["traffic_lights"]),
            "annotations": {"boxes": boxes, "names": np.asarray(f["anns"]["gt_names"]),
                            "velocity_3d": np.asarray(f["anns"]["gt_velocity_3d"]),
                            "instance_tokens": list(f["anns"]["instance_tokens"]),
                            "track_tokens": list(f["anns"]["track_tokens"])},
            "ego_status": {"ego_pose": _shifted_pose(f, dl, dy), "ego_velocity": dyn[:2], "ego_acceleration": dyn[2:],
                           "driving_command": np.asarray(f["driving_command"]), "in_global_frame": True},
            "lidar_path": None, "camera_dict": cameras,
        })
    initial = tokens[NUM_HISTORY - 1]
    metadata = {"log_name": name, "scene_token": initial, "map_name": log_frames[current]["map_location"],
                "initial_token": initial, "num_history_frames": NUM_HISTORY, "num_future_frames": NUM_FUTURE,
                "corresponding_original_scene": log_frames[current]["token"],
                "corresponding_original_initial_token": original_initial}
    return {"scene_metadata": metadata, "frames": frames, "extended_traffic_light_data": None,
            "extended_detections_tracks": None}


def _render(scene: dict, log_frames: list[dict], current: int, town, light_xy, rig, blobs: Path) -> None:
    """History cameras of a synthetic scene, rendered at the shifted poses with the logged traffic."""
    window = log_frames[current - NUM_HISTORY + 1: current + 1]
    for frame, original in zip(scene["frames"][:NUM_HISTORY], window, strict=True):
        x, y, h = frame["ego_status"]["ego_pose"]
        boxes = frame["annotations"]["boxes"].copy()
        c, s = math.cos(h), math.sin(h)
        boxes[:, :2] = np.column_stack([x + c * boxes[:, 0] - s * boxes[:, 1], y + s * boxes[:, 0] + c * boxes[:, 1]])
        boxes[:, 6] += h
        lights = np.array([[*light_xy[int(cid)], STATUS_RED if red else STATUS_GREEN]
                           for cid, red in original["traffic_lights"] if int(cid) in light_xy
                           and np.hypot(*(light_xy[int(cid)] - [x, y])) < world.RENDER_RADIUS]).reshape(-1, 3)
        images = world.render_cameras(rig, ego_pose=(x, y, h), map_primitives=town.render_primitives(
            (x, y), world.RENDER_RADIUS), boxes=boxes, box_names=list(frame["annotations"]["names"]),
            traffic_lights=lights)
        for cam in rig:
            target = blobs / frame["camera_dict"][cam.name.lower()]["data_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", images[cam.name][:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, world.JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"navmini_two_stage: JPEG encoding failed for {target}")
            target.write_bytes(buf.tobytes())


def generate_two_stage_world(root, *, num_logs: int = NUM_LOGS, image_size: tuple[int, int] = (1920, 1080),
                             cameras: Sequence[str] = world.RENDERED_CAMERAS, render: bool = True,
                             perturbations=PERTURBATIONS, progress: bool = False) -> Path:
    """Write the two-stage data set under ``root`` (original logs of ``num_logs`` test scenarios, synthetic scenes,
    images, the split yamls) and return ``root``."""
    root = Path(root)
    world.generate_world(root, seed=0, num_train_logs=0, num_test_logs=num_logs, frames_per_log=FRAMES_PER_LOG,
                         image_size=image_size, cameras=cameras, render=render, progress=progress)
    scenes_dir = root / DATA_SPLIT / "synthetic_scene_pickles"
    scenes_dir.mkdir(parents=True, exist_ok=True)
    town = world.build_town() if render else None
    light_xy = world._light_positions(town) if render else None  # noqa: SLF001 - the world's own light layout
    rig = world.default_camera_rig(cameras, image_size)
    tokens, synthetic, mapping, logs = [], [], [], []
    for path in sorted((root / "navsim_logs" / DATA_SPLIT).glob("*.pkl")):
        with open(path, "rb") as fh:
            frames = pickle.load(fh)
        now, prev = frames[NOW_FRAME]["token"], frames[NOW_FRAME - 1]["token"]
        pairs = []
        for dl, dy in perturbations:
            pair = []
            for current, original in ((NOW_FRAME + NUM_FUTURE, now), (NOW_FRAME - 1 + NUM_FUTURE, prev)):
                scene = synthetic_scene(frames, current, dl, dy, original)
                token = scene["scene_metadata"]["initial_token"]
                with open(scenes_dir / f"{token}.pkl", "wb") as fh:
                    pickle.dump(scene, fh, protocol=4)
                if render:
                    _render(scene, frames, current, town, light_xy, rig, root / "sensor_blobs" / DATA_SPLIT)
                pair.append(token)
            pairs.append(pair)
            synthetic += pair
        logs.append(path.stem)
        tokens += [now, prev]
        mapping.append([now, prev, pairs])
        if progress:
            print(f"navmini_two_stage: {path.stem}: {len(pairs)} synthetic pairs", flush=True)
    folder = root / "config" / "train_test_split"
    (folder / "scene_filter").mkdir(parents=True, exist_ok=True)
    # _target_ / _convert_ as the devkit's scene_filter yamls: its Hydra instantiates the filter from them
    scene_filter = {"_target_": "navsim.common.dataclasses.SceneFilter", "_convert_": "all",
                    "num_history_frames": NUM_HISTORY, "num_future_frames": NUM_FUTURE, "frame_interval": 1,
                    "has_route": True, "max_scenes": None, "include_synthetic_scenes": True, "log_names": logs,
                    "tokens": tokens, "reactive_synthetic_initial_tokens": synthetic}
    (folder / "scene_filter" / f"{SPLIT_NAME}.yaml").write_text(yaml.safe_dump(scene_filter, sort_keys=False))
    (folder / f"{SPLIT_NAME}.yaml").write_text(yaml.safe_dump(
        {"defaults": [{"scene_filter": SPLIT_NAME}], "data_split": DATA_SPLIT, "reactive_all_mapping": mapping},
        sort_keys=False))
    return root


def split_yaml(root) -> Path:
    """The devkit split yaml of a generated two-stage root."""
    return Path(root) / "config" / "train_test_split" / f"{SPLIT_NAME}.yaml"


def ensure_navmini_two_stage(root=None, *, progress: bool = True) -> Path:
    """The navmini_two_stage data root, generated on first use under ``$EUPE_DRIVE_CACHE``
    (``synthetic.generate_once``)."""
    base = Path(root) if root is not None else world.default_cache_root()

    def generate(tmp: Path) -> dict:
        generate_two_stage_world(tmp, progress=progress)
        return {"version": VERSION}

    return world.generate_once(base / f"{SPLIT_NAME}-v{VERSION}", MARKER, generate, label="navmini_two_stage",
                               note="a few minutes", progress=progress)
