#!/usr/bin/env bash
# Portico against nginx, side by side, on loopback, in one bounded run.
#
#   perf/load.sh                      # every case, wrk and oha, 5 s per run, 2 workers each
#   DURATION=10 CASES="c16 c256" TOOLS=wrk perf/load.sh
#
# A fast nginx backend serves a small body (/small, 15 bytes) and a 16 KiB one (/16k). Portico
# (release build, `--access-log off`) and nginx-as-proxy (`access_log off`) proxy to it with the
# same worker count, upstream keep-alive and the same X-Forwarded-* headers. Each case runs
# Portico, nginx, Portico, nginx (A/B/A/B, ROUNDS pairs) after a short warm-up of each, and prints
# requests/s, p50 and p99 latency, proxy CPU time per request (utime+stime of every process and
# thread of the proxy, from /proc), proxy RSS and the Portico/nginx ratios. Portico's upstream
# connection reuse comes from its /metrics.
#
# Knobs (environment): DURATION (s per run, default 5), WORKERS (default: number of CPUs),
# ROUNDS (A/B pairs, default 2), CASES (default "c1 c16 c256 body16k https"), TOOLS (default
# "wrk oha"), PORTICO (a binary to use instead of building one), KEEP=1 keeps the work directory.
set -euo pipefail

DURATION=${DURATION:-5}
WORKERS=${WORKERS:-$(nproc)}
ROUNDS=${ROUNDS:-2}
CASES=${CASES:-"c1 c16 c256 body16k https"}
TOOLS=${TOOLS:-"wrk oha"}
WARMUP=${WARMUP:-1}
HZ=$(getconf CLK_TCK)
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

# --- tools -------------------------------------------------------------------------------------
need_tools nginx:nginx-light wrk:wrk jq:jq curl:curl openssl:openssl ss:iproute2
if [[ " $TOOLS " == *" oha "* ]]; then need_oha; fi
need_portico
setup_work load

BE=$(free_port)
NG=$(free_port)
NGS=$(free_port)
PO=$(free_port)
POS=$(free_port)
PA=$(free_port)

# --- the backend -------------------------------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/nginx" "$WORK/manifests"
head -c 16384 /dev/zero | tr '\0' 'x' >"$WORK/www/16k"
backend_conf "$WORK/backend" <<EOF
default_type text/plain;
keepalive_requests 10000000;
keepalive_timeout 300s;
server {
    listen 127.0.0.1:$BE backlog=4096;
    root $WORK/www;
    location = /small { return 200 "hello, portico\n"; }
    location = /16k { }
}
EOF
start_nginx "$WORK/backend"
wait_port 127.0.0.1 "$BE"

# --- TLS material (for the https case) -----------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

# --- nginx as the proxy ------------------------------------------------------------------------
# The headers Portico sets, so that both do the same work per request.
nginx_proxy_directives backend >"$WORK/nginx/proxy.inc"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log error;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$BE;
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NG backlog=4096;
        location / { include $WORK/nginx/proxy.inc; }
    }
    server {
        listen 127.0.0.1:$NGS ssl backlog=4096;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        location / { include $WORK/nginx/proxy.inc; }
    }
}
EOF
start_nginx "$WORK/nginx"
NGINX_PID=${PIDS[-1]}
wait_port 127.0.0.1 "$NG"

# --- Portico -----------------------------------------------------------------------------------
b64() { base64 -w0 "$1"; }
{
    yaml_ingress_class
    cat <<EOF
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: bench, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z" }
spec:
  ingressClassName: portico
  rules:
    - http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: backend, port: { number: 80 } } } }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: bench-tls, namespace: default, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  ingressClassName: portico
  tls:
    - { hosts: [localhost], secretName: bench-tls }
  rules:
    - host: localhost
      http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: backend, port: { number: 80 } } } }
---
apiVersion: v1
kind: Secret
metadata: { name: bench-tls, namespace: default }
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$WORK/tls.crt")
  tls.key: $(b64 "$WORK/tls.key")
---
EOF
    yaml_service backend default "$BE"
    echo ---
    yaml_endpoint_slice backend default "$BE" 127.0.0.1
} >"$WORK/manifests/bench.yaml"
"$WORK/portico" --manifests "$WORK/manifests" --http-listen "127.0.0.1:$PO" \
    --https-listen "127.0.0.1:$POS" --admin-listen "127.0.0.1:$PA" \
    --threads "$WORKERS" --access-log off >"$WORK/portico.log" 2>&1 &
PORTICO_PID=$!
PIDS+=("$PORTICO_PID")
wait_port 127.0.0.1 "$PO"
wait_200 "http://127.0.0.1:$PO/small"
for url in "http://127.0.0.1:$PO/small" "http://127.0.0.1:$NG/small" "http://127.0.0.1:$PO/16k"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url")
    [[ $code == 200 ]] || { log "$url answered $code"; exit 1; }
done

