"""The planning problem, the plan, and their file formats; ``evaluate`` is the exact semantics both share.

Problem file (extra keys allowed; ``objective`` "cost"|"carbon", ``capacity`` [per-slot free GPUs] and ``nodes``
[per node, per-slot free GPUs: a segment's GPUs are on its mode's number of nodes, the same share on each] are
gsched's own optional extras, as is a mode's ``nodes``, 1 unless given):
    {"start", "slot_minutes", "horizon_slots", "gpus", "carbon_price_eur_per_t",
     "signals": {"price_eur_per_mwh": [..], "carbon_g_per_kwh": [..]},
     "jobs": [{"id", "release_slot", "deadline_slot", "work", "preemptible", "resume_overhead_minutes",
               "requested_mode", "modes": [{"gpus", "rate", "power_kw", "nodes"}], "start_by_slot" (optional),
               "after" (optional: ids of jobs it starts after, once they end)}]}
Plan file ("nodes", indices into the problem's ``nodes``, one per node of the segment's mode, only where it has them):
    {"jobs": [{"id", "segments": [{"start_slot", "end_slot", "mode", "nodes"}]}]}

Semantics: work accrues at rate x hours; slot 0 lacks ``slot0_elapsed_minutes`` (an optional extra: the time of
the current slot already past); each segment after a job's first starts with
resume_overhead_minutes of powered time without progress; a job draws power until its work is done,
even inside a slot; energy = power_kw x hours used, priced per slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler.errors import InputError
from scheduler.timeutil import parse_rfc3339, rfc3339

EPS = 1e-9


@dataclass(frozen=True)
class Mode:
    gpus: int
    rate: float  # work units per hour
    power_kw: float
    label: str = ""  # e.g. "2xGPU bf16 250W"; not part of the file format
    nodes: int = 1  # spread over this many nodes, gpus / nodes on each (a multi-node job's DDP)

    @property
    def gpus_per_node(self) -> int:
        return self.gpus // self.nodes


@dataclass(frozen=True)
class PJob:
    id: str
    release_slot: int
    deadline_slot: int  # exclusive
    work: float
    modes: tuple[Mode, ...]
    requested_mode: int = 0
    preemptible: bool = False
    resume_overhead_minutes: float = 0.0
    # A rigid job that must start by this slot (an urgent one: now, or when devices free): a deadline alone cannot
    # say so, since a run that would spill into the next slot may as well start there.
    start_by_slot: int | None = None
    # The job goes on from a checkpoint (it was paused or preempted): its first segment, too, starts with the resume
    # overhead. Unmodelled, each resume ran that much short of its plan, and the shortfall was placed "now".
    resumes: bool = False
    # The jobs it runs after (ids in the problem): its first segment starts at or after each one's last end.
    after: tuple[str, ...] = ()

    def overhead_h(self, segment: int) -> float:
        """Powered hours without progress at the start of segment ``segment`` (0 = the first)."""
        return self.resume_overhead_minutes / 60 if segment or self.resumes else 0.0


@dataclass(frozen=True)
class Problem:
    start: datetime
    slot_minutes: int
    gpus: int
    carbon_price_eur_per_t: float
    price_eur_per_mwh: tuple[float, ...]
    carbon_g_per_kwh: tuple[float, ...]
    jobs: tuple[PJob, ...]
    objective: str = "cost"
    capacity: tuple[int, ...] = ()  # free GPUs per slot; empty = gpus everywhere
    # Minutes of slot 0 already past when planning (the daemon plans mid-slot): slot 0 is that much shorter.
    slot0_elapsed_minutes: float = 0.0
    # Free GPUs per node per slot, where a partition is several nodes: a segment runs on one node. Empty: one pool.
    nodes: tuple[tuple[int, ...], ...] = ()
    # The price of waiting while the queue is busy, per hour a job waits, in % of the horizon's mean kWh weight per
    # kWh the job draws. Not a cost (reported costs leave it out, like tie-breaks): insurance against the arrivals a
    # plan cannot see, which make a job planned for a cheap window late when the devices stay busy. 0 offline.
    wait_pct_per_h: float = 0.0

    @property
    def horizon_slots(self) -> int:
        return len(self.price_eur_per_mwh)

    @property
    def slot_h(self) -> float:
        return self.slot_minutes / 60

    def slot_start_h(self, t: int) -> float:
        """When slot ``t``'s usable time begins, in hours from ``start``."""
        return self.slot0_elapsed_minutes / 60 if t == 0 else t * self.slot_h

    def slot_len_h(self, t: int) -> float:
        return self.slot_h - self.slot0_elapsed_minutes / 60 if t == 0 else self.slot_h

    def free(self) -> list[int]:
        pooled = list(self.capacity) if self.capacity else [self.gpus] * self.horizon_slots
        if self.nodes:
            return [min(p, sum(n[t] for n in self.nodes)) for t, p in enumerate(pooled)]
        return pooled

    def weights(self) -> list[float]:
        """The objective's price of one kWh in each slot: EUR for "cost", gCO2 for "carbon"."""
        if self.objective == "carbon":
            return list(self.carbon_g_per_kwh)
        return [p / 1000 + self.carbon_price_eur_per_t * c / 1e6
                for p, c in zip(self.price_eur_per_mwh, self.carbon_g_per_kwh)]


