"""NAVSIM's ``SceneLoader``: scene windows from OpenScene log pickles, as the devkit cuts them.

Reads ``navsim_logs/<split>/*.pkl`` (each a time-ordered list of 2 Hz frame dicts) and cuts every log into
windows of ``num_history_frames + num_future_frames`` frames starting every ``frame_interval`` frames
(``navsim/common/dataloader.py::filter_scenes``): windows shorter than that are dropped, so are windows whose
current frame (index ``num_history_frames - 1``) has no ``roadblock_ids`` when ``has_route``; the scene token
is the token of the current frame; ``log_names`` / ``tokens`` / ``max_scenes`` filter as in the devkit. Logs
are visited in sorted file-name order so that ``max_scenes`` picks the same scenes on every machine.

A missing directory raises ``FileNotFoundError`` naming ``OPENSCENE_DATA_ROOT`` and the path tried; a corrupt
pickle or sensor file raises :class:`SceneLoadError` with the token / file at fault (or, with
``on_corrupt_log="skip"``, the log is recorded in ``load_errors`` and skipped with a warning).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from navsim_agents.data.dataclasses import (
    AgentInput,
    Scene,
    SceneFilter,
    SceneLoadError,
    SensorConfig,
)
from rap_backbone.nuplan_rig import OPENSCENE_CAMERA_KEYS

__all__ = ["SceneLoader", "SceneLoadError", "filter_scenes", "load_log", "validate_frame", "LOG_FRAME_KEYS"]

FrameList = List[Dict[str, Any]]


def load_log(log_path: Path) -> FrameList:
    """Read one log pickle (a list of frame dicts).

    :raises SceneLoadError: when the file cannot be unpickled or is not a list of frame dicts.
    """
    try:
        with open(log_path, "rb") as handle:
            frames = pickle.load(handle)
    except Exception as error:  # corrupt bytes make the unpickler fail in many ways (EOF, MemoryError, KeyError...)
        raise SceneLoadError(
            f"corrupt log pickle ({type(error).__name__}: {error}); re-download or regenerate it", file=log_path
        ) from error
    if not isinstance(frames, list) or any(not isinstance(frame, dict) for frame in frames):
        raise SceneLoadError("log pickle is not a list of frame dicts", file=log_path)
    return frames


# OpenScene log frame format (navsim docs / openscene): keys of every frame dict.
LOG_FRAME_KEYS = (
    "token", "frame_idx", "timestamp", "log_name", "log_token", "scene_name", "scene_token", "map_location",
    "vehicle_name", "roadblock_ids", "can_bus", "lidar_path", "lidar2ego_translation", "lidar2ego_rotation",
    "ego2global_translation", "ego2global_rotation", "ego2global", "lidar2ego", "lidar2global",
    "ego_dynamic_state", "traffic_lights", "driving_command", "sample_prev", "sample_next", "cams", "anns",
)
CAMERA_ENTRY_SHAPES = {"sensor2lidar_rotation": (3, 3), "sensor2lidar_translation": (3,), "cam_intrinsic": (3, 3)}
ANNOTATION_KEYS = ("gt_boxes", "gt_names", "gt_velocity_3d", "instance_tokens", "track_tokens")
# OpenScene box classes
ANNOTATION_NAMES = {"vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier", "czone_sign", "generic_object"}
_FIXED_SHAPES = {
    "can_bus": (18,), "lidar2ego_translation": (3,), "lidar2ego_rotation": (4,), "ego2global_translation": (3,),
    "ego2global_rotation": (4,), "ego2global": (4, 4), "lidar2ego": (4, 4), "lidar2global": (4, 4),
    "ego_dynamic_state": (4,), "driving_command": (4,),
}


def _rotation_matrix_wxyz(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def validate_frame(frame: Dict[str, Any], *, require_annotations: bool = True, atol: float = 1e-5) -> List[str]:
    """Check one log frame dict against the OpenScene format.

    Checks the keys, array shapes, one-hot driving command, camera entries, annotation lengths / classes, and
    that ``ego2global`` / ``lidar2ego`` match their translation + quaternion and
    ``lidar2global = ego2global @ lidar2ego``.

    :param frame: a frame dict of a ``navsim_logs`` pickle.
    :param require_annotations: whether ``anns`` must be present (absent on private test logs).
    :param atol: tolerance of the transform consistency checks.
    :return: list of problems (empty when the frame is valid).
    """
    problems: List[str] = []
    required = [k for k in LOG_FRAME_KEYS if require_annotations or k != "anns"]
    missing = [key for key in required if key not in frame]
    if missing:
        problems.append(f"missing keys {missing}")
    for key, shape in _FIXED_SHAPES.items():
        if key in frame and np.shape(frame[key]) != shape:
            problems.append(f"{key} has shape {np.shape(frame[key])}, expected {shape}")
    if np.shape(frame.get("driving_command", ())) == (4,):
        command = np.asarray(frame["driving_command"])
        if not (np.isin(command, (0, 1)).all() and command.sum() == 1):
            problems.append(f"driving_command {command.tolist()} is not one-hot")
    if "timestamp" in frame and not isinstance(frame["timestamp"], (int, np.integer)):
        problems.append("timestamp must be an int (microseconds)")
    if "roadblock_ids" in frame and not all(isinstance(r, str) for r in frame["roadblock_ids"]):
        problems.append("roadblock_ids must be strings")
    for entry in frame.get("traffic_lights", []) or []:
        if len(entry) != 2:
            problems.append(f"traffic_lights entry {entry!r} is not (lane_connector_id, is_red)")
            break
    if all(np.shape(frame.get(k, ())) == s for k, s in _FIXED_SHAPES.items() if k in ("ego2global", "lidar2ego",
                                                                                      "lidar2global")):
        for name, rotation, translation in (
            ("ego2global", "ego2global_rotation", "ego2global_translation"),
            ("lidar2ego", "lidar2ego_rotation", "lidar2ego_translation"),
        ):
            if np.shape(frame.get(rotation, ())) != (4,) or np.shape(frame.get(translation, ())) != (3,):
                continue
            matrix = np.asarray(frame[name], dtype=np.float64)
            if not np.allclose(matrix[:3, :3], _rotation_matrix_wxyz(frame[rotation]), atol=atol):
                problems.append(f"{name} rotation does not match {rotation}")
            if not np.allclose(matrix[:3, 3], frame[translation], atol=atol):
                problems.append(f"{name} translation does not match {translation}")
        composed = np.asarray(frame["ego2global"], dtype=np.float64) @ np.asarray(frame["lidar2ego"], dtype=np.float64)
        if not np.allclose(composed, frame["lidar2global"], atol=max(atol, 1e-6 * np.abs(composed).max())):
            problems.append("lidar2global != ego2global @ lidar2ego")
    cams = frame.get("cams", {})
    if isinstance(cams, dict):
        for camera in OPENSCENE_CAMERA_KEYS:
            entry = cams.get(camera)
            if not entry:
                problems.append(f"cams.{camera} missing")
                continue
            if "data_path" not in entry or "distortion" not in entry:
                problems.append(f"cams.{camera} lacks data_path / distortion")
            for key, shape in CAMERA_ENTRY_SHAPES.items():
                if np.shape(entry.get(key, ())) != shape:
                    problems.append(f"cams.{camera}.{key} has shape {np.shape(entry.get(key, ()))}, expected {shape}")
    anns = frame.get("anns")
    if isinstance(anns, dict):
        absent = [key for key in ANNOTATION_KEYS if key not in anns]
        if absent:
            problems.append(f"anns lacks {absent}")
        else:
            boxes_shape = np.shape(anns["gt_boxes"])
            if boxes_shape != (0,) and not (len(boxes_shape) == 2 and boxes_shape[1] == 7):
                problems.append(f"anns.gt_boxes has shape {boxes_shape}, expected (N, 7)")
            lengths = {key: len(anns[key]) for key in ANNOTATION_KEYS}
            if len(set(lengths.values())) != 1:
                problems.append(f"anns lengths differ: {lengths}")
            unknown = set(map(str, anns["gt_names"])) - ANNOTATION_NAMES
            if unknown:
                problems.append(f"anns.gt_names has unknown classes {sorted(unknown)}")
    return problems


def _split_list(frames: FrameList, num_frames: int, frame_interval: int) -> List[FrameList]:
    """Windows of ``num_frames`` starting every ``frame_interval`` frames (the tail ones may be short)."""
    return [frames[i : i + num_frames] for i in range(0, len(frames), frame_interval)]


def filter_scenes(
    data_path: Path,
    scene_filter: SceneFilter,
    *,
    on_corrupt_log: str = "raise",
    load_errors: Optional[List[SceneLoadError]] = None,
) -> Tuple[Dict[str, FrameList], List[str]]:
    """Cut the logs under ``data_path`` into scene windows that pass ``scene_filter``.

    :param data_path: ``navsim_logs/<split>`` directory.
    :param scene_filter: windowing and filters.
    :param on_corrupt_log: ``"raise"`` (default) or ``"skip"`` (record in ``load_errors`` and warn).
    :param load_errors: list that collects the errors of skipped logs.
    :return: ({token: window frames}, final frame tokens of the windows) in log then time order.
    """
    if on_corrupt_log not in ("raise", "skip"):
        raise ValueError(f"on_corrupt_log must be 'raise' or 'skip', got {on_corrupt_log!r}")
    log_files = sorted(path for path in Path(data_path).iterdir() if path.suffix == ".pkl")
    if scene_filter.log_names is not None:
        wanted = set(scene_filter.log_names)
        log_files = [path for path in log_files if path.stem in wanted]
    tokens = set(scene_filter.tokens) if scene_filter.tokens is not None else None
    num_frames = scene_filter.num_frames
    current_idx = scene_filter.num_history_frames - 1

    scenes: Dict[str, FrameList] = {}
    final_frame_tokens: List[str] = []
    for log_path in log_files:
        try:
            frames = load_log(log_path)
        except SceneLoadError as error:
            if on_corrupt_log == "raise":
                raise
            warnings.warn(f"skipping log: {error}", stacklevel=2)
            if load_errors is not None:
                load_errors.append(error)
            continue
        for window in _split_list(frames, num_frames, scene_filter.frame_interval):
            if len(window) < num_frames:
                continue
            if scene_filter.has_route and len(window[current_idx]["roadblock_ids"]) == 0:
                continue
            token = window[current_idx]["token"]
            if tokens is not None and token not in tokens:
                continue
            scenes[token] = window
            final_frame_tokens.append(window[num_frames - 1]["token"])
            if scene_filter.max_scenes is not None and len(scenes) >= scene_filter.max_scenes:
                return scenes, final_frame_tokens
    return scenes, final_frame_tokens


class SceneLoader:
    """Scene windows of one split: tokens, scenes and agent inputs as in the NAVSIM devkit."""

    def __init__(
        self,
        data_path: Union[str, Path],
        sensor_blobs_path: Optional[Union[str, Path]] = None,
        scene_filter: Optional[SceneFilter] = None,
        sensor_config: Optional[SensorConfig] = None,
        *,
        original_sensor_path: Optional[Union[str, Path]] = None,
        map_root: Optional[Union[str, Path]] = None,
        map_version: Optional[str] = None,
        on_corrupt_log: str = "raise",
    ):
        """
        :param data_path: ``$OPENSCENE_DATA_ROOT/navsim_logs/<split>``.
        :param sensor_blobs_path: ``$OPENSCENE_DATA_ROOT/sensor_blobs/<split>`` (navsim v1 name);
            ``original_sensor_path`` is the navsim v2 name of the same thing.
        :param scene_filter: windowing and filters (default: ``SceneFilter()``, the navtest windowing).
        :param sensor_config: sensors to read (default: none).
        :param map_root: nuPlan maps root for ``Scene.map_api`` (default ``$NUPLAN_MAPS_ROOT``).
        :param map_version: map version (default ``$NUPLAN_MAP_VERSION`` or ``nuplan-maps-v1.0``).
        :param on_corrupt_log: ``"raise"`` or ``"skip"`` a log pickle that cannot be read (see ``load_errors``).
        :raises FileNotFoundError: when ``data_path`` is not a directory (names ``OPENSCENE_DATA_ROOT``).
        """
        data_path = Path(data_path)
        if not data_path.is_dir():
            raise FileNotFoundError(
                f"NAVSIM log directory not found: {data_path}. Set OPENSCENE_DATA_ROOT so that "
                "$OPENSCENE_DATA_ROOT/navsim_logs/<split> holds the log pickles, or pick split=navmini "
                "for the embedded synthetic data"
            )
        if sensor_blobs_path is None:
            sensor_blobs_path = original_sensor_path
        self._data_path = data_path
        self._sensor_blobs_path = Path(sensor_blobs_path) if sensor_blobs_path is not None else None
        self._scene_filter = scene_filter if scene_filter is not None else SceneFilter()
        self._sensor_config = sensor_config if sensor_config is not None else SensorConfig.build_no_sensors()
        self._map_root = map_root
        self._map_version = map_version
        self.load_errors: List[SceneLoadError] = []
        self.scene_frames_dicts, self._final_frame_tokens = filter_scenes(
            data_path, self._scene_filter, on_corrupt_log=on_corrupt_log, load_errors=self.load_errors
        )

    @property
    def scene_filter(self) -> SceneFilter:
        """The filter the scenes were selected with."""
        return self._scene_filter

    @property
    def sensor_config(self) -> SensorConfig:
        """The sensors read for each scene."""
        return self._sensor_config

    @sensor_config.setter
    def sensor_config(self, sensor_config: SensorConfig) -> None:
        self._sensor_config = sensor_config

    @property
    def tokens(self) -> List[str]:
        """Scene tokens (the current-frame tokens), in log then time order."""
        return list(self.scene_frames_dicts.keys())

    # navsim v2 name for the original (non-synthetic) scenes
    tokens_stage_one = tokens

    def __len__(self) -> int:
        return len(self.scene_frames_dicts)

    def __getitem__(self, idx: int) -> str:
        return self.tokens[idx]

    def __contains__(self, token: object) -> bool:
        return token in self.scene_frames_dicts

    def _frames(self, token: str) -> FrameList:
        try:
            return self.scene_frames_dicts[token]
        except KeyError:
            raise KeyError(
                f"token {token!r} is not among the {len(self)} scenes of {self._data_path} with this scene filter"
            ) from None

    def get_scene_from_token(self, token: str) -> Scene:
        """The scene of ``token`` (global poses, map opened on first use, sensors per ``sensor_config``).

        :raises SceneLoadError: a requested sensor file is missing or corrupt.
        """
        return Scene.from_scene_dict_list(
            self._frames(token),
            self._sensor_blobs_path,
            num_history_frames=self._scene_filter.num_history_frames,
            num_future_frames=self._scene_filter.num_future_frames,
            sensor_config=self._sensor_config,
            map_root=self._map_root,
            map_version=self._map_version,
        )

    def get_agent_input_from_token(self, token: str) -> AgentInput:
        """The agent input of ``token`` (history ego statuses in the current ego frame, history sensors).

        :raises SceneLoadError: a requested sensor file is missing or corrupt.
        """
        return AgentInput.from_scene_dict_list(
            self._frames(token),
            self._sensor_blobs_path,
            num_history_frames=self._scene_filter.num_history_frames,
            sensor_config=self._sensor_config,
        )

    def get_tokens_list_per_log(self) -> Dict[str, List[str]]:
        """{log_name: [tokens]} of the selected scenes."""
        tokens_per_log: Dict[str, List[str]] = {}
        for token, frames in self.scene_frames_dicts.items():
            tokens_per_log.setdefault(frames[0]["log_name"], []).append(token)
        return tokens_per_log
