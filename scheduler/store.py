"""The database: the only record of job state. SQLite in WAL mode, shared by the daemon's threads.

Why BEGIN IMMEDIATE: a deferred BEGIN takes the write lock only at the first write, and two
transactions that both read first then fail with "database is locked" instead of waiting. An
immediate BEGIN waits (up to busy_timeout) for the lock before reading anything. Reads use a
second engine with a plain deferred BEGIN, so they never queue behind writers (WAL snapshots).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.dialects.sqlite
from sqlalchemy import event
from sqlmodel import Session, SQLModel, col, func, select

from scheduler.errors import Conflict, NotFound, StoreError
from scheduler.jobfile import JobSpec
from scheduler.models import (ALLOWED, TERMINAL, ForecastPoint, Job, JobEvent, JobState, Measurement, Meta,
                              Profile)
from scheduler.timeutil import to_utc

SCHEMA_VERSION = 6
_SECOND = timedelta(seconds=1)
BUSY_TIMEOUT_MS = 10_000


def _rebuild_profiles(conn: sa.Connection) -> None:
    """Recreate the profiles table in the current shape and copy the rows over: v1 stored pruning as a number
    (now text: "0.5", "2:4"); before v3 profiles had no owner (kept as root's, so no user's old measurements
    plan another user's jobs)."""
    old = {row[1]: row[2].upper() for row in conn.exec_driver_sql("PRAGMA table_info(profiles)").fetchall()}
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_profiles_key")  # the new table's index takes its name
    conn.exec_driver_sql("ALTER TABLE profiles RENAME TO profiles_old")
    Profile.__table__.create(conn)  # type: ignore[attr-defined]
    columns = [c.name for c in Profile.__table__.columns]  # type: ignore[attr-defined]
    values = []
    for c in columns:
        if c == "pruning" and old.get(c) in ("FLOAT", "REAL"):
            values.append("printf('%g', pruning)")
        elif c == "owner_uid" and c not in old:
            values.append("0")
        else:
            values.append(c)
    conn.exec_driver_sql(f"INSERT INTO profiles ({', '.join(columns)}) SELECT {', '.join(values)} FROM profiles_old")
    conn.exec_driver_sql("DROP TABLE profiles_old")


def _runs_and_owned_profiles(conn: sa.Connection) -> None:
    """v2 -> v3: a job's run has a token (exactly-once starts); profiles belong to an owner."""
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN run_token VARCHAR")
    _rebuild_profiles(conn)


def _elastic_runs(conn: sa.Connection) -> None:
    """v3 -> v4: each run records its devices, mode and steps; a running job records why it is checkpointed."""
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN preempt_reason VARCHAR")
    for column, kind in (("gpus", "INTEGER"), ("mode_json", "VARCHAR"), ("steps", "INTEGER")):
        conn.exec_driver_sql(f"ALTER TABLE measurements ADD COLUMN {column} {kind}")


def _slurm_jobs(conn: sa.Connection) -> None:
    """v4 -> v5: a job handed to Slurm records its token, Slurm job id, submitted mode, run number and nodes."""
    for column, kind in (("slurm_token", "VARCHAR"), ("slurm_job_id", "INTEGER"), ("slurm_mode_json", "VARCHAR"),
                         ("slurm_restarts", "INTEGER"), ("slurm_nodes", "VARCHAR")):
        conn.exec_driver_sql(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


_V5_RUN_COLUMNS = ("runner_pid", "runner_start_ticks", "run_token", "power_restore_json", "slurm_token",
                   "slurm_job_id", "slurm_mode_json", "slurm_restarts", "slurm_nodes")


def _run_handles(conn: sa.Connection) -> None:
    """v5 -> v6: one run handle per job (executor/base.py) instead of the local and Slurm executors' own columns. A
    job running under the old schema keeps its run: its columns become the handle its executor recovers from."""
    conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN run_handle VARCHAR")
    rows = conn.exec_driver_sql(f"SELECT id, {', '.join(_V5_RUN_COLUMNS)} FROM jobs").fetchall()
    for row in rows:
        old = dict(zip(_V5_RUN_COLUMNS, row[1:]))
        handle: dict[str, Any] | None = None
        if old["slurm_token"]:
            handle = {"token": old["slurm_token"], "slurm_job_id": old["slurm_job_id"],
                      "mode": json.loads(old["slurm_mode_json"]) if old["slurm_mode_json"] else None,
                      "restarts": old["slurm_restarts"], "nodes": old["slurm_nodes"]}
        elif old["run_token"]:
            handle = {"token": old["run_token"], "pid": old["runner_pid"], "start_ticks": old["runner_start_ticks"]}
            if old["power_restore_json"]:
                handle["power_restore"] = json.loads(old["power_restore_json"])
        if handle is not None:
            conn.exec_driver_sql("UPDATE jobs SET run_handle = ? WHERE id = ?", (json.dumps(handle), row[0]))
    for column in _V5_RUN_COLUMNS:
        conn.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")


# from_version -> the step that brings a database to from_version + 1, inside the same transaction.
MIGRATIONS: dict[int, Callable[[sa.Connection], None]] = {1: _rebuild_profiles, 2: _runs_and_owned_profiles,
                                                          3: _elastic_runs, 4: _slurm_jobs, 5: _run_handles}
FIX_HINT = ("stop the daemon, move the file aside (keep it for recovery, e.g. with sqlite3's .recover), then "
            "start again for an empty queue, or restore a backup")


def _engine(path: Path, begin: str) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False,
                                                                  "timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Store:
    def __init__(self, path: Path, check: bool = False) -> None:
        """``check``: the daemon's start verifies the whole file (SQLite's quick_check) and refuses a damaged
        or empty one, naming it and what to do, before anything is written."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if check and path.exists() and path.stat().st_size == 0:
            raise StoreError(f"{path}: is empty (0 bytes) where a gsched database was expected; {FIX_HINT}")
        self._writer = _engine(path, "BEGIN IMMEDIATE")
        self._reader = _engine(path, "BEGIN")
        try:
            if check:
                self._check()
            self._migrate()
        except sa.exc.DatabaseError as exc:
            self.close()
            raise StoreError(f"{path}: not a usable gsched database: {exc.orig}; {FIX_HINT}") from exc

    def _check(self) -> None:
        with self._reader.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise StoreError(f"{self.path}: is damaged (SQLite quick_check: {'; '.join(rows[:3])}); {FIX_HINT}")

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    def _migrate(self) -> None:
        with self._writer.begin() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if "meta" not in tables:
                if tables:
                    raise StoreError(f"{self.path}: has tables but no gsched schema version; not touching it")
                SQLModel.metadata.create_all(conn)
                conn.execute(sa.insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar_one())
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema v{version} is newer than this gsched (v{SCHEMA_VERSION});"
                                 " upgrade gsched")
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(sa.update(Meta).where(col(Meta.key) == "schema_version").values(value=str(version)))

    @property
    def schema_version(self) -> int:
        return int(self.meta("schema_version") or 0)

    def meta(self, key: str) -> str | None:
        with self.read() as s:
            return s.exec(select(Meta.value).where(Meta.key == key)).first()

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as s:
            s.merge(Meta(key=key, value=value))

    @contextmanager
    def write(self) -> Iterator[Session]:
        try:
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                yield session
        except sa.exc.OperationalError as exc:  # full disk, lock timeout, damaged file: say which file
            raise StoreError(f"the database {self.path} refused a write: {exc.orig}") from exc

    @contextmanager
    def read(self) -> Iterator[Session]:
        try:
            with Session(self._reader, expire_on_commit=False) as session, session.begin():
                yield session
        except sa.exc.OperationalError as exc:
            raise StoreError(f"the database {self.path} refused a read: {exc.orig}") from exc

    # --- jobs -------------------------------------------------------------------------------------

    def add_job(self, spec: JobSpec, *, owner_uid: int, owner_name: str, urgent: bool, now: datetime) -> Job:
        job = Job(name=spec.name, owner_uid=owner_uid, owner_name=owner_name, state=JobState.PENDING,
                  spec_json=json.dumps(spec.to_json()), gpus_min=spec.gpus_min, gpus_max=spec.gpus_max,
                  urgent=urgent, deadline=spec.deadline, submitted_at=now)
        with self.write() as s:
            s.add(job)
            s.flush()
            assert job.id is not None  # the flush assigned it
            s.add(JobEvent(job_id=job.id, at=now, state=JobState.PENDING, reason="submitted"))
        return job

    def get(self, job_id: int) -> Job:
        with self.read() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def jobs(self, states: Sequence[JobState] | None = None, owner_uid: int | None = None,
             newest: int | None = None) -> list[Job]:
        """Jobs by id, oldest first; with ``newest``, only that many of the latest ones."""
        query = select(Job).order_by(col(Job.id).desc() if newest is not None else col(Job.id))
        if states is not None:
            query = query.where(col(Job.state).in_(list(states)))
        if owner_uid is not None:
            query = query.where(Job.owner_uid == owner_uid)
        if newest is not None:
            query = query.limit(newest)
        with self.read() as s:
            found = list(s.exec(query).all())
        return found[::-1] if newest is not None else found

    def transition(self, job_id: int, to: JobState, *, at: datetime, reason: str,
                   expect: Sequence[JobState] | None = None, **fields: Any) -> Job:
        """Move a job to ``to`` and record the event, in one transaction; refuses moves the machine forbids."""
        with self.write() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            allowed = expect if expect is not None else [st for st, nxt in ALLOWED.items() if to in nxt]
            if job.state not in allowed:
                raise Conflict(f"job {job_id} is {job.state.value}; cannot become {to.value}")
            changed = job.state != to
            job.state, job.reason = to, reason
            for key, value in fields.items():
                setattr(job, key, value)
            if changed:
                s.add(JobEvent(job_id=job_id, at=at, state=to, reason=reason))
            s.add(job)
        return job

    def states(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """The state of each of these jobs that exists."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.read() as s:
            return {i: JobState(st) for i, st in s.exec(select(Job.id, Job.state).where(col(Job.id).in_(ids))).all()
                    if i is not None}

    def dependents(self, job_id: int) -> list[Job]:
        """The jobs that wait, or waited, for this one (their job file's ``after``)."""
        pattern = f'%"job_id": {int(job_id)}}}%'
        with self.read() as s:
            return list(s.exec(select(Job).where(col(Job.spec_json).like(pattern)).order_by(col(Job.id))).all())

    def update(self, job_id: int, **fields: Any) -> Job:
        """Change fields without a state change (plans, runner pid, cancel flag)."""
        with self.write() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            for key, value in fields.items():
                setattr(job, key, value)
            s.add(job)
        return job

    def save_plans(self, plans: dict[int, dict[str, Any]], *, at: datetime) -> None:
        """Write many jobs' plans in one transaction; jobs that left the queue meanwhile are skipped."""
        with self.write() as s:
            for job_id, fields in plans.items():
                job = s.get(Job, job_id)
                if job is None or job.state not in (JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED):
                    continue
                to = fields.pop("state")
                if to != job.state:
                    s.add(JobEvent(job_id=job_id, at=at, state=to, reason=fields.get("plan_reason") or ""))
                    job.state = to
                for key, value in fields.items():
                    setattr(job, key, value)
                s.add(job)

    def set_handle(self, job_id: int, handle: dict[str, Any] | None) -> Job:
        """An executor records its run's handle (an intent before the run starts, then what it learned)."""
        return self.update(job_id, run_handle=None if handle is None else json.dumps(handle))

    def note(self, job_id: int, *, at: datetime, reason: str) -> None:
        """An event without a state change (a re-adopted runner, say)."""
        with self.write() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            s.add(JobEvent(job_id=job_id, at=at, state=job.state, reason=reason))

    def record(self, job_id: int) -> tuple[Job, list[Measurement], list[JobEvent], dict[str, Any] | None]:
        """A job with its runs, events and totals, read together: a run that ends between reads cannot show the job
        in one state and its events in another."""
        with self.read() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            runs = list(s.exec(select(Measurement).where(Measurement.job_id == job_id).order_by(col(Measurement.id))))
            events = list(s.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))))
            totals = _totals(s, [job_id]).get(job_id)
        return job, runs, events, totals

    def events(self, job_id: int) -> list[JobEvent]:
        with self.read() as s:
            return list(s.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))).all())

    # --- measurements -------------------------------------------------------------------------------

    def finish(self, job_id: int, to: JobState, *, at: datetime, reason: str, measurement: Measurement | None,
               **fields: Any) -> Job:
        """End a run: the state change, its event and its measurement land together or not at all."""
        if to not in TERMINAL and to != JobState.PREEMPTED:
            raise ValueError(f"{to} does not end a run")
        with self.write() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if job.state != JobState.RUNNING:
                raise Conflict(f"job {job_id} is {job.state.value}; cannot become {to.value}")
            job.state, job.reason = to, reason
            for key, value in fields.items():
                setattr(job, key, value)
            s.add(job)
            s.add(JobEvent(job_id=job_id, at=at, state=to, reason=reason))
            if measurement is not None:
                measurement.job_id = job_id
                s.add(measurement)
        return job

    def measurements(self, job_id: int) -> list[Measurement]:
        with self.read() as s:
            return list(s.exec(select(Measurement).where(Measurement.job_id == job_id)
                               .order_by(col(Measurement.id))).all())

    def steps_done(self, job_ids: Sequence[int]) -> dict[int, int]:
        """The most steps any run of each job reported, for the jobs that reported some."""
        out: dict[int, int] = {}
        with self.read() as s:
            for k in range(0, len(job_ids), 500):  # within SQLite's bound on an IN list's variables
                rows = s.exec(select(Measurement.job_id, func.max(Measurement.steps))
                              .where(col(Measurement.job_id).in_(job_ids[k:k + 500]))
                              .group_by(col(Measurement.job_id))).all()
                out.update({job_id: steps for job_id, steps in rows if steps})
        return out

    def count_by_state(self) -> dict[JobState, int]:
        with self.read() as s:
            rows = s.exec(select(Job.state, func.count()).group_by(col(Job.state))).all()
            return {JobState(state): n for state, n in rows}

    def first_starts(self) -> list[tuple[datetime, datetime]]:
        """(submitted_at, first start) of every job that has started: its first run, or its current one."""
        with self.read() as s:
            firsts = dict(s.exec(select(Measurement.job_id, func.min(Measurement.started_at))
                                 .group_by(col(Measurement.job_id))).all())
            rows = s.exec(select(Job.id, Job.submitted_at, Job.started_at)).all()
        out = []
        for job_id, submitted, started in rows:
            first = (firsts.get(job_id) if job_id is not None else None) or started
            if first is not None:
                out.append((to_utc(submitted), to_utc(first)))
        return out

    def energy_by_source(self) -> dict[str, tuple[float, float, float]]:
        """energy_source -> (joules, cost, gCO2) over every finished run."""
        with self.read() as s:
            rows = s.exec(select(Measurement.energy_source, func.sum(Measurement.energy_j),
                                 func.coalesce(func.sum(Measurement.cost_eur), 0.0),
                                 func.coalesce(func.sum(Measurement.co2_g), 0.0))
                          .group_by(Measurement.energy_source)).all()
        return {source: (float(j or 0), float(c or 0), float(g or 0)) for source, j, c, g in rows}

    def runs_of(self, job_ids: Sequence[int]) -> dict[int, list[Measurement]]:
        """Each job's runs, oldest first, in one query."""
        out: dict[int, list[Measurement]] = {}
        with self.read() as s:
            for m in s.exec(select(Measurement).where(col(Measurement.job_id).in_(list(job_ids)))
                            .order_by(col(Measurement.id))).all():
                out.setdefault(m.job_id, []).append(m)
        return out

    def totals(self, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """energy_j, cost_eur, co2_g summed over each job's runs; energy_source of the last run."""
        if not job_ids:
            return {}
        with self.read() as s:
            return _totals(s, job_ids)

    # --- forecast cache -----------------------------------------------------------------------------------

    def save_series(self, provider: str, signal: str, start: datetime, step_s: int, values: Sequence[float | None],
                    currency: str | None, fetched_at: datetime) -> None:
        rows = [{"provider": provider, "signal": signal, "start": start + (i * step_s) * _SECOND, "step_s": step_s,
                 "value": v, "currency": currency, "fetched_at": fetched_at} for i, v in enumerate(values)]
        if not rows:
            return
        table = ForecastPoint.__table__  # type: ignore[attr-defined]  # SQLModel's table classes have one
        statement = sa.dialects.sqlite.insert(table).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["provider", "signal", "start"],
            set_={key: statement.excluded[key] for key in ("step_s", "value", "currency", "fetched_at")})
        with self.write() as s:
            s.execute(statement)

    def forecast_points(self, signal: str, start: datetime, end: datetime) -> list[ForecastPoint]:
        query = (select(ForecastPoint).where(ForecastPoint.signal == signal, ForecastPoint.start < end,
                                             ForecastPoint.start >= start - 86400 * _SECOND)
                 .order_by(col(ForecastPoint.start)))
        with self.read() as s:
            return list(s.exec(query).all())

    # --- profiles -----------------------------------------------------------------------------------------

    def record_profile(self, profile: Profile) -> None:
        """Keep the latest measurement of each (workload, arguments, device kind, mode)."""
        with self.write() as s:
            old = s.exec(select(Profile).where(
                Profile.key == profile.key, Profile.owner_uid == profile.owner_uid, Profile.device_kind == profile.device_kind, Profile.gpus == profile.gpus,
                Profile.precision == profile.precision, Profile.pruning == profile.pruning,
                Profile.compile == profile.compile, Profile.power_limit_w == profile.power_limit_w)).first()
            if old is not None:
                profile.runs = old.runs + 1
                s.delete(old)
                s.flush()
            s.add(profile)

    def profiles(self, key: str, device_kind: str, owner_uid: int) -> list[Profile]:
        with self.read() as s:
            return list(s.exec(select(Profile).where(Profile.key == key, Profile.device_kind == device_kind,
                                                     Profile.owner_uid == owner_uid)).all())

    def count_queued(self, owner_uid: int) -> int:
        with self.read() as s:
            return int(s.exec(select(func.count()).select_from(Job).where(
                Job.owner_uid == owner_uid, col(Job.state).in_([JobState.PENDING, JobState.PLANNED, JobState.PREEMPTED]))).one())


def _totals(s: Session, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    # sqlmodel's select() is typed for at most four columns
    query = (select(Measurement.job_id, func.sum(Measurement.energy_j),  # type: ignore[call-overload]
                    func.sum(Measurement.cost_eur), func.sum(Measurement.co2_g), func.max(Measurement.id))
             .where(col(Measurement.job_id).in_(list(job_ids))).group_by(col(Measurement.job_id)))
    rows = s.exec(query).all()
    sources = dict(s.exec(select(Measurement.id, Measurement.energy_source)
                          .where(col(Measurement.id).in_([row[4] for row in rows]))).all())
    return {row[0]: {"energy_j": row[1], "cost_eur": row[2], "co2_g": row[3], "energy_source": sources[row[4]]}
            for row in rows}
