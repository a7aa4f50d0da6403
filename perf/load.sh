#!/usr/bin/env bash
# Portico against nginx, HAProxy, nginx with Lua and a bare Pingora proxy, side by side, on
# loopback, in one bounded run (about 3 minutes with the defaults).
#
#   perf/load.sh                      # c16, c256, https; wrk; 5 s runs; one worker each, pinned
#   PORTICO_ARGS="--http1-engine pingora" perf/load.sh          # extra Portico arguments
#   PROXIES="nginx portico" CASES="c16" DURATION=3 perf/load.sh
#   WORKERS=2 PIN=0 PROXIES="portico nginx" TOOLS="wrk oha" CASES="c1 c16 c256 body16k https" \
#       perf/load.sh                  # the earlier two-worker Portico/nginx comparison
#
# One nginx backend serves a small body (/small, 15 bytes) and a 16 KiB one (/16k). Every proxy
# forwards to it with the same worker count (WORKERS), upstream keep-alive, Host kept, the same
# five X-Forwarded-* headers and no access log:
# - nginx: Debian's nginx as a reverse proxy;
# - haproxy: Debian's HAProxy 2.6 (nbthread WORKERS; http-reuse safe);
# - nginx-lua: nginx with Lua in the phases ingress-nginx uses: rewrite_by_lua finds the backend,
#   balancer_by_lua picks the peer round robin, log_by_lua counts the request; upstream keep-alive
#   as in the plain nginx configuration;
# - bare: perf/bare_pingora.rs, Pingora's proxy with nothing of Portico's (no TLS: not in https);
# - portico: the release build, `--threads WORKERS --access-log off` plus PORTICO_ARGS.
# Access logs are off everywhere, as in issue 11's method; ACCESS_LOG=default runs nginx, nginx+Lua
# and Portico with their default access logs instead (nginx: `combined` to a file; Portico: its
# plain line to stdout, here a file); HAProxy logs nothing without a log server either way.
# With PIN=1 (the default for one worker on 2+ CPUs) each proxy runs on CPU 1 and wrk and the
# backend on CPU 0, as in issue 11's measurements. Each case first warms every proxy up (1 s),
# then runs ROUNDS rounds of every proxy in turn, the order rotated by one each round. Per run and
# per case (means of the rounds) it prints requests/s, p50 and p99 latency, proxy CPU time per
# request (utime+stime of every process and thread of the proxy, from /proc; the kernel's share of
# it, stime, beside it) and requests per
# proxy CPU-second, their ratios to nginx, proxy RSS, how busy CPU 0 (the load generator) and the
# proxy were, and which side was the bottleneck: `load` when CPU 0 was saturated (≥ 95 % busy)
# and the proxy was not (< 90 % of a core), `proxy` for the reverse, `both`, or `neither` (other
# load on the machine took the CPU). Portico's upstream connection reuse comes from its /metrics.
#
# Knobs (environment): DURATION (s per run, default 5), WORKERS (default 1), PIN (default 1 when
# WORKERS is 1), ROUNDS (default 2), CASES (default "c16 c256 https"; also c1, body16k, and
# rate16: 16 connections at a fixed RATE requests/s with oha, default 12000, so that every proxy
# is compared at the same offered load: latency without the load generator's core saturating),
# TOOLS (default wrk; also oha), PROXIES (default "nginx haproxy nginx-lua bare portico"),
# PORTICO_ARGS, PORTICO and BARE (binaries to use instead of building them), KEEP=1 keeps the
# work directory, SYSCALLS=1 counts each proxy's system calls per request during the measured runs
# (perf stat on the syscall tracepoints: all, reads, writes, epoll waits; needs root and perf).
set -euo pipefail

DURATION=${DURATION:-5}
RATE=${RATE:-12000}
WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-2}
CASES=${CASES:-"c16 c256 https"}
TOOLS=${TOOLS:-wrk}
PROXIES=${PROXIES:-"nginx haproxy nginx-lua bare portico"}
WARMUP=${WARMUP:-1}
ACCESS_LOG=${ACCESS_LOG:-off}
SYSCALLS=${SYSCALLS:-0}
if [[ -z "${PIN:-}" ]]; then
    PIN=0
    if ((WORKERS == 1 && $(nproc) >= 2)); then PIN=1; fi
