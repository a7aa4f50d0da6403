//! The request policy: every decision about a request that does not depend on the HTTP engine.
//!
//! Both engines call it: Portico's own HTTP/1 engine ([`super::h1`]) and the Pingora `ProxyHttp`
//! adapter ([`super::pingora`], for HTTP/2 and the TLS/h2c/gRPC backends). The engines
//! parse, frame and move bytes; the policy says what to answer, where to send a request, which
//! headers to add, when to retry and what to record. A per-route feature is written here once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;

use crate::dataplane::{DataPlane, Shared};
use crate::metrics::RouteMetrics;
pub use crate::model::Cidr;
use crate::model::{BackendProtocol, ObjectKey, RetryOn};
use crate::request::guard::Limits;
use crate::routing::{normalize_path, normalize_request_host, NginxRoute};
use crate::tls::upstream::UpstreamTls;
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

/// Which engine answers HTTP/1.x requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Http1Engine {
    /// Portico's own HTTP/1 engine (the default); what it does not take goes to Pingora's.
    #[default]
    Portico,
    /// Pingora's HTTP/1 proxy for every request: the escape hatch.
    Pingora,
}

/// The `Server` header of responses, in nginx's model: Portico's own value replaces the
/// backend's, unless the backend's is passed through.
#[derive(Clone, Debug)]
pub struct ServerHeader {
    /// Portico's value; empty sends none.
    pub value: HeaderValue,
    /// Pass the backend's `Server` instead (nginx's `proxy_pass_header Server`).
    pub pass_upstream: bool,
}

impl Default for ServerHeader {
    fn default() -> Self {
        Self {
            value: HeaderValue::from_static("portico"),
            pass_upstream: false,
        }
    }
}

/// The request policy; one instance serves every listener and both engines.
pub struct Policy {
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
    pub server_header: ServerHeader,
    /// The client of external auth sub-requests: pooled connections, redirects not followed.
    pub auth_client: reqwest::Client,
}

/// The client for external auth sub-requests.
pub fn auth_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

/// A request the policy answers itself, without an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The body: Portico's plain text (empty for a redirect), or an error page's.
    pub body: bytes::Bytes,
    pub location: Option<String>,
    /// Close the client connection after the answer (a refused request may be hostile).
    pub close: bool,
    /// More header fields (a CORS preflight's); empty for most answers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What the policy may ask of a request beyond its target; each engine reads its own parsed
/// head, and only when a route needs the answer.
pub trait RequestView {
    /// The client's IP as ingress-nginx's real-IP module tells it (see [`Policy::real_ip`]);
    /// `trusted` replaces `--trusted-proxies`.
    fn client_ip(&self, trusted: Option<&[Cidr]>) -> Option<IpAddr>;
    /// The request method.
    fn method(&self) -> &[u8];
    /// The value of the first field called `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The value of the cookie `name`, from any `Cookie` field.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
    /// Every field, in order (for an external auth sub-request).
    fn fields(&self) -> Vec<(&[u8], &[u8])>;
    /// The local address the connection arrived on (a Gateway's entry point).
    fn local_addr(&self) -> Option<SocketAddr>;
    /// Every field called `name` (lowercase), joined by `, `; `None` when there is none or
    /// one is not text (Gateway API header matches).
    fn header_joined(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// A request's fields as the Gateway lookup reads them.
struct GatewayHeaders<'r, R: RequestView>(&'r R);

impl<R: RequestView> crate::routing::gateway::Headers for GatewayHeaders<'_, R> {
    fn joined(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        self.0.header_joined(name.as_str())
    }
}

/// The client's fields for a sub-request (external auth, an error page): all but the framing and
/// hop-by-hop ones and `skip` (lowercase: the fields the sub-request sets itself).
fn sub_request_fields(request: &impl RequestView, skip: &[&str]) -> reqwest::header::HeaderMap {
    const HOP: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "expect",
    ];
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in request.fields() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if !HOP.contains(&name.as_str()) && !skip.contains(&name.as_str()) {
            headers.append(name, value);
        }
    }
    headers
}

/// The value of cookie `name` in one `Cookie` field value (`a=1; b=2`), if there.
pub fn cookie_in<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    field.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

impl Answer {
    pub fn error(status: u16, body: &'static str) -> Self {
        Self {
            status,
            body: bytes::Bytes::from_static(body.as_bytes()),
            location: None,
            close: false,
            headers: Vec::new(),
        }
    }
}

/// Where a routed request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// Index of the route in the snapshot's table.
    pub route: usize,
    /// Index of the route's pool in the snapshot.
    pub pool: usize,
    /// Largest body accepted (0: unlimited).
    pub max_body: u64,
    pub protocol: BackendProtocol,
    /// The upstream request is changed ([`Policy::edits`]): ingress-nginx's rewrite-target,
    /// upstream-vhost or x-forwarded-prefix.
    pub edits: bool,
    /// An external auth sub-request must admit the request first ([`Policy::authorize`]).
    pub auth: bool,
    /// The route limits concurrent requests per client ([`Policy::enter`]).
    pub conns: bool,
    /// Cookie affinity: the route has it, the key the client's cookie names (or a new one for a
    /// balanced route), and whether that key is new.
    pub sticky: bool,
    pub affinity: Option<u64>,
    pub affinity_new: bool,
    /// Some answers are replaced by error pages ([`Policy::error_page`]).
    pub errors: bool,
    /// A Gateway API rule's `RequestMirror`s are to get a copy ([`Policy::mirror`]).
    pub mirror: bool,
    /// A Gateway API route's chosen backend (its index among the rule's backends).
    pub backend: u16,
}

/// What an external auth service's 2xx answer adds to a request.
#[derive(Clone, Debug, Default)]
pub struct AuthGrant {
    /// `auth-response-headers`: set on the upstream request; `None` removes the client's field
    /// of that name (the auth service did not send it: a client cannot forge it).
    pub upstream: Vec<(HeaderName, Option<HeaderValue>)>,
    /// The auth service's `Set-Cookie` fields, added to the client's response.
    pub cookies: Vec<HeaderValue>,
}

/// How the upstream request differs from the client's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// The request target (origin-form, with the client's query).
    pub target: Option<String>,
    /// The `Host` field.
    pub host: Option<HeaderValue>,
    /// An `X-Forwarded-Prefix` field, replacing the client's.
    pub prefix: Option<HeaderValue>,
    /// Drop the client's `Authorization` (it was checked here: basic authentication).
    pub drop_authorization: bool,
    /// Fields set from an external auth answer or a Gateway API `RequestHeaderModifier`
    /// (`None`: removed): the client's fields of these names never pass.
    pub set: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Fields added after the client's (Gateway API `RequestHeaderModifier` `add`).
    pub add: Vec<(HeaderName, HeaderValue)>,
}

/// What to do with a request, decided from its head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Proxy(Routed),
    /// Answer here; `route` names the matched route, if any, for metrics and the log.
    Answer {
        route: Option<usize>,
        answer: Answer,
    },
}

