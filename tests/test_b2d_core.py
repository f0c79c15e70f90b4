"""Bench2Drive building blocks: routes XML, PID on a bicycle, GNSS/compass, rig projection, results JSON."""

import math

import numpy as np
import pytest

from bench2drive import geo, pid, rig
from bench2drive.results import TrafficEvent, compute_route_statistics, new_route_record, resume_index
from bench2drive.routes import (
    RouteFileError,
    filter_routes,
    parse_routes,
    read_routes,
    routes_to_xml,
    split_routes,
)
from bench2drive.sim.dynamics import EgoState, step_ego

XML = """<routes><route id="7" town="Town12"><waypoints><position x="1.0" y="2.0" z="0.5"/>
<position x="3.0" y="2.0" z="0.5"/></waypoints><scenarios><scenario name="ParkingCutIn_1" type="ParkingCutIn">
<direction value="left"/><trigger_point x="1.0" y="2.0" yaw="-90.2" z="0.5"/></scenario></scenarios>
<weathers><weather cloudiness="100.0" route_percentage="0"/></weathers></route>
<route id="8" town="Town13"><waypoints><position x="0" y="0" z="0"/><position x="5" y="0" z="0"/></waypoints>
<scenarios><scenario name="Accident_2" type="Accident"><trigger_point x="0" y="0" yaw="0" z="0"/></scenario>
</scenarios></route></routes>"""


def test_routes_roundtrip_filter_split(tmp_path):
    routes = parse_routes(XML)
    assert [r.id for r in routes] == ["7", "8"]
    assert routes[0].scenario_type == "ParkingCutIn" and routes[0].scenarios[0].trigger == (1.0, 2.0, 0.5, -90.2)
    back = parse_routes(routes_to_xml(routes))
    assert np.allclose(back[0].waypoints, routes[0].waypoints)
    assert back[0].scenarios[0].extra == [("direction", {"value": "left"})]
    assert [r.id for r in filter_routes(routes, towns=["Town13"])] == ["8"]
    assert [r.id for r in filter_routes(routes, scenario_types=["ParkingCutIn"])] == ["7"]
    # divmod split of tools/split_xml.py: 220 routes in 8 parts -> 4 parts of 28 then 4 of 27
    sizes = [len(p) for p in split_routes(list(range(220)), 8)]
    assert sizes == [28, 28, 28, 28, 27, 27, 27, 27]


def test_routes_bad_input(tmp_path):
    with pytest.raises(RouteFileError, match="not a valid route XML"):
        parse_routes("<routes><route id=", source="x.xml")
    with pytest.raises(RouteFileError, match="unknown town 'Town99'"):
        parse_routes(XML.replace("Town13", "Town99"))
    with pytest.raises(RouteFileError, match="unknown scenario type 'Acident'"):
        parse_routes(XML.replace('type="Accident"', 'type="Acident"'))
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        read_routes(tmp_path / "nope.xml")


def _drive(path_fn, ticks=600):
    """PID on the bicycle model following waypoints from ``path_fn(s)`` (world points at arc length s)."""
    ctrl = pid.PIDController()
    ego = EgoState(x=0.0, y=0.0, yaw=0.0, speed=4.0)
    s_ego, errs = 0.0, []
    for _k in range(ticks):
        # nearest arc length on the reference
        ss = np.linspace(max(0, s_ego - 5), s_ego + 10, 301)
        pts = path_fn(ss)
        i = int(np.argmin(np.linalg.norm(pts - ego.xy, axis=1)))
        s_ego = ss[i]
        errs.append(np.linalg.norm(pts[i] - ego.xy))
        # 6 waypoints 0.5 s apart at 4 m/s, in the PID's frame (x right, y forward)
        local = pid.ego_to_pid(geo.world_to_ego(path_fn(s_ego + 2.0 * np.arange(1, 7)), ego.xy, ego.yaw))
        out = ctrl.control_pid(local, ego.speed, local[2])
        steer, thr, brk = pid.pid_to_control(out, ego.speed)
        ego = step_ego(ego, steer, thr, brk)
    return np.array(errs[100:]), ego


