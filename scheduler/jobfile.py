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
from typing import Any, Callable

from scheduler import dependencies
from scheduler.dependencies import Dependency
from scheduler.errors import JobFileError
from scheduler.timeutil import parse_duration_s, parse_rfc3339, rfc3339

PRECISIONS = ("fp32", "bf16", "fp16")
_TOP_KEYS = {
    "name", "workload", "args", "command", "steps", "duration", "gpus", "nodes", "deadline", "max_delay",
    "preemptible", "optimisations", "env", "export", "workdir", "time_limit", "resume_overhead_minutes", "after",
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
    # What of the submitter's environment the job keeps, as sbatch --export: "all", "none", or variable names.
    export: str | tuple[str, ...] = "all"
    # Set at submit (api.py): the submitter's environment as ``export`` keeps it, and where command[0] was found
    # on the job's PATH as its owner. The owner's private data: shown to the owner and root only.
    environment: dict[str, str] = field(default_factory=dict)
    command_path: str | None = None
    time_limit_s: float | None = None
    resume_overhead_minutes: float | None = None  # None: the config's planner.resume_overhead_minutes
    # How many nodes its GPUs may span (DDP across nodes, on Slurm): n GPUs on k nodes are n/k on each
    nodes_min: int = 1
    nodes_max: int = 1
    # The jobs it runs after (Slurm's --dependency): the API checks they exist and are the submitter's
    after: tuple[Dependency, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["deadline"] = rfc3339(self.deadline)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobSpec":
        data = dict(data)
        data["deadline"] = parse_rfc3339(data["deadline"])
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["optimisations"].items()}
        data["optimisations"] = Optimisations(**fields)
        if data.get("command") is not None:
            data["command"] = tuple(data["command"])
        if isinstance(data.get("export"), list):
            data["export"] = tuple(data["export"])
        data["after"] = tuple(Dependency(**d) for d in data.get("after", ()))
        return cls(**data)

    def overhead_minutes(self, default: float) -> float:
        """Powered minutes a resume costs: the job's own resume_overhead_minutes, else ``default`` (the config's)."""
        return default if self.resume_overhead_minutes is None else self.resume_overhead_minutes

    @property
    def profile_key(self) -> str | None:
        """What makes two runs comparable in speed: the workload and its arguments but the seed; or a command
        that gives its steps (a user's script through scheduler.train reports its steps per second as the
        workloads do); None for other commands, whose speed gsched cannot measure."""
        if self.workload is None:
            return json.dumps({"command": list(self.command or ())}, sort_keys=True) if self.steps else None
        return json.dumps({"workload": self.workload, "args": {k: v for k, v in self.args.items() if k != "seed"}},
                          sort_keys=True)

    def argv(self, python: str, processes: int = 1, nodes: int = 1) -> list[str]:
        """The program the runner starts; never through a shell. A workload on several devices runs under
        torchrun, one process per device (DDP); across nodes, torchrun's rendezvous comes from the runner's
        PET_* variables (runner.from_slurm)."""
        if self.command is not None:
            return list(self.command)
        launcher = [python, "-m", "torch.distributed.run", *(["--standalone"] if nodes == 1 else []),
                    f"--nproc-per-node={processes}"]
        argv = [*(launcher if processes * nodes > 1 else [python]), "-m", str(self.workload), "--steps",
                str(self.steps)]
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
    """(name of the mode, job file text) of a short run measuring one mode of a workload job, or of a command job
    that trains through scheduler.train (it reads its steps from GSCHED_STEPS): what `gsched profile` submits,
    and the daemon when its devices are idle."""
    mode = f"{gpus}x {precision}" + (f" pruned {pruning_label(pruning)}" if pruning else "")
    program: dict[str, Any] = ({"workload": spec.workload, "args": spec.args} if spec.workload is not None else
                               {"command": list(spec.command or ()), "env": spec.env,
                                "duration": max(60.0, (spec.duration_s or 3600.0) * steps / (spec.steps or steps))})
    job = {"name": f"{prefix}-{spec.name}-{mode.replace(' ', '-')}"[:64], **program,
           "steps": steps, "gpus": gpus, "max_delay": "1h", "workdir": spec.workdir,
           "optimisations": {"precision": [precision], "pruning": [pruning], "compile": spec.optimisations.compile}}
    return mode, "\n".join(f"{k} = {_toml(v)}" for k, v in job.items()) + "\n"


MAX_DURATION_S = 366 * 86400.0  # durations, delays and time limits; a deadline at most this far ahead
MAX_STEPS = 10**12
MAX_GPUS = 4096
MAX_NODES = 1024
MAX_PATH = 4096
MAX_ENV_BYTES = 64 * 1024
MAX_ARG = 4096
MAX_OVERHEAD_MINUTES = 1440


def _valid_env_name(name: str) -> bool:
    return bool(name) and "=" not in name and "\0" not in name and len(name) <= 256


class _Reader:
    """Reads the parsed TOML field by field and collects every error, so a user fixes them all at once."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data
        self.errors: list[tuple[str, str]] = []

    def fail(self, where: str, message: str) -> None:
        self.errors.append((where, message))

    def typed(self, key: str, types: tuple[type, ...], what: str, table: dict[str, Any] | None = None,
              prefix: str = "") -> Any:
        value = (self.data if table is None else table).get(key)
        if value is None:
            return None
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            self.fail(prefix + key, f"must be {what}, got {type(value).__name__} {_show(value)}")
            return None
        return value

    def whole(self, key: str, low: int, high: int, table: dict[str, Any] | None = None, prefix: str = "") -> Any:
        value = self.typed(key, (int,), "a whole number", table, prefix)
        if value is not None and not low <= value <= high:
            self.fail(prefix + key, f"must be >= {low}, got {value}" if value < low else f"must be <= {high}, got {value}")
            return None
        return value

    def duration(self, key: str) -> float | None:
        value = self.typed(key, (str, int, float), "a duration such as '12h' or a number of seconds")
        if value is None:
            return None
        try:
            seconds = float(value) if not isinstance(value, str) else parse_duration_s(value)
        except ValueError as exc:
            self.fail(key, str(exc))
            return None
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(key, f"must be > 0, got {_show(value)}")
            return None
        if seconds > MAX_DURATION_S:
            self.fail(key, f"must be at most {MAX_DURATION_S / 86400:.0f} days, got {_show(value)}")
            return None
        return seconds

    def text(self, where: str, value: str, limit: int = MAX_ARG) -> bool:
        if "\0" in value:
            self.fail(where, "must not contain a NUL character")
            return False
        if len(value) > limit:
            self.fail(where, f"is {len(value)} characters long; at most {limit}")
            return False
        return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def local_dir(path: Path) -> Path:
    """Resolve a workdir with this process's own rights (the CLI, running as the user)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not resolved.is_dir():
        raise ValueError(f"{resolved} is not a directory")
    return resolved


def parse_job(text: str, *, source: str, base_dir: Path, now: datetime, default_max_delay_s: float = 86400.0,
              workloads: dict[str, Any] | None = None, resolve_dir: Callable[[Path], Path] = local_dir) -> JobSpec:
    """Validate a job file's text. ``now`` is the scheduler's time (an aware UTC datetime). ``resolve_dir``
    checks the workdir: the daemon passes one that does so as the job's owner. Every error found is
    reported at once, each naming the file and the field."""
    if workloads is None:
        from jobs import WORKLOADS  # cheap import, no torch

        workloads = WORKLOADS
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(source, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise JobFileError(source, "", "not valid TOML: nested too deeply") from None
    r = _Reader(source, data)
    for key in data:
        if key not in _TOP_KEYS:
            r.fail(key, f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    name = r.typed("name", (str,), "a string") or Path(source).stem[:64]
    if not name.strip() or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        r.fail("name", "must be 1-64 printable characters without spaces")

    workload = command = None
    if ("workload" in data) == ("command" in data):  # one error: neither is checked further
        r.fail("workload", "give exactly one of 'workload' (a module in jobs/) or 'command' (a list)")
    elif "workload" in data:
        workload = r.typed("workload", (str,), "a module name such as 'jobs.linear'")
    else:
        command = r.typed("command", (list,), "a list of strings, e.g. [\"python3\", \"train.py\"]")
    args = r.typed("args", (dict,), "a table of workload arguments") or {}
    steps = r.whole("steps", 1, MAX_STEPS)
    duration_s = r.duration("duration")
    if workload is not None:
        if workload not in workloads:
            r.fail("workload", f"no workload {_show(workload)} (known: {', '.join(sorted(workloads))})")
        if "steps" not in data:
            r.fail("steps", "required for a workload: the number of training steps")
        for key, value in args.items():
            where = f"args.{key}"
            if key == "steps":
                r.fail("args.steps", "give steps at the top level, not in args")
            elif not key or len(key) > 64 or not key.replace("_", "").replace("-", "").isalnum():
                r.fail(where, "must be a name of letters, digits, '_' and '-'")
            elif isinstance(value, float) and not math.isfinite(value):
                r.fail(where, f"must be a finite number, got {value}")
            elif isinstance(value, str):
                r.text(where, value)
            elif not isinstance(value, (int, float, bool)):
                r.fail(where, f"must be a string, number or boolean, got {type(value).__name__}")
    elif "command" in data and "workload" not in data:
        if args:
            r.fail("args", "only for a workload; put a command's arguments in 'command'")
        if command is not None:
            if not command or not all(isinstance(part, str) and part for part in command):
                r.fail("command", "must be a non-empty list of non-empty strings")
            else:
                for i, part in enumerate(command):
                    r.text(f"command[{i}]", part)
        if duration_s is None and "duration" not in data and "steps" not in data:
            r.fail("duration", "required for a command: its expected run time, e.g. '20m' (or, for a script "
                               "training through scheduler.train that has a profile, its steps)")

    gpus = data.get("gpus", 1)
    gpus_min = gpus_max = 1
    errors_before = len(r.errors)
    if isinstance(gpus, dict):
        for key in gpus:
            if key not in ("min", "max"):
                r.fail(f"gpus.{key}", "unknown key (known: min, max)")
        low = r.whole("min", 1, MAX_GPUS, gpus, "gpus.")
        high = r.whole("max", 1, MAX_GPUS, gpus, "gpus.")
        gpus_min = 1 if low is None else low
        gpus_max = gpus_min if high is None else high
        if gpus_min > gpus_max:
            r.fail("gpus.min", f"must be <= gpus.max (got {gpus_min} > {gpus_max})")
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        if r.whole("gpus", 1, MAX_GPUS) is not None:
            gpus_min = gpus_max = gpus
    else:
        r.fail("gpus", f"must be a whole number or a table {{min = 1, max = 4}}, got {_show(gpus)}")
    # one error per mistake: a wrong gpus is not also a count that splits over no nodes
    nodes_min, nodes_max = _parse_nodes(r, data.get("nodes", 1), gpus_min, gpus_max,
                                        gpus_ok=len(r.errors) == errors_before)

    horizon = now + timedelta(seconds=MAX_DURATION_S)
    deadline = now + timedelta(seconds=default_max_delay_s)
    if "deadline" in data and "max_delay" in data:
        r.fail("deadline", "give either 'deadline' or 'max_delay', not both")
    elif "deadline" in data:
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
            if deadline <= now:
                raise ValueError(f"{rfc3339(deadline)} is already past (now {rfc3339(now)})")
            if deadline > horizon:
                raise ValueError(f"{rfc3339(deadline)} is more than {MAX_DURATION_S / 86400:.0f} days ahead")
        except OverflowError:
            r.fail("deadline", "is outside the range of dates gsched handles")
        except ValueError as exc:
            r.fail("deadline", str(exc))
    elif "max_delay" in data:
        max_delay_s = r.duration("max_delay")
        if max_delay_s is not None:
            deadline = now + timedelta(seconds=max_delay_s)

    preemptible = r.typed("preemptible", (bool,), "true or false") or False
    overhead = r.typed("resume_overhead_minutes", (int, float), "a number of minutes")
    if overhead is not None and not (math.isfinite(overhead) and 0 <= overhead <= MAX_OVERHEAD_MINUTES):
        r.fail("resume_overhead_minutes", f"must be between 0 and {MAX_OVERHEAD_MINUTES}, got {_show(overhead)}")
    elif overhead is not None and not preemptible:
        r.fail("resume_overhead_minutes", "applies to preemptible jobs only (set preemptible = true)")
    optimisations = _parse_optimisations(r)

    env = r.typed("env", (dict,), "a table of strings") or {}
    for key, value in env.items():
        if not isinstance(value, str):
            r.fail(f"env.{key}", f"must be a string, got {type(value).__name__} {_show(value)}")
        elif not _valid_env_name(key):
            r.fail(f"env.{key[:40]}", "is not a valid environment variable name")
        else:
            r.text(f"env.{key}", value, MAX_ENV_BYTES)
    if sum(len(k) + len(v) for k, v in env.items() if isinstance(v, str)) > MAX_ENV_BYTES:
        r.fail("env", f"is larger than {MAX_ENV_BYTES // 1024} KiB")
    export_raw = r.typed("export", (str, list), '"all", "none" or a list of variable names')
    export: str | tuple[str, ...] = "all"
    if isinstance(export_raw, str):
        if export_raw not in ("all", "none"):
            r.fail("export", f'must be "all", "none" or a list of variable names, got {_show(export_raw)}')
        else:
            export = export_raw
    elif isinstance(export_raw, list):
        bad = [n for n in export_raw if not isinstance(n, str) or not _valid_env_name(n)]
        if bad:
            r.fail("export", f"{_show(bad[0])} is not an environment variable name")
        elif len(export_raw) > 1024:
            r.fail("export", "names more than 1024 variables")
        else:
            export = tuple(export_raw)

    workdir = base_dir
    workdir_raw = r.typed("workdir", (str,), "a directory path") or "."
    if r.text("workdir", workdir_raw, MAX_PATH) and r.text("base_dir", str(base_dir), MAX_PATH):
        try:
            workdir = resolve_dir(base_dir / workdir_raw)
        except ValueError as exc:
            r.fail("workdir", str(exc))
    time_limit_s = r.duration("time_limit")
    after = _parse_after(r, data.get("after"))

    if r.errors:
        raise JobFileError(source, r.errors[0][0], r.errors[0][1], r.errors[1:])
    return JobSpec(
        name=name, deadline=deadline, gpus_min=gpus_min, gpus_max=gpus_max, workdir=str(workdir),
        workload=workload, args=args, command=tuple(command) if command is not None else None, steps=steps,
        duration_s=duration_s, preemptible=preemptible, optimisations=optimisations, env=env, export=export,
        time_limit_s=time_limit_s, resume_overhead_minutes=float(overhead) if overhead is not None else None,
        nodes_min=nodes_min, nodes_max=nodes_max, after=after,
    )


def splits(gpus_min: int, gpus_max: int, nodes_min: int, nodes_max: int) -> list[tuple[int, int]]:
    """Every (GPUs, nodes) a job may run on: its GPUs split evenly over its nodes. Each node count is a divisor of
    its GPU count, found up to the square root: the ranges are a user's to choose (up to 4096 x 1024)."""
    out = []
    for n in range(gpus_min, gpus_max + 1):
        small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
        divisors = sorted({*small, *(n // k for k in small)})
        out += [(n, k) for k in divisors if nodes_min <= k <= nodes_max]
    return out


def _parse_nodes(r: "_Reader", nodes: Any, gpus_min: int, gpus_max: int, gpus_ok: bool) -> tuple[int, int]:
    low = high = 1
    errors_before = len(r.errors)
    if isinstance(nodes, dict):
        for key in nodes:
            if key not in ("min", "max"):
                r.fail(f"nodes.{key}", "unknown key (known: min, max)")
        got_low, got_high = r.whole("min", 1, MAX_NODES, nodes, "nodes."), r.whole("max", 1, MAX_NODES, nodes, "nodes.")
        low = 1 if got_low is None else got_low
        high = low if got_high is None else got_high
        if low > high:
            r.fail("nodes.min", f"must be <= nodes.max (got {low} > {high})")
            return 1, 1
    elif isinstance(nodes, int) and not isinstance(nodes, bool):
        if r.whole("nodes", 1, MAX_NODES) is not None:
            low = high = nodes
    else:
        r.fail("nodes", f"must be a whole number or a table {{min = 1, max = 2}}, got {_show(nodes)}")
        return 1, 1
    if gpus_ok and len(r.errors) == errors_before and not splits(gpus_min, gpus_max, low, high):
        r.fail("nodes", f"no GPU count in gpus ({gpus_min}..{gpus_max}) splits evenly over {low}..{high} node(s): "
                        f"n GPUs on k nodes run n/k on each")
    return low, high


def _parse_after(r: _Reader, raw: Any) -> tuple[Dependency, ...]:
    """``after = [12, 13]`` (afterok), Slurm's ``after = "afterok:12:13,afterany:14"``, or a list mixing both."""
    if raw is None:
        return ()
    try:
        if isinstance(raw, str):
            return dependencies.parse(raw)
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = [raw]
        if not isinstance(raw, list):
            raise ValueError(f"must be a list of job ids or a string such as 'afterok:12:13', got {_show(raw)}")
        found: list[Dependency] = []
        for item in raw:
            found += (dependencies.parse(item) if isinstance(item, str) and not item.strip().isdigit()
                      else [Dependency("afterok", dependencies.job_id(item))])
        return dependencies.unique(found)
    except ValueError as exc:
        r.fail("after", str(exc))
        return ()


def _parse_optimisations(r: _Reader) -> Optimisations:
    table = r.typed("optimisations", (dict,), "a table") or {}
    for key in table:
        if key not in _OPT_KEYS:
            r.fail(f"optimisations.{key}", f"unknown key (known: {', '.join(sorted(_OPT_KEYS))})")
    precision = table.get("precision", ["fp32"])
    if isinstance(precision, str):
        precision = [precision]
    if not isinstance(precision, list) or not precision or any(p not in PRECISIONS for p in precision):
        r.fail("optimisations.precision", f"must be a list drawn from {', '.join(PRECISIONS)}, got {_show(precision)}")
        precision = ["fp32"]
    pruning = table.get("pruning", [0.0])
    if not isinstance(pruning, list) or not pruning or any(
        p != "2:4" and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1) for p in pruning
    ):
        r.fail("optimisations.pruning", f'must be a list of amounts in [0, 1) or "2:4", got {_show(pruning)}')
        pruning = [0.0]
    compile_ = r.typed("compile", (bool,), "true or false", table, "optimisations.") or False
    caps = table.get("power_cap_w", [])
    if not isinstance(caps, list) or any(isinstance(c, bool) or not isinstance(c, int) or not 0 < c <= 10_000
                                         for c in caps):
        r.fail("optimisations.power_cap_w", f"must be a list of watts (whole numbers in 1..10000), got {_show(caps)}")
        caps = []
    return Optimisations(tuple(dict.fromkeys(precision)), tuple(p if p == "2:4" else float(p) for p in pruning),
                         compile_, tuple(caps))


def read_job_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(str(path), "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(str(path), "", f"cannot read: {exc}") from None
