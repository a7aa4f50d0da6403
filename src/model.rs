//! Portico's own view of the cluster: plain data, with no Kubernetes and no Pingora types.
//!
//! Sources (the manifest directory, the Kubernetes watches) translate `k8s-openapi` objects into
//! these types at the edge (see [`crate::translate`]). The compile step
//! ([`crate::routing::compile`]) turns a [`Model`] into the immutable data plane.
//!
//! One exception, explained on [`GatewayApi`]: the Gateway API objects are kept as Portico's
//! own typed subset of their CRDs, and translated by the compile step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// An IP network (or one address): trusted proxies, allowlists, denylists.
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

/// `namespace/name` of an object. Cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The kinds of object Portico reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Ingress,
    IngressClass,
    Service,
    EndpointSlice,
    Secret,
    /// Only ingress-nginx's ConfigMap, with `--ingress-nginx-compat`.
    ConfigMap,
    /// Gateway API (`gateway.networking.k8s.io`).
    GatewayClass,
    Gateway,
    HTTPRoute,
    ReferenceGrant,
    /// Only their labels, for a Gateway listener's `allowedRoutes.namespaces.from: Selector`.
    Namespace,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HTTPRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the compile step needs, keyed by object so that sources can replace single objects.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    pub classes: BTreeMap<String, Arc<IngressClass>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub secrets: BTreeMap<ObjectKey, Arc<TlsSecret>>,
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    /// The Gateway API objects and the namespaces' labels; empty unless a source reads them.
    pub gateway_api: GatewayApi,
}

/// The Gateway API objects, kept whole as Portico's own typed subset of the CRDs
/// ([`crate::source::gateway_api`]), not reduced at the edge as Ingresses are.
///
/// Why not reduced: what a Gateway API object means depends on the rest of the cluster at
/// once (every Gateway for address allocation and listener conflicts, ReferenceGrants for
/// every cross-namespace reference, Services for backends, Secrets for listeners, namespace
/// labels for `allowedRoutes`), and its status must echo its own fields (generation, parent
/// references). So the model keeps the objects, and the compile step runs the pure translator
/// ([`crate::translate::gateway::translate`]) over them with the model's Services and Secrets,
/// whenever anything changes. These types hold no client and no Pingora type; the only
/// Kubernetes part is their `metadata`, read by the translator alone.
#[derive(Clone, Debug, Default)]
pub struct GatewayApi {
    /// By name (an empty namespace: cluster-scoped).
    pub classes: BTreeMap<ObjectKey, Arc<crate::source::gateway_api::GatewayClass>>,
    pub gateways: BTreeMap<ObjectKey, Arc<crate::source::gateway_api::Gateway>>,
    pub routes: BTreeMap<ObjectKey, Arc<crate::source::gateway_api::HTTPRoute>>,
    pub grants: BTreeMap<ObjectKey, Arc<crate::source::gateway_api::ReferenceGrant>>,
    /// By name.
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
}

impl GatewayApi {
    /// Whether there is anything for the translator: no GatewayClass, no Gateway API.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }
}

/// A namespace, reduced to its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A ConfigMap's data (string values only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigMap {
    pub key: ObjectKey,
    pub data: BTreeMap<String, String>,
}

/// One object of any kind, as a source produces it.
#[derive(Clone, Debug)]
pub enum Object {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<TlsSecret>),
    ConfigMap(Arc<ConfigMap>),
    GatewayClass(Arc<crate::source::gateway_api::GatewayClass>),
    Gateway(Arc<crate::source::gateway_api::Gateway>),
    HTTPRoute(Arc<crate::source::gateway_api::HTTPRoute>),
    ReferenceGrant(Arc<crate::source::gateway_api::ReferenceGrant>),
    Namespace(Arc<Namespace>),
}

/// `namespace/name` of a namespaced Gateway API object (`default` when unset, as kubectl
/// does), or the name of a cluster-scoped one.
fn meta_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    namespaced: bool,
) -> ObjectKey {
    let namespace = match (namespaced, meta.namespace.as_deref()) {
        (false, _) => "",
        (true, None | Some("")) => "default",
        (true, Some(ns)) => ns,
    };
    ObjectKey::new(namespace, meta.name.clone().unwrap_or_default())
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HTTPRoute(_) => Kind::HTTPRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Namespace(_) => Kind::Namespace,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Ingress(o) => o.key.clone(),
            Object::IngressClass(o) => ObjectKey::new("", o.name.clone()),
            Object::Service(o) => o.key.clone(),
            Object::EndpointSlice(o) => o.key.clone(),
            Object::Secret(o) => o.key.clone(),
            Object::ConfigMap(o) => o.key.clone(),
            Object::GatewayClass(o) => meta_key(&o.metadata, false),
            Object::Gateway(o) => meta_key(&o.metadata, true),
            Object::HTTPRoute(o) => meta_key(&o.metadata, true),
            Object::ReferenceGrant(o) => meta_key(&o.metadata, true),
            Object::Namespace(o) => ObjectKey::new("", o.name.clone()),
        }
    }
}

