"""Thousands of queued jobs: how long `gsched status` takes and how long the daemon's replans take.

    .venv/bin/python bench/queue_load.py [--jobs 3000]

Starts a real daemon (2 CPU devices, default planner time limit) in a temporary home, submits the jobs over
the API (deadlines spread over 2 days, so most wait), then times `gsched status --json` (whole process) and
reads the replan times from the daemon's log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduler.client import Client  # noqa: E402

CONFIG = """
[daemon]
calibrate_when_idle = false
[devices]
gpus = "none"
cpu_devices = 2
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gsched-bench-"))
    home, config = base / "home", base / "config.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "GSCHED_HOME": str(home), "GSCHED_CONFIG": str(config)}
    log = (base / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "daemon"], env=env, stdout=log, stderr=log,
                              cwd=ROOT)
    try:
        while not (home / "gsched.sock").exists():
            time.sleep(0.1)
        time.sleep(0.5)
        t0 = time.monotonic()
        with Client(home / "gsched.sock") as client:
            for i in range(args.jobs):
                text = (f'name = "j{i}"\ncommand = ["true"]\nduration = "{10 + i % 50}m"\n'
                        f'max_delay = "{6 + i % 42}h"\n')
                client.submit(text, f"j{i}.toml", str(base))
        submit_s = time.monotonic() - t0
        time.sleep(15)  # let replans run under the full queue
        samples = []
        for _ in range(10):
            t = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "scheduler.cli", "status", "--json"], env=env,
                                 capture_output=True, text=True, cwd=ROOT, check=True).stdout
            samples.append(time.monotonic() - t)
        listed = len(json.loads(out)["jobs"])
        replans = [(int(n), float(s)) for n, s in re.findall(r"planned (\d+) job\(s\) in ([\d.]+) s",
                                                              (base / "daemon.log").read_text())]
        big = [s for n, s in replans if n >= args.jobs // 2]
        print(f"{args.jobs} jobs submitted in {submit_s:.1f} s ({args.jobs / submit_s:.0f}/s); status lists {listed}")
        print(f"gsched status --json: median {statistics.median(samples):.2f} s, worst {max(samples):.2f} s")
        if big:
            print(f"replans with >= {args.jobs // 2} jobs queued: {len(big)}, median {statistics.median(big):.2f} s, "
                  f"worst {max(big):.2f} s")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
