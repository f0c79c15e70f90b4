"""nuPlan GeoPackage map reader: layers, map objects, the lane graph and spatial queries.

Reads the nuPlan map release layout (``<maps_root>/nuplan-maps-v1.0.json`` naming a version per location, and
``<maps_root>/<location>/<version>/map.gpkg``) with pyogrio, as nuplan-devkit's ``GPKGMapsDB`` does: every
layer is read with the GeoPackage feature id as a string index mirrored to a ``fid`` column and converted to the
projected CRS named by the ``meta`` layer (``projectedCoordSystem``). Spatial queries use one shapely STRtree per
layer. Semantics follow ``nuplan/common/maps/nuplan_map/*.py``:

- lanes (``lanes_polygons``: ``lane_fid, lane_group_fid, lane_index, left/right_boundary_fid,
  speed_limit_mps``); lane connectors (``lane_connectors``: ``exit_lane_fid`` = the lane it leaves,
  ``entry_lane_fid`` = the lane it enters, ``lane_group_connector_fid``, ``intersection_fid``,
  ``traffic_light_stop_line_fids``, ``speed_limit_mps``, ``turn_type_fid``; polygons in
  ``gen_lane_connectors_scaled_width_polygons``); roadblocks = ``lane_groups_polygons``; roadblock connectors =
  ``lane_group_connectors`` (``from_lane_group_fid, to_lane_group_fid, intersection_fid``); ``baseline_paths``
  (``lane_fid`` or ``lane_connector_fid``); ``boundaries``; ``intersections``; ``carpark_areas``;
  ``crosswalks``; ``walkways``; ``stop_polygons`` (``stop_polygon_type_fid``, ``lane_fid``).
- the lane graph: a lane's outgoing edges are the connectors leaving it, a connector's outgoing edge is the lane
  it enters; likewise for roadblocks and roadblock connectors.
- queries: ``get_proximal_map_objects`` (objects whose geometry intersects the square of half-size ``radius``),
  ``get_all_map_objects`` / ``is_in_layer`` (polygons strictly containing a point), plus vectorised
  ``points_in_layer``.

Route search (route correction, starting lane, Dijkstra, the centerline path) is PDM-Closed's and lives beside it,
in ``navsim_agents.scoring.route``.

Poses and points are plain arrays: a pose is ``(x, y, heading)``, a discrete path an ``(N, 3)`` array.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = [
    "SemanticMapLayer",
    "StopLineType",
    "MAP_LOCATIONS",
    "DEFAULT_MAP_VERSION",
    "NuPlanMap",
    "get_maps_api",
    "resolve_maps_root",
]

# nuplan/database/maps_db/gpkg_mapsdb.py: the four nuPlan locations.
MAP_LOCATIONS = ("sg-one-north", "us-ma-boston", "us-nv-las-vegas-strip", "us-pa-pittsburgh-hazelwood")
# navsim / nuplan name the Las Vegas map both ways.
MAP_ALIASES = {"las_vegas": "us-nv-las-vegas-strip"}
# navsim/common/dataclasses.py: the map release used by NAVSIM.
DEFAULT_MAP_VERSION = "nuplan-maps-v1.0"

# nuplan/common/maps/nuplan_map/nuplan_map.py: the lane-connector polygon layer.
LANE_CONNECTOR_POLYGON_LAYER = "gen_lane_connectors_scaled_width_polygons"


class SemanticMapLayer(IntEnum):
    """nuplan/common/maps/maps_datatypes.py: semantic map layers (same values)."""

    LANE = 0
    INTERSECTION = 1
    STOP_LINE = 2
    TURN_STOP = 3
    CROSSWALK = 4
    DRIVABLE_AREA = 5
    YIELD = 6
    TRAFFIC_LIGHT = 7
    STOP_SIGN = 8
    EXTENDED_PUDO = 9
    SPEED_BUMP = 10
    LANE_CONNECTOR = 11
    BASELINE_PATHS = 12
    BOUNDARIES = 13
    WALKWAYS = 14
    CARPARK_AREA = 15
    PUDO = 16
    ROADBLOCK = 17
    ROADBLOCK_CONNECTOR = 18


class StopLineType(IntEnum):
    """nuplan/common/maps/maps_datatypes.py: ``stop_polygon_type_fid`` values."""

    PED_CROSSING = 0
    STOP_SIGN = 1
    TRAFFIC_LIGHT = 2
    TURN_STOP = 3
    YIELD = 4
    UNKNOWN = 5


# nuplan/common/maps/nuplan_map/nuplan_map.py: semantic layer -> GeoPackage layer.
VECTOR_LAYER_MAPPING: Dict[SemanticMapLayer, str] = {
    SemanticMapLayer.LANE: "lanes_polygons",
    SemanticMapLayer.ROADBLOCK: "lane_groups_polygons",
    SemanticMapLayer.INTERSECTION: "intersections",
    SemanticMapLayer.STOP_LINE: "stop_polygons",
    SemanticMapLayer.CROSSWALK: "crosswalks",
    SemanticMapLayer.DRIVABLE_AREA: "drivable_area",
    SemanticMapLayer.LANE_CONNECTOR: "lane_connectors",
    SemanticMapLayer.ROADBLOCK_CONNECTOR: "lane_group_connectors",
    SemanticMapLayer.BASELINE_PATHS: "baseline_paths",
    SemanticMapLayer.BOUNDARIES: "boundaries",
    SemanticMapLayer.WALKWAYS: "walkways",
    SemanticMapLayer.CARPARK_AREA: "carpark_areas",
}
# nuplan_map.py: drivable_area = road_segments + intersections + generic_drivable_areas + carpark_areas
DRIVABLE_AREA_SOURCE_LAYERS = ("road_segments", "intersections", "generic_drivable_areas", "carpark_areas")



PointLike = Union[Sequence[float], npt.NDArray[np.float64], Any]


def _xy(point: PointLike) -> Tuple[float, float]:
    """(x, y) of a point given as a sequence/array or an object with ``.x`` / ``.y``."""
    if hasattr(point, "x") and hasattr(point, "y"):
        return float(point.x), float(point.y)
    return float(point[0]), float(point[1])


def str_id(value: Any) -> str:
    """Map ids are strings of integers (nuplan casts the fid index to str); 12.0 -> '12'."""
    if isinstance(value, (float, np.floating)):
        return str(int(value))
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is np.nan


# ----------------------------------------------------------------------------------------------------------------
# map objects


def linestring_discrete_path(linestring: LineString) -> npt.NDArray[np.float64]:
    """(N, 3) x, y, heading of a polyline's vertices; the last vertex repeats the previous heading
    (nuplan ``compute_linestring_heading``)."""
    coords = np.asarray(linestring.coords, dtype=np.float64)[:, :2]
    vectors = np.diff(coords, axis=0)
    headings = np.arctan2(vectors[:, 1], vectors[:, 0])
    headings = np.append(headings, headings[-1])
    return np.column_stack([coords, headings])


class MapObject:
    """Base of all map objects: a string ``id`` and the map it belongs to."""

    layer: SemanticMapLayer

    def __init__(self, object_id: str, map_api: "NuPlanMap"):
        self.id = str(object_id)
        self._map = map_api

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.id == self.id and other._map is self._map

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.id))

    @property
    def _row(self):
        return self._map._row(self.layer_name, self.id)

    layer_name: str = ""


class PolylineMapObject:
    """A polyline (baseline path or boundary): ``linestring``, ``length``, ``discrete_path`` (N, 3)."""

    def __init__(self, object_id: str, linestring: LineString, distance_for_heading_estimation: float = 0.5):
        self.id = str(object_id)
        if linestring.length <= 0.0:
            raise ValueError(f"polyline {object_id} has zero length")
        self._linestring = linestring
        self._distance_for_heading_estimation = distance_for_heading_estimation

    def __repr__(self) -> str:
        return f"PolylineMapObject(id={self.id!r}, length={self.length:.2f})"

    @property
    def linestring(self) -> LineString:
        return self._linestring

    @property
    def length(self) -> float:
        return float(self._linestring.length)

    @cached_property
    def discrete_path(self) -> npt.NDArray[np.float64]:
        """(N, 3) vertices with headings towards the next vertex."""
        return linestring_discrete_path(self._linestring)

    def get_nearest_arc_length_from_position(self, point: PointLike) -> float:
        return float(self._linestring.project(Point(*_xy(point))))

    def get_nearest_pose_from_position(self, point: PointLike) -> npt.NDArray[np.float64]:
        """(x, y, heading) of the nearest point on the polyline (heading over 0.5 m, as nuplan)."""
        arc = self.get_nearest_arc_length_from_position(point)
        p1 = self._linestring.interpolate(arc)
        p2 = self._linestring.interpolate(arc + self._distance_for_heading_estimation)
        if p1.equals(p2):
            p2, p1 = p1, self._linestring.interpolate(arc - self._distance_for_heading_estimation)
            heading = math.atan2(p2.y - p1.y, p2.x - p1.x)
            return np.array([p2.x, p2.y, heading])
        return np.array([p1.x, p1.y, math.atan2(p2.y - p1.y, p2.x - p1.x)])


class PolygonMapObject(MapObject):
    """A polygon map object (crosswalk, walkway, carpark area, intersection, stop line)."""

    def __init__(self, object_id: str, map_api: "NuPlanMap", layer_name: str):
        super().__init__(object_id, map_api)
        self.layer_name = layer_name

    @property
    def polygon(self) -> Polygon:
        return self._map._geometry(self.layer_name, self.id)

    def contains_point(self, point: PointLike) -> bool:
        return bool(self.polygon.contains(Point(*_xy(point))))

    def __getitem__(self, column: str) -> Any:
        """Any column of the object's row (e.g. ``intersection_type_fid``)."""
        return self._row[column]


