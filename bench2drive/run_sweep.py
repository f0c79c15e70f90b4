"""Closed-loop robustness sweep: backbone x (clean + a corruption set's cells) x latency, one run_closed_loop run
per cell, sequential or fanned out over Ray (one simulator per task).

    python -m bench2drive.run_sweep corruption_set=robobev 'backbones=[eupe-t,eupe-s]' 'latencies_ms=[0,100]'
    python -m bench2drive.run_robustness_report exp/cl_robustness --baseline eupe-t

Each cell writes ``<sweep_dir>/<backbone>/<cell>/`` (cell.json, results, metrics.json); a finished cell is
skipped and an unfinished one resumes its routes, so rerunning a killed sweep runs only what is left. A cell that
fails is recorded in ``<sweep_dir>/sweep_status.json`` and the sweep goes on.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from eupe.config_tree import config_dir, hydra_config_path


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: its folder name and the run_closed_loop overrides that make it."""

    backbone: str
    name: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


def _latency_overrides(ms: float) -> tuple[str, ...]:
    return ("latency=fixed", f"latency.ms={ms:g}") if ms > 0 else ("latency=none",)


def plan_cells(cfg: DictConfig) -> list[Cell]:
    """The cells of a sweep config, clean cells first."""
    latencies = [float(ms) for ms in cfg.latencies_ms] or [0.0]
    cells: list[Cell] = []
    for backbone in cfg.backbones:
        base = (f"backbone={backbone}", *cfg.overrides)
        for ms in latencies:
            suffix = f"_lat{ms:g}ms" if ms > 0 else ""
            cells.append(Cell(backbone, f"none_s0{suffix}", (*base, *_latency_overrides(ms))))
        for c in cfg.corruption_set.cells:
            if c.kind not in ("corruption", "sensor_fault"):
                raise ValueError(f"corruption_set={cfg.corruption_set.name}: cell {c.get('robobev', c.name)} has "
                                 f"kind={c.kind!r}; use 'corruption' or 'sensor_fault'")
            prefix = "" if c.kind == "corruption" else "fault-"
            for severity in c.levels.values():
                for ms in (latencies if cfg.cross_latency else [0.0]):
                    suffix = f"_lat{ms:g}ms" if ms > 0 else ""
                    cells.append(Cell(backbone, f"{prefix}{c.name}_s{severity}{suffix}",
                                      (*base, f"{c.kind}={c.name}", f"{c.kind}.severity={severity}",
                                       *_latency_overrides(ms))))
    unique = {(c.backbone, c.name): c for c in cells}  # two set entries on one corruption and level run once
    return list(unique.values())


def cell_config(cell: Cell, sweep_dir: Path) -> dict:
    """The resolved run_closed_loop config of a cell (a plain dict, so a Ray task can take it)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*cell.overrides, f"output_dir={sweep_dir / cell.backbone / cell.name}"]
    if GlobalHydra.instance().is_initialized():
        cfg = compose("run_closed_loop", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose("run_closed_loop", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run_cell(config: dict) -> dict:
    """Run one cell; returns {'output_dir', 'status', 'error'} (never raises, so the sweep goes on)."""
    from bench2drive import run_closed_loop

    out = config["output_dir"]
    try:
        run_closed_loop.run(OmegaConf.create(config))
        return {"output_dir": out, "status": "finished", "error": None}
    except Exception as exc:  # a failed cell is recorded, the others still run
        print(f"cell {out} failed:\n{traceback.format_exc()}", flush=True)
        return {"output_dir": out, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def run_sweep(cfg: DictConfig) -> list[dict]:
    sweep_dir = Path(cfg.sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    cells = plan_cells(cfg)
    # every cell's settings are validated before the first simulation (a bad one stops the sweep here)
    configs = [cell_config(c, sweep_dir) for c in cells]
    from bench2drive.run_closed_loop import validate

    for c in configs:
        validate(OmegaConf.create(c))
    todo = [c for c in configs if not (Path(c["output_dir"]) / "metrics.json").is_file()]
    print(f"sweep: {len(cells)} cells in {sweep_dir}, {len(cells) - len(todo)} finished, {len(todo)} to run "
          f"({cfg.worker.name})", flush=True)
    if cfg.worker.name == "ray":
        import ray

        ray.init(address=cfg.worker.address, ignore_reinit_error=True)
        task = ray.remote(run_cell)
        results = ray.get([task.remote(c) for c in todo])
    elif cfg.worker.name == "sequential":
        from tqdm import tqdm

        results = [run_cell(c) for c in tqdm(todo, desc="sweep cells", unit="cell")]
    else:
        raise ValueError(f"worker={cfg.worker.name!r} is unknown; use worker=sequential or worker=ray")
    status_path = sweep_dir / "sweep_status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    status.update({r["output_dir"]: r for r in results})
    status_path.write_text(json.dumps(status, indent=2))
    failed = [r for r in results if r["status"] != "finished"]
    for r in failed:
        print(f"failed cell {r['output_dir']}: {r['error']}", flush=True)
    print(f"sweep: {len(results) - len(failed)} cells run, {len(failed)} failed; report: python -m "
          f"bench2drive.run_robustness_report {sweep_dir}", flush=True)
    return results


@hydra.main(config_path=hydra_config_path(), config_name="run_sweep", version_base=None)
def main(cfg: DictConfig) -> None:
    results = run_sweep(cfg)
    if any(r["status"] != "finished" for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
