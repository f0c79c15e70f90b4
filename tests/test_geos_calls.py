"""The traffic simulation's direct GEOS calls give the public shapely functions' geometries, bit for bit."""

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import CAP_STYLE
from shapely.ops import unary_union

from navsim_agents.scoring import geos_calls as G


def _paths(seed: int, count: int):
    """Lane-like polylines at map coordinates (~1e6 m), 2 to 40 vertices, with sharp and gentle turns."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, 41))
        heading = np.cumsum(rng.normal(0.0, rng.choice([0.02, 0.3, 1.2]), n))
        steps = rng.uniform(0.2, 3.0, n)[:, None] * np.column_stack([np.cos(heading), np.sin(heading)])
        yield np.array([664_000.0, 3_996_000.0]) + rng.uniform(-500, 500, 2) + np.cumsum(steps, axis=0)


def test_flat_buffer_is_the_public_flat_buffer():
    for xy in _paths(0, 300):
        for distance in (0.9, 1.1, 2.5):
            public = LineString(xy).buffer(distance, cap_style=CAP_STYLE.flat)
            assert G.flat_buffer(xy, distance).wkb == public.wkb


def test_union_pair_and_polygon_are_the_public_ones():
    rng = np.random.default_rng(1)
    for xy in _paths(2, 300):
        x, y = xy[len(xy) // 2] + rng.normal(0.0, 1.0, 2)
        heading, half_length, half_width = rng.uniform(-np.pi, np.pi), rng.uniform(1.0, 3.0), rng.uniform(0.5, 1.2)
        c, s = np.cos(heading), np.sin(heading)
        shell = [(x + a * half_length * c - b * half_width * s, y + a * half_length * s + b * half_width * c)
                 for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
        box = G.polygon(shell)
        assert box.wkb == shapely.polygons(shell).wkb
        line = LineString(xy).buffer(half_width, cap_style=CAP_STYLE.flat)
        assert G.union_pair(line, box).wkb == unary_union([line, box]).wkb


def test_simplify_and_exact_equality_are_the_public_ones():
    """Footprint-like unions simplified at the occupancy tolerance and far coarser (vertices do go), again and again
    until nothing changes: every pass and every comparison as shapely's public calls give them."""
    rng = np.random.default_rng(3)
    changed = 0
    for xy in _paths(4, 200):
        x, y = xy[-1] + rng.normal(0.0, 1.0, 2)
        geometry = G.union_pair(G.flat_buffer(xy, 0.9), shapely.box(x - 2.0, y - 1.0, x + 2.0, y + 1.0))
        for tolerance in (1e-5, 0.05, 0.4):
            current = geometry
            for _ in range(4):
                simple = G.simplify_kept(current, tolerance)
                assert simple.wkb == current.simplify(tolerance, preserve_topology=True).wkb
                same = G.same_coordinates(simple, current)
                assert same is bool(shapely.equals_exact(simple, current, tolerance=0.0))
                if same:
                    break
                changed += 1
                current = simple
    assert changed > 100  # the comparisons saw both answers


def test_the_direct_calls_are_used_where_they_agree():
    """On the shapely this project is tested with, the probe agrees and the direct calls are in use."""
    assert G.DIRECT == (G.flat_buffer is not G._public_flat_buffer)
    if tuple(int(p) for p in shapely.__version__.split(".")[:2]) >= (2, 1):
        assert G.DIRECT
