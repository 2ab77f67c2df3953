"""Energy meters: a measurement window around a run, returning joules and where they came from.

Sources, best first:
- ``nvml``: the GPU's total-energy counter (mJ since driver load; Volta and newer), per GPU UUID.
- ``nvml-power``: NVML power samples (mW) integrated over time, for GPUs without the counter.
- ``rapl``: Intel/AMD RAPL package counters from /sys/class/powercap. They count the whole CPU
  package, so concurrent jobs on the same package each see the others' energy too.
- ``estimate``: CPU seconds the job's processes used x ``energy.cpu_watts_per_core``. A labelled
  estimate, not a measurement: it ignores memory, idle and uncore power.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from scheduler.errors import DeviceError

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Reading:
    energy_j: float
    source: str
    detail: dict[str, float] = field(default_factory=dict)


class Meter(Protocol):
    def begin_window(self) -> None: ...

    def end_window(self) -> Reading: ...


class CpuEstimateMeter:
    """Counts the CPU time of waited-for children, so end_window must follow the child's wait()."""

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core
        self._cpu_s0 = 0.0

    @staticmethod
    def _children_cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def begin_window(self) -> None:
        self._cpu_s0 = self._children_cpu_s()

    def end_window(self) -> Reading:
        cpu_s = self._children_cpu_s() - self._cpu_s0
        return Reading(cpu_s * self.watts_per_core, "estimate", {"cpu_s": cpu_s})


class RaplMeter:
    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        self._start: dict[Path, int] = {}

    @classmethod
    def available(cls, root: Path = POWERCAP) -> bool:
        meter = cls(root)
        try:
            return bool(meter.zones) and all(int((z / "energy_uj").read_text()) >= 0 for z in meter.zones)
        except (OSError, ValueError):
            return False

    def begin_window(self) -> None:
        self._start = {z: int((z / "energy_uj").read_text()) for z in self.zones}

    def end_window(self) -> Reading:
        detail = {}
        for zone, start in self._start.items():
            end = int((zone / "energy_uj").read_text())
            if end < start:  # the counter wrapped
                end += int((zone / "max_energy_range_uj").read_text())
            detail[zone.name] = (end - start) / 1e6
        return Reading(sum(detail.values()), "rapl", detail)


class NvmlMeter:
    """Counter deltas per GPU UUID; GPUs without the counter are sampled every ``sample_s`` instead."""

    def __init__(self, nvml: ModuleType, uuids: list[str], sample_s: float = 0.5) -> None:
        self.nvml, self.uuids, self.sample_s = nvml, uuids, sample_s
        self._handles: dict[str, Any] = {}
        self._counter0: dict[str, int] = {}
        self._sampled_j: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin_window(self) -> None:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
            # Slurm names a job's GPUs by index (CUDA_VISIBLE_DEVICES=0,1); the local executor by UUID.
            self._handles = {u: nvml.nvmlDeviceGetHandleByIndex(int(u)) if u.isdigit() else
                             nvml.nvmlDeviceGetHandleByUUID(u) for u in self.uuids}
        except nvml.NVMLError as exc:
            raise DeviceError(f"NVML: {exc}") from exc
        for uuid, handle in self._handles.items():
            try:
                self._counter0[uuid] = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except nvml.NVMLError:
                self._sampled_j[uuid] = 0.0
        if self._sampled_j:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.sample_s):
            now = time.monotonic()
            for uuid in self._sampled_j:
                try:
                    watts = self.nvml.nvmlDeviceGetPowerUsage(self._handles[uuid]) / 1000
                except self.nvml.NVMLError:
                    continue
                self._sampled_j[uuid] += watts * (now - last)
            last = now

    def end_window(self) -> Reading:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        detail = dict(self._sampled_j)
        for uuid, start_mj in self._counter0.items():
            detail[uuid] = (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[uuid]) - start_mj) / 1000
        self.nvml.nvmlShutdown()
        return Reading(sum(detail.values()), "nvml-power" if self._sampled_j else "nvml", detail)


def choose_meter(kind: str, uuids: list[str], cpu_watts_per_core: float, sample_s: float,
                 nvml: ModuleType | None = None, powercap: Path = POWERCAP) -> Meter:
    if kind == "gpu":
        if nvml is None:
            import pynvml

            return NvmlMeter(pynvml, uuids, sample_s)
        return NvmlMeter(nvml, uuids, sample_s)
    if RaplMeter.available(powercap):
        return RaplMeter(powercap)
    return CpuEstimateMeter(cpu_watts_per_core)
