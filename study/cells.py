"""The study's cells: plan (backbone x job), resolve each cell's entry-point config, key it, store it.

A cell is one run of an existing entry point (run_training, run_pdm_score, run_closed_loop) with the study's
overrides. Its key is a hash of its full resolved config (paths left out, the training cell's key put in for
the cells that load its checkpoint), and its folder is ``<study_dir>/cells/<backbone>/<job>/<key>``: a changed
setting gives a new folder and the earlier run stays on disk beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from eupe.atomic_io import atomic_write_text
from eupe.config_errors import ConfigError
from eupe.config_tree import config_dir, config_file

# a cell's job kind -> the entry point config it composes
ENTRY_CONFIGS = {"train": "run_training", "score": "run_pdm_score", "closed_loop": "run_closed_loop"}
# stands in for a cell's own folder and its training checkpoint while the key is computed
CELL_DIR_PLACEHOLDER = "@CELL_DIR@"
CHECKPOINT_PLACEHOLDER = "@TRAIN_CHECKPOINT@"
METRIC_CACHE_PLACEHOLDER = "@METRIC_CACHE@"
RECORD_NAME = "study_cell.json"
RUNS_NAME = "study_runs.json"  # one entry per run of the study command, beside cells/
TRAIN_JOB = "train"


@dataclass(frozen=True)
class CellPlan:
    """One planned cell: ``job`` names it in the report (``score_v1``, ``closed_loop_fog_s3``, ...)."""

    backbone: str
    job: str
    kind: str                 # train | score | closed_loop
    overrides: tuple[str, ...]
    needs_checkpoint: bool     # loads the backbone's training cell's last.ckpt
    condition: dict            # what the cell varies, for the report: corruption, severity, latency_ms, scorer


@dataclass
class Cell:
    """A planned cell with its resolved config, key and folder."""

    plan: CellPlan
    key: str
    config: dict
    folder: Path

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_NAME

    def record(self) -> dict | None:
        return json.loads(self.record_path.read_text()) if self.record_path.is_file() else None

    def finished(self) -> bool:
        rec = self.record()
        return bool(rec) and rec.get("status") == "finished" and rec.get("key") == self.key

    def write_record(self, status: str, error: str | None = None, **extra: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rec = {"backbone": self.plan.backbone, "job": self.plan.job, "kind": self.plan.kind, "key": self.key,
               "status": status, "error": error, "condition": self.plan.condition,
               "overrides": list(self.plan.overrides), **extra}
        atomic_write_text(self.record_path, json.dumps(rec, indent=2, default=str) + "\n")


class CellClock:
    """What one cell cost: wall seconds, CPU seconds of this process and of the child processes it waited for
    (user + system; on a machine shared with other work the CPU time is the figure that carries over), and the
    1-minute load average when it started and ended."""

    def __init__(self) -> None:
        self._start, self._load = os.times(), _load_average()

    def usage(self) -> dict:
        end, start = os.times(), self._start
        cpu = sum(getattr(end, f) - getattr(start, f) for f in ("user", "system", "children_user", "children_system"))
        return {"wall_s": round(end.elapsed - start.elapsed, 3), "cpu_s": round(cpu, 3),
                "load_start": self._load, "load_end": _load_average(), "cpu_count": os.cpu_count(),
                "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # no load average on this platform
        return None


def _severity_jobs(study: DictConfig, loop: str) -> list[tuple[str, int]]:
    return [(str(c.name), int(s)) for c in study.corruptions if c.get(loop, True) for s in c.severities]


def plan_cells(study: DictConfig, backbones: list[str], seed: int) -> list[CellPlan]:
    """Every cell of the study for ``backbones``, training first (the others load its checkpoint)."""
    recipe = tuple(str(o) for o in study.recipe)
    seed = f"seed={int(seed)}"
    plans: list[CellPlan] = []
    for bb in backbones:
        base = (f"backbone={bb}", *recipe, *(str(o) for o in study.backbone_overrides.get(bb) or []), seed)
        train = (*base, f"split={study.train.split}", *study.train.overrides)
        plans.append(CellPlan(bb, TRAIN_JOB, "train", train, False, {}))
        score = (*base, f"split={study.score.split}", "scorer=pdms", *study.score.overrides)
        plans.append(CellPlan(bb, "score_v1", "score", score, True, {"scorer": "pdms", "corruption": "none"}))
        for name, sev in _severity_jobs(study, "open_loop"):
            plans.append(CellPlan(bb, f"score_v1_{name}_s{sev}", "score",
                                  (*score, f"corruption={name}", f"corruption.severity={sev}"), True,
                                  {"scorer": "pdms", "corruption": name, "severity": sev}))
        two = study.score_two_stage
        if two is not None:
            plans.append(CellPlan(bb, "score_v2_two_stage", "score",
                                  (*base, f"split={two.split}", f"scorer={two.scorer}", *two.overrides), True,
                                  {"scorer": str(two.scorer), "corruption": "none"}))
        loop = (*base, *study.closed_loop.overrides)
        plans.append(CellPlan(bb, "closed_loop", "closed_loop", loop, True,
                              {"corruption": "none", "latency_ms": 0.0}))
        for name, sev in _severity_jobs(study, "closed_loop"):
            plans.append(CellPlan(bb, f"closed_loop_{name}_s{sev}", "closed_loop",
                                  (*loop, f"corruption={name}", f"corruption.severity={sev}"), True,
                                  {"corruption": name, "severity": sev, "latency_ms": 0.0}))
        for ms in study.latencies_ms:
            plans.append(CellPlan(bb, f"closed_loop_lat{float(ms):g}ms", "closed_loop",
                                  (*loop, "latency=fixed", f"latency.ms={float(ms):g}"), True,
                                  {"corruption": "none", "latency_ms": float(ms)}))
    return [_with_cell_overrides(p, study.cell_overrides) for p in plans]


def _with_cell_overrides(plan: CellPlan, cell_overrides: DictConfig) -> CellPlan:
    """Add ``study.cell_overrides[<job>]`` and ``[<backbone>/<job>]`` (in that order) to one cell's overrides."""
    extra = [str(o) for key in (plan.job, f"{plan.backbone}/{plan.job}") for o in (cell_overrides.get(key) or [])]
    if not extra:
        return plan
    return CellPlan(plan.backbone, plan.job, plan.kind, (*plan.overrides, *extra), plan.needs_checkpoint,
                    plan.condition)


