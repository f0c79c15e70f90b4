"""NAVSIM v2 synthetic (stage-two) scenes on disk, and a scene loader over original + synthetic scenes.

A synthetic scene is one pickle written by the devkit's ``Scene.save_to_disk`` (navsim main 0a380a9,
``navsim/common/dataclasses.py``): ``scene_metadata`` (``SceneMetadata`` fields: ``initial_token``,
``corresponding_original_scene``, ...), ``frames`` (dicts with ``token, timestamp, roadblock_ids, traffic_lights,
annotations, ego_status`` (global pose), ``lidar_path, camera_dict``), ``extended_traffic_light_data`` and
``extended_detections_tracks``. We turn its frames into OpenScene log-frame dicts, so the metric cache, the agent
input and ``Scene`` are built by the same code as for original scenes; images are read relative to the synthetic
sensor folder (``sensor_blobs/<split>`` of the synthetic release).

Selection follows ``navsim/common/dataloader.py::filter_synthetic_scenes``: with ``synthetic_scene_tokens`` only
those ``initial_token`` s (even when unrelated to the loaded original scenes), otherwise every scene whose
``corresponding_original_scene`` is the final frame of a loaded original scene; ``log_names`` filter both ways.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from navsim_agents.data.dataclasses import (
    AgentInput,
    Scene,
    SceneFilter,
    SceneLoadError,
    SensorConfig,
    yaw_quaternion,
)

logger = logging.getLogger(__name__)

__all__ = ["SyntheticScene", "load_synthetic_scene", "filter_synthetic_scenes", "TwoStageSceneLoader",
           "SYNTHETIC_TOKEN_LENGTH"]

# navsim metric_cache_processor.py tells synthetic scenes by `len(scenario.token) == 17` (original tokens: 16 hex)
SYNTHETIC_TOKEN_LENGTH = 17

# Scene.save_to_disk camera field names -> OpenScene `cams` keys
_CAMERA_KEYS = {"cam_f0": "CAM_F0", "cam_l0": "CAM_L0", "cam_l1": "CAM_L1", "cam_l2": "CAM_L2",
                "cam_r0": "CAM_R0", "cam_r1": "CAM_R1", "cam_r2": "CAM_R2", "cam_b0": "CAM_B0"}


def frame_dict_from_scene_frame(frame: Dict[str, Any], metadata: Dict[str, Any]) -> Dict[str, Any]:
    """OpenScene-style log frame dict of one ``Scene.save_to_disk`` frame (global ego pose, local boxes)."""
    status = frame["ego_status"]
    if not status.get("in_global_frame", True):
        raise ValueError(f"synthetic frame {frame['token']}: ego_status must be global (in_global_frame=True)")
    pose = np.asarray(status["ego_pose"], dtype=np.float64)
    anns = frame.get("annotations")
    cams = {}
    for name, entry in (frame.get("camera_dict") or {}).items():
        cams[_CAMERA_KEYS.get(name, name.upper())] = entry
    return {
        "token": frame["token"],
        "timestamp": int(frame["timestamp"]),
        "log_name": metadata["log_name"],
        "scene_token": metadata["scene_token"],
        "map_location": metadata["map_name"],
        "roadblock_ids": list(frame["roadblock_ids"]),
        "traffic_lights": list(frame["traffic_lights"]),
        "ego2global_translation": np.array([pose[0], pose[1], 0.0]),
        "ego2global_rotation": yaw_quaternion(float(pose[2])),
        "ego_dynamic_state": np.concatenate([np.asarray(status["ego_velocity"], dtype=np.float32),
                                             np.asarray(status["ego_acceleration"], dtype=np.float32)]),
        "driving_command": np.asarray(status["driving_command"]),
        "anns": None if anns is None else {
            "gt_boxes": np.asarray(anns["boxes"]), "gt_names": np.asarray(anns["names"]),
            "gt_velocity_3d": np.asarray(anns["velocity_3d"]), "instance_tokens": list(anns["instance_tokens"]),
            "track_tokens": list(anns["track_tokens"]),
        },
        "lidar_path": frame.get("lidar_path"),
        "cams": cams,
    }


@dataclass
class SyntheticScene:
    """A synthetic scene read from disk: its metadata and its frames as OpenScene log-frame dicts."""

    path: Path
    metadata: Dict[str, Any]
    frames: List[Dict[str, Any]]

    @property
    def token(self) -> str:
        return str(self.metadata["initial_token"])


def load_synthetic_scene(path: Union[str, Path]) -> SyntheticScene:
    """Read one synthetic scene pickle.

    :raises SceneLoadError: the file cannot be read or lacks the ``Scene.save_to_disk`` keys.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
        metadata = dict(data["scene_metadata"])
        frames = [frame_dict_from_scene_frame(f, metadata) for f in data["frames"]]
    except Exception as error:  # corrupt bytes fail in many ways
        raise SceneLoadError(f"not a readable synthetic scene pickle ({type(error).__name__}: {error}); "
                             "re-download the synthetic_scene_pickles of the split", file=path) from error
    missing = [k for k in ("initial_token", "log_name", "map_name", "num_history_frames") if k not in metadata]
    if missing:
        raise SceneLoadError(f"scene_metadata lacks {missing}", file=path)
    return SyntheticScene(path, metadata, frames)