def test_pid_straight_line_and_circle():
    errs, ego = _drive(lambda s: np.stack([s, np.zeros_like(s)], -1))
    assert errs.max() < 0.05 and abs(ego.speed - 4.0) < 0.5  # straight: within 5 cm, holds 4 m/s
    r = 20.0  # constant-radius right turn (+y side in CARLA): centre (0, 20)
    errs, _ = _drive(lambda s: np.stack([r * np.sin(s / r), r * (1 - np.cos(s / r))], -1))
    assert errs.max() < 0.5  # stated bound: 0.5 m on a 20 m radius at 4 m/s


def test_pid_constants_and_speed_rule():
    c = pid.PIDController()
    wps = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])  # straight ahead (x right, y forward)
    out = c.control_pid(wps, 0.0, np.array([0.0, 10.0]))
    assert out.desired_speed == pytest.approx(2.0)  # |delta| 1 m per 0.5 s
    assert out.steer == pytest.approx(0.0) and not out.brake
    # speed PID: delta clipped to 0.25; 5*0.25 + 0.5*mean(window of 40 with one 0.25) + 1.0*0.25
    assert out.throttle == pytest.approx(min(5 * 0.25 + 0.5 * 0.25 / 40 + 0.25, 0.75))
    assert c.control_pid(wps, 2.3, np.array([0.0, 10.0])).brake  # 2.3 / 2.0 > 1.1


def test_gnss_and_compass():
    # lat_ref = lon_ref = 0: 1 degree of longitude is R*pi/180 metres east
    ll = geo.local_to_gnss(np.array([geo.EARTH_RADIUS_EQUA * math.pi / 180, 0.0]))
    assert ll[0] == pytest.approx(0.0, abs=1e-12) and ll[1] == pytest.approx(1.0)
    # +y (south in CARLA) -> negative latitude
    assert geo.local_to_gnss(np.array([0.0, 1000.0]))[0] < 0
    pts = np.array([[123.4, -567.8], [-10.0, 20.0]])
    for ref in [(0.0, 0.0), (42.0, 2.0)]:
        assert np.allclose(geo.gnss_to_local(geo.local_to_gnss(pts, *ref), *ref), pts, atol=1e-6)
    p0 = geo.local_to_gnss(np.array([100.0, 50.0]), 0.0, 0.0)
    lat_ref, lon_ref = geo.solve_geo_reference([100.0, 50.0], p0)
    # the agents' quirk: lat_ref 0 and lon_ref = the point's longitude (x shifted by -100 m, y exact)
    assert lat_ref == pytest.approx(0.0, abs=1e-6) and lon_ref == pytest.approx(p0[1], abs=1e-9)
    assert geo.gnss_to_local(p0, lat_ref, lon_ref) == pytest.approx([0.0, 50.0], abs=1e-6)
    # compass 0 = north = -y = CARLA yaw -90 deg; compass pi/2 = east = yaw 0
    assert geo.compass_to_yaw(0.0) == pytest.approx(-math.pi / 2)
    assert geo.compass_to_yaw(math.pi / 2) == pytest.approx(0.0)
    assert geo.compass_to_yaw(float("nan")) == pytest.approx(-math.pi / 2)
    assert geo.yaw_to_compass(math.pi) == pytest.approx(3 * math.pi / 2)