/// The endpoint chosen for one attempt, with the route's connection settings.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The endpoint's passive health record.
    pub health: Arc<EndpointHealth>,
    pub protocol: BackendProtocol,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// ingress-nginx's `proxy-ssl-*`: the CA, name and client certificate of an HTTPS backend.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Endpoints a request of the route may try.
    pub attempts: usize,
    /// What sends a request of the route on to another endpoint, and for how long.
    pub retry_on: RetryOn,
    pub retry_timeout: Option<Duration>,
    /// A new affinity key chosen for this attempt (`session-cookie-change-on-failure`).
    pub rekey: Option<u64>,
    /// When the request's whole-request timeout ends (its timeouts above end no later).
    pub deadline: Option<Instant>,
}

impl Endpoint {
    /// The Pingora peer for this endpoint: what both engines connect through, so that they share
    /// one connector configuration.
    pub fn peer(&self) -> HttpPeer {
        let tls = self.protocol.tls();
        let verified = self.tls.as_deref().filter(|_| tls);
        // With TLS, the SNI is the endpoint's IP, which rustls does not send: cluster backends
        // are reached by pod IP and mostly have self-signed certificates, so there is no name to
        // ask for and nothing to verify against (as ingress-nginx does by default). A route with
        // `proxy-ssl-*` names the backend, and may verify it.
        let sni = match verified {
            Some(t) if t.sni => t.name.clone(),
            _ if tls => self.addr.ip().to_string(),
            _ => String::new(),
        };
        let mut peer = HttpPeer::new(self.addr, tls, sni);
        if let Some(t) = verified {
            // Connections are pooled by this group too: one made with other settings (or none)
            // is never reused for this route.
            peer.group_key = t.group;
            peer.client_cert_key = t.material.client.clone();
            peer.options.ca = t.material.ca.clone();
        }
        let o = &mut peer.options;
        if tls && !verified.is_some_and(|t| t.verify) {
            o.verify_cert = false;
            o.verify_hostname = false;
        }
        if self.protocol.http2() {
            // h2c with prior knowledge in clear text; ALPN h2 only over TLS.
            o.set_http_version(2, 2);
        }
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

/// Per-request upstream attempt state, kept by the engine and updated through the policy.
#[derive(Debug, Default)]
pub struct Attempts {
    /// Endpoints tried so far (allocated only when a first attempt fails).
    pub tried: Vec<SocketAddr>,
    /// The current endpoint and its health record.
    pub current: Option<(SocketAddr, Arc<EndpointHealth>)>,
    /// The upstream answered: from here on a failure is never retried.
    pub responded: bool,
    /// Endpoints this request may try (the route's, from [`Endpoint::attempts`]); 0 until the
    /// first pick.
    pub max: usize,
    /// The route's retry conditions, and when the first attempt started (for
    /// `proxy-next-upstream-timeout`); set by the first [`Attempts::start`].
    pub retry_on: Option<RetryOn>,
    pub retry_until: Option<Instant>,
    /// The affinity key a retry moved the client to, for its new cookie.
    pub rekeyed: Option<u64>,
    /// The end of the route's whole-request timeout (Gateway API `timeouts.request`), set by
    /// the first attempt: no attempt starts or waits past it.
    pub deadline: Option<Instant>,
}

/// Why an attempt failed, as nginx's `proxy_next_upstream` tells failures apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Connecting, writing the request or reading the response head failed.
    Error,
    /// Connecting, writing the request or waiting for the response head timed out.
    Timeout,
    /// The response head was empty or invalid.
    InvalidHeader,
    /// The endpoint answered with this status.
    Status(u16),
}

impl Fault {
    /// The [`RetryOn`] condition that covers this fault.
    fn condition(self) -> Option<RetryOn> {
        match self {
            Fault::Error => Some(RetryOn::ERROR),
            Fault::Timeout => Some(RetryOn::TIMEOUT),
            Fault::InvalidHeader => Some(RetryOn::INVALID_HEADER),
            Fault::Status(code) => RetryOn::status(code),
        }
    }

    /// Whether the endpoint is to blame (nginx's `max_fails`): not for 403, 404 and 429.
    fn counts(self) -> bool {
        !matches!(self, Fault::Status(403 | 404 | 429))
    }
}

impl Attempts {
    /// Starts an attempt on `endpoint`.
    pub fn start(&mut self, endpoint: &Endpoint) {
        self.current = Some((endpoint.addr, endpoint.health.clone()));
        self.max = endpoint.attempts;
        if endpoint.rekey.is_some() {
            self.rekeyed = endpoint.rekey;
        }
        if self.retry_on.is_none() {
            self.retry_on = Some(endpoint.retry_on);
            self.retry_until = endpoint.retry_timeout.map(|t| Instant::now() + t);
            self.deadline = endpoint.deadline;
        }
    }

    /// Whether a response with `status` might be retried, so that the engine must hold it back
    /// until [`Policy::upstream_failed`] decides. False on routes that retry on no status.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on.is_some_and(|r| r.on_status(status))
    }

    /// Whether the request may go on to another endpoint after `fault`, the attempt budget
    /// aside: the route retries on it, the time limit allows another, and the request can be sent
    /// again — nothing of it reached the endpoint (`sent` false), or its method is idempotent
    /// (RFC 9110 9.2.2), or the route retries non-idempotent requests too.
    fn may_retry(&self, fault: Fault, sent: bool, idempotent: bool) -> bool {
        let on = self.retry_on.unwrap_or(RetryOn::PORTICO);
        !self.responded
            && fault.condition().is_some_and(|c| on.contains(c))
            && (!sent || idempotent || on.contains(RetryOn::NON_IDEMPOTENT))
            && self.retry_until.is_none_or(|t| Instant::now() < t)
            && self.deadline.is_none_or(|t| Instant::now() < t)
    }
}

/// The redirects an ingress-nginx route answers itself, in nginx's order: the other name of a
/// `from-to-www-redirect` host (its own server block), `app-root` (server rewrite phase), the
/// missing trailing slash (location lookup), then `permanent-`/`temporal-redirect` (location
/// rewrite phase); the redirect to HTTPS (Lua, later in that phase) follows in `decide`.
fn nginx_answer(
    x: &NginxRoute,
    host: &str,
    path: &str,
    path_and_query: &str,
    tls: bool,
    request: &impl RequestView,
) -> Option<Answer> {
    let scheme = if tls { "https" } else { "http" };
    let redirect = |status: u16, location: String| Answer {
        status,
        body: bytes::Bytes::new(),
        location: Some(location),
        close: false,
        headers: Vec::new(),
    };
    if let Some(target) = &x.www_redirect {
        return Some(redirect(
            308,
            format!("{scheme}://{target}{path_and_query}"),
        ));
    }
    if let Some(root) = &x.app_root {
        if path == "/" {
            return Some(redirect(302, format!("{scheme}://{host}{root}")));
        }
    }
    if let Some(p) = &x.slash_redirect {
        if path == p {
            let query = path_and_query.get(path.len()..).unwrap_or("");
            return Some(redirect(301, format!("{scheme}://{host}{p}/{query}")));
        }
    }
    if let Some(cors) = &x.cors {
        // The CORS preflight, answered in the location's rewrite phase (before its redirect
        // and the access checks), when the origin is allowed.
        if request.method() == b"OPTIONS" {
            if let Some(mut headers) = cors.headers(request.header("origin")) {
                headers.push((
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain charset=UTF-8"),
                ));
                return Some(Answer {
                    headers,
                    ..Answer::error(204, "")
                });
            }
        }
    }
    if let Some((template, code)) = &x.redirect {
        let caps = x.regex.as_ref().and_then(|r| r.regex.captures(path));
        let mut location = String::new();
        template.expand(
            |g| {
                caps.as_ref()
                    .and_then(|c| c.get(g))
                    .map(|m| m.as_str().to_string())
            },
            &mut location,
        );
        return Some(redirect(*code, location));
    }
    None
}

