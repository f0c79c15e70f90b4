"""benchmarks/closed_loop.py at a tiny size: the speed table and the profile rows in one command."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import closed_loop  # noqa: E402
import common  # noqa: E402

from bench2drive.agent import PLAN_EVERY  # noqa: E402


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_command_writes_the_speed_table_and_the_profile_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    table = tmp_path / "profiles.csv"
    other = {"profile": "gpu-h100", "backbone": "eupe-t", "planner_config": "small", "image": "4x192x108",
             "latency_ms": "9.0", "where": "elsewhere", "how": "by hand", "date": "2026-01-01"}
    closed_loop.merge_profile_rows([other], table)
    ticks = 20
    threads = torch.get_num_threads()
    try:
        closed_loop.main(["--threads", "1", "--size", "64x36", "--ticks", str(ticks), "--backbones", "eupe-t",
                          "--profile-only", "edge-vit-96", "--profile", "cpu-test", "--profile-table", str(table)])
    finally:
        torch.set_num_threads(threads)  # the script sets it for its process
    speed = {r["planner"]: r for r in _rows(tmp_path / "closed_loop.csv")}
    assert set(speed) == {"scripted expert (no sensors)", "constant velocity (rendered cameras)", "RAP eupe-t (small)"}
    # two routes of `ticks` ticks each (neither ends sooner); the agent plans on ticks 0, 10, ...
    calls = 2 * -(-ticks // PLAN_EVERY)
    rap = speed["RAP eupe-t (small)"]
    assert int(rap["ticks"]) == 2 * ticks and int(rap["planner_calls"]) == calls
    assert float(rap["planner_cpu_ms"]) > 0 and float(rap["planner_median_ms"]) > 0
    assert int(speed["constant velocity (rendered cameras)"]["planner_calls"]) == calls
    assert "OMP_WAIT_POLICY" in (tmp_path / "closed_loop.md").read_text()
    profiles = _rows(table)
    assert profiles[0] == other  # another machine's row is kept
    mine = {r["backbone"]: r for r in profiles if r["profile"] == "cpu-test"}
    assert set(mine) == {"eupe-t", "edge-vit-96"}
    for row in mine.values():
        assert row["image"] == "4x64x36" and row["planner_config"] == "small" and float(row["latency_ms"]) > 0
        assert "1 threads" in row["how"] and "OMP_WAIT_POLICY=" in row["how"]


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_bench2drive_sets_the_openmp_wait_policy_unless_given(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", "import os, bench2drive; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
