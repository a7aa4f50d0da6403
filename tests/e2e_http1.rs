//! HTTP/1 connection behaviour end to end, on raw sockets, against echo and scripted backends:
//! pipelining, upstream connection reuse and its failure cases, slow and vanishing clients,
//! `Expect: 100-continue`, HTTP/1.0, and the `Date` and `Server` headers. Each test runs on both
//! HTTP/1 engines, except where Pingora's engine is known not to do it (pipelining).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ingress, Pods, Portico, INGRESS_CLASS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "h1.example";

async fn route_to(pods: &Pods, tweak: impl FnOnce(&mut portico::config::Flags)) -> Portico {
    let rules = ingress(
        "default",
        "h1",
        "2026-01-01T00:00:00Z",
        &[(HOST, "/", "Prefix", &pods.service, 80)],
    );
    Portico::start_with(
        &[
            ("class.yaml", INGRESS_CLASS),
            ("rules.yaml", &rules),
            ("svc.yaml", &pods.manifests("default", "", 80)),
        ],
        tweak,
    )
    .await
}

/// One worker thread, for tests that count upstream connections: Portico's engine keeps idle
/// upstream connections per worker thread, and with two a request may land on the other one.
fn one_thread(f: &mut portico::config::Flags) {
    f.threads = Some(1);
}

/// One response read from a raw socket.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length, chunked or until close) from `s`, with `pending` holding
/// bytes already read past the previous one. `None` if the connection closed before a whole one.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>, head: bool) -> Option<Response> {
    let mut buf = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = r.parse(pending) {
            let status = r.code.unwrap_or(0);
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            pending.drain(..len);
            let mut resp = Response {
                status,
                headers,
                body: Vec::new(),
            };
            if status < 200 {
                return Some(resp);
            }
            let cl = resp
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            if head || status == 204 || status == 304 {
                return Some(resp);
            }
            if chunked {
                loop {
                    let mut d = Vec::new();
                    // Decode what is there; read more until the last chunk.
                    let mut i = 0;
                    let mut done = false;
                    while let Some(eol) = pending[i..].windows(2).position(|w| w == b"\r\n") {
                        let line = std::str::from_utf8(&pending[i..i + eol]).ok()?;
                        let size =
                            usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                        if size == 0 {
                            if pending.len() >= i + eol + 4 {
                                i += eol + 4;
                                done = true;
                            }
                            break;
                        }
                        if pending.len() < i + eol + 2 + size + 2 {
                            break;
                        }
                        d.extend_from_slice(&pending[i + eol + 2..i + eol + 2 + size]);
                        i += eol + 2 + size + 2;
                    }
                    if done {
                        resp.body = d;
                        pending.drain(..i);
                        return Some(resp);
                    }
                    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                        .await
                        .ok()?
                        .ok()?;
                    if n == 0 {
                        return None;
                    }
                    pending.extend_from_slice(&buf[..n]);
                }
            }
            match cl {
                Some(n) => {
                    while pending.len() < n {
                        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                            .await
                            .ok()?
                            .ok()?;
                        if k == 0 {
                            return None;
                        }
                        pending.extend_from_slice(&buf[..k]);
                    }
                    resp.body = pending.drain(..n).collect();
                    return Some(resp);
                }
                None => {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(pending)).await;
                    resp.body = std::mem::take(pending);
                    return Some(resp);
                }
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Reads one request head and its Content-Length body on a backend connection.
async fn backend_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if req.len() >= end + 4 + cl {
                return Some(req);
            }
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        req.extend_from_slice(&buf[..n]);
    }
}