impl Object {
    /// Whether this is the object `kind` `key`; [`Object::key`] without building the key.
    pub fn is(&self, kind: Kind, key: &ObjectKey) -> bool {
        match self {
            Object::Ingress(o) => kind == Kind::Ingress && o.key == *key,
            Object::IngressClass(o) => {
                kind == Kind::IngressClass && key.namespace.is_empty() && o.name == key.name
            }
            Object::Service(o) => kind == Kind::Service && o.key == *key,
            Object::EndpointSlice(o) => kind == Kind::EndpointSlice && o.key == *key,
            Object::Secret(o) => kind == Kind::Secret && o.key == *key,
            Object::ConfigMap(o) => kind == Kind::ConfigMap && o.key == *key,
            o => o.kind() == kind && o.key() == *key,
        }
    }
}

impl Model {
    /// Inserts or replaces one object.
    pub fn insert(&mut self, object: Object) {
        match object {
            Object::Ingress(o) => {
                self.ingresses.insert(o.key.clone(), o);
            }
            Object::IngressClass(o) => {
                self.classes.insert(o.name.clone(), o);
            }
            Object::Service(o) => {
                self.services.insert(o.key.clone(), o);
            }
            Object::EndpointSlice(o) => {
                self.slices.insert(o.key.clone(), o);
            }
            Object::Secret(o) => {
                self.secrets.insert(o.key.clone(), o);
            }
            Object::ConfigMap(o) => {
                self.config_maps.insert(o.key.clone(), o);
            }
            Object::GatewayClass(o) => {
                let key = meta_key(&o.metadata, false);
                self.gateway_api.classes.insert(key, o);
            }
            Object::Gateway(o) => {
                let key = meta_key(&o.metadata, true);
                self.gateway_api.gateways.insert(key, o);
            }
            Object::HTTPRoute(o) => {
                let key = meta_key(&o.metadata, true);
                self.gateway_api.routes.insert(key, o);
            }
            Object::ReferenceGrant(o) => {
                let key = meta_key(&o.metadata, true);
                self.gateway_api.grants.insert(key, o);
            }
            Object::Namespace(o) => {
                self.gateway_api.namespaces.insert(o.name.clone(), o);
            }
        }
    }

    /// Removes one object; removing an absent object is not an error.
    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) {
        match kind {
            Kind::Ingress => {
                self.ingresses.remove(key);
            }
            Kind::IngressClass => {
                self.classes.remove(&key.name);
            }
            Kind::Service => {
                self.services.remove(key);
            }
            Kind::EndpointSlice => {
                self.slices.remove(key);
            }
            Kind::Secret => {
                self.secrets.remove(key);
            }
            Kind::ConfigMap => {
                self.config_maps.remove(key);
            }
            Kind::GatewayClass => {
                self.gateway_api.classes.remove(key);
            }
            Kind::Gateway => {
                self.gateway_api.gateways.remove(key);
            }
            Kind::HTTPRoute => {
                self.gateway_api.routes.remove(key);
            }
            Kind::ReferenceGrant => {
                self.gateway_api.grants.remove(key);
            }
            Kind::Namespace => {
                self.gateway_api.namespaces.remove(&key.name);
            }
        }
    }
}

/// An Ingress, reduced to what routing needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ingress {
    pub key: ObjectKey,
    /// `creationTimestamp` in seconds since the epoch; the oldest Ingress wins conflicts.
    pub created: i64,
    pub class_name: Option<String>,
    /// The legacy `kubernetes.io/ingress.class` annotation.
    pub class_annotation: Option<String>,
    pub default_backend: Option<BackendRef>,
    pub rules: Vec<Rule>,
    pub tls: Vec<TlsEntry>,
    pub annotations: IngressAnnotations,
    /// ingress-nginx's annotations, when it has any; applied only if the Ingress is taken in
    /// the ingress-nginx compatibility mode.
    pub nginx: Option<Arc<NginxAnnotations>>,
    /// Problems found while translating, reported by the compile step.
    pub problems: Vec<String>,
}

