"""Scoring runs: metric-cache reuse, per-token rows, the devkit's CSV layout and aggregate rows.

Shared by `navsim_agents/run_pdm_score.py` (sequential and Ray workers) and the benchmarks.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from navsim_agents.scoring.constants import V1_COLUMNS, V2_COLUMNS
from navsim_agents.scoring.metric_cache import compute_metric_cache
from navsim_agents.scoring.metric_cache_file import MetricCache, MetricCacheError
from navsim_agents.scoring.pdm_score import (
    PDMScoreRunner,
    extended_comfort,
    final_v2_score,
)

logger = logging.getLogger(__name__)

# navsim one-stage `infer_start_adjacent_mapping(time_gap_threshold=0.55)`
TIME_GAP_THRESHOLD = 0.55


def columns_for(version: str) -> list[str]:
    """CSV columns after the unnamed index, in the devkit's order (v1: run_pdm_score.py, v2: one-stage)."""
    return ["token", "valid", *(V1_COLUMNS if version == "v1" else V2_COLUMNS), "score"]


def cache_file(cache_root: Path, log_name: str, token: str) -> Path:
    return Path(cache_root) / log_name / f"{token}.npz"


def ensure_metric_cache(frames: list[dict], cache_root: Path, maps_root: str, map_version: str,
                        *, force: bool = False) -> Path:
    """Path of the token's cache, usable when returned (see :func:`refresh_metric_cache`)."""
    return refresh_metric_cache(frames, cache_root, maps_root, map_version, force=force)[0]


def refresh_metric_cache(frames: list[dict], cache_root: Path, maps_root: str, map_version: str,
                         *, force: bool = False) -> tuple[Path, str]:
    """Path of the token's cache and what was done (``"reused"``, ``"built"`` or ``"rebuilt: <why>"``).

    An entry is (re)computed when absent, when `force`, or when it cannot be read in full (truncated, emptied,
    another format: the warning names the file and token). When the inputs to rebuild it are missing, the
    error names the unreadable file and what rebuilding needed."""
    token, log_name = frames[3]["token"], frames[3]["log_name"]
    path = cache_file(cache_root, log_name, token)
    action = "built"
    if force and path.is_file():
        action = "rebuilt: force"
    elif path.is_file():
        try:
            MetricCache.load(path)
            return path, "reused"
        except (MetricCacheError, FileNotFoundError) as err:
            action = f"rebuilt: {err}"
            logger.warning("token %s: %s; rebuilding it", token, err)
    try:
        compute_metric_cache(frames, maps_root, map_version).save(path)
    except Exception as err:  # noqa: BLE001 - re-raised with the file and token named
        reason = "could not be built" if action == "built" else f"is unusable ({action[9:]}) and could not be rebuilt"
        raise MetricCacheError(f"metric cache {path} of token {token} {reason}: {type(err).__name__}: {err}") from err
    return path, action


def score_token(token: str, cache_path: Path, get_trajectory: Callable[[], Any], runner: PDMScoreRunner) -> dict:
    """One CSV row for `token`; failures give `valid=False` with the reason logged (the run goes on)."""
    row: dict[str, Any] = {"token": token, "valid": True}
    try:
        cache = MetricCache.load(cache_path)
        trajectory = get_trajectory()
        poses = getattr(trajectory, "poses", trajectory)
        values, states = runner.score(cache, poses)
        row.update(values)
        row["_log_name"] = cache.meta["log_name"]
        row["_start_time"] = cache.meta["start_time_s"]
        if runner.version == "v2":
            row["_states"] = states
    except Exception as err:  # noqa: BLE001 - a failing token is a row, not a crash
        logger.warning("token %s failed: %s: %s", token, type(err).__name__, err)
        logger.debug(traceback.format_exc())
        row = {"token": token, "valid": False, "_error": f"{type(err).__name__}: {err}"}
    return row


def add_extended_comfort(rows: list[dict]) -> None:
    """v2: set two_frame_extended_comfort of each row that has a valid scene 0.5 s earlier in the same log."""
    by_log: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("valid") and "_states" in r:
            by_log.setdefault(r["_log_name"], []).append(r)
    for group in by_log.values():
        group.sort(key=lambda r: r["_start_time"])
        for prev, cur in zip(group[:-1], group[1:], strict=False):
            gap = cur["_start_time"] - prev["_start_time"]
            if abs(gap) <= TIME_GAP_THRESHOLD:
                cur["two_frame_extended_comfort"] = extended_comfort(np.asarray(cur["_states"]),
                                                                     np.asarray(prev["_states"]), gap)
    for r in rows:
        if r.get("valid") and "_multi" in r:
            r["score"] = final_v2_score(r)


def results_dataframe(rows: list[dict], version: str) -> pd.DataFrame:
    """Rows -> the devkit's DataFrame with its aggregate row (`average` v1, `average_all_frames` v2)."""
    cols = columns_for(version)
    df = pd.DataFrame([{c: r.get(c, np.nan) for c in cols} for r in rows], columns=cols)
    df["valid"] = df["valid"].astype(bool)
    metric_cols = cols[2:]
    avg = {c: float(df[c].astype(float).mean(skipna=True)) for c in metric_cols}
    avg["token"] = "average" if version == "v1" else "average_all_frames"
    avg["valid"] = bool(df["valid"].all())
    df = pd.concat([df, pd.DataFrame([avg], columns=cols)], ignore_index=True)
    return df


def summary_table(df: pd.DataFrame, version: str, weights_source: str) -> str:
    """Text table: mean of each sub-score and of the score over valid tokens + the agent's weights source."""
    body = df[~df["token"].astype(str).str.startswith("average")]
    valid = body[body["valid"].astype(bool)]
    lines = [f"{'metric':36s} mean", "-" * 46]
    for c in columns_for(version)[2:]:
        lines.append(f"{c:36s} {valid[c].astype(float).mean():.4f}")
    lines.append("-" * 46)
    lines.append(f"tokens: {len(body)} ({len(valid)} valid, {len(body) - len(valid)} failed)")
    lines.append(f"agent weights: {weights_source}")
    return "\n".join(lines)


# --- resume -------------------------------------------------------------------------------------------------
def _to_json(row: dict) -> str:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, (np.floating, np.integer)):
            out[k] = v.item()
        else:
            out[k] = v
    return json.dumps(out, allow_nan=True)


def append_partial(path: Path, row: dict) -> None:
    """Append a finished row to the run's partial file (one JSON per line)."""
    with open(path, "a") as fh:
        fh.write(_to_json(row) + "\n")


def read_partial(path: Path) -> list[dict]:
    """Rows already written by an interrupted run (a torn last line is ignored)."""
    rows = []
    if not Path(path).is_file():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for k in ("_weighted", "_weights", "_states"):
            if k in row:
                row[k] = np.asarray(row[k], dtype=np.float64)
        rows.append(row)
    return rows


def order_rows(rows: Iterable[dict], tokens: list[str]) -> list[dict]:
    """Rows in the order of `tokens` (one per token; the last written wins)."""
    by_token = {r["token"]: r for r in rows}
    return [by_token[t] for t in tokens if t in by_token]


def finalize(rows: list[dict], version: str) -> pd.DataFrame:
    """EC pairing (v2) then the devkit DataFrame."""
    rows = [dict(r) for r in rows]
    if version == "v2":
        for r in rows:
            if r.get("valid"):
                r["two_frame_extended_comfort"] = float("nan")
        add_extended_comfort(rows)
    return results_dataframe(rows, version)


