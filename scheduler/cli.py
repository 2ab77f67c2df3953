"""The gsched command line: parses, calls the daemon, prints, exits. No business logic here.

Exit codes: 0 ok; 1 other error; 2 bad input (job file, config, arguments); 3 no daemon;
4 no such job; 5 not allowed; 6 the job's state forbids it. ``wait`` exits with the job's code.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from scheduler.errors import GschedError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="gsched: a carbon- and price-aware job scheduler for GPU servers.")
_state: dict[str, Any] = {}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


# Control characters (C0, DEL, C1) and the invisible bidi/zero-width ones: a job's name, command or reason
# is any user's text, and raw escapes in it would rewrite every reader's terminal. JSON keeps the raw text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def _safe(value: Any, newlines: bool = False) -> str:
    def escape(match: re.Match[str]) -> str:
        ch = match.group()
        if newlines and ch == "\n":
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return _UNSAFE.sub(escape, str(value))


def _fail(exc: GschedError) -> NoReturn:
    print(f"gsched: error: {_safe(exc, newlines=True)}", file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _config() -> Any:
    from scheduler.config import load_config

    if "config" not in _state:
        _state["config"] = load_config(_state.get("config_path"))
    return _state["config"]


def _client() -> Any:
    from scheduler.client import Client
    from scheduler.config import client_socket

    return Client(client_socket(_config()))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


@app.callback()
def _main(config: Optional[Path] = typer.Option(None, "--config", help="config file (default: $GSCHED_CONFIG, "
                                                "/etc/gsched/config.toml, built-in defaults)")) -> None:
    _state["config_path"] = config


@app.command()
def submit(files: list[Path] = typer.Argument(..., help="job file(s) (TOML); several are queued together or not "
                                                         "at all"),
           now: bool = typer.Option(False, "--now", help="run as soon as devices are free; skip cheaper windows"),
           after: Optional[str] = typer.Option(None, "--after", help="run after these jobs complete: 12,13"),
           dependency: Optional[str] = typer.Option(None, "--dependency", "-d",
                                                    help="as sbatch: afterok:12:13, afterany:14, afternotok:15 "
                                                         "(comma: all must hold)"),
           parsable: bool = typer.Option(False, "--parsable", help="print only the job id(s), one a line")) -> None:
    """Queue job files; prints their ids."""
    from scheduler import dependencies
    from scheduler.jobfile import read_job_file

    try:
        try:
            ids = [str(dependencies.job_id(part.strip())) for part in after.split(",")] if after else []
        except ValueError as exc:
            raise InputError(f"--after: {exc}") from None
        waits = ",".join([*([f"afterok:{':'.join(ids)}"] if ids else []), *([dependency] if dependency else [])])
        texts = [(read_job_file(file), str(file), str(file.resolve().parent)) for file in files]
        # The daemon validates them, on its own clock (accelerated in the demo), naming the file and the field.
        with _client() as client:
            replies = client.submit(texts, urgent=now, after=waits or None)
    except GschedError as exc:
        _fail(exc)
    for reply in replies:
        print(reply["id"] if parsable else f"Submitted job {reply['id']} ({reply['name']})")


def _num(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _scaled(value: float | None, unit: str, steps: tuple[tuple[float, str], ...]) -> str:
    """3 significant digits in the largest unit the value reaches: 0.0042 EUR -> 4.2 mEUR. Never -0."""
    if value is None:
        return "-"
    if abs(value) < 1e-12:
        return f"0 {unit}"
    factor, prefix = next(((f, p) for f, p in steps if abs(value) >= f), steps[-1])
    return f"{value / factor:.3g} {prefix}{unit}"


def _energy(joules: float | None) -> str:
    return _scaled(None if joules is None else joules / 3600, "Wh", ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")))


def _money(eur: float | None) -> str:
    return _scaled(eur, "EUR", ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")))


def _mass(grams: float | None) -> str:
    return _scaled(grams, "g", ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")))


def _field(key: str, value: Any) -> str:
    """A field for people: money, energy and mass in readable units by the unit in its name, other floats rounded."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for suffix, show in (("_eur", _money), ("_j", _energy), ("_g", _mass),
                             ("_kwh", lambda v: _energy(v * 3.6e6)), ("_kg", lambda v: _mass(v * 1000))):
            if key.endswith(suffix):
                return show(value)
        if isinstance(value, float):
            return f"{value:.4g}"
    return _safe(value)


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _elapsed_s(job: dict[str, Any], now: datetime) -> float | None:
    from scheduler.timeutil import parse_rfc3339

    if not job["started_at"]:
        return None
    end = parse_rfc3339(job["finished_at"]) if job["finished_at"] else now
    return (end - parse_rfc3339(job["started_at"])).total_seconds()


