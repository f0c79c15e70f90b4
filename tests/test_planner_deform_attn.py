"""Deformable-attention sampling against bilinear values worked out by hand (and mmcv's op when installed)."""
from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_scale

from rap_backbone.deform_attn import (
    DENSE_SAMPLING_MIN_CHANNELS,
    multi_scale_deformable_attention,
    sample_dense,
    sample_grid,
    sample_value_maps,
    value_maps,
)


def _value_map(h: int, w: int) -> torch.Tensor:
    """One head, one channel: value at row r, column c is 10*r + c; flattened row-major -> [1, HW, 1, 1]."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (10.0 * rows + cols).float().reshape(1, h * w, 1, 1)


def _sample(value, shape, points, weights, sampler=None):
    loc = torch.tensor(points, dtype=torch.float32).view(1, 1, 1, 1, len(points), 2)
    w = torch.tensor(weights, dtype=torch.float32).view(1, 1, 1, 1, len(points))
    if sampler is not None:
        return sampler(value_maps(value, [shape]), loc, w).item()
    return multi_scale_deformable_attention(value, [shape], loc, w).item()


@pytest.mark.parametrize("sampler", [None, sample_grid, sample_dense])
def test_pixel_centres_and_bilinear_midpoints(sampler):
    value = _value_map(2, 3)  # the same hand-derived values through each sampler
    # pixel centre of (row 1, col 2) is ((2 + 0.5)/3, (1 + 0.5)/2) -> exactly 12
    assert _sample(value, (2, 3), [((2.5) / 3, 0.75)], [1.0], sampler) == pytest.approx(12.0)
    # x = 1/3 -> column coordinate 1/3*3 - 0.5 = 0.5, halfway between columns 0 and 1 on row 0: 0.5
    assert _sample(value, (2, 3), [(1 / 3, 0.25)], [1.0], sampler) == pytest.approx(0.5)
    # y = 0.5 -> row coordinate 0.5, halfway between rows 0 and 1 at column 1: (1 + 11) / 2 = 6
    assert _sample(value, (2, 3), [(1.5 / 3, 0.5)], [1.0], sampler) == pytest.approx(6.0)
    # left edge x = 0 -> column -0.5: half of column 0 (value 10 on row 1) with zero padding: 5
    assert _sample(value, (2, 3), [(0.0, 0.75)], [1.0], sampler) == pytest.approx(5.0)
    # far outside -> zero padding
    assert _sample(value, (2, 3), [(3.0, 0.5)], [1.0], sampler) == 0.0
    # weights mix the samples linearly: 0.25 * 12 + 0.75 * 0.5
    assert _sample(value, (2, 3), [(2.5 / 3, 0.75), (1 / 3, 0.25)], [0.25, 0.75], sampler) == pytest.approx(3.375)


@pytest.mark.numerics
def test_levels_heads_and_batches_are_independent():
    gen = torch.Generator().manual_seed(0)
    b, q, heads, ch, shapes = 2, 5, 3, 4, [(3, 4), (2, 2)]
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, ch, generator=gen)
    loc = torch.rand(b, q, heads, len(shapes), 2, 2, generator=gen)
    weights = torch.rand(b, q, heads, len(shapes), 2, generator=gen)
    out = multi_scale_deformable_attention(value, shapes, loc, weights)
    assert out.shape == (b, q, heads * ch)
    # sample 1, query 2, head 1 computed on its own equals its slice of the batched result
    single = multi_scale_deformable_attention(value[1:2, :, 1:2], shapes, loc[1:2, 2:3, 1:2], weights[1:2, 2:3, 1:2])
    assert_close_to_scale(single[0, 0], out[1, 2, ch:2 * ch], 1e-5, what="one query alone")


@pytest.mark.numerics
def test_agrees_with_mmcv_pytorch_reference():
    mmcv_ops = pytest.importorskip("mmcv.ops.multi_scale_deform_attn",
                                   reason="mmcv not installed; comparison with its deformable attention skipped")
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 6), (2, 3)]
    value = torch.randn(2, 30, 2, 8, generator=gen)
    loc = torch.rand(2, 7, 2, 2, 3, 2, generator=gen) * 1.2 - 0.1
    weights = torch.rand(2, 7, 2, 2, 3, generator=gen)
    ours = multi_scale_deformable_attention(value, shapes, loc, weights)
    theirs = mmcv_ops.multi_scale_deformable_attn_pytorch(value, torch.tensor(shapes), loc, weights)
    assert_close_to_scale(ours, theirs, 1e-5, what="mmcv")
    if torch.cuda.is_available():
        cuda = multi_scale_deformable_attention(value.cuda(), shapes, loc.cuda(), weights.cuda(), use_compiled=True)
        assert_close_to_scale(cuda.cpu(), ours, 1e-4, what="compiled CUDA op")


@pytest.mark.numerics
def test_dense_sampling_equals_grid_sample():
    """The matrix-product sampler (wide heads on the CPU) against grid_sample: points inside, on the border and
    outside, two levels, several heads and batches; the same sums in another order (float64 comparison)."""
    gen = torch.Generator().manual_seed(3)
    b, q, heads, points, shapes = 2, 9, 3, 4, [(5, 7), (3, 2)]
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, DENSE_SAMPLING_MIN_CHANNELS, generator=gen)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, generator=gen) * 1.4 - 0.2
    loc[0, 0, 0, 0] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5 / 7, 0.5 / 5], [1.0, 0.3]])  # corners, a centre, edge
    weights = torch.rand(b, q, heads, len(shapes), points, generator=gen)
    maps = value_maps(value, shapes)
    grid, dense = sample_grid(maps, loc, weights), sample_dense(maps, loc, weights)
    assert_close_to_scale(dense.double(), grid.double(), 1e-5, what="dense vs grid_sample")
    # wide heads on the CPU take the dense path, narrow ones grid_sample
    assert torch.equal(sample_value_maps(maps, loc, weights), dense)
    narrow = value_maps(value[..., :4].contiguous(), shapes)
    assert torch.equal(sample_value_maps(narrow, loc, weights), sample_grid(narrow, loc, weights))
