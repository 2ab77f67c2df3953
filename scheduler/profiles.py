"""A job's modes (device count, precision, pruning, power cap) and what they cost, learnt from its owner's runs.

The planner plans from the default scaling model until a run measures a mode; that measurement (a profile) then
replaces the model for that owner's jobs of the same workload. While the devices idle, the daemon may measure a
mode nobody has measured yet (``Profiles.calibration``); `gsched profile` measures them on request.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from scheduler.jobfile import JobSpec, pruning_label
from scheduler.models import Job, Profile
from scheduler.planner.estimate import JobModes, job_modes

if TYPE_CHECKING:  # `gsched profile` imports this module: keep the CLI's start light
    from scheduler.config import Config
    from scheduler.devices import Device
    from scheduler.store import Store

log = logging.getLogger("gsched.profiles")

PROFILE_SPAN = 100.0
MAX_WATTS_PER_DEVICE = 2000.0


def mode_key(mode: dict[str, Any]) -> tuple[Any, ...]:
    """A mode as the job file chose it; not where its numbers came from (a default, then a profile)."""
    return (mode.get("gpus"), mode.get("precision"), str(mode.get("pruning")), mode.get("power_limit_w"),
            bool(mode.get("compile")), int(mode.get("nodes") or 1))


def calibration_modes(spec: JobSpec, devices: int) -> Iterator[tuple[Any, ...]]:
    """Each (device count, precision, pruning) a job file allows on this many devices: what gets measured."""
    top = min(spec.gpus_max, devices)
    opts = spec.optimisations
    return itertools.product(range(spec.gpus_min, top + 1), opts.precision, opts.pruning)


def mean_watts(energy_j: float, duration_s: float) -> float | None:
    return energy_j / duration_s if duration_s > 0 else None


def plausible_profile(profile: Profile, default_steps_per_s: float | None, nominal_w: float) -> str | None:
    """Why a measured mode is not believable (None if it is): its speed must lie within PROFILE_SPAN of the
    default model's and its power be positive and below MAX_WATTS_PER_DEVICE per device."""
    if not math.isfinite(profile.steps_per_s) or not math.isfinite(profile.watts):
        return "not a finite measurement"
    if default_steps_per_s:
        expected = default_steps_per_s * profile.gpus ** 0.9
        if not expected / PROFILE_SPAN <= profile.steps_per_s <= expected * PROFILE_SPAN:
            return (f"steps_per_s {profile.steps_per_s:.3g} is more than {PROFILE_SPAN:g}x away from the default "
                    f"model's {expected:.3g} on {profile.gpus} device(s)")
    top_w = max(4 * nominal_w, MAX_WATTS_PER_DEVICE) * profile.gpus  # RAPL counts a whole CPU package
    if not 0 < profile.watts <= top_w:
        return f"{profile.watts:.3g} W is outside (0, {top_w:g}] W for {profile.gpus} device(s)"
    return None


