"""`gsched simulate`: histories in (gsched's CSV/JSON, sacct exports), the daemon's own code on a simulated clock and
the simulated executor, the executed schedule out as a plan file any evaluator can price."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ROOT, cli
from scheduler.config import Config, PlannerSettings
from scheduler.errors import InputError
from scheduler.forecasts.trace import TraceProvider
from scheduler.history import DeadlinePolicy, load_history, slurm_duration_s
from scheduler.outcomes import spec_of
from scheduler.planner.problem import evaluate, plan_from_json, problem_from_json
from scheduler.planner.baselines import run_now
from scheduler.planner.solve import solve
from scheduler.simulation import Capacity, ForecastMode, Replay, simulate

MONDAY = datetime(2026, 6, 1, tzinfo=timezone.utc)  # the embedded trace's week repeats on every Monday
SACCT = ROOT / "tests" / "fixtures" / "sacct"


def generated_history(path: Path, n_jobs: int, seed: int, hours: float = 36, gpus: tuple[int, ...] = (1, 1, 2, 4)
                      ) -> Path:
    rnd = random.Random(seed)
    rows = ["id,submit,user,gpus,run_time,preemptible,gpus_max"]
    for k in range(n_jobs):
        submit = MONDAY + timedelta(minutes=rnd.randint(0, int(hours * 60)))
        g = rnd.choice(gpus)
        rows.append(f"j{k},{submit.isoformat().replace('+00:00', 'Z')},{rnd.choice(['ann', 'bo', 'cy'])},{g},"
                    f"{rnd.randint(20, 300)}m,{str(rnd.random() < 0.4).lower()},{2 * g if rnd.random() < 0.3 else ''}")
    path.write_text("\n".join(rows) + "\n")
    return path


def quick_config(limit_s: float = 0.3) -> Config:
    return Config(planner=PlannerSettings(time_limit_s=limit_s))


def reprice(problem_doc: dict, plan_doc: dict) -> tuple[float, float, int]:
    """The executed plan priced from the two files alone, minute by minute (not with gsched's evaluator): cost in
    EUR, energy in kWh, and the most GPUs in use at once."""
    slot_h = problem_doc["slot_minutes"] / 60
    price = problem_doc["signals"]["price_eur_per_mwh"]
    carbon = problem_doc["signals"]["carbon_g_per_kwh"]
    carbon_eur_per_g = problem_doc["carbon_price_eur_per_t"] / 1e6
    jobs = {j["id"]: j for j in problem_doc["jobs"]}
    used = [0] * problem_doc["horizon_slots"]
    cost = energy = 0.0
    for planned in plan_doc["jobs"]:
        job = jobs[planned["id"]]
        left = job["work"]
        for k, seg in enumerate(sorted(planned["segments"], key=lambda s: s["start_slot"])):
            mode = job["modes"][seg["mode"]]
            overhead_h = job.get("resume_overhead_minutes", 0) / 60 if k else 0.0
            for t in range(seg["start_slot"], seg["end_slot"]):
                used[t] += mode["gpus"]
                if left <= 1e-9:
                    continue
                idle = min(overhead_h, slot_h)
                overhead_h -= idle
                run_h = min(slot_h - idle, left / mode["rate"])
                left -= run_h * mode["rate"]
                kwh = mode["power_kw"] * (idle + run_h)
                energy += kwh
                cost += kwh * (price[t] / 1000 + carbon[t] * carbon_eur_per_g)
        assert left <= 1e-6 * job["work"], planned["id"]
    return cost, energy, max(used)


def test_a_simulated_history_runs_every_job_validly_and_its_files_reprice_to_the_report(tmp_path: Path) -> None:
    history = generated_history(tmp_path / "history.csv", 24, seed=3)
    out = tmp_path / "result.json"
    done = cli("simulate", "--jobs", str(history), "--output", str(out), "--gpus", "6", "--slack", "12h",
               "--time-limit", "0.3", "--hindsight-limit", "3", "--plot", str(tmp_path / "sim.png"), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "saved against run-now" in done.stdout and "simulated to" in done.stderr  # progress on stderr
    report = json.loads(out.read_text())
    assert report["valid"] and report["jobs"] == 24 and not report["unfinished"], report
    problem_doc = json.loads(Path(report["files"]["problem"]).read_text())
    plan_doc = json.loads(Path(report["files"]["plan"]).read_text())
    # the planner's own evaluator: every job's work done, never more GPUs than the pool; lateness reported
    problem = problem_from_json(problem_doc, "problem")
    e = evaluate(problem, plan_from_json(plan_doc, "plan"))
    assert all(o.finished for o in e.jobs.values())
    assert [err for err in e.errors if "outside its window" not in err] == []
    assert len([err for err in e.errors if "outside its window" in err]) == report["gsched"]["late_jobs"]
    cost, energy, most = reprice(problem_doc, plan_doc)
    assert most <= 6
    assert cost == pytest.approx(report["gsched"]["cost_eur"], rel=1e-9)
    assert energy == pytest.approx(report["gsched"]["energy_kwh"], rel=1e-9)
    # online, late jobs are reported, not bounded by run-now's: a plan made before later jobs arrive can leave one of
    # them late where FIFO would not (seen once in CI under load, at this test's 0.3 s replans)
    assert report["gsched"]["late_hours"] >= 0 and len(report["gsched"]["late"]) == report["gsched"]["late_jobs"]
    assert report["hindsight"]["cost_eur"] <= report["run_now"]["cost_eur"]
    assert sum(u["jobs"] for u in report["gsched"]["per_user"].values()) == 24
    assert (tmp_path / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --json prints the same report
    again = cli("simulate", "--jobs", str(history), "--output", str(tmp_path / "again.json"), "--gpus", "6",
                "--slack", "12h", "--time-limit", "0.3", "--hindsight-limit", "1", "--json", "--quiet", timeout=600)
    assert again.returncode == 0 and "simulated to" not in again.stderr, again.stderr  # --quiet: no progress
    assert json.loads(again.stdout)["jobs"] == 24


def test_the_forecast_the_planner_knew_changes_what_it_saves_the_way_it_should(tmp_path: Path) -> None:
    """Priced on the realised signals, plans made on the realised signals do no worse on average than plans made
    on noisy ones; and noise changes what runs when."""
    history = load_history(generated_history(tmp_path / "h.csv", 10, seed=5, hours=24, gpus=(1, 2)),
                           DeadlinePolicy(slack_s=18 * 3600))
    realised = TraceProvider()

    def cost(mode: str) -> float:
        result = simulate(history, quick_config(0.2), realised, ForecastMode.parse(mode), Capacity.constant(4), 1.0)
        assert result.report["valid"] and not result.report["unfinished"], result.report
        return result.report["gsched"]["cost_eur"]

    perfect = cost("perfect")
    noisy = [cost(f"noise:40:{seed}") for seed in range(3)]
    assert perfect <= sum(noisy) / len(noisy) + 1e-9, (perfect, noisy)
    assert any(abs(n - perfect) > 1e-6 for n in noisy)
    assert cost("persistence") > 0


def test_bad_history_rows_are_named_by_line_all_at_once_and_nothing_is_simulated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,submit,user,gpus,run_time\n"
                   "a,2026-06-01T08:00:00Z,ann,2,1h\n"
                   "b,yesterday,ann,2,1h\n"
                   "c,2026-06-01T09:00:00Z,bo,-1,1h\n"
                   "d,2026-06-01T09:00:00Z,bo,1,soon\n")
    out = tmp_path / "r.json"
    done = cli("simulate", "--jobs", str(bad), "--output", str(out), "--slack", "1h")
    assert done.returncode == 2 and not out.exists()
    lines = done.stderr.strip().splitlines()
    assert any(f"{bad}:3: submit:" in line for line in lines), done.stderr
    assert any(f"{bad}:4: gpus:" in line and "-1" in line for line in lines), done.stderr
    assert any(f"{bad}:5: run_time:" in line for line in lines), done.stderr
    missing = tmp_path / "missing.csv"
    missing.write_text("id,submit,gpus,run_time\na,2026-06-01T08:00:00Z,2,1h\n")
    done = cli("simulate", "--jobs", str(missing), "--output", str(out), "--slack", "1h")
    assert done.returncode == 2 and f"{missing}:1: missing column(s) user" in done.stderr
    sacct = tmp_path / "sacct.txt"
    sacct.write_text("JobID|JobName|User|Submit|Start|End|Elapsed|Timelimit|AllocTRES|State\n"
                     "7|t|ann|2026-06-01T08:00:00|2026-06-01T09:00:00|2026-06-01T08:30:00|00:30:00|01:00:00|"
                     "billing=1,cpu=1,gres/gpu=1,node=1|COMPLETED\n"
                     "8|t|ann|2026-06-01T08:00:00|2026-06-01T08:10:00|2026-06-01T08:40:00|00:30:00|01:00:00|"
                     "billing=1,cpu=1,gres/gpu=-2,node=1|COMPLETED\n")
    done = cli("simulate", "--jobs", str(sacct), "--output", str(out), "--slack", "1h")
    assert done.returncode == 2 and not out.exists()
    assert f"{sacct}:2: End:" in done.stderr and "before its Start" in done.stderr, done.stderr
    assert f"{sacct}:3: AllocTRES:" in done.stderr, done.stderr
    # no deadline in the history and no policy stated: said, not guessed
    good = tmp_path / "good.csv"
    good.write_text("id,submit,user,gpus,run_time\na,2026-06-01T08:00:00Z,ann,2,1h\n")
    done = cli("simulate", "--jobs", str(good), "--output", str(out))
    assert done.returncode == 2 and "--slack" in done.stderr and not out.exists()


def test_a_slurm_export_is_read_as_operators_produce_it() -> None:
    """sacct's text and JSON exports of the same jobs (recorded from a real Slurm 22.05 with slurmdbd; provenance in
    tests/fixtures/sacct/PROVENANCE.md): steps skipped, array tasks kept, GPUs from gres/gpu, run time from
    Elapsed, jobs that never started left out, failed ones kept unless --drop-failed."""
    policy = DeadlinePolicy(slack_s=3600)
    text = load_history(SACCT / "sacct.txt", policy)
    as_json = load_history(SACCT / "sacct.json", policy)
    assert text.format == "sacct" and as_json.format == "sacct-json"
    assert [(j.id, j.user, j.gpus, j.run_s, j.state) for j in text.jobs] == \
        [(j.id, j.user, j.gpus, j.run_s, j.state) for j in as_json.jobs]
    assert text.skipped.get("job steps", 0) > 0
    assert all(j.gpus >= 1 and j.run_s > 0 for j in text.jobs)
    assert any("_" in j.id for j in text.jobs)  # an array's tasks are jobs
    kept = load_history(SACCT / "sacct.txt", policy, drop_failed=True)
    assert len(kept.jobs) < len(text.jobs)
    by_limit = load_history(SACCT / "sacct.txt", DeadlinePolicy(from_time_limit=True))
    assert all(j.deadline is not None and j.deadline >= j.submit + timedelta(seconds=j.run_s) for j in by_limit.jobs)


def test_slurm_durations() -> None:
    assert slurm_duration_s("1-02:03:04") == 93784
    assert slurm_duration_s("02:03:04") == 7384
    assert slurm_duration_s("03:04") == 184
    assert slurm_duration_s("UNLIMITED") is None
    with pytest.raises(InputError, match="noise:PCT"):
        ForecastMode.parse("noise")
    assert math.isclose(ForecastMode.parse("noise:11:4").error_pct, 11)


# --- the simulated executor under the executor contract's cases that apply to it (no processes, no output) ------

def trace_replay(tmp_path: Path, gpus: int = 2, start: str = "2024-01-01T00:30:00Z", home: Path | None = None
                 ) -> Replay:
    """The daemon's code with the simulated executor, on the elastic tests' trace (odd hours cheap)."""
    from test_elastic import alternating_trace

    trace = tmp_path / "trace.csv"
    if not trace.exists():
        alternating_trace(trace)
    home = home or tmp_path / "home"
    home.mkdir(exist_ok=True)
    config = Config(planner=PlannerSettings(time_limit_s=0.5, horizon_hours=24))
    return Replay(config, home, TraceProvider(trace), ForecastMode("perfect"), Capacity.constant(gpus),
                  datetime.fromisoformat(start.replace("Z", "+00:00")))


def job_text(minutes: int, extra: str = "", gpus: int = 1) -> str:
    return f'name = "t"\ncommand = ["true"]\nduration = "{minutes}m"\nsteps = {minutes * 60}\ngpus = {gpus}\n{extra}'


def state(r: Replay, job_id: int) -> str:
    return r.store.get(job_id).state.value


def test_sim_a_job_waits_for_the_cheap_hour_and_completes_with_its_energy_and_cost(tmp_path: Path) -> None:
    r = trace_replay(tmp_path)
    jid = r.submit(job_text(30, 'max_delay = "6h"\n'), "ann", 20000, "t.toml")
    r.run_until(lambda: state(r, jid) == "COMPLETED", r.clock.now() + timedelta(hours=6))
    job = r.store.get(jid)
    assert job.state.value == "COMPLETED" and job.started_at is not None and job.started_at.hour % 2 == 1
    (m,) = r.store.measurements(jid)
    assert m.energy_source == "estimate" and m.duration_s == pytest.approx(1800)
    power_kw = r.executor.runs[0].power_kw
    assert m.energy_j == pytest.approx(power_kw * 0.5 * 3.6e6)
    assert m.cost_eur is not None and m.cost_eur > 0
    assert r.executor.in_use() == 0


def test_sim_cancel_while_queued_and_while_running(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    running = r.submit(job_text(120, 'max_delay = "1h"\n'), "ann", 20000, "a.toml")
    queued = r.submit(job_text(30, 'max_delay = "20h"\n', gpus=2), "bo", 20001, "b.toml")
    r.run_until(lambda: state(r, running) == "RUNNING", r.clock.now() + timedelta(hours=1))
    r.daemon.cancel(r.store.get(running))
    r.daemon.cancel(r.store.get(queued))
    r.run_until(lambda: state(r, running) == "CANCELLED", r.clock.now() + timedelta(minutes=10))
    assert state(r, running) == "CANCELLED" and state(r, queued) == "CANCELLED"
    assert r.executor.in_use() == 0 and not r.executor.runs[-1].completed


def test_sim_an_elastic_job_pauses_through_dear_hours_and_its_steps_add_up(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T00:57:00Z")
    jid = r.submit(job_text(150, 'preemptible = true\nresume_overhead_minutes = 0\ndeadline = "2024-01-01T12:00:00Z"\n'),
                   "ann", 20000, "e.toml")
    r.run_until(lambda: state(r, jid) == "COMPLETED", r.clock.now() + timedelta(hours=12))
    assert state(r, jid) == "COMPLETED"
    runs = [run for run in r.executor.runs if run.job_id == jid]
    assert len(runs) >= 2 and all(run.start.hour % 2 == 1 for run in runs), runs
    steps = [m.steps for m in r.store.measurements(jid)]
    assert steps == sorted(steps) and steps[-1] == 150 * 60
    job = r.store.get(jid)
    assert sum(run.work_done for run in runs) == pytest.approx(r._physics(job, spec_of(job), runs[0].mode)[0])


def test_sim_a_resumed_job_ends_when_its_plan_says_its_resume_overhead_counted(tmp_path: Path) -> None:
    """A paused job goes on from its checkpoint, and the resume overhead burns the start of each run after the first.
    Each plan made while it waits counts that overhead: its last plan's end is when it ends (not 10 minutes before),
    and it never runs in a dear hour to make up a shortfall."""
    r = trace_replay(tmp_path, start="2024-01-01T00:57:00Z")
    extra = 'preemptible = true\nresume_overhead_minutes = 10\ndeadline = "2024-01-01T12:00:00Z"\n'
    jid = r.submit(job_text(150, extra), "ann", 20000, "e.toml")
    r.run_until(lambda: state(r, jid) == "COMPLETED", r.clock.now() + timedelta(hours=12))
    job = r.store.get(jid)
    runs = [(run.start.strftime("%H:%M"), run.end.strftime("%H:%M")) for run in r.executor.runs if run.job_id == jid]
    # about 60 + 50 + 40 minutes of work (a checkpoint asked for takes the simulated executor's next tick, a minute)
    assert [start for start, _end in runs] == ["01:00", "03:00", "05:00"], runs
    assert job.finished_at is not None and job.planned_end is not None
    assert abs(job.finished_at - job.planned_end) <= timedelta(minutes=1), (job.planned_end, job.finished_at, runs)


def test_sim_an_urgent_job_preempts_a_running_preemptible_one_and_both_complete(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    wide = r.submit(job_text(40, 'preemptible = true\nmax_delay = "20h"\n', gpus=2), "ann", 20000, "w.toml")
    r.run_until(lambda: state(r, wide) == "RUNNING", r.clock.now() + timedelta(hours=1))
    assert state(r, wide) == "RUNNING"
    urgent = r.submit(job_text(20), "bo", 20001, "u.toml", urgent=True)
    r.run_until(lambda: state(r, urgent) == "COMPLETED" and state(r, wide) == "COMPLETED",
                r.clock.now() + timedelta(hours=30))
    events = [e.reason for e in r.store.events(wide)]
    assert any("preempt" in why for why in events), events
    assert state(r, urgent) == "COMPLETED" and state(r, wide) == "COMPLETED"
    first_urgent = next(run for run in r.executor.runs if run.job_id == urgent)
    assert first_urgent.start - r.store.get(urgent).submitted_at <= timedelta(minutes=2)


def test_sim_a_running_job_is_recovered_by_a_restarted_daemon_and_ends_on_time(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    jid = r.submit(job_text(40, 'max_delay = "1h"\n'), "ann", 20000, "r.toml")
    r.run_until(lambda: state(r, jid) == "RUNNING", r.clock.now() + timedelta(hours=1))
    started = r.store.get(jid).started_at
    assert started is not None
    again = trace_replay(tmp_path, start=r.clock.now().isoformat(), home=r.home)  # a new daemon and executor
    again.daemon.recover()
    again.run_until(lambda: state(again, jid) == "COMPLETED", again.clock.now() + timedelta(hours=2))
    job = again.store.get(jid)
    assert job.state.value == "COMPLETED" and job.finished_at == started + timedelta(minutes=40)


def test_sim_a_pipeline_runs_each_step_after_the_last_and_a_cancelled_step_cancels_the_rest(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    first = r.submit(job_text(30, 'max_delay = "1h"\n'), "ann", 20000, "a.toml")
    second = r.submit(job_text(60, f'max_delay = "10h"\nafter = [{first}]\n'), "ann", 20000, "b.toml")
    third = r.submit(job_text(20, f'max_delay = "12h"\nafter = "afterok:{second}"\n'), "ann", 20000, "c.toml")
    rescue = r.submit(job_text(20, f'max_delay = "12h"\nafter = "afternotok:{second}"\n'), "ann", 20000, "d.toml")
    r.tick(r.clock.now())
    held = r.store.get(third)
    assert held.state.value == "PENDING" and (held.plan_reason or "").startswith(f"Dependency: waits for job {second}")
    r.run_until(lambda: state(r, second) == "RUNNING", r.clock.now() + timedelta(hours=12))
    started, before = r.store.get(second).started_at, r.store.get(first).finished_at
    assert started and before and started >= before and started.hour % 2 == 1  # after it, in a cheap hour
    r.daemon.cancel(r.store.get(second))
    r.run_until(lambda: state(r, rescue) == "COMPLETED", r.clock.now() + timedelta(hours=12))
    assert [state(r, j) for j in (first, second, third, rescue)] == ["COMPLETED", "CANCELLED", "CANCELLED",
                                                                     "COMPLETED"]
    assert r.store.get(third).reason == f"DependencyNeverSatisfied: job {second} ended CANCELLED (afterok)"
    assert third not in {run.job_id for run in r.executor.runs}
    assert r.executor.in_use() == 0


def test_sim_a_requeued_predecessor_holds_its_dependent_back_until_it_completes(tmp_path: Path) -> None:
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    first = r.submit(job_text(50, 'preemptible = true\nmax_delay = "12h"\n'), "ann", 20000, "a.toml")
    second = r.submit(job_text(20, f'max_delay = "14h"\nafter = [{first}]\n'), "ann", 20000, "b.toml")
    r.run_until(lambda: state(r, first) == "RUNNING", r.clock.now() + timedelta(hours=6))
    r.tick(r.clock.now() + timedelta(minutes=10))
    r.daemon.requeue(r.store.get(first))
    r.tick(r.next_event())  # the checkpoint: back in the queue, and on again at once in this cheap hour
    assert len([run for run in r.executor.runs if run.job_id == first]) == 1 and state(r, second) == "PENDING"
    assert (r.store.get(second).plan_reason or "").startswith(f"Dependency: waits for job {first}")
    r.run_until(lambda: state(r, second) == "COMPLETED", r.clock.now() + timedelta(hours=14))
    runs = [run for run in r.executor.runs if run.job_id == first]
    assert len(runs) >= 2 and state(r, first) == "COMPLETED"
    assert r.store.get(second).started_at >= r.store.get(first).finished_at == runs[-1].end


def test_sim_an_urgent_step_pulls_its_queued_predecessor_early_and_starts_when_it_ends(tmp_path: Path) -> None:
    """In a dear hour: alone, the first step would wait for the cheap one. Its urgent (--now) dependent is planned
    while it waits (it once had no plan: "no room in the horizon"), and both run at once, one after the other."""
    r = trace_replay(tmp_path, start="2024-01-01T02:05:00Z")
    first = r.submit(job_text(30, 'max_delay = "6h"\n'), "ann", 20000, "a.toml")
    second = r.submit(job_text(20, f"after = [{first}]\n"), "ann", 20000, "b.toml", urgent=True)
    r.tick(r.clock.now())
    held = r.store.get(second)
    assert held.state.value == "PENDING" and held.planned_start is not None, held.plan_reason
    assert "--now" in (held.plan_reason or "") and held.planned_start - r.clock.now() <= timedelta(hours=1)
    r.run_until(lambda: state(r, second) == "COMPLETED", r.clock.now() + timedelta(hours=6))
    ran_first, ran_second = r.store.get(first), r.store.get(second)
    assert ran_first.started_at == datetime(2024, 1, 1, 2, 5, tzinfo=timezone.utc)  # not the cheap 03:00
    assert ran_second.started_at is not None and ran_first.finished_at is not None
    assert timedelta(0) <= ran_second.started_at - ran_first.finished_at <= timedelta(minutes=1)


def test_sim_a_chain_of_three_hundred_steps_neither_stops_the_tick_nor_runs_out_of_order(tmp_path: Path) -> None:
    """A user may queue a thousand jobs, each after the last: another user's job still runs at once, and the chain
    runs one step after another, its tail waiting with its reason."""
    r = trace_replay(tmp_path, start="2024-01-01T01:05:00Z")
    ids = [r.submit(job_text(1, 'max_delay = "1h"\n'), "ann", 20000, "0.toml")]
    for k in range(1, 300):
        ids.append(r.submit(job_text(1, f'max_delay = "20h"\nafter = [{ids[-1]}]\n'), "ann", 20000, f"{k}.toml"))
    other = r.submit(job_text(5, 'max_delay = "1h"\n'), "bo", 20001, "other.toml")
    r.run_until(lambda: state(r, other) == "COMPLETED" and state(r, ids[2]) == "COMPLETED",
                r.clock.now() + timedelta(hours=2))
    assert state(r, other) == "COMPLETED" and [state(r, j) for j in ids[:3]] == ["COMPLETED"] * 3
    last = r.store.get(ids[-1])
    assert last.state.value == "PENDING" and (last.plan_reason or "").startswith(f"Dependency: waits for job {ids[-2]}")
    first_runs = {run.job_id: run for run in r.executor.runs}
    assert first_runs[ids[1]].start >= first_runs[ids[0]].end and first_runs[ids[2]].start >= first_runs[ids[1]].end


def test_a_capacity_file_sets_the_pool_over_time_and_bad_rows_are_named(tmp_path: Path) -> None:
    good = tmp_path / "capacity.csv"
    good.write_text("start_utc,gpus\n2026-06-01T00:00:00Z,4\n2026-06-01T12:00:00Z,2\n")
    pool = Capacity.from_file(good)
    assert pool.most == 4 and pool.at(MONDAY + timedelta(hours=11)) == 4 and pool.at(MONDAY + timedelta(hours=13)) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("start_utc,gpus\n2026-06-01T00:00:00Z,-1\nnoon,2\n")
    with pytest.raises(InputError) as err:
        Capacity.from_file(bad)
    assert f"{bad}:2:" in str(err.value) and f"{bad}:3:" in str(err.value)
    history = load_history(generated_history(tmp_path / "h.csv", 8, seed=2, hours=20, gpus=(1, 2)),
                           DeadlinePolicy(slack_s=12 * 3600))
    result = simulate(history, quick_config(0.2), TraceProvider(), ForecastMode("perfect"), pool, 1.0)
    assert result.report["valid"], result.report["errors"]  # the evaluator checks each slot against the file's pool
    assert max(result.problem.free()) == 4 and min(result.problem.free()) == 2


def test_a_wide_job_in_a_stream_of_narrow_ones_starts_no_later_than_fifo(tmp_path: Path) -> None:
    """Four GPUs, a 1-GPU job every 15 minutes for 12 hours (each runs an hour, due a minute after that), and a
    4-GPU job among them that cannot meet its own deadline: fewest late jobs first kept passing it for narrow ones
    that could still be on time. Slurm's backfill keeps a reservation for the head of its queue; gsched's late job
    starts no later than FIFO starts it."""
    rows = ["id,submit,user,gpus,run_time,max_delay"]
    for k in range(48):
        at = MONDAY + timedelta(hours=6, minutes=15 * k)
        rows.append(f"n{k},{at.isoformat().replace('+00:00', 'Z')},ann,1,1h,1m")
        if k == 4:
            rows.append(f"wide,{(at + timedelta(minutes=1)).isoformat().replace('+00:00', 'Z')},bo,4,1h,15m")
    path = tmp_path / "stream.csv"
    path.write_text("\n".join(rows) + "\n")
    history = load_history(path, DeadlinePolicy())
    result = simulate(history, quick_config(0.3), TraceProvider(), ForecastMode("perfect"), Capacity.constant(4), 1.0)
    ids = {j.id: str(k) for k, j in enumerate(history.jobs, 1)}
    wide = next(k for k, j in enumerate(history.jobs, 1) if j.id == "wide")
    ran = min(s.start_slot for s in result.plan[str(wide)])  # minutes from the start
    fifo_plan = run_now(result.hindsight_problem)
    fifo_start = min(s.start_slot for s in fifo_plan[str(wide)]) * result.hindsight_problem.slot_minutes
    assert ran <= fifo_start, (ran, fifo_start, ids)
    assert not result.report["unfinished"], result.report["unfinished"]


def test_a_replay_that_leaves_a_job_unrun_names_it_shows_no_saving_and_exits_8(tmp_path: Path) -> None:
    """The pool shrinks to 1 GPU after two hours, and a 2-GPU job arrives after that: it can never run. A saving
    over the one job that ran would read as the replay's saving; none is shown, the job is named, the exit is 8."""
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay\n"
                                    "small,2026-06-01T00:10:00Z,ann,1,1h,6h\n"
                                    "wide,2026-06-01T03:00:00Z,bo,2,1h,6h\n")
    (tmp_path / "pool.csv").write_text("start_utc,gpus\n2026-06-01T00:00:00Z,2\n2026-06-01T02:00:00Z,1\n")
    out = tmp_path / "r.json"
    done = cli("simulate", "--jobs", str(tmp_path / "h.csv"), "--capacity", str(tmp_path / "pool.csv"),
               "--output", str(out), "--time-limit", "0.3", "--hindsight-limit", "1", "--quiet",
               "--plot", str(tmp_path / "sim.png"), timeout=600)
    assert done.returncode == 8, (done.stdout, done.stderr)
    assert (tmp_path / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn, without a saving
    assert "saved against run-now" not in done.stdout, done.stdout
    assert "not run in full: job wide" in done.stderr and "no savings shown" in done.stderr, done.stderr
    report = json.loads(out.read_text())
    assert report["saved_vs_run_now"] is None and not report["complete"] and not report["valid"]
    assert any(why.startswith("wide:") for why in report["unfinished"].values()), report["unfinished"]


def test_a_noisy_forecast_reports_its_error_and_what_it_cost_beside_the_perfect_replay(tmp_path: Path) -> None:
    history = generated_history(tmp_path / "h.csv", 8, seed=4, hours=20, gpus=(1, 2))
    out = tmp_path / "r.json"
    done = cli("simulate", "--jobs", str(history), "--gpus", "4", "--slack", "12h", "--forecast", "noise:40:1",
               "--output", str(out), "--time-limit", "0.3", "--hindsight-limit", "1", "--quiet", timeout=600)
    assert done.returncode == 0, done.stderr
    fe = json.loads(out.read_text())["forecast_error"]
    assert fe["forecast"] == "noise:40:1" and fe["price_error_pct"] > 10 and fe["carbon_error_pct"] > 10, fe
    assert fe["cost_eur"] is not None and "forecast noise:40:1: price off by" in done.stdout, done.stdout
    perfect = cli("simulate", "--jobs", str(history), "--gpus", "4", "--slack", "12h", "--output",
                  str(tmp_path / "p.json"), "--time-limit", "0.3", "--hindsight-limit", "1", "--quiet", timeout=600)
    assert perfect.returncode == 0 and "forecast: perfect" in perfect.stdout, perfect.stdout
    assert json.loads((tmp_path / "p.json").read_text())["forecast_error"]["cost_eur"] == 0.0
    # what the error cost is the noisy replay against its own perfect replay, both priced on the realised signals
    ran = json.loads(out.read_text())["gsched"]["cost_eur"]
    assert fe["cost_eur"] == pytest.approx(ran - fe["perfect_cost_eur"], abs=1e-12), (fe, ran)


def test_jobs_longer_than_the_planner_horizon_run_in_a_replay_and_the_saving_is_over_all_of_them(
        tmp_path: Path) -> None:
    """60 h and 120 h rigid jobs and a 7-day preemptible one, each due a day after it could finish: the 48 h
    horizon once kept them PENDING for ever while the report printed a saving without them."""
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay,preemptible\n"
                                    "long,2026-06-01T00:00:00Z,ann,1,60h,24h,false\n"
                                    "longer,2026-06-01T01:00:00Z,bo,2,120h,24h,false\n"
                                    "week,2026-06-01T02:00:00Z,cy,1,168h,24h,true\n"
                                    "short,2026-06-01T03:00:00Z,ann,1,2h,12h,false\n")
    out = tmp_path / "r.json"
    done = cli("simulate", "--jobs", str(tmp_path / "h.csv"), "--gpus", "4", "--output", str(out),
               "--time-limit", "0.3", "--hindsight-limit", "1", "--quiet", timeout=600)
    assert done.returncode == 0, (done.stdout, done.stderr)
    report = json.loads(out.read_text())
    assert report["complete"] and report["valid"] and not report["unfinished"], report
    assert report["gsched"]["late_jobs"] == 0 and report["saved_vs_run_now"] is not None
    assert "saved against run-now" in done.stdout


