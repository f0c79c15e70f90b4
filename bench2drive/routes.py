"""Bench2Drive route files: read, write, filter and split the leaderboard's route XML.

The format is the one of ``leaderboard/data/bench2drive220.xml``::

    <routes><route id town><waypoints><position x y z/>...</waypoints>
      <scenarios><scenario name type><trigger_point x y yaw z/>...</scenario></scenarios>
      <weathers><weather .../>...</weathers></route></routes>
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from eupe.atomic_io import atomic_write_text

# Towns the Bench2Drive / CARLA 0.9.15 leaderboard ships (leaderboard/data/bench2drive220.xml and the
# CARLA additional-maps package); "Synthetic*" towns are the embedded simulator's own.
KNOWN_TOWNS = (
    "Town01", "Town02", "Town03", "Town04", "Town05", "Town06", "Town07", "Town10HD",
    "Town11", "Town12", "Town13", "Town15",
)
SYNTHETIC_TOWN_PREFIX = "Synthetic"

# Scenario types of the 220 routes (bench2drive220.xml: 44 types x 5) plus the other CARLA leaderboard 2.0
# types named in tools/ability_benchmark.py.
BENCH2DRIVE_SCENARIOS = (
    "Accident", "AccidentTwoWays", "BlockedIntersection", "ConstructionObstacle",
    "ConstructionObstacleTwoWays", "ControlLoss", "CrossingBicycleFlow", "DynamicObjectCrossing",
    "EnterActorFlow", "HardBreakRoute", "HazardAtSideLane", "HazardAtSideLaneTwoWays", "HighwayCutIn",
    "HighwayExit", "InterurbanActorFlow", "InterurbanAdvancedActorFlow", "InvadingTurn",
    "MergerIntoSlowTraffic", "MergerIntoSlowTrafficV2", "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionLeftTurnEnterFlow",
    "NonSignalizedJunctionRightTurn", "OppositeVehicleRunningRedLight", "OppositeVehicleTakingPriority",
    "ParkedObstacle", "ParkedObstacleTwoWays", "ParkingCrossingPedestrian", "ParkingCutIn", "ParkingExit",
    "PedestrianCrossing", "SequentialLaneChange", "SignalizedJunctionLeftTurn",
    "SignalizedJunctionLeftTurnEnterFlow", "SignalizedJunctionRightTurn", "StaticCutIn", "T_Junction",
    "VanillaNonSignalizedTurn", "VanillaNonSignalizedTurnEncounterStopsign",
    "VanillaSignalizedTurnEncounterGreenLight", "VanillaSignalizedTurnEncounterRedLight",
    "VehicleOpensDoorTwoWays", "VehicleTurningRoute", "VehicleTurningRoutePedestrian",
    "YieldToEmergencyVehicle",
)
OTHER_LEADERBOARD_SCENARIOS = ("HighwayCutInRoute", "PriorityAtJunction", "BackgroundActivityParametrizer")
KNOWN_SCENARIOS = frozenset(BENCH2DRIVE_SCENARIOS + OTHER_LEADERBOARD_SCENARIOS)
OFFICIAL_ROUTE_COUNT = 220  # routes in bench2drive220.xml


class RouteFileError(ValueError):
    """A route file that cannot be read or holds an unknown town / scenario."""


@dataclass
class Scenario:
    """One ``<scenario>``: its name, type, trigger point (x, y, z, yaw in CARLA degrees) and other children."""

    name: str
    type: str
    trigger: tuple[float, float, float, float]
    extra: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@dataclass
class Route:
    """One ``<route>``: id, town, waypoints [N,3] in CARLA world metres, scenarios and weathers."""

    id: str
    town: str
    waypoints: np.ndarray
    scenarios: list[Scenario] = field(default_factory=list)
    weathers: list[dict[str, str]] = field(default_factory=list)

    @property
    def scenario_type(self) -> str:
        """The type of the first scenario, which Bench2Drive uses as the route's scenario (``""`` if none)."""
        return self.scenarios[0].type if self.scenarios else ""

    @property
    def scenario_name(self) -> str:
        return self.scenarios[0].name if self.scenarios else ""


def _float(elem: ET.Element, key: str, where: str) -> float:
    value = elem.get(key)
    if value is None:
        raise RouteFileError(f"{where}: <{elem.tag}> has no attribute '{key}'")
    try:
        return float(value)
    except ValueError as exc:
        raise RouteFileError(f"{where}: <{elem.tag} {key}='{value}'> is not a number") from exc


def _check_names(route: Route, where: str, *, allow_unknown: bool) -> None:
    if allow_unknown:
        return
    if route.town not in KNOWN_TOWNS and not route.town.startswith(SYNTHETIC_TOWN_PREFIX):
        raise RouteFileError(f"{where}: unknown town '{route.town}'; known towns: {', '.join(KNOWN_TOWNS)} "
                             f"(or '{SYNTHETIC_TOWN_PREFIX}*' for the embedded simulator)")
    for sc in route.scenarios:
        if sc.type not in KNOWN_SCENARIOS:
            raise RouteFileError(f"{where}: unknown scenario type '{sc.type}' (scenario '{sc.name}'); "
                                 f"known: the 44 Bench2Drive types, e.g. {', '.join(BENCH2DRIVE_SCENARIOS[:4])}, ...")


