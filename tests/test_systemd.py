from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

UNIT = ROOT / "systemd" / "gsched.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's gsched, as `make install` would place it.
    gsched = Path(sys.executable).with_name("gsched")
    unit = tmp_path / "gsched.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gsched", str(gsched)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_unit_keeps_jobs_alive_and_gpus_reachable() -> None:
    lines = [line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")]
    service = {key: value for key, value in lines}
    assert service["Type"] == "notify" and service["KillMode"] == "process"
    assert service["Restart"] == "on-failure" and service["DevicePolicy"] == "closed"
    assert "StateDirectory" in service and "RuntimeDirectory" in service and "PrivateDevices" not in service
    allowed = [value for key, value in lines if key == "DeviceAllow"]
    assert "char-nvidia-frontend rw" in allowed and "char-nvidiactl rw" in allowed
