"""Durations and RFC 3339 times. Every datetime in gsched is timezone-aware UTC."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|min|s)")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}


def parse_duration_s(text: str) -> float:
    """'12h', '1h30m', '90s', '2d' -> seconds. Raises ValueError naming what it could not read."""
    cleaned = text.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(cleaned):
        if cleaned[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos == 0 or cleaned[pos:].strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. '90s', '45m', '12h', '1h30m', '2d')")
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset -> aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. '2026-01-02T15:00:00Z')")
    return value.astimezone(timezone.utc)


def to_utc(value: datetime) -> datetime:
    """TOML and SQLite hand back naive datetimes; gsched stores UTC, so naive means UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return to_utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def floor_to(value: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return epoch + ((value - epoch) // step) * step
