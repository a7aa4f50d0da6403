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
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

need_tools nginx:nginx-light valgrind:valgrind curl:curl ss:iproute2
need_oha
need_portico
setup_work callgrind

BE=$(free_port)
PO=$(free_port)
PA=$(free_port)

backend_conf "$WORK/backend" <<EOF
keepalive_requests 10000000;
server {
    listen 127.0.0.1:$BE;
    location = /small { return 200 "hello, portico\n"; }
}
EOF
start_nginx "$WORK/backend"

mkdir -p "$WORK/manifests"
{
    yaml_ingress_class
    echo ---
    yaml_ingress bench default "" backend
    echo ---
    yaml_service backend default "$BE"
    echo ---
    yaml_endpoint_slice backend default "$BE" 127.0.0.1
} >"$WORK/manifests/bench.yaml"

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
