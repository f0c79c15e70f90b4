"""RAP 3D rasterizer: camera images from map primitives, 3D boxes and an ego pose.

A plain NumPy + OpenCV pinhole rasterizer with the rules of RAP's
``process_data/helpers/renderer.py`` (vita-epfl/RAP, commit 5fd8630):

- cameras from intrinsics + ``sensor2lidar`` extrinsics, where the "lidar" frame is the ego frame
  (rear axle on the ground; nuPlan's camera extrinsics are ego-relative); the virtual camera is
  shifted 0.8 m up and 2 m back; the canvas is rendered 40 rows taller (1920x1120 for nuPlan's
  1920x1080 cameras) and cropped ``[20:-20]`` back to 1080 rows, as RAP's loader does;
- lanes / lane connectors: polygon outlines, 2 px, light blue; road boundaries: 10 px dark red;
  crosswalks and speed bumps: filled polygons (ochre) with an 8 px light-blue outline;
- traffic lights: 0.5 x 0.5 x 1 m cuboids with their base at z = 5 m, coloured by state, drawn
  first and without depth fading (as RAP's ``draw_cuboid_at``);
- agent cuboids: one colour per face (front, back, left, right, top, bottom), all faces of all
  boxes sorted far-to-near and painted in that order;
- every colour is scaled by ``(depth_max - z) / depth_max`` with z the mean camera depth of the
  primitive clipped to [0, depth_max] (depth_max = 120 m); black background.

Departures from RAP's code, all towards geometric correctness: primitives are clipped against the
near plane in 3D (Sutherland-Hodgman) instead of dropping vertices behind the camera; back faces of
boxes are culled; boxes with fewer than 4 visible corners are still drawn; polylines are drawn
far-to-near. The output may also carry a per-pixel depth map (painter's depth of the primitive that
covers a pixel; elsewhere the distance along the optical axis to the ground plane, or +inf above the
horizon) for depth-aware corruptions.

Images are RGB uint8 ``[H, W, 3]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from rap_backbone.nuplan_rig import NUPLAN_IMAGE_SIZE, OPENSCENE_CAMERA_KEYS

# --- constants from vita-epfl/RAP process_data/helpers/renderer.py -------------------------------
RAP_DEPTH_MAX = 120.0  # ScenarioRenderer(depth_max=120.0)
RAP_CROP_ROWS = 20  # canvas 1920x1120, loader crops [20:-20] (navsim/common/dataclasses.py)
RAP_VIRTUAL_CAMERA_OFFSET = (-2.0, 0.0, 0.8)  # cam_t[0] -= 2; cam_t[2] += 0.8 (lidar frame)
RAP_LANE_THICKNESS = 2
RAP_BOUNDARY_THICKNESS = 10
RAP_CROSSWALK_OUTLINE_THICKNESS = 8  # draw_polyline_depth default radius
RAP_TRAFFIC_LIGHT_DIMS = (0.5, 0.5, 1.0)
RAP_TRAFFIC_LIGHT_Z = 5.0
COLOR_LANE_LINE = (98, 183, 249)
COLOR_ROAD_BOUNDARY = (200, 36, 35)
COLOR_CROSSWALK = (206, 131, 63)
# nuPlan TrafficLightStatusType: GREEN=0, YELLOW=1, RED=2, UNKNOWN=3
TRAFFIC_LIGHT_COLORS = {0: (0, 255, 0), 1: (255, 255, 0), 2: (255, 0, 0), 3: (255, 255, 255)}
# draw_cuboids_with_occlusion base_face_colors, in face order front, back, left, right, top, bottom
BOX_FACE_COLORS = np.array(
    [(247, 37, 133), (76, 201, 240), (114, 9, 183), (67, 97, 238), (58, 12, 163), (58, 12, 163)],
    dtype=np.float64,
)

# --- nuPlan camera rig --------------------------------------------------------------------------
# Intrinsics and ego-relative extrinsics of one real nuPlan log, as listed in vita-epfl/RAP
# process_data/helpers/renderer.py (``camera_params``) and nuplan_cameras_utils.py; the same
# focal length / principal point (1545, 960, 560) are in the navsim_dev conformance pickles.
NUPLAN_INTRINSICS = np.array([[1545.0, 0.0, 960.0], [0.0, 1545.0, 560.0], [0.0, 0.0, 1.0]])
NUPLAN_CAMERA_EXTRINSICS = {
    "CAM_F0": (
        [[-0.00785972, -0.02271912, 0.99971099], [-0.99994262, 0.00745516, -0.00769211],
         [-0.00727825, -0.99971409, -0.02277642]],
        [1.65506747, -0.01168732, 1.49112208],
    ),
    "CAM_L0": (
        [[0.81776776, -0.0057693, 0.57551942], [-0.57553938, -0.01377628, 0.81765802],
         [0.0032112, -0.99988846, -0.01458626]],
        [1.63069485, 0.11956747, 1.48117884],
    ),
    "CAM_L1": (
        [[0.93120104, 0.00261563, -0.36449662], [0.36447127, -0.02048653, 0.93098926],
         [-0.00503215, -0.99978671, -0.0200304]],
        [1.29939471, 0.63819702, 1.36736822],
    ),
    "CAM_L2": (
        [[0.63520782, 0.01497516, -0.77219607], [0.77232489, -0.00580669, 0.63520119],
         [0.00502834, -0.99987101, -0.01525415]],
        [-0.49561003, 0.54750373, 1.3472672],
    ),
    "CAM_R0": (
        [[-0.82454901, 0.01165722, 0.56567043], [-0.56528395, 0.02532491, -0.82450755],
         [-0.02393702, -0.9996113, -0.01429199]],
        [1.61828343, -0.15532203, 1.49007665],
    ),
    "CAM_R1": (
        [[-0.92684778, 0.02177016, -0.37480562], [0.37497631, 0.00421964, -0.92702479],
         [-0.01859993, -0.9997541, -0.01207426]],
        [1.27299407, -0.60973112, 1.37217911],
    ),
    "CAM_R2": (
        [[-0.62253245, 0.03706878, -0.78171558], [0.78163434, -0.02000083, -0.62341618],
         [-0.03874424, -0.99911254, -0.01652307]],
        [-0.48771615, -0.493167, 1.35027683],
    ),
    "CAM_B0": (
        [[0.00802542, 0.01047463, -0.99991293], [0.99989075, -0.01249671, 0.00789433],
         [-0.01241293, -0.99986705, -0.01057378]],
        [-0.47463312, 0.02368552, 1.4341838],
    ),
}


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera: ``intrinsics`` 3x3, ``sensor2lidar_rotation`` 3x3 (camera axes x right,
    y down, z forward, expressed in the ego/lidar frame), ``sensor2lidar_translation`` (3,) in
    metres, and the output image size in pixels."""

    name: str
    intrinsics: np.ndarray
    sensor2lidar_rotation: np.ndarray
    sensor2lidar_translation: np.ndarray
    width: int = NUPLAN_IMAGE_SIZE[0]
    height: int = NUPLAN_IMAGE_SIZE[1]
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def scaled(self, width: int, height: int) -> "CameraModel":
        """The same camera for an image of ``width`` x ``height`` pixels (intrinsics scaled)."""
        k = np.array(self.intrinsics, dtype=np.float64).copy()
        k[0] *= width / self.width
        k[1] *= height / self.height
        return CameraModel(self.name, k, self.sensor2lidar_rotation, self.sensor2lidar_translation,
                           width, height, self.distortion)


