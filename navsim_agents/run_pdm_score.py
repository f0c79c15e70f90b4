"""Score an agent with NAVSIM's PDMS (v1) or EPDMS (v2) and write the devkit's CSV.

    python navsim_agents/run_pdm_score.py agent=constant_velocity split=navmini scorer=pdms
    python navsim_agents/run_pdm_score.py agent=trajectory_file agent.path=out.json split=custom split.data_split=mini

Output: ``$NAVSIM_EXP_ROOT/<experiment_name>/<timestamp>.csv`` and a JSON sidecar ``<timestamp>.json`` describing
the run (agent, backbone and its weights, planner weights, corruption, split, scorer, token counts; read by
``run_robustness_report.py``). Rows are appended to a partial file next to it while the run goes, named with a
hash of the run's configuration, so a rerun of the same configuration resumes where an interrupted one stopped
and the jobs of a sweep that share an experiment folder never resume from each other's rows.

Runs are reproducible: ``seed`` (default 0) seeds the agent's construction (random weights when no checkpoint
is given) and, derived per token, every random draw while a token is scored, so the same command gives the
same CSV whether run sequentially or over Ray, fresh or resumed. The settings are checked before any work
(``validate_config``): a wrong one, or a run in which no token could be scored, exits non-zero with one message.
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

from eupe.atomic_io import atomic_path, atomic_write_text
from eupe.config_errors import ConfigError, RunFailed, exit_on_run_errors
from eupe.config_tree import hydra_config_path
from eupe.seeding import derive_seed, seed_everything
from navsim_agents import config_checks
from navsim_agents.scoring import evaluate as E
from navsim_agents.scoring.pdm_score import PDMScoreRunner
from rap_backbone.planner_config import register_planner_schema

register_planner_schema()  # configs/planner/*.yaml extend planner/schema, also when run as a script

logger = logging.getLogger("run_pdm_score")


def metric_cache_root(cfg: DictConfig, data_split: str) -> Path:
    return Path(cfg.metric_cache_path) if cfg.metric_cache_path else Path(cfg.exp_root) / "metric_cache" / data_split


# the settings that decide a run's rows; two runs resume from each other only when all of them agree
RUN_KEY_GROUPS = ("agent", "backbone", "planner", "corruption", "split", "scorer", "seed")


def run_key(cfg: DictConfig) -> str:
    """12 hex digits identifying the scored configuration (the resolved `RUN_KEY_GROUPS`; absent ones are None)."""
    resolved = {group: (OmegaConf.to_container(cfg[group], resolve=True) if isinstance(cfg[group], DictConfig)
                        else cfg[group]) if cfg.get(group) is not None else None
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
        # the rules a number was computed under: never compare numbers whose rules differ
        "scoring_rules": {"reference": str(cfg.scorer.rules), "stages": 2 if cfg.scorer.two_stage else 1,
                          "traffic_agents_policy": str(cfg.scorer.traffic_agents_policy),
                          "human_penalty_filter": bool(cfg.scorer.human_penalty_filter),
                          "idm_keep_last_path_point": bool(cfg.scorer.get("idm_keep_last_path_point", False))},
        "num_tokens": len(rows),
        "num_valid": sum(bool(r.get("valid", False)) for r in rows),
        "seed": int(cfg.seed),
        "run_key": run_key(cfg),
    }


def make_runner(cfg: DictConfig, *, human_penalty_filter: bool):
    """The scorer for `cfg.scorer` under its traffic agents policy (log replay, reactive IDM, constant velocity)."""
    from navsim_agents.scoring.traffic_agents import LOG_REPLAY_POLICY, TRAFFIC_AGENTS_POLICIES

    policy = str(cfg.scorer.traffic_agents_policy)
    if policy not in TRAFFIC_AGENTS_POLICIES:
        raise ValueError(f"scorer.traffic_agents_policy={policy!r} is unknown; use one of {TRAFFIC_AGENTS_POLICIES}")
    if policy == LOG_REPLAY_POLICY:
        return PDMScoreRunner(str(cfg.scorer.version), human_penalty_filter=human_penalty_filter)
    if str(cfg.scorer.version) != "v2":
        raise ValueError(f"traffic_agents_policy={policy} is a NAVSIM v2 rule: use scorer=epdms or "
                         "scorer=epdms_two_stage")
    from navsim_agents.data.splits import resolve_split
    from navsim_agents.scoring.traffic_agents import TrafficScoreRunner

    maps_root = resolve_split(cfg.split, check_exists=False).maps_root
    return TrafficScoreRunner(human_penalty_filter=human_penalty_filter,
                              maps_root=str(maps_root) if maps_root else None, policy=policy,
                              idm_keep_last_path_point=bool(cfg.scorer.get("idm_keep_last_path_point", False)))


def validate_config(cfg: DictConfig) -> list[str]:
    """Check every setting before any work (ConfigError naming the setting); returns the split's tokens."""
    config_checks.check_seed(cfg.seed)
    config_checks.check_corruption(cfg.corruption)
    config_checks.check_worker(cfg.worker)
    if cfg.scorer.version not in ("v1", "v2"):
        raise ConfigError(f"scorer.version={cfg.scorer.version!r} must be v1 (PDMS) or v2 (EPDMS); use scorer=pdms "
                          "or scorer=epdms")
    return config_checks.check_split(cfg.split)


