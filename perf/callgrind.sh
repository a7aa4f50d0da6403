#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic, so a change to the
# request path shows up as a number that does not depend on how busy the machine is.
#
#   perf/callgrind.sh                 # nginx, HAProxy, nginx-lua, bare Pingora, Portico
#   N1=500 N2=2500 perf/callgrind.sh  # request counts of the two runs
#   PROXIES="portico" perf/callgrind.sh
#   PORTICO=/path/to/portico BARE=/path/to/bare_pingora perf/callgrind.sh
#   PORTICO_ARGS="--http1-engine pingora" perf/callgrind.sh   # extra Portico arguments
#   ROUTE=regex-rewrite PROXIES=portico perf/callgrind.sh      # Portico's route of another kind
#   SCHEME=https PROXIES="nginx haproxy portico" perf/callgrind.sh  # keep-alive HTTPS (TLS 1.3)
#
# ROUTE chooses the route Portico serves (the other proxies always proxy plainly):
# - plain (default): an Ingress of Portico's class, Prefix /;
# - regex-rewrite: an ingress-nginx Ingress (--ingress-nginx-compat) with use-regex and
#   rewrite-target: path /svc(/|$)(.*), rewrite /$2, requested as /svc/small;
# - annotated: an ingress-nginx Ingress with a dozen annotations that do not answer themselves
#   (body size, three timeouts, upstream-vhost, ssl-redirect, app-root, server-alias,
#   enable-access-log, proxy-http-version, the two buffering switches, backend-protocol);
# - allowlist: an ingress-nginx Ingress with whitelist-source-range 127.0.0.0/8 (the client is
#   checked on every request);
# - cors: an ingress-nginx Ingress with enable-cors (ingress-nginx's defaults: every response
#   gets the six CORS fields);
# - canary: an ingress-nginx Ingress with a canary Ingress (by header, by cookie, weight 50) on
#   the same path and backend: every request is decided by the canary's rules.
#
# Each proxy runs under `valgrind --tool=callgrind` with one worker, in front of the same nginx
# backend on loopback (a 15-byte body), twice: once for N1 and once for N2 keep-alive requests
# from one connection (oha -c 1). Start-up and shutdown cost the same in both runs, so
# (instructions of run 2 - run 1) / (N2 - N1) is the cost of one request. The proxies:
# - nginx: Debian's nginx as a reverse proxy (one process, upstream keep-alive, the same
#   X-Forwarded-* headers Portico sets);
# - haproxy: Debian's HAProxy (one process, one thread, the same headers, upstream keep-alive);
# - nginx-lua: nginx with Lua in the phases ingress-nginx uses (rewrite_by_lua, balancer_by_lua
#   round robin, a log_by_lua counter; one process, upstream keep-alive); LuaJIT writes machine
#   code, so valgrind runs it with --smc-check=all-non-file;
# - bare: perf/bare_pingora.rs, Pingora's proxy with nothing of Portico's (the floor under it);
# - portico: the release build, `--threads 1 --access-log off` plus PORTICO_ARGS.
# With SCHEME=https the client speaks TLS to the proxy (one handshake per run, so the figure is the
# record layer's cost per request: decrypt the request, encrypt the response), with a self-signed
# RSA 2048 certificate for localhost; the backend stays plain. The bare Pingora proxy has no TLS and
# is skipped; Portico serves ROUTE=plain only.
# With KEEP=1 the callgrind files stay in the work directory for `callgrind_annotate`.
set -euo pipefail

N1=${N1:-1000}
ROUTE=${ROUTE:-plain}
SCHEME=${SCHEME:-http}
N2=${N2:-4000}
PROXIES=${PROXIES:-"nginx haproxy nginx-lua bare portico"}
# shellcheck source=perf/lib.sh
source "$(dirname "$0")/lib.sh"

has() { [[ " $PROXIES " == *" $1 "* ]]; }
need_tools nginx:nginx-light valgrind:valgrind curl:curl ss:iproute2 jq:jq openssl:openssl
if has haproxy; then need_tools haproxy:haproxy; fi
if has nginx-lua; then need_nginx_lua; fi
need_oha
if has portico; then need_portico; else PORTICO=${PORTICO:-/bin/true}; fi
if has bare; then need_bare; fi
setup_work callgrind

