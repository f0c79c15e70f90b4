"""Occupancy maps of tracked objects over time and the drivable-area map (navsim `observation/*`)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        self._tree = STRtree(self.polygons, node_capacity=10)

    def __getitem__(self, token: str):
        return self.polygons[self._index[token]]

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def query(self, geometry, predicate: str = "intersects") -> np.ndarray:
        return self._tree.query(geometry, predicate=predicate)

    def intersects(self, geometry) -> list[str]:
        return [self.tokens[i] for i in self.query(geometry)]


@dataclass
class Observation:
    """Occupancy maps at 10 Hz steps; `stride` maps a step to its map (2 for PDM-Closed's forecast)."""

    maps: list[OccupancyMap]
    unique: dict[str, TrackInfo]
    collided_track_ids: list[str] = field(default_factory=list)
    stride: int = 1

    def __getitem__(self, time_idx: int) -> OccupancyMap:
        return self.maps[time_idx // self.stride]


class DrivableMap(OccupancyMap):
    """Drivable polygons near the ego with their layer kind (navsim `PDMDrivableMap`)."""

    def __init__(self, tokens: list[str], kinds: list[str], polygons):
        super().__init__(tokens, polygons)
        self.kinds = list(kinds)

    def indices_of(self, kinds) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k in kinds]

    def points_in_polygons(self, points: np.ndarray) -> np.ndarray:
        """Bool [n_polygons, *points.shape[:-1]]: strict containment of each point in each polygon."""
        flat = points.reshape(-1, 2)
        out = np.zeros((len(self.polygons), len(flat)), dtype=bool)
        for i, poly in enumerate(self.polygons):
            out[i] = shapely.contains_xy(poly, flat[:, 0], flat[:, 1])
        return out.reshape((len(self.polygons),) + points.shape[:-1])

    def in_layer(self, points: np.ndarray, kind: str) -> np.ndarray:
        """Bool [...]: point strictly inside any polygon of `kind` (navsim `is_in_layer`)."""
        idx = self.indices_of([kind])
        flat = points.reshape(-1, 2)
        out = np.zeros(len(flat), dtype=bool)
        for i in idx:
            out |= shapely.contains_xy(self.polygons[i], flat[:, 0], flat[:, 1])
        return out.reshape(points.shape[:-1])

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
