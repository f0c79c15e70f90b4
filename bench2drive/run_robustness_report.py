"""Closed-loop robustness report: every finished run_closed_loop cell below the given folders in one table.

    python -m bench2drive.run_robustness_report exp/cl_robustness --baseline eupe-t [--out DIR]

A cell is a folder with ``cell.json`` (what the run was) and ``metrics.json`` (its Bench2Drive metrics). Writes
to ``--out`` (default ``<first folder>/robustness_report``):

- ``closed_loop_table.csv``: per cell: backbone, weights, corruption / sensor fault and severity, latency, DS,
  SR, per-ability success, routes;
- ``closed_loop_summary.csv``: per backbone: clean DS, mean corrupted DS, retained DS (mean corrupted / clean),
  worst condition, mCE and relative mCE against the baseline backbone (the open-loop report's definitions,
  ``navsim_agents.run_robustness_report``, with score = DS / 100), CE per condition;
- ``ds_vs_severity.png`` (one panel per condition, one line per backbone), ``ds_vs_latency.png`` (clean
  sensors, one line per backbone), ``closed_loop_report.md`` (all of it and the weights source of every backbone).

DS here is the driving score over the routes the cell ran (the corrected denominator: the routes of the set),
in 0..100; the official /220 value stays in each cell's metrics.json. Conditions: a corruption is named as
itself, a sensor fault as ``fault-<name>``, both together as ``<corruption>+fault-<name>``; retained DS and
CE use the cells without latency, the latency plot the clean ones.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eupe.config_errors import exit_on_run_errors
from navsim_agents.run_robustness_report import (
    CLEAN,
    RANDOM_WEIGHTS,
    _markdown,
    check_same_random_model,
    plot_score_vs_severity,
    summarise,
)

REPORT_DIR = "robustness_report"
ABILITIES = ("Overtaking", "Merging", "Emergency_Brake", "Give_Way", "Traffic_Signs")


def condition_of(cell: dict) -> tuple[str, int]:
    """(condition name, severity) of a cell: the corruption, the sensor fault or both; clean = ('none', 0)."""
    corruption, fault = cell.get("corruption", CLEAN), cell.get("sensor_fault", CLEAN)
    if corruption != CLEAN and fault != CLEAN:
        return f"{corruption}+fault-{fault}", int(cell["severity"])
    if corruption != CLEAN:
        return corruption, int(cell["severity"])
    if fault != CLEAN:
        return f"fault-{fault}", int(cell["fault_severity"])
    return CLEAN, 0


def _weights(metrics: dict) -> tuple[str, str]:
    """(backbone weights, planner weights) from the run's weights line ('planner: X; backbone: Y')."""
    line = str(metrics.get("weights", ""))
    parts = dict(p.split(": ", 1) for p in line.split("; ") if ": " in p)
    backbone = parts.get("backbone", line or "unknown")
    planner = parts.get("planner", line or "unknown")
    norm = [RANDOM_WEIGHTS if str(w).startswith("random") else str(w) for w in (backbone, planner)]
    return norm[0], norm[1]


