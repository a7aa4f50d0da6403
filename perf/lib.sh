# shellcheck shell=bash
# What the perf/ scripts share, sourced by them (`source "$(dirname "$0")/lib.sh"`), not run:
# tools, the Portico binary, a work directory that is cleaned up, loopback ports, nginx processes
# and the Kubernetes manifests that route Portico to a backend. Each script keeps its own knobs,
# nginx configurations and whatever manifests only it needs.

PERF_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# log MESSAGE...: one line on stderr.
log() { printf '%s\n' "$*" >&2; }

# apt_install PACKAGE...: apt-get installs the PACKAGEs (with sudo unless root).
apt_install() {
    local sudo=""
    [[ $(id -u) == 0 ]] || sudo=sudo
    log "installing $*"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# need_tools COMMAND:PACKAGE...: apt-get installs the PACKAGEs whose COMMAND is missing, then sets
# NGINX and HAPROXY to their binaries (Debian puts both in /usr/sbin, which is not on every PATH).
need_tools() {
    local pair cmd need=()
    for pair in "$@"; do
        cmd=${pair%%:*}
        command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || need+=("${pair#*:}")
    done
    if ((${#need[@]})); then apt_install "${need[@]}"; fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
}

# need_debs PACKAGE...: apt-get installs the Debian PACKAGEs that are not installed (for those
# that bring no command, such as nginx modules).
need_debs() {
    local p need=()
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *" installed" ]] || need+=("$p")
    done
    if ((${#need[@]})); then apt_install "${need[@]}"; fi
}

# need_nginx_lua: nginx with the Lua module and lua-resty-core (Debian's ngx_http_lua, LuaJIT).
need_nginx_lua() {
    need_tools nginx:nginx-light
    need_debs libnginx-mod-http-ndk libnginx-mod-http-lua lua-resty-core
}

# need_oha: installs oha with cargo if it is missing.
need_oha() {
    command -v oha >/dev/null 2>&1 && return
    log "installing oha (cargo install, a few minutes, once)"
    cargo install oha --locked --quiet
}

# need_portico: PORTICO is the Portico binary to run; when it is unset, a release build of this
# repository (built now).
need_portico() {
    [[ -n "${PORTICO:-}" ]] && return
    log "building Portico (release)"
    sh "$PERF_REPO/.ci/setup"
    (cd "$PERF_REPO" && cargo build --release --quiet --bin portico)
    PORTICO=${CARGO_TARGET_DIR:-$PERF_REPO/target}/release/portico
}

# need_bare: BARE is the bare Pingora proxy (perf/bare_pingora.rs) to run; when it is unset, a
# release build of this repository's example (built now).
need_bare() {
    [[ -n "${BARE:-}" ]] && return
    log "building perf/bare_pingora.rs (release)"
    sh "$PERF_REPO/.ci/setup"
    (cd "$PERF_REPO" && cargo build --release --quiet --example bare_pingora)
    BARE=${CARGO_TARGET_DIR:-$PERF_REPO/target}/release/examples/bare_pingora
}

# PORTICO_ARGS: extra arguments for every Portico the scripts start (e.g.
# PORTICO_ARGS="--http1-engine pingora"), split on whitespace into PORTICO_EXTRA.
# shellcheck disable=SC2034 # used by the scripts that source this file
read -r -a PORTICO_EXTRA <<<"${PORTICO_ARGS:-}"

# setup_work NAME: WORK is a new directory /tmp/portico-NAME.XXXXXX holding a copy of $PORTICO as
# $WORK/portico (a shared target directory may be rebuilt by someone else during the run). The
# processes added to PIDS are stopped on exit, and WORK removed unless KEEP is set.
setup_work() {
    WORK=$(mktemp -d "/tmp/portico-$1.XXXXXX")
    chmod 755 "$WORK" # nginx's workers (user nobody) read below it
    cp "$PORTICO" "$WORK/portico"
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# cleanup: SIGINT to every process in PIDS (a fast shutdown for both Portico and nginx; SIGTERM
# would drain Portico for 10 s) but SIGTERM to HAProxy (which ignores SIGINT in the foreground
# mode), up to 2 s for them to go, then SIGKILL; removes WORK unless KEEP.
cleanup() {
    local p alive
    for p in "${PIDS[@]}"; do
        if [[ $(cat "/proc/$p/comm" 2>/dev/null) == haproxy ]]; then
            kill -TERM "$p" 2>/dev/null || true
        else
            kill -INT "$p" 2>/dev/null || true
        fi
    done
    for _ in $(seq 1 20); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [[ -n "${KEEP:-}" ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}

# free_port: prints a free TCP port, never one printed before by this shell.
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

# wait_port HOST PORT: waits up to 10 s for something to listen on HOST:PORT.
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on $1:$2"
    return 1
}

# wait_200 URL [CURL_ARG...]: waits up to 10 s for URL to answer 200.
wait_200() {
    for _ in $(seq 1 200); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "${@:2}" "$1") == 200 ]] && return 0
        sleep 0.05
    done
    log "$1 does not answer 200"
    return 1
}

# backend_conf DIR: writes DIR/nginx.conf, a one-worker nginx without access log whose http block
# holds what stdin says (the servers).
backend_conf() {
    mkdir -p "$1"
    {
        cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
EOF
        sed 's/^/    /'
        echo "}"
    } >"$1/nginx.conf"
}

# start_nginx DIR [COMMAND...]: runs nginx with DIR/nginx.conf in the background, in the
# foreground mode, under COMMAND if given (e.g. `taskset -c 1`); its pid is appended to PIDS.
start_nginx() {
    local dir=$1
    shift
    "$@" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
}

# put FILE: writes stdin beside FILE (.NAME.tmp) and renames it in, one atomic change, as
# kubectl-style tools do.
put() {
    local tmp
    tmp=$(dirname "$1")/.$(basename "$1").tmp
    cat >"$tmp" && mv "$tmp" "$1"
}

# proc_pids PID: PID and its children (nginx's workers; Portico's threads are in its own counters).
proc_pids() {
    echo "$1"
    pgrep -P "$1" || true
}

# cpu_ticks PID: utime+stime, in clock ticks, of PID and its children (each includes its threads).
cpu_ticks() {
    local t=0 p f
    for p in $(proc_pids "$1"); do
        read -r -a f <"/proc/$p/stat" || continue
        t=$((t + f[13] + f[14]))
    done
    echo "$t"
}

# cpu_sys_ticks PID: the system (kernel) part of cpu_ticks.
cpu_sys_ticks() {
    local t=0 p f
    for p in $(proc_pids "$1"); do
        read -r -a f <"/proc/$p/stat" || continue
        t=$((t + f[14]))
    done
    echo "$t"
}

# rss_kib PID: resident memory, in KiB, of PID and its children (threads share their process's).
rss_kib() {
    local t=0 p v
    for p in $(proc_pids "$1"); do
        v=$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# cpu_jiffies CPU: "busy total" clock ticks that CPU number CPU has spent since boot (/proc/stat;
# busy is everything but idle and iowait). Two readings give how busy it was in between.
cpu_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# loadavg: the 1, 5 and 15 minute load averages.
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# --- HAProxy -------------------------------------------------------------------------------------

# haproxy_conf DIR THREADS BACKEND HTTP_ADDR [HTTPS_ADDR PEM]: writes DIR/haproxy.cfg, an HAProxy
# (no logs, THREADS threads) that proxies HTTP_ADDR (and HTTPS_ADDR, terminating TLS with PEM,
# certificate and key in one file) to BACKEND (ADDRESS:PORT) the way Portico does: client and
# upstream keep-alive, Host kept, the same five X-Forwarded-* headers. HAPROXY_MAXCONN (default
# 4096) bounds its client connections.
haproxy_conf() {
    local dir=$1 threads=$2 backend=$3 http=$4 https=${5:-} pem=${6:-}
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $threads
    maxconn ${HAPROXY_MAXCONN:-4096}
    pidfile $dir/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 60s
    timeout http-keep-alive 300s
    http-reuse safe
frontend fe
    bind $http backlog 4096
${https:+    bind $https ssl crt $pem alpn http/1.1 backlog 4096
}    http-request set-header X-Forwarded-For %[src]
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    default_backend be
backend be
    server s1 $backend
EOF
}

# start_haproxy DIR [COMMAND...]: runs HAProxy with DIR/haproxy.cfg in the background, one process
# in the foreground mode (-db; no master), under COMMAND if given; its pid is appended to PIDS.
start_haproxy() {
    local dir=$1
    shift
    "$@" "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
    PIDS+=($!)
}

# --- nginx with Lua in ingress-nginx's phases ----------------------------------------------------

# nginx_lua_modules: the load_module lines (main context) of the Lua module.
nginx_lua_modules() {
    echo "load_module /usr/lib/nginx/modules/ndk_http_module.so;"
    echo "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
}

# nginx_lua_http UPSTREAM ADDRESS:PORT...: http-context directives: the Lua state (what
# ingress-nginx keeps per backend: its endpoints and a round-robin cursor; a request counter per
# status) and the upstream UPSTREAM whose peer balancer_by_lua picks, round robin over the
# ADDRESS:PORTs, with upstream keep-alive as in the plain nginx configurations.
nginx_lua_http() {
    local name=$1 a eps=""
    shift
    for a in "$@"; do eps+="{ \"${a%:*}\", ${a##*:} }, "; done
    cat <<EOF
lua_package_path "/usr/share/lua/5.1/?.lua;;";
init_by_lua_block {
    require "resty.core"
    package.loaded.bench = {
        backends = { ["$name"] = { endpoints = { $eps}, next = 1 } },
        requests = {},
    }
}
upstream $name {
    server 0.0.0.1; # a placeholder: balancer_by_lua sets the peer
    balancer_by_lua_block {
        local b = ngx.ctx.backend
        local e = b.endpoints[b.next]
        b.next = b.next % #b.endpoints + 1
        local ok, err = require("ngx.balancer").set_current_peer(e[1], e[2])
        if not ok then
            ngx.log(ngx.ERR, "set_current_peer: ", err)
            return ngx.exit(500)
        end
    }
    keepalive 1024;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
}
EOF
}

# nginx_lua_location_directives UPSTREAM: location directives: rewrite_by_lua finds the request's
# backend (ingress-nginx's balancer.rewrite), log_by_lua counts the request by status (its
# monitor), and the proxy directives of nginx_proxy_directives.
nginx_lua_location_directives() {
    cat <<EOF
set \$proxy_upstream_name "$1";
rewrite_by_lua_block {
    local b = require("bench").backends[ngx.var.proxy_upstream_name]
    if not b then
        return ngx.exit(503)
    end
    ngx.ctx.backend = b
}
log_by_lua_block {
    local r = require("bench").requests
    local s = ngx.status
    r[s] = (r[s] or 0) + 1
}
EOF
    nginx_proxy_directives "$1"
}

# nginx_lua_count_location: a location that prints log_by_lua's count of 200s (one worker's).
nginx_lua_count_location() {
    cat <<'EOF'
location = /__lua_requests {
    content_by_lua_block { ngx.say(require("bench").requests[200] or 0) }
}
EOF
}

# --- manifests ---------------------------------------------------------------------------------

# yaml_ingress_class: the IngressClass `portico`, which Portico's controller name claims.
yaml_ingress_class() {
    cat <<'EOF'
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
EOF
}

# yaml_service NAME NAMESPACE TARGET_PORT: the Service NAME, its port 80 to TARGET_PORT.
yaml_service() {
    cat <<EOF
apiVersion: v1
kind: Service
metadata: { name: $1, namespace: $2 }
spec: { ports: [{ port: 80, targetPort: $3 }] }
EOF
}

# yaml_endpoint_slice NAME NAMESPACE PORT ADDRESS...: the EndpointSlice NAME-1 of the Service NAME,
# every ADDRESS ready on PORT.
yaml_endpoint_slice() {
    local name=$1 ns=$2 port=$3 a
    shift 3
    cat <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: $name-1, namespace: $ns, labels: { kubernetes.io/service-name: $name } }
addressType: IPv4
ports: [{ port: $port }]
endpoints:
EOF
    for a in "$@"; do echo "  - { addresses: [\"$a\"], conditions: { ready: true } }"; done
}

# yaml_tls_ingress NAME NAMESPACE HOST SERVICE CRT KEY: an Ingress of Portico's class routing HOST
# to SERVICE (port 80) with TLS from the kubernetes.io/tls Secret NAME, which follows it, holding
# the PEM files CRT and KEY.
yaml_tls_ingress() {
    cat <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: $1, namespace: $2, creationTimestamp: "2026-01-01T00:00:01Z" }
spec:
  ingressClassName: portico
  tls:
    - { hosts: [$3], secretName: $1 }
  rules:
    - host: $3
      http:
        paths:
          - { path: /, pathType: Prefix, backend: { service: { name: $4, port: { number: 80 } } } }
---
apiVersion: v1
kind: Secret
metadata: { name: $1, namespace: $2 }
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 "$5")
  tls.key: $(base64 -w0 "$6")
EOF
}

# yaml_ingress NAME NAMESPACE HOST SERVICE: the Ingress NAME of class portico sending every path of
# HOST (of every host when HOST is empty) to port 80 of the Service SERVICE.
yaml_ingress() {
    cat <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: $1, namespace: $2 }
spec:
  ingressClassName: portico
  rules:
    - ${3:+host: $3
      }http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: $4, port: { number: 80 } } } }] }
EOF
}

# nginx_proxy_directives UPSTREAM: the proxy_pass and header directives that make nginx do what
# Portico does per request (upstream keep-alive, Host kept, the same five X-Forwarded-* headers).
nginx_proxy_directives() {
    cat <<EOF
proxy_pass http://$1;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host \$http_host;
proxy_set_header X-Forwarded-For \$remote_addr;
proxy_set_header X-Real-IP \$remote_addr;
proxy_set_header X-Forwarded-Proto \$scheme;
proxy_set_header X-Forwarded-Host \$http_host;
proxy_set_header X-Forwarded-Port \$server_port;
EOF
}
