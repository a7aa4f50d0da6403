//! The Gateway API route table of one entry point (a local address and port): the listener
//! chosen by the request's host, then the bucket of the most specific route hostname, then the
//! first rule in the spec's precedence whose path, method, headers and query all match.
//!
//! Built from the translator's [`EffectiveListener`]s by the compile step, one per entry point
//! ([`plane`]). Lookups hash the host once per candidate suffix and
//! scan only the chosen bucket; rules without method, header or query conditions pay one
//! branch for them.

pub mod actions;
pub mod plane;

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::{FastMap, FastSet};
use crate::translate::gateway::effective::{
    EffectiveListener, EffectiveRule, PathSpec, ValueMatch,
};
use crate::translate::gateway::hostname::GwHost;

/// One request, as matching needs it. `host` must be normalised
/// ([`super::normalize_request_host`]); `path` has no query.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a dyn Headers,
}

/// A request's header fields, as each engine holds them.
pub trait Headers {
    /// The value of the fields called `name`: several fields of one name are one value joined
    /// by `, ` (RFC 9110 5.3). `None` when there is none, or a value is not text.
    fn joined(&self, name: &HeaderName) -> Option<Cow<'_, str>>;
}

impl Headers for HeaderMap {
    fn joined(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        let mut fields = self.get_all(name).iter();
        let first = fields.next()?;
        match fields.next() {
            None => first.to_str().ok().map(Cow::Borrowed),
            Some(second) => {
                let mut out = String::new();
                for v in [first, second].into_iter().chain(fields) {
                    if !out.is_empty() {
                        out.push_str(", ");
                    }
                    out.push_str(v.to_str().ok()?);
                }
                Some(Cow::Owned(out))
            }
        }
    }
}

/// The listeners served on one entry point, most specific hostname first.
#[derive(Debug, Default)]
pub struct GatewayTable {
    listeners: Vec<ListenerTable>,
    /// For each table listener, its index in what the table was built from.
    index: Vec<usize>,
}

/// What a lookup found: the listener and the rule, as indexes into what the table was built
/// from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub listener: usize,
    pub rule: usize,
}

#[derive(Debug)]
struct ListenerTable {
    hostname: Option<GwHost>,
    precise: FastMap<String, Bucket>,
    /// By wildcard suffix (`*.example.com` under `example.com`).
    wildcard: FastMap<String, Bucket>,
    /// Routes without hostnames.
    any: Bucket,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Best first; the index is the rule's in the listener's `rules`.
    rules: Vec<(Matcher, usize)>,
}

#[derive(Debug)]
struct Matcher {
    path: Path,
    conditions: Option<Box<Conditions>>,
}

#[derive(Debug)]
enum Path {
    Exact(String),
    /// Without trailing slash; `/` matches everything.
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
struct Conditions {
    method: Option<String>,
    headers: Vec<(HeaderName, Value)>,
    query: Vec<(String, Value)>,
}

#[derive(Debug)]
enum Value {
    Exact(String),
    Regex(regex::Regex),
}

impl Value {
    fn matches(&self, v: &str) -> bool {
        match self {
            Value::Exact(e) => e == v,
            Value::Regex(r) => r.is_match(v),
        }
    }
}

/// A regex matched against the whole value (RE2 syntax, 1 MiB compiled size at most).
fn anchored(source: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{source:?}: {e}"))
}

impl GatewayTable {
    /// Builds the table of one entry point from its listeners (any order: they are sorted by
    /// hostname specificity, stably). Fails only on a regex the translator should already have
    /// refused.
    pub fn build(listeners: &[Arc<EffectiveListener>]) -> Result<GatewayTable, String> {
        let mut order: Vec<usize> = (0..listeners.len()).collect();
        order.sort_by(|&a, &b| {
            crate::translate::gateway::hostname::listener_specificity(
                listeners[a].hostname.as_ref(),
                listeners[b].hostname.as_ref(),
            )
        });
        let mut tables = Vec::with_capacity(listeners.len());
        for &li in &order {
            let l = &listeners[li];
            let mut t = ListenerTable {
                hostname: l.hostname.clone(),
                precise: FastMap::default(),
                wildcard: FastMap::default(),
                any: Bucket::default(),
            };
            // `l.rules` is already best first; buckets keep that order.
            for (ri, rule) in l.rules.iter().enumerate() {
                let mut seen = FastSet::default();
                if rule.hostnames.is_empty() {
                    t.any.rules.push((matcher(rule)?, ri));
                }
                for h in &rule.hostnames {
                    if !seen.insert(h.clone()) {
                        continue;
                    }
                    let bucket = match h {
                        GwHost::Precise(p) => t.precise.entry(p.clone()).or_default(),
                        GwHost::Wildcard(s) => t.wildcard.entry(s.clone()).or_default(),
                    };
                    bucket.rules.push((matcher(rule)?, ri));
                }
            }
            tables.push((li, t));
        }
        // Keep the caller's listener indexes for `Found`.
        let mut out = GatewayTable::default();
        for (li, t) in tables {
            out.listeners.push(t);
            out.index.push(li);
        }
        Ok(out)
    }

