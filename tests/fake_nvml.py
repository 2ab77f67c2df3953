"""A fake NVML with the real pynvml exception classes: the CPU-only stand-in for GPU tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_bytes: int = 80 * 2**30
    limit_mw: int = 700_000
    constraints_mw: tuple[int, int] = (200_000, 700_000)
    energy_mj: int | None = 1_000_000  # None: no total-energy counter (pre-Volta)
    power_mw: int = 250_000
    set_calls: list[int] = field(default_factory=list)


def _not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


class FakeNvml(SimpleNamespace):
    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        super().__init__()
        self.gpus, self.init_error, self.inits, self.shutdowns = gpus, init_error, 0, 0
        for name in dir(pynvml):
            if name.startswith("NVMLError") or name.startswith("NVML_ERROR"):
                setattr(self, name, getattr(pynvml, name))

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:  # noqa: N802
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.name

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(total=gpu.memory_bytes)

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGpu) -> int:  # noqa: N802
        return gpu.limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, gpu: FakeGpu) -> list[int]:  # noqa: N802
        return list(gpu.constraints_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:  # noqa: N802
        if gpu.energy_mj is None:
            raise _not_supported()
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:  # noqa: N802
        return gpu.power_mw

    def nvmlDeviceSetPowerManagementLimit(self, gpu: FakeGpu, limit_mw: int) -> None:  # noqa: N802
        gpu.set_calls.append(limit_mw)
        gpu.limit_mw = limit_mw
