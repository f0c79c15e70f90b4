"""benchmarks/common.write_table: a partial benchmark merges its rows into the saved table."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402

COLUMNS = ["backbone", "ms", "note"]


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "machine", lambda: "test machine")
    return tmp_path


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_partial_run_keeps_the_other_rows_and_their_notes(results):
    common.write_table("t", COLUMNS, [["eupe-t", 10.0, ""], ["eupe-s", 20.0, ""], ["dinov3-h", 500.0, "slow"]],
                       title="T", notes=["device: cpu"])
    common.write_table("t", COLUMNS, [["eupe-s", 25.0, "again"]], title="T", notes=["device: cpu", "rerun"])
    assert _csv_rows(results / "t.csv") == [COLUMNS, ["eupe-t", "10.0", ""], ["eupe-s", "25.0", "again"],
                                            ["dinov3-h", "500.0", "slow"]]
    md = (results / "t.md").read_text()
    assert "| eupe-t | 10 |  |" in md and "| eupe-s | 25 | again |" in md and "| dinov3-h | 500 | slow |" in md
    assert "- device: cpu" in md and "- rerun" in md
    assert "rows kept from the table of" in md and "on test machine: eupe-t, dinov3-h" in md
    # a full rerun replaces every row and drops the note about kept rows
    common.write_table("t", COLUMNS, [["eupe-t", 11.0, ""], ["eupe-s", 21.0, ""], ["dinov3-h", 501.0, ""]],
                       title="T", notes=["device: cpu"])
    assert "rows kept" not in (results / "t.md").read_text()
    assert [r[1] for r in _csv_rows(results / "t.csv")[1:]] == ["11.0", "21.0", "501.0"]


def test_rows_are_told_apart_by_key_columns_and_other_columns_replace(results):
    cols = ["what", "worker", "time"]
    common.write_table("s", cols, [["score", "sequential", 1.0], ["score", "ray", 2.0]], title="S", key_columns=2)
    common.write_table("s", cols, [["score", "ray", 3.0]], title="S", key_columns=2)
    assert _csv_rows(results / "s.csv")[1:] == [["score", "sequential", "1.0"], ["score", "ray", "3.0"]]
    common.write_table("s", ["what", "time"], [["score", 4.0]], title="S")  # new layout: nothing to merge
    assert _csv_rows(results / "s.csv") == [["what", "time"], ["score", "4.0"]]


def test_latency_profile_rows_for_a_planner_size_in_one_command(tmp_path):
    """benchmarks/closed_loop.py --profile-only writes the hardware-profile row of the planner it is given
    (the study's tiny planner here, at a test-sized image) and keeps the table's other rows."""
    import subprocess

    from bench2drive.robustness import LATENCY_PROFILE_COLUMNS

    table = tmp_path / "latency_profiles.csv"
    kept = {"profile": "test-cpu", "backbone": "eupe-s", "planner_config": "tiny", "image": "4x64x48",
            "latency_ms": "7.0", "where": "elsewhere", "how": "by hand", "date": "2026-01-01"}
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LATENCY_PROFILE_COLUMNS)
        writer.writeheader()
        writer.writerow(kept)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks" / "closed_loop.py"), "--backbones", "--profile-only",
                    "eupe-t", "--planner-config", "tiny", "--size", "64x48", "--threads", "1", "--profile", "test-cpu", "--profile-table",
                    str(table)], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=str(root)))
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == kept
    (new,) = rows[1:]
    assert [new[k] for k in LATENCY_PROFILE_COLUMNS[:4]] == ["test-cpu", "eupe-t", "tiny", "4x64x48"]
    assert float(new["latency_ms"]) > 0 and "1 threads" in new["how"] and "random weights" in new["how"]


def test_a_section_below_the_table_survives_its_rewrite(results):
    md = results / "t.md"
    common.write_table("t", COLUMNS, [["eupe-t", 10.0, ""]], title="T", notes=["n"])
    common.replace_section(md, "## extra", "| a | b |\n|---|---|\n| 1 | 2 |")
    kept = common.read_section(md, "## extra")
    common.write_table("t", COLUMNS, [["eupe-t", 12.0, ""]], title="T", notes=["n"])  # rewrites the whole file
    assert common.read_section(md, "## extra") is None
    common.replace_section(md, "## extra", kept)
    common.replace_section(md, "## extra", common.read_section(md, "## extra"))  # in place: not duplicated
    text = md.read_text()
    assert text.count("## extra") == 1 and "| eupe-t | 12 |  |" in text and text.endswith("| 1 | 2 |\n")
    common.replace_section(md, "## extra", "new body")
    assert common.read_section(md, "## extra") == "new body" and "| 1 | 2 |" not in md.read_text()


def test_scoring_benchmark_pairs_each_round_and_takes_the_median_ratio(monkeypatch):
    """benchmarks/scoring.py: the sides take turns (ours first in rounds 1 and 3), a devkit job that cannot run is
    asked once, and a row shows each side's best pass with the median of the rounds' ratios (1 vs 10, 2 vs 30,
    4 vs 20: ratios 10, 15, 5, median 10)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))  # the script pins them at import; restored after the test
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import scoring

    calls = []
    ours, (theirs, missing) = scoring._rounds(
        3, lambda: calls.append("ours") or len(calls),
        [lambda: calls.append("devkit") or {"n": len(calls)}, lambda: calls.append("absent") or "not measured"])
    assert calls == ["ours", "devkit", "absent", "devkit", "ours", "ours", "devkit"]
    assert ours == [1, 5, 6] and [t["n"] for t in theirs] == [2, 4, 7] and missing == ["not measured"] * 3

    timings = [scoring.Timing(c, c + 0.5) for c in (0.001, 0.002, 0.004)]
    devkit = [{"scoring_cpu_s": c, "scoring_wall_s": c + 0.5} for c in (0.010, 0.030, 0.020)]
    row = scoring._row("scoring x", "data", timings, devkit, "scoring", 10.0)
    assert row[2:7] == ["1.0 ms", "10.0 ms", "10.0x", ">= 10x", "yes"]
    assert scoring._row("scoring x", "data", timings, ["not measured"] * 3, "scoring", 10.0)[3:5] == [
        "not measured", "-"]
