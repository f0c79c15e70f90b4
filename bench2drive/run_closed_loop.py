"""Bench2Drive closed-loop evaluation entry point.

    python -m bench2drive.run_closed_loop                       # embedded simulator (default)
    python -m bench2drive.run_closed_loop closed_loop=carla     # CARLA + the Bench2Drive leaderboard

Writes ``<output_dir>/results/part<i>.json`` (leaderboard checkpoint JSON), ``<output_dir>/save/<save_name>/
metric_info.json`` and ``<output_dir>/metrics.json`` (+ .txt report, .png per-route plot).

``seed=`` (default 0) seeds the planner's construction (its random weights without ``agent.checkpoint``) and the
embedded simulator's draws; it is recorded in ``metrics.json``: the same seed gives the same numbers.

Closed-loop robustness (bench2drive/robustness.py): ``corruption=<name> corruption.severity=1..5`` on every
camera image the agent receives, ``sensor_fault=<name> sensor_fault.severity=1..5``, ``latency=fixed
latency.ms=N`` or ``latency=measured latency.profile=<row>|live``; ``agent.planner=expert`` drives the embedded
simulator's privileged expert under the same faults and latency. ``cell.json`` records the settings; a finished
run (cell.json + metrics.json) is skipped, so a killed multirun reruns only the cells not finished.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bench2drive import agent as agent_mod
from bench2drive import metrics
from bench2drive.progress import RunProgress, estimate_run
from bench2drive.robustness import Perturbations
from bench2drive.routes import filter_routes, read_routes, split_routes, write_routes
from eupe.atomic_io import atomic_write_text
from eupe.config_errors import ConfigError, exit_on_run_errors
from eupe.config_tree import config_dir, hydra_config_path
from rap_backbone.planner_config import planner_profile, register_planner_schema

register_planner_schema()  # configs/planner/*.yaml extend planner/schema, also when run as a script

SIMULATORS = ("raster", "carla")


def validate_config(cfg: DictConfig) -> None:
    """Check the settings before any route is driven (ConfigError naming the setting)."""
    from bench2drive.agent import PLANNERS
    from bench2drive.rig import RIGS

    cl = cfg.closed_loop
    if cl.simulator not in SIMULATORS:
        raise ConfigError(f"unknown simulator {cl.simulator!r}; use closed_loop=raster or closed_loop=carla")
    for name, value in (("seed", cfg.seed), ("closed_loop.seed", cl.get("seed", 0))):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name}={value!r} must be a non-negative integer")
    for name in ("num_parts", "max_ticks"):
        value = cl.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"closed_loop.{name}={value!r} must be an integer >= 1")
    if cfg.agent.planner not in PLANNERS:
        raise ConfigError(f"agent.planner={cfg.agent.planner!r} is unknown; choose one of {', '.join(PLANNERS)}")
    if cfg.agent.rig not in RIGS:
        raise ConfigError(f"agent.rig={cfg.agent.rig!r} is unknown; choose one of {', '.join(RIGS)}")
    if cl.simulator == "raster" and cl.scenario_types:
        from bench2drive.sim.scenarios import SUPPORTED

        bad = sorted(set(cl.scenario_types) - set(SUPPORTED))
        if bad:
            raise ConfigError(f"closed_loop.scenario_types has {bad}, which the embedded simulator does not build; "
                              f"it builds {sorted(SUPPORTED)} (the others need closed_loop=carla)")




def planner_name(planner_config) -> str:
    """The configs/planner/<name>.yaml a planner config is (a name, or the group's content), else 'custom'."""
    if isinstance(planner_config, str):
        return planner_config
    plain = OmegaConf.to_container(planner_config, resolve=True) if isinstance(planner_config, DictConfig) \
        else dict(planner_config)
    try:
        mine = planner_profile(plain)
    except (KeyError, ValueError, TypeError):
        return "custom"
    # the yamls state only what their size changes: compare them composed over the schema's defaults
    for path in sorted((config_dir() / "planner").glob("*.yaml")):
        if planner_profile(OmegaConf.to_container(OmegaConf.load(path), resolve=True)) == mine:
            return path.stem
    return "custom"


def validate(cfg: DictConfig) -> Perturbations:
    """Every setting checked before any simulation (ConfigError naming the setting and the allowed values);
    returns the run's corruption / sensor-fault / latency settings."""
    validate_config(cfg)
    if cfg.agent.planner == "expert" and cfg.closed_loop.simulator != "raster":
        raise ConfigError("agent.planner=expert is the embedded simulator's privileged expert; use closed_loop=raster")
    python = cfg.closed_loop.get("leaderboard_python")
    if python and shutil.which(str(python)) is None:
        raise ConfigError(f"closed_loop.leaderboard_python={python!r} is not an executable; give the leaderboard's "
                          "interpreter (e.g. the python of the conda env with CARLA 0.9.15's client)")
    if cfg.agent.planner == "expert" and cfg.closed_loop.bridge:
        raise ConfigError("agent.planner=expert reads the embedded simulator directly, it has no planner server: "
                          "use closed_loop.bridge=false")
    try:
        return Perturbations.from_cfg(corruption=cfg.corruption, sensor_fault=cfg.sensor_fault, latency=cfg.latency,
                                      seed=cfg.agent.seed, backbone=cfg.backbone.name,
                                      planner_config=planner_name(cfg.agent.planner_config))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None


def cell_description(cfg: DictConfig, perturbations: Perturbations) -> dict:
    """What this run is, as the robustness report reads it (cell.json); a finished cell with it is skipped."""
    lat = perturbations.latency
    backbone = cfg.backbone.name if cfg.agent.planner == "rap" else cfg.agent.planner
    if cfg.agent.planner == "expert" and lat.profile and not lat.live:  # the expert at a backbone's latency
        backbone = f"expert@{cfg.backbone.name}-latency"
    return {"simulator": cfg.closed_loop.simulator, "planner": cfg.agent.planner, "backbone": backbone,
            "backbone_weights": OmegaConf.select(cfg, "backbone.weights", default=None),
            "planner_config": planner_name(cfg.agent.planner_config), "checkpoint": cfg.agent.checkpoint,
            "image": list(agent_mod.image_size(OmegaConf.to_container(cfg.agent, resolve=True))), "rig": cfg.agent.rig,
            "corruption": perturbations.corruption.name, "severity": perturbations.corruption.severity,
            "sensor_fault": perturbations.fault.name, "fault_severity": perturbations.fault.severity,
            "latency": lat.mode, "latency_ms": None if lat.live else lat.ms, "latency_profile": lat.profile,
            "seed": perturbations.seed,
            "routes": OmegaConf.to_container(cfg.closed_loop, resolve=True)}


def _agent_config(cfg: DictConfig, out: Path, perturbations: Perturbations) -> Path:
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    if perturbations.latency.mode == "measured" and not perturbations.latency.live:
        agent["latency"] = {"mode": "fixed", "ms": perturbations.latency.ms}  # the profile's row, resolved once
    return atomic_write_text(out / "agent.yaml", OmegaConf.to_yaml(OmegaConf.create(agent)))


def _warm_up_seconds(planner, cfg: DictConfig) -> float:
    """One planner call on blank sensors (so the first route does not pay torch's start-up) and its time, for
    the run's estimate."""
    import time

    import numpy as np

    a = agent_mod.RAPLeaderboardAgent(planner=planner)
    a.setup(str(Path(cfg.output_dir) / "agent.yaml"))
    data = {c.id: (0, np.zeros((c.height, c.width, 4), np.uint8)) for c in a.rig}
    feats = a.build_features(data, np.zeros(2), 0.0, 0.0, np.zeros(2), 4)
    planner(feats)
    t0 = time.perf_counter()
    planner(feats)
    return time.perf_counter() - t0


def run_raster(cfg: DictConfig, out: Path, perturbations: Perturbations) -> str:
    from bench2drive.rig import build_rig
    from bench2drive.sim.expert import ExpertAgent
    from bench2drive.sim.route_runner import SimSettings, run_routes
    from bench2drive.sim.scenarios import SUPPORTED, synthetic_routes

    cl = cfg.closed_loop
    if cl.routes:
        routes = read_routes(cl.routes)
        if cl.scenario_types:
            routes = filter_routes(routes, scenario_types=list(cl.scenario_types))
        bad = sorted({r.scenario_type for r in routes if r.scenario_type not in SUPPORTED})
        if bad:
            raise ValueError(f"{cl.routes}: the embedded simulator cannot build scenario type(s) {bad}; it builds "
                             f"{sorted(SUPPORTED)} (Bench2Drive's other types need closed_loop=carla)")
    else:
        routes = synthetic_routes(list(cl.scenario_types) if cl.scenario_types else None, length=cl.route_length)
    write_routes(routes, out / "routes.xml")
    conf = _agent_config(cfg, out, perturbations)
    bridge = bool(cl.bridge)
    print(f"simulator: embedded closed-loop simulator (no CARLA server), cameras: {cl.renderer} renderer; "
          f"{perturbations.describe()}" + ("; agent: thin leaderboard agent + planner server (bridge)" if bridge
                                           else ""), flush=True)
    expert = cfg.agent.planner == "expert"
    agent_cfg, _ = agent_mod.load_agent_config(str(conf))
    server = None
    if expert:
        planner, source, plan_s = None, "privileged scripted expert (no cameras, no network)", 0.0
    elif bridge:  # the thin agent drives, the planner runs in a planner server process, as with CARLA
        from bench2drive.planner_server import ServerProcess

        client = out / "bridge" / "client.json"
        server = ServerProcess(conf, client, max_restarts=cl.max_restarts).start().watch()
        planner, source, plan_s = None, json.loads(client.read_text())["planner_source"], 0.0
    else:
        planner = agent_mod.build_planner(agent_cfg)  # built once, shared by the per-route agents
        source = getattr(planner, "source", "unknown")
        plan_s = _warm_up_seconds(planner, cfg)
    current: dict = {}

    def make(save_name: str):
        if expert:
            a = ExpertAgent(perturbations)
            a.setup(save_name)
            current["agent"] = a
            return a
        if bridge:
            from bench2drive.leaderboard_agent import BridgeAgent

            a = BridgeAgent()
            a.setup(f"{client}+{save_name}")
            return a
        a = agent_mod.RAPLeaderboardAgent(planner=planner)
        a.setup(f"{conf}+{save_name}")
        return a

    def on_sim(sim) -> None:
        if expert:
            current["agent"].attach(sim)

    cams = build_rig(agent_cfg["rig"], width=agent_cfg["image_width"], height=agent_cfg["image_height"])
    settings = SimSettings(rig=[] if expert else cams, max_ticks=cl.max_ticks, render=cl.render and not expert,
                           renderer=cl.renderer, seed=cl.seed)
    from bench2drive.sim.scenarios import RoadPath

    est = estimate_run([RoadPath(r.waypoints).length for r in routes], max_ticks=cl.max_ticks,
                       tick_s=0.002 if expert else 0.01, plan_s=plan_s, plan_every=agent_mod.PLAN_EVERY)
    print(est.describe() + (f" (planner call {plan_s * 1000:.0f} ms after warm-up)" if planner is not None else ""),
          flush=True)
    progress = RunProgress(enabled=bool(cfg.progress))
    try:
        for i, part in enumerate(split_routes(routes, cl.num_parts)):
            if part:
                run_routes(part, make, checkpoint=out / "results" / f"part{i}.json", save_path=out / "save",
                           resume=cfg.resume, settings=settings, on_sim=on_sim, progress=progress)
    finally:
        if server is not None:
            server.stop()
    return source


def run_carla(cfg: DictConfig, out: Path, perturbations: Perturbations) -> str:
    from bench2drive.carla_runner import AGENT_FILE, THIN_AGENT_FILE, PartJob, require_roots, run_parts

    cl = cfg.closed_loop
    _, b2d_root = require_roots()
    routes = read_routes(cl.routes or b2d_root / "leaderboard" / "data" / "bench2drive220.xml")
    routes = filter_routes(routes, scenario_types=list(cl.scenario_types) if cl.scenario_types else None,
                           towns=list(cl.towns) if cl.towns else None)
    write_routes(routes, out / "routes.xml")
    conf = _agent_config(cfg, out, perturbations)
    python = cl.leaderboard_python or sys.executable
    if not cl.bridge and cl.leaderboard_python:
        print(f"closed_loop.bridge=false: the in-process agent loads eupe-drive and torch in {python}; "
              "a Python 3.7/3.8 leaderboard needs closed_loop.bridge=true", flush=True)
    jobs = []
    for i, part in enumerate(split_routes(routes, cl.num_parts)):
        if not part:
            continue
        xml = write_routes(part, out / "parts" / f"part{i}.xml")
        gpu = int(cl.gpus[i % len(cl.gpus)])
        bridged = {"agent": THIN_AGENT_FILE, "agent_config": out / "bridge" / f"gpu{gpu}.json",
                   "server_config": conf} if cl.bridge else {"agent": AGENT_FILE, "agent_config": conf}
        jobs.append(PartJob(index=i, routes_xml=xml, checkpoint=out / "results" / f"part{i}.json",
                            save_path=out / "save", gpu=gpu, python=str(python),
                            port=cl.base_port + i * cl.port_step, tm_port=cl.base_tm_port + i * cl.port_step,
                            launch_server=cl.launch_server, server_start_wait=cl.server_start_wait,
                            max_restarts=cl.max_restarts, timeout=cl.timeout, **bridged))
    for r in run_parts(jobs, ray_address=cl.ray_address):
        print(f"part {r['part']}: return code {r['returncode']} after {r['attempts']} attempt(s)")
    ck = cfg.agent.checkpoint
    return f"planner: {ck or 'random (no agent.checkpoint)'}; backbone: {cfg.agent.backbone}"


def run(cfg: DictConfig) -> dict:
    """One closed-loop run (a sweep cell): validate, drive (resuming), score; returns the metrics. A finished
    cell (its cell.json and metrics.json there) is skipped."""
    perturbations = validate(cfg)  # before any simulation or model is built
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cell = metrics.json_safe(cell_description(cfg, perturbations))
    cell_path = out / "cell.json"
    if cell_path.is_file():
        previous = json.loads(cell_path.read_text())
        if previous != cell:
            changed = sorted(k for k in set(cell) | set(previous) if cell.get(k) != previous.get(k))
            raise ConfigError(f"{out} holds a run with other settings ({', '.join(changed)}); give this run its own "
                             "experiment_name (or output_dir) so results of two configurations are not mixed")
        if cfg.resume and (out / "metrics.json").is_file():
            print(f"{out}: this cell is finished (metrics.json); skipped", flush=True)
            return json.loads((out / "metrics.json").read_text())
    atomic_write_text(cell_path, json.dumps(cell, indent=2))
    if cfg.closed_loop.simulator == "raster":
        weights = run_raster(cfg, out, perturbations)
    else:
        weights = run_carla(cfg, out, perturbations)
    jc = None
    if cfg.closed_loop.simulator == "raster":
        from bench2drive.sim.scenarios import synthetic_junction_completion

        jc = synthetic_junction_completion
    else:
        try:  # Traffic_Signs partial credit needs the towns' OpenDRIVE maps and CARLA's GlobalRoutePlanner
            jc = metrics.carla_junction_completion(os.environ["CARLA_ROOT"])
        except Exception as exc:  # report without the partial credit rather than fail the whole run
            print(f"Traffic_Signs partial credit skipped: {exc}", flush=True)
    # corrected values come along: the official Driving Score divides by 220 whatever the route set
    m = metrics.evaluate(out / "results", out / "save", out / "routes.xml", corrected=True, junction_completion=jc)
    m = {"simulator": cfg.closed_loop.simulator, "weights": weights, "seed": int(cfg.seed),
         "conditions": perturbations.describe(), **m}
    atomic_write_text(out / "metrics.txt", metrics.format_report(m) + "\n")
    metrics.plot_per_route(m, out / "metrics.png", title=f"{cell['backbone']}: {perturbations.describe()}")
    # last: metrics.json marks the cell finished
    atomic_write_text(out / "metrics.json", json.dumps(metrics.json_safe(m), indent=2))
    print(metrics.format_report(m))
    return m


@hydra.main(config_path=hydra_config_path(), config_name="run_closed_loop", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_run_errors():
        run(cfg)


if __name__ == "__main__":
    main()
