"""A cluster's job history for `gsched simulate`: gsched's own CSV or JSON of submissions, or a Slurm accounting
export (`sacct --parsable2 ...` or `sacct --json`), read into one list of submissions with deadlines from the
operator's stated policy. Every bad row is reported, by line, before anything is simulated.

gsched's format (CSV with a header, or JSON: a list of objects or {"jobs": [...]}); extra columns are ignored:

    submit       RFC 3339 time (required)
    user         who submitted it (required)
    gpus         GPUs it ran on, >= 1 (required)
    run_time     how long it ran on them: seconds or a duration ("90m", "1h30m") (or steps and steps_per_s)
    deadline     RFC 3339, or max_delay (a duration after submit), else the policy's (--slack, --slack-factor)
    preemptible  true/false (default false); gpus_max: it may also run on up to this many GPUs
    after        ids of jobs it ran after ("a:b", "afterok:a:b"; a list in JSON): it starts once they end
    id, name, state

Slurm: `sacct --parsable2 --allusers --format=JobID,JobName,User,Submit,Start,End,Elapsed,Timelimit,AllocTRES,State`
(steps such as 123.batch are skipped, array tasks 123_4 are jobs, jobs that never started are skipped, GPUs from
gres/gpu in AllocTRES, run time from Elapsed; times without an offset are read in --timezone, UTC by default), or
`sacct --json` (the same facts from its jobs list).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.dependencies import MAX_DEPENDENCIES
from scheduler.errors import InputError
from scheduler.planner.pipelines import in_order
from scheduler.timeutil import parse_duration_s, rfc3339

SACCT_COLUMNS = ("JobID", "JobName", "User", "Submit", "Start", "End", "Elapsed", "Timelimit", "AllocTRES", "State")
ENDED_BADLY = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "DEADLINE", "BOOT_FAIL")
MAX_ERRORS_SHOWN = 50


@dataclass(frozen=True)
class Submission:
    id: str
    name: str
    user: str
    submit: datetime  # aware UTC
    gpus: int
    run_s: float  # on ``gpus``
    deadline: datetime | None  # from the history; None: the policy's
    preemptible: bool = False
    gpus_max: int | None = None
    time_limit_s: float | None = None  # Slurm's Timelimit
    state: str = ""
    after: tuple[str, ...] = ()  # ids of the jobs it starts after, once they end
    where: str = ""  # its line (or JSON index) in the history, for errors


@dataclass(frozen=True)
class DeadlinePolicy:
    """Deadlines for jobs whose history has none: submit + run time + ``slack_s``, submit + ``factor`` x run time,
    or submit + the job's own time limit (``from_time_limit``)."""

    slack_s: float | None = None
    factor: float | None = None
    from_time_limit: bool = False

    def deadline(self, job: Submission) -> datetime | None:
        if job.deadline is not None:
            return job.deadline
        if self.from_time_limit and job.time_limit_s:
            return job.submit + timedelta(seconds=max(job.time_limit_s, job.run_s))
        if self.factor is not None:
            return job.submit + timedelta(seconds=self.factor * job.run_s)
        if self.slack_s is not None:
            return job.submit + timedelta(seconds=job.run_s + self.slack_s)
        return None


@dataclass(frozen=True)
class History:
    jobs: list[Submission]
    skipped: dict[str, int]  # why -> how many rows (steps, never started, no GPUs, failed with --drop-failed)
    format: str


class _Rows:
    """Collects every bad row's line before anything is simulated."""

    def __init__(self, source: str) -> None:
        self.source, self.errors = source, []  # type: ignore[var-annotated]

    def fail(self, line: int | str, field: str, message: str) -> None:
        self.errors.append(f"{self.source}:{line}: {field}: {message}")

    def check(self) -> None:
        if self.errors:
            shown = self.errors[:MAX_ERRORS_SHOWN]
            more = len(self.errors) - len(shown)
            raise InputError("\n".join(shown) + (f"\n... and {more} more" if more else "")
                             + f"\n{len(self.errors)} bad row(s): nothing simulated")


