"""Slurm Prolog/Epilog for gsched's power caps: the Prolog reads the mode gsched put in the job's ``--comment``
(``gsched:gpus=2,precision=bf16,power_limit_w=250``), caps the job's GPUs (``SLURM_JOB_GPUS``, NVML indices) and
keeps their original limits in a state file; the Epilog restores them. Both run as root on the compute node.

    python3 -m scheduler.executor.slurm_prolog prolog|epilog     (slurm/prolog.sh and slurm/epilog.sh)

Checked on a real Slurm 22.05 (tests/slurm_cluster.py): the Prolog sees SLURM_JOB_GPUS=0,1 and
SLURM_JOB_COMMENT. A job that gsched did not submit, or whose mode has no cap, is left alone. A Prolog that cannot set a cap logs it
and lets the job run (uncapped) rather than draining the node; the Epilog always tries to restore.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from scheduler.errors import DeviceError
from scheduler.executor.power import PowerLimiter

STATE_DIR = Path("/run/gsched-slurm")
_CAP = re.compile(r"(?:^|[,;])power_limit_w=(\d{1,5})(?:$|[,;])")


def cap_from_comment(comment: str) -> int | None:
    """The power cap in W from a gsched comment, or None (no cap, or not gsched's)."""
    if not comment.startswith("gsched:"):
        return None
    match = _CAP.search(comment[len("gsched:"):])
    return int(match.group(1)) if match else None


def job_gpus(env: Mapping[str, str]) -> list[int]:
    text = env.get("SLURM_JOB_GPUS") or env.get("CUDA_VISIBLE_DEVICES") or ""
    return [int(part) for part in text.split(",") if part.strip().isdigit()]


def job_comment(env: Mapping[str, str]) -> str:
    """The job's comment: from the environment where Slurm gives it, else from scontrol."""
    if env.get("SLURM_JOB_COMMENT"):
        return env["SLURM_JOB_COMMENT"]
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return ""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    match = re.search(r"\bComment=(\S*)", shown.stdout)
    return match.group(1) if match else ""


def prolog(env: Mapping[str, str], nvml: ModuleType, state_dir: Path = STATE_DIR) -> str:
    watts = cap_from_comment(job_comment(env))
    indices = job_gpus(env)
    if watts is None or not indices:
        return "no gsched power cap for this job"
    nvml.nvmlInit()
    try:
        uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]
    finally:
        nvml.nvmlShutdown()
    originals = PowerLimiter(nvml).apply(uuids, float(watts))
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / f"{int(env['SLURM_JOB_ID'])}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(originals))
    os.replace(tmp, path)
    return f"capped GPUs {indices} at {watts} W"


def epilog(env: Mapping[str, str], nvml: ModuleType, state_dir: Path = STATE_DIR) -> str:
    job_id = env.get("SLURM_JOB_ID", "")
    path = state_dir / f"{int(job_id)}.json" if job_id.isdigit() else None
    if path is None or not path.exists():
        return "nothing to restore"
    originals = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    PowerLimiter(nvml).restore(originals)
    path.unlink()
    return f"restored {len(originals)} GPU power limit(s)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["prolog"], ["epilog"]):
        print("usage: python3 -m scheduler.executor.slurm_prolog prolog|epilog", file=sys.stderr)
        return 2
    import pynvml

    try:
        said = (prolog if args[0] == "prolog" else epilog)(os.environ, pynvml)
    except (DeviceError, pynvml.NVMLError, OSError, ValueError) as exc:
        # Never fail the job or drain the node over a power cap: it runs uncapped, and the reason is in the log.
        print(f"gsched {args[0]}: {exc}", file=sys.stderr)
        return 0
    print(f"gsched {args[0]}: {said}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
