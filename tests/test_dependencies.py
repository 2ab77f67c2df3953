"""Dependencies, as sbatch --dependency says them: saying them, holding a dependent back, cancelling it when they
can never hold, and keeping them across a daemon restart. Real daemon, real CLI, real subprocesses."""

from __future__ import annotations

import random
import re
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import DaemonProc, needs_users, write_job
from scheduler.dependencies import ENDED, Dependency, blocked, parse
from scheduler.errors import InputError, JobFileError
from scheduler.jobfile import parse_job
from scheduler.models import TERMINAL, JobState
from scheduler.planner.baselines import BASELINES
from scheduler.planner.problem import Problem, evaluate, problem_from_json, problem_to_json
from scheduler.planner.solve import solve
from scheduler.plots import plan_png
from test_elastic import trace_daemon

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
SLEEP = 'command = ["sleep", "{s}"]\nduration = "1m"\n'
TRUE = 'command = ["true"]\nduration = "1m"\n'
GATED = 'command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.1; done"]\nduration = "1m"\n'  # ends on `touch go`


def test_a_job_file_says_its_dependencies_as_ids_or_as_sbatch_does() -> None:
    def after(value: str) -> tuple[Dependency, ...]:
        return parse_job(f"{TRUE}after = {value}\n", source="j.toml", base_dir=Path("/"), now=NOW).after

    assert after("[12, 13]") == (Dependency("afterok", 12), Dependency("afterok", 13))
    assert after('"afterany:12:13,afternotok:4"') == (Dependency("afterany", 12), Dependency("afterany", 13),
                                                      Dependency("afternotok", 4))
    assert after('["afterany:3", 5, 5]') == (Dependency("afterany", 3), Dependency("afterok", 5))
    assert parse("7") == (Dependency("afterok", 7),)


@pytest.mark.parametrize(("value", "message"), [
    ("[0]", "after: 0 is not a job id"),
    ('"afterwards:1"', "after: 'afterwards' is not a dependency kind (known: afterok, afterany, afternotok)"),
    ('"afterok"', "after: afterok names no job"),
    ('"1,,2"', "after: empty part"),
    ("{ job = 1 }", "after: must be a list of job ids"),
    ("[1.5]", "after: '1.5' is not a job id"),
    (f"[{', '.join(map(str, range(1, 102)))}]", "after: 101 dependencies; at most 100"),
])
def test_a_bad_dependency_is_one_error_naming_after(value: str, message: str) -> None:
    with pytest.raises(JobFileError) as caught:
        parse_job(f"{TRUE}after = {value}\n", source="j.toml", base_dir=Path("/"), now=NOW)
    assert len(caught.value.errors) == 1 and str(caught.value).startswith(f"j.toml: {message}"), str(caught.value)


def test_each_kind_holds_only_for_the_ends_it_names() -> None:
    ok, any_, notok = Dependency("afterok", 1), Dependency("afterany", 1), Dependency("afternotok", 1)
    for state in JobState:
        ended = state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT)
        for dep, satisfied in ((ok, state == JobState.COMPLETED), (any_, ended),
                               (notok, ended and state != JobState.COMPLETED)):
            waiting, never = blocked([dep], {1: state})
            assert (bool(waiting), bool(never)) == ((not ended), ended and not satisfied), (dep, state)
    assert blocked([ok], {})[1] == ["job 1 no longer exists (afterok)"]
    assert ENDED == {state.value for state in TERMINAL}  # the CLI's copy of the names, without the models


