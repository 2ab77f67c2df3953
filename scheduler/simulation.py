"""`gsched simulate`: a cluster's history replayed through the daemon's own code on a simulated clock.

The daemon (daemon.py: its ticks, replans, hysteresis, elastic segments, priority preemption, the config) runs
unchanged against the simulated executor (executor/sim.py) and a real SQLite store in a scratch directory. Each
job is submitted at its recorded submit time and sees only the forecast as it would have been known (perfect,
persistence or noisy); ticks happen at arrivals, run ends, the daemon's own improving replans and the slot
boundaries where something is due (Daemon.next_look), all on whole minutes. Everything is priced afterwards on the
realised signals, by the planner's own evaluator:

- the executed schedule, as a plan on a 1-minute grid (every run's minutes, in its mode);
- run-now (FIFO, each job in its requested mode as soon as GPUs allow) and the hindsight plan (`gsched plan` on
  every job known in advance, at a stated time limit), on the daemon's slot grid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from scheduler.config import Config, Paths
from scheduler.devices import Device
from scheduler.errors import InputError
from scheduler.executor.sim import SimExecutor
from scheduler.forecasts.base import Forecast, Provider
from scheduler.history import History
from scheduler.jobfile import parse_job
from scheduler.models import Job, JobState
from scheduler.outcomes import QUEUED, spec_of
from scheduler.planner.baselines import run_now
from scheduler.planner.problem import Evaluation, PJob, Plan, Problem, Segment, evaluate, plan_to_json, \
    problem_to_json
from scheduler.planner.solve import solve
from scheduler.profiles import mode_key
from scheduler.report import saving_pct
from scheduler.store import Store
from scheduler.timeutil import floor_to, rfc3339

log = logging.getLogger("gsched.simulate")
MINUTE = timedelta(minutes=1)
FORECAST_MODES = ("perfect", "persistence", "noise")


class SimClock:
    """The daemon's clock in a simulation: it reads what the simulation set."""

    speed = 1.0

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def to_wall(self, when: datetime) -> datetime:
        return when

    def from_wall(self, when: datetime) -> datetime:
        return when


@dataclass(frozen=True)
class ForecastMode:
    kind: str  # perfect | persistence | noise
    error_pct: float = 0.0
    seed: int = 0

    @staticmethod
    def parse(text: str) -> ForecastMode:
        """'perfect', 'persistence', or 'noise:PCT[:SEED]' (seeded relative error of PCT percent, e.g. noise:11)."""
        parts = text.strip().split(":")
        if parts[0] in ("perfect", "persistence") and len(parts) == 1:
            return ForecastMode(parts[0])
        if parts[0] == "noise" and len(parts) in (2, 3):
            try:
                pct, seed = float(parts[1]), int(parts[2]) if len(parts) == 3 else 0
            except ValueError:
                pct, seed = -1.0, 0
            if 0 <= pct <= 100:
                return ForecastMode("noise", pct, seed)
        raise InputError(f"--forecast: {text!r} is not perfect, persistence or noise:PCT[:SEED] (PCT in 0..100)")

    @property
    def label(self) -> str:
        return f"noise:{self.error_pct:g}:{self.seed}" if self.kind == "noise" else self.kind