def load_history(path: Path, policy: DeadlinePolicy, drop_failed: bool = False, tz: str = "UTC") -> History:
    """Read ``path`` (format from its contents) and give every job a deadline; raises InputError naming each bad
    row by line, all at once."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    try:
        zone: tzinfo = timezone.utc if tz.upper() == "UTC" else ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"--timezone: unknown time zone {tz!r} (e.g. UTC, Europe/Berlin)") from None
    rows = _Rows(str(path))
    skipped: dict[str, int] = {}
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and "jobs" in data and isinstance(data["jobs"], list) and data["jobs"] and \
                isinstance(data["jobs"][0], dict) and ("job_id" in data["jobs"][0] or "time" in data["jobs"][0]):
            kind, jobs = "sacct-json", _sacct_json(data["jobs"], rows, skipped)
        else:
            items = data.get("jobs") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise InputError(f"{path}: expected a list of jobs or {{\"jobs\": [...]}}")
            kind = "json"
            jobs = [job for i, item in enumerate(items)
                    if (job := _own_row(item if isinstance(item, dict) else {}, f"jobs[{i}]", rows, zone,
                                        not isinstance(item, dict))) is not None]
    else:
        first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
        if "|" in first and "JobID" in first:
            kind, jobs = "sacct", _sacct_text(text, rows, skipped, zone)
        else:
            kind, jobs = "csv", _own_csv(text, rows, zone)
    rows.check()
    kept = []
    for job in jobs:
        if drop_failed and any(job.state.upper().startswith(s) for s in ENDED_BADLY):
            skipped["failed or cancelled (--drop-failed)"] = skipped.get("failed or cancelled (--drop-failed)", 0) + 1
            continue
        deadline = policy.deadline(job)
        if deadline is None:
            rows.fail(job.where or job.id, "deadline",
                      "none in the history: state a policy (--slack 24h, --slack-factor 2 or "
                      "--deadline-from timelimit)")
            continue
        if deadline <= job.submit:
            rows.fail(job.where or job.id, "deadline", f"{deadline.isoformat()} is not after its submit time")
            continue
        kept.append(dataclasses.replace(job, deadline=deadline))
    rows.check()
    if not kept:
        raise InputError(f"{path}: no jobs to simulate" + (f" (skipped: {skipped})" if skipped else ""))
    kept = _linked(kept, {job.id for job in jobs}, rows, skipped)
    rows.check()
    return History(kept, skipped, kind)


def _linked(jobs: list[Submission], read: set[str], rows: _Rows, skipped: dict[str, int]) -> list[Submission]:
    """The jobs in submission order, each after its predecessors (a pipeline submitted in one go shares a second).
    A link to a job left out (--drop-failed) is dropped and counted; one to no job, to a job submitted later, to
    an id two jobs share, or around a cycle is an error naming the job."""
    ids: dict[str, int] = {}
    for job in jobs:
        ids[job.id] = ids.get(job.id, 0) + 1
    out = []
    for job in jobs:
        kept_after = []
        for other in job.after:
            if other not in ids:
                if other in read:
                    skipped["'after' links to jobs left out"] = skipped.get("'after' links to jobs left out", 0) + 1
                else:
                    rows.fail(job.where or job.id, "after", f"no job {other!r} in the history")
            elif ids[other] > 1:
                rows.fail(job.where or job.id, "after", f"{ids[other]} jobs have the id {other!r}: give each its own")
            elif other == job.id:
                rows.fail(job.where or job.id, "after", "a job cannot run after itself")
            else:
                kept_after.append(other)
        out.append(dataclasses.replace(job, after=tuple(kept_after)) if kept_after != list(job.after) else job)
    by_id = {job.id: job for job in out}
    for job in out:
        for other in job.after:
            if other in by_id and by_id[other].submit > job.submit:
                rows.fail(job.where or job.id, "after",
                          f"job {other!r} is submitted after it ({rfc3339(by_id[other].submit)})")
    if rows.errors:
        return out
    out.sort(key=lambda j: (j.submit, j.id))
    position = {job.id: k for k, job in enumerate(out)}
    ordered = in_order(list(range(len(out))), [[position[q] for q in job.after] for job in out])
    rank = {k: r for r, k in enumerate(ordered)}
    for k in ordered:  # in_order puts the jobs of a cycle last, in submission order: one of them comes too soon
        if any(rank[position[q]] > rank[k] for q in out[k].after):
            rows.fail(out[k].where or out[k].id, "after", "its 'after' makes a cycle")
    return [out[k] for k in ordered]


# --- gsched's own format ------------------------------------------------------------------------------------------


def _own_csv(text: str, rows: _Rows, zone: tzinfo) -> list[Submission]:
    lines = [line for line in text.splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not numbered:
        raise InputError(f"{rows.source}: empty")
    header_line, header = numbered[0]
    reader = csv.DictReader(io.StringIO("\n".join(line for _n, line in numbered)))
    missing = [c for c in ("submit", "user", "gpus") if c not in (reader.fieldnames or [])]
    if "run_time" not in (reader.fieldnames or []) and "steps" not in (reader.fieldnames or []):
        missing.append("run_time")
    if missing:
        raise InputError(f"{rows.source}:{header_line}: missing column(s) {', '.join(missing)} "
                         f"(have: {header}); see `gsched simulate --help`")
    jobs = []
    for (n, _line), row in zip(numbered[1:], reader):
        if None in row:  # more cells than the header names
            rows.fail(n, "row", f"{len(row) - 1 + len(row[None])} cells, the header has {len(row) - 1}")
            continue
        job = _own_row({k: v for k, v in row.items() if v not in (None, "")}, n, rows, zone)
        if job is not None:
            jobs.append(job)
    return jobs


def _own_row(row: dict[str, Any], line: int | str, rows: _Rows, zone: tzinfo, not_object: bool = False
             ) -> Submission | None:
    if not_object:
        rows.fail(line, "row", "not an object")
        return None
    bad = len(rows.errors)
    submit = _time(row.get("submit"), line, "submit", rows, zone, required=True)
    user = str(row.get("user") or "").strip()
    if not user:
        rows.fail(line, "user", "missing")
    gpus = _whole(row.get("gpus"), line, "gpus", rows, required=True)
    gpus_max = _whole(row.get("gpus_max"), line, "gpus_max", rows)
    if gpus is not None and gpus_max is not None and gpus_max < gpus:
        rows.fail(line, "gpus_max", f"{gpus_max} is below gpus ({gpus})")
    run_s: float | None = None
    if row.get("run_time") is not None:
        run_s = _seconds(row.get("run_time"), line, "run_time", rows)
    elif row.get("steps") is not None:
        steps = _number(row.get("steps"), line, "steps", rows)
        rate = _number(row.get("steps_per_s"), line, "steps_per_s", rows)
        if steps is not None and rate is not None:
            run_s = steps / rate
        elif rate is None and row.get("steps_per_s") is None:
            rows.fail(line, "steps_per_s", "needed with steps (the profile's speed on its GPUs)")
    else:
        rows.fail(line, "run_time", "missing (or give steps and steps_per_s)")
    deadline = _time(row.get("deadline"), line, "deadline", rows, zone)
    if deadline is None and row.get("max_delay") is not None and submit is not None:
        delay = _seconds(row.get("max_delay"), line, "max_delay", rows)
        if delay is not None and run_s is not None:
            deadline = submit + timedelta(seconds=delay + run_s)
    preemptible = row.get("preemptible", False)
    if isinstance(preemptible, str):
        if preemptible.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            rows.fail(line, "preemptible", f"{preemptible!r} is not true or false")
        preemptible = preemptible.strip().lower() in ("true", "1", "yes")
    elif not isinstance(preemptible, bool):
        rows.fail(line, "preemptible", "must be true or false")
    after = _after(row.get("after"), line, rows)
    if len(rows.errors) > bad or submit is None or gpus is None or run_s is None:
        return None
    return Submission(str(row.get("id") or f"{line}")[:64], str(row.get("name") or f"job-{line}")[:64], user[:64], submit,
                      gpus, run_s, deadline, bool(preemptible), gpus_max, None, str(row.get("state") or ""), after,
                      str(line))


_KINDS = ("afterok", "afterany", "afternotok")


def _after(value: Any, line: int | str, rows: _Rows) -> tuple[str, ...]:
    """The ids a job ran after: "a:b" or "a b" (a kind first, as sbatch writes it, is allowed: in a history the job
    ran, so whatever the kind it starts once they end), or a JSON list of ids."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, list):
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            rows.fail(line, "after", "must be a list of job ids")
            return ()
        parts = [str(v).strip() for v in value]
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        parts = [part for part in re.split(r"[\s:;,]+", str(value).strip()) if part not in _KINDS]
    else:
        rows.fail(line, "after", "must be job ids such as 'a:b' or a list of them")
        return ()
    if any(not part or len(part) > 64 for part in parts):
        rows.fail(line, "after", f"{str(value)[:80]!r}: each id must be 1 to 64 characters")
        return ()
    if len(set(parts)) > MAX_DEPENDENCIES:
        rows.fail(line, "after", f"{len(set(parts))} jobs; at most {MAX_DEPENDENCIES}")
        return ()
    return tuple(dict.fromkeys(parts))


