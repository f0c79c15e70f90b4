"""Bench2Drive closed loop: leaderboard agent for RAP, PID, routes, metrics, CARLA runner, embedded simulator."""

import os

# The planner's OpenMP threads sleep at a barrier instead of spinning: libgomp's default spins for milliseconds,
# and on a CPU shared with the simulator or other jobs the spinning threads took 10x the planner's own CPU time
# (2 threads, load 8: 2.2 s of CPU per planner call against 0.21 s; benchmarks/closed_loop.py). OpenMP reads it
# once, when torch loads it, so it is set here, before any torch import of the closed-loop entry points; a value
# in the environment wins.
OMP_WAIT_POLICY = "PASSIVE"
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)

from rap_backbone.planner_config import register_planner_schema  # noqa: E402

register_planner_schema()  # the configs/planner yamls extend it
