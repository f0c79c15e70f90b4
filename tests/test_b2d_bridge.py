"""The leaderboard bridge: thin agent (Python 3.7, stdlib + numpy) <-> planner server on loopback."""

import ast
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench2drive import agent as agent_mod
from bench2drive import geo, metrics
from bench2drive import leaderboard_agent as thin
from bench2drive.planner_server import PlannerServer
from bench2drive.sim.route_runner import SimSettings, global_plan, run_routes
from bench2drive.sim.scenarios import RoadPath, synthetic_routes

THIN_SOURCE = Path(thin.__file__)
InProcessAgent = getattr(agent_mod, agent_mod.get_entry_point())  # the class the evaluator loads from agent.py
W, H = 64, 36


def _conf(tmp_path, planner="constant_velocity", extra=""):
    p = tmp_path / f"agent_{planner}.yaml"
    p.write_text(f"rig: rap4\nimage_width: {W}\nimage_height: {H}\nplanner: {planner}\n" + extra)
    return str(p)


def _client(server, tmp_path, name="bridge.json", **extra):
    return str(server.write_client_config(tmp_path / name, **extra))


def _tick_data(rng, cams, x, speed):
    """One tick of leaderboard input_data: BGRA cameras, GNSS, IMU (compass last), speedometer."""
    data = {c: (0, rng.integers(0, 256, (H, W, 4), dtype=np.uint8)) for c in cams}
    data["GPS"] = (0, np.array([*geo.local_to_gnss(np.array([x + 1.4, 0.0])), 0.0]))
    data["IMU"] = (0, np.array([0.3, -0.1, 9.81, 0, 0, 0.01, geo.yaw_to_compass(0.0)]))
    data["SPEED"] = (0, {"speed": speed})
    return data


def test_thin_agent_is_python37_stdlib_numpy_only():
    tree = ast.parse(THIN_SOURCE.read_text(), feature_version=(3, 7))
    allowed = set(sys.stdlib_module_names) | {"numpy", "carla", "leaderboard", "srunner"}
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import would need our package in the leaderboard's Python"
            roots.add(node.module.split(".")[0])
    assert roots - allowed == set(), f"thin agent imports {roots - allowed}"
    assert "__future__" in roots and {"numpy", "socket", "json"} <= roots
    # a 3.8+ construct must fail the 3.7 grammar check, else the check above proves nothing
    with pytest.raises(SyntaxError):
        ast.parse("if (n := 1):\n    pass\n", feature_version=(3, 7))


def test_frame_round_trip_and_malformed():
    arrays = {"CAM_F0": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "GPS": np.array([48.1, 11.5, 0.0]),
              "IMU": np.arange(7, dtype=np.float32)}
    for compress in (False, True):
        frame = thin.encode({"type": "step", "step": 3, "data": {"SPEED": {"speed": 2.5}}}, arrays, compress)
        head_len, payload_len = thin.FRAME_PREFIX.unpack(frame[:8])
        assert len(frame) == 8 + head_len + payload_len
        header, back = thin.decode(frame[8:8 + head_len], frame[8 + head_len:])
        assert header["v"] == thin.PROTOCOL_VERSION and header["step"] == 3
        assert header["data"] == {"SPEED": {"speed": 2.5}}
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    with pytest.raises(thin.BridgeError, match="not UTF-8 JSON") as err:
        thin.decode(b"{not json", b"")
    assert err.value.code == "malformed"
    head = json.dumps({"v": 1, "type": "step", "arrays": [{"name": "x", "dtype": "<f8", "shape": [4],
                                                           "offset": 0, "nbytes": 32}]}).encode()
    with pytest.raises(thin.BridgeError, match="runs past the payload"):
        thin.decode(head, b"\0" * 8)


@pytest.fixture(scope="module")
def rap_planner():
    import torch

    torch.manual_seed(0)
    cfg = dict(agent_mod.DEFAULTS, rig="rap4", image_width=W, image_height=H, planner_config="tiny")
    return agent_mod.build_planner(cfg)


