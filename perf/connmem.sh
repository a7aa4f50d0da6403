#!/usr/bin/env bash
# Memory per client connection, and latency under a slow-header flood: Portico, nginx and HAProxy,
# one worker each, on loopback, bounded (about 1 minute per proxy).
#
#   perf/connmem.sh                   # 10,000 connections per measure; portico nginx haproxy
#   CONNS=2000 PROXIES="portico nginx" perf/connmem.sh
#   PORTICO_ARGS="--http1-engine pingora" perf/connmem.sh   # extra Portico arguments
#
# One nginx backend answers /small (15 bytes). Each proxy (one worker pinned to CPU 1; the
# clients and the backend on CPU 0; header timeouts 60 s and keep-alive timeouts 300 s in all)
# is measured twice, each time as a new process, warmed up first, by the clients of
# perf/connmem.py (Python asyncio):
# 1. idle keep-alive: CONNS connections that each made one request (at most 16 in flight, so
#    that few upstream connections open) and stay open; RSS growth of the proxy (VmRSS of its
#    processes) / CONNS, in KiB per connection; then they close and the RSS is read again;
# 2. no flood: latency of normal requests, each on a new connection, RATE a second for
#    SECONDS_PER_RUN (p50, p99, max), and wrk on 16 keep-alive connections for SECONDS_PER_RUN
#    (requests/s, p99); then header still arriving: CONNS connections that each sent the first
#    part of a request header (request line, Host, User-Agent and an open `X-Slow: ` field) and
#    then nothing; KiB per connection as in 1, and, while they are held (a slow-header flood),
#    the latency measures again. The clients count the held connections that the proxy closed or
#    answered.
#
# Knobs (environment): CONNS (default 10000, at most `ulimit -n` less 500; HAProxy, which needs
# two descriptors per connection it accepts, gets at most half that less 250), PROXIES (default
# "portico nginx haproxy"), RATE (default 200) and SECONDS_PER_RUN (default 5) for the latency client,
# PORTICO_ARGS, PORTICO (a binary to use instead of building one), KEEP=1 keeps the work directory.
set -euo pipefail

CONNS=${CONNS:-10000}
PROXIES=${PROXIES:-"portico nginx haproxy"}
RATE=${RATE:-200}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

has() { [[ " $PROXIES " == *" $1 "* ]]; }
need_tools nginx:nginx-light wrk:wrk curl:curl ss:iproute2 taskset:util-linux python3:python3
if has haproxy; then need_tools haproxy:haproxy; fi
if has portico; then need_portico; else PORTICO=${PORTICO:-/bin/true}; fi
setup_work connmem

# File descriptors: the proxy needs one per client connection, the holding client one each too.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
if ((CONNS > FDS - 500)); then
    log "ulimit -n is $FDS: CONNS lowered from $CONNS to $((FDS - 500))"
    CONNS=$((FDS - 500))
fi
PIN_PROXY=(taskset -c 1)
PIN_LOAD=(taskset -c 0)
CLIENT=(python3 "$PERF_REPO/perf/connmem.py")

BE=$(free_port)
backend_conf "$WORK/backend" <<EOF
keepalive_requests 10000000;
keepalive_timeout 300s;
server {
    listen 127.0.0.1:$BE backlog=4096;
    location = /small { return 200 "hello, portico\n"; }
}
EOF
start_nginx "$WORK/backend" "${PIN_LOAD[@]}"
wait_port 127.0.0.1 "$BE"

# start_proxy NAME: starts the proxy NAME on CPU 1; sets PORT and PID.
start_proxy() {
    PORT=$(free_port)
    case $1 in
    nginx)
        mkdir -p "$WORK/nginx"
        nginx_proxy_directives backend >"$WORK/nginx/proxy.inc"
        cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log error;
