"""When a running job must leave its devices: its planned segment ended (elastic execution), or an urgent or
late job needs them (priority preemption). Pure decisions over the jobs; the daemon asks the executor to
checkpoint the jobs chosen here, whichever executor runs them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from scheduler.models import Job, JobState
from scheduler.outcomes import spec_of
from scheduler.timeutil import parse_rfc3339

log = logging.getLogger("gsched.policy")


@dataclass(frozen=True)
class Checkpoint:
    job: Job
    reason: str


def segment_pauses(running: list[Job], now: datetime, started: Callable[[Job], bool]) -> list[Checkpoint]:
    """A running elastic job whose planned segment has ended is checkpointed; the replan after it places the rest
    of its work (its next segments, kept from its plan unless a cheaper one is worth the move)."""
    pauses = []
    for job in running:
        if job.preempt_requested or job.cancel_requested or not job.plan_json or not started(job):
            continue
        try:
            plan = json.loads(job.plan_json)
            pause_at = plan.get("pause_at")
            if not pause_at or parse_rfc3339(pause_at) > now:
                continue
            nxt, label = plan["segments"][1][0], plan["segment_labels"][1]
            pauses.append(Checkpoint(job, f"paused: its planned segment ended; next one from {nxt} on {label}"))
        except Exception:  # one job's odd plan must not stop the others from following theirs
            log.exception("job %s: cannot follow its segments", job.id)
    return pauses


def priority_preemptions(running: list[Job], queued: list[Job], now: datetime, free_now: dict[str, int],
                         node_of: Callable[[Job], str | None], started: Callable[[Job], bool],
                         fastest_h: Callable[[Job], float]) -> list[tuple[Job, str, list[Checkpoint]]]:
    """An urgent (--now) job, or one planned past its deadline that could still meet it if it started now, takes
    the devices of running preemptible jobs when the free ones are too few: they checkpoint (paying their resume
    overhead) and are replanned. A job's devices are all on one node, so victims are taken on one node: the one
    where the fewest devices are given up, the most slack (latest deadline) first; nothing is preempted unless that
    frees enough. ``free_now``: devices free now per node, counting those of jobs already checkpointing as free
    (their count is a job's ``gpus``, whichever executor runs it); ``node_of``: the node a running job is on.
    Returns (beneficiary, why, its victims)."""
    victims = [j for j in running if not j.urgent and not j.preempt_requested and not j.cancel_requested
               and started(j) and spec_of(j).preemptible]
    if not victims:
        return []
    free = dict(free_now)
    decisions = []
    waiting = [j for j in queued if j.state in (JobState.PLANNED, JobState.PENDING)]
    for job in sorted(waiting, key=lambda j: (not j.urgent, j.deadline, j.id)):
        plan = json.loads(job.plan_json) if job.plan_json else None
        if plan is None or not (job.urgent or plan.get("late")):
            continue
        spread = max(1, int(plan["mode"].get("nodes") or 1))
        need = int(plan["mode"]["gpus"]) // spread  # on each of its nodes
        if job.planned_start is not None and job.planned_start <= now:
            roomy = sorted((n for n in free if free[n] >= need), key=lambda n: (free[n], n))
            if len(roomy) >= spread:  # starts now as planned: its devices are spoken for
                named = [n for n in (plan.get("nodes") or [[]])[0] if n in roomy]
                for at in (named if len(named) == spread else roomy[:spread]):
                    free[at] -= need
                continue
        if spread > 1:
            continue  # a job across nodes waits for its nodes: preemption frees devices on one node
        if not job.urgent and now + timedelta(hours=fastest_h(job)) > job.deadline:
            continue  # late even if it started now: preempting would not help it
        best: tuple[int, int, str, list[Job]] | None = None  # (devices given up, victims, node, victims)
        for node in sorted(free):
            chosen: list[Job] = []
            room = free[node]
            for victim in sorted((v for v in victims if node_of(v) == node), key=lambda v: (v.deadline, v.id),
                                 reverse=True):
                if room >= need:
                    break
                chosen.append(victim)
                room += victim.gpus or 0
            if room >= need and chosen:
                given = sum(v.gpus or 0 for v in chosen)
                if best is None or (given, len(chosen)) < best[:2]:
                    best = (given, len(chosen), node, chosen)
        if best is None:
            continue
        _given, _n, node, chosen = best
        free[node] += sum(v.gpus or 0 for v in chosen) - need
        why = "--now" if job.urgent else "it would miss its deadline otherwise"
        for victim in chosen:
            victims.remove(victim)
        decisions.append((job, why, [Checkpoint(v, f"preempted by job {job.id} ({why})") for v in chosen]))
    return decisions