class KnownForecast:
    """The forecast as it was known at the simulated time: the realised signal up to the current step, and after
    it the realised one (perfect), the values of 24 h before (persistence), or the realised ones with a seeded
    relative error per step that stays the same from one replan to the next (noise)."""

    def __init__(self, realised: Provider, mode: ForecastMode, clock: SimClock) -> None:
        self.realised, self.mode, self.clock = realised, mode, clock
        self.name = f"{realised.name} ({mode.label})"
        # over every future step handed to a replan: sum |forecast - realised| and sum |realised|, price and carbon
        self.error_sums = [0.0, 0.0, 0.0, 0.0]

    def error_pct(self) -> dict[str, float | None]:
        """The weighted mean absolute error of the forecasts handed out, in % of the realised values."""
        price_err, price, carbon_err, carbon = self.error_sums
        return {"price_error_pct": round(100 * price_err / price, 2) if price else None,
                "carbon_error_pct": round(100 * carbon_err / carbon, 2) if carbon else None}

    def forecast(self, start: datetime, end: datetime) -> Forecast:
        f = self.realised.forecast(start, end)
        if self.mode.kind == "perfect":
            return f
        known = self.clock.now()
        price, carbon = list(f.price_eur_per_mwh), list(f.carbon_g_per_kwh)
        before = self.realised.forecast(f.start - timedelta(days=1), f.end - timedelta(days=1)) \
            if self.mode.kind == "persistence" else None
        for i in range(len(price)):
            step = f.start + timedelta(seconds=i * f.step_s)
            if step <= known:
                continue  # the current and past steps are measured
            if before is not None:
                j = before.index_at(step - timedelta(days=1))
                price[i], carbon[i] = before.price_eur_per_mwh[j], before.carbon_g_per_kwh[j]
            else:
                rnd = random.Random(f"{self.mode.seed}:{int(step.timestamp())}")
                sd = self.mode.error_pct / 100 * math.sqrt(math.pi / 2)  # mean absolute error = error_pct
                price[i] *= max(0.0, 1 + rnd.gauss(0, sd))
                carbon[i] *= max(0.0, 1 + rnd.gauss(0, sd))
            sums = self.error_sums
            sums[0] += abs(price[i] - f.price_eur_per_mwh[i])
            sums[1] += abs(f.price_eur_per_mwh[i])
            sums[2] += abs(carbon[i] - f.carbon_g_per_kwh[i])
            sums[3] += abs(f.carbon_g_per_kwh[i])
        return dataclasses.replace(f, price_eur_per_mwh=tuple(price), carbon_g_per_kwh=tuple(carbon),
                                   source=self.name, estimated=True)


@dataclass
class Capacity:
    """GPUs in the pool over time: a constant, or steps from a CSV of start_utc,gpus rows."""

    steps: list[tuple[datetime, int]]

    @staticmethod
    def constant(gpus: int) -> Capacity:
        return Capacity([(datetime(1970, 1, 1, tzinfo=timezone.utc), gpus)])

    @staticmethod
    def from_file(path: Path) -> Capacity:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError(f"--capacity: cannot read {path} ({exc})") from None
        steps, errors = [], []
        body = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
        if not body or [c.strip() for c in body[0][1].split(",")] != ["start_utc", "gpus"]:
            raise InputError(f"--capacity: {path}: the first line must be the header start_utc,gpus")
        for n, line in body[1:]:
            cells = [c.strip() for c in line.split(",")]
            try:
                at = datetime.fromisoformat(cells[0].replace("Z", "+00:00"))
                if at.tzinfo is None:
                    raise ValueError("no UTC offset")
                gpus = int(cells[1])
                if gpus < 0 or len(cells) != 2:
                    raise ValueError("gpus must be >= 0, two cells")
                steps.append((at.astimezone(timezone.utc), gpus))
            except (ValueError, IndexError) as exc:
                errors.append(f"{path}:{n}: {exc}")
        if errors:
            raise InputError("\n".join(errors))
        if not steps:
            raise InputError(f"--capacity: {path}: no rows")
        return Capacity(sorted(steps))

    def at(self, when: datetime) -> int:
        value = self.steps[0][1]
        for start, gpus in self.steps:
            if start > when:
                break
            value = gpus
        return value

    @property
    def most(self) -> int:
        return max(g for _s, g in self.steps)


@dataclass
class Simulated:
    report: dict[str, Any]
    problem: Problem  # the history on a 1-minute grid, with the realised signals
    plan: Plan  # what ran, on that grid
    hindsight_problem: Problem
    series: dict[str, tuple[list[datetime], list[float], list[float]]]  # name -> times, cum. EUR, cum. kgCO2


def _job_text(name: str, run_s: float, gpus: int, gpus_max: int | None, preemptible: bool, deadline: datetime,
              after: list[int]) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "job"
    # afterany: in the history it ran after them, whatever the kind; a replay never fails a job anyway
    links = f'after = "afterany:{":".join(map(str, after))}"\n' if after else ""
    return (f'name = "{safe}"\ncommand = ["true"]\nduration = "{run_s:.3f}s"\nsteps = {max(1, round(run_s))}\n'
            f"gpus = {{ min = {gpus}, max = {max(gpus, gpus_max or gpus)} }}\n"
            f"preemptible = {str(preemptible).lower()}\ndeadline = \"{rfc3339(deadline)}\"\n{links}")