@dataclass(frozen=True)
class Segment:
    start_slot: int
    end_slot: int  # exclusive
    mode: int
    nodes: tuple[int, ...] = ()  # indices into Problem.nodes, one per node of its mode


Plan = dict[str, list[Segment]]


@dataclass
class JobOutcome:
    finished: bool = False
    finish_h: float | None = None  # hours from the problem start
    energy_kwh: float = 0.0
    objective: float = 0.0
    cost_eur: float = 0.0
    co2_g: float = 0.0


@dataclass
class Evaluation:
    valid: bool
    errors: list[str]
    objective: float  # in the problem's objective units (EUR, or gCO2 for "carbon")
    cost_eur: float  # electricity + carbon price
    energy_kwh: float
    co2_g: float
    jobs: dict[str, JobOutcome] = field(default_factory=dict)
    slot_cost_eur: list[float] = field(default_factory=list)  # per slot, all jobs
    slot_co2_g: list[float] = field(default_factory=list)


def lateness(problem: Problem, evaluation: Evaluation) -> tuple[int, float]:
    """(late or unplanned jobs, hours late in all) of an evaluated plan; an unplanned job counts the horizon."""
    count, hours = 0, 0.0
    for job in problem.jobs:
        out = evaluation.jobs.get(job.id)
        if out is None or not out.finished or out.finish_h is None:
            count, hours = count + 1, hours + problem.horizon_slots * problem.slot_h
            continue
        over = out.finish_h - job.deadline_slot * problem.slot_h
        if over > 1e-9:
            count, hours = count + 1, hours + over
    return count, hours


