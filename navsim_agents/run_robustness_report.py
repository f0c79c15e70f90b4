"""Collect a corruption sweep of ``run_pdm_score.py`` into one robustness report.

    python navsim_agents/run_pdm_score.py -m backbone=eupe-t,eupe-s,eupe-b corruption=none \
        'experiment_name=robustness/${backbone.name}/${corruption.name}_s${corruption.severity}'
    python navsim_agents/run_pdm_score.py -m backbone=eupe-t,eupe-s,eupe-b \
        corruption=fog,rain,snow,low_light corruption.severity=1,3,5 \
        'experiment_name=robustness/${backbone.name}/${corruption.name}_s${corruption.severity}'
    python navsim_agents/run_robustness_report.py exp/robustness --baseline eupe-b [--out DIR]

(One ``experiment_name`` per job: run_pdm_score writes ``$NAVSIM_EXP_ROOT/<experiment_name>/<time>.csv`` and
resumes from a partial file in that folder, so jobs of a sweep must not share it.)

Every score CSV (NAVSIM devkit format: PDMS v1 or EPDMS v2) below the given folders is one run. What the run
was is read next to it, in this order: a JSON sidecar (``<csv stem>.json``, ``run_info.json``,
``run_meta.json``, ``metadata.json``; flat ``{"backbone", "corruption", "severity", "weights_source"}`` or nested
``{"backbone": {"name", "weights_source"}, "corruption": {"name", "severity"}}``), else Hydra's saved
``.hydra/config.yaml`` (``backbone.name``, ``backbone.weights``, ``corruption.name``, ``corruption.severity``),
looked up in the CSV's folder and its parents; else the folder names of the ``experiment_name`` pattern above
(``<backbone>/<corruption>_s<severity>/<time>.csv``; weights then unknown). Other CSVs are recorded as skipped.

Writes to ``--out`` (default ``<first folder>/robustness_report``):

- ``robustness_table.csv``: score and sub-scores per backbone x corruption x severity (clean = ``none``, 0);
- ``robustness_summary.csv``: per backbone: clean score, mean corrupted score, mean score retained relative to
  clean, worst corruption, mCE and relative mCE against the baseline backbone, and CE per corruption;
- ``score_vs_severity.png`` (one panel per corruption, one line per backbone), ``heatmap.png`` (backbone x
  corruption, score retained), ``robustness_report.md`` (all of it, and which weights each backbone had).

Corruption error in the spirit of ImageNet-C (Hendrycks & Dietterich 2019), with error = 1 - score:
``CE_c(b) = sum_s (1 - S_bcs) / sum_s (1 - S_base,c,s)``, ``mCE(b) = mean_c CE_c(b)``; relative:
``rCE_c(b) = sum_s (S_b,clean - S_bcs) / sum_s (S_base,clean - S_base,c,s)``. Sums run over the severities
that both backbones have.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eupe.atomic_io import atomic_path, atomic_write_text
from eupe.config_errors import RunFailed, exit_on_run_errors
from navsim_agents.scoring.constants import V1_COLUMNS, V2_COLUMNS

log = logging.getLogger(__name__)

AGGREGATE_TOKENS = ("average", "average_all_frames")  # the devkit's final aggregate row
SIDECAR_NAMES = ("run_info.json", "run_meta.json", "metadata.json")
CLEAN = "none"
REPORT_DIR = "robustness_report"
RANDOM_WEIGHTS = "random"
UNKNOWN_WEIGHTS = "unknown (no sidecar)"
RUN_FOLDER = re.compile(r"^(?P<corruption>[a-z][a-z0-9_]*)_s(?P<severity>[0-5])$")  # <corruption>_s<severity>


@dataclass(frozen=True)
class RunMeta:
    """What one scored run was."""

    backbone: str
    corruption: str
    severity: int
    weights_source: str
    described_by: str  # the sidecar or Hydra config it was read from
    planner_weights: str = "unknown"  # the agent's checkpoint (a random planner makes every score meaningless)
    seed: int | None = None  # run_pdm_score's seed: random weights are only the same model within one seed

    @property
    def random_weights(self) -> bool:
        return RANDOM_WEIGHTS in self.weights_source or RANDOM_WEIGHTS in self.planner_weights


# ---- reading one run -------------------------------------------------------------------------------------
def _dig(tree: Mapping[str, Any], *keys: str) -> Any:
    node: Any = tree
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _meta_from_mapping(tree: Mapping[str, Any], described_by: str) -> RunMeta | None:
    """Flat or nested sidecar / Hydra config -> RunMeta (None when it names no backbone)."""
    backbone = tree.get("backbone")
    weights = tree.get("weights_source", tree.get("weights"))
    if isinstance(backbone, Mapping):
        weights = backbone.get("weights_source", backbone.get("weights", weights))
        backbone = backbone.get("name")
    if backbone is None:
        return None
    corruption = tree.get("corruption", CLEAN)
    severity = tree.get("severity")
    if isinstance(corruption, Mapping):
        severity = corruption.get("severity", severity)
        corruption = corruption.get("name", CLEAN)
    corruption = str(corruption or CLEAN)
    severity = 0 if corruption == CLEAN or severity is None else int(severity)
    if severity == 0:
        corruption = CLEAN  # severity 0 is the identity whatever the name
    weights_source = RANDOM_WEIGHTS if weights in (None, "", "null", "None") else str(weights)
    planner = tree.get("planner_weights", _dig(tree, "agent", "checkpoint"))
    if planner is None:
        planner = RANDOM_WEIGHTS if isinstance(tree.get("agent"), Mapping) else "unknown"
    seed = tree.get("seed")
    return RunMeta(backbone=str(backbone), corruption=corruption, severity=severity,
                   weights_source=weights_source, described_by=described_by, planner_weights=str(planner),
                   seed=None if seed is None else int(seed))


def read_run_meta(csv_path: Path, root: Path) -> RunMeta | None:
    """The description of the run that wrote ``csv_path``, searched from its folder up to ``root``."""
    folder = csv_path.parent
    root = root.resolve()
    while True:
        for name in (f"{csv_path.stem}.json", *SIDECAR_NAMES):
            path = folder / name
            if path.is_file():
                try:
                    meta = _meta_from_mapping(json.loads(path.read_text()), str(path))
                except (json.JSONDecodeError, TypeError, ValueError) as err:
                    raise ValueError(f"{path}: unreadable run sidecar ({err}); fix or delete it") from err
                if meta is not None:
                    return meta
        hydra_cfg = folder / ".hydra" / "config.yaml"
        if hydra_cfg.is_file():
            from omegaconf import OmegaConf

            tree = OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False)
            meta = _meta_from_mapping(tree, str(hydra_cfg))
            if meta is not None:
                return meta
        if folder.resolve() == root or folder.parent == folder:
            break
        folder = folder.parent
    match = RUN_FOLDER.match(csv_path.parent.name)
    if match:
        return _meta_from_mapping({"backbone": csv_path.parent.parent.name, "corruption": match["corruption"],
                                   "severity": int(match["severity"]), "weights_source": UNKNOWN_WEIGHTS},
                                  f"folder name {csv_path.parent}")
    return None


def read_score_csv(path: Path) -> tuple[str, dict[str, float], int, int]:
    """A devkit score CSV -> (metric "PDMS" | "EPDMS", {score and sub-score: value}, scenes, valid scenes).

    The values are the devkit's aggregate row when present, else the mean over valid scenes (NaN skipped).
    """
    frame = pd.read_csv(path)
    if "token" not in frame.columns or "score" not in frame.columns:
        raise ValueError(f"{path}: not a NAVSIM score CSV (needs 'token' and 'score' columns)")
    if "comfort" in frame.columns:
        metric, columns = "PDMS", V1_COLUMNS
    elif "history_comfort" in frame.columns or "lane_keeping" in frame.columns:
        metric, columns = "EPDMS", V2_COLUMNS
    else:
        raise ValueError(f"{path}: neither PDMS v1 ('comfort') nor EPDMS v2 ('history_comfort') columns")
    columns = [c for c in (*columns, "score") if c in frame.columns]
    is_aggregate = frame["token"].astype(str).str.startswith("average")
    scenes = frame[~is_aggregate]
    valid = scenes["valid"].astype(str).str.lower().isin(["true", "1"]) if "valid" in scenes else \
        pd.Series(True, index=scenes.index)
    aggregate = frame[frame["token"].astype(str).isin(AGGREGATE_TOKENS)]
    if len(aggregate):
        row = aggregate.iloc[-1]
        values = {c: float(row[c]) for c in columns}
    else:
        values = {c: float(np.nanmean(scenes.loc[valid, c].astype(float))) if valid.any() else math.nan
                  for c in columns}
    return metric, values, int(len(scenes)), int(valid.sum())


# ---- collecting a sweep ----------------------------------------------------------------------------------
def collect(folders: Sequence[Path], *, exclude: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """All runs below ``folders`` -> (table, skipped). One row per run, newest CSV wins on duplicates.

    Table columns: backbone, weights_source, corruption, severity, metric, scenes, valid, score, sub-scores...,
    csv, described_by. ``skipped`` lists 'path: reason' for every CSV that is not part of the table.
    """
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    exclude = exclude.resolve() if exclude is not None else None
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"sweep folder {folder} does not exist: pass the multirun output folder")
        for csv_path in sorted(folder.rglob("*.csv")):
            if exclude is not None and exclude in csv_path.resolve().parents:
                continue
            try:
                metric, values, scenes, valid = read_score_csv(csv_path)
                meta = read_run_meta(csv_path, folder)
            except (ValueError, KeyError, OSError, pd.errors.ParserError) as err:
                skipped.append(f"{csv_path}: {err}")
                continue
            if meta is None:
                skipped.append(f"{csv_path}: no run sidecar JSON, .hydra/config.yaml or "
                           "<backbone>/<corruption>_s<severity> folder")
                continue
            rows.append({"backbone": meta.backbone, "weights_source": meta.weights_source,
                         "planner_weights": meta.planner_weights, "seed": meta.seed,
                         "random_weights": meta.random_weights,
                         "corruption": meta.corruption, "severity": meta.severity, "metric": metric,
                         "scenes": scenes, "valid": valid, **values, "csv": str(csv_path),
                         "described_by": meta.described_by, "_mtime": csv_path.stat().st_mtime})
    if not rows:
        return pd.DataFrame(columns=["backbone", "weights_source", "corruption", "severity", "metric", "score"]), \
            skipped
    table = pd.DataFrame(rows)
    # one metric per report: keep the most common one, list the others as skipped
    metric = table["metric"].value_counts().idxmax()
    for _, row in table[table["metric"] != metric].iterrows():
        skipped.append(f"{row['csv']}: {row['metric']} run in a {metric} report")
    table = table[table["metric"] == metric]
    # the same backbone name with different weights (e.g. two students) are different backbones
    sources = table.groupby("backbone")["weights_source"].nunique()
    ambiguous = table["backbone"].map(sources) > 1
    table.loc[ambiguous, "backbone"] = table.loc[ambiguous].apply(
        lambda r: f"{r['backbone']}@{Path(r['weights_source']).stem}", axis=1)
    key = ["backbone", "corruption", "severity"]
    table = table.sort_values("_mtime")
    for _, row in table[table.duplicated(key, keep="last")].iterrows():
        skipped.append(f"{row['csv']}: a newer CSV scores the same backbone / corruption / severity")
    table = table.drop_duplicates(key, keep="last").drop(columns="_mtime")
    table = table.dropna(axis=1, how="all")
    order = {CLEAN: ""}  # clean rows first
    table = table.sort_values(["backbone", "corruption", "severity"],
                              key=lambda s: s.map(lambda v: order.get(v, v)) if s.name == "corruption" else s)
    return table.reset_index(drop=True), skipped


def check_same_random_model(table: pd.DataFrame) -> None:
    """Refuse (RunFailed) a backbone whose runs have random weights drawn from different (or unrecorded) seeds:
    its clean and corrupted scores come from different models, so retained score and CE would measure the
    weights, not the corruption."""
    for backbone, runs in table.groupby("backbone"):
        if len(runs) < 2 or not runs["random_weights"].any():
            continue
        seeds = runs["seed"].tolist()
        if any(s is None or (isinstance(s, float) and math.isnan(s)) for s in seeds) or len(set(seeds)) > 1:
            listed = ", ".join(f"{Path(c).parent.name}: seed {s if s == s and s is not None else 'unrecorded'}"
                               for c, s in zip(runs["csv"], seeds, strict=True))
            raise RunFailed(f"backbone {backbone} has random weights and its runs were not all built from one "
                            f"recorded seed ({listed}); retained score and CE would compare different random "
                            f"models. Rerun the sweep with one seed= (run_pdm_score records it), or give the "
                            f"backbone and agent.checkpoint real weights")


# ---- summary figures -------------------------------------------------------------------------------------
def _scores(table: pd.DataFrame) -> pd.Series:
    return table.set_index(["backbone", "corruption", "severity"])["score"].sort_index()


def corruption_errors(table: pd.DataFrame, baseline: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(CE, relative CE): DataFrames backbone x corruption, relative to ``baseline`` (NaN where undefined)."""
    scores = _scores(table)
    backbones = sorted(table["backbone"].unique())
    corrupted = sorted(set(table["corruption"]) - {CLEAN})
    ce = pd.DataFrame(np.nan, index=backbones, columns=corrupted)
    rce = ce.copy()

    def clean_of(b: str) -> float:
        return float(scores.get((b, CLEAN, 0), math.nan))

    for c in corrupted:
        if (baseline, c) not in {(b, cc) for b, cc, _ in scores.index}:
            continue
        base = scores.loc[baseline, c]
        for b in backbones:
            if (b, c) not in {(bb, cc) for bb, cc, _ in scores.index}:
                continue
            mine = scores.loc[b, c]
            common = mine.index.intersection(base.index)
            if len(common) == 0:
                continue
            den = float((1.0 - base[common]).sum())
            ce.loc[b, c] = float((1.0 - mine[common]).sum()) / den if den > 0 else math.nan
            rden = float((clean_of(baseline) - base[common]).sum())
            rnum = float((clean_of(b) - mine[common]).sum())
            rce.loc[b, c] = rnum / rden if rden > 0 and not math.isnan(rnum) else math.nan
    return ce, rce


