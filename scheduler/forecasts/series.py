"""A normalised signal from one provider: UTC, regular steps, units in the signal's name.

Signals: ``price`` (per MWh, in ``currency``), ``carbon`` (gCO2/kWh), ``renewable_share`` (% of load).
Providers build a Series from (start, value) points of one resolution; a missing step of a price is
held from the step before (ENTSO-E's A03 curves omit repeats), a missing intensity stays missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from scheduler.errors import ProviderError


@dataclass(frozen=True)
class Series:
    signal: str
    start: datetime
    step_s: int
    values: tuple[float | None, ...]
    currency: str | None = None  # prices only, as the service quotes them

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.step_s * len(self.values))

    def at(self, when: datetime) -> float | None:
        i = math.floor((when - self.start).total_seconds() / self.step_s)
        return self.values[i] if 0 <= i < len(self.values) else None


def utc(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(timezone.utc)


def from_points(what: str, signal: str, points: Sequence[tuple[datetime, float | None]], step_s: int | None = None,
                currency: str | None = None, hold: bool = False) -> Series:
    """Points at a common resolution (inferred when not given) -> a regular Series."""
    clean = sorted((t, v) for t, v in points if v is None or math.isfinite(v))
    if not clean:
        raise ProviderError(f"{what}: empty forecast")
    if step_s is None:
        gaps = [int((b[0] - a[0]).total_seconds()) for a, b in zip(clean, clean[1:]) if b[0] > a[0]]
        step_s = min(gaps) if gaps else 3600
    if step_s <= 0:
        raise ProviderError(f"{what}: bad resolution {step_s} s")
    start = clean[0][0]
    n = int((clean[-1][0] - start).total_seconds() // step_s) + 1
    values: list[float | None] = [None] * n
    for t, v in clean:
        offset = (t - start).total_seconds()
        if offset % step_s:
            raise ProviderError(f"{what}: point {t.isoformat()} is off the {step_s} s grid")
        values[int(offset // step_s)] = v
    if hold:
        for i in range(1, n):
            if values[i] is None:
                values[i] = values[i - 1]
    return Series(signal, start, step_s, tuple(values), currency)