def test_a_dependency_on_no_job_or_in_bad_spelling_is_refused_and_nothing_is_stored(daemon: DaemonProc,
                                                                                   tmp_path: Path) -> None:
    first = daemon.submit(write_job(tmp_path, "first", SLEEP.format(s=30)))
    for flags, code, message in ((["--after", "999"], 2, "after: job 999 does not exist"),
                                 (["--dependency", "afterok:1:999"], 2, "after: job 999 does not exist"),
                                 (["--dependency", "before:1"], 2, "--dependency: 'before' is not a dependency kind"),
                                 (["--after", "x"], 2, "--after: 'x' is not a job id")):
        refused = daemon.cli("submit", str(write_job(tmp_path, "second", TRUE)), *flags)
        assert refused.returncode == code and message in refused.stderr, (flags, refused.stderr)
    in_file = daemon.cli("submit", str(write_job(tmp_path, "third", TRUE + f"after = [{first}, {first + 5}]\n")))
    assert in_file.returncode == 2 and f"third.toml: after: job {first + 5} does not exist" in in_file.stderr
    assert [j["id"] for j in daemon.status()] == [first]
    daemon.cli("cancel", str(first))


def test_a_dependent_waits_pending_then_runs_after_its_predecessor_and_show_links_them(daemon: DaemonProc,
                                                                                     tmp_path: Path) -> None:
    first = daemon.submit(write_job(tmp_path, "first", GATED), "--now")
    second = daemon.submit(write_job(tmp_path, "second", TRUE), "--now", "--after", str(first))
    held = daemon.until(second, lambda j: (j["reason"] or "").startswith("Dependency"))
    assert held["state"] == "PENDING" and held["reason"].startswith(f"Dependency: waits for job {first} (afterok"), held
    assert held["after"] == [{"id": first, "kind": "afterok"}]
    assert daemon.show(first)["dependents"] == [{"id": second, "kind": "afterok", "state": "PENDING"}]
    shown = daemon.cli("show", str(second), check=True).stdout
    assert f"after: afterok:{first}" in shown and "Dependency" in shown
    assert "Dependency" in daemon.cli("status", check=True).stdout
    (tmp_path / "go").touch()
    done = daemon.wait_state(second, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=60)
    assert done["state"] == "COMPLETED", done
    assert done["started_at"] >= daemon.show(first)["finished_at"]


def test_a_failed_predecessor_cancels_its_dependents_and_theirs_and_runs_its_afternotok(daemon: DaemonProc,
                                                                                      tmp_path: Path) -> None:
    failing = daemon.submit(write_job(tmp_path, "failing", 'command = ["sh", "-c", "sleep 2; exit 3"]\n'
                                                             'duration = "1m"\n'), "--now")
    on_ok = daemon.submit(write_job(tmp_path, "on-ok", TRUE), "--now", "--after", str(failing))
    chained = daemon.submit(write_job(tmp_path, "chained", TRUE), "--now", "--after", str(on_ok))
    on_fail = daemon.submit(write_job(tmp_path, "on-fail", TRUE), "--now", "--dependency", f"afternotok:{failing}")
    on_any = daemon.submit(write_job(tmp_path, "on-any", TRUE), "--now", "-d", f"afterany:{failing},afterok:{on_ok}")
    assert daemon.wait_state(failing, {"FAILED"}, timeout_s=60)["state"] == "FAILED"
    for job_id in (on_ok, chained, on_any):
        job = daemon.wait_state(job_id, {"CANCELLED", "COMPLETED"}, timeout_s=30)
        assert job["state"] == "CANCELLED" and job["reason"].startswith("DependencyNeverSatisfied: job "), job
        assert not job["runs"], job
    assert "ended FAILED (afterok)" in daemon.show(on_ok)["reason"]
    assert f"job {on_ok} ended CANCELLED (afterok)" in daemon.show(chained)["reason"]
    assert daemon.wait_state(on_fail, {"COMPLETED", "CANCELLED"}, timeout_s=60)["state"] == "COMPLETED"


