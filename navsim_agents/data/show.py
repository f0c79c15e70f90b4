"""A small scene viewer: a PNG with the bird's-eye view (map, boxes, ego history and future) beside the cameras.

    python -m navsim_agents.data.show TOKEN [--split navmini] [--out FILE.png] [--data-root DIR] [--maps-root DIR]

``--split navmini`` (default) uses the synthetic cache (generated on first use); any other split reads
``$OPENSCENE_DATA_ROOT/navsim_logs/<split>`` and ``$NUPLAN_MAPS_ROOT``. TOKEN is any frame token of a log.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from navsim_agents.data.scene_loader import load_log
from rap_backbone.nuplan_rig import PACIFICA

HISTORY_FRAMES = 4  # NAVSIM: 4 history frames (incl. the current one) and 10 future frames at 2 Hz
FUTURE_FRAMES = 10
BEV_RANGE = 50.0  # metres around the ego
CAMERA_ORDER = ("CAM_L0", "CAM_F0", "CAM_R0", "CAM_B0")
BOX_COLORS = {"vehicle": "tab:blue", "pedestrian": "tab:red", "bicycle": "tab:orange"}


def _roots(split: str, data_root, maps_root) -> tuple[Path, Path]:
    if data_root is None and split == "navmini":
        from navsim_agents.data.synthetic import ensure_navmini

        data_root = ensure_navmini()
    if data_root is None:
        env = os.environ.get("OPENSCENE_DATA_ROOT")
        if not env:
            raise FileNotFoundError("set OPENSCENE_DATA_ROOT (folder with navsim_logs/ and sensor_blobs/) "
                                    "or pass --data-root")
        data_root = env
    data_root = Path(data_root)
    if maps_root is None:
        maps_root = os.environ.get("NUPLAN_MAPS_ROOT") if split != "navmini" else None
        maps_root = Path(maps_root) if maps_root else data_root / "maps"
    return data_root, Path(maps_root)


def find_frames(logs_dir: Path, token: str) -> tuple[list[dict], int]:
    """The frames of the log holding ``token`` and the token's index; KeyError if no log has it."""
    if not logs_dir.is_dir():
        raise FileNotFoundError(f"no log directory {logs_dir}")
    for pkl in sorted(logs_dir.glob("*.pkl")):
        frames = load_log(pkl)
        for k, frame in enumerate(frames):
            if frame["token"] == token:
                return frames, k
    raise KeyError(f"token {token!r} is in no log under {logs_dir}")


def _to_ego(points: np.ndarray, e2g: np.ndarray) -> np.ndarray:
    return (points - e2g[:2, 3]) @ e2g[:2, :2]


def _map_layers(maps_root: Path, location: str, e2g: np.ndarray) -> dict:
    """Polygons near the ego from the nuPlan gpkg, in the ego frame."""
    import pyogrio

    index = maps_root / "nuplan-maps-v1.0.json"
    if not index.is_file():
        return {}
    with open(index) as handle:
        versions = json.load(handle)
    if location not in versions:
        return {}
    gpkg = maps_root / location / versions[location]["version"] / "map.gpkg"
    x, y = e2g[:2, 3]
    r = BEV_RANGE * 1.5
    out = {}
    for layer in ("intersections", "lanes_polygons", "gen_lane_connectors_scaled_width_polygons", "crosswalks",
                  "carpark_areas"):
        try:
            frame = pyogrio.read_dataframe(gpkg, layer=layer, bbox=(x - r, y - r, x + r, y + r))
        except Exception:  # a map without this layer still shows the rest
            continue
        polys = []
        for geom in frame.geometry:
            for g in getattr(geom, "geoms", [geom]):
                polys.append(_to_ego(np.asarray(g.exterior.coords)[:, :2], e2g))
        out[layer] = polys
    return out


