"""Fuzzing the trust boundaries with hypothesis: job files, what a run hands back, and API bodies sent to a
real daemon. Whatever comes in, the answer is a clear error (JobFileError, a 4xx), never an uncaught exception
or a 500."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import JobFileError
from scheduler.executor.untrusted import MAX_ENERGY_J, parse_metrics, parse_result
from scheduler.jobfile import _TOP_KEYS, JobSpec, parse_job

NOW = datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
KEYS = sorted(_TOP_KEYS) + ["min", "max", "precision", "pruning", "power_cap_w", "compile", "bogus", "seed"]

texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["12h", "1h30m", "0s", "-5m", "229196003446511h", "9" * 400 + "h", "jobs.linear", "jobs.gpt",
                     "2:4", "bf16", "fp8", ".", "/", "/nonexistent", "a\x00b", "\x1b[2J", "a" * 5000, "../..",
                     "1e999", "nan"]),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True),
                    st.sampled_from([0, 1, 2, -1, 10**30, 1e308, math.inf]))
instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-14)),
                                                   timezone(timedelta(hours=14))]))
scalars = st.one_of(texts, numbers, st.booleans(), instants)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


job_files = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=10).map(
        lambda d: "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in d.items())),
    st.text(max_size=200),
)


@settings(max_examples=int(os.environ.get("GSCHED_FUZZ_EXAMPLES", "3000")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(job_files)
def test_job_files_never_raise_anything_but_a_job_file_error(text: str) -> None:
    try:
        spec = parse_job(text, source="fuzz.toml", base_dir=Path("/tmp"), now=NOW)
    except JobFileError as exc:
        assert str(exc).startswith("fuzz.toml")
        return
    assert isinstance(spec, JobSpec) and spec.deadline > NOW and spec.gpus_min <= spec.gpus_max
    JobSpec.from_json(json.loads(json.dumps(spec.to_json())))  # what is stored reads back


RESULT_KEYS = ["steps", "steps_per_s", "loss", "preempted", "exit_code", "energy_j", "duration_s", "metrics",
               "signal", "error", "timed_out", "energy_source"]


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=12), st.sampled_from(RESULT_KEYS))
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20)), _nested,
                           max_leaves=20)


@settings(max_examples=2000, deadline=None)
@given(json_values, st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)))
def test_what_a_run_hands_back_is_always_bounded(raw: Any, max_steps: int | None) -> None:
    result = parse_result(raw, max_steps)
    assert 0 <= result.energy_j <= MAX_ENERGY_J and math.isfinite(result.duration_s)
    assert result.exit_code is None or isinstance(result.exit_code, int)
    metrics = parse_metrics(raw, max_steps)
    assert metrics.steps is None or 0 <= metrics.steps <= (max_steps or 10**12)
    assert metrics.steps_per_s is None or math.isfinite(metrics.steps_per_s)
    json.dumps(metrics.data, allow_nan=False)  # storable as strict JSON


environments = st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=40), json_values), max_size=6)
api_bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["text", "source", "base_dir", "urgent", "environment", "extra"]),
                    st.one_of(job_files, json_values, environments), max_size=5),
)


def test_api_bodies_and_paths_never_get_a_500(daemon: Any) -> None:
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://gsched",
                          timeout=30)
    seen: dict[int, int] = {}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(api_bodies, st.sampled_from(["/v1/jobs", "/v1/jobs/1/cancel", "/v1/jobs/1/requeue", "/v1/info"]),
           st.text(max_size=30))
    def post(body: Any, path: str, query: str) -> None:
        reply = client.post(path, content=json.dumps(body), params={"offset": query, "hours": query})
        seen[reply.status_code] = seen.get(reply.status_code, 0) + 1
        assert reply.status_code < 500, reply.text
        assert "error" in reply.json() or reply.status_code in (200, 201)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=40))
    def get(path: str) -> None:
        reply = client.get("/v1/" + path)
        seen[reply.status_code] = seen.get(reply.status_code, 0) + 1
        assert reply.status_code < 500, reply.text

    try:
        post()
        get()
    finally:
        client.close()
    print(f"API fuzz statuses: {dict(sorted(seen.items()))}")
    assert daemon.cli("status").returncode == 0
