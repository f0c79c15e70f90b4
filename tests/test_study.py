"""The study in one command (study/): a micro study runs to a report whose numbers are the cells' own, reruns
only what is missing or changed, records a failing cell and completes the rest; bad input stops it before work."""

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from eupe.config_errors import ConfigError
from navsim_agents.data import navmini_two_stage
from navsim_agents.scoring.two_stage import AGGREGATE_TOKENS as TWO_STAGE_AGGREGATES
from study import run_study
from study.report import ONE_STAGE_AGGREGATES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAILING = "eupe-s/closed_loop_lat200ms"


def _cfg(root: Path, *overrides: str, two_stage_root: Path | None = None):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("run_study", overrides=["study=micro", f"exp_root={root}", "progress=false", *overrides])
    if two_stage_root is not None:  # the two-stage cell on a one-log world
        with open_dict(cfg):
            cfg.study.score_two_stage = {"split": "navmini_two_stage", "scorer": "epdms_two_stage",
                                         "overrides": ["agent.image_scale=0.05", f"split.data_root={two_stage_root}"]}
    return cfg


@pytest.fixture(scope="module")
def two_stage_world(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("two_stage")
    root = base / f"{navmini_two_stage.SPLIT_NAME}-v{navmini_two_stage.VERSION}"
    navmini_two_stage.generate_two_stage_world(root, num_logs=1, image_size=(192, 108))
    (root / navmini_two_stage.MARKER).write_text("{}\n")
    return base


def _cell_mtimes(study_dir: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in (study_dir / "cells").rglob("*") if p.is_file()}


def _read_back(study_dir: Path, row: pd.Series) -> float:
    """The number a report row names, parsed from its source file without the report's code."""
    src = study_dir / row["source"]
    if src.suffix == ".json":  # closed-loop metrics.json
        m = json.loads(src.read_text())
        if row["metric"].startswith("ability_"):
            return m["abilities"][row["metric"][len("ability_"):]]
        return {"DS": m["corrected"]["driving_score"], "SR": m["corrected"]["success_rate"],
                "DS_official_220": m["driving_score"]}[row["metric"]]
    table = pd.read_csv(src)
    if "token" in table and "/" in row["metric"]:  # the two-stage CSV: stage_one/score -> row ..._stage_one
        stage, column = row["metric"].split("/")
        token = next(t for t in TWO_STAGE_AGGREGATES if t.endswith(stage))
        return float(table.loc[table["token"] == token, column].iloc[0])
    if "token" in table:  # the one-stage scorer's CSV: the aggregate row
        return float(table.loc[table["token"].isin(ONE_STAGE_AGGREGATES), row["metric"]].iloc[0])
    if row["metric"] == "train_steps":
        return float(table["step"].max() + 1)
    return float(table[row["metric"].replace("train_", "train/", 1)].dropna().iloc[-1])


def test_micro_study_report_resume_failure_and_one_changed_cell(tmp_path, two_stage_world, monkeypatch, capsys):
    from bench2drive import run_closed_loop

    real_run = run_closed_loop.run

    def crashing(cfg):
        if str(cfg.output_dir).replace("\\", "/").find(f"/cells/{FAILING}/") >= 0:
            raise RuntimeError("simulator crashed on purpose")
        return real_run(cfg)

    monkeypatch.setattr(run_closed_loop, "run", crashing)
    first = run_study.run_study(_cfg(tmp_path, two_stage_root=two_stage_world))
    study_dir = tmp_path / "study_micro"
    jobs = {f"{c.plan.backbone}/{c.plan.job}" for c in first["cells"]}
    assert len(first["cells"]) == 14 and len(first["ran"]) == 14
    assert [f"{c.plan.backbone}/{c.plan.job}" for c in first["failed"]] == [FAILING]
    status = pd.read_csv(study_dir / "status.csv")
    assert (status["status"] == "finished").sum() == 13
    assert "simulator crashed on purpose" in (study_dir / "report.md").read_text()
    for cell in first["cells"]:  # each cell, the failed one too, says what it cost; so does the run
        usage = cell.record()["usage"]
        assert usage["cpu_s"] >= 0 and usage["wall_s"] >= 0, cell.plan.job
        if f"{cell.plan.backbone}/{cell.plan.job}" != FAILING:  # that one fails at once (the clock ticks 10 ms)
            assert usage["cpu_s"] > 0 and usage["wall_s"] > 0, cell.plan.job
    assert status["cpu_s"].sum() == pytest.approx(sum(c.record()["usage"]["cpu_s"] for c in first["cells"]))
    (run,) = json.loads((study_dir / "study_runs.json").read_text())
    assert run["ran"] == 14 and run["failed"] == 1
    assert run["usage"]["cpu_s"] >= status["cpu_s"].sum()  # the run holds its cells
    assert "RANDOM WEIGHTS" in (study_dir / "report.md").read_text()
    assert (study_dir / "report.html").read_text().count("data:image/png;base64,") == 3

    numbers = pd.read_csv(study_dir / "report.csv")
    measured = numbers[numbers["kind"] == "measured"]
    assert {f"{b}/{j}" for b, j in zip(measured["backbone"], measured["job"], strict=True)} == jobs - {FAILING}
    for _, row in measured.iterrows():  # every number is its cell's own
        assert row["value"] == pytest.approx(_read_back(study_dir, row), rel=1e-12), row.to_dict()
    for _, row in numbers[numbers["kind"] == "derived"].iterrows():  # retained = corrupted / clean, same file values
        mine = measured[measured["backbone"] == row["backbone"]]
        base = "score" if row["metric"] == "retained_score" else "DS"
        clean_job = "score_v1" if base == "score" else "closed_loop"
        corrupted = mine[(mine["job"] == row["job"]) & (mine["metric"] == base)]["value"].iloc[0]
        clean = mine[(mine["job"] == clean_job) & (mine["metric"] == base)]["value"].iloc[0]
        assert row["value"] == pytest.approx(corrupted / clean, rel=1e-12)
    summary = pd.read_csv(study_dir / "summary.csv").set_index("backbone")
    for bb in ("eupe-t", "eupe-s"):
        pdms = measured[(measured["backbone"] == bb) & (measured["job"] == "score_v1") & (measured["metric"] == "score")]
        assert summary.loc[bb, "PDMS"] == pytest.approx(pdms["value"].iloc[0], rel=1e-12)
        epdms = measured[(measured["backbone"] == bb) & (measured["job"] == "score_v2_two_stage")
                         & (measured["metric"] == "combined/score")]
        assert summary.loc[bb, "EPDMS two-stage"] == pytest.approx(epdms["value"].iloc[0], rel=1e-12)
    assert pd.isna(summary.loc["eupe-s", "DS lat200ms"]) and pd.notna(summary.loc["eupe-t", "DS lat200ms"])

    monkeypatch.setattr(run_closed_loop, "run", real_run)
    second = run_study.run_study(_cfg(tmp_path, two_stage_root=two_stage_world))  # only the failed cell runs again
    assert [f"{c.plan.backbone}/{c.plan.job}" for c in second["ran"]] == [FAILING] and not second["failed"]

    before = _cell_mtimes(study_dir)
    again = run_study.run_study(_cfg(tmp_path, two_stage_root=two_stage_world))  # nothing left: a no-op
    assert again["ran"] == [] and _cell_mtimes(study_dir) == before

    old_key = next(c.key for c in again["cells"] if c.plan.job == "score_v1" and c.plan.backbone == "eupe-t")
    capsys.readouterr()
    cfg = _cfg(tmp_path, two_stage_root=two_stage_world)
    with open_dict(cfg):
        cfg.study.cell_overrides["eupe-t/score_v1"] = ["split.scene_filter.max_scenes=1"]
    changed = run_study.run_study(cfg)
    assert [f"{c.plan.backbone}/{c.plan.job}" for c in changed["ran"]] == ["eupe-t/score_v1"]
    assert f"eupe-t/score_v1: settings changed since its run {old_key}" in capsys.readouterr().out
    assert (study_dir / "cells" / "eupe-t" / "score_v1" / old_key / "study_cell.json").is_file()  # kept
    new = next(c for c in changed["cells"] if c.plan.job == "score_v1" and c.plan.backbone == "eupe-t")
    rows = pd.read_csv(new.folder / new.record()["outputs"]["csv"])
    assert len(rows) == 2  # one token + the average row: the report reads the new cell
    numbers = pd.read_csv(study_dir / "report.csv")
    src = numbers[(numbers["backbone"] == "eupe-t") & (numbers["job"] == "score_v1")]["source"]
    assert set(src) == {str((new.folder / new.record()["outputs"]["csv"]).relative_to(study_dir))}


@pytest.mark.parametrize("override, message", [
    ("study.backbones=[eupe-t,eupe-q]", "study backbone 'eupe-q' does not exist"),
    ("only_backbones=[dinov3-h]", r"only_backbones=\['dinov3-h'\] are not in study.backbones"),
    ("+study.cell_overrides.score_v9=['seed=1']", r"study.cell_overrides names no planned cell: \['score_v9'\]"),
    ("study.score.split=navtest", "cell eupe-t/score_v1: split test"),
    ("study.latency_profile=h100", "study.latency_profile='h100' is not a profile of bench2drive/latency_profiles.csv"),
    ("study.corruptions=[{name: fogg, severities: [3]}]", "cell eupe-t/score_v1_fogg_s3"),
    ("+study.backbone_overrides.eupe-s=['backbone.weights=/no/such/student.safetensors']",
     r"cell eupe-s/train: backbone.weights=/no/such/student.safetensors \(backbone=eupe-s\) does not exist"),
    ("+study.backbone_overrides.eupe-q=['seed=1']",
     r"study.backbone_overrides names backbones the study does not have: \['eupe-q'\]"),
])
def test_bad_input_is_named_before_any_work(tmp_path, monkeypatch, override, message):
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path / "no_data"))
    with pytest.raises(ConfigError, match=message):
        run_study.prepare(_cfg(tmp_path, override))
    assert not (tmp_path / "study_micro" / "cells").exists()