def default_camera_rig(names: Sequence[str] = OPENSCENE_CAMERA_KEYS,
                       image_size: tuple[int, int] = NUPLAN_IMAGE_SIZE) -> list[CameraModel]:
    """nuPlan-like cameras (see ``NUPLAN_CAMERA_EXTRINSICS``) for ``names``, at ``image_size``
    (width, height; intrinsics scaled from 1920x1080). Distortion is zero: renders are pinhole."""
    rig = []
    for name in names:
        if name not in NUPLAN_CAMERA_EXTRINSICS:
            raise KeyError(f"unknown camera {name!r}; known: {list(NUPLAN_CAMERA_EXTRINSICS)}")
        rot, trans = NUPLAN_CAMERA_EXTRINSICS[name]
        cam = CameraModel(name, NUPLAN_INTRINSICS.copy(), np.array(rot), np.array(trans))
        rig.append(cam if tuple(image_size) == NUPLAN_IMAGE_SIZE else cam.scaled(*image_size))
    return rig


@dataclass
class MapPrimitives:
    """Map geometry to draw: lists of (N, 2) or (N, 3) float arrays (x, y[, z]).

    ``lanes``: lane / lane-connector outlines (open or closed polylines); ``boundaries``: road
    boundary polylines; ``crosswalks`` and ``speed_bumps``: polygons (filled)."""

    lanes: list = field(default_factory=list)
    boundaries: list = field(default_factory=list)
    crosswalks: list = field(default_factory=list)
    speed_bumps: list = field(default_factory=list)


