"""A study preset's report as a results file, in one command: first the latency rows of the planner the study
drives (benchmarks/closed_loop.py --profile-only, on this machine, into bench2drive/latency_profiles.csv), then
the study (its missing cells run; with --report-only only its report is written again from the cells on disk),
then benchmarks/results/study_<name>.md: the study's report.md under a header naming the machine, the date, the
load and the command.

    python benchmarks/study_results.py --study mini --exp-root /work/exp-study2 --report-only   # latency rows + report
    python benchmarks/study_results.py --study mini                       # the whole study (about an hour on 2 cores)
    python benchmarks/study_results.py --study mini --no-latency          # leave latency_profiles.csv as it is

The latency rows are wall-clock medians: take them on an otherwise idle machine (the row records the load).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

from eupe.atomic_io import atomic_write_text  # noqa: E402
from study.cells import compose_entry  # noqa: E402

PLOTS_HEADING = "## Plots"


def study_config(name: str, exp_root: str | None, report_only: bool):
    overrides = [f"study={name}", f"report_only={str(report_only).lower()}", "progress=false"]
    return compose_entry("run_study", overrides + ([f"exp_root={exp_root}"] if exp_root else []))


def measure_latency(cfg, threads: int) -> list[str]:
    """Profile rows for each (planner, image) the study drives; returns what was run or skipped."""
    from study.report import driven_planners
    from study.run_study import prepare

    groups: dict[tuple[str, str], list[str]] = {}
    for backbone, planner_image in driven_planners(prepare(cfg)).items():
        groups.setdefault(planner_image, []).append(backbone)
    done = []
    for (planner, image), backbones in groups.items():
        if planner == "custom":
            done.append(f"skipped {', '.join(backbones)}: the study's planner is no configs/planner/<name>.yaml")
            continue
        size = "x".join(image.split("x")[1:])
        command = [sys.executable, str(Path(__file__).with_name("closed_loop.py")), "--backbones", "--profile-only",
                   *backbones, "--planner-config", planner, "--size", size, "--threads", str(threads), "--profile",
                   str(cfg.study.latency_profile)]
        subprocess.run(command, check=True)
        done.append(" ".join(["python", "benchmarks/closed_loop.py", *command[2:]]))
    return done


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--study", default="mini", help="configs/study/<name>.yaml")
    p.add_argument("--exp-root", default=None, help="the study folder's parent (run_study.yaml exp_root)")
    p.add_argument("--report-only", action="store_true", help="run no cell, write the report from those on disk")
    p.add_argument("--no-latency", action="store_true", help="measure no latency rows")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the latency rows (the closed loop's)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/study_<study>.md")
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cfg = study_config(args.study, args.exp_root, args.report_only)
    latency = [] if args.no_latency else measure_latency(cfg, args.threads)
    from study.run_study import run_study

    result = run_study(cfg)
    report = Path(result["report"]["md"]).read_text()
    done = sum(c.finished() for c in result["cells"])
    partial = [] if done == len(result["cells"]) else [
        f"- PARTIAL: {done} of {len(result['cells'])} cells had finished when this was written; the command "
        "without --report-only runs the rest (finished cells are kept)"]
    body = report.split(f"\n{PLOTS_HEADING}")[0]  # the plots stay in the study folder (report.html embeds them)
    header = [f"# Study {args.study}: measured run", "",
              f"- written {started} on {machine()}; 1-minute load average {load_start:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end (other work on the machine inflates wall times, not CPU times)",
              f"- command: `python benchmarks/study_results.py {' '.join(sys.argv[1:])}`; study folder {cfg.study_dir} "
              "(report.html there has the plots)",
              *partial,
              *[f"- latency rows: `{c}`" if c.startswith("python") else f"- latency rows: {c}" for c in latency],
              "- weights: the Weights section names each backbone's; scores of RANDOM weights (flagged there) "
              "exercise the pipeline and say nothing about the backbones", ""]
    out = args.out or RESULTS / f"study_{args.study}.md"
    atomic_write_text(out, "\n".join(header) + body.split("\n", 1)[1] + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
