"""Planner server for thin leaderboard agents (bench2drive/leaderboard_agent.py) in another Python.

    python -m bench2drive.planner_server --agent-config out/agent.yaml --port 40000 --client-config out/bridge.json

Hosts the in-process agent's planner step (the leaderboard agent of ``bench2drive.agent``: any backbone, checkpoint and the
agent config's other options) for each connected thin agent, one session per route, and runs the planner
calls of sessions that wait at the same time as one batch. The protocol lives in ``leaderboard_agent``.
Loopback only by default: the server trusts its clients.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

from bench2drive import agent as agent_mod
from bench2drive.leaderboard_agent import PROTOCOL_VERSION, BridgeError, encode, read_frame

DEFAULT_MAX_BATCH = 8
DEFAULT_BATCH_WAIT_S = 0.005  # a short wait lets clients that step together share one forward pass


def config_digest(cfg: dict) -> str:
    """sha256 of the agent config (defaults filled in), so a client config from another run is refused."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def client_sensors(cfg: dict) -> list[dict]:
    """The sensor list a thin agent declares, as JSON gives it back (what hello compares)."""
    cams = agent_mod.rig.build_rig(cfg["rig"], width=cfg["image_width"], height=cfg["image_height"])
    return json.loads(json.dumps(agent_mod.sensor_list(cams)))


class BatchingPlanner:
    """Wraps a planner (feature dict of batch 1 -> output dict) so concurrent calls run as one batch.

    A call waits until ``expected()`` callers are waiting, ``max_batch`` is reached or ``wait_s`` has passed
    since the first of them arrived; ``batch_sizes`` records each forward pass's batch for the report.
    """

    def __init__(self, planner, *, max_batch: int = DEFAULT_MAX_BATCH, wait_s: float = DEFAULT_BATCH_WAIT_S,
                 expected=lambda: 1):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1")
        self.planner, self.max_batch, self.wait_s, self.expected = planner, max_batch, wait_s, expected
        self.source = getattr(planner, "source", "unknown")
        self.batch_sizes: list[int] = []
        self._cond = threading.Condition()
        self._waiting: list[dict] = []
        self._running = False

    def __call__(self, features: dict) -> dict:
        slot = {"features": features, "out": None, "error": None, "done": False}
        with self._cond:
            self._waiting.append(slot)
            self._cond.notify_all()
            first = time.monotonic()
            while not slot["done"]:
                full = len(self._waiting) >= min(self.max_batch, max(1, self.expected()))
                late = time.monotonic() - first >= self.wait_s
                if not self._running and self._waiting and self._waiting[0] is slot and (full or late):
                    batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                    self._running = True
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._cond.notify_all()
                else:
                    self._cond.wait(timeout=max(1e-4, self.wait_s / 4))
        if slot["error"] is not None:
            raise slot["error"]
        return slot["out"]

    def _run(self, batch: list[dict]) -> None:
        import torch

        self.batch_sizes.append(len(batch))
        try:
            keys = batch[0]["features"].keys()
            feats = {k: torch.cat([s["features"][k] for s in batch]) for k in keys}
            out = self.planner(feats)
            for i, s in enumerate(batch):
                s["out"] = {k: v[i:i + 1] if torch.is_tensor(v) and v.shape[:1] == (len(batch),) else v
                            for k, v in out.items()}
        except Exception as exc:  # every caller of the batch sees the planner's error
            for s in batch:
                s["error"] = exc
        for s in batch:
            s["done"] = True


def _plan_objects(rows_gps: list, rows_world: list) -> tuple[list, list]:
    """Route rows of the protocol -> the (gps dict, command) / (transform, command) pairs the agent reads."""
    gps = [({"lat": la, "lon": lo, "z": z}, int(c)) for la, lo, z, c in rows_gps]
    world = [(SimpleNamespace(location=SimpleNamespace(x=x, y=y, z=z), rotation=SimpleNamespace(yaw=yaw)), int(c))
             for x, y, z, yaw, c in rows_world]
    return gps, world


class RemoteCameras(dict):
    """A step's input_data whose camera frames come from the thin agent when first read (the planner reads
    them every 10th tick), as the embedded simulator's LazyCameras renders them."""

    def __init__(self, conn: socket.socket, frame: int, camera_ids: list[str], readings: dict):
        super().__init__(readings)
        self.conn, self.frame, self.camera_ids = conn, frame, camera_ids
        self._fetched = False

    def __getitem__(self, key):
        if key in self.camera_ids and not self._fetched:
            self._fetched = True
            self.conn.sendall(encode({"type": "need", "names": self.camera_ids}))
            header, arrays = read_frame(self.conn)
            if header["type"] != "frames" or set(arrays) != set(self.camera_ids):
                raise BridgeError("malformed", f"expected frames of {self.camera_ids}, got '{header['type']}' with "
                                               f"{sorted(arrays)}")
            self.update({k: (self.frame, v) for k, v in arrays.items()})
        return dict.__getitem__(self, key)


