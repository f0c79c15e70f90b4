"""Closed-loop robustness sweep and report: hand-made cells, the RoboBEV preset, resume, the entry point."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bench2drive import run_closed_loop, run_robustness_report, run_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _cell(root: Path, backbone: str, name: str, ds: float, *, corruption="none", severity=0, fault="none",
          fault_severity=0, latency="none", latency_ms=None, weights="planner: /ck.ckpt; backbone: /w.pt"):
    d = root / backbone / name
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({
        "backbone": backbone, "corruption": corruption, "severity": severity, "sensor_fault": fault,
        "fault_severity": fault_severity, "latency": latency, "latency_ms": latency_ms, "seed": 0}))
    (d / "metrics.json").write_text(json.dumps({
        "driving_score": ds / 220 * 2, "success_rate": 0.0, "eval_num": 2, "weights": weights,
        "abilities": {"Overtaking": 0.5, "Merging": None, "Emergency_Brake": 1.0, "Give_Way": None,
                      "Traffic_Signs": None, "mean": 0.75},
        "corrected": {"driving_score": ds, "success_rate": 0.5, "denominator": 2}}))


def test_report_numbers_equal_hand_computation(tmp_path):
    root = tmp_path / "sweep"
    _cell(root, "a", "none_s0", 80.0)
    _cell(root, "a", "fog_s1", 60.0, corruption="fog", severity=1)
    _cell(root, "a", "fog_s3", 40.0, corruption="fog", severity=3)
    _cell(root, "a", "none_s0_lat100ms", 50.0, latency="fixed", latency_ms=100.0)  # not in retained / CE
    _cell(root, "b", "none_s0", 90.0)
    _cell(root, "b", "fog_s1", 81.0, corruption="fog", severity=1)
    _cell(root, "b", "fog_s3", 45.0, corruption="fog", severity=3)
    _cell(root, "b", "fault-frame_drop_s2", 72.0, fault="frame_drop", fault_severity=2)
    _cell(root, "b", "none_s0_lat100ms", 70.0, latency="fixed", latency_ms=100.0)
    (root / "b" / "unfinished").mkdir()
    (root / "b" / "unfinished" / "cell.json").write_text("{}")
    res = run_robustness_report.build_report([root], baseline="a")
    s = res["summary"].set_index("backbone")
    assert s.loc["a", "clean_DS"] == pytest.approx(80.0)
    assert s.loc["a", "retained_DS"] == pytest.approx((60 + 40) / 2 / 80)  # 0.625
    assert s.loc["b", "retained_DS"] == pytest.approx((81 + 45 + 72) / 3 / 90)
    # CE_fog(b) = ((1 - .81) + (1 - .45)) / ((1 - .6) + (1 - .4)) = 0.74; relative: (.09 + .45) / (.2 + .4) = 0.9
    assert s.loc["b", "CE_fog"] == pytest.approx(0.74)
    assert s.loc["a", "CE_fog"] == pytest.approx(1.0)
    assert s.loc["b", "relative_mCE"] == pytest.approx(0.9)  # the baseline has no frame-drop cell: fog only
    assert s.loc["b", "mCE"] == pytest.approx(0.74)
    t = res["table"]
    assert set(t["corruption"]) == {"none", "fog", "fault-frame_drop"}
    assert sorted(t.loc[t["backbone"] == "b", "latency_ms"]) == [0.0, 0.0, 0.0, 0.0, 100.0]
    assert any("unfinished: not finished" in x for x in res["skipped"])
    for f in ("closed_loop_table.csv", "closed_loop_summary.csv", "ds_vs_severity.png", "ds_vs_latency.png"):
        assert (res["out"] / f).is_file()
    assert "/w.pt" in (res["out"] / "closed_loop_report.md").read_text()
    with pytest.raises(KeyError, match="baseline backbone 'c' is not in the sweep"):
        run_robustness_report.build_report([root], baseline="c")


def test_report_refuses_random_weights_from_two_seeds(tmp_path):
    from eupe.config_errors import RunFailed

    random = "planner: random (no agent.checkpoint); backbone: random"
    _cell(tmp_path, "a", "none_s0", 80.0, weights=random)
    _cell(tmp_path, "a", "fog_s1", 60.0, corruption="fog", severity=1, weights=random)
    cell = json.loads((tmp_path / "a" / "fog_s1" / "cell.json").read_text())
    (tmp_path / "a" / "fog_s1" / "cell.json").write_text(json.dumps({**cell, "seed": 1}))
    with pytest.raises(RunFailed, match="backbone a has random weights"):
        run_robustness_report.build_report([tmp_path])


def _sweep_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("run_sweep", overrides=[f"sweep_dir={tmp_path / 'sweep'}", *overrides])


def test_robobev_preset_maps_eight_corruptions_at_three_levels(tmp_path):
    cfg = _sweep_cfg(tmp_path, "corruption_set=robobev", "backbones=[eupe-t,eupe-s]", "latencies_ms=[0,100]")
    cells = run_sweep.plan_cells(cfg)
    names = {c.name for c in cells if c.backbone == "eupe-t"}
    assert len(names) == 2 + 8 * 3  # clean at two latencies + RoboBEV's 8 x 3 (docs/CREATE.md levels)
    assert {"low_light_s2", "low_light_s3", "low_light_s4", "snow_s1", "snow_s3", "fault-camera_crash_s5",
            "fault-frame_drop_s4", "jpeg_s2", "none_s0_lat100ms"} <= names
    assert len(cells) == 2 * 26


def test_sweep_resume_reruns_only_unfinished_cells(tmp_path, monkeypatch):
    cfg = _sweep_cfg(tmp_path, "corruption_set=none", "backbones=[eupe-t]", "latencies_ms=[0,3000]",
                     "+corruption_set.cells=[{kind: sensor_fault, name: gnss_noise, levels: {easy: 2}}]",
                     "overrides=['agent.planner=expert','closed_loop.scenario_types=[HardBreakRoute]',"
                     "'closed_loop.max_ticks=400','closed_loop.route_length=60.0','progress=false']")
    ran = []
    real = run_closed_loop.run_raster

    def counting(cfg, out, perturbations):
        ran.append(Path(out).name)
        return real(cfg, out, perturbations)

    monkeypatch.setattr(run_closed_loop, "run_raster", counting)
    results = run_sweep.run_sweep(cfg)
    assert sorted(ran) == ["fault-gnss_noise_s2", "none_s0", "none_s0_lat3000ms"]
    assert all(r["status"] == "finished" for r in results)
    clean = json.loads((tmp_path / "sweep" / "eupe-t" / "none_s0" / "metrics.json").read_text())
    late = json.loads((tmp_path / "sweep" / "eupe-t" / "none_s0_lat3000ms" / "metrics.json").read_text())
    assert clean["corrected"]["driving_score"] == 100.0 and late["corrected"]["driving_score"] == 60.0
    # a killed sweep: one cell never finished; the rerun runs that cell only
    (tmp_path / "sweep" / "eupe-t" / "fault-gnss_noise_s2" / "metrics.json").unlink()
    ran.clear()
    run_sweep.run_sweep(cfg)
    assert ran == ["fault-gnss_noise_s2"]
    report = run_robustness_report.build_report([tmp_path / "sweep"])
    assert len(report["table"]) == 3 and report["table"]["weights_source"].iloc[0].startswith("privileged")


def test_bad_setting_stops_the_entry_point_before_any_simulation(tmp_path):
    for overrides, message in [
        (["corruption=fog", "corruption.severity=7"], r"corruption.severity \(corruption=fog\)=7"),
        (["sensor_fault=gnss_noise", "sensor_fault.severity=0"], r"sensor_fault.severity \(gnss_noise\)=0"),
        (["latency=fixed", "latency.ms=-1"], r"latency.ms=-1.0 is not allowed"),
        (["latency=measured", "latency.profile=cpu-2core", "backbone=dinov3-l"],
         "has no row for backbone 'dinov3-l'"),
        (["agent.planner=expert", "closed_loop=carla"], "use closed_loop=raster"),
    ]:
        out = tmp_path / "x"
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose("run_closed_loop", overrides=[f"output_dir={out}", *overrides])
        with pytest.raises(ValueError, match=message):
            run_closed_loop.run(cfg)
        assert not out.exists()  # nothing started


def test_a_cell_folder_is_not_reused_for_other_settings(tmp_path):
    from eupe.config_errors import ConfigError

    base = [f"output_dir={tmp_path / 'cell'}", "agent.planner=expert", "closed_loop.scenario_types=[HardBreakRoute]",
            "closed_loop.max_ticks=20", "progress=false"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        first = compose("run_closed_loop", overrides=[*base, "sensor_fault=gnss_noise", "sensor_fault.severity=2"])
        other = compose("run_closed_loop", overrides=[*base, "sensor_fault=gnss_noise", "sensor_fault.severity=3"])
    m = run_closed_loop.run(first)
    assert m["conditions"] == "sensor fault gnss_noise severity 2"
    assert run_closed_loop.run(first) == json.loads((tmp_path / "cell" / "metrics.json").read_text())  # skipped
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(fault_severity\)"):
        run_closed_loop.run(other)
