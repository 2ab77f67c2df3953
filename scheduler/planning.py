"""The queue, the signals ahead and the devices free -> a planning problem -> each job's plan and the reason for it.

The planner (planner/) is a pure function; this module feeds it from the store and the provider and writes its
answer back, in one transaction, with a reason a user can read in `gsched status`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from datetime import datetime, timedelta
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from scheduler.config import Config
from scheduler.dependencies import Wait
from scheduler.errors import GschedError
from scheduler.forecasts.base import Provider
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState, Profile
from scheduler.outcomes import spec_of
from scheduler.planner.nodes import first_fit_on_nodes
from scheduler.planner.options import Costing
from scheduler.planner.problem import Mode, PJob, Problem
from scheduler.planner.solve import Solution, solve
from scheduler.profiles import JobModes, Profiles, mode_key
from scheduler.store import Store
from scheduler.timeutil import parse_rfc3339, rfc3339

log = logging.getLogger("gsched.planning")
STALE_REPLANS = 2  # a replan's search starts where the last one's ended: one that found nothing may be followed by one
# that does, two in a row rarely are


def run_end(job: Job) -> datetime | None:
    """When a running job's devices are planned to be free: its segment's end (elastic) or its planned end."""
    if job.plan_json:
        pause_at = json.loads(job.plan_json).get("pause_at")
        if pause_at:
            return parse_rfc3339(pause_at)
    return job.planned_end


def busy_per_slot(running: list[Job], now: datetime, grid0: datetime, slot: timedelta, slots: int) -> list[int]:
    """Devices gsched's own running jobs hold in each slot, until their planned end."""
    held = [0] * slots
    for job in running:
        end = run_end(job)
        end = end if end and end > now else now
        for k in range(min(slots, max(1, math.ceil((end - grid0) / slot)))):
            held[k] += job.gpus or 0
    return held


def nodes_of(job: Job, nodes: Collection[str]) -> list[str]:
    """The nodes a running job is on: those its plan named for its latest segment begun by its start (Slurm pins
    it there), or the only one there is; none where that is not known."""
    plan = json.loads(job.plan_json) if job.plan_json else {}
    named: list[str] | None = None
    began = job.started_at
    for (a, _b), on in zip(plan.get("segments") or [], plan.get("nodes") or []):
        if named is None or (began is not None and parse_rfc3339(a) <= began):
            named = list(on)
    if named and all(n in nodes for n in named):
        return named
    return list(nodes) if len(nodes) == 1 else []


def node_of(job: Job, nodes: Collection[str]) -> str | None:
    """The node a running job is on, where it runs on one."""
    on = nodes_of(job, nodes)
    return on[0] if len(on) == 1 else None


def _no_room(modes: tuple[Mode, ...], n_nodes: int, largest: int | None, horizon_h: int) -> str:
    least = min(modes, key=lambda m: (m.nodes, m.gpus_per_node))
    if least.nodes > n_nodes:
        return f"waits: needs {least.nodes} nodes, and there {'is' if n_nodes == 1 else 'are'} {n_nodes}"
    return (f"waits: needs {least.gpus_per_node} GPU(s) on {'one node' if least.nodes == 1 else f'each of {least.nodes} nodes'}, "
            f"and no node has more than {largest} free in the next {horizon_h} h")


