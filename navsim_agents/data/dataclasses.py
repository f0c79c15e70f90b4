"""NAVSIM's data classes with the devkit's names, fields and methods.

Mirrors ``navsim/common/dataclasses.py`` of the NAVSIM devkit (and nuPlan's ``TrajectorySampling``) so that
NAVSIM users find the same objects: ``EgoStatus``, ``Camera``/``Cameras``, ``Lidar``, ``AgentInput``,
``Annotations``, ``Frame``, ``Scene``, ``SceneMetadata``, ``SceneFilter``, ``SensorConfig``,
``TrajectorySampling`` and ``Trajectory``.

Conventions (the devkit's): the ego pose is ``(x, y, heading)`` from ``ego2global_translation`` and the yaw of
the ``ego2global_rotation`` quaternion (w, x, y, z); scene frames hold global poses, agent inputs and
trajectories are expressed in the ego rear-axle frame of the current frame (index ``num_history_frames - 1``);
frames are 2 Hz. Sensors are read lazily: an image or point cloud is read from ``sensor_blobs`` only when the
``SensorConfig`` asks for that sensor at that frame. A missing or unreadable sensor file raises
``SceneLoadError`` naming the token and file, never a zero-filled array.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from rap_backbone.nuplan_rig import CAMERA_NAMES

# navsim/common/dataclasses.py: the 2 Hz spacing of NAVSIM frames and trajectories.
NAVSIM_INTERVAL_LENGTH: float = 0.5
# nuplan/planning/simulation/trajectory/trajectory_sampling.py: tolerance of the sampling consistency checks.
_PROXIMITY_ABS_TOL = 1e-10

# Camera identifiers in the order of the devkit's ``Cameras`` fields; log keys are their upper-case form.
SENSOR_NAMES: Tuple[str, ...] = CAMERA_NAMES + ("lidar_pc",)


class SceneLoadError(RuntimeError):
    """A log, image or point cloud could not be read.

    Attributes ``token`` (scene or frame token, or None when the whole log is at fault) and ``file`` (the path at
    fault) let batch jobs record the failed item and go on.
    """

    def __init__(self, message: str, *, token: Optional[str] = None, file: Optional[Union[str, Path]] = None):
        self.token = token
        self.file = None if file is None else Path(file)
        where = []
        if token is not None:
            where.append(f"token {token}")
        if file is not None:
            where.append(f"file {file}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


# ----------------------------------------------------------------------------------------------------------------
# geometry helpers (vectorised; same results as nuPlan's StateSE2 / pyquaternion based code)


def normalize_angle(angle: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Wrap angles to [-pi, pi]."""
    angle = np.asarray(angle, dtype=np.float64)
    return np.arctan2(np.sin(angle), np.cos(angle))


