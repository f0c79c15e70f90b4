"""Raster-to-Real alignment and the RAP data augmentations (recovery perturbation, cross-agent views).

Reference: vita-epfl/RAP, ``navsim/agents/rap_dino/rap_model.py`` (domain classifier, gradient reversal,
lambda schedule), ``navsim/planning/training/agent_lightning_module.py`` (``_step_distill``: spatial MSE,
domain BCE and their weights), ``process_data/create_openscene_metadata_purturbed.py`` (perturbation
ranges) and ``process_data/create_openscene_metadata_aug.py`` (pseudo-ego selection).

Alignment works on a batch laid out as ``[raster samples (B) | real samples (R)]`` where real sample ``r``
is the real view of raster sample ``real_index[r]``. The raster side is always detached: real features
are pulled towards raster features, never the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# rap_model.py: LambdaScheduler(gamma=10.0)
DANN_GAMMA = 10.0
# agent_lightning_module.py: ``loss += distill_feature_weight * loss_render`` with navsim_config 0.002
SPATIAL_WEIGHT = 0.002
# agent_lightning_module.py: ``loss += 0.001 * domain_loss`` (the paper text says 0.1)
DOMAIN_WEIGHT_CODE = 0.001
DOMAIN_WEIGHT_PAPER = 0.1
# rap_model.py: ``image_feature[0][[1]]`` -> camera index 1 of [b0, f0, l0, r0] is the front camera
FRONT_CAMERA_INDEX = 1
# create_openscene_metadata_purturbed.py: get_ego_params(perturb=True)
PERTURB_XY_M = 0.5
PERTURB_YAW_DEG = 15.0
PERTURB_VELOCITY_FRAC = 0.2
PERTURB_ACCEL_FRAC = 0.1
# create_openscene_metadata_aug.py: WINDOW_SIZE, CURRENT_FRAME_IDX_IN_WINDOW, CV_ERROR_THRESHOLD, DT
CROSS_AGENT_WINDOW = 14
CROSS_AGENT_CURRENT_INDEX = 3
CROSS_AGENT_CV_THRESHOLD_M = 0.5
FRAME_DT_S = 0.5
# create_openscene_metadata_aug.py: driving_command [0, 0, 0, 1] ("unknown")
UNKNOWN_DRIVING_COMMAND = (0.0, 0.0, 0.0, 1.0)
# rap_agent.py: ``weight[~score_mask] = 0.1`` (imitation weight of cross-agent samples)
CROSS_AGENT_IMITATION_WEIGHT = 0.1


def dann_lambda(progress: float | torch.Tensor, gamma: float = DANN_GAMMA) -> float:
    """DANN schedule ``lambda(p) = 2 / (1 + exp(-gamma p)) - 1`` for training progress ``p`` in [0, 1]."""
    p = float(progress)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``-lambda`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambd * grad_output, None


def grad_reverse(x: torch.Tensor, lambd: float) -> torch.Tensor:
    """Gradient reversal layer: returns ``x``; its gradient is ``-lambd`` times the upstream gradient."""
    return _GradientReversal.apply(x, lambd)


class DomainClassifier(nn.Module):
    """MLP raster(0)/real(1) classifier behind a gradient reversal layer.

    Parameter names follow RAP's ``domain_classifier.classifier.{0,2,4}`` so its checkpoints load.
    """

    def __init__(self, *, d_in: int, hidden: int = 512):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, pooled: torch.Tensor, lambd: float) -> torch.Tensor:
        """``pooled [N, d_in]`` -> logits ``[N]``; gradients into ``pooled`` are reversed and scaled."""
        return self.classifier(grad_reverse(pooled, lambd)).squeeze(-1)


def spatial_alignment_loss(raster_feat: torch.Tensor, real_feat: torch.Tensor) -> torch.Tensor:
    """MSE between projected features of the same sample's raster and real views, raster side detached.

    ``raster_feat`` and ``real_feat`` have the same shape (e.g. ``[R, cams, C, h, w]``).
    """
    if raster_feat.shape != real_feat.shape:
        raise ValueError(f"raster/real feature shapes differ: {tuple(raster_feat.shape)} vs {tuple(real_feat.shape)}")
    return F.mse_loss(real_feat, raster_feat.detach())


def domain_loss(logits: torch.Tensor, n_raster: int) -> torch.Tensor:
    """Balanced BCE of domain logits ``[n_raster + n_real]`` laid out raster first (label 0) then real (1).

    As in RAP, real samples get ``pos_weight = n_raster / n_real``; zero when either side is empty.
    """
    n_real = logits.shape[0] - n_raster
    if n_raster == 0 or n_real <= 0:
        return logits.sum() * 0.0
    labels = torch.cat([logits.new_zeros(n_raster), logits.new_ones(n_real)])
    pos_weight = logits.new_tensor([n_raster / n_real])
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)


@dataclass(frozen=True)
class AlignmentConfig:
    """Weights of the Raster-to-Real terms (defaults: RAP's code; the paper's domain weight is 0.1)."""

    spatial_weight: float = SPATIAL_WEIGHT
    domain_weight: float = DOMAIN_WEIGHT_CODE
    gamma: float = DANN_GAMMA
    front_camera_index: int = FRONT_CAMERA_INDEX


def alignment_losses(
    projected: torch.Tensor,
    *,
    n_raster: int,
    real_index: torch.Tensor,
    classifier: DomainClassifier,
    progress: float,
    config: AlignmentConfig = AlignmentConfig(),
) -> dict[str, torch.Tensor]:
    """Raster-to-Real losses on projected camera features.

    ``projected [n_raster + R, cams, C, h, w]``: the projector output for the raster samples followed by
    the real samples; ``real_index [R]`` (long) names the raster sample each real sample pairs with.
    Returns ``spatial`` (MSE, raster detached), ``domain`` (BCE on the front camera's mean-pooled
    features, raster side detached, real side through gradient reversal with ``dann_lambda(progress)``),
    ``lambda`` and the weighted ``loss``.
    """
    n_real = projected.shape[0] - n_raster
    if n_real != real_index.numel():
        raise ValueError(f"{n_real} real samples but real_index has {real_index.numel()} entries")
    raster, real = projected[:n_raster], projected[n_raster:]
    if n_real == 0:
        zero = projected.sum() * 0.0
        return {"spatial": zero, "domain": zero, "lambda": projected.new_tensor(0.0), "loss": zero}
    spatial = spatial_alignment_loss(raster[real_index], real)
    front = projected[:, config.front_camera_index].flatten(2).mean(-1)  # [N, C]
    front = torch.cat([front[:n_raster].detach(), front[n_raster:]])
    lambd = dann_lambda(progress, config.gamma)
    dom = domain_loss(classifier(front, lambd), n_raster)
    loss = config.spatial_weight * spatial + config.domain_weight * dom
    return {"spatial": spatial, "domain": dom, "lambda": projected.new_tensor(lambd), "loss": loss}


# ----------------------------------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------------------------------


def se2_relative(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Express SE(2) ``poses [..., 3]`` (x, y, heading) given in frame F in the frame of ``origin [3]``
    (also given in F). Headings are wrapped to [-pi, pi)."""
    poses = np.asarray(poses, dtype=np.float64)
    c, s = math.cos(origin[2]), math.sin(origin[2])
    dx, dy = poses[..., 0] - origin[0], poses[..., 1] - origin[1]
    out = np.empty_like(poses)
    out[..., 0] = c * dx + s * dy
    out[..., 1] = -s * dx + c * dy
    out[..., 2] = (poses[..., 2] - origin[2] + np.pi) % (2 * np.pi) - np.pi
    return out


