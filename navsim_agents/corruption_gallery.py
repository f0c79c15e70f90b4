"""The corruption gallery on a camera image of the embedded synthetic world (navmini).

    python -m navsim_agents.corruption_gallery show --out gallery.png     # navmini if generated, else drawn
    python -m navsim_agents.corruption_gallery show --source synthetic    # generate navmini first if needed

The gallery itself is ``rap_backbone.corruptions`` (which knows no data set); this adds navmini's CAM_F0 with
its three history frames as the default image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from navsim_agents.data import synthetic
from navsim_agents.data.dataclasses import SceneLoadError
from navsim_agents.data.scene_loader import load_log
from rap_backbone import corruptions


def synthetic_gallery_image(*, generate: bool) -> corruptions.GalleryImage | None:
    """CAM_F0 of a navmini frame with its 3 history frames and intrinsics (``None`` if navmini is not there).

    navmini is generated first only when ``generate``.
    """
    if generate:
        root = Path(synthetic.ensure_navmini())
    else:
        root = Path(synthetic.default_cache_root()) / f"navmini-v{synthetic.VERSION}"
        if not (root / synthetic.MARKER).is_file():
            return None
    logs = sorted((root / "navsim_logs").rglob("*.pkl"))
    if not logs:
        return None
    log_path = logs[len(logs) // 2]
    frames = load_log(log_path)
    i = max(3, len(frames) // 2)
    blobs = root / "sensor_blobs" / log_path.parent.name
    images = []
    for frame in frames[i - 3:i + 1]:
        bgr = cv2.imread(str(blobs / frame["cams"]["CAM_F0"]["data_path"]), cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        images.append(bgr[..., ::-1].copy())
    k = np.asarray(frames[i]["cams"]["CAM_F0"]["cam_intrinsic"], dtype=np.float64)
    return images[-1], None, k, images[:-1], f"synthetic world: {log_path.stem} frame {i} CAM_F0"


def _synthetic() -> corruptions.GalleryImage:
    try:
        found = synthetic_gallery_image(generate=True)
    except (OSError, KeyError, SceneLoadError) as err:
        raise RuntimeError(f"the synthetic world is not available for the gallery: {err}") from err
    if found is None:
        raise RuntimeError("the synthetic world has no camera images; regenerate it (ensure_navmini)")
    return found


def _auto() -> corruptions.GalleryImage:
    """navmini when it is already generated (and readable), else the drawn road scene."""
    try:
        found = synthetic_gallery_image(generate=False)
    except (OSError, KeyError, SceneLoadError):
        found = None
    return found if found is not None else corruptions.procedural_gallery_image()


def main(argv: Sequence[str] | None = None) -> None:
    corruptions.main(argv, prog="python -m navsim_agents.corruption_gallery",
                     sources={"auto": _auto, "synthetic": _synthetic,
                              "procedural": corruptions.procedural_gallery_image})


if __name__ == "__main__":
    main()
