"""Occupancy maps of tracked objects over time and the drivable-area map (navsim `observation/*`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.strtree import STRtree

from navsim_agents.scoring import map_api as M


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
    def from_map(cls, map_api: M.NuPlanGpkgMap, x: float, y: float, radius: float) -> "DrivableMap":
        """Roadblocks, their lanes, roadblock connectors' lane connectors, intersections and car parks near (x, y)."""
        tokens, kinds, polys = [], [], []
        blocks = M.ROADBLOCK, M.ROADBLOCK_CONNECTOR
        found = {k: map_api.proximal(x, y, radius, k) for k in blocks + (M.INTERSECTION, M.CARPARK_AREA)}
        for bid in found[M.ROADBLOCK]:
            tokens.append(bid)
            kinds.append(M.ROADBLOCK)
            polys.append(map_api.blocks[bid].polygon)
        for kind in blocks:
            for bid in found[kind]:
                for eid in map_api.blocks[bid].interior_ids:
                    tokens.append(eid)
                    kinds.append(M.LANE if kind == M.ROADBLOCK else M.LANE_CONNECTOR)
                    polys.append(map_api.edges[eid].polygon)
        for kind, source in ((M.INTERSECTION, map_api.intersections), (M.CARPARK_AREA, map_api.carparks)):
            for oid in found[kind]:
                tokens.append(oid)
                kinds.append(kind)
                polys.append(source[oid])
        return cls(tokens, kinds, polys)