def _make_agent(cfg: DictConfig):
    """The agent, built with the run's seed (its random weights, when it has no checkpoint, follow `seed`)."""
    seed_everything(int(cfg.seed))
    agent = hydra.utils.instantiate(cfg.agent)
    agent.initialize()
    return agent


def _make_agent_checked(cfg: DictConfig):
    """`_make_agent` in the entry point: a missing or wrong file of the agent is a setting error."""
    try:
        return _make_agent(cfg)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise ConfigError(f"agent ({cfg.agent.get('_target_', '?').rsplit('.', 1)[-1]}): {err}") from None


def _trajectory_fn(agent, loader, token: str, cfg: DictConfig):
    def compute():
        seed_everything(derive_seed(int(cfg.seed), "token", token))  # same draws whatever worker or order
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
    """Score `tokens` of the configured split (builds missing caches); the unit of work of every worker.

    Two-stage: original tokens with the human penalty filter, synthetic ones without (navsim `pdm_score` applies it
    to SceneFrameType.ORIGINAL only); each row keeps its trajectory endpoint and start point for the aggregator."""
    from navsim_agents.data.splits import build_scene_loader, build_two_stage_loader, resolve_split
    from navsim_agents.long_lived import freeze_long_lived, release_long_lived
    from navsim_agents.scoring.two_stage import score_two_stage_token

    cfg = OmegaConf.create(cfg_container)
    paths = resolve_split(cfg.split)
    agent = agent if agent is not None else _make_agent(cfg)
    human_filter = bool(cfg.scorer.human_penalty_filter)
    if cfg.scorer.two_stage:
        loader = build_two_stage_loader(cfg.split, agent.get_sensor_config())
        frames_of, score = loader.scene_frames, score_two_stage_token
        runners = {synthetic: make_runner(cfg, human_penalty_filter=human_filter and not synthetic)
                   for synthetic in (False, True)}
        runner_for = lambda token: runners[loader.is_synthetic(token)]  # noqa: E731
    else:
        loader = build_scene_loader(cfg.split, agent.get_sensor_config())
        frames_of, score = loader.scene_frames_dicts.__getitem__, E.score_token
        runner = make_runner(cfg, human_penalty_filter=human_filter)
        runner_for = lambda token: runner  # noqa: E731
    root = metric_cache_root(cfg, str(cfg.split.data_split))
    rows = []
    try:
        for index, token in enumerate(tokens):
            if token not in loader:
                row = {"token": token, "valid": False, "_error": f"unknown token {token} (not a scene of this split)"}
                logger.warning("token %s failed: %s", token, row["_error"])
            else:
                frames = frames_of(token)
                try:
                    cache_path = E.ensure_metric_cache(frames, root, str(paths.maps_root or ""), paths.map_version,
                                                       force=bool(cfg.force_metric_cache))
                    row = score(token, cache_path, _trajectory_fn(agent, loader, token, cfg), runner_for(token))
                except Exception as err:  # noqa: BLE001 - missing map / corrupt data: an invalid row naming the file
                    row = {"token": token, "valid": False, "_error": f"{type(err).__name__}: {err}"}
                    logger.warning("token %s failed: %s", token, row["_error"])
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if index == 0:
                # the split, its maps, the agent and the first scene's objects are loaded by now
                freeze_long_lived(space_collections=bool(cfg.scorer.two_stage))
    finally:  # a longer process (tests, notebooks, a Ray worker's next chunk) gets its normal collector back
        release_long_lived()
    return rows


def _all_tokens(cfg: DictConfig, split_tokens: list[str]) -> list[str]:
    if cfg.scorer.two_stage:  # run_pdm_score.py (two-stage): original tokens, then the reactive synthetic ones
        from navsim_agents.data.dataclasses import SensorConfig
        from navsim_agents.data.splits import build_two_stage_loader

        loader = build_two_stage_loader(cfg.split, SensorConfig.build_no_sensors())
        tokens = loader.tokens_stage_one + loader.reactive_tokens_stage_two
    else:
        tokens = list(split_tokens)
    wanted = cfg.split.scene_filter.get("tokens")
    if wanted:  # requested tokens that are not scenes of the split become invalid rows
        present = set(tokens)
        tokens += [t for t in wanted if t not in present]
    return tokens


