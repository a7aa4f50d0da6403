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
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

need_tools nginx:nginx-light wrk:wrk curl:curl ss:iproute2
need_portico
setup_work churn

BE=$(free_port)
PO=$(free_port)
PA=$(free_port)
backend_conf "$WORK/backend" <<EOF
keepalive_requests 10000000;
server {
    listen 127.0.0.1:$BE;
    listen 127.0.0.2:$BE;
    listen 127.0.0.3:$BE;
    location / { return 200 "ok \$server_addr\n"; }
}
EOF
start_nginx "$WORK/backend"
wait_port 127.0.0.1 "$BE"

M=$WORK/manifests
mkdir -p "$M"
{
    yaml_ingress_class
    echo ---
    yaml_ingress stable default stable.local stable
    echo ---
    yaml_service stable default "$BE"
} >"$M/stable.yaml"
# slice ADDRESS...: rewrites the EndpointSlice of `stable` with these loopback addresses.
slice() { yaml_endpoint_slice stable default "$BE" "$@" | put "$M/slice.yaml"; }
slice 127.0.0.1 127.0.0.2

"$WORK/portico" --manifests "$M" --http-listen "127.0.0.1:$PO" --admin-listen "127.0.0.1:$PA" \
    --threads "$WORKERS" --access-log off >"$WORK/portico.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$PO"
wait_200 "http://127.0.0.1:$PO/" -H 'Host: stable.local'
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
    slice ${sets[i % 3]}
    slice_changes=$((slice_changes + 1))
    if ((i % 10 == 5)); then
        n=$((i / 10))
        if ((n % 2 == 0)); then
            yaml_ingress "churn-$n" default "churn-$n.local" stable | put "$M/churn.yaml"
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
