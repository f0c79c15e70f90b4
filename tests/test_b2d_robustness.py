"""Closed-loop robustness: corruptions, sensor faults and latency inside the loop, checked from their definitions."""

import math

import numpy as np
import pytest

from bench2drive import agent as agent_mod
from bench2drive import geo, robustness
from bench2drive.robustness import ActionDelay, Perturbations, latency_ticks
from bench2drive.sim.route_runner import SimSettings, global_plan, run_routes
from bench2drive.sim.scenarios import RoadPath, synthetic_routes
from navsim_agents.agents.rap_features import preprocess_image
from rap_backbone.corruptions import corrupt, make_rng

W, H = 64, 36


class Capture:
    """A constant-velocity planner that keeps the features it was given; ``stop_from`` makes it plan a stop."""

    source = "test planner"

    def __init__(self, stop_from: int | None = None):
        self.features, self.calls, self.stop_from = [], 0, stop_from

    def __call__(self, features):
        import torch

        self.features.append({k: v.clone() for k, v in features.items()})
        self.calls += 1
        stop = self.stop_from is not None and self.calls > self.stop_from
        v = 0.0 if stop else 8.0
        t = torch.arange(1, 9, dtype=torch.float32)[None] * 0.5
        return {"trajectory": torch.stack([v * t, torch.zeros_like(t), torch.zeros_like(t)], dim=-1)}


def _agent(tmp_path, planner, extra: str = "", save_name: str = "RouteScenario_7_rep0_Town01_X_0_12_02_13_00_00"):
    p = tmp_path / "agent.yaml"
    p.write_text(f"rig: rap4\nimage_width: {W}\nimage_height: {H}\nplanner: constant_velocity\nseed: 3\n{extra}")
    a = agent_mod.RAPLeaderboardAgent(planner=planner)
    a.setup(f"{p}+{save_name}")
    a.set_global_plan(*global_plan(RoadPath(np.array([[0.0, 0.0], [200.0, 0.0]])), None))
    return a


def _clean_images(tick: int) -> dict:
    rng = np.random.default_rng(tick)  # a different clean frame every tick
    return {cam: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for cam in ("CAM_B0", "CAM_F0", "CAM_L0", "CAM_R0")}


def _input(images: dict, speed: float = 5.0) -> dict:
    data = {cam: (0, np.concatenate([rgb[..., ::-1], np.full((H, W, 1), 255, np.uint8)], axis=2))  # BGRA
            for cam, rgb in images.items()}
    data["GPS"] = (0, np.array([*geo.local_to_gnss(np.array([1.4, 0.0])), 0.0]))  # the centre at the origin
    data["IMU"] = (0, np.array([0, 0, 9.81, 0, 0, 0, geo.yaw_to_compass(0.0)]))
    data["SPEED"] = (0, {"speed": speed})
    return data


def test_corruption_reaches_the_planner_pixel_for_pixel_and_stays_over_frames(tmp_path):
    key = "RouteScenario_7_rep0_Town01_X_0"  # the save name without the evaluator's time stamp
    from bench2drive import rig

    k = {c.id: rig.intrinsics(c) for c in rig.build_rig("rap4", width=W, height=H)}
    for name in ("rain", "lens_dirt", "fog"):  # fog: the rig camera's ground-plane depth from its intrinsics
        cap = Capture()
        a = _agent(tmp_path, cap, f"corruption: {{name: {name}, severity: 3}}\n")
        history = {cam: [] for cam in ("CAM_B0", "CAM_F0", "CAM_L0", "CAM_R0")}
        for tick in range(21):
            a.run_step(_input(_clean_images(tick)), tick * 0.05)
        assert cap.calls == 3  # ticks 0, 10, 20 (2 Hz)
        for n, tick in enumerate((0, 10, 20)):
            clean = _clean_images(tick)
            for i, cam in enumerate(("CAM_B0", "CAM_F0", "CAM_L0", "CAM_R0")):  # the rig's planner order
                expected = corrupt(clean[cam], name, 3, rng=make_rng(3, key, cam),
                                   noise_rng=make_rng(3, key, cam, f"tick{tick}"), history=history[cam],
                                   frame_interval_s=0.5, intrinsics=k[cam])
                history[cam].append(clean[cam])
                want = preprocess_image(expected, scale=1.0)
                got = cap.features[n]["camera_feature"][0, i].numpy()
                np.testing.assert_array_equal(got, want)
                assert not np.array_equal(expected, clean[cam])
    # a static corruption keeps its layout: the same clean frame at two ticks gives the same corrupted frame
    same = _clean_images(0)["CAM_F0"]
    a = robustness.Perturbations.from_cfg(corruption={"name": "lens_dirt", "severity": 4}).for_route(
        "r", ["CAM_F0"], frame_interval_s=0.5)
    np.testing.assert_array_equal(a.camera("CAM_F0", same, 0), a.camera("CAM_F0", same, 10))
    rain = robustness.Perturbations.from_cfg(corruption={"name": "rain", "severity": 4}).for_route(
        "r", ["CAM_F0"], frame_interval_s=0.5)
    assert not np.array_equal(rain.camera("CAM_F0", same, 0), rain.camera("CAM_F0", same, 10))  # streaks move