@dataclass(frozen=True)
class EgoPerturbation:
    """A sampled recovery perturbation of the current ego state, in the current (unperturbed) ego frame."""

    dx: float
    dy: float
    dyaw: float
    velocity_scale: tuple[float, float]
    acceleration_scale: tuple[float, float]

    @property
    def pose(self) -> np.ndarray:
        """The perturbed ego pose ``[3]`` in the unperturbed ego frame."""
        return np.array([self.dx, self.dy, self.dyaw])


def sample_ego_perturbation(rng: np.random.Generator) -> EgoPerturbation:
    """Draw one perturbation uniformly: x/y +-0.5 m, yaw +-15 deg, each velocity component +-20 %, each
    acceleration component +-10 % (RAP's ``get_ego_params(perturb=True)``)."""
    dx, dy = rng.uniform(-PERTURB_XY_M, PERTURB_XY_M, size=2)
    dyaw = math.radians(rng.uniform(-PERTURB_YAW_DEG, PERTURB_YAW_DEG))
    v = 1.0 + rng.uniform(-PERTURB_VELOCITY_FRAC, PERTURB_VELOCITY_FRAC, size=2)
    a = 1.0 + rng.uniform(-PERTURB_ACCEL_FRAC, PERTURB_ACCEL_FRAC, size=2)
    return EgoPerturbation(float(dx), float(dy), float(dyaw), (float(v[0]), float(v[1])), (float(a[0]), float(a[1])))