fi
HZ=$(getconf CLK_TCK)
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

has() { [[ " $PROXIES " == *" $1 "* ]]; }

# --- tools -------------------------------------------------------------------------------------
need_tools nginx:nginx-light wrk:wrk jq:jq curl:curl openssl:openssl ss:iproute2 taskset:util-linux
if has haproxy; then need_tools haproxy:haproxy; fi
if has nginx-lua; then need_nginx_lua; fi
if [[ " $TOOLS " == *" oha "* || " $CASES " == *" rate16 "* ]]; then need_oha; fi
if ((SYSCALLS)); then need_tools perf:linux-perf; fi
if has portico; then need_portico; else PORTICO=${PORTICO:-/bin/true}; fi
if has bare; then need_bare; fi
setup_work load

# Where the proxies and where the load generator (wrk or oha, and the backend) run.
PIN_PROXY=()
PIN_LOAD=()
if ((PIN)); then
    PIN_PROXY=(taskset -c 1)
    PIN_LOAD=(taskset -c 0)
fi

declare -A HTTP_PORT HTTPS_PORT PID_OF
BE=$(free_port)

# --- the backend -------------------------------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/manifests"
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
start_nginx "$WORK/backend" "${PIN_LOAD[@]}"
BACKEND_PID=${PIDS[-1]}
wait_port 127.0.0.1 "$BE"

# --- TLS material (for the https case) -----------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.pem"

# --- nginx and nginx-lua -----------------------------------------------------------------------
# nginx_proxy_conf NAME MAIN HTTP LOCATION: DIR=$WORK/NAME/nginx.conf, a proxy on a plain and a TLS
# port (HTTP_PORT[NAME], HTTPS_PORT[NAME]); MAIN, HTTP and LOCATION are directives for the main
# and http contexts and for `location /`.
nginx_proxy_conf() {
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir"
    HTTP_PORT[$name]=$(free_port)
    HTTPS_PORT[$name]=$(free_port)
    printf '%s\n' "$4" >"$dir/location.inc"
    cat >"$dir/nginx.conf" <<EOF
$2
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log error;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    $(if [[ $ACCESS_LOG == default ]]; then echo "access_log $dir/access.log;"; else echo "access_log off;"; fi)
    keepalive_requests 10000000;
    keepalive_timeout 300s;
$3
    server {
        listen 127.0.0.1:${HTTP_PORT[$name]} backlog=4096;
        location / { include $dir/location.inc; }
        ${5:-}
    }
    server {
        listen 127.0.0.1:${HTTPS_PORT[$name]} ssl backlog=4096;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        location / { include $dir/location.inc; }
    }
}
EOF
    start_nginx "$dir" "${PIN_PROXY[@]}"
    PID_OF[$name]=${PIDS[-1]}
}

if has nginx; then
    nginx_proxy_conf nginx "" "upstream backend {
        server 127.0.0.1:$BE;
        keepalive 1024;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }" "$(nginx_proxy_directives backend)"
fi
if has nginx-lua; then
    nginx_proxy_conf nginx-lua "$(nginx_lua_modules)" "$(nginx_lua_http backend "127.0.0.1:$BE")" \
        "$(nginx_lua_location_directives backend)" "$(nginx_lua_count_location)"
fi

# --- HAProxy -----------------------------------------------------------------------------------
if has haproxy; then
    HTTP_PORT[haproxy]=$(free_port)
    HTTPS_PORT[haproxy]=$(free_port)
    haproxy_conf "$WORK/haproxy" "$WORKERS" "127.0.0.1:$BE" "127.0.0.1:${HTTP_PORT[haproxy]}" \
        "127.0.0.1:${HTTPS_PORT[haproxy]}" "$WORK/tls.pem"
    start_haproxy "$WORK/haproxy" "${PIN_PROXY[@]}"
    PID_OF[haproxy]=${PIDS[-1]}
fi

# --- bare Pingora ------------------------------------------------------------------------------
if has bare; then
    HTTP_PORT[bare]=$(free_port)
    cp "$BARE" "$WORK/bare_pingora"
    "${PIN_PROXY[@]}" "$WORK/bare_pingora" "127.0.0.1:${HTTP_PORT[bare]}" "127.0.0.1:$BE" "$WORKERS" \
        >"$WORK/bare.log" 2>&1 &
    PIDS+=($!)
    PID_OF[bare]=$!
