"""RAP's rasterizer (``rap_backbone.raster``) on NAVSIM scenes and nuPlan-style maps.

What here knows NAVSIM: the map layers of ``navsim_agents.data.maps``, the ``Scene`` / ``Frame`` / ``Cameras``
dataclasses and OpenScene's traffic-light records. The rasterizer itself, the RAP augmentations
(``rap_backbone.alignment``) and the corruptions (``rap_backbone.corruptions``) take plain arrays and callables.

- :func:`primitives_from_map_api`: map primitives around a point (RAP's ``extract_map_features``);
- :func:`render_frame`: a frame's cameras re-rendered from another ego pose (RAP's recovery / cross-agent data);
- :func:`raster_hooks` / :func:`corrupt_agent_input`: true depth (fog) and true re-render (calibration drift)
  for the corruptions of synthetic scenes, whose images are raster renders.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import Point

from navsim_agents.data.maps import SemanticMapLayer
from rap_backbone import raster
from rap_backbone.corruptions import (
    RASTER_CORRUPTIONS,
    CorruptionConfig,
    DepthFn,
    RerenderFn,
    apply_to_agent_input,
)

# RAP set_light_position: a traffic light sits about 8 m into its lane connector
TRAFFIC_LIGHT_ALONG_M = 8.0

RenderFn = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]
"""``render_fn(ego_global [3], boxes_global [N,7]) -> {camera: HxWx3 uint8}`` (tests replace the rasterizer)."""


def primitives_from_map_api(map_api: Any, center_xy: Sequence[float], radius: float = 200.0
                            ) -> raster.MapPrimitives:
    """Map primitives around ``center_xy`` (global) from a nuPlan-style map API, as RAP's
    ``extract_map_features``: lane and lane-connector polygon outlines, crosswalk polygons, and the
    boundary of the union of roadblock and intersection polygons as road boundaries.

    ``map_api`` needs ``get_proximal_map_objects(point, radius, layers)`` returning objects with a
    shapely ``polygon`` attribute (``navsim_agents.data.maps``).
    """
    layer = SemanticMapLayer
    wanted = [layer.LANE, layer.LANE_CONNECTOR, layer.CROSSWALK, layer.INTERSECTION, layer.ROADBLOCK]
    objs = map_api.get_proximal_map_objects(Point(*center_xy[:2]), radius, wanted)

    def outline(poly):
        geoms = getattr(poly, "geoms", [poly])
        big = max(geoms, key=lambda g: g.area)
        return np.asarray(big.exterior.coords)[:, :2]

    prims = raster.MapPrimitives()
    for lay in (layer.LANE, layer.LANE_CONNECTOR):
        prims.lanes.extend(outline(o.polygon) for o in objs.get(lay, []))
    prims.crosswalks.extend(outline(o.polygon)[:-1] for o in objs.get(layer.CROSSWALK, []))
    areas = [o.polygon for o in objs.get(layer.ROADBLOCK, [])] + [o.polygon for o in objs.get(layer.INTERSECTION, [])]
    if areas:
        union = shapely.union_all(areas)
        bnd = union.boundary
        for g in getattr(bnd, "geoms", [bnd]):
            prims.boundaries.append(raster.densify(np.asarray(g.coords)[:, :2]))
    return prims


def traffic_light_positions(map_api: Any, traffic_lights: Any) -> np.ndarray:
    """``[M, 3]`` global (x, y, nuPlan status: 0 green, 2 red) of a frame's ``(lane_connector_id, is_red)``
    lights, each placed ``TRAFFIC_LIGHT_ALONG_M`` along its lane connector's baseline path (RAP's rule)."""
    rows = []
    for connector_id, is_red in traffic_lights or []:
        obj = map_api.get_map_object(str(connector_id), SemanticMapLayer.LANE_CONNECTOR)
        if obj is None:
            continue
        line = obj.baseline_path.linestring
        pt = line.interpolate(min(TRAFFIC_LIGHT_ALONG_M, line.length))
        rows.append((pt.x, pt.y, 2.0 if is_red else 0.0))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def camera_models(cameras: Any, names: tuple[str, ...]) -> list[raster.CameraModel]:
    """CameraModels with the calibration and image size of a frame's real cameras."""
    models = []
    for name in names:
        cam = getattr(cameras, name)
        if cam.intrinsics is None or cam.image is None:
            raise ValueError(f"camera {name} has no image/calibration to re-render with; load it in the sensor config")
        h, w = np.asarray(cam.image).shape[:2]
        models.append(raster.CameraModel(name, np.asarray(cam.intrinsics, dtype=np.float64),
                                         np.asarray(cam.sensor2lidar_rotation, dtype=np.float64),
                                         np.asarray(cam.sensor2lidar_translation, dtype=np.float64), width=w, height=h))
    return models


def with_images(cameras: Any, images: Mapping[str, np.ndarray]) -> Any:
    """A copy of a frame's Cameras whose images are replaced by ``images`` (same calibrations)."""
    return dataclasses.replace(cameras, **{n: dataclasses.replace(getattr(cameras, n), image=img)
                                           for n, img in images.items()})


