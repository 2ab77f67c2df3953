"""The normalised forecast series every provider returns and every consumer reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class Forecast:
    """Regular series from ``start`` in steps of ``step_s``; a value holds for its whole step."""

    start: datetime
    step_s: int
    price_eur_per_mwh: tuple[float, ...]
    carbon_g_per_kwh: tuple[float, ...]
    renewable_share_pct: tuple[float | None, ...]
    source: str
    estimated: bool = False

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("forecast start must be timezone-aware UTC")
        if not len(self.price_eur_per_mwh) == len(self.carbon_g_per_kwh) == len(self.renewable_share_pct):
            raise ValueError("forecast series differ in length")

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.step_s * len(self.price_eur_per_mwh))

    def index_at(self, when: datetime) -> int:
        """Index of the step holding ``when``, clamped to the series (the nearest known value)."""
        i = math.floor((when - self.start).total_seconds() / self.step_s)
        return min(max(i, 0), len(self.price_eur_per_mwh) - 1)

    def on_grid(self, start: datetime, slot_s: int, slots: int) -> tuple[list[float], list[float]]:
        """Price and carbon per planner slot: time-weighted means of the steps each slot overlaps."""
        prices, carbons = [], []
        for k in range(slots):
            s0 = start + timedelta(seconds=k * slot_s)
            s1 = s0 + timedelta(seconds=slot_s)
            weights: dict[int, float] = {}
            t = s0
            while t < s1:
                i = self.index_at(t)
                step_end = self.start + timedelta(seconds=(i + 1) * self.step_s)
                nxt = min(s1, step_end) if step_end > t else s1
                weights[i] = weights.get(i, 0.0) + (nxt - t).total_seconds()
                t = nxt
            total = sum(weights.values())
            prices.append(sum(self.price_eur_per_mwh[i] * w for i, w in weights.items()) / total)
            carbons.append(sum(self.carbon_g_per_kwh[i] * w for i, w in weights.items()) / total)
        return prices, carbons


class Provider(Protocol):
    name: str

    def forecast(self, start: datetime, end: datetime) -> Forecast: ...
