"""Bench2Drive closed-loop evaluation entry point.

    python -m bench2drive.run_closed_loop                       # embedded simulator (default)
    python -m bench2drive.run_closed_loop closed_loop=carla     # CARLA + the Bench2Drive leaderboard

Writes ``<output_dir>/results/part<i>.json`` (leaderboard checkpoint JSON), ``<output_dir>/save/<save_name>/
metric_info.json`` and ``<output_dir>/metrics.json`` (+ .txt report, .png per-route plot).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bench2drive import metrics
from bench2drive.routes import filter_routes, read_routes, split_routes, write_routes
from eupe.config_tree import hydra_config_path


def _agent_config(cfg: DictConfig, out: Path) -> Path:
    path = out / "agent.yaml"
    path.write_text(OmegaConf.to_yaml(cfg.agent, resolve=True))
    return path


def run_raster(cfg: DictConfig, out: Path) -> str:
    from bench2drive import agent as agent_mod
    from bench2drive.rig import build_rig
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
    conf = _agent_config(cfg, out)
    print(f"simulator: embedded closed-loop simulator (no CARLA server), cameras: {cl.renderer} renderer")
    agent_cfg, _ = agent_mod.load_agent_config(str(conf))
    planner = agent_mod.build_planner(agent_cfg)  # built once, shared by the per-route agents

    def make(save_name: str):
        a = agent_mod.RAPLeaderboardAgent(planner=planner)
        a.setup(f"{conf}+{save_name}")
        return a

    cams = build_rig(agent_cfg["rig"], width=agent_cfg["image_width"], height=agent_cfg["image_height"])
    settings = SimSettings(rig=cams, max_ticks=cl.max_ticks, render=cl.render, renderer=cl.renderer, seed=cl.seed)
    for i, part in enumerate(split_routes(routes, cl.num_parts)):
        if part:
            run_routes(part, make, checkpoint=out / "results" / f"part{i}.json", save_path=out / "save",
                       resume=cfg.resume, settings=settings)
    return getattr(planner, "source", "unknown")


def run_carla(cfg: DictConfig, out: Path) -> str:
    from bench2drive.carla_runner import PartJob, require_roots, run_parts

    cl = cfg.closed_loop
    _, b2d_root = require_roots()
    routes = read_routes(cl.routes or b2d_root / "leaderboard" / "data" / "bench2drive220.xml")
    routes = filter_routes(routes, scenario_types=list(cl.scenario_types) if cl.scenario_types else None,
                           towns=list(cl.towns) if cl.towns else None)
    write_routes(routes, out / "routes.xml")
    conf = _agent_config(cfg, out)
    jobs = []
    for i, part in enumerate(split_routes(routes, cl.num_parts)):
        if not part:
            continue
        xml = write_routes(part, out / "parts" / f"part{i}.xml")
        jobs.append(PartJob(index=i, routes_xml=xml, checkpoint=out / "results" / f"part{i}.json",
                            save_path=out / "save", agent_config=conf, gpu=int(cl.gpus[i % len(cl.gpus)]),
                            port=cl.base_port + i * cl.port_step, tm_port=cl.base_tm_port + i * cl.port_step,
                            launch_server=cl.launch_server, server_start_wait=cl.server_start_wait,
                            max_restarts=cl.max_restarts, timeout=cl.timeout))
    for r in run_parts(jobs, ray_address=cl.ray_address):
        print(f"part {r['part']}: return code {r['returncode']} after {r['attempts']} attempt(s)")
    ck = cfg.agent.checkpoint
    return f"planner: {ck or 'random (no agent.checkpoint)'}; backbone: {cfg.agent.backbone}"


@hydra.main(config_path=hydra_config_path(), config_name="run_closed_loop", version_base=None)
def main(cfg: DictConfig) -> None:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.closed_loop.simulator == "raster":
        weights = run_raster(cfg, out)
    elif cfg.closed_loop.simulator == "carla":
        weights = run_carla(cfg, out)
    else:
        raise ValueError(f"unknown simulator '{cfg.closed_loop.simulator}'; use closed_loop=raster or carla")
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
    m = {"simulator": cfg.closed_loop.simulator, "weights": weights, **m}
    (out / "metrics.json").write_text(json.dumps(metrics.json_safe(m), indent=2))
    (out / "metrics.txt").write_text(metrics.format_report(m) + "\n")
    metrics.plot_per_route(m, out / "metrics.png")
    print(metrics.format_report(m))


if __name__ == "__main__":
    main()
