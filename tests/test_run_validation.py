"""A wrong setting stops a run before any work with one message; a run where nothing was scored fails."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import conformance_path
from hydra import compose, initialize_config_dir

from eupe.config_errors import ConfigError, RunFailed
from navsim_agents import run_metric_caching, run_pdm_score

REPO = Path(__file__).resolve().parents[1]
ROOT = conformance_path("navsim_dev")
TOKENS = ["4e1b0dbeff2032d7", "5cc0d0f851085ef2"]
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"conformance set not found at {ROOT}")


def _cfg(tmp_path: Path, *extra: str, config: str = "run_pdm_score", data_root: Path = ROOT):
    overrides = ["split=custom", "split.data_split=navsim_dev", f"split.data_root={data_root}",
                 f"split.maps_root={ROOT / 'maps'}", f"split.scene_filter.tokens=[{','.join(TOKENS)}]",
                 f"exp_root={tmp_path}", f"metric_cache_path={tmp_path / 'mc'}", "progress=false", *extra]
    if config == "run_pdm_score":
        overrides = ["agent=constant_velocity", "experiment_name=exp", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose(config_name=config, overrides=overrides)


@pytest.mark.parametrize("overrides,message", [
    (["corruption=fog", "corruption.name=smog"], "corruption='smog' is unknown; choose one of: none, .*fog"),
    (["corruption=fog", "corruption.severity=0"], r"corruption.severity=0 is out of range: use 1..5"),
    (["corruption=fog", "corruption.severity=6"], r"corruption.severity=6 is out of range: use 1..5"),
    (["corruption=fog", "corruption.severity=2.5"], r"corruption.severity=2.5 must be an integer 1..5"),
    (["corruption=fog", "corruption.severity=high"], r"corruption.severity='high' must be an integer 1..5"),
    (["corruption.severity=3"], r"corruption.severity=3 with corruption=none"),
    (["corruption=fog", "corruption.cameras=[cam_f0,cam_x9]"], r"unknown camera\(s\) \['cam_x9'\]"),
    (["split.scene_filter.max_scenes=0"], r"max_scenes=0 must be an integer >= 1"),
    (["seed=-1"], r"seed=-1 must be a non-negative integer"),
    (["worker.name=threads"], r"worker='threads' is unknown; choose one of sequential, ray"),
])
def test_bad_setting_stops_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_pdm_score.run(_cfg(tmp_path, *overrides))
    assert not (tmp_path / "mc").exists() and not (tmp_path / "exp").exists()


def test_empty_log_folder_is_a_setting_error(tmp_path):
    (tmp_path / "data" / "navsim_logs" / "navsim_dev").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"split navsim_dev has no scenes in .*navsim_logs/navsim_dev"):
        run_pdm_score.run(_cfg(tmp_path, "split.scene_filter.tokens=null", data_root=tmp_path / "data"))
    with pytest.raises(ConfigError, match="has no scenes"):
        run_metric_caching.run(_cfg(tmp_path, "split.scene_filter.tokens=null", config="run_metric_caching",
                                    data_root=tmp_path / "data"))


def test_trajectory_file_of_the_wrong_shape_for_every_token_is_one_error(tmp_path):
    path = tmp_path / "traj.json"
    path.write_text(json.dumps({t: [[0.0, 0.0]] * 8 for t in TOKENS}))  # [x, y] without heading
    with pytest.raises(ConfigError, match=r"traj.json: no token has 8 poses of \[x, y, heading\].*shape \(8, 2\)"):
        run_pdm_score.run(_cfg(tmp_path, "agent=trajectory_file", f"agent.path={path}"))


def test_run_where_every_token_failed_raises_after_writing_the_rows(tmp_path):
    path = tmp_path / "traj.json"
    path.write_text(json.dumps({t: [[float("nan"), 0.0, 0.0]] * 8 for t in TOKENS}))
    with pytest.raises(RunFailed, match=r"none of the 2 tokens could be scored \(2 x .*NaN"):
        run_pdm_score.run(_cfg(tmp_path, "agent=trajectory_file", f"agent.path={path}"))
    assert len(list((tmp_path / "exp").glob("*.csv"))) == 1  # nothing computed is lost


def test_entry_point_exits_non_zero_with_one_line(tmp_path):
    cmd = [sys.executable, str(REPO / "navsim_agents" / "run_pdm_score.py"), "agent=constant_velocity",
           "corruption=fog", "corruption.severity=9", f"exp_root={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "configuration error: corruption.severity=9 is out of range: use 1..5 " \
                                  "(no corruption is corruption=none)"


# ---- caches that heal -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_damaged_metric_cache_entry_is_rebuilt_and_the_score_unchanged(tmp_path, damage, caplog):
    import pandas as pd

    first = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "experiment_name=first")), index_col=0)
    entry = next((tmp_path / "mc").rglob(f"{TOKENS[0]}.npz"))
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    second = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "experiment_name=second")), index_col=0)
    pd.testing.assert_frame_equal(first, second)
    assert entry.read_bytes() == data  # rebuilt to the same bytes
    assert any(str(entry) in r.getMessage() and TOKENS[0] in r.getMessage() for r in caplog.records)


def test_metric_caching_force_rebuilds_a_truncated_entry(tmp_path):
    cfg = _cfg(tmp_path, config="run_metric_caching")
    assert run_metric_caching.run(cfg)["built"] == 2
    entry = next((tmp_path / "mc").rglob(f"{TOKENS[1]}.npz"))
    entry.write_bytes(entry.read_bytes()[:100])
    stats = run_metric_caching.run(cfg)
    assert (stats["reused"], stats["rebuilt"], stats["failed"]) == (1, 1, 0)
    entry.write_bytes(entry.read_bytes()[:100])
    forced = run_metric_caching.run(_cfg(tmp_path, "force=true", config="run_metric_caching"))
    assert (forced["reused"], forced["rebuilt"], forced["failed"]) == (0, 2, 0)
    assert not list((tmp_path / "mc").rglob("*tmp*"))  # no temporary file left behind


def test_unreadable_entry_without_its_inputs_is_an_invalid_row_naming_the_file(tmp_path, monkeypatch, caplog):
    import pandas as pd

    from navsim_agents.scoring import evaluate

    run_pdm_score.run(_cfg(tmp_path, "experiment_name=first"))
    entry = next((tmp_path / "mc").rglob(f"{TOKENS[0]}.npz"))
    entry.write_bytes(b"PK\x03\x04 not a zip")

    def no_inputs(*args, **kwargs):
        raise FileNotFoundError("map file gone")

    monkeypatch.setattr(evaluate, "compute_metric_cache", no_inputs)
    df = pd.read_csv(run_pdm_score.run(_cfg(tmp_path, "experiment_name=second")), index_col=0).set_index("token")
    assert not df.loc[TOKENS[0], "valid"] and df.loc[TOKENS[1], "valid"]
    assert any(f"metric cache {entry} of token {TOKENS[0]} is unusable" in r.getMessage()
               and "could not be rebuilt: FileNotFoundError: map file gone" in r.getMessage() for r in caplog.records)


def test_console_summary_names_the_corruption_and_the_seed(tmp_path, capsys):
    run_pdm_score.run(_cfg(tmp_path, "corruption=fog", "corruption.severity=2", "corruption.cameras=[cam_f0]",
                           "seed=7"))
    out = capsys.readouterr().out
    assert "PDMS of ConstantVelocityAgent on navsim_dev, fog severity 2 on cam_f0, seed 7" in out