def _time(value: Any, line: int | str, field: str, rows: _Rows, zone: tzinfo, required: bool = False
          ) -> datetime | None:
    if value is None or value == "":
        if required:
            rows.fail(line, field, "missing")
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), timezone.utc)
        text = str(value).strip()
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):
        rows.fail(line, field, f"{value!r} is not a time (RFC 3339, e.g. 2024-03-01T09:30:00Z)")
        return None


def _number(value: Any, line: int | str, field: str, rows: _Rows) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        rows.fail(line, field, f"{value!r} is not a number")
        return None
    if not number > 0 or number == float("inf"):
        rows.fail(line, field, f"{value!r} must be > 0")
        return None
    return number


def _whole(value: Any, line: int | str, field: str, rows: _Rows, required: bool = False) -> int | None:
    if value is None or value == "":
        if required:
            rows.fail(line, field, "missing")
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        rows.fail(line, field, f"{value!r} is not a whole number")
        return None
    if number < 1:
        rows.fail(line, field, f"{number} must be >= 1")
        return None
    return number


def _seconds(value: Any, line: int | str, field: str, rows: _Rows) -> float | None:
    try:
        seconds = float(value) if not isinstance(value, str) or re.fullmatch(r"\s*[\d.]+\s*", value) \
            else parse_duration_s(value)
    except (TypeError, ValueError):
        rows.fail(line, field, f"{value!r} is not seconds or a duration (e.g. 5400, '90m', '1h30m')")
        return None
    if not 0 < seconds < 400 * 86400:
        rows.fail(line, field, f"{value!r} must be more than 0 and under 400 days")
        return None
    return seconds