def check_cell_overrides(study: DictConfig, plans: list[CellPlan]) -> None:
    """Every key of study.cell_overrides names a planned job or backbone/job, every key of
    study.backbone_overrides a backbone of the study (a typo would silently do nothing)."""
    known = {p.job for p in plans} | {f"{p.backbone}/{p.job}" for p in plans}
    unknown = sorted(set(study.cell_overrides or {}) - known)
    if unknown:
        raise ConfigError(f"study.cell_overrides names no planned cell: {unknown}; jobs are "
                          f"{sorted({p.job for p in plans})} (optionally prefixed with '<backbone>/')")
    strangers = sorted(set(study.backbone_overrides or {}) - {str(b) for b in study.backbones})
    if strangers:
        raise ConfigError(f"study.backbone_overrides names backbones the study does not have: {strangers}; "
                          f"study.backbones={[str(b) for b in study.backbones]}")


def _path_overrides(plan: CellPlan, folder: str, metric_cache: str, checkpoint: str | None) -> list[str]:
    """Where a cell writes: its own folder is the entry point's output folder."""
    extra = [f"agent.checkpoint={checkpoint}"] if plan.needs_checkpoint else []
    if plan.kind == "train":
        return [f"output_dir={folder}", f"metric_cache_path={metric_cache}/train", *extra]
    if plan.kind == "score":  # one metric cache per split and scorer, shared by the backbones
        split = next(o for o in reversed(plan.overrides) if o.startswith("split=")).split("=", 1)[1]
        return [f"exp_root={folder}", "experiment_name=score",
                f"metric_cache_path={metric_cache}/{split}_{plan.condition['scorer']}", *extra]
    return [f"output_dir={folder}", f"exp_root={folder}", *extra]


