"""PDM route search: the route's roadblocks and lanes, route correction, starting lane, Dijkstra, centerline path.

Follows navsim's PDM code (``pdm_planner/utils/route_utils.py``, ``graph_search/{bfs_roadblock,dijkstra}.py``,
``abstract_pdm_planner.py``, ``pdm_path.py``): route roadblocks are de-duplicated and corrected
(:func:`route_roadblock_correction`), the starting lane is the on-route lane under the rear axle with the
smallest heading error, a Dijkstra search over on-route lanes (cost = baseline length, start distance 1) reaches
the last route roadblock within 30 roadblocks, and the baseline paths of the lanes found are concatenated into a
:class:`PDMPath` with arc-length progress, interpolation and projection. As in NAVSIM it sits beside PDM-Closed
(``pdm_closed.build_route_context`` is its one caller); the map it searches comes from ``navsim_agents.data.maps``.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import LineString, Point, Polygon
from shapely.geometry.base import BaseGeometry

from navsim_agents.data.maps import (
    Lane,
    LaneConnector,
    NuPlanMap,
    RoadBlock,
    RoadBlockConnector,
    SemanticMapLayer,
    str_id,
)
from navsim_agents.scoring.geometry import normalize_angle
from navsim_agents.scoring.interpolation import LinearInterpolator


class PDMPath:
    """A discrete path (N, 3) with arc-length progress, interpolation, projection and substrings (``pdm_path.py``)."""

    def __init__(self, discrete_path: npt.ArrayLike):
        """
        :param discrete_path: (N, 3) x, y, heading, N >= 2.
        """
        states = np.array(discrete_path, dtype=np.float64).reshape(-1, 3)
        if len(states) < 2:
            raise ValueError(f"PDMPath needs at least 2 poses, got {len(states)}")
        self._discrete_path = states.copy()
        states[:, 2] = np.unwrap(states[:, 2], axis=0)
        self._states_se2_array = states
        steps = np.linalg.norm(np.diff(states[:, :2], axis=0), axis=1)
        self._progress = np.cumsum(np.append(0.0, steps), dtype=np.float64)
        self._linestring = shapely.linestrings(states[:, :2])
        # scipy's interp1d as in pdm_path.py, value for value (same choice at repeated progress where lanes join)
        self._interpolator = LinearInterpolator(self._progress, self._states_se2_array)

    def __reduce__(self):
        return self.__class__, (self._discrete_path,)

    @property
    def discrete_path(self) -> npt.NDArray[np.float64]:
        """(N, 3) poses as given."""
        return self._discrete_path

    @property
    def states_se2_array(self) -> npt.NDArray[np.float64]:
        """(N, 3) poses with unwrapped headings."""
        return self._states_se2_array

    @property
    def progress(self) -> npt.NDArray[np.float64]:
        """(N,) cumulative arc length at each pose."""
        return self._progress

    @property
    def length(self) -> float:
        return float(self._progress[-1])

    @property
    def linestring(self) -> LineString:
        return self._linestring

    def project(self, points: npt.ArrayLike) -> Union[float, npt.NDArray[np.float64]]:
        """Arc length of the nearest path point to each point: (2,) -> float, (..., 2) or shapely points -> array."""
        if isinstance(points, BaseGeometry):
            return float(self._linestring.project(points))
        array = np.asarray(points)
        if array.dtype == object:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="invalid value encountered in line_locate_point")
                return shapely.line_locate_point(self._linestring, array)
        array = array.astype(np.float64)
        if array.shape == (2,):
            return float(self._linestring.project(Point(array)))
        flat = shapely.points(array.reshape(-1, 2))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="invalid value encountered in line_locate_point")
            return shapely.line_locate_point(self._linestring, flat).reshape(array.shape[:-1])

    def distances_up_to(self, points: npt.ArrayLike, limit: float) -> npt.NDArray[np.float64]:
        """``shapely.distance(points, linestring)`` [...] where it is at most `limit`, and a value above `limit` where it
        is not: only the part of the path whose segments come near the points' bounds is asked. A point within
        `limit` has its nearest segment there, and GEOS takes the minimum over segments, so the floats are the
        same."""
        array = np.asarray(points, dtype=np.float64)
        flat = array.reshape(-1, 2)
        if not len(flat):
            return np.zeros(array.shape[:-1])
        xy = self._states_se2_array[:, :2]
        grow = limit + 1e-6 * (1.0 + float(np.abs(flat).max()))  # far above GEOS rounding at these magnitudes
        low, high = flat.min(axis=0) - grow, flat.max(axis=0) + grow
        near = np.flatnonzero(np.all((np.minimum(xy[:-1], xy[1:]) <= high) & (np.maximum(xy[:-1], xy[1:]) >= low),
                                     axis=1))
        if not len(near):
            return np.full(array.shape[:-1], np.inf)
        part = shapely.linestrings(xy[near[0]: near[-1] + 2])
        return shapely.distance(shapely.points(flat), part).reshape(array.shape[:-1])

    def interpolate(self, distances: npt.ArrayLike, as_array: bool = True) -> npt.NDArray[np.float64]:
        """(..., 3) poses at arc lengths ``distances`` (clipped to [1e-5, length]; headings wrapped; NaN -> 0)."""
        distances = np.clip(np.asarray(distances, dtype=np.float64), 1e-5, self.length)
        out = self._interpolator(distances)
        out[..., 2] = normalize_angle(out[..., 2])
        out[np.isnan(out)] = 0.0
        return out

    def substring(self, start_distance: float, end_distance: float) -> LineString:
        """The part of the path between two arc lengths (vertices inside the interval, or shapely's substring)."""
        start = float(np.clip(start_distance, 0.0, self.length))
        end = float(np.clip(end_distance, 0.0, self.length))
        inside = np.logical_and(start <= self._progress, self._progress <= end)
        coordinates = self._states_se2_array[inside, :2]
        if len(coordinates) > 1:
            return LineString(coordinates)
        from shapely.ops import substring

        return substring(self._linestring, start, end)


def load_route_dicts(
    map_api: NuPlanMap, route_roadblock_ids: Sequence[Any]
) -> Tuple[Dict[str, Union[RoadBlock, RoadBlockConnector]], Dict[str, Union[Lane, LaneConnector]]]:
    """(roadblock dict, lane dict) of a route: ids de-duplicated in order, roadblock else connector, with their
    interior lanes / lane connectors (``abstract_pdm_planner._load_route_dicts``); unknown ids are skipped."""
    roadblock_dict: Dict[str, Union[RoadBlock, RoadBlockConnector]] = {}
    lane_dict: Dict[str, Union[Lane, LaneConnector]] = {}
    for object_id in dict.fromkeys(str_id(i) for i in route_roadblock_ids):
        block = map_api.get_roadblock_or_connector(object_id)
        if block is None:
            continue
        roadblock_dict[block.id] = block
        for lane in block.interior_edges:
            lane_dict[lane.id] = lane
    return roadblock_dict, lane_dict


class BreadthFirstSearchRoadBlock:
    """Iterative BFS over the roadblock graph (``graph_search/bfs_roadblock.py``)."""

    def __init__(self, start_roadblock_id: str, map_api: NuPlanMap, forward_search: bool = True):
        self._map_api = map_api
        self._queue = deque([map_api.get_roadblock_or_connector(start_roadblock_id), None])
        self._parent: Dict[str, Optional[Any]] = {}
        self._forward_search = forward_search
        self._target_roadblock_ids: List[str] = []

    def search(self, target_roadblock_id: Union[str, List[str]], max_depth: int) -> Tuple[Tuple[list, list], bool]:
        """((path, path ids), found) from the start to one of the targets within ``max_depth`` levels."""
        if isinstance(target_roadblock_id, str):
            target_roadblock_id = [target_roadblock_id]
        self._target_roadblock_ids = list(target_roadblock_id)
        start_edge = self._queue[0]
        path_found = False
        end_edge = start_edge
        end_depth = 1
        depth = 1
        self._parent[f"{start_edge.id}_{depth}"] = None
        while self._queue:
            current_edge = self._queue.popleft()
            if depth > max_depth:
                break
            if current_edge is None:
                depth += 1
                self._queue.append(None)
                if self._queue[0] is None:
                    break
                continue
            if current_edge.id in self._target_roadblock_ids and depth <= max_depth:
                end_edge, end_depth, path_found = current_edge, depth, True
                break
            neighbours = current_edge.outgoing_edges if self._forward_search else current_edge.incoming_edges
            for next_edge in neighbours:
                self._queue.append(next_edge)
                self._parent[f"{next_edge.id}_{depth + 1}"] = current_edge
                end_edge, end_depth = next_edge, depth + 1
        return self._construct_path(end_edge, end_depth), path_found

    def _construct_path(self, end_edge, depth: int) -> Tuple[list, list]:
        path = [end_edge]
        path_id = [end_edge.id]
        while self._parent[f"{end_edge.id}_{depth}"] is not None:
            path.append(self._parent[f"{end_edge.id}_{depth}"])
            path_id.append(path[-1].id)
            end_edge = self._parent[f"{end_edge.id}_{depth}"]
            depth -= 1
        if self._forward_search:
            path.reverse()
            path_id.reverse()
        return path, path_id


class Dijkstra:
    """Dijkstra over the lane graph restricted to candidate lanes (``graph_search/dijkstra.py``): the goal is any
    lane of the target roadblock; edge cost = baseline length; the start has distance 1. Without a path, the
    cheapest of the deepest expanded lanes ends the returned path."""

    def __init__(self, start_edge: Union[Lane, LaneConnector], candidate_lane_edge_ids: Sequence[str]):
        self._queue = [start_edge]
        self._parent: Dict[str, Optional[Any]] = {}
        self._candidate_lane_edge_ids = set(candidate_lane_edge_ids)

    def search(self, target_roadblock: Union[RoadBlock, RoadBlockConnector]) -> Tuple[list, bool]:
        """(lanes from the start edge, found)."""
        start_edge = self._queue[0]
        path_found = False
        end_edge = start_edge
        self._parent[start_edge.id] = None
        frontier = [start_edge.id]
        dists = [1.0]
        depths = [1]
        expanded, expanded_ids, expanded_dist, expanded_depth = [], set(), [], []
        while self._queue:
            dist, idx = min((value, i) for i, value in enumerate(dists))
            current_edge = self._queue[idx]
            current_depth = depths[idx]
            del dists[idx], self._queue[idx], frontier[idx], depths[idx]
            if current_edge.get_roadblock_id() == target_roadblock.id:
                end_edge, path_found = current_edge, True
                break
            expanded.append(current_edge)
            expanded_ids.add(current_edge.id)
            expanded_dist.append(dist)
            expanded_depth.append(current_depth)
            for next_edge in current_edge.outgoing_edges:
                if next_edge.id not in self._candidate_lane_edge_ids:
                    continue
                alt = dist + next_edge.baseline_path.length
                if next_edge.id not in expanded_ids and next_edge.id not in frontier:
                    self._parent[next_edge.id] = current_edge
                    self._queue.append(next_edge)
                    frontier.append(next_edge.id)
                    dists.append(alt)
                    depths.append(current_depth + 1)
                    end_edge = next_edge
                elif next_edge.id in frontier:
                    j = frontier.index(next_edge.id)
                    if alt < dists[j]:
                        self._parent[next_edge.id] = current_edge
                        dists[j] = alt
                        depths[j] = current_depth + 1
        if not path_found:
            max_depth = max(expanded_depth)
            at_max = [i for i, d in enumerate(expanded_depth) if d == max_depth]
            _, best = min((expanded_dist[i], k) for k, i in enumerate(at_max))
            end_edge = expanded[at_max[best]]
        path = [end_edge]
        while self._parent[end_edge.id] is not None:
            end_edge = self._parent[end_edge.id]
            path.append(end_edge)
        path.reverse()
        return path, path_found


def get_current_roadblock_candidates(
    ego_pose: npt.ArrayLike,
    map_api: NuPlanMap,
    route_roadblocks_dict: Dict[str, Any],
    heading_error_thresh: float = np.pi / 4,
    displacement_error_thresh: float = 3.0,
) -> Tuple[Any, List[Any]]:
    """(best roadblock, candidates) under the ego (``route_utils.get_current_roadblock_candidates``)."""
    pose = np.asarray(ego_pose, dtype=np.float64)
    layers = [SemanticMapLayer.ROADBLOCK, SemanticMapLayer.ROADBLOCK_CONNECTOR]
    found = map_api.get_proximal_map_objects(pose[:2], 1.0, layers)
    candidates_all = found[SemanticMapLayer.ROADBLOCK] + found[SemanticMapLayer.ROADBLOCK_CONNECTOR]
    if not candidates_all:
        for layer in layers:
            object_id, _ = map_api.get_distance_to_nearest_map_object(pose[:2], layer)
            block = map_api.get_map_object(object_id, layer) if object_id is not None else None
            if block:
                candidates_all.append(block)

    on_route, on_route_errors, others, other_errors = [], [], [], []
    block_displacement_errors = []
    for block in candidates_all:
        best_displacement = np.inf
        for lane in block.interior_edges:
            path = lane.baseline_path.discrete_path
            distances = np.linalg.norm(path[:, :2] - pose[None, :2], axis=-1)
            argmin = int(np.argmin(distances))
            heading_error = abs(float(normalize_angle(path[argmin, 2] - pose[2])))
            displacement = float(distances[argmin])
            best_displacement = min(best_displacement, displacement)
            if heading_error < heading_error_thresh and displacement < displacement_error_thresh:
                if block.id in route_roadblocks_dict:
                    on_route.append(block)
                    on_route_errors.append(displacement)
                else:
                    others.append(block)
                    other_errors.append(displacement)
        block_displacement_errors.append(best_displacement)
    if on_route:
        return on_route[int(np.argmin(on_route_errors))], on_route
    if others:
        return others[int(np.argmin(other_errors))], others
    return candidates_all[int(np.argmin(block_displacement_errors))], candidates_all


def _remove_route_loops(route_roadblocks: list, route_roadblock_ids: List[str]) -> Tuple[list, List[str]]:
    """Cut the route where a roadblock connector overlaps an earlier one by more than 1 m^2 (``route_utils``)."""
    seen: List[Polygon] = []
    loop_idx = None
    for idx, block in enumerate(route_roadblocks):
        if not isinstance(block, RoadBlockConnector):
            continue
        if not seen:
            seen.append(block.polygon)
            continue
        tree = shapely.STRtree(seen)
        for j in tree.query(block.polygon):
            if seen[j].intersection(block.polygon).area > 1:
                loop_idx = idx
                break
        if loop_idx:
            break
        seen.append(block.polygon)
    if loop_idx:
        return route_roadblocks[:loop_idx], route_roadblock_ids[:loop_idx]
    return route_roadblocks, route_roadblock_ids


def route_roadblock_correction(
    ego_pose: npt.ArrayLike,
    map_api: NuPlanMap,
    route_roadblock_dict: Dict[str, Any],
    search_depth_backward: int = 15,
    search_depth_forward: int = 30,
) -> List[str]:
    """Corrected route roadblock ids for an ego rear-axle pose (``route_utils.route_roadblock_correction``):
    prepend the way from an off-route start, insert missing links between route roadblocks, cut loops."""
    starting_block, starting_candidates = get_current_roadblock_candidates(ego_pose, map_api, route_roadblock_dict)
    starting_ids = [block.id for block in starting_candidates]
    route_roadblocks = list(route_roadblock_dict.values())
    route_ids = list(route_roadblock_dict.keys())

    if starting_block.id not in route_ids:
        search = BreadthFirstSearchRoadBlock(route_ids[0], map_api, forward_search=False)
        (path, path_id), found = search.search(starting_ids, max_depth=search_depth_backward)
        if found:
            route_roadblocks[:0] = path[:-1]
            route_ids[:0] = path_id[:-1]
        else:
            search = BreadthFirstSearchRoadBlock(starting_block.id, map_api, forward_search=True)
            (path, path_id), found = search.search(route_ids[:3], max_depth=search_depth_forward)
            if found:
                end_idx = int(np.argmax(np.array(route_ids) == path_id[-1]))
                route_roadblocks = route_roadblocks[end_idx + 1 :]
                route_ids = route_ids[end_idx + 1 :]
                route_roadblocks[:0] = path
                route_ids[:0] = path_id

    to_insert = {}
    for i in range(len(route_roadblocks) - 1):
        incoming_ids = [block.id for block in route_roadblocks[i + 1].incoming_edges]
        if route_ids[i] in incoming_ids:
            continue
        search = BreadthFirstSearchRoadBlock(route_ids[i], map_api, forward_search=True)
        (path, path_id), found = search.search(route_ids[i + 1], max_depth=search_depth_forward)
        if found and path and len(path) >= 3:
            to_insert[i] = (path[1:-1], path_id[1:-1])
    offset = 1
    for i, (path, path_id) in to_insert.items():
        route_roadblocks[i + offset : i + offset] = path
        route_ids[i + offset : i + offset] = path_id
        offset += len(path)

    route_roadblocks, route_ids = _remove_route_loops(route_roadblocks, route_ids)
    return route_ids


def get_starting_lane(
    map_api: NuPlanMap,
    ego_pose: npt.ArrayLike,
    route_lane_dict: Dict[str, Union[Lane, LaneConnector]],
    *,
    footprint: Polygon,
    center: npt.ArrayLike,
) -> Optional[Union[Lane, LaneConnector]]:
    """The lane the centerline starts from (``abstract_pdm_planner._get_starting_lane``): among on-route lanes and
    connectors whose polygon intersects the rear axle, the one with the smallest heading error; otherwise the
    first on-route edge containing the ego center, else the edge nearest to the ego footprint.

    :param ego_pose: rear-axle (x, y, heading).
    :param footprint: ego polygon; ``center``: its centre (x, y).
    """
    pose = np.asarray(ego_pose, dtype=np.float64)
    rear_axle = Point(pose[0], pose[1])
    lanes, heading_errors = [], []
    for lane in route_lane_dict.values():
        if not lane.polygon.intersects(rear_axle):
            continue
        path = lane.baseline_path.discrete_path
        nearest = int(np.argmin(np.linalg.norm(path[:, :2] - pose[None, :2], axis=-1)))
        lanes.append(lane)
        heading_errors.append(abs(float(normalize_angle(path[nearest, 2] - pose[2]))))
    if lanes:
        return lanes[int(np.argmin(heading_errors))]
    center_point = Point(*np.asarray(center, dtype=np.float64)[:2])
    best, best_distance = None, np.inf
    for edge in route_lane_dict.values():
        if edge.polygon.contains(center_point):
            return edge
        distance = edge.polygon.distance(footprint)
        if distance < best_distance:
            best, best_distance = edge, distance
    return best


def get_discrete_centerline(
    current_lane: Union[Lane, LaneConnector],
    route_roadblock_dict: Dict[str, Any],
    route_lane_dict: Dict[str, Any],
    search_depth: int = 30,
) -> npt.NDArray[np.float64]:
    """(N, 3) centerline: Dijkstra from ``current_lane`` to the last roadblock of the window of ``search_depth``
    route roadblocks starting at the current one, then the lanes' baseline paths concatenated
    (``abstract_pdm_planner._get_discrete_centerline``)."""
    roadblocks = list(route_roadblock_dict.values())
    roadblock_ids = list(route_roadblock_dict.keys())
    start_idx = int(np.argmax(np.array(roadblock_ids) == current_lane.get_roadblock_id()))
    window = roadblocks[start_idx : start_idx + search_depth]
    route_plan, _ = Dijkstra(current_lane, list(route_lane_dict.keys())).search(window[-1])
    return np.concatenate([lane.baseline_path.discrete_path for lane in route_plan], axis=0)
