"""The backbone-swap study in one command (configs/run_study.yaml, configs/study/<name>.yaml).

    python -m study.run_study study=mini
    python -m study.run_study study=mini worker=ray

Plans backbone x job cells (train; PDMS v1 clean and under each corruption; EPDMS two-stage; closed loop clean,
under each corruption and at each latency), checks every cell's settings before any work, runs the cells that
are missing or whose settings changed (training in process with Lightning, scoring with run_pdm_score's own
sequential or Ray workers, closed-loop cells in process or as Ray tasks), records a failed cell with its error
and goes on, then writes the report (study/report.py) from the cells' own output files.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from eupe.config_errors import ConfigError, exit_on_run_errors
from eupe.config_tree import hydra_config_path
from study.cells import (
    Cell,
    CellClock,
    check_backbones,
    check_cell_overrides,
    earlier_runs,
    plan_cells,
    record_run,
    resolve_cells,
)


def _backbones(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(every backbone of the study, the ones this run works on: ``only_backbones`` or all)."""
    names = [str(b) for b in cfg.study.backbones]
    if not names:
        raise ConfigError(f"study={cfg.study.name} lists no backbones; set study.backbones")
    check_backbones(names)
    if cfg.only_backbones is None:
        return names, names
    unknown = [str(b) for b in cfg.only_backbones if str(b) not in names]
    if unknown:
        raise ConfigError(f"only_backbones={unknown} are not in study.backbones={names}")
    return names, [b for b in names if b in {str(x) for x in cfg.only_backbones}]


def _validate_cell(cell: Cell, checked_splits: dict) -> None:
    """The entry point's own up-front checks on the cell's config (split data, corruption, latency, ...)."""
    from navsim_agents import config_checks

    cfg = OmegaConf.create(cell.config)
    try:
        config_checks.check_backbone_weights(cfg.backbone)
        if cell.plan.kind == "train":
            split_key = OmegaConf.to_yaml(cfg.split)
            if split_key not in checked_splits:
                checked_splits[split_key] = config_checks.check_split(cfg.split)
        elif cell.plan.kind == "score":
            from navsim_agents.run_pdm_score import validate_config

            validate_config(cfg)
        else:
            from bench2drive.run_closed_loop import validate

            validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"cell {cell.plan.backbone}/{cell.plan.job}: {err}") from None


def prepare(cfg: DictConfig) -> list[Cell]:
    """Plan and resolve every cell of the study, check the cells this run works on (``only_backbones``);
    ConfigError before any work on a wrong setting."""
    from study.report import check_latency_profile

    every, mine = _backbones(cfg)
    check_latency_profile(str(cfg.study.latency_profile))
    plans = plan_cells(cfg.study, every, int(cfg.seed))
    check_cell_overrides(cfg.study, plans)
    cells = resolve_cells(plans, Path(cfg.study_dir), str(cfg.worker.name))
    checked: dict = {}
    for cell in cells:
        if cell.plan.backbone in mine:
            _validate_cell(cell, checked)
    return cells


def _run_one(cell: Cell) -> dict:
    """Run a cell's entry point in this process (its outputs land in the cell's folder); returns the outputs
    the report reads, relative to the cell's folder."""
    cfg = OmegaConf.create(cell.config)
    if cell.plan.kind == "train":
        from navsim_agents.run_training import train

        out = train(cfg)
        if not Path(out["last_checkpoint"]).is_file():
            raise RuntimeError(f"training wrote no checkpoint at {out['last_checkpoint']}")
        return {"checkpoint": str(Path(out["last_checkpoint"]).relative_to(cell.folder))}
    if cell.plan.kind == "score":
        from navsim_agents.run_pdm_score import run

        return {"csv": str(Path(run(cfg)).relative_to(cell.folder))}
    from bench2drive.run_closed_loop import run

    run(cfg)
    return {"metrics": "metrics.json"}


def _attempt(cell: Cell) -> bool:
    cell.write_record("running")
    clock = CellClock()
    try:
        outputs = _run_one(cell)
    except Exception as exc:  # a failed cell is recorded and the study goes on
        print(f"cell {cell.plan.backbone}/{cell.plan.job} failed:\n{traceback.format_exc()}", flush=True)
        cell.write_record("failed", error=f"{type(exc).__name__}: {exc}", usage=clock.usage())
        return False
    cell.write_record("finished", outputs=outputs, usage=clock.usage())
    return True