HTTPS_OK=0
if [[ " $CASES " == *" https "* ]]; then
    code=$(curl -sk -o /dev/null -w '%{http_code}' --resolve "localhost:$POS:127.0.0.1" "https://localhost:$POS/small" || true)
    if [[ $code == 200 ]]; then
        HTTPS_OK=1
    else
        log "https: skipped, Portico's HTTPS listener does not answer on this build (got '$code')"
    fi
fi

# --- measuring ---------------------------------------------------------------------------------
rss_kib() {
    local t=0 p v
    for p in $(proc_pids "$1"); do
        v=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
upstream_conns() { # "new reused" from Portico's /metrics
    curl -s "http://127.0.0.1:$PA/metrics" | awk '
        /^portico_upstream_connections_total\{reused="false"\}/ { n = $2 }
        /^portico_upstream_connections_total\{reused="true"\}/ { r = $2 }
        END { printf "%d %d\n", n, r }'
}
to_ms() { # "123.45us" | "1.2ms" | "1.1s" -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
        else { sub(/s$/, "", v); print v * 1000 } }'
}

# run_tool TOOL CONNS URL SECONDS -> "requests rps p50ms p99ms bad errors"
run_tool() {
    local tool=$1 conns=$2 url=$3 secs=$4 out threads
    threads=1
    case $tool in
    wrk)
        out=$(timeout $((secs + 30)) wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$url" 2>&1) || true
        local reqs rps p50 p99 bad errs
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        bad=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
        errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
        echo "${reqs:-0} ${rps:-0} $p50 $p99 ${bad:-0} ${errs:-0}"
        ;;
    oha)
        out=$(timeout $((secs + 30)) oha --no-tui --output-format json --insecure -w -z "${secs}s" -c "$conns" "$url" 2>/dev/null) || true
        jq -r '[
            ([.statusCodeDistribution[]] | add // 0),
            .summary.requestsPerSec,
            (.latencyPercentiles.p50 * 1000),
            (.latencyPercentiles.p99 * 1000),
            ([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0),
            ([.errorDistribution[]] | add // 0)
        ] | map(tostring) | join(" ")' <<<"$out" 2>/dev/null || echo "0 0 0 0 0 0"
        ;;
    esac
}

RESULTS=$WORK/results.txt
: >"$RESULTS"
REUSE_NEW=0
REUSE_ALL=0
REUSE_REQS=0
STEADY_NEW=0
STEADY_ALL=0

# measure CASE TOOL PROXY URL CONNS
measure() {
    local case=$1 tool=$2 proxy=$3 url=$4 conns=$5 pid c0 c1 m0 m1 r sp
    if [[ $proxy == portico ]]; then pid=$PORTICO_PID; else pid=$NGINX_PID; fi
    local steady=$WORK/steady.txt
    if [[ $proxy == portico ]]; then
        m0=$(upstream_conns)
        # Steady state: from 1 s after the start to 1 s before the end, away from the connection
        # churn at the edges of a run (clients that disconnect mid-request at the end of a run
        # take their upstream connections with them; the next run opens new ones).
        (sleep 1 && upstream_conns >"$steady" && sleep $((DURATION > 2 ? DURATION - 2 : 0)) &&
            upstream_conns >>"$steady") &
        sp=$!
    fi
    c0=$(cpu_ticks "$pid")
    r=$(run_tool "$tool" "$conns" "$url" "$DURATION")
    c1=$(cpu_ticks "$pid")
    [[ $proxy == portico ]] && wait "$sp"
    local reqs rps p50 p99 bad errs cpu_us rss
    read -r reqs rps p50 p99 bad errs <<<"$r"
    rss=$(rss_kib "$pid")
    cpu_us=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", n ? t / hz / n * 1e6 : 0 }')
    local extra=""
    if [[ $proxy == portico ]]; then
        m1=$(upstream_conns)
        local n0 r0 n1 r1
        read -r n0 r0 <<<"$m0"
        read -r n1 r1 <<<"$m1"
        REUSE_NEW=$((REUSE_NEW + n1 - n0))
        REUSE_ALL=$((REUSE_ALL + n1 - n0 + r1 - r0))
        REUSE_REQS=$((REUSE_REQS + reqs))
        local sn0 sr0 sn1 sr1
        { read -r sn0 sr0 && read -r sn1 sr1; } <"$steady" || sn0=0 sr0=0 sn1=0 sr1=0
        STEADY_NEW=$((STEADY_NEW + sn1 - sn0))
        STEADY_ALL=$((STEADY_ALL + sn1 - sn0 + sr1 - sr0))
        extra=" upstream_new=$((n1 - n0)) upstream_reused=$((r1 - r0)) steady_new=$((sn1 - sn0)) steady_reused=$((sr1 - sr0))"
    fi
    printf '  %-8s %-4s %-8s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  cpu %6s us/req  rss %6d KiB  non2xx %s  errors %s%s\n' \
        "$case" "$tool" "$proxy" "$rps" "$p50" "$p99" "$cpu_us" "$rss" "$bad" "$errs" "$extra" >&2
    echo "$case $tool $proxy $rps $p50 $p99 $cpu_us $rss $bad $errs" >>"$RESULTS"
}

log "$("$WORK/portico" --version 2>/dev/null | head -1) vs $("$NGINX" -v 2>&1 | sed 's/.*: //'); ${WORKERS} workers each; ${DURATION} s per run; $(nproc) CPUs"
for case in $CASES; do
    https=0
    case $case in
    c1) conns=1 path=/small ;;
    c16) conns=16 path=/small ;;
    c256) conns=256 path=/small ;;
    body16k) conns=16 path=/16k ;;
    https) conns=16 path=/small https=1 ;;
    *) log "unknown case $case" && continue ;;
    esac
    if ((https)) && ((!HTTPS_OK)); then continue; fi
    for tool in $TOOLS; do
        if ((https)); then
            # wrk sends the URL's host as SNI; localhost resolves to 127.0.0.1 (checked above).
            purl="https://localhost:$POS$path"
            nurl="https://localhost:$NGS$path"
        else
            purl="http://127.0.0.1:$PO$path"
            nurl="http://127.0.0.1:$NG$path"
        fi
        # Warm-up: open the upstream connections, fault in memory.
        run_tool "$tool" "$conns" "$purl" "$WARMUP" >/dev/null
        run_tool "$tool" "$conns" "$nurl" "$WARMUP" >/dev/null
        for _ in $(seq 1 "$ROUNDS"); do
            measure "$case" "$tool" portico "$purl" "$conns"
            measure "$case" "$tool" nginx "$nurl" "$conns"
        done
    done