def test_two_clients_batched_equal_in_process(tmp_path, rap_planner):
    """Two thin agents at once through one server (batching on) give the in-process agent's controls."""
    conf = _conf(tmp_path, "rap", "planner_config: tiny\n")
    server = PlannerServer(conf, planner=rap_planner, batch_wait_s=5.0).start()
    client = _client(server, tmp_path)
    path = RoadPath(np.array([[0.0, 0.0], [100.0, 0.0]]))
    ticks = 3  # one planner call each (at the first tick), then the held plan
    cams = [c["id"] for c in server.sensors if c["type"] == "sensor.camera.rgb"]
    inputs = {k: [] for k in range(2)}
    for k in range(2):
        rng = np.random.default_rng(k)
        inputs[k] = [_tick_data(rng, cams, x=0.2 * t * (k + 1), speed=2.0 + 2 * k) for t in range(ticks)]
    got, errors = {}, []
    connected = threading.Barrier(2)  # both sessions past hello before either calls: the batch expects two

    def drive(k):
        try:
            a = thin.BridgeAgent()
            a.setup(f"{client}+route{k}")
            a.set_global_plan(*global_plan(path, None))
            connected.wait(timeout=120)
            got[k] = [a.run_step(d, 0.05 * t) for t, d in enumerate(inputs[k])]
            a.destroy()
        except Exception as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    server.shutdown()
    assert not errors, errors
    assert 2 in server.planner.batch_sizes  # the two clients' planner calls ran as one batch
    for k in range(2):
        ref = InProcessAgent(planner=rap_planner)
        ref.setup(f"{conf}+ref{k}")
        ref.set_global_plan(*global_plan(path, None))
        want = [ref.run_step(d, 0.05 * t) for t, d in enumerate(inputs[k])]
        g = np.array([[c.steer, c.throttle, c.brake] for c in got[k]], np.float64)
        w = np.array([[c.steer, c.throttle, c.brake] for c in want], np.float64)
        assert np.abs(w).max() > 0  # the controls carry the plan, not a constant
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(w).max()))


def test_hello_refuses_version_rig_and_config(tmp_path, capsys):
    conf = _conf(tmp_path)
    server = PlannerServer(conf).start()
    good = json.loads(Path(_client(server, tmp_path)).read_text())
    for code, change in (("config", {"config_digest": "0" * 64}),
                         ("rig", {"sensors": good["sensors"][1:]})):
        p = tmp_path / f"{code}.json"
        p.write_text(json.dumps({**good, **change}))
        with pytest.raises(thin.BridgeError, match=code) as err:
            thin.BridgeAgent().setup(f"{p}+r")
        assert err.value.code == code
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        frame = thin.encode({"type": "hello"})
        head_len = thin.FRAME_PREFIX.unpack(frame[:8])[0]
        header = json.loads(frame[8:8 + head_len])
        header["v"] = 99
        head = json.dumps(header).encode()
        s.sendall(thin.FRAME_PREFIX.pack(len(head), 0) + head)
        reply, _ = thin.read_frame(s)
        assert reply["type"] == "error" and reply["code"] == "version" and "99" in reply["message"]
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(thin.FRAME_PREFIX.pack(9, 0) + b"{garbage}")
        reply, _ = thin.read_frame(s)
        assert reply["code"] == "malformed"
    with pytest.raises(thin.BridgeError, match="cannot be read") as err:
        thin.BridgeAgent().setup(str(tmp_path / "missing.json"))
    assert err.value.code == "config"
    server.shutdown()
    logged = capsys.readouterr().out  # the server names each refusal too
    for code in ("config", "rig", "version", "malformed"):
        assert f"planner server: {code}: [bridge:{code}]" in logged


class _SlowPlanner(agent_mod.ConstantVelocityPlanner):
    def __call__(self, features):
        time.sleep(2.0)
        return super().__call__(features)


def test_server_too_slow_is_a_named_timeout(tmp_path, capsys):
    server = PlannerServer(_conf(tmp_path), planner=_SlowPlanner()).start()
    a = thin.BridgeAgent()
    # the timeout must leave the quick replies (welcome, route) room on a loaded machine, yet be shorter than a plan
    a.setup(f"{_client(server, tmp_path, reply_timeout_s=1.0)}+r")
    a.set_global_plan(*global_plan(RoadPath(np.array([[0.0, 0.0], [100.0, 0.0]])), None))
    cams = [c["id"] for c in server.sensors if c["type"] == "sensor.camera.rgb"]
    with pytest.raises(thin.BridgeError, match="within 1.0 s") as err:
        a.run_step(_tick_data(np.random.default_rng(0), cams, 0.0, 3.0), 0.0)
    assert err.value.code == "timeout"
    time.sleep(2.0)  # the planner finishes and finds the client gone
    server.shutdown()
    assert "client r left mid-route" in capsys.readouterr().out


class _DyingPlanner(agent_mod.ConstantVelocityPlanner):
    """Kills its server on the n-th planner call (the server process dying mid-route)."""

    def __init__(self, n):
        self.n, self.server = n, None

    def __call__(self, features):
        self.n -= 1
        if self.n == 0:
            self.server.shutdown()
        return super().__call__(features)


