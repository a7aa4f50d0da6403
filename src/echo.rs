//! A small echo backend: answers with who served the request and what it received.
//!
//! The demo runs one per example pod, and the end-to-end tests use it as the real origin. Paths:
//! - `/status/NNN`: answers with that status;
//! - `/delay/MS`: answers after MS milliseconds;
//! - `/bytes/N`: streams N bytes back;
//! - anything else: a JSON description of the request, including the request body's length and
//!   checksum (the body is streamed through, never buffered whole);
//! - an `Upgrade` request is answered with 101 and then echoes raw bytes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Who this backend claims to be.
#[derive(Clone, Debug)]
pub struct Identity {
    pub service: String,
    pub pod: String,
}

/// What the echo backend answers for an ordinary request.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Echo {
    pub service: String,
    pub pod: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body_bytes: u64,
    /// FNV-1a of the body, to check that a streamed body arrived unchanged.
    pub body_fnv: u64,
}

/// FNV-1a, continued over chunks.
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r
}

async fn handle(
    id: Arc<Identity>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = full(101, Bytes::new());
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            "upgrade"
                .parse()
                .unwrap_or(hyper::header::HeaderValue::from_static("upgrade")),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        return Ok(r);
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let ms: u64 = ms.parse().unwrap_or(0).min(60_000);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        return Ok(full(200, format!("delayed {ms} ms by {}\n", id.pod)));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(full(
            code.parse().unwrap_or(400),
            format!("status {code}\n"),
        ));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let stream = futures_util::stream::iter((0..total.div_ceil(chunk.len())).map(move |i| {
            let len = (total - i * chunk.len()).min(chunk.len());
            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len)))
        }));
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    // Several fields of one name are one value joined by `,`, as the Gateway API suite's
    // echo server shows them.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let mut echo = Echo {
        service: id.service.clone(),
        pod: id.pod.clone(),
        method: req.method().to_string(),
        path,
        query: req.uri().query().map(str::to_string),
        version: format!("{:?}", req.version()),
        headers,
        body_bytes: 0,
        body_fnv: FNV_OFFSET,
    };
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    echo.body_bytes += d.len() as u64;
                    echo.body_fnv = fnv1a(echo.body_fnv, d);
                }
            }
            Err(_) => return Ok(full(400, "bad body\n")),
        }
    }
    let json = serde_json::to_vec(&echo).unwrap_or_default();
    let mut r = full(200, json);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Serves the echo backend on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, identity: Identity) {
    let id = Arc::new(identity);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(id.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}
