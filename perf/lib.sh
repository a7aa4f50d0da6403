# shellcheck shell=bash
# What the perf/ scripts share, sourced by them (`source "$(dirname "$0")/lib.sh"`), not run:
# tools, the Portico binary, a work directory that is cleaned up, loopback ports, nginx processes
# and the Kubernetes manifests that route Portico to a backend. Each script keeps its own knobs,
# nginx configurations and whatever manifests only it needs.

PERF_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# log MESSAGE...: one line on stderr.
log() { printf '%s\n' "$*" >&2; }

# need_tools COMMAND:PACKAGE...: apt-get installs the PACKAGEs whose COMMAND is missing (with sudo
# unless root), then sets NGINX to the nginx binary (nginx-light's lives in /usr/sbin, which is not
# on every PATH).
need_tools() {
    local pair sudo="" need=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [[ ${pair%%:*} == nginx && -x /usr/sbin/nginx ]] ||
            need+=("${pair#*:}")
    done
    if ((${#need[@]})); then
        [[ $(id -u) == 0 ]] || sudo=sudo
        log "installing ${need[*]}"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
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
# would drain Portico for 10 s), up to 2 s for them to go, then SIGKILL; removes WORK unless KEEP.
cleanup() {
    local p alive
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
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
