"""NAVSIM: data, scoring, agents and the Hydra entry points."""

from rap_backbone.planner_config import register_planner_schema

register_planner_schema()  # the configs/planner yamls extend it
