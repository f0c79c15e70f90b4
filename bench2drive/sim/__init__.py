"""Embedded closed-loop simulator for Bench2Drive agents (no CARLA server needed).

scenarios.py (road geometry, actors, synthetic routes per scenario type), dynamics.py (ego bicycle model, IDM
traffic, scenario adversaries, opposite-lane flows and ActorFlows), monitors.py (the leaderboard's criteria, the scenario's
life and ScenarioTimeoutTest), sensors.py (leaderboard input_data, cameras from the RAP rasterizer), expert.py
(scripted controllers), route_runner.py (route runner writing the leaderboard's results JSON).

Scenario types built (36 of Bench2Drive's 44, ``scenarios.SUPPORTED``; abilities from tools/ability_benchmark.py):

- Overtaking (9 of 9): ParkedObstacle, Accident, ConstructionObstacle, HazardAtSideLane on a road with a
  same-direction passing lane; ParkedObstacleTwoWays, AccidentTwoWays, ConstructionObstacleTwoWays,
  HazardAtSideLaneTwoWays, VehicleOpensDoorTwoWays on a two-way road whose opposite lane opens
  (SwitchWrongDirectionTest) 5 s after the trigger, with an OppositeActorFlow at the speed limit and the route
  XML's spawn intervals.
- Emergency_Brake (12 of 12): HardBreakRoute, DynamicObjectCrossing, ParkingCrossingPedestrian, ParkingCutIn,
  StaticCutIn, ControlLoss, PedestrianCrossing, OppositeVehicleRunningRedLight, OppositeVehicleTakingPriority,
  VehicleTurningRoute, VehicleTurningRoutePedestrian, BlockedIntersection.
- Give_Way (2 of 2): InvadingTurn, YieldToEmergencyVehicle.
- Traffic_Signs (17 of its 19 types; 6 of them are the Emergency_Brake types above, 6 the junction flows below):
  VanillaSignalizedTurnEncounterRedLight / GreenLight, VanillaNonSignalizedTurn,
  VanillaNonSignalizedTurnEncounterStopsign, T_Junction.
- Merging (8 of 16): InterurbanActorFlow, ParkingExit (the ego starts in the parking lane), and, also
  Traffic_Signs, the junction flows: Signalized / NonSignalizedJunctionLeftTurn and Signalized /
  NonSignalizedJunctionLeftTurnEnterFlow, a left turn through a junction across the approach road's opposite
  lane, where an ActorFlow (constant velocity, blind to the ego; flow_speed and source_dist_interval of a
  bench2drive220.xml route) comes from 4 * speed m before the junction and runs straight through (or,
  EnterFlow, turns right into the ego's exit lane) to 2.5 * speed m past it; Signalized /
  NonSignalizedJunctionRightTurn, a right turn into the lane of an ActorFlow that comes from the ego's left,
  5 * speed m before the junction, straight through to 3 * speed m past it, populated from the start
  (initial_actors). The signalized ones hold the ego's light red for the first 5 s. The expert waits before
  the flow's lane for a gap its crossing (or its merge, up to the scenario's end) fits in; a dense flow may
  offer none within the 4000-tick cap (SignalizedJunctionLeftTurn: 2 of seeds 0-39 end in TickRuntime).

Not built (8, ``scenarios.NOT_BUILT`` gives each reason): the ramp scenarios (EnterActorFlow, HighwayCutIn,
HighwayExit, MergerIntoSlowTraffic, MergerIntoSlowTrafficV2) need on/off-ramp geometry; CrossingBicycleFlow
needs a bicycle lane through a large junction (a left turn of about 20 m radius in bench2drive220.xml; the
synthetic junction's turn ends before the lane), InterurbanAdvancedActorFlow a two-flow interurban junction;
SequentialLaneChange needs a route that changes lanes (the renderer draws the road around the
route).

Timeouts as the leaderboard has them: the scenarios holding a ScenarioTimeout (``scenarios.TIMEOUT_SCENARIOS``,
240 s) switch ActorBlockedTest off while it runs and record one SCENARIO_TIMEOUT (penalty 0.7) when it fires;
RouteTimeoutBehavior allows 300 s plus the route's length at 10% of the speed limit; Bench2Drive's
scenario_manager.py stops a route after 4000 ticks (200 s) as "Failed - TickRuntime", so under that cap
(``SimSettings.max_ticks``, ``closed_loop.max_ticks``) neither timeout can fire.
"""
