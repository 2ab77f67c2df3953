"""A partition of several nodes: the planner puts every segment on one node, so that Slurm can start each job at
its planned time; the pooled plan it starts from is checked against the same exact semantics (evaluate)."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import datetime, timezone

import pytest

from scheduler.errors import InputError
from scheduler.planner.problem import (Mode, PJob, Problem, Segment, evaluate, plan_from_json, plan_to_json,
                                       problem_from_json, problem_to_json)
from scheduler.planner.solve import solve

START = datetime(2024, 3, 4, tzinfo=timezone.utc)


def gpus(n: int) -> tuple[Mode, ...]:
    return (Mode(n, 1.0, 0.3 * n),)


def test_two_three_gpu_jobs_on_two_half_busy_four_gpu_nodes_wait_for_a_node() -> None:
    """Two 4-GPU nodes with 2 GPUs busy on each until slots 4 and 8: the pool has 4 GPUs free from slot 0, room
    for one 3-GPU job, but no node has 3. Each job waits for a node of its own; the plan says which."""
    prices = [10.0] * 4 + [50.0] * 12  # the cheap hours are the busy ones
    nodes = ((2,) * 4 + (4,) * 12, (2,) * 8 + (4,) * 8)
    jobs = [PJob(f"j{k}", 0, 16, 2.0, gpus(3)) for k in range(2)]
    pooled = Problem(START, 60, 8, 0.0, tuple(prices), (0.0,) * 16, tuple(jobs),
                     capacity=tuple(a + b for a, b in zip(*nodes)))
    blind = solve(pooled, 2.0).plan
    assert min(s.start_slot for segs in blind.values() for s in segs) < 4  # the pool alone starts one at once
    p = dataclasses.replace(pooled, nodes=nodes)
    assert not evaluate(p, {j: [dataclasses.replace(s, node=0) for s in segs] for j, segs in blind.items()}).valid
    s = solve(p, 2.0)
    e = evaluate(p, s.plan)
    assert e.valid, e.errors
    assert sorted((seg.start_slot, seg.node) for segs in s.plan.values() for seg in segs) == [(4, 0), (6, 0)] \
        or sorted((seg.start_slot, seg.node) for segs in s.plan.values() for seg in segs) == [(4, 0), (8, 1)]
    assert s.stats["moved_to_fit_nodes"] >= 1
    assert plan_from_json(json.loads(json.dumps(plan_to_json(s.plan)))) == s.plan
    assert problem_from_json(json.loads(json.dumps(problem_to_json(p)))) == p


def test_a_mix_on_many_nodes_is_valid_node_by_node_and_keeps_its_deadlines() -> None:
    """40 jobs of 1-4 GPUs (elastic and rigid) on four 4-GPU nodes, some GPUs busy: the plan passes the exact
    check node by node, and no job is late that a plan on the pool would have on time."""
    rnd = random.Random(5)
    horizon = 96
    prices = tuple(60 + 40 * ((t // 12) % 2) + rnd.uniform(-5, 5) for t in range(horizon))
    nodes = tuple(tuple(4 - (2 if t < rnd.randint(0, 20) else 0) for t in range(horizon)) for _ in range(4))
    jobs = []
    for k in range(40):
        g = rnd.choice([1, 1, 2, 3, 4])
        modes = (Mode(g, 1.0, 0.3 * g),) + ((Mode(2 * g, 1.9, 0.6 * g),) if 2 * g <= 4 else ())
        jobs.append(PJob(f"j{k}", rnd.randint(0, 10), horizon, rnd.uniform(1, 6), modes,
                         preemptible=rnd.random() < 0.5, resume_overhead_minutes=5))
    p = Problem(START, 60, 16, 0.0, prices, (0.0,) * horizon, tuple(jobs), nodes=nodes)
    s = solve(p, 3.0)
    e = evaluate(p, s.plan)
    assert e.valid, e.errors[:5]
    assert not s.late and not s.unplanned
    for segs in s.plan.values():
        assert all(seg.node is not None for seg in segs)


def test_bad_nodes_in_a_problem_file_name_the_field() -> None:
    p = Problem(START, 60, 4, 0.0, (1.0, 2.0), (0.0, 0.0), (PJob("a", 0, 2, 1.0, gpus(1)),), nodes=((2, 2), (2, 2)))
    data = problem_to_json(p)
    data["nodes"] = [[2, 2], [2]]
    with pytest.raises(InputError, match=r"problem.nodes: need a list of 2 free-GPU counts"):
        problem_from_json(data)
    assert not evaluate(p, {"a": [Segment(0, 1, 0)]}).valid  # no node named
    assert not evaluate(p, {"a": [Segment(0, 1, 0, 2)]}).valid  # no such node
    assert evaluate(p, {"a": [Segment(0, 1, 0, 1)]}).valid
