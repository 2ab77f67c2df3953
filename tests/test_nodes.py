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
    assert not evaluate(p, {j: [dataclasses.replace(s, nodes=(0,)) for s in segs] for j, segs in blind.items()}).valid
    s = solve(p, 2.0)
    e = evaluate(p, s.plan)
    assert e.valid, e.errors
    assert sorted((seg.start_slot, seg.nodes[0]) for segs in s.plan.values() for seg in segs) == [(4, 0), (6, 0)] \
        or sorted((seg.start_slot, seg.nodes[0]) for segs in s.plan.values() for seg in segs) == [(4, 0), (8, 1)]
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
        assert all(len(seg.nodes) == 1 for seg in segs)


def test_bad_nodes_in_a_problem_file_name_the_field() -> None:
    p = Problem(START, 60, 4, 0.0, (1.0, 2.0), (0.0, 0.0), (PJob("a", 0, 2, 1.0, gpus(1)),), nodes=((2, 2), (2, 2)))
    data = problem_to_json(p)
    data["nodes"] = [[2, 2], [2]]
    with pytest.raises(InputError, match=r"problem.nodes: need a list of 2 free-GPU counts"):
        problem_from_json(data)
    assert not evaluate(p, {"a": [Segment(0, 1, 0)]}).valid  # no node named
    assert not evaluate(p, {"a": [Segment(0, 1, 0, (2,))]}).valid  # no such node
    assert not evaluate(p, {"a": [Segment(0, 1, 0, (0, 1))]}).valid  # a one-node mode on two
    assert evaluate(p, {"a": [Segment(0, 1, 0, (1,))]}).valid
    data = problem_to_json(p)
    data["jobs"][0]["modes"][0]["nodes"] = 2
    with pytest.raises(InputError, match=r"problem.jobs\[0\].modes\[0\].nodes: 1 GPUs do not split evenly"):
        problem_from_json(data)
    data["jobs"][0]["modes"][0]["nodes"] = 0
    with pytest.raises(InputError, match=r"modes\[0\].nodes: must be an integer >= 1"):
        problem_from_json(data)


def test_a_job_across_nodes_takes_its_share_on_each_of_distinct_nodes() -> None:
    """Two 4-GPU nodes with 2 GPUs busy on each for the first 6 slots, cheap then: a 4-GPU job that may span two
    nodes runs at once, 2 on each (its one-node mode would wait 6 slots for a whole node); the plan names both
    nodes, evaluate holds each to its share, and the file formats keep it."""
    nodes = ((2,) * 6 + (4,) * 6, (2,) * 6 + (4,) * 6)
    modes = (Mode(4, 1.0, 1.2), Mode(4, 0.9, 1.2, nodes=2))
    job = PJob("wide", 0, 8, 4.0, modes, requested_mode=0)
    p = Problem(START, 60, 8, 0.0, (10.0,) * 6 + (90.0,) * 6, (0.0,) * 12, (job,), nodes=nodes)
    s = solve(p, 2.0)
    e = evaluate(p, s.plan)
    assert e.valid and not s.late, (e.errors, s.late)
    (seg,) = s.plan["wide"]
    assert seg.start_slot == 0 and seg.mode == 1 and sorted(seg.nodes) == [0, 1], seg
    assert not evaluate(p, {"wide": [Segment(0, 5, 1, (0, 0))]}).valid  # one node twice
    assert not evaluate(p, {"wide": [Segment(0, 5, 0, (0,))]}).valid  # 4 GPUs on a node with 2
    assert plan_from_json(json.loads(json.dumps(plan_to_json(s.plan)))) == s.plan
    assert problem_from_json(json.loads(json.dumps(problem_to_json(p)))) == p


def test_an_urgent_job_preempts_on_one_node_only_what_it_needs_there(tmp_path) -> None:
    """Two 4-GPU nodes, full: n1 runs a rigid and a preemptible 2-GPU job, n2 two preemptible ones. An urgent
    4-GPU job can only have n2 (n1's rigid job stays), so both of n2's jobs checkpoint, whatever their slack; the
    two with the most slack, one per node, would free 4 GPUs in the pool and none on a node. An urgent 6-GPU job
    fits on no node: nothing is preempted for it."""
    from datetime import timedelta

    from scheduler.jobfile import parse_job
    from scheduler.models import JobState
    from scheduler.planning import node_of
    from scheduler.policy import priority_preemptions
    from scheduler.store import Store
    from scheduler.timeutil import rfc3339

    store = Store(tmp_path / "g.db")
    now = START

    def add(name: str, gpus: int, preemptible: bool, due_h: float, urgent: bool = False) -> int:
        text = (f'name = "{name}"\ncommand = ["true"]\nduration = "1h"\ngpus = {gpus}\n'
                f'preemptible = {str(preemptible).lower()}\ndeadline = "{rfc3339(now + timedelta(hours=due_h))}"\n')
        job = store.add_job(parse_job(text, source=f"{name}.toml", base_dir=tmp_path, now=now), owner_uid=1000,
                            owner_name="u", urgent=urgent, now=now)
        return job.id or 0

    def run_on(job_id: int, node: str, gpus: int) -> None:
        seg = [rfc3339(now - timedelta(minutes=10)), rfc3339(now + timedelta(hours=1))]
        store.update(job_id, plan_json=json.dumps({"mode": {"gpus": gpus}, "segments": [seg], "nodes": [[node]]}))
        store.transition(job_id, JobState.RUNNING, at=now - timedelta(minutes=10), reason="test", gpus=gpus,
                         started_at=now - timedelta(minutes=10))

    ids = {"p1": add("p1", 2, True, 30), "r1": add("r1", 2, False, 30), "p2": add("p2", 2, True, 40),
           "p3": add("p3", 2, True, 5)}
    for name, node in (("p1", "n1"), ("r1", "n1"), ("p2", "n2"), ("p3", "n2")):
        run_on(ids[name], node, 2)
    urgent = {"u4": add("u4", 4, False, 2, urgent=True), "u6": add("u6", 6, False, 2, urgent=True)}
    for name, job_id in urgent.items():
        store.update(job_id, plan_json=json.dumps({"mode": {"gpus": int(name[1])}}))
    running, queued = store.jobs([JobState.RUNNING]), store.jobs([JobState.PENDING])
    free = {"n1": 0, "n2": 0}
    decisions = priority_preemptions(running, queued, now, free, lambda j: node_of(j, free), lambda j: True,
                                     lambda j: 1.0)
    assert [(job.id, sorted(c.job.id or 0 for c in victims)) for job, _why, victims in decisions] == \
        [(urgent["u4"], sorted([ids["p2"], ids["p3"]]))]


def test_an_urgent_job_is_pinned_where_a_node_has_room_not_where_the_pool_has() -> None:
    """Two 4-GPU nodes with 2 GPUs busy on each for 3 slots: the pool has 4 free at once, no node has; an urgent
    4-GPU job is due to start when a node frees (slot 3), and is planned there, on that node."""
    from scheduler.planning import with_urgent_pinned

    nodes = ((2,) * 3 + (4,) * 9, (2,) * 5 + (4,) * 7)
    job = PJob("now", 0, 12, 2.0, gpus(4))
    p = with_urgent_pinned(Problem(START, 60, 8, 0.0, (50.0,) * 4 + (10.0,) * 8, (0.0,) * 12, (job,), nodes=nodes),
                           [0])
    assert p.jobs[0].start_by_slot == 3
    s = solve(p, 2.0)
    assert evaluate(p, s.plan).valid and [(seg.start_slot, seg.nodes) for seg in s.plan["now"]] == [(3, (0,))]