worker_rlimit_nofile $FDS;
events { worker_connections $((FDS - 100)); }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_header_timeout 60s;
    upstream backend {
        server 127.0.0.1:$BE;
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PORT backlog=4096;
        location / { include $WORK/nginx/proxy.inc; }
    }
}
EOF
        start_nginx "$WORK/nginx" "${PIN_PROXY[@]}"
        ;;
    haproxy)
        # HAProxy refuses to start when 2 × maxconn exceeds its file descriptor limit.
        HAPROXY_MAXCONN=$(((FDS - 100) / 2)) haproxy_conf "$WORK/haproxy" 1 "127.0.0.1:$BE" "127.0.0.1:$PORT"
        start_haproxy "$WORK/haproxy" "${PIN_PROXY[@]}"
        ;;
    portico)
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
        "${PIN_PROXY[@]}" "$WORK/portico" --manifests "$WORK/manifests" \
            --http-listen "127.0.0.1:$PORT" --https-listen off \
            --admin-listen "127.0.0.1:$(free_port)" --threads 1 --access-log off \
            --client-header-timeout 60s --keepalive-timeout 300s \
            "${PORTICO_EXTRA[@]}" >"$WORK/portico.log" 2>&1 &
        PIDS+=($!)
        ;;
    *)
        log "unknown proxy $1"
        exit 1
        ;;
    esac
    PID=${PIDS[-1]}
    wait_200 "http://127.0.0.1:$PORT/small"
}

# stop_proxy: stops the proxy PID (as cleanup does) and waits for it.
stop_proxy() {
    if [[ $(cat "/proc/$PID/comm" 2>/dev/null) == haproxy ]]; then kill -TERM "$PID"; else kill -INT "$PID"; fi
    for _ in $(seq 1 50); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$PID" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# latency_pair LABEL: the latency client (new connections) and then wrk (keep-alive), on CPU 0;
# appends "LABEL requests ok errors p50 p99 max wrk_rps wrk_p99 wrk_errors proxy_cpu% cpu0%" to
# $WORK/lat.txt (the proxy's CPU in % of one core and how busy CPU 0 was, over both).
latency_pair() {
    local l w rps p99 errs c0 c1 j0 j1 t0 t1 usage
    c0=$(cpu_ticks "$PID")
    j0=$(cpu_jiffies 0)
    t0=$(date +%s.%N)
    l=$(timeout $((SECONDS_PER_RUN + 30)) "${PIN_LOAD[@]}" "${CLIENT[@]}" latency 127.0.0.1 "$PORT" \
        --rate "$RATE" --seconds "$SECONDS_PER_RUN") || l="0 0 0 0 0 0"
    w=$(timeout $((SECONDS_PER_RUN + 30)) "${PIN_LOAD[@]}" wrk -t1 -c16 -d"${SECONDS_PER_RUN}s" \
        --latency "http://127.0.0.1:$PORT/small" 2>&1) || true
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$w")
    p99=$(awk '$1 == "99%" { v = $2
        if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) }
        else { sub(/s$/, "", v); v *= 1000 } print v }' <<<"$w")
    errs=$(awk '/Socket errors:/ { gsub(",", ""); e += $4 + $6 + $8 + $10 } /Non-2xx/ { e += $NF } END { print e + 0 }' <<<"$w")
    t1=$(date +%s.%N)
    j1=$(cpu_jiffies 0)
    c1=$(cpu_ticks "$PID")
    usage=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" -v j0="$j0" -v j1="$j1" 'BEGIN {
        split(j0, a, " "); split(j1, b, " ")
        printf "%.0f %.0f", 100 * t / hz / (t1 - t0), (b[2] > a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0 }')
    echo "$1 $l ${rps:-0} ${p99:-0} $errs $usage" >>"$WORK/lat.txt"
    log "    $1: new connections (requests ok errors p50 p99 max ms): $l; wrk c16: ${rps:-0} req/s," \
        "p99 ${p99:-0} ms, errors $errs; proxy CPU, CPU 0 busy (%): $usage"
}

# held KIND: opens N connections of KIND (idle or partial) and holds them; sets HOLD_PID and
# HOLD_OUT, and waits until they are all open (the client prints `ready`).
held() {
    HOLD_OUT=$WORK/hold.$1.out
    local conc=16
    if [[ $1 == partial ]]; then conc=256; fi
    "${PIN_LOAD[@]}" "${CLIENT[@]}" hold 127.0.0.1 "$PORT" --kind "$1" --conns "$N" \
        --concurrency "$conc" --max-seconds 120 >"$HOLD_OUT" 2>"$WORK/hold.$1.err" &
    HOLD_PID=$!
    for _ in $(seq 1 1200); do
        grep -q '^ready' "$HOLD_OUT" && return 0
        kill -0 "$HOLD_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "the $1 client did not get its connections open"
    cat "$WORK/hold.$1.err" >&2
    exit 1
}

