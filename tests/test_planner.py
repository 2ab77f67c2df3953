"""The planner against the contract's exact semantics: hand-made cases, brute force, and random problems."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from scheduler.errors import InputError
from scheduler.planner.baselines import BASELINES
from scheduler.planner.options import Costing
from scheduler.planner.problem import (Mode, PJob, Problem, Segment, evaluate, plan_from_json, problem_from_json,
                                       problem_to_json)
from scheduler.planner.relax import lp_bound
from scheduler.planner.solve import solve

START = datetime(2024, 3, 4, tzinfo=timezone.utc)
ONE = (Mode(1, 1.0, 1.0),)  # 1 GPU, 1 work unit per hour, 1 kW


def problem(prices: list[float], jobs: list[PJob], gpus: int = 1, carbon: list[float] | None = None,
            carbon_price: float = 0.0, slot_minutes: int = 60, objective: str = "cost") -> Problem:
    return Problem(START, slot_minutes, gpus, carbon_price, tuple(prices), tuple(carbon or [0.0] * len(prices)),
                   tuple(jobs), objective)


# --- the evaluator: the contract's semantics ----------------------------------------------------------------


def test_partial_last_slot_and_resume_overhead_are_priced_exactly() -> None:
    job = PJob("a", 0, 4, 1.5, ONE, preemptible=True, resume_overhead_minutes=30)
    p = problem([100.0, 200.0, 300.0, 400.0], [job])
    # 1 h in slot 0 (1 unit), then resumes in slot 2: 0.5 h overhead + 0.5 h progress, stops at 2.0 h in.
    e = evaluate(p, {"a": [Segment(0, 1, 0), Segment(2, 3, 0)]})
    assert e.valid, e.errors
    assert e.energy_kwh == pytest.approx(2.0)
    assert e.cost_eur == pytest.approx(0.1 + 0.3)
    assert e.jobs["a"].finish_h == pytest.approx(3.0)
    rigid = evaluate(p, {"a": [Segment(1, 3, 0)]})
    assert rigid.cost_eur == pytest.approx(0.2 + 0.5 * 0.3)  # stops drawing power halfway through slot 2


@pytest.mark.parametrize(("plan", "needle"), [
    ({"a": [Segment(0, 1, 0), Segment(2, 3, 0)]}, "rigid but has 2 segments"),
    ({"a": [Segment(0, 1, 0)]}, "work done by its last segment"),
    ({"a": [Segment(3, 5, 0)]}, "outside its window"),
    ({"a": [Segment(0, 2, 1)]}, "no mode 1"),
    ({}, "not planned"),
    ({"a": [Segment(0, 2, 0)], "zz": []}, "unknown job"),
])
def test_evaluator_names_each_broken_rule(plan: dict[str, list[Segment]], needle: str) -> None:
    p = problem([1.0] * 5, [PJob("a", 0, 4, 2.0, ONE)])
    e = evaluate(p, plan)
    assert not e.valid and any(needle in err for err in e.errors), e.errors


def test_capacity_is_checked_per_slot() -> None:
    p = problem([1.0] * 4, [PJob("a", 0, 4, 2.0, ONE), PJob("b", 0, 4, 2.0, ONE)])
    e = evaluate(p, {"a": [Segment(0, 2, 0)], "b": [Segment(1, 3, 0)]})
    assert e.errors == ["slot 1: 2 GPUs planned, 1 free"]


# --- the planner on hand-made cases --------------------------------------------------------------------------


def test_cheapest_window_before_the_deadline() -> None:
    p = problem([100, 90, 20, 10, 30, 5, 5, 100], [PJob("a", 0, 6, 2.0, ONE)])
    s = solve(p, 5)
    assert s.plan["a"] == [Segment(2, 4, 0)] and not s.late


def test_jobs_share_capacity_and_the_cheaper_total_wins() -> None:
    fast = (Mode(1, 1.0, 1.0), Mode(2, 2.0, 2.2))  # two GPUs: twice as fast, 10% more energy
    p = problem([50, 10, 10, 50, 50, 50], [PJob("a", 0, 6, 2.0, fast), PJob("b", 0, 6, 2.0, fast)], gpus=2)
    s = solve(p, 5)
    e = evaluate(p, s.plan)
    assert e.valid and e.cost_eur == pytest.approx(4 * 0.010)  # each on one GPU in slots 1-2


def test_carbon_price_and_carbon_objective_move_the_choice() -> None:
    jobs = [PJob("a", 0, 2, 1.0, ONE)]
    prices, carbon = [50.0, 55.0], [500.0, 50.0]
    assert solve(problem(prices, jobs, carbon=carbon), 5).plan["a"][0].start_slot == 0
    assert solve(problem(prices, jobs, carbon=carbon, carbon_price=100.0), 5).plan["a"][0].start_slot == 1
    assert solve(problem(prices, jobs, carbon=carbon, objective="carbon"), 5).plan["a"][0].start_slot == 1


def test_a_deadline_that_cannot_be_met_is_explained_and_planned_for_the_earliest_finish() -> None:
    p = problem([1.0] * 12, [PJob("big", 0, 3, 5.0, (Mode(2, 1.0, 1.0),)), PJob("x", 0, 12, 2.0, ONE)], gpus=2)
    s = solve(p, 5)
    assert "needs 5.0 h at 2 GPUs, 3.0 h left" in s.late["big"]
    assert s.plan["big"] == [Segment(0, 5, 0)]
    assert evaluate(p, s.plan).jobs["x"].finished


def test_a_job_that_fits_nowhere_is_reported_not_dropped() -> None:
    p = problem([1.0] * 4, [PJob("huge", 0, 4, 9.0, ONE)])
    s = solve(p, 5)
    assert "huge" in s.unplanned and "no room" in s.unplanned["huge"]


def test_equal_windows_tie_to_the_earliest_and_hysteresis_keeps_a_plan() -> None:
    p = problem([90, 90] + [0.1 + 0.2] * 8 + [90, 90], [PJob("a", 0, 12, 2.0, ONE)])
    assert solve(p, 5).plan["a"] == [Segment(2, 4, 0)]
    # Planned at slots 6-8 before; a 1% better window does not move it under 2% hysteresis, a 10% one does.
    cheaper = problem([90, 90, 0.297, 0.297] + [0.3] * 6 + [90, 90], [PJob("a", 0, 12, 2.0, ONE)])
    assert solve(cheaper, 5, {"a": (0, ((6, 8),))}, 0.02).plan["a"] == [Segment(6, 8, 0)]
    much = problem([90, 90, 0.27, 0.27] + [0.3] * 6 + [90, 90], [PJob("a", 0, 12, 2.0, ONE)])
    assert solve(much, 5, {"a": (0, ((6, 8),))}, 0.02).plan["a"] == [Segment(2, 4, 0)]


def test_preemptible_job_pauses_through_an_expensive_spell_when_it_pays() -> None:
    prices = [10, 10, 500, 500, 10, 10, 10]
    job = PJob("p", 0, 7, 4.0, ONE, preemptible=True, resume_overhead_minutes=6)
    s = solve(problem(prices, [job]), 5)
    # 2 h, pause through the 500s, then 2 h + the 6-minute resume overhead (into slot 6).
    assert [(seg.start_slot, seg.end_slot) for seg in s.plan["p"]] == [(0, 2), (4, 7)]
    e = evaluate(problem(prices, [job]), s.plan)
    assert e.valid and e.cost_eur == pytest.approx((10 + 10 + 10 + 10 + 0.1 * 10) / 1000)


# --- brute force on tiny problems ----------------------------------------------------------------------------


def brute_force_rigid(p: Problem) -> float:
    """Every start and mode, each run as short as the evaluator lets it finish: no planner code involved."""
    choices = []
    for job in p.jobs:
        options = []
        for m in range(len(job.modes)):
            for s in range(job.release_slot, job.deadline_slot):
                for e in range(s + 1, job.deadline_slot + 1):
                    alone = Problem(p.start, p.slot_minutes, p.gpus, 0.0, p.price_eur_per_mwh, p.carbon_g_per_kwh,
                                    (job,), slot0_elapsed_minutes=p.slot0_elapsed_minutes)
                    if evaluate(alone, {job.id: [Segment(s, e, m)]}).jobs[job.id].finished:
                        options.append((m, s, e))
                        break
        choices.append(options)
    best = float("inf")
    for combo in itertools.product(*choices):
        plan = {job.id: [Segment(s, e, m)] for job, (m, s, e) in zip(p.jobs, combo)}
        e = evaluate(p, plan)
        if e.valid:
            best = min(best, e.objective)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_small_rigid_problems(seed: int) -> None:
    import random

    rnd = random.Random(seed)
    horizon = 8
    prices = [rnd.uniform(-20, 200) for _ in range(horizon)]
    modes = (Mode(1, 1.0, 0.5), Mode(2, 1.8, 1.1))
    jobs = []
    for i in range(3):
        release = rnd.randrange(0, 3)
        jobs.append(PJob(f"j{i}", release, rnd.randrange(release + 3, horizon + 1), rnd.uniform(0.5, 2.5), modes))
    p = problem(prices, jobs, gpus=2, slot_minutes=60)
    if seed % 2:  # planned mid-slot: slot 0 is partly past, and a run from it may need one more slot
        p = dataclasses.replace(p, slot0_elapsed_minutes=25.0)
    expected = brute_force_rigid(p)
    s = solve(p, 5)
    if expected == float("inf"):
        assert s.late or s.unplanned
    else:
        assert not s.late and not s.unplanned
        assert evaluate(p, s.plan).objective == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_matches_brute_force_for_a_preemptible_job() -> None:
    prices = [30, 5, 80, 6, 7, 90, 4, 50]
    job = PJob("p", 0, 8, 2.5, (Mode(1, 1.0, 1.0),), preemptible=True, resume_overhead_minutes=15)
    p = problem(prices, [job])
    best = float("inf")
    for mask in itertools.product([0, 1], repeat=8):
        slots = [t for t, on in enumerate(mask) if on]
        if not slots:
            continue
        segments, start = [], slots[0]
        for a, b in zip(slots, slots[1:] + [None]):
            if b != a + 1:
                segments.append(Segment(start, a + 1, 0))
                start = b
        e = evaluate(p, {"p": segments})
        if e.valid:
            best = min(best, e.objective)
    assert evaluate(p, solve(p, 5).plan).objective == pytest.approx(best)


def plan_of(per_slot: tuple[int, ...]) -> list[Segment]:
    """Segments from one mode (or -1, idle) per slot; a change of mode starts a new segment."""
    segments: list[Segment] = []
    for t, m in enumerate(per_slot):
        if m < 0:
            continue
        if segments and segments[-1].end_slot == t and segments[-1].mode == m:
            segments[-1] = Segment(segments[-1].start_slot, t + 1, m)
        else:
            segments.append(Segment(t, t + 1, m))
    return segments


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_an_elastic_job_gets_the_exact_best_mode_per_slot(seed: int) -> None:
    """CarbonScaler's setting: one preemptible job whose worker count may change slot by slot, on a
    non-concave scaling profile (4 GPUs do more per kWh than 2). Brute force over every mode-or-idle per slot."""
    import random
    import time

    rng = random.Random(seed)
    prices = [rng.choice([5, 20, 60, 150]) * rng.uniform(0.8, 1.2) for _ in range(7)]
    modes = (Mode(1, 1.0, 1.0), Mode(2, 1.6, 2.2), Mode(4, 3.5, 4.2))
    job = PJob("e", 0, 7, 7.0, modes, preemptible=True, resume_overhead_minutes=6)
    p = problem(prices, [job], gpus=4)
    best = float("inf")
    for per_slot in itertools.product([-1, 0, 1, 2], repeat=7):
        e = evaluate(p, {"e": plan_of(per_slot)})
        if e.valid:
            best = min(best, e.objective)
    t0 = time.monotonic()
    s = solve(p, 5)
    took_s = time.monotonic() - t0
    got = evaluate(p, s.plan)
    assert got.valid, got.errors
    assert got.objective <= best * 1.005, (got.objective, best, s.plan)
    assert took_s < 5 / 2, (took_s, s.stats)  # a one-job problem is solved, not searched to its 5 s limit


def test_elastic_options_change_the_gpu_count_where_one_mode_cannot_fit_the_cheap_hours() -> None:
    """Two cheap windows of 2 h: 5 units of work fit only if one window runs on 2 GPUs. The greedy's own
    elastic option (no MILP) finds the mix, and capacity is counted per segment's GPUs."""
    prices = [100, 10, 10, 100, 100, 10, 10, 100]
    modes = (Mode(1, 1.0, 1.0), Mode(2, 1.8, 2.0))
    job = PJob("e", 0, 8, 5.4, modes, preemptible=True, resume_overhead_minutes=0)
    for use_milp in (False, True):
        p = problem(prices, [job], gpus=2)
        s = solve(p, 5, use_milp=use_milp)
        e = evaluate(p, s.plan)
        assert e.valid, e.errors
        gpus_by_slot = {t: modes[seg.mode].gpus for seg in s.plan["e"] for t in range(seg.start_slot, seg.end_slot)}
        assert set(gpus_by_slot) <= {1, 2, 5, 6}, s.plan  # never in a dear hour
        assert set(gpus_by_slot.values()) == {1, 2}, s.plan