def filter_synthetic_scenes(scenes_path: Union[str, Path], scene_filter: SceneFilter,
                            final_frame_tokens: List[str]) -> Dict[str, SyntheticScene]:
    """Synthetic scenes to load, keyed by ``initial_token`` (rules of the module docstring).

    Unreadable pickles are skipped with a warning naming the file.
    """
    scenes_path = Path(scenes_path)
    if not scenes_path.is_dir():
        raise FileNotFoundError(f"synthetic scenes folder not found: {scenes_path}; set split.synthetic_scenes_path "
                                "(default $OPENSCENE_DATA_ROOT/<split>/synthetic_scene_pickles)")
    wanted = set(scene_filter.synthetic_scene_tokens) if scene_filter.synthetic_scene_tokens is not None else None
    logs = set(scene_filter.log_names) if scene_filter.log_names is not None else None
    finals = set(final_frame_tokens)
    out: Dict[str, SyntheticScene] = {}
    for path in sorted(p for p in scenes_path.iterdir() if p.suffix == ".pkl"):
        try:
            scene = load_synthetic_scene(path)
        except SceneLoadError as error:
            logger.warning("skipping synthetic scene: %s", error)
            continue
        if wanted is not None and scene.token not in wanted:
            continue
        if logs is not None and scene.metadata["log_name"] not in logs:
            continue
        if wanted is None and scene.metadata.get("corresponding_original_scene") not in finals:
            continue
        out[scene.token] = scene
    return out