fi

# --- Portico -----------------------------------------------------------------------------------
LOG_ARGS=(--access-log off)
if [[ $ACCESS_LOG == default ]]; then LOG_ARGS=(); fi
PA=$(free_port)
if has portico; then
    HTTP_PORT[portico]=$(free_port)
    HTTPS_PORT[portico]=$(free_port)
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
EOF
        yaml_tls_ingress bench-tls default localhost backend "$WORK/tls.crt" "$WORK/tls.key"
        echo ---
        yaml_service backend default "$BE"
        echo ---
        yaml_endpoint_slice backend default "$BE" 127.0.0.1
    } >"$WORK/manifests/bench.yaml"
    "${PIN_PROXY[@]}" "$WORK/portico" --manifests "$WORK/manifests" \
        --http-listen "127.0.0.1:${HTTP_PORT[portico]}" \
        --https-listen "127.0.0.1:${HTTPS_PORT[portico]}" --admin-listen "127.0.0.1:$PA" \
        --threads "$WORKERS" "${LOG_ARGS[@]}" "${PORTICO_EXTRA[@]}" >"$WORK/portico.log" 2>&1 &
    PIDS+=($!)
    PID_OF[portico]=$!
fi

# --- every proxy answers -----------------------------------------------------------------------
for proxy in $PROXIES; do
    [[ -n "${PID_OF[$proxy]:-}" ]] || { log "unknown proxy $proxy"; exit 1; }
    wait_200 "http://127.0.0.1:${HTTP_PORT[$proxy]}/small" || {
        tail -5 "$WORK"/*.log "$WORK"/*/*.log 2>/dev/null >&2
        exit 1
    }
    for path in /small /16k; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP_PORT[$proxy]}$path")
        [[ $code == 200 ]] || { log "$proxy $path answered $code"; exit 1; }
    done
done
if has nginx-lua; then
    n=$(curl -s "http://127.0.0.1:${HTTP_PORT[nginx-lua]}/__lua_requests")
    ((n >= 3)) || { log "nginx-lua: log_by_lua counted $n of 3 requests"; exit 1; }
fi

# https: every proxy with a TLS port that answers on it (Portico's may be missing on a build).
declare -A HTTPS_OK
if [[ " $CASES " == *" https "* ]]; then
    for proxy in $PROXIES; do
        [[ -n "${HTTPS_PORT[$proxy]:-}" ]] || continue
        p=${HTTPS_PORT[$proxy]}
        code=$(curl -sk -o /dev/null -w '%{http_code}' --resolve "localhost:$p:127.0.0.1" \
            "https://localhost:$p/small" || true)
        if [[ $code == 200 ]]; then
            HTTPS_OK[$proxy]=1
        else
            log "https: $proxy skipped, its HTTPS listener does not answer (got '$code')"
        fi
    done
fi

# --- measuring ---------------------------------------------------------------------------------
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

# run_tool TOOL CONNS URL SECONDS -> "requests rps p50ms p99ms bad errors"; sets TOOL_TICKS to
# the CPU time the tool used (clock ticks, from its shell's cutime+cstime).
run_tool() {
    local tool=$1 conns=$2 url=$3 secs=$4 out
    case $tool in
    wrk)
        out=$(
            timeout $((secs + 30)) "${PIN_LOAD[@]}" wrk -t1 -c"$conns" -d"${secs}s" --latency "$url" 2>&1 || true
            read -r -a f <"/proc/$BASHPID/stat"
            echo "TOOL_TICKS $((f[15] + f[16]))"
        )
        TOOL_TICKS=$(awk '$1 == "TOOL_TICKS" { print $2 }' <<<"$out")
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
        out=$(
            timeout $((secs + 30)) "${PIN_LOAD[@]}" oha --no-tui --output-format json --insecure -w -z "${secs}s" -c "$conns" ${RATE_Q:+-q "$RATE_Q"} "$url" 2>/dev/null || true
            read -r -a f <"/proc/$BASHPID/stat"
            echo "TOOL_TICKS $((f[15] + f[16]))" >&2
        ) 2>"$WORK/tool_ticks"
        TOOL_TICKS=$(awk '$1 == "TOOL_TICKS" { print $2 }' "$WORK/tool_ticks")
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