def test_a_replay_replans_when_something_changed_not_at_every_slot_boundary(tmp_path: Path) -> None:
    """One job waiting up to a day for its cheap window: with nothing arriving or ending, the plan stands; the daemon
    replans at least hourly (96 replans at every 15-minute boundary made a replay cost a second a boundary)."""
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay\nwaits,2026-06-01T00:05:00Z,ann,1,30m,24h\n")
    history = load_history(tmp_path / "h.csv", DeadlinePolicy())
    result = simulate(history, quick_config(0.3), TraceProvider(), ForecastMode("perfect"), Capacity.constant(1), 1.0)
    report = result.report
    assert report["complete"] and not report["unfinished"], report
    waited_h = report["gsched"]["wait_median_h"]
    assert waited_h > 3, report["gsched"]  # it did wait for a cheaper window
    assert report["replans"] <= waited_h + 3, (report["replans"], waited_h)


def test_a_job_ending_when_its_plan_said_does_not_replan(tmp_path: Path) -> None:
    """Twelve half-hour jobs queued at once on one GPU, each ending when the plan said: the plan already gave its
    devices to the next, so ends are no reason to replan (a contentious week's replay replanned at each of its 124
    ends, a second each). The price of waiting is off here; where the backlog moves it, ends do replan."""
    rows = "".join(f"j{k},2026-06-01T00:05:00Z,ann,1,30m,24h\n" for k in range(12))
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay\n" + rows)
    history = load_history(tmp_path / "h.csv", DeadlinePolicy())
    config = quick_config(0.3)
    config = dataclasses.replace(config, planner=dataclasses.replace(config.planner, wait_pct_per_h=0.0))
    report = simulate(history, config, TraceProvider(), ForecastMode("perfect"), Capacity.constant(1), 1.0).report
    assert report["complete"] and not report["unfinished"], report
    assert report["replans"] < 11, report["replans"]  # 11 of the 12 ends leave jobs queued


