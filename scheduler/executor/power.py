"""GPU power limits through NVML: set for a job, restored after it.

Only a root daemon with ``devices.power_limits = "auto"`` ever sets one (NVML needs root, and a limit does
not survive a driver reload). The original limits are returned for the caller to store, so a daemon
restarted mid-job still restores them. A requested cap is clamped to the range the GPU allows.
"""

from __future__ import annotations

from types import ModuleType

from scheduler.errors import DeviceError


class PowerLimiter:
    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml

    def apply(self, uuids: list[str], watts: float) -> dict[str, int]:
        """Cap each GPU at ``watts``; returns {uuid: original limit in mW}. On failure, undoes what it set."""
        nvml, originals = self.nvml, {}
        try:
            nvml.nvmlInit()
            for uuid in uuids:
                handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
                low, high = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                originals[uuid] = nvml.nvmlDeviceGetPowerManagementLimit(handle)
                nvml.nvmlDeviceSetPowerManagementLimit(handle, int(min(high, max(low, watts * 1000))))
        except nvml.NVMLError as exc:
            self._set(originals)
            raise DeviceError(f"cannot set the power limit of {uuids}: {exc}") from exc
        finally:
            nvml.nvmlShutdown()
        return originals

    def restore(self, originals: dict[str, int]) -> None:
        try:
            self.nvml.nvmlInit()
            self._set(originals)
        except self.nvml.NVMLError as exc:
            raise DeviceError(f"cannot restore power limits {originals}: {exc}") from exc
        finally:
            self.nvml.nvmlShutdown()

    def _set(self, originals: dict[str, int]) -> None:
        for uuid, limit_mw in originals.items():
            self.nvml.nvmlDeviceSetPowerManagementLimit(self.nvml.nvmlDeviceGetHandleByUUID(uuid), limit_mw)