/// ingress-nginx's `nginx.ingress.kubernetes.io/*` annotations, each parsed into a typed value
/// with a strict grammar. Nothing here is ever turned into configuration text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NginxAnnotations {
    pub ssl_redirect: Option<bool>,
    pub force_ssl_redirect: Option<bool>,
    pub use_regex: bool,
    /// `rewrite-target`: the new path, with `$1`..`$9` from the path regex's groups.
    pub rewrite_target: Option<Template>,
    /// `app-root`: where a request for exactly `/` is sent (302).
    pub app_root: Option<String>,
    /// `permanent-redirect` / `temporal-redirect` (the temporal one wins), with its code.
    pub redirect: Option<(Template, u16)>,
    pub from_to_www_redirect: bool,
    /// `proxy-body-size` and the `proxy-*-timeout` values.
    pub limits: RouteLimits,
    pub backend_protocol: Option<BackendProtocol>,
    /// `upstream-vhost`: the `Host` sent upstream.
    pub upstream_vhost: Option<String>,
    /// `x-forwarded-prefix`: sent as `X-Forwarded-Prefix` (with a rewrite, as ingress-nginx does).
    pub x_forwarded_prefix: Option<String>,
    /// `server-alias`: more hosts served by the same rules.
    pub server_alias: Vec<String>,
    pub enable_access_log: Option<bool>,
    /// `whitelist-source-range`/`allowlist-source-range`: only these client networks (403).
    pub allow: Option<Vec<Cidr>>,
    /// `denylist-source-range`: never these client networks (403).
    pub deny: Option<Vec<Cidr>>,
    /// `enable-global-auth`.
    pub enable_global_auth: Option<bool>,
    /// `canary: "true"` with its `canary-*` rules: this Ingress's backends take part of the
    /// traffic of another Ingress's same host and path.
    pub canary: Option<CanarySpec>,
    /// `affinity: cookie` with `affinity-mode` and the `session-cookie-*` settings.
    pub affinity: Option<AffinitySpec>,
    /// `default-backend`: a Service of the Ingress's namespace that serves when a rule's Service
    /// has no ready endpoint.
    pub default_backend: Option<String>,
    /// `limit-rps`, `limit-rpm`, `limit-connections`, `limit-burst-multiplier`,
    /// `limit-allowlist`.
    pub rate_limit: Option<RateLimitSpec>,
    /// `auth-url` with `auth-method`, `auth-response-headers`, `auth-signin` and
    /// `auth-signin-redirect-param`.
    pub external_auth: Option<ExternalAuthSpec>,
    /// `auth-type: basic` with `auth-secret`, `auth-secret-type` and `auth-realm`.
    pub basic_auth: Option<BasicAuthSpec>,
    /// `enable-cors` with the `cors-*` settings.
    pub cors: Option<Cors>,
    /// `proxy-next-upstream`: [`RetryOn::NONE`] for `off`.
    pub next_upstream: Option<RetryOn>,
    /// `proxy-next-upstream-tries` (0: as many as there are, up to [`MAX_UPSTREAM_ATTEMPTS`]).
    pub next_upstream_tries: Option<usize>,
    /// `proxy-next-upstream-timeout` (0: none).
    pub next_upstream_timeout: Option<std::time::Duration>,
    /// `custom-http-errors`: the response codes the default backend answers instead; replaces
    /// the ConfigMap's list.
    pub custom_http_errors: Option<Vec<u16>>,
    /// `proxy-ssl-secret` and the settings that go with it: how an HTTPS backend is verified.
    pub proxy_ssl: Option<ProxySsl>,
    /// `custom-headers`: the ConfigMap (in the Ingress's namespace) of response headers to set.
    pub custom_headers: Option<ObjectKey>,
    /// Annotations refused or not applied, with the reason.
    pub problems: Vec<AnnotationProblem>,
}

impl NginxAnnotations {
    /// Whether an annotation that could widen access was refused: the Ingress is not served.
    pub fn closed(&self) -> bool {
        self.problems.iter().any(|p| p.closes)
    }
}

/// ingress-nginx's cookie affinity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinitySpec {
    /// `affinity-mode: persistent` (else `balanced`, the default).
    pub persistent: bool,
    /// `session-cookie-name` [INGRESSCOOKIE].
    pub name: String,
    /// `session-cookie-path` [the location's path].
    pub path: Option<String>,
    pub domain: Option<String>,
    /// `session-cookie-samesite`: None, Lax or Strict.
    pub samesite: Option<String>,
    /// `session-cookie-secure` [the request's scheme].
    pub secure: Option<bool>,
    /// `session-cookie-max-age`, `session-cookie-expires`, in seconds.
    pub max_age: Option<u64>,
    pub expires: Option<u64>,
    /// `session-cookie-change-on-failure` [false]: a retry after the cookie's endpoint failed
    /// goes elsewhere and the cookie follows; else it goes to the same endpoint again.
    pub change_on_failure: bool,
    /// `session-cookie-conditional-samesite-none` [false]: `SameSite=None` is left out for the
    /// browsers that reject it.
    pub conditional_samesite_none: bool,
}

