"""RAP rasterizer: pinhole geometry, culling behind the camera, occlusion, depth fade."""

import numpy as np
import pytest

from rap_backbone.raster import (
    BOX_FACE_COLORS,
    NUPLAN_CAMERA_EXTRINSICS,
    CameraModel,
    MapPrimitives,
    RasterConfig,
    default_camera_rig,
    render_cameras,
)

# a forward camera: camera z = ego +x, camera x = ego -y, camera y = ego -z
R_FWD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
F, CX, CY, W, H = 100.0, 100.0, 50.0, 200, 100
CAM_H = 1.5
PLAIN = RasterConfig(virtual_offset=(0.0, 0.0, 0.0), crop_rows=0, thickness_scale=1.0)
BACK_FACE = 1  # BOX_FACE_COLORS order: front, back, left, right, top, bottom


def _camera():
    k = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1.0]])
    return CameraModel("CAM_F0", k, R_FWD, np.array([0.0, 0.0, CAM_H]), W, H)


def _render(boxes=None, prims=None, config=PLAIN, **kw):
    return render_cameras([_camera()], ego_pose=(0.0, 0.0, 0.0), boxes=boxes, map_primitives=prims,
                          config=config, **kw)


def _centroid(img):
    ys, xs = np.nonzero(img.sum(-1))
    return xs.mean() + 0.5, ys.mean() + 0.5


def test_box_lands_at_pinhole_pixel():
    # tiny box at (20, 2, 1.5): u = cx + f * (-y) / x = 100 - 10 = 90, v = cy + f * (cam_h - z) / x = 50
    img = _render(boxes=np.array([[20.0, 2.0, CAM_H, 0.2, 0.2, 0.2, 0.0]]))["CAM_F0"]
    u, v = _centroid(img)
    assert abs(u - 90.0) < 1.0 and abs(v - 50.0) < 1.0
    # lower and nearer: (10, -1, 0.5): u = 100 + 10 = 110, v = 50 + 100 * 1.0 / 10 = 60
    img = _render(boxes=np.array([[10.0, -1.0, 0.5, 0.1, 0.1, 0.1, 0.3]]))["CAM_F0"]
    u, v = _centroid(img)
    assert abs(u - 110.0) < 1.0 and abs(v - 60.0) < 1.0


def test_rap_default_rig_offset_and_crop():
    """nuPlan CAM_F0 with RAP's virtual offset (2 m back, 0.8 m up) and the [20:-20] crop."""
    rot, trans = (np.array(a) for a in NUPLAN_CAMERA_EXTRINSICS["CAM_F0"])
    cam = default_camera_rig(["CAM_F0"])[0]
    p = np.array([25.0, 3.0, 1.2])
    pc = rot.T @ (p - (trans + np.array([-2.0, 0.0, 0.8])))
    u = 1545.0 * pc[0] / pc[2] + 960.0
    v = 1545.0 * pc[1] / pc[2] + 560.0 - 20.0
    img = render_cameras([cam], ego_pose=(0.0, 0.0, 0.0),
                         boxes=np.array([[*p, 0.05, 0.05, 0.05, 0.0]]))["CAM_F0"]
    assert img.shape == (1080, 1920, 3)
    cu, cv = _centroid(img)
    assert abs(cu - u) < 1.5 and abs(cv - v) < 1.5


def test_ego_pose_and_ego_frame_boxes_agree():
    box_global = np.array([[102.0, 58.0, CAM_H, 0.3, 0.3, 0.3, 0.0]])
    pose = (100.0, 50.0, np.pi / 2)  # heading north: offset (2, 8) is ego (8, -2)
    a = render_cameras([_camera()], ego_pose=pose, boxes=box_global, config=PLAIN)["CAM_F0"]
    box_ego = np.array([[8.0, -2.0, CAM_H, 0.3, 0.3, 0.3, -np.pi / 2]])
    b = render_cameras([_camera()], ego_pose=pose, boxes=box_ego, boxes_in_ego_frame=True,
                       config=PLAIN)["CAM_F0"]
    np.testing.assert_array_equal(a, b)
    u, v = _centroid(a)  # u = 100 + 100 * 2 / 8 = 125, v = 50
    assert abs(u - 125.0) < 1.0 and abs(v - 50.0) < 1.0


def test_object_behind_camera_draws_nothing():
    boxes = np.array([[-10.0, 0.0, 1.0, 4.0, 2.0, 1.5, 0.0], [-30.0, 3.0, 1.0, 4.0, 2.0, 1.5, 0.7]])
    crosswalk = np.array([[-8.0, -5.0], [-4.0, -5.0], [-4.0, 5.0], [-8.0, 5.0]])
    lights = np.array([[-20.0, 0.0, 2]])
    img = _render(boxes=boxes, prims=MapPrimitives(crosswalks=[crosswalk]), traffic_lights=lights)["CAM_F0"]
    assert img.max() == 0