def test_frame_drop_holds_the_last_good_frame():
    p = Perturbations.from_cfg(sensor_fault={"name": "frame_drop", "severity": 4}, seed=1).for_route(
        "route", ["CAM_F0"], frame_interval_s=0.5)
    frames = [np.full((4, 4, 3), t % 256, np.uint8) for t in range(400)]
    shown, last_good = [], None
    for t, f in enumerate(frames):
        out = p.camera("CAM_F0", f, t)
        fresh = out is f
        if fresh:
            last_good = f
        else:  # a dropped frame: the previous good frame, never a newer or a blank one
            assert last_good is not None and out is last_good
        shown.append(fresh)
    assert shown[0]  # nothing to hold at the first frame
    # severity 4 drops half of the frames: binomial(399, 0.5) within 4 standard deviations
    dropped = 399 - sum(shown[1:])
    assert abs(dropped - 0.5 * 399) < 4 * math.sqrt(399 * 0.25)


def test_camera_crash_blanks_exactly_one_camera_for_the_whole_route():
    cams = ["CAM_B0", "CAM_F0", "CAM_L0", "CAM_R0"]
    img = np.full((4, 4, 3), 200, np.uint8)
    crashed_by_route = set()
    for route in range(12):
        p = Perturbations.from_cfg(sensor_fault={"name": "camera_crash", "severity": 5}).for_route(
            f"route{route}", cams, frame_interval_s=0.5)
        black = {c for t in (0, 10, 200) for c in cams if not p.camera(c, img, t).any()}
        assert len(black) == 1  # severity 5: a crash on every route, one camera, every frame
        for c in set(cams) - black:
            assert (p.camera(c, img, 0) == 200).all()
        crashed_by_route |= black
    assert len(crashed_by_route) > 1  # the camera is drawn per route


@pytest.mark.parametrize("name, severity", [("gnss_noise", 3), ("speed_noise", 4), ("compass_noise", 2)])
def test_state_noise_has_the_configured_standard_deviation(name, severity):
    p = Perturbations.from_cfg(sensor_fault={"name": name, "severity": severity}, seed=5).for_route(
        "r", [], frame_interval_s=0.5)
    data = _input({}, speed=10.0)
    xy0 = geo.gnss_to_local(data["GPS"][1][:2])
    samples = []
    for t in range(3000):
        out = p.state(data, t)
        if name == "gnss_noise":
            samples.append(geo.gnss_to_local(out["GPS"][1][:2]) - xy0)
        elif name == "speed_noise":
            samples.append([out["SPEED"][1]["speed"] - 10.0])
        else:
            d = out["IMU"][1][-1] - data["IMU"][1][-1]
            samples.append([math.degrees((d + math.pi) % (2 * math.pi) - math.pi)])
    samples = np.asarray(samples)
    std = {"gnss_noise": robustness.GNSS_NOISE_STD_M, "speed_noise": robustness.SPEED_NOISE_STD_MPS,
           "compass_noise": robustness.COMPASS_NOISE_STD_DEG}[name][severity - 1]
    # 3000 samples: the sample std is within ~1.3% (1 sd); 8% is > 5 sd
    np.testing.assert_allclose(samples.std(axis=0), std, rtol=0.08)
    np.testing.assert_allclose(samples.mean(axis=0), 0.0, atol=5 * std / math.sqrt(3000))
    assert data["SPEED"][1]["speed"] == 10.0  # the simulator's own readings are not touched


def test_latency_ticks_and_the_action_fifo():
    assert [latency_ticks(ms) for ms in (0, 1, 50, 51, 100, 149.9, 1500)] == [0, 1, 1, 2, 2, 3, 30]
    q = ActionDelay()
    q.push("a", 2)
    q.push("b", 3)
    assert q.due(1) is None and q.due(2) == "a" and q.due(2) is None and q.due(10) == "b" and not q.pending