class Replay:
    """The daemon's code on a simulated clock with the simulated executor, over a real SQLite store in ``home``:
    submit jobs at their times and step from one event to the next (arrivals, run ends, slot boundaries,
    checkpoints, the daemon's improving replans), all on whole minutes."""

    def __init__(self, config: Config, home: Path, realised: Provider, forecast: ForecastMode, capacity: Capacity,
                 start: datetime) -> None:
        from scheduler.daemon import Daemon

        self.config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon,
                                                                             calibrate_when_idle=False))
        settings = self.config.planner
        self.home, self.capacity = home, capacity
        self.store = Store(home / "gsched.db")
        self.clock = SimClock(start)
        devices = [Device(i, f"sim-{i}", "simulated GPU", "gpu", None, settings.gpu_power_w)
                   for i in range(capacity.most)]
        self.executor = SimExecutor(devices, self._physics, capacity.at, settings.resume_overhead_minutes,
                                    home / "logs")
        self.daemon = Daemon(self.config, Paths(home, home / "sock"), self.store, self.clock, self.executor,
                             KnownForecast(realised, forecast, self.clock), {})
        self.ticks = 0

    def _physics(self, job: Job, spec: Any, mode: dict[str, Any]) -> tuple[float, float, float]:
        jm = self.daemon.profiles.modes_of(spec, job.owner_uid)
        i = [mode_key(d) for d in jm.described].index(mode_key(mode))
        return jm.work, jm.modes[i].rate, jm.modes[i].power_kw

    def submit(self, text: str, user: str, uid: int, source: str, urgent: bool = False) -> int:
        spec = parse_job(text, source=source, base_dir=self.home, now=self.clock.now())
        added = self.store.add_job(spec, owner_uid=uid, owner_name=user, urgent=urgent, now=self.clock.now())
        self.daemon.wake()
        assert added.id is not None
        return added.id

    def tick(self, at: datetime) -> None:
        self.clock.at = at
        self.daemon.tick()
        self.ticks += 1

    def active(self) -> list[Job]:
        return self.store.jobs([*QUEUED, JobState.RUNNING])

    def next_event(self, arrival: datetime | None = None) -> datetime:
        """The next time the daemon must look: a slot boundary where something is due, ``arrival``, a run's end, a
        checkpoint asked for, or the next replan while replans improve."""
        t = self.clock.now()
        nxt = [_ceil_minute(self.daemon.next_look(t))]
        if arrival is not None:
            nxt.append(arrival)
        end = self.executor.next_end()
        if end is not None:
            nxt.append(_ceil_minute(end))
        active = self.active()
        if any(j.preempt_requested or j.cancel_requested for j in active):
            nxt.append(t + MINUTE)  # a checkpoint asked for: the run ends at the next tick
        if self.daemon.planning.improving and self.daemon._may_improve(t, [j for j in active if j.state in QUEUED]):
            nxt.append(_ceil_minute(t + timedelta(seconds=self.config.planner.time_limit_s
                                                  + self.config.daemon.tick_s)))
        return max(t + MINUTE, min(nxt))

    def run_until(self, done: Callable[[], bool], until: datetime) -> None:
        """Tick now (a job may have been submitted since the last tick), then from event to event."""
        self.tick(self.clock.now())
        while not done() and self.clock.now() < until:
            self.tick(self.next_event())


@dataclass
class Replayed:
    """What one replay left: when it ended, each job as the planner saw it, the runs, what did not run in full."""
    end_at: datetime
    pjobs: dict[int, Any]
    executor: SimExecutor
    ids: dict[int, Any]  # store id -> submission
    unfinished: dict[str, str]
    replans: int
    ticks: int
    seconds: float
    forecast_error: dict[str, float | None]
    after: dict[int, tuple[int, ...]]  # store id -> its predecessors' store ids


