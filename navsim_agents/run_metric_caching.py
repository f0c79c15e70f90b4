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

from eupe.config_tree import hydra_config_path
from navsim_agents.scoring import evaluate as E
from navsim_agents.scoring.metric_cache_file import CACHE_FORMAT_VERSION, MetricCache

logger = logging.getLogger("run_metric_caching")


def run(cfg: DictConfig) -> dict:
    """Cache every scene of the split; returns {'built', 'reused', 'failed', 'seconds', 'root'}."""
    from tqdm import tqdm

    from navsim_agents.data.splits import build_scene_loader, resolve_split

    paths = resolve_split(cfg.split)
    loader = build_scene_loader(cfg.split)
    root = Path(cfg.metric_cache_path) if cfg.metric_cache_path else (
        Path(cfg.exp_root) / "metric_cache" / str(cfg.split.data_split))
    stats = {"built": 0, "reused": 0, "failed": 0}
    start = time.perf_counter()
    for token in tqdm(loader.tokens, unit="scene", disable=not cfg.progress):
        frames = loader.scene_frames_dicts[token]
        # a cache of an older format is rebuilt by ensure_metric_cache: it counts as built, not reused
        existed = MetricCache.stored_format_version(E.cache_file(root, frames[3]["log_name"], token)) \
            == CACHE_FORMAT_VERSION
        try:
            E.ensure_metric_cache(frames, root, str(paths.maps_root or ""), paths.map_version, force=bool(cfg.force))
            stats["reused" if existed and not cfg.force else "built"] += 1
        except Exception as err:  # noqa: BLE001 - one bad scene does not stop the run
            stats["failed"] += 1
            logger.warning("token %s: metric cache failed: %s: %s", token, type(err).__name__, err)
    stats["seconds"] = time.perf_counter() - start
    stats["root"] = str(root)
    print(f"metric cache {root}: {stats['built']} built, {stats['reused']} reused, {stats['failed']} failed "
          f"in {stats['seconds']:.1f} s")
    return stats


@hydra.main(config_path=hydra_config_path(), config_name="run_metric_caching", version_base=None)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
