"""What a run hands back is hostile input: the job writes its metrics line, and result.json sits in a
directory a crashed or full disk may have left half-written. Everything is parsed into typed, bounded
values here; whatever fails is dropped and the reason kept, so one job's bad record can never raise
out of the daemon's tick, its reconcile or a requeue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ENERGY_SOURCES = ("nvml", "nvml-power", "rapl", "estimate", "model")
MAX_DURATION_S = 400 * 86400.0
MAX_ENERGY_J = 1e13  # 2.8 GWh: a year of 300 GPUs at 1 kW each
MAX_STEPS = 10**12
MAX_STEPS_PER_S = 1e9
MAX_EXTRA_KEYS = 32
MAX_TEXT = 200
MAX_REASON = 500


def _finite(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and low <= number <= high else None


def clean_text(value: Any, limit: int = MAX_REASON) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _scalar(value: Any) -> Any:
    """A JSON scalar kept as it is, or None when it is not one we keep."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(float(value)) and abs(value) < 1e300 else None
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return value
    return None


@dataclass(frozen=True)
class Metrics:
    """A workload's ``gsched-metrics`` line, validated. ``data`` is what gets stored and shown."""

    steps: int | None
    steps_per_s: float | None
    loss: float | None
    preempted: bool | None
    data: dict[str, Any]
    ignored: tuple[str, ...]


def parse_metrics(raw: Any, max_steps: int | None = None) -> Metrics:
    ignored: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return Metrics(None, None, None, None, {}, (f"metrics: not a JSON object ({type(raw).__name__})",))
    data: dict[str, Any] = {}
    step_cap = MAX_STEPS if max_steps is None else max_steps

    def take(key: str, value: Any, what: str) -> Any:
        if key not in raw:
            return None
        if value is None:
            ignored.append(f"metrics.{key}: {what}, got {str(raw[key])[:60]!r}")
            return None
        data[key] = value
        return value

    steps_raw = raw.get("steps")
    steps = take("steps", int(steps_raw) if isinstance(steps_raw, int) and not isinstance(steps_raw, bool)
                 and 0 <= steps_raw <= step_cap else None, f"must be a whole number in 0..{step_cap}")
    steps_per_s = take("steps_per_s", _finite(raw.get("steps_per_s"), 0.0, MAX_STEPS_PER_S),
                       f"must be a number in [0, {MAX_STEPS_PER_S:g}]")
    loss = take("loss", _finite(raw.get("loss"), -1e30, 1e30), "must be a finite number")
    preempted = take("preempted", raw["preempted"] if isinstance(raw.get("preempted"), bool) else None,
                     "must be true or false")
    for key, value in raw.items():
        if key in ("steps", "steps_per_s", "loss", "preempted"):
            continue
        if len(data) >= MAX_EXTRA_KEYS or not isinstance(key, str) or len(key) > 64:
            ignored.append(f"metrics: too many or too long keys, dropped {str(key)[:40]!r}")
            continue
        if isinstance(value, dict):  # one level of detail (semi_structured), scalars only
            kept = {str(k)[:64]: _scalar(v) for k, v in list(value.items())[:MAX_EXTRA_KEYS]}
            data[key] = kept
        elif _scalar(value) is not None or value is None:
            data[key] = value
        else:
            ignored.append(f"metrics.{key}: not a number, boolean or short string")
    return Metrics(steps, steps_per_s, loss, preempted, data, tuple(ignored))


@dataclass(frozen=True)
class RunResult:
    """A runner's result.json, validated."""

    exit_code: int | None
    signal: str | None
    error: str | None
    timed_out: bool
    duration_s: float
    energy_j: float
    energy_source: str
    metrics: Metrics
    ignored: tuple[str, ...]


def parse_result(raw: Any, max_steps: int | None = None) -> RunResult:
    if not isinstance(raw, dict):
        return RunResult(None, None, "runner result unreadable", False, 0.0, 0.0, "estimate", parse_metrics({}),
                         ("result: not a JSON object",))
    ignored: list[str] = []

    def number(key: str, low: float, high: float) -> float:
        value = _finite(raw.get(key), low, high)
        if value is None:
            if key in raw:
                ignored.append(f"result.{key}: must be a number in [{low:g}, {high:g}]")
            return 0.0
        return value

    code = raw.get("exit_code")
    exit_code = code if isinstance(code, int) and not isinstance(code, bool) and -255 <= code <= 255 else None
    if code is not None and exit_code is None:
        ignored.append("result.exit_code: must be a whole number in -255..255")
    source = raw.get("energy_source")
    if source not in ENERGY_SOURCES:
        if source is not None:
            ignored.append(f"result.energy_source: must be one of {', '.join(ENERGY_SOURCES)}")
        source = "estimate"
    signal = clean_text(raw.get("signal"), 32)
    metrics = parse_metrics(raw.get("metrics"), max_steps)
    return RunResult(exit_code=exit_code, signal=signal, error=clean_text(raw.get("error")),
                     timed_out=raw.get("timed_out") is True, duration_s=number("duration_s", 0.0, MAX_DURATION_S),
                     energy_j=number("energy_j", 0.0, MAX_ENERGY_J), energy_source=source, metrics=metrics,
                     ignored=tuple(ignored) + metrics.ignored)