SYSCALL_EVENTS=raw_syscalls:sys_enter
for s in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait; do
    SYSCALL_EVENTS+=",syscalls:sys_enter_$s"
done

# measure CASE TOOL PROXY URL CONNS
measure() {
    local case=$1 tool=$2 proxy=$3 url=$4 conns=$5 pid=${PID_OF[$3]} c0 c1 s0 s1 m0 m1 r
    local j0 j1 t0 t1 b0 b1
    # Nothing but the load generator runs during a measured run: Portico's counters are read
    # before and after it (the steady-state reading has a run of its own, measure_steady). A
    # reading during the run forks curl, which the scheduler may put on the proxy's core: that
    # alone raised Portico's p99 at a fixed rate by about a third (median of 12 runs).
    if [[ $proxy == portico ]]; then m0=$(upstream_conns); fi
    local sc=""
    if ((SYSCALLS)); then
        # Counts until SIGINT, so over the tool's run (it attaches first); every process and thread
        # of the proxy.
        perf stat -x, -o "$WORK/syscalls.txt" -e "$SYSCALL_EVENTS" \
            -p "$(proc_pids "$pid" | paste -sd,)" 2>/dev/null &
        sc=$!
        sleep 0.2
    fi
    c0=$(cpu_ticks "$pid")
    s0=$(cpu_sys_ticks "$pid")
    b0=$(cpu_ticks "$BACKEND_PID")
    j0=$(cpu_jiffies 0)
    t0=$(date +%s.%N)
    run_tool "$tool" "$conns" "$url" "$DURATION" >"$WORK/run.txt"
    if [[ -n $sc ]]; then
        kill -INT "$sc" 2>/dev/null || true
        wait "$sc" 2>/dev/null || true
    fi
    r=$(<"$WORK/run.txt")
    t1=$(date +%s.%N)
    j1=$(cpu_jiffies 0)
    b1=$(cpu_ticks "$BACKEND_PID")
    c1=$(cpu_ticks "$pid")
    s1=$(cpu_sys_ticks "$pid")
    local reqs rps p50 p99 bad errs rss stats cpu_us per_cpu_s cpu0 lg_pct proxy_pct bound
    read -r reqs rps p50 p99 bad errs <<<"$r"
    rss=$(rss_kib "$pid")
    # CPU per request, requests per CPU-second, CPU 0 busy %, the load generator's (wrk and the
    # backend) and the proxy's CPU in % of one core, and the bottleneck.
    stats=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" -v j0="$j0" -v j1="$j1" \
        -v lg=$((TOOL_TICKS + b1 - b0)) -v pin="$PIN" \
        -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 'BEGIN {
        split(j0, a, " "); split(j1, b, " ")
        busy = (b[2] > a[2]) ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0
        pct = wall > 0 ? 100 * t / hz / wall : 0
        lgp = wall > 0 ? 100 * lg / hz / wall : 0
        bound = "-"
        if (pin) {
            if (busy >= 95 && pct >= 90) bound = "both"
            else if (busy >= 95 && lgp >= 85) bound = "load"
            else if (busy >= 95) bound = "load+other"
            else if (pct >= 90) bound = "proxy"
            else bound = "neither"
        }
        printf "%.1f %.0f %.0f %.0f %.0f %s\n", n ? t / hz / n * 1e6 : 0, t ? n / (t / hz) : 0, busy, lgp, pct, bound }')
    read -r cpu_us per_cpu_s cpu0 lg_pct proxy_pct bound <<<"$stats"
    # The kernel's share of the proxy's CPU (system time: sockets, TCP, epoll).
    local sys_pct=$((c1 > c0 ? 100 * (s1 - s0) / (c1 - c0) : 0))
    local extra="" syscalls="0 0 0 0"
    if [[ -n $sc ]]; then
        syscalls=$(awk -F, -v n="$reqs" '
            $3 == "raw_syscalls:sys_enter" { all = $1 }
            $3 ~ /sys_enter_(read|readv|recvfrom|recvmsg)$/ { rd += $1 }
            $3 ~ /sys_enter_(write|writev|sendto|sendmsg)$/ { wr += $1 }
            $3 ~ /sys_enter_epoll_p?wait$/ { ep += $1 }
            END { if (n > 0) printf "%.2f %.2f %.2f %.3f\n", all / n, rd / n, wr / n, ep / n; else print "0 0 0 0" }' \
            "$WORK/syscalls.txt")
        local a b c d
        read -r a b c d <<<"$syscalls"
        extra=" syscalls/req $a (reads $b, writes $c, epoll waits $d)"
    fi
    if [[ $proxy == portico ]]; then
        m1=$(upstream_conns)
        local n0 r0 n1 r1
        read -r n0 r0 <<<"$m0"
        read -r n1 r1 <<<"$m1"
        REUSE_NEW=$((REUSE_NEW + n1 - n0))
        REUSE_ALL=$((REUSE_ALL + n1 - n0 + r1 - r0))
        REUSE_REQS=$((REUSE_REQS + reqs))
        extra+=" upstream_new=$((n1 - n0)) upstream_reused=$((r1 - r0))"
    fi
    printf '  %-7s %-4s %-9s %7.0f req/s  p50 %7.3f  p99 %7.3f ms  cpu %6s us/req (sys %2s%%) %6s req/cpu-s  rss %6d KiB  non2xx %s  errors %s  cpu0 %3s%% (load gen %3s%%)  proxy %3s%%  bound %s%s\n' \
        "$case" "$tool" "$proxy" "$rps" "$p50" "$p99" "$cpu_us" "$sys_pct" "$per_cpu_s" "$rss" "$bad" "$errs" \
        "$cpu0" "$lg_pct" "$proxy_pct" "$bound" "$extra" >&2
    echo "$case $tool $proxy $rps $p50 $p99 $cpu_us $per_cpu_s $rss $bad $errs $cpu0 $proxy_pct $bound $lg_pct $sys_pct ${round:-0} $syscalls" >>"$RESULTS"
}