def parse_routes(text: str, *, source: str = "<string>", allow_unknown: bool = False) -> list[Route]:
    """Parse route XML text into Routes; raises RouteFileError naming ``source`` and the route at fault."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise RouteFileError(f"{source}: not a valid route XML file ({exc}); expected the "
                             f"bench2drive220.xml format <routes><route id town>...") from exc
    if root.tag != "routes":
        raise RouteFileError(f"{source}: root element is <{root.tag}>, expected <routes>")
    routes = []
    for elem in root.findall("route"):
        rid, town = elem.get("id"), elem.get("town")
        where = f"{source} route id={rid}"
        if rid is None or town is None:
            raise RouteFileError(f"{where}: <route> needs both 'id' and 'town' attributes")
        wps_elem = elem.find("waypoints")
        positions = [] if wps_elem is None else wps_elem.findall("position")
        if len(positions) < 2:
            raise RouteFileError(f"{where}: needs at least two <position> waypoints")
        wps = np.array([[_float(p, k, where) for k in ("x", "y", "z")] for p in positions], dtype=np.float64)
        scenarios = []
        sc_root = elem.find("scenarios")
        for sc in [] if sc_root is None else sc_root.findall("scenario"):
            trig = sc.find("trigger_point")
            if trig is None:
                raise RouteFileError(f"{where}: scenario '{sc.get('name')}' has no <trigger_point>")
            trigger = tuple(_float(trig, k, where) for k in ("x", "y", "z", "yaw"))
            extra = [(c.tag, dict(c.attrib)) for c in sc if c.tag != "trigger_point"]
            scenarios.append(Scenario(name=sc.get("name", ""), type=sc.get("type", ""), trigger=trigger,
                                      extra=extra))
        w_root = elem.find("weathers")
        weathers = [dict(w.attrib) for w in ([] if w_root is None else w_root.findall("weather"))]
        route = Route(id=rid, town=town, waypoints=wps, scenarios=scenarios, weathers=weathers)
        _check_names(route, where, allow_unknown=allow_unknown)
        routes.append(route)
    if not routes:
        raise RouteFileError(f"{source}: holds no <route> element")
    ids = [r.id for r in routes]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise RouteFileError(f"{source}: duplicate route ids {dup}")
    return routes


def read_routes(path: str | Path, *, allow_unknown: bool = False) -> list[Route]:
    """Read a route XML file; raises FileNotFoundError / RouteFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"route file {path} does not exist (Bench2Drive's is "
                                f"leaderboard/data/bench2drive220.xml)")
    return parse_routes(path.read_text(), source=str(path), allow_unknown=allow_unknown)


def _fmt(v: float) -> str:
    return f"{v:.1f}" if abs(v - round(v, 1)) < 1e-9 else repr(float(v))


def routes_to_xml(routes: Sequence[Route]) -> str:
    """Serialise routes in the bench2drive220.xml layout (one decimal where the value allows it)."""
    root = ET.Element("routes")
    for r in routes:
        re_ = ET.SubElement(root, "route", id=str(r.id), town=r.town)
        wps = ET.SubElement(re_, "waypoints")
        for x, y, z in np.asarray(r.waypoints, dtype=np.float64):
            ET.SubElement(wps, "position", x=_fmt(x), y=_fmt(y), z=_fmt(z))
        scs = ET.SubElement(re_, "scenarios")
        for sc in r.scenarios:
            se = ET.SubElement(scs, "scenario", name=sc.name, type=sc.type)
            for tag, attrib in sc.extra:
                ET.SubElement(se, tag, **attrib)
            x, y, z, yaw = sc.trigger
            ET.SubElement(se, "trigger_point", x=_fmt(x), y=_fmt(y), yaw=_fmt(yaw), z=_fmt(z))
        ws = ET.SubElement(re_, "weathers")
        for w in r.weathers:
            ET.SubElement(ws, "weather", **w)
    ET.indent(root, space="   ")
    return ET.tostring(root, encoding="unicode")


def write_routes(routes: Sequence[Route], path: str | Path) -> Path:
    """Write routes to ``path`` (with an XML declaration like tools/split_xml.py); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "<?xml version='1.0' encoding='utf-8'?>\n" + routes_to_xml(routes) + "\n")
    return path


def filter_routes(routes: Iterable[Route], *, scenario_types: Sequence[str] | None = None,
                  towns: Sequence[str] | None = None, route_ids: Sequence[str] | None = None) -> list[Route]:
    """Keep routes whose first scenario type / town / id is in the given lists (None keeps all).

    Raises RouteFileError for a scenario type or town name that no route could ever have.
    """
    if scenario_types:
        bad = [s for s in scenario_types if s not in KNOWN_SCENARIOS]
        if bad:
            raise RouteFileError(f"unknown scenario type(s) {bad} in the filter")
    if towns:
        bad = [t for t in towns if t not in KNOWN_TOWNS and not t.startswith(SYNTHETIC_TOWN_PREFIX)]
        if bad:
            raise RouteFileError(f"unknown town(s) {bad} in the filter; known: {', '.join(KNOWN_TOWNS)}")
    out = []
    for r in routes:
        if scenario_types and r.scenario_type not in scenario_types:
            continue
        if towns and r.town not in towns:
            continue
        if route_ids and str(r.id) not in {str(i) for i in route_ids}:
            continue
        out.append(r)
    return out


def split_routes(routes: Sequence[Route], n: int) -> list[list[Route]]:
    """Split into ``n`` contiguous parts of near-equal size, the first ``len % n`` one longer.

    Same partition as tools/split_xml.py (``divmod`` split), so part i here is part i of the official script.
    """
    if n < 1:
        raise ValueError(f"number of parts must be >= 1, got {n}")
    k, m = divmod(len(routes), n)
    return [list(routes[i * k + min(i, m):(i + 1) * k + min(i + 1, m)]) for i in range(n)]
