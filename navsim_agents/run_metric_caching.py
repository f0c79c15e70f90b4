"""Build the metric cache of a split once (agent-independent scoring inputs, our versioned .npz format).

    python navsim_agents/run_metric_caching.py split=navmini
    python navsim_agents/run_metric_caching.py split=custom split.data_split=mini metric_cache_path=/data/mc
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eupe.config_errors import RunFailed, exit_on_run_errors
from eupe.config_tree import hydra_config_path
from navsim_agents import config_checks
from navsim_agents.scoring import evaluate as E

logger = logging.getLogger("run_metric_caching")


def run(cfg: DictConfig) -> dict:
    """Cache every scene of the split; returns {'built', 'reused', 'rebuilt', 'failed', 'seconds', 'root'}.

    An entry that cannot be read (truncated, emptied, older format) is rebuilt and counted as ``rebuilt``;
    ``force=true`` rebuilds every entry. The split and its maps are checked first (ConfigError); a run where
    every scene failed raises RunFailed."""
    from tqdm import tqdm

    from navsim_agents.data.splits import build_scene_loader, resolve_split
    from navsim_agents.long_lived import freeze_long_lived, release_long_lived

    config_checks.check_split(cfg.split)
    paths = resolve_split(cfg.split)
    loader = build_scene_loader(cfg.split)
    root = Path(cfg.metric_cache_path) if cfg.metric_cache_path else (
        Path(cfg.exp_root) / "metric_cache" / str(cfg.split.data_split))
    stats = {"built": 0, "reused": 0, "rebuilt": 0, "failed": 0}
    failures: list[str] = []
    start = time.perf_counter()
    try:
        for index, token in enumerate(tqdm(loader.tokens, unit="scene", disable=not cfg.progress)):
            frames = loader.scene_frames_dicts[token]
            try:
                _, action = E.refresh_metric_cache(frames, root, str(paths.maps_root or ""), paths.map_version,
                                                   force=bool(cfg.force))
                stats[action.split(":", 1)[0]] += 1
            except Exception as err:  # noqa: BLE001 - one bad scene does not stop the run
                stats["failed"] += 1
                failures.append(str(err))
                logger.warning("token %s: %s", token, err)
            if index == 0:
                freeze_long_lived()  # the scene logs and the first scene's map are loaded by now
    finally:  # an interrupted run leaves a longer process (tests, notebooks) its normal collector
        release_long_lived()
    stats["seconds"] = time.perf_counter() - start
    stats["root"] = str(root)
    print(f"metric cache {root}: {stats['built']} built, {stats['rebuilt']} rebuilt (unreadable or forced), "
          f"{stats['reused']} reused, {stats['failed']} failed in {stats['seconds']:.1f} s")
    if failures and stats["failed"] == len(loader.tokens):
        raise RunFailed(f"no metric cache entry of the {len(failures)} scenes could be built; first: {failures[0]}")
    return stats


@hydra.main(config_path=hydra_config_path(), config_name="run_metric_caching", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_run_errors():
        run(cfg)


if __name__ == "__main__":
    main()
