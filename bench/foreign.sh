#!/usr/bin/env bash
# The planner on ../shared/bench: problems from a generator gsched was not written against and real Philly job
# mixes, each plan checked by that folder's own evaluator (planbench.py, which shares no code with gsched).
# bench/best.json, ours to keep, names the best plan known for each problem (run.py prints the ratio to it).
#   bench/foreign.sh [--time-limit 10] [--only 6214e9 ...] [--json r.json]      (about 4 minutes at 10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${GSCHED_SHARED_BENCH:-../shared/bench}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$shared"/. "$work"/
chmod -R u+w "$work"
cp bench/best.json "$work/best.json"
python3 "$work/run.py" --gsched .venv/bin/gsched "$@"
