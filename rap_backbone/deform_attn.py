"""Multi-scale deformable attention (Deformable DETR) sampling core, in pure PyTorch.

Same contract and numerics as mmcv's ``multi_scale_deformable_attn_pytorch`` (mmcv/ops/multi_scale_deform_attn.py),
which RAP's TSA and SCA call on CPU; bilinear ``grid_sample`` with zero padding and ``align_corners=False``
is what mmcv's CUDA kernel computes too. When mmcv's compiled op is importable and the tensors are on CUDA,
``use_compiled=True`` routes to it.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _compiled_op():
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
    except Exception:  # mmcv missing or built without ops
        return None
    return MultiScaleDeformableAttnFunction


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    use_compiled: bool = False,
) -> torch.Tensor:
    """Attention-weighted bilinear samples of a multi-level value map.

    Args:
        value: ``[B, sum(H_l*W_l), heads, C_h]`` the levels flattened row-major and concatenated.
        spatial_shapes: ``(H_l, W_l)`` per level.
        sampling_locations: ``[B, Q, heads, L, P, 2]`` as (x, y) in [0, 1] of each level (0 = left/top edge).
        attention_weights: ``[B, Q, heads, L, P]`` (already normalised over L*P by the caller).
        use_compiled: use mmcv's CUDA op when available (falls back to PyTorch otherwise).

    Returns:
        ``[B, Q, heads*C_h]``. Computed in fp32 (deformable sampling sums many terms; RAP forces fp32 too).
    """
    shapes = [(int(h), int(w)) for h, w in (spatial_shapes.tolist() if torch.is_tensor(spatial_shapes)
                                           else spatial_shapes)]
    if use_compiled and value.is_cuda:
        op = _compiled_op()
        if op is not None:
            shapes_t = torch.as_tensor(shapes, dtype=torch.long, device=value.device)
            start = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
            return op.apply(value.float(), shapes_t, start, sampling_locations.float(), attention_weights.float(), 64)

    return sample_value_maps(value_maps(value, shapes), sampling_locations, attention_weights)


def value_maps(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """``[B, sum(H_l*W_l), heads, C_h]`` -> per level ``[B*heads, C_h, H_l, W_l]`` (fp32), the layout
    ``grid_sample`` reads; a caller that samples the same values several times converts them once."""
    batch, _, heads, head_dim = value.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    per_level = value.float().split([h * w for h, w in shapes], dim=1)
    return [v.flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, h, w)
            for v, (h, w) in zip(per_level, shapes, strict=True)]


# Per-head width from which the CPU samples through a dense matrix product instead of grid_sample: measured
# on a 2-core AMD EPYC (process CPU time), grid_sample's CPU kernel costs about linearly in the width and was 2x
# faster at 16 channels (the small planner), the product 1.4-6x faster at 160 (RAP's d_model 1280 / 8 heads).
DENSE_SAMPLING_MIN_CHANNELS = 64


def sample_value_maps(maps: Sequence[torch.Tensor], sampling_locations: torch.Tensor,
                      attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` on values already in :func:`value_maps` layout -> ``[B, Q, C]``."""
    sampling_locations = sampling_locations.float()
    attention_weights = attention_weights.float()
    if (maps[0].device.type == "cpu" and maps[0].shape[1] >= DENSE_SAMPLING_MIN_CHANNELS
            and not torch.compiler.is_exporting() and not torch.jit.is_tracing()):
        return sample_dense(maps, sampling_locations, attention_weights)
    return sample_grid(maps, sampling_locations, attention_weights)


def sample_dense(maps: Sequence[torch.Tensor], sampling_locations: torch.Tensor,
                 attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`sample_grid`'s result as one matrix product per level: each query's attention-weighted bilinear
    corner weights are summed into a row over the map's cells (zero padding: corners outside the map add
    nothing; ``align_corners=False``: pixel = location x size - 0.5), then rows @ value map. Same sums in
    another order."""
    batch, queries, heads, levels, points, _ = sampling_locations.shape
    head_dim = maps[0].shape[1]
    out = None
    for lvl, v in enumerate(maps):
        h, w = v.shape[-2:]
        loc = sampling_locations[:, :, :, lvl].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        weight = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(batch * heads, queries, points, 1)
        x = loc[..., 0] * w - 0.5
        y = loc[..., 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)  # corners: top-left, top-right, bottom-left, -right
        ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
        bilinear = torch.cat([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
        inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
        cell = torch.where(inside, ys * w + xs, torch.zeros_like(xs)).long().flatten(2)
        rows = v.new_zeros(batch * heads, queries, h * w).scatter_add_(
            2, cell, (bilinear * weight * inside).flatten(2))
        level_out = torch.bmm(rows, v.reshape(batch * heads, head_dim, h * w).transpose(1, 2))  # [B*heads, Q, C_h]
        out = level_out if out is None else out + level_out
    return out.view(batch, heads, queries, head_dim).transpose(1, 2).reshape(batch, queries, heads * head_dim)


def sample_grid(maps: Sequence[torch.Tensor], sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`sample_value_maps` by ``grid_sample`` (mmcv's formulation)."""
    batch, queries, heads, levels, points, _ = sampling_locations.shape
    head_dim = maps[0].shape[1]
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, v in enumerate(maps):
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B, Q, heads, P, 2] -> [B*heads, Q, P, 2]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [B*heads, C_h, Q, L*P] weighted over the samples (one level: no copy into a stacked tensor)
    stacked = sampled[0] if levels == 1 else torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (stacked * weights).sum(-1).view(batch, heads * head_dim, queries)
    return out.transpose(1, 2).contiguous()
