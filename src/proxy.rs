//! Pingora's `ProxyHttp` for Portico: the request phases.
//!
//! Per request: one snapshot load, one host hash, a scan of that host's rules, one atomic
//! increment for round-robin. Everything else was prepared when the snapshot was compiled.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use crate::dataplane::{DataPlane, Shared};
use crate::downstream;
use crate::guard::{self, Limits};
use crate::metrics::RouteMetrics;
use crate::routing::{normalize_request_host, Route};
use crate::upstream::{now_ms, EndpointHealth};

/// How upstream connections are made; the defaults follow ingress-nginx.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub idle_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Limits on what clients send, and how hard Portico tries upstream.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub header: Limits,
    /// Largest request body in bytes (0: unlimited); an Ingress may override it.
    pub max_body_size: u64,
    /// Longest time from the first byte of a request header to its end.
    pub client_header_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub client_body_timeout: Duration,
    /// Idle time after which a client keep-alive connection is closed.
    pub keepalive_timeout: Duration,
    /// Endpoints an idempotent request may try.
    pub upstream_attempts: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            header: Limits::default(),
            max_body_size: 1 << 20,
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            upstream_attempts: 2,
        }
    }
}

/// Access log output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    Off,
    Plain,
    Json,
}

/// A trusted proxy network, for `X-Forwarded-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The proxy application; one instance serves every listener.
pub struct Portico {
    pub shared: Arc<Shared>,
    pub upstream: UpstreamOptions,
    pub trusted_proxies: Arc<[Cidr]>,
    pub access_log: AccessLog,
    pub limits: RequestLimits,
    /// Per-request metrics (counters, histograms); off only to measure what they cost.
    pub request_metrics: bool,
    /// The port that plain-HTTP requests to TLS hosts are redirected to (omitted from the
    /// `Location` when 443); `None` when HTTPS is off, which turns the redirect off.
    pub https_redirect_port: Option<u16>,
}

/// Per-request state, from the request header to the log line.
pub struct RequestCtx {
    started: Instant,
    plane: Option<Arc<DataPlane>>,
    route: Option<usize>,
    upstream: Option<SocketAddr>,
    /// Index of the chosen endpoint in its pool, for its health record.
    endpoint: Option<usize>,
    upstream_started: Option<Instant>,
    tls: bool,
    client: Option<IpAddr>,
    /// Endpoints tried so far (allocated only when a first attempt fails).
    tried: Vec<SocketAddr>,
    /// The upstream answered: from here on a failure is never retried.
    responded: bool,
    body_bytes: u64,
    max_body: u64,
}

impl RequestCtx {
    fn route<'a>(&self, plane: &'a DataPlane) -> Option<&'a Route> {
        self.route.and_then(|i| plane.routes.routes().get(i))
    }

    fn health(&self) -> Option<&EndpointHealth> {
        let plane = self.plane.as_ref()?;
        let pool = plane.pools.get(self.route(plane)?.pool)?;
        Some(&pool.endpoints().get(self.endpoint?)?.health)
    }

    /// Records a failure of the current endpoint; true if another attempt is allowed.
    fn upstream_failed(&mut self, attempts: usize) -> bool {
        if let Some(h) = self.health() {
            if let Some(time) = h.record_failure(now_ms()) {
                tracing::warn!(upstream = ?self.upstream, ejected_for = ?time, "endpoint ejected after repeated failures");
            }
        }
        if let Some(addr) = self.upstream {
            self.tried.push(addr);
        }
        !self.responded && self.tried.len() < attempts
    }
}

/// Displays the value, or nothing for `None`.
struct OrEmpty<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrEmpty<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// The host used for routing: the URI authority (absolute-form, HTTP/2 `:authority`) or else the
/// `Host` header.
fn request_host(req: &RequestHeader) -> &str {
    if let Some(a) = req.uri.authority() {
        return a.as_str().rsplit('@').next().unwrap_or("");
    }
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
}

impl Portico {
    fn metrics_for<'a>(&'a self, ctx: &'a RequestCtx) -> &'a RouteMetrics {
        if !self.request_metrics {
            return &self.shared.metrics.disabled;
        }
        ctx.plane
            .as_ref()
            .and_then(|p| ctx.route.and_then(|i| p.route_metrics.get(i)))
            .map(|m| m.as_ref())
            .unwrap_or(&self.shared.metrics.unrouted)
    }

