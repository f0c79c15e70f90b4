"""PDM-Closed: IDM proposals along the route centerline, simulated and scored; the best one is EP's reference.

Re-implements navsim `pdm_planner/{abstract_pdm_planner,abstract_pdm_closed_planner,pdm_closed_planner}.py`,
`proposal/{batch_idm_policy,pdm_generator,pdm_proposal}.py` and `observation/{pdm_observation,pdm_object_manager}.py`.
The route correction (`utils/route_utils.py`), the starting lane, Dijkstra (`utils/graph_search/dijkstra.py`)
and the centerline path are in `navsim_agents.scoring.route`; the map comes from `navsim_agents.data.maps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry import CAP_STYLE, Point

from navsim_agents.data.maps import NuPlanMap, SemanticMapLayer
from navsim_agents.idm import pdm_idm_step
from navsim_agents.scoring import constants as C
from navsim_agents.scoring.constants import BBCoordsIndex as BB
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import box_coords, normalize_angle
from navsim_agents.scoring.observation import DrivableMap, Observation, OccupancyMap, TrackInfo
from navsim_agents.scoring.pdm_simulator import simulate_proposals
from navsim_agents.scoring.route import (
    get_discrete_centerline,
    get_starting_lane,
    load_route_dicts,
    route_roadblock_correction,
)
from navsim_agents.scoring.scorer import CenterlinePath, PDMScorer, ScorerConfig
from rap_backbone.nuplan_rig import PACIFICA


@dataclass
class Track:
    """One tracked object in global coordinates at the current frame."""

    token: str
    type_name: str
    x: float
    y: float
    heading: float
    length: float
    width: float
    vx: float = 0.0
    vy: float = 0.0

    @property
    def is_agent(self) -> bool:
        return self.type_name in C.AGENT_TYPE_NAMES


@dataclass
class RouteContext:
    """Route roadblocks/lanes, drivable map and centerline of a scene (everything agent-independent)."""

    route_block_ids: list[str]
    route_lane_ids: list[str]
    drivable: DrivableMap
    centerline: CenterlinePath
    start_lane: Any  # data.maps Lane | LaneConnector the centerline starts from

    @property
    def start_lane_id(self) -> str:
        return self.start_lane.id


def build_route_context(map_api: NuPlanMap, roadblock_ids, ego_rear: np.ndarray,
                        radius: float = C.PDM_MAP_RADIUS) -> RouteContext:
    """Corrected route, drivable area around the ego center and the Dijkstra centerline of a scene.

    Follows navsim `abstract_pdm_planner` / `pdm_closed_planner` at the first iteration: the route roadblocks
    are corrected at the ego pose (`route_utils.route_roadblock_correction`), the starting lane is found on the
    corrected route's lanes and the centerline is the Dijkstra lane path's baselines (`scoring.route`).

    :param roadblock_ids: the current frame's `roadblock_ids`.
    :param ego_rear: ego rear-axle (x, y, heading) in map coordinates.
    :raises ValueError: no route roadblock is in the map, or no on-route lane is found.
    """
    roadblock_dict, _ = load_route_dicts(map_api, roadblock_ids)
    if not roadblock_dict:
        raise ValueError(f"none of the route roadblocks {list(roadblock_ids)} is in map {map_api.map_name}")
    roadblock_dict, lane_dict = load_route_dicts(map_api, route_roadblock_correction(ego_rear, map_api, roadblock_dict))
    center = ego_rear[:2] + PACIFICA.rear_axle_to_center * np.array([np.cos(ego_rear[2]), np.sin(ego_rear[2])])
    drivable = DrivableMap.from_map(map_api, center[0], center[1], radius)
    start = get_starting_lane(map_api, ego_rear, lane_dict, footprint=shapely.polygons(_ego_ring(ego_rear)),
                              center=center)
    if start is None:
        raise ValueError(f"no on-route lane found for route {list(roadblock_ids)} in map {map_api.map_name}")
    poses = get_discrete_centerline(start, roadblock_dict, lane_dict, C.PDM_CENTERLINE_SEARCH_DEPTH)
    return RouteContext(list(roadblock_dict), list(lane_dict), drivable, CenterlinePath(poses), start)


def _ego_ring(rear: np.ndarray) -> np.ndarray:
    """Closed footprint rings [...,5,2] of rear-axle poses [...,3]."""
    heading = rear[..., 2]
    center = rear[..., :2] + PACIFICA.rear_axle_to_center * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    coords = box_coords(center, np.asarray(heading), PACIFICA.length, PACIFICA.width)
    coords[..., BB.CENTER, :] = coords[..., BB.FRONT_LEFT, :]
    return coords


def red_light_geometries(map_api: NuPlanMap, traffic_lights, route_lane_ids) -> tuple[list[str], list]:
    """Tokens `red_light_<id>` and polygons of on-route lane connectors whose light is red."""
    route = set(route_lane_ids)
    tokens, polys = [], []
    for lc_id, is_red in traffic_lights:
        lc = str(lc_id)
        if is_red and lc in route:
            tokens.append(f"{C.RED_LIGHT_TOKEN}_{lc}")
            polys.append(map_api.get_map_object(lc, SemanticMapLayer.LANE_CONNECTOR).polygon)
    return tokens, polys


def forecast_observation(tracks: list[Track], ego_rear: np.ndarray, red_tokens, red_polys,
                         num_samples: int = C.PDM_TRAJECTORY_NUM_POSES) -> Observation:
    """PDM-Closed's constant-velocity forecast at every second 10 Hz step (navsim `PDMObservation.update`)."""
    center = ego_rear[:2] + PACIFICA.rear_axle_to_center * np.array([np.cos(ego_rear[2]), np.sin(ego_rear[2])])
    kept = [t for t in tracks if t.type_name != "ego" and np.hypot(t.x - center[0], t.y - center[1]) <= C.PDM_MAP_RADIUS]
    static = [t for t in kept if not t.is_agent]
    dynamic = []
    for type_name, limit in C.MAX_DYNAMIC_OBJECTS.items():
        group = [t for t in kept if t.type_name == type_name]
        d = np.array([np.hypot(t.x - center[0], t.y - center[1]) for t in group])
        dynamic += [group[i] for i in np.argsort(d, kind="stable")][:limit] if group else []
    d = np.array([np.hypot(t.x - center[0], t.y - center[1]) for t in static])
    static = [static[i] for i in np.argsort(d, kind="stable")][: C.MAX_STATIC_OBJECTS] if static else []

    def rings(group: list[Track], dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Closed box rings [n,5,2] of tracks moved by (dx, dy)."""
        centers = np.array([[t.x, t.y] for t in group]).reshape(-1, 2) + np.stack([dx, dy], axis=-1)
        c = box_coords(centers, np.array([t.heading for t in group]), np.array([t.length for t in group]),
                       np.array([t.width for t in group]))
        c[:, BB.CENTER] = c[:, BB.FRONT_LEFT]
        return c

    static_polys = list(shapely.polygons(rings(static, np.zeros(len(static)), np.zeros(len(static))))) if static else []
    dxy = []
    for t in dynamic:
        speed = np.hypot(t.vx, t.vy)
        vel_angle = np.arctan2(t.vy, t.vx)
        forward = abs(normalize_angle(t.heading - vel_angle)) < np.pi / 2
        h = t.heading if forward else normalize_angle(t.heading + np.pi)
        dxy.append((np.cos(h) * speed, np.sin(h) * speed))
    velocity = np.array(dxy, dtype=np.float64).reshape(-1, 2)
    maps = []
    tokens = [t.token for t in static] + [t.token for t in dynamic] + list(red_tokens)
    for sample in range(0, num_samples + C.PDM_OBSERVATION_SAMPLE_RES, C.PDM_OBSERVATION_SAMPLE_RES):
        dt = sample * C.PROPOSAL_INTERVAL
        dyn = list(shapely.polygons(rings(dynamic, velocity[:, 0] * dt, velocity[:, 1] * dt))) if dynamic else []
        maps.append(OccupancyMap(tokens, static_polys + dyn + list(red_polys)))
    unique = {t.token: TrackInfo(t.is_agent, t.heading, float(np.hypot(t.vx, t.vy)), t.vx, t.vy) for t in kept}
    ego_poly = shapely.polygons(_ego_ring(ego_rear))
    collided = []
    for tok in maps[0].intersects(ego_poly):
        if C.RED_LIGHT_TOKEN in tok and not ego_poly.within(maps[0][tok]):
            continue
        collided.append(tok)
    return Observation(maps, unique, collided, stride=C.PDM_OBSERVATION_SAMPLE_RES)


def generate_proposals(paths: list[CenterlinePath], speed_limit: float | None, ego_state: np.ndarray,
                       observation: Observation, num_poses: int = C.PROPOSAL_NUM_POSES) -> np.ndarray:
    """IDM unroll along each path for every speed-limit fraction: states [P*5, num_poses+1, 11].

    The paths are independent; they are stepped together (one IDM step, one footprint batch and one distance call
    per step for all of them), each proposal with exactly the numbers of its own path's unroll."""
    fractions = np.array(C.IDM_SPEED_LIMIT_FRACTIONS)
    base = speed_limit if speed_limit is not None else C.IDM_FALLBACK_TARGET_VELOCITY
    target = fractions * base
    n_long = len(fractions)
    dt = C.PROPOSAL_INTERVAL
    rows = [slice(li * n_long, (li + 1) * n_long) for li in range(len(paths))]
    out = np.zeros((len(paths) * n_long, num_poses + 1, C.STATE_SIZE))
    x = np.zeros((len(paths) * n_long, num_poses + 1))
    v = np.zeros((len(paths) * n_long, num_poses + 1))
    lead = np.zeros((len(paths) * n_long, num_poses + 1, 3))  # progress, velocity, rear length
    rear = ego_state[:2]
    corridors = []
    for path, sl in zip(paths, rows, strict=True):
        x[sl, 0] = path.linestring.project(Point(*rear))
        v[sl, 0] = ego_state[S.VELOCITY_X]
        out[sl, 0, :3] = path.interpolate(np.array([x[sl.start, 0]]))[0]
        corridor = path.substring(x[sl.start, 0], x[sl.start, 0] + abs(np.max(target)) * C.PDM_TRAJECTORY_NUM_POSES * dt)
        corridors.append(corridor.buffer(PACIFICA.width / 2, cap_style=CAP_STYLE.square))
    targets = np.tile(target, len(paths))
    projected: dict = {}  # (path, id of an object's polygon) -> its progress: static objects repeat every step
    for t in range(1, num_poses + 1):
        if t % C.PDM_LEADING_AGENT_UPDATE_RATE != 0:
            lead[:, t] = lead[:, t - 1]
        else:
            _update_leads(paths, rows, corridors, observation[t], observation, x[:, t - 1], lead[:, t], projected)
        x[:, t], v[:, t] = pdm_idm_step(x[:, t - 1], v[:, t - 1], lead[:, t, 0], lead[:, t, 1], lead[:, t, 2], targets,
                                        dt)
    for path, sl in zip(paths, rows, strict=True):
        out[sl, 1:, :3] = path.interpolate(x[sl, 1:])  # elementwise: one call gives each step's poses
    return out


def _update_leads(paths: list[CenterlinePath], rows: list[slice], corridors: list, occ: OccupancyMap,
                  observation: Observation, progress_before: np.ndarray, lead: np.ndarray, projected: dict) -> None:
    """The leading object of every proposal (`lead` [P*5, 3]: progress, velocity, rear length) from the objects in
    its path's corridor, as navsim's `PDMGenerator` updates it; `projected`: progress along the paths kept by
    (path index, id of the polygon) for the observation's lifetime."""
    found = []  # per path with objects: (path index, tokens, their progress along the path)
    for li, (path, corridor) in enumerate(zip(paths, corridors, strict=True)):
        progress = {}
        for tok in occ.intersects(corridor):
            if tok not in observation.collided_track_ids:
                polygon = occ[tok]
                key = (li, id(polygon))  # the observation keeps the polygon alive, so the id stays its own
                if key not in projected:
                    projected[key] = path.linestring.project(polygon.centroid)
                progress[tok] = projected[key]
        found.append((li, list(progress), progress))
    with_objects = [f for f in found if f[1]]
    if with_objects:  # the footprints of the step before against every object of their path, in one call
        previous = {li: paths[li].interpolate(progress_before[rows[li]]) for li, _, _ in with_objects}
        ego_polys = shapely.polygons(_ego_ring(np.concatenate([previous[li] for li, _, _ in with_objects])))
        first, ego_rows, objects = {}, [], []
        for block, (li, candidates, _) in enumerate(with_objects):
            first[li] = len(ego_rows)
            for k in range(rows[li].stop - rows[li].start):
                ego_rows += [block * (rows[li].stop - rows[li].start) + k] * len(candidates)
                objects += [occ[tok] for tok in candidates]
        pair_distances = shapely.distance(ego_polys[ego_rows], np.array(objects, dtype=object))
    for li, candidates, progress in found:
        sl = rows[li]
        buffer = np.zeros(3)  # one buffer shared by the proposals of this path and step, as in the devkit
        for k in range(sl.stop - sl.start):
            ego_prog = progress_before[sl.start + k]
            ahead = [j for j, tok in enumerate(candidates) if progress[tok] > ego_prog]
            if ahead:
                at = first[li] + k * len(candidates)
                dists = pair_distances[at: at + len(candidates)][ahead]
                j = int(np.argmin(dists))
                nearest = candidates[ahead[j]]
                buffer[0] = ego_prog + dists[j]
                if C.RED_LIGHT_TOKEN not in nearest:
                    info = observation.unique[nearest]
                    rel = normalize_angle(info.heading - previous[li][k, 2])
                    buffer[1] = info.speed * np.cos(rel) if info.is_agent else 0.0
            else:
                buffer[0] = paths[li].length
                buffer[2] = PACIFICA.length / 2
            lead[sl.start + k] = buffer


def parallel_path(poses: np.ndarray, offset: float) -> np.ndarray:
    """Path shifted `offset` m to the left of each pose's heading (navsim `parallel_discrete_path`)."""
    theta = poses[:, 2] + np.pi / 2
    return np.column_stack([poses[:, 0] + np.cos(theta) * offset, poses[:, 1] + np.sin(theta) * offset, poses[:, 2]])


def pdm_closed_trajectories(map_api: NuPlanMap, route: RouteContext, ego_state: np.ndarray, tracks: list[Track],
                            traffic_lights, versions=("v1", "v2")) -> dict[str, np.ndarray]:
    """Best PDM-Closed proposal poses [41,3] (0..4 s at 0.1 s) per scorer version.

    The proposals do not depend on the scorer, so they are generated and simulated once; each version's scorer
    then picks its own best one (navsim v1.1 and v2 differ only there).
    """
    red_tokens, red_polys = red_light_geometries(map_api, traffic_lights, route.route_lane_ids)
    observation = forecast_observation(tracks, ego_state[:3], red_tokens, red_polys)
    base = route.centerline.poses
    paths = [route.centerline] + [CenterlinePath(parallel_path(base, o)) for o in C.PDM_LATERAL_OFFSETS]
    speed_limit = route.start_lane.speed_limit_mps
    proposals = generate_proposals(paths, speed_limit, ego_state, observation)
    simulated = simulate_proposals(proposals, ego_state)
    out = {}
    previous = None  # the versions share ego boxes, area flags, object hits and progress
    for version in versions:
        scorer = PDMScorer(ScorerConfig(version=version))
        result = scorer.score(simulated, observation, route.centerline, route.route_lane_ids, route.drivable,
                              reuse=previous)
        out[version] = proposals[int(np.argmax(result["score"])), :, :3]
        previous = scorer
    return out