def test_server_death_is_agent_crash_and_rerun_resumes(tmp_path, capsys):
    """Through the bridge the embedded simulator gives the in-process results; a server that dies mid-route
    leaves 'Failed - Agent crashed' (as the evaluator records it) and the resumed run drives that route."""
    conf = _conf(tmp_path)
    routes = synthetic_routes(["ParkedObstacle"], length=40.0)
    settings = SimSettings(rig=agent_mod.rig.build_rig("rap4", width=W, height=H), max_ticks=120)

    def in_process(name):
        a = InProcessAgent()
        a.setup(f"{conf}+{name}")
        return a

    want = run_routes(routes, in_process, checkpoint=tmp_path / "ref.json", save_path=tmp_path / "ref",
                      settings=settings)["_checkpoint"]["records"][0]

    dying = _DyingPlanner(n=3)
    dying.server = server = PlannerServer(conf, planner=dying).start()
    client = _client(server, tmp_path, connect_attempts=1)

    def bridged(name):
        a = thin.BridgeAgent()
        a.setup(f"{client}+{name}")
        return a

    ck = tmp_path / "results" / "part0.json"
    first = run_routes(routes, bridged, checkpoint=ck, save_path=tmp_path / "b", settings=settings)
    assert first["_checkpoint"]["records"][0]["status"] == "Failed - Agent crashed"
    assert "[bridge:gone]" in capsys.readouterr().out  # the client named the failure
    tally = metrics.route_tally(first["_checkpoint"]["records"], routes)
    assert tally == {"routes": 1, "recorded": 1, "crashed": 1, "missing": 0}
    assert metrics.route_tally([], routes)["missing"] == 1
    server = PlannerServer(conf).start()  # the runner restarts the server; the client config follows it
    client = _client(server, tmp_path)
    again = run_routes(routes, bridged, checkpoint=ck, save_path=tmp_path / "b", settings=settings, resume=True)
    server.shutdown()
    got = again["_checkpoint"]["records"][0]
    assert got["status"] == want["status"] and "crashed" not in got["status"]
    assert got["scores"] == want["scores"] and got["infractions"] == want["infractions"]
    assert metrics.route_tally(again["_checkpoint"]["records"], routes)["crashed"] == 0


def test_run_closed_loop_raster_bridge_equals_in_process(tmp_path):
    """closed_loop=raster closed_loop.bridge=true: a planner server process and the thin agent give the
    in-process route results."""
    from hydra import compose, initialize_config_dir

    from bench2drive import run_closed_loop

    configs = Path(__file__).resolve().parents[1] / "configs"
    records = {}
    for bridge in (False, True):
        out = tmp_path / f"bridge_{bridge}"
        with initialize_config_dir(config_dir=str(configs), version_base=None):
            cfg = compose("run_closed_loop", overrides=[
                f"output_dir={out}", "agent.planner=constant_velocity", f"agent.image_width={W}",
                f"agent.image_height={H}", "closed_loop.scenario_types=[ParkedObstacle]", "closed_loop.max_ticks=40",
                f"closed_loop.bridge={str(bridge).lower()}"])
        run_closed_loop.main(cfg)
        records[bridge] = json.loads((out / "results" / "part0.json").read_text())["_checkpoint"]["records"]
        assert json.loads((out / "metrics.json").read_text())["weights"].startswith("constant-velocity baseline")
    assert (tmp_path / "bridge_True" / "bridge" / "client.json").is_file()
    for want, got in zip(records[False], records[True], strict=True):
        assert got["status"] == want["status"] and got["scores"] == want["scores"]
        assert got["infractions"] == want["infractions"]


# stand-in leaderboard_evaluator.py (Python 3.7 grammar, stdlib + numpy like the leaderboard's side): loads
# --agent by path, drives the ticks stored in --routes (an .npz) and logs the controls to --checkpoint
HARNESS = """
import importlib.util, json, sys
import numpy as np


class Obj(object):
    def __init__(self, **kw):
        self.__dict__.update(kw)


args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
store = np.load(args["routes"])
plan = json.loads(str(store["plan"]))
world = [(Obj(location=Obj(x=x, y=y, z=z), rotation=Obj(yaw=yaw)), c) for x, y, z, yaw, c in plan["world"]]
gps = [({"lat": la, "lon": lo, "z": z}, c) for la, lo, z, c in plan["gps"]]
spec = importlib.util.spec_from_file_location("agent_under_test", args["agent"])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
agent = getattr(mod, mod.get_entry_point())()
agent.setup(args["agent-config"] + "+route0")
agent.set_global_plan(gps, world)
out = []
for t in range(int(store["ticks"])):
    data = {s["id"]: (t, store["{}/{}".format(t, s["id"])]) for s in agent.sensors() if s["id"] != "SPEED"}
    data["SPEED"] = (t, {"speed": float(store["speed"][t])})
    c = agent.run_step(data, 0.05 * t)
    out.append([c.steer, c.throttle, c.brake])
agent.destroy()
with open(args["checkpoint"], "w") as f:
    json.dump({"agent": args["agent"], "python": list(sys.version_info[:2]), "controls": out}, f)
"""


