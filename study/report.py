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

from bench2drive.robustness import LATENCY_PROFILE_COLUMNS, LATENCY_PROFILES
from eupe.atomic_io import atomic_write_text
from eupe.config_errors import ConfigError
from navsim_agents.scoring.two_stage import AGGREGATE_TOKENS as TWO_STAGE_AGGREGATES
from study.cells import Cell, study_runs

# Published rows, shown beside ours and never mixed in.
# Published scores are percent; the scorer's CSV (and our table) is on the devkit's 0-1 scale.
# Both numbers are in vita-epfl/RAP README.md at commit 5fd8630 (2025-12-04), section "Checkpoints": line 223
# ("Results on NAVSIM v1" table) and line 229 ("Results on NAVSIM v2" table). The README names no split; its line
# 18 links the NAVSIM v1/v2 leaderboard (navtest for v1), and NAVSIM v2's EPDMS benchmark is navhard two-stage.
# The code-release README (commit 20cddfd) had only the v1 row. The paper's own v2 table (arXiv:2510.04333) could
# not be read here (the project's RAP spec, specs/rap.md section 5, notes 36.93 there).
RAP_README = "vita-epfl/RAP README.md @5fd8630"
REFERENCE_ROWS = [
    {"method": "RAP-DINO (DINOv3-h16+, 888M)", "metric": "PDMS", "split": "navtest", "value (%)": 93.8,
     "source": f"{RAP_README} line 223, table 'Results on NAVSIM v1'"},
    {"method": "RAP-DINO (DINOv3-h16+, 888M)", "metric": "EPDMS", "split": "navhard two-stage", "value (%)": 39.6,
     "source": f"{RAP_README} line 229, table 'Results on NAVSIM v2' (split not named there)"},
]
ABILITIES = ("Merging", "Overtaking", "Emergency_Brake", "Give_Way", "Traffic_Signs")
# the aggregate rows of the scorer's CSV: navsim_agents.scoring.evaluate.results_dataframe (one-stage: no prefix
# on the metric names) and the two-stage CSV's per-stage rows (metric names prefixed 'stage_one/', 'stage_two/',
# 'combined/')
ONE_STAGE_AGGREGATES = ("average", "average_all_frames")
# what each cell cost (study.cells.CellClock), in status.csv and the report's cost table
USAGE_COLUMNS = ("wall_s", "cpu_s", "load_start", "load_end", "ended")
LATENCY_TABLE = "bench2drive/latency_profiles.csv"  # as the report names it
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
        usage = (rec.get("usage") or {}) if rec.get("key") == cell.key else {}
        status.append({"backbone": cell.plan.backbone, "job": cell.plan.job, "key": cell.key, "status": state,
                       "error": error, "folder": _rel(cell.folder, root),
                       **{col: usage.get(col) for col in USAGE_COLUMNS}})
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
    tables = {}
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "backbones.csv"
    if bench.is_file():
        tables["backbones"] = (pd.read_csv(bench), str(bench.relative_to(bench.parents[2])))
    if LATENCY_PROFILES.is_file():
        tables["latency"] = (pd.read_csv(LATENCY_PROFILES), LATENCY_TABLE)
    return tables


def _get(df: pd.DataFrame, bb: str, job: str, metric: str) -> float | None:
    hit = df[(df["backbone"] == bb) & (df["job"] == job) & (df["metric"] == metric)] if not df.empty else df
    return float(hit["value"].iloc[0]) if len(hit) else None


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}g}" if isinstance(v, float) \
        else str(v)


def latency_column(profile: str, planner: str, image: str) -> str:
    return f"latency ms ({profile}, {planner} planner, {image})"


def driven_planners(cells: list[Cell]) -> dict[str, tuple[str, str]]:
    """backbone -> (planner config name, image 'cameras x width x height') of its clean closed-loop cell: the
    planner whose latency row (bench2drive/latency_profiles.csv) belongs in the report."""
    from bench2drive.agent import image_size
    from bench2drive.rig import build_rig
    from bench2drive.run_closed_loop import planner_name

    out = {}
    for cell in cells:
        if cell.plan.kind == "closed_loop" and cell.plan.condition == {"corruption": "none", "latency_ms": 0.0}:
            agent = cell.config["agent"]
            w, h = image_size(agent)
            out[cell.plan.backbone] = (planner_name(agent["planner_config"]),
                                       f"{len(build_rig(agent['rig'], width=w, height=h))}x{w}x{h}")
    return out


