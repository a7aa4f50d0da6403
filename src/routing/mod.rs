//! Routing: the compiled, immutable route table and its lookup.
//!
//! [`compile::compile`] builds a [`RouteTable`] and the endpoint pools from a
//! [`crate::model::Model`]; the proxy calls [`RouteTable::lookup`] once per request. Lookup hashes
//! the host once, then scans only that host's rules, which are sorted by precedence.

pub mod affinity;
pub mod basic_auth;
pub mod compile;
pub mod gateway;
pub mod host;
pub mod limit;
pub mod path;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{BackendProtocol, ObjectKey, RouteLimits, Template};
pub use compile::{
    compile, owned_ingresses, taken_ingresses, CompileOptions, Compiled, Flavor, GatewayOptions,
    NginxCompat, PoolSpec, Rejected,
};
pub use host::{normalize_request_host, HostMatch};
pub use path::PathMatch;

/// Hash maps keyed by configuration (hosts, services). foldhash is several times faster than
/// SipHash here, and its per-process random seed keeps lookups of client-chosen hosts safe.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// What a request is routed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of this route in [`RouteTable::routes`]; per-route data (metrics) is indexed by it.
    pub id: usize,
    /// The Ingress that defined the rule.
    pub ingress: Arc<ObjectKey>,
    /// The backend Service, for logs and metric labels.
    pub service: Arc<ObjectKey>,
    /// Index of the backend's pool in the snapshot.
    pub pool: usize,
    /// Answer plain-HTTP requests with a redirect to HTTPS (the host has TLS, and no opt-out).
    pub redirect_https: bool,
    /// Its code: 308, or ingress-nginx's `http-redirect-code`.
    pub https_redirect_code: u16,
    /// The Ingress's overrides of body size and upstream timeouts.
    pub limits: RouteLimits,
    /// The `Strict-Transport-Security` value added to responses over TLS, from the Ingress.
    pub hsts: Option<Arc<str>>,
    /// How to speak to the backend, from the Ingress.
    pub backend_protocol: BackendProtocol,
    /// What an Ingress taken with ingress-nginx's semantics adds; `None` on every other route,
    /// which pays one branch for it.
    pub nginx: Option<Arc<NginxRoute>>,
    /// A Gateway API rule's action; `None` on Ingress routes. For these routes `ingress` names
    /// the HTTPRoute, and `service`/`pool` its first valid backend.
    pub gateway: Option<Arc<gateway::plane::GatewayRoute>>,
}

/// The ingress-nginx behaviours of one route (one path of an Ingress in compatibility mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NginxRoute {
    /// The path's regex, whose groups fill `$1`..`$9` (regex hosts only).
    pub regex: Option<path::RegexPath>,
    /// `app-root`: a request for exactly `/` gets a 302 here.
    pub app_root: Option<String>,
    /// `permanent-redirect`/`temporal-redirect`: every request gets this redirect.
    pub redirect: Option<(Template, u16)>,
    /// `from-to-www-redirect`: this route only redirects (308) to the same URL on this host.
    pub www_redirect: Option<String>,
    /// A Prefix path ending in `/` (stored without it): a request for exactly this path gets a
    /// 301 to it with the slash, as nginx answers for a `location /path/`.
    pub slash_redirect: Option<String>,
    /// `rewrite-target`: the path sent upstream.
    pub rewrite: Option<Template>,
    /// `upstream-vhost`: the `Host` sent upstream.
    pub upstream_host: Option<http::HeaderValue>,
    /// `x-forwarded-prefix`, sent with a rewrite.
    pub forwarded_prefix: Option<http::HeaderValue>,
    /// `enable-access-log`.
    pub access_log: Option<bool>,
    /// `whitelist-source-range` (or the ConfigMap's): only these clients; 403 for others.
    pub allow: Option<Arc<[crate::model::Cidr]>>,
    /// `denylist-source-range` (or the ConfigMap's): 403 for these clients.
    pub deny: Option<Arc<[crate::model::Cidr]>>,
    /// The ConfigMap's `use-forwarded-headers` and `proxy-real-ip-cidr`: the peers whose
    /// `X-Forwarded-For` tells the client IP for the lists, instead of `--trusted-proxies`.
    pub trusted: Option<Arc<[crate::model::Cidr]>>,
    /// `proxy-ssl-*`: how connections to an HTTPS backend are verified.
    pub upstream_tls: Option<Arc<crate::tls::upstream::UpstreamTls>>,
    /// `custom-headers`: response headers set on every proxied response.
    pub response_headers: Option<ResponseHeaders>,
    /// `enable-cors`: the preflight answer and the fields of allowed origins' responses.
    pub cors: Option<Arc<RouteCors>>,
    /// `auth-type: basic`: the users, and the challenge of a 401.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// A canary Ingress's backend for part of this route's traffic.
    pub canary: Option<Arc<CanaryRoute>>,
    /// `auth-url` (or the ConfigMap's `global-auth-url`): the sub-request that admits a request.
    pub external_auth: Option<Arc<crate::model::ExternalAuthSpec>>,
    /// `limit-rps`, `limit-rpm`, `limit-connections`.
    pub rate_limit: Option<Arc<RouteLimit>>,
    /// `default-backend`: the pool that serves when the route's own has no usable endpoint.
    pub fallback_pool: Option<usize>,
    /// `affinity: cookie`.
    pub affinity: Option<Arc<affinity::Affinity>>,
    /// `custom-http-errors`: the answers the default backend replaces.
    pub error_pages: Option<Arc<ErrorPages>>,
}