def test_presets_plan_the_same_jobs_for_every_backbone(tmp_path, monkeypatch):
    from study.cells import plan_cells, resolve_cells

    for preset, latencies in (("mini", [200]), ("rap_paper", [100, 250, 500])):
        cfg = _cfg(tmp_path, f"study={preset}")
        plans = plan_cells(cfg.study, list(cfg.study.backbones), 0)
        per_backbone = {bb: [p.job for p in plans if p.backbone == bb] for bb in cfg.study.backbones}
        jobs = next(iter(per_backbone.values()))
        assert all(j == jobs for j in per_backbone.values())
        n_corr = sum(len(c.severities) for c in cfg.study.corruptions)
        # train, PDMS clean + each corruption, (two-stage), closed loop clean + each corruption + each latency
        assert len(jobs) == 1 + (1 + n_corr) + (cfg.study.score_two_stage is not None) + (1 + n_corr + len(latencies))
        # one recipe: the cells of two backbones differ only in the backbone
        a, b = ([p.overrides for p in plans if p.backbone == bb and p.job == "score_v1"][0]
                for bb in list(cfg.study.backbones)[:2])
        assert [o for o in a if o not in b] == [f"backbone={cfg.study.backbones[0]}"]
        if preset == "rap_paper":  # the edge students drive with their stage-4 distilled files
            for bb in ("edge-vit-96", "edge-tinyvit-5m"):
                mine = [p.overrides for p in plans if p.backbone == bb and p.job == "score_v1"][0]
                weights = [o for o in mine if o.startswith("backbone.weights=")]
                assert weights == ["backbone.weights=hub",
                                   f"backbone.weights={cfg.study.students_dir}/{bb}/student.safetensors"]
                train = [p for p in plans if p.backbone == bb and p.job == "train"]
                (cell,) = resolve_cells(train, tmp_path / "study", "sequential")  # the later setting wins
                assert cell.config["backbone"]["weights"] == f"{cfg.study.students_dir}/{bb}/student.safetensors"
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path / "no_data"))
    with pytest.raises(ConfigError, match="cell dinov3-h/"):  # real data absent here: named before any work
        run_study.prepare(_cfg(tmp_path, "study=rap_paper", "study.corruptions=[]"))  # fewer cells to compose