@dataclass(frozen=True)
class RasterConfig:
    """Rendering rules; the defaults are RAP's."""

    depth_max: float = RAP_DEPTH_MAX
    crop_rows: int | None = None  # None: RAP's 20 rows scaled to the image height (20 at 1080)
    virtual_offset: tuple[float, float, float] = RAP_VIRTUAL_CAMERA_OFFSET
    near: float = 0.1  # near plane (m)
    lane_thickness: int = RAP_LANE_THICKNESS
    boundary_thickness: int = RAP_BOUNDARY_THICKNESS
    crosswalk_outline_thickness: int = RAP_CROSSWALK_OUTLINE_THICKNESS
    fade_traffic_lights: bool = False
    thickness_scale: float | None = None  # None: line widths scaled with the image width / 1920


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ego_to_global_boxes(boxes: np.ndarray, ego_pose: Sequence[float]) -> np.ndarray:
    """Boxes [N, 7] (x, y, z, l, w, h, yaw) from the ego frame to the global frame of ``ego_pose``
    (x, y, heading)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7).copy()
    x, y, yaw = ego_pose[:3]
    boxes[:, :3] = boxes[:, :3] @ _rot_z(yaw).T + np.array([x, y, ego_pose[3] if len(ego_pose) > 3 else 0.0])
    boxes[:, 6] += yaw
    return boxes


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners [N, 8, 3] of boxes [N, 7] (x, y, z centre, length, width, height, yaw).
    Order: top face 0-3 (front-left, front-right, back-right, back-left), bottom face 4-7 alike."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64) * 0.5
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64) * 0.5
    sz = np.array([1, 1, 1, 1, -1, -1, -1, -1], dtype=np.float64) * 0.5
    lx = boxes[:, 3:4] * sx
    ly = boxes[:, 4:5] * sy
    lz = boxes[:, 5:6] * sz
    c, s = np.cos(boxes[:, 6:7]), np.sin(boxes[:, 6:7])
    return np.stack([boxes[:, 0:1] + c * lx - s * ly, boxes[:, 1:2] + s * lx + c * ly,
                     boxes[:, 2:3] + lz], axis=-1)


# faces (front, back, left, right, top, bottom) as corner indices, clockwise seen from outside
_BOX_FACES = np.array([[0, 4, 5, 1], [2, 6, 7, 3], [3, 7, 4, 0], [1, 5, 6, 2], [0, 1, 2, 3], [4, 7, 6, 5]])


def world_to_camera(camera: CameraModel, ego_pose: Sequence[float], config: RasterConfig,
                    ego_z: float = 0.0) -> np.ndarray:
    """4x4 transform from global coordinates to the (virtual) camera frame."""
    t_cam = np.asarray(camera.sensor2lidar_translation, dtype=np.float64) + np.asarray(config.virtual_offset)
    cam2ego = np.eye(4)
    cam2ego[:3, :3] = np.asarray(camera.sensor2lidar_rotation, dtype=np.float64)
    cam2ego[:3, 3] = t_cam
    ego2world = np.eye(4)
    ego2world[:3, :3] = _rot_z(float(ego_pose[2]))
    ego2world[:3, 3] = [float(ego_pose[0]), float(ego_pose[1]), ego_z]
    return np.linalg.inv(ego2world @ cam2ego)


def _clip_polygon(poly: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Sutherland-Hodgman step: keep the part of polygon [N, D] with ``p @ normal + offset >= 0``."""
    if len(poly) == 0:
        return poly
    d = poly @ normal + offset
    inside = d >= 0
    if inside.all():
        return poly
    if not inside.any():
        return poly[:0]
    nxt = np.roll(np.arange(len(poly)), -1)
    out = []
    for i in range(len(poly)):
        j = nxt[i]
        if inside[i]:
            out.append(poly[i])
        if inside[i] != inside[j]:
            t = d[i] / (d[i] - d[j])
            out.append(poly[i] + t * (poly[j] - poly[i]))
    return np.asarray(out)