# measure_steady CASE TOOL URL CONNS: Portico's upstream reuse in steady state, from 1 s after the start
# of a run to 1 s before its end, away from the connection churn at the edges of a run (clients
# that disconnect mid-request at the end of a run take their upstream connections with them; the
# next run opens new ones). A run of its own, not in the table: reading the counters forks curl
# during the run (pinned with the load generator).
measure_steady() {
    local case=$1 tool=$2 url=$3 conns=$4 steady=$WORK/steady.txt sp sn0 sr0 sn1 sr1
    : >"$steady"
    (if ((PIN)); then taskset -cp 0 "$BASHPID" >/dev/null; fi
        sleep 1 && upstream_conns >"$steady" &&
        sleep $((DURATION > 2 ? DURATION - 2 : 0)) && upstream_conns >>"$steady") &
    sp=$!
    run_tool "$tool" "$conns" "$url" "$DURATION" >/dev/null
    wait "$sp" || true
    { read -r sn0 sr0 && read -r sn1 sr1; } <"$steady" || sn0=0 sr0=0 sn1=0 sr1=0
    STEADY_NEW=$((STEADY_NEW + sn1 - sn0))
    STEADY_ALL=$((STEADY_ALL + sn1 - sn0 + sr1 - sr0))
    printf '  %-7s %-4s %-9s steady-state reuse run (not in the table): %d new, %d reused\n' \
        "$case" "$tool" portico $((sn1 - sn0)) $((sr1 - sr0)) >&2
}

versions="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
if has haproxy; then versions+=", HAProxy $("$HAPROXY" -v | awk 'NR == 1 { print $3 }')"; fi
if has portico; then versions+=", $("$WORK/portico" --version 2>/dev/null | head -1)${PORTICO_ARGS:+ ($PORTICO_ARGS)}"; fi
placement="not pinned"
if ((PIN)); then placement="proxies on CPU 1, wrk and the backend on CPU 0"; fi
LOAD_BEFORE=$(loadavg)
log "$versions; $WORKERS worker(s) each, $placement; ${DURATION} s per run; $(nproc) CPUs; load average $LOAD_BEFORE"