def test_rig_projection_by_hand():
    cams = {c.id: c for c in rig.build_rig("b2d6", width=160, height=90)}
    front = cams["CAM_FRONT"]
    f = 80 / math.tan(math.radians(35))
    # planner frame (x fwd, y left, rear axle 0.39 m behind the centre): a point 10 m ahead of the camera
    # and 1 m to its left, at camera height -> u = 80 - f * 1/10, v = 45
    p = np.array([[0.80 + 0.39 + 10.0, 1.0, 1.60]])
    uv, depth = rig.project(p, rig.lidar2img(front))
    assert depth[0] == pytest.approx(10.0)
    assert uv[0] == pytest.approx([80 - f * 0.1, 45.0])
    # the right camera (yaw +55, CARLA right) sees a point on its axis at its principal point
    right = cams["CAM_FRONT_RIGHT"]
    ax = np.array([math.cos(math.radians(55)), math.sin(math.radians(55))]) * 8.0
    p = np.array([[0.27 + ax[0] + 0.39, -(0.55 + ax[1]), 1.6]])
    uv, depth = rig.project(p, rig.lidar2img(right))
    assert uv[0] == pytest.approx([80.0, 45.0]) and depth[0] == pytest.approx(8.0)
    carla = pytest.importorskip("carla")
    t = carla.Transform(carla.Location(x=0.3, y=-0.5, z=1.6), carla.Rotation(pitch=5.0, yaw=-55.0, roll=2.0))
    assert np.allclose(np.array(t.get_matrix()), rig.carla_matrix(0.3, -0.5, 1.6, 2.0, 5.0, -55.0), atol=1e-5)


def _rec(route_id, events, **kw):
    r = new_route_record(route_id=route_id, scenario_name="X_1", weather_id=0, save_name=route_id, town_name="T")
    return compute_route_statistics(r, index=0, events=events, route_length=100.0, **kw)


def test_route_statistics_penalties():
    done = TrafficEvent("ROUTE_COMPLETION", "", {"route_completed": 100.0})
    r = _rec("RouteScenario_1_rep0", [done, TrafficEvent("COLLISION_VEHICLE", "c"),
                                      TrafficEvent("TRAFFIC_LIGHT_INFRACTION", "r"),
                                      TrafficEvent("OUTSIDE_ROUTE_LANES_INFRACTION", "o", {"percentage": 10.0}),
                                      TrafficEvent("MIN_SPEED_INFRACTION", "m", {"percentage": 50.0})])
    assert r["scores"]["score_penalty"] == pytest.approx(0.6 * 0.7 * 0.9)  # min speed unused
    assert r["scores"]["score_composed"] == pytest.approx(100 * 0.6 * 0.7 * 0.9)
    assert r["status"] == "Completed" and r["num_infractions"] == 4
    r = _rec("RouteScenario_2_rep0", [TrafficEvent("ROUTE_COMPLETION", "", {"route_completed": 40.0})],
             timed_out=True)
    assert r["status"] == "Failed - Agent timed out" and r["infractions"]["route_timeout"] == ["Route timeout."]
    r = _rec("RouteScenario_3_rep0", [TrafficEvent("ROUTE_COMPLETION", "", {"route_completed": 100.0})])
    assert r["status"] == "Perfect"


def test_resume_index_rules():
    names = [f"RouteScenario_{i}_rep0" for i in range(4)]
    recs = [{"route_id": names[0], "status": "Perfect"}, {"route_id": names[1], "status": "Failed - Agent crashed"}]
    data = {"entry_status": "Started", "_checkpoint": {"progress": [2, 4], "records": recs}}
    assert resume_index(data, names) == 1  # an agent crash is run again
    recs[1]["status"] = "Failed - Agent got blocked"
    assert resume_index(data, names) == 2
    data["entry_status"] = "Crashed"
    assert resume_index(data, names) == 1  # a simulation crash repeats the last route
    data["_checkpoint"]["progress"] = [2, 5]
    assert resume_index(data, names) is None  # different route count: start over
    assert resume_index({}, names) is None


def test_downsample_route_like_the_leaderboard():
    xy = np.stack([np.arange(121.0), np.zeros(121)], axis=1)  # 1 m apart
    cmds = [geo.ROAD_OPTION["LANEFOLLOW"]] * 121
    cmds[60:73] = [geo.ROAD_OPTION["RIGHT"]] * 13
    # first; 52 (51 m travelled > 50); junction entry 60 and exit 73; last
    assert geo.downsample_route(xy, cmds) == [0, 52, 60, 73, 120]
    rp = geo.RoutePlanner()
    rp.set_route(xy[[0, 52, 60, 73, 120]], [cmds[i] for i in (0, 52, 60, 73, 120)])
    assert rp.run_step(np.array([0.0, 0.0]))[0][0] == 52.0
    # within 4 m of point 52: it is popped (with 0); the next target is the junction entry
    target, cmd = rp.run_step(np.array([50.0, 0.0]))
    assert target[0] == 60.0 and cmd == geo.ROAD_OPTION["RIGHT"]