def simulate(history: History, config: Config, realised: Provider, forecast: ForecastMode, capacity: Capacity,
             hindsight_limit_s: float, progress: Callable[[str], None] | None = None) -> Simulated:
    """Replay ``history`` through the daemon's code; price what ran, run-now and hindsight on ``realised``. With a
    forecast other than perfect, the history is replayed once more on the perfect forecast: the difference is what
    the forecast's error cost (a saving is then told from forecast luck)."""
    too_wide = [j for j in history.jobs if j.gpus > capacity.most]
    if too_wide:
        raise InputError("\n".join(f"job {j.id}: gpus: {j.gpus} exceeds the simulated pool of {capacity.most} "
                                   "(--gpus or --capacity)" for j in too_wide[:50]))
    replayed = replay(history, config, realised, forecast, capacity, progress)
    perfect = None
    if forecast.kind != "perfect":
        if progress is not None:
            progress("replaying once more on the perfect forecast, for what the forecast's error cost")
        perfect = replay(history, config, realised, ForecastMode("perfect"), capacity, progress)
    return _priced(history, config, realised, forecast, capacity, replayed, perfect, hindsight_limit_s)


def replay(history: History, config: Config, realised: Provider, forecast: ForecastMode, capacity: Capacity,
           progress: Callable[[str], None] | None = None) -> Replayed:
    slot = timedelta(minutes=config.planner.slot_minutes)
    t0 = floor_to(history.jobs[0].submit, slot)
    with tempfile.TemporaryDirectory(prefix="gsched-sim-") as scratch:
        run = Replay(config, Path(scratch), realised, forecast, capacity, t0)
        users = {name: 20000 + k for k, name in enumerate(sorted({j.user for j in history.jobs}))}
        arrivals = [(_ceil_minute(j.submit), j) for j in history.jobs]
        ids: dict[int, Any] = {}  # store id -> submission
        stored: dict[str, int] = {}  # history id -> store id (load_history puts predecessors first)
        k, t = 0, t0
        last_deadline = max(j.deadline for j in history.jobs if j.deadline is not None)
        total_h = sum(j.run_s * j.gpus for j in history.jobs) / 3600 / max(1, capacity.most)
        give_up = max(last_deadline, arrivals[-1][0]) + timedelta(hours=config.planner.horizon_hours + 48 + total_h)
        started_wall, last_said = time.monotonic(), 0.0
        while True:
            run.clock.at = t
            while k < len(arrivals) and arrivals[k][0] <= t:
                job = arrivals[k][1]
                assert job.deadline is not None
                text = _job_text(job.name, job.run_s, job.gpus, job.gpus_max, job.preemptible, job.deadline,
                                 [stored[other] for other in job.after])
                stored[job.id] = run.submit(text, job.user, users[job.user], f"history job {job.id}")
                ids[stored[job.id]] = job
                k += 1
            run.tick(t)
            active = run.active()
            if progress is not None and time.monotonic() - last_said > 2.0:
                last_said = time.monotonic()
                progress(f"simulated to {rfc3339(t)}: {k}/{len(arrivals)} submitted, {len(active)} queued or running, "
                         f"{run.daemon.planning.replans} replans, {time.monotonic() - started_wall:.0f} s")
            if k == len(arrivals) and not active:
                break
            if t > give_up:
                log.warning("%d job(s) still queued at %s: the simulation stops there", len(active), rfc3339(t))
                break
            t = run.next_event(arrivals[k][0] if k < len(arrivals) else None)
        end_at = max([t, *(r.end for r in run.executor.runs)])
        jobs_by_id = {job.id: job for job in run.store.jobs()}
        unfinished = {str(i): f"{ids[i].id}: {jobs_by_id[i].state.value}: "
                              f"{jobs_by_id[i].plan_reason or jobs_by_id[i].reason or 'no reason recorded'}"
                      for i in ids if jobs_by_id[i].state != JobState.COMPLETED}
        pjobs = {i: _pjob(run.daemon, jobs_by_id[i]) for i in ids}
        known = run.daemon.provider
        error = known.error_pct() if isinstance(known, KnownForecast) else {}
        after = {i: tuple(stored[other] for other in ids[i].after) for i in ids}
        return Replayed(end_at, pjobs, run.executor, ids, unfinished, run.daemon.planning.replans, run.ticks,
                        time.monotonic() - started_wall, error, after)


def _ceil_minute(when: datetime) -> datetime:
    floor = floor_to(when, MINUTE)
    return floor if floor == when else floor + MINUTE


