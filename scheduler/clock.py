"""Clocks come in through constructors, so the planner never reads the time itself.

A ScaledClock runs faster than the wall clock from a fixed origin: tests replay hours of the forecast trace in
seconds while the jobs themselves run at real speed. An EventClock (the demo) moves only when the daemon moves it,
from one due moment to the next, so each run takes its planned time on it whatever its real speed.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    speed: float

    def now(self) -> datetime: ...

    def to_wall(self, when: datetime) -> datetime: ...

    def from_wall(self, when: datetime) -> datetime: ...


class SystemClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def to_wall(self, when: datetime) -> datetime:
        return when

    def from_wall(self, when: datetime) -> datetime:
        return when


class ScaledClock:
    """Simulated time = origin + speed x (real time elapsed since the origin). At speed 1 with an origin it is a
    shifted clock: tests on a real Slurm start it just before a chosen hour of a trace."""

    def __init__(self, speed: float, origin: datetime | None = None, origin_monotonic: float | None = None):
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        self.speed = speed
        self._origin = origin or datetime.now(timezone.utc)
        self._origin_monotonic = time.monotonic() if origin_monotonic is None else origin_monotonic

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=(time.monotonic() - self._origin_monotonic) * self.speed)

    def to_wall(self, when: datetime) -> datetime:
        """The wall-clock time at which this clock will read ``when`` (what Slurm's --begin needs)."""
        return datetime.now(timezone.utc) + (when - self.now()) / self.speed

    def from_wall(self, when: datetime) -> datetime:
        return self.now() + (when - datetime.now(timezone.utc)) * self.speed


class EventClock:
    """A clock that the daemon moves (Daemon.drive_events): it stands still while nothing is queued or running and
    goes from one due moment to the next (a planned start, a run's planned end), at most ``speed`` times as fast as
    the wall clock and never past the planned end of a run still working. Runs thus take exactly their planned
    time on it, and the same submissions give the same plan and the same run times in every replay (the demo). An
    accelerated clock that runs on its own cannot: at 600x, a second of a run's start-up is ten minutes of plan."""

    def __init__(self, speed: float, origin: datetime,
                 on_move: Callable[[datetime], None] = lambda _at: None) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be > 0")
        self.speed = speed
        self.at = origin
        self.on_move = on_move  # the daemon keeps where it is, to go on from there after a restart

    def now(self) -> datetime:
        return self.at

    def advance(self, to: datetime) -> None:
        if to > self.at:
            self.at = to
            self.on_move(to)

    def to_wall(self, when: datetime) -> datetime:
        return datetime.now(timezone.utc) + (when - self.at) / self.speed

    def from_wall(self, when: datetime) -> datetime:
        return self.at + (when - datetime.now(timezone.utc)) * self.speed