/// ingress-nginx's `custom-http-errors` on a route: responses with these codes (the backend's,
/// and Portico's own when the backend fails) are replaced by the default backend's answer to a
/// request that tells it what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPages {
    pub codes: Vec<u16>,
    /// The Ingress's `default-backend` pool; else `--default-backend-service`'s.
    pub pool: Option<usize>,
    /// `X-Namespace`, `X-Ingress-Name`, `X-Service-Name`, `X-Service-Port`.
    pub fields: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A route's per-client limits, with the state they share across recompiles.
#[derive(Clone)]
pub struct RouteLimit {
    /// The route's key (its Ingress and path): the same key finds the same state again.
    pub key: String,
    pub rates: Vec<limit::Rate>,
    pub connections: Option<u32>,
    /// Clients never limited.
    pub allowlist: Vec<crate::model::Cidr>,
    /// The answers of a refused request (ingress-nginx's ConfigMap; 503 by default).
    pub req_status: u16,
    pub conn_status: u16,
    pub limiter: Arc<limit::Limiter>,
}

impl PartialEq for RouteLimit {
    fn eq(&self, o: &Self) -> bool {
        self.rates == o.rates
            && self.connections == o.connections
            && self.allowlist == o.allowlist
            && (self.req_status, self.conn_status) == (o.req_status, o.conn_status)
            && Arc::ptr_eq(&self.limiter, &o.limiter)
    }
}

impl Eq for RouteLimit {}

impl std::fmt::Debug for RouteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimit")
            .field("rates", &self.rates)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// A canary on a route: its pool, and ingress-nginx's rules for choosing it.
#[derive(Debug)]
pub struct CanaryRoute {
    /// The canary Ingress, for logs.
    pub ingress: Arc<crate::model::ObjectKey>,
    /// Index of the canary backend's pool in the snapshot.
    pub pool: usize,
    pub header: Option<String>,
    pub header_value: Option<String>,
    pub header_pattern: Option<regex::Regex>,
    pub cookie: Option<String>,
    pub weight: u64,
    /// ingress-nginx's weight total: `canary-weight-total` when above 100, else 100.
    pub total: u64,
    /// Requests decided by weight so far: the split is exact, `weight` of every `total`
    /// consecutive ones, rather than random.
    counter: std::sync::atomic::AtomicU64,
}

impl CanaryRoute {
    pub fn new(
        ingress: Arc<crate::model::ObjectKey>,
        pool: usize,
        spec: &crate::model::CanarySpec,
    ) -> Self {
        Self {
            ingress,
            pool,
            header: spec.header.clone(),
            header_value: spec.header_value.clone().filter(|v| !v.is_empty()),
            header_pattern: spec
                .header_pattern
                .as_deref()
                .filter(|p| !p.is_empty())
                .and_then(|p| regex::Regex::new(p).ok()),
            cookie: spec.cookie.clone(),
            weight: spec.weight,
            total: spec.weight_total.max(100),
            counter: Default::default(),
        }
    }

