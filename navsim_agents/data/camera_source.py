"""Camera images of NAVSIM scenes as distillation data sources: ``{type: navsim, ...}`` and
``{type: synthetic, ...}`` in a distill config's ``data.sources`` (registered with ``eupe.distill.data`` on
import; ``run_distill.py`` imports this module through its ``plugins`` list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from eupe.distill.data import decode_image, register_source
from navsim_agents.data import synthetic
from navsim_agents.data.dataclasses import SceneFilter
from navsim_agents.data.scene_loader import SceneLoader
from rap_backbone.nuplan_rig import CAMERA_NAMES, openscene_camera_key


class NavsimCameraSource:
    """Camera images of the current frame of each NAVSIM scene selected by our ``SceneLoader``.

    Args:
        data_path: ``navsim_logs/<split>``; sensor_blobs_path: ``sensor_blobs/<split>``.
        cameras: nuPlan camera names to use (``cam_f0``, ``cam_l0``, ...).
        log_names: optional scene-filter log names; other scene-filter fields keep NAVSIM's defaults.
    """

    def __init__(self, data_path: str | Path, sensor_blobs_path: str | Path, *,
                 cameras: Sequence[str] = ("cam_f0",), log_names: Sequence[str] | None = None) -> None:
        unknown = [c for c in cameras if c not in CAMERA_NAMES]
        if unknown:
            raise KeyError(f"unknown camera(s) {unknown} in a navsim data source; use names of {list(CAMERA_NAMES)}")
        scene_filter = SceneFilter(log_names=list(log_names)) if log_names else SceneFilter()
        loader = SceneLoader(Path(data_path), Path(sensor_blobs_path), scene_filter, on_corrupt_log="skip")
        self.blobs = Path(sensor_blobs_path)
        current = scene_filter.num_history_frames - 1
        self.files: list[Path] = []
        for token in loader.tokens:
            frame = loader.scene_frames_dicts[token][current]
            for cam in cameras:
                cams = frame.get("cams", {})
                entry = cams.get(openscene_camera_key(cam))
                if entry is not None and entry.get("data_path"):
                    self.files.append(self.blobs / entry["data_path"])
        if not self.files:
            raise ValueError(f"no {list(cameras)} images in the NAVSIM scenes of {data_path}")

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, i: int) -> str:
        return str(self.files[i])

    def load(self, i: int) -> np.ndarray:
        try:
            data = self.files[i].read_bytes()
        except OSError as err:
            raise ValueError(f"unreadable camera image {self.files[i]}: {err}") from err
        return decode_image(data, what=str(self.files[i]))


def synthetic_source(*, root: str | Path | None = None, cameras: Sequence[str] = ("cam_f0",),
                     train_logs: bool = True) -> NavsimCameraSource:
    """Rasterized camera images of the embedded synthetic world (generated on first use)."""
    data_root = synthetic.ensure_navmini(root)
    logs = synthetic.NAVMINI_TRAIN_LOGS if train_logs else synthetic.NAVMINI_TEST_LOGS
    return NavsimCameraSource(data_root / "navsim_logs" / "navmini", data_root / "sensor_blobs" / "navmini",
                              cameras=cameras, log_names=logs)


register_source("navsim", NavsimCameraSource)
register_source("synthetic", synthetic_source)
