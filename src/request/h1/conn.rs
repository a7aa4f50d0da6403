//! The connection loop: read a request head, ask the policy, exchange with an upstream, repeat.
//!
//! Memory follows the work, not the connection. An idle connection holds no buffer: its next
//! request is read through its worker thread's scratch buffer and copied into one sized for it (at
//! least 1 KiB), growing only as a head needs (nginx's `client_header_buffer_size` model). Bytes
//! read past a request stay buffered for the next one, so pipelined requests are answered in
//! order (RFC 9112 9.3.2).
//!
//! Requests and responses are re-serialised from their parsed heads, with CRLF line ends and the
//! hop-by-hop fields removed, so that no byte the checks did not see reaches the other side.
//! Bodies stream through bounded buffers; chunked bodies are decoded and encoded again.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use pingora_core::apps::ServerApp;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

use super::body::{chunk_line, ChunkedDecoder, LAST_CHUNK};
use super::encode;
use super::parse::{self, Framing, Kind, Parsed, RequestHead, ResponseHead};
use super::pool;
use crate::dataplane::DataPlane;
use crate::model::BackendProtocol;
use crate::request::edge::HeaderDeadline;
use crate::request::guard::Refusal;
use crate::request::pingora::PingoraApp;
use crate::request::policy::{
    Answer, Attempts, Cidr, ClientAddr, Decision, Edits, Endpoint, Fault, LogEntry, Policy,
    RequestView, Routed,
};

/// The first buffer for a request head (nginx: `client_header_buffer_size 1k`).
const HEAD_BUFFER: usize = 1024;

/// A worker thread's buffer for the first read of a request (see [`read_fresh`]): most heads fit.
const SCRATCH_BUFFER: usize = 4 * 1024;
/// The first buffer for a response head.
const RESPONSE_BUFFER: usize = 4 * 1024;
/// The buffer that bodies stream through.
const BODY_BUFFER: usize = 16 * 1024;
/// Request bodies up to this size are read whole before the upstream is connected.
const REQUEST_BUFFER: usize = 64 * 1024;

/// Portico's HTTP/1 engine; one instance serves every HTTP/1 connection.
pub struct Engine {
    pub policy: Arc<Policy>,
    /// Makes upstream connections (Pingora's connector); idle ones wait in [`pool`].
    pub connector: TransportConnector,
    /// Most idle upstream connections per worker thread.
    pub pool_size: usize,
    /// Pingora's HTTP proxy, for what this engine does not take.
    pub fallback: Arc<pingora_proxy::HttpProxy<PingoraApp>>,
}

/// What is known of a client connection.
struct Conn {
    tls: bool,
    client: Option<IpAddr>,
    /// The address the connection arrived on (a Gateway's entry point).
    local: Option<std::net::SocketAddr>,
    /// The forwarding fields' view of the client, computed once.
    addr: ClientAddr,
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    Close,
    /// Hand the connection to Pingora's proxy, with the bytes read so far.
    Fallback(Bytes),
}

/// What became of one exchange, for the metrics and the access log.
#[derive(Default)]
struct Outcome {
    status: u16,
    sent: usize,
    read: usize,
    route: Option<usize>,
    upstream: Option<std::net::SocketAddr>,
    error: &'static str,
    /// An external auth service's `Set-Cookie` fields, for the client's response.
    cookies: Vec<HeaderValue>,
}

/// How a failed upstream attempt ends.
enum Failure {
    /// The upstream failed before answering: maybe try another endpoint, else this status.
    /// `sent`: some of the request reached it.
    Upstream {
        status: u16,
        stale: bool,
        fault: Fault,
        sent: bool,
    },
    /// The upstream answered with a status the route retries on, and another attempt is
    /// allowed: the response was dropped.
    Retry,
    /// The upstream answered with a status the route replaces by an error page; nothing was
    /// sent to the client.
    ErrorPage(u16),
    /// The client failed (closed, too slow, bad body): answer this status if it can take one.
    Client { status: u16, reason: &'static str },
    /// A response was partly sent: the connection can only be closed.
    Broken,
    /// The endpoint was removed by a snapshot published while the request connected: nothing
    /// was sent, so it picks again, whatever the method.
    Removed,
}

impl Engine {
    /// Serves one client connection until it closes; returns nothing (HTTP/1 connections are
    /// never handed back to Pingora's accept loop).
    pub async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        self.serve_with(stream, BytesMut::new(), shutdown).await
    }

    /// Serves a connection whose first bytes were already read (after a PROXY header).
    pub async fn serve_with(
        &self,
        mut stream: Stream,
        mut buf: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let client = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let local_port = local.map(|a| a.port());
        let conn = Conn {
            tls: stream.get_ssl_digest().is_some(),
            client,
            local,
            addr: self.policy.client_addr(client, local_port),
        };
        let mut shutdown = shutdown.clone();
        let mut timers = Timers::new();
        // When the last exchange ended: the keep-alive wait is timed from there.
        let mut ended = None;
        loop {
            let (head, raw) = match self
                .read_head(&mut stream, &mut buf, &mut timers, &mut shutdown, ended)
                .await
            {
                Ok(Some(h)) => h,
                Ok(None) => return None,
                Err(refusal) => {
                    tracing::debug!(client = ?conn.client, status = refusal.status, reason = refusal.reason, "request refused");
                    let answer = Answer {
                        close: true,
                        ..Answer::error(refusal.status, refusal.reason)
                    };
                    self.refused(&mut stream, &answer, &conn).await;
                    return None;
                }
            };
            let closing = *shutdown.borrow();
            // Boxed: the exchange's state (upstream stream, buffers, timers) is allocated for the
            // request and freed after it, so that an idle connection's task stays small.
            let exchange = Box::pin(self.exchange(
                &mut stream,
                &mut buf,
                head,
                raw,
                &conn,
                &mut timers,
                closing,
                &mut ended,
            ));
            match exchange.await {
                Next::KeepAlive if !closing => {}
                Next::Fallback(prefix) => {
                    let limits = &self.policy.limits;
                    let stream = HeaderDeadline::with_prefix(
                        stream,
                        prefix,
                        limits.client_header_timeout,
                        self.policy.shared.metrics.client_header_timeouts.clone(),
                    );
                    return self.fallback.process_new(Box::new(stream), &shutdown).await;
                }
                _ => {
                    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
                    return None;
                }
            }
        }
    }

