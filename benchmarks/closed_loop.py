"""Closed-loop speed: simulator steps/s, planner Hz in the loop and wall time per route, per planner/backbone;
and the planner latency rows of the hardware-profile table that ``latency=measured`` reads.

    python benchmarks/closed_loop.py --threads 2      # the final table and every CPU row of the profile table

(options: [--backbones eupe-t ...] [--profile-only eupe-s eupe-b dinov3-h] [--ticks 400] [--size 192x108]
[--corruption rain --severity 3] [--profile cpu-2core] [--profile-table PATH] [--no-profile])

Writes benchmarks/results/closed_loop.md and .csv, and merges one row per backbone into
bench2drive/latency_profiles.csv (profile, backbone, planner size, image, median planner latency, where and how;
rows of other profiles and backbones are kept): the ``--backbones`` driven in the loop, then the
``--profile-only`` ones (large encoders, timed out of the loop only). Rows that cannot be built are reported as
skipped.

What the in-loop rate counts: only planner calls after one warm-up call (torch's first call pays for kernel
selection and allocator growth), under ``torch.inference_mode``, with the torch thread count given.
``planner_cpu_ms`` is the process CPU time of a call (all threads): unlike the wall time it hardly moves with
the load of a shared machine, so compare it across runs there; wall-clock columns are final only on an idle
machine (the load average is in the notes).

Where the time went (RAP small + eupe-t, 4 x 192x128, CPU time per planner call on the 2-core machine under
load 8): 495 ms with 1 thread, of which spatial cross-attention 310 ms (bilinear sampling of all 4 cameras x
512 queries x 16 points and its weighting), the backbone 95 ms, temporal self-attention 50 ms. With 2 torch
threads the call took 2.3 s of CPU: OpenMP's worker threads spin at every barrier while the other is
descheduled. Now cross-attention samples only the camera rows a query is visible in (about a quarter; the
result is the same, rows not visible were multiplied by 0), and ``bench2drive`` sets OMP_WAIT_POLICY=PASSIVE
before torch loads: 190-240 ms of CPU per call with 1 or 2 threads. The simulator's own work per tick (raster
cameras on planner ticks, corruption, dynamics, monitors) is about 4 ms of CPU; the in-loop call costs the same
CPU as the bare forward, so the rest of the in-loop wall time was the machine's load.
"""
from __future__ import annotations

# isort: off
import bench2drive  # noqa: F401  (first: it sets OpenMP's wait policy, which OpenMP reads when torch loads it)
# isort: on
import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, time_call, write_table  # noqa: E402

from bench2drive import agent as agent_mod  # noqa: E402
from bench2drive.rig import RIGS, build_rig  # noqa: E402
from bench2drive.robustness import LATENCY_PROFILE_COLUMNS, LATENCY_PROFILE_KEY, LATENCY_PROFILES  # noqa: E402
from bench2drive.sim.expert import ScriptedExpert  # noqa: E402
from bench2drive.sim.route_runner import SimSettings, run_routes  # noqa: E402
from bench2drive.sim.scenarios import synthetic_routes  # noqa: E402

RIG = RIGS[0]  # rap4: RAP's four cameras, the closed-loop agent's default rig


class Timed:
    """Wraps a planner to keep each call's wall and process CPU time (all threads) and the last features."""

    def __init__(self, planner):
        self.planner, self.seconds, self.cpu_seconds, self.features = planner, [], [], None
        self.source = getattr(planner, "source", "")

    def __call__(self, features):
        self.features = features
        t, c = time.perf_counter(), time.process_time()
        out = self.planner(features)
        self.cpu_seconds.append(time.process_time() - c)
        self.seconds.append(time.perf_counter() - t)
        return out


def _agent_yaml(tmp: Path, w: int, h: int, args) -> Path:
    conf = tmp / "agent.yaml"
    corruption = f"{{name: {args.corruption}, severity: {args.severity}}}" if args.corruption != "none" else \
        "{name: none}"
    conf.write_text(f"rig: {RIG}\nimage_width: {w}\nimage_height: {h}\nplanner: constant_velocity\n"
                    f"corruption: {corruption}\n")
    return conf


