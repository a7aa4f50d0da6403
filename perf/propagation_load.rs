//! Propagation under load: an endpoint or Ingress change, written into the API server, until the
//! first request through a running Portico shows it, while wrk saturates Portico.
//!
//! `cargo bench --bench propagation_load` (release build; needs `wrk`, and `nginx` for the
//! backend, else an in-process echo backend is used). About 3 minutes; every phase is bounded.
//! Without `--bench` (as `cargo test --benches` runs it) it is a smoke run: 100 Ingresses, a few
//! changes, no timing checks.
//!
//! Set-up, per size (100 and 10,000 Ingresses, 3 paths each, every one with its own Service and
//! EndpointSlice):
//! - the API-server stand-in (`tests/support/apiserver.rs`) over TLS with its own CA, in this
//!   process; Portico (the release binary, `--threads 2`, access log off) in cluster mode, reading
//!   it through a kubeconfig, exactly as in a cluster;
//! - one nginx backend; the Ingress `load` (host `load.example`) to the Service `load`, whose
//!   EndpointSlice alternates between that backend and no endpoint; the Ingress `live`
//!   (`live.example`) to the Service `live`, always on the backend;
//! - a poller: a new connection every ~1 ms, `GET /` with the changed host, `Connection: close`.
//!
//! Changes, each measured from the moment the stand-in's write returns (the watch event is then
//! on its way) until the poller's first answer that shows it:
//! - **slice add** (503 -> 200) and **slice remove** (200 -> 503): `load`'s EndpointSlice replaced;
//! - **ingress add** (404 -> 200): a new Ingress `new-k` for `new-k.example` to `live`;
//!   **ingress remove** (200 -> 404): that Ingress deleted.
//!
//! Each runs twice: *idle* (only the poller) and *load* (wrk, 1 thread, 16 connections, on the
//! same route: `load.example` for slice changes, `live.example` for Ingress changes).
//!
//! Portico runs with `RUST_LOG=portico::propagation=debug`: it traces, with wall-clock
//! microseconds, the watch event's receipt, the end of the debounce, the publish of each
//! generation and the first request that loads it. This bench lines them up with its own
//! clock and prints where the time went: write -> watch receipt -> debounce end -> publish ->
//! first use -> the poller's answer.

#[allow(dead_code)]
#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const PATHS: [&str; 3] = ["/a", "/b", "/c"];
/// The longest any one change may take before the bench gives up on it.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Quiet time between two changes, so that each is its own burst.
const GAP: Duration = Duration::from_millis(60);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// --- objects -----------------------------------------------------------------------------------

fn class() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "portico"},
        "spec": {"controller": "portico.dev/ingress-controller"},
    })
}

fn service(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

fn slice(ns: &str, service: &str, port: u16, ips: &[String]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn ingress(ns: &str, name: &str, host: &str, service: &str) -> Value {
    let paths: Vec<Value> = PATHS
        .iter()
        .map(|p| {
            json!({"path": p, "pathType": "Prefix",
                   "backend": {"service": {"name": service, "port": {"name": "http"}}}})
        })
        .chain(std::iter::once(json!({"path": "/", "pathType": "Prefix",
               "backend": {"service": {"name": service, "port": {"name": "http"}}}})))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ingressClassName": "portico",
                 "rules": [{"host": host, "http": {"paths": paths}}]},
    })
}

/// A filler endpoint on loopback: never sent a request (no one asks for these hosts).
fn filler_ip(i: usize) -> String {
    format!("127.2.{}.{}", (i / 250) % 250, i % 250 + 1)
}

// --- processes ---------------------------------------------------------------------------------

/// Stops (SIGINT, then SIGKILL) a child when dropped.
struct Proc(Child);

