"""What one tick's look at Slurm costs as the queue grows: `squeue --states=all --json` plus gsched's parsing,
and `sinfo --json`, against a real single-node Slurm (tests/slurm_cluster.py; root and apt only) holding N jobs.

    .venv/bin/python bench/slurm_poll.py [--jobs 10 100 1000] [--repeat 5]

Prints one line per N: median wall seconds of squeue+parse, of sinfo, and the JSON's size. The jobs are held
(--hold), so they cost the controller what a queue of planned jobs does, and none runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scheduler.executor.slurmctl import Slurm, parse_squeue  # noqa: E402
from slurm_cluster import SlurmCluster, why_not_available  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    why = why_not_available()
    if why:
        sys.exit(f"slurm_poll: {why}")
    base = Path(tempfile.mkdtemp(prefix="gsched-slurm-bench-"))
    base.chmod(0o755)
    cluster = SlurmCluster(base).start()
    try:
        slurm = Slurm("gpu", env=cluster.env)
        held = 0
        for n in sorted(args.jobs):
            while held < n:
                done = cluster.run("sbatch", "--parsable", "--hold", "--gres=gpu:1", "--time=5", "--partition=gpu",
                                   f"--job-name=gsched-{held}-00", "--output=/dev/null", "--wrap", "true")
                if done.returncode != 0:
                    sys.exit(f"sbatch: {done.stderr}")
                held += 1
            squeue_s, sinfo_s, size = [], [], 0
            for _ in range(args.repeat):
                t0 = time.monotonic()
                text = subprocess.run(["squeue", "--states=all", "--json"], env=cluster.env, capture_output=True,
                                      text=True, check=True).stdout
                jobs = parse_squeue(json.loads(text))
                squeue_s.append(time.monotonic() - t0)
                size = len(text)
                t0 = time.monotonic()
                slurm.gpus()
                sinfo_s.append(time.monotonic() - t0)
            assert len(jobs) >= n
            print(f"{n:>6} jobs: squeue --json + parse {statistics.median(squeue_s):.3f} s "
                  f"({size / 1e6:.2f} MB), sinfo --json {statistics.median(sinfo_s):.3f} s", flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