def test_repair_makes_room_for_a_wide_job_that_narrow_ones_crowded_out() -> None:
    """Placed one at a time, four narrow jobs took the wide job's only window: the repair moves them out of its way
    (where they are still on time) and puts it in, instead of leaving it late."""
    from scheduler.planner.repair import repair
    from scheduler.planner.solve import Planner

    narrow = [PJob(f"n{i}", 0, 16, 4.0, (Mode(1, 1.0, 0.3),)) for i in range(4)]
    wide = PJob("wide", 0, 8, 4.0, (Mode(4, 1.0, 1.2),))
    p = problem([50.0] * 8 + [40.0] * 8, [*narrow, wide], gpus=4)
    planner = Planner(p)
    chosen = {j: planner._checked(j, 0, ((a, a + 4),)) for j, a in enumerate([0, 0, 4, 4])}
    late = planner.earliest_option(4, np.array([4 - 2] * 8 + [4] * 8))
    assert late is not None and late.late  # its earliest finish, given the narrow jobs, is past its deadline
    chosen[4] = late
    assert repair(planner, chosen, time.monotonic() + 10) == 1
    assert planner.lateness(chosen) == (0, 0)
    plan = {p.jobs[j].id: [Segment(a, b, o.mode) for a, b in o.segments] for j, o in chosen.items()}
    e = evaluate(p, plan)
    assert e.valid, e.errors
    assert plan["wide"][0].end_slot <= 8