def free_per_node(offered: dict[str, list[int]], running: list[Job], now: datetime, grid0: datetime,
                  slot: timedelta, slots: int) -> dict[str, list[int]]:
    """What the executor offers per node, less what gsched's own running jobs hold there until their planned end.
    A running job is on the nodes its plan named (Slurm pins it there), its devices split evenly; one planned
    before the partition had several nodes is counted on the node with the most room."""
    free = {name: list(c) for name, c in offered.items()}
    for job in running:
        on = nodes_of(job, free) or [max(free, key=lambda n: (free[n][0] if free[n] else 0, n))] if free else []
        if not on:
            continue
        held = busy_per_slot([job], now, grid0, slot, slots)
        for name in on:
            free[name] = [f - h // len(on) for f, h in zip(free[name], held)]
    return free


def remaining_fraction(spec: JobSpec, steps_done: int) -> float:
    """The share of a workload's steps still to run, after the most steps its runs reported (Store.steps_done):
    whatever its state, since a paused job replanned once is PLANNED again (it was planned from scratch then)."""
    return max(0.05, 1 - steps_done / spec.steps) if spec.steps and steps_done else 1.0


def previous_plan(plan: dict[str, Any], described: list[dict[str, Any]], grid0: datetime, slot: timedelta
                  ) -> tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]] | None:
    """A job's last plan on today's grid, for hysteresis: its segments still ahead, each in its mode (matched by
    mode_key: a mode measured since is still the same mode)."""
    segments_at = plan.get("planner_segments") or plan["segments"]
    modes = plan.get("planner_segment_modes") or plan.get("segment_modes") or [plan["mode"]] * len(segments_at)
    keys = [mode_key(d) for d in described]
    if any(mode_key(m) not in keys for m in modes):
        return None
    segments, indices = [], []
    for (a, b), m in zip(segments_at, modes):
        # A start mid-slot is in the planner's slot (now, in the partly elapsed slot 0); a run that ends mid-slot
        # holds its devices to the slot's end.
        start = math.floor((parse_rfc3339(a) - grid0) / slot + 1e-6)
        end = math.ceil((parse_rfc3339(b) - grid0) / slot - 1e-6)
        if end <= 0:
            continue
        segments.append((max(0, start), end))
        indices.append(keys.index(mode_key(m)))
    if not segments:
        return None
    return indices[0], tuple(segments), tuple(indices) if len(set(indices)) > 1 else ()


def prices_on(saved: tuple[datetime, np.ndarray, float] | None, grid0: datetime, slot: timedelta, horizon: int
              ) -> tuple[np.ndarray, float] | None:
    """A replan's GPU-slot prices (its grid's start, the prices, the step scale) on the grid from ``grid0``: the slots
    gone dropped, the new ones at 0; None where the grids do not line up."""
    if saved is None:
        return None
    then, prices, theta = saved
    shift = (grid0 - then) / slot
    if shift < 0 or shift != int(shift):
        return None
    out = np.zeros(horizon)
    kept = prices[int(shift):int(shift) + horizon]
    out[:len(kept)] = kept
    return out, theta


