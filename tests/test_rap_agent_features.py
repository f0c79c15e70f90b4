"""RAP feature builder and losses against hand-derived values."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from navsim_agents.agents.rap_features import (
    InvalidEgoStatusError,
    MissingCameraError,
    RAPFeatureBuilder,
    lidar2img_matrix,
)
from navsim_agents.agents.rap_loss import (
    RAPLossWeights,
    area_loss,
    collision_losses,
    imitation_weights,
    min_proposal_l1,
    score_losses,
    trajectory_loss,
)

K = np.array([[1000.0, 0, 960], [0, 1000.0, 540], [0, 0, 1]])
# camera axes (x right, y down, z forward) expressed in the lidar frame (x forward, y left, z up)
R_FRONT = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
T_FRONT = np.array([1.5, 0.0, 1.6])
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def _camera(color, shape=(1080, 1920), rot=R_FRONT, trans=T_FRONT):
    img = np.empty(shape + (3,), dtype=np.uint8)
    img[:] = color
    return SimpleNamespace(image=img, intrinsics=K, sensor2lidar_rotation=rot, sensor2lidar_translation=trans)


def _ego(pose=(0.0, 0.0, 0.0)):
    return SimpleNamespace(ego_pose=np.array(pose), ego_velocity=np.array([5.0, 0.1]),
                           ego_acceleration=np.array([0.2, 0.0]), driving_command=np.array([0, 1, 0, 0]))


COLORS = {"cam_b0": (10, 20, 30), "cam_f0": (200, 100, 50), "cam_l0": (0, 255, 0), "cam_r0": (90, 90, 90)}


def _agent_input(shape=(1080, 1920), **overrides):
    cams = {name: _camera(c, shape) for name, c in COLORS.items()}
    cams.update(overrides)
    return SimpleNamespace(cameras=[SimpleNamespace(**cams)], ego_statuses=[_ego((-1, 0, 0)), _ego()],
                           token="tok123")


def test_lidar2img_projects_known_point_after_resize():
    m = lidar2img_matrix(K, R_FRONT, T_FRONT, 0.4)
    # point 10 m ahead of the camera, 2 m to its right, 1 m below: camera coords (2, 1, 10)
    q = m @ np.array([11.5, -2.0, 0.6, 1.0])
    u, v = q[0] / q[2], q[1] / q[2]
    # hand: (1000*2/10 + 960, 1000*1/10 + 540) = (1160, 640), times 0.4
    assert u == pytest.approx(464.0) and v == pytest.approx(256.0)
    assert q[2] == pytest.approx(10.0)


def test_feature_shapes_order_and_padding():
    feats = RAPFeatureBuilder().compute_features(_agent_input())
    cam = feats["camera_feature"]
    # 1080x1920 * 0.4 -> 432x768, padded to 448x768
    assert cam.shape == (4, 3, 448, 768)
    assert feats["img_shape"].tolist() == [[448.0, 768.0, 3.0]] * 4
    for i, name in enumerate(["cam_b0", "cam_f0", "cam_l0", "cam_r0"]):
        expected = (np.array(COLORS[name]) - MEAN) / STD
        np.testing.assert_allclose(cam[i, :, :432].mean(dim=(1, 2)).numpy(), expected, atol=1e-4)
        assert torch.count_nonzero(cam[i, :, 432:]) == 0  # zero padding at the bottom
    assert feats["lidar2img"].shape == (4, 4, 4)
    np.testing.assert_allclose(feats["lidar2img"][1].numpy(), lidar2img_matrix(K, R_FRONT, T_FRONT, 0.4), rtol=1e-6)
    ego = feats["ego_status"]
    assert ego.shape == (2, 11)
    np.testing.assert_allclose(ego[-1].numpy(), [0, 0, 0, 5.0, 0.1, 0.2, 0, 0, 1, 0, 0], atol=1e-6)


def test_normalise_then_resize_is_bilinear_of_normalised():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[:, 10:] = 255  # a vertical edge
    cam = SimpleNamespace(image=img, intrinsics=K, sensor2lidar_rotation=R_FRONT, sensor2lidar_translation=T_FRONT)
    inp = SimpleNamespace(cameras=[SimpleNamespace(cam_b0=cam, cam_f0=cam, cam_l0=cam, cam_r0=cam)],
                          ego_statuses=[_ego()], token="t")
    out = RAPFeatureBuilder(image_scale=0.5).compute_features(inp)["camera_feature"][0, 0]
    assert out.shape == (32, 32)  # 5x10 padded to 32x32
    lo, hi = (0 - MEAN[0]) / STD[0], (255 - MEAN[0]) / STD[0]
    np.testing.assert_allclose(out[:5, 0].numpy(), lo, atol=1e-5)
    np.testing.assert_allclose(out[:5, 9].numpy(), hi, atol=1e-5)
    # the columns beside the edge mix both sides: strictly between the normalised extremes
    assert lo < float(out[0, 4]) < hi or lo < float(out[0, 5]) < hi


def test_missing_camera_error_and_zeros():
    inp = _agent_input(shape=(100, 200), cam_b0=SimpleNamespace(image=None, intrinsics=K, sensor2lidar_rotation=R_FRONT,
                                                                 sensor2lidar_translation=T_FRONT))
    with pytest.raises(MissingCameraError, match=r"tok123.*cam_b0"):
        RAPFeatureBuilder().compute_features(inp)
    feats = RAPFeatureBuilder(missing_camera="zeros").compute_features(inp)
    assert torch.count_nonzero(feats["camera_feature"][0]) == 0
    assert torch.count_nonzero(feats["camera_feature"][1]) > 0


def test_nan_ego_status_names_token():
    inp = _agent_input(shape=(100, 200))
    inp.ego_statuses[-1].ego_velocity = np.array([np.nan, 0.0])
    with pytest.raises(InvalidEgoStatusError, match="tok123"):
        RAPFeatureBuilder().compute_features(inp)


# ------------------------------------------------------------------------------------------- losses
def test_min_proposal_l1_and_trajectory_accumulation():
    target = torch.zeros(2, 2, 3)
    p_a = torch.zeros(2, 3, 2, 3)
    p_a[:, 0] = 1.0  # |1|+|1|+|1| = 3 per pose
    p_a[:, 1] = 0.5  # 1.5 per pose -> the winner
    p_a[:, 2] = 2.0
    p_b = p_a * 2  # winner 3.0
    assert min_proposal_l1(p_a, target).tolist() == [1.5, 1.5]
    mask = torch.tensor([True, False])  # second sample is cross-agent: weight 0.1
    assert imitation_weights(mask).tolist() == pytest.approx([1.0, 0.1])
    total, last = trajectory_loss([p_a, p_b], target, imitation_weights(mask))
    stage_a = (1.5 * 1 + 1.5 * 0.1) / 2
    stage_b = (3.0 * 1 + 3.0 * 0.1) / 2
    assert float(last) == pytest.approx(stage_b)
    assert float(total) == pytest.approx(0.1 * stage_a + stage_b)


def test_score_losses_equal_bce_formula():
    logit = torch.tensor([[[0.0, 1.0, -1.0, 2.0, 0.5, 3.0]]])
    tgt = torch.tensor([[[1.0, 0.0, 0.5, 1.0, 1.0, 0.25]]])

    def bce(x, y):
        return -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-x))))

    sub, final = score_losses(logit, tgt)
    assert float(sub) == pytest.approx(np.mean([bce(x, y) for x, y in zip(logit.flatten().tolist(), tgt.flatten().tolist(), strict=True)]), rel=1e-5)
    assert float(final) == pytest.approx(bce(3.0, 0.25), rel=1e-5)


def test_collision_and_area_losses():
    gt_corners = torch.zeros(1, 1, 2, 2, 4, 2)
    gt_valid = torch.tensor([[[[True, False], [False, False]]]])
    pred = torch.zeros(1, 1, 2, 2, 9)
    pred[..., :-1] = 1.0  # every corner coordinate off by 1
    ce, l1 = collision_losses(pred, gt_corners, gt_valid)
    assert float(l1) == pytest.approx(1.0)
    assert float(ce) == pytest.approx(np.log(2.0), rel=1e-6)  # logits 0 -> BCE log 2 for any label
    gt_area = torch.ones(1, 1, 3, 2, dtype=torch.bool)
    logits = torch.zeros(1, 1, 5, 2)
    logits[:, :, 3:] = 100.0  # beyond K=3: must be cut off
    assert float(area_loss(logits, gt_area)) == pytest.approx(np.log(2.0), rel=1e-6)
    assert RAPLossWeights().area == 2.0 and RAPLossWeights().collision_l1 == 0.1
