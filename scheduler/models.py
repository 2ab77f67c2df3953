"""SQLModel tables and the job state machine (Slurm's state names, plus PLANNED)."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class JobState(str, enum.Enum):
    PENDING = "PENDING"  # queued, not planned yet (or waiting for devices with no window in sight)
    PLANNED = "PLANNED"  # has a planned start and device count; waits for its window
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # stopped at a checkpoint, back in the queue
    TIMEOUT = "TIMEOUT"  # killed at its time_limit


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})
_QUEUED = {JobState.PENDING, JobState.PLANNED, JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}
ALLOWED = {
    JobState.PENDING: _QUEUED,
    JobState.PLANNED: _QUEUED,
    JobState.PREEMPTED: _QUEUED,
    JobState.RUNNING: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT,
                       JobState.PREEMPTED},
}


class UTCDateTime(sa.types.TypeDecorator):
    """Stores UTC without an offset (SQLite has no zone) and hands back aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("gsched stores aware UTC datetimes only")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _time(index: bool = False, nullable: bool = True) -> object:
    return Field(default=None, sa_type=UTCDateTime, index=index, nullable=nullable)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    owner_uid: int = Field(index=True)
    owner_name: str
    state: JobState = Field(index=True)
    spec_json: str
    gpus_min: int
    gpus_max: int
    urgent: bool = False
    deadline: datetime = _time()  # type: ignore[assignment]
    submitted_at: datetime = _time()  # type: ignore[assignment]
    planned_start: datetime | None = _time()  # type: ignore[assignment]
    planned_end: datetime | None = _time()  # type: ignore[assignment]
    planned_gpus: int | None = None
    plan_reason: str | None = None
    plan_json: str | None = None  # the chosen mode and segments, for show, dispatch and hysteresis
    started_at: datetime | None = _time()  # type: ignore[assignment]
    finished_at: datetime | None = _time()  # type: ignore[assignment]
    gpus: int | None = None
    devices_json: str | None = None
    # The current run's handle (executor/base.py): written by the executor before its run starts and kept until
    # the run ends, so a restarted daemon recovers the run from it. Opaque to everything but the executor.
    run_handle: str | None = None
    cancel_requested: bool = False
    preempt_requested: bool = False  # `gsched requeue`: checkpoint, then back to the queue
    preempt_reason: str | None = None  # why the running job is being checkpointed: a planned pause, a preemption
    exit_code: int | None = None
    reason: str | None = None


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    at: datetime = _time()  # type: ignore[assignment]
    state: JobState
    reason: str = ""


class Measurement(SQLModel, table=True):
    """One run of a job (a requeued job has several): what was measured, and its cost from the signals."""

    __tablename__ = "measurements"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    started_at: datetime = _time()  # type: ignore[assignment]
    finished_at: datetime = _time()  # type: ignore[assignment]
    duration_s: float
    energy_j: float
    energy_source: str
    cost_eur: float | None = None
    co2_g: float | None = None
    metrics_json: str = "{}"
    gpus: int | None = None  # devices this run had
    mode_json: str | None = None  # the mode it ran in (precision, pruning, power cap), as planned
    steps: int | None = None  # the job's step count when this run ended (from its metrics)


class Meta(SQLModel, table=True):
    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str


class ForecastPoint(SQLModel, table=True):
    """One cached step of one signal from one provider; a newer fetch of the same step replaces it."""

    __tablename__ = "forecast_points"
    __table_args__ = (sa.UniqueConstraint("provider", "signal", "start"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(index=True)
    signal: str = Field(index=True)
    start: datetime = _time(index=True)  # type: ignore[assignment]
    step_s: int
    value: float | None = None
    currency: str | None = None
    fetched_at: datetime = _time()  # type: ignore[assignment]


class Profile(SQLModel, table=True):
    """A measured mode of a workload, per owner: what the planner uses instead of the default scaling model."""

    __tablename__ = "profiles"
    __table_args__ = (sa.UniqueConstraint("key", "owner_uid", "device_kind", "gpus", "precision", "pruning",
                                          "compile", "power_limit_w"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True)  # the workload and its arguments but the seed, as canonical JSON
    owner_uid: int = 0  # whose runs measured it: profiles plan only their owner's jobs
    device_kind: str
    gpus: int
    precision: str
    pruning: str  # "0", an L1 amount such as "0.5", or "2:4" (jobfile.pruning_label)
    compile: bool
    power_limit_w: int = 0  # 0: the device's own limit
    steps_per_s: float
    watts: float  # mean power over the run
    energy_source: str
    runs: int = 1
    measured_at: datetime = _time()  # type: ignore[assignment]
