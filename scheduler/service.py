"""Wiring: build the daemon's collaborators from the config and run it until SIGTERM."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.config import Config, daemon_paths
from scheduler.errors import ConfigError

if TYPE_CHECKING:
    from scheduler.forecasts.base import Provider
    from scheduler.store import Store

log = logging.getLogger("gsched")
STOP_STACKS_AFTER_S = 20.0  # under the tests' 30 s and systemd's TimeoutStopSec


def _setup_logging(level: str) -> None:
    # journald stamps each line itself; elsewhere, add the time.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def forecast_provider(config: Config, store: "Store", now: "Callable[[], datetime]") -> "Provider":
    """The configured providers behind a cache, or the embedded trace when none is configured."""
    if not config.forecast.providers:
        from scheduler.forecasts.trace import TraceProvider

        return TraceProvider(Path(config.forecast.trace) if config.forecast.trace else None)
    import httpx

    from scheduler import __version__
    from scheduler.forecasts.service import ForecastService

    client = httpx.Client(headers={"User-Agent": f"gsched/{__version__}"}, follow_redirects=True)
    return ForecastService(config.forecast, store, client, now, timedelta(hours=config.planner.horizon_hours))


def _raise_open_files() -> None:
    """Connections, logs and result files all take descriptors: use the hard limit, not the soft 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


def _clock(speed: float, origin: str, events: bool, store: Any) -> Any:
    """The daemon's clock. An accelerated or event one (the demo, tests) goes on from where it was after a restart,
    so plans and deadlines keep their meaning: its origin is kept in the database."""
    import time

    from scheduler.clock import EventClock, ScaledClock, SystemClock
    from scheduler.timeutil import parse_rfc3339, rfc3339

    if events:
        setting = f"events {speed!r} {origin or '-'}"
        kept = (store.meta("event_clock") or "").rsplit(" ", 1)
        at = parse_rfc3339(kept[1]) if len(kept) == 2 and kept[0] == setting else (
            parse_rfc3339(origin) if origin else datetime.now(timezone.utc))
        event_clock = EventClock(speed, at, on_move=lambda to: store.set_meta("event_clock", f"{setting} {rfc3339(to)}"))
        event_clock.on_move(at)
        return event_clock
    if speed == 1.0 and not origin:
        return SystemClock()
    # kept: "SPEED CONFIGURED_ORIGIN VIRTUAL_AT WALL_AT"; a changed speed or clock_origin starts a new clock
    setting = f"{speed!r} {origin or '-'}"
    saved = (store.meta("scaled_clock") or "").rsplit(" ", 2)
    if len(saved) == 3 and saved[0] == setting:
        virtual, wall = parse_rfc3339(saved[1]), float(saved[2])
        return ScaledClock(speed, virtual, time.monotonic() - (time.time() - wall))
    clock = ScaledClock(speed, parse_rfc3339(origin) if origin else None)
    store.set_meta("scaled_clock", f"{setting} {rfc3339(clock.now())} {time.time()!r}")
    return clock


def build_executor(config: Config, paths: Any, store: "Store", clock: Any) -> Any:
    """The configured executor (executor.kind) with its collaborators."""
    from scheduler.executor.launch import Launcher
    from scheduler.executor.procs import cgroup_base

    cgroups = cgroup_base() if config.daemon.cgroups == "auto" else None
    launcher = Launcher(paths, config, cgroups)
    if config.executor.kind == "slurm":
        from scheduler.devices import Device
        from scheduler.executor.slurm import SlurmExecutor
        from scheduler.executor.slurmctl import Slurm, SlurmRuns

        ctl = Slurm(config.executor.partition, config.executor.account)
        gpus = ctl.gpus()  # a daemon that cannot see its partition says so at once
        if not gpus:
            raise ConfigError(f"{config.source}: executor.partition: Slurm partition {config.executor.partition!r} "
                              "has no GPUs on nodes that are up (sinfo --json)")
        devices = [Device(i, f"slurm:{config.executor.partition}:{i}", f"{config.executor.partition} GPU {i}", "gpu")
                   for i in range(gpus)]
        return SlurmExecutor(config, store, clock, devices, ctl, SlurmRuns(Path(config.executor.shared_dir),
                                                                           sys.executable), launcher)
    from scheduler.devices import discover
    from scheduler.executor.local import LocalExecutor

    devices = discover(config.devices)
    power = None
    if config.devices.power_limits == "auto" and os.geteuid() == 0 and devices and devices[0].kind == "gpu":
        import pynvml  # on Slurm, the Prolog caps the allocated GPUs (slurm/)

        from scheduler.executor.power import PowerLimiter

        power = PowerLimiter(pynvml)
    return LocalExecutor(config, paths, store, devices, launcher, power)


def run_daemon(config: Config) -> None:
    from jobs import WORKLOADS
    from scheduler.api import Api
    from scheduler.apiserver import ApiServer
    from scheduler.daemon import Daemon, StopSignals, sd_notify
    from scheduler.store import Store

    _setup_logging(config.daemon.log_level)
    paths = daemon_paths(config)
    os.umask(0o077)
    paths.home.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.home, 0o711)  # others may reach the socket inside, not list or read the state
    _raise_open_files()
    store = Store(paths.db, check=True)
    clock = _clock(config.daemon.clock_speed, config.daemon.clock_origin, config.daemon.event_clock, store)
    executor = build_executor(config, paths, store, clock)
    provider = forecast_provider(config, store, clock.now)
    daemon = Daemon(config, paths, store, clock, executor, provider,
                    {name: info.steps_per_s for name, info in WORKLOADS.items()})
    signals = StopSignals()
    server = ApiServer(paths.socket, Api(daemon), config.api)
    daemon.start()
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    metrics = None
    address = config.metrics.address()
    if address is not None:
        from scheduler.metrics import serve

        try:
            metrics = serve(daemon, address)
        except OSError as exc:  # the daemon runs on without its endpoint; the operator sees why
            log.error("metrics: cannot listen on %s: %s", config.metrics.listen, exc)
        else:
            log.info("metrics: Prometheus endpoint on http://%s/metrics", config.metrics.listen)
    devices = executor.devices
    log.info("gsched daemon ready: %d %s device(s), socket %s, home %s, forecast %s, runs %s%s", len(devices),
             devices[0].kind if devices else "-", paths.socket, paths.home, provider.name, executor.where,
             f", clock x{clock.speed:g}" if clock.speed != 1 else "")
    sd_notify("READY=1\nSTATUS=scheduling")
    try:
        log.info("received %s: stopping (running jobs keep running)", signals.wait())
    finally:
        sd_notify("STOPPING=1")
        if metrics is not None:
            metrics.shutdown()
        server.shutdown()
        server.server_close()
        log.info("API closed; finishing the tick and forecast fetch in flight")
        # A stop that takes longer than systemd's patience should say where it is: every thread's stack goes to
        # the journal (a deadlock between a forecast fetch's wake and the scheduler's shutdown once hung one).
        faulthandler.dump_traceback_later(STOP_STACKS_AFTER_S, file=sys.stderr)
        daemon.stop()
        faulthandler.cancel_dump_traceback_later()
        store.close()
        paths.socket.unlink(missing_ok=True)
        log.info("gsched daemon stopped; running jobs were left running")
