"""run_robustness_report on hand-made sweep folders: table, summary, CE and mCE against values computed by hand."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from navsim_agents import run_robustness_report as R

V1_COLUMNS = ["token", "valid", "no_at_fault_collisions", "drivable_area_compliance", "ego_progress",
              "time_to_collision_within_bound", "comfort", "driving_direction_compliance", "score"]


def write_v1_csv(path, scores, *, aggregate=True, ego_progress=None, invalid=()):
    """Scenes with the given scores (sub-scores 1 except ego_progress) and the devkit's 'average' row."""
    rows = []
    for i, s in enumerate(scores):
        ep = ego_progress[i] if ego_progress else 1.0
        rows.append([f"tok{i}", i not in invalid, 1.0, 1.0, ep, 1.0, 1.0, 1.0, s])
    if aggregate:
        valid = [r for r in rows if r[1]]
        rows.append(["average", True, 1.0, 1.0, sum(r[4] for r in valid) / len(valid), 1.0, 1.0, 1.0,
                     sum(r[8] for r in valid) / len(valid)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=V1_COLUMNS).to_csv(path)  # unnamed index column, like the devkit


def hydra_job(folder, backbone, corruption, severity, weights=None, seed=0):
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    w = "null" if weights is None else weights
    (folder / ".hydra" / "config.yaml").write_text(
        ("" if seed is None else f"seed: {seed}\n") +
        f"backbone:\n  name: {backbone}\n  weights: {w}\n  freeze: true\n"
        f"corruption:\n  name: {corruption}\n  severity: {severity}\n  cameras: all\n  seed: 0\n"
        "output_dir: ${hydra:runtime.output_dir}\n")


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "multirun"
    # backbone A (baseline, Hydra configs) and B (JSON sidecars), scores chosen for hand arithmetic
    runs = {("A", "none", 0): [0.9, 0.9], ("A", "fog", 1): [0.7, 0.9], ("A", "fog", 3): [0.6, 0.6],
            ("A", "rain", 1): [0.6, 0.7], ("B", "none", 0): [0.95, 0.95], ("B", "fog", 1): [0.9, 0.9],
            ("B", "fog", 3): [0.8, 0.8], ("B", "rain", 1): [0.5, 0.5]}
    for i, ((b, c, s), scores) in enumerate(runs.items()):
        job = root / str(i)
        if b == "A":
            hydra_job(job, "eupe-a", c, s)
            write_v1_csv(job / "2026.01.01.00.00.00.csv", scores)
        else:
            job.mkdir(parents=True)
            (job / "run_info.json").write_text(json.dumps(
                {"backbone": "eupe-b", "corruption": c, "severity": s, "weights_source": "/ckpt/eupe_b.pt",
                 "planner_weights": "/ckpt/rap.ckpt"}))
            write_v1_csv(job / "scores" / "pdm_score.csv", scores, aggregate=(c != "rain"))
    return root


def test_table_values(sweep):
    table, skipped = R.collect([sweep])
    assert skipped == []
    assert len(table) == 8 and set(table["metric"]) == {"PDMS"}
    scores = table.set_index(["backbone", "corruption", "severity"])["score"]
    assert scores["eupe-a", "fog", 1] == pytest.approx(0.8)
    assert scores["eupe-b", "rain", 1] == pytest.approx(0.5)  # no aggregate row: mean of the scenes
    weights = table.groupby("backbone")["weights_source"].first()
    assert weights["eupe-a"] == "random" and weights["eupe-b"] == "/ckpt/eupe_b.pt"
    planner = table.groupby("backbone")["planner_weights"].first()
    assert planner["eupe-a"] == "unknown" and planner["eupe-b"] == "/ckpt/rap.ckpt"


def test_summary_and_corruption_errors_by_hand(sweep, tmp_path):
    result = R.build_report([sweep], out=tmp_path / "report", baseline="eupe-a")
    s = result["summary"].set_index("backbone")
    # A: clean 0.9; fog 0.8, 0.6; rain 0.65 -> mean 2.05/3, retained (2.05/3)/0.9, worst rain (0.65 < 0.7)
    assert s.loc["eupe-a", "clean"] == pytest.approx(0.9)
    assert s.loc["eupe-a", "mean_corrupted"] == pytest.approx(2.05 / 3)
    assert s.loc["eupe-a", "retained"] == pytest.approx(2.05 / 3 / 0.9)
    assert s.loc["eupe-a", "worst_corruption"] == "rain"
    assert s.loc["eupe-a", "mCE"] == pytest.approx(1.0)
    # B: fog 0.9, 0.8; rain 0.5 -> mean 2.2/3; retained (2.2/3)/0.95; worst rain
    assert s.loc["eupe-b", "mean_corrupted"] == pytest.approx(2.2 / 3)
    assert s.loc["eupe-b", "retained"] == pytest.approx(2.2 / 3 / 0.95)
    assert s.loc["eupe-b", "worst_corruption"] == "rain"
    # CE_fog = (0.1 + 0.2) / (0.2 + 0.4) = 0.5; CE_rain = 0.5 / 0.35; mCE = mean
    assert s.loc["eupe-b", "CE_fog"] == pytest.approx(0.5)
    assert s.loc["eupe-b", "CE_rain"] == pytest.approx(0.5 / 0.35)
    assert s.loc["eupe-b", "mCE"] == pytest.approx((0.5 + 0.5 / 0.35) / 2)
    # relative: fog (0.05 + 0.15) / (0.1 + 0.3) = 0.5; rain 0.45 / 0.25 = 1.8
    assert s.loc["eupe-b", "relative_mCE"] == pytest.approx((0.5 + 1.8) / 2)
    out = result["out"]
    for name in ("robustness_table.csv", "robustness_summary.csv", "score_vs_severity.png", "heatmap.png",
                 "robustness_report.md"):
        assert (out / name).is_file(), name
    report = (out / "robustness_report.md").read_text()
    assert "/ckpt/eupe_b.pt" in report and "RANDOM WEIGHTS" in report
    matrix, label = R.retained_matrix(result["table"])
    assert label.startswith("score retained")
    assert matrix.loc["eupe-b", "fog"] == pytest.approx(0.85 / 0.95)


def test_mean_over_valid_scenes_and_sub_scores(tmp_path):
    path = tmp_path / "x.csv"
    write_v1_csv(path, [0.8, 0.0, 0.6], aggregate=False, ego_progress=[0.5, 0.0, 0.7], invalid=(1,))
    metric, values, scenes, valid = R.read_score_csv(path)
    assert (metric, scenes, valid) == ("PDMS", 3, 2)
    assert values["score"] == pytest.approx(0.7) and values["ego_progress"] == pytest.approx(0.6)


def test_conformance_csv_formats_are_read():
    from conftest import conformance_path

    root = conformance_path()
    expected = root / "navsim_dev" / "expected"
    if not expected.is_dir():
        pytest.skip(f"conformance set not found at {root}; set EUPE_DRIVE_CONFORMANCE")
    metric, values, scenes, _ = R.read_score_csv(expected / "v1.1" / "human.csv")
    assert metric == "PDMS" and scenes == 25 and values["score"] == pytest.approx(0.9540, abs=1e-4)
    metric, values, scenes, _ = R.read_score_csv(expected / "v2" / "human.csv")
    assert metric == "EPDMS" and scenes == 25 and values["score"] == pytest.approx(0.9578, abs=1e-4)


def test_unusable_files_are_recorded_and_skipped(sweep):
    (sweep / "orphan").mkdir()
    write_v1_csv(sweep / "orphan" / "scores.csv", [0.5])
    (sweep / "notes.csv").write_text("a,b\n1,2\n")
    table, skipped = R.collect([sweep])
    assert len(table) == 8
    assert any("orphan" in s and "sidecar" in s for s in skipped)
    assert any("notes.csv" in s and "token" in s for s in skipped)


def test_experiment_name_folders_and_csv_stem_sidecar(tmp_path):
    # the documented sweep layout exp/robustness/<backbone>/<corruption>_s<severity>/<time>.csv, no sidecar
    write_v1_csv(tmp_path / "eupe-t" / "none_s0" / "2026.01.01.00.00.00.csv", [0.8])
    write_v1_csv(tmp_path / "eupe-t" / "fog_s3" / "2026.01.01.00.00.01.csv", [0.6])
    # two runs in one folder told apart by <csv stem>.json
    for stem, sev, score in (("a", 1, 0.7), ("b", 5, 0.4)):
        write_v1_csv(tmp_path / "shared" / f"{stem}.csv", [score])
        (tmp_path / "shared" / f"{stem}.json").write_text(json.dumps(
            {"backbone": {"name": "eupe-s", "weights_source": "hub:x"}, "corruption": {"name": "rain",
                                                                                      "severity": sev}}))
    table, skipped = R.collect([tmp_path])
    assert skipped == []
    got = {(r.backbone, r.corruption, r.severity): (r.score, r.weights_source) for r in table.itertuples()}
    assert got == {("eupe-t", "none", 0): (0.8, R.UNKNOWN_WEIGHTS), ("eupe-t", "fog", 3): (0.6, R.UNKNOWN_WEIGHTS),
                   ("eupe-s", "rain", 1): (0.7, "hub:x"), ("eupe-s", "rain", 5): (0.4, "hub:x")}


def test_same_name_with_different_weights_are_two_backbones(tmp_path):
    for i, w in enumerate(("/w/student_a.ckpt", "/w/student_b.ckpt")):
        hydra_job(tmp_path / str(i), "student", "none", 0, weights=w)
        write_v1_csv(tmp_path / str(i) / "s.csv", [0.5 + 0.1 * i])
    table, _ = R.collect([tmp_path])
    assert sorted(table["backbone"]) == ["student@student_a", "student@student_b"]


def test_unknown_baseline_and_empty_sweep_raise(sweep, tmp_path):
    with pytest.raises(KeyError, match="dinov3-h"):
        R.build_report([sweep], out=tmp_path / "r", baseline="dinov3-h")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scored runs"):
        R.build_report([tmp_path / "empty"])
    assert math.isnan(R.summarise(R.collect([sweep])[0][lambda t: t["corruption"] == "none"], "eupe-a")
                      ["mCE"].iloc[0])


@pytest.mark.parametrize("seeds", [(0, 1), (0, None)])
def test_random_weights_from_different_or_unrecorded_seeds_are_refused(tmp_path, seeds):
    for i, (corruption, severity, seed) in enumerate((("none", 0, seeds[0]), ("fog", 3, seeds[1]))):
        hydra_job(tmp_path / str(i), "eupe-t", corruption, severity, seed=seed)
        write_v1_csv(tmp_path / str(i) / "s.csv", [0.5])
    with pytest.raises(R.RunFailed, match=r"eupe-t has random weights.*seed (1|unrecorded).*Rerun the sweep with one "
                                          r"seed="):
        R.build_report([tmp_path], out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    # real weights: the seed does not decide the model, the report is built
    for i in range(2):
        hydra_job(tmp_path / str(i), "eupe-t", ("none", "fog")[i], (0, 3)[i], weights="/w/eupe_t.pt", seed=seeds[i])
    assert (R.build_report([tmp_path], out=tmp_path / "r")["out"] / "robustness_report.md").is_file()