    /// The rule for a request: the most specific listener whose hostname matches (no fallback
    /// to a less specific listener), the most specific route hostname there, the first rule
    /// that matches. `None`: 404.
    pub fn lookup(&self, req: &RequestView<'_>) -> Option<Found> {
        let (pos, l) = self
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| l.hostname.as_ref().is_none_or(|h| h.matches(req.host)))?;
        let bucket = l
            .precise
            .get(req.host)
            .or_else(|| {
                // Longest suffix first: a.b.example.com tries b.example.com, example.com, com.
                let mut rest = req.host;
                while let Some((label, suffix)) = rest.split_once('.') {
                    if label.is_empty() {
                        return None;
                    }
                    if let Some(b) = l.wildcard.get(suffix) {
                        return Some(b);
                    }
                    rest = suffix;
                }
                None
            })
            .unwrap_or(&l.any);
        let rule = bucket
            .rules
            .iter()
            .find(|(m, _)| m.matches(req))
            .map(|(_, r)| *r)?;
        Some(Found {
            listener: self.index[pos],
            rule,
        })
    }
}

impl Matcher {
    #[inline]
    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            Path::Exact(p) => req.path == p,
            Path::Prefix(p) => {
                p == "/"
                    || req
                        .path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Path::Regex(r) => r.is_match(req.path),
        };
        path_ok && self.conditions.as_ref().is_none_or(|c| c.matches(req))
    }
}

impl Conditions {
    #[inline(never)]
    fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.method.as_deref().is_some_and(|m| m != req.method) {
            return false;
        }
        for (name, value) in &self.headers {
            if !req.headers.joined(name).is_some_and(|v| value.matches(&v)) {
                return false;
            }
        }
        for (name, value) in &self.query {
            // The first parameter of that name counts; values are compared as sent.
            let found = req.query.and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                })
            });
            if !found.is_some_and(|v| value.matches(v)) {
                return false;
            }
        }
        true
    }
}

fn value(m: &ValueMatch) -> Result<Value, String> {
    Ok(if m.regex {
        Value::Regex(anchored(&m.value)?)
    } else {
        Value::Exact(m.value.clone())
    })
}

