"""Online PDM scores of RAP's own proposals, for the score BCE and the ego-area loss during training.

Reference: vita-epfl/RAP ``navsim/agents/rap_dino/score_module/compute_navsim_score.py``: every proposal of a
training sample is simulated (LQR + bicycle, 4 s at 10 Hz) from the token's metric cache and scored with the
PDMS v1 sub-scores (NC, DAC, EP, TTC, C, score); the ego-area flags are the scorer's per-step
(non-drivable, oncoming) flags of steps 1..40 (``_ego_areas[:, 1:, 1:]``). Our scorer normalises ego progress
over the PDM-Closed trajectory and the proposals together (NAVSIM's rule), so PDM-Closed is scored alongside.

The colliding-agent targets of RAP's collision head need the scorer's collided track ids per proposal, which our
scorer does not expose; ``agent_corners`` stays None and the collision loss is off (the loss dict shows 0).
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
        from navsim_agents.scoring.metric_cache import MetricCache

        if token not in self._caches:
            if token not in self.cache_files:
                raise KeyError(f"no metric cache for training token {token}; it was not built (see failed_tokens.json)")
            self._caches[token] = MetricCache.load(self.cache_files[token])
            if len(self._caches) > self._max_cached:
                self._caches.popitem(last=False)
        return self._caches[token]

    def score_token(self, token: str, proposals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sub-scores ``[N,6]`` and ego-area flags ``[N,40,2]`` of ``proposals [N,8,3]`` for one token."""
        from navsim_agents.scoring.pdm_score import _reference, agent_reference
        from navsim_agents.scoring.simulator import simulate_proposals

        cache = self._cache(token)
        refs = [_reference(cache.arrays["pdm_poses_v1"])]
        refs += [agent_reference(cache, p) for p in np.asarray(proposals, dtype=np.float64)]
        simulated = simulate_proposals(np.stack(refs), cache.ego_state)
        scorer = self._runner.scorer
        res = scorer.score(simulated, cache.observation("v1"), cache.centerline(), cache.meta["route_lane_ids"],
                           cache.drivable())
        subs = np.stack([np.asarray(res[c], dtype=np.float64) for c in SUB_SCORE_COLUMNS], axis=-1)[1:]
        areas = np.stack([scorer._nondrivable, scorer._oncoming], axis=-1)[1:, 1:]
        return subs, areas

    def __call__(self, tokens: Sequence[str], proposals: np.ndarray) -> ProposalScores:
        results = [self.score_token(t, p) for t, p in zip(tokens, proposals, strict=True)]
        return ProposalScores(sub_scores=np.stack([r[0] for r in results]),
                              ego_areas=np.stack([r[1] for r in results]))


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
