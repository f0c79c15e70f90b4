"""RAP-DINO's planner with a swappable image backbone.

Reproduces the eval forward of vita-epfl/RAP (commit 5fd8630, ``navsim/agents/rap_dino/``):

    cameras [b0, f0, l0, r0] -> backbone patch map (final norm, prefix tokens dropped)
    -> one-level FPN (1x1 lateral, 3x3) to d_model + camera and level embeddings
    -> queries = Linear(ego status, current frame) + 64x8 learned proposal-pose queries
    -> ONE refiner applied 4 times: MLP decode of (x, y, heading) proposals, then 2 BEVFormer-style layers
       (temporal self-attention over the proposal x pose grid, spatial cross-attention into the cameras at the
       ego-footprint corners of every proposal pose projected with lidar2img)
    -> scorer: max over poses, MLP -> 6 sub-score logits; pdm_score = sigmoid(last); trajectory = argmax.

Unlike RAP's code the batched forward equals the per-sample forward (RAP mixes samples when B > 1: the TSA
query takes sample 0's rows, the TSA reference rows are ordered unlike its value rows, and SCA picks every
sample's visible queries from sample 0's mask).

Reference files (RAP): rap_model.py, traj_refiner.py, bevformer/{image_encoder, bev_refiner, encoder,
temporal_self_attention, spatial_cross_attention, grid_mask, transformer_decoder}.py, score_module/scorer.py,
navsim_config.py.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from rap_backbone.alignment import DomainClassifier
from rap_backbone.deform_attn import multi_scale_deformable_attention, sample_value_maps, value_maps
from rap_backbone.nuplan_rig import RAP_CAMERA_NAMES
from rap_backbone.planner_config import PlannerConfig

EGO_STATUS_DIM = 11  # pose (3) | velocity (2) | acceleration (2) | driving command one-hot (4)
NUM_SUB_SCORES = 6  # scorer.py: score_num; the last one is the final PDM score
# encoder.py: "eps = 1e-5" for the depth test of projected reference points
PROJECTION_EPS = 1e-5
# rap_dino image_encoder.py: nn.Parameter(torch.randn(num_feature_levels=2, d)); row 0 is used
NUM_LEVEL_EMBEDS = 2
# rap_model.py DomainClassifier(hidden=512)
DOMAIN_HIDDEN = 512
# scorer.py: pred_col_agent outputs 2 * 40 * 9 (40 agent slots x 2 x 9 states), pred_area 5 * 2
COLLISION_OUTPUTS = (2 * 40 * 9, 2, 9)
AREA_OUTPUTS = 5 * 2
# grid_mask.py GridMask(True, True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)
GRID_MASK_RATIO = 0.5


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------

class MLP(nn.Module):
    """transformer_decoder.py MLP: Linear-LN-ReLU-Linear-LN-ReLU-Linear (names ``mlp.{0,1,3,4,6}``)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ImageNeck(nn.Module):
    """mmdet FPN with one level: 1x1 lateral conv then 3x3 conv, both with bias, no activation."""

    def __init__(self, in_channels: int, d_model: int):
        super().__init__()
        self.lateral = nn.Conv2d(in_channels, d_model, kernel_size=1)
        self.fpn = nn.Conv2d(d_model, d_model, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fpn(self.lateral(x))


class TemporalSelfAttention(nn.Module):
    """RAP's TSA over the proposal x pose grid (bevformer/temporal_self_attention.py), batch-correct.

    The "history" and "current" BEV of BEVFormer are both the current queries here, so the two queue slots
    share values and reference points; their outputs are averaged.
    """

    QUEUE = 2  # num_bev_queue

    def __init__(self, d_model: int, num_heads: int, num_points: int):
        super().__init__()
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(2 * d_model, self.QUEUE * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(2 * d_model, self.QUEUE * num_heads * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        _init_deformable(self.sampling_offsets, self.attention_weights, num_heads, self.QUEUE, num_points)
        _init_xavier(self.value_proj, self.output_proj)

    def forward(self, query: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor,
                grid_hw: tuple[int, int]) -> torch.Tensor:
        """``query [B,Q,C]``, ``pos [Q,C]``, ``ref [B,Q,2]`` (x, y) in grid units [0,1]; grid (rows, cols)."""
        b, q, c = query.shape
        heads, pts = self.num_heads, self.num_points
        value = self.value_proj(query).view(b, q, heads, c // heads)
        # RAP: cat([value[:bs], query + pos]) where value = [query, query] per sample
        both = torch.cat([query, query + pos], dim=-1)
        # sampling locations in fp32 (under bf16 autocast a grid coordinate would lose ~1/256)
        offsets = self.sampling_offsets(both).float().view(b, q, heads, self.QUEUE, 1, pts, 2)
        weights = self.attention_weights(both).float().view(b, q, heads, self.QUEUE, pts).softmax(-1)
        rows, cols = grid_hw
        normalizer = offsets.new_tensor([cols, rows])  # (w, h) of the grid
        # expanded (same values): an export folds it into a constant of the offsets' shape, which onnxruntime
        # divides in one vectorised pass instead of one call per (x, y) pair
        loc = ref.float()[:, :, None, None, None, None, :] + offsets / normalizer.expand_as(offsets)
        # queue slots share the value map: sample them as 2*pts points with half weight (= their mean)
        loc = loc.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, q, heads, 1, self.QUEUE * pts, 2)
        weights = (0.5 * weights).reshape(b, q, heads, 1, self.QUEUE * pts)
        out = multi_scale_deformable_attention(value, [(rows, cols)], loc, weights).to(query.dtype)
        return self.output_proj(out) + query


class SpatialCrossAttention(nn.Module):
    """RAP's SCA + MSDeformableAttention3D (bevformer/spatial_cross_attention.py), batch-correct.

    Every query attends to every camera at its projected anchors; a camera's result counts for a query when
    at least one of its anchors is visible there, and the counted results are averaged. RAP computes only the
    visible rows; so do we on the CPU, while the batched path computes all rows and discards the others, with
    the same outputs. Runs in fp32 like RAP.

    ``traced_sampling`` picks the path an exported program holds: ``"dense"`` (every row, fixed shapes: for
    GPU compilers such as TensorRT) or ``"visible"`` (the visible rows of each camera, data-dependent shapes).
    """

    traced_sampling: str = "dense"

    def __init__(self, d_model: int, num_heads: int, num_points: int):
        super().__init__()
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        _init_deformable(self.sampling_offsets, self.attention_weights, num_heads, 1, num_points)
        _init_xavier(self.value_proj, self.output_proj)

    def project_value(self, value: torch.Tensor, feat_hw: tuple[int, int]) -> list[torch.Tensor]:
        """Camera features ``[B,N,HW,C]`` -> per-head value maps ``[[B*N*heads, C/heads, H, W]]`` (fp32).

        The refiner is one module applied 4 times to the same camera features, so the planner projects them
        once per forward and reuses the result (RAP recomputes the identical projection each time)."""
        with _fp32_region(value.device):
            b, n, hw, c = value.shape
            projected = self.value_proj(value.float()).view(b * n, hw, self.num_heads, c // self.num_heads)
            return value_maps(projected, [feat_hw])

    def forward(self, query: torch.Tensor, value: list[torch.Tensor], feat_hw: tuple[int, int],
                ref_cam: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``query [B,Q,C]``, projected value maps (:meth:`project_value`),
        ``ref_cam [B,N,Q,D,2]``, ``visible [B,N,Q,D]`` -> ``[B,Q,C]``."""
        dtype = query.dtype
        with _fp32_region(query.device):
            query, ref_cam = query.float(), ref_cam.float()
            b, n, q, d = ref_cam.shape[:4]
            heads, pts = self.num_heads, self.num_points
            h, w = feat_hw
            offsets = self.sampling_offsets(query).view(b, 1, q, heads, 1, pts // d, d, 2)
            offsets = offsets / offsets.new_tensor([w, h]).expand_as(offsets)  # expanded: as in TSA
            weights = self.attention_weights(query).view(b, 1, q, heads, 1, pts).softmax(-1)
            hit = visible.any(-1)  # [B,N,Q]
            if sample_visible_only(query):
                cams = [tuple(ij) for ij in hit.any(-1).nonzero().tolist()]  # cameras that see any query
                out = self._sample_visible(value, ref_cam, offsets, weights, hit, cams)
            elif self.traced_sampling == "visible":
                # traced: every (sample, camera) pair is in the program, each with its own visible-row count
                out = self._sample_visible(value, ref_cam, offsets, weights, hit, list(np.ndindex(b, n)))
            else:
                out = self._sample_all(value, ref_cam, offsets, weights)
            hit = hit.to(out.dtype)
            slots = (out * hit[..., None]).sum(1) / hit.sum(1).clamp(min=1.0)[..., None]
            res = self.output_proj(slots) + query
        return res.to(dtype)

    def _sample_all(self, value: list[torch.Tensor], ref_cam: torch.Tensor, offsets: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
        """Every query in every camera -> ``[B,N,Q,C]`` (one batched sampling call)."""
        b, n, q = ref_cam.shape[:3]
        heads, pts = self.num_heads, self.num_points
        loc = ref_cam[:, :, :, None, None, None, :, :] + offsets  # point j samples around anchor j % D
        loc = loc.reshape(b * n, q, heads, 1, pts, 2)
        weights = weights.expand(b, n, q, heads, 1, pts).reshape(b * n, q, heads, 1, pts)
        return sample_value_maps(value, loc, weights).view(b, n, q, -1)

    def _sample_visible(self, value: list[torch.Tensor], ref_cam: torch.Tensor, offsets: torch.Tensor,
                        weights: torch.Tensor, hit: torch.Tensor, cams: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Only the (camera, query) rows that count (``hit [B,N,Q]``) of the (sample, camera) pairs ``cams``,
        zeros elsewhere -> ``[B,N,Q,C]``.

        Each row is the same arithmetic as in :meth:`_sample_all`, so the result is the same; a query sees one
        or two of the four cameras, which makes this about 4x less sampling."""
        b, n, q = ref_cam.shape[:3]
        heads, pts = self.num_heads, self.num_points
        maps = value[0].view(b * n, heads, *value[0].shape[1:])  # one level: RAP's one-level FPN
        zeros = ref_cam.new_zeros(q, heads * maps.shape[2])
        per_camera = {}
        for i, j in cams:
            rows = hit[i, j].nonzero()[:, 0]
            loc = (ref_cam[i, j, rows, None, None, None] + offsets[i, 0, rows]).reshape(1, rows.shape[0], heads, 1, pts, 2)
            sampled = sample_value_maps([maps[i * n + j]], loc, weights[i, 0, rows][None])[0]
            # rows scattered into a fresh [Q,C] (ONNX ScatterND: row copies), not into a slice of [B,N,Q,C]
            # (an exported select_scatter rewrites the whole tensor element by element)
            per_camera[i, j] = zeros.index_put((rows,), sampled)
        return torch.stack([per_camera.get(ij, zeros) for ij in np.ndindex(b, n)]).view(b, n, q, -1)


def sample_visible_only(x: torch.Tensor) -> bool:
    """Whether cross-attention samples only the visible (camera, query) rows: on the CPU in eager mode, where
    the sampling is most of the planner's time; a GPU is faster with one batched call over all rows, and an
    exported or traced program cannot have data-dependent shapes."""
    return x.device.type == "cpu" and not torch.compiler.is_exporting() and not torch.jit.is_tracing()


def _fp32_region(device: torch.device):
    """Autocast off (RAP runs SCA and the projection in fp32); no-op on devices autocast does not know."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _init_deformable(offsets: nn.Linear, weights: nn.Linear, heads: int, levels: int, points: int) -> None:
    """mmcv's deformable-attention init: zero weights, offsets on a ring of growing radius, uniform attention."""
    nn.init.zeros_(offsets.weight)
    thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
    grid = grid * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
    with torch.no_grad():
        offsets.bias.copy_(grid.flatten())
    nn.init.zeros_(weights.weight)
    nn.init.zeros_(weights.bias)


def _init_xavier(*layers: nn.Linear) -> None:
    """mmengine xavier_init(distribution='uniform', bias=0) of the value / output projections."""
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)


class RefinerLayer(nn.Module):
    """BEVFormerLayer with operation order (self_attn, norm, cross_attn, norm, ffn, norm), post-norm."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = TemporalSelfAttention(d, cfg.num_heads, cfg.tsa_num_points)
        self.cross_attn = SpatialCrossAttention(d, cfg.num_heads, cfg.num_anchors)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.d_ffn), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.d_ffn, d), nn.Dropout(cfg.dropout))
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(3)])
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, query, pos, tsa_ref, grid_hw, value, feat_hw, ref_cam, visible):
        query = self.norms[0](self.self_attn(query, pos, tsa_ref, grid_hw))
        query = self.norms[1](self.cross_attn(query, value, feat_hw, ref_cam, visible))
        return self.norms[2](query + self.ffn(query))


class Refiner(nn.Module):
    """traj_refiner.py + bev_refiner.py: decode proposals, then refine the queries with the cameras."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = MLP(cfg.d_model, cfg.d_ffn, 3)
        # mmdet LearnedPositionalEncoding(num_feats=d/2, row=proposals, col=poses): [col(pose) | row(proposal)]
        self.pos_pose = nn.Embedding(cfg.num_poses, cfg.d_model // 2)
        self.pos_proposal = nn.Embedding(cfg.num_proposals, cfg.d_model // 2)
        self.layers = nn.ModuleList([RefinerLayer(cfg) for _ in range(cfg.num_bev_layers)])
        for emb in (self.pos_pose, self.pos_proposal):
            nn.init.uniform_(emb.weight)  # mmdet LearnedPositionalEncoding init_cfg: Uniform

    def decode(self, query: torch.Tensor) -> torch.Tensor:
        """``[B,Q,C]`` -> proposals ``[B,P,T,3]`` (x, y, heading)."""
        cfg = self.cfg
        return self.decoder(query).float().view(query.shape[0], cfg.num_proposals, cfg.num_poses, 3)

    def positional_encoding(self) -> torch.Tensor:
        """``[P*T, C]``: query p*T+t gets [pose embedding t | proposal embedding p]."""
        cfg = self.cfg
        pose = self.pos_pose.weight[None].expand(cfg.num_proposals, -1, -1)
        prop = self.pos_proposal.weight[:, None].expand(-1, cfg.num_poses, -1)
        return torch.cat([pose, prop], dim=-1).reshape(cfg.num_queries, cfg.d_model)

    def project_values(self, value: torch.Tensor, feat_hw: tuple[int, int]) -> list[list[torch.Tensor]]:
        """Each layer's cross-attention value maps of the camera features ``[B,N,HW,C]`` (same in every
        refinement)."""
        return [layer.cross_attn.project_value(value, feat_hw) for layer in self.layers]

    def forward(self, query: torch.Tensor, proposals: torch.Tensor, values: Sequence[torch.Tensor],
                feat_hw: tuple[int, int], lidar2img: torch.Tensor, img_shape: torch.Tensor) -> torch.Tensor:
        """Refine ``query [B,Q,C]`` around ``proposals [B,P,T,3]``; ``values`` from :meth:`project_values`."""
        cfg = self.cfg
        poses = proposals.detach().reshape(query.shape[0], cfg.num_queries, 3)
        x0, y0, _, x1, y1, _ = cfg.point_cloud_range
        # encoder.py: ref_pos = (xy + 32) / 64 on the (proposal rows, pose cols) grid
        tsa_ref = (poses[..., :2] - poses.new_tensor([x0, y0])) / poses.new_tensor([x1 - x0, y1 - y0])
        ref_cam, visible = project_reference_points(poses, lidar2img, img_shape, cfg)
        pos = self.positional_encoding().to(query.dtype)
        grid_hw = (cfg.num_proposals, cfg.num_poses)
        for layer, value in zip(self.layers, values, strict=True):
            query = layer(query, pos, tsa_ref, grid_hw, value, feat_hw, ref_cam, visible)
        return query


class Scorer(nn.Module):
    """score_module/scorer.py: sub-score logits per proposal, plus the training-only auxiliary heads."""

    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        self.score = MLP(cfg.d_model, cfg.d_ffn, NUM_SUB_SCORES)
        self.collision = MLP(cfg.d_model, cfg.d_ffn, COLLISION_OUTPUTS[0]) if cfg.agent_pred else None
        self.area = MLP(cfg.d_model, cfg.d_ffn, AREA_OUTPUTS) if cfg.area_pred else None

    def forward(self, query: torch.Tensor, num_proposals: int, num_poses: int, aux: bool) -> dict[str, torch.Tensor]:
        b = query.shape[0]
        proposal_feature = query.view(b, num_proposals, num_poses, -1).amax(2)
        out = {"pred_logit": self.score(proposal_feature)}
        if aux:
            if self.area is not None:
                out["pred_area_logit"] = self.area(query)  # [B, P*T, 10]
            if self.collision is not None:
                _, two, states = COLLISION_OUTPUTS
                out["pred_agents_states"] = self.collision(proposal_feature).view(
                    b, num_proposals, num_poses, -1, two, states)
        return out


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------

def footprint_corners(poses: torch.Tensor, cfg: PlannerConfig) -> torch.Tensor:
    """Ego footprint corners of rear-axle poses ``[..., 3]`` -> ``[..., 4, 2]`` (encoder.py compute_corners).

    Corner order: front-left, front-right, rear-right, rear-left in the body frame (x forward, y left).
    """
    cos, sin = poses[..., 2:3].cos(), poses[..., 2:3].sin()
    cx = poses[..., 0:1] + cfg.rear_axle_to_center * cos
    cy = poses[..., 1:2] + cfg.rear_axle_to_center * sin
    hl, hw = cfg.half_length, cfg.half_width
    lx = poses.new_tensor([hl, hl, -hl, -hl])
    ly = poses.new_tensor([hw, -hw, -hw, hw])
    return torch.stack([cos * lx - sin * ly + cx, sin * lx + cos * ly + cy], dim=-1)


def reference_points_3d(poses: torch.Tensor, cfg: PlannerConfig) -> torch.Tensor:
    """3D anchors ``[..., 4*P, 3]`` of rear-axle poses ``[..., 3]`` in the lidar frame.

    ``paired`` (RAP 5fd8630): anchor k = corner k % 4 at height k % P. ``grid``: anchor k = corner k // P at
    height k % P. Heights: P values evenly spaced over the point-cloud z range, minus the lidar height.
    """
    corners = footprint_corners(poses, cfg)  # [..., 4, 2]
    p = cfg.num_points_in_pillar
    z0, z1 = cfg.point_cloud_range[2], cfg.point_cloud_range[5]
    zs = torch.linspace(z0 - cfg.lidar_height, z1 - cfg.lidar_height, p, dtype=poses.dtype, device=poses.device)
    k = torch.arange(4 * p, device=poses.device)
    corner_idx = k % 4 if cfg.reference_points == "paired" else k // p
    xy = corners[..., corner_idx, :]
    z = zs[k % p][:, None].expand(*xy.shape[:-1], 1)
    return torch.cat([xy, z], dim=-1)


def project_reference_points(poses: torch.Tensor, lidar2img: torch.Tensor, img_shape: torch.Tensor,
                             cfg: PlannerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every query's anchors into every camera (encoder.py point_sampling), in fp32.

    Args:
        poses: ``[B, Q, 3]`` proposal poses (x, y, heading) in the ego rear-axle (lidar) frame.
        lidar2img: ``[B, N, 4, 4]``.
        img_shape: ``[B, N, >=2]`` (height, width, ...) of the padded images; pixels are divided by them.

    Returns:
        ``ref_cam [B, N, Q, D, 2]`` (u, v) normalised to [0, 1] by the padded image size, and
        ``visible [B, N, Q, D]`` (in front of the camera and strictly inside the image).
    """
    with _fp32_region(poses.device):
        pts = reference_points_3d(poses.float(), cfg)  # [B, Q, D, 3]
        l2i = lidar2img.float()
        cam = torch.einsum("bnij,bqdj->bnqdi", l2i[..., :3, :3], pts) + l2i[:, :, None, None, :3, 3]
        depth = cam[..., 2:3]
        uv = cam[..., :2] / depth.clamp(min=PROJECTION_EPS)
        hw = img_shape[..., :2].float()  # (height, width)
        uv = uv / hw[:, :, None, None, [1, 0]]
        visible = ((depth[..., 0] > PROJECTION_EPS) & (uv[..., 1] > 0.0) & (uv[..., 1] < 1.0)
                   & (uv[..., 0] < 1.0) & (uv[..., 0] > 0.0))
    return uv, visible


def grid_mask(images: torch.Tensor, *, ratio: float = GRID_MASK_RATIO, generator: np.random.Generator) -> torch.Tensor:
    """RAP's GridMask (mode 1, no rotation, no offset): keep only a grid of stripes, one mask per call.

    ``images [M, C, H, W]``; period d ~ U{2..H-1}, stripe width l = clip(round(d*ratio), 1, d-1), random phase
    per axis, drawn on a 1.5x canvas and centre-cropped (grid_mask.py).
    """
    _, _, h, w = images.shape
    hh, ww = int(1.5 * h), int(1.5 * w)
    d = int(generator.integers(2, h))
    stripe = min(max(int(d * ratio + 0.5), 1), d - 1)
    st_h, st_w = int(generator.integers(d)), int(generator.integers(d))

    def in_stripe(n: int, start: int) -> np.ndarray:
        idx = np.arange(n) - start
        return (idx >= 0) & (idx // d < n // d) & (idx % d < stripe)

    keep = in_stripe(hh, st_h)[:, None] | in_stripe(ww, st_w)[None, :]  # mode 1: stripes kept
    top, left = (hh - h) // 2, (ww - w) // 2
    mask = torch.from_numpy(keep[top:top + h, left:left + w].astype(np.float32)).to(images)
    return images * mask


# ---------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` around a frozen ``nn.Linear``; B starts at zero (no change at init)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    @property
    def weight(self) -> torch.Tensor:  # timm's fused-qkv attention reads ``qkv.weight`` directly
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a).to(self.base.weight.dtype)

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))


def apply_lora(model: nn.Module, *, rank: int, alpha: float, targets: Sequence[str] = ("qkv", "proj")) -> int:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose attribute name is in ``targets`` inside an
    attention block (``*.attn.<name>``) with :class:`LoRALinear`. Returns the number of wrapped layers."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for name, module in list(model.named_modules()):
        if not name.endswith("attn"):
            continue
        for target in targets:
            child = getattr(module, target, None)
            if isinstance(child, nn.Linear):
                setattr(module, target, LoRALinear(child, rank, alpha))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"no attention Linear named {list(targets)} found for LoRA in {type(model).__name__}")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Fold every :class:`LoRALinear` in ``model`` back into a plain ``nn.Linear``; returns how many."""
    merged = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                base = child.base
                with torch.no_grad():
                    base.weight.copy_(child.weight)
                setattr(module, name, base)
                merged += 1
    return merged


# ---------------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------------

class RAPPlanner(nn.Module):
    """RAP-DINO's planner around any :class:`rap_backbone.backbones.Backbone`.

    ``forward(features)`` takes RAP's feature dict:

    - ``camera_feature [B,4,3,H,W]``: cameras [b0, f0, l0, r0], ImageNet-normalised, H and W multiples of the
      backbone stride (RAP: resized x0.4 and zero-padded bottom/right to a multiple of 32);
    - ``lidar2img [B,4,4,4]`` (with the resize applied), ``img_shape [B,4,3]`` (padded H, W, C);
    - ``ego_status [B,T,11]`` (only the last frame is read).

    and returns ``trajectory [B,8,3]``, ``proposals [B,64,8,3]`` (the 4th decode), ``proposal_list`` (4
    decodes), ``pred_logit [B,64,6]``, ``pdm_score [B,64]`` (sigmoid of the last logit), ``selected_index [B]``,
    ``projected [B,4,C,h,w]`` (camera features after the neck and embeddings, for Raster-to-Real alignment) and
    in training mode ``pred_area_logit [B,512,10]`` and ``pred_agents_states [B,64,8,5,2,9]``.
    """

    def __init__(self, backbone: nn.Module, config: PlannerConfig | None = None, *, seed: int | None = None):
        super().__init__()
        cfg = config or PlannerConfig()
        self.config = cfg
        self.backbone = backbone
        if cfg.lora_rank > 0:
            apply_lora(backbone.model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets)
        d = cfg.d_model
        self.neck = ImageNeck(int(backbone.embed_dim), d)
        self.level_embeds = nn.Parameter(torch.randn(NUM_LEVEL_EMBEDS, d))
        self.camera_embeds = nn.Parameter(torch.randn(cfg.num_cameras, d))
        self.ego_encoder = nn.Linear(EGO_STATUS_DIM, d)
        self.queries = nn.Embedding(cfg.num_queries, d)
        self.refiner = Refiner(cfg)  # one module applied num_refinements times (tied weights, as in RAP)
        self.scorer = Scorer(cfg)
        self.domain_classifier = DomainClassifier(d_in=d, hidden=DOMAIN_HIDDEN)
        self._grid_rng = np.random.default_rng(seed)
        mean, std = tuple(getattr(backbone, "mean", IMAGENET_DEFAULT_MEAN)), tuple(getattr(backbone, "std", IMAGENET_DEFAULT_STD))
        self._renormalize = not (np.allclose(mean, IMAGENET_DEFAULT_MEAN) and np.allclose(std, IMAGENET_DEFAULT_STD))
        self.register_buffer("_in_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_in_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def weights_source(self) -> str:
        return str(getattr(self.backbone, "weights_source", "random"))

    # ---- stages (public so that tests and alignment can look inside) ---------------------------------
    @property
    def backbone_is_deterministic(self) -> bool:
        """True when the backbone's output depends on the images only (frozen, no LoRA, no GridMask), so it
        may be computed once per image and reused (``backbone_patch`` input)."""
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        return frozen and self.config.lora_rank == 0 and self.config.grid_mask_prob == 0

    def backbone_patch(self, camera_feature: torch.Tensor) -> torch.Tensor:
        """``[B,N,3,H,W]`` ImageNet-normalised -> backbone patch features ``[B,N,C_backbone,h,w]``."""
        b, n = camera_feature.shape[:2]
        images = camera_feature.flatten(0, 1)
        if self.training and self.config.grid_mask_prob > 0 and self._grid_rng.random() < self.config.grid_mask_prob:
            images = grid_mask(images, generator=self._grid_rng)
        if self._renormalize:  # RAP's inputs use ImageNet statistics; hand the backbone [0,1] RGB instead
            _, patch = self.backbone(images * self._in_std.to(images.dtype) + self._in_mean.to(images.dtype))
        else:
            _, patch = self.backbone(images, normalized=True)
        return patch.view(b, n, *patch.shape[1:])

    def encode_images(self, camera_feature: torch.Tensor, backbone_patch: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B,N,3,H,W]`` ImageNet-normalised -> (neck output ``[B,N,C,h,w]``, projected ``[B,N,C,h,w]``).

        ``backbone_patch``: the backbone's output for these images computed earlier (:meth:`backbone_patch`),
        only valid while :attr:`backbone_is_deterministic`."""
        b, n = camera_feature.shape[:2]
        patch = self.backbone_patch(camera_feature) if backbone_patch is None else backbone_patch
        neck = self.neck(patch.flatten(0, 1).to(self.neck.lateral.weight.dtype))
        neck = neck.view(b, n, *neck.shape[1:])
        embeds = self.camera_embeds[:n] + self.level_embeds[0]
        projected = neck + embeds[None, :, :, None, None].to(neck.dtype)
        return neck, projected

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        cfg = self.config
        cams = _require(features, "camera_feature", 5)
        lidar2img = _require(features, "lidar2img", 4)
        img_shape = _require(features, "img_shape", 3)
        ego = _require(features, "ego_status", 3)
        b, n = cams.shape[:2]
        if n != cfg.num_cameras:
            raise ValueError(f"camera_feature has {n} cameras; the planner expects {cfg.num_cameras} "
                             f"in the order {list(RAP_CAMERA_NAMES)}")
        if ego.shape[-1] != EGO_STATUS_DIM:
            raise ValueError(f"ego_status last dim is {ego.shape[-1]}; expected {EGO_STATUS_DIM}")
        _, projected = self.encode_images(cams, features.get("backbone_patch"))
        feat_hw = tuple(projected.shape[-2:])
        values = self.refiner.project_values(projected.flatten(3).transpose(2, 3), feat_hw)  # from [B,N,h*w,C]
        query = self.ego_encoder(ego[:, -1].to(projected.dtype))[:, None] + self.queries.weight[None].to(projected.dtype)
        proposal_list = []
        for _ in range(cfg.num_refinements):
            proposals = self.refiner.decode(query)
            proposal_list.append(proposals)
            query = self.refiner(query, proposals, values, feat_hw, lidar2img, img_shape)
        proposals = proposal_list[-1]
        out: dict[str, Any] = self.scorer(query, cfg.num_proposals, cfg.num_poses, aux=self.training)
        pdm_score = out["pred_logit"].float().sigmoid()[..., -1]
        best = pdm_score.argmax(dim=1)
        out.update(
            proposals=proposals,
            proposal_list=proposal_list,
            pdm_score=pdm_score,
            selected_index=best,
            trajectory=proposals[torch.arange(b, device=best.device), best],
            projected=projected,
        )
        return out


def _require(features: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in features:
        raise KeyError(f"planner input is missing {key!r}; RAP's feature dict has camera_feature, lidar2img, "
                       f"img_shape and ego_status")
    value = features[key]
    if not torch.is_tensor(value) or value.ndim != ndim:
        shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"planner input {key!r} must be a {ndim}-d tensor, got {shape}")
    # an exported program cannot branch on values: the check stays with the eager planner
    if (value.is_floating_point() and value.device.type != "meta" and not torch.compiler.is_exporting()
            and not torch.isfinite(value).all()):
        raise ValueError(f"planner input {key!r} contains NaN or inf")
    return value


def build_planner(backbone: nn.Module | str, config: PlannerConfig | Mapping[str, Any] | None = None, *,
                  weights: str | None = None, freeze: bool = True, seed: int | None = None,
                  **backbone_kwargs: Any) -> RAPPlanner:
    """A planner around ``backbone`` (a Backbone, or a name for ``build_backbone``) with ``config``."""
    if isinstance(config, Mapping) or (config is not None and not isinstance(config, PlannerConfig)):
        config = PlannerConfig.from_dict(dict(config))
    if isinstance(backbone, str):
        from rap_backbone.backbones import build_backbone

        backbone = build_backbone(backbone, weights=weights, freeze=freeze, **backbone_kwargs)
    return RAPPlanner(backbone, config, seed=seed)


__all__ = ["PlannerConfig", "RAPPlanner", "build_planner", "project_reference_points",
           "reference_points_3d", "footprint_corners", "apply_lora", "merge_lora", "LoRALinear", "grid_mask"]
