"""Bench2Drive's abilities and its junction-completion rule (``tools/ability_benchmark.py``, v0.0.4).

Shared by the metrics (``bench2drive.metrics``) and the embedded simulator's routes (``bench2drive.sim``).
"""

from __future__ import annotations

import numpy as np

# tools/ability_benchmark.py Ability (Traffic_Signs repeats some names there; membership is what counts)
ABILITIES = {
    "Overtaking": ("Accident", "AccidentTwoWays", "ConstructionObstacle", "ConstructionObstacleTwoWays",
                   "HazardAtSideLaneTwoWays", "HazardAtSideLane", "ParkedObstacleTwoWays", "ParkedObstacle",
                   "VehicleOpensDoorTwoWays"),
    "Merging": ("CrossingBicycleFlow", "EnterActorFlow", "HighwayExit", "InterurbanActorFlow", "HighwayCutIn",
                "InterurbanAdvancedActorFlow", "MergerIntoSlowTrafficV2", "MergerIntoSlowTraffic",
                "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionRightTurn",
                "NonSignalizedJunctionLeftTurnEnterFlow", "ParkingExit", "SequentialLaneChange",
                "SignalizedJunctionLeftTurn", "SignalizedJunctionRightTurn", "SignalizedJunctionLeftTurnEnterFlow"),
    "Emergency_Brake": ("BlockedIntersection", "DynamicObjectCrossing", "HardBreakRoute",
                        "OppositeVehicleTakingPriority", "OppositeVehicleRunningRedLight", "ParkingCutIn",
                        "PedestrianCrossing", "ParkingCrossingPedestrian", "StaticCutIn", "VehicleTurningRoute",
                        "VehicleTurningRoutePedestrian", "ControlLoss"),
    "Give_Way": ("InvadingTurn", "YieldToEmergencyVehicle"),
    "Traffic_Signs": ("BlockedIntersection", "OppositeVehicleTakingPriority", "OppositeVehicleRunningRedLight",
                      "PedestrianCrossing", "VehicleTurningRoute", "VehicleTurningRoutePedestrian", "EnterActorFlow",
                      "CrossingBicycleFlow", "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionRightTurn",
                      "NonSignalizedJunctionLeftTurnEnterFlow", "SignalizedJunctionLeftTurn",
                      "SignalizedJunctionRightTurn", "SignalizedJunctionLeftTurnEnterFlow", "T_Junction",
                      "VanillaNonSignalizedTurn", "VanillaSignalizedTurnEncounterGreenLight",
                      "VanillaSignalizedTurnEncounterRedLight", "VanillaNonSignalizedTurnEncounterStopsign"),
}
JUNCTION_EXTRA_WAYPOINTS = 8  # ability_benchmark.py: completion must pass (first junction index + 8) / len


def junction_completion_from_flags(is_junction: np.ndarray) -> float:
    """(index of first junction waypoint, 1-based, + 8) / number of waypoints on the 1 m route."""
    flags = np.asarray(is_junction, dtype=bool)
    if not flags.any():
        raise ValueError("No junction found in route")  # ability_benchmark.py raises the same
    return float(int(np.argmax(flags)) + 1 + JUNCTION_EXTRA_WAYPOINTS) / len(flags)