def evaluate(problem: Problem, plan: Plan) -> Evaluation:
    """Check every constraint of the contract and price the plan exactly."""
    errors: list[str] = []
    weights = problem.weights()
    eur = [p / 1000 + problem.carbon_price_eur_per_t * c / 1e6
           for p, c in zip(problem.price_eur_per_mwh, problem.carbon_g_per_kwh)]
    used = [0] * problem.horizon_slots
    node_used = [[0] * problem.horizon_slots for _ in problem.nodes]
    slot_cost_eur, slot_co2_g = [0.0] * problem.horizon_slots, [0.0] * problem.horizon_slots
    outcomes: dict[str, JobOutcome] = {}
    jobs = {j.id: j for j in problem.jobs}
    for job_id in plan:
        if job_id not in jobs:
            errors.append(f"plan has unknown job {job_id!r}")
    for job in problem.jobs:
        segments = sorted(plan.get(job.id, []), key=lambda s: s.start_slot)
        out = outcomes[job.id] = JobOutcome()
        if not segments:
            errors.append(f"job {job.id}: not planned")
            continue
        if not job.preemptible and len(segments) != 1:
            errors.append(f"job {job.id}: rigid but has {len(segments)} segments")
        remaining = job.work
        prev_end = None
        for i, seg in enumerate(segments):
            if not 0 <= seg.mode < len(job.modes):
                errors.append(f"job {job.id}: no mode {seg.mode}")
                continue
            if seg.end_slot <= seg.start_slot:
                errors.append(f"job {job.id}: empty segment {seg.start_slot}-{seg.end_slot}")
                continue
            if i == 0 and job.start_by_slot is not None and seg.start_slot > job.start_by_slot:
                errors.append(f"job {job.id}: starts at slot {seg.start_slot}, after its start_by_slot "
                              f"{job.start_by_slot}")
            if seg.start_slot < job.release_slot or seg.end_slot > job.deadline_slot:
                errors.append(f"job {job.id}: segment {seg.start_slot}-{seg.end_slot} outside its window "
                              f"[{job.release_slot}, {job.deadline_slot})")
            if seg.start_slot < 0 or seg.end_slot > problem.horizon_slots:
                errors.append(f"job {job.id}: segment {seg.start_slot}-{seg.end_slot} outside the horizon")
                continue
            if prev_end is not None and seg.start_slot < prev_end:
                errors.append(f"job {job.id}: segments overlap at slot {seg.start_slot}")
            prev_end = seg.end_slot
            mode = job.modes[seg.mode]
            overhead_h = job.overhead_h(i)
            on_nodes = problem.nodes and len(set(seg.nodes)) == len(seg.nodes) == mode.nodes \
                and all(0 <= k < len(problem.nodes) for k in seg.nodes)
            if problem.nodes and not on_nodes:
                errors.append(f"job {job.id}: segment {seg.start_slot}-{seg.end_slot} on nodes {list(seg.nodes)}, "
                              f"not {mode.nodes} distinct node(s) of the problem's {len(problem.nodes)}")
            for t in range(seg.start_slot, seg.end_slot):
                used[t] += mode.gpus
                for k in seg.nodes if on_nodes else ():
                    node_used[k][t] += mode.gpus_per_node
                if remaining <= EPS:
                    continue
                powered_h = problem.slot_len_h(t)
                # The resume overhead burns powered time at the segment's start.
                idle_h = min(overhead_h, powered_h)
                overhead_h -= idle_h
                progress_h = powered_h - idle_h
                if mode.rate * progress_h >= remaining - EPS:
                    progress_h = remaining / mode.rate
                    powered_h = idle_h + progress_h
                    remaining = 0.0
                    out.finish_h = problem.slot_start_h(t) + powered_h
                else:
                    remaining -= mode.rate * progress_h
                kwh = mode.power_kw * powered_h
                out.energy_kwh += kwh
                out.objective += kwh * weights[t]
                out.cost_eur += kwh * eur[t]
                out.co2_g += kwh * problem.carbon_g_per_kwh[t]
                slot_cost_eur[t] += kwh * eur[t]
                slot_co2_g[t] += kwh * problem.carbon_g_per_kwh[t]
        out.finished = remaining <= EPS
        if not out.finished:
            errors.append(f"job {job.id}: {job.work - remaining:.3g} of {job.work:.3g} work done by its last segment")
    for job in problem.jobs:  # a dependent starts once its predecessors have finished
        first = min(plan.get(job.id, []), key=lambda seg: seg.start_slot, default=None)
        for other in job.after:
            done = outcomes.get(other)
            if first is not None and done is not None and (
                    not done.finished or problem.slot_start_h(first.start_slot) + EPS < (done.finish_h or 0.0)):
                errors.append(f"job {job.id}: starts at slot {first.start_slot}, before job {other} "
                              f"(its 'after') has finished")
    capacity = problem.free()
    for t, n in enumerate(used):
        if n > capacity[t]:
            errors.append(f"slot {t}: {n} GPUs planned, {capacity[t]} free")
    for k, (on, free) in enumerate(zip(node_used, problem.nodes)):
        errors += [f"node {k}, slot {t}: {n} GPUs planned, {free[t]} free" for t, n in enumerate(on) if n > free[t]]
    return Evaluation(
        valid=not errors, errors=errors,
        objective=sum(o.objective for o in outcomes.values()),
        cost_eur=sum(o.cost_eur for o in outcomes.values()),
        energy_kwh=sum(o.energy_kwh for o in outcomes.values()),
        co2_g=sum(o.co2_g for o in outcomes.values()),
        jobs=outcomes, slot_cost_eur=slot_cost_eur, slot_co2_g=slot_co2_g,
    )