def _pjob(daemon: Any, job: Job) -> tuple[float, tuple[Any, ...], list[tuple[Any, ...]], int, bool,
                                                             float]:
    """The job as the planner saw it at submission: (work, modes, their mode keys, requested, preemptible, overhead)."""
    spec = spec_of(job)
    jm = daemon.profiles.modes_of(spec, job.owner_uid)
    settings = daemon.config.planner
    elastic = settings.elastic and spec.preemptible
    return (jm.work, tuple(jm.modes), [mode_key(d) for d in jm.described], jm.requested, elastic,
            spec.overhead_minutes(settings.resume_overhead_minutes) if elastic else 0.0)


def _executed(r: Replayed, t0: datetime, minutes: int, realised: Provider, capacity: Capacity, config: Config
              ) -> tuple[Problem, Plan, Evaluation]:
    """What ran in a replay, as a plan on a 1-minute grid, and its problem, priced."""
    settings = config.planner
    fine = _problem(t0, 1, minutes, realised, capacity, settings.carbon_price_eur_per_t, settings.objective,
                    r.pjobs, r.ids, r.after, lambda when: math.ceil((when - t0) / MINUTE - 1e-9),
                    lambda when: math.floor((when - t0) / MINUTE + 1e-9))
    plan: Plan = {}
    for run in r.executor.runs:
        keys = r.pjobs[run.job_id][2]
        a = round((run.start - t0) / MINUTE)
        b = max(a + 1, math.ceil((run.end - t0) / MINUTE - 1e-9))
        plan.setdefault(str(run.job_id), []).append(Segment(a, b, keys.index(mode_key(run.mode))))
    return fine, plan, evaluate(fine, plan)


def _priced(history: History, config: Config, realised: Provider, forecast: ForecastMode, capacity: Capacity,
            replayed: Replayed, perfect: Replayed | None, hindsight_limit_s: float) -> Simulated:
    settings = config.planner
    slot = timedelta(minutes=settings.slot_minutes)
    t0 = floor_to(history.jobs[0].submit, slot)
    pjobs, ids, unfinished = replayed.pjobs, replayed.ids, dict(replayed.unfinished)
    end_at = max(replayed.end_at, perfect.end_at if perfect else replayed.end_at)
    latest = max([end_at, *(s.deadline for s in history.jobs if s.deadline)])
    minutes = math.ceil((latest - t0) / MINUTE) + 60
    fine, plan, executed = _executed(replayed, t0, minutes, realised, capacity, config)
    # run-now and hindsight on the daemon's own slots, with room after the last deadline for late jobs
    slots = math.ceil((latest - t0) / slot) + 2 * 24 * 60 // settings.slot_minutes
    while True:  # room for run-now to run every job in full: a backlog can outlast the last deadline by days
        coarse = _problem(t0, settings.slot_minutes, slots, realised, capacity, settings.carbon_price_eur_per_t,
                          settings.objective, pjobs, ids, replayed.after,
                          lambda when: math.ceil((when - t0) / slot - 1e-9),
                          lambda when: math.floor((when - t0) / slot + 1e-9))
        fifo_plan = run_now(coarse)
        if len(fifo_plan) == len(coarse.jobs) or slots > 365 * 24 * 60 // settings.slot_minutes:
            break
        slots *= 2
    fifo = evaluate(coarse, fifo_plan)
    hindsight_plan = solve(coarse, hindsight_limit_s).plan
    hindsight = evaluate(coarse, hindsight_plan)
    # Savings only over the same jobs run in full: a job that did not run (or not all of its work) in any of the
    # three leaves no saving to report (a 60-hour job that never ran made a replay "save" 99%).
    incomplete = {name: sorted((job.id for job in problem.jobs if not (e.jobs.get(job.id) and e.jobs[job.id].finished)),
                               key=int)
                  for name, problem, e in (("gsched", fine, executed), ("run_now", coarse, fifo),
                                           ("hindsight", coarse, hindsight))}
    users = {str(i): ids[i].user for i in ids}
    report: dict[str, Any] = {
        "jobs": len(ids), "after_links": sum(len(a) for a in replayed.after.values()),
        "history_format": history.format, "skipped": history.skipped,
        "period": {"start": rfc3339(t0), "end": rfc3339(end_at)}, "gpus": capacity.most,
        "forecast": forecast.label, "signals": realised.name, "objective": settings.objective,
        "planner_time_limit_s": settings.time_limit_s, "replans": replayed.replans, "ticks": replayed.ticks,
        "simulation_s": round(replayed.seconds, 1),
        "gsched": _summary(fine, plan, executed, users),
        "run_now": _summary(coarse, fifo_plan, fifo, users),
        "hindsight": {**_summary(coarse, hindsight_plan, hindsight, users), "time_limit_s": hindsight_limit_s},
        "unfinished": unfinished,
        "errors": [e for e in executed.errors if "outside its window" not in e],
    }
    for name, missing in incomplete.items():
        report[name]["not_run_in_full"] = missing[:100]
    for job_id in incomplete["gsched"]:
        unfinished.setdefault(job_id, f"{ids[int(job_id)].id}: did not run all of its work")
    g, r = report["gsched"], report["run_now"]
    report["complete"] = not unfinished and not incomplete["gsched"] and not incomplete["run_now"]
    report["saved_vs_run_now"] = {
        "cost_eur": r["cost_eur"] - g["cost_eur"], "cost_pct": saving_pct(r["cost_eur"], g["cost_eur"]),
        "co2_kg": r["co2_kg"] - g["co2_kg"], "co2_pct": saving_pct(r["co2_kg"], g["co2_kg"])
    } if report["complete"] else None
    for name in ("run_now", "hindsight"):
        report[name]["complete"] = not incomplete[name]
    report["valid"] = not report["errors"] and report["complete"]
    report["forecast_error"] = _forecast_error(forecast, replayed, perfect, report["gsched"], t0, minutes, realised,
                                               capacity, config)
    series = {"run-now": _cumulative(coarse, fifo), "gsched": _cumulative(fine, executed),
              "hindsight": _cumulative(coarse, hindsight)}
    return Simulated(report, fine, plan, coarse, series)