def _warm_up(planner, conf: Path) -> None:
    a = agent_mod.RAPLeaderboardAgent(planner=planner)
    a.setup(str(conf))
    data = {c.id: (0, np.zeros((c.height, c.width, 4), np.uint8)) for c in a.rig}
    planner(a.build_features(data, np.zeros(2), 0.0, 0.0, np.zeros(2), 4))


def bench(name: str, make_planner, args, routes) -> tuple[dict, Timed | None]:
    w, h = map(int, args.size.split("x"))
    cams = build_rig(RIG, width=w, height=h)
    tmp = Path(tempfile.mkdtemp())
    conf = _agent_yaml(tmp, w, h, args)
    timed = None
    if make_planner is not None:
        planner = make_planner()
        _warm_up(planner, conf)  # not counted: the closed-loop entry point warms up the same way
        timed = Timed(planner)
    ex = ScriptedExpert()

    def make(save_name):
        if timed is None:
            return ex
        a = agent_mod.RAPLeaderboardAgent(planner=timed)
        a.setup(f"{conf}+{save_name}")
        return a

    t0 = time.perf_counter()
    res = run_routes(routes, make, checkpoint=tmp / "r.json", save_path=tmp / "save", on_sim=ex.attach,
                     settings=SimSettings(rig=cams, max_ticks=args.ticks, render=timed is not None))
    wall = time.perf_counter() - t0
    ticks = round(sum(r["meta"]["duration_game"] for r in res["_checkpoint"]["records"]) * 20)
    calls = timed.seconds if timed else []
    cpu = timed.cpu_seconds if timed else []
    row = {"planner": name, "corruption": f"{args.corruption} {args.severity}" if timed else "-",
           "routes": len(routes), "ticks": ticks, "steps_per_s": ticks / wall,
           "planner_calls": len(calls), "planner_hz": len(calls) / sum(calls) if calls else float("nan"),
           "planner_median_ms": 1e3 * statistics.median(calls) if calls else float("nan"),
           "planner_cpu_ms": 1e3 * statistics.median(cpu) if cpu else float("nan"),
           "wall_s_per_route": wall / len(routes), "note": ""}
    return row, timed


def merge_profile_rows(rows: list[dict], path: Path) -> Path:
    """Merge rows into the profile table: a row replaces the one with the same profile, backbone, planner and
    image; every other row (other machines, other backbones) is kept."""
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_keys = {tuple(r[k] for k in LATENCY_PROFILE_KEY) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in LATENCY_PROFILE_KEY) not in new_keys]
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LATENCY_PROFILE_COLUMNS)
        wr.writeheader()
        wr.writerows(kept + rows)
    return path


def profile_row(backbone: str, planner, features, args, load: float, *, repeats: int = 5) -> dict:
    """The latency a deployment would see: the planner call out of the loop, median after a warm-up."""
    ms = time_call(lambda: planner(features), repeats=repeats, warmup=1)
    w, h = map(int, args.size.split("x"))
    return {"profile": args.profile, "backbone": backbone, "planner_config": args.planner_config,
            "image": f"{len(build_rig(RIG, width=w, height=h))}x{w}x{h}", "latency_ms": f"{ms:.1f}", "where": machine(),
            "how": f"benchmarks/closed_loop.py: median of {repeats} planner calls (batch 1, fp32, inference mode, "
                   f"{args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, random "
                   f"weights) after a warm-up; load average {load:.1f} at the start",
            "date": time.strftime("%Y-%m-%d")}