def test_a_replay_ticks_where_something_is_due_not_at_every_slot_boundary(tmp_path: Path) -> None:
    """A job that waits hours for a cheap window: the replay looks at its arrival, its planned start, its end and
    the six-hourly replans, not at each of the quarter hours in between, and the job still starts when planned."""
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay\nwaits,2026-06-01T06:05:00Z,ann,1,1h,40h\n")
    history = load_history(tmp_path / "h.csv", DeadlinePolicy())
    result = simulate(history, quick_config(0.3), TraceProvider(), ForecastMode("perfect"), Capacity.constant(1), 1.0)
    assert result.report["complete"], result.report
    waited_min = min(s.start_slot for s in result.plan["1"])  # minutes from the first slot, 06:00
    assert waited_min >= 6 * 60, result.plan  # the cheap window is hours away: dozens of boundaries passed
    assert result.report["ticks"] < 12 + waited_min // (6 * 60), (result.report["ticks"], waited_min)


def test_a_job_planned_late_starts_when_the_devices_free_not_at_the_next_boundary(tmp_path: Path) -> None:
    """One GPU: a 50-minute run, then a job that cannot meet its deadline. Its plan starts it at the quarter hour
    after the run's slot; it starts when the run ends, as FIFO would, ten minutes earlier."""
    (tmp_path / "h.csv").write_text("id,submit,user,gpus,run_time,max_delay\n"
                                    "first,2026-06-01T06:00:00Z,ann,1,50m,5m\n"
                                    "late,2026-06-01T06:01:00Z,bo,1,1h,1m\n")
    history = load_history(tmp_path / "h.csv", DeadlinePolicy())
    result = simulate(history, quick_config(0.3), TraceProvider(), ForecastMode("perfect"), Capacity.constant(1), 1.0)
    assert result.report["complete"], result.report
    first, late = (min(s.start_slot for s in result.plan[k]) for k in ("1", "2"))  # minutes from 06:00
    assert first == 0 and late == 50, result.plan


