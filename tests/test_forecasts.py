"""Forecast providers replaying recorded real responses (no network), their failure modes, and the service
that caches, combines, falls back and extends them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, DaemonProc, cli, write_job
from scheduler.config import ForecastSettings, ProviderSettings, parse_config
from scheduler.errors import ConfigError, ProviderError
from scheduler.forecasts import awattar, electricity_maps, energy_charts, entsoe, octopus, uk_carbon_intensity, watttime
from scheduler.forecasts.http import get_json
from scheduler.forecasts.service import ForecastService
from scheduler.store import Store

FIXTURES = ROOT / "tests" / "fixtures" / "api-samples"
SHARED = ROOT.parent / "shared" / "data" / "api-samples"
UTC = timezone.utc


def fixture(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())


def shared(path: str) -> Path:
    """GPL/AGPL-sourced samples are read in place, never vendored."""
    full = SHARED / path
    if not full.exists():
        pytest.skip(f"{full} is not here")
    return full


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


# --- parsing the recorded bodies --------------------------------------------------------------------------


def test_uk_national_forecast_and_regional_generation_mix() -> None:
    [carbon] = uk_carbon_intensity.parse(fixture("nmpowell_national_fw48h_2023-03-14T1201Z.json"))
    assert carbon.start == datetime(2023, 3, 14, 12, tzinfo=UTC) and carbon.step_s == 1800
    assert len(carbon.values) == 96 and carbon.values[:2] == (93.0, 91.0)
    regional = uk_carbon_intensity.parse(
        fixture("regional_intensity_2020-01-01T00-00Z_2020-01-02T23-59Z_regionid_13.json"))
    assert [s.signal for s in regional] == ["carbon", "renewable_share"]
    assert regional[0].start == datetime(2019, 12, 31, 23, 30, tzinfo=UTC)  # the API's half-hour before
    assert 0 <= min(v for v in regional[1].values if v is not None) <= max(regional[1].values) <= 100


def test_uk_provider_asks_for_the_48h_forecast_from_now() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json=fixture("nmpowell_national_fw48h_2023-03-14T1201Z.json"))

    provider = uk_carbon_intensity.UkCarbonIntensity(ProviderSettings(kind="uk-carbon-intensity"), mock(handler), 0)
    [series] = provider.fetch(datetime(2023, 3, 14, 12, tzinfo=UTC), datetime(2023, 3, 16, 12, tzinfo=UTC))
    assert seen == ["/intensity/2023-03-14T12:00Z/fw48h"] and series.signal == "carbon"


def test_electricity_maps_history_and_forecast_with_the_token_header(monkeypatch: pytest.MonkeyPatch) -> None:
    history = electricity_maps.parse(fixture("aioelectricitymaps_carbon_intensity_history.json"))
    assert history.step_s == 3600 and len(history.values) == 24 and history.values[0] == 599.0
    body = json.loads(shared("electricity-maps/smartenergy-awattar_carbon-intensity_forecast_DE_2023-01-11.json")
                      .read_text())

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["auth-token"] == "sekrit" and request.url.params["zone"] == "DE"
        return httpx.Response(200, json=body)

    settings = ProviderSettings(kind="electricity-maps", zone="DE", token_env="EM_TOKEN")
    with pytest.raises(ProviderError, match=r"set \$EM_TOKEN"):
        electricity_maps.ElectricityMaps(settings, mock(handler), 0).fetch(datetime.now(UTC), datetime.now(UTC))
    monkeypatch.setenv("EM_TOKEN", "sekrit")
    [forecast] = electricity_maps.ElectricityMaps(settings, mock(handler), 0).fetch(datetime.now(UTC), datetime.now(UTC))
    assert forecast.start == datetime(2023, 1, 11, 13, tzinfo=UTC) and len(forecast.values) == 48


def test_watttime_logs_in_then_converts_moer_from_lbs(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = fixture("aiowatttime_v3-forecast-historical_CAISO_NORTH_docexample.json")
    monkeypatch.setenv("WT_USER", "ann")
    monkeypatch.setenv("WT_PASSWORD", "pw")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/login":
            assert request.headers["authorization"].startswith("Basic ")
            return httpx.Response(200, json={"token": "tok"})
        assert request.headers["authorization"] == "Bearer tok" and request.url.params["region"] == "CAISO_NORTH"
        return httpx.Response(200, json={"data": recorded["data"][0]["forecast"], "meta": recorded["meta"]})

    settings = ProviderSettings(kind="watttime", region="CAISO_NORTH", username_env="WT_USER", password_env="WT_PASSWORD")
    [series] = watttime.WattTime(settings, mock(handler), 0).fetch(datetime.now(UTC), datetime.now(UTC))
    assert series.step_s == 300 and series.values[0] == pytest.approx(870 * 0.45359237)
    with pytest.raises(ProviderError, match="units 'percent'"):
        watttime.parse({"data": [], "meta": {"units": "percent"}})


def test_entsoe_a03_positions_are_forward_filled() -> None:
    text = shared("entsoe/electricitymaps-contrib_ES_day_ahead_price.xml").read_text()
    series = entsoe.parse(text)
    assert series.currency == "EUR" and series.start == datetime(2025, 9, 28, 22, tzinfo=UTC)
    assert None not in series.values and series.end == datetime(2025, 10, 2, 22, tzinfo=UTC)
    assert series.values[1] == series.values[0] == 51.6  # position 2 is absent in the document: repeated
    fr = entsoe.parse(shared("entsoe/electricitymaps-contrib_FR_prices.xml").read_text())
    assert fr.step_s == 3600 and len(fr.values) == 48
    with pytest.raises(ProviderError, match="malformed XML"):
        entsoe.parse(text[:500])


def test_awattar_and_octopus_prices() -> None:
    body = json.loads(shared("awattar/smartenergy-awattar_marketdata_de_2023-01-17.json").read_text())
    series = awattar.parse(body)
    assert series.values[0] == 136.1 and series.step_s == 3600 and series.currency == "EUR"
    agile = octopus.parse(fixture("octometer_standard-unit-rates_E-1R-AGILE-FLEX-22-11-25-J_page1_trimmed.json"))
    assert agile.currency == "GBP" and agile.step_s == 1800 and agile.start == datetime(2024, 5, 7, 19, 30, tzinfo=UTC)
    # Newest first upstream: the last in time is 21:30 at 17.42 p/kWh ex VAT = 174.2 GBP/MWh.
    assert agile.values[0] == pytest.approx(214.7) and agile.values[-1] == pytest.approx(174.2)


def energy_charts_price(start: datetime, count: int, step_s: int = 900, unit: str = "EUR / MWh") -> dict:
    """A body shaped by the OpenAPI schema (only the schema is recorded for Energy-Charts)."""
    return {"license_info": "CC BY 4.0 (creativecommons.org/licenses/by/4.0) from Bundesnetzagentur | SMARD.de",
            "unix_seconds": [int(start.timestamp()) + i * step_s for i in range(count)],
            "price": [50.0 + (i % 7) - (80.0 if 40 <= i < 56 else 0.0) for i in range(count)], "unit": unit,
            "deprecated": False}


def test_energy_charts_bodies_follow_the_openapi_schema() -> None:
    spec = shared("energy-charts/openapi_energy-charts-api_v1.5_via-voxgig.json").read_text()
    for field in ("unix_seconds", "price", "unit", "ren_share"):
        assert f'"{field}"' in spec


def test_energy_charts_price_on_a_dst_day_with_negative_prices() -> None:
    # 2026-03-29 in Europe/Paris lasts 23 hours: 92 quarter-hours from 2026-03-28T23:00Z.
    series = energy_charts.parse_price(energy_charts_price(datetime(2026, 3, 28, 23, tzinfo=UTC), 92))
    assert len(series.values) == 92 and series.end == datetime(2026, 3, 29, 22, tzinfo=UTC)
    assert min(series.values) < 0
    with pytest.raises(ProviderError, match="price unit 'EUR / kWh'"):
        energy_charts.parse_price(energy_charts_price(datetime(2026, 3, 28, 23, tzinfo=UTC), 4, unit="EUR / kWh"))
    with pytest.raises(ProviderError, match="empty forecast"):
        energy_charts.parse_share({"unix_seconds": [], "ren_share": [], "substitute": False})


# --- failures at the HTTP boundary --------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds() -> None:
    calls, waits = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"})
        return httpx.Response(200, json={"ok": True})

    assert get_json(mock(handler), "http://x/y", what="t", timeout_s=1, retries=3, sleep=waits.append) == {"ok": True}
    assert waits == [7.0]


@pytest.mark.parametrize(("response", "needle", "attempts"), [
    (lambda r: httpx.Response(500), "HTTP 500 (3 attempts)", 3),
    (lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), "timed out after 1 s", 3),
    (lambda r: httpx.Response(200, content=b'{"data": [{"from": "2023-'), "malformed JSON", 1),
    (lambda r: httpx.Response(401), "HTTP 401 from http://x/y (check the credentials)", 1),
])
def test_failures_become_provider_errors(response: Callable, needle: str, attempts: int) -> None:
    calls, waits = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return response(request)

    with pytest.raises(ProviderError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        get_json(mock(handler), "http://x/y", what="t", timeout_s=1, retries=2, sleep=waits.append)
    assert len(calls) == attempts and waits == [1.0, 2.0][: attempts - 1]


# --- the service: cache, fallback, staleness, extension ------------------------------------------------------


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "g.db")
    yield s
    s.close()


def uk_handler(state: dict) -> Callable[[httpx.Request], httpx.Response]:
    body = fixture("nmpowell_national_fw48h_2023-03-14T1201Z.json")

    def handler(request: httpx.Request) -> httpx.Response:
        if state.get("down"):
            return httpx.Response(503)
        return httpx.Response(200, json=body)

    return handler


def test_fallback_staleness_and_extension(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(datetime(2023, 3, 14, 12, 5, tzinfo=UTC))  # the recorded forecast's own time
    state: dict = {}
    settings = ForecastSettings(retries=0, stale_after_hours=6, providers=(
        ProviderSettings(kind="uk-carbon-intensity", priority=1, signals=("carbon",)),
        ProviderSettings(kind="file", priority=2)))
    service = ForecastService(settings, store, mock(uk_handler(state)), clock)
    assert service.refresh()
    first = service.points(clock.now, clock.now + timedelta(hours=1))[0]
    assert first["carbon_g_per_kwh"] == 93.0 and first["source"] == "file:trace_de_2023-06.csv+uk-carbon-intensity"
    assert first["price_per_mwh"] is not None and not first["estimated"] and not first["stale"]
    # The primary goes down: logged once, cached data still used, then flagged stale.
    state["down"] = True
    with caplog.at_level(logging.WARNING, logger="gsched.forecast"):
        service.refresh()
        service.refresh()
    assert len([r for r in caplog.records if "failed" in r.message]) == 1
    assert service.status["uk-carbon-intensity"].ok is False
    clock.now += timedelta(hours=7)
    service.refresh()  # the secondary still answers and reaches further; the primary's cache ages
    later = service.points(clock.now, clock.now + timedelta(hours=1))[0]
    assert later["stale"] and "uk-carbon-intensity" in later["source"]
    # Past the primary's 48 h the secondary covers; past everything, the extension estimates.
    beyond = service.points(datetime(2023, 3, 16, 13, tzinfo=UTC), datetime(2023, 3, 16, 14, tzinfo=UTC))[0]
    assert beyond["source"] == "file:trace_de_2023-06.csv"
    far = service.points(datetime(2023, 3, 20, 13, tzinfo=UTC), datetime(2023, 3, 20, 14, tzinfo=UTC))[0]
    assert far["source"] == "extension" and far["estimated"]
    forecast = service.forecast(clock.now, clock.now + timedelta(hours=2))
    assert forecast.start <= clock.now and forecast.end >= clock.now + timedelta(hours=2)
    assert None not in forecast.carbon_g_per_kwh


def test_carbon_derived_from_renewable_share(store: Store) -> None:
    now = datetime(2026, 3, 28, 23, tzinfo=UTC)

    def handler(request: httpx.Request) -> httpx.Response:
        stamps = [int(now.timestamp()) + 900 * i for i in range(8)]
        return httpx.Response(200, json={"unix_seconds": stamps, "ren_share": [80.0] * 8, "substitute": False})

    settings = ForecastSettings(providers=(ProviderSettings(kind="energy-charts", country="de",
                                                            signals=("renewable_share",)),))
    service = ForecastService(settings, store, mock(handler), FakeClock(now))
    service.refresh()
    point = service.points(now, now + timedelta(minutes=15))[0]
    assert point["carbon_g_per_kwh"] == pytest.approx(0.8 * 30 + 0.2 * 700) and point["estimated"]
    assert point["source"] == "derived:energy-charts:de+energy-charts:de"  # carbon derived, share as sent


def test_currency_conversion_needs_a_rate(store: Store) -> None:
    octo = ProviderSettings(kind="octopus", product="AGILE-FLEX-22-11-25", tariff="E-1R-AGILE-FLEX-22-11-25-J")
    with pytest.raises(ConfigError, match="quotes GBP"):
        ForecastService(ForecastSettings(providers=(octo,)), store, mock(lambda r: httpx.Response(500)), FakeClock(
            datetime.now(UTC)))
    body = fixture("octometer_standard-unit-rates_E-1R-AGILE-FLEX-22-11-25-J_page1_trimmed.json")
    now = datetime(2024, 5, 7, 19, 30, tzinfo=UTC)
    service = ForecastService(ForecastSettings(rates=(("GBP", 1.2),), providers=(octo,)), store,
                              mock(lambda r: httpx.Response(200, json=body)), FakeClock(now))
    service.refresh()
    assert service.points(now, now + timedelta(minutes=15))[0]["price_per_mwh"] == pytest.approx(214.7 * 1.2)


def test_provider_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"forecast.providers\[0\].kind"):
        parse_config('[[forecast.providers]]\nkind = "weather"\n', "c.toml")
    with pytest.raises(ConfigError, match=r"forecast.providers\[0\].signals"):
        parse_config('[[forecast.providers]]\nkind = "file"\nsignals = ["wind"]\n', "c.toml")


# --- a real server, the CLI and the daemon -------------------------------------------------------------------


@pytest.fixture
def replay_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "replay_server.py"), str(port_file), "8"])
    for _ in range(100):
        if port_file.exists() and port_file.read_text():
            break
        time.sleep(0.05)
    yield proc, f"http://127.0.0.1:{port_file.read_text()}"
    proc.kill()
    proc.wait()


def test_forecast_fetch_with_a_config_needs_no_daemon(replay_server: tuple, tmp_path: Path) -> None:
    _proc, url = replay_server
    config = tmp_path / "c.toml"
    config.write_text(f'[[forecast.providers]]\nkind = "uk-carbon-intensity"\nbase_url = "{url}"\n'
                      f'signals = ["carbon"]\n\n[[forecast.providers]]\nkind = "file"\npriority = 200\n')
    result = cli("--config", str(config), "forecast", "--fetch", "--json", "--hours", "6",
                 "--plot", str(tmp_path / "f.png"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["currency"] == "EUR" and len(data["points"]) in (24, 25)  # 6 h of 15-minute steps from now
    assert set(data["points"][0]) >= {"start", "end", "price_per_mwh", "carbon_g_per_kwh", "renewable_share_pct",
                                      "source", "estimated"}
    assert "uk-carbon-intensity" in data["points"][0]["source"]  # the replayed 4 h
    assert data["points"][-1]["source"] == "file:trace_de_2023-06.csv"  # after them, the fallback
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_daemon_survives_its_primary_provider_dying_mid_run(replay_server: tuple, home: Path, tmp_path: Path) -> None:
    proc, url = replay_server
    config = f"""