impl Proc {
    fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.interrupt();
        for _ in 0..20 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

/// The backend, kept running while it lives: nginx with one worker answering 200, or an
/// in-process echo backend on its own runtime.
#[allow(dead_code)]
enum Backend {
    Nginx(Proc),
    Echo(tokio::runtime::Runtime),
}

fn start_backend(dir: &std::path::Path, port: u16) -> Backend {
    if let Some(nginx) = nginx_binary() {
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;\n\
             location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new(nginx)
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        return Backend::Nginx(Proc(child));
    }
    eprintln!("nginx not found: using the in-process echo backend");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.spawn(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind backend");
        portico::echo::serve(
            l,
            portico::echo::Identity {
                service: "live".into(),
                pod: "live-0".into(),
            },
        )
        .await;
    });
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    Backend::Echo(rt)
}

fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{addr} does not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One propagation trace event from Portico's log.
#[derive(Clone, Debug)]
struct Trace {
    stage: String,
    object: String,
    generation: u64,
    unix_us: u64,
}

/// Parses `key=value` fields of a fmt log line (values may be quoted).
fn parse_trace(line: &str) -> Option<Trace> {
    if !line.contains("portico::propagation") {
        return None;
    }
    let mut t = Trace {
        stage: String::new(),
        object: String::new(),
        generation: 0,
        unix_us: 0,
    };
    for field in line.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        let v = v.trim_matches('"');
        match k {
            "stage" => t.stage = v.to_string(),
            "object" => t.object = v.to_string(),
            "generation" => t.generation = v.parse().unwrap_or(0),
            "unix_us" => t.unix_us = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    (t.unix_us > 0).then_some(t)
}

struct Portico {
    _proc: Proc,
    http: SocketAddr,
    traces: Arc<Mutex<Vec<Trace>>>,
}

fn start_portico(kubeconfig: &std::path::Path) -> Portico {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--http-listen", &http.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--threads", "2", "--access-log", "off"])
        .env("RUST_LOG", "warn,portico::propagation=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portico starts");
    let stderr = child.stderr.take().expect("stderr");
    let traces = Arc::new(Mutex::new(Vec::new()));
    let sink = traces.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            match parse_trace(&line) {
                Some(t) => sink.lock().expect("traces").push(t),
                None if line.contains("WARN") || line.contains("ERROR") => eprintln!("{line}"),
                None => {}
            }
        }
    });
    let proc = Proc(child);
    let start = Instant::now();
    while get(admin, "portico.admin", "/readyz") != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "Portico did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  Portico ready after {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Portico {
        _proc: proc,
        http,
        traces,
    }
}

/// One request on a new connection; the status code.
fn get(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let _ = s.set_nodelay(true);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).ok()?;
    std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()
}

/// wrk on `host`, 16 connections, for at most `secs`; stopped early by [`Wrk::stop`].
struct Wrk {
    proc: Option<Proc>,
    out: Arc<Mutex<String>>,
}

impl Wrk {
    fn start(addr: SocketAddr, host: &str, secs: u64) -> Wrk {
        let mut child = Command::new("wrk")
            .args(["-t1", "-c16", &format!("-d{secs}s")])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wrk runs (apt-get install wrk)");
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            *sink.lock().expect("wrk out") = s;
        });
        // Let it reach full speed.
        std::thread::sleep(Duration::from_millis(500));
        Wrk {
            proc: Some(Proc(child)),
            out,
        }
    }

    /// Stops wrk (SIGINT makes it print its summary) and returns its requests per second.
    fn stop(mut self) -> String {
        if let Some(p) = self.proc.take() {
            p.interrupt();
            drop(p);
        }
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.lock().expect("wrk out").clone();
        out.lines()
            .find(|l| l.starts_with("Requests/sec"))
            .map(|l| l.trim_start_matches("Requests/sec:").trim().to_string())
            .unwrap_or_else(|| "?".into())
    }
}

// --- measurement -------------------------------------------------------------------------------

/// One measured change.
struct Sample {
    /// When the write was started (µs since the epoch): its watch event comes after this.
    started: u64,
    /// When the write returned (µs since the epoch).
    written: u64,
    /// When the poller first saw the change.
    seen: u64,
    /// The object whose watch event carries the change (`ns/name`).
    object: String,
}