# --- files ---------------------------------------------------------------------------------------------------


def _need(data: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise InputError(f"{where}: missing {key!r}")
    value = data[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                                                   else (types,))):
        raise InputError(f"{where}.{key}: wrong type {type(value).__name__}")
    return value


def problem_from_json(data: Any, source: str = "problem") -> Problem:
    if not isinstance(data, dict):
        raise InputError(f"{source}: must be a JSON object")
    num = (int, float)
    horizon = _need(data, "horizon_slots", int, source)
    signals = _need(data, "signals", dict, source)
    price = [float(x) for x in _need(signals, "price_eur_per_mwh", list, f"{source}.signals")]
    carbon = [float(x) for x in _need(signals, "carbon_g_per_kwh", list, f"{source}.signals")]
    if len(price) != horizon or len(carbon) != horizon:
        raise InputError(f"{source}.signals: need horizon_slots={horizon} values each, got {len(price)} and "
                         f"{len(carbon)}")
    if not all(math.isfinite(x) for x in price + carbon):
        raise InputError(f"{source}.signals: values must be finite numbers")
    gpus = _need(data, "gpus", int, source)
    slot_minutes = _need(data, "slot_minutes", int, source)
    if gpus < 0 or slot_minutes <= 0 or horizon <= 0:
        raise InputError(f"{source}: gpus >= 0, slot_minutes > 0 and horizon_slots > 0 required")
    jobs = []
    seen = set()
    for i, raw in enumerate(_need(data, "jobs", list, source)):
        where = f"{source}.jobs[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where}: must be an object")
        job_id = str(_need(raw, "id", (str, int), where))
        if job_id in seen:
            raise InputError(f"{where}.id: duplicate id {job_id!r}")
        seen.add(job_id)
        modes = []
        for k, m in enumerate(_need(raw, "modes", list, where)):
            mw = f"{where}.modes[{k}]"
            n_nodes = m.get("nodes", 1)
            if not isinstance(n_nodes, int) or isinstance(n_nodes, bool) or n_nodes < 1:
                raise InputError(f"{mw}.nodes: must be an integer >= 1")
            mode = Mode(_need(m, "gpus", int, mw), float(_need(m, "rate", num, mw)),
                        float(_need(m, "power_kw", num, mw)), str(m.get("label", "")), n_nodes)
            if mode.gpus < 0 or mode.rate <= 0 or mode.power_kw < 0:
                raise InputError(f"{mw}: gpus >= 0, rate > 0 and power_kw >= 0 required")
            if mode.gpus % n_nodes:
                raise InputError(f"{mw}.nodes: {mode.gpus} GPUs do not split evenly over {n_nodes} nodes")
            modes.append(mode)
        if not modes:
            raise InputError(f"{where}.modes: at least one mode required")
        job = PJob(job_id, _need(raw, "release_slot", int, where), _need(raw, "deadline_slot", int, where),
                   float(_need(raw, "work", num, where)), tuple(modes), int(raw.get("requested_mode", 0)),
                   bool(raw.get("preemptible", False)), float(raw.get("resume_overhead_minutes", 0.0)),
                   raw.get("start_by_slot"), raw.get("resumes", False), _after(raw.get("after", []), where))
        if not isinstance(job.resumes, bool):
            raise InputError(f"{where}.resumes: must be true or false")
        if job.start_by_slot is not None and (not isinstance(job.start_by_slot, int)
                                              or isinstance(job.start_by_slot, bool) or job.start_by_slot < 0):
            raise InputError(f"{where}.start_by_slot: must be an integer >= 0")
        if job.work <= 0 or job.release_slot < 0 or job.resume_overhead_minutes < 0:
            raise InputError(f"{where}: work > 0, release_slot >= 0 and resume_overhead_minutes >= 0 required")
        if not 0 <= job.requested_mode < len(modes):
            raise InputError(f"{where}.requested_mode: {job.requested_mode} is not a mode index")
        jobs.append(job)
    ids = {job.id for job in jobs}
    for i, job in enumerate(jobs):
        for other in job.after:
            if other not in ids:
                raise InputError(f"{source}.jobs[{i}].after: no job {other!r} in the problem")
    from scheduler.planner.pipelines import order

    order(tuple(jobs))  # a cycle is an error naming two of its jobs
    objective = data.get("objective", "cost")
    if objective not in ("cost", "carbon"):
        raise InputError(f"{source}.objective: must be 'cost' or 'carbon'")
    capacity = tuple(int(c) for c in data.get("capacity", ()))
    if capacity and len(capacity) != horizon:
        raise InputError(f"{source}.capacity: need {horizon} values")
    nodes = data.get("nodes", [])
    if not isinstance(nodes, list) or not all(
            isinstance(n, list) and len(n) == horizon
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in n) for n in nodes):
        raise InputError(f"{source}.nodes: need a list of {horizon} free-GPU counts (integers >= 0) per node")
    elapsed = data.get("slot0_elapsed_minutes", 0.0)
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not 0 <= elapsed < slot_minutes:
        raise InputError(f"{source}.slot0_elapsed_minutes: must be a number in [0, slot_minutes)")
    try:
        start = parse_rfc3339(_need(data, "start", str, source))
    except ValueError as exc:
        raise InputError(f"{source}.start: {exc}") from None
    return Problem(start, slot_minutes, gpus, float(_need(data, "carbon_price_eur_per_t", num, source)),
                   tuple(price), tuple(carbon), tuple(jobs), objective, capacity, float(elapsed),
                   tuple(tuple(n) for n in nodes))


