//! Gateway API hostnames: listener and route hostnames, their intersection, and which listener
//! hostname is the most specific.
//!
//! Unlike an Ingress host, a Gateway API wildcard `*.example.com` matches any number of extra
//! labels (`a.b.example.com` too), never `example.com` itself (`GW161:apis/v1/shared_types.go`,
//! `Hostname`).

use std::cmp::Ordering;
use std::fmt;

/// A validated hostname, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GwHost {
    /// `foo.example.com`
    Precise(String),
    /// `*.example.com`, stored as `example.com`.
    Wildcard(String),
}

impl fmt::Display for GwHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GwHost::Precise(h) => f.write_str(h),
            GwHost::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl GwHost {
    /// Parses a listener or route hostname: a DNS-1123 subdomain with an optional leading `*.`
    /// label; no IP address, no port (the CRD's pattern, checked again since files and the
    /// tests' stand-in do not validate).
    pub fn parse(host: &str) -> Result<GwHost, String> {
        let lower = host.to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty()
            || name.len() > 253
            || name.parse::<std::net::IpAddr>().is_ok()
            || !name.split('.').all(valid_label)
        {
            return Err(format!(
                "{host:?} is not a hostname (a DNS name, with an optional leading \"*.\"; no IP \
                 address, no port)"
            ));
        }
        Ok(if wildcard {
            GwHost::Wildcard(name.to_string())
        } else {
            GwHost::Precise(name.to_string())
        })
    }

    /// Whether a request's host (lower-cased, without port) is matched.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            GwHost::Precise(h) => h == host,
            GwHost::Wildcard(s) => is_below(host, s),
        }
    }

    /// Labels right of the `*`, or all labels: how specific a listener hostname is.
    fn labels(&self) -> usize {
        match self {
            GwHost::Precise(h) | GwHost::Wildcard(h) => h.split('.').count(),
        }
    }
}

/// `host` is at least one label below `suffix`.
fn is_below(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

/// The hostnames a route serves on a listener: `None` when they do not intersect at all.
///
/// - no listener hostname: the route's hostnames, or every host when it has none (an empty
///   vector);
/// - no route hostnames: the listener's hostname;
/// - both: each route hostname that matches the listener's, narrowed to the more specific of
///   the two (`*.example.com` on a listener `foo.example.com` serves `foo.example.com`).
pub fn intersect(listener: Option<&GwHost>, route: &[GwHost]) -> Option<Vec<GwHost>> {
    let Some(l) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![l.clone()]);
    }
    let mut out: Vec<GwHost> = Vec::new();
    for r in route {
        let narrowed = match (l, r) {
            (GwHost::Precise(a), GwHost::Precise(b)) => (a == b).then(|| r.clone()),
            (GwHost::Wildcard(s), GwHost::Precise(h)) => is_below(h, s).then(|| r.clone()),
            (GwHost::Precise(h), GwHost::Wildcard(s)) => is_below(h, s).then(|| l.clone()),
            (GwHost::Wildcard(a), GwHost::Wildcard(b)) => {
                if a == b || is_below(b, a) {
                    Some(r.clone())
                } else if is_below(a, b) {
                    Some(l.clone())
                } else {
                    None
                }
            }
        };
        if let Some(h) = narrowed {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Orders listener hostnames from the most specific: a precise name, then wildcards with more
/// labels right of the `*`, then no hostname (`GW161:apis/v1/gateway_types.go` L146-L166).
pub fn listener_specificity(a: Option<&GwHost>, b: Option<&GwHost>) -> Ordering {
    let rank = |h: Option<&GwHost>| match h {
        Some(GwHost::Precise(_)) => (2, 0),
        Some(w @ GwHost::Wildcard(_)) => (1, w.labels()),
        None => (0, 0),
    };
    rank(b).cmp(&rank(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> GwHost {
        GwHost::parse(s).unwrap()
    }

    #[test]
    fn wildcards_span_labels_but_not_the_suffix_itself() {
        let w = h("*.wildcard.io");
        assert!(w.matches("foo.wildcard.io"));
        assert!(w.matches("foo.bar.wildcard.io"));
        assert!(!w.matches("wildcard.io"));
        assert!(!w.matches("xwildcard.io"));
        assert!(h("Very.Specific.com").matches("very.specific.com"));
        for bad in [
            "",
            "*",
            "1.2.3.4",
            "a..b",
            "-a.com",
            "a.com:80",
            "*.*.a.com",
        ] {
            assert!(GwHost::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The cases of HTTPRouteHostnameIntersection.
    #[test]
    fn intersections() {
        let listener = h("very.specific.com");
        assert_eq!(
            intersect(
                Some(&listener),
                &[h("non.matching.com"), h("*.specific.com")]
            ),
            Some(vec![h("very.specific.com")])
        );
        let listener = h("*.wildcard.io");
        assert_eq!(
            intersect(
                Some(&listener),
                &[
                    h("non.matching.com"),
                    h("wildcard.io"),
                    h("foo.wildcard.io"),
                    h("foo.bar.wildcard.io")
                ]
            ),
            Some(vec![h("foo.wildcard.io"), h("foo.bar.wildcard.io")])
        );
        assert_eq!(
            intersect(
                Some(&h("*.anotherwildcard.io")),
                &[h("*.anotherwildcard.io")]
            ),
            Some(vec![h("*.anotherwildcard.io")])
        );
        assert_eq!(
            intersect(Some(&h("*.example.com")), &[h("*.foo.example.com")]),
            Some(vec![h("*.foo.example.com")])
        );
        assert_eq!(
            intersect(Some(&h("*.foo.example.com")), &[h("*.example.com")]),
            Some(vec![h("*.foo.example.com")])
        );
        assert_eq!(
            intersect(
                Some(&h("very.specific.com")),
                &[h("specific.but.wrong.com"), h("wildcard.io")]
            ),
            None
        );
        assert_eq!(intersect(None, &[]), Some(vec![]));
        assert_eq!(intersect(Some(&h("a.com")), &[]), Some(vec![h("a.com")]));
    }

    #[test]
    fn listener_order() {
        let mut hosts = [
            None,
            Some(h("*.bar.com")),
            Some(h("bar.com")),
            Some(h("*.foo.bar.com")),
        ];
        hosts.sort_by(|a, b| listener_specificity(a.as_ref(), b.as_ref()));
        assert_eq!(
            hosts,
            [
                Some(h("bar.com")),
                Some(h("*.foo.bar.com")),
                Some(h("*.bar.com")),
                None
            ]
        );
    }
}
