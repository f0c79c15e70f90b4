"""The synthetic town of the ``navmini`` split: geometry, lane graph and its nuPlan GeoPackage.

``build_town()`` lays out a 2 x 2 grid of two-way roads with two lanes per direction (3.5 m lanes) and a 1 m
shoulder, four 36 m intersections (two signalised, two unsignalised) with a lane connector for every legal turn (straight
lane-to-lane, left from the leftmost lane, right from the rightmost lane), a crosswalk on every arm, sidewalks,
a carpark and per-road speed limits. ``write_map_gpkg`` writes it with the layers and columns of a nuPlan map
(read from nuplan-devkit ``nuplan/common/maps/nuplan_map/*.py`` and the navsim_dev conformance maps).

All coordinates of ``TownMap`` are global (UTM-like, ``ORIGIN`` added), like a real nuPlan map.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon, box

LANE_WIDTH = 3.5
LANES_PER_DIRECTION = 2
# a paved shoulder beside the outer lane (part of the roadblock, as the gutter and parking strip of real roads):
# a car leaving a tight right turn (radius 6.75 m) swings over the lane edge when the scorer's LQR tracker
# follows its 2 Hz poses, and would otherwise leave the drivable area at once
SHOULDER = 1.0
ROAD_HALF_WIDTH = LANE_WIDTH * LANES_PER_DIRECTION + SHOULDER
# intersection half size: lanes end here, crosswalks lie inside. 18 m gives the right turn from the kerb lane a
# 12.75 m radius (9 m at the Bezier's apex): with 12 m (6.75 m) the scorer's LQR tracker, following a human's 2 Hz
# poses through the turn at walking pace, still swung out of the exit lane
BOX_HALF = 18.0
CROSSWALK_SPAN = (BOX_HALF - 4.5, BOX_HALF - 0.5)  # distance from the intersection centre along the arm
SIDEWALK = (ROAD_HALF_WIDTH, ROAD_HALF_WIDTH + 3.0)
GRID = (0.0, 170.0)  # intersection coordinates along both axes (local)
OUTER = 130.0  # length of the roads beyond the outer intersections
ORIGIN = np.array([587000.0, 4475000.0])  # local -> global offset (Pittsburgh UTM zone, as the conformance maps)
CRS = "EPSG:32617"
MAP_VERSION_NAME = "nuplan-maps-v1.0"
# nuPlan locations and map versions (nuplan-maps-v1.0.json); the map is written for every location
MAP_VERSIONS = {
    "sg-one-north": "9.17.1964",
    "us-ma-boston": "9.12.1817",
    "us-nv-las-vegas-strip": "9.15.1915",
    "us-pa-pittsburgh-hazelwood": "9.17.1937",
}
SPEED_LIMIT_EW = 13.4112  # 30 mph
SPEED_LIMIT_NS = 11.176  # 25 mph
SPEED_LIMIT_TURN = 8.9408  # 20 mph
SIGNALISED = {(0, 0): True, (1, 0): False, (0, 1): False, (1, 1): True}
# nuPlan-style enum values written to the map
TURN_TYPE = {"straight": 0, "left": 1, "right": 2}
STOP_POLYGON_TRAFFIC_LIGHT = 2
STOP_POLYGON_YIELD = 4
BOUNDARY_OUTER, BOUNDARY_INNER, BOUNDARY_CONNECTOR = 2, 1, 3

DIRS = {"E": np.array([1.0, 0.0]), "N": np.array([0.0, 1.0]), "W": np.array([-1.0, 0.0]), "S": np.array([0.0, -1.0])}


def _left(d: np.ndarray) -> np.ndarray:
    return np.array([-d[1], d[0]])


def polyline_headings(pts: np.ndarray) -> np.ndarray:
    d = np.diff(pts, axis=0)
    h = np.arctan2(d[:, 1], d[:, 0])
    return np.concatenate([h, h[-1:]])


def arc_length(pts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])


def offset_polyline(pts: np.ndarray, offset: float) -> np.ndarray:
    """Shift a polyline by ``offset`` metres along its left normal (negative: right)."""
    h = polyline_headings(pts)
    return pts + offset * np.stack([-np.sin(h), np.cos(h)], axis=1)


@dataclass
class Lane:
    """A lane or lane connector: centreline (N, 2) global, width, speed limit and graph links."""

    id: int
    centerline: np.ndarray
    speed_limit: float
    group_id: int
    index: int  # lane index in its group (0 = leftmost); connectors: the index of their exit lane
    is_connector: bool = False
    intersection_id: int | None = None
    turn: str | None = None
    successors: list[int] = field(default_factory=list)
    predecessors: list[int] = field(default_factory=list)
    left_boundary_id: int = 0
    right_boundary_id: int = 0
    approach: str | None = None  # connectors: the arm they come from (E, N, W, S)

    def __post_init__(self):
        self.s = arc_length(self.centerline)
        self.length = float(self.s[-1])
        self.left_boundary = offset_polyline(self.centerline, LANE_WIDTH / 2)
        self.right_boundary = offset_polyline(self.centerline, -LANE_WIDTH / 2)
        self.polygon = Polygon(np.concatenate([self.left_boundary, self.right_boundary[::-1]]))


@dataclass
class Intersection:
    id: int
    center: np.ndarray
    signalised: bool
    polygon: Polygon
    incoming: dict = field(default_factory=dict)  # approach arm -> lane group id
    connectors: list[int] = field(default_factory=list)
    crosswalks: list[int] = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)


@dataclass
class Crosswalk:
    id: int
    polygon: Polygon
    intersection_id: int
    ends: np.ndarray  # (2, 2): the two kerb-side end points of the crossing line


@dataclass
class TownMap:
    """The town: lanes / connectors (``lanes``), lane groups (``groups``: id -> dict with ``lanes``,
    ``polygon``), group connectors, intersections, crosswalks, walkways, carparks, stop polygons."""

    lanes: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)
    group_connectors: dict = field(default_factory=dict)
    intersections: dict = field(default_factory=dict)
    crosswalks: dict = field(default_factory=dict)
    walkways: list = field(default_factory=list)
    carparks: list = field(default_factory=list)
    road_segments: list = field(default_factory=list)
    stop_polygons: list = field(default_factory=list)  # (id, type, lane id, polygon)
    entry_lanes: list = field(default_factory=list)  # lanes starting at the map border
    _drivable: object = None

    @property
    def drivable_area(self):
        """Union of roadblock, roadblock-connector, intersection and carpark polygons (NAVSIM's drivable area)."""
        if self._drivable is None:
            polys = [g["polygon"] for g in self.groups.values()] + [g["polygon"] for g in self.group_connectors.values()]
            polys += [i.polygon for i in self.intersections.values()] + list(self.carparks)
            self._drivable = shapely.union_all(polys)
            shapely.prepare(self._drivable)
        return self._drivable

    def lane_group_of(self, lane_id: int) -> int:
        return self.lanes[lane_id].group_id

    def render_primitives(self, center_xy, radius: float = 150.0):
        """``rap_backbone.raster.MapPrimitives`` near ``center_xy``: lane / connector outlines, crosswalks
        and the boundary of the union of roadblocks and intersections (RAP's ``extract_map_features``)."""
        from rap_backbone.raster import MapPrimitives

        c = np.asarray(center_xy[:2], dtype=np.float64)
        if not hasattr(self, "_prim_cache"):
            lanes = [np.asarray(ln.polygon.exterior.coords) for ln in self.lanes.values()]
            cws = [np.asarray(cw.polygon.exterior.coords)[:-1] for cw in self.crosswalks.values()]
            self._prim_cache = {name: (items, np.array([[*it.min(0), *it.max(0)] for it in items]))
                                for name, items in (("lanes", lanes), ("crosswalks", cws),
                                                    ("boundaries", self.road_boundaries))}

        def near(name):
            items, bb = self._prim_cache[name]
            # distance from the centre to each bounding box
            dx = np.maximum(np.maximum(bb[:, 0] - c[0], c[0] - bb[:, 2]), 0.0)
            dy = np.maximum(np.maximum(bb[:, 1] - c[1], c[1] - bb[:, 3]), 0.0)
            return [items[i] for i in np.flatnonzero(np.hypot(dx, dy) < radius)]

        return MapPrimitives(lanes=near("lanes"), boundaries=near("boundaries"), crosswalks=near("crosswalks"))

    @property
    def road_boundaries(self) -> list:
        if not hasattr(self, "_boundaries"):
            polys = [g["polygon"] for g in self.groups.values()] + [i.polygon for i in self.intersections.values()]
            from rap_backbone.raster import densify

            bnd = shapely.union_all(polys).boundary
            lines = [densify(np.asarray(g.coords)) for g in getattr(bnd, "geoms", [bnd])]
            self._boundaries = lines
        return self._boundaries


def _line(p0, p1, step=1.0) -> np.ndarray:
    n = max(2, int(round(np.linalg.norm(p1 - p0) / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return p0 + t * (p1 - p0)


def _bezier(p0, c, p1, n=41) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p1


def build_town() -> TownMap:
    """Lay out the town (deterministic, no randomness)."""
    town = TownMap()
    ids = {"group": 10000, "gconn": 20000, "lane": 30000, "conn": 40000, "bnd": 50000, "stop": 70000,
           "cw": 71000, "walk": 72000, "park": 73000, "inter": 74000, "seg": 75000}
    boundaries = {}  # id -> (type, polyline)

    def nid(kind):
        ids[kind] += 1
        return ids[kind]

    # intersections
    for gi, gx in enumerate(GRID):
        for gj, gy in enumerate(GRID):
            c = np.array([gx, gy]) + ORIGIN
            inter = Intersection(nid("inter"), c, SIGNALISED[(gi, gj)],
                                 box(c[0] - BOX_HALF, c[1] - BOX_HALF, c[0] + BOX_HALF, c[1] + BOX_HALF),
                                 grid=(gi, gj))
            town.intersections[inter.id] = inter
    node_at = {tuple(np.round(i.center, 3)): i for i in town.intersections.values()}

    # roads: for each axis and grid line, segments between nodes and to the map border
    for axis in ("x", "y"):
        for g in GRID:
            stops = list(GRID)
            cuts = [stops[0] - BOX_HALF - OUTER]
            for s in stops:
                cuts += [s - BOX_HALF, s + BOX_HALF]
            cuts.append(stops[-1] + BOX_HALF + OUTER)
            speed = SPEED_LIMIT_EW if axis == "x" else SPEED_LIMIT_NS
            for a, b in zip(cuts[0::2], cuts[1::2], strict=True):
                p_a = ORIGIN + (np.array([a, g]) if axis == "x" else np.array([g, a]))
                p_b = ORIGIN + (np.array([b, g]) if axis == "x" else np.array([g, b]))
                seg_polys = []
                for start, end in ((p_a, p_b), (p_b, p_a)):
                    dd = (end - start) / np.linalg.norm(end - start)
                    n = _left(dd)
                    gid = nid("group")
                    lane_ids = []
                    bnd_ids = []
                    for k in range(LANES_PER_DIRECTION + 1):
                        off = -LANE_WIDTH * k
                        bid = nid("bnd")
                        btype = BOUNDARY_OUTER if k in (0, LANES_PER_DIRECTION) else BOUNDARY_INNER
                        boundaries[bid] = (btype, _line(start + off * n, end + off * n))
                        bnd_ids.append(bid)
                    for i in range(LANES_PER_DIRECTION):
                        off = -(LANE_WIDTH / 2 + LANE_WIDTH * i)
                        lane = Lane(nid("lane"), _line(start + off * n, end + off * n), speed, gid, i,
                                    left_boundary_id=bnd_ids[i], right_boundary_id=bnd_ids[i + 1])
                        town.lanes[lane.id] = lane
                        lane_ids.append(lane.id)
                    poly = Polygon([start, end, end - ROAD_HALF_WIDTH * n, start - ROAD_HALF_WIDTH * n])
                    town.groups[gid] = {"lanes": lane_ids, "polygon": poly, "direction": dd, "start": start,
                                        "end": end}
                    seg_polys.append(poly)
                    # which intersections it leaves / enters
                    end_node = node_at.get(tuple(np.round(end + BOX_HALF * dd, 3)))
                    start_node = node_at.get(tuple(np.round(start - BOX_HALF * dd, 3)))
                    town.groups[gid]["to_node"] = end_node.id if end_node else None
                    town.groups[gid]["from_node"] = start_node.id if start_node else None
                    if start_node is None:
                        town.entry_lanes.extend(lane_ids)
                    if end_node is not None:
                        arm = _arm_name(-dd)
                        end_node.incoming[arm] = gid
                town.road_segments.append((nid("seg"), shapely.union_all(seg_polys)))
                # sidewalks on both sides
                dd = (p_b - p_a) / np.linalg.norm(p_b - p_a)
                n = _left(dd)
                for side in (1.0, -1.0):
                    w0, w1 = side * SIDEWALK[0], side * SIDEWALK[1]
                    town.walkways.append((nid("walk"), Polygon([p_a + w0 * n, p_b + w0 * n, p_b + w1 * n,
                                                               p_a + w1 * n])))

    # connectors, crosswalks and stop polygons per intersection
    out_group = {}
    for gid, g in town.groups.items():
        if g["from_node"] is not None:
            out_group[(g["from_node"], _arm_name(g["direction"]))] = gid
    for inter in town.intersections.values():
        for arm, in_gid in sorted(inter.incoming.items()):
            gin = town.groups[in_gid]
            d_in = gin["direction"]
            for out_arm in ("E", "N", "W", "S"):
                if out_arm == arm:
                    continue  # no U-turns
                out_gid = out_group.get((inter.id, out_arm))
                if out_gid is None:
                    continue
                d_out = town.groups[out_gid]["direction"]
                cross = d_in[0] * d_out[1] - d_in[1] * d_out[0]
                turn = "straight" if abs(cross) < 0.5 else ("left" if cross > 0 else "right")
                pairs = {"straight": [(0, 0), (1, 1)], "left": [(0, 0)], "right": [(1, 1)]}[turn]
                gcid = nid("gconn")
                conn_ids = []
                for i_in, i_out in pairs:
                    lane_in = town.lanes[gin["lanes"][i_in]]
                    lane_out = town.lanes[town.groups[out_gid]["lanes"][i_out]]
                    p0, p1 = lane_in.centerline[-1], lane_out.centerline[0]
                    if turn == "straight":
                        pts = _line(p0, p1)
                    else:
                        # control point: where the two lane directions meet
                        t = np.linalg.solve(np.stack([d_in, -d_out], axis=1), p1 - p0)[0]
                        pts = _bezier(p0, p0 + t * d_in, p1)
                    speed = lane_in.speed_limit if turn == "straight" else SPEED_LIMIT_TURN
                    conn = Lane(nid("conn"), pts, speed, gcid, i_in, is_connector=True,
                                intersection_id=inter.id, turn=turn, approach=arm)
                    conn.left_boundary_id = nid("bnd")
                    boundaries[conn.left_boundary_id] = (BOUNDARY_CONNECTOR, conn.left_boundary)
                    conn.right_boundary_id = nid("bnd")
                    boundaries[conn.right_boundary_id] = (BOUNDARY_CONNECTOR, conn.right_boundary)
                    conn.predecessors.append(lane_in.id)
                    conn.successors.append(lane_out.id)
                    lane_in.successors.append(conn.id)
                    lane_out.predecessors.append(conn.id)
                    town.lanes[conn.id] = conn
                    inter.connectors.append(conn.id)
                    conn_ids.append(conn.id)
                town.group_connectors[gcid] = {
                    "lanes": conn_ids, "from": in_gid, "to": out_gid, "intersection": inter.id,
                    "polygon": shapely.union_all([town.lanes[c].polygon for c in conn_ids]),
                }
            for li in gin["lanes"]:
                lane = town.lanes[li]
                tail = lane.centerline[-1] - 1.5 * d_in
                n = _left(d_in)
                poly = Polygon([tail + n * LANE_WIDTH / 2, lane.centerline[-1] + n * LANE_WIDTH / 2,
                                lane.centerline[-1] - n * LANE_WIDTH / 2, tail - n * LANE_WIDTH / 2])
                ptype = STOP_POLYGON_TRAFFIC_LIGHT if inter.signalised else STOP_POLYGON_YIELD
                town.stop_polygons.append((nid("stop"), ptype, li, poly))
        for arm in ("E", "N", "W", "S"):
            a = DIRS[arm]
            n = _left(a)
            c = inter.center
            lo, hi = CROSSWALK_SPAN
            half = SIDEWALK[0] + 1.0  # kerb-side ends on the sidewalk, clear of the neighbouring crosswalks
            poly = Polygon([c + lo * a + half * n, c + hi * a + half * n, c + hi * a - half * n, c + lo * a - half * n])
            mid = c + 0.5 * (lo + hi) * a
            cw = Crosswalk(nid("cw"), poly, inter.id, np.stack([mid + half * n, mid - half * n]))
            town.crosswalks[cw.id] = cw
            inter.crosswalks.append(cw.id)
    # carpark north of the first east-west road, between the two western/eastern intersections
    c0 = ORIGIN + np.array([GRID[0] + 40.0, GRID[0] + SIDEWALK[1] + 1.0])
    town.carparks.append(box(c0[0], c0[1], c0[0] + 60.0, c0[1] + 35.0))
    town.boundaries = boundaries
    town.ids = ids
    return town


def _arm_name(d: np.ndarray) -> str:
    for k, v in DIRS.items():
        if np.allclose(v, d):
            return k
    raise ValueError(f"not an axis direction: {d}")


# ---------------------------------------------------------------------------------------------------
# GeoPackage writer
# ---------------------------------------------------------------------------------------------------
def write_map_gpkg(town: TownMap, path: Path, map_version: str) -> None:
    """Write ``town`` as a nuPlan GeoPackage at ``path`` (layers and columns of nuPlan's maps)."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    rows = []
    lanes = [ln for ln in town.lanes.values() if not ln.is_connector]
    conns = [ln for ln in town.lanes.values() if ln.is_connector]
    stop_by_lane = {lane_id: sid for sid, _, lane_id, _ in town.stop_polygons}

    def layer(name, data, geoms):
        frame = gpd.GeoDataFrame(data, geometry=list(geoms), crs=CRS)
        rows.append((name, frame))

    layer("lanes_polygons", {
        "fid": [ln.id for ln in lanes], "lane_fid": [ln.id for ln in lanes],
        "lane_group_fid": [ln.group_id for ln in lanes], "lane_index": [ln.index for ln in lanes],
        "left_boundary_fid": [ln.left_boundary_id for ln in lanes],
        "right_boundary_fid": [ln.right_boundary_id for ln in lanes],
        "speed_limit_mps": [ln.speed_limit for ln in lanes], "creator_id": [0] * len(lanes)},
        [ln.polygon for ln in lanes])
    gids = sorted(town.groups)
    layer("lane_groups_polygons", {"fid": gids, "from_edge_fid": [0] * len(gids), "to_edge_fid": [0] * len(gids),
                                   "creator_id": [0] * len(gids)}, [town.groups[g]["polygon"] for g in gids])
    layer("lane_connectors", {
        "fid": [c.id for c in conns], "exit_lane_fid": [c.predecessors[0] for c in conns],
        "entry_lane_fid": [c.successors[0] for c in conns],
        "lane_group_connector_fid": [c.group_id for c in conns],
        "intersection_fid": [c.intersection_id for c in conns],
        "traffic_light_stop_line_fids": [
            str(stop_by_lane[c.predecessors[0]]) if town.intersections[c.intersection_id].signalised else ""
            for c in conns],
        "speed_limit_mps": [c.speed_limit for c in conns], "turn_type_fid": [TURN_TYPE[c.turn] for c in conns]},
        [LineString(c.centerline) for c in conns])
    gcs = sorted(town.group_connectors)
    layer("lane_group_connectors", {
        "fid": gcs, "from_lane_group_fid": [town.group_connectors[g]["from"] for g in gcs],
        "to_lane_group_fid": [town.group_connectors[g]["to"] for g in gcs],
        "intersection_fid": [town.group_connectors[g]["intersection"] for g in gcs]},
        [town.group_connectors[g]["polygon"] for g in gcs])
    layer("gen_lane_connectors_scaled_width_polygons", {
        "fid": [c.id for c in conns], "lane_connector_fid": [c.id for c in conns],
        "left_boundary_fid": [c.left_boundary_id for c in conns],
        "right_boundary_fid": [c.right_boundary_id for c in conns]}, [c.polygon for c in conns])
    all_lanes = lanes + conns
    layer("baseline_paths", {
        "fid": [60001 + i for i in range(len(all_lanes))],
        "lane_fid": [float(ln.id) if not ln.is_connector else np.nan for ln in all_lanes],
        "lane_connector_fid": [float(ln.id) if ln.is_connector else np.nan for ln in all_lanes]},
        [LineString(ln.centerline) for ln in all_lanes])
    bids = sorted(town.boundaries)
    layer("boundaries", {"fid": bids, "boundary_type_fid": [town.boundaries[b][0] for b in bids]},
          [LineString(town.boundaries[b][1]) for b in bids])
    iids = sorted(town.intersections)
    layer("intersections", {"fid": iids, "intersection_type_fid": [0] * len(iids)},
          [town.intersections[i].polygon for i in iids])
    layer("stop_polygons", {"fid": [s[0] for s in town.stop_polygons],
                            "stop_polygon_type_fid": [s[1] for s in town.stop_polygons],
                            "lane_fid": [s[2] for s in town.stop_polygons]}, [s[3] for s in town.stop_polygons])
    cws = sorted(town.crosswalks)
    layer("crosswalks", {"fid": cws, "creator_id": [0] * len(cws)}, [town.crosswalks[c].polygon for c in cws])
    layer("walkways", {"fid": [w[0] for w in town.walkways]}, [w[1] for w in town.walkways])
    layer("carpark_areas", {"fid": [73001 + i for i in range(len(town.carparks))]}, town.carparks)
    layer("road_segments", {"fid": [s[0] for s in town.road_segments]}, [s[1] for s in town.road_segments])
    layer("generic_drivable_areas", {"fid": [76001 + i for i in range(len(town.carparks))]}, town.carparks)

    # GDAL stamps GeoPackage tables with the current time unless told otherwise: fix it for reproducible bytes
    old = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": "2021-01-01T00:00:00.000Z"})
    try:
        for name, frame in rows:
            pyogrio.write_dataframe(frame, path, layer=name, driver="GPKG")
        meta = pd.DataFrame({"key": ["projectedCoordSystem", "mapVersion", "generator"],
                             "value": [CRS, map_version, "eupe-drive navmini"]})
        pyogrio.write_dataframe(meta, path, layer="meta", driver="GPKG")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": old})


def write_maps(town: TownMap, maps_root: Path) -> None:
    """Write ``nuplan-maps-v1.0.json`` and the town's gpkg for every nuPlan location under ``maps_root``."""
    maps_root = Path(maps_root)
    maps_root.mkdir(parents=True, exist_ok=True)
    first = None
    for location, version in MAP_VERSIONS.items():
        target = maps_root / location / version / "map.gpkg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if first is None:
            write_map_gpkg(town, target, version)
            first = target
        else:  # the same town for every location (the nuPlan map factory opens all four)
            shutil.copyfile(first, target)
    with open(maps_root / f"{MAP_VERSION_NAME}.json", "w") as handle:
        json.dump({k: {"version": v} for k, v in MAP_VERSIONS.items()}, handle, indent=2, sort_keys=True)