async fn connect(p: &Portico) -> TcpStream {
    TcpStream::connect(p.http).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    // Pingora's engine answers only the first of pipelined requests (cloudflare/pingora#377):
    // this is Portico's engine's behaviour.
    let pods = Pods::start("pipe", 2).await;
    let p = route_to(&pods, |_| {}).await;
    let mut s = connect(&p).await;
    let mut batch = String::new();
    for i in 0..3 {
        batch.push_str(&format!("GET /p/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    }
    batch.push_str(&format!(
        "POST /p/3 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello"
    ));
    batch.push_str(&format!(
        "POST /p/4 HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ));
    batch.push_str(&format!("GET /p/5 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    s.write_all(batch.as_bytes()).await.expect("write");
    let mut pending = Vec::new();
    for i in 0..6 {
        let r = read_response(&mut s, &mut pending, false)
            .await
            .unwrap_or_else(|| panic!("no answer to pipelined request {i}"));
        assert_eq!(r.status, 200);
        let echo: portico::echo::Echo = serde_json::from_slice(&r.body).expect("echo");
        assert_eq!(echo.path, format!("/p/{i}"));
        if i == 3 || i == 4 {
            assert_eq!(echo.body_bytes, if i == 3 { 5 } else { 3 });
        }
    }
    // The connection is still usable afterwards.
    s.write_all(format!("GET /after HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let r = read_response(&mut s, &mut pending, false)
        .await
        .expect("answer");
    assert_eq!(r.status, 200);
}

/// A backend whose connections each answer with `reply`, keep-alive; counts its connections.
async fn replying(service: &str, reply: &'static [u8]) -> (Pods, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let pods = Pods::scripted(service, move |mut s, _| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            while backend_request(&mut s).await.is_some() {
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (pods, conns)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_that_sent_too_much_is_not_reused() {
    let (pods, conns) = replying("overread", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await;
    let p = route_to(&pods, one_thread).await;
    for _ in 0..3 {
        let (status, body) = p.get(HOST, "/").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "a connection with extra bytes was reused");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_arrives_whole_and_its_connection_is_not_reused() {
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let pods = Pods::scripted("closedelim", move |mut s, _| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if backend_request(&mut s).await.is_some() {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nhello, ").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = s.write_all(b"world").await;
            }
        }
    })
    .await;
    let p = route_to(&pods, one_thread).await;
    for _ in 0..2 {
        let (status, body) = p.get(HOST, "/").await;
        assert_eq!((status, body.as_str()), (200, "hello, world"));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_closes_mid_response_closes_the_client_connection() {
    let pods = Pods::scripted("midclose", |mut s, _| async move {
        if backend_request(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .await;
        }
    })
    .await;
    let p = route_to(&pods, |_| {}).await;
    let mut s = connect(&p).await;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the client connection was left hanging");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.len() < 100, "a truncated body was completed: {body:?}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_by_the_backend_is_retried_once_for_idempotent_requests() {
    // Every backend connection answers its first request, then drops the next one unanswered:
    // a pooled connection that the backend closed just as the proxy reused it.
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let pods = Pods::scripted("stale", move |mut s, _| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            if backend_request(&mut s).await.is_some() {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = backend_request(&mut s).await;
            }
        }
    })
    .await;
    let p = route_to(&pods, one_thread).await;
    assert_eq!(p.get(HOST, "/").await, (200, "ok".to_string()));
    // Reuses the pooled connection, which drops it: retried on a new one.
    assert_eq!(p.get(HOST, "/").await, (200, "ok".to_string()));
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // A POST is never sent twice.
    let r = common::client()
        .post(p.url("/"))
        .header("host", HOST)
        .body("data")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 502);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_mid_body_disturbs_nothing() {
    let pods = Pods::start("vanish", 1).await;
    let p = route_to(&pods, |_| {}).await;
    for _ in 0..5 {
        let mut s = connect(&p).await;
        s.write_all(
            format!("POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        s.write_all(&[b'x'; 1000]).await.expect("write");
        drop(s);
    }
    let mut chunked = connect(&p).await;
    chunked
        .write_all(
            format!("POST /up HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc")
                .as_bytes(),
        )
        .await
        .expect("write");
    drop(chunked);
    assert_eq!(p.echo(HOST, "/still").await.path, "/still");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = p.metrics().await;
        if common::metric_value(&m, "portico_inflight_requests") == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "requests stayed in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_served_within_the_body_timeout_and_cut_past_it() {
    let pods = Pods::start("slowbody", 1).await;
    let p = route_to(&pods, |f| f.client_body_timeout = Some("600ms".into())).await;
    let mut s = connect(&p).await;
    s.write_all(
        format!("POST /slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nhello")
            .as_bytes(),
    )
    .await
    .expect("write");
    tokio::time::sleep(Duration::from_millis(250)).await;
    s.write_all(b"world").await.expect("write");
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, false).await.expect("answer");
    assert_eq!(r.status, 200);
    let echo: portico::echo::Echo = serde_json::from_slice(&r.body).expect("echo");
    assert_eq!(echo.body_bytes, 10);

    let mut s = connect(&p).await;
    s.write_all(
        format!("POST /slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nhello")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "a stalled body held the connection");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_date_and_portico_server_unless_told_to_pass_the_backends() {
    let (pods, _) = replying(
        "identity",
        b"HTTP/1.1 200 OK\r\nServer: backend/1.0\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let p = route_to(&pods, |_| {}).await;
    let r = common::client()
        .get(p.url("/"))
        .header("host", HOST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["server"], "portico");
    let date = r.headers()["date"].to_str().expect("date").to_string();
    assert!(!date.contains("1994") && date.ends_with("GMT"), "{date}");
    let own = common::client()
        .get(p.url("/"))
        .header("host", "nobody.example")
        .send()
        .await
        .expect("get");
    assert_eq!(own.status(), 404);
    assert_eq!(own.headers()["server"], "portico");
    assert!(own.headers().contains_key("date"));
    assert!(own.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    assert!(own.headers().contains_key("content-length"));
    drop(p);

    let p = route_to(&pods, |f| f.pass_server_header = Some(true)).await;
    let r = common::client()
        .get(p.url("/"))
        .header("host", HOST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["server"], "backend/1.0");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_a_100_before_the_body() {
    let pods = Pods::start("expect", 1).await;
    let p = route_to(&pods, |_| {}).await;
    let mut s = connect(&p).await;
    s.write_all(
        format!(
            "PUT /e HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut pending = Vec::new();
    let interim = read_response(&mut s, &mut pending, false).await.expect("100");
    assert_eq!(interim.status, 100);
    s.write_all(b"hello").await.expect("write");
    let r = read_response(&mut s, &mut pending, false).await.expect("answer");
    assert_eq!(r.status, 200);
    let echo: portico::echo::Echo = serde_json::from_slice(&r.body).expect("echo");
    assert_eq!(echo.body_bytes, 5);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_10_clients_get_complete_answers() {
    let pods = Pods::start("ten", 1).await;
    let p = route_to(&pods, |_| {}).await;
    let mut s = connect(&p).await;
    s.write_all(format!("GET /ten HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "an HTTP/1.0 connection without keep-alive stayed open");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("\"path\":\"/ten\""), "{text}");
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_is_read_whole_before_the_upstream_is_connected() {
    // nginx's request buffering: a client that sends its body slowly holds no upstream
    // connection meanwhile (Portico's engine; Pingora's streams the body as it arrives).
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let pods = Pods::scripted("buffered", move |mut s, _| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            while let Some(req) = backend_request(&mut s).await {
                let body = String::from_utf8_lossy(&req).contains("\r\n\r\nhello world");
                let reply: &[u8] = if body {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nnobody"
                };
                if s.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let p = route_to(&pods, |_| {}).await;
    let mut s = connect(&p).await;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 11\r\n\r\nhello").as_bytes(),
    )
    .await
    .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        conns.load(Ordering::SeqCst),
        0,
        "connected before the body was complete"
    );
    s.write_all(b" world").await.expect("write");
    let r = read_response(&mut s, &mut Vec::new(), false)
        .await
        .expect("a response");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"body"[..]));
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}