/// ingress-nginx's per-client limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub rps: Option<u64>,
    pub rpm: Option<u64>,
    pub connections: Option<u32>,
    /// `limit-burst-multiplier` [5]: the burst is the rate times this.
    pub burst_multiplier: u64,
    /// `limit-allowlist` (`limit-whitelist`): clients never limited.
    pub allowlist: Vec<Cidr>,
}

/// ingress-nginx's external authentication (`auth-url`, or the ConfigMap's `global-auth-url`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAuthSpec {
    /// The auth service's URL, with the few request values nginx users put in it.
    pub url: UrlTemplate,
    /// `auth-method`: the sub-request's method [the client's].
    pub method: Option<String>,
    /// `auth-response-headers`: fields of the auth service's answer copied to the upstream
    /// request.
    pub response_headers: Vec<String>,
    /// `auth-signin`: where a 401 is redirected, with the original URL in `signin_param`.
    pub signin: Option<UrlTemplate>,
    /// `auth-signin-redirect-param` [rd].
    pub signin_param: String,
}

/// A URL with request values in it: literal text and the variables nginx users write in
/// `auth-url` and `auth-signin` (`$host`, `$scheme`, `$request_uri`, `$escaped_request_uri`).
/// Parsed once; expanding it pastes values, never configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlTemplate(pub Vec<UrlPiece>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlPiece {
    Text(String),
    /// `$host`, `$http_host`, `$best_http_host`: the request's host.
    Host,
    /// `$scheme`, `$pass_access_scheme`: `http` or `https`.
    Scheme,
    /// `$request_uri`: the request's target as sent.
    RequestUri,
    /// `$escaped_request_uri`: the same, percent-encoded as a URL component.
    EscapedRequestUri,
}

impl UrlTemplate {
    pub fn expand(&self, host: &str, scheme: &str, request_uri: &str) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                UrlPiece::Text(t) => out.push_str(t),
                UrlPiece::Host => out.push_str(host),
                UrlPiece::Scheme => out.push_str(scheme),
                UrlPiece::RequestUri => out.push_str(request_uri),
                UrlPiece::EscapedRequestUri => escape_component(request_uri, &mut out),
            }
        }
        out
    }
}

/// Percent-encodes all but `A-Za-z0-9-._~` (nginx's `set_escape_uri`).
pub fn escape_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// ingress-nginx's canary rules, evaluated in its order: header, then cookie, then weight.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CanarySpec {
    /// `canary-by-header`, lowercase.
    pub header: Option<String>,
    /// `canary-by-header-value`: the header's value that selects the canary.
    pub header_value: Option<String>,
    /// `canary-by-header-pattern` (ignored when a value is set); RE2 syntax.
    pub header_pattern: Option<String>,
    /// `canary-by-cookie`.
    pub cookie: Option<String>,
    /// `canary-weight` out of `canary-weight-total` [0 of 100].
    pub weight: u64,
    pub weight_total: u64,
}

/// ingress-nginx's basic authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuthSpec {
    /// `auth-secret`: `name` (in the Ingress's namespace: an empty namespace here) or
    /// `namespace/name`.
    pub secret: ObjectKey,
    /// `auth-secret-type: auth-map`: one user per Secret key; else `auth-file` (the `auth` key
    /// holds an htpasswd file).
    pub map: bool,
    /// `auth-realm` [""].
    pub realm: String,
}

/// ingress-nginx's CORS settings (`enable-cors` and `cors-*`), with its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// `cors-allow-origin` [`*`]: `None` is `*` (every request, origin sent as `*`).
    pub origins: Option<Vec<CorsOrigin>>,
    /// `cors-allow-methods`, `cors-allow-headers`, `cors-expose-headers` (empty: not sent).
    pub methods: String,
    pub headers: String,
    pub expose: String,
    /// `cors-allow-credentials` [true].
    pub credentials: bool,
    /// `cors-max-age` [1728000].
    pub max_age: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: None,
            methods: "GET, PUT, POST, DELETE, PATCH, OPTIONS".into(),
            headers: "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,\
                      Content-Type,Range,Authorization"
                .into(),
            expose: String::new(),
            credentials: true,
            max_age: 1_728_000,
        }
    }
}

