"""Score an agent with NAVSIM's PDMS (v1) or EPDMS (v2) and write the devkit's CSV.

    python navsim_agents/run_pdm_score.py agent=constant_velocity split=navmini scorer=pdms
    python navsim_agents/run_pdm_score.py agent=trajectory_file agent.path=out.json split=custom split.data_split=mini

Output: ``$NAVSIM_EXP_ROOT/<experiment_name>/<timestamp>.csv`` and a JSON sidecar ``<timestamp>.json`` describing
the run (agent, backbone and its weights, planner weights, corruption, split, scorer, token counts; read by
``run_robustness_report.py``). Rows are appended to a partial file next to it while the run goes, named with a
hash of the run's configuration, so a rerun of the same configuration resumes where an interrupted one stopped
and the jobs of a sweep that share an experiment folder never resume from each other's rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from eupe.config_tree import hydra_config_path
from navsim_agents.scoring import evaluate as E
from navsim_agents.scoring.pdm_score import PDMScoreRunner

logger = logging.getLogger("run_pdm_score")


def metric_cache_root(cfg: DictConfig, data_split: str) -> Path:
    return Path(cfg.metric_cache_path) if cfg.metric_cache_path else Path(cfg.exp_root) / "metric_cache" / data_split


# the config groups that decide a run's rows; two runs resume from each other only when all of them agree
RUN_KEY_GROUPS = ("agent", "backbone", "planner", "corruption", "split", "scorer")


def run_key(cfg: DictConfig) -> str:
    """12 hex digits identifying the scored configuration (the resolved `RUN_KEY_GROUPS`; absent ones are None)."""
    resolved = {group: OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else None
                for group in RUN_KEY_GROUPS}
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def partial_path(cfg: DictConfig) -> Path:
    """Rows of an unfinished run: `<exp_root>/<experiment_name>/partial_<scorer>_<agent class>_<run_key>.jsonl`."""
    agent_tag = str(cfg.agent.get("_target_", "agent")).rsplit(".", 1)[-1]
    name = f"partial_{cfg.scorer.name}_{agent_tag}_{run_key(cfg)}.jsonl"
    return Path(cfg.exp_root) / str(cfg.experiment_name) / name


def run_sidecar(cfg: DictConfig, agent, rows: list[dict]) -> dict[str, Any]:
    """What `run_robustness_report.py` reads next to a CSV: agent, backbone (name, weights_source) or None for
    agents without an image backbone, planner weights, corruption (name, severity, cameras, seed), split, scorer,
    number of tokens and of valid rows."""
    backbone_module = getattr(agent, "backbone", None)
    if backbone_module is not None and cfg.get("backbone") is not None:
        backbone = {"name": str(cfg.backbone.name),
                    "weights_source": str(getattr(backbone_module, "weights_source", "unknown"))}
        planner_weights = getattr(agent, "_loaded_from", None) or "random (no agent.checkpoint)"
    else:
        backbone = {"name": None, "weights_source": None}
        planner_weights = str(getattr(agent, "weights_source", "unknown"))
    corruption = OmegaConf.to_container(cfg.corruption, resolve=True)
    return {
        "agent": agent.name(),
        "backbone": backbone,
        "planner_weights": str(planner_weights),
        "corruption": {key: corruption.get(key) for key in ("name", "severity", "cameras", "seed")},
        "split": str(cfg.split.data_split),
        "scorer": str(cfg.scorer.name),
        "num_tokens": len(rows),
        "num_valid": sum(bool(r.get("valid", False)) for r in rows),
        "run_key": run_key(cfg),
    }


def _make_agent(cfg: DictConfig):
    agent = hydra.utils.instantiate(cfg.agent)
    agent.initialize()
    return agent


def _trajectory_fn(agent, loader, token: str, cfg: DictConfig):
    def compute():
        agent_input = loader.get_agent_input_from_token(token)
        if cfg.corruption.name != "none":
            from navsim_agents.data.scene_raster import corrupt_agent_input  # lazy: image code is heavy

            # synthetic scenes are raster renders: fog gets true depth and calibration drift a true re-render
            scene = loader.get_scene_from_token(token) if cfg.split.get("synthetic", False) else None
            agent_input = corrupt_agent_input(agent_input, cfg.corruption, seed_key=token, scene=scene)
        if getattr(agent, "requires_scene", False):
            return agent.compute_trajectory(agent_input, loader.get_scene_from_token(token))
        return agent.compute_trajectory(agent_input)

    return compute


def score_chunk(cfg_container: dict, tokens: list[str], agent=None, on_row=None) -> list[dict]:
    """Score `tokens` of the configured split (builds missing caches); the unit of work of every worker."""
    from navsim_agents.data.splits import build_scene_loader, resolve_split

    cfg = OmegaConf.create(cfg_container)
    paths = resolve_split(cfg.split)
    agent = agent if agent is not None else _make_agent(cfg)
    loader = build_scene_loader(cfg.split, agent.get_sensor_config())
    runner = PDMScoreRunner(cfg.scorer.version, human_penalty_filter=bool(cfg.scorer.human_penalty_filter))
    root = metric_cache_root(cfg, str(cfg.split.data_split))
    rows = []
    for token in tokens:
        if token not in loader:
            row = {"token": token, "valid": False, "_error": f"unknown token {token} (not a scene of this split)"}
            logger.warning("token %s failed: %s", token, row["_error"])
        else:
            try:
                frames = loader.scene_frames_dicts[token]
                cache_path = E.ensure_metric_cache(frames, root, str(paths.maps_root or ""), paths.map_version,
                                                   force=bool(cfg.get("force_metric_cache", False)))
            except Exception as err:  # noqa: BLE001 - missing map / corrupt data: an invalid row
                cache_path = E.cache_file(root, loader.scene_frames_dicts[token][3]["log_name"], token)
                logger.warning("token %s: metric cache could not be built (%s: %s)", token, type(err).__name__, err)
            row = E.score_token(token, cache_path, _trajectory_fn(agent, loader, token, cfg), runner)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _all_tokens(cfg: DictConfig) -> list[str]:
    from navsim_agents.data.dataclasses import SensorConfig
    from navsim_agents.data.splits import build_scene_loader

    loader = build_scene_loader(cfg.split, SensorConfig.build_no_sensors())
    tokens = list(loader.tokens)
    wanted = cfg.split.scene_filter.get("tokens")
    if wanted:  # requested tokens that are not scenes of the split become invalid rows
        tokens += [t for t in wanted if t not in loader]
    return tokens


def _run_ray(cfg: DictConfig, container: dict, todo: list[str], on_row) -> None:
    try:
        import ray
    except ImportError as err:
        raise ImportError("worker=ray needs Ray: pip install 'ray[default]' (or use worker=sequential)") from err
    ray.init(address=cfg.worker.address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(score_chunk)
    size = int(cfg.worker.tokens_per_task)
    pending = [remote.remote(container, todo[i:i + size]) for i in range(0, len(todo), size)]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for row in ray.get(done[0]):
            on_row(row)


def run(cfg: DictConfig) -> Path:
    """Score every token of the split; returns the CSV path."""
    version = str(cfg.scorer.version)
    out_dir = Path(cfg.exp_root) / str(cfg.experiment_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    partial = partial_path(cfg)
    if cfg.restart and partial.exists():
        partial.unlink()
    tokens = _all_tokens(cfg)
    done_rows = {r["token"]: r for r in E.read_partial(partial)}
    todo = [t for t in tokens if t not in done_rows]
    if done_rows:
        logger.info("resuming: %d of %d tokens already scored in %s", len(tokens) - len(todo), len(tokens), partial)

    from tqdm import tqdm

    bar = tqdm(total=len(tokens), initial=len(tokens) - len(todo), unit="token", disable=not cfg.progress)

    def on_row(row: dict) -> None:
        E.append_partial(partial, row)
        done_rows[row["token"]] = row
        bar.update(1)

    agent = None
    start = time.perf_counter()
    if cfg.worker.name == "ray":
        _run_ray(cfg, container, todo, on_row)
        agent = _make_agent(cfg)
    else:
        agent = _make_agent(cfg)
        if todo:
            score_chunk(container, todo, agent=agent, on_row=on_row)
    bar.close()
    rows = E.order_rows(done_rows.values(), tokens)
    df = E.finalize(rows, version)
    csv_path = out_dir / f"{datetime.now().strftime('%Y.%m.%d.%H.%M.%S')}.csv"
    df.to_csv(csv_path)
    csv_path.with_suffix(".json").write_text(json.dumps(run_sidecar(cfg, agent, rows), indent=2) + "\n")
    partial.unlink(missing_ok=True)
    weights = getattr(agent, "weights_source", "unknown")
    elapsed = time.perf_counter() - start
    print(f"\n{cfg.scorer.name.upper()} of {agent.name()} on {cfg.split.data_split} ({elapsed:.1f} s)")
    print(E.summary_table(df, version, weights))
    print(f"results: {csv_path}")
    return csv_path


@hydra.main(config_path=hydra_config_path(), config_name="run_pdm_score", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
