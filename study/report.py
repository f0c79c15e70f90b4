"""The study's report: ``report.md``, ``report.html`` (with the plots) and ``report.csv`` (every number, one row
each, with the file it was read from). Numbers are read back from each cell's own output files (the scorer's
CSV and sidecar, the closed-loop metrics.json, the training CSV log); ratios (retained score) are marked derived.
Published reference rows sit in their own table, never in ours.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from eupe.atomic_io import atomic_write_text
from eupe.config_errors import ConfigError
from navsim_agents.scoring.two_stage import AGGREGATE_TOKENS as TWO_STAGE_AGGREGATES
from study.cells import Cell

# Published rows, shown beside ours and never mixed in.
# Published scores are percent; the scorer's CSV (and our table) is on the devkit's 0-1 scale.
REFERENCE_ROWS = [
    {"method": "RAP-DINO (DINOv3-h16+, 888M)", "metric": "PDMS", "split": "navtest", "value (%)": 93.8,
     "source": "vita-epfl/RAP README.md, 'Results on NAVSIM' table"},
    {"method": "RAP-DINO (DINOv3-h16+, 888M)", "metric": "EPDMS", "split": "navhard two-stage", "value (%)": 39.6,
     "source": "RAP paper, arXiv:2510.04333 (NAVSIM v2 navhard two-stage table)"},
]
ABILITIES = ("Merging", "Overtaking", "Emergency_Brake", "Give_Way", "Traffic_Signs")
# the aggregate rows of the scorer's CSV: navsim_agents.scoring.evaluate.results_dataframe (one-stage: no prefix
# on the metric names) and the two-stage CSV's per-stage rows (metric names prefixed 'stage_one/', 'stage_two/',
# 'combined/')
ONE_STAGE_AGGREGATES = ("average", "average_all_frames")
TWO_STAGE_PREFIX = os.path.commonprefix(TWO_STAGE_AGGREGATES)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _score_numbers(cell: Cell, rec: dict, root: Path) -> tuple[list[dict], dict]:
    csv_path = cell.folder / rec["outputs"]["csv"]
    df = pd.read_csv(csv_path)
    tokens = df["token"].astype(str)
    agg = df[tokens.isin(ONE_STAGE_AGGREGATES + TWO_STAGE_AGGREGATES)]
    if agg.empty:
        raise ValueError(f"{csv_path} has no aggregate row ({' / '.join(ONE_STAGE_AGGREGATES + TWO_STAGE_AGGREGATES)})")
    out = []
    for _, row in agg.iterrows():
        token = str(row["token"])
        prefix = "" if token in ONE_STAGE_AGGREGATES else token[len(TWO_STAGE_PREFIX):] + "/"
        for col in df.columns:
            if col in ("token", "valid", "Unnamed: 0"):
                continue
            value = pd.to_numeric(row[col], errors="coerce")
            if pd.notna(value):
                out.append({"metric": prefix + str(col), "value": float(value), "source": _rel(csv_path, root)})
    sidecar = json.loads(csv_path.with_suffix(".json").read_text())
    weights = {"backbone": (sidecar.get("backbone") or {}).get("weights_source"),
               "planner": sidecar.get("planner_weights")}
    return out, weights


def _closed_loop_numbers(cell: Cell, root: Path) -> tuple[list[dict], dict]:
    path = cell.folder / "metrics.json"
    m = json.loads(path.read_text())
    src = _rel(path, root)
    out = [{"metric": "DS", "value": float(m["corrected"]["driving_score"]), "source": src},
           {"metric": "SR", "value": float(m["corrected"]["success_rate"]), "source": src},
           {"metric": "DS_official_220", "value": float(m["driving_score"]), "source": src}]
    for name in (*ABILITIES, "mean"):
        value = (m.get("abilities") or {}).get(name)
        if value is not None:
            out.append({"metric": f"ability_{name}", "value": float(value), "source": src})
    return out, {"closed_loop": m.get("weights")}


def _train_numbers(cell: Cell, root: Path) -> list[dict]:
    logs = sorted((cell.folder / "csv").glob("version_*/metrics.csv"))
    if not logs:
        return []
    df = pd.read_csv(logs[-1])
    out = []
    for col in ("train/loss_epoch", "train/l2_epoch"):
        if col in df and df[col].notna().any():
            out.append({"metric": col.replace("/", "_"), "value": float(df[col].dropna().iloc[-1]),
                        "source": _rel(logs[-1], root)})
    if "step" in df and df["step"].notna().any():
        out.append({"metric": "train_steps", "value": float(df["step"].max() + 1), "source": _rel(logs[-1], root)})
    return out


def collect(cells: list[Cell], root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(numbers: one row per number; status: one row per cell; weights per backbone)."""
    numbers: list[dict] = []
    status: list[dict] = []
    weights: dict[str, dict] = {}
    for cell in cells:
        rec = cell.record() or {}
        state = rec.get("status", "not run") if rec.get("key") == cell.key else "not run"
        error = rec.get("error") if state == "failed" else None
        if state == "finished":
            try:
                if cell.plan.kind == "score":
                    found, w = _score_numbers(cell, rec, root)
                elif cell.plan.kind == "closed_loop":
                    found, w = _closed_loop_numbers(cell, root)
                else:
                    found, w = _train_numbers(cell, root), {}
                for k, v in w.items():
                    weights.setdefault(cell.plan.backbone, {}).setdefault(k, v)
                for n in found:
                    numbers.append({"backbone": cell.plan.backbone, "job": cell.plan.job, "kind": "measured",
                                    **cell.plan.condition, **n})
            except (OSError, ValueError, KeyError) as err:  # an output that cannot be read is a failed cell
                state, error = "unreadable", f"{type(err).__name__}: {err}"
        status.append({"backbone": cell.plan.backbone, "job": cell.plan.job, "key": cell.key, "status": state,
                       "error": error, "folder": _rel(cell.folder, root)})
    df = pd.DataFrame(numbers)
    if not df.empty:
        df = pd.concat([df, _retained(df)], ignore_index=True)
    return df, pd.DataFrame(status), weights


