"""The leaderboard's results / checkpoint JSON: route records, scores, global statistics and resume.

Same structure, rounding and rules as leaderboard/utils/statistics_manager.py, utils/checkpoint_tools.py and
utils/route_indexer.py (Bench2Drive v0.0.4), so files written here are read by the official tools and back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from eupe.atomic_io import atomic_write_text

# statistics_manager.py PENALTY_VALUE_DICT: events that multiply the penalty by a fixed value
PENALTY_VALUE = {
    "COLLISION_PEDESTRIAN": 0.5,
    "COLLISION_VEHICLE": 0.6,
    "COLLISION_STATIC": 0.65,
    "TRAFFIC_LIGHT_INFRACTION": 0.7,
    "STOP_INFRACTION": 0.8,
    "SCENARIO_TIMEOUT": 0.7,
    "YIELD_TO_EMERGENCY_VEHICLE": 0.7,
}
# PENALTY_PERC_DICT: (per-unit value, kind); MIN_SPEED is 'unused' in v0.0.4
PENALTY_PERC = {"OUTSIDE_ROUTE_LANES_INFRACTION": (0.0, "increases"), "MIN_SPEED_INFRACTION": (0.7, "unused")}
PENALTY_NAME = {
    "COLLISION_STATIC": "collisions_layout",
    "COLLISION_PEDESTRIAN": "collisions_pedestrian",
    "COLLISION_VEHICLE": "collisions_vehicle",
    "TRAFFIC_LIGHT_INFRACTION": "red_light",
    "STOP_INFRACTION": "stop_infraction",
    "OUTSIDE_ROUTE_LANES_INFRACTION": "outside_route_lanes",
    "MIN_SPEED_INFRACTION": "min_speed_infractions",
    "YIELD_TO_EMERGENCY_VEHICLE": "yield_emergency_vehicle_infractions",
    "SCENARIO_TIMEOUT": "scenario_timeouts",
    "ROUTE_DEVIATION": "route_dev",
    "VEHICLE_BLOCKED": "vehicle_blocked",
}
INFRACTION_KEYS = tuple(PENALTY_NAME.values()) + ("route_timeout",)
ENTRY_STATUS_VALUES = ("Started", "Finished", "Rejected", "Crashed", "Invalid")
ELIGIBLE = {"Started": False, "Finished": True, "Rejected": False, "Crashed": False, "Invalid": False}
FAILURE_MESSAGES = {
    "Simulation": ("Crashed", "Simulation crashed"),
    "Sensors": ("Rejected", "Agent's sensors were invalid"),
    "Agent_init": ("Started", "Agent couldn't be set up"),
    "Agent_runtime": ("Started", "Agent crashed"),
}
ROUND_DIGITS, ROUND_DIGITS_SCORE = 3, 6
# route_indexer.py validate_and_resume: statuses that make the resume start again at that route
RERUN_STATUSES = ("Failed", "Failed - Simulation crashed", "Failed - Agent crashed")
RECORD_FIELDS = ("route_id", "status", "infractions", "scores", "meta", "save_name")


class ResultsFileError(ValueError):
    """A results / checkpoint JSON that is missing or malformed."""


@dataclass
class TrafficEvent:
    """One criterion event: ``type`` is a TrafficEventType name, ``data`` its dict (percentage, route_completed)."""

    type: str
    message: str = ""
    data: dict = field(default_factory=dict)


def new_route_record(*, route_id: str, scenario_name: str, weather_id: int | str, save_name: str,
                     town_name: str) -> dict:
    """A fresh record as StatisticsManager.create_route_data makes it (index -1 = route in progress)."""
    return {"index": -1, "route_id": route_id, "scenario_name": scenario_name, "weather_id": weather_id,
            "save_name": save_name, "status": "Started", "num_infractions": 0,
            "infractions": {k: [] for k in INFRACTION_KEYS},
            "scores": {"score_route": 0, "score_penalty": 0, "score_composed": 0},
            "meta": {"route_length": 0, "duration_game": 0, "duration_system": 0}, "town_name": town_name}


def compute_route_statistics(record: dict, *, index: int, events: Sequence[TrafficEvent], route_length: float,
                             duration_game: float = -1, duration_system: float = -1, timed_out: bool = False,
                             failure_message: str = "") -> dict:
    """Fill ``record`` in place from the route's criteria events (StatisticsManager.compute_route_statistics)."""
    record["index"] = index
    for key in PENALTY_NAME.values():
        record["infractions"][key] = []
    record["meta"]["route_length"] = round(route_length, ROUND_DIGITS)
    record["meta"]["duration_game"] = round(duration_game, ROUND_DIGITS)
    record["meta"]["duration_system"] = round(duration_system, ROUND_DIGITS)
    if timed_out:
        record["infractions"]["route_timeout"].append("Route timeout.")
        failure_message = "Agent timed out"
    penalty, score_route, target_reached = 1.0, 0.0, False
    for ev in events:
        if ev.type in PENALTY_VALUE:
            penalty *= PENALTY_VALUE[ev.type]
            record["infractions"][PENALTY_NAME[ev.type]].append(ev.message)
        elif ev.type in PENALTY_PERC:
            value, kind = PENALTY_PERC[ev.type]
            pct = ev.data["percentage"]
            if kind == "decreases":
                penalty *= 1 - (1 - value) * (1 - pct / 100)
            elif kind == "increases":
                penalty *= 1 - (1 - value) * pct / 100
            record["infractions"][PENALTY_NAME[ev.type]].append(ev.message)
        elif ev.type == "ROUTE_DEVIATION":
            failure_message = "Agent deviated from the route"
            record["infractions"]["route_dev"].append(ev.message)
        elif ev.type == "VEHICLE_BLOCKED":
            failure_message = "Agent got blocked"
            record["infractions"]["vehicle_blocked"].append(ev.message)
        elif ev.type == "ROUTE_COMPLETION":
            score_route = ev.data["route_completed"]
            target_reached = score_route >= 100
    record["scores"]["score_route"] = round(score_route, ROUND_DIGITS_SCORE)
    record["scores"]["score_penalty"] = round(penalty, ROUND_DIGITS_SCORE)
    record["scores"]["score_composed"] = round(max(score_route * penalty, 0.0), ROUND_DIGITS_SCORE)
    record["num_infractions"] = sum(len(v) for v in record["infractions"].values())
    if target_reached:
        record["status"] = "Completed" if record["num_infractions"] > 0 else "Perfect"
    else:
        record["status"] = "Failed" + (f" - {failure_message}" if failure_message else "")
    return record


