"""The leaderboard agent on synthetic sensor data and in the embedded simulator."""

import numpy as np
import pytest

from bench2drive import agent as agent_mod
from bench2drive import geo
from bench2drive.sim.route_runner import SimSettings, global_plan, run_routes
from bench2drive.sim.scenarios import RoadPath, synthetic_routes


def _conf(tmp_path):
    p = tmp_path / "agent.yaml"
    p.write_text("rig: rap4\nimage_width: 64\nimage_height: 36\nplanner: constant_velocity\n")
    return str(p)


def test_run_step_returns_vehicle_control(tmp_path):
    a = agent_mod.RAPLeaderboardAgent()
    a.setup(_conf(tmp_path) + "+route0")
    assert {s["id"] for s in a.sensors()} >= {"CAM_F0", "CAM_B0", "IMU", "GPS", "SPEED"}
    path = RoadPath(np.array([[0.0, 0.0], [100.0, 0.0]]))
    a.set_global_plan(*global_plan(path, None))
    bgra = np.zeros((36, 64, 4), np.uint8)
    bgra[..., :3] = (10, 20, 200)  # CARLA delivers BGRA
    data = {c.id: (0, bgra) for c in a.rig}
    data["GPS"] = (0, np.array([*geo.local_to_gnss(np.array([0.0, 0.0])), 0.0]))
    data["IMU"] = (0, np.array([0, 0, 9.81, 0, 0, 0, geo.yaw_to_compass(0.0)]))
    data["SPEED"] = (0, {"speed": 3.0})
    feats = a.build_features(data, np.zeros(2), 0.0, 3.0, np.zeros(2), geo.ROAD_OPTION["LANEFOLLOW"])
    assert tuple(feats["camera_feature"].shape) == (1, 4, 3, 64, 64)  # 36 padded to 64
    # RGB (200, 20, 10) normalised with ImageNet statistics on the 0..255 scale; padded rows stay zero
    rgb = (np.array([200.0, 20.0, 10.0]) - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    np.testing.assert_allclose(feats["camera_feature"][0, 2, :, 10, 10].numpy(), rgb, rtol=1e-5)
    assert float(feats["camera_feature"][0, :, :, 36:].abs().max()) == 0.0
    assert tuple(feats["ego_status"].shape) == (1, agent_mod.HISTORY, 11)
    assert feats["ego_status"][0, -1, 7:].tolist() == [0.0, 1.0, 0.0, 0.0]  # straight
    ctrl = a.run_step(data, 0.0)
    assert abs(ctrl.steer) < 1e-6 and 0.0 <= ctrl.throttle <= 0.75
    carla = pytest.importorskip("carla", reason="carla client (the `carla` extra) not installed")
    assert isinstance(ctrl, carla.VehicleControl)


def test_agent_bad_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("planer: rap\n")
    with pytest.raises(KeyError, match="unknown keys"):
        agent_mod.RAPLeaderboardAgent().setup(str(p))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        agent_mod.RAPLeaderboardAgent().setup(str(tmp_path / "none.yaml"))


def test_agent_drives_in_simulator(tmp_path):
    routes = synthetic_routes(["ParkedObstacle"], length=60.0)
    conf = _conf(tmp_path)

    def make(name):
        a = agent_mod.RAPLeaderboardAgent()
        a.setup(conf + "+" + name)
        return a

    from bench2drive import rig

    cams = rig.build_rig("rap4", width=64, height=36)
    res = run_routes(routes, make, checkpoint=tmp_path / "r.json", save_path=tmp_path / "mi",
                     settings=SimSettings(rig=cams, max_ticks=200))
    rec = res["_checkpoint"]["records"][0]
    assert rec["scores"]["score_route"] > 5.0  # it moved along the route in 10 s
    assert (tmp_path / "mi" / rec["save_name"] / "metric_info.json").is_file()


def test_carla_runner_needs_roots(monkeypatch, tmp_path):
    from bench2drive import carla_runner

    monkeypatch.delenv("CARLA_ROOT", raising=False)
    with pytest.raises(RuntimeError, match="CARLA_ROOT"):
        carla_runner.require_roots()
    (tmp_path / "CarlaUE4.sh").write_text("")
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path))
    monkeypatch.setenv("BENCH2DRIVE_ROOT", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="BENCH2DRIVE_ROOT"):
        carla_runner.require_roots()
    job = carla_runner.PartJob(index=2, routes_xml=tmp_path / "p.xml", checkpoint=tmp_path / "c.json",
                               save_path=tmp_path, agent_config=tmp_path / "a.yaml", gpu=2, port=30300,
                               tm_port=50300)
    cmd = carla_runner.evaluator_command(job, tmp_path)
    assert "--port=30300" in cmd and "--traffic-manager-port=50300" in cmd and "--resume=True" in cmd


def test_agent_geo_reference_keeps_metric_scale(tmp_path):
    from bench2drive.sim.route_runner import Location, Rotation, Transform

    a = agent_mod.RAPLeaderboardAgent()
    a.setup(_conf(tmp_path))
    xy = np.array([[100.0, 50.0], [300.0, -20.0]])
    ll = geo.local_to_gnss(xy, 42.0, 2.0)  # a town geo-referenced at (42, 2)
    cmd = geo.ROAD_OPTION["LANEFOLLOW"]
    a.set_global_plan([({"lat": p[0], "lon": p[1], "z": 0.0}, cmd) for p in ll],
                      [(Transform(Location(*p), Rotation()), cmd) for p in xy])
    a._init_route()
    assert a.lat_ref == pytest.approx(42.0, abs=1e-6)
    local = a.gps_to_local(ll)
    # relative geometry in metres is exact (the agents' lon_ref quirk only shifts x by a constant)
    assert local[1] - local[0] == pytest.approx(xy[1] - xy[0], abs=1e-3)
    assert local[0, 1] == pytest.approx(50.0, abs=1e-3)


