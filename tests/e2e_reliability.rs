//! Reliability end to end: failover to other endpoints, passive ejection, timeouts, limits, and
//! hostile requests written on raw sockets.

mod common;

use std::time::{Duration, Instant};

use common::{ingress, Pods, Portico, INGRESS_CLASS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn route_to(
    pods: &Pods,
    annotations: &str,
    tweak: impl FnOnce(&mut portico::config::Flags),
) -> Portico {
    let rules = ingress(
        "default",
        "rel",
        "2026-01-01T00:00:00Z",
        &[("rel.example", "/", "Prefix", &pods.service, 80)],
    )
    .replace(
        "  creationTimestamp:",
        &format!("{annotations}  creationTimestamp:"),
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

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_run_fails_no_idempotent_request() {
    let mut pods = Pods::start("fo", 3).await;
    let p = route_to(&pods, "", |_| {}).await;
    let client = common::client();
    let (mut ok, mut failed) = (0usize, Vec::new());
    // Sequential load, with one pod killed a third of the way through.
    for i in 0..300 {
        if i == 100 {
            pods.kill(1);
        }
        match client
            .get(p.url("/"))
            .header("host", "rel.example")
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failed.push(r.status().to_string()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    // Concurrent load with the pod still dead (its ejection expires and it is tried again):
    // 8 workers, idempotent methods.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, url) = (client.clone(), p.url("/"));
        tasks.push(tokio::spawn(async move {
            let method = [
                reqwest::Method::GET,
                reqwest::Method::HEAD,
                reqwest::Method::PUT,
                reqwest::Method::DELETE,
            ][w % 4]
                .clone();
            let (mut ok, mut failed) = (0usize, Vec::new());
            for _ in 0..50 {
                match c
                    .request(method.clone(), &url)
                    .header("host", "rel.example")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    let mut concurrent_ok = 0;
    for t in tasks {
        let (o, f) = t.await.expect("join");
        concurrent_ok += o;
        failed.extend(f);
    }
    eprintln!(
        "failover: sequential {ok}/300 ok, concurrent {concurrent_ok}/400 ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ok + concurrent_ok, 700);
    // Portico's own count agrees: every request was answered 2xx, none 5xx. A request is
    // counted once its response is written, so the last one may be counted just after the
    // client has read it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = p.metrics().await;
        let answered_2xx: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("portico_requests_total{") && l.contains("status_class=\"2xx\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if answered_2xx == 700.0 {
            break m;
        }
        assert!(answered_2xx < 700.0 && std::time::Instant::now() < deadline, "{answered_2xx}: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!m.contains("status_class=\"5xx\""), "{m}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_request_that_reached_the_backend_is_not_sent_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    // A pod that reads the whole request and closes without answering.
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let pods = Pods::scripted("mute", move |mut s, _| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !buf.starts_with(b"POST") || buf.len() > end + 4 {
                        break;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let p = route_to(&pods, "", |_| {}).await;
    let client = common::client();
    let post = client.post(p.url("/")).header("host", "rel.example").body("x");
    assert_eq!(post.send().await.expect("post").status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the POST was sent once");
    let get = client.get(p.url("/")).header("host", "rel.example");
    assert_eq!(get.send().await.expect("get").status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "the GET was sent twice (--upstream-attempts 2)");
    drop(p);
    // Connection refused: nothing was sent, so a POST goes on to the live pod, as in nginx.
    let mut pods = Pods::start("post", 2).await;
    let p = route_to(&pods, "", |_| {}).await;
    pods.kill(0);
    for _ in 0..4 {
        let r = client
            .post(p.url("/"))
            .header("host", "rel.example")
            .body("x")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 200);
    }
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts_and_body_limits() {
    let pods = Pods::start("lim", 1).await;
    let p = route_to(
        &pods,
        "  annotations: { portico.dev/proxy-read-timeout: \"300ms\", portico.dev/proxy-body-size: 10k }\n",
        |f| f.max_header_size = Some("16k".into()),
    )
    .await;
    let client = common::client();
    let started = Instant::now();
    let r = client
        .get(p.url("/delay/2000"))
        .header("host", "rel.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        client
            .get(p.url("/delay/10"))
            .header("host", "rel.example")
            .send()
            .await
            .expect("get")
            .status(),
        200
    );

    // Declared too large: refused before anything is sent upstream.
    let r = client
        .post(p.url("/"))
        .header("host", "rel.example")
        .body(vec![0u8; 20_000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    // Streamed (chunked) too large: cut off when the limit is crossed.
    let chunks = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1024])));
    let r = client
        .post(p.url("/"))
        .header("host", "rel.example")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|r| r.status() == 413),
        "{r:?}"
    );
    let r = client
        .post(p.url("/"))
        .header("host", "rel.example")
        .body(vec![0u8; 9_000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // Headers over 16 KiB: 431.
    let r = client
        .get(p.url("/"))
        .header("host", "rel.example")
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 431);
}
}

/// Sends raw bytes, optionally half-closes, and returns the status line of the answer ("" if the
/// connection closed without one).
async fn raw(p: &Portico, bytes: &[u8], half_close: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("write");
    if half_close {
        s.shutdown().await.expect("shutdown");
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or("").to_string()
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_4xx() {
    let pods = Pods::start("hostile", 1).await;
    let p = route_to(&pods, "", |_| {}).await;
    let h = "Host: rel.example\r\n";
    let long_uri = format!("GET /{} HTTP/1.1\r\n{h}\r\n", "a".repeat(20_000));
    let cases: Vec<(&str, String, bool, &str)> = vec![
        (
            "duplicate Content-Length",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            false,
            "400",
        ),
        (
            "differing Content-Length",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            false,
            "400",
        ),
        (
            "invalid Host",
            "GET / HTTP/1.1\r\nHost: rel example\r\n\r\n".to_string(),
            false,
            "400",
        ),
        (
            "two Hosts",
            format!("GET / HTTP/1.1\r\n{h}Host: other.example\r\n\r\n"),
            false,
            "400",
        ),
        (
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\n\r\n".to_string(),
            false,
            "400",
        ),
        ("oversized URI", long_uri, false, "414"),
        (
            "obs-fold header",
            format!("GET / HTTP/1.1\r\n{h}X-Fold: a\r\n b\r\n\r\n"),
            false,
            "400",
        ),
        ("HTTP/0.9", "GET /\r\n".to_string(), false, "400"),
        (
            "truncated chunked body",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n10\r\nabc"),
            true,
            "400",
        ),
        (
            "invalid chunk size",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
            ),
            false,
            "400",
        ),
        (
            "unknown Transfer-Encoding",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"),
            false,
            "400",
        ),
        (
            "Transfer-Encoding list ending in chunked",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
            false,
            "400",
        ),
        (
            "Content-Length not all digits",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
            false,
            "400",
        ),
        (
            "Content-Length list",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5, 5\r\n\r\nhello"),
            false,
            "400",
        ),
        (
            "whitespace before a colon",
            format!("GET / HTTP/1.1\r\n{h}X-Space : a\r\n\r\n"),
            false,
            "400",
        ),
        (
            "NUL in a field value",
            format!("GET / HTTP/1.1\r\n{h}X-Nul: a\0b\r\n\r\n"),
            false,
            "400",
        ),
        (
            "bare CR in a field value",
            format!("GET / HTTP/1.1\r\n{h}X-Cr: a\rb\r\n\r\n"),
            false,
            "400",
        ),
        (
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: rel.example\n\n".to_string(),
            false,
            "400",
        ),
        (
            "Connection naming Content-Length",
            format!("POST / HTTP/1.1\r\n{h}Connection: content-length\r\nContent-Length: 5\r\n\r\nhello"),
            false,
            "400",
        ),
        (
            "obfuscated Expect",
            format!("POST / HTTP/1.1\r\n{h}Expect: y 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            false,
            "417",
        ),
        (
            "chunk size with 0x",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"),
            false,
            "400",
        ),
        (
            "too many header fields",
            format!("GET / HTTP/1.1\r\n{h}{}\r\n", "X-A: b\r\n".repeat(300)),
            false,
            "4",
        ),
    ];
    let mut table = Vec::new();
    for (name, bytes, half_close, want) in &cases {
        let line = raw(&p, bytes.as_bytes(), *half_close).await;
        table.push(format!("{name:40} -> {line}"));
        assert!(
            line.starts_with(&format!("HTTP/1.1 {want}")),
            "{name}: got {line:?}"
        );
    }
    // A bare LF inside a chunk extension (Kestrel's CVE-2025-55315): httparse's chunk-size parser
    // accepts it, so only Portico's engine, whose chunked decoder is its own, refuses it.
    let ext_lf = format!(
        "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n2;a\nb\r\nab\r\n0\r\n\r\n"
    );
    let line = raw(&p, ext_lf.as_bytes(), false).await;
    table.push(format!("{:40} -> {line}", "bare LF in a chunk extension"));
    if common::engine() == portico::request::policy::Http1Engine::Portico {
        assert!(line.starts_with("HTTP/1.1 400"), "bare LF in extension: {line:?}");
    }
    // Content-Length with Transfer-Encoding: refused, and the request smuggled behind the body is
    // never answered (the connection closes after the 400).
    let smuggle = format!(
        "POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n{h}\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    s.write_all(smuggle.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    table.push(format!(
        "{:40} -> {}",
        "Content-Length with Transfer-Encoding",
        out.lines().next().unwrap_or("")
    ));
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let answers = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count();
    assert_eq!(answers, 1, "a second request was answered: {out}");
    eprintln!("{}", table.join("\n"));
    // None of it disturbed the proxy.
    assert_eq!(p.echo("rel.example", "/").await.service, "hostile");
}
}

/// Reads until the peer closes or `within` passes; returns what arrived and whether it closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_must_arrive_in_time_however_it_trickles() {
    let pods = Pods::start("slow", 1).await;
    let p = route_to(&pods, "", |f| {
        f.client_header_timeout = Some("1s".into());
    })
    .await;
    let before = common::metric_value(&p.metrics().await, "portico_client_header_timeouts_total");

    // Slowloris: a byte every 200 ms keeps every single read well inside any per-read timeout,
    // but the header as a whole is not done after 1 s, so the connection is closed.
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: rel.example\r\n")
        .await
        .expect("write");
    let mut closed_after = None;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if s.write_all(b"X").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("a trickled header held the connection for 5 s");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, want about 1 s"
    );
    let after = common::metric_value(&p.metrics().await, "portico_client_header_timeouts_total");
    assert_eq!(after - before, 1.0, "one header timeout counted");

    // A slow header that completes in time (three parts 150 ms apart) is served; an idle
    // keep-alive connection longer than the header timeout is not cut (only the header itself is
    // timed), and serves again.
    let mut s = tokio::net::TcpStream::connect(p.http)
        .await
        .expect("connect");
    for part in ["GET / HTTP/1.1\r\n", "Host: rel.example\r\n", "\r\n"] {
        s.write_all(part.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let first = read_response_head(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: rel.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write after idle");
    let (second, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the connection closes after Connection: close");
    assert!(second.contains("HTTP/1.1 200"), "{second}");
    assert_eq!(p.echo("rel.example", "/").await.service, "slow");
}
}

/// Reads one response (header and a Content-Length body) from a keep-alive connection.
async fn read_response_head(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.to_string();
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod that serves traffic but fails its health check: 503 on /healthz, 200 "sick" otherwise.
async fn sick_pod(ip: std::net::IpAddr, port: u16) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind sick pod");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let answer = if head.starts_with("GET /healthz") {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_string()
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nsick".to_string()
                    };
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_pod_out() {
    let pods = Pods::start("checked", 1).await;
    // A second "pod" of the same Service on the next address, same port, failing its check.
    let std::net::IpAddr::V4(v4) = pods.ips[0] else {
        panic!("v4")
    };
    let sick_ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) + 1));
    let sick = sick_pod(sick_ip, pods.port).await;
    let svc = pods.manifests("default", "", 80).replace(
        "endpoints:\n",
        &format!("endpoints:\n  - addresses: [\"{sick_ip}\"]\n"),
    );
    let rules = ingress("default", "hc", "2026-01-01T00:00:00Z", &[("hc.example", "/", "Prefix", "checked", 80)])
        .replace(
            "  creationTimestamp:",
            "  annotations: { portico.dev/health-check-path: /healthz, portico.dev/health-check-interval: 200ms }\n  creationTimestamp:",
        );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("rules.yaml", &rules),
        ("svc.yaml", &svc),
    ])
    .await;
    assert!(p.metrics().await.contains(
        "portico_pool_endpoints{namespace=\"default\",port=\"80\",service=\"checked\"} 2"
    ));
    // Within a check interval or two, the sick pod is out of rotation: then 20 requests in a
    // row all reach the healthy pod (round-robin alone would send every other one to the sick).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut served_by_sick = 0;
        for _ in 0..20 {
            let (status, body) = p.get("hc.example", "/").await;
            assert_eq!(status, 200);
            if !body.contains("\"checked\"") {
                served_by_sick += 1;
            }
        }
        if served_by_sick == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sick pod still serves ({served_by_sick}/20)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sick.abort();
}
}
