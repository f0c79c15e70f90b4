"""Score one agent trajectory against a metric cache: PDMS (v1) or EPDMS (v2) row values.

Follows navsim `evaluate/pdm_score.py` (v1.1 and main): poses made absolute at the rear axle, prefixed by the
current state, linearly interpolated at 0.1 s, tracked by the LQR + bicycle simulator together with PDM-Closed's
trajectory, then scored; v2 adds the human penalty filter.
"""

from __future__ import annotations

import numpy as np

from navsim_agents.scoring import constants as C
from navsim_agents.scoring.comfort import two_frame_extended_comfort
from navsim_agents.scoring.geometry import principal_value, relative_to_absolute
from navsim_agents.scoring.metric_cache_file import MetricCache
from navsim_agents.scoring.pdm_simulator import simulate_proposals
from navsim_agents.scoring.scorer import PDMScorer, ScorerConfig

V2_FILTERED = C.V2_COLUMNS[:-1]  # the human penalty filter leaves out the two-frame comfort


class InvalidTrajectory(ValueError):
    """The agent's trajectory cannot be scored (wrong shape, NaN, ...)."""


def check_poses(poses) -> np.ndarray:
    """Validated agent poses [8,3] (float64); raises InvalidTrajectory naming the problem."""
    arr = np.asarray(poses, dtype=np.float64)
    if arr.ndim != 2 or arr.shape != (C.NAVSIM_NUM_POSES, 3):
        raise InvalidTrajectory(f"trajectory must have {C.NAVSIM_NUM_POSES} poses of (x, y, heading) at 0.5 s; "
                                f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidTrajectory("trajectory contains NaN or infinite values")
    return arr


def interpolate_poses(initial: np.ndarray, poses: np.ndarray, interval: float = C.NAVSIM_INTERVAL_LENGTH,
                      num_poses: int = C.PROPOSAL_NUM_POSES, dt: float = C.PROPOSAL_INTERVAL) -> np.ndarray:
    """Poses at 0, dt, ..., num_poses*dt from the current pose + poses every `interval` s (clipped at the end)."""
    knots = np.concatenate([initial[None, :3], poses], axis=0)
    t_knots = np.arange(len(knots)) * interval
    t = np.clip(np.arange(num_poses + 1) * dt, 0.0, t_knots[-1])
    out = np.zeros((num_poses + 1, 3))
    out[:, 0] = np.interp(t, t_knots, knots[:, 0])
    out[:, 1] = np.interp(t, t_knots, knots[:, 1])
    out[:, 2] = principal_value(np.interp(t, t_knots, np.unwrap(knots[:, 2])))
    return out


def reference_states(poses41: np.ndarray) -> np.ndarray:
    """Simulator reference states [41, STATE_SIZE] of 41 poses at 0.1 s (pose columns filled, the rest 0)."""
    ref = np.zeros((len(poses41), C.STATE_SIZE))
    ref[:, :3] = poses41
    return ref


def agent_reference(cache: MetricCache, relative_poses: np.ndarray) -> np.ndarray:
    """Reference states [41,11] of agent poses given in the current rear-axle frame."""
    absolute = relative_to_absolute(cache.ego_state[:3], relative_poses)
    return reference_states(interpolate_poses(cache.ego_state, absolute))


class PDMScoreRunner:
    """Scores trajectories of one version against metric caches."""

    def __init__(self, version: str = "v2", *, human_penalty_filter: bool = True):
        if version not in ("v1", "v2"):
            raise ValueError(f"unknown scorer version {version!r}; use 'v1' (PDMS) or 'v2' (EPDMS)")
        self.version = version
        self.scorer = PDMScorer(ScorerConfig(version=version, human_penalty_filter=human_penalty_filter))

    def score(self, cache: MetricCache, relative_poses) -> tuple[dict, np.ndarray]:
        """Row values (metric columns + 'score', v2 also '_multi', '_weighted') and the agent's simulated states.

        PDM-Closed's masked progress and the human filter's failed metrics are agent-independent and come from
        the cache; scoring the agent alone against them equals scoring the devkit's [PDM-Closed, agent] batch.
        """
        poses = check_poses(relative_poses)
        simulated = simulate_proposals(agent_reference(cache, poses)[None], cache.ego_state)
        past = cache.arrays["human_past_states"] if self.version == "v2" else None
        res = self.scorer.score(simulated, cache.observation(self.version), cache.centerline(),
                                cache.meta["route_lane_ids"], cache.drivable(), past,
                                reference_masked_progress=cache.arrays[f"pdm_masked_progress_{self.version}"])
        if self.version == "v1":
            row = {c: float(res[c][0]) for c in C.V1_COLUMNS}
            row["score"] = float(res["score"][0])
            return row, simulated[0]
        failed = cache.meta["human_failed_v2"] if self.scorer.config.human_penalty_filter else []
        return v2_row(res, 0, failed), simulated[0]


def v2_row(res: dict, index: int, human_failed: list[str]) -> dict:
    """Row values of proposal `index` of a v2 scorer result, the metrics the human fails set to 1 (navsim
    `pdm_score` human penalty filter, then the products and weighted terms recomputed)."""
    row = {c: float(res[c][index]) for c in V2_FILTERED}
    weighted = res["weighted"][:, index].copy()
    failed = [c for c in human_failed if c in row]
    for c in failed:
        row[c] = 1.0
    if failed:
        weighted[:4] = [row["ego_progress"], row["time_to_collision_within_bound"], row["lane_keeping"],
                        row["history_comfort"]]
    row["_multi"] = (row["no_at_fault_collisions"] * row["drivable_area_compliance"]
                     * row["driving_direction_compliance"] * row["traffic_light_compliance"])
    row["_weighted"] = weighted
    row["_weights"] = res["weights"]
    row["two_frame_extended_comfort"] = float("nan")
    row["score"] = final_v2_score(row)
    return row


def precompute_reference_terms(cache: MetricCache) -> None:
    """Add PDM-Closed's masked progress (v1, v2) and the metrics the human fails (v2) to `cache` in place."""
    refs = np.stack([reference_states(cache.arrays["pdm_poses_v1"]), reference_states(cache.arrays["pdm_poses_v2"]),
                     agent_reference(cache, cache.arrays["human_future_poses"])])
    simulated = simulate_proposals(refs, cache.ego_state)  # rows are independent: one batch for all three
    centerline, drivable, route = cache.centerline(), cache.drivable(), cache.meta["route_lane_ids"]
    observations = {"v1": cache.observation("v1"), "v2": cache.observation("v2")}
    for row, version in ((0, "v1"), (1, "v2")):
        past = cache.arrays["human_past_states"] if version == "v2" else None
        res = PDMScorer(ScorerConfig(version=version)).score(simulated[row:row + 1], observations[version],
                                                             centerline, route, drivable, past)
        cache.arrays[f"pdm_masked_progress_{version}"] = np.asarray(res["masked_progress"], dtype=np.float64)
    res = PDMScorer(ScorerConfig(version="v2")).score(simulated[2:3], observations["v2"], centerline, route,
                                                      drivable, None)
    cache.meta["human_failed_v2"] = [c for c in V2_FILTERED if res[c][0] == 0]


def final_v2_score(row: dict) -> float:
    """EPDMS with two-frame extended comfort where known, its weight left out where NaN (navsim one-stage)."""
    weighted = np.array(row["_weighted"], dtype=np.float64).copy()
    weights = np.array(row["_weights"], dtype=np.float64).copy()
    ec = row.get("two_frame_extended_comfort", float("nan"))
    if ec != ec:
        weighted[4] = 0.0
        weights[4] = 0.0
    else:
        weighted[4] = ec
    return float(row["_multi"] * (weighted * weights).sum() / weights.sum())


def extended_comfort(current_states: np.ndarray, previous_states: np.ndarray, gap_s: float,
                     dt: float = C.PROPOSAL_INTERVAL) -> float:
    """EC between the current scene's simulated states and those of the scene `gap_s` earlier."""
    shift = int(round(gap_s / dt))
    cur, prev = current_states[:-shift], previous_states[shift:]
    times = np.arange(cur.shape[0]) * dt
    return float(two_frame_extended_comfort(cur[None], prev[None], times)[0])