def test_a_pipeline_in_a_history_runs_each_step_after_the_last_in_the_replay_run_now_and_hindsight(
        tmp_path: Path) -> None:
    """prep -> train -> eval and prep -> export, submitted in one go (dependents first in the file), beside jobs
    that fill the pool: no schedule the report prices may start a step before its predecessors end."""
    (tmp_path / "h.csv").write_text(
        "id,submit,user,gpus,run_time,max_delay,after\n"
        "eval,2026-06-01T06:00:00Z,ann,1,1h,20h,afterok:train\n"
        "train,2026-06-01T06:00:00Z,ann,2,3h,20h,prep\n"
        "export,2026-06-01T06:00:00Z,ann,1,30m,20h,prep\n"
        "prep,2026-06-01T06:00:00Z,ann,1,1h,20h,\n"
        + "".join(f"other{k},2026-06-01T06:{k:02d}:00Z,bo,1,2h,4h,\n" for k in range(4)))
    history = load_history(tmp_path / "h.csv", DeadlinePolicy())
    order = [j.id for j in history.jobs]
    assert order.index("prep") < order.index("train") < order.index("eval")
    result = simulate(history, quick_config(0.3), TraceProvider(), ForecastMode("perfect"), Capacity.constant(2), 2.0)
    report = result.report
    assert report["valid"] and report["complete"] and report["after_links"] == 3, report
    stored = {j.id: str(k) for k, j in enumerate(history.jobs, 1)}
    hindsight = solve(result.hindsight_problem, 2.0).plan
    for name, plan, minutes in (("gsched", result.plan, 1), ("run-now", run_now(result.hindsight_problem),
                                                               result.hindsight_problem.slot_minutes),
                                ("hindsight", hindsight, result.hindsight_problem.slot_minutes)):
        start = {j: min(s.start_slot for s in plan[stored[j]]) * minutes for j in stored}
        end = {j: max(s.end_slot for s in plan[stored[j]]) * minutes for j in stored}
        for step, before in (("train", "prep"), ("export", "prep"), ("eval", "train")):
            assert start[step] >= end[before], (name, step, start, end)
    assert not [e for e in report["errors"] if "'after'" in e]


