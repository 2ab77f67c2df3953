"""config.toml -> typed, validated settings. The defaults live here, once; config.toml documents them.

Resolution of the file: ``--config PATH``, else ``$GSCHED_CONFIG``, else ``/etc/gsched/config.toml``
when it exists, else the built-in defaults.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/gsched/config.toml")
SYSTEM_HOME = Path("/var/lib/gsched")
SYSTEM_SOCKET = Path("/run/gsched/gsched.sock")
SOCKET_NAME = "gsched.sock"


def _is_time(text: str) -> bool:
    from scheduler.timeutil import parse_rfc3339

    try:
        parse_rfc3339(text)
    except (ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class DaemonSettings:
    tick_s: float = 2.0
    kill_grace_s: float = 10.0
    clock_speed: float = 1.0
    clock_origin: str = ""
    event_clock: bool = False
    log_level: str = "info"
    calibrate_when_idle: bool = True
    calibrate_after_idle_s: float = 60.0
    calibration_s: float = 20.0
    max_log_mb: float = 100.0
    cgroups: str = "auto"


@dataclass(frozen=True)
class ApiSettings:
    max_connections: int = 512
    max_connections_per_user: int = 32
    request_timeout_s: float = 10.0
    max_body_kb: int = 1024
    workers: int = 8


@dataclass(frozen=True)
class LimitSettings:
    max_queued_jobs_per_user: int = 1000
    max_gpus_per_user: int = 0


@dataclass(frozen=True)
class ExecutorSettings:
    kind: str = "local"  # "local": runners on this host; "slurm": sbatch to a cluster
    partition: str = ""
    account: str = ""
    shared_dir: str = ""  # read and written by the daemon and every compute node: run files, results, logs
    time_margin_pct: float = 50.0  # a job without time_limit gets its estimate plus this much as Slurm's --time
    requeue_grace_s: int = 120  # --signal=B:TERM@this for preemptible jobs: time to checkpoint


@dataclass(frozen=True)
class DeviceSettings:
    gpus: str = "auto"
    cpu_devices: int = 0
    power_limits: str = "auto"


@dataclass(frozen=True)
class EnergySettings:
    cpu_watts_per_core: float = 10.0
    power_sample_s: float = 0.5


@dataclass(frozen=True)
class PlannerSettings:
    slot_minutes: int = 15
    horizon_hours: int = 48
    carbon_price_eur_per_t: float = 100.0
    objective: str = "cost"
    gpu_power_w: float = 300.0
    cpu_device_power_w: float = 15.0
    time_limit_s: float = 5.0
    hysteresis_pct: float = 2.0
    wait_pct_per_h: float = 5.0
    elastic: bool = True
    resume_overhead_minutes: float = 2.0
    elastic_extend_minutes: float = 15.0


PROVIDER_KINDS = ("energy-charts", "uk-carbon-intensity", "electricity-maps", "watttime", "entsoe", "awattar",
                  "octopus", "file")
SIGNALS = ("price", "carbon", "renewable_share")


@dataclass(frozen=True)
class ProviderSettings:
    kind: str = ""
    base_url: str = ""
    priority: int = 100  # lower first
    signals: tuple[str, ...] = ()  # empty: every signal the provider has
    timeout_s: float = 10.0
    # Region keys, named as each service names them (only the one its kind uses is read).
    bzn: str = ""  # energy-charts price bidding zone, e.g. DE-LU
    country: str = ""  # energy-charts renewable share, e.g. de
    regionid: int = 0  # uk-carbon-intensity: 0 = national
    zone: str = ""  # electricity-maps, e.g. DE
    region: str = ""  # watttime, e.g. CAISO_NORTH
    area: str = ""  # entsoe EIC code, e.g. 10Y1001A1001A82H
    market: str = ""  # awattar: de | at
    product: str = ""  # octopus product code
    tariff: str = ""  # octopus tariff code
    path: str = ""  # file: a CSV trace ("" = the embedded one)
    # Credentials: the names of environment variables, or a file; never the secret itself.
    token_env: str = ""
    token_file: str = ""
    username_env: str = ""
    password_env: str = ""


@dataclass(frozen=True)
class ForecastSettings:
    trace: str = ""
    currency: str = "EUR"
    rates: tuple[tuple[str, float], ...] = ()  # from [forecast.rates]: currency -> report-currency units per unit
    refresh_minutes: float = 30.0
    stale_after_hours: float = 6.0
    retries: int = 3
    fossil_g_per_kwh: float = 700.0
    renewable_g_per_kwh: float = 30.0
    providers: tuple[ProviderSettings, ...] = ()


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "127.0.0.1:9465": serve Prometheus metrics there; "" = no endpoint

    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _loopback(listen: str) -> bool:
    import ipaddress

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    home: str = ""
    socket: str = ""
    default_max_delay: str = "24h"
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    energy: EnergySettings = field(default_factory=EnergySettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: str = "built-in defaults"

    def __post_init__(self) -> None:
        checks = [
            (self.daemon.tick_s > 0, "daemon.tick_s", "must be > 0"),
            (not self.metrics.listen or _loopback(self.metrics.listen), "metrics.listen",
             "must be a loopback address and port, e.g. \"127.0.0.1:9465\" (the metrics are not authenticated)"),
            (self.daemon.kill_grace_s >= 0, "daemon.kill_grace_s", "must be >= 0"),
            (self.daemon.clock_speed > 0, "daemon.clock_speed", "must be > 0"),
            (not self.daemon.clock_origin or _is_time(self.daemon.clock_origin), "daemon.clock_origin",
             "must be an RFC 3339 time with a zone, e.g. 2024-01-01T00:55:00Z"),
            (self.executor.kind in ("local", "slurm"), "executor.kind", "must be 'local' or 'slurm'"),
            (self.executor.kind != "slurm" or bool(self.executor.partition), "executor.partition",
             "must name the Slurm partition gsched plans for"),
            (self.executor.kind != "slurm" or self.executor.shared_dir.startswith("/"), "executor.shared_dir",
             "must be an absolute path on a file system the daemon and every compute node share"),
            (0 <= self.executor.time_margin_pct <= 1000, "executor.time_margin_pct", "must be in 0..1000"),
            (0 <= self.executor.requeue_grace_s <= 3600, "executor.requeue_grace_s", "must be in 0..3600"),
            (self.executor.kind != "slurm" or self.daemon.clock_speed == 1.0, "daemon.clock_speed",
             "must be 1.0 with executor.kind = \"slurm\" (Slurm runs on the wall clock)"),
            (not self.daemon.event_clock or self.executor.kind == "local", "daemon.event_clock",
             "needs executor.kind = \"local\" (the daemon must see each run end to move its clock)"),
            (self.daemon.calibrate_after_idle_s >= 0, "daemon.calibrate_after_idle_s", "must be >= 0"),
            (self.daemon.calibration_s > 0, "daemon.calibration_s", "must be > 0"),
            (self.daemon.max_log_mb > 0, "daemon.max_log_mb", "must be > 0"),
            (self.daemon.cgroups in ("auto", "off"), "daemon.cgroups", "must be 'auto' or 'off'"),
            (16 <= self.api.max_connections <= 60000, "api.max_connections", "must be in 16..60000"),
            (1 <= self.api.max_connections_per_user <= self.api.max_connections, "api.max_connections_per_user",
             "must be in 1..api.max_connections"),
            (0 < self.api.request_timeout_s <= 300, "api.request_timeout_s", "must be in (0, 300]"),
            (1 <= self.api.max_body_kb <= 65536, "api.max_body_kb", "must be in 1..65536"),
            (1 <= self.api.workers <= 64, "api.workers", "must be in 1..64"),
            (self.limits.max_queued_jobs_per_user >= 0, "limits.max_queued_jobs_per_user", "must be >= 0 (0 = none)"),
            (self.limits.max_gpus_per_user >= 0, "limits.max_gpus_per_user", "must be >= 0 (0 = none)"),
            (self.daemon.log_level in ("debug", "info", "warning", "error"), "daemon.log_level",
             "must be one of debug, info, warning, error"),
            (self.devices.gpus in ("auto", "none"), "devices.gpus", "must be 'auto' or 'none'"),
            (self.devices.cpu_devices >= 0, "devices.cpu_devices", "must be >= 0 (0 = one per CPU core)"),
            (self.devices.power_limits in ("auto", "off"), "devices.power_limits", "must be 'auto' or 'off'"),
            (self.energy.cpu_watts_per_core > 0, "energy.cpu_watts_per_core", "must be > 0"),
            (self.energy.power_sample_s > 0, "energy.power_sample_s", "must be > 0"),
            (1 <= self.planner.slot_minutes <= 1440, "planner.slot_minutes", "must be in 1..1440"),
            (1 <= self.planner.horizon_hours <= 168, "planner.horizon_hours", "must be in 1..168"),
            (self.planner.carbon_price_eur_per_t >= 0, "planner.carbon_price_eur_per_t", "must be >= 0"),
            (self.planner.objective in ("cost", "carbon"), "planner.objective", "must be 'cost' or 'carbon'"),
            (self.planner.gpu_power_w > 0, "planner.gpu_power_w", "must be > 0"),
            (self.planner.cpu_device_power_w > 0, "planner.cpu_device_power_w", "must be > 0"),
            (self.planner.time_limit_s > 0, "planner.time_limit_s", "must be > 0"),
            (0 <= self.planner.hysteresis_pct < 100, "planner.hysteresis_pct", "must be in [0, 100)"),
            (0 <= self.planner.wait_pct_per_h <= 100, "planner.wait_pct_per_h", "must be in [0, 100]"),
            (0 <= self.planner.resume_overhead_minutes <= 1440, "planner.resume_overhead_minutes", "must be in [0, 1440]"),
            (self.planner.elastic_extend_minutes >= 0, "planner.elastic_extend_minutes", "must be >= 0"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{self.source}: {key}: {message}")
        from scheduler.timeutil import parse_duration_s

        f = self.forecast
        for ok, key, message in [
            (f.refresh_minutes > 0, "forecast.refresh_minutes", "must be > 0"),
            (f.stale_after_hours > 0, "forecast.stale_after_hours", "must be > 0"),
            (0 <= f.retries <= 10, "forecast.retries", "must be in 0..10"),
            (len(f.currency) == 3 and f.currency.isalpha(), "forecast.currency", "must be a 3-letter code"),
        ]:
            if not ok:
                raise ConfigError(f"{self.source}: {key}: {message}")
        for i, p in enumerate(f.providers):
            where = f"{self.source}: forecast.providers[{i}]"
            if p.kind not in PROVIDER_KINDS:
                raise ConfigError(f"{where}.kind: must be one of {', '.join(PROVIDER_KINDS)}, got {p.kind!r}")
            if p.timeout_s <= 0:
                raise ConfigError(f"{where}.timeout_s: must be > 0")
        try:
            parse_duration_s(self.default_max_delay)
        except ValueError as exc:
            raise ConfigError(f"{self.source}: default_max_delay: {exc}") from exc


def _build(cls: Any, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{source}: {dotted}: unknown key (known: {', '.join(sorted(known))})")
        hint = hints[key]
        if key == "providers":
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{source}: {dotted}: must be a list of tables [[{dotted}]]")
            kwargs[key] = tuple(_build(ProviderSettings, v, source, f"{dotted}[{i}].") for i, v in enumerate(value))
            continue
        if key == "rates":
            if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      and v > 0 for v in value.values()):
                raise ConfigError(f"{source}: {dotted}: must be a table of positive numbers, e.g. {{ GBP = 1.17 }}")
            kwargs[key] = tuple((str(k).upper(), float(v)) for k, v in value.items())
            continue
        if key == "signals":
            if not isinstance(value, list) or any(v not in SIGNALS for v in value):
                raise ConfigError(f"{source}: {dotted}: must be a list drawn from {', '.join(SIGNALS)}")
            kwargs[key] = tuple(value)
            continue
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted}: must be a table [{dotted}]")
            kwargs[key] = _build(hint, value, source, f"{dotted}.")
            continue
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ConfigError(f"{source}: {dotted}: must be {hint.__name__}, got {type(value).__name__} {value!r}")
        kwargs[key] = value
    if cls is Config:
        kwargs["source"] = source
    return cls(**kwargs)


def parse_config(text: str, source: str) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return _build(Config, data, source, "")


def load_config(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] = os.environ) -> Config:
    chosen = Path(path) if path else Path(env["GSCHED_CONFIG"]) if env.get("GSCHED_CONFIG") else None
    if chosen is None and SYSTEM_CONFIG.exists():
        chosen = SYSTEM_CONFIG
    if chosen is None:
        return Config()
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {chosen}: {exc.strerror}") from exc
    return parse_config(text, str(chosen))


@dataclass(frozen=True)
class Paths:
    home: Path
    socket: Path

    @property
    def db(self) -> Path:
        return self.home / "gsched.db"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def runs(self) -> Path:
        return self.home / "runs"


def _user_home(env: typing.Mapping[str, str]) -> Path:
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "gsched"


def daemon_paths(config: Config, env: typing.Mapping[str, str] = os.environ, euid: int | None = None) -> Paths:
    """Where a daemon keeps its state: GSCHED_HOME, else ``home``, else systemd's directories, else per user."""
    euid = os.geteuid() if euid is None else euid
    explicit = env.get("GSCHED_HOME") or config.home
    if explicit:
        home = Path(explicit)
    elif env.get("STATE_DIRECTORY"):
        home = Path(env["STATE_DIRECTORY"].split(":")[0])
    else:
        home = SYSTEM_HOME if euid == 0 else _user_home(env)
    if config.socket:
        socket_path = Path(config.socket)
    elif explicit:
        socket_path = home / SOCKET_NAME
    elif env.get("RUNTIME_DIRECTORY"):
        socket_path = Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / SOCKET_NAME
    else:
        socket_path = SYSTEM_SOCKET if euid == 0 else home / SOCKET_NAME
    return Paths(home=home, socket=socket_path)


def client_socket(config: Config, env: typing.Mapping[str, str] = os.environ, euid: int | None = None) -> Path:
    """The socket a CLI talks to: a user's own daemon first, then the system daemon."""
    euid = os.geteuid() if euid is None else euid
    if env.get("GSCHED_SOCKET"):
        return Path(env["GSCHED_SOCKET"])
    own = daemon_paths(config, env, euid).socket
    if own.exists() or env.get("GSCHED_HOME") or config.home or config.socket:
        return own
    return SYSTEM_SOCKET if SYSTEM_SOCKET.exists() else own