def _retained(df: pd.DataFrame) -> pd.DataFrame:
    """Corrupted / clean score per backbone, corruption and severity (PDMS open-loop, DS closed-loop)."""
    rows = []
    for metric, clean_job, prefix in (("score", "score_v1", "score_v1_"), ("DS", "closed_loop", "closed_loop_")):
        for (bb, job), g in df[df["metric"] == metric].groupby(["backbone", "job"]):
            if not job.startswith(prefix) or "_lat" in job:
                continue
            clean = df[(df["backbone"] == bb) & (df["job"] == clean_job) & (df["metric"] == metric)]
            if clean.empty or clean["value"].iloc[0] == 0:
                continue
            ratio = float(g["value"].iloc[0]) / float(clean["value"].iloc[0])
            rows.append({"backbone": bb, "job": job, "kind": "derived", "metric": f"retained_{metric}",
                         "value": ratio, "corruption": g["corruption"].iloc[0], "severity": g["severity"].iloc[0],
                         "source": f"{job} {metric} / {clean_job} {metric}"})
    return pd.DataFrame(rows)


def check_latency_profile(profile: str) -> None:
    """``study.latency_profile`` is a row of bench2drive/latency_profiles.csv (ConfigError naming the known ones)."""
    tables = _reference_tables()
    if "latency" in tables and not (tables["latency"][0]["profile"] == profile).any():
        raise ConfigError(f"study.latency_profile={profile!r} is not a profile of {tables['latency'][1]}; known: "
                          f"{sorted(set(tables['latency'][0]['profile']))}")


def _reference_tables() -> dict[str, tuple[pd.DataFrame, str]]:
    """Backbone params / GFLOPs (benchmarks/backbones.py table, when this is a checkout) and the latency
    profiles that ship with bench2drive."""
    from bench2drive import robustness

    tables = {}
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "backbones.csv"
    if bench.is_file():
        tables["backbones"] = (pd.read_csv(bench), str(bench.relative_to(bench.parents[2])))
    profiles = Path(robustness.__file__).with_name("latency_profiles.csv")
    if profiles.is_file():
        tables["latency"] = (pd.read_csv(profiles), "bench2drive/latency_profiles.csv")
    return tables