@pytest.mark.parametrize(("after", "message"), [
    ("nosuch", "no job 'nosuch' in the history"),
    ("b", "job 'b' is submitted after it"),
    ("a", "a job cannot run after itself"),
])
def test_a_bad_after_in_a_history_is_named_by_line(tmp_path: Path, after: str, message: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,submit,user,gpus,run_time,after\n"
                    f"a,2026-06-01T06:00:00Z,ann,1,1h,{after}\n"
                    "b,2026-06-01T07:00:00Z,ann,1,1h,\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:2: after: {message}")):
        load_history(path, DeadlinePolicy(slack_s=3600))


def test_a_cycle_in_a_history_is_refused_and_a_link_to_a_dropped_job_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text(json.dumps([{"id": "a", "submit": "2026-06-01T06:00:00Z", "user": "ann", "gpus": 1,
                                 "run_time": "1h", "after": ["b"]},
                                {"id": "b", "submit": "2026-06-01T06:00:00Z", "user": "ann", "gpus": 1,
                                 "run_time": "1h", "after": ["a"]}]))
    with pytest.raises(InputError, match="after: its 'after' makes a cycle"):
        load_history(path, DeadlinePolicy(slack_s=3600))
    path.write_text(json.dumps([{"id": "a", "submit": "2026-06-01T06:00:00Z", "user": "ann", "gpus": 1,
                                 "run_time": "1h", "state": "FAILED"},
                                {"id": "b", "submit": "2026-06-01T06:00:00Z", "user": "ann", "gpus": 1,
                                 "run_time": "1h", "after": ["a"]}]))
    history = load_history(path, DeadlinePolicy(slack_s=3600), drop_failed=True)
    assert [(j.id, j.after) for j in history.jobs] == [("b", ())]
    assert history.skipped["'after' links to jobs left out"] == 1