def apply_ego_perturbation(
    perturbation: EgoPerturbation,
    *,
    velocity: np.ndarray,
    acceleration: np.ndarray,
    trajectory: np.ndarray,
    boxes: np.ndarray | None = None,
    history_poses: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Re-express the current frame's ego status and annotations in the perturbed ego frame.

    Velocity/acceleration are ego-frame vectors scaled component-wise (as RAP scales vx, vy, ax, ay).
    ``trajectory [T, 3]`` and ``history_poses [H, 3]`` are poses in the unperturbed ego frame; ``boxes
    [N, 7]`` are NAVSIM boxes (x, y, z, length, width, height, heading) in it. Returns the same keys in
    the perturbed frame (the current history pose becomes the origin).
    """
    origin = perturbation.pose
    out = {
        "velocity": np.asarray(velocity, dtype=np.float64) * np.asarray(perturbation.velocity_scale),
        "acceleration": np.asarray(acceleration, dtype=np.float64) * np.asarray(perturbation.acceleration_scale),
        "trajectory": se2_relative(trajectory, origin),
    }
    if history_poses is not None:
        hist = se2_relative(history_poses, origin)
        out["history_poses"] = hist
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).copy()
        if len(boxes):
            moved = se2_relative(boxes[:, [0, 1, 6]], origin)
            boxes[:, 0], boxes[:, 1], boxes[:, 6] = moved[:, 0], moved[:, 1], moved[:, 2]
        out["boxes"] = boxes
    return out


def perturbed_global_pose(ego_global: np.ndarray, perturbation: EgoPerturbation) -> np.ndarray:
    """Global pose ``[3]`` of the perturbed ego (the camera rig to re-render from)."""
    x, y, h = ego_global
    c, s = math.cos(h), math.sin(h)
    return np.array([
        x + c * perturbation.dx - s * perturbation.dy,
        y + s * perturbation.dx + c * perturbation.dy,
        (h + perturbation.dyaw + np.pi) % (2 * np.pi) - np.pi,
    ])


def select_pseudo_egos(
    track_xy: np.ndarray,
    current_index: int,
    *,
    dt: float = FRAME_DT_S,
    window: int = CROSS_AGENT_WINDOW,
    history_index: int = CROSS_AGENT_CURRENT_INDEX,
    cv_threshold: float = CROSS_AGENT_CV_THRESHOLD_M,
) -> np.ndarray:
    """Which tracked vehicles can become the pseudo-ego at frame ``current_index``.

    ``track_xy [F, N, 2]``: global positions of N vehicle tracks over the F frames of a log, NaN where a
    track is absent. A vehicle qualifies when it is present in every frame of the 14-frame window (3 past,
    current, 10 future at 2 Hz) and a constant-velocity model (velocity from the current and next frame)
    misses its future positions by more than 0.5 m on average. Returns a bool mask ``[N]``.
    """
    track_xy = np.asarray(track_xy, dtype=np.float64)
    n_frames, n_tracks = track_xy.shape[:2]
    start = current_index - history_index
    stop = start + window
    if start < 0 or stop > n_frames:
        return np.zeros(n_tracks, dtype=bool)
    win = track_xy[start:stop]
    present = np.isfinite(win).all(axis=(0, 2))
    cur = track_xy[current_index]
    vel = (track_xy[current_index + 1] - cur) / dt
    horizon = stop - current_index - 1
    k = np.arange(1, horizon + 1, dtype=np.float64)[:, None, None]
    predicted = cur[None] + vel[None] * k * dt
    true = track_xy[current_index + 1: stop]
    with np.errstate(invalid="ignore"):
        mean_err = np.linalg.norm(predicted - true, axis=-1).mean(axis=0)
    return present & (np.nan_to_num(mean_err, nan=0.0) > cv_threshold)
