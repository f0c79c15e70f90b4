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
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rap_backbone.nuplan_rig import PACIFICA, RAP_CAMERA_NAMES

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


@dataclass(frozen=True)
class AugmentationConfig:
    """Dataset options: fractions of the perturbed / cross-agent caches mixed into training (RAP: 10 %, 5 %)."""

    perturb_fraction: float = 0.0
    cross_agent_fraction: float = 0.0
    seed: int = 0


RenderFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""Renders the rig's cameras for an ego pose ``[3]`` (global x, y, heading): ``{camera name: HxWx3 uint8}``."""


def cross_agent_trajectory(track_poses: np.ndarray, current_index: int, num_poses: int) -> np.ndarray:
    """Future poses ``[num_poses, 3]`` of a pseudo-ego, from its global ``track_poses [F, 3]``, expressed in
    its own frame at ``current_index``."""
    return se2_relative(track_poses[current_index + 1: current_index + 1 + num_poses], track_poses[current_index])


# ----------------------------------------------------------------------------------------------------
# Re-rendered samples from NAVSIM scenes (navsim_agents.data dataclasses), for the training dataset
# ----------------------------------------------------------------------------------------------------

# RAP set_light_position: a traffic light sits about 8 m into its lane connector
TRAFFIC_LIGHT_ALONG_M = 8.0


def _camera_models(cameras: Any, names: tuple[str, ...]) -> list:
    """CameraModels with the calibration and image size of a frame's real cameras."""
    from rap_backbone.raster import CameraModel

    models = []
    for name in names:
        cam = getattr(cameras, name)
        if cam.intrinsics is None or cam.image is None:
            raise ValueError(f"camera {name} has no image/calibration to re-render with; load it in the sensor config")
        h, w = np.asarray(cam.image).shape[:2]
        models.append(CameraModel(name, np.asarray(cam.intrinsics, dtype=np.float64),
                                  np.asarray(cam.sensor2lidar_rotation, dtype=np.float64),
                                  np.asarray(cam.sensor2lidar_translation, dtype=np.float64), width=w, height=h))
    return models


def _rendered_cameras(cameras: Any, images: Mapping[str, np.ndarray]) -> Any:
    """A copy of a frame's Cameras whose images are replaced by ``images`` (same calibrations)."""
    import dataclasses

    return dataclasses.replace(cameras, **{n: dataclasses.replace(getattr(cameras, n), image=img)
                                           for n, img in images.items()})


def _global_boxes(frame: Any) -> tuple[np.ndarray, list]:
    from rap_backbone.raster import ego_to_global_boxes

    ann = frame.annotations
    if ann is None or len(ann.boxes) == 0:
        return np.zeros((0, 7)), []
    pose = frame.ego_status.ego_pose
    return ego_to_global_boxes(np.asarray(ann.boxes, dtype=np.float64), (pose[0], pose[1], pose[2], 0.0)), \
        list(ann.track_tokens)


def traffic_light_positions(map_api: Any, traffic_lights: Any) -> np.ndarray:
    """``[M, 3]`` global (x, y, nuPlan status: 0 green, 2 red) of a frame's ``(lane_connector_id, is_red)``
    lights, each placed ``TRAFFIC_LIGHT_ALONG_M`` along its lane connector's baseline path (RAP's rule)."""
    from navsim_agents.data.maps import SemanticMapLayer

    rows = []
    for connector_id, is_red in traffic_lights or []:
        obj = map_api.get_map_object(str(connector_id), SemanticMapLayer.LANE_CONNECTOR)
        if obj is None:
            continue
        line = obj.baseline_path.linestring
        pt = line.interpolate(min(TRAFFIC_LIGHT_ALONG_M, line.length))
        rows.append((pt.x, pt.y, 2.0 if is_red else 0.0))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def _render(scene: Any, frame: Any, ego_global: np.ndarray, boxes_global: np.ndarray,
            names: tuple[str, ...], render_fn: Callable | None) -> dict[str, np.ndarray]:
    from rap_backbone.raster import primitives_from_map_api, render_cameras

    if render_fn is not None:
        return dict(render_fn(ego_global, boxes_global))
    prims = primitives_from_map_api(scene.map_api, ego_global[:2])
    lights = traffic_light_positions(scene.map_api, frame.traffic_lights)
    return render_cameras(_camera_models(frame.cameras, names), ego_pose=ego_global, map_primitives=prims,
                          boxes=boxes_global, traffic_lights=lights)


