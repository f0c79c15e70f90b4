"""Times the official NAVSIM devkit on given scenes; run by `benchmarks/scoring.py` with the devkit's own Python.

    <devkit python> devkit_timing_driver.py JOB.json OUT.json

`benchmarks/scoring.py` copies this file to a temporary folder (so that the devkit's interpreter sees none of this
repository) and runs it under the devkit's venv, one process, one thread. It calls only the devkit's public API:
`SceneLoader`, `Scene`, `NavSimScenario`, `MetricCacheProcessor` (v1.1 `compute_metric_cache`, main
`compute_and_save_metric_cache`),
`MetricCacheLoader`-style lzma pickle loading, `pdm_score` with the `PDMSimulator` / `PDMScorer` and the traffic
agents policy of the devkit's own yaml, and for two-stage the aggregation functions of
`navsim/planning/script/run_pdm_score.py`. Works with navsim main (v2) and navsim v1.1 (PDMS).

JOB: {"mode": "one_stage" | "two_stage", "version": "v1" | "v2", "data_path", "maps_root", "tokens",
      "num_future_frames", "synthetic_scenes_path", "split_yaml", "scene_filter_yaml", "navsim_root",
      "repeat" (caching passes, the best counts), "scoring_repeat" (scoring passes; default: repeat)}
OUT: {"caching_cpu_s", "caching_wall_s", "scoring_cpu_s", "scoring_wall_s", "scenes", "failed", "warmup"}
(per-scene seconds after one untimed warm-up scene).
"""

from __future__ import annotations

import inspect
import json
import lzma
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sampling(**kw):
    from nuplan.planning.simulation.trajectory.trajectory_sampling import TrajectorySampling

    return TrajectorySampling(**kw)


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _cv_trajectory(metric_cache):
    """The constant-velocity agent's poses (8 at 0.5 s) from the cache's ego speed (our benchmark's agent)."""
    from navsim.common.dataclasses import Trajectory

    v = metric_cache.ego_state.dynamic_car_state.rear_axle_velocity_2d
    speed = float(np.hypot(np.float32(v.x), np.float32(v.y)))
    poses = np.array([[(i + 1) * 0.5 * speed, 0.0, 0.0] for i in range(8)])
    return Trajectory(poses, _sampling(time_horizon=4, interval_length=0.5))


def _scene_loader(job, scene_filter):
    from navsim.common.dataloader import SceneLoader

    kwargs = {"data_path": Path(job["data_path"]), "scene_filter": scene_filter}
    if _accepts(SceneLoader.__init__, "original_sensor_path"):  # navsim main
        kwargs |= {"original_sensor_path": None, "synthetic_sensor_path": None,
                   "synthetic_scenes_path": Path(job["synthetic_scenes_path"]) if job.get("synthetic_scenes_path")
                   else None}
    else:  # navsim v1.1
        kwargs["sensor_blobs_path"] = None
    return SceneLoader(**kwargs)


def _scene_filter(job):
    from navsim.common.dataloader import SceneFilter

    if job.get("scene_filter_yaml"):
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        return instantiate(OmegaConf.load(job["scene_filter_yaml"]))
    logs = sorted({t[0] for t in job["tokens"]})
    return SceneFilter(num_history_frames=4, num_future_frames=job["num_future_frames"], frame_interval=1,
                       has_route=True, log_names=logs, tokens=[t[1] for t in job["tokens"]])


def _scenarios(job, loader):
    """token -> a callable building the devkit's NavSimScenario (scene construction is part of caching)."""
    from navsim.common.dataclasses import Scene, SensorConfig
    from navsim.planning.scenario_builder.navsim_scenario import NavSimScenario

    maps_root = job["maps_root"]
    out = {}
    for token, frames in loader.scene_frames_dicts.items():
        def build(frames=frames):
            scene = Scene.from_scene_dict_list(frames, None, num_history_frames=4,
                                               num_future_frames=job["num_future_frames"],
                                               sensor_config=SensorConfig.build_no_sensors())
            return NavSimScenario(scene, map_root=maps_root, map_version="nuplan-maps-v1.0")
        out[token] = build
    for token, (scene_path, _) in getattr(loader, "synthetic_scenes", {}).items():
        def build(scene_path=scene_path):
            scene = Scene.load_from_disk(scene_path, None, SensorConfig.build_no_sensors())
            return NavSimScenario(scene, map_root=maps_root, map_version="nuplan-maps-v1.0")
        out[token] = build
    return out


