"""What the daemon asks of an executor (local processes, Slurm), and what an executor reports back.

The shape is Nomad's task drivers: starting a run returns a *handle* (a small JSON object, opaque to the daemon)
that the store keeps on the job; after a restart the executor recovers from it (re-attaches, or says the run is
gone). Executors report what they saw (observations); the daemon decides what it means for the job (outcomes.py).
Executors never change a job's state; they write only their own handle and informational events.

A start has two steps so that it happens exactly once: ``prepare`` returns the intent (a handle with a fresh
token), the daemon records it, then ``start`` acts. A daemon killed between the two finds the intent at its next
``recover`` and the executor says whether the run began (``Started``/``Ended``...) or never will (``NeverStarted``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from scheduler.devices import Device
from scheduler.errors import GschedError
from scheduler.jobfile import JobSpec
from scheduler.models import Job, JobState

Handle = dict[str, Any]


class LaunchDeferred(GschedError):
    """The executor cannot take the job now (Slurm refused sbatch): it stays queued, saying why, and is offered
    again later."""


class LaunchFailed(GschedError):
    """The job can never start as it is (its owner has no name here, its run cannot be prepared): it fails."""


@dataclass(frozen=True)
class Capabilities:
    # The executor holds a job from its plan on (Slurm's --begin) and starts it itself: the daemon hands a job
    # over once planned, moves its start on replans (retime) and learns of its start from an observation. Without
    # it the daemon starts a job when its planned start is due, and the job is RUNNING from that moment.
    holds_pending: bool


@dataclass(frozen=True)
class Intent:
    """A start about to happen: the handle to record first, and the devices it takes."""

    handle: Handle
    gpus: int
    devices: list[str] = field(default_factory=list)  # device ids, where the executor chooses them
    where: str = ""


# --- observations: what an executor saw, for the daemon to apply ---------------------------------------------


@dataclass(frozen=True)
class Started:
    """Held work began to run (holds_pending executors)."""

    job_id: int
    at: datetime | None  # on the daemon's clock; None: now
    gpus: int | None
    where: str
    handle: Handle


@dataclass(frozen=True)
class Ended:
    """A run ended and left a result (raw and untrusted: parsed by untrusted.parse_result). ``said``: the executor
    stopped the run itself (a time limit, a node failure, its own requeue): its state and words, unless all of the
    job's steps ran."""

    job_id: int
    raw: Any
    said: tuple[JobState, str] | None = None


@dataclass(frozen=True)
class Lost:
    """A run ended and left no result. ``state``: how the executor ended it, where it says (else FAILED)."""

    job_id: int
    reason: str
    state: JobState | None = None


@dataclass(frozen=True)
class Requeued:
    """A run went back to the executor's own queue without leaving a result (Slurm's requeue after a node failure)."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Dropped:
    """Held work ended before it ran: an administrator cancelled it, or the executor gave up on it."""

    job_id: int
    reason: str
    state: JobState


@dataclass(frozen=True)
class NeverStarted:
    """An intent was recorded but the start never happened (the daemon died in between): the job is queued again."""

    job_id: int
    reason: str


@dataclass(frozen=True)
class Broken:
    """The executor could not make sense of this job's run: the daemon ends it with the error instead of failing
    at every tick."""

    job_id: int
    error: Exception


@dataclass(frozen=True)
class CapacityChanged:
    """What the executor can offer changed (another user's jobs came or went, a leftover process died, a held job
    may take another mode): replan."""


Observation = Started | Ended | Lost | Requeued | Dropped | NeverStarted | Broken | CapacityChanged


class Executor(Protocol):
    capabilities: Capabilities
    devices: list[Device]  # what the planner plans on: local devices, or the partition's GPUs
    where: str  # where runs run, for the daemon's start-up line
    notify: Callable[[], None]  # set by the daemon: something changed that a tick should see soon

    def capacity(self, start: datetime, slot_s: float, slots: int) -> dict[str, list[int]]:
        """Per node, the devices gsched may use in each slot from ``start`` (daemon clock), before its own running
        jobs. A job's mode runs on one node; one node (the local machine) is one pool."""

    def prepare(self, job: Job, spec: JobSpec, mode: dict[str, Any], now: datetime) -> Intent | None:
        """The intent of a start in ``mode``; None: not now (devices busy, a refusal being waited out)."""

    def start(self, job: Job, spec: JobSpec, intent: Intent, now: datetime) -> Handle:
        """Act on a recorded intent; returns the handle to keep. Raises LaunchDeferred or LaunchFailed."""

    def poll(self, jobs: list[Job], now: datetime) -> list[Observation]:
        """What happened to these jobs' runs since the last look (running jobs, and queued ones with a handle)."""

    def recover(self, jobs: list[Job], now: datetime) -> list[Observation]:
        """After a restart: re-attach to the runs these handles name, or report them gone."""

    def stop(self, job: Job, requeue: bool) -> bool:
        """Ask a running job's run to end (to checkpoint first, with ``requeue``). False: it has no run to ask."""

    def retime(self, job: Job, start: datetime, now: datetime) -> None:
        """Move held work's start (holds_pending executors)."""

    def withdraw(self, job: Job) -> None:
        """Take back held work that has not started (a cancel). Raises if the executor refuses."""

    def reclaim(self, job: Job) -> None:
        """The daemon ended this run on its own (its record was unreadable): make sure nothing of it runs on."""

    def started(self, job: Job) -> bool:
        """A running job's run has begun and can be asked to stop."""

    def held_mode(self, job: Job) -> dict[str, Any] | None:
        """The mode held work was handed over in (replans move its start, not its mode); None if not held."""

    def describe(self, job: Job) -> dict[str, Any]:
        """The handle's public facts for `gsched show` (Slurm's job id and nodes, say)."""

    def log_path(self, job_id: int) -> Path:
        ...

    def close(self, running: list[Job]) -> None:
        """The daemon stops; running work is left running."""


def handle_of(job: Job) -> Handle:
    import json

    if not job.run_handle:
        return {}
    try:
        value = json.loads(job.run_handle)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