    /// Whether a request goes to the canary, as ingress-nginx's balancer decides it: the header
    /// (its value, else its pattern, else `always`/`never`), then the cookie (`always`/`never`),
    /// then the weight. `header` and `cookie` read the request.
    pub fn chooses<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        cookie: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> bool {
        if let Some(value) = self.header.as_deref().and_then(&header) {
            if let Some(want) = &self.header_value {
                if value == want.as_bytes() {
                    return true;
                }
            } else if let Some(pattern) = &self.header_pattern {
                if std::str::from_utf8(value).is_ok_and(|v| pattern.is_match(v)) {
                    return true;
                }
            } else if value == b"always" {
                return true;
            } else if value == b"never" {
                return false;
            }
        }
        if let Some(value) = self.cookie.as_deref().and_then(&cookie) {
            if value == b"always" {
                return true;
            } else if value == b"never" {
                return false;
            }
        }
        if self.weight == 0 {
            return false;
        }
        if self.weight >= self.total {
            return true;
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.total;
        // In u128: the weights come from the cluster and may be anything a u64 holds.
        let (n, w, t) = (
            u128::from(n),
            u128::from(self.weight),
            u128::from(self.total),
        );
        (n + 1) * w / t > n * w / t
    }
}

impl PartialEq for CanaryRoute {
    fn eq(&self, other: &Self) -> bool {
        self.ingress == other.ingress
            && self.pool == other.pool
            && self.header == other.header
            && self.header_value == other.header_value
            && self.header_pattern.as_ref().map(regex::Regex::as_str)
                == other.header_pattern.as_ref().map(regex::Regex::as_str)
            && self.cookie == other.cookie
            && (self.weight, self.total) == (other.weight, other.total)
    }
}

impl Eq for CanaryRoute {}

/// A route's basic authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    pub users: basic_auth::Users,
    /// `WWW-Authenticate: Basic realm="..."`.
    pub challenge: http::HeaderValue,
}

/// A route's CORS policy, its header values built once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCors {
    /// `None`: any origin, announced as `*` (ingress-nginx's default).
    pub origins: Option<Vec<crate::model::CorsOrigin>>,
    /// Allow-Credentials, Allow-Methods, Allow-Headers, Expose-Headers and Max-Age, in
    /// ingress-nginx's order (the ones it would not send left out).
    pub fields: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl RouteCors {
    /// Builds the fields; `None` if a value is not a header value (the grammar prevents it).
    pub fn new(c: &crate::model::Cors) -> Option<Self> {
        use http::header::*;
        let value = |v: &str| HeaderValue::from_str(v).ok();
        let mut fields = Vec::with_capacity(5);
        if c.credentials {
            fields.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        fields.push((ACCESS_CONTROL_ALLOW_METHODS, value(&c.methods)?));
        fields.push((ACCESS_CONTROL_ALLOW_HEADERS, value(&c.headers)?));
        if !c.expose.is_empty() {
            fields.push((ACCESS_CONTROL_EXPOSE_HEADERS, value(&c.expose)?));
        }
        fields.push((ACCESS_CONTROL_MAX_AGE, HeaderValue::from(c.max_age)));
        Some(Self {
            origins: c.origins.clone(),
            fields,
        })
    }

    /// The CORS fields for a request with this `Origin`: `None` when the origin is not allowed
    /// (nothing is added, and a preflight goes to the backend). With `*`, every request gets
    /// them, `Access-Control-Allow-Origin: *` included, as ingress-nginx sends them.
    pub fn headers(
        &self,
        origin: Option<&[u8]>,
    ) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
        let allow = match &self.origins {
            None => http::HeaderValue::from_static("*"),
            Some(list) => {
                let origin = origin?;
                if !list.iter().any(|o| o.matches(origin)) {
                    return None;
                }
                http::HeaderValue::from_bytes(origin).ok()?
            }
        };
        let mut out = Vec::with_capacity(self.fields.len() + 2);
        out.push((http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow));
        out.extend(self.fields.iter().cloned());
        Some(out)
    }
}

/// Response headers set (replacing the backend's of the same name) on a route's responses.
pub type ResponseHeaders = Arc<[(http::HeaderName, http::HeaderValue)]>;