def test_trade_gives_up_one_large_run_for_several_small_ones() -> None:
    """Beyond capacity, one late job beats four: the wide run that holds the small jobs' only window goes late."""
    from scheduler.planner.repair import trade
    from scheduler.planner.solve import Planner

    small = [PJob(f"s{i}", 0, 4, 2.0, (Mode(1, 1.0, 0.3),)) for i in range(4)]
    wide = PJob("wide", 0, 4, 4.0, (Mode(2, 1.0, 0.6),))
    p = problem([50.0] * 8, [*small, wide], gpus=2)
    planner = Planner(p)
    chosen = {4: planner._checked(4, 0, ((0, 4),))}
    free = np.array([0] * 4 + [2] * 4)
    for j in range(4):
        option = planner.earliest_option(j, free)
        assert option is not None and option.late
        chosen[j] = option
        planner._take(option, free)
    assert planner.lateness(chosen)[0] == 4
    assert trade(planner, chosen, time.monotonic() + 10) == 3
    assert planner.lateness(chosen)[0] == 1 and chosen[4].late
    loose = dataclasses.replace(p, jobs=tuple(dataclasses.replace(job, deadline_slot=8) for job in p.jobs))
    e = evaluate(loose, {p.jobs[j].id: [Segment(a, b, o.mode) for a, b in o.segments] for j, o in chosen.items()})
    assert e.valid, e.errors  # capacity holds (a late run is outside its window, as the evaluator says)


def _busy_day(seed: int, n: int, gpus: int) -> Problem:
    import random

    rnd = random.Random(seed)
    horizon = 96  # one day of 15-minute slots
    prices = [60 + 50 * math.sin(t / 10) + rnd.uniform(-10, 10) for t in range(horizon)]
    jobs = []
    for i in range(n):
        modes = (Mode(1, 1.0, 0.4), Mode(2, 1.8, 0.85), Mode(4, 3.2, 1.8))
        release = rnd.randrange(0, 48)
        jobs.append(PJob(f"j{i}", release, min(horizon, release + rnd.randrange(16, 60)), rnd.uniform(0.5, 4.0), modes,
                         0, rnd.random() < 0.4, 10.0))
    return problem(prices, jobs, gpus=gpus, slot_minutes=15)


def test_a_converged_replan_returns_before_its_limit_and_says_why() -> None:
    """A plan proven optimal ends the replan; so does a neighbourhood search whose sweeps stopped gaining. Each phase
    reports its time and gain."""
    import time

    from scheduler.planner.improve import candidates, neighbourhoods
    from scheduler.planner.solve import Planner

    s = solve(_busy_day(7, 16, 4), time_limit_s=300)
    assert s.stats["solve_s"] < 150 and s.stats["proven_optimal"] == 1.0, s.phases
    assert [p["phase"] for p in s.phases][:3] == ["queues", "pricing", "construction"]
    assert all(p["seconds"] >= 0 and p["gain"] is not None for p in s.phases)
    assert sum(p["gain"] for p in s.phases) > 0  # on FIFO's price: the plan is cheaper, or less late, than the queue
    planner = Planner(_busy_day(8, 16, 4))
    chosen = planner.fifo()
    columns, _truncated = candidates(planner, chosen, None, math.inf, 3000)
    stats: dict = {}
    began = time.monotonic()
    neighbourhoods(planner, chosen, columns, began + 300, stats)
    assert time.monotonic() - began < 150 and stats["lns_sweeps"] >= 2  # two sweeps without a gain end it


def test_the_neighbourhood_search_solves_a_group_once_while_the_plan_stands() -> None:
    """On no more jobs than a group holds, the sweep's group is all of them: sweeps that gain nothing solve that MILP
    once, not once per group and sweep (an 8-job replan solved it 16 times). Each MILP gets far more than the 0.1 s
    it needs: under CI's load a 1 s cap cut one off, and the smaller groups that follow a cut-off MILP are another
    (correct) path than the one this test checks."""
    import time

    from scheduler.planner.improve import candidates, neighbourhoods
    from scheduler.planner.solve import Planner

    planner = Planner(_busy_day(7, 12, 4))
    chosen = planner.fifo()
    columns, _truncated = candidates(planner, chosen, None, math.inf, 3000)
    # to where it gains nothing more
    neighbourhoods(planner, chosen, columns, time.monotonic() + 600, {}, step_limit_s=120)
    assert not any(option.late for option in chosen.values())  # else a late job's group is a second one
    stats: dict = {}
    assert not neighbourhoods(planner, chosen, columns, time.monotonic() + 600, stats, step_limit_s=120)
    assert stats["lns_sweeps"] == 2 and stats["lns_windows"] == 1, stats


def test_neighbourhood_search_keeps_every_rule_and_never_loses() -> None:
    import time

    from scheduler.planner.improve import candidates, neighbourhoods
    from scheduler.planner.solve import Planner

    p = _busy_day(7, 24, 4)
    jobs = p.jobs
    planner = Planner(p)
    chosen = planner.fifo()
    before = sum(planner.price(o) for o in chosen.values())
    columns, _truncated = candidates(planner, chosen, None, math.inf, 3000)
    stats: dict = {}
    assert any(o.late for o in chosen.values())  # a plain queue leaves jobs late here ...
    # until two sweeps gain nothing, each MILP uncapped: what it repairs must not hang on the machine's load
    neighbourhoods(planner, chosen, columns, time.monotonic() + 600, stats, step_limit_s=120)
    assert stats["lns_sweeps"] >= 1 and sum(planner.price(o) for o in chosen.values()) <= before
    assert not any(o.late for o in chosen.values())  # ... which re-placing a window's jobs together repairs
    plan = {jobs[j].id: [Segment(a, b, o.mode) for a, b in o.segments] for j, o in chosen.items()}
    e = evaluate(p, plan)
    assert e.valid, e.errors  # capacity and every window hold with the freed jobs re-placed