    /// Reads the next request head. `None` when the connection ends first: closed, idle past the
    /// keep-alive timeout, header past its deadline, or the server shutting down while idle.
    /// `idle_from` is when the previous exchange ended (the keep-alive wait starts there).
    async fn read_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        timers: &mut Timers,
        shutdown: &mut ShutdownWatch,
        idle_from: Option<Instant>,
    ) -> Result<Option<(RequestHead, Bytes)>, Refusal> {
        let limits = &self.policy.limits;
        let mut deadline = (!buf.is_empty()).then(|| Instant::now() + limits.client_header_timeout);
        loop {
            if !buf.is_empty() {
                match parse::parse_request(buf, &limits.header)? {
                    Parsed::Complete(head) => {
                        let raw = buf.split_to(head.len).freeze();
                        if buf.is_empty() {
                            // Nothing pipelined: hold no buffer while the request is served.
                            *buf = BytesMut::new();
                        }
                        return Ok(Some((head, raw)));
                    }
                    // The header timeout runs from the first bytes of the head: a head that
                    // arrives whole costs no clock read.
                    Parsed::Partial if deadline.is_none() => {
                        deadline = Some(Instant::now() + limits.client_header_timeout);
                    }
                    Parsed::Partial => {}
                }
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Ok(self.header_expired()),
                },
                None => limits.keepalive_timeout,
            };
            if buf.is_empty() {
                // Idle (keep-alive): wait for the next request holding no buffer; `buf` is
                // allocated when its first bytes arrive.
                let read = tokio::select! {
                    biased;
                    _ = shutdown.changed() => return Ok(None),
                    r = until(timers.idle.as_mut(), idle_from, wait, read_fresh(stream, buf)) => r,
                };
                match read {
                    Some(Ok(0)) | Some(Err(_)) | None => return Ok(None),
                    Some(Ok(_)) => continue,
                }
            }
            if buf.len() == buf.capacity() {
                // Grow as a head needs, up to its limit (checked by the parser).
                buf.reserve(buf.len().min(limits.header.max_header_size));
            }
            // A head has begun: its deadline is set.
            let read = within(wait, stream.read_buf(buf)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
                Err(_) if deadline.is_some() => return Ok(self.header_expired()),
                Err(_) => return Ok(None),
            }
        }
    }

    /// The policy's view of a parsed request on `conn`.
    fn view<'a>(&'a self, head: &'a RequestHead, raw: &'a [u8], conn: &Conn) -> View<'a> {
        View {
            policy: &self.policy,
            head,
            raw,
            client: conn.client,
            local: conn.local,
        }
    }

    fn header_expired<T>(&self) -> Option<T> {
        self.policy.shared.metrics.client_header_timeouts.inc();
        None
    }

    /// Answers a request refused before it could be parsed, then the connection closes.
    async fn refused(&self, stream: &mut Stream, answer: &Answer, conn: &Conn) {
        let started = Instant::now();
        let mut out = Vec::with_capacity(256);
        encode::answer_head(answer, true, &self.policy.server_header, &mut out);
        out.extend_from_slice(&answer.body);
        let _ = within(self.policy.upstream.write_timeout, stream.write_all(&out)).await;
        let metrics = self.policy.metrics_for(None, None);
        metrics.observe(&http::Method::GET, answer.status, started.elapsed(), 0, 0);
        self.policy.log(&LogEntry {
            client: conn.client,
            method: "",
            host: "",
            path: "",
            status: answer.status,
            bytes: answer.body.len(),
            took: started.elapsed(),
            upstream: None,
            route: None,
            error: answer.reason_or(""),
        });
    }

    /// The head of one of the policy's own answers.
    /// The request head for the upstream, with the policy's forwarding fields.
    fn upstream_head(
        &self,
        head: &RequestHead,
        raw: &Bytes,
        conn: &Conn,
        edits: Option<&Edits>,
        out: &mut Vec<u8>,
    ) {
        let host = head
            .authority
            .or(head.host)
            .and_then(|s| {
                HeaderValue::from_maybe_shared(raw.slice(s.start as usize..s.end as usize)).ok()
            })
            .unwrap_or(HeaderValue::from_static(""));
        let prior = |name: &'static str| {
            head.fields
                .iter()
                .find(|f| {
                    f.kind == Kind::Forwarding
                        && f.name.get(raw).eq_ignore_ascii_case(name.as_bytes())
                })
                .and_then(|f| HeaderValue::from_bytes(f.value.get(raw)).ok())
        };
        let forwarded = self.policy.forwarded(&conn.addr, conn.tls, host, prior);
        encode::request_head_edited(head, raw, &forwarded, edits, out);
    }

    /// One request: decide, answer or proxy, record.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        head: RequestHead,
        raw: Bytes,
        conn: &Conn,
        timers: &mut Timers,
        closing: bool,
        ended: &mut Option<Instant>,
    ) -> Next {
        let method = head.method.get(&raw);
        // CONNECT tunnels belong to Pingora's proxy (which refuses them).
        if method == b"CONNECT" {
            return Next::Fallback(replay(&raw, buf));
        }
        let started = Instant::now();
        let plane = self.policy.shared.load();
        let host = std::str::from_utf8(head.host(&raw)).unwrap_or("");
        let origin = std::str::from_utf8(head.origin.get(&raw)).unwrap_or("/");
        let path = origin.get(..head.path.len()).unwrap_or(origin);
        let declared = match head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let view = self.view(&head, &raw, conn);
        let decision = self
            .policy
            .decide(&plane, host, path, origin, conn.tls, declared, &view);
        if let Decision::Proxy(r) = &decision {
            if r.protocol != BackendProtocol::Http {
                return Next::Fallback(replay(&raw, buf));
            }
        }
        let metrics = &self.policy.shared.metrics;
        metrics.inflight.inc();
        let mut outcome = Outcome::default();
        let next = match decision {
            Decision::Answer { route, answer } => {
                outcome.route = route;
                self.route_answer(
                    stream,
                    &head,
                    &raw,
                    conn,
                    &plane,
                    route,
                    answer,
                    closing,
                    &mut outcome,
                )
                .await
            }
            Decision::Proxy(routed) => {
                outcome.route = Some(routed.route);
                // Held until the request ends (limit-connections).
                let (permit, refused) = match routed.conns {
                    true => match self.policy.enter(&plane, &routed, &view) {
                        Ok(p) => (p, None),
                        Err(answer) => (None, Some(answer)),
                    },
                    false => (None, None),
                };
                let grant = if let Some(answer) = refused {
                    Err(answer)
                } else if routed.auth {
                    let client = view.client_ip(None);
                    // Boxed: the sub-request is a large future, needed only on auth routes;
                    // inline, every request's future would carry it.
                    Box::pin(
                        self.policy
                            .authorize(&plane, &routed, &view, conn.tls, host, origin, client),
                    )
                    .await
                } else {
                    Ok(Default::default())
                };
                match grant {
                    Err(answer) => {
                        self.route_answer(
                            stream,
                            &head,
                            &raw,
                            conn,
                            &plane,
                            Some(routed.route),
                            answer,
                            closing,
                            &mut outcome,
                        )
                        .await
                    }
                    Ok(grant) => {
                        let _permit = permit;
                        outcome.cookies = grant.cookies;
                        self.proxy(
                            stream,
                            buf,
                            &head,
                            &raw,
                            conn,
                            started,
                            timers,
                            &plane,
                            &routed,
                            closing,
                            grant.upstream,
                            &mut outcome,
                        )
                        .await
                    }
                }
            }
        };
        metrics.inflight.dec();
        let end = Instant::now();
        *ended = Some(end);
        let took = end - started;
        let m = http::Method::from_bytes(method).unwrap_or(http::Method::GET);
        self.policy
            .metrics_for(Some(&plane), outcome.route)
            .observe(&m, outcome.status, took, outcome.read, outcome.sent);
        if self.policy.logs(Some(&plane), outcome.route) {
            self.policy.log(&LogEntry {
                client: conn.client,
                method: m.as_str(),
                host,
                path,
                status: outcome.status,
                bytes: outcome.sent,
                took,
                upstream: outcome.upstream,
                route: Policy::route_ingress(Some(&plane), outcome.route),
                error: outcome.error,
            });
        }
        next
    }

    /// Sends one of the policy's answers. A request body that was not read closes the connection.
    /// Sends a route's answer, or the error page that replaces it (custom-http-errors).
    #[allow(clippy::too_many_arguments)]
    async fn route_answer(
        &self,
        stream: &mut Stream,
        head: &RequestHead,
        raw: &Bytes,
        conn: &Conn,
        plane: &DataPlane,
        route: Option<usize>,
        answer: Answer,
        closing: bool,
        outcome: &mut Outcome,
    ) -> Next {
        let answer = match route {
            Some(r) if self.policy.error_page_for(plane, route, answer.status) => {
                let view = self.view(head, raw, conn);
                let host = std::str::from_utf8(head.host(raw)).unwrap_or("");
                let origin = std::str::from_utf8(head.origin.get(raw)).unwrap_or("/");
                let page = self.policy.error_page(
                    plane,
                    r,
                    answer.status,
                    &view,
                    host,
                    origin,
                    view.client_ip(None),
                );
                // Boxed: a sub-request's future, needed only here.
                let page = Box::pin(page).await;
                Answer {
                    close: answer.close || page.close,
                    ..page
                }
            }
            _ => answer,
        };
        self.answer(stream, head, raw, &answer, closing, outcome)
            .await
    }

    async fn answer(
        &self,
        stream: &mut Stream,
        head: &RequestHead,
        raw: &[u8],
        answer: &Answer,
        closing: bool,
        outcome: &mut Outcome,
    ) -> Next {
        let close = answer.close || head.close || closing || head.framing != Framing::None;
        let mut out = Vec::with_capacity(256 + answer.body.len());
        encode::answer_head(answer, close, &self.policy.server_header, &mut out);
        if head.method.get(raw) != b"HEAD" {
            out.extend_from_slice(&answer.body);
            outcome.sent = answer.body.len();
        }
        outcome.status = answer.status;
        match within(self.policy.upstream.write_timeout, stream.write_all(&out)).await {
            Ok(Ok(())) if !close => Next::KeepAlive,
            _ => Next::Close,
        }
    }

    /// Proxies one request to the route's pool, with retries of idempotent requests.
    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        client: &mut Stream,
        buf: &mut BytesMut,
        head: &RequestHead,
        raw: &Bytes,
        conn: &Conn,
        started: Instant,
        timers: &mut Timers,
        plane: &DataPlane,
        routed: &Routed,
        closing: bool,
        auth_fields: Vec<(http::HeaderName, Option<HeaderValue>)>,
        outcome: &mut Outcome,
    ) -> Next {
        let method = head.method.get(raw);
        // RFC 9110 9.2.2, as the Pingora engine decides it.
        let may_resend = http::Method::from_bytes(method).is_ok_and(|m| m.is_idempotent());
        // A body that is already buffered whole is sent with the head, and again on a retry.
        let mut buffered = match head.framing {
            Framing::None => Some(0),
            Framing::Length(n) if n as usize <= buf.len() => Some(n as usize),
            _ => None,
        };
        // The first attempt begins with the request (one clock reading for both), unless the
        // client was waited for in between.
        let mut began_with_request = Some(started);
        if head.expect_continue && buffered.is_none() {
            began_with_request = None;
            // Like nginx: Portico asks for the body itself (Expect is not forwarded), since it
            // sends the body on as it arrives.
            let go_on = b"HTTP/1.1 100 Continue\r\n\r\n";
            if !matches!(
                within(self.policy.upstream.write_timeout, client.write_all(go_on)).await,
                Ok(Ok(()))
            ) {
                return Next::Close;
            }
        }
        // A small body is read whole before an upstream connection is taken (nginx's request
        // buffering, in memory only): a slow client then holds no upstream connection, and an
        // idempotent request can be retried with it.
        if let (None, Framing::Length(n)) = (buffered, head.framing) {
            if n <= REQUEST_BUFFER as u64 {
                began_with_request = None;
                let limit = self.policy.limits.client_body_timeout;
                match fill(client, buf, n as usize, limit).await {
                    Ok(()) => buffered = Some(n as usize),
                    Err(Failure::Client { status, reason }) => {
                        outcome.error = reason;
                        let answer = Answer {
                            close: true,
                            ..Answer::error(status, "")
                        };
                        return self.answer(client, head, raw, &answer, true, outcome).await;
                    }
                    Err(_) => return Next::Close,
                }
            }
        }
        let mut attempts = Attempts::default();
        let mut stale_retries = 0;
        let mut removed_retries = 0;
        let mut upstream_head = Vec::with_capacity(raw.len() + 256);
        let edits = routed.edits.then(|| {
            let origin = std::str::from_utf8(head.origin.get(raw)).unwrap_or("/");
            let (path, query) = match origin.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (origin, None),
            };
            let mut edits = self.policy.edits(plane, routed, path, query);
            edits.set.extend(auth_fields);
            edits
        });
        self.upstream_head(head, raw, conn, edits.as_ref(), &mut upstream_head);
        if routed.mirror {
            let view = self.view(head, raw, conn);
            let origin = std::str::from_utf8(head.origin.get(raw)).unwrap_or("/");
            self.policy.mirror(
                plane,
                routed,
                &view,
                std::str::from_utf8(head.host(raw)).unwrap_or(""),
                edits
                    .as_ref()
                    .and_then(|e| e.target.as_deref())
                    .unwrap_or(origin),
                edits.as_ref(),
                view.client_ip(None),
                buffered.map(|n| Bytes::copy_from_slice(&buf[..n])),
            );
        }
        loop {
            let Some(endpoint) = self.policy.pick(plane, routed, &attempts) else {
                let answer = Answer::error(503, "no usable endpoint for this backend\n");
                return self
                    .route_answer(
                        client,
                        head,
                        raw,
                        conn,
                        plane,
                        Some(routed.route),
                        answer,
                        closing,
                        outcome,
                    )
                    .await;
            };
            attempts.start(&endpoint);
            outcome.upstream = Some(endpoint.addr);
            let began = began_with_request.take().unwrap_or_else(Instant::now);
            let result = self
                .attempt(
                    began,
                    client,
                    buf,
                    head,
                    raw,
                    &upstream_head,
                    buffered,
                    &endpoint,
                    conn,
                    timers,
                    plane,
                    routed,
                    &mut attempts,
                    closing,
                    outcome,
                )
                .await;
            let failure = match result {
                Ok(next) => return next,
                Err(f) => f,
            };
            match failure {
                Failure::Upstream {
                    status,
                    stale,
                    fault,
                    sent,
                } => {
                    let retry = if stale && stale_retries == 0 && may_resend {
                        // A pooled connection the backend closed while idle: not its fault.
                        stale_retries += 1;
                        true
                    } else {
                        self.policy
                            .upstream_failed(&mut attempts, fault, sent, may_resend)
                    };
                    // A body is sent again only if it is still here; a streamed one is not,
                    // unless nothing of it was read yet (the connection failed).
                    if retry && (buffered.is_some() || !sent) {
                        continue;
                    }
                    outcome.error = if status == 504 {
                        "upstream timed out"
                    } else {
                        "upstream failed"
                    };
                    let answer = Answer {
                        close: true,
                        ..Answer::error(status, "")
                    };
                    return self
                        .route_answer(
                            client,
                            head,
                            raw,
                            conn,
                            plane,
                            Some(routed.route),
                            answer,
                            true,
                            outcome,
                        )
                        .await;
                }
                Failure::ErrorPage(status) => {
                    let answer = Answer::error(status, "");
                    return self
                        .route_answer(
                            client,
                            head,
                            raw,
                            conn,
                            plane,
                            Some(routed.route),
                            answer,
                            closing,
                            outcome,
                        )
                        .await;
                }
                Failure::Client { status, reason } => {
                    outcome.error = reason;
                    if status > 0 {
                        let answer = Answer {
                            close: true,
                            ..Answer::error(status, "")
                        };
                        return self.answer(client, head, raw, &answer, true, outcome).await;
                    }
                    return Next::Close;
                }
                // Dropped for a retryable status: the policy already decided to go on.
                Failure::Retry => continue,
                Failure::Removed if removed_retries < 3 => {
                    removed_retries += 1;
                    continue;
                }
                Failure::Removed => {
                    let answer = Answer::error(503, "no usable endpoint for this backend\n");
                    return self
                        .route_answer(
                            client,
                            head,
                            raw,
                            conn,
                            plane,
                            Some(routed.route),
                            answer,
                            closing,
                            outcome,
                        )
                        .await;
                }
                Failure::Broken => {
                    outcome.error = "connection broken mid-response";
                    return Next::Close;
                }
            }
        }
    }

    /// One attempt against one endpoint. `Ok` when a response reached the client.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        began: Instant,
        client: &mut Stream,
        buf: &mut BytesMut,
        head: &RequestHead,
        raw: &Bytes,
        upstream_head: &[u8],
        buffered: Option<usize>,
        endpoint: &Endpoint,
        conn: &Conn,
        timers: &mut Timers,
        plane: &DataPlane,
        routed: &Routed,
        attempts: &mut Attempts,
        closing: bool,
        outcome: &mut Outcome,
    ) -> Result<Next, Failure> {
        let metrics = self.policy.metrics_for(Some(plane), Some(routed.route));
        let mut connect_started = began;
        let connected = match pool::take(endpoint.addr, began) {
            Some(s) => Ok((s, true)),
            // Boxed: connecting (L4 and TLS states) is an 8 KiB future, needed only for a new
            // connection; inline, every request's future would carry (and copy) it.
            None => {
                connect_started = Instant::now();
                Box::pin(self.connector.new_stream(&endpoint.peer()))
                    .await
                    .map(|s| (s, false))
            }
        };
        let (mut up, reused) = match connected {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(upstream = %endpoint.addr, error = %e, "upstream connect failed");
                let status = if matches!(e.etype(), pingora_core::ErrorType::ConnectTimedout) {
                    504
                } else {
                    502
                };
                return Err(Failure::Upstream {
                    status,
                    stale: false,
                    fault: if status == 504 {
                        Fault::Timeout
                    } else {
                        Fault::Error
                    },
                    sent: false,
                });
            }
        };
        if !self.policy.still_serves(plane, routed, endpoint.addr) {
            // Removed while this request connected: nothing was sent; pick again.
            return Err(Failure::Removed);
        }
        if reused {
            self.policy.shared.metrics.upstream_reused.inc();
        } else {
            self.policy.shared.metrics.upstream_new.inc();
        }
        // Observed for pooled connections too, as the Pingora engine does: taking one from the
        // pool does not wait, so its connect time is zero, without a second clock read.
        let sent_at = if reused {
            connect_started
        } else {
            Instant::now()
        };
        metrics.observe_upstream_connect(sent_at - connect_started);
        // The head, and a buffered body with it: one write.
        let write = match buffered {
            Some(n) if n > 0 => {
                let mut v = Vec::with_capacity(upstream_head.len() + n);
                v.extend_from_slice(upstream_head);
                v.extend_from_slice(&buf[..n]);
                within(endpoint.write_timeout, up.write_all(&v)).await
            }
            _ => within(endpoint.write_timeout, up.write_all(upstream_head)).await,
        };
        match write {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(Failure::Upstream {
                    status: 502,
                    stale: reused,
                    fault: Fault::Error,
                    sent: true,
                })
            }
            Err(_) => {
                return Err(Failure::Upstream {
                    status: 504,
                    stale: false,
                    fault: Fault::Timeout,
                    sent: true,
                })
            }
        }
        match buffered {
            Some(_) => {}
            None => {
                outcome.read = self
                    .stream_request_body(
                        client,
                        buf,
                        &mut up,
                        head.framing,
                        routed.max_body,
                        endpoint,
                    )
                    .await? as usize;
            }
        }
        // The response head.
        let mut ubuf = BytesMut::with_capacity(RESPONSE_BUFFER);
        let is_head = head.method.get(raw) == b"HEAD";
        let response = loop {
            let parsed = loop {
                // What an interim response left in the buffer is parsed before reading more.
                if !ubuf.is_empty() {
                    match parse::parse_response(&ubuf, is_head) {
                        Ok(Parsed::Complete(r)) => break r,
                        Ok(Parsed::Partial) => {}
                        Err(bad) => {
                            tracing::warn!(upstream = %endpoint.addr, reason = bad.0, "invalid upstream response");
                            return Err(Failure::Upstream {
                                status: 502,
                                stale: false,
                                fault: Fault::InvalidHeader,
                                sent: true,
                            });
                        }
                    }
                }
                if ubuf.len() == ubuf.capacity() {
                    ubuf.reserve(ubuf.len().max(RESPONSE_BUFFER));
                }
                let read = until(
                    timers.upstream.as_mut(),
                    Some(sent_at),
                    endpoint.read_timeout,
                    up.read_buf(&mut ubuf),
                )
                .await;
                match read.ok_or(()) {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        return Err(Failure::Upstream {
                            status: 502,
                            stale: reused && ubuf.is_empty() && !attempts.responded,
                            fault: Fault::Error,
                            sent: true,
                        })
                    }
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        return Err(Failure::Upstream {
                            status: 504,
                            stale: false,
                            fault: Fault::Timeout,
                            sent: true,
                        })
                    }
                }
            };
            if (100..200).contains(&parsed.status) {
                if parsed.status == 101 {
                    if !head.upgrade {
                        // A switch nobody asked for.
                        return Err(Failure::Upstream {
                            status: 502,
                            stale: false,
                            fault: Fault::InvalidHeader,
                            sent: true,
                        });
                    }
                    self.policy.upstream_answered(attempts);
                    metrics.observe_upstream_response(sent_at.elapsed());
                    outcome.status = 101;
                    return self
                        .switch(client, buf, up, ubuf, &parsed, endpoint, outcome)
                        .await;
                }
                // Interim responses (103 Early Hints) go on to HTTP/1.1 clients (RFC 9110 15.2),
                // except a 100 when Portico already sent its own.
                let forward = head.version == 1 && !(parsed.status == 100 && head.expect_continue);
                if forward {
                    let mut interim = Vec::with_capacity(parsed.len + 32);
                    encode::interim_head(
                        &parsed,
                        &ubuf[..parsed.len],
                        &self.policy.server_header,
                        &mut interim,
                    );
                    client_write(client, &interim, self.policy.upstream.write_timeout).await?;
                }
                ubuf.advance(parsed.len);
                continue;
            }
            break parsed;
        };
        if attempts.retries_status(response.status)
            && buffered.is_some()
            && self.policy.retry_status(
                attempts,
                response.status,
                http::Method::from_bytes(head.method.get(raw)).is_ok_and(|m| m.is_idempotent()),
            )
        {
            // nginx's `proxy_next_upstream http_502` …: this answer is dropped with its
            // connection, and the request goes to another endpoint.
            return Err(Failure::Retry);
        }
        self.policy.upstream_answered(attempts);
        if routed.errors
            && self
                .policy
                .error_page_for(plane, Some(routed.route), response.status)
        {
            // custom-http-errors (nginx's proxy_intercept_errors): the response is dropped with
            // its connection, and the default backend answers instead.
            metrics.observe_upstream_response(sent_at.elapsed());
            if let Some(n) = buffered {
                buf.advance(n);
                outcome.read = n;
            }
            return Err(Failure::ErrorPage(response.status));
        }
        metrics.observe_upstream_response(sent_at.elapsed());
        if let Some(n) = buffered {
            buf.advance(n);
            outcome.read = n;
        }
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
        outcome.status = response.status;
        let keep_client = !(head.close || closing);
        if routed.sticky {
            let view = self.view(head, raw, conn);
            let agent = view.header("user-agent");
            if let Some(cookie) = self
                .policy
                .affinity_cookie(plane, routed, attempts, conn.tls, agent)
            {
                outcome.cookies.push(cookie);
            }
        }
        let (reusable, next) = self
            .forward_response(
                client,
                &mut up,
                ubuf,
                &response,
                head,
                raw,
                conn,
                plane,
                routed,
                keep_client,
                endpoint,
                outcome,
            )
            .await?;
        if reusable {
            pool::put(
                endpoint.addr,
                up,
                sent_at,
                endpoint.idle_timeout,
                self.pool_size,
            );
        }
        Ok(next)
    }

    /// After a 101: sends it on, then carries bytes both ways until both sides have closed or
    /// neither sent anything for the endpoint's read timeout (nginx's `proxy_read_timeout` for
    /// upgraded connections). An end of stream from one side is passed on as a write shutdown
    /// to the other (half-close), as nginx does.
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        client: &mut Stream,
        buf: &mut BytesMut,
        mut up: Stream,
        mut ubuf: BytesMut,
        response: &ResponseHead,
        endpoint: &Endpoint,
        outcome: &mut Outcome,
    ) -> Result<Next, Failure> {
        let write = self.policy.upstream.write_timeout;
        let rhead = ubuf.split_to(response.len);
        let mut out = Vec::with_capacity(rhead.len() + 64 + ubuf.len());
        encode::switching_head(response, &rhead, &self.policy.server_header, &mut out);
        out.extend_from_slice(&ubuf);
        outcome.sent += ubuf.len();
        client_write(client, &out, write).await?;
        drop((out, rhead, ubuf));
        // What the client sent after its request already belongs to the new protocol.
        if !buf.is_empty() {
            if up_write(&mut up, buf, endpoint.write_timeout)
                .await
                .is_err()
            {
                return Ok(Next::Close);
            }
            outcome.read += buf.len();
            buf.clear();
        }
        let (to_client, to_upstream) = tunnel(client, &mut up, endpoint.read_timeout, write).await;
        outcome.sent += to_client as usize;
        outcome.read += to_upstream as usize;
        Ok(Next::Close)
    }

    /// Streams a request body that was not buffered whole to the upstream. Returns its length.
    async fn stream_request_body(
        &self,
        client: &mut Stream,
        buf: &mut BytesMut,
        up: &mut Stream,
        framing: Framing,
        max_body: u64,
        endpoint: &Endpoint,
    ) -> Result<u64, Failure> {
        let read_timeout = self.policy.limits.client_body_timeout;
        let write = endpoint.write_timeout;
        match framing {
            Framing::Length(n) => {
                let mut left = n;
                let take = (buf.len() as u64).min(left) as usize;
                if take > 0 {
                    let first = buf.split_to(take);
                    up_write(up, &first, write).await?;
                    left -= take as u64;
                }
                let mut chunk = vec![0u8; (left as usize).min(BODY_BUFFER)];
                while left > 0 {
                    let want = (left as usize).min(chunk.len());
                    let n = client_read(client, &mut chunk[..want], read_timeout).await?;
                    up_write(up, &chunk[..n], write).await?;
                    left -= n as u64;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut total: u64 = 0;
                let mut out = Vec::with_capacity(BODY_BUFFER + 32);
                loop {
                    if !buf.is_empty() {
                        let mut too_large = false;
                        let consumed = decoder
                            .decode(buf, &mut |data| {
                                total += data.len() as u64;
                                too_large |= max_body > 0 && total > max_body;
                                chunk_line(data.len(), &mut out);
                                out.extend_from_slice(data);
                                out.extend_from_slice(b"\r\n");
                            })
                            .map_err(|e| Failure::Client {
                                status: 400,
                                reason: e.0,
                            })?;
                        if too_large {
                            return Err(Failure::Client {
                                status: 413,
                                reason: "request body too large",
                            });
                        }
                        buf.advance(consumed);
                        if decoder.is_done() {
                            out.extend_from_slice(LAST_CHUNK);
                        }
                        if !out.is_empty() {
                            up_write(up, &out, write).await?;
                            out.clear();
                        }
                        if decoder.is_done() {
                            return Ok(total);
                        }
                    }
                    buf.reserve(BODY_BUFFER);
                    client_read_buf(client, buf, read_timeout).await?;
                }
            }
            Framing::None | Framing::Close => Ok(0),
        }
    }

    /// Sends the response head and body to the client. Returns whether the upstream connection
    /// may be pooled, and what the client connection does next.
    #[allow(clippy::too_many_arguments)]
    async fn forward_response(
        &self,
        client: &mut Stream,
        up: &mut Stream,
        mut ubuf: BytesMut,
        response: &ResponseHead,
        head: &RequestHead,
        raw: &[u8],
        conn: &Conn,
        plane: &DataPlane,
        routed: &Routed,
        keep_client: bool,
        endpoint: &Endpoint,
        outcome: &mut Outcome,
    ) -> Result<(bool, Next), Failure> {
        let out_framing = encode::out_framing(response.framing, head.version == 1);
        let keep = keep_client && out_framing != encode::Out::Close;
        let head_bytes = response.len;
        let rhead = ubuf.split_to(head_bytes).freeze();
        let mut out = Vec::with_capacity(rhead.len() + 256 + ubuf.len().min(BODY_BUFFER) + 32);
        let hsts = self.policy.hsts(plane, Some(routed.route), conn.tls);
        let view = self.view(head, raw, conn);
        let set = self.policy.response_set(plane, Some(routed.route), &view);
        encode::response_head(
            response,
            &rhead,
            out_framing,
            keep,
            &self.policy.server_header,
            hsts.map(|h| &**h),
            set.as_deref(),
            self.policy.gateway_response(plane, routed),
            &outcome.cookies,
            &mut out,
        );
        let write = self.policy.upstream.write_timeout;
        let read = endpoint.read_timeout;
        let mut reusable = !response.close;
        match response.framing {
            Framing::None => {
                reusable &= ubuf.is_empty();
                client_write(client, &out, write).await?;
            }
            Framing::Length(n) => {
                let mut left = n;
                let take = (ubuf.len() as u64).min(left) as usize;
                out.extend_from_slice(&ubuf[..take]);
                left -= take as u64;
                reusable &= ubuf.len() == take;
                ubuf.clear();
                client_write(client, &out, write).await?;
                outcome.sent += take;
                if left > 0 {
                    ubuf.reserve(BODY_BUFFER);
                }
                while left > 0 {
                    let want = (left as usize).min(BODY_BUFFER);
                    ubuf.clear();
                    let n = match within(read, read_some(up, &mut ubuf, want)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return Err(Failure::Broken),
                    };
                    client_write(client, &ubuf[..n], write).await?;
                    outcome.sent += n;
                    left -= n as u64;
                }
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let mut sent = 0;
                    let consumed = decoder
                        .decode(&ubuf, &mut |data| {
                            sent += data.len();
                            encode::body_piece(out_framing, data, &mut out);
                        })
                        .map_err(|e| {
                            tracing::warn!(upstream = %endpoint.addr, reason = e.0, "invalid chunked response");
                            Failure::Broken
                        })?;
                    outcome.sent += sent;
                    if decoder.is_done() {
                        reusable &= consumed == ubuf.len();
                        encode::body_end(out_framing, &mut out);
                        client_write(client, &out, write).await?;
                        break;
                    }
                    if !out.is_empty() {
                        client_write(client, &out, write).await?;
                        out.clear();
                    }
                    ubuf.clear();
                    ubuf.reserve(BODY_BUFFER);
                    match within(read, up.read_buf(&mut ubuf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return Err(Failure::Broken),
                    }
                }
            }
            Framing::Close => {
                reusable = false;
                loop {
                    outcome.sent += ubuf.len();
                    encode::body_piece(out_framing, &ubuf, &mut out);
                    if !out.is_empty() {
                        client_write(client, &out, write).await?;
                        out.clear();
                    }
                    ubuf.clear();
                    ubuf.reserve(BODY_BUFFER);
                    match within(read, up.read_buf(&mut ubuf)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(_)) => {}
                        _ => return Err(Failure::Broken),
                    }
                }
                encode::body_end(out_framing, &mut out);
                if !out.is_empty() {
                    client_write(client, &out, write).await?;
                }
            }
        }
        let next = if keep { Next::KeepAlive } else { Next::Close };
        Ok((reusable, next))
    }
}