class TwoStageSceneLoader:
    """Original scenes (a ``SceneLoader``) plus the synthetic scenes that belong to them (navsim v2 loader)."""

    def __init__(self, original, synthetic_scenes_path: Optional[Union[str, Path]],
                 synthetic_sensor_path: Optional[Union[str, Path]] = None):
        """
        :param original: a ``SceneLoader`` of the split's logs (its scene filter decides the synthetic selection).
        :param synthetic_scenes_path: folder of synthetic scene pickles (None: no synthetic scenes).
        :param synthetic_sensor_path: folder the synthetic ``camera_dict`` paths are relative to.
        """
        self.original = original
        self._scene_filter: SceneFilter = original.scene_filter
        self._synthetic_sensor_path = Path(synthetic_sensor_path) if synthetic_sensor_path else None
        if self._scene_filter.include_synthetic_scenes and synthetic_scenes_path is not None:
            finals = list(getattr(original, "_final_frame_tokens", []))
            self.synthetic_scenes = filter_synthetic_scenes(synthetic_scenes_path, self._scene_filter, finals)
        else:
            self.synthetic_scenes = {}
        listed = self._scene_filter.reactive_synthetic_initial_tokens or []
        missing = [t for t in listed if t not in self.synthetic_scenes]
        if missing:  # the devkit skips them silently; say so, they leave their two-stage entries incomplete
            logger.warning("%d reactive synthetic scenes of the split are not loaded (pickle missing or unreadable, "
                           "or their original scene is not among the loaded ones), e.g. %s", len(missing),
                           missing[:3])

    @property
    def sensor_config(self) -> SensorConfig:
        return self.original.sensor_config

    @property
    def scene_filter(self) -> SceneFilter:
        return self._scene_filter

    @property
    def tokens_stage_one(self) -> List[str]:
        return self.original.tokens

    @property
    def tokens(self) -> List[str]:
        return self.original.tokens + list(self.synthetic_scenes)

    @property
    def reactive_tokens_stage_two(self) -> List[str]:
        """Loaded synthetic scenes listed in ``reactive_synthetic_initial_tokens`` (in load order)."""
        listed = self._scene_filter.reactive_synthetic_initial_tokens
        if listed is None:
            return []
        listed = set(listed)
        return [t for t in self.synthetic_scenes if t in listed]

    def __contains__(self, token: object) -> bool:
        return token in self.original or token in self.synthetic_scenes

    def is_synthetic(self, token: str) -> bool:
        return token in self.synthetic_scenes

    def scene_frames(self, token: str) -> List[Dict[str, Any]]:
        """The frame dicts of a scene window (history + future), original or synthetic."""
        if token in self.synthetic_scenes:
            return self.synthetic_scenes[token].frames
        return self.original.scene_frames_dicts[token]

    def num_history_frames(self, token: str) -> int:
        if token in self.synthetic_scenes:
            return int(self.synthetic_scenes[token].metadata["num_history_frames"])
        return self._scene_filter.num_history_frames

    def get_agent_input_from_token(self, token: str) -> AgentInput:
        if token not in self.synthetic_scenes:
            return self.original.get_agent_input_from_token(token)
        self._check_images(token)
        return AgentInput.from_scene_dict_list(self.scene_frames(token), self._synthetic_sensor_path,
                                               num_history_frames=self.num_history_frames(token),
                                               sensor_config=self.sensor_config)

    def get_scene_from_token(self, token: str) -> Scene:
        if token not in self.synthetic_scenes:
            return self.original.get_scene_from_token(token)
        meta = self.synthetic_scenes[token].metadata
        self._check_images(token)
        scene = Scene.from_scene_dict_list(self.scene_frames(token), self._synthetic_sensor_path,
                                           num_history_frames=self.num_history_frames(token),
                                           num_future_frames=int(meta["num_future_frames"]),
                                           sensor_config=self.sensor_config, map_root=self.original._map_root,
                                           map_version=self.original._map_version)
        scene.scene_metadata.scene_token = meta["scene_token"]
        scene.scene_metadata.corresponding_original_scene = meta.get("corresponding_original_scene")
        scene.scene_metadata.corresponding_original_initial_token = meta.get("corresponding_original_initial_token")
        return scene

    def _check_images(self, token: str) -> None:
        """An image agent on a synthetic scene without its renders gets an error naming the scene and folder."""
        frames = self.scene_frames(token)[: self.num_history_frames(token)]
        for idx, frame in enumerate(frames):
            wanted = self.sensor_config.get_sensors_at_iteration(idx)
            for key, entry in frame["cams"].items():
                if key.lower() in wanted and not entry:
                    raise SceneLoadError(f"synthetic scene has no {key} image at history frame {idx}; the agent "
                                         "needs camera images: download the synthetic sensor blobs of the split "
                                         "(split.synthetic_sensor_path)", token=token)