# --- random problems (hypothesis) ----------------------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    horizon = draw(st.integers(4, 16))
    gpus = draw(st.integers(1, 4))
    prices = draw(st.lists(st.floats(-50, 300), min_size=horizon, max_size=horizon))
    carbon = draw(st.lists(st.floats(20, 700), min_size=horizon, max_size=horizon))
    jobs = []
    for i in range(draw(st.integers(1, 5))):
        modes = tuple(Mode(g, draw(st.floats(0.2, 3.0)), draw(st.floats(0.05, 2.0)))
                      for g in draw(st.lists(st.integers(1, gpus), min_size=1, max_size=3)))
        release = draw(st.integers(0, horizon - 1))
        jobs.append(PJob(f"j{i}", release, draw(st.integers(release + 1, horizon + 2)), draw(st.floats(0.1, 4.0)),
                         modes, 0, draw(st.booleans()), draw(st.sampled_from([0.0, 5.0, 20.0]))))
    slot_minutes = draw(st.sampled_from([15, 30, 60]))
    return Problem(START, slot_minutes, gpus, draw(st.sampled_from([0.0, 100.0])),
                   tuple(prices), tuple(carbon), tuple(jobs), draw(st.sampled_from(["cost", "carbon"])),
                   slot0_elapsed_minutes=slot_minutes * draw(st.sampled_from([0.0, 0.0, 0.4, 0.95])))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_plan_keeps_every_rule_or_says_why(p: Problem) -> None:
    s = solve(p, 2)
    e = evaluate(p, s.plan)
    assert set(s.plan) | set(s.unplanned) == {job.id for job in p.jobs}  # nobody dropped
    broken = {err.split(":")[0] for err in e.errors}
    allowed = {f"job {job_id}" for job_id in list(s.late) + list(s.unplanned)}
    assert broken <= allowed, e.errors  # only late or unplanned jobs break a rule, and only their own
    assert not any(err.startswith("slot") for err in e.errors)  # capacity always holds
    if not s.late and not s.unplanned:
        assert e.valid
        bound, status = lp_bound(Costing(p))
        assert status == "Optimal" and bound <= e.objective + 1e-7 * max(1.0, abs(e.objective))
        # The planner gives a preemptible job one mode per plan (it changes mode across replans); CarbonScaler
        # may mix modes within one, so it is a fair yardstick only where such jobs have a single mode.
        mixed = any(job.preemptible and len(job.modes) > 1 for job in p.jobs)
        for name, policy in BASELINES.items():
            if name == "carbonscaler" and mixed:
                continue
            other = evaluate(p, policy(p))
            if other.valid:
                assert e.objective <= other.objective + 1e-7 * max(1.0, abs(other.objective)), name


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_the_lagrangian_bound_is_a_bound_and_no_better_than_the_lp(p: Problem) -> None:
    from scheduler.planner.lagrange import lagrangian

    costing = Costing(p)
    relaxation = lagrangian(costing, math.inf, max_steps=60)
    s = solve(p, 2)
    if relaxation is None or not math.isfinite(relaxation.bound) or s.late or s.unplanned:
        return
    assert (relaxation.capacity_price >= 0).all()
    lp, status = lp_bound(costing)
    e = evaluate(p, s.plan)
    assert relaxation.bound <= e.objective + 1e-7 * max(1.0, abs(e.objective))
    if status == "Optimal":  # the LP's dual is the best Lagrangian; the steps and the preemptible floor only lose
        assert relaxation.bound <= lp + 1e-7 * max(1.0, abs(lp))


def test_the_lagrangian_goes_on_from_the_prices_it_is_given() -> None:
    """Each replan has a few subgradient steps: started from the last replan's prices and step scale, ten short
    ascents get further than one; one step from given prices keeps their bound."""
    from scheduler.planner.lagrange import lagrangian
    from scheduler.planner.synthetic import heavy_problem

    price, carbon = embedded_week()
    costing = Costing(heavy_problem(150, 8, 0.8, 0.5, 3, START, price, carbon))
    cold = lagrangian(costing, math.inf, max_steps=4)
    chain = cold
    for _ in range(9):
        assert chain is not None
        chain = lagrangian(costing, math.inf, max_steps=4, price0=chain.capacity_price, theta0=chain.theta)
    assert cold is not None and chain is not None and chain.bound > cold.bound
    again = lagrangian(costing, math.inf, max_steps=1, price0=chain.capacity_price, theta0=chain.theta)
    assert again is not None and again.bound == pytest.approx(chain.bound, rel=1e-12)


def test_replans_from_the_previous_plan_never_get_worse() -> None:
    """Each replan starts from the last plan: on the same problem, a chain of replans only gets better in the
    planner's own order: fewer late jobs, then fewer late slots, then cheaper (no hysteresis, so the prices are the
    costs). A plan with as many late jobs but fewer late slots may cost more."""
    from scheduler.planner.synthetic import heavy_problem

    price, carbon = embedded_week()
    p = heavy_problem(250, 16, 0.8, 0.5, 7, START, price, carbon)
    previous = None
    last: tuple[int, int, float] | None = None
    for _ in range(3):
        s = solve(p, 1.0, previous)
        e = evaluate(p, s.plan)
        assert s.stats["late_jobs"] == len(s.late) + len(s.unplanned)
        now = (int(s.stats["late_jobs"]), int(s.stats["late_slots"]), e.objective)
        if last is not None:
            assert now[:2] < last[:2] or (now[:2] == last[:2] and now[2] <= last[2] * (1 + 1e-9)), (now, last,
                                                                                                 s.stats)
            assert s.stats["start"] == "previous" or now < last
        last, previous = now, {job_id: (o.mode, o.segments, o.seg_modes) for job_id, o in s.options.items()}


# --- the offline contract -------------------------------------------------------------------------------------