LATENCY_ROW = {"where": "test machine", "how": "median of 5 calls", "date": "2026-01-01"}


def test_latency_is_the_row_of_the_planner_and_images_the_study_drives():
    from study.report import _latency_lines, _summary, latency_column

    rows = pd.DataFrame([  # only the tiny planner at 4x192x108 is the study's; the others are other set-ups
        {"profile": "cpu-2core", "backbone": "eupe-t", "planner_config": "small", "image": "4x192x108",
         "latency_ms": 900.0, **LATENCY_ROW},
        {"profile": "cpu-2core", "backbone": "eupe-t", "planner_config": "tiny", "image": "4x96x54",
         "latency_ms": 50.0, **LATENCY_ROW},
        {"profile": "cpu-2core", "backbone": "eupe-t", "planner_config": "tiny", "image": "4x192x108",
         "latency_ms": 120.5, **LATENCY_ROW},
        {"profile": "gpu-h200", "backbone": "eupe-t", "planner_config": "tiny", "image": "4x192x108",
         "latency_ms": 3.25, **LATENCY_ROW},
    ])
    tables = {"latency": (rows, "bench2drive/latency_profiles.csv")}
    driven = {"eupe-t": ("tiny", "4x192x108"), "eupe-s": ("tiny", "4x192x108"), "eupe-b": ("custom", "4x96x54")}
    summary, extra = _summary(pd.DataFrame(), list(driven), tables, driven)
    summary = summary.set_index("backbone")
    cpu, gpu = latency_column("cpu-2core", "tiny", "4x192x108"), latency_column("gpu-h200", "tiny", "4x192x108")
    assert [c for c in summary.columns if c.startswith("latency")] == [cpu, gpu]
    assert summary.loc["eupe-t", cpu] == 120.5 and summary.loc["eupe-t", gpu] == 3.25
    assert pd.isna(summary.loc["eupe-s", cpu]) and pd.isna(summary.loc["eupe-b", cpu])
    assert sorted(e["value"] for e in extra) == [3.25, 120.5]

    lines = _latency_lines(list(driven), driven, "cpu-2core", tables)
    assert lines[0].startswith("- eupe-t: 120.5 ms") and "median of 5 calls" in lines[0]
    assert ("`python benchmarks/closed_loop.py --backbones --profile-only eupe-s --planner-config tiny --size "
            "192x108 --threads 1 --profile cpu-2core`") in lines[1]
    assert "no configs/planner/<name>.yaml" in lines[2]