def _short_time(text: str | None) -> str:
    return "-" if not text else text[5:16].replace("T", " ")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="print JSON"),
           plot: Optional[Path] = typer.Option(None, "--plot", help="also draw running and planned jobs over the "
                                                                   "price and carbon curves (PNG)")) -> None:
    """The queue: every job with its state, plan, energy, cost and CO2."""
    from scheduler.timeutil import format_duration, parse_rfc3339

    try:
        with _client() as client:
            data = client.jobs()
            if plot is not None:
                from scheduler.plots import status_png

                now = parse_rfc3339(data["now"])
                ends = [parse_rfc3339(t) for j in data["jobs"] for t in
                        [j["planned_end"], *(s["end"] for s in j.get("segments") or [])] if t]
                hours = min(168.0, max(12.0, (max(ends, default=now) - now).total_seconds() / 3600 + 2))
                status_png(data["jobs"], client.devices(), client.forecast(hours), now, plot)
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json(data)
        return
    now = parse_rfc3339(data["now"])
    header = (f"{'JOBID':>6} {'NAME':<16} {'USER':<10} {'STATE':<10} {'GPUS':>4} {'START':<11} {'TIME':>10} "
              f"{'ENERGY':>10} {'COST':>10} {'CO2':>9}  REASON")
    print(header)
    for job in data["jobs"]:
        start = job["started_at"] or job["planned_start"]
        print(f"{job['id']:>6} {_safe(job['name'])[:16]:<16} {_safe(job['owner'])[:10]:<10} {job['state']:<10} "
              f"{job['gpus'] or job['gpus_min']:>4} {_short_time(start):<11} "
              f"{format_duration(_elapsed_s(job, now)):>10} {_energy(job['energy_j']):>10} "
              f"{_money(job['cost_eur']):>10} {_mass(job['co2_g']):>9}  {_safe(job['reason'] or '')}")


