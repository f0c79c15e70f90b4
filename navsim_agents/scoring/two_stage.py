"""NAVSIM v2 two-stage (pseudo-simulation) EPDMS: per-token rows, the scene aggregator and the devkit's CSV.

Rules from navsim main 0a380a9:
- `navsim/planning/script/run_pdm_score.py`: stage one scores the original tokens, stage two the reactive
  synthetic tokens; each row keeps the raw trajectory's last pose made global at the current rear axle
  (`endpoint`) and the current rear axle (`start_point`); the CSV has `<metric>_stage_one` / `_stage_two` columns,
  `score`, then the rows `extended_pdm_score_stage_one`, `..._stage_two`, `..._combined`.
- `navsim/planning/simulation/planner/pdm_planner/scoring/scene_aggregator.py`: two-frame extended comfort of each
  (now, prev) pair written to both rows; stage-two weights exp(-d^2 / (2 sigma^2)) from the stage-one endpoint to
  each synthetic start, normalised per group (uniform when the sum `np.isclose` to 0 or is NaN); stage-one weight 1.
- `calculate_individual_mapping_scores`: per mapping entry (stage-one now x weighted stage-two now + the same for
  prev) / 2; aggregates are NaN-skipping means over entries.

Where the devkit stops (a failed token, a missing pair) we go on: the token is a `valid=False` row, every mapping
entry that needs it is marked invalid and left out of the three aggregates, and the summary counts them.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import pandas as pd

from navsim_agents.scoring.constants import PROPOSAL_INTERVAL, V2_COLUMNS
from navsim_agents.scoring.geometry import relative_to_absolute
from navsim_agents.scoring.metric_cache_file import MetricCache
from navsim_agents.scoring.pdm_score import PDMScoreRunner, extended_comfort, final_v2_score

logger = logging.getLogger(__name__)

# scene_aggregator.py `SceneAggregator.sigma_squared` (the kernel is exp(-d^2 / (2 * sigma_squared)))
SIGMA_SQUARED = 0.1
# scene_aggregator.py `_compute_two_frame_comfort`: assert 0 < observation_interval < 0.55
MAX_PAIR_INTERVAL_S = 0.55

SCORE_COLUMNS = [*V2_COLUMNS, "score"]
STAGE_ONE_COLUMNS = [f"{c}_stage_one" for c in V2_COLUMNS]
STAGE_TWO_COLUMNS = [f"{c}_stage_two" for c in V2_COLUMNS]
CSV_COLUMNS = ["token", "valid"] + STAGE_ONE_COLUMNS + STAGE_TWO_COLUMNS + ["score"]
AGGREGATE_TOKENS = ("extended_pdm_score_stage_one", "extended_pdm_score_stage_two", "extended_pdm_score_combined")

MappingEntry = Tuple[str, str, List[Tuple[str, str]]]


def read_mapping(raw: Iterable[Sequence[Any]], known_tokens: Iterable[str]) -> List[MappingEntry]:
    """`reactive_all_mapping` entries `[now, prev, [[syn_now, syn_prev], ...]]` whose now or prev token is a scene
    of the run (run_pdm_score.py keeps exactly those; entries with unknown tokens are skipped)."""
    known = set(known_tokens)
    out: List[MappingEntry] = []
    for entry in raw:
        now, prev, pairs = str(entry[0]), str(entry[1]), entry[2]
        if now in known or prev in known:
            out.append((now, prev, [(str(p[0]), str(p[1])) for p in pairs]))
        else:
            logger.warning("two-stage mapping entry (%s, %s) names no scene of this split: skipped", now, prev)
    return out


def score_two_stage_token(token: str, cache_path, get_trajectory: Callable[[], Any], runner: PDMScoreRunner) -> dict:
    """One row: EPDMS values (NaN two-frame comfort), simulated states, endpoint and start point; failures give a
    `valid=False` row with the reason (the run goes on)."""
    row: Dict[str, Any] = {"token": token, "valid": True}
    try:
        cache = MetricCache.load(cache_path)
        trajectory = get_trajectory()
        poses = np.asarray(getattr(trajectory, "poses", trajectory))
        values, states = runner.score(cache, poses)
        row.update(values)
        rear_axle = cache.ego_state[:3]
        endpoint = relative_to_absolute(rear_axle, poses[-1:].astype(np.float64))[0]
        row.update({"_states": states, "_start_time": cache.meta["start_time_s"], "_log_name": cache.meta["log_name"],
                    "_endpoint": [float(endpoint[0]), float(endpoint[1])],
                    "_start_point": [float(rear_axle[0]), float(rear_axle[1])]})
    except Exception as err:  # noqa: BLE001 - a failing token is a row, not a crash
        logger.warning("token %s failed: %s: %s", token, type(err).__name__, err)
        logger.debug(traceback.format_exc())
        row = {"token": token, "valid": False, "_error": f"{type(err).__name__}: {err}"}
    return row


def pseudo_closed_loop_weights(endpoint: Sequence[float], start_points: np.ndarray,
                               sigma_squared: float = SIGMA_SQUARED) -> np.ndarray:
    """Normalised Gaussian weights of synthetic starts [K,2] around a stage-one endpoint (uniform fallback)."""
    start_points = np.asarray(start_points, dtype=np.float64).reshape(-1, 2)
    d2 = (endpoint[0] - start_points[:, 0]) ** 2 + (endpoint[1] - start_points[:, 1]) ** 2
    weights = np.exp(-d2 / (2.0 * sigma_squared))
    total = weights.sum()
    if np.isclose(total, 0.0) or np.isnan(total):
        return np.full(len(start_points), 1.0 / len(start_points))
    return weights / total


def pair_comfort(current: dict, previous: dict) -> float:
    """Two-frame extended comfort of a (current, previous) row pair 0 < dt < 0.55 s apart."""
    gap = current["_start_time"] - previous["_start_time"]
    if not 0.0 < gap < MAX_PAIR_INTERVAL_S:
        raise ValueError(f"tokens {current['token']} / {previous['token']}: {gap:.3f} s apart; a two-frame "
                         f"comfort pair must be 0..{MAX_PAIR_INTERVAL_S} s apart")
    return extended_comfort(np.asarray(current["_states"]), np.asarray(previous["_states"]), gap, PROPOSAL_INTERVAL)


@dataclass
class Aggregation:
    """Rows with comfort, weights and final scores, the three aggregate Series and the entries left out."""

    rows: Dict[str, dict]
    final: pd.Series
    stage_one: pd.Series
    stage_two: pd.Series
    invalid_entries: List[Tuple[str, str]] = field(default_factory=list)


def _entry_tokens(entry: MappingEntry) -> List[str]:
    now, prev, pairs = entry
    return [now, prev] + [t for pair in pairs for t in pair]


def aggregate(rows: Mapping[str, dict], mapping: Sequence[MappingEntry],
              sigma_squared: float = SIGMA_SQUARED) -> Aggregation:
    """The scene aggregator over `rows` (token -> row of `score_two_stage_token`) and the mapping scores.

    An entry is used when every one of its tokens has a valid row; otherwise it is recorded in `invalid_entries`,
    its rows keep NaN comfort / weight and it enters no aggregate.
    """
    rows = {t: dict(r) for t, r in rows.items()}
    for r in rows.values():
        r["two_frame_extended_comfort"] = float("nan")
        r["weight"] = float("nan")
    used: List[MappingEntry] = []
    invalid: List[Tuple[str, str]] = []
    for entry in mapping:
        now, prev, pairs = entry
        bad = [t for t in _entry_tokens(entry) if not rows.get(t, {}).get("valid", False)]
        if bad or not pairs:
            reason = f"tokens without a valid row: {bad}" if bad else "no synthetic pairs"
            logger.warning("two-stage entry (%s, %s) left out of the aggregates (%s)", now, prev, reason)
            invalid.append((now, prev))
            continue
        try:
            updates = _aggregate_entry(rows, entry, sigma_squared)
        except ValueError as err:
            logger.warning("two-stage entry (%s, %s) left out of the aggregates (%s)", now, prev, err)
            invalid.append((now, prev))
            continue
        for token, (comfort, weight) in updates.items():
            rows[token]["two_frame_extended_comfort"] = comfort
            rows[token]["weight"] = weight
        used.append(entry)
    for r in rows.values():
        if r.get("valid") and "_multi" in r:
            r["score"] = final_v2_score(r)
    final, stage_one, stage_two = mapping_scores(rows, used)
    return Aggregation(rows, final, stage_one, stage_two, invalid)


def _aggregate_entry(rows: Dict[str, dict], entry: MappingEntry, sigma_squared: float) -> Dict[str, Tuple[float, float]]:
    now, prev, pairs = entry
    main = pair_comfort(rows[now], rows[prev])
    updates = {now: (main, 1.0), prev: (main, 1.0)}
    syn_now, syn_prev = [p[0] for p in pairs], [p[1] for p in pairs]
    w_now = pseudo_closed_loop_weights(rows[now]["_endpoint"], [rows[t]["_start_point"] for t in syn_now],
                                       sigma_squared)
    w_prev = pseudo_closed_loop_weights(rows[prev]["_endpoint"], [rows[t]["_start_point"] for t in syn_prev],
                                        sigma_squared)
    weight = dict(zip(syn_now, w_now, strict=True)) | dict(zip(syn_prev, w_prev, strict=True))
    for a, b in pairs:
        comfort = pair_comfort(rows[a], rows[b])
        updates[a] = (comfort, float(weight[a]))
        updates[b] = (comfort, float(weight[b]))
    return updates


def _weighted_mean(rows: Sequence[dict]) -> pd.Series:
    """calculate_weighted_average_score: weight-normalised mean of the score columns (NaN when empty / zero)."""
    if not rows:
        return pd.Series([np.nan] * len(SCORE_COLUMNS), index=SCORE_COLUMNS)
    weights = np.array([r["weight"] for r in rows], dtype=np.float64)
    scores = np.array([[r.get(c, np.nan) for c in SCORE_COLUMNS] for r in rows], dtype=np.float64)
    total = weights.sum()
    if total == 0:
        return pd.Series([np.nan] * len(SCORE_COLUMNS), index=SCORE_COLUMNS)
    return pd.Series((scores * weights[:, None]).sum(axis=0) / total, index=SCORE_COLUMNS)


def mapping_scores(rows: Mapping[str, dict], mapping: Sequence[MappingEntry]) -> Tuple[pd.Series, pd.Series,
                                                                                       pd.Series]:
    """(final, stage one, stage two) Series over the score columns (calculate_individual_mapping_scores)."""
    group, stage_one, stage_two = [], [], []
    for now, prev, pairs in mapping:
        s1_now = _weighted_mean([rows[now]] if now in rows else [])
        s1_prev = _weighted_mean([rows[prev]] if prev in rows else [])
        s2_now = _weighted_mean([rows[a] for a, _ in pairs if a in rows])
        s2_prev = _weighted_mean([rows[b] for _, b in pairs if b in rows])
        stage_one += [s1_now, s1_prev]
        stage_two += [s2_now, s2_prev]
        group.append((s1_now * s2_now + s1_prev * s2_prev) / 2)
    empty = pd.Series([np.nan] * len(SCORE_COLUMNS), index=SCORE_COLUMNS)
    return tuple(pd.DataFrame(g).mean() if g else empty for g in (group, stage_one, stage_two))  # type: ignore


def results_dataframe(aggregation: Aggregation, tokens: Sequence[str], synthetic: Iterable[str]) -> pd.DataFrame:
    """The devkit's two-stage CSV: per-token rows (metrics in `_stage_one` or `_stage_two` columns), then the
    stage-one, stage-two and combined aggregate rows (`valid` False there when an entry was left out)."""
    synthetic = set(synthetic)
    records = []
    for token in tokens:
        r = aggregation.rows[token]
        rec: Dict[str, Any] = {"token": token, "valid": bool(r.get("valid", False))}
        suffix = "_stage_two" if token in synthetic else "_stage_one"
        for c in V2_COLUMNS:
            rec[c + suffix] = r.get(c, np.nan) if rec["valid"] else np.nan
        rec["score"] = r.get("score", np.nan) if rec["valid"] else np.nan
        records.append(rec)
    valid = not aggregation.invalid_entries
    one = {"token": AGGREGATE_TOKENS[0], "valid": valid, "score": aggregation.stage_one["score"]}
    one |= {f"{c}_stage_one": aggregation.stage_one[c] for c in V2_COLUMNS}
    two = {"token": AGGREGATE_TOKENS[1], "valid": valid, "score": aggregation.stage_two["score"]}
    two |= {f"{c}_stage_two": aggregation.stage_two[c] for c in V2_COLUMNS}
    combined = {k: v for k, v in (one | two).items()} | {"token": AGGREGATE_TOKENS[2],
                                                         "score": aggregation.final["score"]}
    df = pd.DataFrame(records + [one, two, combined], columns=CSV_COLUMNS)
    return df


def weights_dataframe(aggregation: Aggregation, tokens: Sequence[str]) -> pd.DataFrame:
    """Per-token pseudo-closed-loop weight and two-frame comfort (the devkit computes them but drops them)."""
    return pd.DataFrame([{"token": t, "weight": aggregation.rows[t].get("weight", np.nan),
                          "two_frame_extended_comfort": aggregation.rows[t].get("two_frame_extended_comfort",
                                                                                np.nan)} for t in tokens])


def summary_table(df: pd.DataFrame, aggregation: Aggregation, weights_source: str) -> str:
    """Text table: the three aggregates (score and each metric) + token and entry counts."""
    by_token = df.set_index("token")
    lines = [f"{'metric':36s} {'stage one':>10s} {'stage two':>10s}", "-" * 58]
    for c in V2_COLUMNS:
        lines.append(f"{c:36s} {aggregation.stage_one[c]:10.4f} {aggregation.stage_two[c]:10.4f}")
    lines.append("-" * 58)
    lines.append(f"{'EPDMS stage one':36s} {by_token.loc[AGGREGATE_TOKENS[0], 'score']:10.4f}")
    lines.append(f"{'EPDMS stage two':36s} {by_token.loc[AGGREGATE_TOKENS[1], 'score']:10.4f}")
    lines.append(f"{'EPDMS two-stage (stage1 x stage2)':36s} {by_token.loc[AGGREGATE_TOKENS[2], 'score']:10.4f}")
    body = df[~df["token"].isin(AGGREGATE_TOKENS)]
    n_valid = int(body["valid"].astype(bool).sum())
    lines.append(f"tokens: {len(body)} ({n_valid} valid, {len(body) - n_valid} failed); "
                 f"mapping entries left out: {len(aggregation.invalid_entries)}")
    lines.append(f"agent weights: {weights_source}")
    return "\n".join(lines)