/// One allowed origin: `scheme://host[:port]`, where the host may start with `*.` (one label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorsOrigin {
    /// Lowercase; with `*.` the part after the `*` (`.example.com`).
    pub scheme: String,
    pub host: String,
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl CorsOrigin {
    /// Whether a request's `Origin` is this one, case-insensitively (the whole value: ingress-nginx
    /// anchors its regex only at the end, which lets `https://evilexample.com` through an
    /// entry `example.com`; Portico does not).
    pub fn matches(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        let Some(rest) = origin
            .strip_prefix(&self.scheme)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, Some(p)),
                Err(_) => return false,
            },
            None => (rest, None),
        };
        if port != self.port {
            return false;
        }
        if self.wildcard {
            host.strip_suffix(self.host.as_str()).is_some_and(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        } else {
            host == self.host
        }
    }
}

/// ingress-nginx's `proxy-ssl-*` annotations: how Portico speaks TLS to an HTTPS/GRPCS backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySsl {
    /// `proxy-ssl-secret`: `ca.crt` to verify the backend with, and an optional client
    /// certificate (`tls.crt`, `tls.key`) to present.
    pub secret: ObjectKey,
    /// `proxy-ssl-verify` [off].
    pub verify: bool,
    /// `proxy-ssl-name`: the name the backend's certificate must have.
    pub name: Option<String>,
    /// `proxy-ssl-server-name` [off]: send the name as SNI.
    pub server_name: bool,
}

/// ingress-nginx's global settings, from its ConfigMap; each `None` or default is ingress-nginx's
/// default. They apply to the Ingresses taken in compatibility mode; annotations win.
#[derive(Clone, Debug, PartialEq)]
pub struct NginxGlobals {
    /// `proxy-body-size` and `proxy-connect/read/send-timeout`, when set.
    pub limits: RouteLimits,
    /// `ssl-redirect` [true].
    pub ssl_redirect: bool,
    /// `force-ssl-redirect` [false].
    pub force_ssl_redirect: bool,
    /// `http-redirect-code` [308]: the code of the redirects to HTTPS.
    pub http_redirect_code: u16,
    /// `hsts`, `hsts-max-age`, `hsts-include-subdomains`, `hsts-preload` [on, 31536000, true,
    /// false]; `None` when `hsts` is false.
    pub hsts: Option<Hsts>,
    /// `whitelist-source-range` / `denylist-source-range`: for Ingresses without their own.
    pub allow: Option<Vec<Cidr>>,
    pub deny: Option<Vec<Cidr>>,
    /// Why the client IP cannot be told as ingress-nginx would tell it (a `forwarded-for-header`
    /// other than X-Forwarded-For): Ingresses with allow or deny lists are then not served.
    pub client_ip_unknown: Option<String>,
    /// `use-forwarded-headers` with `proxy-real-ip-cidr` [off; 0.0.0.0/0]: the peers whose
    /// `X-Forwarded-For` tells the client IP, instead of `--trusted-proxies`.
    pub forwarded_trust: Option<Vec<Cidr>>,
    /// Why no Ingress in compatibility mode may be served (an access setting Portico cannot
    /// apply, such as `global-auth-url`), unless it opts out of it.
    pub closed: Option<String>,
    /// `limit-req-status-code` and `limit-conn-status-code` [503, 503].
    pub limit_req_status: u16,
    pub limit_conn_status: u16,
    /// `global-auth-url` and its `global-auth-*` settings: external auth for every Ingress without
    /// its own `auth-url` or `enable-global-auth: "false"`.
    pub global_auth: Option<ExternalAuthSpec>,
    /// `global-allowed-response-headers` [none]: the only header names a `custom-headers`
    /// ConfigMap may set.
    pub allowed_response_headers: Vec<String>,
    /// `proxy-next-upstream` ["error timeout"], `proxy-next-upstream-tries` [3] and
    /// `proxy-next-upstream-timeout` [0: none].
    pub next_upstream: Option<RetryOn>,
    pub next_upstream_tries: Option<usize>,
    pub next_upstream_timeout: Option<std::time::Duration>,
    /// `custom-http-errors` [none].
    pub custom_http_errors: Vec<u16>,
    /// `use-proxy-protocol` [false], with `proxy-protocol-header-timeout` [5s].
    pub proxy_protocol: Option<std::time::Duration>,
}