def crashed_route_record(record: dict, *, index: int, kind: str = "Simulation") -> tuple[dict, str]:
    """Mark a route that did not run to the end as the evaluator does; returns (record, entry_status)."""
    entry_status, message = FAILURE_MESSAGES[kind]
    compute_route_statistics(record, index=index, events=[], route_length=record["meta"].get("route_length", 0),
                             failure_message=message)
    return record, entry_status


def empty_results() -> dict:
    return {"_checkpoint": {"global_record": {}, "progress": [], "records": []}, "entry_status": "Started",
            "eligible": False, "sensors": [], "values": [], "labels": []}


def _infraction_value(record: dict, key: str) -> float:
    if key == "outside_route_lanes":
        msgs = record["infractions"][key]
        # statistics_manager: "Very ugly": the 9th word of the message is the metres driven outside, /1000 -> km
        return float(msgs[0].split(" ")[8]) / 1000 if msgs else 0.0
    return len(record["infractions"][key])


def compute_global_statistics(results: dict, total_routes: int) -> dict:
    """Global record, values/labels and entry status (StatisticsManager.compute_global_statistics), in place."""
    records = results["_checkpoint"]["records"]
    mean = {"score_composed": 0.0, "score_route": 0.0, "score_penalty": 0.0}
    meta = {"total_length": 0.0, "duration_game": 0.0, "duration_system": 0.0, "exceptions": []}
    status = "Perfect"
    for r in records:
        for k in mean:
            mean[k] += r["scores"][k] / total_routes
        meta["total_length"] += r["meta"]["route_length"]
        meta["duration_game"] += r["meta"]["duration_game"]
        meta["duration_system"] += r["meta"]["duration_system"]
        result = "Failed" if "Failed" in r["status"] else r["status"]
        if result == "Failed":
            meta["exceptions"].append((r["route_id"], r["index"], r["status"]))
            status = result
        elif status == "Perfect" and result != "Perfect":
            status = result
    mean = {k: round(v, ROUND_DIGITS_SCORE) for k, v in mean.items()}
    std = dict.fromkeys(mean, 0.0)
    if total_routes != 1:
        for r in records:
            for k in std:
                std[k] += (r["scores"][k] - mean[k]) ** 2
        std = {k: round(math.sqrt(v / float(total_routes - 1)), ROUND_DIGITS) for k, v in std.items()}
    else:
        std = dict.fromkeys(mean, 0)
    infr = dict.fromkeys(INFRACTION_KEYS, 0.0)
    km = 0.0
    for r in records:
        km += r["meta"]["route_length"] / 1000 * r["scores"]["score_route"] / 100
        for k in infr:
            infr[k] += _infraction_value(r, k)
    km = max(km, 0.001)
    for k in infr:
        if k != "outside_route_lanes":
            infr[k] /= km
        infr[k] = round(infr[k], ROUND_DIGITS)
    results["_checkpoint"]["global_record"] = {
        "index": -1, "route_id": -1, "status": status, "infractions": infr, "scores_mean": mean,
        "scores_std_dev": std, "meta": meta}
    order = ["collisions_pedestrian", "collisions_vehicle", "collisions_layout", "red_light", "stop_infraction",
             "outside_route_lanes", "route_dev", "route_timeout", "vehicle_blocked",
             "yield_emergency_vehicle_infractions", "scenario_timeouts", "min_speed_infractions"]
    results["values"] = [str(mean["score_composed"]), str(mean["score_route"]), str(mean["score_penalty"])] + [
        str(infr[k]) for k in order]
    results["labels"] = ["Avg. driving score", "Avg. route completion", "Avg. infraction penalty",
                         "Collisions with pedestrians", "Collisions with vehicles", "Collisions with layout",
                         "Red lights infractions", "Stop sign infractions", "Off-road infractions",
                         "Route deviations", "Route timeouts", "Agent blocked",
                         "Yield emergency vehicles infractions", "Scenario timeouts", "Min speed infractions"]
    entry = "Finished"
    for r in records:
        if "Simulation crashed" in r["status"]:
            entry = "Crashed"
        elif "Agent's sensors were invalid" in r["status"]:
            entry = "Rejected"
    set_entry_status(results, entry)
    return results