class Profiles:
    def __init__(self, config: "Config", store: "Store", devices: "list[Device]", steps_per_s: dict[str, float],
                 clock_speed: float) -> None:
        self.config, self.store, self.devices = config, store, devices
        self.steps_per_s, self.clock_speed = steps_per_s, clock_speed
        self.learning = True

    @property
    def kind(self) -> str:
        return self.devices[0].kind if self.devices else "cpu"

    def nominal_w(self) -> float:
        return self.config.planner.gpu_power_w if self.kind == "gpu" else self.config.planner.cpu_device_power_w

    def modes_of(self, spec: JobSpec, owner_uid: int, cache: dict[tuple[str, int], list[Profile]] | None = None
                 ) -> JobModes:
        found: list[Profile] = []
        if spec.profile_key:
            cache_key = (spec.profile_key, owner_uid)
            if cache is not None and cache_key in cache:
                found = cache[cache_key]
            else:
                default_rate = self.steps_per_s.get(spec.workload or "")
                found = [p for p in self.store.profiles(spec.profile_key, self.kind, owner_uid)
                         if plausible_profile(p, default_rate, self.nominal_w()) is None]
                if cache is not None:
                    cache[cache_key] = found
        return job_modes(spec, len(self.devices), self.kind, self.nominal_w(),
                         self.steps_per_s.get(spec.workload) if spec.workload else None, self.clock_speed, found)

    def learn(self, job: Job, spec: JobSpec, steps_per_s: float | None, duration_s: float, energy_j: float,
              source: str, at: datetime) -> None:
        """A workload's run measured its mode: keep it as its owner's profile for planning their next runs.
        Profiles are per owner, so no user's measurements change another user's plans; and a measurement far
        outside the default model (plausible_profile) is not kept at all, so no run makes its owner's own jobs
        unplannable either."""
        if not self.learning or not spec.profile_key or not steps_per_s or duration_s < 1 or not job.plan_json or not job.gpus:
            return
        mode = json.loads(job.plan_json)["mode"]
        if int(mode.get("nodes") or 1) > 1:
            return  # profiles are one node's speed; a run across nodes also measures the network between them
        profile = Profile(
            key=spec.profile_key, owner_uid=job.owner_uid, device_kind=self.kind, gpus=job.gpus,
            precision=mode["precision"], pruning=pruning_label(mode.get("pruning") or 0.0),
            compile=bool(mode.get("compile")), power_limit_w=int(mode.get("power_limit_w") or 0),
            steps_per_s=steps_per_s, watts=mean_watts(energy_j, duration_s) or 0.0, energy_source=source,
            measured_at=at)
        why = plausible_profile(profile, self.steps_per_s.get(spec.workload or ""), self.nominal_w())
        if why:
            log.warning("job %s: profile not recorded: %s", job.id, why)
            self.store.note(job.id or 0, at=at, reason=f"profile not recorded: {why}")
            return
        self.store.record_profile(profile)

    def power_kw(self, job: Job, spec: JobSpec, mode: dict[str, Any]) -> float | None:
        """The power the planner gives a job's mode (by mode_key), or None where the model no longer has it."""
        jm = self.modes_of(spec, job.owner_uid)
        return next((m.power_kw for d, m in zip(jm.described, jm.modes) if mode_key(d) == mode_key(mode)), None)

    def rate_ratios(self, job: Job, spec: JobSpec) -> tuple[dict[Any, float], int | None]:
        """Each mode (by mode_key) -> its speed relative to the job's requested mode, in the planner's model; and
        the requested mode's device count."""
        try:
            jm = self.modes_of(spec, job.owner_uid)
        except Exception:  # an old record the model cannot read: the runs' own durations stand
            return {}, None
        requested = jm.modes[jm.requested]
        return ({mode_key(d): m.rate / requested.rate for d, m in zip(jm.described, jm.modes) if requested.rate > 0},
                requested.gpus)

    def unmeasured(self, recent: list[tuple[Job, JobSpec]], skip: set[tuple[str, int, str, str]]
                   ) -> tuple[Job, JobSpec, dict[str, Any], int] | None:
        """Idle calibration: of recent workload jobs (newest first), the first mode nobody has measured yet, with the
        steps a calibration_s run of it takes. Commands are calibrated on request only (gsched profile): an idle
        daemon runs only gsched's own code."""
        seen: set[str] = set()
        for job, spec in recent:
            if (spec.workload is None or spec.profile_key is None or spec.profile_key in seen
                    or job.name.startswith("calibrate-")):
                continue
            seen.add(spec.profile_key)
            for mode in self.modes_of(spec, job.owner_uid).described:
                choice = (spec.profile_key, mode["gpus"], mode["precision"], pruning_label(mode["pruning"]))
                if mode["source"] == "profile" or mode["power_limit_w"] is not None or mode.get("nodes", 1) > 1 \
                        or choice in skip:
                    continue
                skip.add(choice)  # once per daemon run, whether or not it measures
                steps = max(10, math.ceil(self.steps_per_s.get(spec.workload or "", 1.0) * mode["gpus"]
                                          * self.config.daemon.calibration_s))
                return job, spec, mode, steps
        return None
