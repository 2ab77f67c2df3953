"""One time budget for a replan, spent in phases that each say what they took and what they gained.

Modelled on Timefold's phases with their terminations: a phase is told a deadline (a share of the time left, never
of the whole limit, so a fast earlier phase hands its time on), reports its seconds and its gain on the objective,
and a phase that ends early (proven optimum, nothing left to try) leaves the rest to the next or ends the solve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class PhaseReport:
    name: str  # "queues", "pricing", "construction", "milp", "neighbourhoods", "polish", ...
    seconds: float
    gain: float = 0.0  # how much the phase lowered the plan's price (the objective with late penalties)
    note: str = ""  # what it did or why it stopped: "lagrangian: 98 steps", "skipped: predicted 12 s", ...

    def as_dict(self) -> dict[str, float | str | None]:
        gain = float(self.gain)
        out: dict[str, float | str | None] = {"phase": self.name, "seconds": round(self.seconds, 3),
                                              "gain": round(gain, 6) if math.isfinite(gain) else None}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Budget:
    limit_s: float
    t0: float = field(default_factory=time.monotonic)
    phases: list[PhaseReport] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.t0 + self.limit_s

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def share(self, fraction: float) -> float:
        """A deadline ``fraction`` of the time now left away."""
        return time.monotonic() + fraction * self.left()

    def start(self) -> float:
        return time.monotonic()

    def record(self, name: str, started: float, gain: float = 0.0, note: str = "") -> PhaseReport:
        report = PhaseReport(name, time.monotonic() - started, gain, note)
        self.phases.append(report)
        return report