impl Default for NginxGlobals {
    fn default() -> Self {
        Self {
            limits: RouteLimits::default(),
            ssl_redirect: true,
            force_ssl_redirect: false,
            http_redirect_code: 308,
            hsts: Some(Hsts {
                max_age: 31_536_000,
                include_subdomains: true,
                preload: false,
            }),
            allow: None,
            deny: None,
            client_ip_unknown: None,
            forwarded_trust: None,
            closed: None,
            allowed_response_headers: Vec::new(),
            global_auth: None,
            limit_req_status: 503,
            limit_conn_status: 503,
            next_upstream: None,
            next_upstream_tries: None,
            next_upstream_timeout: None,
            custom_http_errors: Vec::new(),
            proxy_protocol: None,
        }
    }
}

/// An ingress-nginx annotation Portico refuses or does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// The annotation's full name.
    pub annotation: String,
    pub message: String,
    /// Ignoring it could widen access (a snippet, an allowlist, an auth setting): the whole
    /// Ingress is left out instead.
    pub closes: bool,
}

/// A replacement string with nginx's `$1`..`$9` capture references, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// A capture group, 1 to 9.
    Group(usize),
}

impl Template {
    /// Parses `value`: `$` followed by a digit 1-9 is a group (as nginx reads `$1`); any other
    /// `$` is refused, since nginx would read it as a variable Portico does not have.
    pub fn parse(value: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = value.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                text.push(c);
                continue;
            }
            match chars.next().and_then(|d| d.to_digit(10)) {
                Some(d) if d >= 1 => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Group(d as usize));
                }
                _ => {
                    return Err(format!(
                        "{value:?}: only $1 to $9 (the path's capture groups) may follow a \"$\"; \
                         nginx variables are not supported"
                    ))
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { pieces })
    }

    /// The highest group it refers to (0 for none).
    pub fn max_group(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Group(g) => *g,
                Piece::Text(_) => 0,
            })
            .max()
            .unwrap_or(0)
    }

    /// Fills in the groups (a group that did not take part in the match is empty).
    pub fn expand(&self, group: impl Fn(usize) -> Option<String>, out: &mut String) {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(g) => out.push_str(&group(*g).unwrap_or_default()),
            }
        }
    }

    /// The text, when it has no groups.
    pub fn literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }
}

/// Portico's typed `portico.dev/*` annotations. Values are parsed, never templated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngressAnnotations {
    /// `portico.dev/ssl-redirect`; `None` means the default (redirect when the host has TLS).
    pub ssl_redirect: Option<bool>,
    /// Per-route overrides of the upstream and body limits.
    pub limits: RouteLimits,
    /// `portico.dev/health-check-path` (+ `-interval`): active HTTP checks of the backends.
    pub health_check: Option<HealthCheck>,
    /// `portico.dev/hsts`: the `Strict-Transport-Security` policy sent over TLS.
    pub hsts: Option<Hsts>,
    /// `portico.dev/backend-protocol`; `None` means [`BackendProtocol::Http`].
    pub backend_protocol: Option<BackendProtocol>,
}

/// An active HTTP health check: `GET path` on every endpoint every `interval`; a 2xx or 3xx
/// answer within the timeout is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    pub interval: std::time::Duration,
}

/// Per-Ingress overrides (`portico.dev/proxy-*` annotations); `None` keeps the global setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// `portico.dev/proxy-body-size`: largest request body in bytes; 0 means unlimited.
    pub max_body: Option<u64>,
    /// `portico.dev/proxy-connect-timeout`
    pub connect_timeout: Option<std::time::Duration>,
    /// `portico.dev/proxy-read-timeout`
    pub read_timeout: Option<std::time::Duration>,
    /// `portico.dev/proxy-send-timeout`
    pub send_timeout: Option<std::time::Duration>,
    /// Endpoints a request may try (ingress-nginx's `proxy-next-upstream-tries`); else
    /// `--upstream-attempts`.
    pub upstream_attempts: Option<usize>,
    /// What sends a request on to the next endpoint (ingress-nginx's `proxy-next-upstream`);
    /// else [`RetryOn::PORTICO`].
    pub retry_on: Option<RetryOn>,
    /// How long after the first attempt another may start (`proxy-next-upstream-timeout`);
    /// `None`: no limit.
    pub retry_timeout: Option<std::time::Duration>,
    /// Gateway API `timeouts.request`: from the first attempt (the request head and a held
    /// body are in) until the response head, over every attempt; late is 504. `None`: none.
    pub request_timeout: Option<std::time::Duration>,
}

