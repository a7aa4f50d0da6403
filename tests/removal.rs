//! A removed endpoint is never chosen once the snapshot that removed it is published: not by a
//! retry of a request that routed before the removal, and not by a request that was still
//! connecting when it happened.
//!
//! Each scenario is an `async fn` taking the harness's `Flags` tweak, so that it runs once per
//! HTTP/1 engine; the `#[tokio::test]`s at the end pick the engines.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Portico, INGRESS_CLASS};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::config::Flags;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Per-process loopback addresses, apart from the harness's `Pods` (127.100-199.x.y).
static NEXT_NET: AtomicU8 = AtomicU8::new(1);

/// `n` listeners on one port, each on its own loopback address.
async fn listeners(n: u8) -> (u16, Vec<(IpAddr, TcpListener)>) {
    let second = 40 + (std::process::id() % 50) as u8;
    for _ in 0..20 {
        let group = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let first = Ipv4Addr::new(127, second, group, 1);
        let Ok(l) = TcpListener::bind((first, 0)).await else {
            continue;
        };
        let port = l.local_addr().expect("addr").port();
        let mut out = vec![(IpAddr::V4(first), l)];
        for i in 2..=n {
            let ip = Ipv4Addr::new(127, second, group, i);
            match TcpListener::bind((ip, port)).await {
                Ok(l) => out.push((IpAddr::V4(ip), l)),
                Err(_) => break,
            }
        }
        if out.len() == n as usize {
            return (port, out);
        }
    }
    panic!("no free loopback port for {n} listeners");
}

/// Serves HTTP on `l`, answering every request with `name` and counting them in `hits`.
fn answer(l: TcpListener, name: &'static str, hits: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let hits = hits.clone();
            tokio::spawn(serve(TokioIo::new(s), name, hits));
        }
    });
}

async fn serve<S>(io: TokioIo<S>, name: &'static str, hits: Arc<AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |_req| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

fn manifests(port: u16, annotations: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: r
  namespace: default
  annotations: {{ {annotations} }}
spec:
  ingressClassName: portico
  rules:
    - host: r.test
      http:
        paths:
          - {{ path: /, pathType: Prefix, backend: {{ service: {{ name: s, port: {{ number: 80 }} }} }} }}
---
apiVersion: v1
kind: Service
metadata: {{ name: s, namespace: default }}
spec: {{ ports: [{{ port: 80, targetPort: {port} }}] }}
"
    )
}

fn slice(port: u16, ips: &[IpAddr]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("  - {{ addresses: [\"{ip}\"], conditions: {{ ready: true }} }}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s-1
  namespace: default
  labels: {{ kubernetes.io/service-name: s }}
addressType: IPv4
ports: [{{ port: {port} }}]
endpoints:
{endpoints}"
    )
}

async fn get(p: &Portico) -> (u16, String) {
    p.get("r.test", "/").await
}

/// A request routes to endpoints {H, C}; H takes it and holds it; meanwhile a snapshot replaces
/// C with D; then H closes the connection without answering. The retry must go to D: C was
/// removed before the retry chose.
pub async fn a_retry_never_picks_a_removed_endpoint(tweak: fn(&mut Flags)) {
    let (port, mut ls) = listeners(3).await;
    let (d_ip, d) = ls.pop().expect("d");
    let (c_ip, c) = ls.pop().expect("c");
    let (h_ip, h) = ls.pop().expect("h");
    let c_hits = Arc::new(AtomicUsize::new(0));
    let d_hits = Arc::new(AtomicUsize::new(0));
    answer(c, "c", c_hits.clone());
    answer(d, "d", d_hits.clone());
    // H reads a request, reports it, and closes the connection when told to.
    let (held_tx, mut held) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = h.accept().await {
            let held_tx = held_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let (release, released) = oneshot::channel();
                let _ = held_tx.send(release);
                let _ = released.await;
                drop(s); // closed without a response: the request is retried
            });
        }
    });

    let p = Portico::start_with(
        &[
            ("class.yaml", INGRESS_CLASS),
            ("rules.yaml", &manifests(port, "")),
            ("slice.yaml", &slice(port, &[h_ip, c_ip])),
        ],
        tweak,
    )
    .await;
    let p = Arc::new(p);

    // Round robin alternates H and C: within two requests one is held by H.
    let mut release = None;
    let mut request = None;
    for _ in 0..4 {
        let p2 = p.clone();
        let mut task = tokio::spawn(async move { get(&p2).await });
        tokio::select! {
            r = held.recv() => {
                release = r;
                request = Some(task);
                break;
            }
            answered = &mut task => {
                let (status, body) = answered.expect("request task");
                assert_eq!((status, body.as_str()), (200, "c"), "only C answers before the change");
            }
        }
    }
    let (release, request) = (
        release.expect("H never got a request"),
        request.expect("held request"),
    );

    let before = c_hits.load(Ordering::SeqCst);
    p.write_and_wait("slice.yaml", &slice(port, &[h_ip, d_ip]))
        .await;
    let _ = release.send(());
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the held request finishes")
        .expect("request task");
    assert_eq!(
        (status, body.as_str()),
        (200, "d"),
        "the retry chose from the snapshot it routed with, not the current one"
    );
    assert_eq!(
        c_hits.load(Ordering::SeqCst),
        before,
        "C was sent a request after its removal was published"
    );
    assert_eq!(d_hits.load(Ordering::SeqCst), 1);
}