def _forecast_error(forecast: ForecastMode, replayed: Replayed, perfect: Replayed | None, ran: dict[str, Any],
                    t0: datetime, minutes: int, realised: Provider, capacity: Capacity, config: Config
                    ) -> dict[str, Any]:
    """The forecast's error (weighted mean absolute error over every future step handed to a replan) and what it
    cost: what ran on it against the same history replayed on the perfect forecast, both on the realised
    signals. A negative cost is forecast luck, not skill."""
    out: dict[str, Any] = {"forecast": forecast.label, "price_error_pct": 0.0, "carbon_error_pct": 0.0,
                           "perfect_cost_eur": ran["cost_eur"], "perfect_co2_kg": ran["co2_kg"], "cost_eur": 0.0,
                           "cost_pct": 0.0, "co2_kg": 0.0}
    if perfect is None:
        return out
    out.update(replayed.forecast_error)
    fine, plan, executed = _executed(perfect, t0, minutes, realised, capacity, config)
    done = all(o.finished for o in executed.jobs.values()) and not perfect.unfinished
    if not done or replayed.unfinished:
        out.update(perfect_cost_eur=None, perfect_co2_kg=None, cost_eur=None, cost_pct=None, co2_kg=None)
        return out
    out.update(perfect_cost_eur=executed.cost_eur, perfect_co2_kg=executed.co2_g / 1000,
               cost_eur=ran["cost_eur"] - executed.cost_eur,
               cost_pct=None if (pct := saving_pct(executed.cost_eur, ran["cost_eur"])) is None else -pct,
               co2_kg=ran["co2_kg"] - executed.co2_g / 1000)
    return out


def _problem(t0: datetime, slot_minutes: int, slots: int, realised: Provider, capacity: Capacity,
             carbon_price: float, objective: str, pjobs: dict[int, Any], ids: dict[int, Any],
             after: dict[int, tuple[int, ...]], release: Callable[[datetime], int], due: Callable[[datetime], int]
             ) -> Problem:
    step = timedelta(minutes=slot_minutes)
    price, carbon = realised.forecast(t0, t0 + slots * step).on_grid(t0, slot_minutes * 60, slots)
    jobs = []
    for i, (work, modes, _keys, requested, preemptible, overhead) in sorted(pjobs.items()):
        submitted = ids[i]
        jobs.append(PJob(str(i), min(slots - 1, release(submitted.submit)),
                         max(1, min(slots, due(submitted.deadline))), work, modes, requested,
                         preemptible=preemptible, resume_overhead_minutes=overhead,
                         after=tuple(str(p) for p in after.get(i, ()))))
    free = tuple(capacity.at(t0 + k * step) for k in range(slots))
    return Problem(t0, slot_minutes, capacity.most, carbon_price, tuple(price), tuple(carbon), tuple(jobs), objective,
                   free)


