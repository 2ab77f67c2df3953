"""The README and docs/ cannot drift from the CLI: every gsched command they show (in sh blocks and in inline code)
runs here, placeholders filled in, against a real daemon; and the Makefile targets the README names exist."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from conftest import ROOT, cli, write_job
from test_elastic import alternating_trace, trace_daemon

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
USAGE_ERRORS = ("No such option", "Usage:", "Missing argument", "Traceback", "Got unexpected extra argument")


def readme_commands() -> list[str]:
    text = "\n".join(path.read_text() for path in [README, *DOCS])
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("gsched "):
                found.append(line)
    # inline code: a command line has more than the subcommand (`gsched plan` alone names the command)
    found += [m for m in re.findall(r"`(gsched [^`]+)`", text) if len(m.split()) > 2]
    return list(dict.fromkeys(found))


def test_the_readme_names_make_targets_that_exist() -> None:
    text = README.read_text()
    targets = re.findall(r"^make (\w+)", text, re.M)
    assert {"demo", "test"} <= set(targets)
    for target in targets:
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, (target, dry.stderr)


def test_every_gsched_command_in_the_readme_runs(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 15 and any("--fetch --config FILE" in c for c in commands)
    trace = alternating_trace(tmp_path / "flat.csv", flat=True)
    d = trace_daemon(trace, 60)
    job = write_job(tmp_path, "job", 'workload = "jobs.linear"\nsteps = 300\npreemptible = true\nmax_delay = "2h"\n')
    problem = {"start": "2024-03-04T00:00:00Z", "slot_minutes": 60, "horizon_slots": 4, "gpus": 1,
               "carbon_price_eur_per_t": 0, "signals": {"price_eur_per_mwh": [50, 10, 60, 70],
                                                        "carbon_g_per_kwh": [300] * 4},
               "jobs": [{"id": "a", "release_slot": 0, "deadline_slot": 4, "work": 1, "preemptible": False,
                         "requested_mode": 0, "modes": [{"gpus": 1, "rate": 1.0, "power_kw": 1.0}]}]}
    (tmp_path / "P.json").write_text(json.dumps(problem))
    (tmp_path / "fetch.toml").write_text('[[forecast.providers]]\nkind = "file"\n')
    ids: list[str] = []
    fill = {"job.toml": str(job), "S": "60", "N": "20", "P.json": str(tmp_path / "P.json"),
            "PROBLEM.json": str(tmp_path / "P.json"),
            "PLAN.json": str(tmp_path / "plan.json"), "F.png": str(tmp_path / "f.png"),
            "FILE.png": str(tmp_path / "file.png"), "FILE": str(tmp_path / "fetch.toml"), "DATE": "2020-01-01",
            "NAME": "root", "48": "6", "R.json": str(tmp_path / "R.json"), "sim.png": str(tmp_path / "sim.png")}
    ran = []
    try:
        for command in commands:
            if command == "gsched daemon &":
                continue  # how the daemon under test was started (DaemonProc runs `gsched daemon`)
            argv = shlex.split(command.replace("[", "").replace("]", "").replace("...", ""))[1:]
            if argv[0] in ("show", "logs", "wait", "cancel", "requeue"):
                # job ids: the README's 1 (and 2) are the jobs submitted above; ID is the first; prose that names
                # the command alone (`gsched show --json`) gets the first
                argv = [ids[0] if a in ("1", "ID") else ids[-1] if a == "2" else a for a in argv]
                if not any(a.isdigit() for a in argv):
                    argv.insert(1, ids[0])
            argv = [fill.get(a, a) for a in argv]
            argv = ["2100-01-01" if a == "2020-01-01" and before == "--until" else a
                    for before, a in zip(["", *argv], argv)]
            if argv[0] == "requeue":  # only a running preemptible job can be requeued: make one
                argv[1] = str(d.submit(job, "--now"))
                d.wait_state(int(argv[1]), {"RUNNING"})
            result = cli(*argv, home=d.home, timeout=180)
            assert not any(e in result.stderr for e in USAGE_ERRORS), (command, argv, result.stderr)
            allowed = {0, 6} if argv[0] == "cancel" else {0}  # cancelling a job that already ended: 6
            if argv[:2] == ["devices", "--json"] and "--local" in argv:
                allowed = {0, 1}  # no NVML on a machine without GPUs: a clear error, not a crash
            assert result.returncode in allowed, (command, argv, result.returncode, result.stderr)
            if argv[0] == "submit":
                ids.append(result.stdout.strip().split()[-1].strip("()") if "--parsable" in argv
                           else re.search(r"job (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
            ran.append(command)
    finally:
        d.stop()
        d.kill_runners()
    assert len(ran) == len(commands) - 1


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_every_relative_link_in_the_markdown_resolves_to_a_file_and_heading() -> None:
    """Links are relative to the file they are in (a link written from the repository root breaks on every viewer)."""
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert "README.md" in files and len(files) > 10
    broken = []
    for name in files:
        page = ROOT / name
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{name}: {target} (no {linked})")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                broken.append(f"{name}: {target} (no heading #{anchor})")
    assert broken == []


def test_the_demo_prints_the_readmes_ending_and_runs_each_job_as_planned() -> None:
    """`make demo`'s script as shipped, on its event clock: the same plan and report as the README shows, to the
    digit, and each job started when its plan said and ran as long as it said."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("GSCHED_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    demo = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    for home in set(re.findall(r"/tmp/gsched-demo\.\w+", demo.stdout)):  # the demo keeps it for its user to look at
        shutil.rmtree(home, ignore_errors=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = re.sub(r"/tmp/gsched-demo\.\w+", "/tmp/gsched-demo.XXXXXX", demo.stdout)
    shown = re.search(r"```\n(== done.*?)```", README.read_text(), re.S)
    assert shown is not None
    assert out[out.index("== done"):] == shown.group(1)
    # the plan printed after submitting: each job's planned window is where it ran
    plan = out[out.index("the plan:"):out.index("== the plan as")]
    ran = {m[0]: (m[1], m[2]) for m in re.findall(r"^\s+\d+ (\S+)\s+root\s+COMPLETED\s+\d+ \S+ (\d\d:\d\d)\s+(\S+)",
                                                   out[out.index("== done"):], re.M)}
    windows = dict(re.findall(r"^\s+\d+ (\S+)\s+root\s+PLANNED.*waits for (\d\d:\d\d-\d\d:\d\d) UTC", plan, re.M))
    assert windows, plan
    # gpt may train in fp32 or bf16, which the CPU model cannot tell apart: the first listed is planned
    assert re.search(r"^\s+\d+ gpt .*on 1xcpu fp32", plan, re.M), plan
    for name, window in windows.items():
        start, end = window.split("-")
        hours, minutes = divmod((int(end[:2]) * 60 + int(end[3:]) - int(start[:2]) * 60 - int(start[3:])) % 1440, 60)
        assert ran[name] == (start, f"{hours:02d}:{minutes:02d}:00") or (
            ran[name][0] == start and ran[name][1].startswith(f"{hours:02d}:{minutes:02d}")), (name, window, ran)