# --- Slurm accounting ----------------------------------------------------------------------------------------------

_ELAPSED = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?$")
_GPU_TRES = re.compile(r"(?:^|,)gres/gpu(?::[^=,]+)?=(\d+)")


def slurm_duration_s(text: str) -> float | None:
    """Slurm's [D-]HH:MM:SS (or MM:SS) -> seconds; None for UNLIMITED and the like."""
    match = _ELAPSED.match(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _gpus_of_tres(tres: str) -> int:
    """GPUs in an AllocTRES string: gres/gpu=2, or per type (gres/gpu:a100=2) summed without the untyped count."""
    typed = [int(n) for n in re.findall(r"(?:^|,)gres/gpu:[^=,]+=(\d+)", tres)]
    plain = [int(n) for n in re.findall(r"(?:^|,)gres/gpu=(\d+)", tres)]
    return plain[0] if plain else sum(typed)


def _sacct_text(text: str, rows: _Rows, skipped: dict[str, int], zone: tzinfo) -> list[Submission]:
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if "|" in line and "JobID" in line)
    header = lines[header_at].split("|")
    missing = [c for c in SACCT_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{rows.source}:{header_at + 1}: missing column(s) {', '.join(missing)}; export with "
                         f"sacct --parsable2 --allusers --format={','.join(SACCT_COLUMNS)}")
    at = {name: header.index(name) for name in SACCT_COLUMNS}
    jobs = []
    for n, line in enumerate(lines[header_at + 1:], header_at + 2):
        if not line.strip():
            continue
        cells = line.split("|")
        if len(cells) < len(header):
            rows.fail(n, "row", f"{len(cells)} fields, the header has {len(header)}")
            continue
        row = {name: cells[i].strip() for name, i in at.items()}
        job = _sacct_row(row["JobID"], row["JobName"], row["User"], row["Submit"], row["Start"], row["End"],
                         slurm_duration_s(row["Elapsed"]) if row["Elapsed"] else None, row["Elapsed"],
                         slurm_duration_s(row["Timelimit"]) if row["Timelimit"] else None,
                         row["AllocTRES"], row["State"], n, rows, skipped, zone)
        if job is not None:
            jobs.append(job)
    return jobs