class Planning:
    def __init__(self, config: Config, store: Store, provider: Provider, profiles: Profiles) -> None:
        self.config, self.store, self.provider, self.profiles = config, store, provider, profiles
        self.forecast_error: str | None = None
        self.last_plan: dict[str, Any] = {}  # the last replan's solve_s, jobs, gap_to_bound (for /metrics)
        self.replans = 0
        # The last replan beat the plan before it (repaired to the present) and did not prove itself optimal: another
        # replan from it may find more, so the daemon replans again while nothing is due (anytime across replans).
        self.improving = False
        self._stale = 0  # replans in a row that did not improve: two end the run of extra replans
        self.last_problem: Problem | None = None
        self.last_solution: Solution | None = None
        self.last_previous: dict[str, tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]]] = {}
        # the last replan's GPU-slot prices from its grid's start: the next replan's relaxation goes on from them
        self._prices: tuple[datetime, np.ndarray, float] | None = None

    def signals(self, grid0: datetime, slot: timedelta, horizon: int) -> tuple[list[float], list[float]]:
        try:
            forecast = self.provider.forecast(grid0, grid0 + horizon * slot)
            price, carbon = forecast.on_grid(grid0, int(slot.total_seconds()), horizon)
            self.forecast_error = None
            return list(price), list(carbon)
        except GschedError as exc:
            # Without signals every slot costs the same: jobs still run, as early as devices allow.
            if self.forecast_error != str(exc):
                log.error("forecast unavailable, planning without prices: %s", exc)
            self.forecast_error = str(exc)
            return [1.0] * horizon, [1.0] * horizon

    @property
    def wait_share(self) -> float:
        """How much of planner.wait_pct_per_h the last plan priced waiting at (busy_share): between 0 and 1 it moves
        with the backlog, which every end and every hour change."""
        per_h = self.config.planner.wait_pct_per_h
        return self.last_problem.wait_pct_per_h / per_h if self.last_problem is not None and per_h > 0 else 0.0

    def replan(self, now: datetime, grid0: datetime, queued: list[Job],
               free: dict[str, list[int]] | Callable[[int], dict[str, list[int]]],
               held_modes: dict[int, dict[str, Any]], waits: dict[int, Wait] | None = None) -> None:
        """Plan the queued jobs on ``free`` (devices free per node, per slot from grid0; or a function of the
        horizon's slots that says so: the horizon is then planner.horizon_hours, or longer where a queued job's
        deadline or a queue's last end needs it). ``held_modes``: jobs an executor holds keep the mode they were
        handed over in; replans move their start only. On several nodes a mode's devices are on its number of
        nodes, named in the plan (``nodes``, a list per segment). ``waits``: queued jobs that wait for predecessors
        (Daemon._release): planned after them, they stay PENDING, with their reason first, until those end."""
        waits = waits or {}
        settings = self.config.planner
        slot = timedelta(minutes=settings.slot_minutes)
        slot_h = slot / timedelta(hours=1)
        profiles: dict[tuple[str, int], list[Profile]] = {}
        steps_done = self.store.steps_done([j.id for j in queued if j.id is not None])
        modelled: list[tuple[Job, JobSpec, JobModes, float]] = []
        for job in sorted(queued, key=lambda j: not j.urgent):  # urgent first: the queue plans place them first
            assert job.id is not None
            spec = spec_of(job)
            try:
                jm = self.profiles.modes_of(spec, job.owner_uid, profiles)
            except GschedError as exc:  # e.g. a command's profile is gone: this job waits, saying why
                if job.plan_reason != str(exc):
                    self.store.update(job.id, plan_reason=str(exc))
                continue
            modelled.append((job, spec, jm, remaining_fraction(spec, steps_done.get(job.id, 0))))
        if callable(free):
            base = settings.horizon_hours * 60 // settings.slot_minutes
            offered = probe = free(base)
            pooled = pooled_free(offered)
            widest = max((min(m.gpus for m in jm.modes) for _j, _s, jm, _l in modelled), default=0)
            # Devices busy past the horizon (a 60-hour run) hide when a job fits: look further, doubling, until the
            # last slot seen has room for the widest job (or HORIZON_CAP), so a late job is planned, not PENDING.
            while pooled and pooled[-1] < widest and len(pooled) < HORIZON_CAP / slot:
                probe = free(min(2 * len(pooled), math.ceil(HORIZON_CAP / slot)))
                pooled = pooled_free(probe)
            if len(pooled) > base:
                offered = probe
            wanted = horizon_slots(base, pooled, [(job.deadline, jm.modes[jm.requested].gpus,
                                                   left * jm.work / jm.modes[jm.requested].rate)
                                                  for job, _s, jm, left in modelled], grid0, slot)
            free = free(wanted) if wanted > base else offered
        names = sorted(free)
        horizon = min((len(free[n]) for n in names), default=0)
        capacity = [sum(max(0, free[n][t]) for n in names) for t in range(horizon)]
        nodes = tuple(tuple(max(0, c) for c in free[n][:horizon]) for n in names) if len(names) > 1 else ()
        largest = max((max(n) for n in nodes), default=None)  # the most one node offers in the horizon
        price, carbon = self.signals(grid0, slot, horizon)
        pjobs, modes_of, previous = [], {}, {}
        planned_jobs: list[Job] = []  # the queued jobs the planner gets, in the order of pjobs
        for job, spec, jm, left in modelled:
            assert job.id is not None
            planned_jobs.append(job)
            indices = [jm.requested] if job.urgent else list(range(len(jm.modes)))
            held = held_modes.get(job.id)
            if held is not None:
                indices = [i for i, d in enumerate(jm.described) if mode_key(d) == mode_key(held)] or indices
            fit = [i for i in indices if jm.modes[i].nodes <= max(1, len(nodes))
                   and (largest is None or jm.modes[i].gpus_per_node <= largest)]
            if fit != indices:
                indices = fit
                if not indices:
                    reason = _no_room(jm.modes, len(names), largest, round(horizon * slot_h))
                    if job.plan_reason != reason:
                        self.store.update(job.id, plan_reason=reason, state=JobState.PENDING, planned_start=None,
                                          planned_end=None, planned_gpus=None, plan_json=None)
                    planned_jobs.pop()
                    continue
            # Modes the model cannot tell apart (a precision with no speedup on CPUs, a pruning not yet measured) are
            # one choice, the first listed: else the solvers' pick among equal costs was arbitrary, and a CPU demo
            # ran gpt in bf16, 9x slower there than fp32.
            seen: set[tuple[int, int, float, float]] = set()
            distinct = []
            for i in indices:
                key = (jm.modes[i].gpus, jm.modes[i].nodes, jm.modes[i].rate, jm.modes[i].power_kw)
                if key not in seen or i == jm.requested:
                    seen.add(key)
                    distinct.append(i)
            indices = distinct
            requested = indices.index(jm.requested) if jm.requested in indices else 0
            modes = tuple(jm.modes[i] for i in indices)
            described = [jm.described[i] for i in indices]
            deadline_slot = max(0, min(horizon, math.floor((job.deadline - grid0) / slot)))
            if job.urgent:  # --now: as soon as devices allow; any wait shows as lateness, so none is chosen
                deadline_slot = min(deadline_slot, max(1, math.ceil(((now - grid0) / slot) - 1e-9
                                                                    + jm.work / modes[0].rate / slot_h)))
            elastic = settings.elastic and spec.preemptible and not job.urgent
            release_slot, after = 0, tuple[str, ...]()
            if job.id in waits:
                wait = waits[job.id]
                after = tuple(str(i) for i in wait.after)
                ends = [run_end(self.store.get(i)) or now for i in wait.running]
                release_slot = min(horizon, math.ceil((max([now, *ends]) - grid0) / slot - 1e-9)) if ends else 0
            pjobs.append(PJob(str(job.id), release_slot, deadline_slot, jm.work * left, modes, 0 if job.urgent else requested,
                              preemptible=elastic, resume_overhead_minutes=spec.overhead_minutes(
                                  settings.resume_overhead_minutes) if elastic else 0.0, resumes=elastic and left < 1,
                              after=after))
            modes_of[str(job.id)] = described
            if job.plan_json:
                kept = previous_plan(json.loads(job.plan_json), described, grid0, slot)
                if kept is not None:
                    previous[str(job.id)] = kept
        problem = Problem(grid0, settings.slot_minutes, len(self.profiles.devices), settings.carbon_price_eur_per_t,
                          tuple(price), tuple(carbon), tuple(pjobs), settings.objective,
                          tuple(max(0, c) for c in capacity),
                          slot0_elapsed_minutes=max(0.0, min(now - grid0, slot) / timedelta(minutes=1)), nodes=nodes,
                          wait_pct_per_h=settings.wait_pct_per_h * busy_share(pjobs, capacity, slot_h))
        problem = with_urgent_pinned(problem, [j for j, job in enumerate(planned_jobs) if job.urgent])
        solution = solve(problem, settings.time_limit_s, previous, settings.hysteresis_pct / 100,
                         prices=prices_on(self._prices, grid0, slot, horizon))
        if solution.prices is not None:
            self._prices = (grid0, *solution.prices)
        log.info("planned %d job(s) in %.2f s (%s)", len(pjobs), solution.stats["solve_s"], solution.stats["method"])
        self.replans += 1
        self.last_plan = {"solve_s": solution.stats["solve_s"], "jobs": len(pjobs),
                          "gap_to_bound": solution.stats.get("gap_to_bound")}
        self._stale = stale_after(self._stale, solution.stats, bool(solution.late), settings.time_limit_s)
        # for bench/replans.py and the tests
        self.last_problem, self.last_solution, self.last_previous = problem, solution, previous
        self.improving = self._stale < STALE_REPLANS
        costing = Costing(problem)
        updates: dict[int, dict[str, Any]] = {}
        for j, pjob in enumerate(pjobs):
            option = solution.options.get(pjob.id)
            if option is None:
                why = solution.unplanned.get(pjob.id, "not planned")
                updates[int(pjob.id)] = {"state": JobState.PENDING, "planned_start": None, "planned_end": None,
                                         "planned_gpus": None, "plan_json": None,
                                         "plan_reason": f"{waits[int(pjob.id)].reason}; {why}"
                                         if int(pjob.id) in waits else why}
                continue
            mode = pjob.modes[option.mode]
            seg_modes = [option.mode_at(i) for i in range(len(option.segments))]
            start = max(now, grid0 + option.start * slot)
            run_h = pjob.work / mode.rate + pjob.overhead_h(0)
            end = start + timedelta(hours=run_h)
            plan: dict[str, Any] = {
                "mode": modes_of[pjob.id][option.mode], "label": mode.label,
                "segments": [[rfc3339(grid0 + a * slot), rfc3339(grid0 + b * slot)] for a, b in option.segments],
                "segment_modes": [modes_of[pjob.id][m] for m in seg_modes],
                "segment_labels": [pjob.modes[m].label for m in seg_modes]}
            if nodes:
                plan["nodes"] = [[names[k] for k in seg.nodes] for seg in solution.plan[pjob.id]]
            plan["work_s"] = run_h * 3600
            urgent = planned_jobs[j].urgent
            # an urgent job's deadline slot is derived (its earliest finish), so the planner's lateness is not its own
            late_h = (end - planned_jobs[j].deadline) / timedelta(hours=1)
            if (pjob.id in solution.late and not urgent) or (urgent and late_h > 0):
                plan["late"] = True
            if len(option.segments) > 1:
                a0, b0 = option.segments[0]
                tail_h = max(0.0, pjob.work - mode.rate * ((b0 - a0) * problem.slot_h - pjob.overhead_h(0))) / mode.rate
                if tail_h * 60 <= settings.elastic_extend_minutes:  # a pause would cost more than it saves
                    # the planner's own segments, for the next replan to start from (hysteresis, repair)
                    plan["planner_segments"] = [list(ab) for ab in plan["segments"]]
                    plan["planner_segment_modes"] = plan["segment_modes"]
                    plan["segments"], plan["segment_modes"], plan["segment_labels"] = (
                        plan["segments"][:1], plan["segment_modes"][:1], plan["segment_labels"][:1])
                    plan["segments"][0][1] = rfc3339(end)
                else:
                    plan["pause_at"] = rfc3339(grid0 + b0 * slot)
                    end = grid0 + option.end * slot
            reason = ((explain(costing, j, option, start, end, True)
                       + (f"; {late_h:.2f} h after its deadline" if late_h > 0 else "")) if urgent
                      else solution.late.get(pjob.id) or explain(costing, j, option, start, end, False))
            waiting = waits.get(int(pjob.id))
            updates[int(pjob.id)] = {
                "state": JobState.PLANNED if waiting is None else JobState.PENDING, "planned_start": start,
                "planned_end": end, "planned_gpus": mode.gpus, "plan_json": json.dumps(plan),
                "plan_reason": reason if waiting is None else f"{waiting.reason}; then {reason}",
            }
        self.store.save_plans(updates, at=now)


