#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic, so a change to the
# request path shows up as a number that does not depend on how busy the machine is.
#
#   perf/callgrind.sh                 # 1 worker, keep-alive GETs of a 15-byte body
#   N1=500 N2=2500 perf/callgrind.sh  # request counts of the two runs
#   PORTICO=/path/to/portico perf/callgrind.sh
#
# Portico (release build, `--threads 1 --access-log off`) runs under `valgrind --tool=callgrind`
# in front of an nginx backend on loopback, twice: once for N1 and once for N2 keep-alive
# requests from one connection (oha -c 1). Start-up, the first snapshot and shutdown cost the same
# in both runs, so (instructions of run 2 - run 1) / (N2 - N1) is the cost of one request. With
# KEEP=1 the callgrind files stay in the work directory for `callgrind_annotate`.
set -euo pipefail

N1=${N1:-1000}
N2=${N2:-4000}
REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '%s\n' "$*" >&2; }

need_apt=()
for pair in nginx:nginx-light valgrind:valgrind curl:curl ss:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair#*:}")
done
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
command -v oha >/dev/null 2>&1 || { log "installing oha (once)"; cargo install oha --locked --quiet; }
if [[ -z "${PORTICO:-}" ]]; then
    log "building Portico (release)"
    (cd "$REPO" && cargo build --release --quiet --bin portico)
    PORTICO=${CARGO_TARGET_DIR:-$REPO/target}/release/portico
fi

WORK=$(mktemp -d /tmp/portico-callgrind.XXXXXX)
chmod 755 "$WORK"
cp "$PORTICO" "$WORK/portico"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ -n "${KEEP:-}" ]] && log "work directory kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % 22000))
        if ! ss -Htan "sport = :$p" | grep -q . && [[ " ${USED:-} " != *" $p "* ]]; then
            USED="${USED:-} $p"
            echo "$p"
            return
        fi
    done
}
BE=$(free_port)
PO=$(free_port)
PA=$(free_port)

mkdir -p "$WORK/backend" "$WORK/manifests"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$BE;
        location = /small { return 200 "hello, portico\n"; }
    }
}
EOF
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

cat >"$WORK/manifests/bench.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: bench, namespace: default }
spec:
  ingressClassName: portico
  rules:
    - http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: backend, port: { number: 80 } } } }
---
apiVersion: v1
kind: Service
metadata: { name: backend, namespace: default }
spec:
  ports: [{ name: http, port: 80, targetPort: $BE }]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: default
  labels: { kubernetes.io/service-name: backend }
addressType: IPv4
ports: [{ name: http, port: $BE, protocol: TCP }]
endpoints:
  - addresses: ["127.0.0.1"]
    conditions: { ready: true }
EOF

# One run: start Portico under callgrind, wait for a 200, send N requests, stop it, print the
# total instruction count.
run() {
    local n=$1 out="$WORK/callgrind.$1.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$WORK/portico" \
        --manifests "$WORK/manifests" --http-listen "127.0.0.1:$PO" --https-listen off \
        --admin-listen "127.0.0.1:$PA" --threads 1 --access-log off \
        >"$WORK/portico.$n.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PO/small") == 200 ]] && break
        sleep 0.1
    done
    oha -n "$n" -c 1 --no-tui --output-format json "http://127.0.0.1:$PO/small" >"$WORK/oha.$n.json"
    grep -q '"2xx"\|"200"' "$WORK/oha.$n.json" || { log "oha saw no 200s"; exit 1; }
    kill -INT "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

log "callgrind: $N1 requests"
I1=$(run "$N1")
log "callgrind: $N2 requests"
I2=$(run "$N2")
per=$(((I2 - I1) / (N2 - N1)))
echo "instructions: $I1 for $N1 requests (+1 for readiness), $I2 for $N2"
echo "instructions per keep-alive request: $per"