def _get(df: pd.DataFrame, bb: str, job: str, metric: str) -> float | None:
    hit = df[(df["backbone"] == bb) & (df["job"] == job) & (df["metric"] == metric)] if not df.empty else df
    return float(hit["value"].iloc[0]) if len(hit) else None


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}g}" if isinstance(v, float) \
        else str(v)


def _summary(df: pd.DataFrame, backbones: list[str], tables: dict) -> tuple[pd.DataFrame, list[dict]]:
    """One row per backbone (the table a paper prints); extra numbers it takes from benchmark tables."""
    rows, extra = [], []
    for bb in backbones:
        row: dict[str, Any] = {"backbone": bb}
        if "backbones" in tables:
            t, src = tables["backbones"]
            hit = t[t["backbone"] == bb]
            for col in ("params (M)", "GFLOPs RAP 4x768x448"):
                if len(hit) and col in hit:
                    row[col] = float(hit[col].iloc[0])
                    extra.append({"backbone": bb, "job": "benchmark", "kind": "table", "metric": col,
                                  "value": row[col], "source": src})
        if "latency" in tables:  # every measured profile of the backbone (GPU rows once a GPU run wrote them)
            t, src = tables["latency"]
            for _, hit in t[t["backbone"] == bb].iterrows():  # as measured: that row's planner and image size
                row[f"latency ms ({hit['profile']}, {hit['planner_config']} planner, {hit['image']})"] = \
                    float(hit["latency_ms"])
                extra.append({"backbone": bb, "job": "benchmark", "kind": "table",
                              "metric": f"latency_ms_{hit['profile']}", "value": float(hit["latency_ms"]),
                              "source": src})

        for label, job, metric in (("PDMS", "score_v1", "score"),
                                   ("EPDMS two-stage", "score_v2_two_stage", "combined/score"),
                                   ("EPDMS stage one", "score_v2_two_stage", "stage_one/score"),
                                   ("EPDMS stage two", "score_v2_two_stage", "stage_two/score"),
                                   ("DS", "closed_loop", "DS"), ("SR", "closed_loop", "SR"),
                                   ("final train loss", "train", "train_loss_epoch")):
            row[label] = _get(df, bb, job, metric)
        mine = df[df["backbone"] == bb] if not df.empty else df
        for metric in mine[mine["job"] == "score_v1"]["metric"] if len(mine) else []:
            if metric != "score":
                row[f"PDMS {metric}"] = _get(df, bb, "score_v1", metric)
        for name in ABILITIES:
            row[f"DS ability {name}"] = _get(df, bb, "closed_loop", f"ability_{name}")
        for job in sorted(set(mine[mine["job"].str.startswith("closed_loop_lat")]["job"])) if len(mine) else []:
            row[f"DS {job[len('closed_loop_'):]}"] = _get(df, bb, job, "DS")
        for metric in sorted(set(df["metric"])) if not df.empty else []:
            if metric.startswith("retained_"):
                for job in sorted(set(df[(df["backbone"] == bb) & (df["metric"] == metric)]["job"])):
                    row[f"{metric} {job}"] = _get(df, bb, job, metric)
        rows.append(row)
    return pd.DataFrame(rows), extra