/// What an Ingress in compatibility mode refers to, resolved once for all its paths.
#[derive(Clone, Default)]
pub struct NginxRefs {
    /// The Ingress's namespace, where what it refers to lives.
    pub namespace: String,
    /// The Ingress's name.
    pub ingress: String,
    /// The `proxy-ssl-secret`'s certificates.
    pub ssl: Option<crate::tls::upstream::SslMaterial>,
    /// The `custom-headers` ConfigMap's headers.
    pub response_headers: Option<ResponseHeaders>,
    /// The `auth-secret`'s users.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// What the Ingress is served without (an htpasswd line Portico cannot check), to report.
    pub warnings: Vec<String>,
    /// The `default-backend` Service's pool.
    pub fallback_pool: Option<usize>,
}

impl NginxRefs {
    /// The key of one path's limiter: its Ingress and path (nginx keeps a zone per location).
    pub fn ingress_path(&self, p: &crate::model::HttpPath) -> String {
        format!(
            "{}/{}:{:?}:{}",
            self.namespace, self.ingress, p.path_type, p.path
        )
    }
}

impl NginxRoute {
    /// Whether the upstream request is changed (path, Host or an added field).
    pub fn edits(&self) -> bool {
        self.rewrite.is_some()
            || self.upstream_host.is_some()
            || self.basic_auth.is_some()
            || self.external_auth.is_some()
    }
}

/// The rules of one host (or of the host-less rules), best first.
#[derive(Clone, Debug, Default)]
pub struct HostRules {
    rules: Vec<(PathMatch, usize)>,
}

impl HostRules {
    #[inline]
    fn find(&self, path: &str) -> Option<usize> {
        self.rules
            .iter()
            .find(|(m, _)| m.matches(path))
            .map(|(_, route)| *route)
    }

    fn push(&mut self, matcher: PathMatch, route: usize) {
        self.rules.push((matcher, route));
    }

