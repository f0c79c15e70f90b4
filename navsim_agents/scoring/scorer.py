"""PDM scorer: v1 PDMS (navsim v1.1) and v2 EPDMS (navsim main) over batches of simulated proposals.

Re-implements navsim `pdm_planner/scoring/pdm_scorer.py` and `pdm_scorer_utils.py` (both versions) with the
nuplan collision classification (`metrics/utils/collision_utils.py`, `observation/idm/utils.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import shapely.ops
from shapely.geometry import LineString

from navsim_agents.scoring import constants as C
from navsim_agents.scoring import observation as obs
from navsim_agents.scoring.comfort import ego_is_comfortable
from navsim_agents.scoring.constants import BBCoordsIndex as BB
from navsim_agents.scoring.constants import StateIndex as S
from navsim_agents.scoring.geometry import coords_to_polygons, ego_coords
from navsim_agents.scoring.observation import DrivableMap, Observation
from navsim_agents.scoring.route import PDMPath


@dataclass(frozen=True)
class ScorerConfig:
    """Weights and thresholds; navsim `PDMScorerConfig` (v1.1 / main)."""

    version: str = "v2"  # "v1" = PDMS, "v2" = EPDMS
    progress_weight: float = 5.0
    ttc_weight: float = 5.0
    comfortable_weight: float = 2.0  # v1
    lane_keeping_weight: float = 2.0  # v2
    history_comfort_weight: float = 2.0  # v2
    two_frame_extended_comfort_weight: float = 2.0  # v2
    driving_direction_horizon: float = 1.0
    driving_direction_compliance_threshold: float = 2.0
    driving_direction_violation_threshold: float = 6.0
    stopped_speed_threshold: float = 5e-03
    future_collision_horizon_window: float = 1.0
    progress_distance_threshold: float = 5.0
    lane_keeping_deviation_limit: float = 0.5
    lane_keeping_horizon_window: float = 2.0
    human_penalty_filter: bool = True


class CenterlinePath(PDMPath):
    """The route centerline as the scorer and PDM-Closed use it: `navsim_agents.scoring.route.PDMPath` (navsim
    `utils/pdm_path.py`) with the poses it was built from as `poses` [N,3]."""

    @property
    def poses(self) -> np.ndarray:
        return self.discrete_path


def _relative_angle(ego_xy: np.ndarray, ego_heading: float, agent_xy: np.ndarray) -> float:
    vec = np.asarray(agent_xy, dtype=np.float64) - ego_xy
    with np.errstate(invalid="ignore", divide="ignore"):
        dot = np.cos(ego_heading) * vec[0] / np.linalg.norm(vec) + np.sin(ego_heading) * vec[1] / np.linalg.norm(vec)
        return float(np.arccos(dot))


def is_agent_ahead(ego_xy, ego_heading, agent_xy) -> bool:
    """nuplan `is_agent_ahead` (30 deg cone)."""
    return bool(_relative_angle(ego_xy, ego_heading, agent_xy) < np.deg2rad(C.AGENT_AHEAD_ANGLE_DEG))


def is_agent_behind(ego_xy, ego_heading, agent_xy) -> bool:
    """nuplan `is_agent_behind` (150 deg)."""
    return bool(_relative_angle(ego_xy, ego_heading, agent_xy) > np.deg2rad(C.AGENT_BEHIND_ANGLE_DEG))


def collision_type(state: np.ndarray, ego_polygon, track, track_polygon) -> str:
    """'stopped_ego' | 'stopped_track' | 'active_rear' | 'active_front' | 'active_lateral' (navsim utils)."""
    if float(np.hypot(state[S.VELOCITY_X], state[S.VELOCITY_Y])) <= C.STOPPED_SPEED_THRESHOLD_COLLISION:
        return "stopped_ego"
    if (not track.is_agent) or track.speed <= C.STOPPED_SPEED_THRESHOLD_COLLISION:
        return "stopped_track"
    c = track_polygon.centroid
    if is_agent_behind(state[:2], state[S.HEADING], (c.x, c.y)):
        return "active_rear"
    ring = ego_polygon.exterior.coords
    if LineString([ring[0], ring[3]]).intersects(track_polygon):
        return "active_front"
    return "active_lateral"


def longest_counted_run(hit: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """Per row of bool [B,T]: the longest run of `hit` steps, where `skip` steps neither count nor end a run.

    navsim main `pdm_scorer._calculate_lane_keeping` counts in a loop (run += 1 on a hit, run = 0 on a miss,
    intersection steps skipped); here the run at step t is the number of hits since the last miss, from
    cumulative sums.
    """
    counted = hit & ~skip
    miss = ~hit & ~skip
    steps = np.arange(hit.shape[-1])
    last_miss = np.maximum.accumulate(np.where(miss, steps, -1), axis=-1)
    hits_so_far = np.cumsum(counted, axis=-1)
    before_miss = np.where(last_miss >= 0, np.take_along_axis(hits_so_far, np.maximum(last_miss, 0), axis=-1), 0)
    runs = hits_so_far - before_miss
    return runs.max(axis=-1) if runs.shape[-1] else np.zeros(hit.shape[:-1], dtype=np.int64)


class PDMScorer:
    """Scores simulated proposals [B,T,11]; one instance per version.

    After :meth:`score`, the tracks behind each failure are kept per proposal, in the order the checks met them
    (as RAP's training scorer records them): ``at_fault_track_ids`` / ``at_fault_time_idx`` (first 0.1 s step of
    an at-fault collision, inf if none) and ``ttc_track_ids`` / ``ttc_time_idx`` (first step whose projection
    violates TTC), plus the ego-area flags ``_nondrivable`` / ``_oncoming`` [B,T].
    """

    def __init__(self, config: ScorerConfig = ScorerConfig(), *, num_poses: int = C.PROPOSAL_NUM_POSES,
                 dt: float = C.PROPOSAL_INTERVAL):
        self.config = config
        self.num_poses = num_poses
        self.dt = dt

    # ------------------------------------------------------------------------------------------------------
    def score(self, states: np.ndarray, observation: Observation, centerline: CenterlinePath,
              route_lane_ids, drivable: DrivableMap, human_past_states: np.ndarray | None = None,
              reference_masked_progress=None, reuse: "PDMScorer | None" = None) -> dict:
        """Sub-scores per proposal: dict of arrays [B] (+ 'multi', 'weighted' [W,B], 'weights' [W], 'score').

        `reference_masked_progress`: progress x multiplicative metrics of proposals scored earlier (PDM-Closed's,
        from the metric cache); it joins the progress normalisation as if those proposals were in the batch.
        `reuse`: a scorer (of any version) that last scored these same states, observation, centerline, route and
        drivable map; its version-independent parts (ego boxes and polygons, area flags, object hits, progress)
        are taken instead of recomputed.
        """
        extra = np.atleast_1d(np.asarray([] if reference_masked_progress is None else reference_masked_progress,
                                         dtype=np.float64))
        v2 = self.config.version == "v2"
        self._states = states
        self._obs = observation
        self._drivable = drivable
        n = states.shape[0]
        self._centerline, self._route = centerline, [str(r) for r in route_lane_ids]
        if reuse is not None:
            self._take_geometry(reuse)
        else:
            self._coords = ego_coords(states)
            # ego footprints are built only where a bounding-box test finds an object near them
            self._polygons = np.full(self._coords.shape[:2], None, dtype=object)
            self._hits = None
            self._raw_progress = None
            self._areas(self._route)
        out = {"no_at_fault_collisions": self._no_at_fault_collisions(),
               "drivable_area_compliance": (~self._nondrivable.any(axis=-1)).astype(np.float64),
               "driving_direction_compliance": self._driving_direction(skip_intersection=v2)}
        if self._raw_progress is None:
            self._raw_progress = self._progress(centerline)
        raw_progress = self._raw_progress
        out["time_to_collision_within_bound"] = self._ttc()
        if v2:
            out["traffic_light_compliance"] = self._traffic_light()
            out["lane_keeping"] = self._lane_keeping(centerline)
            out["history_comfort"] = self._history_comfort(human_past_states, n)
            multi = (out["no_at_fault_collisions"] * out["drivable_area_compliance"]
                     * out["traffic_light_compliance"] * out["driving_direction_compliance"])
            masked = raw_progress * multi
            norm = np.max(np.concatenate([masked, extra]))
            if norm > self.config.progress_distance_threshold:
                ep = np.clip(raw_progress / norm, 0.0, 1.0)
            else:
                ep = np.ones(n)
            out["ego_progress"] = ep
            weighted = np.stack([ep, out["time_to_collision_within_bound"], out["lane_keeping"],
                                 out["history_comfort"], np.zeros(n)])
            weights = np.array([self.config.progress_weight, self.config.ttc_weight, self.config.lane_keeping_weight,
                                self.config.history_comfort_weight, self.config.two_frame_extended_comfort_weight])
            score = multi * (weighted[:4] * weights[:4, None]).sum(0) / weights[:4].sum()
        else:
            times = np.arange(states.shape[1], dtype=np.float64) * self.dt
            out["comfort"] = ego_is_comfortable(states, times, version="v1").all(axis=-1).astype(np.float64)
            multi = out["no_at_fault_collisions"] * out["drivable_area_compliance"]
            masked = raw_progress * multi
            norm = np.max(np.concatenate([masked, extra]))
            if norm > self.config.progress_distance_threshold:
                ep = masked / norm
            else:
                ep = np.ones(n)
                ep[multi == 0.0] = 0.0
            out["ego_progress"] = ep
            weighted = np.stack([ep, out["time_to_collision_within_bound"], out["comfort"],
                                 out["driving_direction_compliance"]])
            weights = np.array([self.config.progress_weight, self.config.ttc_weight,
                                self.config.comfortable_weight, 0.0])
            score = multi * (weighted * weights[:, None]).sum(0) / weights.sum()
        out["multi"] = multi
        out["weighted"] = weighted
        out["weights"] = weights
        out["score"] = score
        out["raw_progress"] = raw_progress
        out["masked_progress"] = masked
        return out

    # ------------------------------------------------------------------------------------------------------
    def _take_geometry(self, other: "PDMScorer") -> None:
        """The version-independent results of `other`, which must have scored the same inputs."""
        same = (other._states is self._states and other._obs is self._obs and other._drivable is self._drivable
                and other._centerline is self._centerline and other._route == self._route)
        if not same:
            raise ValueError("reuse= needs a scorer that last scored the same states, observation, centerline, "
                             "route and drivable map")
        for name in ("_coords", "_polygons", "_hits", "_raw_progress", "_multiple", "_nondrivable", "_oncoming",
                     "_in_intersection_center"):
            setattr(self, name, getattr(other, name))

    def _areas(self, route_lane_ids) -> None:
        d = self._drivable
        inside = d.points_in_polygons(self._coords).transpose(1, 2, 0, 3)  # B,T,P,5
        area_idx = d.indices_of([obs.ROADBLOCK, obs.INTERSECTION, obs.CARPARK_AREA])
        lane_idx = d.indices_of([obs.LANE, obs.LANE_CONNECTOR])
        route = set(str(r) for r in route_lane_ids)
        on_route_idx = [i for i in lane_idx if d.tokens[i] in route]
        corners, center = inside[..., :4], inside[..., 4]
        lane_corners = corners[:, :, lane_idx].sum(axis=-1)  # B,T,Plane
        multiple = ((lane_corners > 0).sum(axis=-1) > 1) & np.all(lane_corners != 4, axis=-1)
        nondrivable = (corners[:, :, area_idx].sum(axis=-2) > 0).sum(axis=-1) < 4
        oncoming = center[..., on_route_idx].sum(axis=-1) == 0
        self._multiple, self._nondrivable, self._oncoming = multiple, nondrivable, oncoming
        self._in_intersection_center = d.in_layer(self._coords[:, :, BB.CENTER], obs.INTERSECTION)

    def _intersections(self) -> list[tuple[int, int, str, int]]:
        """``(t, proposal, token, row)`` of every ego polygon touching an object, in time order (per time and
        proposal, in the occupancy map's order); computed once per :meth:`score`."""
        if self._hits is None:
            times = np.arange(self.num_poses + 1)
            self._hits = self._flat_hits(times // self._obs.stride, self._coords[:, :, :4], self._ego_polygons)
        return self._hits

    def _ego_polygons(self, proposals: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Ego footprint polygons at (proposal, time) pairs, each built once per :meth:`score`."""
        missing = np.equal(self._polygons[proposals, times], None)
        if missing.any():
            p, t = proposals[missing], times[missing]
            self._polygons[p, t] = coords_to_polygons(self._coords[p, t])
        return self._polygons[proposals, times]

    def _flat_hits(self, map_ids: np.ndarray, corners: np.ndarray, polygon_of
                   ) -> list[tuple[int, int, str, int]]:
        """``(query, proposal, token, row)`` of each query polygon (corners [B,Q,4,2], against the map
        ``map_ids[q]``) that intersects an object; a bounding-box test first, then shapely's exact predicate."""
        flat = self._obs.flat
        query, rows = flat.rows_of_maps(map_ids)
        if not len(rows):
            return []
        candidate = obs.overlapping(obs.ring_bounds(corners)[:, query], flat.bounds[rows][None])
        p, s = np.nonzero(candidate)
        if not len(p):
            return []
        touching = shapely.intersects(polygon_of(p, query[s]), flat.polygons(rows[s]))
        p, s = p[touching], s[touching]
        order = np.lexsort((rows[s], p, query[s]))
        return [(int(query[s[i]]), int(p[i]), flat.tokens[rows[s[i]]], int(rows[s[i]])) for i in order]

    def _object_polygon(self, row: int):
        """The polygon a map gives for the token of `row` (its last row with that token, as ``OccupancyMap``)."""
        flat = self._obs.flat
        k = flat.map_index[row]
        tokens = flat.tokens[flat.starts[k]:flat.starts[k + 1]]
        last = len(tokens) - 1 - tokens[::-1].index(flat.tokens[row])
        return flat.polygons(np.array([flat.starts[k] + last]))[0]

    def _no_at_fault_collisions(self) -> np.ndarray:
        n = self._states.shape[0]
        scores = np.ones(n)
        collided = [list(self._obs.collided_track_ids) for _ in range(n)]
        self.at_fault_track_ids, self.at_fault_time_idx = [[] for _ in range(n)], np.full(n, np.inf)
        for t, p, token, row in self._intersections():
            if C.RED_LIGHT_TOKEN in token or token in collided[p]:
                continue
            track = self._obs.unique[token]
            ego_polygon = self._ego_polygons(np.array([p]), np.array([t]))[0]
            kind = collision_type(self._states[p, t], ego_polygon, track, self._object_polygon(row))
            lateral_fault = self._multiple[p, t] or self._nondrivable[p, t]
            if kind in ("active_front", "stopped_track") or (lateral_fault and kind == "active_lateral"):
                scores[p] = min(scores[p], 0.0 if track.is_agent else 0.5)
                self.at_fault_time_idx[p] = min(self.at_fault_time_idx[p], t)
                self.at_fault_track_ids[p].append(token)
            else:
                collided[p].append(token)
        return scores

    def _driving_direction(self, *, skip_intersection: bool) -> np.ndarray:
        centers = self._coords[:, :, BB.CENTER]
        step = np.zeros(centers.shape[:2])
        step[:, 1:] = np.linalg.norm(centers[:, 1:] - centers[:, :-1], axis=-1)
        keep = self._oncoming.copy()
        if skip_intersection:
            keep &= ~self._in_intersection_center
        step[~keep] = 0.0
        horizon = int(self.config.driving_direction_horizon / self.dt)
        cums = np.concatenate([np.zeros((step.shape[0], 1)), np.cumsum(step, axis=-1)], axis=-1)
        t = np.arange(step.shape[1])
        window = cums[:, t + 1] - cums[:, np.maximum(0, t - horizon)]
        worst = window.max(axis=-1)
        return np.where(worst < self.config.driving_direction_compliance_threshold, 1.0,
                        np.where(worst < self.config.driving_direction_violation_threshold, 0.5, 0.0))

    def _progress(self, centerline: CenterlinePath) -> np.ndarray:
        c = self._coords[:, :, BB.CENTER]
        start = centerline.project(c[:, 0])
        end = centerline.project(c[:, -1])
        return np.clip(end - start, 0.0, None)

    def _ttc(self) -> np.ndarray:
        v2 = self.config.version == "v2"
        n = self._states.shape[0]
        scores = np.ones(n)
        collided = [list(self._obs.collided_track_ids) for _ in range(n)]
        self.ttc_track_ids, self.ttc_time_idx = [[] for _ in range(n)], np.full(n, np.inf)
        window = self.config.future_collision_horizon_window if v2 else 1.0
        future = np.arange(0, int(window * 10), 3)
        speeds = np.hypot(self._states[..., S.VELOCITY_X], self._states[..., S.VELOCITY_Y])
        heading = self._states[..., S.HEADING]
        dxy = np.stack([np.cos(heading) * speeds, np.sin(heading) * speeds], axis=-1)
        ring = self._coords.copy()
        ring[:, :, BB.CENTER] = ring[:, :, BB.FRONT_LEFT]
        projected = ring[:, :, None] + dxy[:, :, None, None, :] * (future * self.dt)[None, None, :, None, None]
        last = self.num_poses - int(max(future)) if v2 else self.num_poses
        rear_in_intersection = self._drivable.in_layer(self._states[..., :2], obs.INTERSECTION)
        # queries (t, f) in loop order: t outer, f inner
        q_t = np.repeat(np.arange(last + 1), len(future))
        q_f = np.tile(np.arange(len(future)), last + 1)
        corners = projected[:, q_t, q_f]  # B,Q,5,2 (the center replaced by the front-left corner)
        hits = self._flat_hits((q_t + future[q_f]) // self._obs.stride, corners[:, :, :4],
                               lambda p, q: shapely.polygons(corners[p, q]))
        for q, p, token, row in hits:
            t = int(q_t[q])
            if C.RED_LIGHT_TOKEN in token or token in collided[p] or speeds[p, t] < self.config.stopped_speed_threshold:
                continue
            c = self._object_polygon(row).centroid
            ego_xy, ego_h = self._states[p, t, :2], self._states[p, t, S.HEADING]
            risky = self._multiple[p, t] or self._nondrivable[p, t] or rear_in_intersection[p, t]
            if is_agent_ahead(ego_xy, ego_h, (c.x, c.y)) or (risky and not is_agent_behind(ego_xy, ego_h, (c.x, c.y))):
                scores[p] = 0.0
                self.ttc_time_idx[p] = min(self.ttc_time_idx[p], t)
                self.ttc_track_ids[p].append(token)
            else:
                collided[p].append(token)
        return scores

    def _traffic_light(self) -> np.ndarray:
        n = self._states.shape[0]
        scores = np.ones(n)
        for _, p, token, _ in self._intersections():
            if token.startswith(C.RED_LIGHT_TOKEN):
                scores[p] = 0.0
        return scores

    def _lane_keeping(self, centerline: CenterlinePath) -> np.ndarray:
        """0 where the center stays over `lane_keeping_deviation_limit` off the centerline for `required`
        consecutive poses; intersection poses neither count nor reset the run (see :func:`longest_counted_run`)."""
        centers = self._coords[:, :, BB.CENTER]
        required = int(np.ceil(self.config.lane_keeping_horizon_window / self.dt))
        limit = self.config.lane_keeping_deviation_limit
        dist = centerline.distances_up_to(centers, limit)  # only whether each is above the limit counts
        runs = longest_counted_run(dist > limit, self._in_intersection_center)
        return np.where(runs >= required, 0.0, 1.0)

    def _history_comfort(self, past: np.ndarray | None, n: int) -> np.ndarray:
        if past is None:
            return np.ones(n)
        padded = np.concatenate([np.repeat(past[None], n, axis=0), self._states], axis=1)
        times = np.arange(padded.shape[1], dtype=np.float64) * self.dt
        return ego_is_comfortable(padded, times, version="v2").all(axis=-1).astype(np.float64)
