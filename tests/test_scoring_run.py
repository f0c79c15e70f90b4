"""run_pdm_score end to end on the navsim_dev conformance data: CSV layout, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import conformance_path
from hydra import compose, initialize_config_dir

from navsim_agents import run_pdm_score
from navsim_agents.scoring import evaluate as E

ROOT = conformance_path("navsim_dev")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance set not found at {ROOT} "
                                 "(set EUPE_DRIVE_CONFORMANCE to the folder holding navsim_dev/)")
# three consecutive frames of one log (so v2 pairs two of them for extended comfort) + one of another log
TOKENS = ["4e1b0dbeff2032d7", "5cc0d0f851085ef2", "4db1a6c19d7a6e9e", "03cc4522c624ed52"]
V1_HEADER = ["", "token", "valid", "no_at_fault_collisions", "drivable_area_compliance", "ego_progress",
             "time_to_collision_within_bound", "comfort", "driving_direction_compliance", "score"]
V2_HEADER = ["", "token", "valid", "no_at_fault_collisions", "drivable_area_compliance",
             "driving_direction_compliance", "traffic_light_compliance", "ego_progress",
             "time_to_collision_within_bound", "lane_keeping", "history_comfort", "two_frame_extended_comfort",
             "score"]


def _cfg(tmp_path: Path, *extra: str, tokens=TOKENS, name="exp", maps=None):
    overrides = [
        "agent=constant_velocity", "split=custom", "split.data_split=navsim_dev", f"split.data_root={ROOT}",
        f"split.maps_root={maps or ROOT / 'maps'}", "split.map_version=nuplan-maps-v1.0",
        f"split.scene_filter.tokens=[{','.join(tokens)}]", f"exp_root={tmp_path}", f"experiment_name={name}",
        f"metric_cache_path={tmp_path / 'mc'}", "progress=false", *extra,
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="run_pdm_score", overrides=overrides)


@pytest.mark.parametrize("scorer,header,average", [("pdms", V1_HEADER, "average"),
                                                   ("epdms", V2_HEADER, "average_all_frames")])
def test_csv_has_the_devkit_columns_and_average_row(tmp_path, scorer, header, average):
    path = run_pdm_score.run(_cfg(tmp_path, f"scorer={scorer}"))
    assert path.parent == tmp_path / "exp" and path.suffix == ".csv"
    with open(path) as fh:
        assert fh.readline().strip().split(",") == header
    df = pd.read_csv(path, index_col=0)
    assert set(df["token"].iloc[:-1]) == set(TOKENS)
    assert df["token"].iloc[-1] == average
    body = df.iloc[:-1]
    assert body["valid"].all()
    assert np.isclose(df["score"].iloc[-1], body["score"].mean())
    assert not list((tmp_path / "exp").glob("partial_*"))


def test_interrupted_run_resumes_to_the_same_csv(tmp_path):
    full = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", name="full")), index_col=0)
    cfg = _cfg(tmp_path, "scorer=epdms", name="resumed")
    partial = run_pdm_score.partial_path(cfg)
    partial.parent.mkdir(parents=True)
    from omegaconf import OmegaConf

    # an interrupted run: two rows written to the partial file, then the process died (torn last line)
    rows = run_pdm_score.score_chunk(OmegaConf.to_container(cfg, resolve=True), TOKENS[:2])
    for row in rows:
        E.append_partial(partial, row)
    with open(partial, "a") as fh:
        fh.write('{"token": "4db1a6c19d7a6e9e", "val')
    resumed = pd.read_csv(run_pdm_score.run(cfg), index_col=0)
    pd.testing.assert_frame_equal(full, resumed)


def test_bad_trajectories_and_unknown_tokens_become_invalid_rows(tmp_path):
    good = json.loads((ROOT / "trajectories.json").read_text())
    data = {
        TOKENS[0]: [[float("nan"), 0.0, 0.0]] * 8,  # NaN
        TOKENS[1]: good[TOKENS[1]][:5],  # wrong number of poses
        TOKENS[2]: good[TOKENS[2]],  # fine
        # TOKENS[3] missing from the file
    }
    path = tmp_path / "traj.json"
    path.write_text(json.dumps(data))
    tokens = TOKENS + ["ffffffffffffffff"]  # not a scene of the split
    cfg = _cfg(tmp_path, "agent=trajectory_file", f"agent.path={path}", "scorer=pdms", tokens=tokens)
    df = pd.read_csv(run_pdm_score.run(cfg), index_col=0).set_index("token")
    assert df.loc[TOKENS[2], "valid"]
    for token in (TOKENS[0], TOKENS[1], TOKENS[3], "ffffffffffffffff"):
        assert not df.loc[token, "valid"], token
        assert np.isnan(df.loc[token, "score"])
    assert not df.loc["average", "valid"]


def test_missing_map_stops_the_run_before_any_token(tmp_path):
    from eupe.config_errors import ConfigError

    empty = tmp_path / "no_maps"
    empty.mkdir()
    with pytest.raises(ConfigError, match="us-pa-pittsburgh-hazelwood.*nuplan-maps-v1.0.json"):
        run_pdm_score.run(_cfg(tmp_path, "scorer=pdms", maps=empty, tokens=TOKENS[:2]))
    assert not (tmp_path / "mc").exists()  # no metric cache was started


def test_ray_worker_gives_the_sequential_csv(tmp_path):
    pytest.importorskip("ray", reason="ray is an optional extra (pip install ray)")
    seq = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", name="seq")), index_col=0)
    ray_df = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "scorer=epdms", "worker=ray", "worker.tokens_per_task=2",
                                                name="ray")), index_col=0)
    pd.testing.assert_frame_equal(seq, ray_df)


def test_sidecar_describes_the_run(tmp_path):
    cfg = _cfg(tmp_path, "scorer=pdms", tokens=TOKENS[:2] + ["ffffffffffffffff"])
    csv_path = run_pdm_score.run(cfg)
    sidecar = json.loads(csv_path.with_suffix(".json").read_text())
    assert sidecar["agent"] == "ConstantVelocityAgent"
    assert sidecar["backbone"] == {"name": None, "weights_source": None}  # a rule-based agent has no backbone
    assert sidecar["planner_weights"] == "none (rule-based)"
    assert sidecar["corruption"] == {"name": "none", "severity": 0, "cameras": "all", "seed": 0}
    assert sidecar["split"] == "navsim_dev" and sidecar["scorer"] == "pdms"
    assert sidecar["num_tokens"] == 3 and sidecar["num_valid"] == 2  # the unknown token is an invalid row


def test_sidecar_of_a_backbone_agent_is_what_the_robustness_report_reads(tmp_path):
    from types import SimpleNamespace

    from navsim_agents.run_robustness_report import _meta_from_mapping

    cfg = _cfg(tmp_path, "backbone=eupe-s", "corruption=fog", "corruption.severity=4", "corruption.seed=7")
    agent = SimpleNamespace(name=lambda: "RAPAgent", backbone=SimpleNamespace(weights_source="/w/eupe-s.pt"),
                            _loaded_from="/w/rap.ckpt")
    rows = [{"token": "a", "valid": True}, {"token": "b", "valid": False}]
    sidecar = run_pdm_score.run_sidecar(cfg, agent, rows)
    assert sidecar["backbone"] == {"name": "eupe-s", "weights_source": "/w/eupe-s.pt"}
    assert sidecar["planner_weights"] == "/w/rap.ckpt"
    assert sidecar["corruption"] == {"name": "fog", "severity": 4, "cameras": "all", "seed": 7}
    assert (sidecar["num_tokens"], sidecar["num_valid"]) == (2, 1)
    meta = _meta_from_mapping(json.loads(json.dumps(sidecar)), "sidecar")
    assert (meta.backbone, meta.weights_source, meta.corruption, meta.severity, meta.planner_weights) == \
        ("eupe-s", "/w/eupe-s.pt", "fog", 4, "/w/rap.ckpt")


def test_partial_file_is_keyed_by_the_run_configuration(tmp_path):
    base = run_pdm_score.partial_path(_cfg(tmp_path, "corruption=fog", "corruption.severity=1"))
    assert base == run_pdm_score.partial_path(_cfg(tmp_path, "corruption=fog", "corruption.severity=1"))
    for extra in (("corruption=fog", "corruption.severity=3"), ("corruption=rain", "corruption.severity=1"),
                  ("corruption=fog", "corruption.severity=1", "backbone=eupe-s"),
                  ("corruption=fog", "corruption.severity=1", "scorer=epdms"),
                  ("corruption=fog", "corruption.severity=1", "corruption.seed=1")):
        other = run_pdm_score.partial_path(_cfg(tmp_path, *extra))
        assert other.parent == base.parent and other != base, extra


def test_sweep_jobs_sharing_a_folder_do_not_resume_from_each_other(tmp_path):
    clean = _cfg(tmp_path, "scorer=pdms", tokens=TOKENS[:2])
    other = _cfg(tmp_path, "scorer=pdms", "corruption.seed=5", tokens=TOKENS[:2])
    foreign = run_pdm_score.partial_path(other)
    foreign.parent.mkdir(parents=True)
    # rows of an interrupted job of another configuration (impossible values, so a mix-up shows)
    for token in TOKENS[:2]:
        E.append_partial(foreign, {"token": token, "valid": True, "no_at_fault_collisions": 0.0,
                                   "drivable_area_compliance": 0.0, "ego_progress": 0.0,
                                   "time_to_collision_within_bound": 0.0, "comfort": 0.0,
                                   "driving_direction_compliance": 0.0, "score": -7.0})
    df = pd.read_csv(run_pdm_score.run(clean), index_col=0)
    assert (df["score"].iloc[:-1] >= 0).all()
    assert len(E.read_partial(foreign)) == 2  # the other job's rows are left for it to resume from


@pytest.mark.parametrize("synthetic", [True, False])
def test_corrupted_synthetic_scenes_pass_the_scene(monkeypatch, synthetic):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import navsim_agents.data.scene_raster as scene_raster

    seen = {}

    def fake_apply(agent_input, cfg_corruption, seed_key="", *, scene=None):
        seen.update(seed_key=seed_key, scene=scene)
        return agent_input

    monkeypatch.setattr(scene_raster, "corrupt_agent_input", fake_apply)
    cfg = OmegaConf.create({"corruption": {"name": "fog", "severity": 2, "cameras": "all", "seed": 0},
                            "split": {"synthetic": synthetic}, "seed": 0})
    loader = SimpleNamespace(get_agent_input_from_token=lambda t: "input", get_scene_from_token=lambda t: f"scene {t}")
    agent = SimpleNamespace(requires_scene=False, compute_trajectory=lambda agent_input: agent_input)
    assert run_pdm_score._trajectory_fn(agent, loader, "tok", cfg)() == "input"
    assert seen == {"seed_key": "tok", "scene": "scene tok" if synthetic else None}


def test_stale_metric_cache_formats_are_rebuilt(tmp_path):
    from navsim_agents.data.scene_loader import load_log
    from navsim_agents.scoring.metric_cache import scene_frames
    from navsim_agents.scoring.metric_cache_file import CACHE_FORMAT_VERSION, MetricCache

    log = next(p for p in sorted((ROOT / "navsim_logs" / "navsim_dev").glob("*.pkl")) if "00121_00147" in p.name)
    frames = scene_frames(load_log(log), TOKENS[0])
    path = E.ensure_metric_cache(frames, tmp_path, str(ROOT / "maps"), "nuplan-maps-v1.0")
    assert MetricCache.stored_format_version(path) == CACHE_FORMAT_VERSION
    # rewrite it as an older format: loading refuses it, ensure_metric_cache recomputes it
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta_json"].tobytes().decode())
    meta["format_version"] = CACHE_FORMAT_VERSION - 1
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ValueError, match="rebuild"):
        MetricCache.load(path)
    assert E.ensure_metric_cache(frames, tmp_path, str(ROOT / "maps"), "nuplan-maps-v1.0") == path
    assert MetricCache.load(path).meta["token"] == TOKENS[0]


def test_metric_caching_builds_then_reuses(tmp_path):
    from navsim_agents import run_metric_caching

    overrides = ["split=custom", "split.data_split=navsim_dev", f"split.data_root={ROOT}",
                 f"split.maps_root={ROOT / 'maps'}", "split.map_version=nuplan-maps-v1.0",
                 f"split.scene_filter.tokens=[{','.join(TOKENS[:2])}]", f"exp_root={tmp_path}",
                 f"metric_cache_path={tmp_path / 'mc'}", "progress=false"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="run_metric_caching", overrides=overrides)
    first = run_metric_caching.run(cfg)
    second = run_metric_caching.run(cfg)
    assert (first["built"], first["reused"], first["failed"]) == (2, 0, 0)
    assert (second["built"], second["reused"], second["failed"]) == (0, 2, 0)


def test_metric_cache_file_round_trips_every_array(tmp_path):
    from navsim_agents.scoring.metric_cache_file import MetricCache

    arrays = {"scalar": np.float64(2.5) * np.ones(()), "empty": np.zeros((0, 4, 2)), "mask": np.array([[True, False]]),
              "odd": np.arange(3, dtype=np.int32), "rings": np.random.default_rng(0).normal(size=(5, 4, 2))}
    MetricCache({"token": "t"}, arrays).save(tmp_path / "t.npz")
    loaded = MetricCache.load(tmp_path / "t.npz")
    assert loaded.meta["token"] == "t" and set(loaded.arrays) == set(arrays)
    for name, value in arrays.items():
        assert loaded.arrays[name].dtype == value.dtype and loaded.arrays[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded.arrays[name], value)
    loaded.arrays["rings"][0, 0, 0] = 1.0  # writable, as np.load's arrays
