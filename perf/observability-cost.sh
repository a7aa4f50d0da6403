#!/usr/bin/env bash
# The per-request cost of metrics plus the access log: the same Portico build run A/B/A/B with
# both on (`--request-metrics true --access-log json`, log to a file) and both off
# (`--request-metrics false --access-log off`), under wrk, against one nginx backend on loopback.
#
#   perf/observability-cost.sh [SECONDS_PER_RUN]     (default 8; bounded; stops by itself)
#
# Prints requests/s and proxy CPU microseconds per request for each run, and the on/off ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
[ -x target/release/portico ] || cargo build --release --bin portico
WORK=$(mktemp -d)
BIN=$WORK/portico
cp "${PORTICO_BIN:-target/release/portico}" "$BIN"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.8.1:18180; location / { return 200 "ok\n"; } } }
EOF
nginx -c "$WORK/nginx.conf"

mkdir -p "$WORK/m"
cat > "$WORK/m/all.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: cost, namespace: perf }
spec:
  ingressClassName: portico
  rules:
    - host: cost.perf
      http: { paths: [ { path: /, pathType: Prefix, backend: { service: { name: cost, port: { number: 80 } } } } ] }
---
apiVersion: v1
kind: Service
metadata: { name: cost, namespace: perf }
spec: { ports: [ { port: 80, targetPort: 18180 } ] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: cost-1, namespace: perf, labels: { kubernetes.io/service-name: cost } }
addressType: IPv4
ports: [ { port: 18180 } ]
endpoints: [ { addresses: ["127.0.8.1"] } ]
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label metrics access_log
  "$BIN" --manifests "$WORK/m" --http-listen 127.0.0.1:18280 --https-listen off \
    --admin-listen 127.0.0.1:18281 --threads 1 --request-metrics "$2" --access-log "$3" \
    > "$WORK/access.log" 2>/dev/null &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18281/readyz >/dev/null && break; sleep 0.05; done
  wrk -t1 -c16 -d1s -H 'Host: cost.perf' http://127.0.0.1:18280/ >/dev/null 2>&1 # warm-up
  local before after out reqs
  before=$(cpu_ticks "$PID")
  out=$(wrk -t1 -c16 -d"${SECS}s" -H 'Host: cost.perf' http://127.0.0.1:18280/ 2>&1)
  after=$(cpu_ticks "$PID")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local hz=$(getconf CLK_TCK)
  local us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
  echo "$1 rps=$rps cpu_us_per_req=$us lines=$(wc -l < "$WORK/access.log")"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}
results=()
for round in 1 2; do
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