/// Polls `host` every ~1 ms until it answers `want`; the wall clock at that answer.
fn poll_until(http: SocketAddr, host: &str, want: u16) -> Option<u64> {
    let start = Instant::now();
    loop {
        if get(http, host, "/") == Some(want) {
            return Some(unix_us());
        }
        if start.elapsed() > GIVE_UP {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Stages {
    total: Vec<f64>,
    watch: Vec<f64>,
    debounce: Vec<f64>,
    publish: Vec<f64>,
    first_use: Vec<f64>,
    seen: Vec<f64>,
}

/// Splits each sample's time at the traced stages: write -> watch receipt -> debounce end ->
/// publish -> first request on that snapshot -> the poller's answer.
fn stages(samples: &[Sample], traces: &[Trace]) -> Stages {
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
    let mut s = Stages {
        total: vec![],
        watch: vec![],
        debounce: vec![],
        publish: vec![],
        first_use: vec![],
        seen: vec![],
    };
    for x in samples {
        s.total.push(ms(x.written, x.seen));
        let after = |stage: &str, t: u64, f: &dyn Fn(&Trace) -> bool| {
            traces
                .iter()
                .find(|e| e.stage == stage && e.unix_us >= t && f(e))
                .cloned()
        };
        let Some(w) = after("watch", x.started, &|e| e.object == x.object) else {
            continue;
        };
        let Some(d) = after("debounced", w.unix_us, &|_| true) else {
            continue;
        };
        let Some(p) = after("publish", d.unix_us, &|_| true) else {
            continue;
        };
        // A request may load the new snapshot between the swap and the publish trace: match
        // the generation, not the time.
        let Some(u) = traces
            .iter()
            .find(|e| e.stage == "first_use" && e.generation == p.generation)
        else {
            continue;
        };
        s.watch.push(ms(x.written, w.unix_us));
        s.debounce.push(ms(w.unix_us, d.unix_us));
        s.publish.push(ms(d.unix_us, p.unix_us));
        s.first_use.push(ms(p.unix_us, u.unix_us));
        s.seen.push(ms(u.unix_us, x.seen));
    }
    s
}

fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn report(size: usize, mode: &str, what: &str, samples: &[Sample], traces: &[Trace], lost: usize) {
    let s = stages(samples, traces);
    let f = |v: &[f64]| format!("{:6.1} / {:6.1}", pct(v, 0.5), pct(v, 0.99));
    println!(
        "{size:>6} {mode:<5} {what:<15} n={:<3} lost={lost:<2} total p50/p99 {} ms | \
         watch {} | debounce {} | publish {} | first use {} | answer {}",
        samples.len(),
        f(&s.total),
        f(&s.watch),
        f(&s.debounce),
        f(&s.publish),
        f(&s.first_use),
        f(&s.seen),
    );
}

/// Dropped in field order: Portico stops before the API server goes away.
struct Bench {
    portico: Portico,
    server: apiserver::ApiServer,
    backend_port: u16,
}

impl Bench {
    fn traces(&self) -> Vec<Trace> {
        self.portico.traces.lock().expect("traces").clone()
    }

    /// Alternates `load`'s slice between no endpoint and the backend, `changes` times.
    fn slice_changes(&self, changes: usize) -> (Vec<Sample>, Vec<Sample>, usize) {
        let (mut added, mut removed, mut lost) = (vec![], vec![], 0);
        let http = self.portico.http;
        for k in 0..changes {
            let add = k % 2 == 1;
            let ips = if add {
                vec!["127.0.0.1".to_string()]
            } else {
                vec![]
            };
            let started = unix_us();
            self.server
                .apply(slice("bench", "load", self.backend_port, &ips));
            let written = unix_us();
            let want = if add { 200 } else { 503 };
            match poll_until(http, "load.example", want) {
                Some(seen) => {
                    let s = Sample {
                        started,
                        written,
                        seen,
                        object: "bench/load-1".into(),
                    };
                    if add {
                        added.push(s)
                    } else {
                        removed.push(s)
                    }
                }
                None => lost += 1,
            }
            std::thread::sleep(GAP);
        }
        (added, removed, lost)
    }

    /// Adds and deletes Ingresses `new-k` to `live`, `changes` times.
    fn ingress_changes(&self, changes: usize, first: usize) -> (Vec<Sample>, Vec<Sample>, usize) {
        let (mut added, mut removed, mut lost) = (vec![], vec![], 0);
        let http = self.portico.http;
        for k in first..first + changes / 2 {
            let name = format!("new-{k}");
            let host = format!("{name}.example");
            for add in [true, false] {
                let started = unix_us();
                if add {
                    self.server.apply(ingress("bench", &name, &host, "live"));
                } else {
                    self.server
                        .delete("networking.k8s.io/v1", "Ingress", "bench", &name);
                }
                let written = unix_us();
                match poll_until(http, &host, if add { 200 } else { 404 }) {
                    Some(seen) => {
                        let s = Sample {
                            started,
                            written,
                            seen,
                            object: format!("bench/{name}"),
                        };
                        if add {
                            added.push(s)
                        } else {
                            removed.push(s)
                        }
                    }
                    None => lost += 1,
                }
                std::thread::sleep(GAP);
            }
        }
        (added, removed, lost)
    }
}

fn run_size(rt: &tokio::runtime::Runtime, size: usize, slice_n: usize, ingress_n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend_port = free_port();
    let _backend = start_backend(dir.path(), backend_port);
    let _guard = rt.enter();
    let server = rt.block_on(apiserver::ApiServer::start());
    server.apply(class());
    for i in 0..size {
        let ns = format!("ns-{}", i % 100);
        let name = format!("svc-{i}");
        server.apply(service(&ns, &name));
        server.apply(slice(&ns, &name, 8080, &[filler_ip(i)]));
        server.apply(ingress(
            &ns,
            &format!("ing-{i}"),
            &format!("ing-{i}.example"),
            &name,
        ));
    }
    for name in ["load", "live"] {
        server.apply(service("bench", name));
        server.apply(slice("bench", name, backend_port, &["127.0.0.1".into()]));
        server.apply(ingress("bench", name, &format!("{name}.example"), name));
    }
    let kubeconfig = server.kubeconfig(dir.path());
    let portico = start_portico(&kubeconfig);
    let bench = Bench {
        portico,
        server,
        backend_port,
    };
    // The proxy listener opens just after /readyz turns 200.
    let start = Instant::now();
    while get(bench.portico.http, "live.example", "/") != Some(200) {
        assert!(
            start.elapsed() < GIVE_UP,
            "live.example does not answer 200"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut next_ingress = 0;
    for mode in ["idle", "load"] {
        let wrk = (mode == "load").then(|| Wrk::start(bench.portico.http, "load.example", 60));
        let (added, removed, lost) = bench.slice_changes(slice_n);
        let rps = wrk.map(Wrk::stop);
        let traces = bench.traces();
        report(size, mode, "slice add", &added, &traces, lost);
        report(size, mode, "slice remove", &removed, &traces, 0);
        if let Some(rps) = rps {
            println!("{size:>6} {mode:<5} (wrk on load.example: {rps} requests/s)");
        }

        let wrk = (mode == "load").then(|| Wrk::start(bench.portico.http, "live.example", 90));
        let (added, removed, lost) = bench.ingress_changes(ingress_n, next_ingress);
        next_ingress += ingress_n;
        let rps = wrk.map(Wrk::stop);
        let traces = bench.traces();
        report(size, mode, "ingress add", &added, &traces, lost);
        report(size, mode, "ingress remove", &removed, &traces, 0);
        if let Some(rps) = rps {
            println!("{size:>6} {mode:<5} (wrk on live.example: {rps} requests/s)");
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: a smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (sizes, slice_n, ingress_n): (&[usize], usize, usize) = if quick {
        (&[100], 4, 4)
    } else {
        (&[100, 10_000], 80, 40)
    };
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is missing: apt-get install wrk");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "change -> first request that shows it; p50 / p99 in ms; stages: write -> watch receipt \
         -> debounce end -> publish -> first use -> the poller's answer"
    );
    for &size in sizes {
        run_size(&rt, size, slice_n, ingress_n);
    }
}