def test_agent_localizes_the_simulated_ego(tmp_path):
    from bench2drive.sim.dynamics import EgoState
    from bench2drive.sim.route_runner import ClosedLoopSim, SimSettings

    route = synthetic_routes(["HardBreakRoute"], length=60.0)[0]  # starts at the origin
    sim = ClosedLoopSim(route, SimSettings(render=False))
    sim.ego = EgoState(x=12.0, y=1.5, yaw=0.3, speed=4.0)
    a = agent_mod.RAPLeaderboardAgent()
    a.setup(_conf(tmp_path))
    a.set_global_plan(*global_plan(sim.path, None))
    a._init_route()
    xy, yaw, speed, _ = a.localize(sim.sensors())
    assert xy == pytest.approx([12.0, 1.5], abs=1e-3) and yaw == pytest.approx(0.3) and speed == 4.0


def test_carla_part_restarts_after_a_crash(monkeypatch, tmp_path):
    """A part whose evaluator dies (server crash) is run again, with --resume, until it finishes."""
    from bench2drive import carla_runner

    carla_root, b2d = tmp_path / "carla", tmp_path / "b2d"
    carla_root.mkdir()
    (carla_root / "CarlaUE4.sh").write_text("")
    ev = b2d / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py"
    ev.parent.mkdir(parents=True)
    # fake evaluator: crashes on its first run, succeeds on the second; logs its arguments
    ev.write_text("import sys, pathlib\n"
                  "m = pathlib.Path(sys.argv[0]).with_name('ran')\n"
                  "n = int(m.read_text()) if m.exists() else 0\n"
                  "m.write_text(str(n + 1))\n"
                  "print(' '.join(sys.argv[1:]))\n"
                  "sys.exit(1 if n == 0 else 0)\n")
    monkeypatch.setenv("CARLA_ROOT", str(carla_root))
    monkeypatch.setenv("BENCH2DRIVE_ROOT", str(b2d))
    job = carla_runner.PartJob(index=0, routes_xml=tmp_path / "p.xml", checkpoint=tmp_path / "res" / "p0.json",
                               save_path=tmp_path / "save", agent_config=tmp_path / "a.yaml", gpu=0, port=30000,
                               tm_port=50000, max_restarts=3)
    (result,) = carla_runner.run_parts([job])
    assert result == {"part": 0, "returncode": 0, "attempts": 2}
    log = (tmp_path / "res" / "p0.log").read_text()
    assert log.count("--resume=True") == 2 and "--checkpoint=" + str(job.checkpoint) in log


def test_run_closed_loop_raster_entry_point(tmp_path):
    import json
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from bench2drive import run_closed_loop

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        cfg = compose("run_closed_loop", overrides=[
            f"output_dir={tmp_path}", "agent.planner=constant_velocity", "agent.image_width=64",
            "agent.image_height=36", "closed_loop.scenario_types=[VanillaSignalizedTurnEncounterRedLight]",
            "closed_loop.max_ticks=60"])
    run_closed_loop.run(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["simulator"] == "raster" and m["weights"].startswith("constant-velocity baseline") and m["seed"] == 0
    assert m["eval_num"] == 1 and set(m["abilities"]) >= {"Traffic_Signs", "mean"}
    assert (tmp_path / "results" / "part0.json").is_file() and (tmp_path / "agent.yaml").is_file()
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        bad = compose("run_closed_loop", overrides=[f"output_dir={tmp_path / 'b'}", "closed_loop.simulator=nope"])
    with pytest.raises(ValueError, match="unknown simulator 'nope'"):
        run_closed_loop.run(bad)
    with pytest.raises(SystemExit, match="configuration error: unknown simulator 'nope'"):
        run_closed_loop.main(bad)
    assert not (tmp_path / "b").exists()


def test_closed_loop_with_a_random_planner_is_the_same_for_the_same_seed(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from bench2drive import run_closed_loop

    configs = Path(__file__).resolve().parents[1] / "configs"

    def drive(name: str, seed: int) -> tuple[dict, str]:
        with initialize_config_dir(config_dir=str(configs), version_base=None):
            cfg = compose("run_closed_loop", overrides=[
                f"output_dir={tmp_path / name}", f"seed={seed}", "+backbone.overrides.depth=2",
                "agent.planner_config=tiny", "agent.image_width=64", "agent.image_height=36",
                "closed_loop.scenario_types=[ParkedObstacle]", "closed_loop.route_length=60",
                "closed_loop.max_ticks=30", "closed_loop.render=true"])
        m = run_closed_loop.run(cfg)
        (info,) = (tmp_path / name / "save").rglob("metric_info.json")
        return m, info.read_text()

    (m1, path1), (m2, path2), (_, path3) = drive("a", 5), drive("b", 5), drive("c", 6)
    assert m1["seed"] == 5 and "random" in m1["weights"]
    assert m1["per_route"] == m2["per_route"] and path1 == path2  # every pose of the ego, tick by tick
    assert path1 != path3  # another seed, another random planner
