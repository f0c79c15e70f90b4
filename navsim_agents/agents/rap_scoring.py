"""Online PDM scores of RAP's own proposals, for the score BCE, the collision head and the ego-area loss.

Reference: vita-epfl/RAP ``navsim/agents/rap_dino/score_module/compute_navsim_score.py`` and
``train_pdm_scorer.py``: every proposal of a training sample is simulated (LQR + bicycle, 4 s at 10 Hz) from the
token's metric cache and scored with the PDMS v1 sub-scores (NC, DAC, EP, TTC, C, score). Unlike NAVSIM's
evaluation, each proposal's ego progress is normalised on its own, by ``max(its masked progress, PDM-Closed's
masked progress)`` (``train_cache_processor.py`` stores the latter as ``pdm_progress``). The ego-area flags are
the scorer's per-step (non-drivable, oncoming) flags of steps 1..40 (``_ego_areas[:, 1:, 1:]``). The collision
head's targets are the corners, in the ego frame, of the first at-fault-collision track and of the first TTC
track of each proposal, at every step from 1 up to the step of that event where the track exists.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from navsim_agents.agents.rap_agent import ProposalScores

logger = logging.getLogger(__name__)

SUB_SCORE_COLUMNS = ("no_at_fault_collisions", "drivable_area_compliance", "ego_progress",
                     "time_to_collision_within_bound", "comfort", "score")


class MetricCacheProposalScorer:
    """``(tokens, proposals [B,N,8,3]) -> ProposalScores`` from per-token metric cache files ``{token: path}``."""

    def __init__(self, cache_files: Mapping[str, str | Path], *, max_cached: int = 256):
        from navsim_agents.scoring.pdm_score import PDMScoreRunner

        self.cache_files = {t: Path(p) for t, p in cache_files.items()}
        self._runner = PDMScoreRunner("v1")
        self._caches: OrderedDict[str, Any] = OrderedDict()
        self._max_cached = max_cached

    def _cache(self, token: str) -> Any:
        from navsim_agents.scoring.metric_cache_file import MetricCache

        if token not in self._caches:
            if token not in self.cache_files:
                raise KeyError(f"no metric cache for training token {token}; it was not built (see failed_tokens.json)")
            self._caches[token] = MetricCache.load(self.cache_files[token])
            if len(self._caches) > self._max_cached:
                self._caches.popitem(last=False)
        return self._caches[token]

    def score_token(self, token: str, proposals: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For ``proposals [N,8,3]`` of one token: sub-scores ``[N,6]``, ego-area flags ``[N,40,2]``, key-agent
        corners ``[N,40,2,4,2]`` (ego frame) and their validity ``[N,40,2]`` (agent 0: at-fault collision,
        agent 1: TTC)."""
        from navsim_agents.scoring.pdm_score import agent_reference
        from navsim_agents.scoring.pdm_simulator import simulate_proposals

        cache = self._cache(token)
        refs = np.stack([agent_reference(cache, p) for p in np.asarray(proposals, dtype=np.float64)])
        simulated = simulate_proposals(refs, cache.ego_state)
        scorer = self._runner.scorer
        observation = cache.observation("v1")
        res = scorer.score(simulated, observation, cache.centerline(), cache.meta["route_lane_ids"],
                           cache.drivable())
        res = dict(res, **rap_progress_and_score(res, float(np.max(cache.arrays["pdm_masked_progress_v1"])),
                                                 scorer.config.progress_distance_threshold))
        subs = np.stack([np.asarray(res[c], dtype=np.float64) for c in SUB_SCORE_COLUMNS], axis=-1)
        areas = np.stack([scorer._nondrivable, scorer._oncoming], axis=-1)[:, 1:]
        corners, valid = key_agent_targets(observation, cache.ego_state,
                                           [(scorer.at_fault_track_ids, scorer.at_fault_time_idx),
                                            (scorer.ttc_track_ids, scorer.ttc_time_idx)], scorer.num_poses)
        return subs, areas, corners, valid

    def __call__(self, tokens: Sequence[str], proposals: np.ndarray) -> ProposalScores:
        results = [self.score_token(t, p) for t, p in zip(tokens, proposals, strict=True)]
        return ProposalScores(*(np.stack([r[k] for r in results]) for k in range(4)))


