"""Bench2Drive metrics on hand-made results files, and the embedded simulator with scripted controllers."""

import json
import math

import numpy as np
import pytest

from bench2drive import abilities, metrics
from bench2drive.results import ResultsFileError, new_route_record
from bench2drive.sim.expert import ScriptedExpert
from bench2drive.sim.route_runner import SimSettings, run_routes
from bench2drive.sim.scenarios import synthetic_routes


def _record(rid, scenario, score, status, **infr):
    r = new_route_record(route_id=f"RouteScenario_{rid}_rep0", scenario_name=f"{scenario}_1", weather_id=0,
                         save_name=f"s{rid}", town_name="Town12")
    r["index"] = 0
    r["status"] = status
    r["scores"] = {"score_route": score, "score_penalty": 1.0, "score_composed": score}
    for k, v in infr.items():
        r["infractions"][k] = v
    return r


def _write(tmp_path, records, name="part0.json"):
    d = tmp_path / "res"
    d.mkdir(exist_ok=True)
    (d / name).write_text(json.dumps({"_checkpoint": {"records": records}}))
    return d


def _metric_info(tmp_path, save_name, n, yaw_rate_deg=0.0, lon_acc=0.0):
    d = tmp_path / "mi" / save_name
    d.mkdir(parents=True)
    info = {str(i): {"acceleration": [lon_acc, 0.0, 0.0], "angular_velocity": [0.0, 0.0, yaw_rate_deg],
                     "forward_vector": [1.0, 0.0, 0.0], "right_vector": [0.0, 1.0, 0.0],
                     "location": [i * 0.1, 0.0, 0.0], "rotation": [0.0, 0.0, 0.0]} for i in range(n)}
    (d / "metric_info.json").write_text(json.dumps(info))


