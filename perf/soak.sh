#!/usr/bin/env bash
# Soak: Portico under steady load with route and endpoint churn, for a bounded time.
# Records Portico's RSS and open file descriptors every 10 s; both must stay flat.
#
#   perf/soak.sh [SECONDS]        (default 600; everything on 127.0.0.0/8; stops by itself)
#
# Needs: a release build (built if missing), wrk and nginx (installed with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
OUT=${OUT:-perf/out/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
[ -x target/release/portico ] || cargo build --release --bin portico
BIN=$OUT/portico
cp target/release/portico "$BIN"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Backends: nginx on three loopback "pods", one static body.
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.9.1:18080; listen 127.0.9.2:18080; listen 127.0.9.3:18080;
           location / { return 200 "soak\n"; } }
}
EOF
nginx -c "$WORK/nginx.conf"

M=$WORK/manifests
mkdir -p "$M"
cat > "$M/class.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
EOF
service() { # name ips...
  local name=$1; shift
  { echo "apiVersion: v1"; echo "kind: Service"
    echo "metadata: { name: $name, namespace: soak }"
    echo "spec: { ports: [ { port: 80, targetPort: 18080 } ] }"
    echo "---"
    echo "apiVersion: discovery.k8s.io/v1"; echo "kind: EndpointSlice"
    echo "metadata: { name: $name-1, namespace: soak, labels: { kubernetes.io/service-name: $name } }"
    echo "addressType: IPv4"
    echo "ports: [ { port: 18080 } ]"
    echo "endpoints:"
    for ip in "$@"; do echo "  - addresses: [\"$ip\"]"; done
  } > "$M/$name.tmp" && mv "$M/$name.tmp" "$M/$name.yaml"
}
ingress() { # name host service
  cat > "$M/.ing-$1.tmp" <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: $1, namespace: soak }
spec:
  ingressClassName: portico
  rules:
    - host: $2
      http: { paths: [ { path: /, pathType: Prefix, backend: { service: { name: $3, port: { number: 80 } } } } ] }
EOF
  mv "$M/.ing-$1.tmp" "$M/ing-$1.yaml"
}
service stable 127.0.9.1 127.0.9.2 127.0.9.3
ingress stable stable.soak stable
service churn 127.0.9.1

HTTP=127.0.0.1:18480
ADMIN=127.0.0.1:18481
"$BIN" --manifests "$M" --http-listen $HTTP --https-listen 127.0.0.1:18482 --admin-listen $ADMIN \
  --threads 2 --access-log off > "$OUT/portico.log" 2>&1 &
PORTICO=$!
PIDS+=("$PORTICO")
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done

# Load on the stable route for the whole run.
wrk -t1 -c32 -d"${DURATION}s" --latency -H 'Host: stable.soak' "http://$HTTP/" > "$OUT/wrk.txt" 2>&1 &
PIDS+=("$!")

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
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$PORTICO/status")
  fds=$(ls "/proc/$PORTICO/fd" | wc -l)
  echo "$((SECONDS - start)) $rss $fds" | tee -a "$OUT/samples.txt"
  sleep 10
done
wait "${PIDS[1]}" || true
cat "$OUT/wrk.txt"
first=$(sed -n 3p "$OUT/samples.txt"); last=$(tail -1 "$OUT/samples.txt")
gen=$(curl -s "http://$ADMIN/metrics" | awk '/^portico_config_generation/ {print $2}')
echo "soak: ${DURATION}s, snapshots published: $gen"
echo "soak: after warm-up (t rss_kib fds): $first   end: $last"
grep -E "Non-2xx|Socket errors" "$OUT/wrk.txt" && { echo "soak: FAILED (errors on the stable route)"; exit 1; }
echo "soak: zero non-2xx responses and zero socket errors on the stable route"
