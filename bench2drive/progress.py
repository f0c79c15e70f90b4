"""Progress of a closed-loop run: one bar over routes, one per route (ticks, game time, route completion,
infractions so far), and an estimate of the whole run before it starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tqdm import tqdm

PHYSICS_HZ = 20  # ticks per game second (the leaderboard's 20 Hz)


def infractions_so_far(monitors) -> int:
    """Infractions a route's monitors hold now (min-speed checkpoints are not infractions that cost points)."""
    n = len(monitors.collisions) + len(monitors.red_events) + len(monitors.stop_events)
    n += sum(x is not None for x in (monitors.yield_event, monitors.scenario_timeout_event, monitors.deviated,
                                     monitors.blocked))
    return n + (monitors.wrong_dist > 0)


class RunProgress:
    """``routes(n)`` wraps the loop over routes; ``route(name, max_ticks)`` gives the per-route bar whose
    ``update(sim)`` is called every tick. ``enabled=False`` prints nothing."""

    def __init__(self, *, enabled: bool = True, every: int = PHYSICS_HZ):
        self.enabled, self.every = enabled, every
        self._outer: tqdm | None = None

    def start(self, total: int, done: int) -> None:
        if self.enabled:
            self._outer = tqdm(total=total, initial=done, desc="routes", unit="route", position=0, dynamic_ncols=True)

    def route_done(self, record: dict) -> None:
        if self._outer is not None:
            self._outer.set_postfix_str(f"last: {record['status']} DS {record['scores']['score_composed']:.1f}")
            self._outer.update(1)

    def close(self) -> None:
        if self._outer is not None:
            self._outer.close()
            self._outer = None

    def route(self, name: str, max_ticks: int) -> RouteBar:
        return RouteBar(name, max_ticks, enabled=self.enabled, every=self.every)


class RouteBar:
    def __init__(self, name: str, max_ticks: int, *, enabled: bool, every: int):
        self.every = every
        self.bar = tqdm(total=max_ticks, desc=name, unit="tick", position=1, leave=False,
                        dynamic_ncols=True) if enabled else None
        self._shown = 0

    def update(self, sim) -> None:
        if self.bar is None or (sim.frame - self._shown < self.every):
            return
        self.bar.update(sim.frame - self._shown)
        self._shown = sim.frame
        self.bar.set_postfix_str(f"game {sim.time:.0f}s RC {sim.monitors.completion:.0f}% "
                                 f"infractions {infractions_so_far(sim.monitors)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class RunEstimate:
    """What a run will cost, from its route lengths and measured per-tick costs."""

    routes: int
    ticks: int
    seconds: float

    def describe(self) -> str:
        h, rem = divmod(int(round(self.seconds)), 3600)
        return (f"estimate: {self.routes} routes, about {self.ticks} ticks ({self.ticks / PHYSICS_HZ / 60:.0f} game "
                f"minutes), about {h} h {rem // 60:02d} min on this machine")


def estimate_run(route_lengths_m: list[float], *, max_ticks: int, tick_s: float, plan_s: float, plan_every: int,
                 cruise_mps: float = 5.0) -> RunEstimate:
    """Ticks from each route's length at ``cruise_mps`` (capped at ``max_ticks``), seconds from the simulator's
    cost per tick and the planner's cost per call (one call every ``plan_every`` ticks)."""
    ticks = sum(min(max_ticks, math.ceil(length / cruise_mps * PHYSICS_HZ)) for length in route_lengths_m)
    return RunEstimate(routes=len(route_lengths_m), ticks=ticks,
                       seconds=ticks * tick_s + math.ceil(ticks / plan_every) * plan_s)