def test_rap_agent_plan_acts_k_ticks_after_its_observation(tmp_path):
    def brake_ticks(extra):
        a = _agent(tmp_path, Capture(stop_from=2), extra)  # plans 1, 2 drive on, plan 3 (tick 20) stops
        return [t for t in range(40) if a.run_step(_input(_clean_images(0), speed=6.0), t * 0.05).brake > 0]

    none = brake_ticks("")
    fixed = brake_ticks("latency: {mode: fixed, ms: 120}\n")  # ceil(120 / 50) = 3 ticks
    assert none[0] == 20 and none == list(range(20, 40))
    # until the first plan acts (ticks 0..2) the car is held; the stop planned at tick 20 acts at tick 23
    assert fixed == [0, 1, 2] + list(range(23, 40))


class BrakeAt:
    """Hand-built emergency brake: full throttle until the ego passes ``x_brake``, then full brake; records
    the ego state it observes each tick."""

    def __init__(self, x_brake: float):
        self.x_brake, self.states = x_brake, []

    def attach(self, sim):
        self.sim = sim

    def run_step(self, input_data, timestamp):
        from bench2drive.sim.expert import Control

        e = self.sim.ego
        self.states.append((e.x, e.speed))
        return Control(brake=1.0) if e.x >= self.x_brake else Control(throttle=0.75)


def _braking_distance(v: float) -> float:
    """Distance to stop from v under full brake with the throttle released (dynamics.step_ego: BRAKE_DECEL +
    ROLLING_DECEL per tick, trapezoidal position update)."""
    from bench2drive.sim.dynamics import BRAKE_DECEL, ROLLING_DECEL

    d, dt = 0.0, 1.0 / 20
    while v > 0:
        v_next = max(0.0, v - (BRAKE_DECEL + ROLLING_DECEL) * dt)
        d += 0.5 * (v + v_next) * dt
        v = v_next
    return d


def _drive(tmp_path, ms: float, inner=None, *, max_ticks: int = 400, route="HardBreakRoute"):
    from bench2drive.sim.expert import ExpertAgent

    p = Perturbations.from_cfg(latency={"mode": "fixed", "ms": ms} if ms else None)
    agents = []

    def make(name):
        a = ExpertAgent(p)
        a.setup(name)
        if inner is not None:
            a.expert = inner
        agents.append(a)
        return a

    routes = synthetic_routes([route], length=80.0)
    res = run_routes(routes, make, checkpoint=tmp_path / f"r{ms}.json", save_path=tmp_path / f"s{ms}",
                     on_sim=lambda sim: agents[-1].attach(sim), settings=SimSettings(max_ticks=max_ticks, render=False))
    return res["_checkpoint"]["records"][0]


def test_latency_moves_the_stopping_point_by_the_distance_of_k_ticks(tmp_path):
    ref, late = BrakeAt(12.0), BrakeAt(12.0)
    _drive(tmp_path, 0.0, ref, max_ticks=140)
    _drive(tmp_path, 200.0, late, max_ticks=140)  # k = 4 ticks
    k = 4
    x0, v0 = np.array(ref.states).T
    xk, vk = np.array(late.states).T
    t = int(np.argmax(x0 >= 12.0))  # the tick the brake is decided without latency
    # with latency the first control also acts k ticks late: the run is the same drive shifted by k ticks up to
    # its decision (at tick t + k, from the same position), and its brake acts at tick t + 2k
    assert (xk[:k] == 0).all()
    np.testing.assert_array_equal(xk[k: t + k + 1], x0[: t + 1])
    d = t + k
    assert vk[d + k] > vk[d + k - 1] and vk[d + k + 1] < vk[d + k]  # still accelerating until d + k, then braking
    assert v0[t + 1] < v0[t]  # without latency the brake acts at once
    stop0, stopk = x0[-1], xk[-1]
    assert v0[-1] == 0.0 and vk[-1] == 0.0
    np.testing.assert_allclose(stop0, x0[t] + _braking_distance(v0[t]), rtol=1e-9)
    travelled = xk[d + k] - xk[d]  # the distance of the k ticks the old control still acted
    np.testing.assert_allclose(stopk - stop0, travelled + _braking_distance(vk[d + k]) - _braking_distance(v0[t]),
                               rtol=1e-9)
    assert stopk - stop0 > travelled > 0


def test_expert_completes_without_latency_and_collides_with_a_long_one(tmp_path):
    clean = _drive(tmp_path, 0.0, max_ticks=1500)
    late = _drive(tmp_path, 3000.0, max_ticks=1500)
    assert clean["status"] == "Completed" and clean["scores"]["score_composed"] == 100.0
    assert len(late["infractions"]["collisions_vehicle"]) == 1
    assert late["scores"]["score_penalty"] == pytest.approx(0.6)  # COLLISION_VEHICLE (statistics_manager.py)
    assert late["scores"]["score_composed"] == pytest.approx(late["scores"]["score_route"] * 0.6)


