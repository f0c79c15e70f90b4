"""Speed of our NAVSIM scorer: metric caching s/scene and scoring ms/scene on one core; sequential vs Ray.

    python benchmarks/scoring.py [--data navmini|navsim_dev] [--scenes N]

Targets (issue): scoring a cached scene < 20 ms on one core; caching < 0.5 s per scene. Also times EPDMS under
reactive IDM / constant-velocity traffic and the two-stage pipeline on navsim_two_stage_dev. Writes
benchmarks/results/scoring.md and .csv.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: BLAS must not fan out
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_table  # noqa: E402
from navsim_agents.data.dataclasses import SceneFilter  # noqa: E402
from navsim_agents.data.scene_loader import SceneLoader  # noqa: E402
from navsim_agents.scoring.metric_cache import compute_metric_cache  # noqa: E402
from navsim_agents.scoring.metric_cache_file import MetricCache  # noqa: E402
from navsim_agents.scoring.pdm_score import PDMScoreRunner  # noqa: E402

CONFORMANCE = Path(os.environ.get("EUPE_DRIVE_CONFORMANCE", Path(__file__).resolve().parents[2] / "shared" /
                                  "conformance")) / "navsim_dev"


def _data(which: str):
    """(name, logs dir, maps root) of the data set to time."""
    if which == "navmini":
        from navsim_agents.data import synthetic

        root = Path(synthetic.ensure_navmini())
        return "navmini", root / "navsim_logs" / "navmini", root / "maps"
    return "navsim_dev", CONFORMANCE / "navsim_logs" / "navsim_dev", CONFORMANCE / "maps"


def _cv_poses(cache: MetricCache) -> np.ndarray:
    speed = float(np.hypot(*cache.ego_state[3:5].astype(np.float32)))
    return np.array([[(i + 1) * 0.5 * speed, 0.0, 0.0] for i in range(8)])


def _score_tokens(args):
    paths, version, *policy = args
    runner = PDMScoreRunner(version)
    if policy:  # (policy, maps root): simulated traffic
        from navsim_agents.scoring.traffic_agents import TrafficScoreRunner

        runner = TrafficScoreRunner(policy=policy[0], maps_root=str(policy[1]))
    for p in paths:
        cache = MetricCache.load(p)
        runner.score(cache, _cv_poses(cache))
    return len(paths)


def _two_stage_rows() -> list[list[str]]:
    """Two-stage EPDMS of constant velocity on navsim_two_stage_dev: caching, then scoring with reactive IDM traffic
    (human filter on stage one) and the scene aggregation, per scored scene."""
    root = CONFORMANCE.parent / "navsim_two_stage_dev"
    if not root.is_dir():
        return [["two-stage EPDMS", "sequential, 1 core", f"not run: {root} not found", "-", "-"]]
    from navsim_agents.data.devkit_splits import read_devkit_split
    from navsim_agents.data.synthetic_scenes import TwoStageSceneLoader
    from navsim_agents.scoring import two_stage as T
    from navsim_agents.scoring.traffic_agents import TrafficScoreRunner

    split = read_devkit_split(root / "config" / "train_test_split" / "two_stage_dev.yaml")
    original = SceneLoader(root / "navsim_logs" / split.data_split, None, SceneFilter(**split.scene_filter))
    loader = TwoStageSceneLoader(original, root / "two_stage_dev" / "synthetic_scene_pickles")
    tokens = loader.tokens_stage_one + loader.reactive_tokens_stage_two
    tmp = Path(tempfile.mkdtemp(prefix="two_stage_bench_"))
    start, cpu = time.perf_counter(), time.process_time()
    paths = {}
    for t in tokens:
        paths[t] = tmp / f"{t}.npz"
        compute_metric_cache(loader.scene_frames(t), str(root / "maps")).save(paths[t])
    caching = ((time.perf_counter() - start) / len(tokens), (time.process_time() - cpu) / len(tokens))
    runners = {s: TrafficScoreRunner(human_penalty_filter=not s, maps_root=str(root / "maps")) for s in (False, True)}
    start, cpu = time.perf_counter(), time.process_time()
    rows = {}
    for t in tokens:
        rows[t] = T.score_two_stage_token(t, paths[t], lambda t=t: _cv_poses(MetricCache.load(paths[t])),
                                          runners[loader.is_synthetic(t)])
    T.aggregate(rows, T.read_mapping(split.reactive_all_mapping, loader.tokens))
    scoring = ((time.perf_counter() - start) / len(tokens) * 1e3, (time.process_time() - cpu) / len(tokens) * 1e3)
    return [[f"two-stage metric caching ({len(tokens)} original + synthetic scenes)", "sequential, 1 core",
             f"{caching[0]:.3f} s/scene", f"{caching[1]:.3f} s/scene", "-"],
            ["two-stage EPDMS, reactive IDM traffic (score + aggregate)", "sequential, 1 core",
             f"{scoring[0]:.1f} ms/scene", f"{scoring[1]:.1f} ms/scene", "-"]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["navmini", "navsim_dev"], default=None)
    parser.add_argument("--scenes", type=int, default=25)
    args = parser.parse_args()
    which = args.data or ("navsim_dev" if CONFORMANCE.is_dir() else "navmini")
    name, logs, maps = _data(which)
    loader = SceneLoader(logs, None, SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1))
    tokens = loader.tokens[: args.scenes]
    tmp = Path(tempfile.mkdtemp(prefix="scoring_bench_"))
    paths = []
    start, cpu = time.perf_counter(), time.process_time()
    for t in tokens:
        cache = compute_metric_cache(loader.scene_frames_dicts[t], str(maps))
        path = tmp / f"{t}.npz"
        cache.save(path)
        paths.append(path)
    caching_s = (time.perf_counter() - start) / len(tokens)
    caching_cpu = (time.process_time() - cpu) / len(tokens)
    rows = [["metric caching (PDM-Closed v1+v2, observations, precomputed terms)", "sequential, 1 core",
             f"{caching_s:.3f} s/scene", f"{caching_cpu:.3f} s/scene", "< 0.5 s/scene"]]
    for version, label in (("v1", "PDMS"), ("v2", "EPDMS")):
        _score_tokens((paths[:2], version))  # warm-up (imports, filter matrices)
        start, cpu = time.perf_counter(), time.process_time()
        _score_tokens((paths, version))
        ms = (time.perf_counter() - start) / len(paths) * 1e3
        cpu_ms = (time.process_time() - cpu) / len(paths) * 1e3
        rows.append([f"scoring a cached scene, {label} (load + simulate + score)", "sequential, 1 core",
                     f"{ms:.1f} ms/scene", f"{cpu_ms:.1f} ms/scene", "< 20 ms/scene"])
    from navsim_agents.scoring.traffic_agents import CONSTANT_VELOCITY_POLICY, IDM_POLICY

    for policy, label in ((IDM_POLICY, "reactive IDM traffic"), (CONSTANT_VELOCITY_POLICY, "constant-velocity traffic")):
        _score_tokens((paths[:1], "v2", policy, maps))
        start, cpu = time.perf_counter(), time.process_time()
        _score_tokens((paths, "v2", policy, maps))
        ms = (time.perf_counter() - start) / len(paths) * 1e3
        cpu_ms = (time.process_time() - cpu) / len(paths) * 1e3
        rows.append([f"scoring a cached scene, EPDMS, {label} (+ human filter)", "sequential, 1 core",
                     f"{ms:.1f} ms/scene", f"{cpu_ms:.1f} ms/scene", "-"])
    rows += _two_stage_rows()
    try:
        import ray

        ray.init(num_cpus=2, ignore_reinit_error=True, log_to_driver=False)
        remote = ray.remote(num_cpus=1)(_score_tokens)
        halves = [paths[0::2], paths[1::2]]
        ray.get([remote.remote((h[:1], "v2")) for h in halves])
        start = time.perf_counter()
        ray.get([remote.remote((h, "v2")) for h in halves])
        ms = (time.perf_counter() - start) / len(paths) * 1e3
        rows.append(["scoring a cached scene, EPDMS", "Ray, 2 workers", f"{ms:.1f} ms/scene", "-", "-"])
    except ImportError:
        rows.append(["scoring a cached scene, EPDMS", "Ray, 2 workers", "not run: ray not installed", "-", "-"])
    load = os.getloadavg()[0]
    write_table("scoring", ["what", "worker", "wall time", "CPU time", "target"], rows, key_columns=2,
                title=f"NAVSIM scorer speed ({name}, {len(tokens)} scenes)",
                notes=[f"machine load average during the run: {load:.1f} (shared machine; numbers scale with it)",
                       "agent: constant velocity; the cache load from disk is included in the scoring time",
                       "CPU time = process time (less sensitive to other jobs on the machine than wall time)"])


if __name__ == "__main__":
    main()
