"""RAP's training augmentations on NAVSIM scenes: recovery perturbation and cross-agent view synthesis.

Reference: vita-epfl/RAP ``process_data/create_openscene_metadata_purturbed.py`` (perturbation) and
``process_data/create_openscene_metadata_aug.py`` (pseudo-ego selection, 14-frame window, unknown command). The
geometry (perturbation draws, SE(2) moves, pseudo-ego selection) is ``rap_backbone.alignment``; this module
applies it to NAVSIM ``Scene`` objects and re-renders their cameras (``navsim_agents.data.scene_raster``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from navsim_agents.data.dataclasses import AgentInput, EgoStatus
from navsim_agents.data.scene_raster import RenderFn, global_boxes, render_frame, with_images
from rap_backbone.alignment import (
    CROSS_AGENT_IMITATION_WEIGHT,
    FRAME_DT_S,
    UNKNOWN_DRIVING_COMMAND,
    apply_ego_perturbation,
    perturbed_global_pose,
    sample_ego_perturbation,
    se2_relative,
    select_pseudo_egos,
)
from rap_backbone.nuplan_rig import PACIFICA, RAP_CAMERA_NAMES


def perturbed_sample(scene: Any, rng: np.random.Generator, *, num_poses: int = 8,
                     cameras: tuple[str, ...] = RAP_CAMERA_NAMES, render_fn: RenderFn | None = None
                     ) -> tuple[Any, dict[str, Any]]:
    """Recovery perturbation of a NAVSIM ``Scene``: returns ``(agent_input, targets)``.

    The current ego pose is perturbed (see :func:`sample_ego_perturbation`), the four cameras are
    re-rendered from it with the rasterizer (map, boxes, traffic lights), the history poses,
    velocity/acceleration and the expert future are re-expressed in the perturbed frame. The metric cache
    of the token describes the unperturbed start, so ``score_mask`` is False (imitation only, weight 1).
    ``render_fn(ego_global [3], boxes_global [N,7]) -> {camera: image}`` replaces the rasterizer (tests).
    """
    cur = scene.scene_metadata.num_history_frames - 1
    frame = scene.frames[cur]
    p = sample_ego_perturbation(rng)
    ego_global = perturbed_global_pose(np.asarray(frame.ego_status.ego_pose, dtype=np.float64), p)
    boxes, _ = global_boxes(frame)
    images = render_frame(scene, frame, ego_global, boxes, cameras, render_fn)
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
    cams[-1] = with_images(cams[-1], images)
    targets = {"trajectory": torch.from_numpy(moved["trajectory"].astype(np.float32)),
               "token": f"{scene.scene_metadata.initial_token}_perturbed",
               "score_mask": torch.tensor(False), "imitation_weight": torch.tensor(1.0)}
    return AgentInput(statuses, cams, list(agent_input.lidars)), targets


def scene_tracks(scene: Any) -> tuple[list, np.ndarray]:
    """Global (x, y, heading) of every track of a scene's frames: ``(track tokens, poses [F, N, 3])``,
    NaN where a track is absent from a frame."""
    per_frame = [global_boxes(f) for f in scene.frames]
    tokens = sorted({t for _, toks in per_frame for t in toks})
    index = {t: i for i, t in enumerate(tokens)}
    poses = np.full((len(scene.frames), len(tokens), 3), np.nan)
    for f, (boxes, toks) in enumerate(per_frame):
        if toks:
            cols = [index[t] for t in toks]
            poses[f, cols] = boxes[:, [0, 1, 6]]
    return tokens, poses


def cross_agent_samples(scene: Any, *, num_poses: int = 8, cameras: tuple[str, ...] = RAP_CAMERA_NAMES,
                        render_fn: RenderFn | None = None, vehicle_names: tuple[str, ...] = ("vehicle",),
                        max_agents: int | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """Cross-agent view synthesis on a NAVSIM ``Scene`` (history 4 + future 10 frames = RAP's 14-frame window).

    Every vehicle selected by :func:`select_pseudo_egos` becomes the pseudo-ego: the ego rig re-renders the
    scene from its current pose (the real ego is drawn as a box), its past poses/velocity/acceleration form
    the ego status, the driving command is unknown ``[0, 0, 0, 1]``, its future poses are the target.
    ``score_mask`` False (no PDM-score supervision), imitation weight 0.1 (set in the loss).
    """
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
    boxes, box_tokens = global_boxes(frame)
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
        images = render_frame(scene, frame, own[cur], others, cameras, render_fn)
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
        cams[-1] = with_images(cams[-1], images)
        targets = {"trajectory": torch.from_numpy(local[cur + 1: cur + 1 + num_poses].astype(np.float32)),
                   "token": f"{scene.scene_metadata.initial_token}_{token}",
                   "score_mask": torch.tensor(False), "imitation_weight": torch.tensor(CROSS_AGENT_IMITATION_WEIGHT)}
        out.append((AgentInput(statuses, cams, list(agent_input.lidars)), targets))
    return out
