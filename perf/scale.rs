//! Control-plane scale: 10,000 Ingresses × 3 paths and 100,000 endpoints.
//!
//! `cargo bench --bench scale` (release build). Three measurements:
//! - **compile**: the pure compile step on that model, and the full publish (compile, metric
//!   handles, pool gauges, swap), timed over several runs in this process;
//! - **memory**: the RSS of a real `portico` process serving a `--manifests` directory of that
//!   size (100 files of 100 Ingresses, their Services and EndpointSlices);
//! - **new Ingress to first 200**: in that process, a new file with one Ingress is renamed into
//!   the directory; the clock stops at the first 200 for its host (polled every millisecond). The
//!   file is then removed and the host polled until 404, so that samples do not overlap.
//!
//! Targets: compile < 200 ms, RSS < 300 MB, new Ingress to first 200 p99 < 200 ms.
//! `SCALE_INGRESSES` (default 10000), `SCALE_ENDPOINTS` (per Service, default 10) and
//! `SCALE_SAMPLES` (default 100) change the size.

mod synthetic;

// The allocator the `portico` binary ships with, so that compile times match the process's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portico::dataplane::Shared;
use portico::metrics::Metrics;
use portico::routing::{compile, CompileOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} n={:<4} p50 {:>8.2?}  p90 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        percentile(&samples, 100.0),
    );
}

/// Compile and publish in this process.
fn in_process(n: usize, endpoints: usize) {
    let before = rss_kib("self");
    let model = synthetic::synthetic_model(n, endpoints);
    let with_model = rss_kib("self");
    let opts = CompileOptions::default();
    let runs = 10;
    let mut compiles = Vec::new();
    let mut kept = None;
    for _ in 0..runs {
        let t = Instant::now();
        let c = compile(&model, &opts);
        compiles.push(t.elapsed());
        kept = Some(c);
    }
    let compiled = kept.expect("at least one run");
    let with_compiled = rss_kib("self");
    let routes = compiled.table.routes().len();
    let pools = compiled.pools.len();
    let eps: usize = compiled.pools.iter().map(|p| p.endpoints().len()).sum();
    drop(compiled);
    println!(
        "model: {n} Ingresses, {routes} routes, {pools} pools, {eps} endpoints \
         (model {} MiB, one compiled snapshot {} MiB of this process's RSS)",
        with_model.saturating_sub(before) / 1024,
        with_compiled.saturating_sub(with_model) / 1024,
    );
    summary("compile", compiles);

    let shared = Shared::new(opts.clone(), Metrics::new().expect("metrics register once"));
    let mut publishes = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let rejected = shared.publish_model(&model, true);
        publishes.push(t.elapsed());
        assert!(rejected.is_empty(), "synthetic model has no rejects");
    }
    summary("publish (compile+metrics+swap)", publishes);
}

// In the YAML templates below, `{p}` (an empty string) starts the lines whose indentation matters:
// a `\` line continuation drops the leading whitespace of the next line, up to the first `{p}`.

/// The manifests of `n` Ingresses in 100 files, plus an `IngressClass` and a `live` Service
/// whose one endpoint is `backend`.
fn write_manifests(dir: &Path, n: usize, endpoints: usize, backend: SocketAddr) {
    let class =
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: { name: portico }\n\
                 spec: { controller: portico.dev/ingress-controller }\n";
    std::fs::write(dir.join("00-class.yaml"), class).expect("write class");
    let live = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: live, namespace: default }}\n\
         spec: {{ ports: [{{ port: 80, targetPort: {port} }}] }}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: live-1\n  \
         namespace: default\n  labels: {{ kubernetes.io/service-name: live }}\naddressType: IPv4\n\
         ports: [{{ port: {port} }}]\nendpoints:\n  - addresses: [\"{ip}\"]\n    \
         conditions: {{ ready: true }}\n",
        port = backend.port(),
        ip = backend.ip(),
    );
    std::fs::write(dir.join("01-live.yaml"), live).expect("write live");
    let per_file = n.div_ceil(100).max(1);
    for (f, chunk) in (0..n).collect::<Vec<_>>().chunks(per_file).enumerate() {
        let mut y = String::new();
        for &i in chunk {
            let ns = format!("ns-{}", i % 100);
            let _ = write!(
                y,
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{ name: ing-{i}, namespace: {ns} }}\n\
                 spec:\n  ingressClassName: portico\n  rules:\n    - host: host-{i}.example.com\n      http:\n        paths:\n\
                 {p}          - {{ path: /, pathType: Prefix, backend: {{ service: {{ name: svc-{i}, port: {{ number: 80 }} }} }} }}\n\
                 {p}          - {{ path: /api, pathType: Prefix, backend: {{ service: {{ name: svc-{i}, port: {{ number: 80 }} }} }} }}\n\
                 {p}          - {{ path: /api/v1/status, pathType: Exact, backend: {{ service: {{ name: svc-{i}, port: {{ number: 80 }} }} }} }}\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{ name: svc-{i}, namespace: {ns} }}\n\
                 spec: {{ ports: [{{ port: 80, targetPort: 8080 }}] }}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-abc\n  namespace: {ns}\n  \
                 labels: {{ kubernetes.io/service-name: svc-{i} }}\naddressType: IPv4\nports: [{{ port: 8080 }}]\nendpoints:\n",
                p = "",
            );
            for e in 0..endpoints {
                let _ = writeln!(
                    y,
                    "  - addresses: [\"10.{}.{}.{}\"]\n    conditions: {{ ready: true }}",
                    (i >> 8) as u8,
                    i as u8,
                    e as u8
                );
            }
            y.push_str("---\n");
        }
        std::fs::write(dir.join(format!("bulk-{f:03}.yaml")), y).expect("write bulk");
    }
}