def test_cell_clock_counts_the_cpu_of_the_process_and_of_its_children():
    import subprocess
    import sys
    import time

    from study.cells import CellClock

    clock = CellClock()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # 0.3 s of this process's CPU
        pass
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass"], check=True)  # and 0.3 s of a child's
    usage = clock.usage()
    assert usage["cpu_s"] >= 0.6 - 0.05  # clock ticks are 10 ms
    assert usage["wall_s"] >= 0.6 - 0.05 and usage["cpu_count"] >= 1


def test_a_cell_composed_once_with_placeholders_equals_its_composition_with_the_paths(tmp_path):
    from study.cells import _resolved, plan_cells, resolve_cells

    cfg = _cfg(tmp_path)
    study_dir = tmp_path / "study"
    cells = resolve_cells(plan_cells(cfg.study, list(cfg.study.backbones), 0), study_dir, "sequential")
    trained = {c.plan.backbone: c for c in cells if c.plan.kind == "train"}
    for cell in cells:
        checkpoint = str(trained[cell.plan.backbone].folder / "checkpoints" / "last.ckpt") \
            if cell.plan.needs_checkpoint else None
        direct = _resolved(cell.plan, str(cell.folder), str(study_dir / "metric_cache"), checkpoint, "sequential")
        assert cell.config == direct, cell.plan.job


def test_results_file_in_one_command(tmp_path):
    """benchmarks/study_results.py writes the study's report under a header naming machine, load and command."""
    import os
    import subprocess
    import sys

    root = CONFIGS.parent
    out = tmp_path / "study_micro.md"
    subprocess.run([sys.executable, str(root / "benchmarks" / "study_results.py"), "--study", "micro", "--exp-root",
                    str(tmp_path), "--report-only", "--no-latency", "--out", str(out)], check=True,
                   capture_output=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(root)))
    text = out.read_text()
    assert text.startswith("# Study micro: measured run")
    assert "1-minute load average" in text and "--study micro" in text and "## Plots" not in text
    assert "0 of 12 cells finished" in text and "## Published reference rows" in text
