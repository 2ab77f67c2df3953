"""Wall time of `gsched status` against a real daemon holding 200 queued jobs.

    .venv/bin/python bench/status_latency.py [--jobs 200] [--runs 20]

Prints the median and 90th percentile of the whole command (process start to exit), the figure
docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="gsched-bench-"))
    config = base / "config.toml"
    config.write_text('[devices]\ngpus = "none"\ncpu_devices = 2\n')
    env = {**os.environ, "GSCHED_HOME": str(base / "home"), "GSCHED_CONFIG": str(config)}
    gsched = [sys.executable, "-m", "scheduler.cli"]
    daemon = subprocess.Popen([*gsched, "daemon"], env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        for _ in range(150):
            if subprocess.run([*gsched, "status"], env=env, capture_output=True, cwd=ROOT).returncode == 0:
                break
            time.sleep(0.2)
        job = base / "queued.toml"
        job.write_text('command = ["true"]\nduration = "30m"\nmax_delay = "48h"\n')
        sys.path.insert(0, str(ROOT))
        from scheduler.client import Client

        with Client(base / "home" / "gsched.sock") as client:
            for _ in range(args.jobs):
                client.submit(job.read_text(), str(job), str(base))
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([*gsched, "status"], env=env, capture_output=True, check=True, cwd=ROOT)
            times.append(time.perf_counter() - start)
        times.sort()
        p90 = times[int(0.9 * (len(times) - 1))]
        print(f"gsched status, {args.jobs} jobs, {args.runs} runs: median {statistics.median(times) * 1000:.0f} ms,"
              f" p90 {p90 * 1000:.0f} ms")
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