def _harness_ticks(cams, n=12):
    rng = np.random.default_rng(0)
    for t in range(n):
        data = {c: (t, rng.integers(0, 256, (H, W, 4), dtype=np.uint8)) for c in cams}
        data["GPS"] = (t, np.array([*geo.local_to_gnss(np.array([0.1 * t + 1.4, 0.3])), 0.0]))
        data["IMU"] = (t, np.array([0.0, 0.0, 9.81, 0, 0, 0, geo.yaw_to_compass(0.05)]))
        data["SPEED"] = (t, {"speed": 1.0})
        yield t, data


def test_carla_runner_bridge_with_stand_in_leaderboard(monkeypatch, tmp_path):
    """run_parts with a bridge: one planner server for GPU 0, two parts whose stand-in evaluators run the thin
    agent in the 'leaderboard' interpreter ($EUPE_DRIVE_LEADERBOARD_PYTHON, e.g. a Python 3.7 with numpy; else
    this one); the controls equal the in-process agent's."""
    import os

    from bench2drive import carla_runner

    carla_root, b2d = tmp_path / "carla", tmp_path / "b2d"
    carla_root.mkdir()
    (carla_root / "CarlaUE4.sh").write_text("")
    ev = b2d / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py"
    ev.parent.mkdir(parents=True)
    ev.write_text(HARNESS)
    monkeypatch.setenv("CARLA_ROOT", str(carla_root))
    monkeypatch.setenv("BENCH2DRIVE_ROOT", str(b2d))
    conf = Path(_conf(tmp_path))
    ref = InProcessAgent()
    ref.setup(f"{conf}+ref")
    path_plan = global_plan(RoadPath(np.array([[0.0, 0.0], [100.0, 0.0]])), None)
    ticks = list(_harness_ticks([c.id for c in ref.rig]))
    store = {f"{t}/{k}": v for t, d in ticks for k, (_, v) in d.items() if k != "SPEED"}
    gps_rows, world_rows = thin._plan_rows(*path_plan)
    np.savez(tmp_path / "ticks.npz", ticks=len(ticks), speed=[d["SPEED"][1]["speed"] for _, d in ticks],
             plan=json.dumps({"gps": gps_rows, "world": world_rows}), **store)
    python = os.environ.get("EUPE_DRIVE_LEADERBOARD_PYTHON") or sys.executable
    client = tmp_path / "bridge" / "gpu0.json"
    jobs = [carla_runner.PartJob(index=i, routes_xml=tmp_path / "ticks.npz", checkpoint=tmp_path / "res" / f"p{i}.json",
                                 save_path=tmp_path / "save", agent_config=client, gpu=0, port=30000 + 150 * i,
                                 tm_port=50000 + 150 * i, max_restarts=0, python=python,
                                 agent=carla_runner.THIN_AGENT_FILE, server_config=conf) for i in range(2)]
    results = carla_runner.run_parts(jobs)
    assert [r["returncode"] for r in results] == [0, 0], (tmp_path / "res" / "p0.log").read_text()[-2000:]
    assert client.with_suffix(".log").read_text().count("planner server on") == 1  # both parts share GPU 0's
    logs = [json.loads((tmp_path / "res" / f"p{i}.json").read_text()) for i in range(2)]
    assert all(log["agent"].endswith("leaderboard_agent.py") for log in logs)
    ref.set_global_plan(*path_plan)
    want = np.array([[c.steer, c.throttle, c.brake] for c in (ref.run_step(d, 0.05 * t) for t, d in ticks)])
    assert np.abs(want).max() > 0.01  # off the lane centre and below the plan's speed: the controls act
    for log in logs:
        np.testing.assert_allclose(np.array(log["controls"]), want, rtol=1e-6, atol=1e-9)
    print(f"stand-in leaderboard ran the thin agent on Python {logs[0]['python']}")


def test_bridge_settings_are_checked_up_front(tmp_path):
    from hydra import compose, initialize_config_dir

    from bench2drive import run_closed_loop
    from eupe.config_errors import ConfigError

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        carla = compose("run_closed_loop", overrides=[f"output_dir={tmp_path}", "closed_loop=carla",
                                                      f"closed_loop.leaderboard_python={tmp_path / 'python3.7'}"])
        expert = compose("run_closed_loop", overrides=[f"output_dir={tmp_path}", "agent.planner=expert",
                                                       "closed_loop.bridge=true"])
    assert carla.closed_loop.bridge is True  # CARLA runs through the bridge unless told otherwise
    with pytest.raises(ConfigError, match="leaderboard_python=.*python3.7' is not an executable"):
        run_closed_loop.validate(carla)
    with pytest.raises(ConfigError, match="closed_loop.bridge=false"):
        run_closed_loop.validate(expert)