def _sacct_row(job_id: str, name: str, user: str, submit_text: Any, start_text: Any, end_text: Any,
               elapsed_s: float | None, elapsed_text: str, limit_s: float | None, tres: str, state: str,
               line: int | str, rows: _Rows, skipped: dict[str, int], zone: tzinfo) -> Submission | None:
    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    if "." in job_id:  # a step (123.batch, 123.extern, 123.0): its job's row counts
        skip("job steps")
        return None
    if "[" in job_id:  # an array's pending remainder, 123_[5-9]: never ran
        skip("never started")
        return None
    if str(start_text).strip() in ("", "Unknown", "None", "0") or state.upper().startswith("PENDING"):
        skip("never started")
        return None
    bad = len(rows.errors)
    submit = _time(submit_text, line, "Submit", rows, zone, required=True)
    start = _time(start_text, line, "Start", rows, zone, required=True)
    end = None if str(end_text).strip() in ("", "Unknown", "None", "0") else _time(end_text, line, "End", rows, zone)
    if elapsed_s is None:
        rows.fail(line, "Elapsed", f"{elapsed_text!r} is not [D-]HH:MM:SS")
    if not user:
        rows.fail(line, "User", "missing")
    if start is not None and end is not None and end < start:
        rows.fail(line, "End", f"{end_text} is before its Start {start_text}")
    if submit is not None and start is not None and start < submit:
        rows.fail(line, "Start", f"{start_text} is before its Submit {submit_text}")
    gpus = _gpus_of_tres(tres)
    if re.search(r"gres/gpu(?::[^=,]+)?=-", tres):
        rows.fail(line, "AllocTRES", f"negative GPU count in {tres!r}")
    if len(rows.errors) > bad or submit is None or elapsed_s is None:
        return None
    if gpus == 0:
        skip("no GPUs (gres/gpu) in AllocTRES")
        return None
    if elapsed_s <= 0:
        skip("ran for 0 s")
        return None
    return Submission(job_id, (name or job_id)[:64], user[:64], submit, gpus, elapsed_s, None, False, None, limit_s,
                      state.split()[0] if state else "", (), str(line))


def _sacct_json(items: list[Any], rows: _Rows, skipped: dict[str, int]) -> list[Submission]:
    jobs = []
    for i, item in enumerate(items):
        where = f"jobs[{i}]"
        if not isinstance(item, dict):
            rows.fail(where, "job", "not an object")
            continue
        times, array = _dict(item.get("time")), _dict(item.get("array"))
        task, parent = _number_of(array.get("task_id")), _number_of(array.get("job_id"))
        job_id = str(item.get("job_id", ""))
        if task is not None and parent:  # an array's task: its id as sacct's text export writes it
            job_id = f"{int(parent)}_{int(task)}"
        state = item.get("state")
        state_text = str((state.get("current") if isinstance(state, dict) else state) or "")
        if isinstance(state_text, list):
            state_text = " ".join(map(str, state_text))
        state_text = state_text.strip("[]'\" ")
        limit = times.get("limit")
        limit_min = _number_of(limit.get("number") if isinstance(limit, dict) and limit.get("set", True)
                               and not limit.get("infinite") else limit)
        gpus = 0
        tres = _dict(item.get("tres"))
        for entry in tres.get("allocated") or []:
            if isinstance(entry, dict) and entry.get("type") == "gres" and str(entry.get("name", "")).startswith("gpu"):
                count = _number_of(entry.get("count"))
                gpus += int(count) if count is not None else 0
                if count is not None and count < 0:
                    rows.fail(where, "tres.allocated", "negative GPU count")
        tres_text = f"gres/gpu={gpus}"
        start = _number_of(times.get("start"))
        job = _sacct_row(job_id, str(item.get("name") or ""), str(item.get("user") or ""),
                         _number_of(times.get("submission")), start or "Unknown",
                         _number_of(times.get("end")) or "Unknown",
                         _number_of(times.get("elapsed")), str(times.get("elapsed")),
                         limit_min * 60 if limit_min is not None else None, tres_text, state_text, where, rows,
                         skipped, timezone.utc)
        if job is not None:
            jobs.append(job)
    return jobs


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number_of(value: Any) -> float | None:
    """A number, or Slurm 23+'s {"set": true, "number": n}; None when unset."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
