"""Embedded simulator: the scenario types it builds, their abilities, and scenario timeouts as the leaderboard
records them (ScenarioTimeout + ScenarioTimeoutTest, ActorBlockedTest switched off meanwhile, 4000-tick cap)."""

import math

import numpy as np
import pytest

from bench2drive.results import PENALTY_VALUE
from bench2drive.routes import BENCH2DRIVE_SCENARIOS
from bench2drive.sim.expert import ScriptedExpert
from bench2drive.sim.route_runner import ClosedLoopSim, SimSettings, run_routes
from bench2drive.sim.scenarios import (
    NOT_BUILT,
    SCENARIO_TIMEOUT,
    SUPPORTED,
    TIMEOUT_SCENARIOS,
    TrafficLight,
    scenario_abilities,
    synthetic_routes,
)

# tools/ability_benchmark.py's ability lists, written out for the types the simulator builds
ABILITY_OF = {
    "ParkedObstacle": ["Overtaking"], "Accident": ["Overtaking"], "ConstructionObstacle": ["Overtaking"],
    "HazardAtSideLane": ["Overtaking"], "ParkedObstacleTwoWays": ["Overtaking"], "AccidentTwoWays": ["Overtaking"],
    "ConstructionObstacleTwoWays": ["Overtaking"], "VehicleOpensDoorTwoWays": ["Overtaking"],
    "HazardAtSideLaneTwoWays": ["Overtaking"],
    "InterurbanActorFlow": ["Merging"], "ParkingExit": ["Merging"],
    "HardBreakRoute": ["Emergency_Brake"], "DynamicObjectCrossing": ["Emergency_Brake"],
    "ParkingCrossingPedestrian": ["Emergency_Brake"], "ParkingCutIn": ["Emergency_Brake"],
    "StaticCutIn": ["Emergency_Brake"], "ControlLoss": ["Emergency_Brake"],
    "PedestrianCrossing": ["Emergency_Brake", "Traffic_Signs"],
    "OppositeVehicleRunningRedLight": ["Emergency_Brake", "Traffic_Signs"],
    "OppositeVehicleTakingPriority": ["Emergency_Brake", "Traffic_Signs"],
    "VehicleTurningRoute": ["Emergency_Brake", "Traffic_Signs"],
    "VehicleTurningRoutePedestrian": ["Emergency_Brake", "Traffic_Signs"],
    "BlockedIntersection": ["Emergency_Brake", "Traffic_Signs"],
    "InvadingTurn": ["Give_Way"], "YieldToEmergencyVehicle": ["Give_Way"],
    "VanillaSignalizedTurnEncounterRedLight": ["Traffic_Signs"],
    "VanillaSignalizedTurnEncounterGreenLight": ["Traffic_Signs"],
    "VanillaNonSignalizedTurn": ["Traffic_Signs"], "VanillaNonSignalizedTurnEncounterStopsign": ["Traffic_Signs"],
    "T_Junction": ["Traffic_Signs"],
    "SignalizedJunctionLeftTurn": ["Merging", "Traffic_Signs"],
    "NonSignalizedJunctionLeftTurn": ["Merging", "Traffic_Signs"],
    "SignalizedJunctionLeftTurnEnterFlow": ["Merging", "Traffic_Signs"],
    "NonSignalizedJunctionLeftTurnEnterFlow": ["Merging", "Traffic_Signs"],
    "SignalizedJunctionRightTurn": ["Merging", "Traffic_Signs"],
    "NonSignalizedJunctionRightTurn": ["Merging", "Traffic_Signs"],
}
LEFT_TURNS = ["SignalizedJunctionLeftTurn", "NonSignalizedJunctionLeftTurn", "SignalizedJunctionLeftTurnEnterFlow",
              "NonSignalizedJunctionLeftTurnEnterFlow"]
RIGHT_TURNS = ["SignalizedJunctionRightTurn", "NonSignalizedJunctionRightTurn"]


def _run(tmp_path, types, controller, **settings):
    res = run_routes(synthetic_routes(types), lambda name: controller, checkpoint=tmp_path / "r.json",
                     save_path=tmp_path / "mi", settings=SimSettings(render=False, **settings),
                     on_sim=controller.attach)
    return res["_checkpoint"]["records"]


def test_built_and_not_built_cover_the_44_types():
    # bench2drive220.xml: 44 types x 5 routes
    b2d44 = set(BENCH2DRIVE_SCENARIOS)
    assert len(b2d44) == 44
    assert set(SUPPORTED) | set(NOT_BUILT) == b2d44
    assert not set(SUPPORTED) & set(NOT_BUILT)
    assert set(SUPPORTED) <= set(ABILITY_OF)
    for t in SUPPORTED:
        assert scenario_abilities(t) == ABILITY_OF[t], t