def _clip_segments_near(p0: np.ndarray, p1: np.ndarray, near: float):
    """Clip segments [S, 3] against z >= near; returns clipped endpoints and a keep mask."""
    z0, z1 = p0[:, 2], p1[:, 2]
    keep = (z0 >= near) | (z1 >= near)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (near - z0) / (z1 - z0)
    t = np.where(np.isfinite(t), t, 0.0)
    cut0 = keep & (z0 < near)
    cut1 = keep & (z1 < near)
    q0 = np.where(cut0[:, None], p0 + t[:, None] * (p1 - p0), p0)
    q1 = np.where(cut1[:, None], p0 + t[:, None] * (p1 - p0), p1)
    return q0, q1, keep


def _liang_barsky(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Clip 2D segments a->b [S, 2] to the box [lo, hi]; returns clipped a, b and a keep mask."""
    d = b - a
    t0 = np.zeros(len(a))
    t1 = np.ones(len(a))
    keep = np.ones(len(a), dtype=bool)
    for k in range(2):
        for p, q in ((-d[:, k], a[:, k] - lo[k]), (d[:, k], hi[k] - a[:, k])):
            par = p == 0
            keep &= ~(par & (q < 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                r = np.where(par, 0.0, q / np.where(par, 1.0, p))
            t0 = np.where(~par & (p < 0), np.maximum(t0, r), t0)
            t1 = np.where(~par & (p > 0), np.minimum(t1, r), t1)
    keep &= t0 <= t1
    return a + t0[:, None] * d, a + t1[:, None] * d, keep


def _fade(color: np.ndarray, depth: np.ndarray | float, depth_max: float) -> np.ndarray:
    """RAP's linear fade: colour * (depth_max - clip(depth, 0, depth_max)) / depth_max, truncated."""
    alpha = (depth_max - np.clip(depth, 0.0, depth_max)) / depth_max
    return (np.asarray(alpha, dtype=np.float64)[..., None] * np.asarray(color, dtype=np.float64)).astype(np.uint8)


class _Canvas:
    """An RGB canvas (plus optional depth buffer) with the camera's projection."""

    def __init__(self, camera: CameraModel, w2c: np.ndarray, config: RasterConfig, pad: int,
                 with_depth: bool, ground_z: float = 0.0):
        self.ground_z = ground_z
        self.k = np.asarray(camera.intrinsics, dtype=np.float64)
        self.w2c = w2c
        self.cfg = config
        self.w = camera.width
        self.h = camera.height + 2 * pad
        self.image = np.zeros((self.h, self.w, 3), dtype=np.uint8)
        self.depth = None
        if with_depth:
            self.depth = self._ground_depth()
        # guard band so that OpenCV never sees huge coordinates
        self.lo = np.array([-self.w, -self.h], dtype=np.float64)
        self.hi = np.array([2.0 * self.w, 2.0 * self.h])
        scale = config.thickness_scale if config.thickness_scale is not None else self.w / NUPLAN_IMAGE_SIZE[0]
        self.tscale = scale

    def _ground_depth(self) -> np.ndarray:
        """Camera depth of the ground plane (z = 0 in the ego frame) seen by each pixel, +inf if none."""
        c2w = np.linalg.inv(self.w2c)
        kinv = np.linalg.inv(self.k)
        u = np.arange(self.w, dtype=np.float64) + 0.5
        v = np.arange(self.h, dtype=np.float64) + 0.5
        # world z of the ray direction for unit camera depth is linear in (u, v)
        dz = (c2w[2, :3] @ kinv)  # [3]
        ray_z = dz[0] * u[None, :] + dz[1] * v[:, None] + dz[2]
        cam_height = c2w[2, 3] - self.ground_z
        with np.errstate(divide="ignore"):
            depth = np.where(ray_z < -1e-9, cam_height / -ray_z, np.inf)
        return depth.astype(np.float32)

    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.w2c[:3, :3].T + self.w2c[:3, 3]

    def project(self, pts_cam: np.ndarray) -> np.ndarray:
        z = pts_cam[..., 2:3]
        return (pts_cam[..., :2] / z) * np.array([self.k[0, 0], self.k[1, 1]]) + np.array(
            [self.k[0, 2], self.k[1, 2]]
        )

    def thickness(self, t: int) -> int:
        return max(1, int(round(t * self.tscale)))

    # ---- polylines -------------------------------------------------------------------------------
    def polylines(self, lines: Sequence[np.ndarray], color, thickness: int, closed: bool = False) -> None:
        """Draw polylines with per-segment fading, far segments first."""
        segs = []
        for line in lines:
            p = _as3d(line, self.ground_z)
            if len(p) < 2:
                continue
            if closed:
                p = np.concatenate([p, p[:1]])
            segs.append(np.stack([p[:-1], p[1:]], axis=1))
        if not segs:
            return
        s = np.concatenate(segs)
        p0, p1 = self.to_cam(s[:, 0]), self.to_cam(s[:, 1])
        p0, p1, keep = _clip_segments_near(p0, p1, self.cfg.near)
        p0, p1 = p0[keep], p1[keep]
        if len(p0) == 0:
            return
        depth = 0.5 * (p0[:, 2] + p1[:, 2])
        # segments faded to black draw nothing on the black background once drawing goes far-to-near
        visible = depth < self.cfg.depth_max
        p0, p1, depth = p0[visible], p1[visible], depth[visible]
        a, b, keep = _liang_barsky(self.project(p0), self.project(p1), self.lo, self.hi)
        a, b, depth = a[keep], b[keep], depth[keep]
        if len(a) == 0:
            return
        cols = _fade(color, depth, self.cfg.depth_max)
        pts = np.rint(np.stack([a, b], axis=1)).astype(np.int32)
        th = self.thickness(thickness)
        # the faded colour is a function of depth, so one OpenCV call per colour, far colours first,
        # keeps the far-to-near order up to the fade's quantisation
        packed = (cols[:, 0].astype(np.int64) << 16) | (cols[:, 1].astype(np.int64) << 8) | cols[:, 2]
        _, first, inv = np.unique(packed, return_index=True, return_inverse=True)
        uniq = cols[first]
        inv = inv.reshape(-1)
        far = np.full(len(uniq), -np.inf)
        np.maximum.at(far, inv, depth)
        grouped = np.lexsort((inv, -far[inv]))
        ginv = inv[grouped]
        cuts = np.flatnonzero(ginv[1:] != ginv[:-1]) + 1
        for chunk in np.split(grouped, cuts):
            c = tuple(int(x) for x in uniq[inv[chunk[0]]])
            cv2.polylines(self.image, list(pts[chunk]), False, c, th, cv2.LINE_AA)
        order = np.argsort(-depth, kind="stable")
        pts, depth = pts[order], depth[order]
        if self.depth is not None:
            for seg, d in zip(pts, depth, strict=True):
                cv2.line(self.depth, tuple(int(x) for x in seg[0]), tuple(int(x) for x in seg[1]), float(d), th)

    # ---- polygons --------------------------------------------------------------------------------
    def polygon_cam(self, poly_cam: np.ndarray, color, depth: float, fade: bool = True) -> bool:
        """Fill a polygon given in camera coordinates (clipped to the near plane); True if drawn."""
        poly = _clip_polygon(poly_cam, np.array([0.0, 0.0, 1.0]), -self.cfg.near)
        if len(poly) < 3:
            return False
        uv = self.project(poly)
        for k, sign, bound in ((0, 1.0, self.lo[0]), (0, -1.0, self.hi[0]), (1, 1.0, self.lo[1]),
                               (1, -1.0, self.hi[1])):
            n = np.zeros(2)
            n[k] = sign
            uv = _clip_polygon(uv, n, -sign * bound)
            if len(uv) < 3:
                return False
        col = _fade(color, depth, self.cfg.depth_max) if fade else np.asarray(color, dtype=np.uint8)
        pts = np.rint(uv).astype(np.int32)
        cv2.fillPoly(self.image, [pts], tuple(int(x) for x in col), cv2.LINE_AA)
        if self.depth is not None:
            cv2.fillPoly(self.depth, [pts], float(depth))
        return True

    def polygons(self, polys: Sequence[np.ndarray], color) -> None:
        """Fill world polygons with their mean-depth fade."""
        for poly in polys:
            pc = self.to_cam(_as3d(poly, self.ground_z))
            front = pc[pc[:, 2] > self.cfg.near]
            if len(front) == 0:
                continue
            self.polygon_cam(pc, color, float(np.clip(front[:, 2].mean(), 0.0, self.cfg.depth_max)))

    # ---- cuboids ---------------------------------------------------------------------------------
    def cuboid_faces(self, corners: np.ndarray, face_colors: np.ndarray, fade: bool = True,
                     cull: bool = True) -> None:
        """Corners [N, 8, 3] (``box_corners`` order); face_colors [N, 6, 3]. Faces sorted far-to-near."""
        if len(corners) == 0:
            return
        cc = self.to_cam(corners.reshape(-1, 3)).reshape(-1, 8, 3)
        faces = cc[:, _BOX_FACES]  # [N, 6, 4, 3]
        vis = faces[..., 2].max(axis=-1) > self.cfg.near
        if cull:
            # the corner order gives inward normals; a face is seen from the camera (at the origin)
            # when the ray to it runs along its inward normal
            normal = np.cross(faces[:, :, 1] - faces[:, :, 0], faces[:, :, 2] - faces[:, :, 0])
            vis &= np.einsum("nfk,nfk->nf", normal, faces[:, :, 0]) > 0
        depth = np.clip(faces[..., 2], 0.0, self.cfg.depth_max).mean(axis=-1)
        idx = np.argwhere(vis)
        order = np.argsort(-depth[vis], kind="stable")
        for bi, fi in idx[order]:
            self.polygon_cam(faces[bi, fi], face_colors[bi, fi], float(depth[bi, fi]), fade=fade)


def _as3d(pts, ground_z: float = 0.0) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"expected an (N, 2) or (N, 3) point array, got shape {p.shape}")
    if p.shape[1] == 2:
        p = np.concatenate([p, np.full((len(p), 1), ground_z)], axis=1)
    return p


