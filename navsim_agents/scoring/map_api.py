"""Thin nuPlan GeoPackage reader with exactly what the scorer and PDM-Closed need.

Semantics follow nuplan-devkit `common/maps/nuplan_map/*.py`: ids are the layer fids as strings; lanes belong to
lane groups (roadblocks), lane connectors to lane group connectors (roadblock connectors); a lane's outgoing edges
are the connectors leaving it, a connector's outgoing edge is its entry lane; baseline paths carry headings from
each vertex to the next (last one repeated); proximity queries keep objects whose geometry intersects the square
of half-size `radius` around the point.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyogrio
from shapely.geometry import LineString, Point, Polygon, box

LAYERS = ("lanes_polygons", "lane_groups_polygons", "lane_connectors", "lane_group_connectors",
          "gen_lane_connectors_scaled_width_polygons", "baseline_paths", "intersections", "carpark_areas")

# names of map layer kinds used by the drivable-area map (nuplan SemanticMapLayer members)
ROADBLOCK, ROADBLOCK_CONNECTOR, LANE, LANE_CONNECTOR = "roadblock", "roadblock_connector", "lane", "lane_connector"
INTERSECTION, CARPARK_AREA = "intersection", "carpark_area"


def discrete_path(line: LineString) -> np.ndarray:
    """Poses [N,3] along a polyline; heading to the next vertex, last repeated (nuplan `compute_linestring_heading`)."""
    coords = np.asarray(line.coords)[:, :2]
    vec = np.diff(coords, axis=0)
    angles = np.arctan2(vec[:, 1], vec[:, 0])
    angles = np.append(angles, angles[-1])
    return np.column_stack([coords, angles])


@dataclass
class LaneEdge:
    """A lane or a lane connector."""

    id: str
    kind: str  # LANE | LANE_CONNECTOR
    roadblock_id: str
    polygon: Polygon
    baseline: LineString
    speed_limit_mps: float | None
    outgoing_ids: list[str] = field(default_factory=list)
    incoming_ids: list[str] = field(default_factory=list)

    @property
    def discrete_path(self) -> np.ndarray:
        return discrete_path(self.baseline)


@dataclass
class Block:
    """A roadblock (lane group) or a roadblock connector (lane group connector)."""

    id: str
    kind: str  # ROADBLOCK | ROADBLOCK_CONNECTOR
    polygon: Polygon
    interior_ids: list[str]
    outgoing_ids: list[str]
    incoming_ids: list[str]


class NuPlanGpkgMap:
    """Lane graph and polygons of one nuPlan map (GeoPackage)."""

    def __init__(self, gpkg_path: Path, map_name: str):
        self.map_name = map_name
        self.path = Path(gpkg_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"nuPlan map file {self.path} not found; set NUPLAN_MAPS_ROOT to the maps folder")
        frames = {}
        present = {name for name, _ in pyogrio.list_layers(self.path)}
        for layer in LAYERS:
            if layer in present:
                frames[layer] = pyogrio.read_dataframe(self.path, layer=layer, fid_as_index=True)
            else:
                frames[layer] = None
        self._build(frames)

    @staticmethod
    def _fid(value) -> str:
        return str(int(value)) if isinstance(value, (float, np.floating)) else str(value)

    def _build(self, f) -> None:
        baselines_lane, baselines_conn = {}, {}
        bp = f["baseline_paths"]
        for _, row in bp.iterrows():
            if row.get("lane_fid") == row.get("lane_fid") and row.get("lane_fid") is not None:
                baselines_lane[self._fid(row["lane_fid"])] = row.geometry
            if row.get("lane_connector_fid") == row.get("lane_connector_fid") and row.get("lane_connector_fid") is not None:
                baselines_conn[self._fid(row["lane_connector_fid"])] = row.geometry
        conn_polys = {}
        cp = f["gen_lane_connectors_scaled_width_polygons"]
        if cp is not None:
            for _, row in cp.iterrows():
                conn_polys[self._fid(row["lane_connector_fid"])] = row.geometry
        self.edges: dict[str, LaneEdge] = {}
        lanes = f["lanes_polygons"]
        for fid, row in lanes.iterrows():
            lid = str(fid)
            spd = row.get("speed_limit_mps")
            self.edges[lid] = LaneEdge(lid, LANE, self._fid(row["lane_group_fid"]), row.geometry,
                                       baselines_lane.get(lid), float(spd) if spd == spd and spd is not None else None)
        conns = f["lane_connectors"]
        for fid, row in conns.iterrows():
            cid = str(fid)
            spd = row.get("speed_limit_mps")
            edge = LaneEdge(cid, LANE_CONNECTOR, self._fid(row["lane_group_connector_fid"]), conn_polys.get(cid),
                            baselines_conn.get(cid), float(spd) if spd == spd and spd is not None else None)
            exit_id, entry_id = self._fid(row["exit_lane_fid"]), self._fid(row["entry_lane_fid"])
            edge.incoming_ids = [exit_id]
            edge.outgoing_ids = [entry_id]
            self.edges[cid] = edge
            if exit_id in self.edges:
                self.edges[exit_id].outgoing_ids.append(cid)
        # incoming of lanes in the order of the connectors table
        for fid, row in conns.iterrows():
            entry_id = self._fid(row["entry_lane_fid"])
            if entry_id in self.edges:
                self.edges[entry_id].incoming_ids.append(str(fid))
        self.blocks: dict[str, Block] = {}
        groups = f["lane_groups_polygons"]
        gconn = f["lane_group_connectors"]
        lanes_by_group: dict[str, list[str]] = {}
        for lid, e in self.edges.items():
            lanes_by_group.setdefault(e.roadblock_id, []).append(lid)
        for fid, row in groups.iterrows():
            bid = str(fid)
            out = [str(i) for i, r in gconn.iterrows() if self._fid(r["from_lane_group_fid"]) == bid]
            inc = [str(i) for i, r in gconn.iterrows() if self._fid(r["to_lane_group_fid"]) == bid]
            self.blocks[bid] = Block(bid, ROADBLOCK, row.geometry, lanes_by_group.get(bid, []), out, inc)
        for fid, row in gconn.iterrows():
            bid = str(fid)
            self.blocks[bid] = Block(bid, ROADBLOCK_CONNECTOR, row.geometry, lanes_by_group.get(bid, []),
                                     [self._fid(row["to_lane_group_fid"])], [self._fid(row["from_lane_group_fid"])])
        self.intersections = {str(i): r.geometry for i, r in f["intersections"].iterrows()} if f["intersections"] is not None else {}
        self.carparks = {str(i): r.geometry for i, r in f["carpark_areas"].iterrows()} if f["carpark_areas"] is not None else {}

    # --- queries ---------------------------------------------------------------------------------------------
    def proximal(self, x: float, y: float, radius: float, kind: str) -> list[str]:
        """Ids of objects of `kind` whose geometry intersects the square of half-size `radius` around (x, y)."""
        patch = box(x - radius, y - radius, x + radius, y + radius)
        if kind in (ROADBLOCK, ROADBLOCK_CONNECTOR):
            items = [(b.id, b.polygon) for b in self.blocks.values() if b.kind == kind]
        elif kind == INTERSECTION:
            items = list(self.intersections.items())
        elif kind == CARPARK_AREA:
            items = list(self.carparks.items())
        elif kind in (LANE, LANE_CONNECTOR):
            items = [(e.id, e.polygon) for e in self.edges.values() if e.kind == kind]
        else:
            raise ValueError(f"unknown map layer kind {kind!r}")
        return [i for i, g in items if g is not None and g.intersects(patch)]

    def block(self, block_id: str) -> Block | None:
        return self.blocks.get(str(block_id))

    def distance_to_nearest_block(self, x: float, y: float, kind: str) -> tuple[str | None, float]:
        best, dist = None, np.inf
        p = Point(x, y)
        for b in self.blocks.values():
            if b.kind == kind:
                d = b.polygon.distance(p)
                if d < dist:
                    best, dist = b.id, d
        return best, dist


def map_gpkg_path(map_root: Path, map_version: str, map_name: str) -> Path:
    """Path of `<map_root>/<map_name>/<version>/map.gpkg` using `<map_root>/<map_version>.json` for the version."""
    map_name = "us-nv-las-vegas-strip" if map_name == "las_vegas" else map_name
    meta = Path(map_root) / f"{map_version}.json"
    if not meta.is_file():
        raise FileNotFoundError(f"nuPlan map index {meta} not found; set NUPLAN_MAPS_ROOT to the maps folder")
    versions = json.loads(meta.read_text())
    if map_name not in versions:
        raise KeyError(f"map {map_name!r} not in {meta}")
    return Path(map_root) / map_name / versions[map_name]["version"] / "map.gpkg"


@lru_cache(maxsize=8)
def load_map(map_root: str, map_version: str, map_name: str) -> NuPlanGpkgMap:
    """Cached map for a location (`map_root` defaults from $NUPLAN_MAPS_ROOT when empty)."""
    root = Path(map_root or os.environ.get("NUPLAN_MAPS_ROOT", ""))
    return NuPlanGpkgMap(map_gpkg_path(root, map_version, map_name), map_name)


