"""job.toml -> JobSpec. Pure: the caller passes the time, the directory and the device count.

Every error names the file and the field (or the line, for TOML syntax), and nothing is stored.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from scheduler.errors import JobFileError
from scheduler.timeutil import parse_duration_s, parse_rfc3339, rfc3339

PRECISIONS = ("fp32", "bf16", "fp16")
_TOP_KEYS = {
    "name", "workload", "args", "command", "steps", "duration", "gpus", "deadline", "max_delay",
    "preemptible", "optimisations", "env", "workdir", "time_limit",
}
_OPT_KEYS = {"precision", "pruning", "compile", "power_cap_w"}


@dataclass(frozen=True)
class Optimisations:
    precision: tuple[str, ...] = ("fp32",)
    pruning: tuple[float | str, ...] = (0.0,)  # amounts, or "2:4"
    compile: bool = False
    power_cap_w: tuple[int, ...] = ()


def pruning_label(pruning: float | str) -> str:
    """A pruning choice as profiles key it: "0", "0.5", "2:4"."""
    return pruning if isinstance(pruning, str) else f"{pruning:g}"


@dataclass(frozen=True)
class JobSpec:
    name: str
    deadline: datetime
    gpus_min: int
    gpus_max: int
    workdir: str
    workload: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    steps: int | None = None
    duration_s: float | None = None
    preemptible: bool = False
    optimisations: Optimisations = field(default_factory=Optimisations)
    env: dict[str, str] = field(default_factory=dict)
    time_limit_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["deadline"] = rfc3339(self.deadline)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobSpec":
        data = dict(data)
        data["deadline"] = parse_rfc3339(data["deadline"])
        data["optimisations"] = Optimisations(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in data["optimisations"].items()})
        if data.get("command") is not None:
            data["command"] = tuple(data["command"])
        return cls(**data)

    @property
    def profile_key(self) -> str | None:
        """What makes two workload runs comparable in speed: the workload and its arguments but the seed."""
        if self.workload is None:
            return None
        return json.dumps({"workload": self.workload, "args": {k: v for k, v in self.args.items() if k != "seed"}},
                          sort_keys=True)

    def argv(self, python: str, processes: int = 1) -> list[str]:
        """The program the runner starts; never through a shell. A workload on several devices runs under
        torchrun, one process per device (DDP)."""
        if self.command is not None:
            return list(self.command)
        launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        argv = [*(launcher if processes > 1 else [python]), "-m", str(self.workload), "--steps", str(self.steps)]
        for key, value in self.args.items():
            argv += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
        return argv


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def calibration_job(spec: JobSpec, prefix: str, gpus: int, precision: str, pruning: float | str,
                    steps: int) -> tuple[str, str]:
    """(name of the mode, job file text) of a short run measuring one mode of a workload job: what
    `gsched profile` submits, and the daemon when its devices are idle."""
    assert spec.workload is not None
    mode = f"{gpus}x {precision}" + (f" pruned {pruning_label(pruning)}" if pruning else "")
    job = {"name": f"{prefix}-{spec.name}-{mode.replace(' ', '-')}"[:64], "workload": spec.workload,
           "steps": steps, "args": spec.args, "gpus": gpus, "max_delay": "1h", "workdir": spec.workdir,
           "optimisations": {"precision": [precision], "pruning": [pruning], "compile": spec.optimisations.compile}}
    return mode, "\n".join(f"{k} = {_toml(v)}" for k, v in job.items()) + "\n"


class _Reader:
    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data

    def fail(self, where: str, message: str) -> JobFileError:
        return JobFileError(self.source, where, message)

    def typed(self, key: str, types: tuple[type, ...], what: str, table: dict[str, Any] | None = None,
              prefix: str = "") -> Any:
        value = (self.data if table is None else table).get(key)
        if value is None:
            return None
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise self.fail(prefix + key, f"must be {what}, got {type(value).__name__} {value!r}")
        return value

    def duration(self, key: str) -> float | None:
        value = self.typed(key, (str, int, float), "a duration such as '12h' or a number of seconds")
        if value is None:
            return None
        try:
            seconds = float(value) if not isinstance(value, str) else parse_duration_s(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        return seconds


def parse_job(text: str, *, source: str, base_dir: Path, now: datetime, default_max_delay_s: float = 86400.0,
              workloads: dict[str, Any] | None = None) -> JobSpec:
    """Validate a job file's text. ``now`` is the scheduler's time (an aware UTC datetime)."""
    if workloads is None:
        from jobs import WORKLOADS as workloads  # noqa: N811 - cheap import, no torch
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(source, "", f"not valid TOML: {exc}") from None
    r = _Reader(source, data)
    for key in data:
        if key not in _TOP_KEYS:
            raise r.fail(key, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    name = r.typed("name", (str,), "a string") or Path(source).stem
    if not name.strip() or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise r.fail("name", "must be 1-64 printable characters without spaces")

    workload = r.typed("workload", (str,), "a module name such as 'jobs.linear'")
    command = r.typed("command", (list,), "a list of strings, e.g. [\"python3\", \"train.py\"]")
    if (workload is None) == (command is None):
        raise r.fail("workload", "give exactly one of 'workload' (a module in jobs/) or 'command' (a list)")
    args = r.typed("args", (dict,), "a table of workload arguments") or {}
    steps = r.typed("steps", (int,), "a whole number of training steps")
    duration_s = r.duration("duration")
    if workload is not None:
        if workload not in workloads:
            raise r.fail("workload", f"no workload {workload!r} (known: {', '.join(sorted(workloads))})")
        if steps is None:
            raise r.fail("steps", "required for a workload: the number of training steps")
        if steps < 1:
            raise r.fail("steps", f"must be >= 1, got {steps}")
        for key, value in args.items():
            if key == "steps":
                raise r.fail("args.steps", "give steps at the top level, not in args")
            if not isinstance(value, (str, int, float, bool)):
                raise r.fail(f"args.{key}", f"must be a string, number or boolean, got {type(value).__name__}")
    else:
        if args:
            raise r.fail("args", "only for a workload; put a command's arguments in 'command'")
        if not command or not all(isinstance(part, str) and part for part in command):
            raise r.fail("command", "must be a non-empty list of non-empty strings")
        if duration_s is None:
            raise r.fail("duration", "required for a command: its expected run time, e.g. '20m'")

    gpus = data.get("gpus", 1)
    if isinstance(gpus, dict):
        for key in gpus:
            if key not in ("min", "max"):
                raise r.fail(f"gpus.{key}", "unknown key (known: min, max)")
        gpus_min = r.typed("min", (int,), "a whole number", gpus, "gpus.")
        gpus_max = r.typed("max", (int,), "a whole number", gpus, "gpus.")
        gpus_min = 1 if gpus_min is None else gpus_min
        gpus_max = gpus_min if gpus_max is None else gpus_max
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        gpus_min = gpus_max = gpus
    else:
        raise r.fail("gpus", f"must be a whole number or a table {{min = 1, max = 4}}, got {gpus!r}")
    if gpus_min < 1:
        raise r.fail("gpus.min" if isinstance(gpus, dict) else "gpus", f"must be >= 1, got {gpus_min}")
    if gpus_min > gpus_max:
        raise r.fail("gpus.min", f"must be <= gpus.max (got {gpus_min} > {gpus_max})")

    if "deadline" in data and "max_delay" in data:
        raise r.fail("deadline", "give either 'deadline' or 'max_delay', not both")
    if "deadline" in data:
        raw = data["deadline"]
        try:
            if isinstance(raw, datetime):
                if raw.tzinfo is None:
                    raise ValueError("has no UTC offset (write e.g. 2026-01-02T15:00:00Z)")
                deadline = raw.astimezone(timezone.utc)
            elif isinstance(raw, str):
                deadline = parse_rfc3339(raw)
            elif isinstance(raw, date):
                raise ValueError("is a date without a time; write e.g. 2026-01-02T15:00:00Z")
            else:
                raise ValueError(f"must be an RFC 3339 time, got {type(raw).__name__}")
        except ValueError as exc:
            raise r.fail("deadline", str(exc)) from None
        if deadline <= now:
            raise r.fail("deadline", f"{rfc3339(deadline)} is already past (now {rfc3339(now)})")
    else:
        deadline = now + timedelta(seconds=r.duration("max_delay") or default_max_delay_s)

    preemptible = r.typed("preemptible", (bool,), "true or false") or False
    optimisations = _parse_optimisations(r)

    env = r.typed("env", (dict,), "a table of strings") or {}
    for key, value in env.items():
        if not isinstance(value, str):
            raise r.fail(f"env.{key}", f"must be a string, got {type(value).__name__} {value!r}")
        if not key or "=" in key or "\0" in key:
            raise r.fail(f"env.{key}", "is not a valid environment variable name")

    workdir_raw = r.typed("workdir", (str,), "a directory path") or "."
    workdir = (base_dir / workdir_raw).resolve()
    if not workdir.is_dir():
        raise r.fail("workdir", f"{workdir} is not a directory")

    return JobSpec(
        name=name, deadline=deadline, gpus_min=gpus_min, gpus_max=gpus_max, workdir=str(workdir),
        workload=workload, args=args, command=tuple(command) if command is not None else None, steps=steps,
        duration_s=duration_s, preemptible=preemptible, optimisations=optimisations, env=env,
        time_limit_s=r.duration("time_limit"),
    )


def _parse_optimisations(r: _Reader) -> Optimisations:
    table = r.typed("optimisations", (dict,), "a table") or {}
    for key in table:
        if key not in _OPT_KEYS:
            raise r.fail(f"optimisations.{key}", f"unknown key (known: {', '.join(sorted(_OPT_KEYS))})")
    precision = table.get("precision", ["fp32"])
    if isinstance(precision, str):
        precision = [precision]
    if not isinstance(precision, list) or not precision or any(p not in PRECISIONS for p in precision):
        raise r.fail("optimisations.precision", f"must be a list drawn from {', '.join(PRECISIONS)}, got {precision!r}")
    pruning = table.get("pruning", [0.0])
    if not isinstance(pruning, list) or not pruning or any(
        p != "2:4" and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1) for p in pruning
    ):
        raise r.fail("optimisations.pruning", f'must be a list of amounts in [0, 1) or "2:4", got {pruning!r}')
    compile_ = r.typed("compile", (bool,), "true or false", table, "optimisations.") or False
    caps = table.get("power_cap_w", [])
    if not isinstance(caps, list) or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in caps):
        raise r.fail("optimisations.power_cap_w", f"must be a list of watts (whole numbers > 0), got {caps!r}")
    return Optimisations(tuple(precision), tuple(p if p == "2:4" else float(p) for p in pruning), compile_,
                         tuple(caps))


def read_job_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(str(path), "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(str(path), "", f"cannot read: {exc}") from None
