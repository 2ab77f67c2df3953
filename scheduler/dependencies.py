"""Job dependencies, as Slurm's ``--dependency`` says them: a job runs after others end as its kind asks.

Pure: what a dependency means and whether it holds, from the predecessors' states. The API checks that the
predecessors exist and are the submitter's; the daemon holds a dependent back (PENDING, reason ``Dependency``) until
they end as required, and cancels it (``DependencyNeverSatisfied``) when one ends in a way that never will.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# States by name (models.JobState's values): the CLI parses --dependency without importing the store's models.
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
# kind -> the end states that satisfy it (Slurm's: afternotok is any end but success, a cancel included)
KINDS: dict[str, frozenset[str]] = {
    "afterok": frozenset({"COMPLETED"}),
    "afterany": ENDED,
    "afternotok": frozenset({"FAILED", "TIMEOUT", "CANCELLED"}),
}
MAX_DEPENDENCIES = 100
MAX_JOB_ID = 2**62


@dataclass(frozen=True)
class Dependency:
    kind: str
    job_id: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.job_id}"


@dataclass(frozen=True)
class Wait:
    """A queued job planned while it waits for its predecessors: those queued with it (it starts after their
    planned ends), those running (it starts after their planned end), and the reason it shows meanwhile."""

    after: list[int]
    running: list[int]
    reason: str


def parse(text: str) -> tuple[Dependency, ...]:
    """Slurm's spelling, ``afterok:12:13,afterany:14`` (every part must hold), or bare ids ``12,13`` (afterok).
    Raises ValueError naming the part that is wrong."""
    found: list[Dependency] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty part in {text[:80]!r}")
        fields = part.split(":")
        kind = "afterok"
        if not fields[0].strip().isdigit():
            kind = fields.pop(0).strip()
            if kind not in KINDS:
                raise ValueError(f"{kind[:40]!r} is not a dependency kind (known: {', '.join(KINDS)})")
            if not fields:
                raise ValueError(f"{kind} names no job: write e.g. {kind}:12")
        found += [Dependency(kind, job_id(f)) for f in fields]
    return unique(found)


def job_id(text: str | int) -> int:
    """A predecessor's id, from a job file's list or a --dependency string."""
    if isinstance(text, bool) or not (isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit())):
        raise ValueError(f"{str(text)[:40]!r} is not a job id")
    value = int(text)
    if not 1 <= value <= MAX_JOB_ID:
        raise ValueError(f"{value} is not a job id (ids start at 1)")
    return value


def unique(dependencies: Iterable[Dependency]) -> tuple[Dependency, ...]:
    found = tuple(dict.fromkeys(dependencies))
    if len(found) > MAX_DEPENDENCIES:
        raise ValueError(f"{len(found)} dependencies; at most {MAX_DEPENDENCIES}")
    return found


def blocked(dependencies: Iterable[Dependency], states: Mapping[int, str]) -> tuple[list[str], list[str]]:
    """(what it still waits for, what can never be satisfied), each a phrase per dependency, from the
    predecessors' states (JobState, a str; a predecessor missing from ``states`` is gone: never satisfied)."""
    waiting, never = [], []
    for dep in dependencies:
        state = states.get(dep.job_id)
        name = getattr(state, "value", state)
        if name is None:
            never.append(f"job {dep.job_id} no longer exists ({dep.kind})")
        elif name not in ENDED:
            waiting.append(f"job {dep.job_id} ({dep.kind}, {name} now)")
        elif name not in KINDS[dep.kind]:
            never.append(f"job {dep.job_id} ended {name} ({dep.kind})")
    return waiting, never
