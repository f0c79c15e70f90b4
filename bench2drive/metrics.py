"""Bench2Drive metrics: Driving Score, Success Rate, abilities, Efficiency and Smoothness.

Same inputs, numbers and quirks as the official tools (Bench2Drive v0.0.4):
``tools/merge_route_json.py``, ``tools/ability_benchmark.py``, ``tools/efficiency_smoothness_benchmark.py``.
Each quirk is named where it is reproduced; ``--corrected`` adds the values with the quirks fixed, under
``corrected``.

    python -m bench2drive.metrics --results DIR --metric-info DIR [--routes XML] --out FILE.json [--corrected]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.signal import savgol_filter

from bench2drive.abilities import ABILITIES, junction_completion_from_flags
from bench2drive.results import (
    FAILURE_MESSAGES,
    ResultsFileError,
    check_record,
    load_results,
    non_numeric_fields,
)
from bench2drive.routes import OFFICIAL_ROUTE_COUNT, Route, read_routes
from bench2drive.sim.scenarios import synthetic_junction_completion
from eupe.atomic_io import atomic_write_text

# efficiency_smoothness_benchmark.py nuPlan comfort bounds
MAX_ABS_MAG_JERK = 8.37  # m/s^3
MAX_ABS_LAT_ACCEL = 4.89  # m/s^2
MAX_LON_ACCEL = 2.40  # m/s^2
MIN_LON_ACCEL = -4.05  # m/s^2
MAX_ABS_YAW_ACCEL = 1.93  # rad/s^2
MAX_ABS_LON_JERK = 4.13  # m/s^3
MAX_ABS_YAW_RATE = 0.95  # rad/s
SG_WINDOW, SG_ORDER, SG_DERIV = 7, 2, 1
SMOOTH_DT = 0.1  # s; quirk: metric_info is written every 0.05 s step, yet the tool differentiates with 0.1 s
SMOOTH_CHUNK = 20  # steps per comfort segment
EFFICIENCY_MAX = 1000.0  # % values above this are dropped
PCT_RE = re.compile(r"\b\d+\.?\d*%")
METRIC_INFO_KEYS = ("acceleration", "angular_velocity", "forward_vector", "right_vector", "location", "rotation")


def _fail(msg: str) -> ResultsFileError:
    return ResultsFileError(msg)


# ----------------------------------------------------------------------------------------------- merging
def load_records(results_dir: str | Path) -> list[dict]:
    """All route records of the ``*.json`` files in ``results_dir`` (merge_route_json.py).

    Quirk kept: a file is skipped when 'merged.json' occurs anywhere in its path. Records lacking fields the
    metrics need raise ResultsFileError naming the file and route; a file that is not JSON raises too.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results directory {results_dir} does not exist")
    records = []
    for path in sorted(results_dir.glob("*.json")):
        if "merged.json" in str(path):
            continue
        data = load_results(path)
        try:
            recs = data["_checkpoint"]["records"]
        except (KeyError, TypeError):
            raise _fail(f"{path}: no '_checkpoint.records' (not a leaderboard results file?)") from None
        for rd in recs:
            missing = check_record(rd)
            if missing:
                raise _fail(f"{path}: record {rd.get('route_id', '?')} lacks {missing}; the run crashed before "
                            f"the leaderboard finished this record: resume that part to fill it")
            bad = non_numeric_fields(rd)
            if bad:
                raise _fail(f"{path}: record {rd.get('route_id', '?')} has non-numeric {bad}; the leaderboard "
                            f"writes numbers there: rerun that route (resume skips finished ones) or fix the file")
            rd = dict(rd)
            rd.pop("index", None)
            records.append(rd)
    if not records:
        raise _fail(f"{results_dir}: no route records in any *.json file")
    return records


def is_success(record: dict) -> bool:
    """Completed/Perfect and no infraction other than min_speed (merge_route_json.py, ability_benchmark.py)."""
    if record["status"] not in ("Completed", "Perfect"):
        return False
    return not any(len(v) > 0 for k, v in record["infractions"].items() if k != "min_speed_infractions")


def route_number(record: dict) -> str:
    """'RouteScenario_1711_rep0' -> '1711' (ability_benchmark.py get_route_result)."""
    return record["route_id"].split("_")[1]