# the backbones of the shipped profile table beside eupe-t, timed out of the loop (RAP's DINOv3-H+ and the EUPE
# sizes): one run of this script rewrites every CPU row of the table
PROFILE_ONLY = ("eupe-s", "eupe-b", "dinov3-h")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbones", nargs="*", default=["eupe-t"], help="driven in the loop, and profiled")
    p.add_argument("--profile-only", nargs="*", default=list(PROFILE_ONLY),
                   help="backbones only timed out of the loop for the latency profile (large ones)")
    p.add_argument("--ticks", type=int, default=400)
    p.add_argument("--size", default="192x108")
    p.add_argument("--planner-config", default="small", help="configs/planner/<name>.yaml")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--corruption", default="rain", help="camera corruption in the loop ('none' for clean)")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--profile", default=f"cpu-{os.cpu_count()}core", help="hardware-profile name of the rows")
    p.add_argument("--profile-table", type=Path, default=LATENCY_PROFILES, help="the hardware-profile table")
    p.add_argument("--no-profile", action="store_true", help="do not write latency_profiles.csv rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    routes = synthetic_routes(["HardBreakRoute", "VanillaSignalizedTurnEncounterRedLight"], length=80.0)
    profile_rows = []
    if not args.backbones:  # --backbones with no name: only the --profile-only rows (the speed table stays)
        args.backbones, rows = [], None
    else:
        rows = [bench("scripted expert (no sensors)", None, args, routes)[0],
                bench("constant velocity (rendered cameras)", agent_mod.ConstantVelocityPlanner, args, routes)[0]]
    for bb in args.backbones:
        cfg = dict(agent_mod.DEFAULTS, planner="rap", backbone={"name": bb}, planner_config=args.planner_config)
        try:
            row, timed = bench(f"RAP {bb} ({args.planner_config})", lambda c=cfg: agent_mod.build_planner(c), args,
                               routes)
        except Exception as exc:  # report and go on
            rows.append({"planner": f"RAP {bb}", "note": f"skipped: {type(exc).__name__}: {exc}"[:160]})
            continue
        rows.append(row)
        profile_rows.append(profile_row(bb, timed.planner, timed.features, args, load))
    keys = ["planner", "corruption", "routes", "ticks", "steps_per_s", "planner_calls", "planner_hz",
            "planner_median_ms", "planner_cpu_ms", "wall_s_per_route", "note"]
    if rows is not None:
        write_table("closed_loop", keys, [[r.get(k, "") for k in keys] for r in rows], key_columns=2,
                    title=f"Closed-loop speed (CPU, torch threads {args.threads}, images {args.size}, {args.ticks} "
                          f"ticks max per route, random weights)",
                    notes=[f"load average (1 min) at the start: {load:.1f} on {os.cpu_count()} cores; "
                           f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
                           "planner_hz: calls per second of planner time after one warm-up call (not counted); "
                           "planner_cpu_ms: median process CPU time of a call (all threads; robust to the load); "
                           "steps_per_s: simulator ticks per wall second, everything included"])
    if profile_rows and not args.no_profile:
        print(f"latency profile rows merged into {merge_profile_rows(profile_rows, args.profile_table)}")
    w, h = map(int, args.size.split("x"))
    for bb in args.profile_only:  # each row is merged as soon as it is measured
        cfg = dict(agent_mod.DEFAULTS, planner="rap", backbone={"name": bb}, planner_config=args.planner_config)
        try:
            planner = agent_mod.build_planner(cfg)
            a = agent_mod.RAPLeaderboardAgent(planner=planner)
            a.setup(str(_agent_yaml(Path(tempfile.mkdtemp()), w, h, args)))
            data = {c.id: (0, np.zeros((c.height, c.width, 4), np.uint8)) for c in a.rig}
            row = profile_row(bb, planner, a.build_features(data, np.zeros(2), 0.0, 0.0, np.zeros(2), 4), args,
                              load, repeats=3)
        except Exception as exc:  # report and go on with the next backbone; its old row stays
            print(f"profile row {bb}: skipped: {type(exc).__name__}: {exc}")
            continue
        planner = a = None  # a large encoder's memory goes before the next one is built
        print(row)
        if not args.no_profile:
            merge_profile_rows([row], args.profile_table)
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