def summarise(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per backbone: weights, clean score, mean corrupted score, retained, worst corruption, mCE, relative mCE."""
    ce, rce = corruption_errors(table, baseline)
    rows = []
    for backbone, runs in table.groupby("backbone"):
        clean = runs.loc[runs["corruption"] == CLEAN, "score"]
        clean_score = float(clean.iloc[0]) if len(clean) else math.nan
        corrupted = runs[runs["corruption"] != CLEAN]
        per_c = corrupted.groupby("corruption")["score"].mean()
        mean_corrupted = float(corrupted["score"].mean()) if len(corrupted) else math.nan
        worst = per_c.idxmin() if len(per_c) else None
        rows.append({
            "backbone": backbone,
            "weights_source": ", ".join(sorted(runs["weights_source"].unique())),
            "planner_weights": ", ".join(sorted(runs["planner_weights"].unique())),
            "clean": clean_score,
            "mean_corrupted": mean_corrupted,
            "retained": mean_corrupted / clean_score if clean_score > 0 else math.nan,
            "worst_corruption": worst,
            "worst_score": float(per_c.min()) if len(per_c) else math.nan,
            "worst_retained": float(per_c.min()) / clean_score if len(per_c) and clean_score > 0 else math.nan,
            "mCE": float(ce.loc[backbone].mean()) if backbone in ce.index and ce.loc[backbone].notna().any()
            else math.nan,
            "relative_mCE": float(rce.loc[backbone].mean())
            if backbone in rce.index and rce.loc[backbone].notna().any() else math.nan,
            **{f"CE_{c}": ce.loc[backbone, c] if backbone in ce.index else math.nan for c in ce.columns},
        })
    return pd.DataFrame(rows)


def retained_matrix(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Backbone x corruption: mean over severities of score / clean score (or the mean score without clean)."""
    corrupted = table[table["corruption"] != CLEAN]
    mean = corrupted.pivot_table(index="backbone", columns="corruption", values="score", aggfunc="mean")
    clean = table[table["corruption"] == CLEAN].set_index("backbone")["score"]
    if clean.reindex(mean.index).notna().all() and (clean > 0).all():
        return mean.div(clean.reindex(mean.index), axis=0), "score retained (corrupted / clean)"
    return mean, "mean score"


# ---- plots and report ------------------------------------------------------------------------------------
def plot_score_vs_severity(table: pd.DataFrame, path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corruptions = sorted(set(table["corruption"]) - {CLEAN})
    if not corruptions:
        return
    cols = min(4, len(corruptions))
    rows = math.ceil(len(corruptions) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False, sharey=True)
    backbones = sorted(table["backbone"].unique())
    for ax, c in zip(axes.flat, corruptions, strict=False):
        for b in backbones:
            runs = table[(table["backbone"] == b) & (table["corruption"].isin([c, CLEAN]))].sort_values("severity")
            if (runs["corruption"] == c).any():
                ax.plot(runs["severity"], runs["score"], marker="o", label=b)
        ax.set_title(c)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_xticks(range(6))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(corruptions):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_heatmap(matrix: pd.DataFrame, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if matrix.empty:
        return
    fig, ax = plt.subplots(figsize=(3.5 + 0.8 * matrix.shape[1], 1.8 + 0.5 * matrix.shape[0]))
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < np.nanmean(matrix) else "k",
                    fontsize=8)
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_report(table: pd.DataFrame, summary: pd.DataFrame, matrix: pd.DataFrame, matrix_label: str,
                 skipped: Sequence[str], out: Path, baseline: str) -> Path:
    metric = table["metric"].iloc[0]
    weights = summary[["backbone", "weights_source", "planner_weights"]].copy()
    weights["note"] = [("RANDOM WEIGHTS: scores say nothing about this backbone" if RANDOM_WEIGHTS in w else
                        "random planner: scores say nothing about this backbone" if RANDOM_WEIGHTS in p else "")
                       for w, p in zip(weights["weights_source"], weights["planner_weights"], strict=True)]
    shown = [c for c in table.columns if c not in ("csv", "described_by", "metric")]
    lines = [
        f"# Robustness report ({metric})", "",
        f"{len(table)} runs, {table['backbone'].nunique()} backbones, "
        f"{table.loc[table['corruption'] != CLEAN, 'corruption'].nunique()} corruptions. "
        f"Baseline backbone for CE: `{baseline}`.", "",
        "## Weights per backbone", "", _markdown(weights), "",
        "## Summary", "",
        "retained = mean corrupted score / clean score; worst = corruption with the lowest mean score over "
        "severities; CE_c = sum_s (1 - S_b,c,s) / sum_s (1 - S_base,c,s), mCE = mean over corruptions; "
        "relative mCE uses (S_clean - S_c,s) instead of (1 - S_c,s).", "",
        _markdown(summary), "",
        f"## {matrix_label} per backbone x corruption (mean over severities)", "",
        _markdown(matrix.reset_index()), "",
        "![score vs severity](score_vs_severity.png)", "", "![heat map](heatmap.png)", "",
        "## All runs", "", _markdown(table[shown]), "",
    ]
    if skipped:
        lines += ["## Skipped files", ""] + [f"- {s}" for s in skipped] + [""]
    path = out / "robustness_report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def build_report(folders: Sequence[Path], *, out: Path | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Collect, summarise, plot and write. Returns {"table", "summary", "ce", "skipped", "out"}."""
    folders = [Path(f) for f in folders]
    out = Path(out) if out is not None else folders[0] / REPORT_DIR
    table, skipped = collect(folders, exclude=out)
    if table.empty:
        raise FileNotFoundError(f"no scored runs found under {', '.join(map(str, folders))}"
                                + (f"; skipped: {skipped[:3]}" if skipped else ""))
    backbones = sorted(table["backbone"].unique())
    if baseline is None:
        baseline = "dinov3-h" if "dinov3-h" in backbones else backbones[0]  # RAP's own backbone if swept
    if baseline not in backbones:
        raise KeyError(f"baseline backbone {baseline!r} is not in the sweep; choose one of {backbones}")
    check_same_random_model(table)
    summary = summarise(table, baseline)
    ce, _ = corruption_errors(table, baseline)
    matrix, label = retained_matrix(table)
    out.mkdir(parents=True, exist_ok=True)
    for frame, name in ((table, "robustness_table.csv"), (summary, "robustness_summary.csv")):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    metric = table["metric"].iloc[0]
    plot_score_vs_severity(table, out / "score_vs_severity.png", metric)
    plot_heatmap(matrix, out / "heatmap.png", label)
    write_report(table, summary, matrix, label, skipped, out, baseline)
    for line in skipped:
        log.warning("skipped %s", line)
    return {"table": table, "summary": summary, "ce": ce, "skipped": skipped, "out": out}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Collect a run_pdm_score corruption sweep into a robustness report.")
    parser.add_argument("folders", nargs="+", type=Path, help="multirun / output folders holding the score CSVs")
    parser.add_argument("--out", type=Path, default=None, help=f"report folder (default <first>/{REPORT_DIR})")
    parser.add_argument("--baseline", default=None, help="backbone the CE is relative to (default dinov3-h or first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    with exit_on_run_errors():
        result = build_report(args.folders, out=args.out, baseline=args.baseline)
    with pd.option_context("display.width", 160, "display.max_columns", 12):
        print(result["summary"][["backbone", "weights_source", "clean", "mean_corrupted", "retained",
                                 "worst_corruption", "mCE", "relative_mCE"]].to_string(index=False))
    print(f"report: {result['out'] / 'robustness_report.md'}")


if __name__ == "__main__":
    main()