fn matcher(rule: &EffectiveRule) -> Result<Matcher, String> {
    let m = &rule.matcher;
    let path = match &m.path {
        PathSpec::Exact(p) => Path::Exact(p.clone()),
        PathSpec::Prefix(p) => Path::Prefix(p.clone()),
        PathSpec::Regex(r) => Path::Regex(anchored(r)?),
    };
    let conditions = if m.method.is_none() && m.headers.is_empty() && m.query.is_empty() {
        None
    } else {
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{:?} is not a header name", h.name))?;
            headers.push((name, value(h)?));
        }
        let mut query = Vec::with_capacity(m.query.len());
        for q in &m.query {
            query.push((q.name.clone(), value(q)?));
        }
        Some(Box::new(Conditions {
            method: m.method.clone(),
            headers,
            query,
        }))
    };
    Ok(Matcher { path, conditions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectKey;
    use crate::translate::gateway::effective::{Action, Precedence, RequestMatch, Timeouts};

    fn rule(
        path: PathSpec,
        headers: Vec<ValueMatch>,
        query: Vec<ValueMatch>,
        method: Option<&str>,
    ) -> EffectiveRule {
        let matcher = RequestMatch {
            path,
            headers,
            query,
            method: method.map(str::to_string),
        };
        let route = ObjectKey::new("ns", "r");
        EffectiveRule {
            precedence: Precedence::new(&matcher, 0, &route, 0, 0),
            route,
            hostnames: Vec::new(),
            rule_index: 0,
            match_index: 0,
            rule_name: None,
            matcher,
            action: Action::Error {
                status: 500,
                reason: String::new(),
            },
            timeouts: Timeouts::default(),
        }
    }

    fn vm(name: &str, value: &str, regex: bool) -> ValueMatch {
        ValueMatch {
            name: name.into(),
            value: value.into(),
            regex,
        }
    }

    fn listener(rules: Vec<EffectiveRule>) -> Arc<EffectiveListener> {
        Arc::new(EffectiveListener {
            name: "l".into(),
            port: 80,
            tls: false,
            hostname: None,
            certificates: Vec::new(),
            rules,
        })
    }

    #[test]
    fn method_query_and_repeated_headers() {
        let l = listener(vec![
            rule(
                PathSpec::Prefix("/".into()),
                vec![vm("x-a", "1, 2", false)],
                vec![vm("q", "v[0-9]+", true)],
                Some("POST"),
            ),
            rule(PathSpec::Regex("/re/[a-z]+".into()), vec![], vec![], None),
        ]);
        let table = GatewayTable::build(&[l]).unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-a", http::HeaderValue::from_static("1"));
        headers.append("x-a", http::HeaderValue::from_static("2"));
        let req = |method, path, query| RequestView {
            host: "h",
            method,
            path,
            query,
            headers: &headers,
        };
        assert_eq!(
            table
                .lookup(&req("POST", "/x", Some("a=b&q=v12")))
                .map(|f| f.rule),
            Some(0)
        );
        assert_eq!(table.lookup(&req("GET", "/x", Some("q=v12"))), None);
        assert_eq!(table.lookup(&req("POST", "/x", Some("q=v12x"))), None);
        assert_eq!(table.lookup(&req("POST", "/x", None)), None);
        assert_eq!(
            table.lookup(&req("GET", "/re/abc", None)).map(|f| f.rule),
            Some(1)
        );
        assert_eq!(table.lookup(&req("GET", "/re/abc/d", None)), None);
        assert!(GatewayTable::build(&[listener(vec![rule(
            PathSpec::Regex("(".into()),
            vec![],
            vec![],
            None
        )])])
        .is_err());
    }

    mod precedence {
        use super::*;
        use proptest::prelude::*;
        use std::cmp::Ordering;

        /// A rule as the spec describes it, for the reference.
        #[derive(Clone, Debug)]
        struct Spec {
            created: i64,
            route: usize,
            rule: usize,
            matcher: RequestMatch,
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(vec!["a", "ab"]), 0..3)
                .prop_map(|segs| format!("/{}", segs.join("/")))
        }

        fn values(names: &'static [&'static str]) -> impl Strategy<Value = Vec<ValueMatch>> {
            prop::collection::btree_map(
                prop::sample::select(names.to_vec()),
                // Mostly one value, so that several rules match and the order decides.
                prop::sample::select(vec!["1", "1", "1", "2"]),
                0..=names.len(),
            )
            .prop_map(|m| m.into_iter().map(|(n, v)| vm(n, v, false)).collect())
        }

        fn spec() -> impl Strategy<Value = Spec> {
            (
                0i64..3,
                0usize..3,
                0usize..3,
                path(),
                any::<bool>(),
                values(&["x", "y"]),
                values(&["q", "r"]),
                prop::option::of(prop::sample::select(vec!["GET", "POST"])),
            )
                .prop_map(
                    |(created, route, rule, p, exact, headers, query, method)| Spec {
                        created,
                        route,
                        rule,
                        matcher: RequestMatch {
                            path: if exact {
                                PathSpec::Exact(p)
                            } else {
                                PathSpec::Prefix(p)
                            },
                            headers,
                            query,
                            method: method.map(str::to_string),
                        },
                    },
                )
        }

        /// The spec's order, written from its text: Exact, then the longest prefix, then a
        /// method, then more headers, then more query parameters, then the oldest route, then
        /// `namespace/name`, then rule order, then match order. `Greater` is better.
        fn reference_cmp(a: &(Spec, usize), b: &(Spec, usize)) -> Ordering {
            let exact = |s: &Spec| matches!(s.matcher.path, PathSpec::Exact(_));
            let prefix_len = |s: &Spec| match &s.matcher.path {
                PathSpec::Prefix(p) => p.len(),
                _ => 0,
            };
            let (x, y) = (&a.0, &b.0);
            exact(x)
                .cmp(&exact(y))
                .then(prefix_len(x).cmp(&prefix_len(y)))
                .then(x.matcher.method.is_some().cmp(&y.matcher.method.is_some()))
                .then(x.matcher.headers.len().cmp(&y.matcher.headers.len()))
                .then(x.matcher.query.len().cmp(&y.matcher.query.len()))
                .then(y.created.cmp(&x.created))
                .then(y.route.cmp(&x.route))
                .then(y.rule.cmp(&x.rule))
                .then(b.1.cmp(&a.1))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// The table picks what the spec's order picks among the matching rules.
            #[test]
            fn table_follows_the_spec_order(
                specs in prop::collection::vec(spec(), 1..12),
                req_path in path(),
                method in prop::sample::select(vec!["GET", "POST"]),
                headers in values(&["x", "y"]),
                query in values(&["q", "r"]),
            ) {
                // Each spec is one match of its (route, rule); the match index keeps them apart.
                let numbered: Vec<(Spec, usize)> = specs.into_iter().enumerate().map(|(i, s)| (s, i)).collect();
                let mut rules: Vec<EffectiveRule> = numbered
                    .iter()
                    .map(|(s, i)| {
                        let route = ObjectKey::new("ns", format!("r{}", s.route));
                        let mut r = rule(s.matcher.path.clone(), s.matcher.headers.clone(), s.matcher.query.clone(), s.matcher.method.as_deref());
                        r.precedence = Precedence::new(&s.matcher, s.created, &route, s.rule, *i);
                        r.route = route;
                        r.rule_index = s.rule;
                        r.match_index = *i;
                        r
                    })
                    .collect();
                rules.sort_by(|a, b| b.precedence.cmp(&a.precedence));
                let table = GatewayTable::build(&[listener(rules.clone())]).unwrap();
                let mut map = HeaderMap::new();
                for h in &headers {
                    map.append(HeaderName::from_bytes(h.name.as_bytes()).unwrap(), http::HeaderValue::from_str(&h.value).unwrap());
                }
                let q: Vec<String> = query.iter().map(|v| format!("{}={}", v.name, v.value)).collect();
                let q = q.join("&");
                let req = RequestView { host: "h", method, path: &req_path, query: Some(&q), headers: &map };
                let got = table.lookup(&req).map(|f| rules[f.rule].match_index);
                let header = |n: &str| headers.iter().find(|h| h.name == n).map(|h| h.value.as_str());
                let want = numbered
                    .iter()
                    .filter(|(s, _)| s.matcher.matches_slow(method, &req_path, header, Some(&q)))
                    .max_by(|a, b| reference_cmp(a, b))
                    .map(|(_, i)| *i);
                prop_assert_eq!(got, want);
            }
        }
    }
}