def merge(records: Sequence[dict], *, denominator: int = OFFICIAL_ROUTE_COUNT) -> dict:
    """merged.json content: records sorted by route_id string descending (quirk: string, not numeric, order).

    Quirk: Driving Score and Success Rate divide by 220 whatever the number of routes (missing routes count 0).
    """
    ds = sum(r["scores"]["score_composed"] for r in records)
    sr = sum(is_success(r) for r in records)
    return {"_checkpoint": {"records": sorted(records, key=lambda d: d["route_id"], reverse=True)},
            "driving score": ds / denominator, "success rate": sr / denominator, "eval num": len(records)}


# ----------------------------------------------------------------------------------------------- abilities
def scenario_type_of(record: dict, routes_by_id: dict[str, Route] | None) -> str:
    if routes_by_id is not None and route_number(record) in routes_by_id:
        return routes_by_id[route_number(record)].scenario_type
    return re.sub(r"_\d+$", "", record.get("scenario_name", ""))  # 'ParkingCutIn_1' -> 'ParkingCutIn'


def abilities(records: Sequence[dict], routes: Sequence[Route] | None = None, *,
              junction_completion: Callable[[Route], float] | None = None) -> dict:
    """Per-ability success ratio and their mean (ability_benchmark.py).

    Routes of the file without a record are listed under ``crashed`` and left out of the ratios, as the tool
    does. ``junction_completion(route)`` gives (first junction index + 1 + 8) / len(1 m route) for the
    Traffic_Signs partial credit; None skips that credit (``traffic_signs_partial_credit`` says so).
    """
    by_number = {route_number(r): r for r in records}
    stat = {k: [0, 0] for k in ABILITIES}
    crashed: list[tuple[str, str]] = []
    partial = "applied" if junction_completion is not None else "skipped: no junction information"
    items: list[tuple[str, dict, Route | None]] = []
    if routes is None:
        items = [(scenario_type_of(r, None), r, None) for r in records]
    else:
        for route in sorted(routes, key=lambda r: r.town):
            rec = by_number.get(str(route.id))
            if rec is None:
                crashed.append((route.scenario_type, str(route.id)))
                continue
            items.append((route.scenario_type, rec, route))
    for stype, rec, route in items:
        ok = is_success(rec)
        for ability, names in ABILITIES.items():
            if stype in names:
                stat[ability][1] += 1
                stat[ability][0] += int(ok)
        # v0.0.4 partial credit; quirk kept: any failure but a stop / red-light one (e.g. a collision after the
        # junction) earns it once the route got 8 waypoints past the first junction waypoint
        if stype in ABILITIES["Traffic_Signs"] and not ok and junction_completion is not None and route is not None:
            if (rec["scores"]["score_route"] / 100.0 > junction_completion(route)
                    and not rec["infractions"]["stop_infraction"] and not rec["infractions"]["red_light"]):
                stat["Traffic_Signs"][0] += 1
    # the tool divides by zero for an ability without routes; report NaN there and keep it out of the mean
    res = {k: (s / n if n else float("nan")) for k, (s, n) in stat.items()}
    vals = [v for v in res.values() if not math.isnan(v)]
    res["mean"] = sum(vals) / len(vals) if vals else float("nan")
    return {**res, "counts": stat, "crashed": crashed, "traffic_signs_partial_credit": partial}


def carla_junction_completion(carla_root: str | Path) -> Callable[[Route], float]:
    """Junction completion from the town's OpenDRIVE map with CARLA's GlobalRoutePlanner at 1 m (official)."""
    import carla  # the optional `carla` extra

    root = Path(carla_root)
    sys.path.insert(0, str(root / "PythonAPI" / "carla"))
    from agents.navigation.global_route_planner import GlobalRoutePlanner  # type: ignore

    cache: dict[str, object] = {}

    def fn(route: Route) -> float:
        if route.town not in cache:
            maps = root / "CarlaUE4" / "Content" / "Carla" / "Maps"
            cands = [maps / "OpenDrive" / f"{route.town}.xodr", maps / route.town / "OpenDrive" / f"{route.town}.xodr"]
            xodr = next((p for p in cands if p.is_file()), None)
            if xodr is None:
                raise FileNotFoundError(f"OpenDrive file not found for {route.town} under {maps}")
            cache[route.town] = GlobalRoutePlanner(carla.Map(route.town, xodr.read_text()), 1.0)
        grp = cache[route.town]
        locs = [carla.Location(*map(float, p)) for p in route.waypoints]
        flags = [wp.is_junction for a, b in zip(locs[:-1], locs[1:], strict=False) for wp, _ in grp.trace_route(a, b)]
        return junction_completion_from_flags(np.array(flags))

    return fn


