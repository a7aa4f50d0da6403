#!/usr/bin/env bash
# The per-request cost of metrics plus the access log: the same Portico build run A/B/A/B with
# both on (`--request-metrics true --access-log json`, log to a file) and both off
# (`--request-metrics false --access-log off`), under wrk, against one nginx backend on loopback.
#
#   perf/observability-cost.sh [SECONDS_PER_RUN]     (default 8; bounded; stops by itself)
#
# Prints requests/s and proxy CPU microseconds per request for each run, and the on/off ratios.
# PORTICO_BIN (or PORTICO) is the binary to measure; unset, a release build is made.
set -euo pipefail
SECS=${1:-8}
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools wrk:wrk nginx:nginx-light
PORTICO=${PORTICO_BIN:-${PORTICO:-}}
need_portico
setup_work observability-cost
BIN=$WORK/portico

backend_conf "$WORK/backend" <<EOF
server { listen 127.0.8.1:18180; location / { return 200 "ok\n"; } }
EOF
start_nginx "$WORK/backend"
wait_port 127.0.8.1 18180

mkdir -p "$WORK/m"
{
  yaml_ingress_class
  echo ---
  yaml_ingress cost perf cost.perf cost
  echo ---
  yaml_service cost perf 18180
  echo ---
  yaml_endpoint_slice cost perf 18180 127.0.8.1
} > "$WORK/m/all.yaml"

run() { # label metrics access_log
  "$BIN" --manifests "$WORK/m" --http-listen 127.0.0.1:18280 --https-listen off \
    --admin-listen 127.0.0.1:18281 --threads 1 --request-metrics "$2" --access-log "$3" \
    > "$WORK/access.log" 2>/dev/null &
  PID=$!
  wait_200 http://127.0.0.1:18281/readyz
  wrk -t1 -c16 -d1s -H 'Host: cost.perf' http://127.0.0.1:18280/ >/dev/null 2>&1 # warm-up
  local before after out reqs rps hz us
  before=$(cpu_ticks "$PID")
  out=$(wrk -t1 -c16 -d"${SECS}s" -H 'Host: cost.perf' http://127.0.0.1:18280/ 2>&1)
  after=$(cpu_ticks "$PID")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  hz=$(getconf CLK_TCK)
  us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
  echo "$1 rps=$rps cpu_us_per_req=$us lines=$(wc -l < "$WORK/access.log")"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}
results=()
for _ in 1 2; do
  results+=("$(run on true json)")
  results+=("$(run off false off)")
done
printf '%s\n' "${results[@]}"
printf '%s\n' "${results[@]}" | awk '
  { split($2, a, "="); split($3, b, "="); rps[$1] += a[2]; cpu[$1] += b[2]; n[$1]++ }
  END {
    printf "metrics+access log on vs off: requests/s ratio %.3f, CPU per request ratio %.3f (+%.1f us)\n",
      rps["on"] / rps["off"], cpu["on"] / cpu["off"], (cpu["on"] - cpu["off"]) / n["on"]
  }'
