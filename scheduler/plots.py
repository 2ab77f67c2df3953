"""PNG pictures where a curve says more than a table. matplotlib loads only when a picture is asked for."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.errors import InputError


def forecast_png(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()

    points = data["points"]
    if not points:
        raise InputError("forecast: no points to draw")
    times = [datetime.fromisoformat(p["start"].replace("Z", "+00:00")) for p in points]
    fig, (ax_price, ax_carbon) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    ax_price.step(times, [p["price_per_mwh"] for p in points], where="post", color="tab:blue")
    ax_price.set_ylabel(f"price ({data['currency']}/MWh)")
    ax_carbon.plot(times, [p["carbon_g_per_kwh"] for p in points], color="tab:red", label="carbon intensity")
    ax_carbon.set_ylabel("gCO2/kWh")
    estimated = [t for t, p in zip(times, points) if p.get("estimated")]
    if estimated:
        for ax in (ax_price, ax_carbon):
            ax.axvspan(min(estimated), max(estimated), color="0.9", label="estimated")
    share = [p["renewable_share_pct"] for p in points]
    if any(v is not None for v in share):
        ax_share = ax_carbon.twinx()
        ax_share.plot(times, share, color="tab:green", alpha=0.6)
        ax_share.set_ylabel("renewable share (%)")
    ax_price.set_title(f"gsched forecast - sources: {', '.join(sorted({p['source'] for p in points}))}")
    ax_carbon.set_xlabel("UTC")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InputError(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


@dataclass(frozen=True)
class Bar:
    """One job's use of ``gpus`` devices over [start, end); ``lanes`` fixes its devices (running jobs)."""

    job: str
    start: datetime
    end: datetime
    gpus: int
    label: str
    running: bool = False
    lanes: tuple[int, ...] = ()


def assign_lanes(bars: list[Bar], n_lanes: int) -> list[tuple[Bar, tuple[int, ...]]]:
    """Give each bar its devices: fixed ones as given, the others the lowest lanes free over its span (lanes past
    ``n_lanes`` if none are: the picture still shows it)."""
    busy: dict[int, list[tuple[datetime, datetime]]] = {}
    out = []
    for bar in sorted(bars, key=lambda b: (not b.lanes, b.start, b.job)):
        lanes = list(bar.lanes)
        lane = 0
        while len(lanes) < bar.gpus:
            if lane not in lanes and all(e <= bar.start or s >= bar.end for s, e in busy.get(lane, [])):
                lanes.append(lane)
            lane += 1
        for lane in lanes:
            busy.setdefault(lane, []).append((bar.start, bar.end))
        out.append((bar, tuple(lanes)))
    return out