@pytest.mark.parametrize("kwargs, message", [
    ({"corruption": {"name": "smog", "severity": 2}}, "corruption='smog' is unknown; choose one of: none, "),
    ({"corruption": {"name": "fog", "severity": 6}}, r"corruption.severity \(corruption=fog\)=6 .* 1..5"),
    ({"corruption": {"name": "fog", "severity": 0}}, r"=0 is not allowed; use an integer 1..5"),
    ({"sensor_fault": {"name": "gps_loss", "severity": 1}}, "sensor_fault='gps_loss' is unknown.*frame_drop"),
    ({"sensor_fault": {"name": "frame_drop", "severity": "3"}}, "use an integer 1..5"),
    ({"latency": {"mode": "fixed", "ms": -5}}, r"latency.ms=-5.0 is not allowed; give milliseconds >= 0"),
    ({"latency": {"mode": "fixed", "ms": "fast"}}, r"latency.ms='fast' is not a number"),
    ({"latency": {"mode": "sometimes"}}, "latency='sometimes' is unknown; choose one of: none, fixed, measured"),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Perturbations.from_cfg(**kwargs)


def test_measured_latency_reads_the_hardware_profile_table(tmp_path):
    table = tmp_path / "profiles.csv"
    table.write_text("profile,backbone,planner_config,image,latency_ms,where,how\n"
                     "cpu-test,eupe-t,small,4x192x108,130.0,a test machine,by hand\n")
    lat = robustness.Latency.from_cfg({"mode": "measured", "profile": "cpu-test"}, backbone="eupe-t",
                                      planner_config="small", table=table)
    assert lat.ms == 130.0 and lat.ticks() == 3
    with pytest.raises(ValueError, match=r"no row for backbone 'eupe-b' with planner 'small'; it has: eupe-t"):
        robustness.Latency.from_cfg({"mode": "measured", "profile": "cpu-test"}, backbone="eupe-b",
                                    planner_config="small", table=table)
    with pytest.raises(ValueError, match=r"latency.profile='gpu' is not in .*profiles: cpu-test, or 'live'"):
        robustness.Latency.from_cfg({"mode": "measured", "profile": "gpu"}, backbone="eupe-t",
                                    planner_config="small", table=table)
    live = robustness.Latency.from_cfg({"mode": "measured", "profile": "live"})
    assert live.ticks(0.26) == 6  # a 260 ms call acts 6 ticks later


def test_estimate_and_plot(tmp_path):
    from bench2drive import metrics
    from bench2drive.progress import estimate_run

    est = estimate_run([100.0, 20000.0], max_ticks=4000, tick_s=0.01, plan_s=0.5, plan_every=10)
    # 100 m at 5 m/s = 400 ticks; 20 km is capped at 4000; 4400 * 0.01 s + 440 planner calls * 0.5 s
    assert est.ticks == 4400 and est.seconds == pytest.approx(264.0)
    m = {"per_route": [], "driving_score": 0.0, "eval_num": 0, "denominator": 220, "success_rate": 0.0}
    assert metrics.plot_per_route(m, tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()
    m["per_route"] = [{"route_id": "RouteScenario_3_rep0", "scenario_type": "HardBreakRoute", "town": "Town12",
                       "status": "Completed", "score_composed": 100.0, "success": True}]
    assert metrics.plot_per_route(m, tmp_path / "one.png", title="eupe-t").is_file()


def test_progress_bars_show_ticks_completion_and_infractions(tmp_path, capsys):
    from bench2drive.progress import RunProgress
    from bench2drive.sim.expert import ExpertAgent

    p = Perturbations.from_cfg(latency={"mode": "fixed", "ms": 3000})
    agents = []

    def make(name):
        agents.append(ExpertAgent(p))
        agents[-1].setup(name)
        return agents[-1]

    run_routes(synthetic_routes(["HardBreakRoute"], length=60.0), make, checkpoint=tmp_path / "r.json",
               save_path=tmp_path / "s", on_sim=lambda sim: agents[-1].attach(sim),
               settings=SimSettings(max_ticks=400, render=False), progress=RunProgress(enabled=True))
    err = capsys.readouterr().err
    assert "routes: 100%" in err and "RouteScenario_" in err and "tick" in err
    assert "RC " in err and "infractions 1" in err and "game " in err  # the collision shows while it drives