def _crop_rows(config: RasterConfig, height: int) -> int:
    if config.crop_rows is not None:
        return int(config.crop_rows)
    return int(round(RAP_CROP_ROWS * height / NUPLAN_IMAGE_SIZE[1]))


def traffic_light_corners(lights: np.ndarray) -> np.ndarray:
    """Cuboid corners [M, 8, 3] of traffic lights [M, >=2] (x, y, ...): RAP's 0.5x0.5x1 m boxes with
    their base at z = 5 m."""
    lights = np.asarray(lights, dtype=np.float64)
    lights = lights.reshape(-1, lights.shape[-1] if lights.size else 3)
    length, width, h = RAP_TRAFFIC_LIGHT_DIMS
    boxes = np.zeros((len(lights), 7))
    boxes[:, :2] = lights[:, :2]
    boxes[:, 2] = RAP_TRAFFIC_LIGHT_Z + h / 2
    boxes[:, 3:6] = (length, width, h)
    return box_corners(boxes)


def render_cameras(
    cameras: Sequence[CameraModel],
    *,
    ego_pose: Sequence[float],
    map_primitives: MapPrimitives | None = None,
    boxes: np.ndarray | None = None,
    box_names: Sequence[str] | None = None,
    traffic_lights: np.ndarray | None = None,
    boxes_in_ego_frame: bool = False,
    ego_z: float = 0.0,
    config: RasterConfig | None = None,
    return_depth: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Render every camera of ``cameras``.

    Args:
        cameras: ``CameraModel``s (see ``default_camera_rig``).
        ego_pose: global (x, y, heading) of the ego rear axle; the ground is at z = ``ego_z``
            (the ego frame's origin, where nuPlan's camera extrinsics are anchored).
        map_primitives: global map geometry ((N, 2) points lie on the ground, z = ``ego_z``).
        boxes: [N, 7] (x, y, z centre, length, width, height, yaw), global unless
            ``boxes_in_ego_frame``.
        box_names: optional class names [N]; every class is drawn with the same face colours, as RAP.
        traffic_lights: [M, 3] global (x, y, status) with nuPlan's status codes
            (0 green, 1 yellow, 2 red, 3 unknown).
        config: ``RasterConfig`` (RAP's rules by default).
        return_depth: also return per-pixel depth maps (float32, metres along the optical axis).

    Returns:
        ``{camera name: [H, W, 3] uint8 RGB}`` (and ``{camera name: [H, W] float32}`` if
        ``return_depth``).
    """
    config = config or RasterConfig()
    prims = map_primitives or MapPrimitives()
    if boxes is not None and len(boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
        if not np.isfinite(boxes).all():
            raise ValueError("render_cameras: boxes contain NaN/inf; drop or fix those rows")
        if box_names is not None and len(box_names) != len(boxes):
            raise ValueError(f"render_cameras: {len(box_names)} box names for {len(boxes)} boxes")
        if boxes_in_ego_frame:
            boxes = ego_to_global_boxes(boxes, (*ego_pose[:3], ego_z))
        corners = box_corners(boxes)
        face_cols = np.broadcast_to(BOX_FACE_COLORS, (len(boxes), 6, 3))
    else:
        corners = np.zeros((0, 8, 3))
        face_cols = np.zeros((0, 6, 3))
    if traffic_lights is not None and len(traffic_lights):
        tl = np.asarray(traffic_lights, dtype=np.float64).reshape(-1, 3)
        tl_corners = traffic_light_corners(tl)
        tl_corners[..., 2] += ego_z
        tl_cols = np.array([TRAFFIC_LIGHT_COLORS.get(int(s), TRAFFIC_LIGHT_COLORS[3]) for s in tl[:, 2]],
                           dtype=np.float64)
        tl_cols = np.broadcast_to(tl_cols[:, None, :], (len(tl), 6, 3))
    else:
        tl_corners = np.zeros((0, 8, 3))
        tl_cols = np.zeros((0, 6, 3))

    images, depths = {}, {}
    for cam in cameras:
        # the canvas is 2*pad rows taller with the camera's own principal point; the crop after
        # drawing removes pad rows top and bottom (RAP: 1120 rows, cy 560, crop [20:-20])
        pad = _crop_rows(config, cam.height)
        w2c = world_to_camera(cam, ego_pose, config, ego_z=ego_z)
        canvas = _Canvas(cam, w2c, config, pad, return_depth, ground_z=ego_z)
        canvas.cuboid_faces(tl_corners, tl_cols, fade=config.fade_traffic_lights)
        canvas.polylines(prims.lanes, COLOR_LANE_LINE, config.lane_thickness)
        canvas.polygons(prims.crosswalks + prims.speed_bumps, COLOR_CROSSWALK)
        canvas.polylines(prims.crosswalks + prims.speed_bumps, COLOR_LANE_LINE,
                         config.crosswalk_outline_thickness, closed=True)
        canvas.polylines(prims.boundaries, COLOR_ROAD_BOUNDARY, config.boundary_thickness)
        canvas.cuboid_faces(corners, face_cols)
        rows = slice(pad, canvas.h - pad)
        images[cam.name] = np.ascontiguousarray(canvas.image[rows])
        if return_depth:
            depths[cam.name] = np.ascontiguousarray(canvas.depth[rows])
    return (images, depths) if return_depth else images


def densify(polyline: np.ndarray, step: float = 2.0) -> np.ndarray:
    """Resample a polyline [N, D] so that no segment is longer than ``step`` metres (keeps the vertices);
    long segments would otherwise get a single fade colour from their mean depth."""
    pts = np.asarray(polyline, dtype=np.float64)
    if len(pts) < 2:
        return pts
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    n = np.maximum(1, np.ceil(seg / step).astype(int))
    t = np.concatenate([np.arange(k) / k for k in n])
    idx = np.repeat(np.arange(len(seg)), n)
    out = pts[idx] + t[:, None] * (pts[idx + 1] - pts[idx])
    return np.concatenate([out, pts[-1:]])
