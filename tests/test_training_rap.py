"""run_training.py on navmini: loss and the chosen trajectory's L2 drop; checkpoints; resume."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cfg(tmp_path: Path, steps: int, **extra):
    from hydra import compose, initialize_config_dir

    overrides = [
        "planner=tiny", "planner.num_refinements=2", "planner.num_bev_layers=1", "planner.num_heads=4",
        "+backbone.overrides.depth=1", "agent.image_scale=0.05", "agent.lr=5e-3", "agent.warmup_epochs=0",
        "split.scene_filter.max_scenes=8", f"output_dir={tmp_path}", "dataloader.batch_size=8",
        f"trainer.max_epochs={steps}", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "checkpoint.save_top_k=1",
        "seed=0",
    ] + [f"{k}={v}" for k, v in extra.items()]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("run_training", overrides=overrides)


def _chosen_l2(agent, dataset) -> float:
    from navsim_agents.run_training import collate

    features, targets = collate([dataset[i] for i in range(len(dataset))])
    agent.eval()
    with torch.no_grad():
        traj = agent.forward(features)["trajectory"]
    return float(torch.linalg.norm(traj[..., :2] - targets["trajectory"][..., :2], dim=-1).mean())


def _epoch_losses(output_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(next((output_dir / "csv").glob("version_*/metrics.csv")))))
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


@pytest.mark.slow
def test_training_lowers_loss_and_l2_then_resumes(tmp_path):
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from navsim_agents.run_training import train

    cfg = _cfg(tmp_path, steps=120)
    pl.seed_everything(0)
    initial = instantiate(cfg.agent, _convert_="partial")  # the same seeded weights train() starts from
    out = train(cfg)
    data = out["trainer"].train_dataloader.dataset
    assert len(data) == 8 and out["failed"] == {}
    losses = _epoch_losses(tmp_path)
    assert len(losses) == 120  # one step per epoch (8 tokens, batch 8)
    l2_before = _chosen_l2(initial, data)
    trained = instantiate(cfg.agent, _convert_="partial")
    trained.load_checkpoint(out["last_checkpoint"])
    l2_after = _chosen_l2(trained, data)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; chosen L2 {l2_before:.2f} -> {l2_after:.2f} m")
    assert losses[-1] < 0.5 * losses[0]
    assert l2_after < 0.5 * l2_before
    # score supervision was on: the final-score BCE is logged and non-zero
    rows = list(csv.DictReader(open(next((tmp_path / "csv").glob("version_*/metrics.csv")))))
    assert float(rows[-1]["train/score_supervision_epoch"]) == 1.0
    # the collision head is supervised (BCE of its agent logits is logged, so it is > 0 whenever it runs)
    assert float(rows[-1]["train/pred_ce_loss_epoch"]) > 0.0

    # rerunning with more steps resumes from last.ckpt instead of starting again
    out2 = train(_cfg(tmp_path, steps=123))
    assert out2["trainer"].global_step == 123
    assert out2["trainer"].current_epoch == 123