def test_global_statistics_by_hand(tmp_path):
    from bench2drive.results import compute_global_statistics, empty_results, load_results, save_results

    done = TrafficEvent("ROUTE_COMPLETION", "", {"route_completed": 100.0})
    half = TrafficEvent("ROUTE_COMPLETION", "", {"route_completed": 50.0})
    a = _rec("RouteScenario_1_rep0", [done, TrafficEvent("COLLISION_PEDESTRIAN", "p")])
    b = _rec("RouteScenario_2_rep0", [half, TrafficEvent(
        "OUTSIDE_ROUTE_LANES_INFRACTION", "Agent went outside its route lanes for about 20.0 meters (4.0% of the "
        "completed route)", {"percentage": 4.0})])
    b["index"] = 1
    res = empty_results()
    res["_checkpoint"]["records"] = [a, b]
    compute_global_statistics(res, 2)
    g = res["_checkpoint"]["global_record"]
    assert g["scores_mean"]["score_composed"] == pytest.approx((50.0 + 50 * 0.96) / 2)
    assert g["scores_std_dev"]["score_route"] == pytest.approx(math.sqrt(2 * 25.0 ** 2 / 1), abs=1e-3)
    # km driven: 0.1 km * 100% + 0.1 km * 50% = 0.15 km; outside lanes: metres from the message / 1000
    assert g["infractions"]["collisions_pedestrian"] == pytest.approx(round(1 / 0.15, 3))
    assert g["infractions"]["outside_route_lanes"] == pytest.approx(0.02)
    assert g["status"] == "Failed" and res["entry_status"] == "Finished" and res["eligible"] is True
    inprogress = _rec("RouteScenario_3_rep0", [done])
    inprogress["index"] = -1  # a route still running is not written (Checkpoint.to_json)
    res["_checkpoint"]["records"].append(inprogress)
    save_results(tmp_path / "r.json", res)
    assert len(load_results(tmp_path / "r.json")["_checkpoint"]["records"]) == 2


def test_b2d6_rig_matches_the_uniad_b2d_agent_projection():
    """Our projection, re-expressed in UniAD's lidar frame, equals the lidar2img that Bench2DriveZoo's
    team_code/uniad_b2d_agent.py hard-codes (lidar: x right, y forward, 0.39 m behind the centre, 1.84 m up)."""
    uniad = {
        "CAM_FRONT": [[1.14251841e03, 8.0e02, 0.0, -9.52e02], [0.0, 4.5e02, -1.14251841e03, -8.09704417e02],
                      [0.0, 1.0, 0.0, -1.19]],
        "CAM_FRONT_LEFT": [[6.03961325e-14, 1.39475744e03, 0.0, -9.20539908e02],
                           [-3.68618420e02, 2.58109396e02, -1.14251841e03, -6.47296750e02],
                           [-8.19152044e-01, 5.73576436e-01, 0.0, -8.29094072e-01]],
        "CAM_BACK_LEFT": [[-1.14251841e03, 8.0e02, 0.0, -6.84385123e02],
                          [-4.22861679e02, -1.53909064e02, -1.14251841e03, -4.96004706e02],
                          [-9.39692621e-01, -3.42020143e-01, 0.0, -4.92889531e-01]],
    }
    lidar_to_planner = np.array([[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                                 [0.0, 0.0, 0.0, 1.0]])
    cams = {c.id: c for c in rig.build_rig("b2d6")}
    for name, ref in uniad.items():
        ours = rig.lidar2img(cams[name], planner_origin=(-0.39, 0.0, 1.84)) @ lidar_to_planner
        assert np.allclose(ours[:3], np.array(ref), atol=1e-3), name
