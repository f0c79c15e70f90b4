"""Embedded closed-loop simulator for Bench2Drive agents (no CARLA server needed).

world.py (road geometry, actors, synthetic routes per scenario type), dynamics.py (ego bicycle model, IDM
traffic, scenario adversaries, opposite-lane flows), monitors.py (the leaderboard's criteria, the scenario's
life and ScenarioTimeoutTest), sensors.py (leaderboard input_data, cameras from the RAP rasterizer), expert.py
(scripted controllers), simulator.py (route runner writing the leaderboard's results JSON).

Scenario types built (30 of Bench2Drive's 44, ``world.SUPPORTED``; abilities from tools/ability_benchmark.py):

- Overtaking (9 of 9): ParkedObstacle, Accident, ConstructionObstacle, HazardAtSideLane on a road with a
  same-direction passing lane; ParkedObstacleTwoWays, AccidentTwoWays, ConstructionObstacleTwoWays,
  HazardAtSideLaneTwoWays, VehicleOpensDoorTwoWays on a two-way road whose opposite lane opens
  (SwitchWrongDirectionTest) 5 s after the trigger, with an OppositeActorFlow at the speed limit and the route
  XML's spawn intervals.
- Emergency_Brake (12 of 12): HardBreakRoute, DynamicObjectCrossing, ParkingCrossingPedestrian, ParkingCutIn,
  StaticCutIn, ControlLoss, PedestrianCrossing, OppositeVehicleRunningRedLight, OppositeVehicleTakingPriority,
  VehicleTurningRoute, VehicleTurningRoutePedestrian, BlockedIntersection.
- Give_Way (2 of 2): InvadingTurn, YieldToEmergencyVehicle.
- Traffic_Signs (11 of its 19 types; 6 of them are the Emergency_Brake types above): VanillaSignalizedTurnEncounter
  RedLight / GreenLight, VanillaNonSignalizedTurn, VanillaNonSignalizedTurnEncounterStopsign, T_Junction.
- Merging (2 of 16): InterurbanActorFlow, ParkingExit (the ego starts in the parking lane).

Not built (14, ``world.NOT_BUILT`` gives each reason): the ramp scenarios (EnterActorFlow, HighwayCutIn,
HighwayExit, MergerIntoSlowTraffic, MergerIntoSlowTrafficV2) need on/off-ramp geometry; the left-turn ones
(SignalizedJunctionLeftTurn, NonSignalizedJunctionLeftTurn and their EnterFlow variants, CrossingBicycleFlow,
InterurbanAdvancedActorFlow) need a left-turn road with a crossing flow; Signalized / NonSignalizedJunction
RightTurn need a merge into a dense ActorFlow (16-38 m at 8-14 m/s) that only works when the flow brakes for
the ego; SequentialLaneChange needs a route that changes lanes (the renderer draws the road around the
route).

Timeouts as the leaderboard has them: the scenarios holding a ScenarioTimeout (``world.TIMEOUT_SCENARIOS``,
240 s) switch ActorBlockedTest off while it runs and record one SCENARIO_TIMEOUT (penalty 0.7) when it fires;
RouteTimeoutBehavior allows 300 s plus the route's length at 10% of the speed limit; Bench2Drive's
scenario_manager.py stops a route after 4000 ticks (200 s) as "Failed - TickRuntime", so under that cap
(``SimSettings.max_ticks``, ``closed_loop.max_ticks``) neither timeout can fire.
"""
