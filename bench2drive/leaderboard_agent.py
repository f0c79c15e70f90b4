"""Thin Bench2Drive leaderboard agent: sensors in, controls out, the planner runs in a planner server.

    leaderboard_evaluator.py --agent=bench2drive/leaderboard_agent.py --agent-config=<bridge.json>

It runs in the leaderboard's own interpreter (Python 3.7+, CARLA 0.9.15's client) and uses only the standard
library, numpy and what the leaderboard environment provides (carla, leaderboard, srunner), so it must not
import torch or eupe-drive. Each tick it sends the sensor data to ``python -m bench2drive.planner_server`` over
a local socket and applies the control that comes back; it saves ``metric_info.json`` like the in-process agent.
The agent-config is the JSON the planner server writes (``--client-config``), with ``+<save_name>`` appended by
the evaluator.

Protocol (version ``PROTOCOL_VERSION``; this module is its one home, the server imports it):
    frame   = uint32 header_len, uint32 payload_len (big endian), header (UTF-8 JSON), payload (bytes)
    header  = {"v": version, "type": ..., "arrays": [{"name", "dtype", "shape", "offset", "nbytes"}], ...}
    payload = the arrays' raw C-order bytes, concatenated (``"codec": "zlib"`` = the payload zlib-compressed)
    client -> server: hello {sensors, config_digest, save_name}; route {downsampled, gps, world};
                      step {step, timestamp, data: {sensor id: json value}} + arrays named by sensor id (all
                      but the cameras); frames + camera arrays (the answer to need); bye
    server -> client: welcome {sensors}; ok; need {names} (the planner reads the cameras this tick: the client
                      answers frames, then gets the control); control {steer, throttle, brake}; error {code,
                      message}
A wrong version, rig or config is refused at hello (error code ``version`` / ``rig`` / ``config``); a malformed
frame is ``malformed``; a step the server fails on is ``planner``. The client raises ``BridgeError`` with the
code, so the evaluator records the route ("Agent couldn't be set up" / "Agent crashed") instead of dropping it.
"""

from __future__ import print_function

import json
import os
import socket
import struct
import time
import zlib

import numpy as np

try:  # inside a Bench2Drive checkout (the leaderboard on PYTHONPATH)
    from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track
except Exception:  # standalone: the embedded simulator and the tests drive this agent directly
    AutonomousAgent, Track = object, None

try:
    import carla
except ImportError:
    carla = None

PROTOCOL_VERSION = 1
FRAME_PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 1 << 24  # a larger header is not ours: refuse it as malformed instead of allocating
MAX_PAYLOAD_BYTES = 1 << 30
# seconds to wait for a control; below the evaluator's client timeout so our error, not its watchdog, names it
DEFAULT_REPLY_TIMEOUT_S = 300.0
DEFAULT_CONNECT_ATTEMPTS = 5


class BridgeError(RuntimeError):
    """A bridge failure with a code: version, rig, config, malformed, planner, gone, timeout."""

    def __init__(self, code, message):
        RuntimeError.__init__(self, "[bridge:{}] {}".format(code, message))
        self.code = code


# ---------------------------------------------------------------- framing (shared with the server)
def encode(header, arrays=None, compress=False):
    """One frame: ``header`` (a dict, JSON-able) plus named numpy ``arrays`` in the payload."""
    header = dict(header)
    header["v"] = PROTOCOL_VERSION
    parts, specs, offset = [], [], 0
    for name, arr in (arrays or {}).items():
        arr = np.ascontiguousarray(arr)
        specs.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                      "nbytes": arr.nbytes})
        parts.append(arr.tobytes())
        offset += arr.nbytes
    header["arrays"] = specs
    payload = b"".join(parts)
    if compress:
        payload = zlib.compress(payload, 1)
        header["codec"] = "zlib"
    head = json.dumps(header).encode("utf-8")
    return FRAME_PREFIX.pack(len(head), len(payload)) + head + payload