/// What sends a request on to the next endpoint: nginx's `proxy_next_upstream` conditions.
/// However it is set, a request is sent again only when nothing of it reached the failed
/// endpoint, or its method is idempotent, or [`RetryOn::NON_IDEMPOTENT`] is in the set; and only
/// while its body can be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const NONE: Self = Self(0);
    /// Connect errors, resets and errors writing the request or reading the response head.
    pub const ERROR: Self = Self(1);
    /// A timeout connecting, writing the request or waiting for the response head.
    pub const TIMEOUT: Self = Self(1 << 1);
    /// An empty or invalid response head.
    pub const INVALID_HEADER: Self = Self(1 << 2);
    /// Requests with non-idempotent methods too, after they were sent.
    pub const NON_IDEMPOTENT: Self = Self(1 << 3);
    /// Portico's own routes: errors, timeouts and invalid response heads.
    pub const PORTICO: Self = Self(1 | 1 << 1 | 1 << 2);
    /// The response statuses nginx retries on (`http_500` …), in bit order from `1 << 4`.
    pub const STATUSES: [u16; 7] = [500, 502, 503, 504, 403, 404, 429];

    /// The condition for a response `code`, if nginx has one.
    pub fn status(code: u16) -> Option<Self> {
        Self::STATUSES
            .iter()
            .position(|c| *c == code)
            .map(|i| Self(1 << (4 + i)))
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether any response status is retried: only then does a response head need a look.
    pub fn any_status(self) -> bool {
        self.0 >> 4 != 0
    }

    /// Whether a response with `code` is retried.
    pub fn on_status(self, code: u16) -> bool {
        Self::status(code).is_some_and(|s| self.contains(s))
    }

    /// Whether anything at all is retried.
    pub fn retries(self) -> bool {
        self.0 & !Self::NON_IDEMPOTENT.0 != 0
    }
}

/// The most endpoints one request tries, whatever a route asks (nginx's `tries 0`, unlimited).
pub const MAX_UPSTREAM_ATTEMPTS: usize = 16;

/// How Portico speaks to the backends of one Ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// HTTP/1.1 in clear text.
    #[default]
    Http,
    /// HTTP/1.1 over TLS. The backend's certificate is not verified: cluster backends mostly
    /// use self-signed certificates, and the traffic stays inside the cluster network.
    Https,
    /// HTTP/2 in clear text, with prior knowledge.
    H2c,
    /// gRPC: HTTP/2 in clear text (h2c), trailers passed through.
    Grpc,
    /// gRPC over TLS (HTTP/2 negotiated by ALPN); the certificate is not verified, as for HTTPS.
    Grpcs,
}

impl BackendProtocol {
    /// Whether the upstream connection uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, BackendProtocol::Https | BackendProtocol::Grpcs)
    }

    /// Whether the upstream connection speaks HTTP/2 only.
    pub fn http2(self) -> bool {
        matches!(
            self,
            BackendProtocol::H2c | BackendProtocol::Grpc | BackendProtocol::Grpcs
        )
    }
}

impl std::str::FromStr for BackendProtocol {
    type Err = String;

    /// Parses the annotation value, case-insensitively: `HTTP`, `HTTPS`, `H2C`, `GRPC`, `GRPCS`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HTTP" => Ok(BackendProtocol::Http),
            "HTTPS" => Ok(BackendProtocol::Https),
            "H2C" => Ok(BackendProtocol::H2c),
            "GRPC" => Ok(BackendProtocol::Grpc),
            "GRPCS" => Ok(BackendProtocol::Grpcs),
            _ => Err(format!(
                "expected one of HTTP, HTTPS, H2C, GRPC, GRPCS, got {s:?}"
            )),
        }
    }
}

/// A validated HTTP Strict Transport Security policy (RFC 6797).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl std::str::FromStr for Hsts {
    type Err = String;

    /// Parses `max-age=N[; includeSubDomains][; preload]`. Directive names are
    /// case-insensitive; `max-age` is required, and unknown or repeated directives are refused,
    /// since they are most likely typos.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut max_age = None;
        let mut include_subdomains = false;
        let mut preload = false;
        for directive in s.split(';').map(str::trim).filter(|d| !d.is_empty()) {
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let repeated = match (name.to_ascii_lowercase().as_str(), value) {
                ("max-age", Some(v)) => {
                    let n = v
                        .parse::<u64>()
                        .map_err(|_| format!("max-age {v:?} is not a number of seconds"))?;
                    max_age.replace(n).is_some()
                }
                ("includesubdomains", None) => std::mem::replace(&mut include_subdomains, true),
                ("preload", None) => std::mem::replace(&mut preload, true),
                _ => return Err(format!("unknown or malformed directive {directive:?}")),
            };
            if repeated {
                return Err(format!("directive {name:?} is repeated"));
            }
        }
        let max_age = max_age.ok_or_else(|| "max-age is required".to_string())?;
        Ok(Hsts {
            max_age,
            include_subdomains,
            preload,
        })
    }
}

