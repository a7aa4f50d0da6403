//! Differential test of the two HTTP/1 engines: the same corpus of valid requests through a
//! Portico on each engine, against one recording backend. The backend must see the same request
//! (bytes, header order and case), and the client must get the same response (bytes, apart from
//! `Date`).
//!
//! Normalised before comparing, because they differ by design and not by meaning:
//! - `X-Forwarded-Port`: each Portico listens on its own port;
//! - chunk boundaries of a chunked body: both engines decode and encode chunks again, each in the
//!   pieces its reads produced, so the decoded body is compared;
//! - repeated field names in a request: Pingora's engine keeps fields in an `http::HeaderMap`,
//!   which moves a repeated name next to its first occurrence; Portico's keeps the client's order.
//!   Requests are compared with repeated names grouped the same way.
//!
//! One known divergence is asserted rather than compared: to an HTTP/1.0 client, Pingora's engine
//! sends a chunked body with `Transfer-Encoding: chunked`, which HTTP/1.0 does not have (RFC 9112
//! 6.1); Portico's sends the decoded body and closes the connection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ingress, Pods, Portico, INGRESS_CLASS};
use portico::request::policy::Http1Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "diff.example";

/// Reads one whole request (head, and a Content-Length or chunked body) from a backend
/// connection; returns its bytes, or `None` when the connection ends first.
async fn read_request(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let cl = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:"));
            let body_start = end + 4;
            let total = if chunked {
                chunked_len(&pending[body_start..]).map(|n| body_start + n)
            } else {
                Some(body_start + cl.unwrap_or(0))
            };
            if let Some(total) = total.filter(|t| pending.len() >= *t) {
                return Some(pending.drain(..total).collect());
            }
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The length of a complete chunked body at the start of `b` (trailers included), if complete.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let eol = b.get(i..)?.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[i..i + eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        i += eol + 2;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                let eol = b.get(i..)?.windows(2).position(|w| w == b"\r\n")?;
                i += eol + 2;
                if eol == 0 {
                    return Some(i);
                }
            }
        }
        i += size + 2;
        if i > b.len() {
            return None;
        }
    }
}

/// Decodes a chunked body (for comparison); trailers are dropped.
fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(eol) = b
        .get(i..)
        .and_then(|r| r.windows(2).position(|w| w == b"\r\n"))
    {
        let line = String::from_utf8_lossy(&b[i..i + eol]).to_string();
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        i += eol + 2;
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i..(i + size).min(b.len())]);
        i += size + 2;
    }
    out
}

/// The backend's answer to a request, chosen by its path.
fn answer(request: &[u8]) -> (Vec<u8>, bool) {
    let line =
        String::from_utf8_lossy(&request[..request.iter().position(|&b| b == b'\r').unwrap_or(0)])
            .to_string();
    let head = line.starts_with("HEAD ");
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    // The decoded length: both engines re-chunk a chunked body in their own pieces.
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |e| e + 4);
    let chunked = String::from_utf8_lossy(&request[..end])
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body_len = end
        + if chunked {
            dechunk(&request[end..]).len()
        } else {
            request.len() - end
        };
    let r: &[u8] = match path.split('?').next().unwrap_or("") {
        "/r/chunked" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "/r/204" => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        "/r/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nCache-Control: max-age=60\r\n\r\n",
        "/r/close" => return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the connection closes".to_vec(), true),
        "/r/103" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/r/headers" => b"HTTP/1.1 200 OK\r\nX-Mixed-Case: A\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty: \r\nX-Tab: a\tb\r\nContent-Length: 0\r\n\r\n",
        "/r/big" => {
            let body = vec![b'z'; 3 << 20];
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            if !head {
                r.extend_from_slice(&body);
            }
            return (r, false);
        }
        _ => {
            let body = format!("seen {body_len} bytes\n");
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if !head {
                r.extend_from_slice(body.as_bytes());
            }
            return (r, false);
        }
    };
    (r.to_vec(), false)
}

