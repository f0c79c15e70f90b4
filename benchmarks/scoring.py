"""Speed of our NAVSIM scorer: metric caching s/scene and scoring ms/scene on one core; sequential vs Ray.

    python benchmarks/scoring.py [--data navmini|navsim_dev] [--scenes N]

Targets (issue): scoring a cached scene < 20 ms on one core; caching < 0.5 s per scene. Writes
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
    paths, version = args
    runner = PDMScoreRunner(version)
    for p in paths:
        cache = MetricCache.load(p)
        runner.score(cache, _cv_poses(cache))
    return len(paths)


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
    write_table("scoring", ["what", "worker", "wall time", "CPU time", "target"], rows,
                title=f"NAVSIM scorer speed ({name}, {len(tokens)} scenes)",
                notes=[f"machine load average during the run: {load:.1f} (shared machine; numbers scale with it)",
                       "agent: constant velocity; the cache load from disk is included in the scoring time",
                       "CPU time = process time (less sensitive to other jobs on the machine than wall time)"])


if __name__ == "__main__":
    main()
