#!/usr/bin/env bash
# TLS termination: Portico against Debian's nginx, same certificate, same upstream, same run.
#
#   perf/tls.sh                      # builds target/release/portico if needed
#   PORTICO_BIN=path/to/portico perf/tls.sh     # (or PORTICO=...)
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
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNECTIONS=${CONNECTIONS:-50}

need_tools nginx:nginx-light wrk:wrk openssl:openssl curl:curl taskset:util-linux ss:iproute2
PORTICO=${PORTICO_BIN:-${PORTICO:-}}
need_portico
setup_work perf-tls

UP=$(free_port); NG=$(free_port); NGP=$(free_port); PH=$(free_port); PS=$(free_port); PA=$(free_port)

# The one certificate both proxies serve.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=perf.test -addext subjectAltName=DNS:perf.test \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

# The upstream: nginx answering 200 on keep-alive connections.
backend_conf "$WORK/up" <<EOF
keepalive_requests 1000000;
server {
  listen 127.0.0.1:$UP;
  location / { return 200 "ok\n"; }
}
EOF
start_nginx "$WORK/up" taskset -c 1
wait_port 127.0.0.1 "$UP"

# nginx terminating TLS, proxying with upstream keep-alive.
mkdir -p "$WORK/ng"
cat >"$WORK/ng/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/ng/nginx.pid;
error_log $WORK/ng/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$NG ssl;
    listen 127.0.0.1:$NGP;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
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
start_nginx "$WORK/ng" taskset -c 0
NGINX_PID=${PIDS[-1]}
wait_port 127.0.0.1 "$NG"

# Portico: the same certificate as its default, and as the Secret of an Ingress host.
mkdir -p "$WORK/manifests"
indent() { sed 's/^/    /' "$1"; }
{
  yaml_ingress_class
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata: { name: perf-tls, namespace: default }
type: kubernetes.io/tls
stringData:
  tls.crt: |
$(indent "$WORK/tls.crt")
  tls.key: |
$(indent "$WORK/tls.key")
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: perf, namespace: default }
spec:
  ingressClassName: portico
  tls: [{ hosts: [perf.test], secretName: perf-tls }]
  defaultBackend: { service: { name: up, port: { number: 80 } } }
---
EOF
  yaml_service up default "$UP"
  echo ---
  yaml_endpoint_slice up default "$UP" 127.0.0.1
} >"$WORK/manifests/perf.yaml"
taskset -c 0 "$WORK/portico" --manifests "$WORK/manifests" --threads 1 --access-log off \
  --http-listen "127.0.0.1:$PH" --https-listen "127.0.0.1:$PS" --admin-listen "127.0.0.1:$PA" \
  --default-tls-cert "$WORK/tls.crt" --default-tls-key "$WORK/tls.key" \
  >"$WORK/portico.log" 2>&1 &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")

wait_200 "http://127.0.0.1:$PA/readyz" || true
wait_200 "https://127.0.0.1:$PS/" -k || true
curl -skf "https://127.0.0.1:$PS/" >/dev/null || { cat "$WORK/portico.log"; echo "Portico is not serving" >&2; exit 1; }
curl -skf "https://127.0.0.1:$NG/" >/dev/null || { cat "$WORK/ng/error.log"; echo "nginx is not serving" >&2; exit 1; }

# Both must present the same certificate.
fp() { openssl s_client -connect "127.0.0.1:$1" -servername perf.test </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256; }
[ "$(fp "$PS")" = "$(fp "$NG")" ] || { echo "the proxies serve different certificates" >&2; exit 1; }

HZ=$(getconf CLK_TCK)

# One wrk run against port $1 of process $2; prints "requests/s requests-per-CPU-second".
# With `Connection: close`, requests are new TLS handshakes.
run() { # port pid mode
  local extra=() scheme=https before after
  [ "$3" = close ] && extra=(-H 'Connection: close')
  [ "$3" = plain ] && scheme=http
  before=$(cpu_ticks "$2")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "${extra[@]}" \
    "$scheme://127.0.0.1:$1/" >"$WORK/wrk.out" 2>&1
  after=$(cpu_ticks "$2")
  if grep -q "Non-2xx\|Socket errors: connect [1-9]" "$WORK/wrk.out"; then
    grep "Non-2xx\|Socket errors" "$WORK/wrk.out" >&2
  fi
  awk -v cpu="$(( after - before ))" -v hz="$HZ" '
    / requests in / { n = $1 }
    /Requests\/sec/ { rps = $2 }
    END { printf "%s %.0f\n", rps, (cpu > 0 ? n / (cpu / hz) : 0) }' "$WORK/wrk.out"
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