def compose_entry(name: str, overrides: list[str]) -> DictConfig:
    """The entry point's config ``name`` with ``overrides``, as its own command would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(name, overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(name, overrides=overrides)


def _resolved(plan: CellPlan, folder: str, metric_cache: str, checkpoint: str | None, worker: str) -> dict:
    overrides = [*plan.overrides, *_path_overrides(plan, folder, metric_cache, checkpoint)]
    if plan.kind == "score":
        overrides.append(f"worker={worker}")
    try:
        cfg = compose_entry(ENTRY_CONFIGS[plan.kind], overrides)
        return OmegaConf.to_container(cfg, resolve=True)
    except ConfigError:
        raise
    except Exception as err:  # Hydra's own errors (unknown group option, bad override) name the override
        raise ConfigError(f"cell {plan.backbone}/{plan.job}: {type(err).__name__}: {err}") from None


def cell_key(resolved: dict, upstream_key: str | None) -> str:
    """12 hex digits of the cell's resolved config (with placeholder paths) and its training cell's key."""
    text = json.dumps({"config": resolved, "train_key": upstream_key}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _with_paths(value: Any, paths: dict[str, str]) -> Any:
    """``value`` (a resolved config) with each placeholder replaced by its path, in every string."""
    if isinstance(value, str):
        for placeholder, path in paths.items():
            value = value.replace(placeholder, path)
        return value
    if isinstance(value, dict):
        return {k: _with_paths(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_paths(v, paths) for v in value]
    return value


def resolve_cells(plans: list[CellPlan], study_dir: Path, worker: str) -> list[Cell]:
    """Compose and key every planned cell (before any work: a wrong override stops the study here).

    The worker choice is not part of the key: the same cell scored sequentially or over Ray has the same rows.
    A cell is composed once with placeholder paths (its key) and its paths are put in after; a score cell on
    another worker than ``sequential`` is composed again with it.
    """
    metric_cache = str(study_dir / "metric_cache")
    train_keys: dict[str, Cell] = {}
    cells: list[Cell] = []
    for plan in plans:
        upstream = train_keys.get(plan.backbone) if plan.needs_checkpoint else None
        keyed = _resolved(plan, CELL_DIR_PLACEHOLDER, METRIC_CACHE_PLACEHOLDER,
                          CHECKPOINT_PLACEHOLDER if plan.needs_checkpoint else None, "sequential")
        key = cell_key(keyed, upstream.key if upstream else None)
        folder = study_dir / "cells" / plan.backbone / plan.job / key
        checkpoint = str(upstream.folder / "checkpoints" / "last.ckpt") if upstream else None
        if plan.kind == "score" and worker != "sequential":
            config = _resolved(plan, str(folder), metric_cache, checkpoint, worker)
        else:
            config = _with_paths(keyed, {CELL_DIR_PLACEHOLDER: str(folder), METRIC_CACHE_PLACEHOLDER: metric_cache,
                                         CHECKPOINT_PLACEHOLDER: checkpoint or CHECKPOINT_PLACEHOLDER})
        cell = Cell(plan, key, config, folder)
        if plan.kind == "train":
            train_keys[plan.backbone] = cell
        cells.append(cell)
    return cells


def study_runs(study_dir: Path) -> list[dict]:
    """The runs of the study command recorded in ``<study_dir>/study_runs.json``, oldest first."""
    path = Path(study_dir) / RUNS_NAME
    return json.loads(path.read_text()) if path.is_file() else []


def record_run(study_dir: Path, entry: dict) -> None:
    """Add one run of the study command (what it ran, what it cost) to ``<study_dir>/study_runs.json``."""
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(study_dir) / RUNS_NAME, json.dumps([*study_runs(study_dir), entry], indent=1) + "\n")


def earlier_runs(cell: Cell) -> list[str]:
    """Keys of this cell's earlier runs with other settings (folders beside its own)."""
    parent = cell.folder.parent
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name != cell.key
                  and (p / RECORD_NAME).is_file())


def check_backbones(names: list[str]) -> None:
    """Each name is a config in configs/backbone; ConfigError listing the known ones otherwise."""
    for name in names:
        try:
            config_file("backbone", name)
        except FileNotFoundError as err:
            raise ConfigError(f"study backbone {name!r} does not exist: {err}") from None
