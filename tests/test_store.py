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
    assert store.schema_version == SCHEMA_VERSION == 6
    key = '{"args":{},"workload":"jobs.linear"}'
    # Profiles from before owners existed are kept as root's: they plan nobody else's jobs.
    assert sorted((p.pruning, p.steps_per_s) for p in store.profiles(key, "cpu", 0)) == [("0", 1500.0), ("0.5", 1480.0)]
    assert store.profiles(key, "cpu", 1000) == []
    assert all(j.run_handle is None and j.preempt_reason is None for j in store.jobs())
    assert all(m.gpus is None and m.steps is None for j in store.jobs() for m in store.measurements(j.id or 0))
    store.record_profile(Profile(key=key, device_kind="cpu", gpus=1, precision="fp32", pruning="2:4", compile=False,
                                 steps_per_s=1490.0, watts=10.0, energy_source="estimate", measured_at=NOW))
    store.record_profile(Profile(key=key, device_kind="cpu", gpus=1, precision="fp32", pruning="0.5", compile=False,
                                 steps_per_s=1470.0, watts=10.0, energy_source="estimate", measured_at=NOW))
    rows = {p.pruning: (p.steps_per_s, p.runs) for p in store.profiles(key, "cpu", 0)}
    assert rows == {"0": (1500.0, 1), "0.5": (1470.0, 2), "2:4": (1490.0, 1)}  # the migrated key still dedupes


def test_a_v5_database_keeps_its_running_jobs_as_run_handles(tmp_path: Path) -> None:
    """v5 kept the local and Slurm executors' runs in their own columns; v6 keeps one handle per run. A job running
    when gsched is upgraded must be recovered from its handle, whichever executor ran it."""
    import json

    import scheduler.store as store_module

    path = tmp_path / "g.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "fixtures" / "gsched-v1.sql").read_text())
    engine = store_module._engine(path, "BEGIN IMMEDIATE")
    with engine.begin() as conn:  # bring the v1 file to v5 with the migrations v5 had
        for version in range(1, 5):
            store_module.MIGRATIONS[version](conn)
        conn.exec_driver_sql("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        spec = '{"name": "j", "command": ["true"]}'
        common = ("INSERT INTO jobs (name, owner_uid, owner_name, state, spec_json, gpus_min, gpus_max, urgent, "
                  "deadline, submitted_at, cancel_requested, preempt_requested, ")
        conn.exec_driver_sql(common + "run_token, runner_pid, runner_start_ticks, power_restore_json) VALUES ('local', "
                             "1000, 'ann', 'RUNNING', ?, 1, 1, 0, '2026-06-02 12:00:00', '2026-06-01 12:00:00', 0, 0, "
                             "'ab12', 4242, 99, '{\"GPU-a\": 300000}')", (spec,))
        conn.exec_driver_sql(common + "slurm_token, slurm_job_id, slurm_mode_json, slurm_restarts, slurm_nodes) VALUES "
                             "('slurm', 1000, 'ann', 'RUNNING', ?, 2, 2, 0, '2026-06-02 12:00:00', "
                             "'2026-06-01 12:00:00', 0, 0, 'cd34', 17, '{\"gpus\": 2}', 1, 'node1')", (spec,))
    engine.dispose()
    store = Store(path, check=True)
    assert store.schema_version == 6
    local, slurm = store.jobs()
    assert local.state == slurm.state == JobState.RUNNING
    assert json.loads(local.run_handle or "") == {"token": "ab12", "pid": 4242, "start_ticks": 99,
                                                  "power_restore": {"GPU-a": 300000}}
    assert json.loads(slurm.run_handle or "") == {"token": "cd34", "slurm_job_id": 17, "mode": {"gpus": 2},
                                                  "restarts": 1, "nodes": "node1"}
    columns = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)").fetchall()}
    assert "runner_pid" not in columns and "slurm_job_id" not in columns and "run_handle" in columns
