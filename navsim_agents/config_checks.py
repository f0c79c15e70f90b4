"""Checks of the settings the NAVSIM entry points share, run before any work.

Each raises :class:`eupe.config_errors.ConfigError` naming the setting, the value given and what is allowed, so
a wrong setting stops the run with one message instead of one warning per token and a CSV of NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from eupe.config_errors import ConfigError

WORKERS = ("sequential", "ray")


def check_seed(value: Any, setting: str = "seed") -> int:
    """``seed`` is a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{setting}={value!r} must be a non-negative integer (e.g. {setting}=0)")
    return value


def check_corruption(corruption: Mapping[str, Any] | None) -> None:
    """Name in the registry, severity an integer 1..5 (0 only with ``corruption=none``), known cameras."""
    from rap_backbone.corruptions import CAMERA_NAMES, MAX_SEVERITY, corruption_names

    if corruption is None:
        return
    name, severity = corruption.get("name"), corruption.get("severity")
    names = corruption_names(aliases=True)
    if name != "none" and name not in names:
        raise ConfigError(f"corruption={name!r} is unknown; choose one of: none, {', '.join(corruption_names())}")
    if isinstance(severity, bool) or not isinstance(severity, int):
        raise ConfigError(f"corruption.severity={severity!r} must be an integer 1..{MAX_SEVERITY}")
    if name == "none":
        if severity != 0:
            raise ConfigError(f"corruption.severity={severity} with corruption=none; pick a corruption "
                              f"(corruption=fog corruption.severity={severity}) or leave the severity at 0")
    elif not 1 <= severity <= MAX_SEVERITY:
        raise ConfigError(f"corruption.severity={severity} is out of range: use 1..{MAX_SEVERITY} "
                          "(no corruption is corruption=none)")
    cameras = corruption.get("cameras", "all")
    if cameras != "all":
        listed = [cameras] if isinstance(cameras, str) else list(cameras or [])
        bad = [c for c in listed if str(c).lower() not in CAMERA_NAMES]
        if bad or not listed:
            raise ConfigError(f"corruption.cameras={listed} has unknown camera(s) {bad}; use 'all' or a list of "
                              f"{', '.join(CAMERA_NAMES)}")
    check_seed(corruption.get("seed", 0), "corruption.seed")


def check_worker(worker: Mapping[str, Any]) -> None:
    """``worker=sequential|ray``; Ray must be importable for ``worker=ray``."""
    name = worker.get("name")
    if name not in WORKERS:
        raise ConfigError(f"worker={name!r} is unknown; choose one of {', '.join(WORKERS)}")
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("worker=ray needs Ray: pip install 'ray[default]' (or use worker=sequential)") from None
        size = worker.get("tokens_per_task")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"worker.tokens_per_task={size!r} must be an integer >= 1")


def check_backbone_weights(backbone: Mapping[str, Any]) -> None:
    """``backbone.weights`` is null (random), ``hub`` or a file / transformers snapshot that exists."""
    weights = backbone.get("weights")
    if weights is None or weights == "hub" or Path(str(weights)).exists():
        return
    name = backbone.get("name")
    raise ConfigError(f"backbone.weights={weights} (backbone={name}) does not exist; give an existing weights file, "
                      "backbone.weights=hub for published weights or null for random ones. A student comes from "
                      f"`python eupe/run_distill.py distill=stage4_edge distill.student.name={name} "
                      "output_dir=<folder>` (it writes <folder>/student.safetensors)")


def check_split(split: DictConfig, *, need_maps: bool = True) -> list[str]:
    """The split resolves, its filter is in range, it has scenes, and (``need_maps``) a map for each of their
    locations exists. Returns the split's tokens."""
    from navsim_agents.data.dataclasses import SensorConfig
    from navsim_agents.data.maps import map_file_path, resolve_maps_root
    from navsim_agents.data.splits import build_scene_loader, resolve_split

    data_split = split.get("data_split")
    scene_filter = split.get("scene_filter") or {}
    max_scenes = scene_filter.get("max_scenes")
    if max_scenes is not None and (isinstance(max_scenes, bool) or not isinstance(max_scenes, int) or max_scenes < 1):
        raise ConfigError(f"split.scene_filter.max_scenes={max_scenes!r} must be an integer >= 1 (or null for all)")
    try:
        paths = resolve_split(split)
        loader = build_scene_loader(split, SensorConfig.build_no_sensors())
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise ConfigError(f"split {data_split}: {err}") from None
    tokens = list(loader.tokens)
    if not tokens:
        wanted = scene_filter.get("tokens") or scene_filter.get("log_names")
        raise ConfigError(f"split {data_split} has no scenes in {paths.data_path}"
                          + (f" matching split.scene_filter ({list(wanted)[:5]}...)" if wanted else
                             " (an empty log folder?); point split.data_root / OPENSCENE_DATA_ROOT at the data"))
    if need_maps:
        locations = sorted({frames[3]["map_location"] for frames in loader.scene_frames_dicts.values()})
        try:
            root, version = resolve_maps_root(str(paths.maps_root) if paths.maps_root else None, paths.map_version)
            for location in locations:
                map_file_path(root, version, location)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"split {data_split} needs the maps of {locations}: {err} (split.maps_root / "
                              "NUPLAN_MAPS_ROOT)") from None
    return tokens

