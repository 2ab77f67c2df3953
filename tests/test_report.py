"""What gsched saved, shown three ways, against a real daemon: `gsched report` (JSON and table), the PNG pictures
(status Gantt, plan Gantt, savings), and a real HTTP scrape of the Prometheus endpoint parsed with
prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, DaemonProc, cli, make_home, write_job
from test_elastic import alternating_trace, trace_daemon

PNG = b"\x89PNG\r\n\x1a\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, (path, len(data))  # a picture, not an empty frame


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {labels: value} for every sample, from the real endpoint, parsed by prometheus_client."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).raise_for_status().text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def documented_keys(page: Path) -> set[str]:
    """The quoted names in the page's JSON skeleton: the plain fenced block that starts with '{'."""
    blocks: list[str] = []
    inside, plain, current = False, False, []
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if inside and plain:
                blocks.append("\n".join(current))
            inside, plain, current = not inside, line == "```", []
        elif inside:
            current.append(line)
    block = next(b for b in blocks if b.startswith("{"))
    return set(re.findall(r'"(\w+)"', block)) - {"NAME"}


def keys_of(value: object, skip_under: set[str] = frozenset(), under: str = "") -> set[str]:
    """Every key at any depth (a mapping's keys under ``skip_under`` are data, such as user names, not keys)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if under not in skip_under:
                out.add(key)
            out |= keys_of(inner, skip_under, "" if under in skip_under else key)
    elif isinstance(value, list):
        for inner in value:
            out |= keys_of(inner, skip_under, under)
    return out


def test_report_pictures_and_metrics_show_what_waiting_for_cheap_hours_saved(tmp_path: Path) -> None:
    port = free_port()
    trace = alternating_trace(tmp_path / "trace.csv")  # odd hours cheap (10 EUR/MWh), even hours dear (300)
    # 120x: a run of up to 25 s stays inside its hour, run-now's and the planned one (at 360x a run of 10 s on a
    # loaded machine crossed into the next hour, and the 30x price ratio with it)
    d = trace_daemon(trace, 120, "2024-01-01T00:02:00Z", extra=f'[metrics]\nlisten = "127.0.0.1:{port}"')
    try:
        # the second job's name is mathtext matplotlib cannot parse: it must not break anyone's picture
        names = ['"plain"', "'$\\frac{$'"]
        ids = [d.submit(write_job(tmp_path, f"job{i}", f'name = {names[i]}\nworkload = "jobs.linear"\nsteps = 3000\n'
                                  f'args = {{ seed = {i} }}\nmax_delay = "6h"\n')) for i in range(2)]
        planned = d.status()
        assert all(j["state"] == "PLANNED" and j["planned_start"] >= "2024-01-01T01:00" for j in planned), planned
        picture = tmp_path / "status.png"
        shown = d.cli("status", "--plot", str(picture))
        assert shown.returncode == 0, shown.stderr
        assert_png(picture)
        before = scrape(port)
        assert before["gsched_jobs"][(("state", "PLANNED"),)] == 2
        assert before["gsched_devices"][()] == 2 and before["gsched_devices_busy"][()] == 0
        assert before["gsched_price_eur_per_mwh"][()] == 300.0  # 00:02 is in a dear hour
        assert before["gsched_forecast_provider_up"][(("provider", "trace:trace.csv"),)] == 1
        assert before["gsched_planner_solve_seconds"][()] > 0
        for job_id in ids:
            assert d.cli("wait", str(job_id), timeout=120).returncode == 0
        after = scrape(port)
        report = json.loads(d.cli("report", "--json", check=True).stdout)
        table = d.cli("report", "--plot", str(tmp_path / "saved.png"), check=True).stdout
        assert_png(tmp_path / "saved.png")
        none = json.loads(d.cli("report", "--json", "--until", "2023-01-01", check=True).stdout)
        signals = json.loads(d.cli("forecast", "--json", "--hours", "2", check=True).stdout)
        bad = d.cli("report", "--since", "yesterday")
    finally:
        d.stop()
    # the report: both jobs, run in the cheap hour, against run-now in the dear one
    assert sorted(j["id"] for j in report["jobs"]) == ids  # by end time
    for job in report["jobs"]:
        assert {"id", "owner", "energy_kwh", "measured_kwh", "cost_eur", "co2_kg", "baseline_cost_eur",
                "baseline_co2_kg"} <= set(job)
        assert job["energy_kwh"] > 0 and job["measured_kwh"] == 0 and job["signals"] == "trace"  # CPU: an estimate
        assert job["baseline_cost_eur"] == pytest.approx(job["cost_eur"] * 30, rel=0.02)  # 300 vs 10 EUR/MWh
        assert job["baseline_co2_kg"] == pytest.approx(job["co2_kg"] * 5, rel=0.02)  # 500 vs 100 g/kWh
    total = report["total"]
    assert total["jobs"] == 2 and total["saved_cost_pct"] == pytest.approx(100 * 29 / 30, abs=1)
    assert total["saved_co2_pct"] == pytest.approx(80, abs=1)
    assert total["energy_kwh"] == pytest.approx(sum(j["energy_kwh"] for j in report["jobs"]))
    assert report["users"]["root"]["jobs"] == 2
    assert "2 job(s) ran" in table and "96.7%" in table and "-0.0" not in table
    assert none["jobs"] == [] and none["total"]["jobs"] == 0
    # the documented JSON keys are the output's keys, no more and no fewer
    assert documented_keys(ROOT / "docs" / "report.md") == keys_of(report, skip_under={"users"})
    (tmp_path / "fetch.toml").write_text('[[forecast.providers]]\nkind = "file"\n')
    fetched = json.loads(cli("forecast", "--fetch", "--config", str(tmp_path / "fetch.toml"), "--json", "--hours",
                             "2", check=True).stdout)
    assert documented_keys(ROOT / "docs" / "forecasts.md") == keys_of(fetched)
    assert keys_of(signals) <= keys_of(fetched)  # the daemon's replayed trace: no providers to list
    assert bad.returncode == 2 and "--since" in bad.stderr
    # the metrics after the runs: counters moved by what the runs measured
    assert after["gsched_jobs"][(("state", "COMPLETED"),)] == 2
    energy = after["gsched_energy_joules_total"][(("source", "estimate"),)]
    assert energy == pytest.approx(total["energy_kwh"] * 3.6e6, rel=1e-6)
    assert after["gsched_cost_eur_total"][()] > 0 and after["gsched_co2_grams_total"][()] > 0
    assert after["gsched_queue_wait_seconds_count"][()] == 2
    assert 0 < after["gsched_queue_wait_seconds_sum"][()] < 2 * 3600  # from about 00:02 to 01:00, twice
    assert after["gsched_price_eur_per_mwh"][()] in (10.0, 300.0)


def test_no_metrics_key_serves_nothing(tmp_path: Path) -> None:
    d = DaemonProc(make_home()).start()
    try:
        info = json.loads(d.cli("status", "--json", check=True).stdout)
        assert "jobs" in info
        from scheduler.client import Client

        with Client(d.socket) as client:
            assert client.info()["metrics"] is None
    finally:
        d.stop()


def test_metrics_must_listen_on_loopback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nlisten = "0.0.0.0:9465"\n')
    result = subprocess.run([sys.executable, "-m", "scheduler.cli", "--config", str(config), "daemon"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2 and "metrics.listen" in result.stderr and "loopback" in result.stderr


def test_gsched_plan_draws_the_plan(tmp_path: Path) -> None:
    problem = {"start": "2024-03-04T00:00:00Z", "slot_minutes": 60, "horizon_slots": 8, "gpus": 2,
               "carbon_price_eur_per_t": 0,
               "signals": {"price_eur_per_mwh": [100, 10, 10, 100, 100, 10, 10, 100], "carbon_g_per_kwh": [300] * 8},
               "jobs": [{"id": "e", "release_slot": 0, "deadline_slot": 8, "work": 5.4, "preemptible": True,
                         "resume_overhead_minutes": 0, "requested_mode": 0,
                         "modes": [{"gpus": 1, "rate": 1.0, "power_kw": 1.0}, {"gpus": 2, "rate": 1.8, "power_kw": 2.0}]},
                        {"id": "r", "release_slot": 0, "deadline_slot": 8, "work": 2, "preemptible": False,
                         "requested_mode": 0, "modes": [{"gpus": 1, "rate": 1.0, "power_kw": 1.0}]}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(problem))
    result = subprocess.run([sys.executable, "-m", "scheduler.cli", "plan", "--problem", str(path), "--output",
                             str(tmp_path / "plan.json"), "--plot", str(tmp_path / "plan.png")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "plan.png")


def test_run_now_queues_the_reported_jobs_fifo_with_backfill_on_the_pool() -> None:
    """The baseline as the planner benchmark's run-now: by submission, each job at the earliest minute its
    devices are free for its whole run (a later small job may use a hole an earlier big one cannot)."""
    from datetime import datetime, timedelta, timezone

    from scheduler.report import FinishedJob, Run, run_now_starts

    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def job(i: int, submitted_min: float, run_min: float, gpus: int) -> FinishedJob:
        at = t0 + timedelta(minutes=submitted_min)
        return FinishedJob(i, "n", "o", "COMPLETED", at, at, (Run(at, at + timedelta(minutes=run_min), 1.0, "estimate"),),
                           gpus)

    jobs = [job(1, 0, 60, 2), job(2, 0, 30, 1), job(3, 10, 20, 1), job(4, 5, 10, 2), job(5, 0.5, 5, 3)]
    starts = {k: (v - t0) / timedelta(minutes=1) for k, v in run_now_starts(jobs, 2).items()}
    # 1 holds both devices for an hour; 2 takes one after it; 5 (submitted third) asks for more than the pool and
    # gets both once 2 ends at 90; 4 (both) follows at 95; 3 (one device, submitted last) backfills beside 2 at 60
    assert starts == {1: 0, 2: 60, 5: 90, 4: 95, 3: 60}


def test_run_now_starts_a_pipelines_step_after_its_predecessors_run_now_ends() -> None:
    """A step submitted with its predecessor (a pipeline submitted in one go) waits for it in the baseline too:
    without, run-now ran both at once, and the saving credited gsched with the wait it had to make."""
    from datetime import datetime, timedelta, timezone

    from scheduler.report import FinishedJob, Run, run_now_starts

    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def job(i: int, run_min: float, after: tuple[int, ...] = ()) -> FinishedJob:
        return FinishedJob(i, "n", "o", "COMPLETED", t0, t0, (Run(t0, t0 + timedelta(minutes=run_min), 1.0,
                                                                  "estimate"),), 1, after)

    jobs = [job(3, 10, (2,)), job(2, 30, (1,)), job(1, 60), job(4, 5, (9,))]  # 9: not in the report
    starts = {k: (v - t0) / timedelta(minutes=1) for k, v in run_now_starts(jobs, 4).items()}
    assert starts == {1: 0, 2: 60, 3: 90, 4: 0}


def test_savings_are_over_the_completed_jobs_only_a_cancelled_one_is_listed_and_priced_not_compared() -> None:
    """A job cancelled after ten minutes ran a tenth of its work: against a run-now of that same tenth it would
    show a saving nobody made. Savings are over the jobs run in full; cost and energy count every run."""
    from datetime import datetime, timedelta, timezone

    from scheduler.forecasts.base import Forecast
    from scheduler.report import FinishedJob, Run, report as build

    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    price = tuple(300.0 if h % 2 == 0 else 10.0 for h in range(48))  # even hours dear

    def signals(start: datetime, end: datetime) -> tuple[Forecast, str]:
        return Forecast(t0, 3600, price, (100.0,) * 48, (None,) * 48, "test"), "trace"

    def job(i: int, state: str, start_h: float, run_min: float) -> FinishedJob:
        at = t0 + timedelta(hours=start_h)
        return FinishedJob(i, f"j{i}", "ann", state, t0, at + timedelta(minutes=run_min),
                           (Run(at, at + timedelta(minutes=run_min), 3.6e6 * run_min / 60, "estimate"),))

    out = build([job(1, "COMPLETED", 1, 60), job(2, "CANCELLED", 3, 10)], signals, devices=2)
    rows = {r["id"]: r for r in out["jobs"]}
    assert rows[1]["compared"] and rows[1]["saved_cost_eur"] == pytest.approx(0.29)  # 1 kWh: 300 vs 10 EUR/MWh
    assert not rows[2]["compared"] and rows[2]["saved_cost_eur"] is None and rows[2]["cost_eur"] > 0
    total = out["total"]
    assert total["jobs"] == 2 and total["compared_jobs"] == 1
    assert total["cost_eur"] == pytest.approx(rows[1]["cost_eur"] + rows[2]["cost_eur"])
    assert total["saved_cost_eur"] == pytest.approx(0.29) and total["saved_cost_pct"] == pytest.approx(96.67, abs=0.01)


def test_a_saving_across_zero_is_in_eur_only_negative_prices_make_negative_costs() -> None:
    """Day-ahead prices below zero make a run's cost negative: the saving is still baseline minus cost in EUR, but
    a percentage of it ("176%") means nothing, so there is none."""
    from datetime import datetime, timedelta, timezone

    from scheduler.forecasts.base import Forecast
    from scheduler.report import FinishedJob, Run, report as build, saving_pct

    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    price = (300.0, -50.0) * 24

    def signals(start: datetime, end: datetime) -> tuple[Forecast, str]:
        return Forecast(t0, 3600, price, (100.0,) * 48, (None,) * 48, "test"), "trace"

    at = t0 + timedelta(hours=1)  # ran in the negative hour; run-now would have run at 00:00
    job = FinishedJob(1, "j", "ann", "COMPLETED", t0, at + timedelta(hours=1),
                      (Run(at, at + timedelta(hours=1), 3.6e6, "estimate"),))
    total = build([job], signals, devices=1)["total"]
    assert total["cost_eur"] == pytest.approx(-0.05)  # 1 kWh at -50 EUR/MWh
    assert total["saved_cost_eur"] == pytest.approx(0.35) and total["saved_cost_pct"] is None
    assert saving_pct(10.0, 4.0) == 60.0 and saving_pct(10.0, 0.0) == 100.0
    assert saving_pct(10.0, -1.0) is None and saving_pct(0.0, 1.0) is None and saving_pct(-2.0, -3.0) is None