@pytest.mark.parametrize("scenario_type", sorted(SUPPORTED))
def test_expert_completes_every_built_type(tmp_path, scenario_type):
    (rec,) = _run(tmp_path, [scenario_type], ScriptedExpert())
    assert rec["scores"]["score_composed"] == 100.0, (scenario_type, rec["infractions"])
    assert rec["status"] in ("Completed", "Perfect")
    assert all(not v for k, v in rec["infractions"].items() if k != "min_speed_infractions"), rec["infractions"]


@pytest.mark.parametrize(("scenario_type", "key"), [
    ("ParkingCrossingPedestrian", "collisions_pedestrian"), ("ParkingCutIn", "collisions_vehicle"),
    ("StaticCutIn", "collisions_vehicle"), ("OppositeVehicleRunningRedLight", "collisions_vehicle"),
    ("OppositeVehicleTakingPriority", "collisions_vehicle"), ("VehicleTurningRoute", "collisions_vehicle"),
    ("VehicleTurningRoutePedestrian", "collisions_pedestrian"), ("BlockedIntersection", "collisions_vehicle"),
    ("ParkingExit", "collisions_vehicle"),  # pulls out of the slot into the car beside it
])
def test_never_braking_driver_hits_the_adversary(tmp_path, scenario_type, key):
    """The adversaries are real: a driver that never brakes collides, with that collision's penalty."""
    (rec,) = _run(tmp_path, [scenario_type], ScriptedExpert(brakes=False))
    assert len(rec["infractions"][key]) == 1
    kind = {"collisions_pedestrian": "COLLISION_PEDESTRIAN", "collisions_vehicle": "COLLISION_VEHICLE"}[key]
    outside = 1.0
    if rec["infractions"]["outside_route_lanes"]:  # full throttle through the turn: wide
        pct = float(rec["infractions"]["outside_route_lanes"][0].split("(")[1].split("%")[0])
        outside = 1 - pct / 100
    assert rec["scores"]["score_penalty"] == pytest.approx(PENALTY_VALUE[kind] * outside, abs=1e-4)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_expert_waits_for_a_gap_in_the_junction_flow(tmp_path, seed):
    """JunctionLeftTurn(EnterFlow) / JunctionRightTurn: an ActorFlow at 8-10 m/s, 16-37 m apart, crosses the
    ego's left turn (or runs into its exit lane); with every spawn gap draw (seeds 1-4 here, 0 above) the expert
    waits for a gap and finishes without an infraction."""
    recs = _run(tmp_path, LEFT_TURNS + RIGHT_TURNS, ScriptedExpert(), seed=seed)
    for rec in recs:
        assert rec["scores"]["score_composed"] == 100.0, (seed, rec["infractions"])
        assert all(not v for k, v in rec["infractions"].items() if k != "min_speed_infractions")


class _NoGapAcceptance(ScriptedExpert):
    """Turns left without looking at the crossing flow."""

    def _flow_clear(self, s):
        return True


@pytest.mark.parametrize(("scenario_type", "seed"), [
    ("SignalizedJunctionLeftTurn", 0), ("NonSignalizedJunctionLeftTurn", 0),
    ("NonSignalizedJunctionLeftTurnEnterFlow", 1), ("SignalizedJunctionRightTurn", 0),
    ("NonSignalizedJunctionRightTurn", 1),
])
def test_junction_flow_is_real(tmp_path, scenario_type, seed):
    """The flow cars keep their speed whatever the ego does (ActorFlow: constant velocity, vehicles ignored): a
    driver that turns without waiting for a gap is hit (one vehicle collision, penalty 0.6)."""
    (rec,) = _run(tmp_path, [scenario_type], _NoGapAcceptance(), seed=seed)
    assert len(rec["infractions"]["collisions_vehicle"]) == 1
    assert rec["scores"]["score_penalty"] == pytest.approx(PENALTY_VALUE["COLLISION_VEHICLE"])


