//! What a matched Gateway API rule does to a request, as pure functions over plain values:
//! the `Location` of a `RequestRedirect`, the path of a `URLRewrite`, header edits, and the
//! weighted choice between backends. The request policy will call them (not wired yet).

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::translate::gateway::effective::{HeaderEdits, PathRewrite, Redirect};

/// The request as a redirect needs it.
#[derive(Clone, Copy, Debug)]
pub struct RedirectFrom<'a> {
    /// `http` or `https`: how the request arrived.
    pub scheme: &'a str,
    /// The request's host, without port.
    pub host: &'a str,
    /// The Gateway listener's port (the spec port, not a test's mapped one).
    pub listener_port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// The `Location` of a redirect (`GW161:apis/v1/httproute_types.go`,
/// `HTTPRequestRedirectFilter`): unset scheme and host keep the request's; an unset port is the
/// new scheme's well-known port when the scheme is set, else the listener's; port 80 for http
/// and 443 for https are left out. The query is kept.
pub fn redirect_location(r: &Redirect, from: &RedirectFrom<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(from.scheme);
    let host = r.hostname.as_deref().unwrap_or(from.host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => p,
        (None, Some(s)) if s == "https" => 443,
        (None, Some(_)) => 80,
        (None, None) => from.listener_port,
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &r.path {
        Some(p) => rewrite_path(p, from.path),
        None => from.path.to_string(),
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    out.push_str(scheme);
    out.push_str("://");
    // An IPv6 literal host keeps its brackets from the request.
    out.push_str(host);
    if !default_port {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(port));
    }
    out.push_str(&path);
    if let Some(q) = from.query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A path after `ReplaceFullPath` or `ReplacePrefixMatch`. The prefix replacement keeps the
/// rest of the path and never doubles a `/`: prefix `/foo` with `/xyz` turns `/foo/bar` into
/// `/xyz/bar`; with `/` it turns `/foo/bar` into `/bar` and `/foo` into `/`.
pub fn rewrite_path(rewrite: &PathRewrite, path: &str) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix {
            matched,
            replacement,
        } => {
            let rest = if matched == "/" {
                path
            } else {
                path.strip_prefix(matched.as_str()).unwrap_or(path)
            };
            let mut out = String::with_capacity(replacement.len() + rest.len());
            out.push_str(replacement.trim_end_matches('/'));
            if rest.is_empty() || rest == "/" && matched != "/" {
                out.push_str(rest);
            } else if !rest.starts_with('/') {
                out.push('/');
                out.push_str(rest);
            } else {
                out.push_str(rest);
            }
            if out.is_empty() {
                out.push('/');
            }
            out
        }
    }
}

