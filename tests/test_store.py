from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scheduler.errors import Conflict, NotFound, StoreError
from scheduler.jobfile import parse_job
from scheduler.models import JobState, Measurement, Profile
from scheduler.store import SCHEMA_VERSION, Store

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


def add(store: Store, tmp_path: Path, name: str = "j") -> int:
    spec = parse_job(f'name = "{name}"\ncommand = ["true"]\nduration = "1m"\n', source="j.toml", base_dir=tmp_path,
                     now=NOW)
    job = store.add_job(spec, owner_uid=1000, owner_name="ann", urgent=False, now=NOW)
    assert job.id is not None
    return job.id


def test_state_machine_records_each_change_and_refuses_illegal_moves(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    job_id = add(store, tmp_path)
    store.transition(job_id, JobState.RUNNING, at=NOW, reason="started")
    with pytest.raises(Conflict, match="RUNNING; cannot become PLANNED"):
        store.transition(job_id, JobState.PLANNED, at=NOW, reason="x")
    run = Measurement(job_id=job_id, started_at=NOW, finished_at=NOW + timedelta(seconds=5), duration_s=5,
                      energy_j=50.0, energy_source="estimate", cost_eur=0.001, co2_g=2.0)
    store.finish(job_id, JobState.COMPLETED, at=NOW + timedelta(seconds=5), reason="exit code 0", measurement=run,
                 exit_code=0)
    with pytest.raises(Conflict):
        store.finish(job_id, JobState.FAILED, at=NOW, reason="again", measurement=None)
    assert [e.state for e in store.events(job_id)] == [JobState.PENDING, JobState.RUNNING, JobState.COMPLETED]
    assert store.totals([job_id])[job_id] == {"energy_j": 50.0, "cost_eur": 0.001, "co2_g": 2.0,
                                               "energy_source": "estimate"}
    assert store.get(job_id).submitted_at == NOW  # aware UTC back out of SQLite
    with pytest.raises(NotFound):
        store.get(99)


def test_wal_and_reopen_keeps_the_queue(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    ids = [add(store, tmp_path, f"j{i}") for i in range(3)]
    store.close()
    reopened = Store(tmp_path / "g.db")
    assert [j.id for j in reopened.jobs()] == ids
    assert reopened.schema_version == SCHEMA_VERSION
    mode = sqlite3.connect(tmp_path / "g.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    add(store, tmp_path)
    store.close()
    with sqlite3.connect(tmp_path / "g.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema v99 is newer"):
        Store(tmp_path / "g.db")
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_foreign_or_corrupt_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable gsched database"):
        Store(junk)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="no gsched schema version"):
        Store(other)


def test_migrations_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scheduler.store as store_module

    store = Store(tmp_path / "g.db")
    job_id = add(store, tmp_path)
    store.close()
    applied = []
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION,
                        lambda conn: applied.append(conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar()))
    upgraded = Store(tmp_path / "g.db")
    assert applied == [1] and upgraded.schema_version == SCHEMA_VERSION + 1
    assert upgraded.get(job_id).name == "j"


def test_a_v1_database_is_migrated_with_its_profiles(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "fixtures" / "gsched-v1.sql").read_text())
    store = Store(path, check=True)
    assert store.schema_version == SCHEMA_VERSION == 5
    key = '{"args":{},"workload":"jobs.linear"}'
    # Profiles from before owners existed are kept as root's: they plan nobody else's jobs.
    assert sorted((p.pruning, p.steps_per_s) for p in store.profiles(key, "cpu", 0)) == [("0", 1500.0), ("0.5", 1480.0)]
    assert store.profiles(key, "cpu", 1000) == []
    assert all(j.run_token is None and j.preempt_reason is None and j.slurm_job_id is None for j in store.jobs())
    assert all(m.gpus is None and m.steps is None for j in store.jobs() for m in store.measurements(j.id or 0))
    store.record_profile(Profile(key=key, device_kind="cpu", gpus=1, precision="fp32", pruning="2:4", compile=False,
                                 steps_per_s=1490.0, watts=10.0, energy_source="estimate", measured_at=NOW))
    store.record_profile(Profile(key=key, device_kind="cpu", gpus=1, precision="fp32", pruning="0.5", compile=False,
                                 steps_per_s=1470.0, watts=10.0, energy_source="estimate", measured_at=NOW))
    rows = {p.pruning: (p.steps_per_s, p.runs) for p in store.profiles(key, "cpu", 0)}
    assert rows == {"0": (1500.0, 1), "0.5": (1470.0, 2), "2:4": (1490.0, 1)}  # the migrated key still dedupes
