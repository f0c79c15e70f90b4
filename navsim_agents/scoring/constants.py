"""Constants of the NAVSIM PDM scorer, named once (the ego vehicle lives in ``rap_backbone.nuplan_rig``).

Values come from autonomousvision/navsim (v1.1 and v2) and motional/nuplan-devkit; each block names its file.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class StateIndex(IntEnum):
    """Columns of the ego state array; navsim `pdm_planner/utils/pdm_enums.py::StateIndex`."""

    X = 0
    Y = 1
    HEADING = 2
    VELOCITY_X = 3
    VELOCITY_Y = 4
    ACCELERATION_X = 5
    ACCELERATION_Y = 6
    STEERING_ANGLE = 7
    STEERING_RATE = 8
    ANGULAR_VELOCITY = 9
    ANGULAR_ACCELERATION = 10


STATE_SIZE = len(StateIndex)


class BBCoordsIndex(IntEnum):
    """Box corner order; navsim `pdm_enums.py::BBCoordsIndex` (= nuplan OrientedBox.all_corners + center)."""

    FRONT_LEFT = 0
    REAR_LEFT = 1
    REAR_RIGHT = 2
    FRONT_RIGHT = 3
    CENTER = 4


# Metric columns of the score CSVs, in the devkits' order: navsim v1.1 `planning/script/run_pdm_score.py`
# (PDMResults fields) and v2 `run_pdm_score_one_stage.py`; both end with a "score" column.
V1_COLUMNS = ("no_at_fault_collisions", "drivable_area_compliance", "ego_progress",
              "time_to_collision_within_bound", "comfort", "driving_direction_compliance")
V2_COLUMNS = ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance",
              "traffic_light_compliance", "ego_progress", "time_to_collision_within_bound", "lane_keeping",
              "history_comfort", "two_frame_extended_comfort")


# Tracked object types (nuplan `tracked_objects_types.py`); AGENT_TYPES score 0 on an at-fault collision.
AGENT_TYPE_NAMES = frozenset({"vehicle", "pedestrian", "bicycle", "ego"})

# Trajectory sampling of the scorer: navsim `config/common/.../proposal_sampling` (num_poses 40, 0.1 s).
PROPOSAL_NUM_POSES = 40
PROPOSAL_INTERVAL = 0.1
# Agent output sampling; navsim `common/dataclasses.py::Trajectory` (4 s at 0.5 s).
NAVSIM_INTERVAL_LENGTH = 0.5
NAVSIM_NUM_POSES = 8

# BatchLQRTracker defaults; navsim `pdm_planner/simulation/batch_lqr.py`.
LQR_Q_LONGITUDINAL = 10.0
LQR_R_LONGITUDINAL = 1.0
LQR_Q_LATERAL = np.array([1.0, 10.0, 0.0])
LQR_R_LATERAL = 1.0
LQR_TRACKING_HORIZON = 10
LQR_JERK_PENALTY = 1e-4
LQR_CURVATURE_RATE_PENALTY = 1e-2
LQR_STOPPING_GAIN = 0.5
LQR_STOPPING_VELOCITY = 0.2
# navsim `simulation/batch_lqr_utils.py`
LQR_INITIAL_CURVATURE_PENALTY = 1e-10

# BatchKinematicBicycleModel defaults; navsim `simulation/batch_kinematic_bicycle.py`.
BICYCLE_MAX_STEERING_ANGLE = np.pi / 3
BICYCLE_ACCEL_TIME_CONSTANT = 0.2
BICYCLE_STEERING_TIME_CONSTANT = 0.05

# Comfort bounds; navsim `scoring/pdm_comfort_metrics.py`.
MAX_ABS_MAG_JERK = 8.37
MAX_ABS_LAT_ACCEL = 4.89
MAX_LON_ACCEL = 2.40
MIN_LON_ACCEL = -4.05
MAX_ABS_YAW_ACCEL = 1.93
MAX_ABS_LON_JERK = 4.13
MAX_ABS_YAW_RATE = 0.95
# Two-frame extended comfort thresholds (v2), same file.
EC_ACCELERATION_THRESHOLD = 0.7
EC_JERK_THRESHOLD = 0.5
EC_YAW_RATE_THRESHOLD = 0.1
EC_YAW_ACCEL_THRESHOLD = 0.1

# Collision classification; nuplan `observation/idm/utils.py` and navsim `scoring/pdm_scorer_utils.py`.
STOPPED_SPEED_THRESHOLD_COLLISION = 5e-02
AGENT_AHEAD_ANGLE_DEG = 30.0
AGENT_BEHIND_ANGLE_DEG = 150.0

# PDM-Closed; navsim `metric_caching/metric_cache_processor.py`.
IDM_SPEED_LIMIT_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
IDM_FALLBACK_TARGET_VELOCITY = 15.0
# (its IDM parameters: navsim_agents.idm.PDM_CLOSED)
PDM_LATERAL_OFFSETS = (-1.0, 1.0)
PDM_MAP_RADIUS = 100.0
PDM_TRAJECTORY_NUM_POSES = 50
PDM_LEADING_AGENT_UPDATE_RATE = 2  # navsim `proposal/pdm_generator.py`
PDM_OBSERVATION_SAMPLE_RES = 2  # navsim `observation/pdm_observation.py`
PDM_CENTERLINE_SEARCH_DEPTH = 30  # navsim `abstract_pdm_planner.py::_get_discrete_centerline`
# navsim `observation/pdm_object_manager.py`
MAX_DYNAMIC_OBJECTS = {"vehicle": 50, "pedestrian": 25, "bicycle": 10}
MAX_STATIC_OBJECTS = 50

RED_LIGHT_TOKEN = "red_light"