impl fmt::Display for Hsts {
    /// The header value, in canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max-age={}", self.max_age)?;
        if self.include_subdomains {
            f.write_str("; includeSubDomains")?;
        }
        if self.preload {
            f.write_str("; preload")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `None` for a rule without `host`.
    pub host: Option<String>,
    pub paths: Vec<HttpPath>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    Exact,
    Prefix,
    ImplementationSpecific,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpPath {
    pub path: String,
    pub path_type: PathType,
    pub backend: BackendRef,
}

/// Where an Ingress sends traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendRef {
    Service {
        name: String,
        port: PortRef,
    },
    /// A `resource` backend; Portico rejects these.
    Resource {
        kind: String,
        name: String,
    },
}

/// A Service port, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsEntry {
    pub hosts: Vec<String>,
    pub secret_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressClass {
    pub name: String,
    pub controller: String,
    pub is_default: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub key: ObjectKey,
    pub ports: Vec<ServicePort>,
    /// `spec.type: ExternalName`; Portico rejects backends on such Services.
    pub external_name: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// Empty when the port has no name.
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// The `kubernetes.io/service-name` label.
    pub service_name: Option<String>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SlicePort {
    /// Empty when the port has no name; matched against the Service port's name.
    pub name: String,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// The pod name from `targetRef`, if any; used by the demo's echo backends and logs.
    pub pod: Option<String>,
}

/// A Secret Portico reads: PEM bytes, parsed and checked at compile time. A `kubernetes.io/tls`
/// Secret (`tls: true`) always has a certificate and key, and only such a Secret serves an
/// Ingress's `tls` entry; in ingress-nginx compatibility mode an `Opaque` Secret with a `ca.crt`
/// (and maybe a client `tls.crt`/`tls.key`) is read too, for `proxy-ssl-secret`.
#[derive(Clone, PartialEq)]
pub struct TlsSecret {
    pub key: ObjectKey,
    /// Of type `kubernetes.io/tls`.
    pub tls: bool,
    /// `tls.crt`; empty when absent (an Opaque Secret).
    pub cert_pem: Vec<u8>,
    /// `tls.key`; empty when absent (an Opaque Secret).
    pub key_pem: Vec<u8>,
    /// `ca.crt`: certificates to trust, for verifying a backend.
    pub ca_pem: Option<Vec<u8>>,
    /// Every field of an Opaque Secret (an htpasswd file in `auth`, or an `auth-map`'s users);
    /// empty for a TLS Secret.
    pub data: BTreeMap<String, Vec<u8>>,
}

// Never print key material, not even in debug logs.
impl fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSecret")
            .field("key", &self.key)
            .field("tls", &self.tls)
            .field("cert_pem_len", &self.cert_pem.len())
            .field("ca_pem_len", &self.ca_pem.as_ref().map(Vec::len))
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hsts_policies() {
        let h: Hsts = "max-age=31536000; includeSubDomains".parse().unwrap();
        assert_eq!(
            h,
            Hsts {
                max_age: 31536000,
                include_subdomains: true,
                preload: false
            }
        );
        assert_eq!(h.to_string(), "max-age=31536000; includeSubDomains");
        let h: Hsts = " MAX-AGE=\"60\" ;preload; ".parse().unwrap();
        assert_eq!(h.to_string(), "max-age=60; preload");
        for bad in [
            "",
            "includeSubDomains",
            "max-age=-1",
            "max-age=1y",
            "max-age=1; max-age=2",
            "max-age=1; includeSubdomain",
            "max-age=1; preload=yes",
        ] {
            assert!(bad.parse::<Hsts>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parses_backend_protocols() {
        assert_eq!("grpc".parse(), Ok(BackendProtocol::Grpc));
        assert_eq!(" HTTPS ".parse(), Ok(BackendProtocol::Https));
        assert_eq!("h2c".parse(), Ok(BackendProtocol::H2c));
        assert!("http2".parse::<BackendProtocol>().is_err());
        assert!(BackendProtocol::Grpcs.tls() && BackendProtocol::Grpcs.http2());
        assert!(!BackendProtocol::Grpc.tls() && BackendProtocol::Grpc.http2());
        assert!(!BackendProtocol::Http.tls() && !BackendProtocol::Http.http2());
    }
}