read -r -a ORDER <<<"$PROXIES"
for case in $CASES; do
    https=0 rate=""
    case $case in
    c1) conns=1 path=/small ;;
    c16) conns=16 path=/small ;;
    rate16) conns=16 path=/small rate=$RATE ;;
    c256) conns=256 path=/small ;;
    body16k) conns=16 path=/16k ;;
    https) conns=16 path=/small https=1 ;;
    *) log "unknown case $case" && continue ;;
    esac
    declare -A URL=()
    for proxy in "${ORDER[@]}"; do
        if ((https)); then
            # wrk sends the URL's host as SNI; localhost resolves to 127.0.0.1 (checked above).
            if [[ -n "${HTTPS_OK[$proxy]:-}" ]]; then
                URL[$proxy]="https://localhost:${HTTPS_PORT[$proxy]}$path"
            fi
        else
            URL[$proxy]="http://127.0.0.1:${HTTP_PORT[$proxy]}$path"
        fi
    done
    log "$case: load average $(loadavg)"
    tools=$TOOLS
    # A fixed request rate needs oha (wrk has none); RATE_Q is what run_tool passes it.
    if [[ -n $rate ]]; then tools=oha; fi
    RATE_Q=$rate
    for tool in $tools; do
        # Warm-up: open the upstream connections, fault in memory.
        for proxy in "${ORDER[@]}"; do
            if [[ -n "${URL[$proxy]:-}" ]]; then
                run_tool "$tool" "$conns" "${URL[$proxy]}" "$WARMUP" >/dev/null
            fi
        done
        for round in $(seq 1 "$ROUNDS"); do
            n=${#ORDER[@]}
            for i in $(seq 0 $((n - 1))); do
                proxy=${ORDER[$(((i + round - 1) % n))]}
                if [[ -n "${URL[$proxy]:-}" ]]; then
                    measure "$case" "$tool" "$proxy" "${URL[$proxy]}" "$conns"
                fi
            done
        done
        if [[ -n "${URL[portico]:-}" ]]; then measure_steady "$case" "$tool" "${URL[portico]}" "$conns"; fi
    done
done
LOAD_AFTER=$(loadavg)

# --- summary -----------------------------------------------------------------------------------
echo
echo "$versions"
echo "$WORKERS worker(s) each, $placement; ${DURATION} s per run, $ROUNDS rounds, means of the rounds; access logs $ACCESS_LOG;"
echo "× nginx = the proxy's figure / nginx's (for req/CPU-s: efficiency, higher is better);"
echo "bound, per round: load = CPU 0 saturated by the load generator (wrk + backend), load+other = CPU 0"
echo "saturated, partly by other processes, proxy = the proxy's core saturated, both, or neither."
echo "Load average at the start: $LOAD_BEFORE; at the end: $LOAD_AFTER"
echo
echo "| case | tool | proxy | req/s | × nginx | p50 ms | p99 ms | CPU µs/req | of it kernel % | req/CPU-s | × nginx | RSS MiB | errors | CPU 0 % (load gen %) | proxy % | bound |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk '
    { k = $1 " " $2 " " $3; if (!(k in cnt)) order[++n] = k; cnt[k]++
      rps[k] += $4; p50[k] += $5; p99[k] += $6; cpu[k] += $7; eff[k] += $8
      if ($9 > rss[k]) rss[k] = $9; err[k] += $10 + $11; c0[k] += $12; pp[k] += $13; lg[k] += $15
      sys[k] += $16
      bound[k] = bound[k] (bound[k] == "" ? "" : ", ") $14 }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, a, " "); c = cnt[k]; ng = a[1] " " a[2] " nginx"
            r = "-"; e = "-"
            if (ng in cnt) {
                r = sprintf("%.2f", (rps[k] / c) / (rps[ng] / cnt[ng]))
                e = sprintf("%.2f", (eff[k] / c) / (eff[ng] / cnt[ng]))
            }
            printf "| %s | %s | %s | %.0f | %s | %.3f | %.3f | %.1f | %.0f | %.0f | %s | %.1f | %d | %.0f (%.0f) | %.0f | %s |\n",
                a[1], a[2], a[3], rps[k] / c, r, p50[k] / c, p99[k] / c, cpu[k] / c, sys[k] / c, eff[k] / c, e,
                rss[k] / 1024, err[k], c0[k] / c, lg[k] / c, pp[k] / c, bound[k]
        }
    }' "$RESULTS"
