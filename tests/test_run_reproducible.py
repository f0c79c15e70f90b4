"""Same command, same numbers: run_pdm_score with random RAP weights is seeded (sequential, Ray, resumed)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eupe.seeding import derive_seed, seed_everything
from navsim_agents import run_pdm_score
from navsim_agents.scoring import evaluate as E

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# a RAP agent small enough for seconds per token: 2-block eupe-t, tiny planner, images at 0.1 of their size
RAP_TINY = ["backbone=eupe-t", "+backbone.overrides.depth=2", "planner=tiny", "agent.image_scale=0.1"]


def _cfg(tmp_path: Path, *extra: str, name: str = "run"):
    overrides = [*RAP_TINY, "split.scene_filter.max_scenes=2", f"exp_root={tmp_path}", f"experiment_name={name}",
                 f"metric_cache_path={tmp_path / 'mc'}", "progress=false", *extra]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="run_pdm_score", overrides=overrides)


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=0)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "token", "a") == derive_seed(0, "token", "a")
    assert len({derive_seed(0, "token", "a"), derive_seed(0, "token", "b"), derive_seed(1, "token", "a")}) == 3
    assert 0 <= derive_seed(123, "x") < 2**63
    seed_everything(derive_seed(5, "t"))
    first = torch.rand(3)
    seed_everything(derive_seed(5, "t"))
    assert torch.equal(first, torch.rand(3))


def test_random_weights_follow_the_seed(tmp_path):
    def weights(seed: int) -> dict:
        torch.manual_seed(1234 + seed)  # whatever state the process is in before
        agent = run_pdm_score._make_agent(_cfg(tmp_path, f"seed={seed}"))
        return {k: v.clone() for k, v in agent.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_two_runs_with_the_same_seed_give_the_same_csv_and_record_it(tmp_path):
    first = run_pdm_score.run(_cfg(tmp_path, "seed=3", name="first"))
    torch.rand(100)  # a different global RNG state between the runs
    second = run_pdm_score.run(_cfg(tmp_path, "seed=3", name="second"))
    pd.testing.assert_frame_equal(_csv(first), _csv(second))
    assert _csv(first)["valid"].iloc[:-1].all()
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["seed"] == 3
    assert sidecar["run_key"] == run_pdm_score.run_key(_cfg(tmp_path, "seed=3"))
    assert sidecar["run_key"] != run_pdm_score.run_key(_cfg(tmp_path, "seed=4"))


def test_resumed_run_gives_the_fresh_csv(tmp_path):
    fresh = run_pdm_score.run(_cfg(tmp_path, name="fresh"))
    cfg = _cfg(tmp_path, name="resumed")
    tokens = _csv(fresh)["token"].iloc[:-1].tolist()
    partial = run_pdm_score.partial_path(cfg)
    partial.parent.mkdir(parents=True)
    # an earlier process scored the first token with its own agent, then died
    for row in run_pdm_score.score_chunk(OmegaConf.to_container(cfg, resolve=True), tokens[:1]):
        E.append_partial(partial, row)
    pd.testing.assert_frame_equal(_csv(fresh), _csv(run_pdm_score.run(cfg)))


def test_ray_tasks_build_the_same_random_model_as_a_sequential_run(tmp_path):
    pytest.importorskip("ray", reason="ray is an optional extra (pip install ray)")
    seq = run_pdm_score.run(_cfg(tmp_path, "split.scene_filter.max_scenes=1", name="seq"))
    # one token: the Ray task builds its own agent from the seed, the sequential run the driver's
    ray_csv = run_pdm_score.run(_cfg(tmp_path, "split.scene_filter.max_scenes=1", "worker=ray", name="ray"))
    pd.testing.assert_frame_equal(_csv(seq), _csv(ray_csv))