def collect(folders: Sequence[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Finished cells below ``folders`` -> (table, skipped 'path: reason')."""
    rows, skipped = [], []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"sweep folder {folder} does not exist: pass the sweep's output folder")
        for cell_path in sorted(folder.rglob("cell.json")):
            metrics_path = cell_path.with_name("metrics.json")
            if not metrics_path.is_file():
                skipped.append(f"{cell_path.parent}: not finished (no metrics.json); rerun the sweep to finish it")
                continue
            try:
                cell, m = json.loads(cell_path.read_text()), json.loads(metrics_path.read_text())
                condition, severity = condition_of(cell)
                ds = m.get("corrected", {}).get("driving_score", m["driving_score"])
                sr = m.get("corrected", {}).get("success_rate", m["success_rate"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                skipped.append(f"{cell_path.parent}: unreadable cell ({type(err).__name__}: {err})")
                continue
            backbone_w, planner_w = _weights(m)
            latency_ms = cell.get("latency_ms")
            rows.append({"backbone": cell["backbone"], "weights_source": backbone_w, "planner_weights": planner_w,
                         "corruption": condition, "severity": severity,
                         "latency_ms": 0.0 if cell.get("latency", "none") == "none" else
                         (math.nan if latency_ms is None else float(latency_ms)),
                         "DS": float(ds), "SR": 100.0 * float(sr),
                         **{f"success_{a}": m["abilities"].get(a) for a in ABILITIES},
                         "ability_mean": m["abilities"].get("mean"), "routes": int(m["eval_num"]),
                         "seed": cell.get("seed"), "cell": str(cell_path.parent)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["backbone", "latency_ms", "corruption", "severity"]).reset_index(drop=True)
    return table, skipped


def plot_ds_vs_latency(table: pd.DataFrame, path: Path) -> Path | None:
    clean = table[(table["corruption"] == CLEAN) & table["latency_ms"].notna()]
    if clean["latency_ms"].nunique() < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for b, runs in clean.groupby("backbone"):
        runs = runs.sort_values("latency_ms")
        ax.plot(runs["latency_ms"], runs["DS"], marker="o", label=b)
    ax.set_xlabel("planner latency (ms)")
    ax.set_ylabel("driving score")
    ax.set_title("closed loop: DS vs planner latency (clean sensors)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_report(folders: Sequence[Path], *, out: Path | None = None, baseline: str | None = None) -> dict:
    folders = [Path(f) for f in folders]
    out = Path(out) if out is not None else folders[0] / REPORT_DIR
    table, skipped = collect(folders)
    if table.empty:
        raise FileNotFoundError(f"no finished closed-loop cells (cell.json + metrics.json) under "
                                f"{', '.join(map(str, folders))}" + (f"; skipped: {skipped[:3]}" if skipped else ""))
    backbones = sorted(table["backbone"].unique())
    baseline = baseline or backbones[0]
    if baseline not in backbones:
        raise KeyError(f"baseline backbone {baseline!r} is not in the sweep; choose one of {backbones}")
    # random weights differ per seed: retained DS / CE across seeds would compare different models
    check_same_random_model(table.assign(
        random_weights=(table["weights_source"] == RANDOM_WEIGHTS) | (table["planner_weights"] == RANDOM_WEIGHTS),
        csv=table["cell"] + "/metrics.json"))
    no_latency = table[table["latency_ms"] == 0.0]
    if no_latency.duplicated(["backbone", "corruption", "severity"]).any():
        raise ValueError("two finished cells have the same backbone, condition and severity; keep one per cell")
    # the open-loop summary on score = DS / 100: retained, CE and relative CE as defined there
    scored = no_latency.assign(score=no_latency["DS"] / 100.0)
    summary = summarise(scored, baseline)
    summary = summary.rename(columns={"clean": "clean_DS", "mean_corrupted": "mean_corrupted_DS",
                                      "retained": "retained_DS", "worst_corruption": "worst_condition",
                                      "worst_score": "worst_DS"})
    for col in ("clean_DS", "mean_corrupted_DS", "worst_DS"):
        summary[col] = 100.0 * summary[col]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "closed_loop_table.csv", index=False)
    summary.to_csv(out / "closed_loop_summary.csv", index=False)
    plot_score_vs_severity(no_latency.assign(score=no_latency["DS"]), out / "ds_vs_severity.png", "DS")
    plot_ds_vs_latency(table, out / "ds_vs_latency.png")
    weights = summary[["backbone", "weights_source", "planner_weights"]].copy()
    weights["note"] = ["RANDOM WEIGHTS: these numbers say nothing about the backbone"
                       if RANDOM_WEIGHTS in w or RANDOM_WEIGHTS in p else ""
                       for w, p in zip(weights["weights_source"], weights["planner_weights"], strict=True)]
    lines = [f"# Closed-loop robustness report ({len(table)} cells, {len(backbones)} backbones)", "",
             f"DS = driving score over the routes each cell ran (0..100); baseline backbone for CE: `{baseline}`.",
             "", "## Weights per backbone", "", _markdown(weights), "", "## Summary (cells without latency)", "",
             "retained_DS = mean corrupted DS / clean DS; CE_c = sum_s (1 - DS_b,c,s/100) / sum_s "
             "(1 - DS_base,c,s/100), mCE = mean over conditions; relative mCE uses (DS_clean - DS_c,s).", "",
             _markdown(summary), "", "![DS vs severity](ds_vs_severity.png)", "",
             "![DS vs latency](ds_vs_latency.png)", "", "## All cells", "",
             _markdown(table.drop(columns=["cell"])), ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    (out / "closed_loop_report.md").write_text("\n".join(lines))
    return {"table": table, "summary": summary, "skipped": skipped, "out": out}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Collect a closed-loop robustness sweep into one report.")
    p.add_argument("folders", nargs="+", type=Path, help="sweep folders holding cell.json + metrics.json")
    p.add_argument("--out", type=Path, default=None, help=f"report folder (default <first>/{REPORT_DIR})")
    p.add_argument("--baseline", default=None, help="backbone the CE is relative to (default: the first)")
    a = p.parse_args(argv)
    with exit_on_run_errors():
        result = build_report(a.folders, out=a.out, baseline=a.baseline)
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        print(result["summary"][["backbone", "weights_source", "clean_DS", "mean_corrupted_DS", "retained_DS",
                                 "worst_condition", "mCE", "relative_mCE"]].to_string(index=False))
    print(f"report: {result['out'] / 'closed_loop_report.md'}")


if __name__ == "__main__":
    main()
