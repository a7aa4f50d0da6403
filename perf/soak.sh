#!/usr/bin/env bash
# Soak: Portico under steady load with route and endpoint churn, for a bounded time.
# Records Portico's RSS and open file descriptors every 10 s; both must stay flat.
#
#   perf/soak.sh [SECONDS]        (default 600; everything on 127.0.0.0/8; stops by itself)
#
# Needs wrk and nginx (installed with apt if missing). PORTICO=path runs that binary; unset, a
# release build is made. KEEP=1 keeps the work directory.
set -euo pipefail
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools wrk:wrk nginx:nginx-light
need_portico
setup_work soak
cd "$(dirname "$0")/.."
DURATION=${1:-600}
OUT=${OUT:-perf/out/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
BIN=$OUT/portico
cp "$WORK/portico" "$BIN"

# Backends: nginx on three loopback "pods", one static body.
backend_conf "$WORK/backend" <<EOF
server { listen 127.0.9.1:18080; listen 127.0.9.2:18080; listen 127.0.9.3:18080;
         location / { return 200 "soak\n"; } }
EOF
start_nginx "$WORK/backend"
wait_port 127.0.9.1 18080

M=$WORK/manifests
mkdir -p "$M"
yaml_ingress_class >"$M/class.yaml"
service() { # name ips...
  local name=$1; shift
  { yaml_service "$name" soak 18080; echo "---"; yaml_endpoint_slice "$name" soak 18080 "$@"; } | put "$M/$name.yaml"
}
ingress() { # name host service
  yaml_ingress "$1" soak "$2" "$3" | put "$M/ing-$1.yaml"
}
service stable 127.0.9.1 127.0.9.2 127.0.9.3
ingress stable stable.soak stable
service churn 127.0.9.1

HTTP=127.0.0.1:18480
ADMIN=127.0.0.1:18481
"$BIN" --manifests "$M" --http-listen $HTTP --https-listen 127.0.0.1:18482 --admin-listen $ADMIN \
  --threads 2 --access-log off > "$OUT/portico.log" 2>&1 &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")
wait_200 "http://$ADMIN/readyz"

# Load on the stable route for the whole run.
wrk -t1 -c32 -d"${DURATION}s" --latency -H 'Host: stable.soak' "http://$HTTP/" > "$OUT/wrk.txt" 2>&1 &
WRK=$!
PIDS+=("$WRK")

# Churn: endpoints change 10 times a second; an Ingress is added or removed every second.
(
  end=$((SECONDS + DURATION)); i=0
  while [ $SECONDS -lt $end ]; do
    case $((i % 3)) in 0) service churn 127.0.9.1 ;; 1) service churn 127.0.9.1 127.0.9.2 ;; 2) service churn 127.0.9.3 ;; esac
    if [ $((i % 10)) -eq 0 ]; then
      if [ -f "$M/ing-churn-ing.yaml" ]; then rm -f "$M/ing-churn-ing.yaml"; else ingress churn-ing churn.soak churn; fi
    fi
    i=$((i + 1)); sleep 0.1
  done
) &
PIDS+=("$!")

echo "t_s rss_kib fds" | tee "$OUT/samples.txt"
start=$SECONDS
while [ $((SECONDS - start)) -le "$DURATION" ]; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$PORTICO_PID/status")
  fds=$(find "/proc/$PORTICO_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  echo "$((SECONDS - start)) $rss $fds" | tee -a "$OUT/samples.txt"
  sleep 10
done
wait "$WRK" || true
cat "$OUT/wrk.txt"
first=$(sed -n 3p "$OUT/samples.txt"); last=$(tail -1 "$OUT/samples.txt")
gen=$(curl -s "http://$ADMIN/metrics" | awk '/^portico_config_generation/ {print $2}')
echo "soak: ${DURATION}s, snapshots published: $gen"
echo "soak: after warm-up (t rss_kib fds): $first   end: $last"
grep -E "Non-2xx|Socket errors" "$OUT/wrk.txt" && { echo "soak: FAILED (errors on the stable route)"; exit 1; }
echo "soak: zero non-2xx responses and zero socket errors on the stable route"