class PlannerServer:
    """TCP server: one thread per thin agent, one planner shared by all through a BatchingPlanner."""

    def __init__(self, agent_config: str | Path, *, host: str = "127.0.0.1", port: int = 0, planner=None,
                 max_batch: int = DEFAULT_MAX_BATCH, batch_wait_s: float = DEFAULT_BATCH_WAIT_S):
        self.agent_config = str(agent_config)
        self.cfg, _ = agent_mod.load_agent_config(self.agent_config)
        self.digest = config_digest(self.cfg)
        self.sensors = client_sensors(self.cfg)
        self.camera_ids = [c["id"] for c in self.sensors if c["type"].startswith("sensor.camera")]
        self.sessions = 0  # thin agents past hello: how many calls a batch waits for
        self._sessions_lock = threading.Lock()
        self.planner = BatchingPlanner(planner or agent_mod.build_planner(self.cfg), max_batch=max_batch,
                                       wait_s=batch_wait_s, expected=lambda: self.sessions)
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()

    def client_config(self, **extra) -> dict:
        """What a thin agent needs: address, sensors, config digest (written with --client-config)."""
        return {"protocol": PROTOCOL_VERSION, "host": self.host, "port": self.port, "pid": os.getpid(),
                "planner_source": self.planner.source, "sensors": self.sensors, "config_digest": self.digest,
                **extra}

    def write_client_config(self, path: str | Path, **extra) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.client_config(**extra), indent=2))
        tmp.replace(path)  # a starting runner polls for this file: it appears complete or not at all
        return path

    def serve_forever(self) -> None:
        print(f"planner server on {self.host}:{self.port} (protocol {PROTOCOL_VERSION}, planner weights: "
              f"{self.planner.source})", flush=True)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                break  # closed by shutdown()
            self._conns.add(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def start(self) -> PlannerServer:
        """Serve in a background thread (tests, the embedded simulator's bridge mode)."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def shutdown(self) -> None:
        """Stop listening and drop every client (a client mid-route sees the server gone)."""
        self._stop.set()
        self.sock.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its session
            conn.close()

    # ---------------------------------------------------------------- one thin agent
    def _reply_error(self, conn, code: str, message: str) -> None:
        print(f"planner server: {code}: {message}", flush=True)
        try:
            conn.sendall(encode({"type": "error", "code": code, "message": message}))
        except OSError:
            pass  # the client is gone; it will report its own error

    def _hello(self, header: dict):
        if header.get("v") != PROTOCOL_VERSION:
            raise BridgeError("version", f"client speaks protocol {header.get('v')}, server {PROTOCOL_VERSION}; "
                                         "use the leaderboard_agent.py of the same eupe-drive version")
        if header.get("sensors") != self.sensors:
            raise BridgeError("rig", f"client sensors differ from the server's rig {self.cfg['rig']} "
                                     f"{self.cfg['image_width']}x{self.cfg['image_height']}; regenerate the client "
                                     "config with this server's --client-config")
        if header.get("config_digest") != self.digest:
            raise BridgeError("config", f"client config digest {header.get('config_digest')} is not the server's "
                                        f"agent config {self.agent_config} ({self.digest}); regenerate the client "
                                        "config with this server's --client-config")
        # the class the evaluator would load from agent.py: the very same step as the in-process path
        agent = getattr(agent_mod, agent_mod.get_entry_point())(planner=self.planner)
        agent.setup(f"{self.agent_config}+{header.get('save_name') or 'bridge'}")
        agent.save_dir = None  # the thin agent writes metric_info.json next to the leaderboard
        return agent

    def _session(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        agent, counted = None, False
        try:
            while True:
                try:
                    header, arrays = read_frame(conn)
                except (EOFError, OSError):  # the client left, or shutdown() closed the socket
                    if agent is not None and not self._stop.is_set():
                        print(f"planner server: client {agent.save_name} left mid-route without 'bye' (its reply "
                              "timeout ran out, or the leaderboard stopped it)", flush=True)
                    return
                except BridgeError as err:
                    return self._reply_error(conn, err.code, str(err))
                kind = header["type"]
                try:
                    if header.get("v") != PROTOCOL_VERSION:
                        raise BridgeError("version", f"frame of protocol {header.get('v')}, server "
                                                     f"{PROTOCOL_VERSION}")
                    if kind == "hello":
                        agent = self._hello(header)
                        if not counted:
                            with self._sessions_lock:
                                self.sessions, counted = self.sessions + 1, True
                        conn.sendall(encode({"type": "welcome", "sensors": self.sensors}))
                    elif kind == "bye":
                        return
                    elif agent is None:
                        raise BridgeError("malformed", f"'{kind}' before hello")
                    elif kind == "route":
                        gps, world = _plan_objects(header["gps"], header["world"])
                        (agent.set_route_plan if header["downsampled"] else agent.set_global_plan)(gps, world)
                        conn.sendall(encode({"type": "ok"}))
                    elif kind == "step":
                        readings = {k: (header["step"], v) for k, v in header["data"].items()}
                        readings.update({k: (header["step"], v) for k, v in arrays.items()})
                        c = agent.run_step(RemoteCameras(conn, header["step"], self.camera_ids, readings),
                                           header["timestamp"])
                        conn.sendall(encode({"type": "control", "steer": float(c.steer),
                                             "throttle": float(c.throttle), "brake": float(c.brake)}))
                    else:
                        raise BridgeError("malformed", f"unknown message type '{kind}'")
                except BridgeError as err:
                    return self._reply_error(conn, err.code, str(err))
                except OSError as exc:  # the client hung up mid-message, e.g. its reply timeout ran out
                    print(f"planner server: client gone during '{kind}' ({exc}); a thin agent whose reply "
                          "timeout ran out reports [bridge:timeout]", flush=True)
                    return
                except (KeyError, TypeError, ValueError) as exc:
                    if kind == "step":  # the planner step itself failed: the client's route is "Agent crashed"
                        return self._reply_error(conn, "planner", f"{type(exc).__name__}: {exc}")
                    return self._reply_error(conn, "malformed", f"bad '{kind}' message: {type(exc).__name__}: {exc}")
                except Exception as exc:
                    traceback.print_exc()
                    return self._reply_error(conn, "planner", f"{type(exc).__name__}: {exc}")
        finally:
            if counted:
                with self._sessions_lock:
                    self.sessions -= 1
            self._conns.discard(conn)
            conn.close()


class ServerProcess:
    """``python -m bench2drive.planner_server`` as a child process that is restarted when it dies.

    The server picks a free port and writes the client config; thin agents read that file at every route
    set-up and connection attempt, so after a restart the next route finds the new server.
    """

    def __init__(self, agent_config: str | Path, client_config: str | Path, *, gpu: int | None = None,
                 log: str | Path | None = None, reply_timeout: float | None = None, max_restarts: int = 5,
                 startup_timeout: float = 600.0):
        self.agent_config, self.client_config = Path(agent_config), Path(client_config)
        self.gpu, self.reply_timeout, self.max_restarts = gpu, reply_timeout, max_restarts
        self.log = Path(log) if log else self.client_config.with_suffix(".log")
        self.startup_timeout, self.restarts = startup_timeout, 0
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "bench2drive.planner_server", f"--agent-config={self.agent_config}",
               f"--client-config={self.client_config}"]
        return cmd + ([f"--reply-timeout={self.reply_timeout}"] if self.reply_timeout else [])

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:  # ready once the client config names this process
            if self.proc.poll() is not None:
                raise RuntimeError(f"planner server exited with {self.proc.returncode} while starting; see {self.log}")
            try:
                if json.loads(self.client_config.read_text()).get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass  # not written yet
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"planner server did not start within {self.startup_timeout} s; see {self.log}")

    def ensure_running(self) -> None:
        """Restart a dead server (up to ``max_restarts`` times; then RuntimeError naming the log)."""
        with self._lock:
            if self._stop.is_set() or (self.proc is not None and self.proc.poll() is None):
                return
            if self.restarts >= self.max_restarts:
                raise RuntimeError(f"planner server died {self.restarts + 1} times; see {self.log}")
            self.restarts += 1
            print(f"planner server exited ({self.proc.returncode if self.proc else 'not started'}); restart "
                  f"{self.restarts} of {self.max_restarts}", flush=True)
            self.start()

    def watch(self, interval: float = 2.0) -> ServerProcess:
        """Restart the server from a background thread while routes run."""
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.ensure_running()
                except RuntimeError as err:
                    print(err, flush=True)
                    return
        threading.Thread(target=loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench2drive.planner_server", description=__doc__.split("\n")[0])
    p.add_argument("--agent-config", required=True, help="the agent YAML (run_closed_loop writes <output_dir>/agent.yaml)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (written to --client-config)")
    p.add_argument("--client-config", help="write the thin agent's JSON config (address, sensors, digest) here")
    p.add_argument("--reply-timeout", type=float, default=None,
                   help="seconds the thin agent waits for a control (keep below the evaluator's --timeout)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    p.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_S * 1000)
    args = p.parse_args(argv)
    server = PlannerServer(args.agent_config, host=args.host, port=args.port, max_batch=args.max_batch,
                           batch_wait_s=args.batch_wait_ms / 1000)
    if args.client_config:
        extra = {"reply_timeout_s": args.reply_timeout} if args.reply_timeout else {}
        print(f"client config: {server.write_client_config(args.client_config, **extra)}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