class Intersection(PolygonMapObject):
    """An intersection polygon (``intersections`` layer)."""


class StopLine(PolygonMapObject):
    """A stop polygon (``stop_polygons``) with its ``stop_line_type``."""

    @property
    def stop_line_type(self) -> StopLineType:
        return StopLineType(int(self._row["stop_polygon_type_fid"]))


class _GraphEdge(MapObject):
    """Common parts of lanes, lane connectors, roadblocks and roadblock connectors."""

    @property
    def polygon(self) -> Polygon:
        raise NotImplementedError

    def contains_point(self, point: PointLike) -> bool:
        return bool(self.polygon.contains(Point(*_xy(point))))


class Lane(_GraphEdge):
    """A lane (``lanes_polygons``)."""

    layer = SemanticMapLayer.LANE
    layer_name = "lanes_polygons"

    @property
    def incoming_edges(self) -> List["LaneConnector"]:
        """Lane connectors entering this lane."""
        return [self._map._lane_connector(i) for i in self._map._graph["lane_in"].get(self.id, [])]

    @property
    def outgoing_edges(self) -> List["LaneConnector"]:
        """Lane connectors leaving this lane."""
        return [self._map._lane_connector(i) for i in self._map._graph["lane_out"].get(self.id, [])]

    @cached_property
    def baseline_path(self) -> PolylineMapObject:
        return self._map._baseline_path("lane_fid", self.id)

    @property
    def left_boundary(self) -> PolylineMapObject:
        return self._map._boundary(self._row["left_boundary_fid"])

    @property
    def right_boundary(self) -> PolylineMapObject:
        return self._map._boundary(self._row["right_boundary_fid"])

    def get_roadblock_id(self) -> str:
        return str_id(self._row["lane_group_fid"])

    @property
    def parent(self) -> Optional["RoadBlock"]:
        return self._map.get_map_object(self.get_roadblock_id(), SemanticMapLayer.ROADBLOCK)

    @property
    def speed_limit_mps(self) -> Optional[float]:
        value = self._row.get("speed_limit_mps")
        return None if _is_missing(value) else float(value)

    @property
    def polygon(self) -> Polygon:
        return self._map._geometry(self.layer_name, self.id)

    @property
    def index(self) -> int:
        """Lane index in its roadblock; smaller is further left."""
        return int(self._row["lane_index"])

    def is_same_roadblock(self, other: "Lane") -> bool:
        return self.get_roadblock_id() == other.get_roadblock_id()

    def is_left_of(self, other: "Lane") -> bool:
        if not self.is_same_roadblock(other):
            raise ValueError("is_left_of: lanes must be in the same roadblock")
        return self.index < other.index

    def is_right_of(self, other: "Lane") -> bool:
        if not self.is_same_roadblock(other):
            raise ValueError("is_right_of: lanes must be in the same roadblock")
        return self.index > other.index

    @property
    def adjacent_edges(self) -> Tuple[Optional["Lane"], Optional["Lane"]]:
        """(left neighbour, right neighbour) in the same roadblock, by lane index."""
        siblings = self._map._graph["roadblock_lanes"].get(self.get_roadblock_id(), [])
        by_index = {self._map._lane(i).index: i for i in siblings}
        left = by_index.get(self.index - 1)
        right = by_index.get(self.index + 1)
        return (
            self._map._lane(left) if left is not None else None,
            self._map._lane(right) if right is not None else None,
        )


