"""The Intelligent Driver Model (Treiber, Hennecke and Helbing 2000) and the parameter sets this package uses.

Two forms, because the references differ in more than their numbers:

- ``pdm_idm_step``: PDM-Closed's batch policy exactly as navsim writes it
  (``pdm_planner/proposal/batch_idm_policy.py::BatchIDMPolicy.propagate``): ``s* = s0 + v T + v dv / (2 sqrt(a b))``
  with no clamp, the gap floored at ``s0``, exponent 10, the acceleration clipped to ``[-b, a]``, explicit Euler.
- ``idm_acceleration``: the textbook form for simulated traffic (Treiber and Kesting, "Traffic Flow Dynamics",
  2013, eq. 11.5): the dynamic part of ``s*`` never negative, ``gap = inf`` for a free road, a small floor on the
  gap and the desired speed so that a stopped car or a zero speed limit stays finite, and an optional braking limit.

Named parameter sets (``IDMParameters``): ``PDM_CLOSED`` is the reference (navsim
``planning/script/config/common/agent/...pdm_closed`` / ``metric_caching/metric_cache_processor.py``:
``min_gap_to_lead_agent=1.0, headway_time=1.5, accel_max=1.5, decel_max=3.0``; exponent 10 from
``batch_idm_policy.py``); ``EMBEDDED_CLOSED_LOOP`` drives the background traffic and the expert of the embedded
Bench2Drive simulator (our own choice, no reference: Treiber and Kesting's exponent 4 and minimum gap 2 m);
``NAVSIM_IDM_TRAFFIC`` moves navsim's reactive traffic agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GAP_FLOOR = 0.1  # m: a zero gap (bumpers touching) gives a large but finite braking demand
DESIRED_SPEED_FLOOR = 0.1  # m/s: a zero desired speed brakes instead of dividing by zero


@dataclass(frozen=True)
class IDMParameters:
    """``accel_max`` a (m/s^2), ``decel_max`` b (comfortable deceleration in s*, m/s^2), ``min_gap`` s0 (m),
    ``headway_time`` T (s), ``exponent`` delta."""

    accel_max: float
    decel_max: float
    min_gap: float
    headway_time: float
    exponent: float


# navsim metric_cache_processor.py / pdm_closed config and batch_idm_policy.py (acceleration_exponent = 10)
PDM_CLOSED = IDMParameters(accel_max=1.5, decel_max=3.0, min_gap=1.0, headway_time=1.5, exponent=10)
# navsim's reactive traffic (scoring/traffic_agents.py): navsim config/common/traffic_agents_policy/
# navsim_IDM_traffic_agents.yaml (min_gap_to_lead_agent 1.0, headway_time 1.5, accel_max 1.0, decel_max 2.0) and
# nuplan idm_policy.py (acceleration_exponent = 4); stepped by the same explicit Euler as ``pdm_idm_step``
NAVSIM_IDM_TRAFFIC = IDMParameters(accel_max=1.0, decel_max=2.0, min_gap=1.0, headway_time=1.5, exponent=4)
# the embedded closed-loop simulator's traffic and expert (bench2drive/sim): own values, no reference
EMBEDDED_CLOSED_LOOP = IDMParameters(accel_max=1.5, decel_max=2.0, min_gap=2.0, headway_time=1.2, exponent=4)


def pdm_idm_step(x, v, x_lead, v_lead, l_rear, target_v, dt: float, p: IDMParameters = PDM_CLOSED):
    """One explicit-Euler step of navsim's ``BatchIDMPolicy.propagate``: (progress, speed) arrays after ``dt``.

    ``x``/``v``: progress and speed along the path; ``x_lead``/``v_lead``/``l_rear``: the leader's progress, speed
    and rear length; ``target_v``: desired speed per policy.
    """
    if type(x) is type(v) is type(x_lead) is type(v_lead) is type(l_rear) is type(target_v) is float and target_v:
        return _pdm_idm_step_float(x, v, x_lead, v_lead, l_rear, target_v, dt, p)
    s_star = p.min_gap + v * p.headway_time + v * (v - v_lead) / (2 * np.sqrt(p.accel_max * p.decel_max))
    s_alpha = np.maximum(x_lead - x - l_rear, p.min_gap)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_dot = p.accel_max * (1 - (v / target_v) ** p.exponent - (s_star / s_alpha) ** 2)
    v_dot = np.clip(v_dot, -p.decel_max, p.accel_max)
    return x + dt * v, v + dt * v_dot


def _pdm_idm_step_float(x: float, v: float, x_lead: float, v_lead: float, l_rear: float, target_v: float, dt: float,
                        p: IDMParameters) -> tuple[float, float]:
    """`pdm_idm_step` for one vehicle in Python floats: the same IEEE operations in the same order (sqrt and pow
    correctly rounded / the same libm call as numpy's scalars), without numpy's per-call cost."""
    s_star = p.min_gap + v * p.headway_time + v * (v - v_lead) / (2 * math.sqrt(p.accel_max * p.decel_max))
    s_alpha = max(x_lead - x - l_rear, p.min_gap)
    v_dot = p.accel_max * (1 - (v / target_v) ** p.exponent - (s_star / s_alpha) ** 2)
    v_dot = min(max(v_dot, -p.decel_max), p.accel_max)
    return x + dt * v, v + dt * v_dot


def idm_acceleration(v, v_desired, gap, v_lead, p: IDMParameters, *, max_brake: float = math.inf):
    """Textbook IDM acceleration (m/s^2) for speed ``v``, desired speed, bumper ``gap`` (inf: free road) and
    leader speed ``v_lead``; floats or broadcasting arrays. The result is clipped to ``[-max_brake, accel_max]``."""
    dynamic = np.maximum(0.0, v * p.headway_time + v * (v - v_lead) / (2.0 * math.sqrt(p.accel_max * p.decel_max)))
    free = 1.0 - (v / np.maximum(v_desired, DESIRED_SPEED_FLOOR)) ** p.exponent
    interaction = np.where(np.isfinite(gap), ((p.min_gap + dynamic) / np.maximum(gap, GAP_FLOOR)) ** 2, 0.0)
    acc = np.clip(p.accel_max * (free - interaction), -max_brake, p.accel_max)
    return float(acc) if np.ndim(acc) == 0 else acc


__all__ = ["EMBEDDED_CLOSED_LOOP", "IDMParameters", "NAVSIM_IDM_TRAFFIC", "PDM_CLOSED", "idm_acceleration", "pdm_idm_step"]