def global_boxes(frame: Any) -> tuple[np.ndarray, list]:
    """A frame's annotated boxes in global coordinates ``[N, 7]`` and their track tokens."""
    ann = frame.annotations
    if ann is None or len(ann.boxes) == 0:
        return np.zeros((0, 7)), []
    pose = frame.ego_status.ego_pose
    return raster.ego_to_global_boxes(np.asarray(ann.boxes, dtype=np.float64), (pose[0], pose[1], pose[2], 0.0)), \
        list(ann.track_tokens)


def render_frame(scene: Any, frame: Any, ego_global: np.ndarray, boxes_global: np.ndarray,
                 names: tuple[str, ...], render_fn: RenderFn | None = None) -> dict[str, np.ndarray]:
    """The cameras ``names`` of ``frame`` rendered from ``ego_global`` (map, ``boxes_global``, traffic lights)."""
    if render_fn is not None:
        return dict(render_fn(ego_global, boxes_global))
    prims = primitives_from_map_api(scene.map_api, ego_global[:2])
    lights = traffic_light_positions(scene.map_api, frame.traffic_lights)
    return raster.render_cameras(camera_models(frame.cameras, names), ego_pose=ego_global, map_primitives=prims,
                                 boxes=boxes_global, traffic_lights=lights)


def raster_hooks(scene: Any, agent_input: Any, *, radius: float = 200.0) -> tuple[DepthFn, RerenderFn]:
    """``(depth_fn, rerender_fn)`` for ``rap_backbone.corruptions.apply_to_agent_input`` from a NAVSIM ``Scene``.

    Frame ``i`` of ``agent_input`` is ``scene.frames[i]`` (global ego pose, boxes in its ego frame, map from
    ``scene.map_api`` or none when it is ``None``); cameras use the calibration and image size of
    ``agent_input``. ``depth_fn`` gives the rasterizer's per-pixel depth (boxes, ground plane, ``inf`` above the
    horizon) for depth-aware fog; ``rerender_fn(camera, i, R)`` renders the frame again from the camera rotated
    by ``R`` (``X_drifted = R @ X_nominal``, i.e. ``sensor2lidar_rotation @ R.T``): a true calibration drift for
    synthetic scenes whose images are raster renders (navmini). Traffic lights are not drawn.
    """
    prims_cache: dict[int, Any] = {}
    depth_cache: dict[tuple[str, int], np.ndarray] = {}

    def render(name: str, i: int, rotation: np.ndarray | None, with_depth: bool) -> Any:
        frame = scene.frames[i]
        camera = getattr(agent_input.cameras[i], name)
        if camera.image is None or camera.intrinsics is None:
            raise ValueError(f"raster_hooks: {name} of frame {i} has no image / calibration to render with")
        pose = np.asarray(frame.ego_status.ego_pose, dtype=np.float64)
        if i not in prims_cache:
            prims_cache[i] = (primitives_from_map_api(scene.map_api, pose[:2], radius)
                              if scene.map_api is not None else raster.MapPrimitives())
        s2l = np.asarray(camera.sensor2lidar_rotation, dtype=np.float64)
        if rotation is not None:
            s2l = s2l @ np.asarray(rotation, dtype=np.float64).T
        h, w = np.asarray(camera.image).shape[:2]
        model = raster.CameraModel(name, np.asarray(camera.intrinsics, dtype=np.float64), s2l,
                                   np.asarray(camera.sensor2lidar_translation, dtype=np.float64), width=w, height=h)
        ann = frame.annotations
        boxes = None if ann is None or len(ann.boxes) == 0 else np.asarray(ann.boxes, dtype=np.float64)
        out = raster.render_cameras([model], ego_pose=pose[:3], map_primitives=prims_cache[i], boxes=boxes,
                                    boxes_in_ego_frame=True, return_depth=with_depth)
        return (out[0][name], out[1][name]) if with_depth else out[name]

    def depth_fn(name: str, i: int) -> np.ndarray:
        if (name, i) not in depth_cache:
            depth_cache[(name, i)] = render(name, i, None, True)[1]
        return depth_cache[(name, i)]

    def rerender_fn(name: str, i: int, rotation: np.ndarray) -> np.ndarray:
        return render(name, i, rotation, False)

    return depth_fn, rerender_fn


def corrupt_agent_input(agent_input: Any, cfg_corruption: Any, seed_key: str = "", *, scene: Any = None) -> Any:
    """``apply_to_agent_input`` for a NAVSIM ``AgentInput``; with the ``Scene`` of a *synthetic* split (images
    are raster renders), fog gets the rasterizer's true depth and calibration drift a true re-render."""
    name = CorruptionConfig.from_cfg(cfg_corruption).name
    depth_fn = rerender_fn = None
    if scene is not None and name in RASTER_CORRUPTIONS:
        depth_fn, rerender_fn = raster_hooks(scene, agent_input)
        if name == "fog":
            rerender_fn = None
        else:
            depth_fn = None
    return apply_to_agent_input(agent_input, cfg_corruption, seed_key=seed_key, depth_fn=depth_fn,
                                rerender_fn=rerender_fn)