def gantt_png(bars: list[Bar], n_lanes: int, times: list[datetime], price: list[float | None],
              carbon: list[float | None], currency: str, now: datetime | None, title: str, path: Path,
              links: Sequence[tuple[str, str]] = ()) -> None:
    """Jobs on device lanes (one colour per job; elastic jobs' segments each a bar) above the price and carbon
    curves of the same hours; ``links`` (job, job after it): an arrow from the first's last bar to the second's
    first."""
    if not bars and not times:
        raise InputError("--plot: nothing to draw (no jobs and no signals)")
    plt = _pyplot()
    placed = assign_lanes(bars, n_lanes)
    lanes = max([n_lanes, *(max(lanes) + 1 for _b, lanes in placed if lanes)])
    fig, (ax_jobs, ax_price, ax_carbon) = plt.subplots(3, 1, sharex=True, figsize=(12, 4.5 + 0.35 * lanes),
                                                       gridspec_kw={"height_ratios": [max(2, lanes), 2, 2]})
    colours = plt.get_cmap("tab10")
    jobs = sorted({b.job for b in bars}, key=lambda j: (len(j), j))
    for bar, used in placed:
        colour = colours(jobs.index(bar.job) % 10)
        for lane in used:
            planned = not bar.running and now is not None
            ax_jobs.barh(lane, bar.end - bar.start, left=bar.start, height=0.8, color=colour,
                         alpha=0.55 if planned else 0.9, hatch="//" if planned else None,
                         edgecolor="black", linewidth=0.5)
        # parse_math=False: a job's name is any user's text, and "$\frac{$" would make matplotlib's mathtext
        # parser raise, failing everyone's picture
        ax_jobs.text(bar.start + (bar.end - bar.start) / 2, min(used), bar.label, ha="center", va="center",
                     parse_math=False,
                     fontsize=8, clip_on=True, bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})
    last: dict[str, tuple[Bar, int]] = {}
    first: dict[str, tuple[Bar, int]] = {}
    for bar, used in placed:
        if bar.job not in last or bar.end > last[bar.job][0].end:
            last[bar.job] = (bar, min(used))
        if bar.job not in first or bar.start < first[bar.job][0].start:
            first[bar.job] = (bar, min(used))
    for before, after in links:  # a hop under the labels, from near one's end to near the other's start
        if before in last and after in first:
            (a, lane_a), (b, lane_b) = last[before], first[after]
            ax_jobs.annotate("", xy=(b.start + (b.end - b.start) / 8, lane_b + 0.2),
                             xytext=(a.end - (a.end - a.start) / 8, lane_a + 0.2),
                             arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.2,
                                         "connectionstyle": "arc3,rad=-0.3"})
    ax_jobs.set_yticks(range(lanes))
    ax_jobs.set_yticklabels([f"device {i}" if i < n_lanes else "(over)" for i in range(lanes)])
    ax_jobs.set_ylim(lanes - 0.5, -0.5)
    ax_jobs.set_title(title + ("   (solid: running; hatched: planned)" if now is not None else ""))
    if times:
        # a step holds until the next one starts: repeat the last so that it is drawn to the end of its step
        ends = times + [times[-1] + (times[-1] - times[-2] if len(times) > 1 else timedelta(hours=1))]
        ax_price.step(ends, [float("nan") if v is None else v for v in [*price, price[-1]]], where="post",
                      color="tab:blue")
        ax_carbon.step(ends, [float("nan") if v is None else v for v in [*carbon, carbon[-1]]], where="post",
                       color="tab:red")
    ax_price.set_ylabel(f"price\n({currency}/MWh)")
    ax_carbon.set_ylabel("carbon intensity\n(gCO2/kWh)")
    if now is not None:
        for ax in (ax_jobs, ax_price, ax_carbon):
            ax.axvline(now, color="black", linestyle="--", linewidth=1)
        ax_jobs.text(now, -0.5, " now", va="bottom", fontsize=8)
    ax_carbon.set_xlabel("UTC")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)


