"""A command job runs in its submitter's environment, as sbatch (--export=ALL) and pueue do.

`gsched submit` sends the client's environment with the job; the daemon keeps what the job file's ``export`` says
(``"all"``, ``"none"`` or a list of names), bounded, and finds ``command[0]`` on the job's PATH as its owner would.
At each start the job's environment is: a service baseline, then the submitter's (as exported), then the job file's
``env`` table, then gsched's own variables, which always win. The stored environment is the owner's private data:
never logged, shown to the owner and root only.
"""

from __future__ import annotations

import os
from typing import Any

from scheduler.errors import InputError

MAX_VARS = 1024
MAX_BYTES = 256 * 1024
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GSCHED_PREFIX = "GSCHED_"  # gsched's own (the client's GSCHED_HOME, a run's token): never taken from a submitter


def from_request(raw: Any) -> dict[str, str]:
    """The ``environment`` of a submit request (untrusted): names and values as strings, bounded."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError("request body: environment: must be a JSON object of strings")
    if len(raw) > MAX_VARS:
        raise InputError(f"request body: environment: {len(raw)} variables, more than the limit of {MAX_VARS}; "
                         'unset some, or set export = ["PATH", ...] in the job file')
    size = 0
    for name, value in raw.items():
        if not isinstance(value, str) or not name or "=" in name or "\0" in name or "\0" in value:
            raise InputError(f"request body: environment: {str(name)[:60]!r} is not a variable with a text value")
        size += len(name.encode()) + len(value.encode()) + 2
    if size > MAX_BYTES:
        raise InputError(f"request body: environment: {size // 1024} KiB, more than the limit of "
                         f"{MAX_BYTES // 1024} KiB; unset some, or set export = [\"PATH\", ...] in the job file")
    return {k: v for k, v in raw.items() if not k.startswith(GSCHED_PREFIX)}


def exported(environment: dict[str, str], export: str | tuple[str, ...]) -> dict[str, str]:
    if export == "all":
        return dict(environment)
    if export == "none":
        return {}
    return {name: environment[name] for name in export if name in environment}


def job_path(environment: dict[str, str], env: dict[str, str]) -> str:
    """The PATH a job's command is found on: the job file's, the submitter's, else the service's."""
    return env.get("PATH") or environment.get("PATH") or os.environ.get("PATH") or SERVICE_PATH


def client_environment() -> dict[str, str]:
    """What `gsched submit` sends: the shell's environment, less gsched's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(GSCHED_PREFIX)}