BE=$(free_port)
PO=$(free_port)
PA=$(free_port)
NG=$(free_port)
NGS=$(free_port)
NLS=$(free_port)
HAS=$(free_port)
POS=$(free_port)
if [[ $SCHEME == https ]]; then
    if [[ $ROUTE != plain ]]; then log "SCHEME=https serves ROUTE=plain only"; exit 1; fi
    PROXIES=${PROXIES//bare/}
fi
# TLS material for SCHEME=https (every proxy has a TLS port; only SCHEME=https uses it).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.pem"
BP=$(free_port)
HA=$(free_port)
NL=$(free_port)

backend_conf "$WORK/backend" <<EOF
keepalive_requests 10000000;
server {
    listen 127.0.0.1:$BE;
    location = /small { return 200 "hello, portico\n"; }
}
EOF
start_nginx "$WORK/backend"

mkdir -p "$WORK/manifests"
# The path requested, and Portico's Ingress for ROUTE.
REQ=/small
# nginx_ingress PATH PATH_TYPE [NAME]: ingress-nginx's IngressClass (without NAME) and an Ingress
# with the annotations read from stdin.
nginx_ingress() {
    if [[ -z ${3:-} ]]; then
        printf '%s\n' 'apiVersion: networking.k8s.io/v1' 'kind: IngressClass' \
            'metadata: { name: nginx }' 'spec: { controller: k8s.io/ingress-nginx }' ---
    fi
    cat <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: ${3:-bench}
  namespace: default
  annotations:
$(sed 's/^/    nginx.ingress.kubernetes.io\//')
spec:
  ingressClassName: nginx
  rules:
    - http: { paths: [{ path: "$1", pathType: $2, backend: { service: { name: backend, port: { number: 80 } } } }] }
EOF
}
{
    case $ROUTE in
    plain)
        yaml_ingress_class
        echo ---
        yaml_ingress bench default "" backend
        ;;
    regex-rewrite)
        REQ=/svc/small
        printf '%s\n' 'use-regex: "true"' 'rewrite-target: /$2' |
            nginx_ingress '/svc(/|$)(.*)' ImplementationSpecific
        ;;
    annotated)
        printf '%s\n' 'proxy-body-size: 8m' 'proxy-connect-timeout: "5"' \
            'proxy-read-timeout: "30"' 'proxy-send-timeout: "30"' \
            'upstream-vhost: backend.internal' 'ssl-redirect: "false"' 'app-root: /home' \
            'server-alias: bench.example' 'enable-access-log: "true"' \
            'proxy-http-version: "1.1"' 'proxy-buffering: "off"' \
            'proxy-request-buffering: "on"' 'backend-protocol: HTTP' |
            nginx_ingress / Prefix
        ;;
    allowlist)
        printf '%s\n' 'whitelist-source-range: "10.0.0.0/8, 127.0.0.0/8"' | nginx_ingress / Prefix
        ;;
    cors)
        printf '%s\n' 'enable-cors: "true"' | nginx_ingress / Prefix
        ;;
    canary)
        printf '%s\n' 'ssl-redirect: "false"' | nginx_ingress / Prefix
        echo ---
        printf '%s\n' 'canary: "true"' 'canary-by-header: X-Canary' 'canary-by-cookie: canary' \
            'canary-weight: "50"' | nginx_ingress / Prefix bench-canary
        ;;
    *)
        log "ROUTE must be plain, regex-rewrite, annotated, allowlist, cors or canary"
        exit 1
        ;;
    esac
    echo ---
    yaml_service backend default "$BE"
    echo ---
    yaml_endpoint_slice backend default "$BE" 127.0.0.1
    if [[ $SCHEME == https ]]; then
        echo ---
        yaml_tls_ingress bench-tls default localhost backend "$WORK/tls.crt" "$WORK/tls.key"
    fi
} >"$WORK/manifests/bench.yaml"
if [[ $ROUTE != plain ]]; then PORTICO_EXTRA+=(--ingress-nginx-compat); fi

# nginx as the proxy: one process (no master), so that callgrind sees every request.
mkdir -p "$WORK/nginx"
nginx_proxy_directives backend >"$WORK/nginx/proxy.inc"
cat >"$WORK/nginx/nginx.conf" <<EOF
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log error;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
    upstream backend { server 127.0.0.1:$BE; keepalive 64; }
    server {
        listen 127.0.0.1:$NG;
        listen 127.0.0.1:$NGS ssl;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        location / { include $WORK/nginx/proxy.inc; }
    }
}
EOF

# nginx-lua: the same, with Lua in ingress-nginx's phases.
mkdir -p "$WORK/nginx-lua"
nginx_lua_location_directives backend >"$WORK/nginx-lua/location.inc"
cat >"$WORK/nginx-lua/nginx.conf" <<EOF
$(nginx_lua_modules)
master_process off;
worker_processes 1;
pid $WORK/nginx-lua/nginx.pid;
error_log $WORK/nginx-lua/error.log error;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
$(nginx_lua_http backend "127.0.0.1:$BE")
    server {
        listen 127.0.0.1:$NL;
        listen 127.0.0.1:$NLS ssl;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        location / { include $WORK/nginx-lua/location.inc; }
    }
}
EOF

