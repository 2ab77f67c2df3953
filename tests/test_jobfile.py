"""Each kind of bad job file gets a clear error naming the field or line, through the real CLI, and nothing is
stored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import EXAMPLES, DaemonProc, raw_request, write_job
from scheduler.errors import JobFileError
from scheduler.jobfile import JobSpec, parse_job

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)

BAD = [
    ("unknown key", 'workload = "jobs.linear"\nsteps = 10\ncolour = "red"\n', "colour: unknown key"),
    ("syntax", 'workload = "jobs.linear"\nsteps = \n', "line 2"),
    ("neither", 'steps = 10\n', "workload: give exactly one"),
    ("both", 'workload = "jobs.linear"\ncommand = ["true"]\nsteps = 1\n', "workload: give exactly one"),
    ("missing workload", 'workload = "jobs.nope"\nsteps = 10\n', "workload: no workload 'jobs.nope'"),
    ("steps type", 'workload = "jobs.linear"\nsteps = "ten"\n', "steps: must be a whole number"),
    ("steps missing", 'workload = "jobs.linear"\n', "steps: required"),
    ("steps zero", 'workload = "jobs.linear"\nsteps = 0\n', "steps: must be >= 1"),
    ("min > max", 'workload = "jobs.linear"\nsteps = 5\ngpus = {min = 4, max = 2}\n', "gpus.min: must be <= gpus.max"),
    ("gpus zero", 'workload = "jobs.linear"\nsteps = 5\ngpus = 0\n', "gpus: must be >= 1"),
    ("gpus type", 'workload = "jobs.linear"\nsteps = 5\ngpus = "two"\n', "gpus: must be a whole number"),
    ("gpus key", 'workload = "jobs.linear"\nsteps = 5\ngpus = {lo = 1}\n', "gpus.lo: unknown key"),
    ("nodes zero", 'workload = "jobs.linear"\nsteps = 5\nnodes = 0\n', "nodes: must be >= 1"),
    ("nodes min > max", 'workload = "jobs.linear"\nsteps = 5\nnodes = {min = 3, max = 2}\n',
     "nodes.min: must be <= nodes.max"),
    ("nodes key", 'workload = "jobs.linear"\nsteps = 5\nnodes = {most = 2}\n', "nodes.most: unknown key"),
    ("nodes type", 'workload = "jobs.linear"\nsteps = 5\nnodes = "two"\n', "nodes: must be a whole number"),
    ("nodes split", 'workload = "jobs.linear"\nsteps = 5\ngpus = 3\nnodes = 2\n',
     "nodes: no GPU count in gpus (3..3) splits evenly over 2..2 node(s)"),
    ("deadline past", 'workload = "jobs.linear"\nsteps = 5\ndeadline = 2020-01-01T00:00:00Z\n',
     "deadline: 2020-01-01T00:00:00Z is already past"),
    ("deadline naive", 'workload = "jobs.linear"\nsteps = 5\ndeadline = 2030-01-01T00:00:00\n', "deadline: has no UTC"),
    ("deadline text", 'workload = "jobs.linear"\nsteps = 5\ndeadline = "tomorrow"\n', "deadline:"),
    ("both timings", 'workload = "jobs.linear"\nsteps = 5\nmax_delay = "1h"\ndeadline = 2030-01-01T00:00:00Z\n',
     "deadline: give either"),
    ("bad delay", 'workload = "jobs.linear"\nsteps = 5\nmax_delay = "soonish"\n', "max_delay: not a duration"),
    ("command type", 'command = "python train.py"\nduration = "1h"\n', "command: must be a list"),
    ("command empty", 'command = []\nduration = "1h"\n', "command: must be a non-empty list"),
    ("command duration", 'command = ["true"]\n', "duration: required for a command"),
    ("precision", 'workload = "jobs.linear"\nsteps = 5\noptimisations = {precision = ["fp8"]}\n',
     "optimisations.precision"),
    ("pruning", 'workload = "jobs.linear"\nsteps = 5\noptimisations = {pruning = [1.5]}\n', "optimisations.pruning"),
    ("env", 'workload = "jobs.linear"\nsteps = 5\nenv = {N = 3}\n', "env.N: must be a string"),
    ("workdir", 'workload = "jobs.linear"\nsteps = 5\nworkdir = "/no/such/dir"\n', "workdir: /no/such/dir: No such file or directory"),
    ("preemptible", 'workload = "jobs.linear"\nsteps = 5\npreemptible = "yes"\n', "preemptible: must be true or false"),
    ("args for command", 'command = ["true"]\nduration = "1m"\nargs = {a = 1}\n', "args: only for a workload"),
]


@pytest.mark.parametrize(("label", "text", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_job_file_names_the_field(label: str, text: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(JobFileError) as info:
        parse_job(text, source="job.toml", base_dir=tmp_path, now=NOW)
    assert str(info.value).startswith("job.toml: ")
    assert needle in str(info.value)


def test_good_job_round_trips_and_builds_argv(tmp_path: Path) -> None:
    spec = parse_job('workload = "jobs.linear"\nsteps = 50\nargs = {seed = 3, batch_size = 8}\ngpus = {min = 1, max = 2}'
                     '\nmax_delay = "2h"\nenv = {A = "b"}\n', source="j.toml", base_dir=tmp_path, now=NOW)
    assert spec.deadline == NOW + timedelta(hours=2) and (spec.gpus_min, spec.gpus_max) == (1, 2)
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.argv("py") == ["py", "-m", "jobs.linear", "--steps", "50", "--seed", "3", "--batch-size", "8"]
    assert spec.name == "j" and spec.workdir == str(tmp_path.resolve())


def test_the_splits_of_gpus_over_nodes_are_every_divisor_in_range() -> None:
    from scheduler.jobfile import splits

    for ranges in ((1, 24, 1, 8), (5, 30, 2, 6), (7, 7, 2, 3), (1, 64, 3, 1024)):
        g0, g1, k0, k1 = ranges
        assert splits(*ranges) == [(n, k) for n in range(g0, g1 + 1) for k in range(k0, k1 + 1) if n % k == 0]
    assert len(splits(1, 4096, 1, 1024)) == 30283  # the widest a job file allows, found by divisors


def test_a_job_across_nodes_gets_each_even_split_of_its_gpus(tmp_path: Path) -> None:
    from scheduler.planner.estimate import NODE_EFFICIENCY, job_modes

    spec = parse_job('workload = "jobs.linear"\nsteps = 50\ngpus = { min = 2, max = 4 }\nnodes = { min = 1, max = 2 }\n',
                     source="j.toml", base_dir=tmp_path, now=NOW)
    assert (spec.nodes_min, spec.nodes_max) == (1, 2)
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    jm = job_modes(spec, 8, "gpu", 300.0, 10.0)
    assert sorted((m.gpus, m.nodes) for m in jm.modes) == [(2, 1), (2, 2), (3, 1), (4, 1), (4, 2)]
    by = {(m.gpus, m.nodes): m for m in jm.modes}
    assert by[4, 2].rate == pytest.approx(by[4, 1].rate * NODE_EFFICIENCY) and by[4, 2].gpus_per_node == 2
    assert (jm.modes[jm.requested].gpus, jm.modes[jm.requested].nodes) == (4, 1)  # one node first, when it has room
    assert jm.described[list(by).index((4, 2))]["nodes"] == 2
    assert spec.argv("py", 2, 2)[:4] == ["py", "-m", "torch.distributed.run", "--nproc-per-node=2"]  # no --standalone
    assert spec.argv("py", 1, 2)[:3] == ["py", "-m", "torch.distributed.run"]  # one a node: still DDP


def test_examples_are_valid(tmp_path: Path) -> None:
    for path in EXAMPLES.glob("*.toml"):
        parse_job(path.read_text(), source=str(path), base_dir=path.parent, now=NOW)


def test_cli_rejects_bad_files_and_stores_nothing(daemon: DaemonProc, tmp_path: Path) -> None:
    for label, text, needle in BAD[:6] + [("missing file", None, "no such file")]:
        path = tmp_path / f"{label.replace(' ', '_')}.toml"
        if text is not None:
            path.write_text(text)
        result = daemon.cli("submit", str(path))
        assert result.returncode == 2, (label, result.stderr)
        assert needle in result.stderr and str(path) in result.stderr
    assert json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"] == []


def test_daemon_validates_too(daemon: DaemonProc, tmp_path: Path) -> None:
    """A client that skips local validation still cannot store a bad job."""
    from scheduler.client import Client
    from scheduler.errors import InputError

    with Client(daemon.socket) as client, pytest.raises(InputError, match="gpus.min"):
        client.submit([('command = ["true"]\nduration = "1m"\ngpus = {min = 2, max = 1}\n', "x.toml", str(tmp_path))])
    good = write_job(tmp_path, "ok", 'command = ["true"]\nduration = "1m"\n')
    assert daemon.submit(good) == 1


def test_several_job_files_are_queued_together_or_not_at_all(daemon: DaemonProc, tmp_path: Path) -> None:
    first = write_job(tmp_path, "first", 'command = ["true"]\nduration = "1m"\nmax_delay = "6h"\n')
    bad = write_job(tmp_path, "bad", 'command = ["true"]\nduration = "1m"\ngpus = 7\n')
    refused = daemon.cli("submit", str(first), str(bad))
    assert refused.returncode == 2 and str(bad) in refused.stderr and "gpus" in refused.stderr, refused.stderr
    assert json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"] == []
    second = write_job(tmp_path, "second", 'command = ["true"]\nduration = "1m"\nmax_delay = "6h"\n')
    queued = daemon.cli("submit", "--parsable", str(first), str(second))
    assert queued.returncode == 0 and queued.stdout.split() == ["1", "2"], queued
    shown = [daemon.show(1), daemon.show(2)]
    assert [j["name"] for j in shown] == ["first", "second"]
    assert shown[0]["submitted_at"] == shown[1]["submitted_at"]
    # a hostile list body: empty, too long, or holding something other than job objects; nothing is stored
    good = {"text": 'command = ["true"]\nduration = "1m"\n', "source": "g.toml", "base_dir": str(tmp_path)}
    for body, needle in (([], "a list of 1..1000"), ([{}] * 1001, "a list of 1..1000"),
                         ([good, 7], "must be a JSON object"), ([good, [good]], "must be a JSON object")):
        reply = raw_request(daemon.socket, "POST", "/v1/jobs", json.dumps(body))
        assert reply["status"] == 400 and needle in reply["json"]["error"], (needle, reply)
    assert len(json.loads(daemon.cli("status", "--json", check=True).stdout)["jobs"]) == 2


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_one_mistake_in_a_shipped_job_file_is_one_error_naming_its_field(example: str) -> None:
    """Each field of a shipped example set to a wrong value: exactly one error, naming that field (a gpus.min above
    gpus.max once also said no GPU count split over the nodes; a workload added to a command file, three)."""
    text = (EXAMPLES / example).read_text()
    bads = ['"zzz"', "-5", "0", "true", '[1, "a"]', "{ min = 3, max = 1 }", "2020-01-01T00:00:00Z"]
    keys = ["name", "workload", "command", "steps", "duration", "gpus", "nodes", "deadline", "max_delay",
            "preemptible", "args"]
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    checked = 0
    for key in keys:
        for bad in bads:
            kept = [line for line in text.splitlines() if line.split("=")[0].strip() != key]
            try:  # at the top, before any [table]
                parse_job(f"{key} = {bad}\n" + "\n".join(kept) + "\n", source=example, base_dir=EXAMPLES, now=now)
            except JobFileError as exc:
                checked += 1
                wheres = [where.split(".")[0].split("[")[0] for where, _m in exc.errors]
                assert len(exc.errors) == 1 and wheres[0] in (key, "workload"), (key, bad, str(exc))
    assert checked > 30
