#!/usr/bin/env bash
# Start a daemon on the embedded defaults (an event clock over the embedded trace), submit the example jobs
# together, draw the plan, follow them to the end, print the status table and the report (energy, cost, CO2, and
# what waiting saved against running each job at once), then stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
export GSCHED_HOME="${GSCHED_HOME:-$(mktemp -d /tmp/gsched-demo.XXXXXX)}"
config=scripts/demo-config.toml
gsched --config "$config" daemon 2>"$GSCHED_HOME/daemon.log" &
daemon_pid=$!
ids=()
stop() {
  # Interrupted (Ctrl-C): cancel the demo's jobs still queued or running, which would outlive the daemon (a daemon
  # leaves runs alone when it stops, so a restart finds them), then stop the daemon.
  for id in "${ids[@]}"; do gsched cancel "$id" >/dev/null 2>&1 || true; done
  for id in "${ids[@]}"; do gsched wait "$id" --timeout 30 >/dev/null 2>&1 || true; done
  kill "$daemon_pid" 2>/dev/null
  wait "$daemon_pid" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 100); do gsched status >/dev/null 2>&1 && break; sleep 0.2; done
echo "== daemon up: home $GSCHED_HOME; its clock starts on Saturday 15:00 UTC of the embedded DE June-2023 trace"
# The PyTorch examples that train in fp32 (on CPUs bf16 is emulated, about 9x slower: mlp-bf16.toml would take
# minutes; command.toml's one-minute command would be planned for ten hours, as 600x scales every job's expected
# real run time)
examples=(jobs/examples/{gpt,linear-ddp,linear-pair,linear,preemptible}.toml)
mapfile -t ids < <(gsched submit --parsable "${examples[@]}")
echo "== submitted ${examples[*]} together as jobs ${ids[*]}; the plan:"
gsched status --plot "$GSCHED_HOME/plan.png"
echo "== the plan as a Gantt chart over the price and carbon curves: $GSCHED_HOME/plan.png"
echo "== the clock moves from one planned start or end to the next (each line: its time, then the jobs' states)"
last=""
while true; do
  states=$(gsched status --json | python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["now"][:16].replace("T", " "), " ".join("%s:%s" % (j["id"], j["state"]) for j in d["jobs"]))')
  [ "${states#* * }" != "$last" ] && echo "  $states"
  last="${states#* * }"
  case "$states" in *PENDING*|*PLANNED*|*RUNNING*) sleep 0.5 ;; *) break ;; esac
done
rc=0
for id in "${ids[@]}"; do gsched wait "$id" >/dev/null || rc=1; done
echo "== done: what ran, each job in the window and on the devices the plan above gave it"
gsched status
echo "== what it cost and saved (gsched report; savings over time in $GSCHED_HOME/saved.png)"
gsched report --plot "$GSCHED_HOME/saved.png"
exit $rc