def test_a_restarted_daemon_keeps_holding_a_dependent_until_its_predecessor_ends(daemon: DaemonProc,
                                                                               tmp_path: Path) -> None:
    first = daemon.submit(write_job(tmp_path, "first", GATED), "--now")  # ends on `touch go`, after the restart
    second = daemon.submit(write_job(tmp_path, "second", TRUE), "--now", "--after", str(first))
    daemon.wait_state(first, {"RUNNING"})
    daemon.until(second, lambda j: (j["reason"] or "").startswith("Dependency"))
    daemon.stop(signal.SIGKILL)
    daemon.start()
    time.sleep(1)  # a tick or more of the restarted daemon
    held = daemon.show(second)
    assert held["state"] == "PENDING" and held["reason"].startswith("Dependency"), (held, daemon.show(first))
    (tmp_path / "go").touch()
    done = daemon.wait_state(second, {"COMPLETED", "CANCELLED"}, timeout_s=60)
    assert done["state"] == "COMPLETED" and done["started_at"] >= daemon.show(first)["finished_at"], done


@needs_users
def test_a_job_may_wait_only_for_its_owners_jobs(daemon: DaemonProc, unix_users: tuple[str, str],
                                                 home: Path) -> None:
    b, c = unix_users
    shared = home.parent / "shared"  # every user may read it (sticky, like /tmp)
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = daemon.submit(write_job(shared, "theirs", SLEEP.format(s=30)), user=b)
    refused = daemon.cli("submit", str(write_job(shared, "mine", TRUE)), "--after", str(theirs), user=c)
    assert refused.returncode == 5 and f"after: job {theirs} belongs to {b}" in refused.stderr, refused.stderr
    assert [j["id"] for j in daemon.status()] == [theirs]
    assert daemon.submit(write_job(shared, "roots", TRUE), "--after", str(theirs))  # root may
    daemon.cli("cancel", str(theirs))


PIPELINE_EUR_PER_MWH = [20, 20, 5, 5, 1, 1] + [100] * 42  # hourly from 2024-01-01 00:00 UTC


def pipeline_problem(after: list[str]) -> Problem:
    """Two 2-hour steps on 2 GPUs, due in 8 hours: hours 4-5 are the cheapest, hours 2-3 next."""
    step = {"release_slot": 0, "deadline_slot": 8, "work": 2, "modes": [{"gpus": 1, "rate": 1, "power_kw": 1}]}
    return problem_from_json({"start": "2024-01-01T00:00:00Z", "slot_minutes": 60, "horizon_slots": 8, "gpus": 2,
                              "carbon_price_eur_per_t": 0,
                              "signals": {"price_eur_per_mwh": PIPELINE_EUR_PER_MWH[:8], "carbon_g_per_kwh": [100] * 8},
                              "jobs": [{"id": "a", **step}, {"id": "b", **step, "after": after}]})


def test_the_planner_moves_a_first_step_earlier_for_its_second_steps_cheap_window() -> None:
    alone, pipeline = pipeline_problem([]), pipeline_problem(["a"])
    first = {k: [(s.start_slot, s.end_slot) for s in v] for k, v in solve(alone, 2).plan.items()}
    assert first == {"a": [(4, 6)], "b": [(4, 6)]}  # each alone takes the cheapest hours
    solution = solve(pipeline, 2)
    joint = {k: [(s.start_slot, s.end_slot) for s in v] for k, v in solution.plan.items()}
    assert joint == {"a": [(2, 4)], "b": [(4, 6)]} and not solution.late  # a gives way to b's cheap window
    assert evaluate(pipeline, solution.plan).valid
    wrong = evaluate(pipeline, solve(alone, 2).plan)
    assert not wrong.valid and "job b: starts at slot 4, before job a (its 'after') has finished" in wrong.errors
    assert problem_to_json(pipeline)["jobs"][1]["after"] == ["a"]