def _timed(items, fn, repeat=1):
    """(cpu s, wall s) per item after one untimed warm-up item, the best of `repeat` passes, and the items that
    raised."""
    failed = []
    if items:
        try:
            fn(items[0])
        except Exception as err:  # noqa: BLE001 - counted, the timing goes on
            failed.append(f"warm-up {items[0]}: {type(err).__name__}: {err}")
    best = None
    for _ in range(max(repeat, 1)):
        cpu, wall = time.process_time(), time.perf_counter()
        for item in items:
            try:
                fn(item)
            except Exception as err:  # noqa: BLE001
                failed.append(f"{item}: {type(err).__name__}: {err}")
        n = max(len(items), 1)
        timing = ((time.process_time() - cpu) / n, (time.perf_counter() - wall) / n)
        best = timing if best is None or timing[0] < best[0] else best
    return best[0], best[1], sorted(set(failed))


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    from navsim.planning.metric_caching.metric_cache_processor import MetricCacheProcessor

    loader = _scene_loader(job, _scene_filter(job))
    scenarios = _scenarios(job, loader)
    tokens = list(scenarios)
    cache_dir = Path(tempfile.mkdtemp(prefix="devkit_metric_cache_"))
    kwargs = {"cache_path": str(cache_dir), "force_feature_computation": True}
    if _accepts(MetricCacheProcessor.__init__, "proposal_sampling"):
        kwargs["proposal_sampling"] = _sampling(num_poses=40, interval_length=0.1)
    processor = MetricCacheProcessor(**kwargs)
    files = {}

    # navsim main: compute_and_save_metric_cache; v1.1: compute_metric_cache computes and saves
    compute_and_save = getattr(processor, "compute_and_save_metric_cache", None) or processor.compute_metric_cache

    def cache(token):
        entry = compute_and_save(scenarios[token]())
        files[token] = entry.file_name

    repeat = int(job.get("repeat", 1))
    caching_cpu, caching_wall, failed = _timed(tokens, cache, repeat)
    result = {"scenes": len(tokens), "caching_cpu_s": caching_cpu, "caching_wall_s": caching_wall}

    from navsim.evaluate import pdm_score as pdm_score_module
    from navsim.planning.simulation.planner.pdm_planner.scoring.pdm_scorer import PDMScorer
    from navsim.planning.simulation.planner.pdm_planner.simulation.pdm_simulator import PDMSimulator

    sampling = _sampling(num_poses=40, interval_length=0.1)
    simulator, scorer = PDMSimulator(sampling), PDMScorer(sampling)
    policy = None
    if _accepts(pdm_score_module.pdm_score, "traffic_agents_policy"):  # navsim main
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        policies = Path(job["navsim_root"]) / "navsim/planning/script/config/common/traffic_agents_policy"
        # run_pdm_score_one_stage's default traffic (non_reactive) and run_pdm_score's two-stage one (reactive)
        name, file = (("non_reactive", "log_replay_traffic_agents.yaml") if job["mode"] == "one_stage"
                      else ("reactive", "navsim_IDM_traffic_agents.yaml"))
        policy = instantiate(OmegaConf.load(policies / file)[name], sampling)
    rows = []

    def score(token):
        with lzma.open(files[token], "rb") as fh:
            metric_cache = pickle.load(fh)
        trajectory = _cv_trajectory(metric_cache)
        kwargs = {"metric_cache": metric_cache, "model_trajectory": trajectory, "future_sampling": sampling,
                  "simulator": simulator, "scorer": scorer}
        if policy is not None:
            kwargs["traffic_agents_policy"] = policy
        out = pdm_score_module.pdm_score(**kwargs)
        if job["mode"] == "two_stage":
            rows.append(_two_stage_row(token, metric_cache, trajectory, out))

    scored = [t for t in tokens if t in files]
    cpu, wall, score_failed = _timed(scored, score, int(job.get("scoring_repeat", repeat)))
    if job["mode"] == "two_stage":
        rows[:] = rows[-len(scored):]  # the last pass (the warm-up and earlier passes scored the same scenes)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        _aggregate(job, rows, tokens, sampling)
        cpu += (time.process_time() - start_cpu) / max(len(scored), 1)
        wall += (time.perf_counter() - start_wall) / max(len(scored), 1)
    result |= {"scoring_cpu_s": cpu, "scoring_wall_s": wall, "failed": failed + score_failed}
    Path(sys.argv[2]).write_text(json.dumps(result))


def _two_stage_row(token, metric_cache, trajectory, out):
    """The row run_pdm_score.py builds around pdm_score's output (endpoint, start point, simulated states)."""
    from nuplan.common.actor_state.state_representation import StateSE2
    from nuplan.common.geometry.convert import relative_to_absolute_poses

    row, states = out
    end = StateSE2(*trajectory.poses[-1])
    endpoint = relative_to_absolute_poses(metric_cache.ego_state.rear_axle, [end])[0]
    row["valid"] = True
    row["log_name"] = metric_cache.log_name
    row["frame_type"] = metric_cache.scene_type
    row["start_time"] = metric_cache.timepoint.time_s
    row["endpoint_x"], row["endpoint_y"] = endpoint.x, endpoint.y
    row["start_point_x"], row["start_point_y"] = metric_cache.ego_state.rear_axle.x, metric_cache.ego_state.rear_axle.y
    row["ego_simulated_states"] = [states]
    row["token"] = token
    return row


def _aggregate(job, rows, tokens, sampling):
    """run_pdm_score.py's scene aggregation, final scores and mapping scores over the scored rows."""
    from dataclasses import fields

    import navsim.planning.script.run_pdm_score as script
    import pandas as pd
    from navsim.common.dataclasses import PDMResults
    from omegaconf import OmegaConf

    mapping = {}
    for now, prev, pairs in OmegaConf.to_container(OmegaConf.load(job["split_yaml"]))["reactive_all_mapping"]:
        if now in tokens or prev in tokens:
            mapping[(now, prev)] = [tuple(p) for p in pairs]
    df = script.create_scene_aggregators(mapping, pd.concat(rows), sampling)
    df = script.compute_final_scores(df)
    # the score columns main() passes on (run_pdm_score.py)
    score_cols = [c for c in df.columns if (any(f.name in c for f in fields(PDMResults))
                                            or c in ("two_frame_extended_comfort", "score")) and c != "pdm_score"]
    script.calculate_individual_mapping_scores(df[score_cols + ["token", "weight"]], mapping)


if __name__ == "__main__":
    main()
