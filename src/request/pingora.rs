//! The Pingora engine: `ProxyHttp` phases that call the request [`Policy`].
//!
//! It serves HTTP/2, the HTTPS/h2c/gRPC backends, and every HTTP/1 request (upgrades included)
//! when `--http1-engine pingora` is set. Pingora parses and frames; the policy decides.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use super::edge;
use super::guard;
use super::policy::{
    Answer, Attempts, AuthGrant, Cidr, Decision, Fault, LogEntry, Policy, RequestView, Routed,
};
use crate::dataplane::DataPlane;

/// The `ProxyHttp` application; one instance serves every listener.
pub struct PingoraApp {
    pub policy: Arc<Policy>,
}

/// Per-request state, from the request header to the log line.
pub struct RequestCtx {
    started: Instant,
    plane: Option<Arc<DataPlane>>,
    route: Option<usize>,
    routed: Option<Routed>,
    upstream_started: Option<Instant>,
    tls: bool,
    client: Option<IpAddr>,
    /// The address the connection arrived on (a Gateway's entry point).
    local: Option<std::net::SocketAddr>,
    attempts: Attempts,
    body_bytes: u64,
    /// What an external auth service admitted the request with.
    grant: AuthGrant,
    /// One of the client's concurrent requests (limit-connections), released with the context.
    permit: Option<crate::routing::limit::Permit>,
    /// The upstream's status that an error page replaces (custom-http-errors).
    error_page: Option<u16>,
    /// The request body read so far, for the copies of a Gateway API `RequestMirror`; `None`
    /// when there is none to send, or it grew over [`MIRROR_BODY`] (the copy is skipped).
    mirror_body: Option<bytes::BytesMut>,
}

/// The largest request body copied to a mirror on this engine, as Portico's engine holds.
const MIRROR_BODY: usize = 64 * 1024;

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

impl PingoraApp {
    /// The policy's view of a request in `ctx`.
    fn view<'a>(&'a self, req: &'a RequestHeader, ctx: &RequestCtx) -> View<'a> {
        View {
            policy: &self.policy,
            req,
            client: ctx.client,
            local: ctx.local,
        }
    }

    /// Sends a Gateway API rule's mirror copies ([`Policy::mirror`]) of the request, with its
    /// body (`None`: not held).
    fn mirror(&self, session: &Session, ctx: &RequestCtx, body: Option<Bytes>) {
        let (Some(plane), Some(routed)) = (ctx.plane.as_ref(), ctx.routed.as_ref()) else {
            return;
        };
        let req = session.req_header();
        let view = self.view(req, ctx);
        let edits = routed.edits.then(|| {
            self.policy
                .edits(plane, routed, req.uri.path(), req.uri.query())
        });
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = edits
            .as_ref()
            .and_then(|e| e.target.as_deref())
            .unwrap_or(target);
        self.policy.mirror(
            plane,
            routed,
            &view,
            request_host(req),
            target,
            edits.as_ref(),
            view.client_ip(None),
            body,
        );
    }

