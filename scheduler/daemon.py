"""The daemon's lifecycle and the order of a tick: recover after a restart, then each tick observe the executor's
runs, apply what it saw, plan, hand due work to the executor, and calibrate while idle.

Job state lives only in the database. Each tick reads it, acts, and writes the outcome, so a daemon killed at any
point restarts into a consistent picture: the executor recovers its runs from the handles the store keeps. Nothing
here knows which executor runs the jobs (executor/base.py); what differs is said by its capabilities.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from scheduler import __version__, dependencies
from scheduler.clock import Clock, EventClock
from scheduler.config import Config, Paths
from scheduler.dependencies import Wait
from scheduler.errors import Conflict, GschedError, NotFound, StoreError
from scheduler.executor.base import Broken, Ended, Executor, LaunchDeferred, Observation, Started
from scheduler.faults import crash_point
from scheduler.forecasts.base import Provider
from scheduler.jobfile import calibration_job, parse_job
from scheduler.models import TERMINAL, Job, JobState
from scheduler.outcomes import QUEUED, Outcomes, spec_of
from scheduler.planning import Planning, free_per_node, node_of, remaining_fraction, run_end
from scheduler.policy import Checkpoint, priority_preemptions, segment_pauses
from scheduler.profiles import Profiles
from scheduler.store import Store
from scheduler.timeutil import floor_to
from scheduler.userpath import acting_ids, owner_dir

log = logging.getLogger("gsched.daemon")
# Replans from the last plan while they improve it, at most this many in a row: on a queue with late jobs each one
# "improved" on the last plan (511 late slots against 526, every minute for an hour of a replay, while the planner
# dropped late jobs' previous runs), so the run never ended; the cap bounds any such chain
MAX_EXTRA_REPLANS = 3
# New signals and every change to the queue replan at once: this only catches what nothing announces
REPLAN_AT_LEAST_EVERY = timedelta(hours=6)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


class Daemon:
    def __init__(self, config: Config, paths: Paths, store: Store, clock: Clock, executor: Executor,
                 provider: Provider, steps_per_s: dict[str, float]) -> None:
        self.config, self.paths, self.store, self.clock = config, paths, store, clock
        self.executor, self.provider = executor, provider
        self.profiles = Profiles(config, store, executor.devices, steps_per_s, clock.speed)
        self.outcomes = Outcomes(store, provider, clock, self.profiles, executor.capabilities.holds_pending)
        self.planning = Planning(config, store, provider, self.profiles)
        executor.notify = self.wake
        self.uid = os.geteuid()
        self._tick_lock = threading.Lock()
        # Held while a wake moves the tick, and by stop before the scheduler's shutdown: that shutdown holds the
        # scheduler's job-store lock while it waits for the forecast fetch in flight, and a fetch that brought new
        # data wakes the daemon through that same lock, so a wake once the stop began would wait forever.
        self._wake_lock = threading.Lock()
        self._again = threading.Event()
        self._dirty = threading.Event()  # something changed that the plan must follow
        self._stopping = threading.Event()
        self._planned_grid: datetime | None = None
        self._extra_replans = 0  # replans in a row from the last plan, nothing having changed
        self._checked_grid: datetime | None = None  # the last slot whose plan was checked for being outdated
        self._idle_since: float | None = None  # time.monotonic() when the last job left the devices
        self._calibrated: set[tuple[str, int, str, str]] = set()  # modes measured while idle in this run
        self._calibration_scan = True  # a job ended since the last look for unmeasured modes
        self._scheduler: BackgroundScheduler | None = None
        # An event clock (the demo) moves with the runs: each run ends at its planned end on it (drive_events)
        self._events = isinstance(clock, EventClock)
        self._held: dict[int, Ended] = {}  # runs that ended before their planned end, reported at it
        self._waiting: set[int] = set()  # queued jobs whose dependencies do not hold yet: never started
        self._woken = threading.Event()
        self._driver: threading.Thread | None = None
        if self._events:
            self.profiles.learning = False  # a run's time on this clock is its plan's, so it measures nothing

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        scheduler = BackgroundScheduler(timezone=timezone.utc)  # in-memory job store: ticks only
        if self._events:
            self._driver = threading.Thread(target=self.drive_events, name="event-clock", daemon=True)
            self._driver.start()
        else:
            scheduler.add_job(self.tick, "interval", seconds=self.config.daemon.tick_s, id="tick",
                              max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
        refresh = getattr(self.provider, "refresh", None)
        if refresh is not None:  # live providers: fetch now, then every forecast.refresh_minutes
            scheduler.add_job(self._refresh_forecast, "interval", id="forecast", max_instances=1,
                              coalesce=True, seconds=self.config.forecast.refresh_minutes * 60,
                              next_run_time=datetime.now(timezone.utc))
        scheduler.start()
        with self._wake_lock:  # a wake from now on finds the tick it moves
            self._scheduler = scheduler

    def _refresh_forecast(self) -> None:
        try:
            if self.provider.refresh():  # type: ignore[attr-defined]
                self.wake()  # new signals: replan
        except Exception:  # a provider must never take the daemon down
            log.exception("forecast refresh failed")

    def stop(self) -> None:
        """Stop ticking. Running jobs are left alone: they outlive us and are recovered at the next start."""
        with self._wake_lock:
            self._stopping.set()  # a tick in flight finishes its pass and does not start another
        self._woken.set()
        if self._driver is not None:
            self._driver.join()
            self._driver = None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.executor.close(self.store.jobs([JobState.RUNNING]))

    def wake(self) -> None:
        """Replan and tick soon: after a submit, a cancel or a job's end."""
        self._dirty.set()
        self._woken.set()
        if self._tick_lock.locked():
            self._again.set()
        elif not self._events:
            with self._wake_lock:
                if self._scheduler is not None and not self._stopping.is_set():
                    self._scheduler.modify_job("tick", next_run_time=datetime.now(timezone.utc))

    def recover(self) -> None:
        """After a (re)start: the executor re-attaches to the runs the store's handles name, or reports them gone."""
        now = self.clock.now()
        self._apply(self.executor.recover(self._followed(), now), now)

    def _followed(self) -> list[Job]:
        """The jobs whose runs the executor follows: running ones, and queued ones it holds."""
        return [j for j in self.store.jobs([*QUEUED, JobState.RUNNING])
                if j.state == JobState.RUNNING or j.run_handle]

    def _apply(self, observations: list[Observation], now: datetime) -> None:
        for obs in observations:
            try:
                if isinstance(obs, Broken):
                    self.executor.reclaim(self.store.get(obs.job_id))
                before = self._job_or_none(obs.job_id) if isinstance(obs, Ended) else None
                if self.outcomes.apply(obs, now) and self._plan_follows(obs, before, now):
                    self._dirty.set()
                self._calibration_scan = True
            except Conflict:
                pass  # another thread moved the job first (a cancel): the next look sees it as it is
            except StoreError as exc:  # the database cannot take it now (disk full): the executor says it again
                log.error("job %s: cannot record its run yet: %s", getattr(obs, "job_id", "-"), exc)
            except Exception:  # one job's record must never stop the others'
                log.exception("job %s: cannot record what its executor saw", getattr(obs, "job_id", "-"))

    # --- the tick -----------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._tick_lock:
            while True:
                self._again.clear()
                try:
                    now = self.clock.now()
                    self._apply(self._on_clock(self.executor.poll(self._followed(), now), now), now)
                    self.plan_and_dispatch(now)
                except Exception:  # a tick must never kill the daemon; the next one retries
                    log.exception("tick failed")
                if not self._again.is_set() or self._stopping.is_set():
                    break

    # --- the event clock (the demo) ---------------------------------------------------------------------------

    def drive_events(self) -> None:
        """Move the event clock: look, then wait for the next due moment (at the clock's pace; a request looks again
        at once), hold there while a run planned to end by then is still working, and move the clock to it. With
        nothing queued or running the clock stands still, so jobs submitted together are planned together."""
        assert isinstance(self.clock, EventClock)
        clock = self.clock
        while not self._stopping.is_set():
            self.tick()
            now = clock.now()
            if not self.store.jobs([*QUEUED, JobState.RUNNING]):
                self._woken.wait()
                self._woken.clear()
                continue
            target = self.next_look(now)
            if self._woken.wait((target - now).total_seconds() / clock.speed):
                self._woken.clear()
                continue
            while not self._stopping.is_set() and self._working_until(target):
                self._woken.wait(0.2)  # a run's end wakes it (executor.notify)
                self._woken.clear()
                self.tick()
            if not self._stopping.is_set():
                clock.advance(target)

    def _working_until(self, target: datetime) -> bool:
        """Is a run planned to end by ``target`` still working (its end not yet seen)?"""
        return any(j.id not in self._held and (end := run_end(j)) is not None and end <= target
                   for j in self.store.jobs([JobState.RUNNING]))

    def _on_clock(self, observations: list[Observation], now: datetime) -> list[Observation]:
        """On an event clock, a run that ends by itself ends at its planned end: one that ended sooner is held until
        the clock gets there, and its time and energy are its plan's (the planner's power model over that time,
        energy_source "model"). A run the daemon stopped (cancel, requeue, pause) ends when it stopped."""
        if not self._events:
            return observations
        out: list[Observation] = []
        for obs in observations:
            job = self._job_or_none(obs.job_id) if isinstance(obs, Ended) else None
            if isinstance(obs, Ended) and job is not None and run_end(job) is not None \
                    and not (job.cancel_requested or job.preempt_requested or obs.said):
                self._held[obs.job_id] = obs
            else:
                out.append(obs)
        for job_id, obs in list(self._held.items()):
            job = self._job_or_none(job_id)
            end = run_end(job) if job is not None and job.state == JobState.RUNNING else None
            if end is None or end <= now:
                del self._held[job_id]
                out.append(self._as_planned(job, obs, end) if job is not None and end is not None else obs)
        return out

    def _as_planned(self, job: Job, obs: Ended, end: datetime) -> Ended:
        if not isinstance(obs.raw, dict) or job.started_at is None or not job.plan_json:
            return obs
        span_s = max(0.0, (end - job.started_at).total_seconds())
        raw = {**obs.raw, "duration_s": span_s / self.clock.speed}
        try:  # the power the planner planned the run with, as the plan priced it
            power_kw = self.profiles.power_kw(job, spec_of(job), json.loads(job.plan_json)["mode"])
        except Exception:  # an old record the model cannot read: the run's own reading stands
            power_kw = None
        if power_kw is not None:
            raw.update(energy_j=power_kw * 1000 * span_s, energy_source="model")
        return Ended(obs.job_id, raw, obs.said)

    def plan_and_dispatch(self, now: datetime) -> None:
        settings = self.config.planner
        slot = timedelta(minutes=settings.slot_minutes)
        grid0 = floor_to(now, slot)
        if settings.elastic:
            for pause in segment_pauses(self.store.jobs([JobState.RUNNING]), now, self.executor.started):
                self._checkpoint(pause, now)
        queued, waits = self._release(self.store.jobs(QUEUED), now)
        boundary = grid0 not in (self._planned_grid, self._checked_grid)  # looked at once a slot, not every tick
        self._checked_grid = grid0
        changed = self._dirty.is_set() or (boundary and self._plan_outdated(now, grid0, queued))
        if queued and (changed or self._may_improve(now, queued)):
            self._extra_replans = 0 if changed else self._extra_replans + 1
            self._dirty.clear()
            self._planned_grid = grid0
            running = self.store.jobs([JobState.RUNNING])
            held_modes = {j.id: m for j in queued if j.id is not None and (m := self.executor.held_mode(j))}
            offers: dict[int, dict[str, list[int]]] = {}

            def free(horizon: int) -> dict[str, list[int]]:
                """The devices free per node for a horizon of ``horizon`` slots (the planner picks it)."""
                offers[horizon] = self.executor.capacity(grid0, slot.total_seconds(), horizon)
                return free_per_node(offers[horizon], running, now, grid0, slot, horizon)

            self.planning.replan(now, grid0, queued, free, held_modes, waits)
            offered = offers[max(offers)]
            queued = [j for j in self.store.jobs(QUEUED) if j.id not in self._waiting]
            if settings.elastic:
                staying = [j for j in running if not j.preempt_requested]
                free_now = {n: c[0] for n, c in free_per_node(offered, staying, now, grid0, slot, 1).items() if c}
                self._preempt_for_priority(now, running, queued, free_now)
        self._dispatch(now, queued)
        if self.config.daemon.calibrate_when_idle and not self._events:
            self._calibrate_when_idle(now, busy=bool(queued) or bool(self.store.jobs([JobState.RUNNING])))

    def _release(self, queued: list[Job], now: datetime) -> tuple[list[Job], dict[int, Wait]]:
        """The queued jobs the planner places, and what those still waiting for predecessors wait for. A job whose
        predecessors have not all ended as its dependencies ask stays PENDING, reason Dependency, as in Slurm. It is
        planned with them (after queued ones, from a running one's planned end) where it waits for a success or
        any end of jobs that are themselves planned; it waits unplanned for a failure (afternotok). A dependent
        whose predecessor ended in a way that never satisfies it is cancelled (DependencyNeverSatisfied), and so,
        in turn, are its own."""
        while True:
            cancelled = False
            waits = {j.id: spec_of(j).after for j in queued if j.id is not None and '"after": [{' in j.spec_json}
            states = self.store.states({d.job_id for after in waits.values() for d in after})
            blocked: dict[int, tuple[list[dependencies.Dependency], str]] = {}
            for job in queued:
                if job.id not in waits:
                    continue
                waiting, never = dependencies.blocked(waits[job.id], states)
                if never:
                    try:
                        self.store.transition(job.id, JobState.CANCELLED, at=now, expect=QUEUED, finished_at=now,
                                              reason="DependencyNeverSatisfied: " + "; ".join(never))
                        log.info("job %s: cancelled, its dependency can never be satisfied: %s", job.id, never)
                    except Conflict:  # it was cancelled meanwhile
                        pass
                    cancelled = True
                elif waiting:
                    pending = [d for d in waits[job.id] if states[d.job_id] not in TERMINAL]
                    blocked[job.id] = (pending, "Dependency: waits for " + ", ".join(waiting))
            if cancelled:
                queued = self.store.jobs(QUEUED)
                continue
            by_id = {j.id: j for j in queued}
            # A job waits only for jobs stored before it: by id, its predecessors are judged before it
            plannable: dict[int, bool] = {}
            for job_id in sorted(blocked):
                plannable[job_id] = all(d.kind != "afternotok" and (
                    states[d.job_id] == JobState.RUNNING
                    or (d.job_id in by_id and plannable.get(d.job_id, d.job_id not in blocked)))
                    for d in blocked[job_id][0])

            plan_waits: dict[int, Wait] = {}
            for job_id, (pending, reason) in blocked.items():
                if plannable[job_id]:
                    plan_waits[job_id] = Wait([d.job_id for d in pending if d.job_id in by_id],
                                              [d.job_id for d in pending if states[d.job_id] == JobState.RUNNING],
                                              reason)
                    continue
                job = by_id[job_id]
                if job.plan_reason != reason or job.state != JobState.PENDING or job.plan_json:
                    self.store.save_plans({job_id: {"state": JobState.PENDING, "plan_reason": reason,
                                                    "planned_start": None, "planned_end": None, "planned_gpus": None,
                                                    "plan_json": None}}, at=now)
            if self._waiting - set(blocked):  # predecessors ended as asked: plan them now, not at the next boundary
                self._dirty.set()
            self._waiting = set(blocked)
            return [j for j in queued if j.id not in blocked or j.id in plan_waits], plan_waits

    def _job_or_none(self, job_id: int) -> Job | None:
        try:
            return self.store.get(job_id)
        except NotFound:
            return None

    def _plan_follows(self, obs: Observation, before: Job | None, now: datetime) -> bool:
        """Must the plan follow this observation? Not a start: it is the plan's own, and one later than planned is
        seen by the boundary check. Not a job's last end in the slot its plan freed its devices, or later, where the
        plan's price of waiting is off or in full: the plan already gave the devices to the queue from that slot's
        end (a replay of a contentious week replanned at each of its 124 ends, a second each). An earlier end, a
        pause, a requeue, a price of waiting that the backlog moves (Philly's week on 61 GPUs saved 7.6% instead
        of 8.9% without those replans), or a --now job waiting for devices: yes."""
        if isinstance(obs, Started):
            return False
        if isinstance(obs, Ended) and before is not None and (planned := run_end(before)) is not None:
            after = self._job_or_none(obs.job_id)
            slot = timedelta(minutes=self.config.planner.slot_minutes)
            return (after is None or after.state not in TERMINAL or _slot_end(now, slot) < _slot_end(planned, slot)
                    or 0.0 < self.planning.wait_share < 1.0
                    or any(j.urgent for j in self.store.jobs(QUEUED)))  # it starts at once, not at the boundary
        return True

    def _plan_outdated(self, now: datetime, grid0: datetime, queued: list[Job]) -> bool:
        """At a slot boundary with nothing new (an arrival, an end, new signals wake the daemon), the last plan still
        holds unless a job has none, a planned start passed without a start, a run outlasted its plan, or the plan
        is REPLAN_AT_LEAST_EVERY old. (Replanning at every boundary anyway cost a replay a second each: 672 a
        week; every hour, 108 of a contentious week's 400 replans.)"""
        if self._planned_grid is None or grid0 - self._planned_grid >= REPLAN_AT_LEAST_EVERY:
            return True
        # (a start due at this boundary is not passed: the dispatch after this look starts it, or it waits for
        # devices still being freed; replanning first moved it away from a job pausing for it, slot after slot)
        if any((j.state == JobState.PENDING and (j.id not in self._waiting or j.planned_start is None))
               or (j.planned_start is not None and j.planned_start < grid0
                                               and not j.run_handle) for j in queued):
            return True
        return any((end := run_end(j)) is not None and end < now for j in self.store.jobs([JobState.RUNNING]))

    def next_look(self, now: datetime) -> datetime:
        """The next time a look could act with nothing new observed (no arrival, end or request wakes it): a planned
        start, a run's planned end or segment end and the boundary after it, the boundary of the six-hourly replan,
        or the next boundary where a job has no plan or a start has passed. A replay ticks only then and at its
        events (at every boundary, a contentious week's 1,028 ticks read the store about 7,000 times); a live daemon
        looks every tick anyway."""
        slot = timedelta(minutes=self.config.planner.slot_minutes)
        boundary = floor_to(now, slot) + slot
        queued = [j for j in self.store.jobs(QUEUED) if j.id not in self._waiting]
        if self._planned_grid is None or any(j.state == JobState.PENDING or j.planned_start is None for j in queued):
            return boundary
        due = [self._planned_grid + REPLAN_AT_LEAST_EVERY, *(j.planned_start for j in queued if j.planned_start)]
        for job in self.store.jobs([JobState.RUNNING]):
            end = run_end(job)
            if end is not None:
                due += [end, floor_to(end, slot) + slot]
        return min(d if d > now else boundary for d in due)

    def _may_improve(self, now: datetime, queued: list[Job]) -> bool:
        """Replan once more from the last plan while that still improves it, unless a planned start is near enough
        for the replan to delay it."""
        if not self.planning.improving or self._extra_replans >= MAX_EXTRA_REPLANS:
            return False
        near = now + timedelta(seconds=self.config.planner.time_limit_s + 2 * self.config.daemon.tick_s)
        return not any(j.planned_start is not None and j.planned_start <= near for j in queued)

    # --- checkpoints: elastic segments, priority preemption, requeue ------------------------------------------

    def _checkpoint(self, what: Checkpoint, now: datetime) -> None:
        """Ask a running preemptible job to checkpoint and leave its devices (the requeue path), saying why."""
        job = what.job
        assert job.id is not None
        job = self.store.update(job.id, preempt_requested=True, preempt_reason=what.reason)
        self.store.note(job.id or 0, at=now, reason=f"{what.reason}: checkpointing")
        log.info("job %s: %s", job.id, what.reason)
        self._stop(job, requeue=True)

    def _stop(self, job: Job, requeue: bool) -> None:
        if not self.executor.stop(job, requeue):
            self.wake()  # no run to ask yet: the next tick sees it start or end

    def _preempt_for_priority(self, now: datetime, running: list[Job], queued: list[Job],
                              free_now: dict[str, int]) -> None:
        def fastest_h(job: Job) -> float:
            spec = spec_of(job)
            jm = self.profiles.modes_of(spec, job.owner_uid)
            left = remaining_fraction(spec, self.store.steps_done([job.id or 0]).get(job.id or 0, 0))
            return min(jm.work * left / m.rate for m in jm.modes)

        for job, why, victims in priority_preemptions(running, queued, now, free_now,
                                                      lambda j: node_of(j, free_now), self.executor.started,
                                                      fastest_h):
            for victim in victims:
                self._checkpoint(victim, now)
            self.store.note(job.id or 0, at=now, reason="preempting job(s) " + ", ".join(str(v.job.id) for v in victims)
                            + f" for their devices ({why})")

    # --- handing work to the executor -------------------------------------------------------------------------

    def _dispatch(self, now: datetime, queued: list[Job]) -> None:
        """Hand planned jobs to the executor: an executor that holds work gets each job once planned and hears of
        its start moving; otherwise a job is started when its planned start is due."""
        holds = self.executor.capabilities.holds_pending
        in_use: dict[int, int] = {}
        for job in self.store.jobs([JobState.RUNNING]):
            in_use[job.owner_uid] = in_use.get(job.owner_uid, 0) + (job.gpus or 0)
        cap = 0 if holds else self.config.limits.max_gpus_per_user  # on Slurm, its QOS limits users
        # A job planned late (it cannot meet its deadline) starts as early as the devices allow: where a run ends
        # in the slot before its planned start, at once, not at the boundary (a queue of late jobs lost up to a slot
        # at every hand-over, and each start pushed back the next).
        slot = timedelta(minutes=self.config.planner.slot_minutes)
        soon = floor_to(now, slot) + slot
        due = [j for j in queued if j.state == JobState.PLANNED and j.planned_start and j.plan_json
               and (holds or j.planned_start <= now or (j.planned_start <= soon and _planned_late(j)))]
        for job in sorted(due, key=lambda j: (j.planned_start, j.id)):
            assert job.id is not None and job.plan_json is not None and job.planned_start is not None
            try:
                if job.run_handle:
                    self.executor.retime(job, job.planned_start, now)
                    continue
                mode = json.loads(job.plan_json)["mode"]
                if cap and job.owner_uid != 0 and in_use.get(job.owner_uid, 0) + mode["gpus"] > cap:
                    reason = (f"waits: {job.owner_name} has {in_use.get(job.owner_uid, 0)} device(s) in use and "
                              f"limits.max_gpus_per_user is {cap}")
                    if job.plan_reason != reason:
                        self.store.update(job.id, plan_reason=reason)
                    continue
                if self._launch(job, mode, now):
                    in_use[job.owner_uid] = in_use.get(job.owner_uid, 0) + mode["gpus"]
                    if not holds and job.planned_start > now and job.planned_end is not None:  # early: so does its end
                        self.store.update(job.id, planned_start=now,
                                          planned_end=job.planned_end - (job.planned_start - now))
            except LaunchDeferred as exc:  # the executor refused this one for now: say why, go on with the others
                log.error("job %s: %s", job.id, exc)
                if job.plan_reason != str(exc):
                    self.store.update(job.id, plan_reason=str(exc))
            except GschedError as exc:
                log.error("job %s: %s", job.id, exc)
            except Exception as exc:  # one job that cannot start must not keep the others from starting
                log.exception("job %s: cannot start", job.id)
                self._fail_start(job.id, now, f"cannot start: {exc}")

    def _launch(self, job: Job, mode: dict[str, Any], now: datetime) -> bool:
        """Start a job exactly once: its intent (the executor's handle with a fresh token) is recorded before the
        executor acts, so a daemon killed in between finds it at its next recovery. False: not now."""
        assert job.id is not None
        job_id = job.id
        job = self.store.get(job_id)
        if job.state not in QUEUED:
            return False
        spec = spec_of(job)
        try:
            intent = self.executor.prepare(job, spec, mode, now)
        except GschedError as exc:
            if isinstance(exc, LaunchDeferred):
                raise
            self._fail_start(job_id, now, str(exc))
            return False
        if intent is None:
            return False
        holds = self.executor.capabilities.holds_pending
        if holds:  # the executor starts it at its planned start and reports it
            job = self.store.set_handle(job_id, intent.handle)
        else:
            job = self.store.transition(job_id, JobState.RUNNING, at=now, reason=f"started {intent.where}",
                                        expect=QUEUED, started_at=now, gpus=intent.gpus,
                                        devices_json=json.dumps(intent.devices), run_handle=json.dumps(intent.handle))
        crash_point("launch.after_intent")
        try:
            handle = self.executor.start(job, spec, intent, now)
        except LaunchDeferred:
            self.store.set_handle(job_id, None)
            raise
        except GschedError as exc:
            if holds:
                self.store.set_handle(job_id, None)
                self._fail_start(job_id, now, str(exc))
            else:
                self.outcomes.end_lost(self.store.get(job_id), now, str(exc), JobState.FAILED)
            return False
        crash_point("launch.after_start")
        self.store.set_handle(job_id, handle)
        log.info("job %s: handed to the executor %s", job_id, intent.where)
        return True

    def _fail_start(self, job_id: int, now: datetime, reason: str) -> None:
        try:
            self.store.transition(job_id, JobState.FAILED, at=now, reason=reason, expect=QUEUED, finished_at=now)
        except GschedError:
            pass

    # --- idle calibration -------------------------------------------------------------------------------------

    def _calibrate_when_idle(self, now: datetime, busy: bool) -> None:
        """Once every device has idled for a while, measure one mode that recent workload jobs could have run in
        but nobody has measured yet: a short urgent run, owned by that job's owner, seen in `gsched status`."""
        if busy:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = time.monotonic()
        idle_s = time.monotonic() - self._idle_since
        if not self._calibration_scan or idle_s < self.config.daemon.calibrate_after_idle_s:
            return
        self._calibration_scan = False  # the next job to end asks for another look
        recent = [(j, spec_of(j)) for j in reversed(self.store.jobs([JobState.COMPLETED], newest=20))]
        found = self.profiles.unmeasured(recent, self._calibrated)
        if found is None:
            return
        job, spec, mode, steps = found
        label, text = calibration_job(spec, "calibrate", mode["gpus"], mode["precision"], mode["pruning"], steps)
        uid, gid = acting_ids(job.owner_uid, job.owner_uid)
        derived = parse_job(text, source=f"calibration of job {job.id} ({label})", base_dir=Path(spec.workdir),
                            now=now, resolve_dir=lambda p: owner_dir(uid, gid, p))
        added = self.store.add_job(derived, owner_uid=job.owner_uid, owner_name=job.owner_name, urgent=True, now=now)
        assert added.id is not None
        self.store.note(added.id, at=now, reason=f"calibrating {label} of job {job.id}'s workload: "
                                                 "devices idle and no profile for this mode")
        log.info("job %s: calibrating %s of job %s's workload while idle", added.id, label, job.id)
        self._idle_since = None
        self._dirty.set()

    # --- requests ----------------------------------------------------------------------------------------------

    def cancel(self, job: Job) -> Job:
        assert job.id is not None
        job_id, now = job.id, self.clock.now()
        if job.state == JobState.RUNNING:
            job = self.store.update(job.id, cancel_requested=True)
            self._stop(job, requeue=False)
            return job
        if job.state in QUEUED and job.run_handle:
            self.executor.withdraw(job)
        try:
            return self.store.transition(job_id, JobState.CANCELLED, at=now, reason="cancelled by user",
                                         expect=QUEUED, finished_at=now)
        except Conflict:
            fresh = self.store.get(job_id)
            if fresh.state == JobState.RUNNING:  # it started meanwhile: stop it as a running job
                return self.cancel(fresh)
            raise

    def requeue(self, job: Job) -> Job:
        """Checkpoint a running preemptible job and put it back in the queue (Slurm's scontrol requeue)."""
        assert job.id is not None
        if job.state != JobState.RUNNING:
            raise Conflict(f"job {job.id} is {job.state.value}; only a running job can be requeued")
        if not spec_of(job).preemptible:
            raise Conflict(f"job {job.id} is not preemptible (set preemptible = true in its job file)")
        job = self.store.update(job.id, preempt_requested=True)
        self._stop(job, requeue=True)
        return job

    def log_path(self, job_id: int) -> Path:
        return self.executor.log_path(job_id)

    def report(self, since: datetime | None, until: datetime | None, user: str | None) -> dict[str, Any]:
        from scheduler.report import from_store

        return from_store(self.store, self.provider, self.profiles, since, until, user)

    # the views' read-outs (API, /metrics)
    @property
    def devices(self) -> list[Any]:
        return self.executor.devices

    @property
    def forecast_error(self) -> str | None:
        return self.planning.forecast_error

    @property
    def last_plan(self) -> dict[str, Any]:
        return self.planning.last_plan

    @property
    def replans(self) -> int:
        return self.planning.replans

    def info(self) -> dict[str, Any]:
        return {"version": __version__, "now": self.clock.now(), "clock_speed": self.clock.speed,
                "forecast_providers": [vars(st) for st in getattr(self.provider, "status", {}).values()],
                "home": str(self.paths.home), "socket": str(self.paths.socket), "devices": len(self.devices),
                "forecast_source": self.provider.name, "forecast_error": self.forecast_error, "uid": self.uid,
                "metrics": self.config.metrics.listen or None}