def _summary(df: pd.DataFrame, backbones: list[str], tables: dict,
             driven: dict[str, tuple[str, str]]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per backbone (the table a paper prints); extra numbers it takes from benchmark tables; ``driven``:
    each backbone's planner and image size in the study (its latency rows are those measured for them)."""
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
        if "latency" in tables:  # every profile measured for this backbone with the study's own planner and images
            t, src = tables["latency"]
            planner, image = driven.get(bb, (None, None))
            mine = t[(t["backbone"] == bb) & (t["planner_config"] == planner) & (t["image"] == image)]
            for _, hit in mine.iterrows():
                row[latency_column(str(hit["profile"]), planner, image)] = float(hit["latency_ms"])
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


def _latency_lines(backbones: list[str], driven: dict[str, tuple[str, str]], profile: str,
                   tables: dict) -> list[str]:
    """Where each backbone's latency (study.latency_profile) comes from, or the command that measures it."""
    rows, src = tables.get("latency", (pd.DataFrame(columns=LATENCY_PROFILE_COLUMNS), LATENCY_TABLE))
    lines = []
    for bb in backbones:
        if bb not in driven:
            lines.append(f"- {bb}: no clean closed-loop cell, so no planner to look up")
            continue
        planner, image = driven[bb]
        hit = rows[(rows["profile"] == profile) & (rows["backbone"] == bb) & (rows["planner_config"] == planner)
                   & (rows["image"] == image)]
        if len(hit):
            r = hit.iloc[-1]
            lines.append(f"- {bb}: {float(r['latency_ms']):.1f} ms, {src} row ({profile}, {planner} planner, "
                         f"{image}): {r['how']}; {r['where']}, {r['date']}")
        elif planner == "custom":
            lines.append(f"- {bb}: no row: the study's planner is no configs/planner/<name>.yaml as it stands (its "
                         "recipe changes planner settings), so no profile row can match it")
        else:
            w, h = image.split("x")[1:]
            lines.append(f"- {bb}: no {profile} row for the {planner} planner at {image} in {src}; measure it with "
                         f"`python benchmarks/closed_loop.py --backbones --profile-only {bb} --planner-config "
                         f"{planner} --size {w}x{h} --threads 1 --profile {profile}`")
    return lines


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


def _cost_lines(status: pd.DataFrame, runs: list[dict]) -> list[str]:
    """Total and per-kind wall / CPU time of the cells as recorded when they ran (cells run in an earlier
    session keep that session's figures), and of the study command's runs (data generated on first use, checks
    and reports included)."""
    working = [r for r in runs if r.get("ran")]
    lines = [f"Study command: {len(working)} run(s) that ran cells, wall "
             f"{sum(r['usage']['wall_s'] for r in working) / 60:.1f} min, CPU "
             f"{sum(r['usage']['cpu_s'] for r in working) / 60:.1f} min in all (the cells below, plus data generated "
             "on first use, the checks before work and the reports); report-only and no-op runs left out.", ""]
    timed = status.dropna(subset=["cpu_s"])
    if timed.empty:
        return [*lines, "(no cell recorded its cost)", ""]
    loads = pd.concat([timed["load_start"], timed["load_end"]]).dropna()
    lines += [f"{len(timed)} of {len(status)} cells recorded their cost: wall {timed['wall_s'].sum() / 60:.1f} min, "
             f"CPU {timed['cpu_s'].sum() / 60:.1f} min (user + system of the cell's process and its children), "
             f"1-minute load average {loads.min():.1f}-{loads.max():.1f} while they ran"
             + (f" on {os.cpu_count()} cores" if os.cpu_count() else "") + ". On a machine shared with other "
             "work the wall time is inflated; the CPU time is the figure that carries over.", ""]
    kinds = timed.assign(kind=timed["job"].map(_job_kind)).groupby("kind")[["wall_s", "cpu_s"]].sum() / 60
    lines.append(_md_table(kinds.reset_index().rename(columns={"wall_s": "wall (min)", "cpu_s": "CPU (min)"})))
    return lines


def _job_kind(job: str) -> str:
    return "train" if job == "train" else "score" if job.startswith("score") else "closed loop"


def write_report(cells: list[Cell], root: Path, cfg: DictConfig) -> dict[str, Path]:
    """Write report.md / report.html / report.csv (+ status.csv, plots) into ``root``; returns their paths."""
    df, status, weights = collect(cells, root)
    backbones = list(dict.fromkeys(c.plan.backbone for c in cells))
    tables = _reference_tables()
    driven = driven_planners(cells)
    summary, extra = _summary(df, backbones, tables, driven)
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
          f"## Latency ({cfg.study.latency_profile}: the planner each backbone drives in the closed-loop cells)",
          *_latency_lines(backbones, driven, str(cfg.study.latency_profile), tables), "",
          "## Ours", _md_table(summary), "## Published reference rows (not ours, not mixed in)", _md_table(ref),
          "## Cells not finished", _md_table(failed[["backbone", "job", "status", "error", "folder"]]),
          "## Cost (per cell in status.csv, per run in study_runs.json)", *_cost_lines(status, study_runs(root)),
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
