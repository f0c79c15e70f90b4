"""Recovery perturbation and cross-agent view synthesis on a hand-made NAVSIM Scene (rendering stubbed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close_to_scale

from navsim_agents.agents.rap_augment import cross_agent_samples, perturbed_sample
from navsim_agents.data.dataclasses import (
    Annotations,
    Camera,
    Cameras,
    EgoStatus,
    Frame,
    Lidar,
    Scene,
    SceneMetadata,
)
from rap_backbone.alignment import perturbed_global_pose, sample_ego_perturbation, se2_relative

DT = 0.5
K = np.array([[100.0, 0, 64], [0, 100.0, 32], [0, 0, 1]])
R_FRONT = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])


def _cameras():
    cam = lambda: Camera(image=np.zeros((64, 128, 3), np.uint8), sensor2lidar_rotation=R_FRONT,  # noqa: E731
                         sensor2lidar_translation=np.array([1.0, 0, 1.5]), intrinsics=K)
    return Cameras(cam_f0=cam(), cam_l0=cam(), cam_l1=Camera(), cam_l2=Camera(), cam_r0=cam(), cam_r1=Camera(),
                   cam_r2=Camera(), cam_b0=cam())


def make_scene():
    """Ego drives along +x at 5 m/s; track 'curve' accelerates sideways (not constant velocity), 'cv' does not."""
    frames = []
    for f in range(14):
        t = f * DT
        ego = np.array([5.0 * t, 0.0, 0.0])
        curve = np.array([10.0 + 8.0 * t, 3.0 + 0.5 * t * t, math.atan2(1.0 * t, 8.0)])
        cv = np.array([-10.0 + 5.0 * t, -4.0, 0.0])
        glob = np.stack([curve, cv])
        local = se2_relative(glob, ego)
        boxes = np.zeros((2, 7))
        boxes[:, [0, 1, 6]] = local
        boxes[:, 3:6] = [4.5, 2.0, 1.6]
        ann = Annotations(boxes=boxes, names=["vehicle", "vehicle"], velocity_3d=np.zeros((2, 3)),
                          instance_tokens=["i1", "i2"], track_tokens=["curve", "cv"])
        status = EgoStatus(ego_pose=ego, ego_velocity=np.array([5.0, 0.0], np.float32),
                           ego_acceleration=np.array([0.5, 0.0], np.float32),
                           driving_command=np.array([0, 1, 0, 0]), in_global_frame=True)
        frames.append(Frame(token=f"f{f}", timestamp=int(t * 1e6), roadblock_ids=[], traffic_lights=[],
                            annotations=ann, ego_status=status, lidar=Lidar(), cameras=_cameras()))
    meta = SceneMetadata(log_name="log", scene_token="s", map_name="m", initial_token="f3",
                         num_history_frames=4, num_future_frames=10)
    return Scene(scene_metadata=meta, map_api=None, frames=frames)


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, ego_global, boxes_global):
        self.calls.append((np.array(ego_global), np.array(boxes_global)))
        return {n: np.full((64, 128, 3), 7, np.uint8) for n in ("cam_b0", "cam_f0", "cam_l0", "cam_r0")}


def test_perturbed_sample_reexpresses_everything_in_the_perturbed_frame():
    scene = make_scene()
    rec = Recorder()
    agent_input, targets = perturbed_sample(scene, np.random.default_rng(3), render_fn=rec)
    p = sample_ego_perturbation(np.random.default_rng(3))  # the same draw
    ego_now = np.array([7.5, 0.0, 0.0])  # frame 3: t = 1.5 s
    np.testing.assert_allclose(rec.calls[0][0], perturbed_global_pose(ego_now, p), atol=1e-12)
    future = np.array([[5.0 * (k + 1) * DT, 0.0, 0.0] for k in range(8)])
    assert_close_to_scale(targets["trajectory"].numpy(), se2_relative(future, p.pose), 1e-6, what="fp32 targets")
    cur = agent_input.ego_statuses[-1]
    np.testing.assert_allclose(cur.ego_pose, 0.0)
    np.testing.assert_allclose(cur.ego_velocity, [5.0 * p.velocity_scale[0], 0.0], rtol=1e-6)
    # a history pose 1.5 s back (x = -7.5 in the old frame) seen from the perturbed ego
    np.testing.assert_allclose(agent_input.ego_statuses[0].ego_pose, se2_relative(np.array([-7.5, 0, 0]), p.pose),
                               atol=1e-6)
    cams = agent_input.cameras[-1]
    assert (cams.cam_f0.image == 7).all() and cams.cam_f0.intrinsics is K
    assert not bool(targets["score_mask"]) and float(targets["imitation_weight"]) == 1.0


def test_cross_agent_samples_pick_the_non_cv_vehicle():
    scene = make_scene()
    rec = Recorder()
    samples = cross_agent_samples(scene, render_fn=rec)
    assert len(samples) == 1  # 'cv' moves at constant velocity: CV error 0 < 0.5 m -> not used
    agent_input, targets = samples[0]
    t = np.arange(14) * DT
    curve = np.stack([10.0 + 8.0 * t, 3.0 + 0.5 * t * t, np.arctan2(t, 8.0)], -1)
    np.testing.assert_allclose(targets["trajectory"].numpy(), se2_relative(curve[4:12], curve[3]), atol=1e-4)
    assert targets["token"] == "f3_curve"
    assert not bool(targets["score_mask"]) and float(targets["imitation_weight"]) == pytest.approx(0.1)
    cur = agent_input.ego_statuses[-1]
    np.testing.assert_array_equal(cur.driving_command, [0, 0, 0, 1])
    np.testing.assert_allclose(cur.ego_pose, 0.0)
    # velocity: displacement over the last 0.5 s in the pseudo-ego's frame
    v = se2_relative(curve[3], curve[3])[:2] - se2_relative(curve[2], curve[3])[:2]
    np.testing.assert_allclose(cur.ego_velocity, v / DT, rtol=1e-5)
    ego_global, boxes = rec.calls[0]
    np.testing.assert_allclose(ego_global, curve[3], atol=1e-9)
    # drawn: the other vehicle and the real ego (its box centre 1.461 m ahead of the rear axle), not itself
    assert len(boxes) == 2
    np.testing.assert_allclose(boxes[-1, [0, 1, 6]], [7.5 + 1.461, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(boxes[0, [0, 1]], [-10.0 + 5.0 * 1.5, -4.0], atol=1e-9)


def test_traffic_lights_sit_8m_into_their_connector():
    from types import SimpleNamespace

    from shapely.geometry import LineString

    from navsim_agents.data.scene_raster import traffic_light_positions

    lines = {"c1": LineString([(0, 0), (20, 0)]), "c2": LineString([(5, 5), (5, 8)])}  # c2 shorter than 8 m

    class Map:
        def get_map_object(self, object_id, layer):
            line = lines.get(object_id)
            return None if line is None else SimpleNamespace(baseline_path=SimpleNamespace(linestring=line))

    out = traffic_light_positions(Map(), [("c1", True), ("c2", False), ("unknown", True)])
    np.testing.assert_allclose(out, [[8.0, 0.0, 2.0], [5.0, 8.0, 0.0]])
