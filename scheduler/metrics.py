"""The opt-in Prometheus endpoint (``[metrics] listen``): gsched's state, read from the store at each scrape.

Built with the official prometheus_client: a custom collector, so every value comes from the database (the only
record of job state) when Prometheus asks, and nothing is counted twice across restarts. Names follow the
Prometheus conventions: base units (seconds, joules, grams), ``_total`` for counters. docs/metrics.md lists them
with a Grafana-ready query each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector, CollectorRegistry

from scheduler.models import JobState

if TYPE_CHECKING:
    from scheduler.daemon import Daemon

log = logging.getLogger("gsched.metrics")
WAIT_BUCKETS_S = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0, 72 * 3600.0)


class GschedCollector(Collector):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon, store = self.daemon, self.daemon.store
        counts = store.count_by_state()
        jobs = GaugeMetricFamily("gsched_jobs", "Jobs in each state (Slurm's state names).", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        running = store.jobs([JobState.RUNNING])
        yield GaugeMetricFamily("gsched_devices", "Devices gsched schedules on.", value=len(daemon.executor.devices))
        yield GaugeMetricFamily("gsched_devices_busy", "Devices held by running jobs.",
                                value=min(len(daemon.executor.devices), sum(j.gpus or 0 for j in running)))
        waits = [(first - submitted).total_seconds() for submitted, first in store.first_starts()]
        buckets = [(str(b), sum(w <= b for w in waits)) for b in WAIT_BUCKETS_S] + [("+Inf", len(waits))]
        yield HistogramMetricFamily("gsched_queue_wait_seconds",
                                    "From submission to a job's first start, on the daemon's clock.",
                                    buckets=buckets, sum_value=sum(waits))
        sums = store.energy_by_source()
        energy = CounterMetricFamily("gsched_energy_joules", "Energy of finished runs, by how it was measured.",
                                     labels=["source"])
        for source, (joules, _cost, _co2) in sorted(sums.items()):
            energy.add_metric([source], joules)
        yield energy
        currency = daemon.config.forecast.currency.lower()
        yield CounterMetricFamily(f"gsched_cost_{currency}", f"Electricity cost of finished runs ({currency.upper()}).",
                                  value=sum(cost for _j, cost, _g in sums.values()))
        yield CounterMetricFamily("gsched_co2_grams", "CO2 of finished runs, from the carbon intensity where they ran.",
                                  value=sum(co2 for _j, _c, co2 in sums.values()))
        yield from self._signals()
        yield from self._providers()
        stats = daemon.last_plan
        if stats:
            yield GaugeMetricFamily("gsched_planner_solve_seconds", "Wall time of the last replan.",
                                    value=float(stats["solve_s"]))
            yield GaugeMetricFamily("gsched_planner_jobs", "Jobs in the last replan.", value=float(stats["jobs"]))
            if stats.get("gap_to_bound") is not None:
                yield GaugeMetricFamily("gsched_planner_gap_to_bound_ratio",
                                        "Last replan's cost above its LP lower bound, as a ratio (0.01 = 1%).",
                                        value=max(0.0, float(stats["gap_to_bound"])))
        yield CounterMetricFamily("gsched_planner_replans", "Replans since the daemon started.",
                                  value=daemon.replans)
        held = getattr(daemon.executor, "held_past_start", None)
        if held is not None:  # only Slurm can hold a job gsched started
            yield CounterMetricFamily("gsched_slurm_held_past_start",
                                      "Runs Slurm held for Resources past their planned start, since the daemon "
                                      "started (a plan on nodes without room; per-node planning keeps it at 0).",
                                      value=len(held))

    def _signals(self) -> Iterator[Metric]:
        now = self.daemon.clock.now()
        try:
            forecast = self.daemon.provider.forecast(now, now + timedelta(hours=1))
        except Exception as exc:  # a provider outage must not fail the scrape
            log.warning("metrics: no current signals: %s", exc)
            return
        i = forecast.index_at(now)
        currency = self.daemon.config.forecast.currency.lower()
        yield GaugeMetricFamily(f"gsched_price_{currency}_per_mwh", "Electricity price now (the planner's signal).",
                                value=forecast.price_eur_per_mwh[i])
        yield GaugeMetricFamily("gsched_carbon_intensity_grams_per_kwh", "Grid carbon intensity now.",
                                value=forecast.carbon_g_per_kwh[i])

    def _providers(self) -> Iterator[Metric]:
        provider: Any = self.daemon.provider
        now = self.daemon.clock.now()
        up = GaugeMetricFamily("gsched_forecast_provider_up", "1 if the provider's last fetch worked.",
                               labels=["provider"])
        age = GaugeMetricFamily("gsched_forecast_age_seconds", "Since the provider's last good fetch.",
                                labels=["provider"])
        statuses = getattr(provider, "status", None)
        if not statuses:  # a replayed trace: always there, never fetched
            up.add_metric([provider.name], 1.0)
        for name, status in (statuses or {}).items():
            up.add_metric([name], 1.0 if status.ok else 0.0)
            if status.fetched_at is not None:
                age.add_metric([name], max(0.0, (now - status.fetched_at).total_seconds()))
        yield up
        yield age


def serve(daemon: Daemon, address: tuple[str, int]) -> Any:
    """Start the endpoint in a thread; returns the server (its ``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GschedCollector(daemon))
    server, _thread = start_http_server(address[1], addr=address[0], registry=registry)
    return server