    /// Sends a route's answer, or the error page that replaces it (custom-http-errors).
    async fn route_answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: Answer,
    ) -> Result<bool> {
        let plane = match (&ctx.plane, ctx.route) {
            (Some(plane), route) if self.policy.error_page_for(plane, route, answer.status) => {
                plane.clone()
            }
            _ => return self.answer(session, &answer).await,
        };
        let req = session.req_header();
        let view = self.view(req, ctx);
        let host = request_host(req).to_string();
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let page = self.policy.error_page(
            &plane,
            ctx.route.unwrap_or_default(),
            answer.status,
            &view,
            &host,
            uri,
            view.client_ip(None),
        );
        let page = Box::pin(page).await;
        let page = Answer {
            close: answer.close || page.close,
            ..page
        };
        self.answer(session, &page).await
    }

    /// Sends one of the policy's own answers, with the same headers as the HTTP/1 engine's.
    async fn answer(&self, session: &mut Session, answer: &Answer) -> Result<bool> {
        if answer.close {
            session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(answer.status, Some(6))?;
        if !self.policy.server_header.value.is_empty() {
            resp.insert_header(header::SERVER, self.policy.server_header.value.clone())?;
        }
        if let Some(location) = &answer.location {
            resp.insert_header(header::LOCATION, location.as_str())?;
        }
        if !answer.body.is_empty()
            && !answer
                .headers
                .iter()
                .any(|(n, _)| n == header::CONTENT_TYPE)
        {
            resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        }
        for (name, value) in &answer.headers {
            resp.append_header(name.clone(), value.clone())?;
        }
        // RFC 9110 8.6: never in a 204.
        if answer.status != 204 {
            resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), answer.body.is_empty() || head_only)
            .await?;
        if !answer.body.is_empty() && !head_only {
            session
                .write_response_body(Some(answer.body.clone()), true)
                .await?;
        }
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for PingoraApp {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a disabled compression module, whose
    /// per-request context and filter calls cost instructions on every request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.policy.shared.metrics.inflight.inc();
        RequestCtx {
            started: Instant::now(),
            plane: None,
            route: None,
            routed: None,
            upstream_started: None,
            tls: false,
            client: None,
            local: None,
            attempts: Attempts::default(),
            body_bytes: 0,
            grant: AuthGrant::default(),
            permit: None,
            error_page: None,
            mirror_body: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(h1) = session.as_downstream().as_http1() {
            edge::header_received(h1.stream());
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.local = session.server_addr().and_then(|a| a.as_inet()).copied();
        let checked = guard::check(session.req_header(), &self.policy.limits.header)
            .and_then(|()| raw_framing(session));
        if let Err(refusal) = checked {
            tracing::debug!(client = ?ctx.client, status = refusal.status, reason = refusal.reason, "request refused");
            let answer = Answer {
                close: true,
                ..Answer::error(refusal.status, refusal.reason)
            };
            return self.answer(session, &answer).await;
        }
        // Only bound a keep-alive the session allows: Pingora turns it off for HTTP/1.0, for
        // `Connection: close`, and for a request framed by both Content-Length and
        // Transfer-Encoding (RFC 9112 6.1), which must not be followed by another on the socket.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.policy.limits.keepalive_timeout.as_secs()));
        }
        let plane = self.policy.shared.load();
        let req = session.req_header();
        let declared = req
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let path_and_query = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let decision = self.policy.decide(
            &plane,
            request_host(req),
            req.uri.path(),
            path_and_query,
            ctx.tls,
            declared,
            &self.view(req, ctx),
        );
        ctx.plane = Some(plane);
        match decision {
            Decision::Answer { route, answer } => {
                ctx.route = route;
                self.route_answer(session, ctx, answer).await
            }
            Decision::Proxy(routed) => {
                ctx.route = Some(routed.route);
                ctx.routed = Some(routed);
                if routed.conns {
                    let view = self.view(session.req_header(), ctx);
                    let plane = ctx
                        .plane
                        .clone()
                        .unwrap_or_else(|| self.policy.shared.load());
                    match self.policy.enter(&plane, &routed, &view) {
                        Ok(permit) => ctx.permit = permit,
                        Err(answer) => return self.route_answer(session, ctx, answer).await,
                    }
                }
                if routed.auth {
                    let req = session.req_header();
                    let view = self.view(req, ctx);
                    let host = request_host(req).to_string();
                    let target = path_and_query.to_string();
                    let plane = ctx
                        .plane
                        .clone()
                        .unwrap_or_else(|| self.policy.shared.load());
                    let client = view.client_ip(None);
                    let result = Box::pin(
                        self.policy
                            .authorize(&plane, &routed, &view, ctx.tls, &host, &target, client),
                    )
                    .await;
                    match result {
                        Ok(grant) => ctx.grant = grant,
                        Err(answer) => return self.route_answer(session, ctx, answer).await,
                    }
                }
                if routed.mirror {
                    if session.is_body_empty() {
                        self.mirror(session, ctx, Some(Bytes::new()));
                    } else {
                        ctx.mirror_body = Some(bytes::BytesMut::new());
                    }
                }
                session.set_read_timeout(Some(self.policy.limits.client_body_timeout));
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(b), Some(routed)) = (body.as_ref(), &ctx.routed) {
            ctx.body_bytes += b.len() as u64;
            if routed.max_body > 0 && ctx.body_bytes > routed.max_body {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body too large");
            }
        }
        if ctx.routed.is_some_and(|r| r.mirror) {
            if let (Some(held), Some(b)) = (ctx.mirror_body.as_mut(), body.as_ref()) {
                if held.len() + b.len() > MIRROR_BODY {
                    // Too large to hold: the copy is skipped (and counted).
                    ctx.mirror_body = None;
                    self.mirror(session, ctx, None);
                } else {
                    held.extend_from_slice(b);
                }
            }
            if end_of_stream {
                if let Some(held) = ctx.mirror_body.take() {
                    self.mirror(session, ctx, Some(held.freeze()));
                }
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(plane), Some(routed)) = (ctx.plane.as_ref(), ctx.routed.as_ref()) else {
            return Error::e_explain(ErrorType::InternalError, "no route");
        };
        let endpoint = self
            .policy
            .pick(plane, routed, &ctx.attempts)
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "empty pool"))?;
        ctx.attempts.start(&endpoint);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(endpoint.peer()))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Removed while the request was connecting: send nothing, pick again (any method).
        if let (Some(plane), Some(routed), Some((addr, _))) =
            (&ctx.plane, &ctx.routed, &ctx.attempts.current)
        {
            if !self.policy.still_serves(plane, routed, *addr) {
                return Err(crate::dataplane::endpoint_removed(*addr));
            }
        }
        let metrics = &self.policy.shared.metrics;
        if reused {
            metrics.upstream_reused.inc();
        } else {
            metrics.upstream_new.inc();
        }
        if let Some(t) = ctx.upstream_started {
            self.policy
                .metrics_for(ctx.plane.as_deref(), ctx.route)
                .observe_upstream_connect(t.elapsed());
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
        let downstream = session.req_header();
        let local_port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        let client = self.policy.client_addr(ctx.client, local_port);
        let forwarded = self
            .policy
            .forwarded(&client, ctx.tls, host_value(downstream)?, |name| {
                downstream.headers.get(name).cloned()
            });
        for (name, value) in forwarded {
            upstream_request.insert_header(name, value)?;
        }
        if let (Some(plane), Some(routed)) = (ctx.plane.as_ref(), ctx.routed.as_ref()) {
            if routed.edits {
                let uri = &session.req_header().uri;
                let edits = self.policy.edits(plane, routed, uri.path(), uri.query());
                if let Some(target) = edits.target {
                    let uri = target.parse::<http::Uri>().map_err(|e| {
                        Error::because(ErrorType::InternalError, "rewritten target", e)
                    })?;
                    upstream_request.set_uri(uri);
                }
                if let Some(host) = edits.host {
                    upstream_request.insert_header(header::HOST, host)?;
                }
                if let Some(prefix) = edits.prefix {
                    upstream_request.insert_header("x-forwarded-prefix", prefix)?;
                }
                if edits.drop_authorization {
                    upstream_request.remove_header(&header::AUTHORIZATION);
                }
                for (name, value) in &edits.set {
                    upstream_request.remove_header(name);
                    if let Some(v) = value {
                        upstream_request.insert_header(name.clone(), v.clone())?;
                    }
                }
                for (name, value) in &edits.add {
                    upstream_request.append_header(name.clone(), value.clone())?;
                }
                for (name, value) in &ctx.grant.upstream {
                    upstream_request.remove_header(name);
                    if let Some(v) = value {
                        upstream_request.insert_header(name.clone(), v.clone())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing of the request reached the endpoint: any method may go on to another.
        let fault = match e.etype() {
            ErrorType::ConnectTimedout => Fault::Timeout,
            _ => Fault::Error,
        };
        let idempotent = session.req_header().method.is_idempotent();
        if self
            .policy
            .upstream_failed(&mut ctx.attempts, fault, false, idempotent)
        {
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
            return e; // retried, and not the endpoint's fault
        }
        if *e.etype() == crate::dataplane::ERROR_PAGE {
            return e; // answered by fail_to_proxy
        }
        if *e.etype() == crate::dataplane::STATUS_RETRIED {
            // upstream_response_filter decided, and recorded the failure.
            let mut e = e;
            e.set_retry(true);
            return e;
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        let upstream_fault = *e.esource() == pingora_core::ErrorSource::Upstream;
        let idempotent = session.req_header().method.is_idempotent();
        // A pooled connection that the upstream closed meanwhile is not the endpoint's fault.
        let stale_pooled = client_reused && !ctx.attempts.responded;
        let may_retry = if upstream_fault && !stale_pooled {
            let fault = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => Fault::Timeout,
                ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
                    Fault::InvalidHeader
                }
                _ => Fault::Error,
            };
            self.policy
                .upstream_failed(&mut ctx.attempts, fault, true, idempotent)
        } else {
            !ctx.attempts.responded && idempotent
        };
        let body_intact = !session.as_ref().retry_buffer_truncated();
        e.set_retry(upstream_fault && may_retry && body_intact);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> pingora_proxy::FailToProxy {
        if let Some(status) = ctx.error_page.take() {
            // The upstream's answer is replaced (custom-http-errors). The client connection is
            // closed after it: Pingora reuses none after an error.
            let answer = Answer {
                close: true,
                ..Answer::error(status, "")
            };
            if let Err(err) = self.route_answer(session, ctx, answer).await {
                tracing::debug!(error = %err, "could not send the error page");
            }
            let code = session.response_written().map_or(0, |r| r.status.as_u16());
            return pingora_proxy::FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
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
            let answer = Answer {
                close: true,
                ..Answer::error(code, "")
            };
            // An upstream failure's answer may be an error page; the client's own faults not.
            let answer = if *e.esource() == pingora_core::ErrorSource::Upstream
                || matches!(e.etype(), ErrorType::HTTPStatus(_))
            {
                self.route_answer(session, ctx, answer).await
            } else {
                self.answer(session, &answer).await
            };
            if let Err(err) = answer {
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
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status >= 200
            && ctx.attempts.retries_status(status)
            && !session.as_ref().retry_buffer_truncated()
            && self.policy.retry_status(
                &mut ctx.attempts,
                status,
                session.req_header().method.is_idempotent(),
            )
        {
            // nginx's `proxy_next_upstream http_502` …: the response goes no further, and the
            // request goes to another endpoint (error_while_proxy marks the error retryable).
            return Err(Error::explain(
                crate::dataplane::STATUS_RETRIED,
                format!("upstream answered {status}"),
            )
            .into_up());
        }
        self.policy.upstream_answered(&mut ctx.attempts);
        if let (Some(plane), Some(routed)) = (&ctx.plane, &ctx.routed) {
            if routed.errors && self.policy.error_page_for(plane, ctx.route, status) {
                // custom-http-errors: fail_to_proxy answers with the error page instead.
                ctx.error_page = Some(status);
                return Err(Error::explain(
                    crate::dataplane::ERROR_PAGE,
                    format!("upstream answered {status}, replaced by an error page"),
                )
                .into_up());
            }
        }
        if let Some(t) = ctx.upstream_started.take() {
            self.policy
                .metrics_for(ctx.plane.as_deref(), ctx.route)
                .observe_upstream_response(t.elapsed());
        }
        let server = &self.policy.server_header;
        if !server.pass_upstream {
            if server.value.is_empty() {
                upstream_response.remove_header(&header::SERVER);
            } else {
                upstream_response.insert_header(header::SERVER, server.value.clone())?;
            }
        }
        if !upstream_response
            .headers
            .contains_key(header::STRICT_TRANSPORT_SECURITY)
        {
            let hsts = ctx
                .plane
                .as_ref()
                .and_then(|p| self.policy.hsts(p, ctx.route, ctx.tls));
            if let Some(hsts) = hsts {
                upstream_response.insert_header(header::STRICT_TRANSPORT_SECURITY, &**hsts)?;
            }
        }
        let view = self.view(session.req_header(), ctx);
        for cookie in &ctx.grant.cookies {
            upstream_response.append_header(header::SET_COOKIE, cookie.clone())?;
        }
        let affinity = match (&ctx.plane, &ctx.routed) {
            (Some(plane), Some(routed)) => {
                let agent = view.header("user-agent");
                self.policy
                    .affinity_cookie(plane, routed, &ctx.attempts, ctx.tls, agent)
            }
            _ => None,
        };
        if let Some(cookie) = affinity {
            upstream_response.append_header(header::SET_COOKIE, cookie)?;
        }
        if let Some(set) = ctx
            .plane
            .as_ref()
            .and_then(|p| self.policy.response_set(p, ctx.route, &view))
        {
            for (name, value) in set.iter() {
                upstream_response.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(edits) = ctx
            .plane
            .as_ref()
            .zip(ctx.routed.as_ref())
            .and_then(|(p, r)| self.policy.gateway_response(p, r))
        {
            let dropped: Vec<http::HeaderName> = upstream_response
                .headers
                .keys()
                .filter(|n| edits.drops(n.as_str().as_bytes()))
                .cloned()
                .collect();
            for name in dropped {
                upstream_response.remove_header(&name);
            }
            for (name, value) in edits.appended() {
                upstream_response.append_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    /// The errors that only carry a decision (a status retried, an error page) are not logged as
    /// failures.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        *e.etype() == crate::dataplane::ERROR_PAGE
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        e: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        *e.etype() == crate::dataplane::STATUS_RETRIED
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(h1) = session.as_downstream().as_http1() {
            edge::request_finished(h1.stream());
        }
        let metrics = &self.policy.shared.metrics;
        metrics.inflight.dec();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let took = ctx.started.elapsed();
        let req = session.req_header();
        let sent = session.body_bytes_sent();
        let read = session.body_bytes_read();
        let plane = ctx.plane.as_deref();
        self.policy
            .metrics_for(plane, ctx.route)
            .observe(&req.method, status, took, read, sent);
        if !self.policy.logs(plane, ctx.route) {
            return;
        }
        self.policy.log(&LogEntry {
            client: ctx.client,
            method: req.method.as_str(),
            host: request_host(req),
            path: req.uri.path(),
            status,
            bytes: sent,
            took,
            upstream: ctx.attempts.current.as_ref().map(|(a, _)| *a),
            route: Policy::route_ingress(plane, ctx.route),
            error: e.map(|e| e.etype().as_str()).unwrap_or(""),
        });
    }
}

/// Pingora drops Content-Length when Transfer-Encoding frames an HTTP/1 body; the raw header block
/// still shows whether the client sent both (looked at only when Transfer-Encoding is there).
/// The raw head also shows line ends that httparse accepted (a bare LF), as Portico's engine
/// refuses them.
fn raw_framing(session: &Session) -> std::result::Result<(), guard::Refusal> {
    let chunked = session
        .req_header()
        .headers
        .contains_key(header::TRANSFER_ENCODING);
    let Some(h1) = session.as_downstream().as_http1() else {
        return Ok(());
    };
    let raw = h1.get_headers_raw_bytes();
    guard::check_line_ends(&raw)?;
    if chunked {
        guard::check_framing(&raw)?;
    }
    Ok(())
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

/// The policy's view of a request parsed by Pingora.
struct View<'a> {
    policy: &'a Policy,
    req: &'a RequestHeader,
    client: Option<IpAddr>,
    local: Option<std::net::SocketAddr>,
}

impl RequestView for View<'_> {
    fn client_ip(&self, trusted: Option<&[Cidr]>) -> Option<IpAddr> {
        let lines = self.req.headers.get_all("x-forwarded-for").into_iter();
        let lines: Vec<&[u8]> = lines.map(|v| v.as_bytes()).collect();
        self.policy.real_ip(self.client, lines.into_iter(), trusted)
    }

    fn method(&self) -> &[u8] {
        self.req.method.as_str().as_bytes()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.req.headers.get(name).map(|v| v.as_bytes())
    }

    fn fields(&self) -> Vec<(&[u8], &[u8])> {
        self.req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect()
    }

    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| super::policy::cookie_in(v.as_bytes(), name))
    }

    fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    fn header_joined(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        crate::routing::gateway::Headers::joined(
            &self.req.headers,
            &http::HeaderName::from_bytes(name.as_bytes()).ok()?,
        )
    }
}