def failure_summary(rows: list[dict], limit: int = 3) -> str:
    """The most frequent reasons of failed rows, with counts (for the message of a run where all failed)."""
    counts: dict[str, int] = {}
    for r in rows:
        if not r.get("valid"):
            reason = str(r.get("_error", "no reason recorded"))
            counts[reason] = counts.get(reason, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n} x {reason}" for reason, n in top)


def corruption_label(cfg: DictConfig) -> str:
    """``fog severity 3`` / ``no corruption`` (cameras named when not all)."""
    c = cfg.corruption
    if c.name == "none":
        return "no corruption"
    cams = "" if c.cameras == "all" else f" on {', '.join(map(str, c.cameras))}"
    return f"{c.name} severity {c.severity}{cams}"


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


def _finalize_two_stage(cfg: DictConfig, rows: list[dict], tokens: list[str], weights: str, csv_path: Path):
    """Scene aggregation, the devkit's two-stage CSV, the summary table, and counts for the sidecar; the
    per-token weights go to `<timestamp>_weights.csv` (the devkit computes but does not write them)."""
    from navsim_agents.data.splits import two_stage_mapping
    from navsim_agents.data.synthetic_scenes import SYNTHETIC_TOKEN_LENGTH
    from navsim_agents.scoring import two_stage as T

    synthetic = [t for t in tokens if len(t) == SYNTHETIC_TOKEN_LENGTH]
    mapping = T.read_mapping(two_stage_mapping(cfg.split), tokens)
    aggregation = T.aggregate({r["token"]: r for r in rows}, mapping)
    df = T.results_dataframe(aggregation, tokens, synthetic)
    T.weights_dataframe(aggregation, tokens).to_csv(csv_path.with_name(f"{csv_path.stem}_weights.csv"), index=False)
    info = {"mapping_entries": len(mapping), "entries_left_out": [list(e) for e in aggregation.invalid_entries],
            "num_stage_one": len(tokens) - len(synthetic), "num_stage_two": len(synthetic)}
    return df, T.summary_table(df, aggregation, weights), info


def run(cfg: DictConfig) -> Path:
    """Score every token of the split; returns the CSV path. Raises ConfigError before any work on a wrong
    setting, and RunFailed (after writing the CSV) when no token could be scored."""
    if cfg.split.get("devkit_config") and OmegaConf.is_missing(cfg.split, "data_split"):
        from navsim_agents.data.devkit_splits import read_devkit_split

        cfg.split.data_split = read_devkit_split(cfg.split.devkit_config).data_split
    split_tokens = validate_config(cfg)
    version = str(cfg.scorer.version)
    out_dir = Path(cfg.exp_root) / str(cfg.experiment_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    partial = partial_path(cfg)
    if cfg.restart and partial.exists():
        partial.unlink()
    tokens = _all_tokens(cfg, split_tokens)
    done_rows = {r["token"]: r for r in E.read_partial(partial)}
    todo = [t for t in tokens if t not in done_rows]
    if done_rows:
        logger.info("resuming: %d of %d tokens already scored in %s", len(tokens) - len(todo), len(tokens), partial)
    agent = _make_agent_checked(cfg)  # before any work: a wrong checkpoint or trajectory file stops here

    from tqdm import tqdm

    bar = tqdm(total=len(tokens), initial=len(tokens) - len(todo), unit="token", disable=not cfg.progress)

    def on_row(row: dict) -> None:
        E.append_partial(partial, row)
        done_rows[row["token"]] = row
        bar.update(1)

    start = time.perf_counter()
    if cfg.worker.name == "ray":
        _run_ray(cfg, container, todo, on_row)
    elif todo:
        score_chunk(container, todo, agent=agent, on_row=on_row)
    bar.close()
    rows = E.order_rows(done_rows.values(), tokens)
    weights = getattr(agent, "weights_source", "unknown")
    csv_path = out_dir / f"{datetime.now().strftime('%Y.%m.%d.%H.%M.%S')}.csv"
    sidecar = run_sidecar(cfg, agent, rows)
    if cfg.scorer.two_stage:
        df, table, sidecar["two_stage"] = _finalize_two_stage(cfg, rows, tokens, weights, csv_path)
    else:
        df = E.finalize(rows, version)
        table = E.summary_table(df, version, weights)
    with atomic_path(csv_path) as tmp:
        df.to_csv(tmp)
    atomic_write_text(csv_path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    elapsed = time.perf_counter() - start
    print(f"\n{cfg.scorer.name.upper()} of {agent.name()} on {cfg.split.data_split}, {corruption_label(cfg)}, "
          f"seed {cfg.seed} ({elapsed:.1f} s)")
    print(table)
    print(f"results: {csv_path}")
    if not any(r.get("valid") for r in rows):
        raise RunFailed(f"none of the {len(rows)} tokens could be scored ({failure_summary(rows)}); the rows are in "
                        f"{csv_path}")
    return csv_path


@hydra.main(config_path=hydra_config_path(), config_name="run_pdm_score", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_run_errors():
        run(cfg)


if __name__ == "__main__":
    main()