    async fn respond(session: &mut Session, status: u16, body: &'static str) -> Result<bool> {
        session
            .respond_error_with_body(status, Bytes::from_static(body.as_bytes()))
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a disabled compression module, whose
    /// per-request context and filter calls cost instructions on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.shared.metrics.inflight.inc();
        RequestCtx {
            started: Instant::now(),
            plane: None,
            route: None,
            upstream: None,
            endpoint: None,
            upstream_started: None,
            tls: false,
            client: None,
            tried: Vec::new(),
            responded: false,
            body_bytes: 0,
            max_body: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(h1) = session.as_downstream().as_http1() {
            downstream::header_received(h1.stream());
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let checked = guard::check(session.req_header(), &self.limits.header)
            .and_then(|()| raw_framing(session));
        if let Err(refusal) = checked {
            session.set_keepalive(None);
            tracing::debug!(client = ?ctx.client, status = refusal.status, reason = refusal.reason, "request refused");
            return Self::respond(session, refusal.status, refusal.reason).await;
        }
        // Only bound a keep-alive the session allows: Pingora turns it off for HTTP/1.0, for
        // `Connection: close`, and for a request framed by both Content-Length and
        // Transfer-Encoding (RFC 9112 6.1), which must not be followed by another on the socket.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs()));
        }
        let plane = self.shared.load();
        let req = session.req_header();
        // Only what the later phases need is copied out of the route; it stays in the snapshot.
        let found = plane
            .routes
            .lookup(&normalize_request_host(request_host(req)), req.uri.path())
            .map(|r| (r.id, r.redirect_https, r.pool, r.limits.max_body));
        ctx.plane = Some(plane);
        let Some((id, redirect_https, pool, max_body)) = found else {
            return Self::respond(session, 404, "no route for this host and path\n").await;
        };
        ctx.route = Some(id);
        if let Some(port) = self
            .https_redirect_port
            .filter(|_| redirect_https && !ctx.tls)
        {
            let req = session.req_header();
            let host = normalize_request_host(request_host(req));
            let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            // The port of the plain-HTTP request is not the HTTPS one: replace it.
            let location = match port {
                443 => format!("https://{host}{path}"),
                port => format!("https://{host}:{port}{path}"),
            };
            let mut resp = ResponseHeader::build(308, Some(3))?;
            resp.insert_header(header::LOCATION, location)?;
            resp.insert_header(header::CONTENT_LENGTH, "0")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        let usable = ctx
            .plane
            .as_ref()
            .and_then(|p| p.pools.get(pool))
            .is_some_and(|p| !p.is_empty());
        if !usable {
            return Self::respond(session, 503, "no usable endpoint for this backend\n").await;
        }
        ctx.max_body = max_body.unwrap_or(self.limits.max_body_size);
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if ctx.max_body > 0 && declared.is_some_and(|n| n > ctx.max_body) {
            session.set_keepalive(None);
            return Self::respond(session, 413, "request body too large\n").await;
        }
        session.set_read_timeout(Some(self.limits.client_body_timeout));
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.max_body > 0 && ctx.body_bytes > ctx.max_body {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Pick from the newest snapshot, retries too: a removed endpoint is never chosen.
        if let (Some(plane), Some(route)) = (&ctx.plane, ctx.route) {
            if let Some((newer, route)) =
                self.shared.reroute(plane, route, |t| route_of(t, session))
            {
                ctx.plane = Some(newer);
                ctx.route =
                    Some(route.ok_or_else(|| {
                        Error::explain(ErrorType::HTTPStatus(404), "route removed")
                    })?);
            }
        }
        let plane = ctx
            .plane
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let route = ctx
            .route(plane)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let pool = plane
            .pools
            .get(route.pool)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "empty pool"))?;
        // Healthy endpoints not tried yet; failing that, any endpoint not tried yet; failing
        // that, any (a pool whose endpoints all failed still gets a chance).
        let now = now_ms();
        let index = pool
            .pick(|u| u.health.is_available(now) && !ctx.tried.contains(&u.addr))
            .or_else(|| pool.pick(|u| !ctx.tried.contains(&u.addr)))
            .or_else(|| pool.pick(|_| true))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "empty pool"))?;
        let upstream = pool
            .endpoints()
            .get(index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "endpoint index"))?;
        let limits = &route.limits;
        let protocol = route.backend_protocol;
        // With TLS, the SNI is the endpoint's IP, which rustls does not send: cluster backends
        // are reached by pod IP and mostly have self-signed certificates, so there is no name to
        // ask for and nothing to verify against (as ingress-nginx does by default).
        let sni = if protocol.tls() {
            upstream.addr.ip().to_string()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(upstream.addr, protocol.tls(), sni);
        let o = &mut peer.options;
        if protocol.tls() {
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        if protocol.http2() {
            // h2c with prior knowledge in clear text; ALPN h2 only over TLS.
            o.set_http_version(2, 2);
        }
        o.connection_timeout = Some(
            limits
                .connect_timeout
                .unwrap_or(self.upstream.connect_timeout),
        );
        o.read_timeout = Some(limits.read_timeout.unwrap_or(self.upstream.read_timeout));
        o.write_timeout = Some(limits.send_timeout.unwrap_or(self.upstream.write_timeout));
        o.idle_timeout = Some(self.upstream.idle_timeout);
        ctx.upstream = Some(upstream.addr);
        ctx.endpoint = Some(index);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Removed while the request was connecting: send nothing, retry on the newest snapshot.
        if let (Some(plane), Some(route), Some(addr)) = (&ctx.plane, ctx.route, ctx.upstream) {
            if !self
                .shared
                .still_serves(plane, route, addr, |t| route_of(t, session))
            {
                return Err(crate::dataplane::endpoint_removed(addr));
            }
        }
        let metrics = &self.shared.metrics;
        if reused {
            metrics.upstream_reused.inc();
        } else {
            metrics.upstream_new.inc();
        }
        if let Some(t) = ctx.upstream_started {
            self.metrics_for(ctx).observe_upstream_connect(t.elapsed());
            ctx.upstream_started = Some(Instant::now());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        set_forwarded_headers(session, upstream_request, ctx, &self.trusted_proxies)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let idempotent = session.req_header().method.is_idempotent();
        if ctx.upstream_failed(self.limits.upstream_attempts) && idempotent {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if *e.etype() == crate::dataplane::ENDPOINT_REMOVED {
            return e; // retried, not the endpoint's fault
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let upstream_fault = *e.esource() == pingora_core::ErrorSource::Upstream;
        // A pooled connection that the upstream closed meanwhile is not the endpoint's fault.
        let stale_pooled = client_reused && !ctx.responded;
        let may_retry = if upstream_fault && !stale_pooled {
            ctx.upstream_failed(self.limits.upstream_attempts)
        } else {
            !ctx.responded
        };
        let idempotent = session.req_header().method.is_idempotent();
        let body_intact = !session.as_ref().retry_buffer_truncated();
        e.set_retry(upstream_fault && may_retry && idempotent && body_intact);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> pingora_proxy::FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == pingora_core::ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream => 502,
                pingora_core::ErrorSource::Downstream => match e.etype() {
                    // Timed out or cut short while the client sent its request: answer if the
                    // connection still takes it (a half-closed client does).
                    ErrorType::ReadTimedout => 408,
                    ErrorType::ReadError | ErrorType::ConnectionClosed
                        if session.response_written().is_none() =>
                    {
                        400
                    }
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        pingora_proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !ctx.responded {
            ctx.responded = true;
            if let Some(h) = ctx.health() {
                h.record_success();
            }
        }
        if let Some(t) = ctx.upstream_started.take() {
            self.metrics_for(ctx).observe_upstream_response(t.elapsed());
        }
        // HSTS only means something over TLS (RFC 6797 section 7.2). A policy the backend sets
        // itself wins: the application knows its subdomains better than the Ingress.
        if ctx.tls
            && !upstream_response
                .headers
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        {
            let hsts = ctx
                .plane
                .as_ref()
                .and_then(|p| ctx.route(p))
                .and_then(|r| r.hsts.clone());
            if let Some(hsts) = hsts {
                upstream_response.insert_header(header::STRICT_TRANSPORT_SECURITY, &*hsts)?;
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(h1) = session.as_downstream().as_http1() {
            downstream::request_finished(h1.stream());
        }
        self.shared.metrics.inflight.dec();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let took = ctx.started.elapsed();
        let req = session.req_header();
        let sent = session.body_bytes_sent();
        let read = session.body_bytes_read();
        self.metrics_for(ctx)
            .observe(&req.method, status, took, read, sent);
        if self.access_log == AccessLog::Off {
            return;
        }
        // Formatted straight into the log line: no strings allocated for the fields.
        let route = OrEmpty(
            ctx.plane
                .as_ref()
                .and_then(|p| ctx.route(p))
                .map(|r| &r.ingress),
        );
        let upstream = OrEmpty(ctx.upstream);
        let client = OrEmpty(ctx.client);
        tracing::info!(
            target: "portico::access",
            client = %client,
            method = %req.method,
            host = %request_host(req),
            path = %req.uri.path(),
            status,
            bytes = sent,
            duration_ms = took.as_secs_f64() * 1000.0,
            upstream = %upstream,
            route = %route,
            error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}

/// The request's route in `table`, by its normalized host and path.
fn route_of(table: &crate::routing::RouteTable, session: &Session) -> Option<usize> {
    let req = session.req_header();
    table
        .lookup(&normalize_request_host(request_host(req)), req.uri.path())
        .map(|r| r.id)
}

/// `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
/// `X-Forwarded-Port` for the upstream request.
///
/// Like ingress-nginx: without a trusted proxy in front, the client's own forwarding headers are
/// replaced, never appended to. Values are built as `HeaderValue`s directly: the host is the
/// request's own header value (a reference-counted slice of the request buffer), the scheme a
/// static, and only the client address and the port are formatted.
fn set_forwarded_headers(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
    trusted_proxies: &[Cidr],
) -> Result<()> {
    let downstream = session.req_header();
    let trusted = ctx
        .client
        .is_some_and(|ip| trusted_proxies.iter().any(|c| c.contains(ip)));
    let kept = |name: &str| {
        if trusted {
            downstream.headers.get(name).cloned()
        } else {
            None
        }
    };
    let client = ctx
        .client
        .map(ip_value)
        .unwrap_or(HeaderValue::from_static(""));
    let xff = match kept("x-forwarded-for") {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&v).or_err(ErrorType::InvalidHTTPHeader, "x-forwarded-for")?
        }
        None => client.clone(),
    };
    let proto = kept("x-forwarded-proto").unwrap_or(HeaderValue::from_static(if ctx.tls {
        "https"
    } else {
        "http"
    }));
    let host = match kept("x-forwarded-host") {
        Some(h) => h,
        None => host_value(downstream)?,
    };
    let port = match kept("x-forwarded-port") {
        Some(p) => p,
        None => session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| HeaderValue::from(a.port()))
            .unwrap_or(HeaderValue::from_static("")),
    };
    upstream_request.insert_header("x-forwarded-for", xff)?;
    upstream_request.insert_header("x-real-ip", client)?;
    upstream_request.insert_header("x-forwarded-proto", proto)?;
    upstream_request.insert_header("x-forwarded-host", host)?;
    upstream_request.insert_header("x-forwarded-port", port)?;
    Ok(())
}

/// Pingora drops Content-Length when Transfer-Encoding frames an HTTP/1 body; the raw header block
/// still shows whether the client sent both (looked at only when Transfer-Encoding is there).
fn raw_framing(session: &Session) -> std::result::Result<(), guard::Refusal> {
    let chunked = session
        .req_header()
        .headers
        .contains_key(header::TRANSFER_ENCODING);
    match session.as_downstream().as_http1() {
        Some(h1) if chunked => guard::check_framing(&h1.get_headers_raw_bytes()),
        _ => Ok(()),
    }
}

/// The client address as a header value, formatted on the stack.
fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 45]; // the longest IPv6 text form
    let mut w = &mut buf[..];
    let len = match write!(w, "{ip}") {
        Ok(()) => 45 - w.len(),
        Err(_) => 0,
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// The request's host as a header value: the `Host` header itself when there is no authority in
/// the request line (shares its bytes), else the authority without user info.
fn host_value(req: &RequestHeader) -> Result<HeaderValue> {
    if req.uri.authority().is_none() {
        return Ok(req
            .headers
            .get(header::HOST)
            .cloned()
            .unwrap_or(HeaderValue::from_static("")));
    }
    HeaderValue::from_str(request_host(req)).or_err(ErrorType::InvalidHTTPHeader, "host")
}
