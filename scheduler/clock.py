"""Clocks come in through constructors, so the planner never reads the time itself.

A ScaledClock runs faster than the wall clock from a fixed origin: the demo replays a day of
the forecast trace in minutes while the jobs themselves run at real speed.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
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