def quaternion_yaw(quaternion_wxyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Yaw of (..., 4) quaternions given as (w, x, y, z), as ``pyquaternion.Quaternion.yaw_pitch_roll[0]``.

    :param quaternion_wxyz: array (..., 4); need not be normalised.
    :return: array (...) of yaw angles in radians.
    """
    q = np.asarray(quaternion_wxyz, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    # pyquaternion's yaw_pitch_roll (intrinsic z-y'-x'' Tait-Bryan angles)
    return np.arctan2(2.0 * (w * z - x * y), 1.0 - 2.0 * (y * y + z * z))


def yaw_quaternion(yaw: float) -> npt.NDArray[np.float64]:
    """The (w, x, y, z) quaternion of a rotation by ``yaw`` about z (flat ground); ``quaternion_yaw`` inverts it."""
    return np.array([math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0)])


def convert_absolute_to_relative_se2_array(
    origin: npt.ArrayLike, state_se2_array: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Express global SE2 poses (..., 3) in the frame of ``origin`` (x, y, heading); headings wrapped to [-pi, pi]."""
    origin = np.asarray(origin, dtype=np.float64)
    poses = np.asarray(state_se2_array, dtype=np.float64)
    cos_h, sin_h = math.cos(origin[2]), math.sin(origin[2])
    dx = poses[..., 0] - origin[0]
    dy = poses[..., 1] - origin[1]
    out = np.empty(poses.shape, dtype=np.float64)
    out[..., 0] = cos_h * dx + sin_h * dy
    out[..., 1] = -sin_h * dx + cos_h * dy
    out[..., 2] = normalize_angle(poses[..., 2] - origin[2])
    return out


def convert_relative_to_absolute_se2_array(
    origin: npt.ArrayLike, state_se2_array: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Inverse of :func:`convert_absolute_to_relative_se2_array`: local poses (..., 3) -> global poses."""
    origin = np.asarray(origin, dtype=np.float64)
    poses = np.asarray(state_se2_array, dtype=np.float64)
    cos_h, sin_h = math.cos(origin[2]), math.sin(origin[2])
    out = np.empty(poses.shape, dtype=np.float64)
    out[..., 0] = origin[0] + cos_h * poses[..., 0] - sin_h * poses[..., 1]
    out[..., 1] = origin[1] + sin_h * poses[..., 0] + cos_h * poses[..., 1]
    out[..., 2] = normalize_angle(poses[..., 2] + origin[2])
    return out


def global_ego_pose_from_frame(frame_dict: Dict[str, Any]) -> npt.NDArray[np.float64]:
    """(x, y, heading) of a log frame dict: ego2global translation and the yaw of its quaternion (w, x, y, z)."""
    translation = frame_dict["ego2global_translation"]
    yaw = quaternion_yaw(frame_dict["ego2global_rotation"])
    return np.array([translation[0], translation[1], float(yaw)], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# sensors


def _read_image(path: Path, token: Optional[str]) -> npt.NDArray[np.uint8]:
    """Read an RGB image (H, W, 3) uint8 as the devkit does (``np.array(PIL.Image.open(path))``)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SceneLoadError(
            "camera image not found; check OPENSCENE_DATA_ROOT / sensor_blobs_path", token=token, file=path
        )
    try:
        with Image.open(path) as image:
            image.load()  # decodes fully: a truncated JPEG raises here instead of giving grey rows
            return np.array(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise SceneLoadError(f"corrupt camera image: {error}", token=token, file=path) from error


@dataclass
class Camera:
    """One camera: image (H, W, 3) uint8 RGB and its calibration; all None when the camera was not loaded."""

    image: Optional[npt.NDArray[np.uint8]] = None

    sensor2lidar_rotation: Optional[npt.NDArray[np.float32]] = None
    sensor2lidar_translation: Optional[npt.NDArray[np.float32]] = None
    intrinsics: Optional[npt.NDArray[np.float32]] = None
    distortion: Optional[npt.NDArray[np.float32]] = None

    camera_path: Optional[Path] = None


@dataclass
class Cameras:
    """The eight nuPlan cameras of one frame."""

    cam_f0: Camera
    cam_l0: Camera
    cam_l1: Camera
    cam_l2: Camera
    cam_r0: Camera
    cam_r1: Camera
    cam_r2: Camera
    cam_b0: Camera

    @classmethod
    def from_camera_dict(
        cls,
        sensor_blobs_path: Path,
        camera_dict: Dict[str, Any],
        sensor_names: List[str],
        token: Optional[str] = None,
    ) -> Cameras:
        """Build the cameras of one frame, reading only the images named in ``sensor_names``.

        :param sensor_blobs_path: ``sensor_blobs/<split>`` directory the ``data_path`` entries are relative to.
        :param camera_dict: the frame's ``cams`` entry (keys ``CAM_F0`` ...).
        :param sensor_names: lower-case identifiers to load (``cam_f0`` ...); other cameras stay empty.
        :param token: frame token, named in errors.
        :return: Cameras; unrequested or absent cameras are ``Camera()``.
        """
        data: Dict[str, Camera] = {name: Camera() for name in CAMERA_NAMES}
        for camera_name, entry in camera_dict.items():
            identifier = camera_name.lower()
            if identifier not in sensor_names or identifier not in data or not entry:
                continue
            if sensor_blobs_path is None:
                raise SceneLoadError(
                    f"{identifier} requested but no sensor_blobs_path was given; set OPENSCENE_DATA_ROOT",
                    token=token,
                )
            image_path = Path(sensor_blobs_path) / entry["data_path"]
            data[identifier] = Camera(
                image=_read_image(image_path, token),
                sensor2lidar_rotation=entry["sensor2lidar_rotation"],
                sensor2lidar_translation=entry["sensor2lidar_translation"],
                intrinsics=entry["cam_intrinsic"],
                distortion=entry["distortion"],
                camera_path=entry["data_path"],
            )
        return Cameras(**data)


# PCD field types -> numpy (the OpenScene merged point clouds are binary PCD files)
_PCD_TYPES = {("F", 4): np.float32, ("F", 8): np.float64, ("U", 1): np.uint8, ("U", 2): np.uint16,
              ("U", 4): np.uint32, ("I", 1): np.int8, ("I", 2): np.int16, ("I", 4): np.int32}


def read_pcd(path: Path) -> npt.NDArray[np.float32]:
    """Read a PCD point cloud (ascii or binary DATA) as a (num_fields, N) float32 array, as nuPlan's
    ``LidarPointCloud.from_buffer(..., "pcd").points`` (x, y, z, intensity, ring, lidar_id for OpenScene)."""
    raw = Path(path).read_bytes()
    header: Dict[str, List[str]] = {}
    offset = 0
    while True:
        end = raw.index(b"\n", offset)
        line = raw[offset:end].decode("ascii").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    names = header["FIELDS"]
    sizes = [int(s) for s in header["SIZE"]]
    kinds = header["TYPE"]
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
    if any(c != 1 for c in counts):
        raise ValueError(f"PCD fields with COUNT != 1 are not supported: {counts}")
    num_points = int(header["POINTS"][0])
    mode = header["DATA"][0].lower()
    if mode == "binary":
        dtype = np.dtype([(n, _PCD_TYPES[(k, s)]) for n, k, s in zip(names, kinds, sizes, strict=True)])
        records = np.frombuffer(raw, dtype=dtype, count=num_points, offset=offset)
        return np.stack([records[n].astype(np.float32) for n in names], axis=0)
    if mode == "ascii":
        values = np.array(raw[offset:].split(), dtype=np.float64).reshape(num_points, len(names))
        return values.T.astype(np.float32)
    raise ValueError(f"unsupported PCD DATA mode {mode!r} (binary or ascii expected)")


@dataclass
class Lidar:
    """Merged lidar point cloud (6, N) float32: x, y, z, intensity, ring, lidar_id; None when not loaded."""

    lidar_pc: Optional[npt.NDArray[np.float32]] = None
    lidar_path: Optional[Path] = None

    @classmethod
    def from_paths(
        cls,
        sensor_blobs_path: Path,
        lidar_path: Optional[Path],
        sensor_names: List[str],
        token: Optional[str] = None,
    ) -> Lidar:
        """Read the point cloud when ``"lidar_pc"`` is in ``sensor_names``; otherwise return an empty Lidar."""
        if "lidar_pc" not in sensor_names or lidar_path is None:
            return Lidar()
        if sensor_blobs_path is None:
            raise SceneLoadError("lidar_pc requested but no sensor_blobs_path was given", token=token)
        full_path = Path(sensor_blobs_path) / lidar_path
        if not full_path.is_file():
            raise SceneLoadError("lidar point cloud not found", token=token, file=full_path)
        try:
            return Lidar(read_pcd(full_path), Path(lidar_path))
        except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError) as error:
            raise SceneLoadError(f"corrupt lidar point cloud: {error}", token=token, file=full_path) from error


# ----------------------------------------------------------------------------------------------------------------
# ego, annotations, trajectories


@dataclass
class EgoStatus:
    """Ego pose (x, y, heading), velocity (vx, vy), acceleration (ax, ay) and one-hot driving command
    (left, straight, right, unknown); pose global for scene frames, local for agent inputs."""

    ego_pose: npt.NDArray[np.float64]
    ego_velocity: npt.NDArray[np.float32]
    ego_acceleration: npt.NDArray[np.float32]
    driving_command: npt.NDArray[np.int64]
    in_global_frame: bool = False  # False for AgentInput


@dataclass
class TrajectorySampling:
    """nuPlan's trajectory sampling: give two of ``num_poses``, ``time_horizon`` [s], ``interval_length`` [s]."""

    num_poses: Optional[int] = None
    time_horizon: Optional[float] = None
    interval_length: Optional[float] = None

    def __post_init__(self) -> None:
        if self.num_poses is not None and not isinstance(self.num_poses, (int, np.integer)):
            raise ValueError(f"num_poses must be an int, got {type(self.num_poses)}")
        if self.num_poses is not None:
            self.num_poses = int(self.num_poses)
        if self.time_horizon:
            self.time_horizon = float(self.time_horizon)
        if self.interval_length:
            self.interval_length = float(self.interval_length)
        if self.num_poses and self.time_horizon and not self.interval_length:
            self.interval_length = self.time_horizon / self.num_poses
        elif self.num_poses and self.interval_length and not self.time_horizon:
            self.time_horizon = self.num_poses * self.interval_length
        elif self.time_horizon and self.interval_length and not self.num_poses:
            remainder = math.fmod(self.time_horizon, self.interval_length)
            if not (
                math.isclose(remainder, 0, abs_tol=_PROXIMITY_ABS_TOL)
                or math.isclose(remainder, self.interval_length, abs_tol=_PROXIMITY_ABS_TOL)
            ):
                raise ValueError(
                    f"time_horizon {self.time_horizon} must be a multiple of interval_length {self.interval_length}"
                )
            self.num_poses = int(round(self.time_horizon / self.interval_length))
        elif self.num_poses and self.time_horizon and self.interval_length:
            if not math.isclose(self.num_poses, self.time_horizon / self.interval_length, abs_tol=_PROXIMITY_ABS_TOL):
                raise ValueError(
                    f"inconsistent sampling: time_horizon {self.time_horizon}, interval_length "
                    f"{self.interval_length}, num_poses {self.num_poses}"
                )
        else:
            raise ValueError(
                "TrajectorySampling needs two of num_poses, time_horizon, interval_length; got "
                f"num_poses={self.num_poses}, time_horizon={self.time_horizon}, interval_length={self.interval_length}"
            )

    @property
    def step_time(self) -> float:
        """[s] time between two poses."""
        return float(self.interval_length)

    def __hash__(self) -> int:
        return hash((self.num_poses, self.time_horizon, self.interval_length))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrajectorySampling):
            return NotImplemented
        return (
            math.isclose(other.time_horizon, self.time_horizon)
            and math.isclose(other.interval_length, self.interval_length)
            and other.num_poses == self.num_poses
        )


@dataclass
class Trajectory:
    """Poses (N, 3) x, y, heading in the ego rear-axle frame of the current frame, sampled as given."""

    poses: npt.NDArray[np.float32]
    trajectory_sampling: TrajectorySampling = field(
        default_factory=lambda: TrajectorySampling(time_horizon=4, interval_length=0.5)
    )

    def __post_init__(self) -> None:
        poses = np.asarray(self.poses)
        if poses.ndim != 2 or poses.shape[1] != 3:
            raise ValueError(f"Trajectory poses must have shape (N, 3) (x, y, heading), got {poses.shape}")
        if poses.shape[0] != self.trajectory_sampling.num_poses:
            raise ValueError(
                f"Trajectory has {poses.shape[0]} poses but its sampling says {self.trajectory_sampling.num_poses}"
            )


@dataclass
class Annotations:
    """Boxes of one frame in its ego frame: ``boxes`` (N, 7) x, y, z, l, w, h, yaw; ``names``; ``velocity_3d``
    (N, 3); ``instance_tokens``; ``track_tokens`` (stable over a log)."""

    boxes: npt.NDArray[np.float32]
    names: List[str]
    velocity_3d: npt.NDArray[np.float32]
    instance_tokens: List[str]
    track_tokens: List[str]

    def __post_init__(self) -> None:
        lengths = {name: len(value) for name, value in vars(self).items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Annotations expects all attributes to have equal length, got {lengths}")


@dataclass
class AgentInput:
    """What an agent sees: ego statuses (local frame), cameras and lidars over the history frames."""

    ego_statuses: List[EgoStatus]
    cameras: List[Cameras]
    lidars: List[Lidar]

    @classmethod
    def from_scene_dict_list(
        cls,
        scene_dict_list: List[Dict],
        sensor_blobs_path: Path,
        num_history_frames: int,
        sensor_config: SensorConfig,
    ) -> AgentInput:
        """Build the agent input from the log frames of one scene window.

        :param scene_dict_list: the window's frame dicts (history first).
        :param sensor_blobs_path: ``sensor_blobs/<split>`` directory.
        :param num_history_frames: frames given to the agent (the last one is the current frame).
        :param sensor_config: which sensors to read at which history index.
        :return: AgentInput with poses in the current ego frame.
        """
        if len(scene_dict_list) == 0:
            raise ValueError("AgentInput.from_scene_dict_list: scene list is empty")
        history = scene_dict_list[:num_history_frames]
        global_poses = np.stack([global_ego_pose_from_frame(frame) for frame in history])
        local_poses = convert_absolute_to_relative_se2_array(global_poses[-1], global_poses)

        ego_statuses: List[EgoStatus] = []
        cameras: List[Cameras] = []
        lidars: List[Lidar] = []
        for frame_idx, frame in enumerate(history):
            dynamic_state = frame["ego_dynamic_state"]
            ego_statuses.append(
                EgoStatus(
                    ego_pose=np.array(local_poses[frame_idx], dtype=np.float32),
                    ego_velocity=np.array(dynamic_state[:2], dtype=np.float32),
                    ego_acceleration=np.array(dynamic_state[2:], dtype=np.float32),
                    driving_command=frame["driving_command"],
                )
            )
            sensor_names = sensor_config.get_sensors_at_iteration(frame_idx)
            cameras.append(Cameras.from_camera_dict(sensor_blobs_path, frame["cams"], sensor_names, frame["token"]))
            lidar_path = frame.get("lidar_path")
            lidars.append(
                Lidar.from_paths(
                    sensor_blobs_path, Path(lidar_path) if lidar_path else None, sensor_names, frame["token"]
                )
            )
        return AgentInput(ego_statuses, cameras, lidars)


@dataclass
class SceneMetadata:
    """Scene identity: log, scene token, map location, initial (current-frame) token, window sizes."""

    log_name: str
    scene_token: str
    map_name: str
    initial_token: str

    num_history_frames: int
    num_future_frames: int

    # navsim v2 two-stage scenes: the original scene a synthetic scene belongs to (None for original scenes)
    corresponding_original_scene: Optional[str] = None
    corresponding_original_initial_token: Optional[str] = None


@dataclass
class Frame:
    """One 2 Hz frame with privileged information; ``ego_status`` is global in scenes."""

    token: str
    timestamp: int
    roadblock_ids: List[str]
    traffic_lights: List[Tuple[str, bool]]
    annotations: Optional[Annotations]

    ego_status: EgoStatus
    lidar: Lidar
    cameras: Cameras


class LazyMapApi:
    """Stands in for a scene's map: opens the nuPlan map (cached per process) on first attribute access.

    Agents never touch the map, so scenes do not pay for reading it; the scorer gets the real map object via
    ``.load()`` or by using this object as the map.
    """

    def __init__(self, map_name: str, map_root: Optional[Union[str, Path]] = None, map_version: Optional[str] = None):
        self.map_name = map_name
        self._map_root = map_root
        self._map_version = map_version
        self._map = None

    def load(self):
        """Return the loaded ``NuPlanMap`` (see ``navsim_agents.data.maps.get_maps_api``)."""
        if self._map is None:
            from navsim_agents.data.maps import get_maps_api, resolve_maps_root

            root, version = resolve_maps_root(self._map_root, self._map_version)
            self._map = get_maps_api(root, version, self.map_name)
        return self._map

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __repr__(self) -> str:
        return f"LazyMapApi({self.map_name!r}, loaded={self._map is not None})"


@dataclass
class Scene:
    """One NAVSIM sample: metadata, map and ``num_history_frames + num_future_frames`` frames (global poses)."""

    scene_metadata: SceneMetadata
    map_api: Any
    frames: List[Frame]
    extended_traffic_light_data: Optional[List[Any]] = None
    extended_detections_tracks: Optional[List[Any]] = None

    def get_future_trajectory(self, num_trajectory_frames: Optional[int] = None) -> Trajectory:
        """Logged future ego poses in the current ego frame (defaults to all future frames), 0.5 s apart."""
        if num_trajectory_frames is None:
            num_trajectory_frames = self.scene_metadata.num_future_frames
        start = self.scene_metadata.num_history_frames - 1
        global_poses = np.stack(
            [self.frames[i].ego_status.ego_pose for i in range(start, start + num_trajectory_frames + 1)]
        ).astype(np.float64)
        local_poses = convert_absolute_to_relative_se2_array(global_poses[0], global_poses[1:])
        return Trajectory(
            local_poses,
            TrajectorySampling(num_poses=len(local_poses), interval_length=NAVSIM_INTERVAL_LENGTH),
        )

    def get_history_trajectory(self, num_trajectory_frames: Optional[int] = None) -> Trajectory:
        """Past ego poses (first ``num_trajectory_frames`` frames) in the frame of the last of them."""
        if num_trajectory_frames is None:
            num_trajectory_frames = self.scene_metadata.num_history_frames
        global_poses = np.stack(
            [self.frames[i].ego_status.ego_pose for i in range(num_trajectory_frames)]
        ).astype(np.float64)
        local_poses = convert_absolute_to_relative_se2_array(global_poses[-1], global_poses)
        return Trajectory(
            local_poses,
            TrajectorySampling(num_poses=len(local_poses), interval_length=NAVSIM_INTERVAL_LENGTH),
        )

    def get_agent_input(self) -> AgentInput:
        """The agent's view of this scene (history ego statuses in the current frame, history sensors)."""
        local_poses = self.get_history_trajectory().poses
        ego_statuses: List[EgoStatus] = []
        cameras: List[Cameras] = []
        lidars: List[Lidar] = []
        for frame_idx in range(self.scene_metadata.num_history_frames):
            status = self.frames[frame_idx].ego_status
            ego_statuses.append(
                EgoStatus(
                    ego_pose=local_poses[frame_idx],
                    ego_velocity=status.ego_velocity,
                    ego_acceleration=status.ego_acceleration,
                    driving_command=status.driving_command,
                )
            )
            cameras.append(self.frames[frame_idx].cameras)
            lidars.append(self.frames[frame_idx].lidar)
        return AgentInput(ego_statuses, cameras, lidars)

    @classmethod
    def _build_map_api(
        cls, map_name: str, map_root: Optional[Union[str, Path]] = None, map_version: Optional[str] = None
    ) -> LazyMapApi:
        """The scene's map, opened on first use (root from ``map_root`` or ``$NUPLAN_MAPS_ROOT``)."""
        return LazyMapApi(map_name, map_root, map_version)

    @classmethod
    def _build_annotations(cls, scene_frame: Dict) -> Optional[Annotations]:
        """Annotations of a log frame; None when the frame has no ``anns`` (private test logs)."""
        anns = scene_frame.get("anns")
        if anns is None:
            return None
        return Annotations(
            boxes=anns["gt_boxes"],
            names=anns["gt_names"],
            velocity_3d=anns["gt_velocity_3d"],
            instance_tokens=anns["instance_tokens"],
            track_tokens=anns["track_tokens"],
        )

    @classmethod
    def _build_ego_status(cls, scene_frame: Dict) -> EgoStatus:
        """Global ego status of a log frame."""
        dynamic_state = scene_frame["ego_dynamic_state"]
        return EgoStatus(
            ego_pose=global_ego_pose_from_frame(scene_frame),
            ego_velocity=np.array(dynamic_state[:2], dtype=np.float32),
            ego_acceleration=np.array(dynamic_state[2:], dtype=np.float32),
            driving_command=scene_frame["driving_command"],
            in_global_frame=True,
        )

    @classmethod
    def from_scene_dict_list(
        cls,
        scene_dict_list: List[Dict],
        sensor_blobs_path: Path,
        num_history_frames: int,
        num_future_frames: int,
        sensor_config: SensorConfig,
        *,
        map_root: Optional[Union[str, Path]] = None,
        map_version: Optional[str] = None,
    ) -> Scene:
        """Build a scene from the log frames of one window.

        :param scene_dict_list: the window's frame dicts.
        :param sensor_blobs_path: ``sensor_blobs/<split>`` directory.
        :param num_history_frames: history frames (the last one is the current frame).
        :param num_future_frames: future frames.
        :param sensor_config: sensors to read per frame index (over all frames of the window, as the devkit).
        :param map_root: nuPlan maps root (default ``$NUPLAN_MAPS_ROOT``); the map opens on first use.
        :param map_version: map version (default ``$NUPLAN_MAP_VERSION`` or ``nuplan-maps-v1.0``).
        :return: Scene with global ego poses.
        """
        if len(scene_dict_list) == 0:
            raise ValueError("Scene.from_scene_dict_list: scene list is empty")
        current = scene_dict_list[num_history_frames - 1]
        scene_metadata = SceneMetadata(
            log_name=current["log_name"],
            scene_token=current["scene_token"],
            map_name=current["map_location"],
            initial_token=current["token"],
            num_history_frames=num_history_frames,
            num_future_frames=num_future_frames,
        )
        frames: List[Frame] = []
        for frame_idx, frame in enumerate(scene_dict_list):
            sensor_names = sensor_config.get_sensors_at_iteration(frame_idx)
            lidar_path = frame.get("lidar_path")
            frames.append(
                Frame(
                    token=frame["token"],
                    timestamp=frame["timestamp"],
                    roadblock_ids=frame["roadblock_ids"],
                    traffic_lights=frame["traffic_lights"],
                    annotations=cls._build_annotations(frame),
                    ego_status=cls._build_ego_status(frame),
                    lidar=Lidar.from_paths(
                        sensor_blobs_path, Path(lidar_path) if lidar_path else None, sensor_names, frame["token"]
                    ),
                    cameras=Cameras.from_camera_dict(sensor_blobs_path, frame["cams"], sensor_names, frame["token"]),
                )
            )
        map_api = cls._build_map_api(scene_metadata.map_name, map_root, map_version)
        return Scene(scene_metadata=scene_metadata, map_api=map_api, frames=frames)


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class SceneFilter:
    """Which scene windows to load: window sizes, stride, route requirement and log / token / count filters."""

    num_history_frames: int = 4
    num_future_frames: int = 10
    frame_interval: Optional[int] = None  # None: non-overlapping windows (stride = num_frames)
    has_route: bool = True

    max_scenes: Optional[int] = None
    log_names: Optional[List[str]] = None
    tokens: Optional[List[str]] = None

    # navsim v2 two-stage fields; synthetic (stage-two) scenes are read by
    # navsim_agents.data.synthetic_scenes.TwoStageSceneLoader
    include_synthetic_scenes: bool = False
    all_mapping: Optional[Dict[Any, Any]] = None
    synthetic_scene_tokens: Optional[List[str]] = None
    reactive_synthetic_initial_tokens: Optional[List[str]] = None
    non_reactive_synthetic_initial_tokens: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if self.frame_interval is None:
            self.frame_interval = self.num_frames
        if self.num_history_frames < 1:
            raise ValueError(f"SceneFilter: num_history_frames must be >= 1, got {self.num_history_frames}")
        if self.num_future_frames < 0:
            raise ValueError(f"SceneFilter: num_future_frames must be >= 0, got {self.num_future_frames}")
        if self.frame_interval < 1:
            raise ValueError(f"SceneFilter: frame_interval must be >= 1, got {self.frame_interval}")
        if self.log_names is not None:
            self.log_names = [str(name) for name in self.log_names]
        if self.tokens is not None:
            self.tokens = [str(token) for token in self.tokens]
        if self.max_scenes is not None and self.max_scenes < 1:
            warnings.warn(f"SceneFilter: max_scenes={self.max_scenes} selects no scene", stacklevel=2)

    @property
    def num_frames(self) -> int:
        """Frames per scene window (history + future)."""
        return self.num_history_frames + self.num_future_frames


@dataclass
class SensorConfig:
    """Sensors to load: each field is a bool (all frames or none) or a list of frame indices."""

    cam_f0: Union[bool, List[int]]
    cam_l0: Union[bool, List[int]]
    cam_l1: Union[bool, List[int]]
    cam_l2: Union[bool, List[int]]
    cam_r0: Union[bool, List[int]]
    cam_r1: Union[bool, List[int]]
    cam_r2: Union[bool, List[int]]
    cam_b0: Union[bool, List[int]]
    lidar_pc: Union[bool, List[int]]

    def get_sensors_at_iteration(self, iteration: int) -> List[str]:
        """Sensor identifiers to load at frame index ``iteration``."""
        sensors: List[str] = []
        for sensor_name, include in asdict(self).items():
            if isinstance(include, bool):
                if include:
                    sensors.append(sensor_name)
            elif iteration in list(include):
                sensors.append(sensor_name)
        return sensors

    @classmethod
    def build_all_sensors(cls, include: Union[bool, List[int]] = True) -> SensorConfig:
        """Every sensor with the same specification."""
        return cls(**{name: include for name in SENSOR_NAMES})

    @classmethod
    def build_no_sensors(cls) -> SensorConfig:
        """No sensor at all (ego status and annotations only)."""
        return cls.build_all_sensors(include=False)
