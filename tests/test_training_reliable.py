"""run_training.py: same seed, same weights; a damaged feature cache entry is rebuilt; the run says where its
checkpoint is and how to score it."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from navsim_agents import run_training

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(out: Path, cache: Path, *extra: str):
    overrides = ["planner=tiny", "planner.num_refinements=2", "planner.num_bev_layers=1", "planner.num_heads=4",
                 "+backbone.overrides.depth=1", "agent.image_scale=0.05", "split.scene_filter.max_scenes=4",
                 f"output_dir={out}", f"cache_path={cache}", f"metric_cache_path={cache / 'mc'}",
                 "dataloader.batch_size=2", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                 "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", *extra]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("run_training", overrides=overrides)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_same_weights_and_a_truncated_cache_entry_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "cache"
    first = run_training.train(_cfg(tmp_path / "a", cache, "seed=3"))
    entries = sorted(cache.glob("*/*.pt"))
    assert len(entries) == 4
    intact = entries[0].read_bytes()
    entries[0].write_bytes(intact[: len(intact) // 3])  # an interrupted copy / full disk
    torch.rand(10)  # another global RNG state before the second run
    second = run_training.train(_cfg(tmp_path / "b", cache, "seed=3"))
    assert any(str(entries[0]) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert torch.load(entries[0], weights_only=True).keys() == {"features", "targets"}
    a, b = _weights(first["last_checkpoint"]), _weights(second["last_checkpoint"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_run_ends_with_the_checkpoint_and_the_command_that_scores_it(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    text = run_training.where_it_is(ckpt, ["backbone=eupe-s", "+backbone.overrides.depth=2", "planner=tiny",
                                           "agent.image_scale=0.1", "trainer.max_epochs=3", "split=navmini_train"])
    assert text == (f"checkpoint: {ckpt}\nscore it: python -m navsim_agents.run_pdm_score backbone=eupe-s "
                    f"+backbone.overrides.depth=2 planner=tiny agent.image_scale=0.1 agent.checkpoint={ckpt}")


def test_bad_training_settings_stop_before_any_work(tmp_path):
    import pytest

    from eupe.config_errors import ConfigError

    with pytest.raises(ConfigError, match=r"max_scenes=0 must be an integer >= 1"):
        run_training.train(_cfg(tmp_path / "o", tmp_path / "c", "split.scene_filter.max_scenes=0"))
    with pytest.raises(ConfigError, match=r"seed=-2 must be a non-negative integer"):
        run_training.train(_cfg(tmp_path / "o", tmp_path / "c", "seed=-2"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
