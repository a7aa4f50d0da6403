#!/usr/bin/env bash
# TLS termination: Portico against Debian's nginx, same certificate, same upstream, same run.
#
#   perf/tls.sh                      # builds target/release/portico if needed
#   PORTICO_BIN=path/to/portico perf/tls.sh
#   SECONDS_PER_RUN=10 CONNECTIONS=50 perf/tls.sh
#
# Two measures (and plain HTTP as a reference), each A/B/A/B (Portico, nginx, Portico, nginx), loopback only:
#   1. requests/s over TLS with keep-alive (wrk, CONNECTIONS connections, HTTP/1.1);
#   2. new TLS handshakes/s: wrk with `Connection: close`, so that every request is a new TCP
#      connection and a full TLS handshake (wrk does not resume sessions).
# Both proxies terminate TLS with the same ECDSA P-256 certificate (TLS 1.3, X25519) and proxy
# over keep-alive HTTP/1.1 to one nginx upstream that answers `200 ok`. Each proxy gets one
# worker pinned to CPU 0; wrk and the upstream share CPU 1. Access logs are off on both.
# The result is reported as Portico/nginx ratios, of requests/s and of requests per CPU-second of
# the proxy process (its own CPU time, read from /proc, which other load disturbs much less).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-50}

need=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v taskset >/dev/null 2>&1 || need="$need util-linux"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "installing:$need" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${PORTICO_BIN:-}" ]; then
  sh .ci/setup
  cargo build --release --quiet
  PORTICO_BIN=${CARGO_TARGET_DIR:-target}/release/portico
fi

work=$(mktemp -d /tmp/portico-perf-tls.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP=$(free_port); NG=$(free_port); NGP=$(free_port); PH=$(free_port); PS=$(free_port); PA=$(free_port)

# The one certificate both proxies serve.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=perf.test -addext subjectAltName=DNS:perf.test \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

# The upstream: nginx answering 200 on keep-alive connections.
mkdir -p "$work/up" "$work/ng"
cat >"$work/up/nginx.conf" <<EOF
worker_processes 1;
pid $work/up/nginx.pid;
error_log $work/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    location / { return 200 "ok\n"; }
  }
}
EOF
taskset -c 1 "$NGINX" -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)

# nginx terminating TLS, proxying with upstream keep-alive.
cat >"$work/ng/nginx.conf" <<EOF
worker_processes 1;
pid $work/ng/nginx.pid;
error_log $work/ng/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG ssl;
    listen 127.0.0.1:$NGP;
    ssl_certificate $work/tls.crt;
    ssl_certificate_key $work/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
taskset -c 0 "$NGINX" -p "$work/ng" -c "$work/ng/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
pids+=($NGINX_PID)

# Portico: the same certificate as its default, and as the Secret of an Ingress host.
mkdir -p "$work/manifests"
indent() { sed 's/^/    /' "$1"; }
cat >"$work/manifests/perf.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
---
apiVersion: v1
kind: Secret
metadata: { name: perf-tls, namespace: default }
type: kubernetes.io/tls
stringData:
  tls.crt: |
$(indent "$work/tls.crt")
  tls.key: |
$(indent "$work/tls.key")
---
apiVersion: v1
kind: Service
metadata: { name: up, namespace: default }
spec: { ports: [{ name: web, port: 80, targetPort: $UP }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: up-1, namespace: default, labels: { kubernetes.io/service-name: up } }
addressType: IPv4
ports: [{ name: web, port: $UP }]
endpoints: [{ addresses: ["127.0.0.1"] }]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: perf, namespace: default }
spec:
  ingressClassName: portico
  tls: [{ hosts: [perf.test], secretName: perf-tls }]
  defaultBackend: { service: { name: up, port: { number: 80 } } }
EOF
taskset -c 0 "$PORTICO_BIN" --manifests "$work/manifests" --threads 1 --access-log off \
  --http-listen "127.0.0.1:$PH" --https-listen "127.0.0.1:$PS" --admin-listen "127.0.0.1:$PA" \
  --default-tls-cert "$work/tls.crt" --default-tls-key "$work/tls.key" \
  >"$work/portico.log" 2>&1 &
PORTICO_PID=$!
pids+=($PORTICO_PID)