class LaneConnector(_GraphEdge):
    """A lane connector (``lane_connectors``; polygon from ``gen_lane_connectors_scaled_width_polygons``)."""

    layer = SemanticMapLayer.LANE_CONNECTOR
    layer_name = "lane_connectors"

    @property
    def incoming_edges(self) -> List[Lane]:
        """The lane this connector leaves (``exit_lane_fid``)."""
        return [self._map._lane(str_id(self._row["exit_lane_fid"]))]

    @property
    def outgoing_edges(self) -> List[Lane]:
        """The lane this connector enters (``entry_lane_fid``)."""
        return [self._map._lane(str_id(self._row["entry_lane_fid"]))]

    @cached_property
    def baseline_path(self) -> PolylineMapObject:
        return self._map._baseline_path("lane_connector_fid", self.id)

    @property
    def left_boundary(self) -> PolylineMapObject:
        return self._map._boundary(self._map._lane_connector_polygon_row(self.id)["left_boundary_fid"])

    @property
    def right_boundary(self) -> PolylineMapObject:
        return self._map._boundary(self._map._lane_connector_polygon_row(self.id)["right_boundary_fid"])

    @property
    def speed_limit_mps(self) -> Optional[float]:
        value = self._row.get("speed_limit_mps")
        return None if _is_missing(value) else float(value)

    @property
    def polygon(self) -> Polygon:
        return self._map._lane_connector_polygon(self.id)

    def is_left_of(self, other: "LaneConnector") -> bool:
        return False  # nuplan: no lane-connector adjacency information

    def is_right_of(self, other: "LaneConnector") -> bool:
        return False

    def get_roadblock_id(self) -> str:
        return str_id(self._row["lane_group_connector_fid"])

    @property
    def parent(self) -> Optional["RoadBlockConnector"]:
        return self._map.get_map_object(self.get_roadblock_id(), SemanticMapLayer.ROADBLOCK_CONNECTOR)

    @property
    def turn_type_fid(self) -> Optional[int]:
        value = self._row.get("turn_type_fid")
        return None if _is_missing(value) else int(value)

    def _stop_line_ids(self) -> List[str]:
        value = self._row.get("traffic_light_stop_line_fids")
        if _is_missing(value) or value is None:
            return []
        return [part for part in str(value).replace(" ", "").split(",") if part]

    def has_traffic_lights(self) -> bool:
        return bool(self._stop_line_ids())

    @property
    def stop_lines(self) -> List[StopLine]:
        """Traffic-light stop lines crossing the baseline, else the nearest one to its start (nuplan rule)."""
        candidates = [StopLine(i, self._map, "stop_polygons") for i in self._stop_line_ids()]
        if not candidates:
            return []
        baseline = self.baseline_path.linestring
        crossing = [line for line in candidates if line.polygon.intersects(baseline)]
        if crossing:
            return crossing
        start = Point(baseline.coords[0])
        return [candidates[int(np.argmin([start.distance(line.polygon) for line in candidates]))]]