done

# --- summary -----------------------------------------------------------------------------------
echo
echo "Portico vs nginx: ${WORKERS} workers each, ${DURATION} s per run, ${ROUNDS} A/B pairs, means of the rounds; ratio = Portico/nginx"
echo
printf '| %-7s | %-4s | %-21s | %-5s | %-19s | %-19s | %-5s | %-17s | %-5s | %-15s | %s |\n' \
    case tool "req/s Portico / nginx" ratio "p50 ms P / N" "p99 ms P / N" ratio "CPU us/req P / N" ratio "RSS MiB P / N" "errors P / N"
echo "|---------|------|-----------------------|-------|---------------------|---------------------|-------|-------------------|-------|-----------------|------|"
awk '
    { k = $1 " " $2; key[k] = 1; order[k] = order[k] ? order[k] : ++n; p = $3
      rps[k, p] += $4; p50[k, p] += $5; p99[k, p] += $6; cpu[k, p] += $7
      if ($8 > rss[k, p]) rss[k, p] = $8; err[k, p] += $9 + $10; cnt[k, p]++ }
    END {
        for (k in key) idx[order[k]] = k
        for (i = 1; i <= n; i++) {
            k = idx[i]; split(k, a, " ")
            P = "portico"; N = "nginx"
            rp = rps[k, P] / cnt[k, P]; rn = rps[k, N] / cnt[k, N]
            q5p = p50[k, P] / cnt[k, P]; q5n = p50[k, N] / cnt[k, N]
            q9p = p99[k, P] / cnt[k, P]; q9n = p99[k, N] / cnt[k, N]
            cp = cpu[k, P] / cnt[k, P]; cn = cpu[k, N] / cnt[k, N]
            printf "| %-7s | %-4s | %9.0f / %-9.0f | %5.2f | %8.3f / %-8.3f | %8.3f / %-8.3f | %5.2f | %7.1f / %-7.1f | %5.2f | %6.1f / %-6.1f | %d / %d |\n",
                a[1], a[2], rp, rn, (rn ? rp / rn : 0), q5p, q5n, q9p, q9n, (q9n ? q9p / q9n : 0),
                cp, cn, (cn ? cp / cn : 0), rss[k, P] / 1024, rss[k, N] / 1024, err[k, P], err[k, N]
        }
    }' "$RESULTS"
echo
awk -v n="$REUSE_NEW" -v a="$REUSE_ALL" -v r="$REUSE_REQS" -v sn="$STEADY_NEW" -v sa="$STEADY_ALL" 'BEGIN {
    printf "Portico upstream connections, whole measured runs: %d new for %d upstream requests (%d client requests): reuse %.3f%%\n",
        n, a, r, (a ? 100 * (1 - n / a) : 0)
    printf "Portico upstream connections, steady state (1 s after start to 1 s before end): %d new for %d upstream requests: reuse %.3f%%\n",
        sn, sa, (sa ? 100 * (1 - sn / sa) : 0) }'
if ((!HTTPS_OK)) && [[ " $CASES " == *" https "* ]]; then
    echo "https: skipped (Portico's HTTPS listener did not answer on this build)"
fi