def _plots(df: pd.DataFrame, summary: pd.DataFrame, out: Path, profile: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    lat_col = next((c for c in summary.columns if c.startswith(f"latency ms ({profile},")), None)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, score in zip(axes, ("PDMS", "DS"), strict=True):
        for _, r in summary.iterrows():
            if lat_col is not None and pd.notna(r.get(lat_col)) and pd.notna(r.get(score)):
                ax.scatter(r[lat_col], r[score])
                ax.annotate(r["backbone"], (r[lat_col], r[score]))
        ax.set_xlabel(lat_col or f"latency ms ({profile}): no row for these backbones")
        ax.set_ylabel(score)
        ax.set_title(f"efficiency frontier: {score} vs latency")
    fig.tight_layout()
    paths.append(out / "frontier.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("retained_score", "retained_DS"), strict=True):
        sub = df[df["metric"] == metric] if not df.empty else df
        for (bb, corr), g in (sub.groupby(["backbone", "corruption"]) if len(sub) else []):
            g = g.sort_values("severity")
            ax.plot([0, *g["severity"]], [1.0, *g["value"]], marker="o", label=f"{bb} {corr}")
        ax.set_xlabel("severity")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title("open loop (PDMS)" if metric == "retained_score" else "closed loop (DS)")
        if len(sub):
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "robustness.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    backbones = list(summary["backbone"])
    width = 0.8 / max(len(backbones), 1)
    for i, bb in enumerate(backbones):
        vals = [_get(df, bb, "closed_loop", f"ability_{a}") for a in ABILITIES]
        ax.bar([k + i * width for k in range(len(ABILITIES))], [v if v is not None else 0 for v in vals],
               width, label=bb)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(ABILITIES))], ABILITIES, fontsize=8)
    ax.set_ylabel("ability success (closed loop, clean)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "abilities.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _weights_lines(weights: dict, backbones: list[str]) -> list[str]:
    lines = []
    for bb in backbones:
        w = weights.get(bb, {})
        text = "; ".join(f"{k}: {v}" for k, v in w.items() if v) or "unknown (no finished score / closed-loop cell)"
        flag = "**RANDOM WEIGHTS: these numbers say nothing about the backbone** " if "random" in text.lower() else ""
        lines.append(f"- {bb}: {flag}{text}")
    return lines


def write_report(cells: list[Cell], root: Path, cfg: DictConfig) -> dict[str, Path]:
    """Write report.md / report.html / report.csv (+ status.csv, plots) into ``root``; returns their paths."""
    df, status, weights = collect(cells, root)
    backbones = list(dict.fromkeys(c.plan.backbone for c in cells))
    tables = _reference_tables()
    summary, extra = _summary(df, backbones, tables)
    every = pd.concat([df, pd.DataFrame(extra)], ignore_index=True) if extra else df
    paths = {"md": root / "report.md", "html": root / "report.html", "csv": root / "report.csv",
             "status": root / "status.csv"}
    every.to_csv(paths["csv"], index=False, quoting=csv.QUOTE_MINIMAL)
    status.to_csv(paths["status"], index=False)
    plots = _plots(df, summary, root, str(cfg.study.latency_profile))
    failed = status[status["status"] != "finished"]
    ref = pd.DataFrame(REFERENCE_ROWS)
    md = [f"# Study {cfg.study.name}: RAP with each backbone", "",
          f"{len(status) - len(failed)} of {len(status)} cells finished; every number below is read from the "
          "cell's own output file (report.csv names it). PDMS / EPDMS and their sub-scores are on the devkit CSV's 0-1 "
          "scale, DS on 0-100, latency in ms; retained = corrupted / clean of the same backbone, left out where the "
          "clean score is 0.", "", "## Weights", *_weights_lines(weights, backbones), "",
          "## Ours", _md_table(summary), "## Published reference rows (not ours, not mixed in)", _md_table(ref),
          "## Cells not finished", _md_table(failed[["backbone", "job", "status", "error", "folder"]]),
          "## Plots", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    atomic_write_text(paths["md"], "\n".join(md))
    imgs = "".join(f"<h3>{p.stem}</h3><img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
                   for p in plots)
    weights_html = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>"
                           for line in _weights_lines(weights, backbones))
    page = (f"<html><head><meta charset='utf-8'><title>Study {html.escape(str(cfg.study.name))}</title></head><body>"
            f"<h1>Study {html.escape(str(cfg.study.name))}</h1><h2>Weights</h2><ul>{weights_html}</ul>"
            f"<h2>Ours</h2>{summary.to_html(index=False, na_rep='-')}"
            f"<h2>Published reference rows (not ours)</h2>{ref.to_html(index=False)}"
            f"<h2>Cells not finished</h2>{failed.to_html(index=False)}<h2>Plots</h2>{imgs}</body></html>")
    atomic_write_text(paths["html"], page)
    buf = io.StringIO()
    summary.to_csv(buf, index=False)
    atomic_write_text(root / "summary.csv", buf.getvalue())
    return paths