impl Answer {
    fn reason_or<'a>(&'a self, default: &'a str) -> &'a str {
        match std::str::from_utf8(&self.body) {
            Ok(text) if !text.is_empty() && self.body.len() < 200 => text.trim_end(),
            _ => default,
        }
    }
}

/// Carries bytes between an upgraded client connection and its upstream until both directions
/// have ended, a write fails or stalls past `write`, or nothing moved for `idle`. Returns the
/// bytes sent to the client and to the upstream.
async fn tunnel(
    client: &mut Stream,
    up: &mut Stream,
    idle: Duration,
    write: Duration,
) -> (u64, u64) {
    let mut from_client = vec![0u8; BODY_BUFFER];
    let mut from_up = vec![0u8; BODY_BUFFER];
    let (mut client_open, mut up_open) = (true, true);
    let (mut to_client, mut to_upstream) = (0u64, 0u64);
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    while client_open || up_open {
        tokio::select! {
            r = client.read(&mut from_client), if client_open => match r {
                Ok(n) if n > 0 => {
                    if !matches!(within(write, up.write_all(&from_client[..n])).await, Ok(Ok(()))) {
                        break;
                    }
                    to_upstream += n as u64;
                }
                _ => {
                    client_open = false;
                    let _ = within(write, up.shutdown()).await;
                }
            },
            r = up.read(&mut from_up), if up_open => match r {
                Ok(n) if n > 0 => {
                    if !matches!(within(write, client.write_all(&from_up[..n])).await, Ok(Ok(()))) {
                        break;
                    }
                    to_client += n as u64;
                }
                _ => {
                    up_open = false;
                    let _ = within(write, client.shutdown()).await;
                }
            },
            () = &mut quiet => break,
        }
        quiet.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    (to_client, to_upstream)
}

/// The bytes to replay into Pingora's session: the head and whatever followed it.
fn replay(raw: &Bytes, buf: &mut BytesMut) -> Bytes {
    let mut all = BytesMut::with_capacity(raw.len() + buf.len());
    all.extend_from_slice(raw);
    all.extend_from_slice(buf);
    buf.clear();
    all.freeze()
}

async fn up_write(up: &mut Stream, data: &[u8], limit: Duration) -> Result<(), Failure> {
    match within(limit, up.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Failure::Upstream {
            status: 502,
            stale: false,
            fault: Fault::Error,
            sent: true,
        }),
        Err(_) => Err(Failure::Upstream {
            status: 504,
            stale: false,
            fault: Fault::Timeout,
            sent: true,
        }),
    }
}