def test_problem_file_round_trips_and_bad_files_name_the_field(tmp_path: Path) -> None:
    p = problem([1.0, 2.0], [PJob("a", 0, 2, 1.0, ONE)])
    assert problem_from_json(json.loads(json.dumps(problem_to_json(p)))) == p
    data = problem_to_json(p)
    data["jobs"][0]["modes"][0]["rate"] = -1
    with pytest.raises(InputError, match=r"jobs\[0\].modes\[0\]: gpus >= 0, rate > 0"):
        problem_from_json(data)
    data = problem_to_json(p)
    data["signals"]["price_eur_per_mwh"] = [1.0]
    with pytest.raises(InputError, match="horizon_slots=2"):
        problem_from_json(data)
    mid = dataclasses.replace(p, slot0_elapsed_minutes=20.0)
    assert problem_from_json(json.loads(json.dumps(problem_to_json(mid)))) == mid
    data = problem_to_json(mid)
    data["slot0_elapsed_minutes"] = 60
    with pytest.raises(InputError, match=r"slot0_elapsed_minutes: must be a number in \[0, slot_minutes\)"):
        problem_from_json(data)
    pinned = dataclasses.replace(p, jobs=(dataclasses.replace(p.jobs[0], start_by_slot=0),))
    assert problem_from_json(json.loads(json.dumps(problem_to_json(pinned)))) == pinned
    assert not evaluate(pinned, {"a": [Segment(1, 2, 0)]}).valid  # on time, but it had to start in slot 0
    assert solve(pinned, 1.0).options["a"].start == 0  # though slot 1 is cheaper
    data = problem_to_json(pinned)
    data["jobs"][0]["start_by_slot"] = "0"
    with pytest.raises(InputError, match=r"jobs\[0\].start_by_slot: must be an integer >= 0"):
        problem_from_json(data)


def test_a_resumed_jobs_first_segment_pays_its_overhead_in_every_path_and_the_file_says_so() -> None:
    """A job going on from a checkpoint ("resumes") loses its resume overhead at the start of its first segment too:
    an hour holds 30 minutes of work after 30 of overhead, so 1 unit of work needs two slots, whichever path plans it."""
    resumed = PJob("a", 0, 3, 1.0, ONE, preemptible=True, resume_overhead_minutes=30, resumes=True)
    p = problem([1.0, 2.0, 3.0], [resumed])
    assert problem_from_json(json.loads(json.dumps(problem_to_json(p)))) == p
    assert not evaluate(p, {"a": [Segment(0, 1, 0)]}).valid
    assert evaluate(p, {"a": [Segment(0, 2, 0)]}).valid
    assert solve(p, 1.0).options["a"].segments == ((0, 2),)
    costing = Costing(p)
    assert costing.slots_needed(resumed, 0) == (2, pytest.approx(0.5))
    assert costing.split_option(0, 0, costing.capacity.copy()).segments == ((0, 2),)
    assert costing.simulate(resumed, 0, ((0, 1),))[1] is False  # not done in one slot
    fresh = problem([1.0, 2.0, 3.0], [dataclasses.replace(resumed, resumes=False)])
    assert solve(fresh, 1.0).options["a"].segments == ((0, 1),)
    data = problem_to_json(p)
    data["jobs"][0]["resumes"] = "yes"
    with pytest.raises(InputError, match=r"jobs\[0\].resumes: must be true or false"):
        problem_from_json(data)