    fn sort(&mut self) {
        // Stable: among equal matchers (only possible across hosts' merged duplicates, which the
        // compile step rejects) the older Ingress stays first.
        self.rules.sort_by(|a, b| b.0.cmp(&a.0));
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The immutable route table of one snapshot.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    precise: FastMap<String, HostRules>,
    wildcard: FastMap<String, HostRules>,
    any_host: HostRules,
    default_backend: Option<usize>,
    /// `--default-backend-service`'s pool: where error pages come from.
    pub(crate) error_backend: Option<usize>,
    /// Connections start with a PROXY protocol header, due within this time.
    pub(crate) proxy_protocol: Option<std::time::Duration>,
    routes: Vec<Route>,
    /// Some Ingress is served with ingress-nginx's semantics: nginx matches a path only after
    /// decoding and normalising it, so a request whose normalised path routes elsewhere is
    /// refused rather than let through on its raw form (see [`normalize_path`]).
    pub(crate) nginx_paths: bool,
    /// The state of the routes' per-client limits, by route key; the next compile takes over
    /// the entries of the routes it keeps.
    pub(crate) limiters: FastMap<String, Arc<limit::Limiter>>,
    /// The Gateway entry points; `None` without `--gateway-listen`.
    pub(crate) gateways: Option<Arc<gateway::plane::GatewayPlane>>,
}

/// A path nginx would refuse before routing (answered 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPath;

/// nginx's normalisation of a request path before it picks a location: `%XX` decoded, `//`
/// merged, `.` and `..` segments resolved. `None` when the path is already normal; `Err` when
/// nginx would answer 400 (a bad escape, an encoded NUL, not UTF-8 once decoded, `..` above
/// the root).
pub fn normalize_path(path: &str) -> Result<Option<String>, BadPath> {
    // One pass over the bytes: most paths have no `%`, `//` or `/.` and stop here.
    let bytes = path.as_bytes();
    let suspicious = bytes
        .iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' || (c == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'.'))));
    if !suspicious {
        return Ok(None);
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadPath)?;
            let hex = std::str::from_utf8(hex).map_err(|_| BadPath)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| BadPath)?;
            if b == 0 {
                return Err(BadPath);
            }
            decoded.push(b);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(BadPath)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // A trailing slash (or a trailing `.`/`..` segment) keeps the path a directory.
    if out.is_empty()
        || decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
    {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

impl RouteTable {
    /// Whether request paths must be checked against their normalised form.
    #[inline]
    pub fn nginx_paths(&self) -> bool {
        self.nginx_paths
    }

    /// Finds the route for a request. `host` must already be normalised with
    /// [`normalize_request_host`]; `path` is the URL path without the query.
    ///
    /// A precise host beats a wildcard, which beats the host-less rules; once a host is chosen,
    /// only its rules are considered, and a miss falls to the default backend.
    #[inline]
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        let rules = self
            .precise
            .get(host)
            .or_else(|| host::wildcard_suffix(host).and_then(|s| self.wildcard.get(s)))
            .unwrap_or(&self.any_host);
        rules
            .find(path)
            .or(self.default_backend)
            .and_then(|i| self.routes.get(i))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The Gateway entry points, with `--gateway-listen`.
    #[inline]
    pub fn gateways(&self) -> Option<&gateway::plane::GatewayPlane> {
        self.gateways.as_deref()
    }

    /// Whether connections must start with a PROXY protocol header, and its deadline
    /// (`--proxy-protocol`, or ingress-nginx's `use-proxy-protocol`).
    pub fn proxy_protocol(&self) -> Option<std::time::Duration> {
        self.proxy_protocol
    }

    /// `--default-backend-service`'s pool, if it exists.
    pub fn error_backend(&self) -> Option<usize> {
        self.error_backend
    }

    /// Number of distinct hosts (precise and wildcard) with rules.
    pub fn host_count(&self) -> usize {
        self.precise.len() + self.wildcard.len()
    }
}

#[cfg(test)]
mod normalize_tests {
    use super::{normalize_path, BadPath};

    #[test]
    fn paths_are_normalised_as_nginx_does() {
        assert_eq!(normalize_path("/a/b"), Ok(None));
        assert_eq!(normalize_path("/%61dmin"), Ok(Some("/admin".into())));
        assert_eq!(normalize_path("//admin//x"), Ok(Some("/admin/x".into())));
        assert_eq!(normalize_path("/pub/../admin"), Ok(Some("/admin".into())));
        assert_eq!(normalize_path("/a/./b/"), Ok(Some("/a/b/".into())));
        assert_eq!(normalize_path("/a/b/.."), Ok(Some("/a/".into())));
        assert_eq!(normalize_path("/a%2Fb"), Ok(Some("/a/b".into())));
        assert_eq!(normalize_path("/a%20b"), Ok(Some("/a b".into())));
        assert_eq!(normalize_path("/%2e%2e/x"), Err(BadPath));
        assert_eq!(normalize_path("/../x"), Err(BadPath));
        assert_eq!(normalize_path("/a%zz"), Err(BadPath));
        assert_eq!(normalize_path("/a%2"), Err(BadPath));
        assert_eq!(normalize_path("/a%00"), Err(BadPath));
        assert_eq!(normalize_path("/a%ff"), Err(BadPath));
    }
}

#[cfg(test)]
mod canary_tests {
    use super::CanaryRoute;
    use crate::model::{CanarySpec, ObjectKey};
    use std::sync::Arc;

    fn canary(weight: u64, weight_total: u64) -> CanaryRoute {
        let spec = CanarySpec {
            weight,
            weight_total,
            ..Default::default()
        };
        CanaryRoute::new(Arc::new(ObjectKey::new("ns", "c")), 0, &spec)
    }

    #[test]
    fn the_weight_split_is_exact_and_any_weight_is_safe() {
        let none = |_: &str| None;
        let c = canary(30, 100);
        let taken = (0..1000).filter(|_| c.chooses(none, none)).count();
        assert_eq!(taken, 300);
        // Totals of 100 or less count as 100 (ingress-nginx's Lua).
        let c = canary(1, 10);
        assert_eq!((0..100).filter(|_| c.chooses(none, none)).count(), 1);
        // Weights from the cluster may be anything a u64 holds: no overflow.
        let c = canary(u64::MAX / 2, u64::MAX);
        let taken = (0..1000).filter(|_| c.chooses(none, none)).count();
        assert!((450..=550).contains(&taken), "{taken}");
        assert!(canary(u64::MAX, u64::MAX).chooses(none, none));
        assert!(!canary(0, u64::MAX).chooses(none, none));
    }
}