def test_left_turn_route_and_flow_geometry():
    """The left-turn route turns left (CARLA: towards -y) through the junction; the flow runs the other way in
    the approach road's opposite lane from 4 * speed m before the junction (x = 72) to 2.5 * speed m past it,
    straight on, or (EnterFlow) turning right into the ego's exit lane (x = 60 + 24 / pi, heading -y)."""
    speeds = {"SignalizedJunctionLeftTurn": 9.0, "NonSignalizedJunctionLeftTurn": 10.0,
              "SignalizedJunctionLeftTurnEnterFlow": 8.0, "NonSignalizedJunctionLeftTurnEnterFlow": 9.0}
    x_exit = 60.0 + 12.0 * 2 / math.pi  # the quarter circle of arc length 12 m
    for t in LEFT_TURNS:
        sim = ClosedLoopSim(synthetic_routes([t])[0], SimSettings(render=False))
        (flow,) = sim.scenario.actor_flows
        assert sim.path.xy[-1, 0] == pytest.approx(x_exit, abs=1e-6) and sim.path.xy[-1, 1] < -40.0
        assert abs(sim.path.yaw[-1] + math.pi / 2) < 1e-6
        speed = speeds[t]
        assert flow.speed == speed and flow.yaw == pytest.approx(math.pi)
        assert flow.source == pytest.approx([72.0 + 4 * speed, -3.5])
        if t.endswith("EnterFlow"):  # a right turn of radius 5.25 m ends in the exit lane
            assert flow.sink == pytest.approx([x_exit, -3.5 - 5.25 - 2.5 * speed])
            assert flow.route.yaw[-1] == pytest.approx(-math.pi / 2)
        else:
            assert flow.sink == pytest.approx([60.0 - 2.5 * speed, -3.5])
        assert len(sim.scenario.lights) == (1 if t.startswith("Signalized") else 0)
    sig = ClosedLoopSim(synthetic_routes(["SignalizedJunctionLeftTurn"])[0], SimSettings(render=False))
    (light,) = sig.scenario.lights
    light.t0 = 2.0  # TrafficLightFreezer: the ego's light red for the first 5 s of the scenario
    assert [light.is_red(t) for t in (1.0, 2.0, 6.9, 7.0)] == [False, True, True, False]


def test_right_turn_flow_geometry():
    """JunctionRightTurn: the flow runs straight along the exit lane (x = 60 + 24 / pi, heading +y) from 5 * speed
    m before the junction's left edge (y = -1.5 lane widths) to 3 * speed m past the end of the ego's turn, and
    starts populated (initial_actors): one car every spawn gap (16-37 m) from the source, none in the junction."""
    x_exit = 60.0 + 12.0 * 2 / math.pi
    for t, speed in (("SignalizedJunctionRightTurn", 10.0), ("NonSignalizedJunctionRightTurn", 8.0)):
        sim = ClosedLoopSim(synthetic_routes([t])[0], SimSettings(render=False))
        (flow,) = sim.scenario.actor_flows
        assert flow.speed == speed and flow.yaw == pytest.approx(math.pi / 2)
        assert flow.source == pytest.approx([x_exit, -5.25 - 5 * speed])
        assert flow.sink == pytest.approx([x_exit, x_exit - 60.0 + 3 * speed], abs=0.05)  # turn ends at y = r
        while sim.monitors.scenario_start is None:
            sim.tick(0.0, 0.5, 0.0)
        sim.tick(0.0, 0.0, 1.0)
        s = sorted(a.params["flow_s"] for a in sim.actors if a.params.get("flow"))
        assert len(s) >= 3 and s[0] >= flow.interval[0]
        gaps = np.diff(s)  # at least the spawn gap; more where the junction was skipped (1 m route steps)
        assert (gaps >= flow.interval[0]).all()
        assert (gaps <= flow.interval[1] + 1.0 + flow.junction[1] - flow.junction[0]).all()
        assert not any(flow.junction[0] < x < flow.junction[1] for x in s)
        assert len(sim.scenario.lights) == (1 if t.startswith("Signalized") else 0)


class _PassesAtOnce(ScriptedExpert):
    """Overtakes in the opposite lane as soon as it meets the obstacle, without waiting for it to open."""

    def _opposite_clear(self, s, s_end, v_end=0.0):
        return True


def test_two_ways_opposite_lane_opens_only_after_the_scenario_switches_it(tmp_path):
    # ParkedObstacleTwoWays: the wrong-direction lane test is off only from 5 s after the ego came within 50 m of
    # the obstacle; passing before that is driving in a wrong-direction lane (OUTSIDE_ROUTE_LANES)
    (rec,) = _run(tmp_path, ["ParkedObstacleTwoWays"], _PassesAtOnce())
    (msg,) = rec["infractions"]["outside_route_lanes"]
    pct = float(msg.split("(")[1].split("%")[0])
    assert 0 < pct < 100 and rec["scores"]["score_penalty"] == pytest.approx(1 - pct / 100, abs=1e-4)