def test_gsched_plan_honours_the_file_contract(tmp_path: Path) -> None:
    data = {
        "start": "2024-03-04T00:00:00Z", "slot_minutes": 15, "horizon_slots": 8, "gpus": 2,
        "carbon_price_eur_per_t": 50.0, "note": "extra keys are allowed",
        "signals": {"price_eur_per_mwh": [90, 80, 10, 10, 10, 10, 80, 90],
                    "carbon_g_per_kwh": [400, 400, 100, 100, 100, 100, 400, 400]},
        "jobs": [{"id": "a", "release_slot": 0, "deadline_slot": 8, "work": 1.0, "preemptible": False,
                  "resume_overhead_minutes": 0, "requested_mode": 0, "extra": True,
                  "modes": [{"gpus": 1, "rate": 1.0, "power_kw": 0.3}, {"gpus": 2, "rate": 1.9, "power_kw": 0.62}]},
                 {"id": "b", "release_slot": 1, "deadline_slot": 8, "work": 0.5, "preemptible": True,
                  "resume_overhead_minutes": 5, "requested_mode": 0,
                  "modes": [{"gpus": 1, "rate": 1.0, "power_kw": 0.3}]}],
    }
    problem_path, plan_path = tmp_path / "problem.json", tmp_path / "plan.json"
    problem_path.write_text(json.dumps(data))
    result = subprocess.run([sys.executable, "-m", "scheduler.cli", "plan", "--problem", str(problem_path),
                             "--output", str(plan_path), "--compare", "--json"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout holds only the JSON
    plan_doc = json.loads(plan_path.read_text())
    assert {j["id"] for j in plan_doc["jobs"]} == {"a", "b"}
    assert all(set(seg) == {"start_slot", "end_slot", "mode"} for j in plan_doc["jobs"] for seg in j["segments"])
    e = evaluate(problem_from_json(data), plan_from_json(plan_doc))
    assert e.valid and summary["objective"] == pytest.approx(e.objective)
    assert summary["baselines"]["run-now"]["saving_pct"] > 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**data, "gpus": "two"}))
    result = subprocess.run([sys.executable, "-m", "scheduler.cli", "plan", "--problem", str(bad), "--output",
                             str(plan_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "gpus: wrong type" in result.stderr


# --- heavy weeks: deadlines before cost, and the time limit -------------------------------------------------------


def lateness_h(p: Problem, plan: dict[str, list[Segment]]) -> tuple[int, float]:
    from scheduler.planner.problem import lateness

    return lateness(p, evaluate(p, plan))


def embedded_week() -> tuple[list[float], list[float]]:
    """The embedded DE June 2023 trace on 15-minute slots, one week."""
    from scheduler.forecasts.trace import TraceProvider

    provider = TraceProvider(None)
    start = datetime(2026, 6, 1, tzinfo=timezone.utc)
    forecast = provider.forecast(start, start.replace(day=8))
    price, carbon = forecast.on_grid(start, 900, 7 * 96)
    return list(price), list(carbon)


@pytest.mark.parametrize(("n_jobs", "gpus", "load", "share", "seed"),
                         [(200, 24, 0.85, 0.5, 944984), (300, 8, 0.85, 1.0, 166076), (100, 24, 0.5, 0.0, 534948)])
def test_heavy_weeks_keep_the_limit_and_every_deadline_a_queue_keeps(n_jobs: int, gpus: int, load: float,
                                                                     share: float, seed: int) -> None:
    import time

    from scheduler.planner.baselines import run_now
    from scheduler.planner.synthetic import heavy_problem

    price, carbon = embedded_week()
    p = heavy_problem(n_jobs, gpus, load, share, seed, START, price, carbon)
    limit_s = 1.0
    t0 = time.monotonic()
    s = solve(p, limit_s)
    took_s = time.monotonic() - t0
    # A runaway check only: a step that ignores the deadline takes many times the limit. How far past the limit
    # the planner ends is measured by bench/planner_sweep.py (a tighter wall-clock bound here failed on a slower
    # CI, and three tests share this machine's two cores).
    assert took_s <= 10 * limit_s, (took_s, s.stats)
    mine = lateness_h(p, s.plan)
    fifo = lateness_h(p, run_now(p))
    # fewer late jobs first, then fewer late hours: never later than FIFO (EDF may leave fewer late jobs, but it
    # starts some of them after FIFO would: a late job may not wait behind later ones, below)
    assert mine[0] < fifo[0] or (mine[0] == fifo[0] and mine[1] <= fifo[1] + 1e-6), (mine, fifo, s.stats)
    # a job that cannot meet its deadline (FIFO leaves it late too) starts no later than FIFO starts it; one FIFO
    # keeps on time may be left late for others, wherever it runs
    fifo_plan = run_now(p)
    first = {job_id: segments[0].start_slot for job_id, segments in fifo_plan.items()}
    fifo_late = {job.id for job in p.jobs if job.id in fifo_plan
                 and max(seg.end_slot for seg in fifo_plan[job.id]) > job.deadline_slot}
    behind = [job.id for job in p.jobs if job.id in s.late and job.id in fifo_late
              and s.plan[job.id][0].start_slot > first[job.id]]
    assert not behind, (behind, s.stats)


def test_the_deadline_fallback_never_raises_the_number_of_late_jobs() -> None:
    from scheduler.planner.solve import later

    assert not later((2, 494), (8, 231))  # fewer late jobs, more late slots: kept (was replaced by the queue's 8)
    assert later((3, 10), (2, 900)) and later((2, 12), (2, 11)) and not later((2, 11), (2, 11))


# --- the daemon's planning step: a plan made mid-slot --------------------------------------------------------


def test_a_plan_made_mid_slot_never_needs_more_devices_than_exist(tmp_path: Path) -> None:
    """Two devices; a running job holds one until 5 minutes into the next slot's grid; the plan is made 10 minutes
    into a 15-minute slot. The job that runs now ends 10 minutes later than a run from the slot's start would: the
    2-device jobs after it must wait for it, at every instant of the plan."""
    from datetime import timedelta

    from scheduler.config import Config
    from scheduler.devices import Device
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.planning import Planning, busy_per_slot, run_end
    from scheduler.profiles import Profiles
    from scheduler.store import Store

    store = Store(tmp_path / "g.db")
    config = Config()
    devices = [Device(i, f"GPU-{i}", "fake GPU", "gpu") for i in range(2)]
    planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
    slot = timedelta(minutes=15)
    grid0 = datetime(2026, 6, 3, 12, tzinfo=timezone.utc)
    now = grid0 + timedelta(minutes=10)

    def add(text: str, name: str, urgent: bool = False) -> int:
        spec = parse_job(f'name = "{name}"\ncommand = ["true"]\n' + text, source=f"{name}.toml", base_dir=tmp_path,
                         now=now)
        job = store.add_job(spec, owner_uid=1000, owner_name="u", urgent=urgent, now=now)
        assert job.id is not None
        return job.id

    running = add('duration = "30m"\n', "running")
    store.update(running, state=JobState.RUNNING, gpus=1, planned_start=now - timedelta(minutes=25),
                 planned_end=now + timedelta(minutes=5))
    add('duration = "15m"\n', "now", urgent=True)  # runs 12:10-12:25: slots 0 and 1
    for k in range(2):
        add('duration = "15m"\nmax_delay = "50m"\ngpus = 2\n', f"wide{k}")  # due 13:00: slots 2 and 3 are left
    held = busy_per_slot(store.jobs([JobState.RUNNING]), now, grid0, slot, 4 * 48)
    planning.replan(now, grid0, store.jobs([JobState.PENDING]), {"local": [2 - h for h in held]}, {})
    spans = [(now, run_end(j) or now, j.gpus or 0) for j in store.jobs([JobState.RUNNING])]
    planned = store.jobs([JobState.PLANNED])
    assert len(planned) == 3 and not any(json.loads(j.plan_json or "{}").get("late") for j in planned)
    spans += [(j.planned_start, j.planned_end, j.planned_gpus or 0) for j in planned]
    for at in sorted({s for s, _e, _g in spans}):
        assert sum(g for s, e, g in spans if s <= at < e) <= 2, (at, spans)


def test_a_replan_starts_from_exactly_the_plan_the_last_one_stored(tmp_path: Path) -> None:
    """The daemon stores a plan as it will follow it (a short elastic tail becomes a longer first run); the next
    replan must read back the planner's own options: a run stretched to its tail would overlap the jobs planned after
    it, the repaired plan would lose them, and replans would not add up. Its GPU-slot prices carry over too."""
    import random
    from datetime import timedelta

    from scheduler.config import Config, PlannerSettings
    from scheduler.devices import Device
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.planning import Planning, prices_on
    from scheduler.profiles import Profiles
    from scheduler.store import Store

    store = Store(tmp_path / "g.db")
    config = Config(planner=PlannerSettings(time_limit_s=1.0, horizon_hours=48, elastic_extend_minutes=45))
    devices = [Device(i, f"GPU-{i}", "fake GPU", "gpu", 80 * 1024, 700.0, 200.0, 700.0) for i in range(8)]
    planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    rnd = random.Random(3)
    for k in range(80):
        low = rnd.choice([1, 1, 2, 4])
        text = (f'name = "j{k}"\ncommand = ["true"]\nduration = "{rnd.randint(10, 120)}m"\n'
                f'gpus = {{ min = {low}, max = {2 * low if rnd.random() < 0.5 else low} }}\n'
                f'preemptible = {str(rnd.random() < 0.6).lower()}\nmax_delay = "{rnd.randint(12, 40)}h"\n')
        store.add_job(parse_job(text, source=f"j{k}.toml", base_dir=tmp_path, now=now), owner_uid=1000,
                      owner_name="u", urgent=False, now=now)
    queued = store.jobs([JobState.PENDING])
    planning.replan(now, now, queued, {"local": [8] * 192}, {})
    first = planning.last_solution
    assert first is not None and first.prices is not None and not first.late
    plans = [json.loads(j.plan_json or "{}") for j in store.jobs([JobState.PLANNED])]
    assert any("planner_segments" in plan for plan in plans)  # some run was stretched over its short tail
    planning.replan(now, now, store.jobs([JobState.PLANNED]), {"local": [8] * 192}, {})
    assert planning.last_previous == {job_id: (o.mode, o.segments, o.seg_modes)
                                      for job_id, o in first.options.items()}
    assert planning.last_solution is not None and planning.last_solution.stats["start"] in ("previous", "greedy")
    # the prices move with the grid: two slots on, the first two are gone and two new ones at 0 close the horizon
    moved = prices_on((now, first.prices[0], first.prices[1]), now + timedelta(minutes=30), timedelta(minutes=15), 192)
    assert moved is not None and list(moved[0]) == list(first.prices[0][2:]) + [0.0, 0.0]
    assert prices_on((now, first.prices[0], 1.0), now + timedelta(minutes=20), timedelta(minutes=15), 192) is None


def test_an_urgent_job_starts_when_its_devices_are_free_whatever_the_minute_or_the_price(tmp_path: Path) -> None:
    """--now means now: planned at every minute of a slot through a day of real prices (where the next slot is often
    cheaper and a run from mid-slot spills into it anyway), an urgent job starts at once; with its device held by a
    rigid job until 12:40, it starts at the first slot the device is free, however dear."""
    from datetime import timedelta

    from scheduler.config import Config, PlannerSettings
    from scheduler.devices import Device
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.planning import Planning, busy_per_slot
    from scheduler.profiles import Profiles
    from scheduler.store import Store

    config = Config(planner=PlannerSettings(time_limit_s=0.5))
    devices = [Device(0, "GPU-0", "fake GPU", "gpu")]
    slot = timedelta(minutes=15)
    day = datetime(2023, 6, 4, tzinfo=timezone.utc)
    waited = []
    for k, minutes in enumerate(range(0, 24 * 60, 37)):
        store = Store(tmp_path / f"g{k}.db")
        planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
        now = day + timedelta(minutes=minutes)
        grid0 = now - (now - day) % slot
        spec = parse_job('name = "now"\ncommand = ["true"]\nduration = "7m"\n', source="now.toml",
                         base_dir=tmp_path, now=now)
        job = store.add_job(spec, owner_uid=1000, owner_name="u", urgent=True, now=now)
        planning.replan(now, grid0, store.jobs([JobState.PENDING]), {"local": [1] * 96}, {})
        planned = store.get(job.id or 0)
        if planned.planned_start != now:
            waited.append((now, planned.planned_start, planned.plan_reason))
        assert planned.plan_reason == "runs now (--now) on 1xgpu fp32", planned.plan_reason
    assert not waited, waited

    store = Store(tmp_path / "busy.db")
    planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
    now = day + timedelta(hours=12, minutes=5)
    rigid = store.add_job(parse_job('name = "rigid"\ncommand = ["true"]\nduration = "1h"\n', source="r.toml",
                                    base_dir=tmp_path, now=now), owner_uid=1000, owner_name="u", urgent=False, now=now)
    store.update(rigid.id or 0, state=JobState.RUNNING, gpus=1, planned_start=now - timedelta(minutes=25),
                 planned_end=now + timedelta(minutes=35))
    job = store.add_job(parse_job('name = "now"\ncommand = ["true"]\nduration = "7m"\n', source="now.toml",
                                  base_dir=tmp_path, now=now), owner_uid=1000, owner_name="u", urgent=True, now=now)
    held = busy_per_slot(store.jobs([JobState.RUNNING]), now, day + timedelta(hours=12), slot, 96)
    planning.replan(now, day + timedelta(hours=12), store.jobs([JobState.PENDING]), {"local": [1 - h for h in held]}, {})
    assert store.get(job.id or 0).planned_start == day + timedelta(hours=12, minutes=45)


def test_a_workload_with_a_duration_is_planned_in_steps_once_measured(tmp_path: Path) -> None:
    """A workload's file may give both its steps and a duration: the duration is the estimate until a run measures
    its steps per second; then the measured rate (steps per hour) must meet work in steps, not in hours (mixing
    them planned a 2-minute job as over in an instant)."""
    from types import SimpleNamespace

    from scheduler.jobfile import parse_job
    from scheduler.planner.estimate import job_modes

    spec = parse_job('workload = "jobs.linear"\nsteps = 20000\nduration = "3m"\n', source="j.toml",
                     base_dir=tmp_path, now=START)
    before = job_modes(spec, 1, "cpu", 100.0, 1000.0)
    assert before.work / before.modes[before.requested].rate * 3600 == pytest.approx(180.0)
    measured = SimpleNamespace(gpus=1, precision="fp32", power_limit_w=0, pruning="0", compile=False,
                               steps_per_s=160.0, watts=90.0)
    after = job_modes(spec, 1, "cpu", 100.0, 1000.0, profiles=[measured])
    assert after.work / after.modes[after.requested].rate * 3600 == pytest.approx(20000 / 160.0)


def test_jobs_longer_than_the_horizon_are_planned(tmp_path: Path) -> None:
    """The planner's 48 h horizon is a minimum: a 60 h job due in four days, a 120 h one due in six, a 7-day
    preemptible one due in eight, and a 60 h one whose deadline (24 h) cannot be met all get a plan, the last one
    as early as the devices allow and saying how late it will be (they stayed PENDING for good, "no room in the
    horizon")."""
    from datetime import timedelta

    from scheduler.config import Config, PlannerSettings
    from scheduler.devices import Device
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.planning import Planning
    from scheduler.profiles import Profiles
    from scheduler.store import Store

    store = Store(tmp_path / "g.db")
    config = Config(planner=PlannerSettings(time_limit_s=1.0))
    devices = [Device(i, f"GPU-{i}", "fake GPU", "gpu") for i in range(4)]
    planning = Planning(config, store, TraceProvider(), Profiles(config, store, devices, {}, 1.0))
    now = datetime(2026, 12, 5, 12, 7, tzinfo=timezone.utc)
    grid0 = now.replace(minute=0)
    bodies = {"long": 'duration = "60h"\ndeadline = 2026-12-09T12:00:00Z\n',
              "longer": 'duration = "120h"\ndeadline = 2026-12-11T12:00:00Z\n',
              "week": 'duration = "168h"\npreemptible = true\ndeadline = 2026-12-13T12:00:00Z\n',
              "late": 'duration = "60h"\nmax_delay = "24h"\n'}
    for name, body in bodies.items():
        spec = parse_job(f'name = "{name}"\ncommand = ["sleep", "100000"]\n' + body, source=f"{name}.toml",
                         base_dir=tmp_path, now=now)
        store.add_job(spec, owner_uid=1000, owner_name="u", urgent=False, now=now)
    asked: list[int] = []

    def free(slots: int) -> dict[str, list[int]]:
        asked.append(slots)
        return {"local": [4] * slots}

    planning.replan(now, grid0, store.jobs([JobState.PENDING]), free, {})
    jobs = {j.name: j for j in store.jobs()}
    assert asked[0] == 48 * 4 and asked[-1] >= 8 * 24 * 4, asked  # the horizon grew to the last deadline and past
    assert all(j.state == JobState.PLANNED and j.planned_start is not None for j in jobs.values()), \
        {n: (j.state, j.plan_reason) for n, j in jobs.items()}
    for name in ("long", "longer", "week"):
        assert jobs[name].planned_end is not None and jobs[name].planned_end <= jobs[name].deadline, jobs[name]
    late = jobs["late"]
    assert late.planned_start is not None and late.planned_start == now, late  # at once: no cheaper hour is worth more lateness
    assert late.plan_reason and "needs 60.0 h" in late.plan_reason and "planned for its earliest finish" in \
        late.plan_reason, late.plan_reason


def test_the_price_of_waiting_moves_a_job_earlier_and_is_not_a_cost() -> None:
    """A busy queue prices each hour a job waits (Problem.wait_pct_per_h): a 10% cheaper window 4 h away is not worth
    it at 5%/h, and the plan's cost and reason stay the energy's own."""
    prices = [100.0] * 4 + [90.0] * 4
    job = PJob("a", 0, 8, 2.0, ONE)
    free = solve(problem(prices, [job]))
    assert free.plan["a"][0].start_slot == 4
    busy = solve(dataclasses.replace(problem(prices, [job]), wait_pct_per_h=5.0))
    assert busy.plan["a"][0].start_slot == 0
    assert busy.objective == pytest.approx(2 * 0.1)  # the price of waiting is never reported as a cost


def test_the_price_of_waiting_is_on_when_the_work_is_done_so_a_sliver_of_a_long_job_is_no_head_start() -> None:
    """Priced on a job's start, a long preemptible job's first slot in front of a short job looked like all of it
    started at once: the sliver won, and a replay paused and resumed it at every boundary while the short job waited.
    On when its work is done, the sliver gains the long job what it costs the short one, and its resume costs more."""
    long = PJob("long", 0, 24, 12.0, ONE, preemptible=True, resume_overhead_minutes=6)
    short = PJob("short", 0, 8, 2.0, ONE)
    prices = [100.0] * 4 + [80.0] * 2 + [100.0] * 18  # whoever runs in the cheap two hours saves the same
    plan = solve(dataclasses.replace(problem(prices, [long, short]), wait_pct_per_h=5.0)).plan
    # (on the start: long [0, 4) + [6, 15) around short [4, 6), paying a resume for nothing)
    assert len(plan["long"]) == 1 and len(plan["short"]) == 1, plan  # one after the other: no resume paid


def test_only_a_backlog_of_a_day_of_work_pays_the_price_of_waiting() -> None:
    from scheduler.planning import BUSY_FROM_H, BUSY_FULL_H, busy_share

    def queue(gpu_h: float) -> list[PJob]:
        return [PJob("a", 0, 8, gpu_h / 4, (Mode(4, 1.0, 1.2),))]

    capacity = [8] * 96  # 15-minute slots, 8 GPUs free
    assert busy_share(queue(8 * (BUSY_FROM_H - 1)), capacity, 0.25) == 0.0
    assert busy_share(queue(8 * (BUSY_FROM_H + BUSY_FULL_H) / 2), capacity, 0.25) == pytest.approx(0.5)
    assert busy_share(queue(8 * (BUSY_FULL_H + 5)), capacity, 0.25) == 1.0
    assert busy_share(queue(1.0), [0] * 96, 0.25) == 1.0  # every GPU taken for a day: the queue waits for them
    assert busy_share([], [0] * 96, 0.25) == 0.0


def test_a_job_no_plan_brings_on_time_is_counted_as_late_in_every_plan_and_not_repaired() -> None:
    """A job that cannot meet its deadline even with every free GPU to itself (the running jobs hold the rest) is
    late in any plan: the planner's lower bound on late jobs counts it, and repair, which only moves other queued
    jobs, does not spend an overloaded replan's time on it. One that the other queued jobs crowd out is not so."""
    from scheduler.planner.solve import Planner

    crowded = PJob("crowded", 0, 3, 2.0, ONE)  # on time alone (slots 0-1); FIFO puts it behind "first"
    first = PJob("first", 0, 8, 4.0, ONE)
    hopeless = PJob("hopeless", 0, 3, 2.0, (Mode(2, 1.0, 1.0),))  # 2 GPUs: only 1 is free before slot 2
    p = dataclasses.replace(problem([50.0] * 8, [first, crowded, hopeless], gpus=2), capacity=(1, 1, 2, 2, 2, 2, 2, 2))
    planner = Planner(p)
    assert [planner.hopeless(j) for j in range(3)] == [False, False, True]
    fifo = planner.fifo()
    assert planner.lateness(fifo)[0] >= 2 and planner.fewest_late(fifo) == 1
    solution = solve(p, 2.0)
    assert set(solution.late) == {"hopeless"}, solution.late


def test_an_overloaded_online_queue_is_planned_by_construction_alone_and_keeps_its_jobs_on_time() -> None:
    """Waiting has a price (the daemon's backlog is over a day's work) and FIFO leaves a job late that another order
    keeps on time: the replan ends after construction, whose reordering still brings that job on time. Offline (no
    price of waiting), or where FIFO is late only for jobs no plan saves, the improvement runs."""
    first = PJob("first", 0, 8, 4.0, ONE)
    crowded = PJob("crowded", 0, 3, 2.0, ONE)  # FIFO runs it after "first": late; first-come second is on time
    prices = [50.0, 60.0, 40.0, 30.0, 50.0, 20.0, 60.0, 70.0]
    online = dataclasses.replace(problem(prices, [first, crowded]), wait_pct_per_h=5.0)
    s = solve(online, 2.0)
    assert not s.late and s.plan["crowded"][0].end_slot <= 3, s.plan
    assert [p["phase"] for p in s.phases] == ["queues", "pricing", "construction", "milp"], s.phases
    assert "overloaded" in str(s.phases[-1]["note"])
    offline = solve(problem(prices, [first, crowded]), 2.0)
    assert "overloaded" not in str(offline.phases[3]["note"]) and not offline.late, offline.phases
    calm = solve(dataclasses.replace(problem(prices, [first, PJob("calm", 0, 8, 2.0, ONE)], gpus=2),
                                     wait_pct_per_h=5.0), 2.0)
    assert "overloaded" not in str(calm.phases[3]["note"]), calm.phases


def test_improving_replans_end_at_a_plan_that_leaves_jobs_late_and_gains_nothing() -> None:
    """The daemon replans again from its last plan while that improves it; one cut-off replan without gain may be
    followed by one that gains, unless it leaves jobs late (its late runs were re-placed after the search, so the
    next does not go on from where it ended) or ended before its limit."""
    from scheduler.planning import STALE_REPLANS, stale_after

    def stats(late_jobs: int, objective: float, solve_s: float = 1.0) -> dict:
        return {"solve_s": solve_s, "previous_late_jobs": 6, "previous_late_slots": 199, "previous_objective": 100.0,
                "late_jobs": late_jobs, "late_slots": 131 if late_jobs == 7 else 199, "objective_priced": objective}

    assert stale_after(1, stats(5, 100.0), True, 1.0) == 0  # fewer late jobs: improving, late or not
    assert stale_after(0, stats(6, 100.0), False, 1.0) == 1  # no gain, cut off, none late: one more may follow
    assert stale_after(0, stats(7, 90.0), True, 1.0) == STALE_REPLANS  # 6 late -> 7: no gain, late: ends at once
    assert stale_after(0, stats(6, 100.0, solve_s=0.2), False, 1.0) == STALE_REPLANS  # ended early: converged
