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


def sample_value_maps(maps: Sequence[torch.Tensor], sampling_locations: torch.Tensor,
                      attention_weights: torch.Tensor) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` on values already in :func:`value_maps` layout -> ``[B, Q, C]``."""
    sampling_locations = sampling_locations.float()
    attention_weights = attention_weights.float()
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