def render_scene_png(frames: list[dict], index: int, sensor_root: Path, maps_root: Path, out: Path) -> Path:
    """Draw frame ``index`` of ``frames`` (BEV + cameras) into ``out``; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    frame = frames[index]
    e2g = np.asarray(frame["ego2global"])
    fig = plt.figure(figsize=(18, 8))
    grid = fig.add_gridspec(2, 3, width_ratios=[1.2, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    styles = {"intersections": ("#dddddd", None), "lanes_polygons": ("#eeeeee", "#9aa7b8"),
              "gen_lane_connectors_scaled_width_polygons": ("none", "#c8cdd6"), "crosswalks": ("#e8c39e", None),
              "carpark_areas": ("#d9ead3", None)}
    for layer, polys in _map_layers(maps_root, frame["map_location"], e2g).items():
        face, edge = styles[layer]
        for poly in polys:
            ax.add_patch(MplPolygon(poly, closed=True, facecolor=face, edgecolor=edge or face, lw=0.6))
    anns = frame.get("anns") or {}
    for box, name in zip(anns.get("gt_boxes", []), anns.get("gt_names", []), strict=True):
        x, y, _, length, width, _, yaw = box
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.array([[length, width], [length, -width], [-length, -width], [-length, width]]) / 2
        ax.add_patch(MplPolygon(local @ np.array([[c, -s], [s, c]]).T + [x, y], closed=True,
                                facecolor=BOX_COLORS.get(str(name), "tab:gray"), alpha=0.8))
    # ego footprint (nuPlan Pacifica) and trajectories in the current ego frame
    ego = np.array(PACIFICA.footprint())
    ax.add_patch(MplPolygon(ego, closed=True, facecolor="tab:green", alpha=0.9))
    poses = np.array([np.asarray(f["ego2global"])[:2, 3] for f in frames])
    hist = _to_ego(poses[max(0, index - HISTORY_FRAMES + 1): index + 1], e2g)
    fut = _to_ego(poses[index: index + FUTURE_FRAMES + 1], e2g)
    ax.plot(hist[:, 0], hist[:, 1], "o-", color="tab:purple", ms=3, label="history")
    ax.plot(fut[:, 0], fut[:, 1], "o-", color="tab:green", ms=3, label="future")
    red = sum(1 for _, is_red in frame.get("traffic_lights", []) if is_red)
    command = ["left", "straight", "right", "unknown"][int(np.argmax(frame["driving_command"]))]
    ax.set_title(f"{frame['token']}  frame {frame['frame_idx']}  v={frame['ego_dynamic_state'][0]:.1f} m/s  "
                 f"command={command}  red lights={red}", fontsize=9)
    ax.set_xlim(-BEV_RANGE * 0.5, BEV_RANGE)
    ax.set_ylim(-BEV_RANGE * 0.75, BEV_RANGE * 0.75)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("x (m, ego forward)")
    ax.set_ylabel("y (m, left)")
    for k, cam in enumerate(CAMERA_ORDER):
        cax = fig.add_subplot(grid[k // 2, 1 + k % 2])
        cax.axis("off")
        entry = frame.get("cams", {}).get(cam)
        path = sensor_root / entry["data_path"] if entry else None
        if path is not None and path.is_file():
            cax.imshow(plt.imread(path))
            cax.set_title(cam, fontsize=9)
        else:
            cax.set_title(f"{cam}: no image", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def show(token: str, *, split: str = "navmini", out=None, data_root=None, maps_root=None) -> Path:
    """Save the PNG of frame ``token`` of ``split``; returns its path (default ``<token>.png``)."""
    data_root, maps_root = _roots(split, data_root, maps_root)
    frames, index = find_frames(data_root / "navsim_logs" / split, token)
    return render_scene_png(frames, index, data_root / "sensor_blobs" / split, maps_root,
                            Path(out) if out else Path(f"{token}.png"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("token")
    parser.add_argument("--split", default="navmini")
    parser.add_argument("--out", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--maps-root", default=None)
    args = parser.parse_args(argv)
    print(show(args.token, split=args.split, out=args.out, data_root=args.data_root, maps_root=args.maps_root))


if __name__ == "__main__":
    main()
