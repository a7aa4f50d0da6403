//! In-process end-to-end harness: a real Portico on ephemeral loopback ports, fed by a manifest
//! directory, with real echo backends ("pods") on their own 127.x.y.z addresses.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use portico::config::Flags;
use portico::dataplane::Shared;
use portico::echo::{Echo, Identity};
use portico::request::policy::Http1Engine;
use tokio::sync::watch;

tokio::task_local! {
    /// The HTTP/1 engine of the Portico a test starts; set per test by [`both_engines!`].
    pub static ENGINE: Http1Engine;
}

/// The engine of the running test: [`ENGINE`], else the default (Portico's).
pub fn engine() -> Http1Engine {
    ENGINE.try_with(|e| *e).unwrap_or_default()
}

/// Runs each test once per HTTP/1 engine: `NAME::portico` and `NAME::pingora`. Every Portico the
/// test starts through this harness serves HTTP/1 with that engine.
#[macro_export]
macro_rules! both_engines {
    ($( $(#[$attr:meta])* async fn $name:ident() $body:block )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            async fn portico() {
                $crate::common::ENGINE
                    .scope(portico::request::policy::Http1Engine::Portico, async $body)
                    .await
            }

            $(#[$attr])*
            async fn pingora() {
                $crate::common::ENGINE
                    .scope(portico::request::policy::Http1Engine::Pingora, async $body)
                    .await
            }
        }
    )*};
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    // The kernel may hand the same port out again once it is released; two listeners of one
    // server on one address would make Pingora reuse the first one's descriptor (and close it
    // twice). Never hand a port out twice in this process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Stops an in-process server (fast shutdown) once the channel says so.
pub struct StopSignal(pub watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

/// A running Portico. Stopped when dropped.
pub struct Portico {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Portico {
    /// Starts Portico on the given manifest files and waits until `/readyz` is 200.
    pub async fn start(files: &[(&str, &str)]) -> Portico {
        Self::start_with(files, |_| {}).await
    }

    pub async fn start_with(files: &[(&str, &str)], tweak: impl FnOnce(&mut Flags)) -> Portico {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write manifest");
        }
        let mut flags = Flags {
            manifests: Some(dir.path().to_path_buf()),
            http_listen: Some(format!("127.0.0.1:{}", free_port())),
            https_listen: Some(format!("127.0.0.1:{}", free_port())),
            admin_listen: Some(format!("127.0.0.1:{}", free_port())),
            threads: Some(2),
            // Several servers run in one test process: Pingora's no-steal runtime finds its
            // pools by a thread id that a later thread may reuse (pingora-runtime's
            // CURRENT_HANDLE), so tests use work stealing; tests/process.rs runs the default.
            work_stealing: Some(true),
            access_log: Some(portico::request::policy::AccessLog::Off),
            http1_engine: Some(engine()),
            ..Flags::default()
        };
        tweak(&mut flags);
        let config = flags.resolve().expect("config");
        let built = portico::server::build(&config, false).expect("build server");
        let shared = built.shared.clone();
        let (stop, rx) = watch::channel(false);
        let server = built.server;
        let thread = std::thread::spawn(move || {
            portico::server::run(server, Box::new(StopSignal(rx)));
        });
        let p = Portico {
            http: config.http_listen,
            admin: config.admin_listen,
            dir,
            shared,
            stop,
            thread: Some(thread),
        };
        p.wait_ready().await;
        p
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if let Ok(r) = client().get(&url).send().await {
                if r.status() == 200 {
                    // The proxy listener starts with the admin one; make sure it accepts too.
                    if tokio::net::TcpStream::connect(self.http).await.is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "Portico did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a manifest file in place.
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write manifest");
    }

    /// Writes a manifest and waits until a new snapshot has been published.
    pub async fn write_and_wait(&self, name: &str, text: &str) {
        let generation = self.shared.load().generation;
        self.write(name, text);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.load().generation == generation {
            assert!(
                Instant::now() < deadline,
                "no new snapshot after writing {name}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Writes a manifest atomically: a hidden temporary file renamed into place.
    pub fn write_atomic(&self, name: &str, text: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp");
        std::fs::rename(&tmp, self.path(name)).expect("rename");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).expect("remove manifest");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// GET with a Host header; returns the status and the body.
    pub async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let r = client()
            .get(self.url(path))
            .header("host", host)
            .send()
            .await
            .expect("request failed");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// GET expecting an echo answer; returns it.
    pub async fn echo(&self, host: &str, path: &str) -> Echo {
        let (status, body) = self.get(host, path).await;
        assert_eq!(status, 200, "GET {host}{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not an echo answer ({e}): {body}"))
    }

    /// Polls until `check` holds for the answer to `host`/`path`, or panics after `within`.
    /// Returns how long it took.
    pub async fn eventually(
        &self,
        host: &str,
        path: &str,
        within: Duration,
        check: impl Fn(u16, &str) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let (s, b) = self.get(host, path).await;
            if check(s, &b) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{host}{path}: still {s} {b} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .unwrap_or_default()
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client that never reuses a broken connection across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

static NEXT_NET: AtomicU8 = AtomicU8::new(1);

/// A group of pods of one Service: echo backends listening on the same port, each on its own
/// loopback address 127.<process-unique>.<group>.<n>.
pub struct Pods {
    pub service: String,
    pub port: u16,
    pub ips: Vec<IpAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pods {
    pub async fn start(service: &str, n: u8) -> Pods {
        let group = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let second = 100 + (std::process::id() % 100) as u8;
        // Try a few ports: the first pod picks one, the others must get the same one.
        for _ in 0..20 {
            let first = Ipv4Addr::new(127, second, group, 1);
            let Ok(l) = tokio::net::TcpListener::bind((first, 0)).await else {
                continue;
            };
            let port = l.local_addr().expect("addr").port();
            let mut listeners = vec![(IpAddr::V4(first), l)];
            for i in 2..=n {
                let ip = Ipv4Addr::new(127, second, group, i);
                match tokio::net::TcpListener::bind((ip, port)).await {
                    Ok(l) => listeners.push((IpAddr::V4(ip), l)),
                    Err(_) => break,
                }
            }
            if listeners.len() != n as usize {
                continue;
            }
            let mut ips = Vec::new();
            let mut tasks = Vec::new();
            for (i, (ip, l)) in listeners.into_iter().enumerate() {
                ips.push(ip);
                tasks.push(tokio::spawn(portico::echo::serve(
                    l,
                    Identity {
                        service: service.to_string(),
                        pod: format!("{service}-{i}"),
                    },
                )));
            }
            return Pods {
                service: service.to_string(),
                port,
                ips,
                tasks,
            };
        }
        panic!("could not start pods for {service}");
    }

    /// One pod whose connections `serve` answers: a scripted backend, for upstream behaviour an
    /// echo server does not show. `serve` gets each accepted connection and its index.
    pub async fn scripted<F, Fut>(service: &str, serve: F) -> Pods
    where
        F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let group = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let second = 100 + (std::process::id() % 100) as u8;
        let ip = Ipv4Addr::new(127, second, group, 1);
        let l = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind scripted pod");
        let port = l.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, n));
                n += 1;
            }
        });
        Pods {
            service: service.to_string(),
            port,
            ips: vec![IpAddr::V4(ip)],
            tasks: vec![task],
        }
    }

    /// Stops one pod (its listener closes).
    pub fn kill(&mut self, index: usize) {
        self.tasks[index].abort();
    }

    /// The Service and its EndpointSlice, as YAML. `port_name` names the Service port (and the
    /// slice port); `service_port` is the Service's own port number.
    pub fn manifests(&self, ns: &str, port_name: &str, service_port: u16) -> String {
        let name_line = if port_name.is_empty() {
            String::new()
        } else {
            format!("name: {port_name}\n      ")
        };
        let slice_name = if port_name.is_empty() {
            String::new()
        } else {
            format!("name: {port_name}\n    ")
        };
        let endpoints: String = self
            .ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                format!(
                    "  - addresses: [\"{ip}\"]\n    conditions: {{ ready: true }}\n    targetRef: {{ kind: Pod, name: {}-{i} }}\n",
                    self.service
                )
            })
            .collect();
        format!(
            "apiVersion: v1
kind: Service
metadata: {{ name: {svc}, namespace: {ns} }}
spec:
  ports:
    - {name_line}port: {service_port}
      targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-slice
  namespace: {ns}
  labels: {{ kubernetes.io/service-name: {svc} }}
addressType: IPv4
ports:
  - {slice_name}port: {port}
endpoints:
{endpoints}",
            svc = self.service,
            port = self.port,
        )
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The IngressClass Portico owns by default.
pub const INGRESS_CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
";

/// An Ingress with one rule per `(host, path, pathType, service, port)`; `host` may be empty.
pub fn ingress(
    ns: &str,
    name: &str,
    created: &str,
    rules: &[(&str, &str, &str, &str, u16)],
) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: {ns}
  creationTimestamp: \"{created}\"
spec:
  ingressClassName: portico
  rules:
"
    );
    for (host, path, path_type, svc, port) in rules {
        let host_line = if host.is_empty() {
            String::new()
        } else {
            format!("host: \"{host}\"\n    ")
        };
        out.push_str(&format!(
            "  - {host_line}http:
      paths:
        - path: {path}
          pathType: {path_type}
          backend:
            service:
              name: {svc}
              port: {{ number: {port} }}
"
        ));
    }
    out
}

/// The value of one sample line of a scrape, by its exact name and label set (0 if absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
