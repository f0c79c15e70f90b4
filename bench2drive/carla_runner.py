"""Run route parts through the Bench2Drive leaderboard in CARLA: servers, evaluator subprocesses, restarts, Ray.

Mirrors leaderboard/scripts/run_evaluation.sh and run_evaluation_multi_*.sh: part i uses port 30000 + i*150,
traffic manager 50000 + i*150 and GPU ``gpus[i % len(gpus)]``; a part whose evaluator exits non-zero (server
crash) is restarted and resumes from its checkpoint JSON.

With a bridge (``PartJob.server_config`` set) the evaluator runs in the leaderboard's own interpreter
(``PartJob.python``) with the thin agent (leaderboard_agent.py), and the planner runs in a planner server
process: one per GPU shared by that GPU's parts when run locally (their planner calls batch), one per part
under Ray. A planner server that dies is restarted; the route it was driving is "Agent crashed".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CARLA_HELP = ("set CARLA_ROOT to a CARLA 0.9.15 install (with CarlaUE4.sh and the additional maps), see "
              "https://github.com/Thinklab-SJTU/Bench2Drive#setup")
B2D_HELP = ("set BENCH2DRIVE_ROOT to a checkout of Thinklab-SJTU/Bench2Drive (with leaderboard/ and "
            "scenario_runner/), and install the `carla` extra")


def require_roots() -> tuple[Path, Path]:
    """(CARLA_ROOT, BENCH2DRIVE_ROOT) from the environment; a clear error when missing."""
    carla_root, b2d_root = os.environ.get("CARLA_ROOT"), os.environ.get("BENCH2DRIVE_ROOT")
    if not carla_root or not (Path(carla_root) / "CarlaUE4.sh").is_file():
        raise RuntimeError(f"simulator=carla needs CARLA: CARLA_ROOT={carla_root!r} has no CarlaUE4.sh; "
                           f"{CARLA_HELP}. Without CARLA use closed_loop=raster (the embedded simulator).")
    if not b2d_root or not (Path(b2d_root) / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py").is_file():
        raise RuntimeError(f"simulator=carla needs the Bench2Drive leaderboard: BENCH2DRIVE_ROOT={b2d_root!r} "
                           f"has no leaderboard/leaderboard/leaderboard_evaluator.py; {B2D_HELP}.")
    return Path(carla_root), Path(b2d_root)


AGENT_FILE = Path(__file__).resolve().parent / "agent.py"  # in-process agent (leaderboard on Python >= 3.10)
THIN_AGENT_FILE = Path(__file__).resolve().parent / "leaderboard_agent.py"  # bridge agent (Python 3.7+)
BRIDGE_REPLY_SHARE = 0.9  # of the evaluator's client timeout


@dataclass
class PartJob:
    index: int
    routes_xml: Path
    checkpoint: Path
    save_path: Path
    agent_config: Path
    gpu: int
    port: int
    tm_port: int
    launch_server: bool = False
    server_start_wait: float = 60.0
    max_restarts: int = 5
    timeout: float = 600.0
    python: str = sys.executable  # the leaderboard's interpreter
    agent: Path = AGENT_FILE
    server_config: Path | None = None  # bridge: the planner server's agent YAML (agent_config is its client JSON)

    def planner_server(self, *, inherit_gpu: bool = False):
        """The bridge's planner server for this part (not started); ``inherit_gpu`` keeps the caller's
        CUDA_VISIBLE_DEVICES (a Ray actor's GPU)."""
        from bench2drive.planner_server import ServerProcess

        # the thin agent gives up before the evaluator's watchdog (--timeout), so the error names the server
        return ServerProcess(self.server_config, self.agent_config, gpu=None if inherit_gpu else self.gpu,
                             reply_timeout=BRIDGE_REPLY_SHARE * self.timeout, max_restarts=self.max_restarts)


def evaluator_command(job: PartJob, b2d_root: Path) -> list[str]:
    """The leaderboard_evaluator.py call of run_evaluation.sh for one part."""
    return [job.python, str(b2d_root / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py"),
            f"--routes={job.routes_xml}", "--repetitions=1", "--track=SENSORS", f"--checkpoint={job.checkpoint}",
            f"--agent={job.agent}", f"--agent-config={job.agent_config}", "--debug=0", "--resume=True",
            f"--port={job.port}", f"--traffic-manager-port={job.tm_port}", f"--gpu-rank={job.gpu}",
            f"--timeout={job.timeout}"]


def evaluator_env(job: PartJob, carla_root: Path, b2d_root: Path) -> dict:
    env = dict(os.environ)
    paths = [carla_root / "PythonAPI", carla_root / "PythonAPI" / "carla", b2d_root / "leaderboard",
             b2d_root / "leaderboard" / "team_code", b2d_root / "scenario_runner"]
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [env.get("PYTHONPATH", "")])
    env.update({"SCENARIO_RUNNER_ROOT": str(b2d_root / "scenario_runner"),
                "LEADERBOARD_ROOT": str(b2d_root / "leaderboard"), "CHALLENGE_TRACK_CODENAME": "SENSORS",
                "IS_BENCH2DRIVE": "True", "SAVE_PATH": str(job.save_path), "CUDA_VISIBLE_DEVICES": str(job.gpu)})
    return env


def start_server(carla_root: Path, job: PartJob) -> subprocess.Popen:
    """Headless CARLA server on the part's port and GPU (as the v0.0.4 evaluator launches it)."""
    cmd = [str(carla_root / "CarlaUE4.sh"), "-RenderOffScreen", "-nosound", f"-carla-rpc-port={job.port}",
           f"-graphicsadapter={job.gpu}"]
    proc = subprocess.Popen(cmd, preexec_fn=os.setsid)
    time.sleep(job.server_start_wait)
    return proc


def stop_server(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def run_part(job: PartJob, planner_server=None) -> dict:
    """Run one part to the end, restarting after crashes; returns {'part', 'returncode', 'attempts'}.
    A bridged part without a shared ``planner_server`` starts its own."""
    carla_root, b2d_root = require_roots()
    job.save_path.mkdir(parents=True, exist_ok=True)
    job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    own = None
    if job.server_config is not None and planner_server is None:
        own = planner_server = job.planner_server().start().watch()
    try:
        return _run_attempts(job, carla_root, b2d_root, planner_server)
    finally:
        if own is not None:
            own.stop()


def _run_attempts(job: PartJob, carla_root: Path, b2d_root: Path, planner_server) -> dict:
    rc, attempt = -1, 0
    for attempt in range(1, job.max_restarts + 2):
        if planner_server is not None:
            planner_server.ensure_running()
        server = start_server(carla_root, job) if job.launch_server else None
        try:
            log = open(job.checkpoint.with_suffix(".log"), "a")
            rc = subprocess.call(evaluator_command(job, b2d_root), cwd=b2d_root,
                                 env=evaluator_env(job, carla_root, b2d_root), stdout=log, stderr=subprocess.STDOUT)
            log.close()
        finally:
            stop_server(server)
        if rc == 0:
            break
        print(f"part {job.index}: evaluator exited with {rc} (server crash?); restart {attempt} resumes from "
              f"{job.checkpoint}", flush=True)
    return {"part": job.index, "returncode": rc, "attempts": attempt}


def run_parts(jobs: list[PartJob], *, ray_address: str | None = None) -> list[dict]:
    """All parts: one Ray actor per part (one GPU each) when ``ray_address`` is set, else local processes."""
    if ray_address:
        try:
            import ray
        except ImportError as exc:
            raise ImportError("closed_loop.ray_address is set but ray is not installed (the `ray` extra)") from exc
        ray.init(address=ray_address, ignore_reinit_error=True)

        @ray.remote(num_gpus=1)
        class PartActor:
            def run(self, job: PartJob) -> dict:
                job.gpu = 0  # Ray sets CUDA_VISIBLE_DEVICES for the actor
                if job.server_config is None:
                    return run_part(job)
                # the actor's own planner server, on its node and GPU
                job.agent_config = job.agent_config.with_name(f"{job.agent_config.stem}_part{job.index}.json")
                server = job.planner_server(inherit_gpu=True).start().watch()
                try:
                    return run_part(job, server)
                finally:
                    server.stop()

        actors = [PartActor.remote() for _ in jobs]
        return ray.get([a.run.remote(j) for a, j in zip(actors, jobs, strict=False)])
    from concurrent.futures import ThreadPoolExecutor

    servers = {}  # one planner server per (GPU, client config): that GPU's parts share it and batch
    for job in jobs:
        if job.server_config is not None and (job.gpu, job.agent_config) not in servers:
            servers[job.gpu, job.agent_config] = job.planner_server()
    try:
        for server in servers.values():
            server.start().watch()
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            return list(pool.map(lambda j: run_part(j, servers.get((j.gpu, j.agent_config))), jobs))
    finally:
        for server in servers.values():
            server.stop()