/// A backend that answers every request with `200 ok`, one thread per connection.
fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

fn serve(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
            if conn.write_all(reply).is_err() {
                return;
            }
        }
    }
}

/// One request on a new connection; the status code, or 0 when nothing answered.
fn status(addr: SocketAddr, host: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    std::str::from_utf8(&out)
        .ok()
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.elapsed()
}

/// The real binary on a manifests directory of that size.
fn process(n: usize, endpoints: usize, samples: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = start_backend();
    let t = Instant::now();
    write_manifests(dir.path(), n, endpoints, backend);
    println!("manifests written in {:.2?}", t.elapsed());

    let http = free_addr();
    let admin = free_addr();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("--manifests")
        .arg(dir.path())
        .args(["--http-listen", &http.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--threads", "2", "--access-log", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start portico");
    let proc = Proc(child);
    let pid = proc.0.id().to_string();
    let ready = wait_for("ready", Duration::from_secs(120), || {
        status(admin, "admin", "/readyz") == 200
    });
    println!(
        "portico ready (first snapshot of {n} Ingresses served) {:.2?} after start",
        started.elapsed().max(ready)
    );
    // The proxy listener opens once the first snapshot is published, a moment after /readyz.
    wait_for("proxy listener", Duration::from_secs(10), || {
        status(http, "nobody.example.com", "/") == 404
    });
    let rss = rss_kib(&pid);
    println!("portico RSS at that scale: {} MiB", rss / 1024);

    let mut add = Vec::new();
    let mut remove = Vec::new();
    for i in 0..samples {
        let host = format!("new-{i}.example.com");
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{ name: new-{i}, namespace: default }}\n\
             spec:\n  ingressClassName: portico\n  rules:\n    - host: {host}\n      http:\n        paths:\n\
             {p}          - {{ path: /, pathType: Prefix, backend: {{ service: {{ name: live, port: {{ number: 80 }} }} }} }}\n",
            p = "",
        );
        // Written aside (hidden files are not read), then renamed in: one atomic change.
        let tmp = dir.path().join(format!(".new-{i}.yaml"));
        let file = dir.path().join(format!("new-{i}.yaml"));
        std::fs::write(&tmp, yaml).expect("write new Ingress");
        let t = Instant::now();
        std::fs::rename(&tmp, &file).expect("rename new Ingress");
        wait_for("first 200", Duration::from_secs(30), || {
            status(http, &host, "/") == 200
        });
        add.push(t.elapsed());

        let t = Instant::now();
        std::fs::remove_file(&file).expect("remove new Ingress");
        wait_for("404 after removal", Duration::from_secs(30), || {
            status(http, &host, "/") == 404
        });
        remove.push(t.elapsed());
    }
    summary("new Ingress file -> first 200", add);
    summary("Ingress file removed -> 404", remove);
    println!(
        "portico RSS after {samples} changes: {} MiB",
        rss_kib(&pid) / 1024
    );
    drop(proc);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Only run
    // the measurements under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_usize("SCALE_INGRESSES", 10_000);
    let endpoints = env_usize("SCALE_ENDPOINTS", 10);
    let samples = env_usize("SCALE_SAMPLES", 100);
    in_process(n, endpoints);
    process(n, endpoints, samples);
}
