from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

from fake_nvml import FakeGpu, FakeNvml
from scheduler.config import DeviceSettings
from scheduler.devices import discover, nvml_devices
from scheduler.errors import DeviceError
from scheduler.executor.energy import CpuEstimateMeter, NvmlMeter, RaplMeter, choose_meter


def test_nvml_devices_keyed_by_uuid_read_only() -> None:
    gpus = [FakeGpu("GPU-aaa"), FakeGpu("GPU-bbb", energy_mj=None)]
    nvml = FakeNvml(gpus)
    devices = discover(DeviceSettings(), nvml)
    assert [d.uuid for d in devices] == ["GPU-aaa", "GPU-bbb"]
    assert devices[0].power_limit_w == 700 and devices[0].power_limit_min_w == 200 and devices[0].memory_mib == 81920
    assert devices[0].energy_counter and not devices[1].energy_counter
    assert nvml.inits == nvml.shutdowns == 1 and not any(g.set_calls for g in gpus)


def test_no_driver_means_cpu_devices() -> None:
    for code in (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED):
        devices = discover(DeviceSettings(cpu_devices=3), FakeNvml([], init_error=code))
        assert [d.kind for d in devices] == ["cpu"] * 3


def test_real_nvml_on_this_machine_degrades_to_cpu() -> None:
    devices = discover(DeviceSettings())
    assert devices and all(d.kind in ("cpu", "gpu") for d in devices)


def test_other_nvml_failures_are_translated() -> None:
    with pytest.raises(DeviceError, match="NVML init failed"):
        nvml_devices(FakeNvml([], init_error=pynvml.NVML_ERROR_NO_PERMISSION))


def test_nvml_counter_delta_per_gpu() -> None:
    gpus = [FakeGpu("GPU-a", energy_mj=5_000), FakeGpu("GPU-b", energy_mj=9_000)]
    meter = NvmlMeter(FakeNvml(gpus), ["GPU-a", "GPU-b"])
    meter.begin_window()
    gpus[0].energy_mj += 120_000  # 120 J
    gpus[1].energy_mj += 30_500
    reading = meter.end_window()
    assert reading.source == "nvml" and reading.energy_j == pytest.approx(150.5)
    assert reading.detail == {"GPU-a": 120.0, "GPU-b": 30.5}


def test_nvml_power_sampling_without_counter() -> None:
    gpus = [FakeGpu("GPU-old", energy_mj=None, power_mw=200_000)]
    meter = NvmlMeter(FakeNvml(gpus), ["GPU-old"], sample_s=0.02)
    meter.begin_window()
    time.sleep(0.5)
    reading = meter.end_window()
    assert reading.source == "nvml-power"
    assert 60 < reading.energy_j <= 110  # ~200 W x ~0.5 s


def write_zone(root: Path, name: str, energy_uj: int, max_uj: int = 2**32) -> None:
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "energy_uj").write_text(str(energy_uj))
    (zone / "max_energy_range_uj").write_text(str(max_uj))


