"""Split configs (configs/split/*.yaml) resolved into paths, map settings and scene filters."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import navsim_agents.data as data_package
from navsim_agents.data.splits import build_scene_loader, read_name_list, resolve_split

SPLIT_DIR = Path(__file__).resolve().parents[1] / "configs" / "split"


def _load(name: str, **overrides):
    cfg = OmegaConf.load(SPLIT_DIR / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.fixture()
def env(monkeypatch, tmp_path):
    for name in ("OPENSCENE_DATA_ROOT", "NUPLAN_MAPS_ROOT", "NUPLAN_MAP_VERSION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch, tmp_path


def test_every_split_yaml_has_the_schema():
    names = {path.stem for path in SPLIT_DIR.glob("*.yaml")}
    ours = {"navtest", "navtrain", "navmini", "navmini_train", "custom"}
    assert ours <= names
    for name in names:
        cfg = OmegaConf.load(SPLIT_DIR / f"{name}.yaml")
        assert {"data_split", "synthetic", "scene_filter"} <= set(cfg.keys()), name
    # the navtest windowing (navsim scene_filter/navtest.yaml): 4 history, 10 future, stride 1, route required
    for name in ours:
        f = OmegaConf.load(SPLIT_DIR / f"{name}.yaml").scene_filter
        assert (f.num_history_frames, f.num_future_frames, f.frame_interval, f.has_route) == (4, 10, 1, True)


def test_navtest_from_env(env):
    monkeypatch, tmp_path = env
    (tmp_path / "navsim_logs" / "test").mkdir(parents=True)
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("NUPLAN_MAPS_ROOT", str(tmp_path / "maps"))
    paths = resolve_split(_load("navtest"))
    assert paths.data_path == tmp_path / "navsim_logs" / "test"
    assert paths.sensor_blobs_path == tmp_path / "sensor_blobs" / "test"
    assert paths.maps_root == tmp_path / "maps" and paths.map_version == "nuplan-maps-v1.0"
    f = paths.scene_filter
    assert (f.num_history_frames, f.num_future_frames, f.frame_interval, f.has_route) == (4, 10, 1, True)
    assert f.log_names is None and f.tokens is None
    monkeypatch.setenv("NUPLAN_MAP_VERSION", "nuplan-maps-v9")
    assert resolve_split(_load("navtest")).map_version == "nuplan-maps-v9"
    assert resolve_split(_load("navtrain"), check_exists=False).data_path == tmp_path / "navsim_logs" / "trainval"


def test_missing_root_and_folder_name_env_var_and_path(env):
    monkeypatch, tmp_path = env
    with pytest.raises(FileNotFoundError, match="OPENSCENE_DATA_ROOT"):
        resolve_split(_load("navtest"))
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        resolve_split(_load("navtest"))
    assert str(tmp_path / "navsim_logs" / "test") in str(info.value)


def test_custom_split_and_name_files(env):
    monkeypatch, tmp_path = env
    logs = tmp_path / "navsim_logs" / "mini"
    logs.mkdir(parents=True)
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path))
    with pytest.raises(ValueError, match="data_split"):
        resolve_split(_load("custom"))
    # a devkit-style scene_filter yaml as the token list, a text file as the log list
    devkit_yaml = tmp_path / "navtest.yaml"
    devkit_yaml.write_text("_target_: x\nlog_names:\n  - 'logA'\ntokens:\n  - 'tok1'\n  - 'tok2'\n")
    text_list = tmp_path / "logs.txt"
    text_list.write_text("# my logs\nlogA\nlogB\n")
    cfg = _load("custom", data_split="mini", tokens_file=str(devkit_yaml), log_names_file=str(text_list))
    paths = resolve_split(cfg)
    assert paths.scene_filter.tokens == ["tok1", "tok2"] and paths.scene_filter.log_names == ["logA", "logB"]
    assert read_name_list(devkit_yaml, "log_names") == ["logA"]
    with pytest.raises(FileNotFoundError):
        read_name_list(tmp_path / "nope.txt", "tokens")


def test_synthetic_split_uses_ensure_navmini_and_log_lists(env):
    monkeypatch, tmp_path = env
    root = tmp_path / "navmini_cache"
    logs = root / "navsim_logs" / "navmini"
    logs.mkdir(parents=True)
    calls = []

    def ensure_navmini(root_arg=None):
        calls.append(root_arg)
        return root

    fake = types.SimpleNamespace(ensure_navmini=ensure_navmini, NAVMINI_TEST_LOGS=["town-test-0"],
                                 NAVMINI_TRAIN_LOGS=["town-train-0", "town-train-1"])
    monkeypatch.setitem(sys.modules, "navsim_agents.data.synthetic", fake)
    monkeypatch.setattr(data_package, "synthetic", fake, raising=False)

    test_paths = resolve_split(_load("navmini"))
    assert calls == [None]
    assert test_paths.data_path == logs and test_paths.maps_root == root / "maps"
    assert test_paths.scene_filter.log_names == ["town-test-0"]
    assert resolve_split(_load("navmini_train")).scene_filter.log_names == ["town-train-0", "town-train-1"]
    # explicit log names win over the subset
    assert resolve_split(_load("navmini", **{"scene_filter.log_names": ["x"]})).scene_filter.log_names == ["x"]

    # the loader built from the split reads only the selected log
    frames = [{"token": f"t{i}", "log_name": "town-test-0", "roadblock_ids": ["1"]} for i in range(14)]
    for name in ("town-test-0", "town-train-0"):
        with open(logs / f"{name}.pkl", "wb") as handle:
            pickle.dump(frames, handle)
    loader = build_scene_loader(_load("navmini"))
    assert loader.tokens == ["t3"] and loader.get_tokens_list_per_log() == {"town-test-0": ["t3"]}


def test_navhard_two_stage_synthetic_folders_follow_the_devkit_defaults(env):
    """navsim default_dataset_paths.yaml: synthetic_scenes_path = $OPENSCENE_DATA_ROOT/navhard_two_stage/
    synthetic_scene_pickles, synthetic_sensor_path = $OPENSCENE_DATA_ROOT/navhard_two_stage/sensor_blobs."""
    from navsim_agents.data.splits import synthetic_dirs

    monkeypatch, tmp_path = env
    folder = tmp_path / "train_test_split"
    (folder / "scene_filter").mkdir(parents=True)
    (folder / "scene_filter" / "hard.yaml").write_text("num_history_frames: 4\nnum_future_frames: 8\n")
    (folder / "hard.yaml").write_text("defaults:\n- scene_filter: hard\ndata_split: test\n")
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path / "openscene"))
    cfg = _load("navhard_two_stage", devkit_config=str(folder / "hard.yaml"), data_split="test")
    root = tmp_path / "openscene"
    assert synthetic_dirs(cfg) == (root / "navhard_two_stage" / "synthetic_scene_pickles",
                                   root / "navhard_two_stage" / "sensor_blobs")
    # split.data_root moves them with the logs; explicit folders win
    cfg = _load("navhard_two_stage", devkit_config=str(folder / "hard.yaml"), data_split="test",
                data_root=str(tmp_path / "mine"), synthetic_sensor_path=str(tmp_path / "blobs"))
    assert synthetic_dirs(cfg) == (tmp_path / "mine" / "navhard_two_stage" / "synthetic_scene_pickles",
                                   tmp_path / "blobs")
    assert resolve_split(cfg, check_exists=False).data_path == tmp_path / "mine" / "navsim_logs" / "test"