def perturbed_sample(scene: Any, rng: np.random.Generator, *, num_poses: int = 8,
                     cameras: tuple[str, ...] = RAP_CAMERA_NAMES, render_fn: Callable | None = None
                     ) -> tuple[Any, dict[str, Any]]:
    """Recovery perturbation of a NAVSIM ``Scene``: returns ``(agent_input, targets)``.

    The current ego pose is perturbed (see :func:`sample_ego_perturbation`), the four cameras are
    re-rendered from it with the rasterizer (map, boxes, traffic lights), the history poses,
    velocity/acceleration and the expert future are re-expressed in the perturbed frame. The metric cache
    of the token describes the unperturbed start, so ``score_mask`` is False (imitation only, weight 1).
    ``render_fn(ego_global [3], boxes_global [N,7]) -> {camera: image}`` replaces the rasterizer (tests).
    """
    from navsim_agents.data.dataclasses import AgentInput, EgoStatus

    cur = scene.scene_metadata.num_history_frames - 1
    frame = scene.frames[cur]
    p = sample_ego_perturbation(rng)
    ego_global = perturbed_global_pose(np.asarray(frame.ego_status.ego_pose, dtype=np.float64), p)
    boxes, _ = _global_boxes(frame)
    images = _render(scene, frame, ego_global, boxes, cameras, render_fn)
    agent_input = scene.get_agent_input()
    hist = np.stack([e.ego_pose for e in agent_input.ego_statuses])
    cur_status = agent_input.ego_statuses[-1]
    moved = apply_ego_perturbation(p, velocity=cur_status.ego_velocity, acceleration=cur_status.ego_acceleration,
                                   trajectory=scene.get_future_trajectory(num_poses).poses, history_poses=hist)
    statuses = [EgoStatus(ego_pose=moved["history_poses"][i], ego_velocity=e.ego_velocity,
                          ego_acceleration=e.ego_acceleration, driving_command=e.driving_command)
                for i, e in enumerate(agent_input.ego_statuses)]
    statuses[-1] = EgoStatus(ego_pose=np.zeros(3), ego_velocity=moved["velocity"].astype(np.float32),
                             ego_acceleration=moved["acceleration"].astype(np.float32),
                             driving_command=cur_status.driving_command)
    cams = list(agent_input.cameras)
    cams[-1] = _rendered_cameras(cams[-1], images)
    targets = {"trajectory": torch.from_numpy(moved["trajectory"].astype(np.float32)),
               "token": f"{scene.scene_metadata.initial_token}_perturbed",
               "score_mask": torch.tensor(False), "imitation_weight": torch.tensor(1.0)}
    return AgentInput(statuses, cams, list(agent_input.lidars)), targets


def scene_tracks(scene: Any) -> tuple[list, np.ndarray]:
    """Global (x, y, heading) of every track of a scene's frames: ``(track tokens, poses [F, N, 3])``,
    NaN where a track is absent from a frame."""
    per_frame = [_global_boxes(f) for f in scene.frames]
    tokens = sorted({t for _, toks in per_frame for t in toks})
    index = {t: i for i, t in enumerate(tokens)}
    poses = np.full((len(scene.frames), len(tokens), 3), np.nan)
    for f, (boxes, toks) in enumerate(per_frame):
        if toks:
            cols = [index[t] for t in toks]
            poses[f, cols] = boxes[:, [0, 1, 6]]
    return tokens, poses


def cross_agent_samples(scene: Any, *, num_poses: int = 8, cameras: tuple[str, ...] = RAP_CAMERA_NAMES,
                        render_fn: Callable | None = None, vehicle_names: tuple[str, ...] = ("vehicle",),
                        max_agents: int | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """Cross-agent view synthesis on a NAVSIM ``Scene`` (history 4 + future 10 frames = RAP's 14-frame window).

    Every vehicle selected by :func:`select_pseudo_egos` becomes the pseudo-ego: the ego rig re-renders the
    scene from its current pose (the real ego is drawn as a box), its past poses/velocity/acceleration form
    the ego status, the driving command is unknown ``[0, 0, 0, 1]``, its future poses are the target.
    ``score_mask`` False (no PDM-score supervision), imitation weight 0.1 (set in the loss).
    """
    from navsim_agents.data.dataclasses import AgentInput, EgoStatus

    cur = scene.scene_metadata.num_history_frames - 1
    frame = scene.frames[cur]
    tokens, poses = scene_tracks(scene)
    if not tokens:
        return []
    names = dict(zip(frame.annotations.track_tokens, frame.annotations.names, strict=True)) if frame.annotations else {}
    is_vehicle = np.array([names.get(t) in vehicle_names for t in tokens])
    chosen = np.flatnonzero(select_pseudo_egos(poses[..., :2], cur) & is_vehicle)
    if max_agents is not None:
        chosen = chosen[:max_agents]
    if len(chosen) == 0:
        return []
    boxes, box_tokens = _global_boxes(frame)
    ego = np.asarray(frame.ego_status.ego_pose, dtype=np.float64)
    to_center = PACIFICA.rear_axle_to_center
    ego_box = np.array([ego[0] + to_center * math.cos(ego[2]), ego[1] + to_center * math.sin(ego[2]),
                        PACIFICA.height / 2, PACIFICA.length, PACIFICA.width, PACIFICA.height, ego[2]])
    agent_input = scene.get_agent_input()
    out = []
    for n in chosen:
        token = tokens[n]
        own = poses[:, n]
        others = np.concatenate([boxes[[t != token for t in box_tokens]], ego_box[None]])
        images = _render(scene, frame, own[cur], others, cameras, render_fn)
        local = se2_relative(own, own[cur])
        vel_frames = (local[1:cur + 1, :2] - local[:cur, :2]) / FRAME_DT_S  # velocities at frames 1..cur
        v_cur = vel_frames[-1]
        a_cur = (vel_frames[-1] - vel_frames[-2]) / FRAME_DT_S if len(vel_frames) > 1 else np.zeros(2)
        statuses = [EgoStatus(ego_pose=local[i], ego_velocity=np.zeros(2, np.float32),
                              ego_acceleration=np.zeros(2, np.float32),
                              driving_command=np.array(UNKNOWN_DRIVING_COMMAND)) for i in range(cur + 1)]
        statuses[-1] = EgoStatus(ego_pose=np.zeros(3), ego_velocity=v_cur.astype(np.float32),
                                 ego_acceleration=a_cur.astype(np.float32),
                                 driving_command=np.array(UNKNOWN_DRIVING_COMMAND))
        cams = list(agent_input.cameras)
        cams[-1] = _rendered_cameras(cams[-1], images)
        targets = {"trajectory": torch.from_numpy(local[cur + 1: cur + 1 + num_poses].astype(np.float32)),
                   "token": f"{scene.scene_metadata.initial_token}_{token}",
                   "score_mask": torch.tensor(False), "imitation_weight": torch.tensor(CROSS_AGENT_IMITATION_WEIGHT)}
        out.append((AgentInput(statuses, cams, list(agent_input.lidars)), targets))
    return out