# ----------------------------------------------------------------------------------------------- efficiency
def route_efficiency(record: dict) -> float | None:
    """Mean of the 'X%' values in min_speed_infractions (values > 1000 dropped); None when the route has none."""
    msgs = record["infractions"]["min_speed_infractions"]
    if len(msgs) < 1:
        return None
    vals = []
    for msg in msgs:
        m = PCT_RE.search(msg)
        if m is None:
            raise _fail(f"route {record['route_id']}: min-speed message without a percentage: {msg!r}")
        v = float(m.group().rstrip("%"))
        if v > EFFICIENCY_MAX:
            continue
        vals.append(v)
    if not vals:
        # quirk: the tool divides by zero here (all values above 1000); we leave the route out
        return None
    return sum(vals) / len(vals)


def efficiency(records: Sequence[dict]) -> float:
    vals = [e for e in (route_efficiency(r) for r in records) if e is not None]
    return sum(vals) / len(vals) if vals else float("nan")


# ----------------------------------------------------------------------------------------------- smoothness
def _unwrap(headings: np.ndarray) -> np.ndarray:
    adj = np.zeros_like(headings)
    adj[1:] = np.cumsum(np.round(np.diff(headings) / (2 * np.pi)))
    return headings - 2 * np.pi * adj


def _within(x: np.ndarray, lo: float, hi: float) -> bool:
    return bool(np.all((x > lo) & (x < hi)))


def comfortable(info: dict[str, np.ndarray], *, corrected: bool = False) -> bool:
    """compute_comfort_metric of efficiency_smoothness_benchmark.py on one segment.

    Quirks (fixed when ``corrected``): the yaw-acceleration check uses the *smoothed yaw rate*, not its
    derivative; CARLA's angular velocity is deg/s yet compared with rad/s bounds; dt is 0.1 s for 20 Hz data.
    """
    acc = np.asarray(info["acceleration"], dtype=np.float64)
    n = len(acc)
    w = min(SG_WINDOW, n)
    if not SG_ORDER < w:
        raise ValueError(f"{SG_ORDER} < {w} does not hold!")
    acc2 = acc[:, :2]
    fwd = np.asarray(info["forward_vector"], dtype=np.float64)[:, :2]
    right = np.asarray(info["right_vector"], dtype=np.float64)[:, :2]
    yaw_rate = _unwrap(np.asarray(info["angular_velocity"], dtype=np.float64)[:, 2])
    dt = SMOOTH_DT
    if corrected:
        yaw_rate = np.radians(yaw_rate)
        dt = 0.05
    lon = np.einsum("ij,ij->i", acc2, fwd)
    lat = np.einsum("ij,ij->i", acc2, right)
    mag = np.hypot(acc2[:, 0], acc2[:, 1])

    def sg(x, deriv=0):
        return savgol_filter(x, window_length=w, polyorder=SG_ORDER, deriv=deriv, delta=dt, axis=-1)

    yaw_acc = sg(yaw_rate, SG_DERIV) if corrected else sg(yaw_rate)
    yaw_rate_s, lon_s, lat_s, mag_s = sg(yaw_rate), sg(lon), sg(lat), sg(mag)
    mag_jerk, lon_jerk = sg(mag_s, SG_DERIV), sg(lon_s, SG_DERIV)
    return (_within(lon_s, MIN_LON_ACCEL, MAX_LON_ACCEL) and _within(lat_s, -MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL)
            and _within(mag_jerk, -MAX_ABS_MAG_JERK, MAX_ABS_MAG_JERK)
            and _within(lon_jerk, -MAX_ABS_LON_JERK, MAX_ABS_LON_JERK)
            and _within(yaw_acc, -MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL)
            and _within(yaw_rate_s, -MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE))


def route_smoothness(info: dict[str, np.ndarray], *, corrected: bool = False) -> float:
    """Fraction of full 20-step chunks that are comfortable; a route of <= 20 steps scores 0 or 1 whole.

    Quirk kept: the last, shorter chunk of a longer route is ignored.
    """
    n = len(info["angular_velocity"])
    if n <= SMOOTH_CHUNK:
        return 1.0 if comfortable(info, corrected=corrected) else 0.0
    res = [comfortable({k: np.asarray(v)[i:i + SMOOTH_CHUNK] for k, v in info.items()}, corrected=corrected)
           for i in range(0, n - SMOOTH_CHUNK + 1, SMOOTH_CHUNK)]
    return res.count(True) / len(res)


