//! The effective routes of the Gateways Portico serves: plain data, no Kubernetes types, ready
//! for the compile step. It says everything the data plane needs and the current route model
//! ([`crate::model`], [`crate::routing`]) cannot yet hold: header, query and method matches,
//! Gateway API wildcards, per-backend filters, weights, mirrors, redirects, rewrites, timeouts
//! and the 500 of an invalid backend. It is meant to map onto the route model.

use std::cmp::{Ordering, Reverse};
use std::net::IpAddr;
use std::time::Duration;

use super::hostname::GwHost;
use crate::model::ObjectKey;

/// One Gateway Portico serves.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveGateway {
    pub key: ObjectKey,
    /// `creationTimestamp` in seconds; the older Gateway wins a conflict on a shared address.
    pub created: i64,
    /// Where it is reachable (as published in `status.addresses`).
    pub addresses: Vec<IpAddr>,
    /// Its valid, programmed listeners only, most specific hostname first within a port.
    pub listeners: Vec<EffectiveListener>,
}

/// A listener and the routes attached to it.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveListener {
    pub name: String,
    pub port: u16,
    /// HTTPS: TLS is terminated with `certificates`.
    pub tls: bool,
    /// `None`: every host.
    pub hostname: Option<GwHost>,
    /// Secrets holding the certificates, in `certificateRefs` order (all resolved and valid).
    pub certificates: Vec<ObjectKey>,
    /// Every rule match of every attached route, best first by [`Precedence`]; the hostnames
    /// of each are already narrowed to this listener's.
    pub rules: Vec<EffectiveRule>,
}

/// One match of one rule of one route, with what the rule does.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveRule {
    pub route: ObjectKey,
    /// The route's hostnames on this listener; empty: any host the listener accepts.
    pub hostnames: Vec<GwHost>,
    pub rule_index: usize,
    pub match_index: usize,
    /// `spec.rules[].name`, for logs and metrics.
    pub rule_name: Option<String>,
    pub matcher: RequestMatch,
    pub action: Action,
    pub timeouts: Timeouts,
    pub precedence: Precedence,
}

/// What a request must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestMatch {
    pub path: PathSpec,
    /// All must hold. Names lower-cased; only the first match of a repeated name counts.
    pub headers: Vec<ValueMatch>,
    /// All must hold. Names case-sensitive; only the first match of a repeated name counts.
    pub query: Vec<ValueMatch>,
    /// Upper-case method name.
    pub method: Option<String>,
}

/// A path match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSpec {
    /// Case-sensitive, whole path.
    Exact(String),
    /// Whole `/`-separated segments; stored without a trailing `/` (except `/` itself).
    Prefix(String),
    /// RE2 syntax, matched against the whole path (implementation-specific).
    Regex(String),
}

/// A header or query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueMatch {
    pub name: String,
    pub value: String,
    /// `RegularExpression` (RE2, the whole value); else exact.
    pub regex: bool,
}

/// What a matched request gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A `RequestRedirect` answer, built from the request.
    Redirect(Redirect),
    /// Proxied to one of the weighted backends.
    Forward(Forward),
    /// 500: no backend at all, or a filter Portico cannot apply (the spec forbids skipping it).
    Error { status: u16, reason: String },
}

/// The rule's filters and its weighted backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forward {
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<Mirror>,
    /// At least one; a backend of weight 0 is left out, and when all weights are 0 the rule
    /// answers 500 ([`Action::Error`]).
    pub backends: Vec<WeightedBackend>,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`: names lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A redirect: unset parts keep the request's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    /// `None`: the scheme's default port when the scheme changes, else the listener's.
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

/// `URLRewrite`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    /// Replaces the matched prefix (the rule's match must be a PathPrefix).
    Prefix {
        matched: String,
        replacement: String,
    },
}

/// `RequestMirror`: a copy of the request goes to this backend; its answer is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub backend: BackendTarget,
    /// Of each `denominator` requests, `numerator` are mirrored.
    pub numerator: u32,
    pub denominator: u32,
}

/// One weighted backend, with its own filters (applied after the rule's).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedBackend {
    pub weight: u32,
    pub target: BackendTarget,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

/// Where a backend reference leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendTarget {
    /// A Service port (resolved to endpoints by the compile step, as for Ingress backends).
    Service { service: ObjectKey, port: u16 },
    /// An invalid reference: its share of the requests is answered 500.
    Invalid {
        reason: &'static str,
        message: String,
    },
}

/// `timeouts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

/// The order of matches across every route of a listener (`GW161:apis/v1/httproute_types.go`
/// L184-L209). Greater is better: an Exact path, then the longer prefix, then a method, then
/// more headers, then more query parameters, then the older route, then the first route by
/// `namespace/name`, then the first rule, then the first match. Regex paths rank below all
/// Exact and Prefix ones (implementation-specific), longer first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precedence {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
    created: Reverse<i64>,
    route: Reverse<ObjectKey>,
    rule: Reverse<usize>,
    matched: Reverse<usize>,
}

impl Precedence {
    pub fn new(
        matcher: &RequestMatch,
        created: i64,
        route: &ObjectKey,
        rule: usize,
        matched: usize,
    ) -> Self {
        let (path_kind, path_len) = match &matcher.path {
            PathSpec::Exact(p) => (2, p.len()),
            PathSpec::Prefix(p) => (1, p.len()),
            PathSpec::Regex(p) => (0, p.len()),
        };
        Self {
            path_kind,
            path_len,
            method: matcher.method.is_some(),
            headers: matcher.headers.len(),
            query: matcher.query.len(),
            created: Reverse(created),
            route: Reverse(route.clone()),
            rule: Reverse(rule),
            matched: Reverse(matched),
        }
    }
}

impl Ord for Precedence {
    fn cmp(&self, other: &Self) -> Ordering {
        (
            self.path_kind,
            self.path_len,
            self.method,
            self.headers,
            self.query,
        )
            .cmp(&(
                other.path_kind,
                other.path_len,
                other.method,
                other.headers,
                other.query,
            ))
            .then_with(|| self.created.cmp(&other.created))
            .then_with(|| self.route.cmp(&other.route))
            .then_with(|| self.rule.cmp(&other.rule))
            .then_with(|| self.matched.cmp(&other.matched))
    }
}

impl PartialOrd for Precedence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl RequestMatch {
    /// Whether a request matches: `path` without the query, `header` by lower-cased name
    /// (all values joined as one), `query` the raw query string. A slow reference for tests
    /// and for the compile step's property tests, not the request path's matcher.
    pub fn matches_slow<'a>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        query: Option<&str>,
    ) -> bool {
        let path_ok = match &self.path {
            PathSpec::Exact(p) => path == p,
            PathSpec::Prefix(p) => {
                p == "/"
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathSpec::Regex(r) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(path))
                .unwrap_or(false),
        };
        let value_ok = |m: &ValueMatch, v: Option<&str>| match v {
            None => false,
            Some(v) if m.regex => regex::Regex::new(&format!("^(?:{})$", m.value))
                .map(|re| re.is_match(v))
                .unwrap_or(false),
            Some(v) => v == m.value,
        };
        let query_value = |name: &str| {
            query?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then_some(v)
            })
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == method)
            && self.headers.iter().all(|m| value_ok(m, header(&m.name)))
            && self.query.iter().all(|m| value_ok(m, query_value(&m.name)))
    }
}