def test_scenario_timeout_behind_a_blocker(tmp_path):
    """An ego that waits behind ParkedObstacle's car: the ScenarioTimeout fires 240 s after the scenario started,
    its actors are removed, the ego drives on and finishes; one SCENARIO_TIMEOUT, penalty 0.7, and no
    VEHICLE_BLOCKED although it stood still far longer than 60 s (ActorBlockedTest is off meanwhile)."""
    assert "ParkedObstacle" in TIMEOUT_SCENARIOS and SCENARIO_TIMEOUT == 240.0
    # no tick cap: the plain leaderboard 2.0; route timeout 300 s + 120 m / (50 km/h * 10%) = 386 s
    (rec,) = _run(tmp_path / "a", ["ParkedObstacle"], ScriptedExpert(overtake=False), max_ticks=8000)
    assert rec["infractions"]["scenario_timeouts"] == ["Agent timed out a scenario"]
    assert rec["infractions"]["vehicle_blocked"] == [] and rec["infractions"]["route_timeout"] == []
    assert rec["status"] == "Completed" and rec["scores"]["score_route"] == 100.0
    assert rec["scores"]["score_penalty"] == pytest.approx(PENALTY_VALUE["SCENARIO_TIMEOUT"]) == 0.7
    assert rec["scores"]["score_composed"] == pytest.approx(70.0)
    assert SCENARIO_TIMEOUT < rec["meta"]["duration_game"] < SCENARIO_TIMEOUT + 60.0
    # Bench2Drive's 4000-tick cap (200 s) ends the route first: TickRuntime, no timeout event, no block
    (rec,) = _run(tmp_path / "b", ["ParkedObstacle"], ScriptedExpert(overtake=False))
    assert rec["status"] == "Failed - TickRuntime" and rec["meta"]["duration_game"] == pytest.approx(200.0)
    assert rec["infractions"]["scenario_timeouts"] == [] and rec["infractions"]["vehicle_blocked"] == []
    assert rec["infractions"]["route_timeout"] == [] and rec["scores"]["score_penalty"] == 1.0
    assert 0 < rec["scores"]["score_route"] < 100


class _StopsAt(ScriptedExpert):
    """Drives like the expert up to route position 20 m, then brakes for good."""

    def run_step(self, input_data, timestamp):
        c = super().run_step(input_data, timestamp)
        if float(self.sim.path.frenet(self.sim.ego.xy)[0][0]) > 20.0:
            c.throttle, c.brake = 0.0, 1.0
        return c


def test_blocked_test_is_off_only_while_a_scenario_timeout_runs(tmp_path):
    # VanillaNonSignalizedTurn has a ScenarioTimeoutTest but no ScenarioTimeout behaviour: blocked after 60 s;
    # T_Junction's ScenarioTimeout runs until the ego drove 200 m: never blocked, the tick cap ends it
    plain, tj = _run(tmp_path, ["VanillaNonSignalizedTurn", "T_Junction"], _StopsAt())
    assert "VanillaNonSignalizedTurn" not in TIMEOUT_SCENARIOS and "T_Junction" in TIMEOUT_SCENARIOS
    assert plain["status"] == "Failed - Agent got blocked" and len(plain["infractions"]["vehicle_blocked"]) == 1
    assert 60.0 < plain["meta"]["duration_game"] < 70.0
    assert tj["status"] == "Failed - TickRuntime" and tj["infractions"]["vehicle_blocked"] == []
    assert tj["infractions"]["scenario_timeouts"] == []


def test_control_loss_noise_deflects_a_straight_driver():
    """AddNoiseToRouteEgo: within 2 m of a debris, noise of mean +-0.055 is added to the steer, so a driver
    holding the wheel straight leaves the lane centre towards the side of that mean (steer > 0: right, d > 0)."""
    route = synthetic_routes(["ControlLoss"])[0]
    sim = ClosedLoopSim(route, SimSettings(render=False))
    first_xy, _, _, steer_mean, _ = sim.scenario.control_noise[0]
    s_debris = float(sim.path.frenet(first_xy)[0][0])
    assert s_debris == pytest.approx(10.0 + 14.0) and abs(steer_mean) == 0.055
    d_before = None
    while float(sim.path.frenet(sim.ego.xy)[0][0]) < s_debris + 6.0:
        if d_before is None and float(sim.path.frenet(sim.ego.xy)[0][0]) > s_debris - 3.0:
            d_before = float(sim.path.frenet(sim.ego.xy)[1][0])
        sim.tick(0.0, 0.5, 0.0)
    d_after = float(sim.path.frenet(sim.ego.xy)[1][0])
    assert d_before == 0.0 and d_after * steer_mean > 0 and abs(d_after) > 0.01


def test_scenario_timed_light():
    light = TrafficLight(id=1, s=58.0, red_from=5.0, red_until=10.0, relative=True)
    assert not light.is_red(100.0)  # the scenario has not started: green
    light.t0 = 3.0
    assert [light.is_red(t) for t in (7.9, 8.0, 12.9, 13.0)] == [False, True, True, False]