async fn client_write(client: &mut Stream, data: &[u8], limit: Duration) -> Result<(), Failure> {
    match within(limit, async {
        client.write_all(data).await?;
        client.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(Failure::Broken),
    }
}

async fn client_read(
    client: &mut Stream,
    into: &mut [u8],
    limit: Duration,
) -> Result<usize, Failure> {
    body_read(within(limit, client.read(into)).await)
}

/// Reads more of a request body into `buf`, waiting at most `limit`.
async fn client_read_buf(
    client: &mut Stream,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<usize, Failure> {
    body_read(within(limit, client.read_buf(buf)).await)
}

/// What a read of a request body means: bytes, or the client's failure to answer.
fn body_read(
    read: Result<std::io::Result<usize>, pingora_timeout::Elapsed>,
) -> Result<usize, Failure> {
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => Err(Failure::Client {
            // A half-closed client still reads the answer; a gone one does not care.
            status: 400,
            reason: "client closed mid-body",
        }),
        Ok(Ok(n)) => Ok(n),
        Err(_) => Err(Failure::Client {
            status: 408,
            reason: "client body timeout",
        }),
    }
}

/// Reads from the client until `buf` holds `n` bytes, waiting at most `limit` for each read.
async fn fill(
    client: &mut Stream,
    buf: &mut BytesMut,
    n: usize,
    limit: Duration,
) -> Result<(), Failure> {
    while buf.len() < n {
        buf.reserve((n - buf.len()).min(BODY_BUFFER));
        client_read_buf(client, buf, limit).await?;
    }
    Ok(())
}

thread_local! {
    /// Where idle connections of this worker thread read their next request's first bytes.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_BUFFER].into_boxed_slice());
}

/// Reads what the client sent into the empty `buf`, through the thread's scratch buffer: `buf` is
/// allocated only once bytes are there, so a connection waiting for its next request holds no
/// buffer. (Waiting with a zero-length read instead costs a system call per request: a ready
/// socket answers it at once with 0.) Each poll borrows the scratch buffer only while it runs.
fn read_fresh<'a>(
    stream: &'a mut Stream,
    buf: &'a mut BytesMut,
) -> impl Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        SCRATCH.with(|scratch| {
            let mut local = [0u8; 512];
            let mut borrowed = scratch.try_borrow_mut();
            let space: &mut [u8] = match &mut borrowed {
                Ok(s) => s,
                Err(_) => &mut local,
            };
            let mut read = tokio::io::ReadBuf::new(space);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    buf.reserve(got.len().max(HEAD_BUFFER));
                    buf.extend_from_slice(got);
                    Poll::Ready(Ok(got.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
}

/// Reads at most `want` bytes into `buf`.
async fn read_some(up: &mut Stream, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    buf.resize(want, 0);
    let n = up.read(&mut buf[..want]).await?;
    buf.truncate(n);
    Ok(n)
}

/// Runs `fut` under `limit`, arming a timer only if it does not finish at once: a write to a
/// socket with room, or a read of bytes already there, costs no timer.
async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, pingora_timeout::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    if let std::task::Poll::Ready(out) = futures::poll!(fut.as_mut()) {
        return Ok(out);
    }
    timeout(limit, fut).await
}

/// The connection's timers for the waits that are nearly always pending: the idle keep-alive
/// wait and the wait for an upstream response. Each is reset to a later deadline per use, which
/// tokio does with an atomic store (the registered entry is extended), so these waits register
/// no timer per request.
struct Timers {
    idle: Pin<Box<Sleep>>,
    upstream: Pin<Box<Sleep>>,
}

impl Timers {
    fn new() -> Self {
        Self {
            idle: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            upstream: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }
}

/// Waits for `fut` at most `limit` on `timer`; `None` when the time ran out.
/// `from` is when the wait began, if the caller read the clock already.
async fn until<F: Future>(
    mut timer: Pin<&mut Sleep>,
    from: Option<Instant>,
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let Poll::Ready(out) = futures::poll!(fut.as_mut()) {
        return Some(out);
    }
    let from = from.unwrap_or_else(Instant::now);
    timer
        .as_mut()
        .reset(tokio::time::Instant::from_std(from) + limit);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The policy's view of a request parsed by this engine.
struct View<'a> {
    policy: &'a Policy,
    head: &'a RequestHead,
    raw: &'a [u8],
    client: Option<IpAddr>,
    local: Option<std::net::SocketAddr>,
}

impl RequestView for View<'_> {
    fn client_ip(&self, trusted: Option<&[Cidr]>) -> Option<IpAddr> {
        let lines = self
            .head
            .fields
            .iter()
            .filter(|f| {
                f.kind == Kind::Forwarding
                    && f.name
                        .get(self.raw)
                        .eq_ignore_ascii_case(b"x-forwarded-for")
            })
            .map(|f| f.value.get(self.raw));
        self.policy.real_ip(self.client, lines, trusted)
    }

    fn method(&self) -> &[u8] {
        self.head.method.get(self.raw)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head
            .fields
            .iter()
            .find(|f| f.name.get(self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.value.get(self.raw))
    }

    fn fields(&self) -> Vec<(&[u8], &[u8])> {
        self.head
            .fields
            .iter()
            .map(|f| (f.name.get(self.raw), f.value.get(self.raw)))
            .collect()
    }

    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.head
            .fields
            .iter()
            .filter(|f| f.name.get(self.raw).eq_ignore_ascii_case(b"cookie"))
            .find_map(|f| crate::request::policy::cookie_in(f.value.get(self.raw), name))
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    fn header_joined(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        let mut values = self
            .head
            .fields
            .iter()
            .filter(|f| f.name.get(self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| std::str::from_utf8(f.value.get(self.raw)));
        let first = values.next()?.ok()?;
        let mut out: Option<String> = None;
        for v in values {
            let o = out.get_or_insert_with(|| first.to_string());
            o.push_str(", ");
            o.push_str(v.ok()?);
        }
        Some(out.map_or(std::borrow::Cow::Borrowed(first), std::borrow::Cow::Owned))
    }
}