def _summary(problem: Problem, plan: Plan, e: Evaluation, users: dict[str, str]) -> dict[str, Any]:
    """Cost, energy, CO2, lateness, waits and utilisation of a plan, in all and per user."""
    late_ids, late_h, waits = [], 0.0, {}
    for job in problem.jobs:
        done = e.jobs.get(job.id)
        due_h = job.deadline_slot * problem.slot_h
        if done is None or not done.finished or done.finish_h is None:
            late_ids.append(job.id)
            continue
        if done.finish_h > due_h + 1e-9:
            late_ids.append(job.id)
            late_h += done.finish_h - due_h
        segments = plan.get(job.id) or []
        if segments:
            waits[job.id] = (min(s.start_slot for s in segments) - job.release_slot) * problem.slot_h
    by_id = {job.id: job for job in problem.jobs}
    gpu_h = sum((s.end_slot - s.start_slot) * problem.slot_h * by_id[j].modes[s.mode].gpus
                for j, segments in plan.items() for s in segments)
    ends = [s.end_slot for segments in plan.values() for s in segments]
    span_h = (max(ends) if ends else 0) * problem.slot_h
    out: dict[str, Any] = {
        "cost_eur": e.cost_eur, "energy_kwh": e.energy_kwh, "co2_kg": e.co2_g / 1000, "late_jobs": len(late_ids),
        "late_hours": late_h, **_waits(list(waits.values())),
        "gpu_utilisation": gpu_h / (problem.gpus * span_h) if span_h and problem.gpus else 0.0,
        "late": late_ids[:100]}
    per_user: dict[str, dict[str, Any]] = {}
    for job in problem.jobs:
        user = users.get(job.id, "?")
        row = per_user.setdefault(user, {"jobs": 0, "cost_eur": 0.0, "energy_kwh": 0.0, "co2_kg": 0.0,
                                         "late_jobs": 0, "_waits": []})
        outcome = e.jobs.get(job.id)
        row["jobs"] += 1
        if outcome is not None:
            row["cost_eur"] += outcome.cost_eur
            row["energy_kwh"] += outcome.energy_kwh
            row["co2_kg"] += outcome.co2_g / 1000
        row["late_jobs"] += job.id in late_ids
        if job.id in waits:
            row["_waits"].append(waits[job.id])
    for row in per_user.values():
        row.update(_waits(row.pop("_waits")))
    out["per_user"] = dict(sorted(per_user.items()))
    return out


def _waits(hours: list[float]) -> dict[str, float | None]:
    if not hours:
        return {"wait_median_h": None, "wait_p95_h": None}
    ordered = sorted(hours)
    return {"wait_median_h": statistics.median(ordered),
            "wait_p95_h": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]}


def _cumulative(problem: Problem, e: Evaluation) -> tuple[list[datetime], list[float], list[float]]:
    times, eur, co2 = [], [], []
    total_eur = total_co2 = 0.0
    for t, (c, g) in enumerate(zip(e.slot_cost_eur, e.slot_co2_g)):
        total_eur, total_co2 = total_eur + c, total_co2 + g / 1000
        times.append(problem.start + timedelta(minutes=(t + 1) * problem.slot_minutes))
        eur.append(total_eur)
        co2.append(total_co2)
    return times, eur, co2


def write_outputs(result: Simulated, output: Path) -> dict[str, str]:
    """RESULT.json (the report), and beside it the executed plan and its problem in `gsched plan`'s formats."""
    stem = output.with_suffix("")
    files = {"plan": str(stem) + ".plan.json", "problem": str(stem) + ".problem.json"}
    document = {**result.report, "files": files}
    try:
        Path(files["problem"]).write_text(json.dumps(problem_to_json(result.problem)))
        Path(files["plan"]).write_text(json.dumps(plan_to_json(result.plan), indent=1))
        output.write_text(json.dumps(document, indent=1))
    except OSError as exc:
        raise InputError(f"--output: cannot write {output} ({exc})") from None
    return files


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
