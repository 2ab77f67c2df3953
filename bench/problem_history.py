"""A planning problem of ../shared/bench as a history for `gsched simulate`: each job submitted at its release, on
its requested mode's GPUs for that mode's run time, due at its deadline, preemptible as given; the problem's own
signals as the trace (`--signals`) and its GPUs as the pool.

    .venv/bin/python bench/problem_history.py ../shared/bench/problems/philly-6214e9-L60-rigid.json.gz OUT_DIR
    .venv/bin/gsched simulate --jobs OUT_DIR/history.csv --signals OUT_DIR/signals.csv --gpus 92 \\
        --output OUT_DIR/r.json --time-limit 1                           (the command is printed)
"""

from __future__ import annotations

import argparse
import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path


def stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("problem", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    opener = gzip.open if args.problem.suffix == ".gz" else open
    with opener(args.problem, "rt") as f:
        doc = json.load(f)
    start = datetime.fromisoformat(doc["start"].replace("Z", "+00:00"))
    slot = timedelta(minutes=doc["slot_minutes"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["id,submit,user,gpus,run_time,deadline,preemptible"]
    for job in sorted(doc["jobs"], key=lambda j: (j["release_slot"], j["id"])):
        mode = job["modes"][job.get("requested_mode", 0)]
        run_s = round(3600 * job["work"] / mode["rate"])
        rows.append(f"{job['id']},{stamp(start + job['release_slot'] * slot)},{job.get('user', 'u')},{mode['gpus']},"
                    f"{run_s},{stamp(start + job['deadline_slot'] * slot)},{str(job['preemptible']).lower()}")
    (args.out / "history.csv").write_text("\n".join(rows) + "\n")
    signals = doc["signals"]
    lines = ["start_utc,price_eur_per_mwh,carbon_g_per_kwh,renewable_share_pct"]
    lines += [f"{stamp(start + k * slot)},{p},{c}," for k, (p, c) in
              enumerate(zip(signals["price_eur_per_mwh"], signals["carbon_g_per_kwh"]))]
    (args.out / "signals.csv").write_text("\n".join(lines) + "\n")
    print(f"gsched simulate --jobs {args.out}/history.csv --signals {args.out}/signals.csv --gpus {doc['gpus']} "
          f"--output {args.out}/r.json --time-limit 1")


if __name__ == "__main__":
    main()
