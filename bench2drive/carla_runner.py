"""Run route parts through the Bench2Drive leaderboard in CARLA: servers, evaluator subprocesses, restarts, Ray.

Mirrors leaderboard/scripts/run_evaluation.sh and run_evaluation_multi_*.sh: part i uses port 30000 + i*150,
traffic manager 50000 + i*150 and GPU ``gpus[i % len(gpus)]``; a part whose evaluator exits non-zero (server
crash) is restarted and resumes from its checkpoint JSON.
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


def evaluator_command(job: PartJob, b2d_root: Path) -> list[str]:
    """The leaderboard_evaluator.py call of run_evaluation.sh for one part."""
    agent = Path(__file__).resolve().parent / "agent.py"
    return [sys.executable, str(b2d_root / "leaderboard" / "leaderboard" / "leaderboard_evaluator.py"),
            f"--routes={job.routes_xml}", "--repetitions=1", "--track=SENSORS", f"--checkpoint={job.checkpoint}",
            f"--agent={agent}", f"--agent-config={job.agent_config}", "--debug=0", "--resume=True",
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


def run_part(job: PartJob) -> dict:
    """Run one part to the end, restarting after crashes; returns {'part', 'returncode', 'attempts'}."""
    carla_root, b2d_root = require_roots()
    job.save_path.mkdir(parents=True, exist_ok=True)
    job.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rc, attempt = -1, 0
    for attempt in range(1, job.max_restarts + 2):
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
                return run_part(job)

        actors = [PartActor.remote() for _ in jobs]
        return ray.get([a.run.remote(j) for a, j in zip(actors, jobs, strict=False)])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        return list(pool.map(run_part, jobs))