class StopSignals:
    """SIGTERM and SIGINT, waited for by the main thread. Python runs a signal handler in the main thread between two
    of its bytecodes, possibly while that thread holds a lock: a handler that set a threading.Event (as this one
    did) blocked forever on the Event's own lock when the signal came inside Event.wait, and the daemon never
    stopped. So the handlers do nothing, and the signal number reaches ``wait`` through the interpreter's C-level
    wakeup pipe. Create it in the main thread."""

    def __init__(self) -> None:
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _signum, _frame: None)

    def wait(self) -> str:
        """Block until SIGTERM or SIGINT arrives; its name."""
        while True:
            for byte in os.read(self._read, 64):
                if byte in (signal.SIGTERM, signal.SIGINT):
                    return signal.Signals(byte).name


def _slot_end(when: datetime, slot: timedelta) -> datetime:
    """The end of the slot ``when`` falls in (``when`` itself on a boundary): where the planner frees a run's devices."""
    start = floor_to(when, slot)
    return start if start == when else start + slot


def _planned_late(job: Job) -> bool:
    """Is the job planned past its deadline, in one run (a run that pauses at a segment's end keeps its times)?"""
    try:
        plan = json.loads(job.plan_json or "{}")
    except ValueError:
        return False
    return bool(plan.get("late")) and not plan.get("pause_at")