def test_rapl_reads_packages_and_handles_wraparound(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", 1_000_000, max_uj=10_000_000)
    write_zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone (core): not counted twice
    meter = choose_meter("cpu", [], 10.0, 0.5, powercap=tmp_path)
    assert isinstance(meter, RaplMeter)
    meter.begin_window()
    write_zone(tmp_path, "intel-rapl:0", 500_000, max_uj=10_000_000)  # wrapped past 10 J
    reading = meter.end_window()
    assert reading.source == "rapl" and reading.energy_j == pytest.approx(9.5)


def test_cpu_estimate_counts_a_real_childs_cpu_time(tmp_path: Path) -> None:
    meter = choose_meter("cpu", [], 10.0, 0.5, powercap=tmp_path / "absent")
    assert isinstance(meter, CpuEstimateMeter)
    meter.begin_window()
    subprocess.run([sys.executable, "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass"],
                   check=True)
    reading = meter.end_window()
    assert reading.source == "estimate"
    assert reading.detail["cpu_s"] >= 0.5 and reading.energy_j == pytest.approx(reading.detail["cpu_s"] * 10.0)



def test_power_limit_is_clamped_applied_and_restored() -> None:
    from scheduler.executor.power import PowerLimiter

    gpus = [FakeGpu("GPU-a", limit_mw=700_000), FakeGpu("GPU-b", limit_mw=650_000, constraints_mw=(300_000, 650_000))]
    nvml = FakeNvml(gpus)
    limiter = PowerLimiter(nvml)
    originals = limiter.apply(["GPU-a", "GPU-b"], 250)
    assert originals == {"GPU-a": 700_000, "GPU-b": 650_000}
    assert gpus[0].limit_mw == 250_000 and gpus[1].limit_mw == 300_000  # clamped to GPU-b's floor
    limiter.restore(originals)
    assert [g.limit_mw for g in gpus] == [700_000, 650_000]
    assert nvml.inits == nvml.shutdowns == 2


def test_a_failed_power_limit_undoes_what_it_set() -> None:
    from scheduler.executor.power import PowerLimiter

    gpus = [FakeGpu("GPU-a")]
    limiter = PowerLimiter(FakeNvml(gpus))
    with pytest.raises(DeviceError, match="cannot set the power limit"):
        limiter.apply(["GPU-a", "GPU-missing"], 300)
    assert gpus[0].limit_mw == 700_000 and gpus[0].set_calls == [300_000, 700_000]


def test_daemon_caps_a_gpu_job_and_restores_the_limit_after(tmp_path: Path) -> None:
    """In process, on fake GPUs: the planner picks the capped mode, the daemon applies it, the job runs (its runner
    falls back to the CPU estimate without NVML), and the original limit comes back."""
    from datetime import datetime, timedelta, timezone

    from scheduler.clock import ScaledClock
    from scheduler.config import Config, Paths, PlannerSettings
    from scheduler.daemon import Daemon
    from scheduler.devices import Device
    from scheduler.executor.launch import Launcher
    from scheduler.executor.local import LocalExecutor
    from scheduler.executor.power import PowerLimiter
    from scheduler.forecasts.trace import TraceProvider
    from scheduler.jobfile import parse_job
    from scheduler.store import Store

    gpus = [FakeGpu("GPU-a", limit_mw=300_000, constraints_mw=(100_000, 300_000))]
    devices = [Device(0, "GPU-a", "fake GPU", "gpu", 80 * 1024, 300.0, 100.0, 300.0, True)]
    paths = Paths(home=tmp_path / "home", socket=tmp_path / "home" / "gsched.sock")
    store = Store(paths.db)
    # Planned on carbon (always > 0): on price alone a negative-price hour would make the uncapped mode cheaper.
    config = Config(planner=PlannerSettings(objective="carbon"))
    executor = LocalExecutor(config, paths, store, devices, Launcher(paths, config), PowerLimiter(FakeNvml(gpus)))
    # The wall clock's time at a slot's first minute: with 20 minutes of slack only "now" is on time (a run from the
    # next 15-minute slot would end past the deadline's slot), and the planner still picks the cheaper capped mode
    # (11.7 minutes at 200 W). At a later minute a capped run from now could end in the deadline's slot: late.
    wall = datetime.now(timezone.utc)
    clock = ScaledClock(1.0, origin=wall.replace(minute=wall.minute // 15 * 15, second=0, microsecond=0)
                        + timedelta(minutes=1))
    daemon = Daemon(config, paths, store, clock, executor, TraceProvider(), {})
    spec = parse_job('command = ["true"]\nduration = "10m"\nmax_delay = "20m"\n[optimisations]\npower_cap_w = [200]\n',
                     source="j.toml", base_dir=tmp_path, now=clock.now())
    job = store.add_job(spec, owner_uid=os.geteuid(), owner_name="me", urgent=False, now=clock.now())
    daemon.tick()
    assert store.get(job.id).state.value == "RUNNING"
    assert gpus[0].set_calls == [200_000]  # the capped mode costs less energy per unit of work
    deadline = time.monotonic() + 30
    while store.get(job.id).state.value == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
        daemon.tick()
    done = store.get(job.id)
    assert done.state.value == "COMPLETED" and "power_restore" not in json.loads(done.run_handle)
    assert gpus[0].limit_mw == 300_000 and gpus[0].set_calls == [200_000, 300_000]
    assert store.measurements(job.id)[0].energy_source == "estimate"


def test_a_local_gpu_run_s_threads_are_its_gpus_share_of_the_host_s_cpus(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """16 CPUs and 4 GPUs: each GPU brings 4 threads to its run, shared by the run's processes (a workload's DDP
    runs one a GPU, a command one in all), whatever the job's environment says."""
    from datetime import datetime, timezone

    from scheduler.config import Config, Paths
    from scheduler.devices import Device
    from scheduler.executor.launch import Launcher
    from scheduler.executor.local import LocalExecutor
    from scheduler.jobfile import parse_job
    from scheduler.store import Store

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    devices = [Device(i, f"GPU-{i}", "fake GPU", "gpu", 80 * 1024, 300.0, 100.0, 300.0, True) for i in range(4)]
    paths = Paths(home=tmp_path / "home", socket=tmp_path / "home" / "gsched.sock")
    store = Store(paths.db)
    config = Config()
    executor = LocalExecutor(config, paths, store, devices, Launcher(paths, config))
    now = datetime.now(timezone.utc)
    command = 'command = ["true"]\nduration = "10m"\nmax_delay = "1h"\n[env]\nOMP_NUM_THREADS = "64"\n'
    for text, gpus, threads in ((command, 1, "4"), (command.replace('"10m"', '"10m"\ngpus = 2'), 2, "8"),
                                ('workload = "jobs.linear"\nsteps = 10\ngpus = 2\nmax_delay = "1h"\n', 2, "4")):
        spec = parse_job(text, source="j.toml", base_dir=tmp_path, now=now)
        job = store.add_job(spec, owner_uid=os.geteuid(), owner_name="me", urgent=False, now=now)
        intent = executor.prepare(job, spec, {"gpus": gpus}, now)
        run = json.loads((paths.runs / str(job.id) / f"run-{intent.handle['token']}.json").read_text())
        assert run["env"]["OMP_NUM_THREADS"] == threads, (text, run["env"])
        assert run["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(f"GPU-{i}" for i in range(gpus))
    store.close()