class RoadBlock(_GraphEdge):
    """A roadblock (``lane_groups_polygons``)."""

    layer = SemanticMapLayer.ROADBLOCK
    layer_name = "lane_groups_polygons"

    @property
    def incoming_edges(self) -> List["RoadBlockConnector"]:
        return [self._map._roadblock_connector(i) for i in self._map._graph["roadblock_in"].get(self.id, [])]

    @property
    def outgoing_edges(self) -> List["RoadBlockConnector"]:
        return [self._map._roadblock_connector(i) for i in self._map._graph["roadblock_out"].get(self.id, [])]

    @property
    def interior_edges(self) -> List[Lane]:
        return [self._map._lane(i) for i in self._map._graph["roadblock_lanes"].get(self.id, [])]

    @property
    def polygon(self) -> Polygon:
        return self._map._geometry(self.layer_name, self.id)


class RoadBlockConnector(_GraphEdge):
    """A roadblock connector (``lane_group_connectors``)."""

    layer = SemanticMapLayer.ROADBLOCK_CONNECTOR
    layer_name = "lane_group_connectors"

    @property
    def incoming_edges(self) -> List[RoadBlock]:
        return [self._map._roadblock(str_id(self._row["from_lane_group_fid"]))]

    @property
    def outgoing_edges(self) -> List[RoadBlock]:
        return [self._map._roadblock(str_id(self._row["to_lane_group_fid"]))]

    @property
    def interior_edges(self) -> List[LaneConnector]:
        return [self._map._lane_connector(i) for i in self._map._graph["connector_lanes"].get(self.id, [])]

    @property
    def polygon(self) -> Polygon:
        return self._map._geometry(self.layer_name, self.id)

    @property
    def intersection(self) -> Optional[Intersection]:
        value = self._row.get("intersection_fid")
        if _is_missing(value):
            return None
        return self._map.get_map_object(str_id(value), SemanticMapLayer.INTERSECTION)


# ----------------------------------------------------------------------------------------------------------------
# the map


