#!/usr/bin/env bash
# Start a daemon on the embedded defaults (accelerated clock), submit the example jobs, draw the plan, follow
# them to the end, print the status table and the report (energy, cost, CO2, and what waiting saved against
# running each job at once), then stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
export GSCHED_HOME="${GSCHED_HOME:-$(mktemp -d /tmp/gsched-demo.XXXXXX)}"
config=scripts/demo-config.toml
gsched --config "$config" daemon 2>"$GSCHED_HOME/daemon.log" &
daemon_pid=$!
trap 'kill "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do gsched status >/dev/null 2>&1 && break; sleep 0.2; done
echo "== daemon up: home $GSCHED_HOME, clock x600 from Saturday 15:00 UTC over the embedded DE June-2023 trace"
ids=()
for job in jobs/examples/*.toml; do
  id=$(gsched submit --parsable "$job")
  echo "submitted $job as job $id"
  ids+=("$id")
done
gsched status --plot "$GSCHED_HOME/plan.png"
echo "== the plan as a Gantt chart over the price and carbon curves: $GSCHED_HOME/plan.png"
echo "== waiting for the planned windows (each line: simulated time, then the jobs' states)"
while true; do
  states=$(gsched status --json | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["now"][:16].replace("T", " "), " ".join("%s:%s" % (j["id"], j["state"]) for j in d["jobs"]))')
  echo "  $states"
  case "$states" in *PENDING*|*PLANNED*|*RUNNING*) sleep 3 ;; *) break ;; esac
done
rc=0
for id in "${ids[@]}"; do gsched wait "$id" || rc=1; done
echo "== done"
gsched status
echo "== what it cost and saved (gsched report; savings over time in $GSCHED_HOME/saved.png)"
gsched report --plot "$GSCHED_HOME/saved.png"
exit $rc