def _recv_exact(sock, n):
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("connection closed with {} of {} bytes unread".format(left, n))
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def decode(head, payload):
    """(header dict, {name: array}) from a frame's header and payload bytes; BridgeError('malformed')."""
    try:
        header = json.loads(head.decode("utf-8"))
    except ValueError as exc:
        raise BridgeError("malformed", "frame header is not UTF-8 JSON ({})".format(exc)) from exc
    if not isinstance(header, dict) or "type" not in header or "v" not in header:
        raise BridgeError("malformed", "frame header lacks 'type' or 'v': {!r}".format(head[:200]))
    if header.get("codec") == "zlib":
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise BridgeError("malformed", "zlib payload cannot be decompressed ({})".format(exc)) from exc
    arrays = {}
    for spec in header.get("arrays", []):
        try:
            start, size = int(spec["offset"]), int(spec["nbytes"])
            if start < 0 or start + size > len(payload):
                raise ValueError("array '{}' runs past the payload".format(spec.get("name")))
            arr = np.frombuffer(payload[start:start + size], dtype=np.dtype(spec["dtype"]))
            arrays[spec["name"]] = arr.reshape(spec["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BridgeError("malformed", "bad array entry {!r}: {}".format(spec, exc)) from exc
    return header, arrays


def read_frame(sock):
    """Next frame from ``sock`` -> (header, arrays). EOFError when the peer closed; BridgeError('malformed')."""
    head_len, payload_len = FRAME_PREFIX.unpack(_recv_exact(sock, FRAME_PREFIX.size))
    if head_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
        raise BridgeError("malformed", "frame sizes {} / {} bytes exceed the protocol's limits".format(
            head_len, payload_len))
    return decode(_recv_exact(sock, head_len), _recv_exact(sock, payload_len))


def sensor_value(value):
    """A leaderboard sensor reading split into (json value, array or None)."""
    if isinstance(value, np.ndarray):
        return None, value
    if isinstance(value, dict):
        return value, None
    return None, np.asarray(value)


def _plan_rows(global_plan_gps, global_plan_world_coord):
    gps = [[p["lat"], p["lon"], p.get("z", 0.0), int(getattr(c, "value", c))] for p, c in global_plan_gps]
    world = [[t.location.x, t.location.y, t.location.z, getattr(getattr(t, "rotation", None), "yaw", 0.0),
              int(getattr(c, "value", c))] for t, c in global_plan_world_coord]
    return gps, world


class _Control(object):
    """carla.VehicleControl stand-in when the carla client is not installed."""

    def __init__(self, throttle=0.0, steer=0.0, brake=0.0):
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake, self.manual_gear_shift = False, False


def get_entry_point():
    return "BridgeAgent"


class BridgeAgent(AutonomousAgent):
    """Leaderboard agent whose planner step runs in a planner server (bench2drive.planner_server)."""

    def __init__(self, carla_host=None, carla_port=None, debug=False):
        if AutonomousAgent is not object:
            AutonomousAgent.__init__(self, carla_host, carla_port, debug)
        else:
            self.hero_actor = None
            self._global_plan = self._global_plan_world_coord = None
        self.sock = None

    # ---------------------------------------------------------------- leaderboard API
    def setup(self, path_to_conf_file):
        self.conf_path, self.save_name = path_to_conf_file, None
        if "+" in path_to_conf_file:
            self.conf_path, self.save_name = path_to_conf_file.rsplit("+", 1)
        self.cfg = self._read_config()
        if Track is not None:
            self.track = Track.SENSORS
        self.step = -1
        self.metric_info = {}
        save_root = os.environ.get("SAVE_PATH")
        self.save_dir = os.path.join(save_root, self.save_name) if save_root and self.save_name else None
        if self.save_dir is not None:
            os.makedirs(self.save_dir, exist_ok=True)
        self._connect()

    def sensors(self):
        return [dict(s) for s in self.cfg["sensors"]]

    def set_global_plan(self, global_plan_gps, global_plan_world_coord):
        if AutonomousAgent is not object:  # the leaderboard's own 50 m downsampling, as the in-process agent
            AutonomousAgent.set_global_plan(self, global_plan_gps, global_plan_world_coord)
            gps, world = _plan_rows(self._global_plan, self._global_plan_world_coord)
            downsampled = True
        else:  # no leaderboard here: the server downsamples as the in-process agent does without it
            gps, world = _plan_rows(global_plan_gps, global_plan_world_coord)
            downsampled = False
        self._request({"type": "route", "downsampled": downsampled, "gps": gps, "world": world}, expect="ok")

    def run_step(self, input_data, timestamp):
        self.step += 1
        cameras = set(s["id"] for s in self.cfg["sensors"] if s["type"].startswith("sensor.camera"))
        data, arrays = {}, {}
        for key in input_data:
            if key in cameras:
                continue  # sent when the planner asks for them ("need"), at its 2 Hz, not every tick
            plain, arr = sensor_value(input_data[key][1])
            if arr is not None:
                arrays[key] = arr
            else:
                data[key] = plain
        reply = self._request({"type": "step", "step": self.step, "timestamp": float(timestamp), "data": data},
                              arrays, expect="control", input_data=input_data)
        if self.save_dir is not None and getattr(self, "hero_actor", None) is not None:
            self.metric_info[self.step] = self.get_metric_info()
            with open(os.path.join(self.save_dir, "metric_info.json"), "w") as f:
                json.dump(self.metric_info, f, indent=4)
        return self._make_control(reply["steer"], reply["throttle"], reply["brake"])

    def destroy(self):
        if self.sock is not None:
            try:
                self.sock.sendall(encode({"type": "bye"}))
            except (OSError, socket.error):
                pass  # the server is gone already; nothing left to tell it
            self.sock.close()
            self.sock = None

    # ---------------------------------------------------------------- connection
    @staticmethod
    def _make_control(steer, throttle, brake):
        if carla is not None:
            return carla.VehicleControl(throttle=float(throttle), steer=float(steer), brake=float(brake))
        return _Control(throttle=float(throttle), steer=float(steer), brake=float(brake))

    def _read_config(self):
        try:
            with open(self.conf_path) as f:
                cfg = json.load(f)
        except (IOError, OSError, ValueError) as exc:
            raise BridgeError("config", "bridge client config {} cannot be read ({}); it is the JSON that "
                                        "planner_server --client-config writes".format(self.conf_path, exc)) from exc
        missing = [k for k in ("host", "port", "sensors", "config_digest") if k not in cfg]
        if missing:
            raise BridgeError("config", "bridge client config {} lacks {}".format(self.conf_path, missing))
        return cfg

    def _connect(self):
        """Connect and say hello; a refused connection is retried with the client config read again (the
        server may be starting, or restarting on another port)."""
        attempts = int(self.cfg.get("connect_attempts", DEFAULT_CONNECT_ATTEMPTS))
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(2.0 ** attempt, 10.0))
                self.cfg = self._read_config()
            address = (self.cfg["host"], int(self.cfg["port"]))
            try:
                self.sock = socket.create_connection(address, timeout=10.0)
                break
            except (OSError, socket.error) as exc:
                if attempt == attempts - 1:
                    raise BridgeError("gone", "no planner server at {}:{} after {} attempts ({}); start it with "
                                              "python -m bench2drive.planner_server".format(
                                                  address[0], address[1], attempts, exc)) from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(float(self.cfg.get("reply_timeout_s", DEFAULT_REPLY_TIMEOUT_S)))
        self._request({"type": "hello", "sensors": self.sensors(), "config_digest": self.cfg["config_digest"],
                       "save_name": self.save_name}, expect="welcome")

    def _request(self, header, arrays=None, expect="ok", input_data=None):
        """Send one message and return the reply of type ``expect``, answering the server's "need" requests
        for camera frames from ``input_data`` on the way."""
        if self.sock is None:
            raise BridgeError("gone", "not connected to the planner server")
        compress = bool(self.cfg.get("compress", False))
        try:
            self.sock.sendall(encode(header, arrays, compress=compress))
            reply, _ = read_frame(self.sock)
            while reply.get("type") == "need" and input_data is not None:
                missing = [n for n in reply.get("names", []) if n not in input_data]
                if missing:
                    raise BridgeError("malformed", "the server needs sensors {} that this tick lacks".format(missing))
                frames = dict((n, np.asarray(input_data[n][1])) for n in reply["names"])
                self.sock.sendall(encode({"type": "frames"}, frames, compress=compress))
                reply, _ = read_frame(self.sock)
        except socket.timeout:
            self.sock.close()  # a late reply would answer the next request: this connection is spent
            self.sock = None
            raise BridgeError("timeout", "the planner server gave no '{}' reply to '{}' within {} s (raise "
                                         "reply_timeout_s in the client config, or the planner is too slow)".format(
                                             expect, header["type"], self.cfg.get("reply_timeout_s",
                                                                                  DEFAULT_REPLY_TIMEOUT_S))) from None
        except (EOFError, OSError, socket.error) as exc:
            self.sock = None
            raise BridgeError("gone", "the planner server at {}:{} went away during '{}' ({}); the route is "
                                      "recorded as crashed and a resumed run repeats it".format(
                                          self.cfg["host"], self.cfg["port"], header["type"], exc)) from exc
        if reply.get("v") != PROTOCOL_VERSION:
            raise BridgeError("version", "server speaks protocol {}, this agent {}".format(
                reply.get("v"), PROTOCOL_VERSION))
        if reply["type"] == "error":
            raise BridgeError(reply.get("code", "planner"), "planner server: {}".format(reply.get("message")))
        if reply["type"] != expect:
            raise BridgeError("malformed", "expected '{}' from the server, got '{}'".format(expect, reply["type"]))
        return reply