/// The recording backend: every request it receives, in order.
async fn backend() -> (Pods, Arc<Mutex<Vec<Vec<u8>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let pods = Pods::scripted("recorder", move |mut s, _| {
        let seen = s2.clone();
        async move {
            let mut pending = Vec::new();
            while let Some(req) = read_request(&mut s, &mut pending).await {
                let (resp, close) = answer(&req);
                seen.lock().expect("lock").push(req);
                if s.write_all(&resp).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    (pods, seen)
}

async fn start(pods: &Pods, engine: Http1Engine) -> Portico {
    let rules = ingress(
        "default",
        "diff",
        "2026-01-01T00:00:00Z",
        &[(HOST, "/", "Prefix", &pods.service, 80)],
    );
    Portico::start_with(
        &[
            ("class.yaml", INGRESS_CLASS),
            ("rules.yaml", &rules),
            ("svc.yaml", &pods.manifests("default", "", 80)),
        ],
        |f| {
            f.http1_engine = Some(engine);
            f.max_body_size = Some("0".into());
        },
    )
    .await
}

/// One corpus entry: requests written on one connection, one after another.
struct Case {
    name: String,
    requests: Vec<Vec<u8>>,
}

fn req(
    method: &str,
    target: &str,
    version: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {target} {version}\r\nHost: {HOST}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in pieces {
        b.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        b.extend_from_slice(p);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\n\r\n");
    b
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut one = |name: &str, r: Vec<u8>| {
        cases.push(Case {
            name: name.to_string(),
            requests: vec![r],
        })
    };
    for m in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"] {
        one(
            &format!("{m} without body"),
            req(m, "/m", "HTTP/1.1", &[], b""),
        );
    }
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        for size in [0usize, 5, 65_536, 3 << 20] {
            let body = vec![b'a' + (size % 26) as u8; size];
            let len = size.to_string();
            one(
                &format!("{m} Content-Length {size}"),
                req(
                    m,
                    "/upload",
                    "HTTP/1.1",
                    &[
                        ("Content-Length", &len),
                        ("Content-Type", "application/octet-stream"),
                    ],
                    &body,
                ),
            );
        }
        let big = vec![b'q'; 2 << 20];
        for (label, body) in [
            ("one chunk", chunked(&[b"hello"])),
            (
                "several chunks",
                chunked(&[b"a", b"bc", &[b'x'; 5000], b"d"]),
            ),
            ("2 MiB", chunked(&[&big[..1 << 20], &big[1 << 20..]])),
        ] {
            one(
                &format!("{m} chunked, {label}"),
                req(
                    m,
                    "/chunked-up",
                    "HTTP/1.1",
                    &[("Transfer-Encoding", "chunked")],
                    &body,
                ),
            );
        }
    }
    for path in [
        "/r/chunked",
        "/r/204",
        "/r/304",
        "/r/close",
        "/r/103",
        "/r/headers",
        "/r/big",
        "/r/len",
    ] {
        one(
            &format!("GET {path}"),
            req("GET", path, "HTTP/1.1", &[], b""),
        );
        one(
            &format!("HEAD {path}"),
            req("HEAD", path, "HTTP/1.1", &[], b""),
        );
    }
    one("HTTP/1.0", req("GET", "/ten", "HTTP/1.0", &[], b""));
    one(
        "HTTP/1.0 chunked response",
        req("GET", "/r/chunked", "HTTP/1.0", &[], b""),
    );
    one(
        "HTTP/1.0 POST",
        req(
            "POST",
            "/ten",
            "HTTP/1.0",
            &[("Content-Length", "3")],
            b"abc",
        ),
    );
    one(
        "Connection: close",
        req("GET", "/c", "HTTP/1.1", &[("Connection", "close")], b""),
    );
    one(
        "query string",
        req("GET", "/q?a=1&b=%20x&c=%E2%82%AC&d", "HTTP/1.1", &[], b""),
    );
    one(
        "odd but legal headers",
        req(
            "GET",
            "/h",
            "HTTP/1.1",
            &[
                ("x-lower", "v"),
                ("X-UPPER", "V"),
                ("X-Mixed-Case", "tab\there"),
                ("X-Empty", ""),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
                ("X-Dup", "1"),
                ("X-Other", "between"),
                ("X-Dup", "2"),
                ("Accept", "*/*;q=0.8, text/html"),
                ("X-Quote", "\"quoted, with comma\""),
            ],
            b"",
        ),
    );
    let long = "v".repeat(7000);
    one(
        "a large header",
        req("GET", "/big-header", "HTTP/1.1", &[("X-Long", &long)], b""),
    );
    let many: Vec<(String, String)> = (0..60)
        .map(|i| (format!("X-H{i}"), format!("{i}")))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    one("60 headers", req("GET", "/many", "HTTP/1.1", &many, b""));
    cases.push(Case {
        name: "keep-alive sequence".into(),
        requests: vec![
            req("GET", "/k/1", "HTTP/1.1", &[], b""),
            req(
                "POST",
                "/k/2",
                "HTTP/1.1",
                &[("Content-Length", "4")],
                b"data",
            ),
            req("GET", "/r/chunked", "HTTP/1.1", &[], b""),
            req("GET", "/k/4", "HTTP/1.1", &[], b""),
        ],
    });
    cases
}

/// Reads one whole response from the client side; `head` for a HEAD request. Returns its bytes.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>, head: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body_start = end + 4;
            if (100..200).contains(&status) {
                return pending.drain(..body_start).collect();
            }
            let cl = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = text.lines().any(|l| l.starts_with("transfer-encoding:"));
            let total = if head || status == 204 || status == 304 {
                Some(body_start)
            } else if chunked {
                chunked_len(&pending[body_start..]).map(|n| body_start + n)
            } else {
                cl.map(|n| body_start + n)
            };
            if let Some(t) = total.filter(|t| pending.len() >= *t) {
                return pending.drain(..t).collect();
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
            _ => return std::mem::take(pending),
        }
    }
}

/// A message with the fields that differ by design normalised (see the module docs).
fn normalise(msg: &[u8]) -> String {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg.len(), |e| e + 4);
    let head = String::from_utf8_lossy(&msg[..end]);
    let chunked = head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked");
    let mut out = String::new();
    let mut lines: Vec<&str> = head.split("\r\n").collect();
    if !head.starts_with("HTTP/") {
        lines = grouped(&lines);
    }
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("date:") {
            continue;
        }
        if lower.starts_with("x-forwarded-port:") {
            out.push_str("X-Forwarded-Port: (port)\r\n");
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    let body = &msg[end..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    let summary = if body.len() > 200 {
        format!(
            "<{} bytes, fnv {:x}>",
            body.len(),
            portico::echo::fnv1a(portico::echo::FNV_OFFSET, &body)
        )
    } else {
        String::from_utf8_lossy(&body).to_string()
    };
    format!("{out}{summary}")
}

/// Field lines with each repeated name moved next to its first occurrence (the request line
/// first, the empty lines last).
fn grouped<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let name = |l: &str| l.split(':').next().unwrap_or("").to_ascii_lowercase();
    let fields: Vec<&str> = lines
        .iter()
        .skip(1)
        .copied()
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = vec![lines[0]];
    let mut done = std::collections::HashSet::new();
    for l in &fields {
        if done.insert(name(l)) {
            out.extend(fields.iter().filter(|m| name(m) == name(l)));
        }
    }
    out.extend(["", ""]);
    out
}

/// Sends a case's requests on one connection; returns the normalised responses and what the
/// backend saw.
async fn run(p: &Portico, case: &Case, seen: &Mutex<Vec<Vec<u8>>>) -> (Vec<String>, Vec<String>) {
    seen.lock().expect("lock").clear();
    let mut s = TcpStream::connect(p.http).await.expect("connect");
    let mut pending = Vec::new();
    let mut responses = Vec::new();
    for r in &case.requests {
        s.write_all(r).await.expect("write");
        let head = r.starts_with(b"HEAD ");
        let mut resp = read_response(&mut s, &mut pending, head).await;
        while resp.get(9) == Some(&b'1') {
            responses.push(normalise(&resp));
            resp = read_response(&mut s, &mut pending, head).await;
        }
        responses.push(normalise(&resp));
    }
    // The backend has everything once the responses are in.
    let backend = seen
        .lock()
        .expect("lock")
        .iter()
        .map(|r| normalise(r))
        .collect();
    (responses, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_forward_the_same_bytes() {
    let (pods, seen) = backend().await;
    let ours = start(&pods, Http1Engine::Portico).await;
    let theirs = start(&pods, Http1Engine::Pingora).await;
    let cases = corpus();
    let mut differences = Vec::new();
    for case in &cases {
        let (a_resp, a_seen) = run(&ours, case, &seen).await;
        let (b_resp, b_seen) = run(&theirs, case, &seen).await;
        if a_seen != b_seen {
            differences.push(format!(
                "{}: the backend saw\n--- portico ---\n{}\n--- pingora ---\n{}",
                case.name,
                a_seen.join("\n"),
                b_seen.join("\n")
            ));
        }
        if case.name == "HTTP/1.0 chunked response" {
            let ours = a_resp.join("\n").to_ascii_lowercase();
            assert!(!ours.contains("transfer-encoding"), "{ours}");
            assert!(
                ours.contains("connection: close") && ours.ends_with("hello, world"),
                "{ours}"
            );
            continue;
        }
        if a_resp != b_resp {
            differences.push(format!(
                "{}: the client got\n--- portico ---\n{}\n--- pingora ---\n{}",
                case.name,
                a_resp.join("\n"),
                b_resp.join("\n")
            ));
        }
    }
    let requests: usize = cases.iter().map(|c| c.requests.len()).sum();
    let bytes: usize = cases
        .iter()
        .flat_map(|c| c.requests.iter().map(Vec::len))
        .sum();
    eprintln!(
        "differential corpus: {} cases, {requests} client writes, {bytes} bytes",
        cases.len()
    );
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n\n")
    );
}