/// The upstream request of a Gateway API rule: `URLRewrite` (path with the client's query,
/// Host), then the rule's and the chosen backend's `RequestHeaderModifier`s.
fn gateway_edits(
    gw: &crate::routing::gateway::plane::GatewayRoute,
    routed: &Routed,
    path: &str,
    query: Option<&str>,
) -> Edits {
    use crate::routing::gateway::plane::GatewayAction;
    let GatewayAction::Forward(f) = &gw.action else {
        return Edits::default();
    };
    let mut edits = Edits::default();
    if let Some(r) = &f.rewrite {
        if let Some(p) = &r.path {
            let mut target = crate::routing::gateway::actions::rewrite_path(p, path);
            if let Some(q) = query {
                target.push('?');
                target.push_str(q);
            }
            edits.target = Some(target);
        }
        edits.host = r
            .hostname
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok());
    }
    if let Some(b) = f.backends.get(usize::from(routed.backend)) {
        b.request_headers.to_edits(&mut edits.set, &mut edits.add);
    }
    edits
}

/// The client's address as the forwarding fields carry it.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    /// The client IP, for `X-Forwarded-For` and `X-Real-IP`.
    pub ip: HeaderValue,
    /// The listener's port, for `X-Forwarded-Port`.
    pub port: HeaderValue,
    /// The client is a trusted proxy: its own forwarding fields are kept.
    pub trusted: bool,
}

