"""Read a NAVSIM devkit split definition: ``train_test_split/<name>.yaml`` and the scene filter it names.

The devkit's split yaml (navsim main 0a380a9, ``navsim/planning/script/config/common/train_test_split/``) is::

    defaults:
      - scene_filter: navhard_two_stage     # -> scene_filter/navhard_two_stage.yaml beside it
    data_split: test
    reactive_all_mapping: [[now, prev, [[syn_now, syn_prev], ...]], ...]    # two-stage splits only

and the scene filter yaml holds ``SceneFilter`` fields (``num_history_frames``, ``num_future_frames``,
``frame_interval``, ``has_route``, ``max_scenes``, ``include_synthetic_scenes``, ``log_names``, ``tokens``,
``synthetic_scene_tokens``, ``reactive_synthetic_initial_tokens``, ``non_reactive_synthetic_initial_tokens``) plus
Hydra's ``_target_`` / ``_convert_``. Keys of the split yaml itself override those of the filter (Hydra's
``_self_`` after the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["DevkitSplit", "read_devkit_split"]

_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_")


@dataclass
class DevkitSplit:
    """A devkit split: log folder name, scene-filter fields and the two-stage mapping (empty for one-stage)."""

    name: str
    data_split: str
    scene_filter: Dict[str, Any]
    reactive_all_mapping: List[Any] = field(default_factory=list)
    source: Optional[Path] = None


def _load_yaml(path: Path) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: a devkit split / scene_filter yaml must be a mapping")
    return content


def read_devkit_split(path: str | Path) -> DevkitSplit:
    """Parse ``train_test_split/<name>.yaml`` (or a bare ``scene_filter/<name>.yaml``).

    :raises FileNotFoundError: the yaml or the scene filter it names is missing (both paths named).
    :raises ValueError: the yaml names no ``data_split`` and is not a scene filter.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"devkit split yaml not found: {path} (point split.devkit_config at "
                                "navsim/planning/script/config/common/train_test_split/<name>.yaml)")
    content = _load_yaml(path)
    scene_filter: Dict[str, Any] = {}
    for item in content.pop("defaults", None) or []:
        if isinstance(item, dict) and "scene_filter" in item:
            filter_path = path.parent / "scene_filter" / f"{item['scene_filter']}.yaml"
            if not filter_path.is_file():
                raise FileNotFoundError(f"{path} names scene_filter {item['scene_filter']!r} but {filter_path} "
                                        "does not exist")
            scene_filter.update(_load_yaml(filter_path))
    if not scene_filter and "data_split" not in content:  # a bare scene-filter yaml
        scene_filter, content = content, {}
    mapping = content.pop("reactive_all_mapping", None) or []
    data_split = content.pop("data_split", None)
    if data_split is None:
        raise ValueError(f"{path}: no data_split (the folder under navsim_logs/); is it a train_test_split yaml?")
    override = content.pop("scene_filter", None)
    if isinstance(override, dict):
        scene_filter.update(override)
    for key in _HYDRA_KEYS:
        scene_filter.pop(key, None)
    return DevkitSplit(name=path.stem, data_split=str(data_split), scene_filter=scene_filter,
                       reactive_all_mapping=list(mapping), source=path)