/// Header edits with their names and values checked once, at compile time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl CompiledEdits {
    /// Fails on a name or value that is not valid in HTTP (the translator refuses those first).
    pub fn new(e: &HeaderEdits) -> Result<Self, String> {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?}"));
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| format!("{v:?}"));
        let pair = |(n, v): &(String, String)| Ok((name(n)?, value(v)?));
        Ok(Self {
            set: e.set.iter().map(pair).collect::<Result<_, String>>()?,
            add: e.add.iter().map(pair).collect::<Result<_, String>>()?,
            remove: e.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// A rule's edits followed by one of its backend's: both filters apply, the backend's
    /// last (the same value as applying one after the other, except where both name one
    /// field in different lists).
    pub fn then(&self, other: &CompiledEdits) -> CompiledEdits {
        let mut out = self.clone();
        out.set.extend(other.set.iter().cloned());
        out.add.extend(other.add.iter().cloned());
        out.remove.extend(other.remove.iter().cloned());
        out
    }

    /// Whether a field of this name is replaced or removed (the backend's never passes).
    pub fn drops(&self, name: &[u8]) -> bool {
        let is = |n: &HeaderName| n.as_str().as_bytes().eq_ignore_ascii_case(name);
        self.set.iter().any(|(n, _)| is(n)) || self.remove.iter().any(is)
    }

    /// The fields to write after the kept ones: `set`'s values (the last of a name wins), then
    /// `add`'s, minus the names `remove` drops.
    pub fn appended(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let removed = |n: &HeaderName| self.remove.contains(n);
        let set = self
            .set
            .iter()
            .enumerate()
            .filter(move |(i, (n, _))| !self.set[i + 1..].iter().any(|(m, _)| m == n))
            .map(|(_, (n, v))| (n, v));
        set.chain(self.add.iter().map(|(n, v)| (n, v)))
            .filter(move |(n, _)| !removed(n))
    }

    /// The edits as an engine applies them to an upstream request: `set` (a value replaces the
    /// client's fields of the name, `None` removes them) and `add` (appended).
    pub fn to_edits(
        &self,
        set: &mut Vec<(HeaderName, Option<HeaderValue>)>,
        add: &mut Vec<(HeaderName, HeaderValue)>,
    ) {
        for (n, v) in &self.set {
            set.retain(|(m, _)| m != n);
            add.retain(|(m, _)| m != n);
            set.push((n.clone(), Some(v.clone())));
        }
        for (n, v) in &self.add {
            add.push((n.clone(), v.clone()));
        }
        for n in &self.remove {
            set.retain(|(m, _)| m != n);
            add.retain(|(m, _)| m != n);
            set.push((n.clone(), None));
        }
    }

    /// `set` replaces every field of the name, `add` appends a field, `remove` drops them all.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// The order in which weighted backends take requests: a smooth weighted round-robin sequence
/// computed once, so that the choice is one atomic increment and the split is exact over every
/// full cycle (HTTPRouteWeight checks the distribution statistically).
#[derive(Debug, Default)]
pub struct WeightedChoice {
    sequence: Box<[u16]>,
    next: std::sync::atomic::AtomicUsize,
}

/// The longest cycle kept; larger weight sums are scaled down to it (a share off by less than
/// one request in 4,096 at most).
const MAX_CYCLE: u64 = 4096;

impl WeightedChoice {
    /// `weights` of the backends (0: never chosen). `None` when no weight is positive or there
    /// are more than 65,535 backends.
    pub fn new(weights: &[u32]) -> Option<Self> {
        if weights.len() > usize::from(u16::MAX) {
            return None;
        }
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
        let mut scaled: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g).collect();
        let sum: u64 = scaled.iter().sum();
        if sum > MAX_CYCLE {
            // Keep every positive weight at least 1.
            scaled = weights
                .iter()
                .map(|w| match u64::from(*w) * MAX_CYCLE / total {
                    0 if *w > 0 => 1,
                    s => s,
                })
                .collect();
        }
        let sum: u64 = scaled.iter().sum();
        let mut current = vec![0i64; scaled.len()];
        let mut sequence = Vec::with_capacity(sum as usize);
        for _ in 0..sum {
            let mut best = 0;
            for i in 0..scaled.len() {
                current[i] += scaled[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= sum as i64;
            sequence.push(best as u16);
        }
        Some(Self {
            sequence: sequence.into_boxed_slice(),
            next: Default::default(),
        })
    }

    /// The index of the backend for the next request.
    #[inline]
    pub fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        usize::from(self.sequence[n % self.sequence.len()])
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<PathRewrite>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_string),
            hostname: host.map(str::to_string),
            port,
            path,
            status: 302,
        }
    }

    const FROM: RedirectFrom<'static> = RedirectFrom {
        scheme: "http",
        host: "example.com",
        listener_port: 80,
        path: "/hostname-redirect",
        query: None,
    };

    /// The Location headers of the redirect tests (core HTTPRouteRedirectHostAndStatus, and the
    /// extended scheme, port and path ones).
    #[test]
    fn redirect_locations() {
        let r = redirect(None, Some("example.org"), None, None);
        assert_eq!(
            redirect_location(&r, &FROM),
            "http://example.org/hostname-redirect"
        );
        let r = redirect(Some("https"), None, None, None);
        assert_eq!(
            redirect_location(&r, &FROM),
            "https://example.com/hostname-redirect"
        );
        let r = redirect(Some("https"), None, Some(8443), None);
        assert_eq!(
            redirect_location(&r, &FROM),
            "https://example.com:8443/hostname-redirect"
        );
        let r = redirect(None, None, Some(8083), None);
        assert_eq!(
            redirect_location(&r, &FROM),
            "http://example.com:8083/hostname-redirect"
        );
        let r = redirect(Some("http"), None, None, None);
        let tls = RedirectFrom {
            scheme: "https",
            listener_port: 443,
            ..FROM
        };
        assert_eq!(
            redirect_location(&r, &tls),
            "http://example.com/hostname-redirect"
        );
        // No scheme, no port: the listener's port.
        let odd = RedirectFrom {
            listener_port: 8080,
            ..FROM
        };
        assert_eq!(
            redirect_location(&redirect(None, None, None, None), &odd),
            "http://example.com:8080/hostname-redirect"
        );
        let r = redirect(None, None, None, Some(PathRewrite::Full("/full".into())));
        let q = RedirectFrom {
            query: Some("a=b"),
            ..FROM
        };
        assert_eq!(redirect_location(&r, &q), "http://example.com/full?a=b");
    }

    #[test]
    fn prefix_replacement() {
        let p = |matched: &str, replacement: &str| PathRewrite::Prefix {
            matched: matched.into(),
            replacement: replacement.into(),
        };
        for (matched, replacement, path, want) in [
            ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz", "/foo", "/xyz"),
            ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
            ("/foo", "/", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo", "/"),
            ("/foo", "/", "/foo/", "/"),
            ("/foo", "/xyz", "/foo/", "/xyz/"),
            ("/", "/xyz", "/bar", "/xyz/bar"),
            ("/", "/xyz", "/", "/xyz/"),
            ("/prefix/one", "/one", "/prefix/one/two", "/one/two"),
        ] {
            assert_eq!(
                rewrite_path(&p(matched, replacement), path),
                want,
                "{matched} {replacement} {path}"
            );
        }
        assert_eq!(
            rewrite_path(&PathRewrite::Full("/one".into()), "/any/thing"),
            "/one"
        );
    }

    #[test]
    fn header_edits() {
        let e = CompiledEdits::new(&HeaderEdits {
            set: vec![("x-header-set".into(), "set-overwrites-values".into())],
            add: vec![("x-header-add".into(), "add-appends-values".into())],
            remove: vec!["x-header-remove".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.append("x-header-set", HeaderValue::from_static("some-other-value"));
        h.append("x-header-set", HeaderValue::from_static("another"));
        h.append("x-header-add", HeaderValue::from_static("header-val-1"));
        h.append("x-header-remove", HeaderValue::from_static("val"));
        e.apply(&mut h);
        assert_eq!(
            h.get_all("x-header-set").iter().collect::<Vec<_>>(),
            ["set-overwrites-values"]
        );
        assert_eq!(
            h.get_all("x-header-add").iter().collect::<Vec<_>>(),
            ["header-val-1", "add-appends-values"]
        );
        assert!(h.get("x-header-remove").is_none());
        assert!(CompiledEdits::new(&HeaderEdits {
            set: vec![("bad name".into(), "v".into())],
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn weights_split_exactly_and_smoothly() {
        let c = WeightedChoice::new(&[70, 30, 0]).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..1000 {
            counts[c.pick()] += 1;
        }
        assert_eq!(counts, [700, 300, 0]);
        // Smooth: the lighter backend is spread out, never more than one in a row here.
        let c = WeightedChoice::new(&[7, 3]).unwrap();
        let seq: Vec<usize> = (0..10).map(|_| c.pick()).collect();
        assert!(seq.windows(2).all(|w| !(w[0] == 1 && w[1] == 1)), "{seq:?}");
        assert!(WeightedChoice::new(&[0, 0]).is_none());
        assert!(WeightedChoice::new(&[]).is_none());
        // Huge weights are scaled, and a tiny one still gets its turn.
        let c = WeightedChoice::new(&[u32::MAX, 1]).unwrap();
        assert!((0..5000).any(|_| c.pick() == 1));
    }
}
