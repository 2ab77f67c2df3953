"""What the daemon schedules on: NVIDIA GPUs through NVML (keyed by UUID), else CPU virtual devices.

Read-only: nothing here changes a device's settings.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from scheduler.config import DeviceSettings
from scheduler.errors import DeviceError


@dataclass(frozen=True)
class Device:
    index: int
    uuid: str
    name: str
    kind: str  # "gpu" | "cpu"
    memory_mib: int | None = None
    power_limit_w: float | None = None
    power_limit_min_w: float | None = None
    power_limit_max_w: float | None = None
    energy_counter: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def nvml_devices(nvml: ModuleType) -> list[Device]:
    """GPUs in NVML's order. An absent driver means no GPUs; any other NVML failure is a DeviceError."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        if isinstance(exc, (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded)):
            return []
        raise DeviceError(f"NVML init failed: {exc}") from exc
    try:
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            devices.append(_describe(nvml, index, handle))
        return devices
    except nvml.NVMLError as exc:
        raise DeviceError(f"NVML query failed: {exc}") from exc
    finally:
        nvml.nvmlShutdown()


def _optional(nvml: ModuleType, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except nvml.NVMLError:  # NotSupported and friends: the field is unknown on this GPU
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(nvml: ModuleType, index: int, handle: Any) -> Device:
    memory = _optional(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    limit_mw = _optional(nvml, nvml.nvmlDeviceGetPowerManagementLimit, handle)
    constraints = _optional(nvml, nvml.nvmlDeviceGetPowerManagementLimitConstraints, handle)
    counter = _optional(nvml, nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
    return Device(
        index=index,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        kind="gpu",
        memory_mib=memory.total // 2**20 if memory is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        power_limit_min_w=constraints[0] / 1000 if constraints else None,
        power_limit_max_w=constraints[1] / 1000 if constraints else None,
        energy_counter=counter is not None,
    )


def cpu_devices(count: int) -> list[Device]:
    """Virtual devices, one per CPU core by default; a job on n of them is pinned to n cores."""
    cores = sorted(os.sched_getaffinity(0))
    count = count or len(cores)
    host = os.uname().nodename
    return [Device(index=i, uuid=f"CPU-{host}-{cores[i % len(cores)]}", name=f"cpu{cores[i % len(cores)]}",
                   kind="cpu") for i in range(count)]


def discover(settings: DeviceSettings, nvml: ModuleType | None = None) -> list[Device]:
    if settings.gpus == "auto":
        nvml = nvml or _load_nvml()
        gpus = nvml_devices(nvml) if nvml is not None else []
        if gpus:
            return gpus
    return cpu_devices(settings.cpu_devices)


def core_of(device: Device) -> int | None:
    """The CPU core a CPU virtual device stands for."""
    return int(device.name[3:]) if device.kind == "cpu" else None