for _ in $(seq 100); do
  if curl -sf "http://127.0.0.1:$PA/readyz" >/dev/null \
    && curl -skf "https://127.0.0.1:$PS/" >/dev/null \
    && curl -skf "https://127.0.0.1:$NG/" >/dev/null; then
    break
  fi
  sleep 0.1
done
curl -skf "https://127.0.0.1:$PS/" >/dev/null || { cat "$work/portico.log"; echo "Portico is not serving" >&2; exit 1; }
curl -skf "https://127.0.0.1:$NG/" >/dev/null || { cat "$work/ng/error.log"; echo "nginx is not serving" >&2; exit 1; }

# Both must present the same certificate.
fp() { openssl s_client -connect "127.0.0.1:$1" -servername perf.test </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256; }
[ "$(fp "$PS")" = "$(fp "$NG")" ] || { echo "the proxies serve different certificates" >&2; exit 1; }

# CPU time (clock ticks) of a process and its children: nginx's master and worker; Portico's
# threads are in its own counters.
ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)

# One wrk run against port $1 of process $2; prints "requests/s requests-per-CPU-second".
# With `Connection: close`, requests are new TLS handshakes.
run() { # port pid mode
  local extra=() scheme=https before after
  [ "$3" = close ] && extra=(-H 'Connection: close')
  [ "$3" = plain ] && scheme=http
  before=$(ticks "$2")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "${extra[@]}" \
    "$scheme://127.0.0.1:$1/" >"$work/wrk.out" 2>&1
  after=$(ticks "$2")
  if grep -q "Non-2xx\|Socket errors: connect [1-9]" "$work/wrk.out"; then
    grep "Non-2xx\|Socket errors" "$work/wrk.out" >&2
  fi
  awk -v cpu="$(( after - before ))" -v hz="$HZ" '
    / requests in / { n = $1 }
    /Requests\/sec/ { rps = $2 }
    END { printf "%s %.0f\n", rps, (cpu > 0 ? n / (cpu / hz) : 0) }' "$work/wrk.out"
}

echo "TLS perf: $(nproc) CPUs, wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, one proxy worker on CPU 0; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "certificate: ECDSA P-256; $(openssl s_client -connect "127.0.0.1:$PS" </dev/null 2>/dev/null | grep -m1 -E 'New, TLS|Protocol' | sed 's/^ *//')"
echo "Throughput (req/s) is what wrk sees; efficiency (req/CPU-s) divides the requests by the proxy's"
echo "own CPU time, which other load on the machine disturbs much less."
printf "%-40s %-26s %-26s %s\n" "" "Portico run 1, run 2" "nginx run 1, run 2" "ratio Portico/nginx"
for mode in ${MODES:-keepalive close plain}; do
  pp=$PS np=$NG label="TLS keep-alive"
  [ "$mode" = close ] && label="new TLS handshakes (1 request each)"
  [ "$mode" = plain ] && pp=$PH np=$NGP label="(reference) plain HTTP keep-alive"
  # Warm both up briefly.
  SECONDS_PER_RUN=2 run "$pp" "$PORTICO_PID" "$mode" >/dev/null
  SECONDS_PER_RUN=2 run "$np" "$NGINX_PID" "$mode" >/dev/null
  p1=$(run "$pp" "$PORTICO_PID" "$mode"); n1=$(run "$np" "$NGINX_PID" "$mode")
  p2=$(run "$pp" "$PORTICO_PID" "$mode"); n2=$(run "$np" "$NGINX_PID" "$mode")
  awk -v l="$label" -v p1="$p1" -v p2="$p2" -v n1="$n1" -v n2="$n2" 'BEGIN {
    split(p1, a, " "); split(p2, b, " "); split(n1, c, " "); split(n2, d, " ");
    printf "%-40s %9.0f %9.0f req/s      %9.0f %9.0f req/s      %.2f\n", l, a[1], b[1], c[1], d[1], (c[1] + d[1] > 0 ? (a[1] + b[1]) / (c[1] + d[1]) : 0);
    printf "%-40s %9.0f %9.0f req/CPU-s  %9.0f %9.0f req/CPU-s  %.2f\n", "", a[2], b[2], c[2], d[2], (c[2] + d[2] > 0 ? (a[2] + b[2]) / (c[2] + d[2]) : 0);
  }'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