# HAProxy: one process, one thread.
haproxy_conf "$WORK/haproxy" 1 "127.0.0.1:$BE" "127.0.0.1:$HA" "127.0.0.1:$HAS" "$WORK/tls.pem"

# Starts one proxy under callgrind writing to $1; sets PORT to where it listens.
start_proxy() {
    local proxy=$1 out=$2 log=$3
    local cg=(valgrind --tool=callgrind --callgrind-out-file="$out")
    case $proxy in
    nginx)
        PORT=$NG; TLS_PORT=$NGS
        "${cg[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$log" 2>&1 &
        ;;
    nginx-lua)
        PORT=$NL; TLS_PORT=$NLS
        "${cg[@]}" --smc-check=all-non-file "$NGINX" -p "$WORK/nginx-lua" \
            -c "$WORK/nginx-lua/nginx.conf" -g 'daemon off;' >"$log" 2>&1 &
        ;;
    haproxy)
        PORT=$HA; TLS_PORT=$HAS
        "${cg[@]}" "$HAPROXY" -db -f "$WORK/haproxy/haproxy.cfg" >"$log" 2>&1 &
        ;;
    bare)
        PORT=$BP
        "${cg[@]}" "$BARE" "127.0.0.1:$BP" "127.0.0.1:$BE" 1 >"$log" 2>&1 &
        ;;
    portico)
        PORT=$PO; TLS_PORT=$POS
        "${cg[@]}" "$WORK/portico" --manifests "$WORK/manifests" --http-listen "127.0.0.1:$PO" \
            --https-listen "127.0.0.1:$POS" --admin-listen "127.0.0.1:$PA" --threads 1 --access-log off \
            "${PORTICO_EXTRA[@]}" >"$log" 2>&1 &
        ;;
    esac
    PID=$!
    PIDS+=("$PID")
}

# The path requested from a proxy: ROUTE's for Portico, /small for the others.
path_of() {
    if [[ $1 == portico ]]; then echo "$REQ"; else echo /small; fi
}

# The URL requested from a proxy: plain HTTP to 127.0.0.1, or HTTPS to localhost (its certificate's
# name, which Portico's TLS Ingress is for).
url_of() {
    if [[ $SCHEME == https ]]; then
        echo "https://localhost:$TLS_PORT$(path_of "$1")"
    else
        echo "http://127.0.0.1:$PORT$(path_of "$1")"
    fi
}

# One run: start a proxy under callgrind, wait for a 200, send N requests (all must answer 200),
# stop it and print its total instruction count.
run() {
    local proxy=$1 n=$2 out="$WORK/callgrind.$1.$2.out"
    start_proxy "$proxy" "$out" "$WORK/$proxy.$n.log"
    for _ in $(seq 1 600); do
        [[ $(curl -sk -o /dev/null -w '%{http_code}' "$(url_of "$proxy")") == 200 ]] && break
        sleep 0.1
    done
    oha -n "$n" -c 1 --no-tui --output-format json --insecure --ipv4 "$(url_of "$proxy")" \
        >"$WORK/oha.$proxy.$n.json"
    local ok
    ok=$(jq -r '.statusCodeDistribution["200"] // 0' "$WORK/oha.$proxy.$n.json")
    [[ $ok == "$n" ]] || { log "$proxy: $ok of $n requests answered 200"; exit 1; }
    # nginx stops gracefully on SIGQUIT, HAProxy at once on SIGTERM, Pingora on SIGINT; callgrind
    # writes either way.
    case $proxy in
    nginx | nginx-lua) kill -QUIT "$PID" ;;
    haproxy) kill -TERM "$PID" ;;
    *) kill -INT "$PID" ;;
    esac
    wait "$PID" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

declare -A PER
for proxy in $PROXIES; do
    log "callgrind: $proxy, $N1 then $N2 requests"
    i1=$(run "$proxy" "$N1")
    i2=$(run "$proxy" "$N2")
    PER[$proxy]=$(((i2 - i1) / (N2 - N1)))
done

echo "Instructions per keep-alive $SCHEME request (callgrind, one worker, runs of $N1 and $N2 differenced; Portico's route: $ROUTE):"
echo
echo "| proxy | instructions / request | × nginx |"
echo "|---|---|---|"
for proxy in $PROXIES; do
    ratio=-
    if [[ -n "${PER[nginx]:-}" ]]; then
        ratio=$(awk -v a="${PER[$proxy]}" -v b="${PER[nginx]}" 'BEGIN { printf "%.2f", a / b }')
    fi
    echo "| $proxy | ${PER[$proxy]} | $ratio |"
done