def report_png(data: dict[str, Any], path: Path) -> None:
    """Cost and CO2 saved against run-now, accumulated over the jobs' end times, one line per user."""
    jobs = [j for j in data["jobs"] if j.get("saved_cost_eur") is not None]  # those run in full
    if not jobs:
        raise InputError("--plot: no completed jobs in the report to draw")
    plt = _pyplot()
    fig, (ax_cost, ax_co2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    total = data["total"]
    eur_scale, eur_unit = _unit(max(abs(j["saved_cost_eur"]) for j in jobs + [total]), "EUR",
                                ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")))
    co2_scale, co2_unit = _unit(max(abs(j["saved_co2_kg"]) * 1000 for j in jobs + [total]), "g",
                                ((1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")))
    for owner in sorted({j["owner"] for j in jobs}):
        mine = [j for j in jobs if j["owner"] == owner]
        times = [datetime.fromisoformat(j["finished_at"].replace("Z", "+00:00")) for j in mine]
        cost = list(itertools.accumulate(j["saved_cost_eur"] / eur_scale for j in mine))
        co2 = list(itertools.accumulate(j["saved_co2_kg"] * 1000 / co2_scale for j in mine))
        label = owner.replace("$", r"\$")  # legends parse mathtext too (user names like "host$" exist)
        ax_cost.step(times, cost, where="post", marker="o", markersize=3, label=label)
        ax_co2.step(times, co2, where="post", marker="o", markersize=3, label=label)
    pct, co2_pct = total["saved_cost_pct"], total["saved_co2_pct"]
    ax_cost.set_title(f"saved against running each job at once: {total['saved_cost_eur'] / eur_scale:.3g} {eur_unit}"
                      + (f" ({pct:.1f}%)" if pct is not None else "")
                      + f", {total['saved_co2_kg'] * 1000 / co2_scale:.3g} {co2_unit} CO2"
                      + (f" ({co2_pct:.1f}%)" if co2_pct is not None else ""))
    ax_cost.set_ylabel(f"saved, {eur_unit}\n(cumulative)")
    ax_co2.set_ylabel(f"CO2 saved, {co2_unit}\n(cumulative)")
    for ax in (ax_cost, ax_co2):
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.legend(loc="upper left", fontsize=8)
    ax_co2.set_xlabel("job end (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)


def _unit(top: float, unit: str, steps: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    """The largest prefixed unit that ``top`` reaches, so that axes read 4.2 mEUR, not 4.2e-3."""
    for factor, prefix in steps:
        if top >= factor:
            return factor, prefix + unit
    return steps[-1][0], steps[-1][1] + unit


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def status_png(jobs: list[dict[str, Any]], devices: list[dict[str, Any]], forecast: dict[str, Any], now: datetime,
               path: Path) -> None:
    """`gsched status --plot`: running jobs on their devices, planned ones (each elastic segment) where they fit."""
    lane_of = {d["uuid"]: i for i, d in enumerate(devices)}
    bars: list[Bar] = []
    for job in jobs:
        label = f"{job['id']} {job['name']}"[:24]
        segments = job.get("segments") or []
        if job["state"] == "RUNNING" and job["started_at"]:
            lanes = tuple(lane_of[u] for u in job["devices"] if u in lane_of)
            end = _time(job["pause_at"] or job["planned_end"]) if (job["pause_at"] or job["planned_end"]) else now
            bars.append(Bar(str(job["id"]), _time(job["started_at"]), now, len(lanes) or job["gpus"] or 1, label,
                            running=True, lanes=lanes))
            if end > now:
                bars.append(Bar(str(job["id"]), now, end, len(lanes) or job["gpus"] or 1, label, lanes=lanes))
            segments = segments[1:] if job["pause_at"] else []
        elif job["state"] not in ("PLANNED", "PREEMPTED", "PENDING"):
            continue
        for seg in segments:
            start, end = max(_time(seg["start"]), now), _time(seg["end"])
            if end > start:
                bars.append(Bar(str(job["id"]), start, end, seg["gpus"], label))
    points = forecast.get("points") or []
    links = [(str(a["id"]), str(job["id"])) for job in jobs for a in job.get("after") or ()]
    gantt_png(bars, len(devices), [_time(p["start"]) for p in points], [p["price_per_mwh"] for p in points],
              [p["carbon_g_per_kwh"] for p in points], forecast.get("currency", "EUR"), now,
              f"gsched status at {now:%Y-%m-%d %H:%M} UTC", path, links)


def plan_png(problem: Any, plan: dict[str, list[Any]], path: Path) -> None:
    """`gsched plan --plot`: an offline plan's segments on the pool's GPUs, over the problem's signals."""
    slot = timedelta(minutes=problem.slot_minutes)
    bars = []
    for job in problem.jobs:
        for seg in plan.get(job.id, []):
            bars.append(Bar(job.id, problem.start + seg.start_slot * slot, problem.start + seg.end_slot * slot,
                            job.modes[seg.mode].gpus, job.id))
    times = [problem.start + k * slot for k in range(problem.horizon_slots)]
    gantt_png(bars, problem.gpus, times, list(problem.price_eur_per_mwh), list(problem.carbon_g_per_kwh), "EUR",
              None, f"gsched plan: {len(problem.jobs)} jobs on {problem.gpus} GPUs", path,
              [(before, job.id) for job in problem.jobs for before in job.after])


def simulation_png(series: dict[str, tuple[list[datetime], list[float], list[float]]], report: dict[str, Any],
                   path: Path) -> None:
    """`gsched simulate --plot`: cumulative cost and CO2 of run-now, gsched and hindsight over the period."""
    plt = _pyplot()
    fig, (ax_cost, ax_co2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    styles = {"run-now": ("tab:red", "-"), "hindsight": ("tab:green", "-"), "gsched": ("tab:blue", "--")}
    end = _time(report["period"]["end"]) + timedelta(hours=1)
    for name in sorted(series, key=lambda n: n == "gsched"):  # gsched on top: it often follows hindsight
        times, eur, co2 = series[name]
        shown = sum(1 for t in times if t <= end)
        colour, line = styles.get(name, (None, "-"))
        ax_cost.plot(times[:shown], eur[:shown], label=name, color=colour, linestyle=line)
        ax_co2.plot(times[:shown], co2[:shown], label=name, color=colour, linestyle=line)
    ax_cost.set_ylabel("cumulative cost (EUR)")
    ax_co2.set_ylabel("cumulative CO2 (kg)")
    ax_cost.legend(loc="upper left")
    saved = report["saved_vs_run_now"]
    if saved is None:
        outcome = "not every job ran in full: no saving"
    elif saved["cost_pct"] is None:  # a cost at or below zero (negative prices): EUR only
        outcome = f"saved {saved['cost_eur']:.2f} EUR on run-now"
    else:
        outcome = f"saved {saved['cost_pct']:.1f}% on run-now"
    ax_cost.set_title(f"gsched simulate: {report['jobs']} jobs on {report['gpus']} GPUs, forecast {report['forecast']}"
                      f" - {outcome}")
    ax_co2.set_xlabel("UTC")
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