def _run_cell_timed(config: dict) -> dict:
    """bench2drive.run_sweep.run_cell with the cell's usage, measured inside the Ray worker that runs it."""
    from bench2drive.run_sweep import run_cell

    clock = CellClock()
    return {**run_cell(config), "usage": clock.usage()}


def _run_closed_loop_ray(cells: list[Cell], address: str | None) -> None:
    """Closed-loop cells as Ray tasks (one simulator each), as bench2drive.run_sweep fans its cells out."""
    import ray

    ray.init(address=address, ignore_reinit_error=True)
    task = ray.remote(_run_cell_timed)
    for cell in cells:
        cell.write_record("running")
    for cell, result in zip(cells, ray.get([task.remote(c.config) for c in cells]), strict=True):
        if result["status"] == "finished":
            cell.write_record("finished", outputs={"metrics": "metrics.json"}, usage=result["usage"])
        else:
            cell.write_record("failed", error=result["error"], usage=result["usage"])


def run_study(cfg: DictConfig) -> dict:
    """Run the missing or changed cells, then write the report; returns {'cells', 'ran', 'failed', 'report'}."""
    from tqdm import tqdm

    from study.report import write_report

    clock = CellClock()  # the whole run: data generated on first use, checks, cells and report
    cells = prepare(cfg)
    study_dir = Path(cfg.study_dir)
    _, mine = _backbones(cfg)
    todo = [c for c in cells if c.plan.backbone in mine and not c.finished()]
    for cell in todo:
        older = earlier_runs(cell)
        if older:
            print(f"cell {cell.plan.backbone}/{cell.plan.job}: settings changed since its run "
                  f"{', '.join(older)} (kept beside it); running it as {cell.key}", flush=True)
    subset = f" of {', '.join(mine)}" if cfg.only_backbones is not None else ""
    print(f"study {cfg.study.name}: {len(cells)} cells in {study_dir}, {sum(c.finished() for c in cells)} finished, "
          f"{0 if cfg.report_only else len(todo)} to run{subset} ({cfg.worker.name})", flush=True)
    ran: list[Cell] = []
    if not cfg.report_only and todo:
        trained = {c.plan.backbone: c for c in cells if c.plan.kind == "train"}
        bar = tqdm(total=len(todo), desc="study cells", unit="cell", disable=not cfg.progress)
        ray_loop: list[Cell] = []
        for cell in sorted(todo, key=lambda c: c.plan.kind != "train"):  # training first
            train = trained.get(cell.plan.backbone)
            if cell.finished():  # another study job sharing the cell store ran it meanwhile
                bar.update(1)
                continue
            if cell.plan.needs_checkpoint and train is not None and not train.finished():
                rec = train.record() or {}
                cell.write_record("failed", error=f"its training cell {train.key} did not finish: "
                                  f"{rec.get('error') or rec.get('status', 'not run')}")
            elif cell.plan.kind == "closed_loop" and cfg.worker.name == "ray":
                ray_loop.append(cell)
                continue
            else:
                _attempt(cell)
            ran.append(cell)
            bar.update(1)
        if ray_loop:
            _run_closed_loop_ray(ray_loop, cfg.worker.get("address"))
            ran.extend(ray_loop)
            bar.update(len(ray_loop))
        bar.close()
    failed = [c for c in cells if (c.record() or {}).get("status") == "failed"]
    record_run(study_dir, {"backbones": mine, "ran": len(ran), "failed": len(failed),
                           "report_only": bool(cfg.report_only), "usage": clock.usage()})
    report = write_report(cells, study_dir, cfg)
    for c in failed:
        print(f"failed cell {c.plan.backbone}/{c.plan.job} ({c.folder}): {c.record()['error']}", flush=True)
    print(f"study {cfg.study.name}: {len(ran)} cells run, {len(failed)} failed; report: {report['md']}",
          flush=True)
    return {"cells": cells, "ran": ran, "failed": failed, "report": report}


@hydra.main(config_path=hydra_config_path(), config_name="run_study", version_base=None)
def main(cfg: DictConfig) -> None:
    with exit_on_run_errors():
        result = run_study(cfg)
    if result["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