/// The forwarding headers for an upstream request, in the order they are sent.
pub type Forwarded = [(&'static str, HeaderValue); 5];

impl Policy {
    /// Decides what to do with a request from its head. `host` is the authority of the request
    /// line or else the `Host` header; `declared_len` the Content-Length, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        plane: &DataPlane,
        host: &str,
        path: &str,
        path_and_query: &str,
        tls: bool,
        declared_len: Option<u64>,
        request: &impl RequestView,
    ) -> Decision {
        if let Some(g) = plane.routes.gateways() {
            // A Gateway socket of its own is answered by Gateway routes only; on the Ingress
            // listener, a request no Gateway route matches goes on to the Ingress routes.
            if let Some(local) = request.local_addr() {
                if let Some(shared) = g.socket(local) {
                    let decided = self.decide_gateway(
                        plane,
                        g,
                        local,
                        host,
                        path,
                        path_and_query,
                        tls,
                        declared_len,
                        request,
                    );
                    match decided {
                        Some(d) => return d,
                        None if !shared => {
                            return Decision::Answer {
                                route: None,
                                answer: Answer::error(404, "no route for this host and path\n"),
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        let raw_host = host;
        let host = normalize_request_host(host);
        let found = plane.routes.lookup(&host, path);
        if plane.routes.nginx_paths() {
            // nginx routes on the decoded, normalised path. A request that would reach another
            // route (or none) that way than on its raw form is refused: served raw, it could
            // pass a path-scoped allowlist that nginx would have applied.
            let refuse = match normalize_path(path) {
                Ok(None) => false,
                Ok(Some(normal)) => {
                    plane.routes.lookup(&host, &normal).map(|r| r.id) != found.map(|r| r.id)
                }
                Err(_) => true,
            };
            if refuse {
                return Decision::Answer {
                    route: found.map(|r| r.id),
                    answer: Answer {
                        close: true,
                        ..Answer::error(400, "the normalised path routes elsewhere\n")
                    },
                };
            }
        }
        let Some(route) = found else {
            return Decision::Answer {
                route: None,
                answer: Answer::error(404, "no route for this host and path\n"),
            };
        };
        let id = Some(route.id);
        if let Some(x) = &route.nginx {
            if let Some(answer) = nginx_answer(x, raw_host, path, path_and_query, tls, request) {
                return Decision::Answer { route: id, answer };
            }
        }
        if let Some(port) = self
            .https_redirect_port
            .filter(|_| route.redirect_https && !tls)
        {
            // The port of the plain-HTTP request is not the HTTPS one: replace it.
            let location = match port {
                443 => format!("https://{host}{path_and_query}"),
                port => format!("https://{host}:{port}{path_and_query}"),
            };
            return Decision::Answer {
                route: id,
                answer: Answer {
                    status: route.https_redirect_code,
                    body: bytes::Bytes::new(),
                    location: Some(location),
                    close: false,
                    headers: Vec::new(),
                },
            };
        }
        if let Some((x, l)) = route.nginx.as_ref().and_then(|x| {
            let l = x.rate_limit.as_ref().filter(|l| !l.rates.is_empty())?;
            Some((x, l))
        }) {
            // nginx's preaccess phase (limit_req), before the lists: per client IP.
            if let Some(ip) = request
                .client_ip(x.trusted.as_deref())
                .filter(|ip| !l.allowlist.iter().any(|c| c.contains(*ip)))
            {
                let now = std::time::Instant::now();
                if !l.rates.iter().all(|r| l.limiter.allow(ip, *r, now)) {
                    return Decision::Answer {
                        route: id,
                        answer: Answer::error(l.req_status, "too many requests\n"),
                    };
                }
            }
        }
        if let Some(x) = route
            .nginx
            .as_ref()
            .filter(|x| x.allow.is_some() || x.deny.is_some())
        {
            // ingress-nginx's access phase, after its redirects: the real client IP against the
            // lists. An IP that cannot be told is refused.
            let ip = request.client_ip(x.trusted.as_deref());
            let allowed = ip.is_some_and(|ip| {
                x.allow
                    .as_ref()
                    .is_none_or(|l| l.iter().any(|c| c.contains(ip)))
                    && !x
                        .deny
                        .as_ref()
                        .is_some_and(|l| l.iter().any(|c| c.contains(ip)))
            });
            if !allowed {
                return Decision::Answer {
                    route: id,
                    answer: Answer::error(403, "forbidden\n"),
                };
            }
        }
        if let Some(auth) = route.nginx.as_ref().and_then(|x| x.basic_auth.as_ref()) {
            // After the lists, in the same access phase (nginx's access module runs first).
            if !auth.users.check(request.header("authorization")) {
                return Decision::Answer {
                    route: id,
                    answer: Answer {
                        headers: vec![(http::header::WWW_AUTHENTICATE, auth.challenge.clone())],
                        ..Answer::error(401, "authorization required\n")
                    },
                };
            }
        }
        // A canary (ingress-nginx's alternative backend) takes the request once everything else
        // has let it through.
        let mut pool = match route.nginx.as_ref().and_then(|x| x.canary.as_ref()) {
            Some(c) if c.chooses(|h| request.header(h), |k| request.cookie(k)) => c.pool,
            _ => route.pool,
        };
        // ingress-nginx's default-backend annotation: when the rule's Service has no usable
        // endpoint.
        if let Some(fallback) = route.nginx.as_ref().and_then(|x| x.fallback_pool) {
            if plane.pools.get(pool).is_none_or(|p| p.is_empty()) {
                pool = fallback;
            }
        }
        if plane.pools.get(pool).is_none_or(|p| p.is_empty()) {
            return Decision::Answer {
                route: id,
                answer: Answer::error(503, "no usable endpoint for this backend\n"),
            };
        }
        let max_body = route.limits.max_body.unwrap_or(self.limits.max_body_size);
        if max_body > 0 && declared_len.is_some_and(|n| n > max_body) {
            return Decision::Answer {
                route: id,
                answer: Answer {
                    close: true,
                    ..Answer::error(413, "request body too large\n")
                },
            };
        }
        let sticky = route.nginx.as_ref().and_then(|x| x.affinity.as_ref());
        let (affinity, affinity_new) = match sticky {
            None => (None, false),
            Some(a) => match request
                .cookie(&a.name)
                .and_then(crate::routing::affinity::Affinity::parse)
            {
                Some(key) => (Some(key), false),
                None if a.persistent => (None, true),
                None => (Some(crate::routing::affinity::new_key()), true),
            },
        };
        Decision::Proxy(Routed {
            sticky: sticky.is_some(),
            affinity,
            affinity_new,
            route: route.id,
            pool,
            max_body,
            protocol: route.backend_protocol,
            edits: route.nginx.as_ref().is_some_and(|x| x.edits()),
            auth: route
                .nginx
                .as_ref()
                .is_some_and(|x| x.external_auth.is_some()),
            conns: route
                .nginx
                .as_ref()
                .and_then(|x| x.rate_limit.as_ref())
                .is_some_and(|l| l.connections.is_some()),
            errors: route
                .nginx
                .as_ref()
                .is_some_and(|x| x.error_pages.is_some()),
            mirror: false,
            backend: 0,
        })
    }

    /// [`Policy::decide`] for a request on a Gateway socket: the entry point of the local
    /// address, the listener and rule by the spec's precedence, then the rule's action (a
    /// redirect, an error, or a weighted backend). `None` when nothing matches (the caller
    /// answers 404, or asks the Ingress routes on a shared listener); 500 for an invalid
    /// backend's share; 503 for a valid backend without endpoints.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn decide_gateway(
        &self,
        plane: &DataPlane,
        g: &crate::routing::gateway::plane::GatewayPlane,
        local: SocketAddr,
        raw_host: &str,
        path: &str,
        path_and_query: &str,
        tls: bool,
        declared_len: Option<u64>,
        request: &impl RequestView,
    ) -> Option<Decision> {
        use crate::routing::gateway::actions::{redirect_location, RedirectFrom};
        use crate::routing::gateway::plane::GatewayAction;
        let entry = g.entry(local)?;
        let host = normalize_request_host(raw_host);
        let query = path_and_query.split_once('?').map(|(_, q)| q);
        let headers = GatewayHeaders(request);
        let view = crate::routing::gateway::RequestView {
            host: &host,
            method: std::str::from_utf8(request.method()).unwrap_or(""),
            path,
            query,
            headers: &headers,
        };
        let found = entry.table.lookup(&view)?;
        let (route, gw) = entry
            .routes
            .get(found.listener)
            .and_then(|l| l.get(found.rule))
            .and_then(|id| plane.routes.routes().get(*id))
            .and_then(|r| Some((r, r.gateway.as_ref()?)))?;
        let id = Some(route.id);
        let f = match &gw.action {
            GatewayAction::Redirect(r) => {
                let from = RedirectFrom {
                    scheme: if tls { "https" } else { "http" },
                    host: &host,
                    listener_port: gw.listener_port,
                    path,
                    query,
                };
                return Some(Decision::Answer {
                    route: id,
                    answer: Answer {
                        location: Some(redirect_location(r, &from)),
                        ..Answer::error(r.status, "")
                    },
                });
            }
            GatewayAction::Error(status) => {
                return Some(Decision::Answer {
                    route: id,
                    answer: Answer::error(*status, "this rule has no valid backend\n"),
                });
            }
            GatewayAction::Forward(f) => f,
        };
        let backend = f.pick();
        let Some(pool) = f.backends.get(backend).and_then(|b| b.pool) else {
            return Some(Decision::Answer {
                route: id,
                answer: Answer::error(500, "invalid backend reference\n"),
            });
        };
        if plane.pools.get(pool).is_none_or(|p| p.is_empty()) {
            return Some(Decision::Answer {
                route: id,
                answer: Answer::error(503, "no usable endpoint for this backend\n"),
            });
        }
        let max_body = self.limits.max_body_size;
        if max_body > 0 && declared_len.is_some_and(|n| n > max_body) {
            return Some(Decision::Answer {
                route: id,
                answer: Answer {
                    close: true,
                    ..Answer::error(413, "request body too large\n")
                },
            });
        }
        Some(Decision::Proxy(Routed {
            route: route.id,
            pool,
            max_body,
            protocol: route.backend_protocol,
            edits: f.edits(backend),
            auth: false,
            conns: false,
            sticky: false,
            affinity: None,
            affinity_new: false,
            errors: false,
            mirror: !f.mirrors.is_empty(),
            backend: backend as u16,
        }))
    }

    /// The changes to the upstream request of a route whose [`Routed::edits`] is set; `path` is
    /// the request's path, `query` what follows its `?`.
    pub fn edits(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        path: &str,
        query: Option<&str>,
    ) -> Edits {
        let route = plane.routes.routes().get(routed.route);
        if let Some(gw) = route.and_then(|r| r.gateway.as_ref()) {
            return gateway_edits(gw, routed, path, query);
        }
        let Some(x) = route.and_then(|r| r.nginx.as_ref()) else {
            return Edits::default();
        };
        let target = x.rewrite.as_ref().map(|t| {
            // nginx's `rewrite "(?i)<path>" <target> break;`: the whole path is replaced, the
            // groups come from the path's regex, and the client's query is appended.
            let caps = x.regex.as_ref().and_then(|r| r.regex.captures(path));
            let mut out = String::with_capacity(path.len() + 16);
            t.expand(
                |g| {
                    caps.as_ref()
                        .and_then(|c| c.get(g))
                        .map(|m| m.as_str().to_string())
                },
                &mut out,
            );
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            out
        });
        Edits {
            target,
            host: x.upstream_host.clone(),
            prefix: x.forwarded_prefix.clone(),
            drop_authorization: x.basic_auth.is_some(),
            set: Vec::new(),
            add: Vec::new(),
        }
    }

    /// Whether requests of `route` are written to the access log (ingress-nginx's
    /// `enable-access-log`).
    pub fn logs(&self, plane: Option<&DataPlane>, route: Option<usize>) -> bool {
        self.access_log != AccessLog::Off
            && plane
                .zip(route)
                .and_then(|(p, r)| p.routes.routes().get(r))
                .and_then(|r| r.nginx.as_ref())
                .and_then(|x| x.access_log)
                .unwrap_or(true)
    }

    /// Picks the endpoint for the next attempt: healthy endpoints not tried yet; failing that,
    /// any endpoint not tried yet; failing that, any (a pool whose endpoints all failed still
    /// gets a chance). `None` when the pool is empty.
    ///
    /// The pool is the newest snapshot's, not the request's: an endpoint removed by a snapshot
    /// published while the request waited (for its body, or before a retry) is never chosen.
    pub fn pick(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        attempts: &Attempts,
    ) -> Option<Endpoint> {
        let tried = &attempts.tried[..];
        let route = plane.routes.routes().get(routed.route)?;
        let latest;
        let pool = if self.shared.latest_generation() == plane.generation {
            plane.pools.get(routed.pool)?
        } else {
            latest = self.shared.load();
            let old = plane.pools.get(routed.pool)?;
            latest
                .pools
                .iter()
                .find(|p| p.service == old.service && p.port == old.port)?
        };
        let mut rekey = None;
        let chosen = if routed.sticky {
            route
                .nginx
                .as_ref()
                .and_then(|x| x.affinity.as_ref())
                .and_then(|a| {
                    let usable = |u: &&crate::upstream::Upstream| u.health.is_available_now();
                    let eps = pool.endpoints();
                    let winner = |key| {
                        eps.iter()
                            .enumerate()
                            .filter(|(_, u)| usable(u))
                            .max_by_key(|(_, u)| crate::routing::affinity::score(key, u.addr))
                            .map(|(i, _)| i)
                    };
                    let key = match (tried.is_empty(), a.change_on_failure) {
                        // session-cookie-change-on-failure: the retry goes elsewhere. Balanced,
                        // as ingress-nginx does: new random keys until one's endpoint has not
                        // failed (20 at most); the cookie then names that key.
                        (false, true) if !a.persistent => {
                            return (0..20).find_map(|_| {
                                let key = crate::routing::affinity::new_key();
                                let i = winner(key).filter(|i| !tried.contains(&eps[*i].addr))?;
                                rekey = Some(key);
                                Some(i)
                            });
                        }
                        (false, true) => return None,
                        // First attempts, and retries without change-on-failure: the cookie's
                        // endpoint (again), while it is usable.
                        _ => routed.affinity?,
                    };
                    let pos = if a.persistent {
                        eps.iter().position(|u| {
                            usable(&u) && crate::routing::affinity::token(u.addr) == key
                        })
                    } else {
                        winner(key)
                    };
                    pos
                })
        } else {
            None
        };
        let index = chosen
            .or_else(|| pool.pick(|u| u.health.is_available_now() && !tried.contains(&u.addr)))
            .or_else(|| pool.pick(|u| !tried.contains(&u.addr)))
            .or_else(|| pool.pick(|_| true))?;
        let upstream = pool.endpoints().get(index)?;
        let limits = &route.limits;
        let mut connect_timeout = limits
            .connect_timeout
            .unwrap_or(self.upstream.connect_timeout);
        let mut read_timeout = limits.read_timeout.unwrap_or(self.upstream.read_timeout);
        let mut write_timeout = limits.send_timeout.unwrap_or(self.upstream.write_timeout);
        // A whole-request deadline (Gateway API `timeouts.request`): no wait of this attempt
        // lasts past it, so the response head is late at the deadline (504).
        let deadline = attempts.deadline.or_else(|| {
            limits
                .request_timeout
                .map(|t| std::time::Instant::now() + t)
        });
        if let Some(d) = deadline {
            let left = d
                .saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(1));
            connect_timeout = connect_timeout.min(left);
            read_timeout = read_timeout.min(left);
            write_timeout = write_timeout.min(left);
        }
        Some(Endpoint {
            addr: upstream.addr,
            health: upstream.health.clone(),
            protocol: route.backend_protocol,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout: self.upstream.idle_timeout,
            deadline,
            tls: route.nginx.as_ref().and_then(|x| x.upstream_tls.clone()),
            attempts: limits
                .upstream_attempts
                .unwrap_or(self.limits.upstream_attempts),
            retry_on: limits.retry_on.unwrap_or(RetryOn::PORTICO),
            retry_timeout: limits.retry_timeout,
            rekey,
        })
    }

    /// Whether `addr`, picked for a request that routed with `plane`, is still an endpoint of its
    /// pool in the newest snapshot. Checked once the upstream connection is ready, so that a
    /// request that was connecting (or waiting for a pooled connection) when the endpoint was
    /// removed sends nothing to it and picks again. One atomic load while nothing was published.
    pub fn still_serves(&self, plane: &DataPlane, routed: &Routed, addr: SocketAddr) -> bool {
        if self.shared.latest_generation() == plane.generation {
            return true;
        }
        let latest = self.shared.load();
        let Some(old) = plane.pools.get(routed.pool) else {
            return false;
        };
        latest
            .pools
            .iter()
            .find(|p| p.service == old.service && p.port == old.port)
            .is_some_and(|p| p.endpoints().iter().any(|u| u.addr == addr))
    }

    /// Records a failure of the current endpoint (passive health, ejection) and says whether
    /// the request goes on to another endpoint: see [`Attempts::may_retry`] and the budget.
    pub fn upstream_failed(
        &self,
        a: &mut Attempts,
        fault: Fault,
        sent: bool,
        idempotent: bool,
    ) -> bool {
        let retry = a.may_retry(fault, sent, idempotent);
        if let Some((addr, health)) = &a.current {
            if fault.counts() {
                if let Some(time) = health.record_failure(now_ms()) {
                    tracing::warn!(upstream = %addr, ejected_for = ?time, "endpoint ejected after repeated failures");
                }
            }
            a.tried.push(*addr);
        }
        let max = match a.max {
            0 => self.limits.upstream_attempts,
            n => n,
        };
        retry && a.tried.len() < max
    }

    /// Whether a response with `status` goes on to another endpoint instead of to the client
    /// (`proxy-next-upstream http_502` …); if so, the failure is recorded as by
    /// [`Policy::upstream_failed`]. A response that is not retried is the client's, as in nginx.
    pub fn retry_status(&self, a: &mut Attempts, status: u16, idempotent: bool) -> bool {
        let max = match a.max {
            0 => self.limits.upstream_attempts,
            n => n,
        };
        let fault = Fault::Status(status);
        a.may_retry(fault, true, idempotent)
            && a.tried.len() + 1 < max
            && self.upstream_failed(a, fault, true, idempotent)
    }

    /// Records that the current endpoint answered.
    pub fn upstream_answered(&self, a: &mut Attempts) {
        if a.responded {
            return;
        }
        a.responded = true;
        if let Some((_, health)) = &a.current {
            health.record_success();
        }
    }

    /// The affinity cookie to set on a response from `addr` (ingress-nginx's `affinity: cookie`):
    /// for a new balanced key, or when a persistent cookie does not name `addr` (none, or a pod
    /// that is gone or ejected: the client was re-balanced).
    pub fn affinity_cookie(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        attempts: &Attempts,
        tls: bool,
        user_agent: Option<&[u8]>,
    ) -> Option<HeaderValue> {
        if !routed.sticky {
            return None;
        }
        let addr = attempts.current.as_ref()?.0;
        let a = plane
            .routes
            .routes()
            .get(routed.route)?
            .nginx
            .as_ref()?
            .affinity
            .as_ref()?;
        let key = if a.persistent {
            let token = crate::routing::affinity::token(addr);
            if routed.affinity == Some(token) {
                return None;
            }
            token
        } else if let Some(key) = attempts.rekeyed {
            key
        } else if routed.affinity_new {
            routed.affinity?
        } else {
            return None;
        };
        HeaderValue::from_str(&a.set_cookie(key, tls, user_agent)).ok()
    }

    /// Takes one of the route's concurrent requests for the client (ingress-nginx's
    /// `limit-connections`), held until the request ends; the answer when all are taken.
    pub fn enter(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        request: &impl RequestView,
    ) -> Result<Option<crate::routing::limit::Permit>, Answer> {
        let Some((x, l, max)) = plane.routes.routes().get(routed.route).and_then(|r| {
            let x = r.nginx.as_ref()?;
            let l = x.rate_limit.as_ref()?;
            Some((x, l, l.connections?))
        }) else {
            return Ok(None);
        };
        let Some(ip) = request
            .client_ip(x.trusted.as_deref())
            .filter(|ip| !l.allowlist.iter().any(|c| c.contains(*ip)))
        else {
            return Ok(None);
        };
        match l.limiter.enter(ip, max) {
            Some(permit) => Ok(Some(permit)),
            None => Err(Answer::error(l.conn_status, "too many connections\n")),
        }
    }

    /// Asks the route's external auth service whether the request may pass (ingress-nginx's
    /// `auth-url`, nginx's `auth_request`): a sub-request with the client's fields and no body,
    /// plus `X-Original-URL`, `X-Original-Method`, `X-Auth-Request-Redirect`, `X-Real-IP` and
    /// `X-Forwarded-For`. A 2xx admits it; 401 and 403 go back to the client (401 with the
    /// service's `WWW-Authenticate`, or a redirect to `auth-signin`); anything else, an
    /// unreachable service or one slower than the route's read timeout, is a 500.
    /// Sends the copies of a request that a Gateway API rule's `RequestMirror`s ask for (those
    /// whose fraction this request falls in), each to one endpoint of its backend, and drops
    /// their answers; returns at once (the copies are sent by their own tasks, bounded by the
    /// route's connect and read timeouts). A copy is the upstream request: the client's method,
    /// target and fields (`target` and `edits`: after `URLRewrite` and the header modifiers),
    /// `X-Forwarded-For`, and the body when it is held whole (`None`: a streamed body, not
    /// held: the copy is skipped and counted).
    #[allow(clippy::too_many_arguments)]
    pub fn mirror(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        request: &impl RequestView,
        host: &str,
        target: &str,
        edits: Option<&Edits>,
        client: Option<IpAddr>,
        body: Option<bytes::Bytes>,
    ) {
        use crate::routing::gateway::plane::GatewayAction;
        let Some(route) = plane.routes.routes().get(routed.route) else {
            return;
        };
        let Some(GatewayAction::Forward(f)) = route.gateway.as_ref().map(|g| &g.action) else {
            return;
        };
        let counter = &self.shared.metrics.mirror_requests;
        for m in f.mirrors.iter().filter(|m| m.fires()) {
            let Some(body) = body.clone() else {
                counter.with_label_values(&["skipped"]).inc();
                continue;
            };
            let Some(upstream) = plane.pools.get(m.pool).and_then(|pool| {
                let i = pool
                    .pick(|u| u.health.is_available_now())
                    .or_else(|| pool.pick(|_| true))?;
                pool.endpoints().get(i)
            }) else {
                counter.with_label_values(&["failed"]).inc();
                continue;
            };
            let Ok(method) = reqwest::Method::from_bytes(request.method()) else {
                counter.with_label_values(&["failed"]).inc();
                continue;
            };
            let mut skip: Vec<&str> = vec!["host", "x-forwarded-for"];
            if let Some(e) = edits {
                skip.extend(e.set.iter().map(|(n, _)| n.as_str()));
            }
            let mut headers = sub_request_fields(request, &skip);
            let host = edits
                .and_then(|e| e.host.clone())
                .or_else(|| HeaderValue::from_str(host).ok());
            if let Some(h) = host {
                headers.insert(http::header::HOST, h);
            }
            if let Some(e) = edits {
                for (name, value) in &e.set {
                    if let Some(v) = value {
                        headers.insert(name.clone(), v.clone());
                    }
                }
                for (name, value) in &e.add {
                    headers.append(name.clone(), value.clone());
                }
            }
            if let Some(ip) = client {
                if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                    headers.insert("x-forwarded-for", v);
                }
            }
            let limits = &route.limits;
            let timeout = limits
                .connect_timeout
                .unwrap_or(self.upstream.connect_timeout)
                + limits.read_timeout.unwrap_or(self.upstream.read_timeout);
            let send = self
                .auth_client
                .request(method, format!("http://{}{target}", upstream.addr))
                .headers(headers)
                .body(body)
                .timeout(timeout)
                .send();
            let counter = counter.clone();
            let (addr, route_key) = (upstream.addr, route.ingress.clone());
            tokio::spawn(async move {
                match send.await {
                    Ok(_) => counter.with_label_values(&["answered"]).inc(),
                    Err(e) => {
                        tracing::debug!(upstream = %addr, route = %route_key, error = %e, "mirror request failed");
                        counter.with_label_values(&["failed"]).inc();
                    }
                }
            });
        }
    }

    /// Whether an answer with `status` on `route` is replaced by an error page
    /// (ingress-nginx's `custom-http-errors`).
    pub fn error_page_for(&self, plane: &DataPlane, route: Option<usize>, status: u16) -> bool {
        route
            .and_then(|r| plane.routes.routes().get(r))
            .and_then(|r| r.nginx.as_ref()?.error_pages.as_ref())
            .is_some_and(|e| e.codes.contains(&status))
    }

    /// The default backend's answer in place of `status` on `route`: as ingress-nginx's error
    /// location asks it, with the client's method and fields (no body), the path `/`, and
    /// `X-Code`, `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`,
    /// `X-Service-Name`, `X-Service-Port` and `X-Request-ID`. Its status, fields and body reach
    /// the client unchanged (bodies up to 1 MiB). Without a default backend the answer is
    /// Portico's 404, as ingress-nginx's built-in default backend's; a default backend without
    /// endpoints is a 503, one that fails a 502.
    #[allow(clippy::too_many_arguments)]
    pub async fn error_page(
        &self,
        plane: &DataPlane,
        route: usize,
        status: u16,
        request: &impl RequestView,
        host: &str,
        request_uri: &str,
        client: Option<IpAddr>,
    ) -> Answer {
        const MAX_PAGE: usize = 1 << 20;
        let Some((r, pages)) = plane
            .routes
            .routes()
            .get(route)
            .and_then(|r| Some((r, r.nginx.as_ref()?.error_pages.as_ref()?)))
        else {
            return Answer::error(status, "");
        };
        let Some(pool) = pages
            .pool
            .or(plane.routes.error_backend())
            .and_then(|p| plane.pools.get(p))
        else {
            return Answer::error(404, "default backend - 404\n");
        };
        let Some(upstream) = pool
            .pick(|u| u.health.is_available_now())
            .or_else(|| pool.pick(|_| true))
            .and_then(|i| pool.endpoints().get(i))
        else {
            return Answer::error(503, "no usable endpoint for the default backend\n");
        };
        let failed = |why: &str| {
            tracing::warn!(upstream = %upstream.addr, route = %r.ingress, status, error = why, "error page failed; answering 502");
            Answer::error(502, "")
        };
        let Ok(method) = reqwest::Method::from_bytes(request.method()) else {
            return failed("bad method");
        };
        let mut headers = sub_request_fields(request, &["x-forwarded-for", "x-request-id"]);
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set("host", host);
        set("x-code", &status.to_string());
        let accept = request.header("accept").unwrap_or_default();
        set("x-format", std::str::from_utf8(accept).unwrap_or_default());
        set("x-original-uri", request_uri);
        let id = match request.header("x-request-id") {
            Some(id) => String::from_utf8_lossy(id).into_owned(),
            None => format!(
                "{:016x}{:016x}",
                crate::routing::affinity::new_key(),
                crate::routing::affinity::new_key()
            ),
        };
        set("x-request-id", &id);
        if let Some(ip) = client {
            set("x-forwarded-for", &ip.to_string());
        }
        for (name, value) in &pages.fields {
            headers.insert(name.clone(), value.clone());
        }
        let limits = &r.limits;
        let timeout = limits
            .connect_timeout
            .unwrap_or(self.upstream.connect_timeout)
            + limits.read_timeout.unwrap_or(self.upstream.read_timeout);
        let url = format!("http://{}/", upstream.addr);
        let fetch = async {
            let mut response = self
                .auth_client
                .request(method, &url)
                .headers(headers)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_PAGE {
                    return Err("the error page is over 1 MiB".to_string());
                }
                body.extend_from_slice(&chunk);
            }
            Ok((response.status().as_u16(), response.headers().clone(), body))
        };
        let (code, fields, body) = match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return failed(&e),
            Err(_) => return failed("timed out"),
        };
        const HOP: &[&str] = &[
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
            "date",
            "server",
        ];
        Answer {
            status: code,
            body: body.into(),
            location: None,
            close: false,
            headers: fields
                .iter()
                .filter(|(n, _)| !HOP.contains(&n.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn authorize(
        &self,
        plane: &DataPlane,
        routed: &Routed,
        request: &impl RequestView,
        tls: bool,
        host: &str,
        request_uri: &str,
        client: Option<IpAddr>,
    ) -> Result<AuthGrant, Answer> {
        let Some((route, auth)) = plane.routes.routes().get(routed.route).and_then(|r| {
            let a = r.nginx.as_ref()?.external_auth.as_ref()?;
            Some((r, a))
        }) else {
            return Ok(AuthGrant::default());
        };
        let scheme = if tls { "https" } else { "http" };
        let url = auth.url.expand(host, scheme, request_uri);
        let method = auth
            .method
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or_else(|| request.method());
        let failed = |why: &str| {
            tracing::warn!(auth_url = %url, route = %route.ingress, error = why, "external auth failed; answering 500");
            self.shared
                .metrics
                .auth_requests
                .with_label_values(&["error"])
                .inc();
            Answer::error(500, "authentication service failed\n")
        };
        let Ok(method) = reqwest::Method::from_bytes(method) else {
            return Err(failed("bad method"));
        };
        let mut headers = sub_request_fields(
            request,
            &[
                "host",
                "x-original-url",
                "x-original-method",
                "x-auth-request-redirect",
                "x-sent-from",
                "x-real-ip",
                "x-forwarded-for",
            ],
        );
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set("x-original-url", &format!("{scheme}://{host}{request_uri}"));
        set(
            "x-original-method",
            std::str::from_utf8(request.method()).unwrap_or(""),
        );
        set("x-sent-from", "nginx-ingress-controller");
        set("x-auth-request-redirect", request_uri);
        if let Some(ip) = client {
            set("x-real-ip", &ip.to_string());
            set("x-forwarded-for", &ip.to_string());
        }
        let limits = &route.limits;
        let timeout = limits.read_timeout.unwrap_or(self.upstream.read_timeout);
        let started = std::time::Instant::now();
        let sent = self
            .auth_client
            .request(method, &url)
            .headers(headers)
            .timeout(timeout)
            .send()
            .await;
        self.shared
            .metrics
            .auth_duration
            .observe(started.elapsed().as_secs_f64());
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Err(failed(&e.to_string())),
        };
        let status = response.status().as_u16();
        let h = response.headers();
        match status {
            200..=299 => {
                self.shared
                    .metrics
                    .auth_requests
                    .with_label_values(&["allowed"])
                    .inc();
                let upstream = auth
                    .response_headers
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .map(|n| {
                        let v = h.get(&n).cloned();
                        (n, v)
                    })
                    .collect();
                let cookies = h
                    .get_all(http::header::SET_COOKIE)
                    .iter()
                    .cloned()
                    .collect();
                Ok(AuthGrant { upstream, cookies })
            }
            401 | 403 => {
                self.shared
                    .metrics
                    .auth_requests
                    .with_label_values(&["denied"])
                    .inc();
                if let (401, Some(signin)) = (status, &auth.signin) {
                    let mut location = signin.expand(host, scheme, request_uri);
                    let param = &auth.signin_param;
                    let has_param = location.split_once('?').is_some_and(|(_, q)| {
                        q.split('&').any(|kv| kv.split('=').next() == Some(param))
                    });
                    if !has_param {
                        // ingress-nginx's `rd=$pass_access_scheme://$http_host$escaped_request_uri`.
                        location.push(if location.contains('?') { '&' } else { '?' });
                        location.push_str(&format!("{param}={scheme}://{host}"));
                        crate::model::escape_component(request_uri, &mut location);
                    }
                    return Err(Answer {
                        location: Some(location),
                        ..Answer::error(302, "")
                    });
                }
                let mut answer = Answer::error(
                    status,
                    if status == 401 {
                        "authorization required\n"
                    } else {
                        "forbidden\n"
                    },
                );
                if let Some(challenge) = h.get(http::header::WWW_AUTHENTICATE) {
                    answer
                        .headers
                        .push((http::header::WWW_AUTHENTICATE, challenge.clone()));
                }
                Err(answer)
            }
            other => Err(failed(&format!("the auth service answered {other}"))),
        }
    }

    /// The client's IP as ingress-nginx's real-IP module finds it: the peer, unless the peer is
    /// a trusted proxy (`--trusted-proxies`); then the rightmost `X-Forwarded-For` address that
    /// is not a trusted proxy (nginx's `real_ip_recursive on`), reading the header's lines
    /// from the last one (`lines`, in the order received). `None` when an entry cannot be read:
    /// the caller must then refuse whatever depends on the client.
    /// `trusted` replaces `--trusted-proxies` (ingress-nginx's `proxy-real-ip-cidr`).
    pub fn real_ip<'a>(
        &self,
        peer: Option<IpAddr>,
        lines: impl DoubleEndedIterator<Item = &'a [u8]>,
        trusted: Option<&[Cidr]>,
    ) -> Option<IpAddr> {
        let trusts = |ip: IpAddr| match trusted {
            Some(list) => list.iter().any(|c| c.contains(ip)),
            None => self.trusts(Some(ip)),
        };
        let peer = peer?;
        if !trusts(peer) {
            return Some(peer);
        }
        let mut last = peer;
        for line in lines.rev() {
            let line = std::str::from_utf8(line).ok()?;
            for entry in line.rsplit(',') {
                let ip: IpAddr = entry.trim().parse().ok()?;
                last = ip;
                if !trusts(ip) {
                    return Some(ip);
                }
            }
        }
        Some(last)
    }

    /// Whether the client's own forwarding headers are kept (it is a trusted proxy).
    pub fn trusts(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| self.trusted_proxies.iter().any(|c| c.contains(ip)))
    }

    /// What the forwarding fields need of a client connection, computed once per connection.
    pub fn client_addr(&self, client: Option<IpAddr>, local_port: Option<u16>) -> ClientAddr {
        ClientAddr {
            ip: client.map(ip_value).unwrap_or(HeaderValue::from_static("")),
            port: local_port
                .map(HeaderValue::from)
                .unwrap_or(HeaderValue::from_static("")),
            trusted: self.trusts(client),
        }
    }

    /// `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
    /// `X-Forwarded-Port` for the upstream request.
    ///
    /// Like ingress-nginx: without a trusted proxy in front, the client's own forwarding headers
    /// are replaced, never appended to. `prior` reads the client's header of a name (called only
    /// for a trusted client); `host` is the request's host as sent.
    pub fn forwarded(
        &self,
        client: &ClientAddr,
        tls: bool,
        host: HeaderValue,
        prior: impl Fn(&'static str) -> Option<HeaderValue>,
    ) -> Forwarded {
        let kept = |name| if client.trusted { prior(name) } else { None };
        let ip = client.ip.clone();
        let xff = match kept("x-forwarded-for") {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| ip.clone())
            }
            None => ip.clone(),
        };
        let proto = kept("x-forwarded-proto").unwrap_or(HeaderValue::from_static(if tls {
            "https"
        } else {
            "http"
        }));
        let host = kept("x-forwarded-host").unwrap_or(host);
        let port = kept("x-forwarded-port").unwrap_or_else(|| client.port.clone());
        [
            ("x-forwarded-for", xff),
            ("x-real-ip", ip),
            ("x-forwarded-proto", proto),
            ("x-forwarded-host", host),
            ("x-forwarded-port", port),
        ]
    }

    /// The `Strict-Transport-Security` value for a response to a request over TLS on `route`,
    /// unless the backend set its own: the application knows its subdomains better than the
    /// Ingress. HSTS only means something over TLS (RFC 6797 section 7.2).
    pub fn hsts<'a>(
        &self,
        plane: &'a DataPlane,
        route: Option<usize>,
        tls: bool,
    ) -> Option<&'a Arc<str>> {
        if !tls {
            return None;
        }
        plane.routes.routes().get(route?)?.hsts.as_ref()
    }

    /// The header fields a route sets on a proxied response, replacing the backend's of the same
    /// names: ingress-nginx's `custom-headers`, and the CORS fields when the request's origin
    /// is allowed. `None` (and nothing read of the request) on a route without them.
    pub fn response_set<'a>(
        &self,
        plane: &'a DataPlane,
        route: Option<usize>,
        request: &impl RequestView,
    ) -> Option<Cow<'a, [(HeaderName, HeaderValue)]>> {
        let x = plane.routes.routes().get(route?)?.nginx.as_ref()?;
        let custom = x.response_headers.as_ref();
        let cors = x
            .cors
            .as_ref()
            .and_then(|c| c.headers(request.header("origin")));
        match (custom, cors) {
            (None, None) => None,
            (Some(c), None) => Some(Cow::Borrowed(&c[..])),
            (c, Some(mut cors)) => {
                if let Some(c) = c {
                    cors.extend(c.iter().cloned());
                }
                Some(Cow::Owned(cors))
            }
        }
    }

    /// A Gateway API route's `ResponseHeaderModifier`s for the backend that answered; `None`
    /// on every other route.
    pub fn gateway_response<'a>(
        &self,
        plane: &'a DataPlane,
        routed: &Routed,
    ) -> Option<&'a crate::routing::gateway::actions::CompiledEdits> {
        use crate::routing::gateway::plane::GatewayAction;
        let gw = plane.routes.routes().get(routed.route)?.gateway.as_ref()?;
        let GatewayAction::Forward(f) = &gw.action else {
            return None;
        };
        f.backends
            .get(usize::from(routed.backend))?
            .response_headers
            .as_ref()
    }

    /// The metric handles of a request's route (the unrouted set for none).
    pub fn metrics_for<'a>(
        &'a self,
        plane: Option<&'a DataPlane>,
        route: Option<usize>,
    ) -> &'a RouteMetrics {
        if !self.request_metrics {
            return &self.shared.metrics.disabled;
        }
        plane
            .zip(route)
            .and_then(|(p, i)| p.route_metrics.get(i))
            .map(|m| m.as_ref())
            .unwrap_or(&self.shared.metrics.unrouted)
    }

    /// The Ingress of a request's route, for the log.
    pub fn route_ingress(plane: Option<&DataPlane>, route: Option<usize>) -> Option<&ObjectKey> {
        plane?.routes.routes().get(route?).map(|r| &*r.ingress)
    }

    /// Writes the access log line of a finished request (if the access log is on).
    pub fn log(&self, e: &LogEntry<'_>) {
        super::access_log::emit(self.access_log, e);
    }
}

/// The fields of one access log line.
pub struct LogEntry<'a> {
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub took: Duration,
    pub upstream: Option<SocketAddr>,
    /// The Ingress of its route.
    pub route: Option<&'a ObjectKey>,
    pub error: &'a str,
}

/// The client address as a header value, formatted on the stack.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 45]; // the longest IPv6 text form
    let mut w = &mut buf[..];
    let len = match write!(w, "{ip}") {
        Ok(()) => 45 - w.len(),
        Err(_) => 0,
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static(""))
}