class NuPlanMap:
    """One nuPlan map location read from its GeoPackage; layers load on first use and are kept."""

    def __init__(self, gpkg_path: Union[str, Path], map_name: str, *, map_version: str = ""):
        """
        :param gpkg_path: ``<maps_root>/<location>/<version>/map.gpkg``.
        :param map_name: the location (e.g. ``us-pa-pittsburgh-hazelwood``).
        :param map_version: the location's map version (informational).
        """
        self._gpkg_path = Path(gpkg_path)
        self._map_name = map_name
        self.map_version = map_version
        self._layers: Dict[str, Any] = {}
        self._trees: Dict[str, shapely.STRtree] = {}
        self._positions: Dict[str, Dict[str, int]] = {}
        self._objects: Dict[Tuple[str, str], Any] = {}
        # geometries by (layer, id), as the layer holds them: a pandas row lookup costs more than the use
        self._geometries: Dict[Tuple[str, str], BaseGeometry] = {}
        self._lock = threading.RLock()
        self._projection: Optional[str] = None
        self._layer_names: Optional[List[str]] = None

    def __repr__(self) -> str:
        return f"NuPlanMap({self._map_name!r}, {str(self._gpkg_path)!r})"

    def __reduce__(self):
        # sent to another process as its file name; reopened once per process there (layers are not pickled)
        return _open_map_file, (str(self._gpkg_path), self._map_name, self.map_version)

    @property
    def map_name(self) -> str:
        return self._map_name

    @property
    def gpkg_path(self) -> Path:
        return self._gpkg_path

    # --- layer loading -------------------------------------------------------------------------------------------

    def _projection_system(self) -> Optional[str]:
        if self._projection is None:
            import pyogrio

            try:
                meta = pyogrio.read_dataframe(self._gpkg_path, layer="meta", read_geometry=False)
                rows = meta[meta["key"] == "projectedCoordSystem"]["value"]
                self._projection = str(rows.iloc[0]) if len(rows) else ""
            except Exception:  # a map without a meta layer stays in its stored coordinates
                self._projection = ""
        return self._projection or None

    def layer_names(self) -> List[str]:
        """GeoPackage layer names present in the file."""
        if self._layer_names is None:
            import pyogrio

            self._layer_names = [str(name) for name, _ in pyogrio.list_layers(self._gpkg_path)]
        return list(self._layer_names)

    def load_vector_layer(self, layer_name: str):
        """The GeoDataFrame of ``layer_name`` (string ``fid`` index mirrored to a ``fid`` column, projected CRS).

        :raises KeyError: the layer is not in the GeoPackage (names the file and the layers present).
        """
        with self._lock:
            if layer_name in self._layers:
                return self._layers[layer_name]
            if layer_name == "drivable_area":
                import pandas as pd

                parts = [self.load_vector_layer(name) for name in DRIVABLE_AREA_SOURCE_LAYERS
                         if name in self.layer_names()]
                frame = pd.concat(parts).dropna(axis=1, how="any")
            else:
                frame = self._read_layer(layer_name)
            self._layers[layer_name] = frame
            self._positions[layer_name] = {fid: i for i, fid in enumerate(frame.index)}
            return frame

    def _read_layer(self, layer_name: str):
        import pyogrio

        if layer_name not in self.layer_names():
            raise KeyError(
                f"layer {layer_name!r} not found in {self._gpkg_path}; layers present: {sorted(self.layer_names())}"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            frame = pyogrio.read_dataframe(self._gpkg_path, layer=layer_name, fid_as_index=True)
        projection = self._projection_system()
        if projection and getattr(frame, "crs", None) is not None and frame.crs != projection:
            frame = frame.to_crs(projection)
        frame.index = frame.index.map(str)
        frame["fid"] = frame.index
        return frame

    def get_vector_layer(self, layer: SemanticMapLayer):
        """The GeoDataFrame of a semantic layer (nuplan's ``_get_vector_map_layer``)."""
        try:
            return self.load_vector_layer(VECTOR_LAYER_MAPPING[layer])
        except KeyError as error:
            if layer not in VECTOR_LAYER_MAPPING:
                raise ValueError(f"Unknown layer: {layer.name}") from None
            raise error

    def _tree(self, layer_name: str) -> shapely.STRtree:
        with self._lock:
            if layer_name not in self._trees:
                self._trees[layer_name] = shapely.STRtree(np.asarray(self.load_vector_layer(layer_name).geometry))
            return self._trees[layer_name]

    def _row(self, layer_name: str, object_id: str):
        frame = self.load_vector_layer(layer_name)
        return frame.iloc[self._positions[layer_name][object_id]]

    def _geometry(self, layer_name: str, object_id: str) -> BaseGeometry:
        return self._kept_geometry((layer_name, object_id), layer_name, lambda: self._positions[layer_name][object_id])

    def _kept_geometry(self, key: Tuple[str, str], layer_name: str, position: Callable[[], int]) -> BaseGeometry:
        """The geometry of `layer_name`'s row at `position()` (asked once the layer is loaded), kept under `key`."""
        geometry = self._geometries.get(key)
        if geometry is None:
            geometry = self.load_vector_layer(layer_name).geometry.iloc[position()]
            self._geometries[key] = geometry
        return geometry

    def _has(self, layer_name: str, object_id: str) -> bool:
        self.load_vector_layer(layer_name)
        return object_id in self._positions[layer_name]

    def initialize_all_layers(self) -> None:
        """Read every layer now (e.g. before forking workers)."""
        for name in list(VECTOR_LAYER_MAPPING.values()) + [LANE_CONNECTOR_POLYGON_LAYER]:
            if name == "drivable_area" or name in self.layer_names():
                self.load_vector_layer(name)
        _ = self._graph

    # --- lane graph ----------------------------------------------------------------------------------------------

    @cached_property
    def _graph(self) -> Dict[str, Dict[str, List[str]]]:
        """Adjacency lists in layer (file) order: lane_in/out, roadblock_in/out, roadblock_lanes, connector_lanes."""
        lanes = self.load_vector_layer("lanes_polygons")
        connectors = self.load_vector_layer("lane_connectors")
        roadblock_connectors = self.load_vector_layer("lane_group_connectors")

        def group(keys, values) -> Dict[str, List[str]]:
            out: Dict[str, List[str]] = {}
            for key, value in zip(keys, values, strict=True):
                if not _is_missing(key):
                    out.setdefault(str_id(key), []).append(str(value))
            return out

        return {
            "lane_out": group(connectors["exit_lane_fid"].tolist(), connectors.index),
            "lane_in": group(connectors["entry_lane_fid"].tolist(), connectors.index),
            "roadblock_out": group(roadblock_connectors["from_lane_group_fid"].tolist(), roadblock_connectors.index),
            "roadblock_in": group(roadblock_connectors["to_lane_group_fid"].tolist(), roadblock_connectors.index),
            "roadblock_lanes": group(lanes["lane_group_fid"].tolist(), lanes.index),
            "connector_lanes": group(connectors["lane_group_connector_fid"].tolist(), connectors.index),
        }

    @cached_property
    def _baseline_index(self) -> Dict[Tuple[str, str], int]:
        frame = self.load_vector_layer("baseline_paths")
        index: Dict[Tuple[str, str], int] = {}
        for column in ("lane_fid", "lane_connector_fid"):
            if column in frame.columns:
                for position, value in enumerate(frame[column].tolist()):
                    if not _is_missing(value):
                        index[(column, str_id(value))] = position
        return index

    def _baseline_path(self, column: str, object_id: str) -> PolylineMapObject:
        position = self._baseline_index.get((column, object_id))
        if position is None:
            raise KeyError(f"no baseline path with {column} = {object_id} in {self._gpkg_path}")
        frame = self.load_vector_layer("baseline_paths")
        return PolylineMapObject(frame.index[position], frame.geometry.iloc[position])

    def _boundary(self, boundary_fid: Any) -> PolylineMapObject:
        object_id = str_id(boundary_fid)
        return PolylineMapObject(object_id, self._geometry("boundaries", object_id))

    @cached_property
    def _lane_connector_polygon_index(self) -> Dict[str, int]:
        frame = self.load_vector_layer(LANE_CONNECTOR_POLYGON_LAYER)
        return {str_id(v): i for i, v in enumerate(frame["lane_connector_fid"].tolist())}

    def _lane_connector_polygon_row(self, connector_id: str):
        frame = self.load_vector_layer(LANE_CONNECTOR_POLYGON_LAYER)
        return frame.iloc[self._lane_connector_polygon_index[connector_id]]

    def _lane_connector_polygon(self, connector_id: str) -> BaseGeometry:
        # rows found by connector id, not by their own fid: a key of its own
        return self._kept_geometry((LANE_CONNECTOR_POLYGON_LAYER + " of connector", connector_id),
                                   LANE_CONNECTOR_POLYGON_LAYER, lambda: self._lane_connector_polygon_index[connector_id])

    def _cached(self, cls, object_id: str):
        key = (cls.__name__, object_id)
        obj = self._objects.get(key)
        if obj is None:
            obj = cls(object_id, self)
            self._objects[key] = obj
        return obj

    def _lane(self, object_id: str) -> Lane:
        return self._cached(Lane, object_id)

    def _lane_connector(self, object_id: str) -> LaneConnector:
        return self._cached(LaneConnector, object_id)

    def _roadblock(self, object_id: str) -> RoadBlock:
        return self._cached(RoadBlock, object_id)

    def _roadblock_connector(self, object_id: str) -> RoadBlockConnector:
        return self._cached(RoadBlockConnector, object_id)

    # --- object access -------------------------------------------------------------------------------------------

    def get_available_map_objects(self) -> List[SemanticMapLayer]:
        """Layers that have map-object representations."""
        return [
            SemanticMapLayer.LANE,
            SemanticMapLayer.LANE_CONNECTOR,
            SemanticMapLayer.ROADBLOCK,
            SemanticMapLayer.ROADBLOCK_CONNECTOR,
            SemanticMapLayer.STOP_LINE,
            SemanticMapLayer.CROSSWALK,
            SemanticMapLayer.INTERSECTION,
            SemanticMapLayer.WALKWAYS,
            SemanticMapLayer.CARPARK_AREA,
        ]

    def get_map_object(self, object_id: Any, layer: SemanticMapLayer) -> Optional[MapObject]:
        """The object ``object_id`` of ``layer``, or None when the layer has no such id.

        :raises ValueError: the layer has no object representation.
        """
        object_id = str_id(object_id)
        if layer == SemanticMapLayer.LANE:
            return self._lane(object_id) if self._has("lanes_polygons", object_id) else None
        if layer == SemanticMapLayer.LANE_CONNECTOR:
            return self._lane_connector(object_id) if self._has("lane_connectors", object_id) else None
        if layer == SemanticMapLayer.ROADBLOCK:
            return self._roadblock(object_id) if self._has("lane_groups_polygons", object_id) else None
        if layer == SemanticMapLayer.ROADBLOCK_CONNECTOR:
            return self._roadblock_connector(object_id) if self._has("lane_group_connectors", object_id) else None
        polygon_classes = {
            SemanticMapLayer.STOP_LINE: StopLine,
            SemanticMapLayer.INTERSECTION: Intersection,
            SemanticMapLayer.CROSSWALK: PolygonMapObject,
            SemanticMapLayer.WALKWAYS: PolygonMapObject,
            SemanticMapLayer.CARPARK_AREA: PolygonMapObject,
        }
        if layer not in polygon_classes:
            raise ValueError(f"Object representation for layer: {layer.name} is unavailable")
        layer_name = VECTOR_LAYER_MAPPING[layer]
        if not self._has(layer_name, object_id):
            return None
        key = (layer_name, object_id)
        if key not in self._objects:
            self._objects[key] = polygon_classes[layer](object_id, self, layer_name)
        return self._objects[key]

    def _query_layer_name(self, layer: SemanticMapLayer, *, polygons: bool) -> str:
        # containment queries of lane connectors use their polygons (nuplan _get_all_lane_connectors)
        if layer == SemanticMapLayer.LANE_CONNECTOR and polygons:
            return LANE_CONNECTOR_POLYGON_LAYER
        return VECTOR_LAYER_MAPPING[layer]

    def get_all_map_objects(self, point: PointLike, layer: SemanticMapLayer) -> List[MapObject]:
        """Objects of ``layer`` whose polygon contains ``point`` (file order)."""
        if layer not in self.get_available_map_objects():
            raise ValueError(f"Object representation for layer: {layer.name} is unavailable")
        layer_name = self._query_layer_name(layer, polygons=True)
        positions = self._tree(layer_name).query(Point(*_xy(point)), predicate="within")
        frame = self.load_vector_layer(layer_name)
        positions = np.sort(positions)
        if layer_name == LANE_CONNECTOR_POLYGON_LAYER:
            ids = [str_id(v) for v in frame["lane_connector_fid"].to_numpy()[positions]]
        else:
            ids = [str(frame.index[i]) for i in positions]
        return [self.get_map_object(i, layer) for i in ids]

    def get_one_map_object(self, point: PointLike, layer: SemanticMapLayer) -> Optional[MapObject]:
        """The single object containing ``point``, None if none; raises if several do."""
        objects = self.get_all_map_objects(point, layer)
        if len(objects) > 1:
            raise AssertionError(f"{len(objects)} map objects found. Expected only one. Try get_all_map_objects()")
        return objects[0] if objects else None

    def get_proximal_map_objects(
        self, point: PointLike, radius: float, layers: List[SemanticMapLayer]
    ) -> Dict[SemanticMapLayer, List[MapObject]]:
        """Objects of each layer whose geometry intersects the axis-aligned square of half-size ``radius``
        around ``point`` (nuplan semantics: a box, not a disc; lane connectors by their center lines)."""
        unsupported = [layer for layer in layers if layer not in self.get_available_map_objects()]
        if unsupported:
            raise ValueError(f"Object representation for layer(s): {[u.name for u in unsupported]} is unavailable")
        x, y = _xy(point)
        patch = shapely.box(x - radius, y - radius, x + radius, y + radius)
        result: Dict[SemanticMapLayer, List[MapObject]] = {}
        for layer in layers:
            layer_name = VECTOR_LAYER_MAPPING[layer]
            positions = np.sort(self._tree(layer_name).query(patch, predicate="intersects"))
            frame = self.load_vector_layer(layer_name)
            result[layer] = [self.get_map_object(frame.index[i], layer) for i in positions]
        return result

    def get_proximal_map_object_ids(
        self, point: PointLike, radius: float, layer: SemanticMapLayer
    ) -> List[str]:
        """Ids of the objects ``get_proximal_map_objects`` would return for one layer (no object creation)."""
        x, y = _xy(point)
        patch = shapely.box(x - radius, y - radius, x + radius, y + radius)
        layer_name = VECTOR_LAYER_MAPPING[layer]
        positions = np.sort(self._tree(layer_name).query(patch, predicate="intersects"))
        frame = self.load_vector_layer(layer_name)
        return [str(frame.index[i]) for i in positions]

    def is_in_layer(self, point: PointLike, layer: SemanticMapLayer) -> bool:
        """Whether some polygon of ``layer`` contains ``point`` (TURN_STOP: a stop polygon of that type)."""
        if layer == SemanticMapLayer.TURN_STOP:
            frame = self.load_vector_layer("stop_polygons")
            positions = self._tree("stop_polygons").query(Point(*_xy(point)), predicate="within")
            types = frame["stop_polygon_type_fid"].to_numpy()[positions]
            return bool(np.any(types == StopLineType.TURN_STOP.value))
        return bool(self.points_in_layer(np.asarray([_xy(point)]), layer)[0])

    def points_in_layer(self, points: npt.ArrayLike, layer: SemanticMapLayer) -> npt.NDArray[np.bool_]:
        """Vectorised ``is_in_layer``: (N, 2) points -> (N,) bools.

        Lane connectors are tested against their polygons (``gen_lane_connectors_scaled_width_polygons``, as
        nuplan's ``get_all_map_objects``); nuplan's ``is_in_layer`` would test their center lines, which never
        contain a point off the line.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        layer_name = self._query_layer_name(layer, polygons=True)
        geometries = shapely.points(points)
        hits = self._tree(layer_name).query(geometries, predicate="within")
        inside = np.zeros(len(points), dtype=bool)
        inside[hits[0]] = True
        return inside

    def get_distance_to_nearest_map_object(
        self, point: PointLike, layer: SemanticMapLayer
    ) -> Tuple[Optional[str], Optional[float]]:
        """(id, distance) of the nearest object of ``layer``; (None, None) for an empty layer."""
        layer_name = VECTOR_LAYER_MAPPING[layer]
        frame = self.load_vector_layer(layer_name)
        if len(frame) == 0:
            return None, None
        distances = shapely.distance(np.asarray(frame.geometry), Point(*_xy(point)))
        position = int(np.argmin(distances))  # first of equal distances, as a stable sort would give
        return str(frame.index[position]), float(distances[position])

    # --- route ---------------------------------------------------------------------------------------------------

    def get_roadblock_or_connector(self, object_id: Any) -> Optional[Union[RoadBlock, RoadBlockConnector]]:
        """A roadblock of that id, else a roadblock connector, else None."""
        return self.get_map_object(object_id, SemanticMapLayer.ROADBLOCK) or self.get_map_object(
            object_id, SemanticMapLayer.ROADBLOCK_CONNECTOR
        )



# ----------------------------------------------------------------------------------------------------------------
# opening maps


_MAPS_CACHE: Dict[Tuple[str, str, str], NuPlanMap] = {}
_MAPS_BY_FILE: Dict[str, NuPlanMap] = {}
_MAPS_CACHE_LOCK = threading.RLock()


def _open_map_file(gpkg_path: str, map_name: str, map_version: str = "") -> NuPlanMap:
    """The NuPlanMap of one GeoPackage, opened once per process."""
    key = str(Path(gpkg_path).resolve())
    with _MAPS_CACHE_LOCK:
        if key not in _MAPS_BY_FILE:
            _MAPS_BY_FILE[key] = NuPlanMap(gpkg_path, map_name, map_version=map_version)
        return _MAPS_BY_FILE[key]


def resolve_maps_root(
    map_root: Optional[Union[str, Path]] = None, map_version: Optional[str] = None
) -> Tuple[Path, str]:
    """(maps root, map version) from the arguments or ``$NUPLAN_MAPS_ROOT`` / ``$NUPLAN_MAP_VERSION``.

    :raises FileNotFoundError: no root given and ``NUPLAN_MAPS_ROOT`` unset.
    """
    if map_root is None:
        map_root = os.environ.get("NUPLAN_MAPS_ROOT")
        if not map_root:
            raise FileNotFoundError(
                "no nuPlan maps root: set NUPLAN_MAPS_ROOT to the folder holding nuplan-maps-v1.0.json "
                "and <location>/<version>/map.gpkg (or pass map_root)"
            )
    if map_version is None:
        map_version = os.environ.get("NUPLAN_MAP_VERSION") or DEFAULT_MAP_VERSION
    return Path(map_root), str(map_version)


def map_file_path(map_root: Union[str, Path], map_version: str, map_name: str) -> Path:
    """The GeoPackage of one location, checked to exist (nothing is opened).

    :param map_root: folder with ``<map_version>.json`` and ``<location>/<version>/map.gpkg``.
    :param map_version: release name, e.g. ``nuplan-maps-v1.0``.
    :param map_name: location (``.gpkg`` suffix and the ``las_vegas`` alias accepted).
    :raises FileNotFoundError: missing version file or GeoPackage (names ``NUPLAN_MAPS_ROOT`` and the path).
    :raises ValueError: unknown location (lists the known ones).
    """
    root = Path(map_root).expanduser()
    location = MAP_ALIASES.get(str(map_name).replace(".gpkg", ""), str(map_name).replace(".gpkg", ""))
    version_file = root / f"{map_version}.json"
    if not version_file.is_file():
        raise FileNotFoundError(
            f"nuPlan map version file not found: {version_file}. Set NUPLAN_MAPS_ROOT (now "
            f"{os.environ.get('NUPLAN_MAPS_ROOT')!r}) to the maps folder and NUPLAN_MAP_VERSION (now "
            f"{map_version!r}) to its release name"
        )
    try:
        metadata = json.loads(version_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"corrupt nuPlan map version file {version_file}: {error}") from error
    if location not in metadata:
        raise ValueError(
            f"unknown map location {map_name!r}; known locations in {version_file}: {sorted(metadata)}"
            + (f" (aliases: {MAP_ALIASES})" if MAP_ALIASES else "")
        )
    version = str(metadata[location]["version"])
    gpkg_path = root / location / version / "map.gpkg"
    if not gpkg_path.is_file():
        raise FileNotFoundError(
            f"nuPlan map file not found: {gpkg_path} (location {location}, version {version}); check "
            "NUPLAN_MAPS_ROOT"
        )
    return gpkg_path


def get_maps_api(map_root: Union[str, Path], map_version: str, map_name: str) -> NuPlanMap:
    """Open (once per process) the map of one location (:func:`map_file_path` finds the file and its errors).

    :return: the cached NuPlanMap.
    """
    root = Path(map_root).expanduser()
    location = MAP_ALIASES.get(str(map_name).replace(".gpkg", ""), str(map_name).replace(".gpkg", ""))
    key = (str(root.resolve()), str(map_version), location)
    with _MAPS_CACHE_LOCK:
        if key in _MAPS_CACHE:
            return _MAPS_CACHE[key]
        gpkg_path = map_file_path(root, map_version, location)
        nuplan_map = _open_map_file(str(gpkg_path), location, gpkg_path.parent.name)
        _MAPS_CACHE[key] = nuplan_map
        return nuplan_map


def clear_maps_cache() -> None:
    """Forget the maps opened by :func:`get_maps_api` (e.g. after rewriting a map file)."""
    with _MAPS_CACHE_LOCK:
        _MAPS_CACHE.clear()
        _MAPS_BY_FILE.clear()
