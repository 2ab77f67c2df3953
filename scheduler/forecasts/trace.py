"""Replay of a real trace, mapped onto any dates: the embedded default, offline.

A trace is rows at a regular step (an hour, a quarter hour: European day-ahead prices have been quarter-hourly
since October 2025, or any other) from any time, of any length. A date the trace covers gets its own row; any other
date gets the row of the same weekday and time of day, the trace repeating in whole weeks (whole days where it is
shorter than a week; its whole length where it is shorter than a day). So a history replayed on the trace of its
own week is priced on its real signals, and today's 13:00 gets a real 13:00 from the trace.
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
_WEEK, _DAY = timedelta(days=7), timedelta(days=1)
COLUMNS = "start_utc, price_eur_per_mwh, carbon_g_per_kwh, renewable_share_pct"


class TraceProvider:
    def __init__(self, path: Path | None = None) -> None:
        try:
            if path is None:
                text = resources.files("scheduler.data").joinpath(EMBEDDED).read_text(encoding="utf-8")
                self.name = f"trace:{EMBEDDED}"
            else:
                text = Path(path).read_text(encoding="utf-8")
                self.name = f"trace:{Path(path).name}"
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderError(f"cannot read forecast trace {path}: {exc}") from exc
        numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip() and not line.startswith("#")]
        header = next(csv.reader([numbered[0][1]])) if numbered else []
        if not {"start_utc", "price_eur_per_mwh", "carbon_g_per_kwh"} <= {h.strip() for h in header}:
            raise ProviderError(f"{self.name}: bad trace (header {header}); need columns {COLUMNS}")
        starts: list[datetime] = []
        self.price, self.carbon, self.share = [], [], []
        for n, row in zip((n for n, _l in numbered[1:]), csv.DictReader(line for _n, line in numbered)):
            try:
                at = datetime.fromisoformat(row["start_utc"].strip().replace("Z", "+00:00"))
                if at.tzinfo is None:
                    raise ValueError("start_utc has no UTC offset")
                starts.append(at.astimezone(timezone.utc))
                self.price.append(float(row["price_eur_per_mwh"]))
                self.carbon.append(float(row["carbon_g_per_kwh"]))
                share = (row.get("renewable_share_pct") or "").strip()
                self.share.append(float(share) if share else None)
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise ProviderError(f"{self.name}:{n}: bad trace row ({exc}); need columns {COLUMNS}") from None
        if len(starts) < 2:
            raise ProviderError(f"{self.name}: bad trace: need at least two rows (the step is their distance)")
        self.first, self.step = starts[0], starts[1] - starts[0]
        if self.step <= timedelta(0) or self.step > _DAY or _DAY % self.step:
            raise ProviderError(f"{self.name}: bad trace: a step of {self.step} (need a divisor of a day: 15 min, "
                                "1 h, ...)")
        for i, (n, _line) in enumerate(numbered[1:]):
            if starts[i] != self.first + i * self.step:
                raise ProviderError(f"{self.name}:{n}: start_utc {rfc3339(starts[i])} is off the trace's step of "
                                    f"{self.step} from {rfc3339(self.first)} (a row missing or repeated?)")
        length = len(starts) * self.step
        unit = _WEEK if length >= _WEEK else _DAY if length >= _DAY else length
        self.period_rows = (length // unit) * unit // self.step
        # Outside the trace a date takes the row at the same time of the week (day): rows counted from the last
        # whole unit before the trace, so a trace starting on Monday 00:00 replays as it always has.
        self.shift_rows = ((self.first - _MONDAY) // unit) * unit // self.step if unit in (_WEEK, _DAY) else 0
        self.end = self.first + length

    def row_at(self, when: datetime) -> int:
        """The trace's row for the step holding ``when``."""
        k = (when - self.first) // self.step
        if self.first <= when < self.end:
            return k
        return (k + self.shift_rows) % self.period_rows

    def points(self, start: datetime, end: datetime) -> list[dict[str, object]]:
        """The `gsched forecast` view of the replay: one point a step, one source, nothing estimated."""
        f = self.forecast(start, end)
        step = timedelta(seconds=f.step_s)
        return [{"start": rfc3339(f.start + i * step), "end": rfc3339(f.start + (i + 1) * step),
                 "price_per_mwh": f.price_eur_per_mwh[i], "carbon_g_per_kwh": f.carbon_g_per_kwh[i],
                 "renewable_share_pct": f.renewable_share_pct[i], "source": self.name, "estimated": False,
                 "stale": False, "realised": True} for i in range(len(f.price_eur_per_mwh))]

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        first_step = self.first + ((start - self.first) // self.step) * self.step
        steps = max(1, -((first_step - end) // self.step))
        idx = [self.row_at(first_step + k * self.step) for k in range(steps)]
        return Forecast(
            start=first_step, step_s=int(self.step.total_seconds()),
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
