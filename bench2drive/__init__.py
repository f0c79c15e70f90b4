"""Bench2Drive closed loop: leaderboard agent for RAP, PID, routes, metrics, CARLA runner, embedded simulator."""

from rap_backbone.planner_config import register_planner_schema

register_planner_schema()  # the configs/planner yamls extend it