HORIZON_CAP = timedelta(days=35)  # a deadline further out is planned for within this; the queue's end always is


def pooled_free(offered: dict[str, list[int]]) -> list[int]:
    """The devices free in each slot, all nodes together."""
    return [sum(max(0, c[t]) for c in offered.values()) for t in range(min(map(len, offered.values()), default=0))]


def horizon_slots(base: int, pooled: list[int], jobs: list[tuple[datetime, int, float]], grid0: datetime,
                  slot: timedelta) -> int:
    """The slots a replan must see so that every job has a plan: ``base`` (planner.horizon_hours), or up to the
    latest deadline (within HORIZON_CAP), or to where a plain queue would end them all, whichever is longest. ``jobs``:
    (deadline, GPUs, hours) of each queued job in its requested mode; ``pooled``: the GPUs free per slot, the last
    value holding after. A 60-hour job due in four days was never planned in a 48-hour horizon."""
    slot_h = slot / timedelta(hours=1)
    latest = max((math.ceil((d - grid0) / slot) for d, _g, _h in jobs), default=0)
    wanted = max(base, min(latest, math.ceil(HORIZON_CAP / slot)))
    runs = [(g, max(1, math.ceil(h / slot_h + 1e-9))) for _d, g, h in jobs]
    need = sum(n for _g, n in runs) + 1
    if need <= 1:
        return wanted
    # The queue in submission order on the pool, each run at its first fit: where the last one ends.
    tail = pooled[-1] if pooled else 0
    free = np.array(pooled[:need] + [tail] * max(0, need - len(pooled)), dtype=np.int64)
    end = 0
    for gpus, n in runs:
        if gpus > tail and gpus > max(pooled, default=0):
            continue  # never fits: the planner says why
        ok = np.flatnonzero(np.lib.stride_tricks.sliding_window_view(free >= gpus, n).all(axis=1))
        if not len(ok):
            continue
        s = int(ok[0])
        free[s:s + n] -= gpus
        end = max(end, s + n)
    return max(wanted, end + max(4, end // 10))  # room for a mode or order other than the queue's


def with_urgent_pinned(problem: Problem, urgent: list[int]) -> Problem:
    """Each urgent (--now) job, in turn, must start in the first slot its devices are free from (now, unless
    other urgent or running jobs hold them): no cheaper hour may draw it later. One waiting for queued predecessors
    is not pinned (their end is the plan's to choose): its deadline, now plus its run, pulls them early instead."""
    if not urgent:
        return problem
    costing = Costing(problem)
    free = costing.capacity.copy()
    on_nodes = np.asarray(problem.nodes, dtype=np.int64).copy()
    jobs = list(problem.jobs)
    for j in urgent:
        job = jobs[j]
        if job.after:
            continue
        if problem.nodes:  # where one node (or its mode's nodes) has room, not just the pool
            found = first_fit_on_nodes(costing, j, 0, on_nodes)
            if found is not None:
                jobs[j] = replace(job, start_by_slot=found[0])
            continue
        starts, _costs, n = costing.rigid_costs(job, 0, costing.horizon)
        i = costing.first_fit(job, 0, starts, n, free)
        if i is None:
            continue  # no room in the horizon at all: the planner says so
        s = int(starts[i])
        free[s:costing.run_end(job, 0, s, n)] -= job.modes[0].gpus
        jobs[j] = replace(job, start_by_slot=s)
    return replace(problem, jobs=tuple(jobs))


BUSY_FROM_H, BUSY_FULL_H = 16.0, 32.0


def busy_share(jobs: list[PJob], capacity: list[int], slot_h: float) -> float:
    """How much of planner.wait_pct_per_h applies: 0 while the queue holds under BUSY_FROM_H hours of work for the
    GPUs free over the next day, all of it from BUSY_FULL_H. A lightly loaded queue waits for cheap hours freely; a
    backlog that keeps the GPUs busy for a day will meet arrivals it cannot see, and a job it delays becomes late
    (7f04ca's Philly week on 35 GPUs: 53 late, run-now 36)."""
    day = capacity[:max(1, round(24 / slot_h))]
    free = sum(day) / len(day) if day else 0.0
    if free <= 0:
        return 1.0 if jobs else 0.0
    gpu_h = sum(j.modes[j.requested_mode].gpus * j.work / j.modes[j.requested_mode].rate for j in jobs)
    return min(1.0, max(0.0, (gpu_h / free - BUSY_FROM_H) / (BUSY_FULL_H - BUSY_FROM_H)))


def stale_after(stale: int, stats: dict[str, Any], late: bool, limit_s: float) -> int:
    """Replans in a row without gain, after this one: two end the improving replans; one that ended before its
    limit, or left jobs late, ends them at once. (Late jobs' runs are pinned to FIFO's starts after the search, so
    the next replan does not go on from where this one's search ended: on a contentious week such replans
    alternated between 6 late jobs and 7 with fewer late slots, each "improving" on the other, 28 of 120.)"""
    if improving(stats, limit_s):
        return 0
    return stale + 1 if float(stats["solve_s"]) >= 0.8 * limit_s and not late else STALE_REPLANS


def improving(stats: dict[str, Any], limit_s: float) -> bool:
    """Was a replan cut off by its time limit, and did it beat its start from the previous plan (fewer late jobs,
    then fewer late slots, then more than 0.1% cheaper), or have none? A replan that ended early (the bound met, the
    search out of candidates) would find nothing more from the same start."""
    gap = stats.get("gap_to_bound")
    if (gap is not None and gap <= 1e-6) or stats["solve_s"] < 0.8 * limit_s:
        return False
    if stats.get("previous_objective") is None:
        return True
    before = (stats["previous_late_jobs"], stats["previous_late_slots"])
    after = (stats["late_jobs"], stats["late_slots"])
    if after != before:
        return after < before
    return stats["objective_priced"] < stats["previous_objective"] - 1e-3 * abs(stats["previous_objective"])


def explain(costing: Costing, j: int, option: Any, start: datetime, end: datetime, urgent: bool) -> str:
    job = costing.problem.jobs[j]
    label = job.modes[option.mode].label
    unit = "less CO2" if costing.problem.objective == "carbon" else "cheaper"
    if option.start == 0:
        if urgent:
            return f"runs now (--now) on {label}"
        return f"runs now on {label}: no cheaper window before its deadline"
    starts, costs, _n = costing.rigid_costs(job, option.mode, costing.horizon)
    now_cost = float(costs[0]) if len(starts) and starts[0] == 0 else None
    window = f"{start:%H:%M}-{end:%H:%M} UTC"
    if urgent:
        return f"--now: starts when its devices are free, {window} on {label}"
    if now_cost and now_cost > 0 and option.cost < now_cost:
        return f"waits for {window} on {label}, {100 * (now_cost - option.cost) / now_cost:.0f}% {unit} than now"
    return f"waits for {window} on {label}: devices are busy until then"
