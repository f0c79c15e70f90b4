"""RAPAgent: forward/loss plumbing, optimiser schedule, checkpoints, trajectories (tiny backbone + planner)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from navsim_agents.agents.rap_agent import ProposalScores, RAPAgent, warmup_cosine_factor
from navsim_agents.agents.rap_features import InvalidEgoStatusError

TINY_BACKBONE = {"name": "eupe-t", "weights": None, "freeze": True, "overrides": {"depth": 1}}
TINY_PLANNER = {"d_model": 32, "d_ffn": 64, "num_heads": 4, "num_bev_layers": 1, "num_proposals": 8,
                "num_refinements": 2, "grid_mask_prob": 0.0}
K = np.array([[100.0, 0, 64], [0, 100.0, 32], [0, 0, 1]])
R_FRONT = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def make_agent(**kw) -> RAPAgent:
    torch.manual_seed(0)
    return RAPAgent(backbone=TINY_BACKBONE, planner=dict(TINY_PLANNER), image_scale=0.5, **kw)


@pytest.fixture(scope="module")
def agent() -> RAPAgent:
    return make_agent()


def agent_input(seed=0):
    rng = np.random.default_rng(seed)

    def cam():
        return SimpleNamespace(image=rng.integers(0, 255, (64, 128, 3), dtype=np.uint8), intrinsics=K,
                               sensor2lidar_rotation=R_FRONT, sensor2lidar_translation=np.array([1.0, 0, 1.5]))

    ego = SimpleNamespace(ego_pose=np.zeros(3), ego_velocity=np.array([5.0, 0.0]), ego_acceleration=np.zeros(2),
                          driving_command=np.array([0, 1, 0, 0]))
    cams = SimpleNamespace(cam_b0=cam(), cam_f0=cam(), cam_l0=cam(), cam_r0=cam())
    return SimpleNamespace(cameras=[cams], ego_statuses=[ego], token="tok")


def batch(agent, n=2):
    feats = [agent.get_feature_builders()[0].compute_features(agent_input(i)) for i in range(n)]
    features = {k: torch.stack([f[k] for f in feats]) for k in feats[0]}
    targets = {"trajectory": torch.stack([torch.tensor([[2.0 * (t + 1), 0.0, 0.0] for t in range(8)])] * n),
               "score_mask": torch.ones(n, dtype=torch.bool), "imitation_weight": torch.ones(n),
               "token": [f"t{i}" for i in range(n)]}
    return features, targets


def test_forward_loss_and_gradients_reach_planner_not_frozen_backbone(agent):
    features, targets = batch(agent)
    assert features["camera_feature"].shape == (2, 4, 3, 32, 64)
    agent.train()
    pred = agent.forward(features)
    losses = agent.compute_loss(features, targets, pred)
    assert float(losses["score_supervision"]) == 0.0  # no proposal scorer: score terms off, and said so
    assert torch.isclose(losses["loss"], losses["trajectory_loss"])
    agent.zero_grad()
    losses["loss"].backward()
    assert agent.planner.neck.lateral.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.planner.backbone.parameters())


def test_score_terms_from_proposal_scorer(agent):
    features, targets = batch(agent)
    seen = {}

    def scorer(tokens, proposals):
        seen["tokens"], seen["shape"] = list(tokens), proposals.shape
        subs = np.zeros(proposals.shape[:2] + (6,))
        subs[..., -1] = 0.5
        return ProposalScores(sub_scores=subs)

    agent.proposal_scorer = scorer
    try:
        agent.train()
        pred = agent.forward(features)
        losses = agent.compute_loss(features, targets, pred)
    finally:
        agent.proposal_scorer = None
    assert seen["tokens"] == ["t0", "t1"] and seen["shape"] == (2, 8, 8, 3)
    x = pred["pred_logit"][..., -1].detach().double()
    expected = (-(0.5 * torch.log(torch.sigmoid(x)) + 0.5 * torch.log(1 - torch.sigmoid(x)))).mean()
    assert float(losses["final_score_loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(losses["loss"].detach()) == pytest.approx(float((losses["trajectory_loss"] + losses["final_score_loss"]).detach()), rel=1e-5)


def test_warmup_cosine_schedule(agent):
    f = lambda e: 1e-4 * warmup_cosine_factor(e, warmup_epochs=1, epochs=20, lr=1e-4, min_lr=1e-5)  # noqa: E731
    assert f(0) == pytest.approx(1e-4)  # (0 + 1) / 1 warmup epoch
    assert f(1) == pytest.approx(1e-4)
    assert f(20) == pytest.approx(1e-5)
    assert f(10) == pytest.approx(1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * 9 / 19)))
    opt = agent.get_optimizers()
    assert isinstance(opt["optimizer"], torch.optim.AdamW)
    assert opt["optimizer"].param_groups[0]["weight_decay"] == 1e-4


def test_compute_trajectory_and_nan_ego(agent):
    from navsim_agents.data.dataclasses import Trajectory

    traj = agent.compute_trajectory(agent_input())
    assert isinstance(traj, Trajectory) and traj.poses.shape == (8, 3)
    bad = agent_input()
    bad.ego_statuses[-1].ego_acceleration = np.array([np.nan, 0.0])
    with pytest.raises(InvalidEgoStatusError, match="tok"):
        agent.compute_trajectory(bad)


def test_checkpoint_round_trip_and_missing_key(agent, tmp_path):
    state = {"state_dict": {f"agent.{k}": v for k, v in agent.state_dict().items()}}
    path = tmp_path / "a.ckpt"
    torch.save(state, path)
    other = make_agent()
    with torch.no_grad():
        for p in other.planner.queries.parameters():
            p.add_(1.0)
    other.load_checkpoint(path)
    features, _ = batch(agent, 1)
    agent.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other.forward(features)["trajectory"], agent.forward(features)["trajectory"])
    assert str(path) in other.weights_source
    del state["state_dict"]["agent.planner.ego_encoder.weight"]
    torch.save(state, path)
    with pytest.raises(KeyError, match="ego_encoder.weight"):
        make_agent(checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        make_agent(checkpoint=str(tmp_path / "nope.ckpt"))


def test_rap_released_checkpoint_through_agent(conformance):
    """agent.checkpoint= with RAP's Lightning layout: the agent reproduces RAP's own trajectory."""
    root = conformance / "rap_dev"
    a = make_agent(checkpoint=str(root / "rap_dev.ckpt"),
                   checkpoint_backbone_config=str(root / "backbone_config.json"))
    inputs = torch.load(root / "inputs.pt", weights_only=True)
    ref = torch.load(root / "reference_outputs.pt", weights_only=True)["outputs"]
    a.eval()
    with torch.no_grad():
        out = a.forward(inputs)
    torch.testing.assert_close(out["trajectory"], ref["trajectory"], atol=1e-3, rtol=1e-3)
    assert "rap_dev.ckpt" in a.weights_source


def test_raster_to_real_training_step(agent):
    features, targets = batch(agent, 3)
    features["rendered_camera_feature"] = features["camera_feature"] + 0.5
    features["camera_valid"] = torch.tensor([True, False, True])
    agent.train()
    agent.training_progress = 0.5
    predictions = agent.forward(features)
    assert predictions["trajectory"].shape[0] == 5  # raster views of all 3, real views of the 2 valid ones
    losses = agent.compute_loss(features, targets, predictions)
    # 3 raster + 2 real samples; the loss adds 0.002 * spatial + 0.001 * domain to the task loss
    assert float(losses["alignment_spatial"].detach()) > 0
    assert float(losses["alignment_lambda"]) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    task = losses["trajectory_loss"]
    assert float(losses["loss"].detach()) == pytest.approx(
        float((task + 0.002 * losses["alignment_spatial"] + 0.001 * losses["alignment_domain"]).detach()), rel=1e-5)
    losses["loss"].backward()
    assert agent.planner.domain_classifier.classifier[0].weight.grad is not None


def test_checkpoint_of_another_planner_size_or_not_a_checkpoint_is_named(tmp_path):
    from omegaconf import OmegaConf

    from eupe.config_tree import config_file

    tiny = OmegaConf.to_container(OmegaConf.load(config_file("planner", "tiny")))
    small = OmegaConf.to_container(OmegaConf.load(config_file("planner", "small")))
    writer = RAPAgent(backbone=TINY_BACKBONE, planner="tiny")
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"agent.{k}": v for k, v in writer.state_dict().items()}}, path)
    with pytest.raises(KeyError, match=rf"tiny.ckpt holds a planner of d_model {tiny['d_model']}, d_ffn "
                                       rf"{tiny['d_ffn']}.*\(planner=tiny\); this run builds d_model "
                                       rf"{small['d_model']}.*\(planner=small\)"):
        RAPAgent(backbone=TINY_BACKBONE, planner="small", checkpoint=str(path))
    assert f"planner: {path};" in RAPAgent(backbone=TINY_BACKBONE, planner="tiny", checkpoint=str(path)).weights_source
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"agent.checkpoint=.*notes.ckpt is not a checkpoint"):
        RAPAgent(backbone=TINY_BACKBONE, planner="tiny", checkpoint=str(text))