def test_line_crossing_the_near_plane_is_clipped_not_dropped():
    line = np.array([[-50.0, 0.0], [50.0, 0.0]])  # on the ground, from behind to ahead
    img = _render(prims=MapPrimitives(lanes=[line]))["CAM_F0"]
    ys, xs = np.nonzero(img.sum(-1))
    assert len(ys) > 0
    assert ys.min() >= CY - 1  # the ground line only appears below the horizon
    assert abs(xs.mean() + 0.5 - CX) < 1.5


def test_nearer_faces_occlude_farther_ones():
    near = [10.0, 0.0, CAM_H, 1.0, 1.0, 1.0, 0.0]
    far = [20.0, 0.0, CAM_H, 2.0, 4.0, 4.0, 0.0]
    for boxes in (np.array([near, far]), np.array([far, near])):
        img = _render(boxes=boxes)["CAM_F0"]
        # the centre pixel sees the back face of the near box at depth 9.5 m
        expected = (BOX_FACE_COLORS[BACK_FACE] * (120.0 - 9.5) / 120.0).astype(np.uint8)
        np.testing.assert_array_equal(img[int(CY), int(CX)], expected)
        # a pixel beside the near box but inside the far one sees the far back face at 19 m
        # (far box back face spans |y| <= 2 at 19 m -> u in 100 +- 10.5; near box spans u in 100 +- 5.3)
        expected_far = (BOX_FACE_COLORS[BACK_FACE] * (120.0 - 19.0) / 120.0).astype(np.uint8)
        np.testing.assert_array_equal(img[int(CY), int(CX) + 8], expected_far)


def test_depth_fade_is_linear_and_monotone():
    values = []
    for d in (5.0, 20.0, 40.0, 60.0, 90.0, 119.0, 130.0):
        # a wide box so that the back face is several pixels even far away
        box = np.array([[d + 0.5, 0.0, CAM_H, 1.0, 20.0, 20.0, 0.0]])
        img = _render(boxes=box)["CAM_F0"]
        values.append(img[int(CY), int(CX)].astype(int))
    values = np.array(values)
    bright = values.sum(1)
    assert np.all(np.diff(bright) < 0) or bright[-1] == 0
    assert np.all(np.diff(bright[:-1]) < 0)
    assert bright[-1] == 0  # beyond depth_max the colour has faded to black
    expected_20 = (BOX_FACE_COLORS[BACK_FACE] * (120.0 - 20.0) / 120.0).astype(int)
    np.testing.assert_array_equal(values[1], expected_20)


def test_depth_output_matches_geometry():
    box = np.array([[30.5, 0.0, CAM_H, 1.0, 4.0, 1.0, 0.0]])
    images, depths = _render(boxes=box, return_depth=True)
    depth = depths["CAM_F0"]
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert depth[int(CY), int(CX)] == pytest.approx(30.0)
    # a ground pixel at row v (centre of pixel) sees the ground at camera depth f * cam_h / (v - cy)
    v = 90
    assert depth[v, 20] == pytest.approx(F * CAM_H / (v + 0.5 - CY), rel=1e-4)
    assert np.isinf(depth[10, 20])  # above the horizon


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match="NaN"):
        _render(boxes=np.array([[np.nan, 0, 0, 1, 1, 1, 0]]))
    with pytest.raises(KeyError, match="known"):
        default_camera_rig(["CAM_X9"])


def test_default_rig_is_nuplan_like():
    rig = default_camera_rig(image_size=(960, 540))
    assert [c.name for c in rig] == ["CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2",
                                     "CAM_B0"]
    assert rig[0].intrinsics[0, 0] == pytest.approx(772.5) and rig[0].intrinsics[1, 2] == pytest.approx(280.0)
    for cam in rig:  # proper rotations; optical axis roughly horizontal
        r = cam.sensor2lidar_rotation
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-4)
        assert abs(r[2, 2]) < 0.05


def test_densify_keeps_vertices_and_bounds_segment_length():
    from rap_backbone.raster import densify

    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 3.0]])
    dense = densify(line, step=2.0)
    # 10 m -> 5 pieces, 3 m -> 2 pieces: 7 segments, 8 points
    assert dense.shape == (8, 2)
    assert np.linalg.norm(np.diff(dense, axis=0), axis=1).max() <= 2.0 + 1e-12
    for vertex in line:
        assert np.isclose(np.linalg.norm(dense - vertex, axis=1).min(), 0.0)