def _after(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in raw):
        raise InputError(f"{where}.after: must be a list of job ids")
    return tuple(dict.fromkeys(str(a) for a in raw))


def problem_to_json(problem: Problem) -> dict[str, Any]:
    data: dict[str, Any] = {
        "start": rfc3339(problem.start), "slot_minutes": problem.slot_minutes,
        "horizon_slots": problem.horizon_slots, "gpus": problem.gpus,
        "carbon_price_eur_per_t": problem.carbon_price_eur_per_t, "objective": problem.objective,
        "signals": {"price_eur_per_mwh": list(problem.price_eur_per_mwh),
                    "carbon_g_per_kwh": list(problem.carbon_g_per_kwh)},
        "jobs": [{"id": j.id, "release_slot": j.release_slot, "deadline_slot": j.deadline_slot, "work": j.work,
                  "preemptible": j.preemptible, "resume_overhead_minutes": j.resume_overhead_minutes,
                  "requested_mode": j.requested_mode,
                  "modes": [{"gpus": m.gpus, "rate": m.rate, "power_kw": m.power_kw,
                             **({} if m.nodes == 1 else {"nodes": m.nodes})} for m in j.modes],
                  **({} if j.start_by_slot is None else {"start_by_slot": j.start_by_slot}),
                  **({"resumes": True} if j.resumes else {}),
                  **({"after": list(j.after)} if j.after else {})}
                 for j in problem.jobs],
    }
    if problem.capacity:
        data["capacity"] = list(problem.capacity)
    if problem.slot0_elapsed_minutes:
        data["slot0_elapsed_minutes"] = problem.slot0_elapsed_minutes
    if problem.nodes:
        data["nodes"] = [list(n) for n in problem.nodes]
    return data


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {"jobs": [{"id": job_id, "segments": [
        {"start_slot": s.start_slot, "end_slot": s.end_slot, "mode": s.mode,
         **({"nodes": list(s.nodes)} if s.nodes else {})} for s in segments]} for job_id, segments in plan.items()]}


def plan_from_json(data: Any, source: str = "plan") -> Plan:
    try:
        return {str(j["id"]): [Segment(int(s["start_slot"]), int(s["end_slot"]), int(s["mode"]),
                                       tuple(int(k) for k in s.get("nodes") or ()))
                               for s in j["segments"]] for j in data["jobs"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: not a plan file ({exc})") from None
