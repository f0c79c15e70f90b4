"""The GEOS calls of the traffic simulation's inner loop without shapely's Python argument handling.

`flat_buffer(xy, d)` is ``LineString(xy).buffer(d, cap_style=flat)``, `union_pair(a, b)` is
``unary_union([a, b])``, `polygon(shell)` is ``shapely.polygons(shell)`` for one shell, `simplify_kept(g, t)` is
``g.simplify(t, preserve_topology=True)`` and `same_coordinates(a, b)` is ``shapely.equals_exact(a, b, tolerance=0)``:
the same GEOS functions with the same parameters, so the same floats. shapely's wrappers
(argument checks, style lookups, deprecation decorators) cost about as much as GEOS itself for the small geometries
of the reactive traffic, which builds tens of thousands of them per evaluation.

The direct calls use `shapely.lib`, shapely's compiled module. Its signatures are not public API, so they are
checked at import against the public functions on a probe geometry; where they differ (another shapely) the public
functions are used.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import LineString
from shapely.geometry.base import CAP_STYLE
from shapely.ops import unary_union


def _public_flat_buffer(xy: np.ndarray, distance: float):
    return LineString(xy).buffer(distance, cap_style=CAP_STYLE.flat)


def _public_union_pair(a, b):
    return unary_union([a, b])


def _public_polygon(shell):
    return shapely.polygons(shell)


def _public_simplify_kept(geometry, tolerance: float):
    return geometry.simplify(tolerance, preserve_topology=True)


def _public_same_coordinates(a, b) -> bool:
    return bool(shapely.equals_exact(a, b, tolerance=0.0))


def _direct_calls():
    """(flat_buffer, union_pair, polygon, simplify_kept, same_coordinates) through `shapely.lib`, with the public
    functions' defaults: 16 segments per quarter circle, round joins, mitre limit 5, two-sided; NaN coordinates
    allowed."""
    from shapely import lib
    from shapely.creation import HandleNaN

    quad_segs, cap, join = np.intc(16), np.intc(shapely.BufferCapStyle.flat), np.intc(shapely.BufferJoinStyle.round)
    mitre, single_sided, allow_nan = 5.0, np.bool_(False), np.intc(HandleNaN.allow)
    collection = np.intc(shapely.GeometryType.GEOMETRYCOLLECTION)

    def flat_buffer(xy: np.ndarray, distance: float):
        return lib.buffer(lib.linestrings(np.asarray(xy, dtype=np.float64), allow_nan), distance, quad_segs, cap,
                          join, mitre, single_sided)

    def union_pair(a, b):
        pair = np.empty(2, dtype=object)
        pair[0], pair[1] = a, b
        return lib.unary_union(lib.create_collection(pair, collection))

    no_holes = np.empty((0,), dtype=object)

    def polygon(shell):
        return lib.polygons(lib.linearrings(np.asarray(shell, dtype=np.float64), allow_nan), no_holes)

    def same_coordinates(a, b) -> bool:
        return bool(lib.equals_exact(a, b, 0.0))

    return flat_buffer, union_pair, polygon, lib.simplify_preserve_topology, same_coordinates


def _choose():
    try:
        flat_buffer, union_pair, polygon, simplify_kept, same_coordinates = _direct_calls()
        xy = np.array([[0.0, 0.0], [3.0, 0.5], [6.0, 2.0], [8.0, 5.0]])
        box = shapely.box(5.0, 1.0, 9.0, 3.0)
        same = (flat_buffer(xy, 0.9).wkb == _public_flat_buffer(xy, 0.9).wkb
                and union_pair(flat_buffer(xy, 0.9), box).wkb == _public_union_pair(_public_flat_buffer(xy, 0.9),
                                                                                    box).wkb)
        shell = [(5.0, 1.0), (9.5, 1.25), (9.0, 3.0), (5.5, 3.5)]
        same = same and polygon(shell).wkb == _public_polygon(shell).wkb
        wiggly = union_pair(flat_buffer(xy, 0.9), box)
        for tolerance in (1e-5, 0.05):
            simple = simplify_kept(wiggly, tolerance)
            same = (same and simple.wkb == _public_simplify_kept(wiggly, tolerance).wkb
                    and same_coordinates(simple, wiggly) == _public_same_coordinates(simple, wiggly))
        same = same and same_coordinates(wiggly, wiggly) and _public_same_coordinates(wiggly, wiggly)
    except (ImportError, AttributeError, TypeError, ValueError):
        same = False
    if same:
        return flat_buffer, union_pair, polygon, simplify_kept, same_coordinates, True
    return (_public_flat_buffer, _public_union_pair, _public_polygon, _public_simplify_kept, _public_same_coordinates,
            False)


flat_buffer, union_pair, polygon, simplify_kept, same_coordinates, DIRECT = _choose()