def rap_progress_and_score(res: Mapping[str, np.ndarray], pdm_progress: float, progress_threshold: float) -> dict:
    """RAP's per-proposal ego progress and PDMS (``train_pdm_scorer.py`` ``_aggregate_scores``) from a v1
    scorer result: ``p_i = raw_i * multi_i`` (NC * DAC), ``EP_i = p_i / max(p_i, pdm_progress)`` where that
    maximum exceeds ``progress_threshold``, else 1 (0 when multi is 0); the score is the scorer's own weighted
    sum (``res["weighted"]`` rows EP, TTC, C, DDC with ``res["weights"]``) with this EP."""
    multi = np.asarray(res["multi"])
    masked = np.asarray(res["raw_progress"]) * multi
    norm = np.maximum(masked, pdm_progress)
    fast = norm > progress_threshold
    ep = np.ones_like(masked)
    ep[fast] = masked[fast] / norm[fast]
    ep[~fast & (multi == 0)] = 0.0
    weighted = np.array(res["weighted"], dtype=np.float64)
    weighted[0] = ep
    weights = np.asarray(res["weights"], dtype=np.float64)
    return {"ego_progress": ep, "score": multi * (weighted * weights[:, None]).sum(0) / weights.sum()}


def key_agent_targets(observation: Any, ego_state: np.ndarray, events: Sequence[tuple[list, np.ndarray]],
                      num_poses: int) -> tuple[np.ndarray, np.ndarray]:
    """Corners ``[N,num_poses,A,4,2]`` in the current rear-axle frame and validity ``[N,num_poses,A]`` of the
    first track of each event kind ``a`` (``events[a] = (track ids per proposal, first step per proposal)``):
    set at steps ``t = 1 .. first step`` (row ``t-1``) where the track is in the observation. Corners in the
    order of the track's box polygon (front-left, rear-left, rear-right, front-right)."""
    n = len(events[0][0])
    corners = np.zeros((n, num_poses, len(events), 4, 2))
    valid = np.zeros((n, num_poses, len(events)), dtype=bool)
    for a, (track_ids, first_step) in enumerate(events):
        for i in range(n):
            if not track_ids[i]:
                continue
            token = track_ids[i][0]
            for t in range(1, int(first_step[i]) + 1):
                occupancy = observation[t]
                if token in occupancy:
                    valid[i, t - 1, a] = True
                    corners[i, t - 1, a] = np.asarray(occupancy[token].exterior.coords)[:4]
    x, y, heading = ego_state[:3]
    c, s = np.cos(heading), np.sin(heading)
    world_to_ego = np.array([[c, -s], [s, c]])  # row vectors: p_ego = (p - origin) @ [[c, -s], [s, c]]
    corners = (corners - np.array([x, y])) @ world_to_ego
    corners[~valid] = 0.0
    return corners, valid


def build_training_scorer(cfg: Any, scene_loader: Any, tokens: Sequence[str]
                          ) -> tuple[MetricCacheProposalScorer, dict[str, str]]:
    """Metric caches of the training tokens (``<cfg.metric_cache_path>/<data_split>/<log>/<token>.npz``, built
    once with the scoring package) and the proposal scorer over them; returns (scorer, {token: error})."""
    from navsim_agents.data.splits import resolve_split
    from navsim_agents.scoring.evaluate import ensure_metric_cache

    paths = resolve_split(cfg.split)
    root = Path(cfg.metric_cache_path) / str(cfg.split.data_split)
    files: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for token in tokens:
        try:
            files[token] = ensure_metric_cache(scene_loader.scene_frames_dicts[token], root,
                                               str(paths.maps_root or ""), paths.map_version)
        except Exception as error:  # noqa: BLE001 - a token without a cache is left out, with the reason
            failed[token] = f"metric cache: {type(error).__name__}: {error}"
            logger.warning("token %s: metric cache could not be built (%s)", token, error)
    return MetricCacheProposalScorer(files), failed