def set_entry_status(results: dict, entry_status: str) -> None:
    if entry_status not in ENTRY_STATUS_VALUES:
        raise ValueError(f"invalid entry_status '{entry_status}', expected one of {ENTRY_STATUS_VALUES}")
    results["entry_status"] = entry_status
    results["eligible"] = ELIGIBLE[entry_status]


def checkpoint_json(results: dict) -> dict:
    """What the evaluator writes: records still in progress (index -1) are left out (Checkpoint.to_json)."""
    out = dict(results)
    ck = dict(results["_checkpoint"])
    ck["records"] = [r for r in ck["records"] if r["index"] != -1]
    out["_checkpoint"] = ck
    return out


def save_results(path: str | Path, results: dict) -> None:
    """Write the checkpoint JSON atomically (indent 4 like checkpoint_tools.save_dict)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(checkpoint_json(results), indent=4))


def load_results(path: str | Path, *, strict: bool = True) -> dict:
    """Read a results JSON; unreadable files give {} like checkpoint_tools.fetch_dict unless ``strict``."""
    path = Path(path)
    if not path.is_file():
        if strict:
            raise ResultsFileError(f"results file {path} does not exist")
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as exc:
        if strict:
            raise ResultsFileError(f"results file {path} is not valid JSON ({exc}); a crashed run may have left "
                                   f"it half-written: rerun its part with resume") from exc
        return {}
    return data


def check_record(record: dict) -> list[str]:
    """Names of the fields a merged-metric computation needs that ``record`` lacks (empty list if complete)."""
    missing = [k for k in RECORD_FIELDS if k not in record]
    if "scores" in record and "score_composed" not in record["scores"]:
        missing.append("scores.score_composed")
    if "infractions" in record and not isinstance(record["infractions"], dict):
        missing.append("infractions (not a dict)")
    return missing


# the numeric fields of a record that the metrics and the global statistics compute with
NUMERIC_META_FIELDS = ("route_length", "duration_game", "duration_system")


def non_numeric_fields(record: dict) -> dict[str, object]:
    """The ``scores`` entries and numeric ``meta`` entries of a complete record that are not numbers.

    Returns ``{"scores.score_route": value found, "meta.route_length": ...}``; empty when all are numbers.
    """
    def bad(v: object) -> bool:
        return isinstance(v, bool) or not isinstance(v, (int, float))

    scores = record.get("scores") or {}
    meta = record.get("meta") or {}
    found = {f"scores.{k}": v for k, v in scores.items() if bad(v)}
    found.update({f"meta.{k}": meta[k] for k in NUMERIC_META_FIELDS if k in meta and bad(meta[k])})
    return found


def resume_index(data: dict, route_names: Sequence[str]) -> int | None:
    """Index to resume from, or None when the checkpoint cannot be resumed (RouteIndexer.validate_and_resume).

    ``route_names`` are the expected ``RouteScenario_<id>_rep<k>`` names in run order.
    """
    if not data or not data.get("entry_status") or data["entry_status"] == "Invalid":
        return None
    ck = data.get("_checkpoint")
    if not ck or "progress" not in ck or len(ck["progress"]) < 2:
        return None
    progress = ck["progress"]
    if progress[1] != len(route_names):
        return None
    records = ck.get("records") or []
    check, resume = 0, progress[0]
    while check < resume:
        if check >= len(records):
            # route_indexer.py "Patch": progress may run ahead of the records
            resume = max(check - 1, 0)
            break
        if route_names[check] != records[check]["route_id"]:
            return None
        if records[check]["status"] not in RERUN_STATUSES:
            check += 1
        else:
            resume = check
            break
    if data["entry_status"] == "Crashed":
        return max(0, resume - 1)  # the evaluator repeats the last route after a crash
    return max(0, resume)
