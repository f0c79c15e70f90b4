"""Speed of our NAVSIM metric caching and scoring against the official devkit, per scene, one core.

    python benchmarks/scoring.py [--scenes 25] [--two-stage-logs 12] [--repeat 3] [--one-stage-passes 10]
        [--devkit-python /work/devkit-venv/bin/python --devkit-root /work/devkit-src/navsim]
        [--devkit-v1-python /work/devkit-v11-venv/bin/python --devkit-v1-root /work/devkit-src/navsim-v1.1]

One-stage rows (caching, PDMS v1, EPDMS v2 with log-replay traffic) run on the first `--scenes` scenes of
navsim_dev (the conformance data in the official layout; navmini when it is absent); two-stage rows (caching of
original + synthetic scenes, EPDMS with reactive IDM traffic, the human filter and the scene aggregation) on a
navmini_two_stage world of `--two-stage-logs` logs generated into a temporary folder. The agent is constant
velocity. Each side is timed after start-up: one untimed warm-up scene, then process CPU time (and wall time) per
scene of a pass over all scenes. The two sides take turns, `--repeat` rounds each (ours then the devkit, the devkit
then ours, ...), so that both meet the same host: a shared machine's speed drifts by tens of percent within minutes.
A round is one pass, or for one-stage scoring (a pass of ours lasts a tenth of a second) the best of
`--one-stage-passes`. Each side's column is its best round; the ratio is the median of the rounds' ratios.
Scoring includes loading the metric cache from disk; our rows freeze what the warm-up loaded, as run_metric_caching
and run_pdm_score do after their first scene; our two-stage scoring forgets what the warm-up scene kept (traffic
geometries, human-filter results) before each pass.
The devkit runs in a subprocess of its own Python (`benchmarks/devkit_timing_driver.py`, copied to a temporary
folder) on the same scenes with OMP_NUM_THREADS=1; navsim main gives the v2 and two-stage columns, navsim v1.1 the v1
columns (navsim main has no PDMS v1 scorer). Goals (issue #16): scoring >= 10x, metric caching >= 5x the devkit per
scene. Writes benchmarks/results/scoring.md and .csv.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: BLAS must not fan out

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_table  # noqa: E402
from navsim_agents.data.dataclasses import SceneFilter  # noqa: E402
from navsim_agents.data.scene_loader import SceneLoader  # noqa: E402
from navsim_agents.long_lived import freeze_long_lived, release_long_lived  # noqa: E402
from navsim_agents.scoring.metric_cache import compute_metric_cache  # noqa: E402
from navsim_agents.scoring.metric_cache_file import MetricCache  # noqa: E402
from navsim_agents.scoring.pdm_score import PDMScoreRunner  # noqa: E402

CONFORMANCE = Path(os.environ.get("EUPE_DRIVE_CONFORMANCE", Path(__file__).resolve().parents[2] / "shared" /
                                  "conformance")) / "navsim_dev"
DRIVER = Path(__file__).resolve().parent / "devkit_timing_driver.py"
# issue #16: per scene on one core, scoring >= 10x and metric caching >= 5x faster than the devkit
SCORING_GOAL, CACHING_GOAL = 10.0, 5.0
NOT_INSTALLED = "not measured (devkit not installed)"
NO_V1_IN_MAIN = "not measured (navsim v1.1 not installed; navsim main has no PDMS v1 scorer)"


class Timing:
    """CPU and wall seconds per scene of one measured loop."""

    def __init__(self, cpu_s: float, wall_s: float):
        self.cpu_s, self.wall_s = cpu_s, wall_s


def timed(items: Sequence, fn: Callable, repeat: int = 1, freeze: bool = False, space_collections: bool = False,
          after_warmup: Optional[Callable] = None) -> Timing:
    """Per-item time of `fn` over `items` after one untimed warm-up call (imports, map loading, filter matrices): the
    best of `repeat` passes (as timeit: a pass that a busy host slowed says nothing of the code); `freeze`: freeze the
    loaded objects after the warm-up, as the caching and scoring jobs do after their first scene (`space_collections`:
    as the two-stage scoring job, see `freeze_long_lived`); `after_warmup`: called before each pass (e.g. to forget
    what an earlier item left for the timed ones)."""
    fn(items[0])
    if freeze:
        freeze_long_lived(space_collections)
    best: Optional[Timing] = None
    try:
        for _ in range(repeat):
            if after_warmup is not None:
                after_warmup()
            cpu, wall = time.process_time(), time.perf_counter()
            for item in items:
                fn(item)
            timing = Timing((time.process_time() - cpu) / len(items), (time.perf_counter() - wall) / len(items))
            best = timing if best is None or timing.cpu_s < best.cpu_s else best
    finally:
        if freeze:
            release_long_lived()  # each row freezes what its own warm-up loaded
    return best


def _one_stage_data(scenes: int):
    """(name, logs dir, maps root, scene loader, tokens) of the one-stage scenes."""
    if CONFORMANCE.is_dir():
        name, logs, maps = "navsim_dev", CONFORMANCE / "navsim_logs" / "navsim_dev", CONFORMANCE / "maps"
    else:
        from navsim_agents.data import synthetic

        root = Path(synthetic.ensure_navmini())
        name, logs, maps = "navmini", root / "navsim_logs" / "navmini", root / "maps"
    loader = SceneLoader(logs, None, SceneFilter(num_history_frames=4, num_future_frames=10, frame_interval=1))
    return name, logs, maps, loader, loader.tokens[:scenes]


def _cv_poses(cache: MetricCache) -> np.ndarray:
    speed = float(np.hypot(*cache.ego_state[3:5].astype(np.float32)))
    return np.array([[(i + 1) * 0.5 * speed, 0.0, 0.0] for i in range(8)])


def ours_one_stage(loader, tokens, maps: Path, tmp: Path, repeat: int = 1,
                   scoring_repeat: Optional[int] = None) -> dict[str, Timing]:
    """Caching (best of `repeat` passes) and v1 / v2 scoring (best of `scoring_repeat`, default `repeat`)."""
    paths = {t: tmp / f"{t}.npz" for t in tokens}
    out = {"caching": timed(tokens, lambda t: compute_metric_cache(loader.scene_frames_dicts[t], str(maps))
                            .save(paths[t]), repeat, freeze=True)}
    for version in ("v1", "v2"):
        runner = PDMScoreRunner(version)

        def score(t, runner=runner):
            cache = MetricCache.load(paths[t])
            runner.score(cache, _cv_poses(cache))

        out[version] = timed(tokens, score, scoring_repeat or repeat, freeze=True)
    return out


def ours_two_stage(root: Path, tmp: Path, repeat: int = 1) -> dict[str, Timing]:
    from navsim_agents.data.devkit_splits import read_devkit_split
    from navsim_agents.data.navmini_two_stage import split_yaml
    from navsim_agents.data.synthetic_scenes import TwoStageSceneLoader
    from navsim_agents.scoring import two_stage as T
    from navsim_agents.scoring.traffic_agents import TrafficScoreRunner

    split = read_devkit_split(split_yaml(root))
    original = SceneLoader(root / "navsim_logs" / split.data_split, None, SceneFilter(**split.scene_filter))
    loader = TwoStageSceneLoader(original, root / split.data_split / "synthetic_scene_pickles")
    tokens = loader.tokens_stage_one + loader.reactive_tokens_stage_two
    paths = {t: tmp / f"{t}.npz" for t in tokens}
    maps = str(root / "maps")
    out = {"caching": timed(tokens, lambda t: compute_metric_cache(loader.scene_frames(t), maps).save(paths[t]),
                              repeat, freeze=True)}
    runners = {s: TrafficScoreRunner(human_penalty_filter=not s, maps_root=maps) for s in (False, True)}
    # the warm-up scene is scored again in the timed loop: it must find nothing of its own already computed
    forget = lambda: [r.forget() for r in runners.values()]  # noqa: E731
    mapping = T.read_mapping(split.reactive_all_mapping, loader.tokens)
    rows: dict[str, dict] = {}

    def score(t):
        rows[t] = T.score_two_stage_token(t, paths[t], lambda: _cv_poses(MetricCache.load(paths[t])),
                                          runners[loader.is_synthetic(t)])

    scoring = timed(tokens, score, repeat, freeze=True, space_collections=True, after_warmup=forget)
    cpu, wall = time.process_time(), time.perf_counter()
    T.aggregate(rows, mapping)
    out["scoring"] = Timing(scoring.cpu_s + (time.process_time() - cpu) / len(tokens),
                            scoring.wall_s + (time.perf_counter() - wall) / len(tokens))
    out["scenes"] = len(tokens)
    return out


def devkit(python: Optional[str], navsim_root: Optional[str], job: dict, tmp: Path) -> dict | str:
    """The driver's result for `job`, or why it was not measured."""
    if not python or not navsim_root:
        return NOT_INSTALLED
    if not Path(python).is_file() or not (Path(navsim_root) / "navsim").is_dir():
        return f"not measured ({python} or {navsim_root}/navsim not found)"
    folder = Path(tempfile.mkdtemp(prefix="devkit_driver_", dir=tmp))
    shutil.copy(DRIVER, folder / DRIVER.name)
    job_file, out_file = folder / "job.json", folder / "out.json"
    job_file.write_text(json.dumps(job | {"navsim_root": str(navsim_root)}))
    env = dict(os.environ, NUPLAN_MAPS_ROOT=job["maps_root"], NUPLAN_MAP_VERSION="nuplan-maps-v1.0",
               NAVSIM_DEVKIT_ROOT=str(navsim_root), OPENSCENE_DATA_ROOT=str(Path(job["data_path"]).parents[1]),
               NAVSIM_EXP_ROOT=str(folder), PYTHONPATH="")
    proc = subprocess.run([python, str(folder / DRIVER.name), str(job_file), str(out_file)], env=env, cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(proc.stderr[-3000:], file=sys.stderr)
        return f"not measured (devkit driver failed: {tail[0][:160]})"
    result = json.loads(out_file.read_text())
    if result["failed"]:
        print(f"devkit: {len(result['failed'])} scenes failed: {result['failed'][:3]}", file=sys.stderr)
    return result


def _row(what: str, data: str, ours: Sequence[Timing], theirs: Sequence[dict | str], key: str,
         goal: float) -> list[str]:
    """A table row from the rounds: each side's best pass, the median of the rounds' ratios (paired: both sides of a
    round met the same host)."""
    unit, scale = ("ms", 1e3) if "scoring" in what else ("s", 1.0)
    fmt = (lambda s: f"{s * scale:.1f} {unit}") if unit == "ms" else (lambda s: f"{s:.3f} s")
    best = min(ours, key=lambda t: t.cpu_s)
    missing = next((t for t in theirs if isinstance(t, str)), None)
    if missing is not None:
        return [what, data, fmt(best.cpu_s), missing, "-", f">= {goal:.0f}x", "-", fmt(best.wall_s), "-"]
    ratio = float(np.median([t[f"{key}_cpu_s"] / o.cpu_s for o, t in zip(ours, theirs, strict=True)]))
    cpu, wall = min(t[f"{key}_cpu_s"] for t in theirs), min(t[f"{key}_wall_s"] for t in theirs)
    return [what, data, fmt(best.cpu_s), fmt(cpu), f"{ratio:.1f}x", f">= {goal:.0f}x", "yes" if ratio >= goal else "no",
            fmt(best.wall_s), fmt(wall)]


def _rounds(repeat: int, ours: Callable[[], dict], theirs: Sequence[Callable[[], dict | str]]) -> tuple[list, list]:
    """`repeat` rounds of one pass of each side, taking turns on who goes first: (our results, [each devkit job's
    results]); a devkit job that cannot run is asked only once."""
    our_rounds: list = []
    their_rounds: list[list] = [[] for _ in theirs]

    def run_theirs():
        for job, results in zip(theirs, their_rounds, strict=True):
            results.append(results[0] if results and isinstance(results[0], str) else job())

    for i in range(repeat):
        if i % 2:
            run_theirs()
        our_rounds.append(ours())
        if not i % 2:
            run_theirs()
    return our_rounds, their_rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=25, help="one-stage scenes (navsim_dev has 25)")
    parser.add_argument("--two-stage-logs", type=int, default=12, help="logs of the navmini_two_stage world "
                        "(each: 2 original + 8 synthetic scenes)")
    parser.add_argument("--devkit-python", help="Python of the venv with navsim main + nuplan-devkit")
    parser.add_argument("--devkit-root", help="navsim main source folder (holds navsim/)")
    parser.add_argument("--devkit-v1-python", help="Python of the venv with navsim v1.1 + nuplan-devkit")
    parser.add_argument("--devkit-v1-root", help="navsim v1.1 source folder (holds navsim/)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of one timed pass per side, the sides taking "
                        "turns; each side's best round and the median ratio count")
    parser.add_argument("--one-stage-passes", type=int, default=10, help="one-stage scoring passes per round and "
                        "side, the best one counts (a pass of ours lasts about 0.1 s)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scoring_bench_"))
    try:
        name, logs, maps, loader, tokens = _one_stage_data(args.scenes)
        job = {"mode": "one_stage", "repeat": 1, "scoring_repeat": args.one_stage_passes, "data_path": str(logs),
               "maps_root": str(maps),
               "num_future_frames": 10,
               "tokens": [[loader.scene_frames_dicts[t][3]["log_name"], t] for t in tokens]}
        ours, (main_dk, v1_dk) = _rounds(
            args.repeat, lambda: ours_one_stage(loader, tokens, maps, tmp, scoring_repeat=args.one_stage_passes),
            [lambda: devkit(args.devkit_python, args.devkit_root, job | {"version": "v2"}, tmp),
             lambda: devkit(args.devkit_v1_python, args.devkit_v1_root, job | {"version": "v1"}, tmp)])
        if v1_dk[0] == NOT_INSTALLED and not isinstance(main_dk[0], str):
            v1_dk = [NO_V1_IN_MAIN]

        from navsim_agents.data.devkit_splits import read_devkit_split
        from navsim_agents.data.navmini_two_stage import generate_two_stage_world, split_yaml

        world = generate_two_stage_world(tmp / "navmini_two_stage", num_logs=args.two_stage_logs, render=False)
        split = read_devkit_split(split_yaml(world))
        filter_yaml = split_yaml(world).parent / "scene_filter" / f"{split.name}.yaml"
        two_job = {"mode": "two_stage", "repeat": 1, "version": "v2",
                   "data_path": str(world / "navsim_logs" / split.data_split),
                   "maps_root": str(world / "maps"), "num_future_frames": split.scene_filter["num_future_frames"],
                   "synthetic_scenes_path": str(world / split.data_split / "synthetic_scene_pickles"),
                   "split_yaml": str(split_yaml(world)), "scene_filter_yaml": str(filter_yaml)}
        two, (two_dk,) = _rounds(args.repeat, lambda: ours_two_stage(world, tmp / "ours_two_stage"),
                                 [lambda: devkit(args.devkit_python, args.devkit_root, two_job, tmp)])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one = f"{name}, {len(tokens)} scenes"
    two_data = f"navmini_two_stage, {args.two_stage_logs} logs, {two[0]['scenes']} scenes"
    ours_of = lambda rounds, key: [r[key] for r in rounds]  # noqa: E731
    rows = [
        _row("metric caching, v1 (one cache serves v1 and v2)", one, ours_of(ours, "caching"), v1_dk, "caching",
             CACHING_GOAL),
        _row("metric caching, v2", one, ours_of(ours, "caching"), main_dk, "caching", CACHING_GOAL),
        _row("scoring PDMS v1 (load + simulate + score)", one, ours_of(ours, "v1"), v1_dk, "scoring", SCORING_GOAL),
        _row("scoring EPDMS v2 one-stage, log replay (load + simulate + score)", one, ours_of(ours, "v2"), main_dk,
             "scoring", SCORING_GOAL),
        _row("metric caching, two-stage (original + synthetic)", two_data, ours_of(two, "caching"), two_dk,
             "caching", CACHING_GOAL),
        _row("scoring EPDMS two-stage, reactive IDM (+ human filter, aggregation)", two_data, ours_of(two, "scoring"),
             two_dk, "scoring", SCORING_GOAL),
    ]
    load = os.getloadavg()[0]
    write_table("scoring", ["what", "data", "ours CPU / scene", "devkit CPU / scene", "ratio", "goal", "goal met",
                            "ours wall / scene", "devkit wall / scene"], rows, key_columns=1,
                title="NAVSIM metric caching and scoring per scene, ours vs the official devkit (one core)",
                notes=[f"machine load average during the run: {load:.1f} (numbers are only comparable on an idle "
                       "machine)",
                       "one process, OMP_NUM_THREADS=1, each side timed after one untimed warm-up scene; "
                       f"{args.repeat} rounds per side, the sides taking turns (ours first in odd rounds), a round "
                       "being one pass over all scenes (one-stage scoring: the best of "
                       f"{args.one_stage_passes}); each side's column is its best round (as timeit), the ratio the "
                       "median of the rounds' ratios (both sides of a round met the same host); CPU = process time; "
                       "agent: constant velocity; scoring includes loading the metric cache; our rows freeze the "
                       "loaded objects after the warm-up scene (gc.freeze), as run_metric_caching and run_pdm_score "
                       "do after their first scene; our two-stage scoring forgets what the warm-up scene kept before "
                       "each pass",
                       "devkit: navsim main 0a380a9 (v2, two-stage) and navsim v1.1 3e8291b (v1) with nuplan-devkit "
                       "v1.2, run outside the repository by benchmarks/devkit_timing_driver.py",
                       f"devkit scenes: one-stage {_scenes(main_dk)}, v1 {_scenes(v1_dk)}, two-stage {_scenes(two_dk)}"])


def _scenes(result: Sequence[dict | str]) -> str:
    if isinstance(result[0], str):
        return "-"
    return f"{result[0]['scenes']} ({max(len(r['failed']) for r in result)} failed)"


if __name__ == "__main__":
    main()
