"""Occupancy maps of tracked objects over time and the drivable-area map (navsim `observation/*`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.strtree import STRtree

from navsim_agents.data.maps import VECTOR_LAYER_MAPPING, NuPlanMap, SemanticMapLayer

# layer kinds of the drivable-area map's polygons (nuplan SemanticMapLayer member names, lower case); they are
# stored as strings in the metric cache
ROADBLOCK, ROADBLOCK_CONNECTOR, LANE, LANE_CONNECTOR = "roadblock", "roadblock_connector", "lane", "lane_connector"
INTERSECTION, CARPARK_AREA = "intersection", "carpark_area"


@dataclass
class TrackInfo:
    """What the scorer needs of a tracked object: its type, heading and speed at first sight."""

    is_agent: bool
    heading: float
    speed: float
    vx: float = 0.0
    vy: float = 0.0


class OccupancyMap:
    """Tokens + polygons with an STR-tree (navsim `PDMOccupancyMap`)."""

    def __init__(self, tokens: list[str], polygons):
        self.tokens = list(tokens)
        self.polygons = np.asarray(polygons, dtype=object) if len(tokens) else np.array([], dtype=object)
        self._index = {t: i for i, t in enumerate(self.tokens)}
        self._tree = None  # built on the first query


    def __getitem__(self, token: str):
        return self.polygons[self._index[token]]

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def query(self, geometry, predicate: str = "intersects") -> np.ndarray:
        if self._tree is None:
            self._tree = STRtree(self.polygons, node_capacity=10)
        return self._tree.query(geometry, predicate=predicate)

    def intersects(self, geometry) -> list[str]:
        return [self.tokens[i] for i in self.query(geometry)]


class FlatOccupancy:
    """Every object of every occupancy map as one set of rows (map index, token, bounds, polygon), so the scorer
    finds candidate ego / object pairs with one vectorised bounding-box test instead of a tree per map.

    Rows are ordered by map, and within a map in the map's own order. Box objects may be given as rings [M,4,2]
    whose polygons are built only for the rows a test needs."""

    def __init__(self, map_index: np.ndarray, tokens: list[str], bounds: np.ndarray, num_maps: int,
                 polygons: np.ndarray | None = None, rings: np.ndarray | None = None):
        self.map_index = np.asarray(map_index, dtype=np.int64)
        self.tokens = tokens
        self.bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
        self.num_maps = num_maps
        self._polygons = polygons if polygons is not None else np.full(len(tokens), None, dtype=object)
        self._rings = rings  # rows whose polygon is None are boxes with these corners
        self.starts = np.searchsorted(self.map_index, np.arange(num_maps + 1))

    @classmethod
    def from_maps(cls, maps: list["OccupancyMap"]) -> "FlatOccupancy":
        tokens = [t for occ in maps for t in occ.tokens]
        polygons = np.array([g for occ in maps for g in occ.polygons] + [None], dtype=object)[:-1]
        index = np.repeat(np.arange(len(maps)), [len(occ) for occ in maps])
        bounds = shapely.bounds(polygons) if len(polygons) else np.zeros((0, 4))
        return cls(index, tokens, bounds, len(maps), polygons=polygons)

    def polygons(self, rows: np.ndarray) -> np.ndarray:
        """Polygons of `rows` (built once from their rings where needed)."""
        rows = np.asarray(rows, dtype=np.int64)
        missing = rows[np.equal(self._polygons[rows], None)]
        if len(missing):
            missing = np.unique(missing)
            ring = self._rings[missing]
            self._polygons[missing] = shapely.polygons(np.concatenate([ring, ring[:, :1]], axis=1))
        return self._polygons[rows]

    def rows_of_maps(self, map_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query position, row) of every row of map ``map_ids[i]`` for each position i, positions ascending."""
        counts = self.starts[map_ids + 1] - self.starts[map_ids]
        position = np.repeat(np.arange(len(map_ids)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return position, self.starts[map_ids][position] + offsets


def overlapping(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Bool [...]: axis-aligned boxes (xmin, ymin, xmax, ymax) that overlap or touch (what `intersects` needs)."""
    return ((boxes_a[..., 0] <= boxes_b[..., 2]) & (boxes_b[..., 0] <= boxes_a[..., 2])
            & (boxes_a[..., 1] <= boxes_b[..., 3]) & (boxes_b[..., 1] <= boxes_a[..., 3]))


def ring_bounds(rings: np.ndarray) -> np.ndarray:
    """Bounds [...,4] of point sets [...,N,2] (pairwise minima over the few points: a reduction over a short
    strided axis is several times slower)."""
    low = high = rings[..., 0, :]
    for k in range(1, rings.shape[-2]):
        low, high = np.minimum(low, rings[..., k, :]), np.maximum(high, rings[..., k, :])
    return np.concatenate([low, high], axis=-1)


class Observation:
    """Occupancy maps at 10 Hz steps; `stride` maps a step to its map (2 for PDM-Closed's forecast).

    Built from per-step maps, or from a :class:`FlatOccupancy` (the metric cache), whose maps are made only when
    indexed."""

    def __init__(self, maps: list[OccupancyMap] | None, unique: dict[str, TrackInfo],
                 collided_track_ids: list[str] | None = None, stride: int = 1, flat: FlatOccupancy | None = None):
        self._maps = maps
        self.unique = unique
        self.collided_track_ids = list(collided_track_ids or [])
        self.stride = stride
        self._flat = flat

    @property
    def maps(self) -> list[OccupancyMap]:
        if self._maps is None:
            f = self._flat
            rows = np.arange(len(f.tokens))
            polygons = f.polygons(rows) if len(rows) else np.array([], dtype=object)
            self._maps = [OccupancyMap(f.tokens[f.starts[k]:f.starts[k + 1]], polygons[f.starts[k]:f.starts[k + 1]])
                          for k in range(f.num_maps)]
        return self._maps

    @property
    def flat(self) -> FlatOccupancy:
        if self._flat is None:
            self._flat = FlatOccupancy.from_maps(self._maps)
        return self._flat

    @property
    def num_maps(self) -> int:
        return self._flat.num_maps if self._maps is None else len(self._maps)

    def __getitem__(self, time_idx: int) -> OccupancyMap:
        return self.maps[time_idx // self.stride]


class DrivableMap(OccupancyMap):
    """Drivable polygons near the ego with their layer kind (navsim `PDMDrivableMap`)."""

    def __init__(self, tokens: list[str], kinds: list[str], polygons):
        super().__init__(tokens, polygons)
        self.kinds = list(kinds)
        self._bounds = None

    def indices_of(self, kinds) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k in kinds]

    def _contains(self, polygon_ids: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Bool [len(polygon_ids), n]: strict containment, shapely's test only where the bounding box holds the
        point (a point outside it is outside the polygon)."""
        out = np.zeros((len(polygon_ids), len(points)), dtype=bool)
        if not len(polygon_ids) or not len(points):
            return out
        if self._bounds is None:
            self._bounds = shapely.bounds(self.polygons)
            shapely.prepare(self.polygons)  # indexed point-in-polygon: the polygons are tested many times
        b = self._bounds[polygon_ids]
        x, y = points[:, 0], points[:, 1]
        inside_box = ((b[:, 0, None] <= x) & (x <= b[:, 2, None]) & (b[:, 1, None] <= y) & (y <= b[:, 3, None]))
        i, j = np.nonzero(inside_box)
        out[i, j] = shapely.contains_xy(self.polygons[polygon_ids[i]], x[j], y[j])
        return out

    def points_in_polygons(self, points: np.ndarray) -> np.ndarray:
        """Bool [n_polygons, *points.shape[:-1]]: strict containment of each point in each polygon."""
        inside = self._contains(np.arange(len(self.polygons)), points.reshape(-1, 2))
        return inside.reshape((len(self.polygons),) + points.shape[:-1])

    def in_layer(self, points: np.ndarray, kind: str) -> np.ndarray:
        """Bool [...]: point strictly inside any polygon of `kind` (navsim `is_in_layer`)."""
        inside = self._contains(np.asarray(self.indices_of([kind]), dtype=np.int64), points.reshape(-1, 2))
        return inside.any(axis=0).reshape(points.shape[:-1])

    @classmethod
    def from_map(cls, map_api: NuPlanMap, x: float, y: float, radius: float) -> "DrivableMap":
        """Roadblocks, their lanes, roadblock connectors' lane connectors, intersections and car parks whose
        geometry meets the square of half-size `radius` around (x, y), in the map's file order."""
        layer = SemanticMapLayer
        wanted = [layer.ROADBLOCK, layer.ROADBLOCK_CONNECTOR, layer.INTERSECTION, layer.CARPARK_AREA]
        present = set(map_api.layer_names())
        # a map without intersections / car parks simply has none of them
        wanted = [w for w in wanted if w in (layer.ROADBLOCK, layer.ROADBLOCK_CONNECTOR)
                  or VECTOR_LAYER_MAPPING[w] in present]
        found = map_api.get_proximal_map_objects((x, y), radius, wanted)
        tokens, kinds, polys = [], [], []
        for block in found[layer.ROADBLOCK]:
            tokens.append(block.id)
            kinds.append(ROADBLOCK)
            polys.append(block.polygon)
        for block_layer, kind in ((layer.ROADBLOCK, LANE), (layer.ROADBLOCK_CONNECTOR, LANE_CONNECTOR)):
            for block in found[block_layer]:
                for edge in block.interior_edges:
                    tokens.append(edge.id)
                    kinds.append(kind)
                    polys.append(edge.polygon)
        for area_layer, kind in ((layer.INTERSECTION, INTERSECTION), (layer.CARPARK_AREA, CARPARK_AREA)):
            for area in found.get(area_layer, []):
                tokens.append(area.id)
                kinds.append(kind)
                polys.append(area.polygon)
        return cls(tokens, kinds, polys)
