//! End to end: what passes through the proxy unchanged, and what the proxy adds or removes.

mod common;

use std::time::Duration;

use common::{ingress, Pods, Portico, INGRESS_CLASS};
use portico::echo::{fnv1a, FNV_OFFSET};
use portico::request::policy::Http1Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_route(trusted: Option<&str>) -> (Portico, Pods) {
    one_route_with(trusted, "").await
}

/// One route to one echo pod; `annotations` is inserted into the Ingress's metadata.
async fn one_route_with(trusted: Option<&str>, annotations: &str) -> (Portico, Pods) {
    let pods = Pods::start("echo", 1).await;
    let rules = ingress(
        "default",
        "echo",
        "2026-01-01T00:00:00Z",
        &[("echo.example", "/", "Prefix", "echo", 80)],
    )
    .replace(
        "  creationTimestamp:",
        &format!("{annotations}  creationTimestamp:"),
    );
    let trusted = trusted.map(str::to_string);
    let p = Portico::start_with(
        &[
            ("class.yaml", INGRESS_CLASS),
            ("rules.yaml", &rules),
            ("svc.yaml", &pods.manifests("default", "", 80)),
        ],
        |f| {
            if let Some(t) = trusted {
                f.trusted_proxies = vec![t];
            }
        },
    )
    .await;
    (p, pods)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_passes_through_with_forwarding_headers() {
    let (p, _pods) = one_route(None).await;
    let r = common::client()
        .request(reqwest::Method::PATCH, p.url("/a/b%20c/?x=1&y=%2F#frag"))
        .header("host", "Echo.Example")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "6.6.6.6")
        .body("hello")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let e: portico::echo::Echo = r.json().await.expect("echo");
    assert_eq!(e.method, "PATCH");
    assert_eq!(e.path, "/a/b%20c/");
    assert_eq!(e.query.as_deref(), Some("x=1&y=%2F"));
    assert_eq!(e.headers["host"], "Echo.Example");
    assert_eq!(e.headers["x-custom"], "kept");
    assert_eq!(e.body_bytes, 5);
    // Not from a trusted proxy: the client's forwarding headers are replaced.
    assert_eq!(e.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(e.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(e.headers["x-forwarded-proto"], "http");
    assert_eq!(e.headers["x-forwarded-host"], "Echo.Example");
    assert_eq!(e.headers["x-forwarded-port"], p.http.port().to_string());
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarding_headers_are_extended() {
    let (p, _pods) = one_route(Some("127.0.0.0/8")).await;
    let r = common::client()
        .get(p.url("/"))
        .header("host", "echo.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("request");
    let e: portico::echo::Echo = r.json().await.expect("echo");
    assert_eq!(e.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(e.headers["x-forwarded-proto"], "https");
}
}

/// Writes a raw HTTP/1.1 request and reads the whole answer (the server closes after it).
async fn raw(p: &Portico, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed() {
    let (p, _pods) = one_route(None).await;
    let answer = raw(
        &p,
        "GET / HTTP/1.1\r\nHost: echo.example\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-End: kept\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let body = body
        .find('{')
        .map(|i| &body[i..body.rfind('}').map_or(body.len(), |j| j + 1)])
        .unwrap_or(body);
    let e: portico::echo::Echo = serde_json::from_str(body).expect("echo json");
    for h in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(
            !e.headers.contains_key(h),
            "{h} was forwarded: {:?}",
            e.headers
        );
    }
    assert_eq!(e.headers["x-end"], "kept");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    // The Ingress lifts the 1 MiB default body limit for itself.
    let (p, _pods) = one_route_with(
        None,
        "  annotations: { portico.dev/proxy-body-size: 64m }\n",
    )
    .await;
    // 8 MiB up, streamed in chunks without a Content-Length.
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut expect = FNV_OFFSET;
    for _ in 0..128 {
        expect = fnv1a(expect, &chunk);
    }
    let c = chunk.clone();
    let stream = futures::stream::iter((0..128).map(move |_| Ok::<_, std::io::Error>(c.clone())));
    let r = common::client()
        .post(p.url("/upload"))
        .header("host", "echo.example")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let e: portico::echo::Echo = r.json().await.expect("echo");
    assert_eq!(e.body_bytes, 128 * 64 * 1024);
    assert_eq!(e.body_fnv, expect);

    // 32 MiB down.
    let r = common::client()
        .get(p.url("/bytes/33554432"))
        .header("host", "echo.example")
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), 33554432);
    assert!(body.iter().all(|b| *b == b'x'));
}
}

/// Upgrades one connection to a WebSocket through the proxy, sends `first` with the request
/// (bytes of the new protocol the client did not wait to send) and `rest` after the 101, and
/// reads both back from the echoing backend; then half-closes and expects the close to come back.
async fn upgrade_and_echo(p: &Portico, first: &[u8], rest: &[u8]) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .map_err(|e| e.to_string())?;
    let mut request =
        b"GET /ws HTTP/1.1\r\nHost: echo.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    request.extend_from_slice(first);
    s.write_all(&request).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1024];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| "no 101 in time")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed before the 101: {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    got.drain(..head_end);
    s.write_all(rest).await.map_err(|e| e.to_string())?;
    let want: Vec<u8> = [first, rest].concat();
    while got.len() < want.len() {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| "no echo in time")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed after {} of {} echoed bytes",
                got.len(),
                want.len()
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want);
    // The client's end of stream reaches the backend, whose close comes back.
    s.shutdown().await.map_err(|e| e.to_string())?;
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_err(|_| "the close did not come back")?
        .map_err(|e| e.to_string())?;
    assert_eq!(n, 0, "bytes after the echo");
    Ok(())
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let (p, _pods) = one_route(None).await;
    if common::engine() == Http1Engine::Portico {
        for _ in 0..20 {
            upgrade_and_echo(&p, b"early-bytes", b"ping-through-portico")
                .await
                .expect("upgrade");
        }
        return;
    }
    // Pingora 0.9.1's proxy can end an upgraded connection right after the 101: its upstream
    // half takes the end of the (empty) request body, when it arrives after the 101, as the end
    // of the tunnel (proxy_h1.rs, `request_done && was_upgraded()`). Seen in about 1 in 20
    // attempts under load. Portico's own engine, the default, does not have that race; on
    // Pingora's, this asserts that upgrades work, allowing for that known race.
    let mut failures = Vec::new();
    for _ in 0..5 {
        match upgrade_and_echo(&p, b"", b"ping-through-portico").await {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("no upgrade got through Pingora's engine: {failures:?}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (p, _pods) = one_route(None).await;
    let c = common::client();
    for _ in 0..50 {
        let r = c
            .get(p.url("/"))
            .header("host", "echo.example")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    let m = p.metrics().await;
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let new = value("portico_upstream_connections_total{reused=\"false\"}");
    let reused = value("portico_upstream_connections_total{reused=\"true\"}");
    assert_eq!(new + reused, 50.0, "{m}");
    assert!(new <= 2.0, "new upstream connections: {new}");
}
}
