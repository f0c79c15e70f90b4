"""Planner defaults live once: PlannerConfig (the Hydra schema); the planner yamls state only what their size
changes, and each size names the image scale it is meant for."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import navsim_agents  # noqa: F401  (registers planner/schema)
from bench2drive import agent as b2d_agent
from navsim_agents.agents.rap_agent import load_planner_profile
from rap_backbone.planner_config import PlannerConfig, PlannerGroupConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = ("rap_paper", "small", "tiny")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("run_pdm_score", overrides=list(overrides))


def test_planner_yamls_restate_no_default():
    defaults = PlannerGroupConfig()
    for size in SIZES:
        values = OmegaConf.to_container(OmegaConf.load(CONFIGS / "planner" / f"{size}.yaml")) or {}
        assert values.pop("defaults") == ["schema", "_self_"], size
        restated = [k for k, v in values.items() if getattr(defaults, k) == v]
        assert not restated, f"planner/{size}.yaml restates the defaults {restated}"


def test_composed_sizes_and_overrides():
    paper = _compose("planner=rap_paper").planner
    # RAP navsim_config.py: tf_d_model 1280, tf_d_ffn 1024, 64 proposals, 4 refinements; GridMask prob 0.7
    assert (paper.d_model, paper.d_ffn, paper.num_proposals, paper.num_refinements) == (1280, 1024, 64, 4)
    assert paper.grid_mask_prob == 0.7 and paper.image_scale == 0.4
    small = _compose("planner=small").planner
    assert (small.d_model, small.d_ffn, small.num_proposals, small.image_scale) == (128, 256, 64, 0.2)
    tiny = _compose("planner=tiny", "planner.reference_points=grid", "planner.seed=3").planner
    assert (tiny.d_model, tiny.num_proposals, tiny.grid_mask_prob) == (32, 16, 0.0)
    assert tiny.reference_points == "grid" and tiny.seed == 3
    with pytest.raises(Exception, match="d_model"):
        _compose("planner=small", "planner.d_model=wide")  # typed by the schema


def test_footprint_is_the_pacifica_with_raps_margins():
    # RAP navsim_config.py: half_length 2.588 + 0.25, half_width 1.1485 + 0.1, rear_axle_to_center 1.461
    cfg = PlannerConfig()
    assert math.isclose(cfg.half_length, 2.588 + 0.25, rel_tol=1e-12)
    assert math.isclose(cfg.half_width, 1.1485 + 0.1, rel_tol=1e-12)
    assert math.isclose(cfg.rear_axle_to_center, 1.461, rel_tol=1e-12)


def test_profile_splits_network_and_input():
    profile = load_planner_profile("small")
    assert profile.image_scale == 0.2 and profile.seed is None
    net = profile.planner_config()
    assert type(net) is PlannerConfig and net.d_model == 128
    assert {f.name for f in fields(PlannerGroupConfig)} - {f.name for f in fields(PlannerConfig)} == {
        "seed", "image_scale", "runtime", "exported"}
    assert profile.runtime == "torch" and profile.exported is None
    with pytest.raises(KeyError, match="wide"):
        load_planner_profile({"wide": 1})
    with pytest.raises(FileNotFoundError, match="huge"):
        load_planner_profile("huge")


@pytest.mark.parametrize("size, expected", [("rap_paper", (768, 432)), ("small", (384, 216))])
def test_closed_loop_agent_images_follow_the_planner_size(tmp_path, size, expected):
    # nuPlan's 1920x1080 x 0.4 = RAP's 768x432; x 0.2 = 384x216
    conf = tmp_path / "agent.yaml"
    conf.write_text(f"planner: constant_velocity\nplanner_config: {size}\n")
    cfg, _ = b2d_agent.load_agent_config(str(conf))
    assert (cfg["image_width"], cfg["image_height"]) == expected
    conf.write_text(f"planner: constant_velocity\nplanner_config: {size}\nimage_width: 64\nimage_height: 36\n")
    cfg, _ = b2d_agent.load_agent_config(str(conf))
    assert (cfg["image_width"], cfg["image_height"]) == (64, 36)
