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


def test_memoized_backbone_features_give_the_same_losses_and_run_the_backbone_once_per_token(tmp_path):
    from hydra.utils import instantiate

    from navsim_agents.agents.rap_callbacks import BackboneFeatureMemo
    from navsim_agents.run_training import AgentLightningModule

    cfg = _cfg(tmp_path, steps=1, **{"agent.memo_backbone_features": "true"})
    torch.manual_seed(0)
    agent = instantiate(cfg.agent, _convert_="partial")
    b = 2

    def batch():
        features = {"camera_feature": torch.randn(b, 4, 3, 64, 96, generator=torch.Generator().manual_seed(2)),
                    "lidar2img": torch.eye(4).repeat(b, 4, 1, 1),
                    "img_shape": torch.tensor([64.0, 96.0, 3.0]).repeat(b, 4, 1),
                    "ego_status": torch.randn(b, 4, 11, generator=torch.Generator().manual_seed(3))}
        return features, {"token": ["a", "b"], "trajectory": torch.ones(b, 8, 3)}

    calls = []
    agent.planner.backbone.register_forward_hook(lambda *_: calls.append(1))
    module = AgentLightningModule(agent)
    module.log = lambda *a, **k: None  # no trainer attached
    memo = [c for c in agent.get_training_callbacks() if isinstance(c, BackboneFeatureMemo)]
    assert len(memo) == 1  # agent.memo_backbone_features=true asks the agent for it
    agent.train()
    torch.manual_seed(1)
    expected = module._step(batch(), "train")
    assert len(calls) == 1
    for _ in range(3):
        features, targets = batch()
        memo[0].on_train_batch_start(None, module, (features, targets), 0)
        assert "backbone_patch" in features
        torch.manual_seed(1)
        got = module._step((features, targets), "train")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert len(calls) == 2  # once for the memo's first step, never again
    agent.planner.backbone.model.blocks[0].attn.qkv.weight.requires_grad_(True)  # no longer frozen
    with pytest.raises(ValueError, match="frozen backbone"):
        agent.get_training_callbacks()


def test_training_progress_follows_the_epoch_for_the_dann_lambda(tmp_path):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from navsim_agents.agents.rap_callbacks import TrainingProgress

    agent = instantiate(_cfg(tmp_path, steps=1).agent, _convert_="partial")
    progress = [c for c in agent.get_training_callbacks() if isinstance(c, TrainingProgress)]
    assert len(progress) == 1
    for epoch, max_epochs, expected in ((0, 4, 0.25), (2, 4, 0.75), (3, 4, 1.0), (6, 4, 1.0), (0, -1, 1.0)):
        progress[0].on_train_epoch_start(SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs), None)
        assert agent.training_progress == pytest.approx(expected)


@pytest.mark.slow
def test_training_run_with_recovery_perturbation_and_cross_agent_samples(tmp_path):
    """RAP's dataset options in a real run: the seeded draws pick which tokens get a re-rendered perturbed copy
    and which scenes give cross-agent samples; those samples train without score supervision (imitation weight
    1 and 0.1) and the augmented cache is reused on a rerun."""
    import numpy as np

    from navsim_agents.run_training import train

    overrides = {"split.scene_filter.max_scenes": 4, "augmentation.perturb_fraction": 0.5,
                 "augmentation.cross_agent_fraction": 0.5, "augmentation.max_agents_per_scene": 1,
                 "augmentation.seed": 3, "dataloader.batch_size": 4}
    out = train(_cfg(tmp_path, steps=2, **overrides))
    data = out["trainer"].train_dataloader.dataset
    base = [t for t in data.tokens if "/" not in t]
    assert len(base) == 4
    rng = np.random.default_rng(3)  # add_augmented draws (perturb, cross-agent) per token in order
    draws = [(rng.random() < 0.5, rng.random() < 0.5) for _ in base]
    augmented = [t for t in data.tokens if "/" in t]
    perturbed = [t for t in augmented if "_perturbed_" in t]
    cross = [t for t in augmented if "_cross_agent_" in t]
    assert len(perturbed) == sum(p for p, _ in draws)
    assert len(cross) <= sum(c for _, c in draws)  # at most one agent per drawn scene (a scene may have none)
    assert len(augmented) > 0, "seed 3 should draw some augmentation; the test would check nothing"
    for token in augmented:
        _, targets = data[data.tokens.index(token)]
        assert not bool(targets["score_mask"])
        assert float(targets["imitation_weight"]) == pytest.approx(1.0 if "_perturbed_" in token else 0.1)
    losses = _epoch_losses(tmp_path)
    assert len(losses) == 2 and all(np.isfinite(losses))
    marker_count = len(list(tmp_path.rglob("*.done")))
    out2 = train(_cfg(tmp_path, steps=3, **overrides))  # resumes; augmented samples come from the cache
    assert sorted(out2["trainer"].train_dataloader.dataset.tokens) == sorted(data.tokens)
    assert len(list(tmp_path.rglob("*.done"))) == marker_count


def test_several_processes_train_with_unused_parameter_detection():
    from navsim_agents.run_training import _strategy

    # RAP's domain classifier / auxiliary heads are idle in some steps: plain DDP would stop (NAVSIM / RAP use
    # ddp_find_unused_parameters_true)
    assert _strategy("auto", 2, 1) == "ddp_find_unused_parameters_true"
    assert _strategy("auto", 1, 2) == "ddp_find_unused_parameters_true"
    assert _strategy("auto", [0, 1, 2], 1) == "ddp_find_unused_parameters_true"
    assert _strategy("ddp", 2, 1) == "ddp_find_unused_parameters_true"
    assert _strategy("auto", 1, 1) == "auto"
    assert _strategy("fsdp", 2, 1) == "fsdp"


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    """run_training.py with trainer.devices=2 on CPU (gloo): 8 tokens, batch 2 per process -> 2 steps per epoch,
    one checkpoint written, the run ends cleanly."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "navsim_agents" / "run_training.py"
    cmd = [sys.executable, str(script), "planner=tiny", "planner.num_refinements=2", "planner.num_bev_layers=1",
           "+backbone.overrides.depth=1", "agent.image_scale=0.05", "split.scene_filter.max_scenes=8",
           "dataloader.batch_size=2", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.enable_progress_bar=false", "agent.memo_backbone_features=true", f"output_dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_bf16_mixed_training_keeps_fp32_weights(tmp_path):
    """trainer.precision=bf16-mixed (the GPU default) also runs on CPU: finite losses, fp32 master weights."""
    import numpy as np

    from navsim_agents.run_training import train

    out = train(_cfg(tmp_path, steps=2, **{"trainer.precision": "bf16-mixed", "dataloader.batch_size": 4}))
    assert out["trainer"].precision == "bf16-mixed"
    assert all(np.isfinite(_epoch_losses(tmp_path)))
    ckpt = torch.load(out["last_checkpoint"], map_location="cpu", weights_only=False)
    floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
