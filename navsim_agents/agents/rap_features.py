"""RAP feature and target builders: NAVSIM AgentInput / Scene -> RAP's feature and target tensors.

Reference: vita-epfl/RAP ``navsim/agents/rap_dino/rap_features.py`` and
``navsim/agents/rap_dino/bevformer/bev_feature_build.py`` (+ ``transform3d.py``): per camera, the image is
normalised (ImageNet mean/std on the 0..255 scale), then resized by 0.4 (bilinear, ``int(size * 0.4)``),
then zero-padded at the bottom/right to a multiple of 32; ``lidar2img = diag(s, s, 1, 1) @ K @ lidar2cam``
with ``lidar2cam`` the inverse of the camera's sensor2lidar transform; ``img_shape`` is the padded shape.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from rap_backbone.nuplan_rig import RAP_CAMERA_NAMES
from rap_backbone.planner_config import RAP_IMAGE_SCALE

# bev_feature_build.py: NormalizeMultiviewImage(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
# timm's ImageNet statistics on the 0..255 scale
IMAGENET_MEAN_255 = (np.array(IMAGENET_DEFAULT_MEAN) * 255).astype(np.float32)
IMAGENET_STD_255 = (np.array(IMAGENET_DEFAULT_STD) * 255).astype(np.float32)
# bev_feature_build.py: PadMultiViewImage(size_divisor=32); the resize scale is planner_config.RAP_IMAGE_SCALE
RAP_PAD_DIVISOR = 32
EGO_STATUS_DIM = 11  # pose 3 | velocity 2 | acceleration 2 | driving command 4


class MissingCameraError(ValueError):
    """A camera the agent needs is absent from a frame."""


class InvalidEgoStatusError(ValueError):
    """The ego status of a sample holds NaN/inf; the token cannot be scored."""


def lidar2img_matrix(
    intrinsics: np.ndarray, sensor2lidar_rotation: np.ndarray, sensor2lidar_translation: np.ndarray, scale: float
) -> np.ndarray:
    """4x4 projection from the lidar (ego) frame to pixels of the image resized by ``scale``.

    ``intrinsics [3,3]``; ``sensor2lidar_rotation [3,3]`` and ``sensor2lidar_translation [3]`` map camera
    coordinates to the lidar frame. A homogeneous point ``p`` projects to ``(u, v) = (q0/q2, q1/q2)`` with
    ``q = M @ p``.
    """
    rot = np.asarray(sensor2lidar_rotation, dtype=np.float64)
    trans = np.asarray(sensor2lidar_translation, dtype=np.float64).reshape(3)
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = rot.T  # inverse of a rotation
    lidar2cam[:3, 3] = -rot.T @ trans
    view = np.eye(4)
    view[:3, :3] = np.asarray(intrinsics, dtype=np.float64)
    scale_mat = np.diag([scale, scale, 1.0, 1.0])
    return scale_mat @ view @ lidar2cam


def padded_size(height: int, width: int, scale: float, divisor: int = RAP_PAD_DIVISOR) -> tuple[int, int, int, int]:
    """(resized h, resized w, padded h, padded w) for an image of ``height x width``."""
    h, w = int(height * scale), int(width * scale)
    return h, w, int(math.ceil(h / divisor) * divisor), int(math.ceil(w / divisor) * divisor)


def preprocess_image(image: np.ndarray, scale: float, divisor: int = RAP_PAD_DIVISOR) -> np.ndarray:
    """RGB ``image [H,W,3]`` (uint8 or 0..255 float) -> normalised, resized, zero-padded ``[3,h',w']`` float32.

    Order as RAP: normalise, then resize (bilinear), then pad bottom/right with 0.
    """
    img = (np.asarray(image, dtype=np.float32) - IMAGENET_MEAN_255) / IMAGENET_STD_255
    h, w, ph, pw = padded_size(img.shape[0], img.shape[1], scale, divisor)
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((3, ph, pw), dtype=np.float32)
    out[:, :h, :w] = img.transpose(2, 0, 1)
    return out


def ego_status_vector(ego_status: Any) -> np.ndarray:
    """NAVSIM EgoStatus -> the 11-dim RAP vector (pose, velocity, acceleration, driving command)."""
    return np.concatenate([
        np.asarray(ego_status.ego_pose, dtype=np.float32).reshape(3),
        np.asarray(ego_status.ego_velocity, dtype=np.float32).reshape(2),
        np.asarray(ego_status.ego_acceleration, dtype=np.float32).reshape(2),
        np.asarray(ego_status.driving_command, dtype=np.float32).reshape(4),
    ])


def _token_of(agent_input: Any) -> str:
    return str(getattr(agent_input, "token", None) or "<unknown token>")


class RAPFeatureBuilder:
    """AgentInput -> ``{camera_feature [4,3,H,W], lidar2img [4,4,4], img_shape [4,3], ego_status [T,11]}``.

    ``missing_camera``: ``"error"`` raises :class:`MissingCameraError` naming the camera and token;
    ``"zeros"`` feeds a zero (mean-grey after normalisation) image for that camera only.
    """

    def __init__(self, *, image_scale: float = RAP_IMAGE_SCALE, missing_camera: str = "error",
                 cameras: Sequence[str] = RAP_CAMERA_NAMES, pad_divisor: int = RAP_PAD_DIVISOR):
        if missing_camera not in ("error", "zeros"):
            raise ValueError(f"missing_camera must be 'error' or 'zeros', got {missing_camera!r}")
        self.image_scale = float(image_scale)
        self.missing_camera = missing_camera
        self.cameras = tuple(cameras)
        self.pad_divisor = int(pad_divisor)

    def get_unique_name(self) -> str:
        return "rap_feature"

    def compute_features(self, agent_input: Any, token: str | None = None) -> dict[str, torch.Tensor]:
        """Build RAP's feature dict from the current frame of ``agent_input`` (NAVSIM AgentInput)."""
        token = token or _token_of(agent_input)
        cameras = agent_input.cameras[-1]
        features = self.camera_features(cameras, token=token)
        rendered = [getattr(getattr(cameras, n, None), "rendered_image", None) for n in self.cameras]
        if all(r is not None for r in rendered):
            # RAP's Raster-to-Real layout: rasterized views for every sample, real views where valid
            views = SimpleNamespace(**{n: SimpleNamespace(image=r) for n, r in zip(self.cameras, rendered, strict=True)})
            features["rendered_camera_feature"] = self.camera_features(views, token=token)["camera_feature"]
            valid = all(bool(getattr(getattr(cameras, n), "real_valid", True)) for n in self.cameras)
            features["camera_valid"] = torch.tensor(valid)
        features["ego_status"] = self.ego_features(agent_input.ego_statuses, token=token)
        return features

    def ego_features(self, ego_statuses: Sequence[Any], *, token: str) -> torch.Tensor:
        """History of ego statuses -> ``[T, 11]``; NaN/inf raises :class:`InvalidEgoStatusError`."""
        rows = np.stack([ego_status_vector(e) for e in ego_statuses if e is not None])
        if not np.isfinite(rows).all():
            bad = sorted({int(i) for i in np.argwhere(~np.isfinite(rows))[:, 1]})
            raise InvalidEgoStatusError(
                f"token {token}: ego status has NaN/inf in components {bad} (pose 0-2, velocity 3-4, "
                "acceleration 5-6, command 7-10); the sample cannot be planned or scored")
        return torch.from_numpy(rows.astype(np.float32))

    def camera_features(self, cameras: Any, *, token: str) -> dict[str, torch.Tensor]:
        """NAVSIM Cameras of one frame -> camera_feature, lidar2img, img_shape (cameras in ``self.cameras``)."""
        cams = [getattr(cameras, name, None) for name in self.cameras]
        present = [c for c in cams if c is not None and getattr(c, "image", None) is not None]
        if not present:
            raise MissingCameraError(f"token {token}: none of the cameras {list(self.cameras)} has an image")
        ref_h, ref_w = np.asarray(present[0].image).shape[:2]
        images, l2i = [], []
        for name, cam in zip(self.cameras, cams, strict=True):
            has_image = cam is not None and getattr(cam, "image", None) is not None
            if not has_image:
                if self.missing_camera == "error":
                    raise MissingCameraError(
                        f"token {token}: camera {name} has no image; pass agent.missing_camera=zeros to feed "
                        "zeros for it, or load the sensor blobs of that camera")
                images.append(np.zeros((3,) + padded_size(ref_h, ref_w, self.image_scale, self.pad_divisor)[2:],
                                       dtype=np.float32))
            else:
                images.append(preprocess_image(cam.image, self.image_scale, self.pad_divisor))
            calibrated = cam is not None and getattr(cam, "intrinsics", None) is not None \
                and getattr(cam, "sensor2lidar_rotation", None) is not None
            if calibrated:
                l2i.append(lidar2img_matrix(cam.intrinsics, cam.sensor2lidar_rotation,
                                            cam.sensor2lidar_translation, self.image_scale))
            else:
                l2i.append(np.zeros((4, 4)))  # projects nothing: every reference point is masked out
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"token {token}: cameras give different padded sizes {sorted(shapes)}; "
                             "RAP needs one image size for all cameras")
        c, h, w = images[0].shape
        return {
            "camera_feature": torch.from_numpy(np.stack(images)),
            "lidar2img": torch.from_numpy(np.stack(l2i).astype(np.float32)),
            "img_shape": torch.tensor([[h, w, c]] * len(images), dtype=torch.float32),
        }


class RAPTargetBuilder:
    """Scene -> ``{trajectory [T,3], token, score_mask, imitation_weight}`` for an ordinary sample.

    Augmented samples (``rap_backbone.alignment``) carry ``score_mask`` False and their own weight.

    The score, collision and area targets of RAP depend on the model's own proposals; they are computed
    online in ``RAPAgent.compute_loss`` from the metric cache of ``token``.
    """

    def __init__(self, *, num_poses: int = 8):
        self.num_poses = int(num_poses)

    def get_unique_name(self) -> str:
        return "rap_target"

    def compute_targets(self, scene: Any, *, score_mask: bool = True) -> dict[str, Any]:
        poses = np.asarray(scene.get_future_trajectory(num_trajectory_frames=self.num_poses).poses,
                           dtype=np.float32)
        return {
            "trajectory": torch.from_numpy(poses),
            "token": scene.scene_metadata.initial_token,
            "score_mask": torch.tensor(bool(score_mask)),
            "imitation_weight": torch.tensor(1.0),
        }