@app.command()
def show(job_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """One job in full: its plan, runs, measurements and events."""
    try:
        with _client() as client:
            job = client.job(job_id)
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json(job)
        return
    skip = {"events", "runs", "spec", "mode", "metrics", "private_withheld", "segments", "command_path", "after",
            "dependents"}
    for key, value in job.items():
        if key == "command" and value and job.get("command_path"):  # the program it runs: python3 -> /venv/...
            value = f"{' '.join(value)}  ({value[0]} -> {job['command_path']})"
        if key not in skip:
            print(f"{key:>14}: {_field(key, value)}")
    print(f"{'mode':>14}: {json.dumps(job['mode'])}")
    print(f"{'metrics':>14}: {_safe(json.dumps(job['metrics']))}")
    if job.get("private_withheld"):
        print(f"{'':>14}  (command, args, env, workdir and output are shown to the owner and root only)")
    if job.get("after"):
        print(f"{'after':>14}: " + ", ".join(f"{d['kind']}:{d['id']}" for d in job["after"]))
    if job.get("dependents"):
        print(f"{'dependents':>14}: " + ", ".join(f"{d['id']} ({d['kind']}, {d['state']})" for d in job["dependents"]))
    if job["segments"]:
        print("planned segments:")
        for seg in job["segments"]:
            print(f"  {seg['start']} - {seg['end']}  {_safe(seg['label'])}")
    if job["runs"]:
        print("runs:")
        for i, run in enumerate(job["runs"], 1):
            mode = run["mode"] or {}
            print(f"  {i}. {run['started_at']} - {run['finished_at']}  {run['gpus'] or '-'} device(s) "
                  f"{mode.get('precision', '-')}  steps {run['steps'] if run['steps'] is not None else '-'}  "
                  f"{_energy(run['energy_j'])}  {_money(run['cost_eur'])}  {_mass(run['co2_g'])} CO2")
    print("events:")
    for event in job["events"]:
        print(f"  {event['at']}  {event['state']:<10} {_safe(event['reason'])}")


@app.command()
def report(since: Optional[str] = typer.Option(None, "--since", help="jobs that ended at or after (2026-11-01 or RFC 3339)"),
           until: Optional[str] = typer.Option(None, "--until", help="jobs that ended before"),
           user: Optional[str] = typer.Option(None, "--user", help="one user's jobs"),
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the savings over time into this PNG")
           ) -> None:
    """What ran, what it cost, and what gsched saved against run-now (like sacct and sreport)."""
    try:
        with _client() as client:
            data = client.report(since, until, user)
        if plot is not None:
            from scheduler.plots import report_png

            report_png(data, plot)
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json(data)
        return
    print(f"{'JOBID':>6} {'NAME':<16} {'USER':<10} {'STATE':<10} {'RUNS':>4} {'ENERGY':>10} {'MEASURED':>10} "
          f"{'COST':>10} {'CO2':>9} {'RUN-NOW':>10} {'SAVED':>10} {'SAVED_CO2':>10}  SIGNALS")
    for job in data["jobs"]:
        print(f"{job['id']:>6} {_safe(job['name'])[:16]:<16} {_safe(job['owner'])[:10]:<10} {job['state']:<10} "
              f"{job['runs']:>4} {_energy(job['energy_kwh'] * 3.6e6):>10} {_energy(job['measured_kwh'] * 3.6e6):>10} "
              f"{_money(job['cost_eur']):>10} {_mass(job['co2_kg'] * 1000):>9} {_money(job['baseline_cost_eur']):>10} "
              f"{_money(job['saved_cost_eur']):>10} {_mass(_times(job['saved_co2_kg'], 1000)):>10}  {job['signals']}")
    rows = [(_safe(name), t) for name, t in data["users"].items()] + [("TOTAL", data["total"])]
    print(f"\n{'USER':<10} {'JOBS':>5} {'ENERGY':>10} {'MEASURED':>10} {'COST':>10} {'CO2':>9} "
          f"{'SAVED':>10} {'SAVED%':>7} {'SAVED_CO2':>10} {'SAVED%':>7}")
    for name, t in rows:
        print(f"{name[:10]:<10} {t['jobs']:>5} {_energy(t['energy_kwh'] * 3.6e6):>10} "
              f"{_energy(t['measured_kwh'] * 3.6e6):>10} {_money(t['cost_eur']):>10} {_mass(t['co2_kg'] * 1000):>9} "
              f"{_money(t['saved_cost_eur']):>10} {_pct(t['saved_cost_pct']):>7} "
              f"{_mass(t['saved_co2_kg'] * 1000):>10} {_pct(t['saved_co2_pct']):>7}")
    t = data["total"]
    print(f"\n{t['jobs']} job(s) ran: {_energy(t['energy_kwh'] * 3.6e6)} ({_energy(t['measured_kwh'] * 3.6e6)} "
          f"measured), {_money(t['cost_eur'])}, {_mass(t['co2_kg'] * 1000)} CO2; over the {t['compared_jobs']} that "
          f"completed, saved {_money(t['saved_cost_eur'])} ({_pct(t['saved_cost_pct'])}) and "
          f"{_mass(t['saved_co2_kg'] * 1000)} CO2 ({_pct(t['saved_co2_pct'])}) against run-now (each job in its "
          "requested mode as soon as the devices allowed)")
    if plot is not None:
        print(f"savings over time drawn in {plot}")


@app.command()
def cancel(job_ids: list[int] = typer.Argument(..., help="job ids")) -> None:
    """Cancel jobs: queued ones at once, running ones by SIGTERM then SIGKILL after the grace period."""
    code = 0
    with _client() as client:
        for job_id in job_ids:
            try:
                client.cancel(job_id)
            except GschedError as exc:
                print(f"gsched: error: {_safe(exc, newlines=True)}", file=sys.stderr)
                code = code or exc.exit_code
    raise typer.Exit(code)


@app.command()
def requeue(job_id: int = typer.Argument(...)) -> None:
    """Checkpoint a running preemptible job and return it to the queue (like scontrol requeue)."""
    try:
        with _client() as client:
            client.requeue(job_id)
    except GschedError as exc:
        _fail(exc)


@app.command()
def logs(job_id: int = typer.Argument(...),
         follow: bool = typer.Option(False, "-f", "--follow", help="keep printing until the job ends")) -> None:
    """Print a job's output (owner or root only)."""
    offset = 0
    try:
        with _client() as client:
            while True:
                chunk, size, state = client.log(job_id, offset)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                offset += len(chunk)
                if offset < size:
                    continue
                if not follow or state in TERMINAL:
                    break
                time.sleep(0.5)
    except GschedError as exc:
        _fail(exc)


@app.command()
def wait(job_id: int = typer.Argument(...),
         timeout: Optional[float] = typer.Option(None, help="give up after this many seconds (exit 124)")) -> None:
    """Wait until a job ends; exit with its exit code (1 if it ended without one)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with _client() as client:
            said = False
            while True:
                job = client.job(job_id)
                if job["state"] in TERMINAL:
                    break
                if not said:
                    said = True
                    _say_when(job, client.info())
                if deadline is not None and time.monotonic() > deadline:
                    print(f"gsched: job {job_id} still {job['state']} after {timeout} s", file=sys.stderr)
                    raise typer.Exit(124)
                time.sleep(0.25)
    except GschedError as exc:
        _fail(exc)
    if job["exit_code"] is None:
        print(f"gsched: job {job_id} {job['state']}: {_safe(job['reason'])}", file=sys.stderr)
        raise typer.Exit(1)
    raise typer.Exit(min(max(int(job["exit_code"]), 0), 255))


def _say_when(job: dict[str, Any], info: dict[str, Any]) -> None:
    """A job that will not start for a while: say so at once (when, why, and how to run it now), on stderr."""
    from scheduler.timeutil import parse_rfc3339

    if job["state"] not in ("PENDING", "PLANNED"):
        return
    how = f"to run it now instead: gsched cancel {job['id']}, then gsched submit --now with its job file"
    if job["state"] == "PENDING" or not job.get("planned_start"):
        print(f"gsched: job {job['id']} is PENDING: {_safe(job['reason'])}; waiting ({how})", file=sys.stderr)
        return
    ahead_s = (parse_rfc3339(job["planned_start"]) - parse_rfc3339(info["now"])).total_seconds()
    if ahead_s > 60:
        wall = "" if info.get("clock_speed", 1) == 1 else f", {ahead_s / info['clock_speed']:.0f} s of real time"
        print(f"gsched: job {job['id']} is PLANNED to start at {job['planned_start']}, in {ahead_s / 3600:.1f} h"
              f"{wall}: {_safe(job['reason'])}; waiting ({how})", file=sys.stderr)


@app.command()
def devices(as_json: bool = typer.Option(False, "--json", help="print JSON"),
            local: bool = typer.Option(False, "--local", help="query NVML here instead of asking the daemon")) -> None:
    """What the daemon schedules on: name, UUID, memory, power limit and range, energy counter."""
    try:
        if local:
            from scheduler.devices import discover

            found = [d.to_json() for d in discover(_config().devices)]
        else:
            with _client() as client:
                found = client.devices()
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json({"devices": found})
        return
    print(f"{'IDX':>3} {'KIND':<4} {'NAME':<24} {'UUID':<42} {'MEM_MIB':>8} {'POWER_W':>8} {'RANGE_W':>11} COUNTER")
    for d in found:
        limits = "-" if d["power_limit_min_w"] is None else f"{d['power_limit_min_w']:.0f}-{d['power_limit_max_w']:.0f}"
        print(f"{d['index']:>3} {d['kind']:<4} {d['name'][:24]:<24} {d['uuid'][:42]:<42} {d['memory_mib'] or '-':>8} "
              f"{_num(d['power_limit_w'], 1, 0):>8} {limits:>11} {'yes' if d['energy_counter'] else 'no'}")


@app.command()
def profile(file: Path = typer.Argument(..., help="job file of a workload, or of a command using scheduler.train"),
            steps: int = typer.Option(300, "--steps", help="training steps per calibration run"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Measure each candidate mode of a workload with short runs; the planner then plans it from the profiles."""
    from datetime import timezone

    from scheduler.errors import InputError
    from scheduler.jobfile import calibration_job, parse_job, read_job_file
    from scheduler.profiles import calibration_modes, mean_watts

    try:
        text = read_job_file(file)
        spec = parse_job(text, source=str(file), base_dir=file.resolve().parent, now=datetime.now(timezone.utc))
        if spec.workload is None and not spec.steps:
            raise InputError(f"{file}: steps: profile measures workloads, and commands that train through "
                             "scheduler.train and give their steps")
        if steps < 10:
            raise InputError("--steps: at least 10")
        with _client() as client:
            runs = []
            for n, precision, pruning in calibration_modes(spec, len(client.devices())):
                mode, derived = calibration_job(spec, "profile", n, precision, pruning, steps)
                reply = client.submit([(derived, f"{file} ({mode})", spec.workdir)], urgent=True)[0]
                runs.append((n, precision, pruning, reply["id"]))
                print(f"calibrating {spec.name} in {mode}: job {reply['id']}", file=sys.stderr)
            rows = []
            for n, precision, pruning, job_id in runs:
                while (job := client.job(job_id))["state"] not in TERMINAL:
                    time.sleep(0.5)
                run = job["runs"][-1] if job["runs"] else {}
                metrics = run.get("metrics") or {}
                watts = mean_watts(run["energy_j"], run["duration_s"]) if run.get("duration_s") else None
                rate = metrics.get("steps_per_s")
                rows.append({"gpus": n, "precision": precision, "pruning": pruning, "job": job_id,
                             "state": job["state"], "steps_per_s": rate, "watts": watts,
                             "energy_source": run.get("energy_source"),
                             "j_per_step": watts / rate if watts and rate else None})
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json(rows)
        return
    print(f"{'GPUS':>4} {'PRECISION':<9} {'PRUNING':<7} {'STEPS/S':>9} {'WATTS':>8} {'J/STEP':>9}  SOURCE"
          "      JOB STATE")
    for r in rows:
        print(f"{r['gpus']:>4} {r['precision']:<9} {r['pruning'] or '-':<7} {_num(r['steps_per_s'], 1, 1):>9} "
              f"{_num(r['watts'], 1, 1):>8} {_num(r['j_per_step'], 1, 4):>9}  {r['energy_source'] or '-':<10} "
              f"{r['job']:>4} {r['state']}")


@app.command()
def forecast(as_json: bool = typer.Option(False, "--json", help="print JSON"),
             hours: float = typer.Option(48.0, "--hours", help="how far ahead"),
             plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the curves into this PNG"),
             fetch: bool = typer.Option(False, "--fetch", help="fetch from the config's providers here, no daemon")
             ) -> None:
    """The price, carbon intensity and renewable share ahead, with each step's source and flags."""
    try:
        if fetch:
            from scheduler.offline import fetch_forecast

            data = fetch_forecast(_config(), hours)
        else:
            with _client() as client:
                data = client.forecast(hours)
    except GschedError as exc:
        _fail(exc)
    for status in data.get("providers", []):
        if status.get("ok") is False:
            print(f"gsched: provider {status['name']} failing: {status['error']}", file=sys.stderr)
    if plot is not None:
        from scheduler.plots import forecast_png

        forecast_png(data, plot)
    if as_json:
        _print_json(data)
        return
    currency = data["currency"]
    print(f"{'START (UTC)':<17} {currency + '/MWH':>9} {'GCO2/KWH':>9} {'RENEW_%':>8}  FLAGS      SOURCE")
    for p in data["points"]:
        flags = ",".join(f for f in ("estimated", "stale") if p.get(f)) or "-"
        print(f"{p['start'][:16].replace('T', ' '):<17} {_num(p['price_per_mwh'], 1, 2):>9} "
              f"{_num(p['carbon_g_per_kwh'], 1, 0):>9} {_num(p['renewable_share_pct'], 1, 1):>8}  {flags:<10} "
              f"{p['source']}")


@app.command("plan")
def plan_cmd(problem: Path = typer.Option(..., "--problem", help="problem file (JSON), see docs/planner.md"),
             output: Path = typer.Option(..., "--output", help="where to write the plan (JSON)"),
             time_limit: float = typer.Option(10.0, "--time-limit", help="seconds the planner may take"),
             compare: bool = typer.Option(False, "--compare", help="also evaluate run-now, lwa and carbonscaler"),
             as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
             plot: Optional[Path] = typer.Option(None, "--plot", help="also draw the plan as a Gantt chart (PNG)")
             ) -> None:
    """Plan a problem file offline, without a daemon; writes the plan and prints a summary."""
    from scheduler.offline import plan_file

    try:
        summary = plan_file(problem, output, time_limit, compare, plot)
    except GschedError as exc:
        _fail(exc)
    if as_json:
        _print_json(summary)
        return
    print(f"planned {summary['jobs']} jobs in {summary['solve_s']:.2f} s ({summary['method']}): "
          f"objective {summary['objective']:.6g} {summary['objective_unit']}, energy {summary['energy_kwh']:.4g} kWh, "
          f"{summary['co2_kg']:.4g} kgCO2")
    if summary.get("bound") is not None:
        gap_pct = max(0.0, round(100 * summary["gap_to_bound"], 2)) + 0.0  # never "-0.00%": the bound is below
        print(f"LP lower bound {summary['bound']:.6g}: at most {gap_pct:.2f}% above the optimum")
    for phase in summary["phases"]:  # where the time went and what it bought
        note = f": {phase['note']}" if phase.get("note") else ""
        gain = "-" if phase["gain"] is None else f"{phase['gain']:.6g}"
        print(f"  {phase['phase']:<15} {phase['seconds']:6.2f} s  gain {gain}{note}")
    for name, other in summary.get("baselines", {}).items():
        print(f"  vs {name:<12} {other['objective']:.6g} ({other['saving_pct']:+.1f}% saved by gsched, "
              f"{other['late_jobs']} late)")
    for job_id, why in {**summary["late"], **summary["unplanned"]}.items():
        print(f"  job {job_id}: {why}", file=sys.stderr)


@app.command()
def simulate(
        jobs: Path = typer.Option(..., "--jobs", help="the history: gsched CSV/JSON, or a sacct --parsable2 or "
                                                      "--json export (formats: docs/simulate.md)"),
        output: Path = typer.Option(..., "--output", help="the report (JSON); the executed plan and its problem "
                                                          "are written beside it (.plan.json, .problem.json)"),
        signals: Optional[Path] = typer.Option(None, "--signals", help="realised prices and carbon: a trace CSV as "
                                               "forecast.trace takes (default: the config's trace, else the "
                                               "embedded one)"),
        forecast: str = typer.Option("perfect", "--forecast", help="what the planner knew: perfect, persistence "
                                                                  "(yesterday's values) or noise:PCT[:SEED]"),
        gpus: Optional[int] = typer.Option(None, "--gpus", help="GPUs in the pool (default: the widest job's)"),
        capacity: Optional[Path] = typer.Option(None, "--capacity", help="GPUs over time: CSV start_utc,gpus"),
        slack: Optional[str] = typer.Option(None, "--slack", help="deadline policy: submit + run time + SLACK "
                                                                 "(e.g. 24h), for jobs the history gives none"),
        slack_factor: Optional[float] = typer.Option(None, "--slack-factor", help="deadline policy: submit + "
                                                                                  "FACTOR x run time"),
        deadline_from: Optional[str] = typer.Option(None, "--deadline-from", help="'timelimit': submit + the job's "
                                                                                  "Slurm Timelimit"),
        drop_failed: bool = typer.Option(False, "--drop-failed", help="leave out jobs that failed, were cancelled "
                                                                     "or timed out (kept by default: they ran)"),
        timezone_name: str = typer.Option("UTC", "--timezone", help="zone of sacct's times without an offset"),
        time_limit: Optional[float] = typer.Option(None, "--time-limit", help="each replan's limit in seconds "
                                                   "(default: planner.time_limit_s)"),
        hindsight_limit: float = typer.Option(60.0, "--hindsight-limit", help="seconds for the hindsight plan"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        plot: Optional[Path] = typer.Option(None, "--plot", help="draw cumulative cost and CO2 (PNG)"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress lines on stderr")) -> None:
    """Replay a cluster's job history through the daemon's own planning on a simulated clock: what gsched would
    have saved against running each job at once, and the hindsight optimum."""
    import dataclasses

    from scheduler.errors import InputError
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.history import DeadlinePolicy, load_history
    from scheduler.simulation import Capacity, ForecastMode, say, simulate as run_simulation, write_outputs
    from scheduler.timeutil import parse_duration_s

    try:
        config = _config()
        mode = ForecastMode.parse(forecast)
        try:
            slack_s = parse_duration_s(slack) if slack is not None else None
        except ValueError as exc:
            raise InputError(f"--slack: {exc}") from None
        if slack_factor is not None and not slack_factor >= 1:
            raise InputError("--slack-factor: must be >= 1 (a deadline before the run could end is no deadline)")
        if deadline_from not in (None, "timelimit"):
            raise InputError("--deadline-from: the only source is 'timelimit'")
        if gpus is not None and capacity is not None:
            raise InputError("--gpus and --capacity: give one")
        if gpus is not None and gpus < 1:
            raise InputError("--gpus: must be >= 1")
        if time_limit is not None:
            if time_limit <= 0:
                raise InputError("--time-limit: must be > 0")
            config = dataclasses.replace(config, planner=dataclasses.replace(config.planner, time_limit_s=time_limit))
        if hindsight_limit <= 0:
            raise InputError("--hindsight-limit: must be > 0")
        policy = DeadlinePolicy(slack_s, slack_factor, deadline_from == "timelimit")
        history = load_history(jobs, policy, drop_failed, timezone_name)
        pool = (Capacity.from_file(capacity) if capacity is not None
                else Capacity.constant(gpus or max(j.gpus for j in history.jobs)))
        trace = signals or (Path(config.forecast.trace) if config.forecast.trace else None)
        realised = TraceProvider(trace)
        if not quiet:
            links = sum(len(j.after) for j in history.jobs)
            linked = f", {links} 'after' link{'s' if links != 1 else ''}" if links else ""
            say(f"simulating {len(history.jobs)} jobs ({history.format}{linked}) on {pool.most} GPUs, forecast "
                f"{mode.label}, replans of at most {config.planner.time_limit_s:g} s")
        result = run_simulation(history, config, realised, mode, pool, hindsight_limit, None if quiet else say)
        files = write_outputs(result, output)
        if plot is not None:
            from scheduler.plots import simulation_png

            simulation_png(result.series, result.report, plot)
    except GschedError as exc:
        _fail(exc)
    report = {**result.report, "files": files}
    if as_json:
        _print_json(report)
        _simulate_exit(report)
        return
    g, r, h, saved = report["gsched"], report["run_now"], report["hindsight"], report["saved_vs_run_now"]
    print(f"{report['jobs']} jobs, {report['period']['start']} to {report['period']['end']}, {report['gpus']} GPUs, "
          f"forecast {report['forecast']}: {report['replans']} replans in {report['simulation_s']:g} s")
    print(f"{'':<10} {'cost EUR':>10} {'energy kWh':>11} {'CO2 kg':>9} {'late':>5} {'wait median h':>14} "
          f"{'wait p95 h':>11} {'GPU use':>8}")
    for name, row in (("run-now", r), ("gsched", g), ("hindsight", h)):
        print(f"{name:<10} {row['cost_eur']:>10.2f} {row['energy_kwh']:>11.1f} {row['co2_kg']:>9.1f} "
              f"{row['late_jobs']:>5} {_num(row['wait_median_h'], 1, 2):>14} {_num(row['wait_p95_h'], 1, 2):>11} "
              f"{100 * row['gpu_utilisation']:>7.1f}%")
    if saved is not None:
        print(f"saved against run-now: {saved['cost_eur']:.2f} EUR ({_pct(saved['cost_pct'])}), {saved['co2_kg']:.1f} "
              f"kg CO2 ({_pct(saved['co2_pct'])}); hindsight at {h['time_limit_s']:g} s"
              + ("" if h["complete"] else f" (left {len(h['not_run_in_full'])} job(s) without a full run)"))
    fe = report["forecast_error"]
    if fe["forecast"] == "perfect":
        print("forecast: perfect (the realised signals): no forecast error in these figures")
    elif fe["cost_eur"] is not None:
        print(f"forecast {fe['forecast']}: price off by {_pct(fe['price_error_pct'])}, carbon by "
              f"{_pct(fe['carbon_error_pct'])} (mean absolute); the error cost {fe['cost_eur']:.2f} EUR "
              f"({'-' if fe['cost_pct'] is None else format(fe['cost_pct'], '+.1f') + '%'}) and {fe['co2_kg']:.1f} kg CO2 against the same replay on the perfect "
              "forecast (negative: luck)")
    print(f"report: {output}; executed plan: {files['plan']} (problem: {files['problem']})")
    _simulate_exit(report)


def _simulate_exit(report: dict[str, Any]) -> None:
    """Errors and jobs not run in full on stderr; exit 8 where the replay left jobs not run in full (it shows no
    saving then: savings are over the same jobs run in full), 1 where the executed schedule is invalid."""
    for why in report["errors"][:10]:
        print(f"invalid: {why}", file=sys.stderr)
    unfinished = list(report["unfinished"].values())
    for why in unfinished[:20]:
        print(f"not run in full: job {_safe(why)}", file=sys.stderr)
    if len(unfinished) > 20:
        print(f"... and {len(unfinished) - 20} more (the report's 'unfinished')", file=sys.stderr)
    if not report["complete"]:
        missing = len(unfinished) or len(report["run_now"].get("not_run_in_full", []))
        print(f"gsched: error: no savings shown: {missing} job(s) did not run in full "
              + ("in the replay" if unfinished else "in run-now") + "; savings are only over the same jobs run in full",
              file=sys.stderr)
        raise typer.Exit(8)
    if report["errors"]:
        raise typer.Exit(1)


@app.command()
def daemon() -> None:
    """Run the daemon in the foreground (systemd runs this; logs go to stderr/journald)."""
    from scheduler.service import run_daemon

    try:
        run_daemon(_config())
    except GschedError as exc:
        _fail(exc)


def _config_first(argv: list[str]) -> list[str]:
    """``--config PATH`` is a global option, but users write it after the subcommand too (``gsched forecast
    --fetch --config FILE``): move it in front, where click expects it."""
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg == "--config" and i + 1 < len(argv):
            moved += argv[i:i + 2]
            i += 2
            continue
        if arg.startswith("--config="):
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return moved + rest


def main() -> None:
    try:
        app(args=_config_first(sys.argv[1:]), prog_name="gsched")
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
