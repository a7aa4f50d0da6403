#!/usr/bin/env bash
# Churn under load: a stable route keeps answering while the configuration changes around it.
#
#   perf/churn.sh                     # 10 s of wrk; builds the release binary if needed
#   DURATION=30 CONNECTIONS=64 perf/churn.sh
#
# During a wrk run against host `stable.local` (through `--manifests DIR`):
#   - its EndpointSlice is rewritten 10 times a second, rotating among pairs of three live
#     endpoints (127.0.0.1, .2 and .3 on one nginx backend), so every endpoint set is valid;
#   - every second another Ingress (host `churn-N.local`) is added or removed.
# Every change is a file written aside and renamed in (one atomic change, as kubectl-style tools
# do). Passes (exit 0) when wrk saw zero non-2xx responses and zero socket errors.
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
WORKERS=${WORKERS:-$(nproc)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '%s\n' "$*" >&2; }

need_apt=()
for pair in nginx:nginx-light wrk:wrk curl:curl ss:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ ${pair%%:*} == nginx && -x /usr/sbin/nginx ]] ||
        need_apt+=("${pair#*:}")
done
if ((${#need_apt[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ -z "${PORTICO:-}" ]]; then
    (cd "$REPO" && cargo build --release --quiet --bin portico)
    PORTICO=${CARGO_TARGET_DIR:-$REPO/target}/release/portico
fi

WORK=$(mktemp -d /tmp/portico-churn.XXXXXX)
cp "$PORTICO" "$WORK/portico"
PIDS=()
cleanup() {
    # SIGINT: a fast shutdown for both Portico and nginx (SIGTERM would drain Portico for 10 s).
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ -n "${KEEP:-}" ]] && log "work directory kept: $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    while :; do
        # Below the ephemeral range (32768+), so that no outgoing connection holds it.
        p=$((10000 + RANDOM % 22000))
        if ! ss -Htan "sport = :$p" | grep -q . && [[ " ${USED_PORTS:-} " != *" $p "* ]]; then
            USED_PORTS="${USED_PORTS:-} $p"
            echo "$p"
            return
        fi
    done
}
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on $1:$2"
    return 1
}

BE=$(free_port)
PO=$(free_port)
PA=$(free_port)
mkdir -p "$WORK/backend" "$WORK/manifests"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$BE;
        listen 127.0.0.2:$BE;
        listen 127.0.0.3:$BE;
        location / { return 200 "ok \$server_addr\n"; }
    }
}
EOF
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port 127.0.0.1 "$BE"

M=$WORK/manifests
cat >"$M/stable.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: stable, namespace: default }
spec:
  ingressClassName: portico
  rules:
    - host: stable.local
      http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: stable, port: { number: 80 } } } }
---
apiVersion: v1
kind: Service
metadata: { name: stable, namespace: default }
spec:
  ports: [{ port: 80, targetPort: $BE }]
EOF
# put FILE CONTENT: write aside, rename in.
put() { printf '%s' "$2" >"$M/.$1.tmp" && mv "$M/.$1.tmp" "$M/$1"; }
slice() { # the EndpointSlice of `stable` with the given loopback addresses
    local eps=""
    for a in "$@"; do eps+="  - { addresses: [\"$a\"], conditions: { ready: true } }"$'\n'; done
    printf 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: stable-1\n  namespace: default\n  labels: { kubernetes.io/service-name: stable }\naddressType: IPv4\nports: [{ port: %s }]\nendpoints:\n%s' "$BE" "$eps"
}
put slice.yaml "$(slice 127.0.0.1 127.0.0.2)"

"$WORK/portico" --manifests "$M" --http-listen "127.0.0.1:$PO" --admin-listen "127.0.0.1:$PA" \
    --threads "$WORKERS" --access-log off >"$WORK/portico.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$PO"
for _ in $(seq 1 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: stable.local' "http://127.0.0.1:$PO/") == 200 ]] && break
    sleep 0.05
done
generation() { curl -s "http://127.0.0.1:$PA/metrics" | awk '/^portico_config_generation /{print $2}'; }
gen0=$(generation)

wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'Host: stable.local' \
    "http://127.0.0.1:$PO/" >"$WORK/wrk.txt" 2>&1 &
WRK=$!
PIDS+=("$WRK")

sets=("127.0.0.1 127.0.0.2" "127.0.0.2 127.0.0.3" "127.0.0.1 127.0.0.3")
slice_changes=0
ingress_changes=0
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
start=$(now_ms)
i=0
while ((i < DURATION * 10)) && kill -0 "$WRK" 2>/dev/null; do
    # On a 100 ms grid, so that the rate holds whatever each change costs.
    wait_ms=$((start + i * 100 - $(now_ms)))
    ((wait_ms > 0)) && sleep "$(printf '0.%03d' "$wait_ms")"
    # shellcheck disable=SC2086 # the set is a list of words
    put slice.yaml "$(slice ${sets[i % 3]})"
    slice_changes=$((slice_changes + 1))
    if ((i % 10 == 5)); then
        n=$((i / 10))
        if ((n % 2 == 0)); then
            put churn.yaml "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: churn-$n, namespace: default }
spec:
  ingressClassName: portico
  rules:
    - host: churn-$n.local
      http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: stable, port: { number: 80 } } } }
"
        else
            rm -f "$M/churn.yaml"
        fi
        ingress_changes=$((ingress_changes + 1))
    fi
    i=$((i + 1))
done
wait "$WRK" || true
gen1=$(generation)

cat "$WORK/wrk.txt"
non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WORK/wrk.txt")
errors=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt")
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
echo
echo "churn: ${slice_changes} EndpointSlice rewrites and ${ingress_changes} Ingress adds/removes in ${DURATION} s;" \
    "Portico published $((${gen1%.*} - ${gen0%.*})) snapshots"
echo "stable route: ${requests:-0} requests, ${non2xx:-0} non-2xx, ${errors:-0} socket errors"
if [[ ${non2xx:-0} != 0 || ${errors:-0} != 0 || ${requests:-0} == 0 ]]; then
    echo "FAIL"
    exit 1
fi
echo "PASS"