def load_metric_info(path: str | Path) -> dict[str, np.ndarray]:
    """metric_info.json ({step: {acceleration, angular_velocity, ...}}) -> arrays in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise _fail(f"{path}: not valid JSON ({exc})") from exc
    out: dict[str, list] = {k: [] for k in METRIC_INFO_KEYS}
    for step, v in data.items():
        for k in METRIC_INFO_KEYS:
            if k not in v:
                raise _fail(f"{path}: step {step} lacks '{k}'")
            out[k].append(v[k])
    if not out["acceleration"]:
        raise _fail(f"{path}: holds no steps")
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def smoothness(records: Sequence[dict], metric_dir: str | Path, *, corrected: bool = False
               ) -> tuple[float, list[str]]:
    """Mean route smoothness; returns (value, save_names whose metric_info.json is missing and were skipped)."""
    vals, missing = [], []
    for r in records:
        path = Path(metric_dir) / r["save_name"] / "metric_info.json"
        if not path.is_file():
            missing.append(r["save_name"])  # the official tool raises here; we skip and report it
            continue
        vals.append(route_smoothness(load_metric_info(path), corrected=corrected))
    return (sum(vals) / len(vals) if vals else float("nan")), missing


# ----------------------------------------------------------------------------------------------- driver
def route_tally(records: Sequence[dict], routes: Sequence[Route] | None) -> dict:
    """How many routes the set has, how many have a record, how many of those did not run to the end (the
    evaluator's crash statuses: simulation, agent set-up, agent run time) and how many have no record."""
    crash_messages = [message for _, message in FAILURE_MESSAGES.values()]
    crashed = sum(any(m in r["status"] for m in crash_messages) for r in records)
    total = len(routes) if routes is not None else len(records)
    recorded = {route_number(r) for r in records}
    missing = sum(str(r.id) not in recorded for r in routes) if routes is not None else 0
    return {"routes": total, "recorded": len(records), "crashed": crashed, "missing": missing}


def evaluate(results_dir: str | Path, metric_dir: str | Path, routes_file: str | Path | None = None, *,
             corrected: bool = False, junction_completion: Callable[[Route], float] | None = None) -> dict:
    """All metrics of a run directory as one dict (see module docstring)."""
    records = load_records(results_dir)
    routes = read_routes(routes_file, allow_unknown=True) if routes_file else None
    merged = merge(records)
    routes_by_id = {r.id: r for r in routes} if routes is not None else None
    warnings = []
    if len(records) != OFFICIAL_ROUTE_COUNT:
        warnings.append(f"there are {len(records)} routes in your json, which does not equal to "
                        f"{OFFICIAL_ROUTE_COUNT}: Driving Score and Success Rate divide by {OFFICIAL_ROUTE_COUNT}")
    ab = abilities(records, routes, junction_completion=junction_completion)
    smooth, missing = smoothness(records, metric_dir)
    if missing:
        where = "folder not found" if not Path(metric_dir).is_dir() else "metric_info.json missing"
        warnings.append(f"metric info {metric_dir}: {where} for {len(missing)} of {len(records)} routes "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): Smoothness "
                        f"{'is left out' if len(missing) == len(records) else 'is the mean of the other routes'}; "
                        "Driving Score, Success Rate, Efficiency and the abilities do not need it")
    crashed = [{"route_id": rid, "scenario_type": st, "status": "Failed - Simulation crashed"}
               for st, rid in ab["crashed"]]
    out = {
        "driving_score": merged["driving score"],
        "success_rate": merged["success rate"],
        "abilities": {k: ab[k] for k in list(ABILITIES) + ["mean"]},
        "efficiency": efficiency(records),
        "smoothness": smooth,
        "eval_num": len(records),
        "denominator": OFFICIAL_ROUTE_COUNT,
        "ability_counts": ab["counts"],
        "traffic_signs_partial_credit": ab["traffic_signs_partial_credit"],
        "crashed_routes": crashed,
        "route_tally": route_tally(records, routes),
        "metric_info_missing": missing,
        "warnings": warnings,
        "per_route": [{"route_id": r["route_id"], "scenario_type": scenario_type_of(r, routes_by_id),
                       "town": r.get("town_name", ""), "status": r["status"],
                       "score_composed": r["scores"]["score_composed"],
                       "score_route": r["scores"]["score_route"], "score_penalty": r["scores"]["score_penalty"],
                       "success": is_success(r)} for r in merged["_checkpoint"]["records"]],
    }
    if corrected:
        n = len(routes) if routes is not None else len(records)
        c_smooth, _ = smoothness(records, metric_dir, corrected=True)
        out["corrected"] = {
            "note": "quirks fixed: denominator = routes in the set (crashed routes count 0); smoothness with "
                    "angular velocity in rad/s, yaw acceleration as the derivative of the yaw rate, dt = 0.05 s",
            "denominator": n,
            "driving_score": sum(r["scores"]["score_composed"] for r in records) / n,
            "success_rate": sum(is_success(r) for r in records) / n,
            "smoothness": c_smooth,
        }
    return out