# Paired by round: each round runs every proxy back to back, so the ratio of two proxies' figures
# within a round is free of the slow drifts of a shared machine (other tenants, CPU frequency),
# which move a mean of the rounds by up to 15 %.
if ((ROUNDS > 1)) && grep -q " nginx " "$RESULTS"; then
    echo
    echo "Paired by round (the proxy's figure / nginx's in the same round): median, and the range over the rounds;"
    echo "p99 ≤ nginx = in how many rounds the proxy's p99 was at most nginx's."
    echo
    echo "| case | tool | proxy | req/CPU-s × nginx: median | range | p99 × nginx: median | range | p99 ≤ nginx |"
    echo "|---|---|---|---|---|---|---|---|"
    awk '
        function median(s,    a, n, i, j, t) {
            n = split(s, a, " ")
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            lo = a[1]; hi = a[n]
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { k = $1 " " $2 " " $3 " " $17; eff[k] = $8; p99[k] = $6
          if (!(($1 " " $2 " " $3) in seen)) { seen[$1 " " $2 " " $3] = 1; order[++n] = $1 " " $2 " " $3 } }
        END {
            for (i = 1; i <= n; i++) {
                split(order[i], a, " "); if (a[3] == "nginx") continue
                e = ""; p = ""; won = 0; rounds = 0
                for (k in eff) {
                    split(k, b, " ")
                    if (b[1] " " b[2] " " b[3] != order[i]) continue
                    ng = b[1] " " b[2] " nginx " b[4]
                    if (!(ng in eff) || eff[ng] == 0 || p99[ng] == 0) continue
                    e = e " " eff[k] / eff[ng]; p = p " " p99[k] / p99[ng]; rounds++
                    if (p99[k] <= p99[ng]) won++
                }
                if (!rounds) continue
                em = median(e); elo = lo; ehi = hi; pm = median(p)
                printf "| %s | %s | %s | %.2f | %.2f-%.2f | %.2f | %.2f-%.2f | %d of %d |\n",
                    a[1], a[2], a[3], em, elo, ehi, pm, lo, hi, won, rounds
            }
        }' "$RESULTS"
fi
if ((SYSCALLS)); then
    echo
    echo "System calls per request (perf stat on the proxy's processes during the measured runs; means of the rounds):"
    echo
    echo "| case | tool | proxy | all | reads | writes | epoll waits | other |"
    echo "|---|---|---|---|---|---|---|---|"
    awk '
        { k = $1 " " $2 " " $3; if (!(k in cnt)) order[++n] = k; cnt[k]++
          all[k] += $18; rd[k] += $19; wr[k] += $20; ep[k] += $21 }
        END {
            for (i = 1; i <= n; i++) {
                k = order[i]; c = cnt[k]; split(k, a, " ")
                printf "| %s | %s | %s | %.2f | %.2f | %.2f | %.3f | %.2f |\n", a[1], a[2], a[3], all[k] / c,
                    rd[k] / c, wr[k] / c, ep[k] / c, (all[k] - rd[k] - wr[k] - ep[k]) / c
            }
        }' "$RESULTS"
fi
if awk '$14 ~ /^(load|both)/ { f = 1 } END { exit !f }' "$RESULTS"; then
    echo
    echo "The load generator (CPU 0) was saturated in the runs marked load, load+other or both: there, requests/s"
    echo "understates the proxy; its CPU per request and requests per CPU-second still hold."
fi
if has portico; then
    echo
    awk -v n="$REUSE_NEW" -v a="$REUSE_ALL" -v r="$REUSE_REQS" -v sn="$STEADY_NEW" -v sa="$STEADY_ALL" 'BEGIN {
        printf "Portico upstream connections, whole measured runs: %d new for %d upstream requests (%d client requests): reuse %.3f%%\n",
            n, a, r, (a ? 100 * (1 - n / a) : 0)
        printf "Portico upstream connections, steady state (1 s after start to 1 s before end): %d new for %d upstream requests: reuse %.3f%%\n",
            sn, sa, (sa ? 100 * (1 - sn / sa) : 0) }'
fi
for proxy in $PROXIES; do
    if [[ " $CASES " == *" https "* && -z "${HTTPS_OK[$proxy]:-}" ]]; then
        echo "https: $proxy not measured (no HTTPS listener, or it did not answer)"
    fi
done