/// A TLS backend whose handshake waits: it accepts the TCP connection, reports it, and only
/// answers the TLS handshake when released; then it serves HTTP, answering `name`.
fn slow_tls(
    l: TcpListener,
    name: &'static str,
    hits: Arc<AtomicUsize>,
    hold: bool,
) -> mpsc::UnboundedReceiver<oneshot::Sender<()>> {
    let cert = rcgen::generate_simple_self_signed(vec!["backend.test".to_string()]).expect("rcgen");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (held_tx, held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, hits, held_tx) = (acceptor.clone(), hits.clone(), held_tx.clone());
            tokio::spawn(async move {
                if hold {
                    let (release, released) = oneshot::channel::<()>();
                    let _ = held_tx.send(release);
                    let _ = released.await;
                }
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(TokioIo::new(tls), name, hits).await;
                }
            });
        }
    });
    held
}

/// A request picks X (the only endpoint) and connects; X's TLS handshake waits. Meanwhile a
/// snapshot replaces X with Y. When the handshake completes the request must not be sent to X
/// but retried on Y.
pub async fn a_request_still_connecting_never_uses_a_removed_endpoint(tweak: fn(&mut Flags)) {
    let (port, mut ls) = listeners(2).await;
    let (y_ip, y) = ls.pop().expect("y");
    let (x_ip, x) = ls.pop().expect("x");
    let x_hits = Arc::new(AtomicUsize::new(0));
    let y_hits = Arc::new(AtomicUsize::new(0));
    let mut held = slow_tls(x, "x", x_hits.clone(), true);
    let _ = slow_tls(y, "y", y_hits.clone(), false);

    let p = Portico::start_with(
        &[
            ("class.yaml", INGRESS_CLASS),
            (
                "rules.yaml",
                &manifests(port, "portico.dev/backend-protocol: HTTPS"),
            ),
            ("slice.yaml", &slice(port, &[x_ip])),
        ],
        tweak,
    )
    .await;
    let p = Arc::new(p);
    let p2 = p.clone();
    let request = tokio::spawn(async move { get(&p2).await });
    let release = tokio::time::timeout(Duration::from_secs(10), held.recv())
        .await
        .expect("X was never connected to")
        .expect("X's channel");

    p.write_and_wait("slice.yaml", &slice(port, &[y_ip])).await;
    let _ = release.send(());
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("the request finishes")
        .expect("request task");
    assert_eq!(
        (status, body.as_str()),
        (200, "y"),
        "the request was sent to an endpoint removed while it connected"
    );
    assert_eq!(x_hits.load(Ordering::SeqCst), 0, "X got a request");
    // Later requests go to Y only.
    for _ in 0..5 {
        assert_eq!(get(&p).await, (200, "y".to_string()));
    }
}

fn portico_engine(f: &mut Flags) {
    f.http1_engine = Some(portico::request::policy::Http1Engine::Portico);
}

fn pingora_engine(f: &mut Flags) {
    f.http1_engine = Some(portico::request::policy::Http1Engine::Pingora);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_removal_portico_engine() {
    a_retry_never_picks_a_removed_endpoint(portico_engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_removal_pingora_engine() {
    a_retry_never_picks_a_removed_endpoint(pingora_engine).await;
}

/// The backend speaks TLS (a held handshake is the wait), so both engines hand the request to
/// Pingora's proxy; run once per engine all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_during_removal_portico_engine() {
    a_request_still_connecting_never_uses_a_removed_endpoint(portico_engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_during_removal_pingora_engine() {
    a_request_still_connecting_never_uses_a_removed_endpoint(pingora_engine).await;
}