def crowded_pipelines(seed: int, n_jobs: int = 40) -> Problem:
    """Chains and fans of steps on 4 GPUs, many due too soon: some steps run past their window."""
    rnd = random.Random(seed)
    jobs = []
    for k in range(n_jobs):
        release = rnd.randint(0, 20)
        work = rnd.choice([1, 2, 3, 5])
        gpus = rnd.choice([1, 1, 2, 4])
        after = rnd.sample([f"j{i}" for i in range(k)], k=min(k, rnd.choice([0, 0, 1, 1, 2])))
        jobs.append({"id": f"j{k}", "release_slot": release, "deadline_slot": release + work + rnd.randint(0, 6),
                     "work": work, "preemptible": rnd.random() < 0.4, "after": after,
                     "modes": [{"gpus": gpus, "rate": 1, "power_kw": gpus}, {"gpus": 1, "rate": 1 / gpus,
                                                                             "power_kw": 0.8}][:2 if gpus > 1 else 1]})
    slots = 96
    return problem_from_json({"start": "2024-01-01T00:00:00Z", "slot_minutes": 60, "horizon_slots": slots, "gpus": 4,
                              "carbon_price_eur_per_t": 0,
                              "signals": {"price_eur_per_mwh": [rnd.uniform(-5, 100) for _ in range(slots)],
                                          "carbon_g_per_kwh": [100] * slots},
                              "jobs": jobs})


@pytest.mark.parametrize("seed", range(4))
def test_every_policy_starts_a_step_after_its_predecessors_even_when_they_run_late(seed: int) -> None:
    problem = crowded_pipelines(seed)
    plans = {name: policy(problem) for name, policy in BASELINES.items()}
    plans["gsched"] = solve(problem, 1).plan
    for name, plan in plans.items():
        errors = [e for e in evaluate(problem, plan).errors if "'after'" in e]
        assert not errors, (name, errors)
    ran = plans["run-now"]
    assert len(ran) == len(problem.jobs)  # a plain queue still runs every step, each behind its predecessors
    assert any(evaluate(problem, plans["gsched"]).jobs[j].finish_h > problem.jobs[int(j[1:])].deadline_slot
               for j in plans["gsched"])  # the crowd is real: some step is late


@pytest.mark.parametrize(("after", "message"), [
    (["c"], "problem.jobs[1].after: no job 'c' in the problem"),
    ("a", "problem.jobs[1].after: must be a list of job ids"),
])
def test_a_problem_files_after_must_name_its_jobs(after: object, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        pipeline_problem(after)  # type: ignore[arg-type]


def test_a_cycle_in_a_problem_file_is_refused_naming_it() -> None:
    data = problem_to_json(pipeline_problem(["a"]))
    data["jobs"][0]["after"] = ["b"]
    with pytest.raises(InputError, match="their 'after' makes a cycle"):
        problem_from_json(data)


def test_the_daemon_plans_a_waiting_step_with_its_predecessor(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    hours = [(datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")
             for h in range(len(PIPELINE_EUR_PER_MWH))]
    trace.write_text("# synthetic: a pipeline's cheap hours\nstart_utc,price_eur_per_mwh,carbon_g_per_kwh,"
                     "renewable_share_pct\n" + "".join(f"{t},{p},100,50\n" for t, p in zip(hours, PIPELINE_EUR_PER_MWH)))
    d = trace_daemon(trace, 1, "2024-01-01T00:00:00Z", "slot_minutes = 60")
    try:
        step = 'command = ["true"]\nduration = "2h"\ndeadline = "2024-01-01T08:00:00Z"\n'
        alone = d.submit(write_job(tmp_path, "alone", step))
        first = d.submit(write_job(tmp_path, "first", step))
        second = d.submit(write_job(tmp_path, "second", step), "--after", str(first))
        planned = {j: d.wait_state(j, {"PLANNED"}) for j in (alone, first)}
        deadline = time.monotonic() + 30
        while (held := d.show(second))["planned_start"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        d.stop()
    assert planned[alone]["planned_start"] == "2024-01-01T04:00:00Z", planned[alone]
    assert planned[first]["planned_start"] == "2024-01-01T02:00:00Z", planned[first]
    assert held["state"] == "PENDING" and held["planned_start"] == "2024-01-01T04:00:00Z", held
    assert held["reason"].startswith(f"Dependency: waits for job {first} (afterok, PLANNED now); then "), held


def test_the_plan_picture_draws_the_pipelines_link(tmp_path: Path) -> None:
    problem = pipeline_problem(["a"])
    plan_png(problem, solve(problem, 1).plan, tmp_path / "plan.png")
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