def json_safe(obj):
    """NaN (an ability without routes, no min-speed data) -> None, so the output is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _f(v: float | None, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_report(m: dict) -> str:
    lines = ["Bench2Drive closed-loop metrics" + (f" ({m['conditions']})" if m.get("conditions") else ""),
             f"  routes evaluated : {m['eval_num']} (denominator {m['denominator']})",
             f"  Driving Score    : {m['driving_score']:.4f}",
             f"  Success Rate     : {100 * m['success_rate']:.2f} %",
             f"  Efficiency       : {_f(m['efficiency'], '.2f')}",
             f"  Smoothness       : {_f(m['smoothness'], '.4f')}",
             "  Abilities (success ratio, n/a = no route of that ability):"]
    lines += [f"    {k:16s}: {_f(v, '.4f')}" for k, v in m["abilities"].items()]
    lines.append(f"  Traffic_Signs partial credit: {m['traffic_signs_partial_credit']}")
    t = m["route_tally"]
    lines.append(f"  route tally      : {t['recorded']} of {t['routes']} recorded, {t['crashed']} of them crashed "
                 f"(rerun with resume), {t['missing']} missing")
    if m["crashed_routes"]:
        lines.append(f"  crashed (no record): {[c['route_id'] for c in m['crashed_routes']]}")
    if "corrected" in m:
        c = m["corrected"]
        lines.append(f"  corrected: DS {c['driving_score']:.4f}, SR {100 * c['success_rate']:.2f} %, "
                     f"smoothness {_f(c['smoothness'], '.4f')} (denominator {c['denominator']})")
    lines += [f"  warning: {w}" for w in m["warnings"]]
    return "\n".join(lines)


def plot_per_route(m: dict, path: str | Path, *, title: str | None = None) -> Path | None:
    """Bar plot of each route's driving score (score_composed), labelled by scenario type and town, green for a
    success and red otherwise. Writes nothing and returns None when there is no route to show."""
    rows = sorted(m["per_route"], key=lambda r: (r.get("scenario_type", ""), r["route_id"]))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(rows) + 2.0), 4.2))
    ax.bar(range(len(rows)), [r["score_composed"] for r in rows],
           color=["tab:green" if r["success"] else "tab:red" for r in rows])
    labels = [f"{r.get('scenario_type') or route_number(r)} ({r.get('town') or '?'}, {route_number(r)})"
              for r in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("route driving score (RC x penalty)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{title + ': ' if title else ''}DS {m['driving_score']:.2f} over {m['eval_num']} routes "
                 f"(denominator {m['denominator']}), SR {100 * m['success_rate']:.1f} %", fontsize=9)
    ax.legend(handles=[Patch(color="tab:green", label="success"),
                       Patch(color="tab:red", label="failed or infraction")], loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="folder of leaderboard results JSON files (one per part)")
    p.add_argument("--metric-info", required=True, help="SAVE_PATH folder with <save_name>/metric_info.json")
    p.add_argument("--routes", default=None, help="route XML (for abilities; bench2drive220.xml)")
    p.add_argument("--out", required=True, help="output JSON; a .txt report and a .png plot go next to it")
    p.add_argument("--corrected", action="store_true", help="also report the values with the quirks fixed")
    p.add_argument("--carla-root", default=None, help="CARLA_ROOT for the Traffic_Signs partial credit")
    a = p.parse_args(argv)
    jc = None
    routes = read_routes(a.routes, allow_unknown=True) if a.routes else None
    if routes and all(r.town.startswith("Synthetic") for r in routes):
        jc = synthetic_junction_completion
    elif a.carla_root:
        jc = carla_junction_completion(a.carla_root)
    m = evaluate(a.results, a.metric_info, a.routes, corrected=a.corrected, junction_completion=jc)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(json_safe(m), indent=2))
    report = format_report(m)
    atomic_write_text(out.with_suffix(".txt"), report + "\n")
    plot_per_route(m, out.with_suffix(".png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
