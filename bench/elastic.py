"""Elastic execution on and off: the same preemptible jobs, the same trace and clock, run by a real daemon.

    .venv/bin/python bench/elastic.py [--scenario demo|alternating] [--out FILE.jsonl]

Each arm starts a daemon (2 CPU devices, clock x1200 from a fixed origin over the embedded DE June-2023 trace),
submits the same jobs, waits for them all and reports what they cost, emitted and drew (the measured runs,
priced on the trace), how many runs (segments) they took, and the resume overhead actually paid: in each
resumed run, the time it ran without stepping (start-up and checkpoint load), from its duration and its
workload's own steps_per_s. ``planner.elastic = false`` is the daemon without elastic execution.

Scenarios: ``demo`` (the default): the demo's embedded June trace, three ~10 h jobs, x1200. ``alternating``: the
elastic tests' synthetic trace (odd hours cheap at 10 EUR/MWh, even hours dear at 300), two ~1.5 h jobs that do not
fit one cheap hour, x360 from 00:57.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPEED = 1200.0
ORIGIN = "2026-06-01T16:00:00Z"  # a Monday evening: the next cheap (solar) hours are tomorrow's midday
CONFIG = """
[daemon]
tick_s = 0.3
calibrate_when_idle = false
clock_speed = {speed}
clock_origin = "{origin}"
[forecast]
trace = "{trace}"
[devices]
gpus = "none"
cpu_devices = 2
[planner]
time_limit_s = 2.0
elastic = {elastic}
"""
# Each job is about 10 simulated hours on one device: more than one day's cheap (solar) hours hold for three jobs
# on two devices, so the plans differ between pausing through the evenings and running through them. On this
# clock a resume (torch start-up, checkpoint load: about 2.5 s real) is about 50 simulated minutes.
JOBS = [
    ("train-a", 'workload = "jobs.linear"\nsteps = 39000\nargs = {{ seed = 1 }}\npreemptible = true\n'
                'resume_overhead_minutes = 50\ndeadline = "{deadline}"\n'),
    ("train-b", 'workload = "jobs.linear"\nsteps = 39000\nargs = {{ seed = 2 }}\npreemptible = true\n'
                'resume_overhead_minutes = 50\ndeadline = "{deadline}"\n'),
    ("train-c", 'workload = "jobs.linear"\nsteps = 39000\nargs = {{ seed = 3 }}\npreemptible = true\n'
                'resume_overhead_minutes = 50\ndeadline = "{deadline}"\n'),
]
DEADLINE = "2026-06-04T06:00:00Z"
ALTERNATING_JOBS = [
    (f"short-{i}", f'workload = "jobs.linear"\nsteps = 20000\nargs = {{{{ seed = {i} }}}}\npreemptible = true\n'
                   'resume_overhead_minutes = 15\ndeadline = "{deadline}"\n') for i in (1, 2)]
SCENARIOS = {
    "demo": {"speed": SPEED, "origin": ORIGIN, "jobs": JOBS, "deadline": DEADLINE, "alternating": False},
    "alternating": {"speed": 360.0, "origin": "2024-01-01T00:57:00Z", "jobs": ALTERNATING_JOBS,
                    "deadline": "2024-01-01T12:00:00Z", "alternating": True},
}


def alternating_trace(path: Path) -> Path:
    """A week of hours from Monday 2024-01-01: odd hours cheap (10 EUR/MWh, 100 g/kWh), even hours dear (300, 500)."""
    from datetime import datetime, timedelta, timezone

    monday = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = ["start_utc,price_eur_per_mwh,carbon_g_per_kwh,renewable_share_pct"]
    for h in range(7 * 24):
        cheap = h % 2 == 1
        rows.append(f"{(monday + timedelta(hours=h)).isoformat().replace('+00:00', 'Z')},"
                    f"{10.0 if cheap else 300.0},{100 if cheap else 500},{80 if cheap else 10}")
    path.write_text("# synthetic: alternating cheap and dear hours\n" + "\n".join(rows) + "\n")
    return path


def cli(home: Path, config: Path, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    env.update(GSCHED_HOME=str(home), GSCHED_CONFIG=str(config))
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout_s)


def arm(elastic: bool, scenario: dict[str, Any]) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="gsched-bench-elastic-"))
    home, config = base / "home", base / "config.toml"
    trace = str(alternating_trace(base / "trace.csv")) if scenario["alternating"] else ""
    config.write_text(CONFIG.format(speed=scenario["speed"], origin=scenario["origin"], trace=trace,
                                    elastic=str(elastic).lower()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    env.update(GSCHED_HOME=str(home), GSCHED_CONFIG=str(config))
    with (base / "daemon.log").open("w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "daemon"], env=env, stdout=log,
                                  stderr=log, cwd=ROOT)
    try:
        for _ in range(100):
            if cli(home, config, "status").returncode == 0:
                break
            time.sleep(0.2)
        ids = []
        for name, body in scenario["jobs"]:
            path = base / f"{name}.toml"
            path.write_text(body.format(deadline=scenario["deadline"]))
            ids.append(int(cli(home, config, "submit", "--parsable", str(path)).stdout))
        for job_id in ids:
            cli(home, config, "wait", str(job_id), "--timeout", "1200", timeout_s=1300)
        jobs = [json.loads(cli(home, config, "show", str(j), "--json").stdout) for j in ids]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    runs = [r for job in jobs for r in job["runs"]]
    overhead_s = 0.0
    for r in runs:
        m = r["metrics"] or {}
        if m.get("resumed_from") is not None and m.get("steps_per_s"):
            overhead_s += max(0.0, r["duration_s"] - (m["steps"] - m["resumed_from"]) / m["steps_per_s"])
    shutil.rmtree(base, ignore_errors=True)
    detail = [{"id": j["id"], "runs": [{k: r[k] for k in ("started_at", "finished_at", "gpus", "steps", "energy_j",
                                                             "cost_eur", "co2_g")} for r in j["runs"]]}
              for j in jobs]
    return {"elastic": elastic, "jobs": detail, "states": sorted({j["state"] for j in jobs}),
            "late": sum(j["finished_at"] is not None and j["finished_at"] > j["deadline"] for j in jobs),
            "cost_eur": sum(j["cost_eur"] or 0 for j in jobs), "co2_g": sum(j["co2_g"] or 0 for j in jobs),
            "energy_j": sum(j["energy_j"] or 0 for j in jobs), "runs": len(runs),
            "resumes": sum((r["metrics"] or {}).get("resumed_from") is not None for r in runs),
            "resume_overhead_s": round(overhead_s, 1),
            "resume_overhead_sim_min": round(overhead_s * scenario["speed"] / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="demo")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    rows = [arm(False, scenario), arm(True, scenario)]
    print("| elastic | jobs | late | cost EUR | CO2 g | energy kJ | runs | resumes | resume overhead (real s / simulated min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['elastic'] else 'off'} | {len(scenario['jobs'])} {'/'.join(r['states'])} | {r['late']} | "  # type: ignore[arg-type]
              f"{r['cost_eur']:.6f} | {r['co2_g']:.3f} | {r['energy_j'] / 1000:.2f} | {r['runs']} | {r['resumes']} | "
              f"{r['resume_overhead_s']} / {r['resume_overhead_sim_min']} |")
    if args.out:
        with args.out.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
