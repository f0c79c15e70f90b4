"""Resolve a ``split`` config node (``configs/split/*.yaml``) into paths, map settings and a ``SceneFilter``.

Split schema (one yaml per split under ``configs/split/``)::

    data_split: test            # folder name under navsim_logs/ and sensor_blobs/
    synthetic: false            # true: the embedded synthetic world (navsim_agents.data.synthetic)
    subset: null                # synthetic only: test | train -> log_names from NAVMINI_TEST/TRAIN_LOGS
    data_root: null             # default $OPENSCENE_DATA_ROOT (synthetic: the generated cache)
    maps_root: null             # default $NUPLAN_MAPS_ROOT (synthetic: <data root>/maps)
    map_version: nuplan-maps-v1.0
    log_names_file: null        # optional list of log names (.txt one per line, .json list, or a devkit
    tokens_file: null           #   scene_filter .yaml with log_names / tokens keys)
    scene_filter: {num_history_frames, num_future_frames, frame_interval, has_route, max_scenes, log_names,
                   tokens}

Environment as in the NAVSIM devkit: ``OPENSCENE_DATA_ROOT`` holds ``navsim_logs/<split>`` and
``sensor_blobs/<split>``; ``NUPLAN_MAPS_ROOT`` holds ``nuplan-maps-v1.0.json`` and the GeoPackages;
``NUPLAN_MAP_VERSION`` overrides the release name when the config leaves ``map_version`` empty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Mapping, NamedTuple, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from navsim_agents.data.dataclasses import SceneFilter, SensorConfig
from navsim_agents.data.devkit_splits import read_devkit_split
from navsim_agents.data.maps import DEFAULT_MAP_VERSION

__all__ = ["SplitPaths", "resolve_split", "build_scene_loader", "build_two_stage_loader", "two_stage_mapping",
           "synthetic_dirs", "read_name_list"]

# keys of a scene_filter node that are Hydra instructions, not SceneFilter fields
_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_")
_SCENE_FILTER_FIELDS = ("num_history_frames", "num_future_frames", "frame_interval", "has_route", "max_scenes",
                        "log_names", "tokens", "include_synthetic_scenes", "all_mapping", "synthetic_scene_tokens",
                        "reactive_synthetic_initial_tokens", "non_reactive_synthetic_initial_tokens")


class SplitPaths(NamedTuple):
    """A resolved split: where its logs, sensors and maps are, and which scenes to take."""

    data_path: Path  # <data root>/navsim_logs/<data_split>
    sensor_blobs_path: Path  # <data root>/sensor_blobs/<data_split>
    maps_root: Optional[Path]  # None when NUPLAN_MAPS_ROOT is unset (scenes then fail on first map use)
    map_version: str
    scene_filter: SceneFilter


def _plain(node: Any) -> Any:
    """OmegaConf node -> plain Python containers (resolving interpolations); other values unchanged."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def read_name_list(path: os.PathLike | str, key: str) -> List[str]:
    """Names from a file: ``.txt`` (one per line, ``#`` comments), ``.json`` (a list, or a dict with ``key``),
    or ``.yaml`` (a list, or a devkit scene_filter with ``key``).

    :raises FileNotFoundError: the file does not exist.
    :raises ValueError: the file holds no list under ``key``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        content: Any = json.loads(path.read_text())
    elif suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    else:
        return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if isinstance(content, Mapping):
        content = content.get(key)
    if not isinstance(content, list):
        raise ValueError(f"{path}: expected a list of {key} (or a mapping with a '{key}' list)")
    return [str(item) for item in content]


# split.subset of the embedded world's two-stage split (navsim_agents.data.navmini_two_stage)
TWO_STAGE_SUBSET = "two_stage"


def _two_stage_world(split: Mapping[str, Any]) -> Path:
    from navsim_agents.data.navmini_two_stage import (
        ensure_navmini_two_stage,  # lazy: generation code is heavy
    )

    return Path(ensure_navmini_two_stage(split.get("data_root") or None))


def _devkit_config(split: Mapping[str, Any]) -> Optional[str]:
    """``split.devkit_config``; for the embedded two-stage split, the yaml generated with it."""
    if split.get("devkit_config"):
        return str(split["devkit_config"])
    if split.get("synthetic") and split.get("subset") == TWO_STAGE_SUBSET:
        from navsim_agents.data.navmini_two_stage import split_yaml

        return str(split_yaml(_two_stage_world(split)))
    return None


def _scene_filter(split: Mapping[str, Any], synthetic_logs: Optional[List[str]]) -> SceneFilter:
    node = dict(split.get("scene_filter") or {})
    if _devkit_config(split):  # the devkit's own split definition decides the scenes
        node = {k: v for k, v in node.items() if k in _HYDRA_KEYS} | read_devkit_split(_devkit_config(split)).scene_filter
    unknown = set(node) - set(_SCENE_FILTER_FIELDS) - set(_HYDRA_KEYS)
    if unknown:
        raise ValueError(f"unknown scene_filter keys {sorted(unknown)}; allowed: {list(_SCENE_FILTER_FIELDS)}")
    kwargs = {key: node[key] for key in _SCENE_FILTER_FIELDS if key in node}
    if split.get("log_names_file"):
        kwargs["log_names"] = list(kwargs.get("log_names") or []) + read_name_list(split["log_names_file"], "log_names")
    if split.get("tokens_file"):
        kwargs["tokens"] = list(kwargs.get("tokens") or []) + read_name_list(split["tokens_file"], "tokens")
    if kwargs.get("log_names") is None and synthetic_logs is not None:
        kwargs["log_names"] = list(synthetic_logs)
    return SceneFilter(**kwargs)


def resolve_split(split_cfg: Mapping[str, Any], *, check_exists: bool = True) -> SplitPaths:
    """Resolve a split node into :class:`SplitPaths`.

    :param split_cfg: the ``split`` node (DictConfig or dict) with the schema of this module's docstring.
    :param check_exists: raise when ``navsim_logs/<data_split>`` is missing.
    :return: SplitPaths(data_path, sensor_blobs_path, maps_root, map_version, scene_filter).
    :raises FileNotFoundError: no data root (names ``OPENSCENE_DATA_ROOT``) or a missing log folder (names the
        path tried).
    :raises ValueError: ``data_split`` not set (``custom`` needs ``split.data_split=<name>``) or a bad subset.
    """
    split = dict(_plain(split_cfg))
    data_split = split.get("data_split")
    if _devkit_config(split) and (not data_split or str(data_split) == "???"):
        data_split = read_devkit_split(_devkit_config(split)).data_split
    if not data_split or str(data_split) == "???":
        raise ValueError("split.data_split is not set: pass the folder name under navsim_logs/, e.g. "
                         "split=custom split.data_split=mini")
    data_split = str(data_split)
    synthetic = bool(split.get("synthetic", False))
    synthetic_logs: Optional[List[str]] = None

    if synthetic:
        from navsim_agents.data import synthetic as synthetic_world  # lazy: generation code is heavy

        subset = split.get("subset")
        if subset == TWO_STAGE_SUBSET:
            root = _two_stage_world(split)
        else:
            root = Path(synthetic_world.ensure_navmini(split.get("data_root") or None))
        if subset not in (None, TWO_STAGE_SUBSET):
            lists = {"test": "NAVMINI_TEST_LOGS", "train": "NAVMINI_TRAIN_LOGS"}
            if subset not in lists:
                raise ValueError(f"split.subset must be one of {sorted(lists) + [TWO_STAGE_SUBSET]} or null, "
                                 f"got {subset!r}")
            synthetic_logs = list(getattr(synthetic_world, lists[subset]))
        maps_root: Optional[Path] = Path(split.get("maps_root") or root / "maps")
    else:
        root_value = split.get("data_root") or os.environ.get("OPENSCENE_DATA_ROOT")
        if not root_value:
            raise FileNotFoundError(
                f"split {data_split}: no data root. Set OPENSCENE_DATA_ROOT to the folder holding navsim_logs/ and "
                "sensor_blobs/ (or split.data_root), or use split=navmini for the embedded synthetic data"
            )
        root = Path(root_value).expanduser()
        maps_value = split.get("maps_root") or os.environ.get("NUPLAN_MAPS_ROOT")
        maps_root = Path(maps_value).expanduser() if maps_value else None

    map_version = str(split.get("map_version") or os.environ.get("NUPLAN_MAP_VERSION") or DEFAULT_MAP_VERSION)
    data_path = root / "navsim_logs" / data_split
    if check_exists and not data_path.is_dir():
        source = "the synthetic cache" if synthetic else "OPENSCENE_DATA_ROOT / split.data_root"
        raise FileNotFoundError(f"split {data_split}: log folder not found: {data_path} (data root from {source})")
    return SplitPaths(
        data_path=data_path,
        sensor_blobs_path=root / "sensor_blobs" / data_split,
        maps_root=maps_root,
        map_version=map_version,
        scene_filter=_scene_filter(split, synthetic_logs),
    )


def build_scene_loader(
    split_cfg: Mapping[str, Any], sensor_config: Optional[SensorConfig] = None, **loader_kwargs: Any
):
    """A ``SceneLoader`` for a split node (maps root and version passed on to the scenes).

    :param split_cfg: the ``split`` node.
    :param sensor_config: sensors to read (default none).
    :param loader_kwargs: extra ``SceneLoader`` keywords (e.g. ``on_corrupt_log="skip"``).
    """
    from navsim_agents.data.scene_loader import SceneLoader

    paths = resolve_split(split_cfg)
    return SceneLoader(
        paths.data_path,
        paths.sensor_blobs_path,
        paths.scene_filter,
        sensor_config,
        map_root=paths.maps_root,
        map_version=paths.map_version,
        **loader_kwargs,
    )


def synthetic_dirs(split_cfg: Mapping[str, Any]) -> tuple[Path, Path]:
    """Synthetic scene pickles and their sensor blobs of a two-stage split: ``split.synthetic_scenes_path`` /
    ``split.synthetic_sensor_path``; by default ``<data root>/<synthetic_folder>/synthetic_scene_pickles`` and
    ``<data root>/<synthetic_folder>/sensor_blobs`` (navsim default_dataset_paths.yaml, synthetic_folder
    ``navhard_two_stage``), or with no ``synthetic_folder`` the embedded world's ``<data root>/<data_split>/
    synthetic_scene_pickles`` and ``<data root>/sensor_blobs/<data_split>``."""
    split = dict(_plain(split_cfg))
    paths = resolve_split(split, check_exists=False)
    root = paths.data_path.parent.parent
    folder = split.get("synthetic_folder")
    if folder:
        default_scenes, default_sensors = root / folder / "synthetic_scene_pickles", root / folder / "sensor_blobs"
    else:
        default_scenes, default_sensors = root / paths.data_path.name / "synthetic_scene_pickles", paths.sensor_blobs_path
    scenes = split.get("synthetic_scenes_path") or default_scenes
    sensors = split.get("synthetic_sensor_path") or default_sensors
    return Path(scenes).expanduser(), Path(sensors).expanduser()


def build_two_stage_loader(split_cfg: Mapping[str, Any], sensor_config: Optional[SensorConfig] = None):
    """A ``TwoStageSceneLoader``: the split's original scenes plus the synthetic scenes that belong to them."""
    from navsim_agents.data.synthetic_scenes import TwoStageSceneLoader

    split = dict(_plain(split_cfg))
    resolve_split(split)  # the logs folder must exist
    scenes, sensors = synthetic_dirs(split)
    return TwoStageSceneLoader(build_scene_loader(split, sensor_config), scenes, sensors)


def two_stage_mapping(split_cfg: Mapping[str, Any]) -> List[Any]:
    """The split's ``reactive_all_mapping`` (from ``split.devkit_config``, else ``split.reactive_all_mapping``)."""
    split = dict(_plain(split_cfg))
    if _devkit_config(split):
        return read_devkit_split(_devkit_config(split)).reactive_all_mapping
    mapping = split.get("reactive_all_mapping")
    if not mapping:
        raise ValueError("a two-stage scorer needs the split's reactive_all_mapping: set split.devkit_config to the "
                         "devkit's train_test_split/<name>_two_stage.yaml")
    return list(mapping)
