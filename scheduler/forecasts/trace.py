"""Replay of a real hourly trace, mapped onto any dates: the embedded default, offline.

The trace is a whole number of weeks starting on a Monday, so replaying it cyclically from a
Monday keeps each hour's weekday and time of day: today's 13:00 gets a real 13:00 from the trace.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.errors import ProviderError
from scheduler.forecasts.base import Forecast
from scheduler.timeutil import rfc3339

if TYPE_CHECKING:
    from scheduler.config import ProviderSettings
    from scheduler.forecasts.series import Series

EMBEDDED = "trace_de_2023-06.csv"
_MONDAY = datetime(1970, 1, 5, tzinfo=timezone.utc)
_HOUR = timedelta(hours=1)


class TraceProvider:
    def __init__(self, path: Path | None = None) -> None:
        try:
            if path is None:
                text = resources.files("scheduler.data").joinpath(EMBEDDED).read_text(encoding="utf-8")
                self.name = f"trace:{EMBEDDED}"
            else:
                text = Path(path).read_text(encoding="utf-8")
                self.name = f"trace:{Path(path).name}"
        except OSError as exc:
            raise ProviderError(f"cannot read forecast trace {path}: {exc}") from exc
        rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
        try:
            self.price = [float(r["price_eur_per_mwh"]) for r in rows]
            self.carbon = [float(r["carbon_g_per_kwh"]) for r in rows]
            self.share = [float(r["renewable_share_pct"]) if r.get("renewable_share_pct") else None for r in rows]
            first = datetime.fromisoformat(rows[0]["start_utc"].replace("Z", "+00:00"))
        except (KeyError, ValueError, IndexError) as exc:
            raise ProviderError(f"{self.name}: bad trace ({exc}); need columns start_utc, price_eur_per_mwh,"
                                " carbon_g_per_kwh, renewable_share_pct") from exc
        if len(rows) % (7 * 24) or first.weekday() != 0 or first.hour != 0:
            raise ProviderError(f"{self.name}: a trace must be whole weeks of hours starting Monday 00:00 UTC")

    def points(self, start: datetime, end: datetime) -> list[dict[str, object]]:
        """The `gsched forecast` view of the replay: hourly, one source, nothing estimated."""
        f = self.forecast(start, end)
        return [{"start": rfc3339(f.start + i * _HOUR), "end": rfc3339(f.start + (i + 1) * _HOUR),
                 "price_per_mwh": f.price_eur_per_mwh[i], "carbon_g_per_kwh": f.carbon_g_per_kwh[i],
                 "renewable_share_pct": f.renewable_share_pct[i], "source": self.name, "estimated": False,
                 "stale": False} for i in range(len(f.price_eur_per_mwh))]

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        first_hour = start.replace(minute=0, second=0, microsecond=0)
        hours = max(1, -(-int((end - first_hour).total_seconds()) // 3600))
        offset = int((first_hour - _MONDAY) / _HOUR)
        idx = [(offset + h) % len(self.price) for h in range(hours)]
        return Forecast(
            start=first_hour, step_s=3600,
            price_eur_per_mwh=tuple(self.price[i] for i in idx),
            carbon_g_per_kwh=tuple(self.carbon[i] for i in idx),
            renewable_share_pct=tuple(self.share[i] for i in idx),
            source=self.name,
        )


class TraceFileProvider:
    """The ``file`` provider kind: a trace replayed through the same fetch interface as the HTTP services."""

    kind = "file"

    def __init__(self, settings: "ProviderSettings", client: object = None, retries: int = 0) -> None:
        self.trace = TraceProvider(Path(settings.path) if settings.path else None)
        self.name = f"file:{self.trace.name.split(':', 1)[1]}"

    def fetch(self, start: datetime, end: datetime) -> list["Series"]:
        from scheduler.forecasts.series import Series

        f = self.trace.forecast(start, end)
        return [Series("price", f.start, f.step_s, f.price_eur_per_mwh, "EUR"),
                Series("carbon", f.start, f.step_s, f.carbon_g_per_kwh),
                Series("renewable_share", f.start, f.step_s, f.renewable_share_pct)]