def test_metrics_by_hand(tmp_path):
    recs = [
        _record(1, "Accident", 100.0, "Completed", min_speed_infractions=[
            "Average speed is 80.0% of the surrounding traffic's one",
            "Average speed is 1200.5% of the surrounding traffic's one",  # > 1000: dropped
            "Average speed is 100% of the surrounding traffic's one"]),
        _record(2, "HardBreakRoute", 60.0, "Completed", collisions_vehicle=["c"]),
        _record(3, "InvadingTurn", 30.0, "Failed - Agent got blocked", vehicle_blocked=["b"]),
        _record(4, "YieldToEmergencyVehicle", 100.0, "Perfect"),
    ]
    d = _write(tmp_path, recs[:2])
    _write(tmp_path, recs[2:], "part1.json")
    (d / "merged.json").write_text("{}")  # skipped like merge_route_json.py
    _metric_info(tmp_path, "s1", 40)  # 2 chunks, still: comfortable
    _metric_info(tmp_path, "s2", 40, lon_acc=3.0)  # lon accel 3.0 > 2.40 in both chunks
    _metric_info(tmp_path, "s3", 10, yaw_rate_deg=0.5)  # short route, 0.5 "rad/s" (deg/s quirk) < 0.95
    _metric_info(tmp_path, "s4", 45, yaw_rate_deg=1.0)  # 1.0 > 0.95: the deg/s quirk fails it
    m = metrics.evaluate(d, tmp_path / "mi", corrected=True)
    assert m["driving_score"] == pytest.approx((100 + 60 + 30 + 100) / 220)  # fixed 220 denominator
    assert m["success_rate"] == pytest.approx(2 / 220)  # routes 1 (min speed only) and 4
    assert m["efficiency"] == pytest.approx((80.0 + 100.0) / 2)
    assert m["smoothness"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    ab = m["abilities"]
    assert ab["Overtaking"] == 1.0 and ab["Emergency_Brake"] == 0.0 and ab["Give_Way"] == 0.5
    assert math.isnan(ab["Merging"]) and ab["mean"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    c = m["corrected"]
    assert c["denominator"] == 4 and c["driving_score"] == pytest.approx(290 / 4)
    assert c["smoothness"] == pytest.approx((1 + 0 + 1 + 1) / 4)  # 1 deg/s is comfortable
    assert abilities.junction_completion_from_flags(np.array([0, 0, 1, 1] + [0] * 16)) == pytest.approx((3 + 8) / 20)


def test_metrics_bad_input(tmp_path):
    rec = _record(1, "Accident", 100.0, "Completed")
    del rec["scores"]
    d = _write(tmp_path, [rec])
    with pytest.raises(ResultsFileError, match="RouteScenario_1_rep0 lacks.*scores"):
        metrics.load_records(d)
    (d / "part0.json").write_text('{"_checkpoint": {"reco')
    with pytest.raises(ResultsFileError, match="not valid JSON"):
        metrics.load_records(d)


def test_non_numeric_score_is_a_named_error_not_a_type_error(tmp_path):
    rec = _record(7, "Accident", 100.0, "Completed")
    rec["scores"]["score_composed"] = "n/a"
    d = _write(tmp_path, [rec])
    with pytest.raises(ResultsFileError, match=r"part0.json: record RouteScenario_7_rep0 has non-numeric.*"
                                               r"scores.score_composed.*n/a"):
        metrics.evaluate(d, tmp_path / "mi")


@pytest.mark.parametrize("section, key, value", [("meta", "route_length", "long"), ("meta", "duration_game", None),
                                                ("scores", "score_penalty", True)])
def test_non_numeric_meta_or_score_field_is_a_named_error(tmp_path, section, key, value):
    rec = _record(3, "Accident", 100.0, "Completed")
    rec[section][key] = value
    d = _write(tmp_path, [rec])
    with pytest.raises(ResultsFileError, match=rf"record RouteScenario_3_rep0 has non-numeric.*{section}.{key}"):
        metrics.evaluate(d, tmp_path / "mi")


def test_missing_metric_info_folder_says_what_it_leaves_out(tmp_path):
    d = _write(tmp_path, [_record(1, "Accident", 100.0, "Completed"), _record(2, "Accident", 50.0, "Completed")])
    m = metrics.evaluate(d, tmp_path / "no_such_folder")
    assert math.isnan(m["smoothness"]) and m["driving_score"] == pytest.approx(150 / 220)
    (warning,) = [w for w in m["warnings"] if "metric info" in w]
    assert "folder not found for 2 of 2 routes" in warning and "Smoothness is left out" in warning
    _metric_info(tmp_path, "s1", 20)
    (warning,) = [w for w in metrics.evaluate(d, tmp_path / "mi")["warnings"] if "metric info" in w]
    assert "1 of 2 routes (s2)" in warning and "mean of the other routes" in warning


def _run(tmp_path, routes, controller, **kw):
    return run_routes(routes, lambda name: controller, checkpoint=tmp_path / "res" / "part0.json",
                      save_path=tmp_path / "mi", settings=SimSettings(render=False), on_sim=controller.attach, **kw)


def test_sim_expert_and_never_braking(tmp_path):
    routes = synthetic_routes(["HardBreakRoute", "VanillaSignalizedTurnEncounterRedLight"])
    res = _run(tmp_path / "a", routes, ScriptedExpert())
    for r in res["_checkpoint"]["records"]:
        assert r["scores"]["score_composed"] == 100.0 and r["status"] == "Completed"
        assert all(not v for k, v in r["infractions"].items() if k != "min_speed_infractions")
    assert res["entry_status"] == "Finished"
    res = _run(tmp_path / "b", routes, ScriptedExpert(brakes=False))
    hard, red = res["_checkpoint"]["records"]
    n = len(hard["infractions"]["collisions_vehicle"])
    # it rams the braking lead car (which stops it), and again once the lead drives off (> 5 s, > 5 m later)
    assert n >= 1 and all(not hard["infractions"][k] for k in ("collisions_layout", "collisions_pedestrian"))
    assert hard["scores"]["score_penalty"] == pytest.approx(0.6 ** n)  # COLLISION_VEHICLE per collision
    assert len(red["infractions"]["red_light"]) == 1
    m = metrics.evaluate(tmp_path / "b" / "res", tmp_path / "b" / "mi")
    assert m["driving_score"] == pytest.approx(sum(r["scores"]["score_composed"] for r in (hard, red)) / 220)


def test_sim_resume_runs_only_the_rest(tmp_path):
    routes = synthetic_routes(["ParkedObstacle", "PedestrianCrossing", "InvadingTurn"], length=70.0)
    counter = {"n": 0}

    class Counting(ScriptedExpert):
        def set_global_plan(self, gps, world):
            counter["n"] += 1

    full = _run(tmp_path / "full", routes, Counting())
    counter["n"] = 0
    _run(tmp_path / "part", routes, Counting(), max_routes=1)  # interrupted after one route
    assert counter["n"] == 1
    resumed = _run(tmp_path / "part", routes, Counting(), resume=True)
    assert counter["n"] == 3  # 1 + the 2 remaining routes only
    key = [(r["route_id"], r["scores"], r["status"]) for r in full["_checkpoint"]["records"]]
    assert [(r["route_id"], r["scores"], r["status"]) for r in resumed["_checkpoint"]["records"]] == key
    a = metrics.evaluate(tmp_path / "full" / "res", tmp_path / "full" / "mi")
    b = metrics.evaluate(tmp_path / "part" / "res", tmp_path / "part" / "mi")
    assert a["driving_score"] == b["driving_score"] and a["smoothness"] == b["smoothness"]


def test_metrics_cli_crashed_routes_and_partial_credit(tmp_path):
    from bench2drive.routes import write_routes
    from bench2drive.sim.scenarios import RoadPath, synthetic_junction_completion

    routes = synthetic_routes(["VanillaSignalizedTurnEncounterRedLight", "HardBreakRoute"])
    xml = write_routes(routes, tmp_path / "routes.xml")
    rec = _record(1, "VanillaSignalizedTurnEncounterRedLight", 80.0, "Failed - Agent got blocked",
                  vehicle_blocked=["b"])
    d = _write(tmp_path, [rec])  # route 2 never got a record: a crashed route
    _metric_info(tmp_path, "s1", 10)
    path = RoadPath(routes[0].waypoints)
    first = int(np.argmax(path.s >= 60.0))  # the synthetic junction starts 60 m along the route
    assert synthetic_junction_completion(routes[0]) == pytest.approx((first + 1 + 8) / len(path.s))
    out = tmp_path / "m.json"
    assert metrics.main(["--results", str(d), "--metric-info", str(tmp_path / "mi"), "--routes", str(xml),
                         "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["crashed_routes"] == [{"route_id": "2", "scenario_type": "HardBreakRoute",
                                    "status": "Failed - Simulation crashed"}]
    assert m["abilities"]["Traffic_Signs"] == 1.0  # 0.8 > junction completion, no red light: partial credit
    assert m["ability_counts"]["Emergency_Brake"] == [0, 0]  # crashed routes are out of the ratios
    assert out.with_suffix(".txt").is_file() and out.with_suffix(".png").is_file()
    assert m["abilities"]["Overtaking"] is None  # no route of that ability: null (the tool divides by zero)
    no_jc = metrics.evaluate(d, tmp_path / "mi", xml)
    assert no_jc["abilities"]["Traffic_Signs"] == 0.0 and no_jc["traffic_signs_partial_credit"].startswith("skipped")


def test_sim_agent_crash_is_recorded_not_dropped(tmp_path):
    routes = synthetic_routes(["ParkedObstacle", "InvadingTurn"])

    class Crashing(ScriptedExpert):
        def run_step(self, input_data, timestamp):
            if self.sim.route.id == "1" and timestamp > 3.0:
                raise RuntimeError("boom")
            return super().run_step(input_data, timestamp)

    res = _run(tmp_path, routes, Crashing())
    first, second = res["_checkpoint"]["records"]
    assert first["status"] == "Failed - Agent crashed" and first["index"] == 0
    assert 0 < first["scores"]["score_route"] < 100
    assert second["status"] == "Completed"  # the run goes on with the next route


def test_sim_static_collision_and_collision_radius(tmp_path):
    routes = synthetic_routes(["ParkedObstacle"], length=90.0)
    res = _run(tmp_path, routes, ScriptedExpert(brakes=False, overtake=False))
    rec = res["_checkpoint"]["records"][0]
    # the cone (COLLISION_STATIC 0.65) is knocked away; the parked car, met less than 5 m further on, is the
    # same collision for CollisionTest (COLLISION_RADIUS); it stops the ego. ParkedObstacle's ScenarioTimeout
    # (240 s) switches ActorBlockedTest off meanwhile, so the route runs into Bench2Drive's 4000-tick cap
    assert len(rec["infractions"]["collisions_layout"]) == 1
    assert rec["infractions"]["collisions_vehicle"] == []
    assert rec["scores"]["score_penalty"] == pytest.approx(0.65)
    assert rec["status"] == "Failed - TickRuntime" and rec["infractions"]["vehicle_blocked"] == []
    assert 40.0 < rec["scores"]["score_route"] < 100.0


def test_sim_agent_setup_failure_and_simulation_crash(tmp_path):
    routes = synthetic_routes(["ParkedObstacle", "InvadingTurn"], length=60.0)
    expert = ScriptedExpert()
    calls = {"n": 0}

    def make(name):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("no weights")
        return expert

    res = run_routes(routes, make, checkpoint=tmp_path / "r.json", save_path=tmp_path,
                     settings=SimSettings(render=False), on_sim=expert.attach)
    first, second = res["_checkpoint"]["records"]
    assert first["status"] == "Failed - Agent couldn't be set up" and second["status"] == "Completed"
    # a world that cannot be built is a simulation crash: recorded, entry status Crashed, the run stops there
    routes[0].scenarios[0].type = "HighwayExit"  # a Bench2Drive type the embedded simulator does not build
    res = run_routes(routes, lambda name: expert, checkpoint=tmp_path / "c.json", save_path=tmp_path,
                     settings=SimSettings(render=False), on_sim=expert.attach)
    assert res["entry_status"] == "Crashed" and res["eligible"] is False
    assert [r["status"] for r in res["_checkpoint"]["records"]] == ["Failed - Simulation crashed"]


def test_sim_yield_to_emergency_vehicle(tmp_path):
    routes = synthetic_routes(["YieldToEmergencyVehicle"], length=100.0)
    rec = _run(tmp_path / "a", routes, ScriptedExpert())["_checkpoint"]["records"][0]
    assert rec["infractions"]["yield_emergency_vehicle_infractions"] == [] and rec["scores"]["score_composed"] == 100
    # full throttle in front of the ambulance: still ahead of it when the scenario ends
    rec = _run(tmp_path / "b", routes, ScriptedExpert(brakes=False))["_checkpoint"]["records"][0]
    assert rec["infractions"]["yield_emergency_vehicle_infractions"] == [
        "Agent failed to yield to an emergency vehicle"]
    assert rec["scores"]["score_penalty"] == pytest.approx(0.7)  # YIELD_TO_EMERGENCY_VEHICLE
