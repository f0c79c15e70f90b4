"""Closed-loop speed: simulator steps/s, planner Hz in the loop and wall time per route, per planner/backbone.

    python benchmarks/closed_loop.py [--backbones eupe-t ...] [--ticks 400] [--size 192x108]

Writes benchmarks/results/closed_loop.md and .csv. Backbones are run through the RAP planner when
rap_backbone.planner is importable; rows that cannot be built are reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from bench2drive import agent as agent_mod
from bench2drive.rig import build_rig
from bench2drive.sim.expert import ScriptedExpert
from bench2drive.sim.route_runner import SimSettings, run_routes
from bench2drive.sim.scenarios import synthetic_routes


class Timed:
    """Wraps a planner to count calls and their time."""

    def __init__(self, planner):
        self.planner, self.calls, self.seconds = planner, 0, 0.0

    def __call__(self, features):
        t = time.perf_counter()
        out = self.planner(features)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def bench(name: str, make_planner, args, routes) -> dict:
    w, h = map(int, args.size.split("x"))
    cams = build_rig("rap4", width=w, height=h)
    tmp = Path(tempfile.mkdtemp())
    conf = tmp / "agent.yaml"
    conf.write_text(f"rig: rap4\nimage_width: {w}\nimage_height: {h}\nplanner: constant_velocity\n")
    timed = Timed(make_planner()) if make_planner else None
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
    ticks = sum(r["meta"]["duration_game"] for r in res["_checkpoint"]["records"]) * 20
    return {"planner": name, "routes": len(routes), "ticks": int(ticks), "steps_per_s": ticks / wall,
            "planner_hz": (timed.calls / timed.seconds) if timed and timed.seconds else float("nan"),
            "wall_s_per_route": wall / len(routes)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbones", nargs="*", default=["eupe-t"])
    p.add_argument("--ticks", type=int, default=400)
    p.add_argument("--size", default="192x108")
    p.add_argument("--planner-config", default="small", help="configs/planner/<name>.yaml")
    args = p.parse_args()
    routes = synthetic_routes(["HardBreakRoute", "VanillaSignalizedTurnEncounterRedLight"], length=80.0)
    rows = [bench("scripted expert (no sensors)", None, args, routes),
            bench("constant velocity (rendered cameras)", agent_mod.ConstantVelocityPlanner, args, routes)]
    for bb in args.backbones:
        cfg = dict(agent_mod.DEFAULTS, planner="rap", backbone={"name": bb}, planner_config=args.planner_config)
        try:
            rows.append(bench(f"RAP {bb} ({args.planner_config})", lambda c=cfg: agent_mod.build_planner(c), args,
                              routes))
        except Exception as exc:  # report and go on
            rows.append({"planner": f"RAP {bb}", "routes": 0, "ticks": 0, "steps_per_s": float("nan"),
                         "planner_hz": float("nan"), "wall_s_per_route": float("nan"),
                         "note": f"skipped: {type(exc).__name__}: {exc}"[:160]})
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    keys = ["planner", "routes", "ticks", "steps_per_s", "planner_hz", "wall_s_per_route", "note"]
    with open(out / "closed_loop.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r.get(k, ''):.2f}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                                       for k in keys) + " |")
    table = "\n".join(lines)
    (out / "closed_loop.md").write_text(
        f"# Closed-loop speed (CPU, torch threads {torch.get_num_threads()}, images {args.size}, "
        f"{args.ticks} ticks max per route, random weights)\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