[daemon]
tick_s = 0.3
clock_speed = 900.0
[devices]
gpus = "none"
cpu_devices = 2
[forecast]
refresh_minutes = 0.01
retries = 0
[[forecast.providers]]
kind = "uk-carbon-intensity"
base_url = "{url}"
signals = ["carbon"]
priority = 1
[[forecast.providers]]
kind = "file"
priority = 2
"""
    daemon = DaemonProc(home, config)
    daemon.start()
    try:
        deadline = time.monotonic() + 30  # the first fetch runs beside the daemon's start (slow on a loaded box)
        while time.monotonic() < deadline:
            data = json.loads(daemon.cli("forecast", "--json", "--hours", "1", check=True).stdout)
            if "uk-carbon-intensity" in data["points"][0]["source"]:
                break
            time.sleep(0.2)
        assert "uk-carbon-intensity" in data["points"][0]["source"]
        proc.kill()  # the primary dies
        proc.wait()
        deadline = time.monotonic() + 60  # 4 replayed hours at 900x: 16 s, with headroom for a loaded box
        while time.monotonic() < deadline:
            data = json.loads(daemon.cli("forecast", "--json", "--hours", "1", check=True).stdout)
            failing = [p for p in data["providers"] if p["ok"] is False]
            if failing and "uk-carbon-intensity" not in data["points"][0]["source"]:
                break
            time.sleep(0.3)
        assert failing and "cannot connect" in failing[0]["error"]
        assert data["points"][0]["source"] == "file:trace_de_2023-06.csv"  # the replayed hours have passed
        shown = daemon.cli("forecast", "--hours", "1")
        assert "provider uk-carbon-intensity failing" in shown.stderr
        job = write_job(tmp_path, "j", 'command = ["true"]\nduration = "1m"\nmax_delay = "2h"\n')
        job_id = daemon.submit(job)
        assert daemon.wait_state(job_id, {"COMPLETED"}, timeout_s=30)["state"] == "COMPLETED"
    finally:
        daemon.stop()
        daemon.kill_runners()


def test_a_stop_while_a_forecast_fetch_brings_new_data_ends(tmp_path: Path) -> None:
    """The scheduler's shutdown waits for the fetch in flight while holding its job-store lock; a fetch that then
    brings new data wakes the daemon, which moves the tick under that lock. That wake must not wait for the
    shutdown (a stop hung for good under CI's load)."""
    import threading

    from scheduler.clock import ScaledClock
    from scheduler.config import Paths
    from scheduler.daemon import Daemon
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.service import build_executor

    class HeldFetch(TraceProvider):
        """Each fetch waits until the test lets it go, then says new data came."""

        def __init__(self) -> None:
            super().__init__()
            self.fetching, self.release = threading.Event(), threading.Event()

        def refresh(self) -> bool:
            self.fetching.set()
            self.release.wait(30)
            return True

    config = parse_config('[devices]\ngpus = "none"\ncpu_devices = 1\n[daemon]\ntick_s = 3600\n', "test")
    paths = Paths(home=tmp_path / "home", socket=tmp_path / "home" / "gsched.sock")
    store = Store(paths.db)
    clock = ScaledClock(1.0)
    provider = HeldFetch()
    daemon = Daemon(config, paths, store, clock, build_executor(config, paths, store, clock), provider, {})
    daemon.start()
    assert provider.fetching.wait(10)
    scheduler = daemon._scheduler
    deadline = time.monotonic() + 10  # the start's tick has run (the next is an hour away): the wake moves the tick
    while (scheduler.get_job("tick").next_run_time <= datetime.now(UTC) or daemon._tick_lock.locked()) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    stopper = threading.Thread(target=daemon.stop, daemon=True)
    stopper.start()
    deadline = time.monotonic() + 10
    while scheduler.running and time.monotonic() < deadline:  # the shutdown has begun: it waits for the fetch
        time.sleep(0.01)
    provider.release.set()
    stopper.join(10)
    assert not stopper.is_alive(), "the stop waits for a wake that waits for the stop"
    store.close()