# release: closes the held connections; prints how many the proxy closed while they were held.
release() {
    kill -TERM "$HOLD_PID" 2>/dev/null || true
    wait "$HOLD_PID" 2>/dev/null || true
    awk '$1 == "closed_by_peer" { print $2 }' "$HOLD_OUT"
}

MEM=$WORK/mem.txt
: >"$MEM"
: >"$WORK/lat.txt"
LOAD_BEFORE=$(loadavg)
log "connmem: $CONNS connections per measure, one worker per proxy on CPU 1, clients on CPU 0; load average $LOAD_BEFORE"
for proxy in $PROXIES; do
    N=$CONNS
    # HAProxy's maxconn is half its file descriptor limit (see start_proxy); leave room for the
    # latency clients.
    if [[ $proxy == haproxy ]] && ((N > (FDS - 100) / 2 - 200)); then N=$(((FDS - 100) / 2 - 200)); fi
    log "$proxy: $N connections per measure"
    # Each measure on a new proxy process: an allocator keeps what the connections of a previous
    # measure freed, and would hand it to the next measure's connections.
    for kind in idle partial; do
        start_proxy "$proxy"
        # Warm-up: fault in the request path.
        "${PIN_LOAD[@]}" "${CLIENT[@]}" latency 127.0.0.1 "$PORT" --rate 500 --seconds 1 >/dev/null
        "${PIN_LOAD[@]}" wrk -t1 -c16 -d1s "http://127.0.0.1:$PORT/small" >/dev/null 2>&1
        if [[ $kind == partial ]]; then latency_pair "$proxy no-flood"; fi
        sleep 1
        r0=$(rss_kib "$PID")
        held "$kind"
        sleep 1
        r1=$(rss_kib "$PID")
        read -r _ opened failed secs <"$HOLD_OUT"
        if [[ $kind == partial ]]; then latency_pair "$proxy flood"; fi
        closed=$(release)
        sleep 2
        r2=$(rss_kib "$PID")
        echo "$proxy $kind $opened $failed $r0 $r1 $r2 ${closed:-0}" >>"$MEM"
        log "    $kind: $opened connections open ($failed failed, ${secs} s to open); RSS $r0 -> $r1 KiB" \
            "($(awk -v a="$r0" -v b="$r1" -v n="$opened" 'BEGIN { printf "%.2f", n ? (b - a) / n : 0 }') KiB each)," \
            "$r2 KiB after they closed; ${closed:-0} closed by the proxy while held"
        stop_proxy
    done
done

# --- summary -----------------------------------------------------------------------------------
echo
echo "Memory per client connection: RSS growth of the proxy (all its processes) over that many connections,"
echo "one worker each; load average at the start $LOAD_BEFORE, at the end $(loadavg)"
echo
echo "| proxy | connections | idle keep-alive KiB/conn | header arriving KiB/conn | RSS before → idle → closed (MiB) | RSS before → partial → closed (MiB) | failed | closed by proxy while held |"
echo "|---|---|---|---|---|---|---|---|"
awk '
    { p = $1; if (!(p in seen)) { seen[p] = 1; order[++n] = p }
      kib[p, $2] = $3 ? ($6 - $5) / $3 : 0
      rss[p, $2] = sprintf("%.1f → %.1f → %.1f", $5 / 1024, $6 / 1024, $7 / 1024)
      failed[p] += $4; closed[p] += $8; conns[p] = $3 }
    END {
        for (i = 1; i <= n; i++) {
            p = order[i]
            printf "| %s | %d | %.2f | %.2f | %s | %s | %d | %d |\n", p, conns[p], kib[p, "idle"], kib[p, "partial"],
                rss[p, "idle"], rss[p, "partial"], failed[p], closed[p]
        }
    }' "$MEM"
echo
echo "Latency of normal requests without and during a slow-header flood (the connections above): new connections"
echo "at $RATE/s for $SECONDS_PER_RUN s (Python asyncio client, connect to end of response), and wrk on 16 keep-alive"
echo "connections for $SECONDS_PER_RUN s"
echo
echo "| proxy | flood | new conn p50 ms | p99 ms | max ms | errors | wrk c16 req/s | wrk p99 ms | wrk errors | proxy CPU % | CPU 0 % |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
awk '{ printf "| %s | %s | %.3f | %.3f | %.3f | %d of %d | %.0f | %.3f | %d | %d | %d |\n",
    $1, ($2 == "flood" ? "yes" : "no"), $6, $7, $8, $5, $3, $9, $10, $11, $12, $13 }' "$WORK/lat.txt"
