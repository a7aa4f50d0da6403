//! Path matching: Exact and element-wise Prefix, and their precedence as an ordered type; and,
//! for Ingresses taken in ingress-nginx's compatibility mode, nginx's own location kinds (a plain
//! string prefix, and a case-insensitive regex anchored at the start).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::model::PathType;

/// A validated path rule. `ImplementationSpecific` is compiled to `Prefix` (Portico's choice).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Stored without its trailing slash; `"/"` stays `"/"` and matches every path.
    Prefix(String),
    /// nginx's prefix location: the request path starts with this string, character-wise
    /// (ingress-nginx's ImplementationSpecific paths).
    Plain(String),
    /// nginx's `location ~* "^path"`: a case-insensitive regex anchored only at the start
    /// (ingress-nginx's paths on a host where any Ingress uses `use-regex` or `rewrite-target`).
    Regex(RegexPath),
}

/// Out of line, so that matching the other kinds stays small enough to inline.
#[inline(never)]
fn regex_match(r: &RegexPath, path: &str) -> bool {
    r.regex.is_match(path)
}

/// A path regex, compared and hashed by its source.
#[derive(Clone, Debug)]
pub struct RegexPath {
    pub source: String,
    pub regex: Arc<regex::Regex>,
}

impl RegexPath {
    /// Compiles `path` as ingress-nginx writes it: `(?i)^` and the path. The regex crate's
    /// syntax is RE2's, which is what the Ingress API admits (no look-around, no back-references).
    pub fn new(path: &str) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(&format!("^{path}"))
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("{path:?} is not a valid regular expression (RE2 syntax): {e}"))?;
        Ok(Self {
            source: path.to_string(),
            regex: Arc::new(regex),
        })
    }
}

impl PartialEq for RegexPath {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for RegexPath {}

impl Hash for RegexPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state)
    }
}

impl PathMatch {
    /// Validates a rule path as the Ingress API does and normalises it.
    ///
    /// Fails for a missing or relative path, and for the sequences the API server rejects in
    /// Exact and Prefix paths (`//`, `/./`, `/../`, `%2f`, a trailing `/.` or `/..`).
    pub fn parse(path: &str, path_type: PathType) -> Result<PathMatch, String> {
        let path = if path.is_empty() && path_type == PathType::ImplementationSpecific {
            "/"
        } else {
            path
        };
        if path.is_empty() {
            return Err(format!(
                "is missing; a {path_type:?} path needs one (\"/\" for every path)"
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("{path:?} must be absolute (start with \"/\")"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "{path:?} contains whitespace or control characters"
            ));
        }
        for bad in ["//", "/./", "/../", "%2f", "%2F"] {
            if path.contains(bad) {
                return Err(format!("{path:?} must not contain {bad:?}"));
            }
        }
        if path.ends_with("/..") || path.ends_with("/.") {
            return Err(format!("{path:?} must not end with \"/..\" or \"/.\""));
        }
        if path.contains('?') || path.contains('#') {
            return Err(format!("{path:?} must not contain a query or fragment"));
        }
        Ok(match path_type {
            PathType::Exact => PathMatch::Exact(path.to_string()),
            PathType::Prefix | PathType::ImplementationSpecific => {
                let trimmed = path.trim_end_matches('/');
                PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
            }
        })
    }

    /// Whether the request path (without query) matches.
    #[inline]
    pub fn matches(&self, request_path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == request_path,
            PathMatch::Prefix(p) => {
                if p == "/" {
                    return true;
                }
                match request_path.strip_prefix(p.as_str()) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
            PathMatch::Plain(p) => request_path.starts_with(p.as_str()),
            PathMatch::Regex(r) => regex_match(r, request_path),
        }
    }

    pub fn path(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Plain(p) => p,
            PathMatch::Regex(r) => &r.source,
        }
    }

    /// The regex of a regex path, for its capture groups.
    pub fn regex(&self) -> Option<&regex::Regex> {
        match self {
            PathMatch::Regex(r) => Some(&r.regex),
            _ => None,
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, PathMatch::Exact(_))
    }
}

/// Ordering by precedence: the **greater** value wins. A longer path beats a shorter one; on equal
/// length, Exact beats Prefix, which beats Plain. Regex paths come after every other kind (nginx
/// tries them in order only when no other location is exact, and on a regex host all paths are
/// regexes), longest first, as ingress-nginx sorts its locations.
impl Ord for PathMatch {
    fn cmp(&self, other: &Self) -> Ordering {
        let rank = |m: &PathMatch| match m {
            PathMatch::Regex(_) => 0,
            PathMatch::Plain(_) => 1,
            PathMatch::Prefix(_) => 2,
            PathMatch::Exact(_) => 3,
        };
        let regex = |m: &PathMatch| matches!(m, PathMatch::Regex(_));
        regex(other)
            .cmp(&regex(self))
            .then_with(|| self.path().len().cmp(&other.path().len()))
            .then_with(|| rank(self).cmp(&rank(other)))
            .then_with(|| other.path().cmp(self.path()))
    }
}

impl PartialOrd for PathMatch {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(p: &str) -> PathMatch {
        PathMatch::parse(p, PathType::Exact).unwrap()
    }
    fn prefix(p: &str) -> PathMatch {
        PathMatch::parse(p, PathType::Prefix).unwrap()
    }

    #[test]
    fn semantics_table_single_rules() {
        // Prefix `/` matches anything.
        for p in ["/", "/a", "/a/b/", "/%20"] {
            assert!(prefix("/").matches(p));
        }
        assert!(exact("/foo").matches("/foo"));
        assert!(!exact("/foo").matches("/bar"));
        assert!(!exact("/foo").matches("/foo/"));
        assert!(!exact("/foo/").matches("/foo"));
        assert!(prefix("/foo").matches("/foo"));
        assert!(prefix("/foo").matches("/foo/"));
        assert!(prefix("/foo/").matches("/foo"));
        assert!(prefix("/foo/").matches("/foo/"));
        assert!(!prefix("/aaa/bb").matches("/aaa/bbb"));
        for p in ["/aaa/bbb", "/aaa/bbb/", "/aaa/bbb/ccc"] {
            assert!(prefix("/aaa/bbb").matches(p), "{p}");
        }
        assert!(prefix("/aaa/bbb/").matches("/aaa/bbb"));
        assert!(!prefix("/aaa/bbb").matches("/aaa/bbbxyz"));
        assert!(!prefix("/foo/bar").matches("/foo/barbaz"));
        assert!(prefix("/foo/bar").matches("/foo/bar/baz"));
        // Matching is case-sensitive.
        assert!(!prefix("/foo").matches("/FOO"));
        assert!(!exact("/foo").matches("/Foo"));
    }

    #[test]
    fn implementation_specific_is_prefix() {
        let p = PathMatch::parse("/foo/", PathType::ImplementationSpecific).unwrap();
        assert_eq!(p, prefix("/foo"));
        assert_eq!(
            PathMatch::parse("", PathType::ImplementationSpecific).unwrap(),
            prefix("/")
        );
    }

    #[test]
    fn precedence_order() {
        assert!(prefix("/aaa/bbb") > prefix("/aaa"));
        assert!(prefix("/aaa") > prefix("/"));
        assert!(exact("/foo") > prefix("/foo"));
        assert!(exact("/foo/") > prefix("/foo"));
        let re = |p: &str| PathMatch::Regex(RegexPath::new(p).unwrap());
        assert!(re("/aaa/bbb(/|$)(.*)") < PathMatch::Plain("/".into()));
        assert!(re("/aaa/bbb(/|$)(.*)") > re("/aaa(/|$)(.*)"));
        assert!(PathMatch::Plain("/foo".into()) < prefix("/foo"));
        assert!(PathMatch::Plain("/foob".into()) > prefix("/foo"));
    }

    #[test]
    fn nginx_locations() {
        let re = PathMatch::Regex(RegexPath::new("/api/v[0-9]+").unwrap());
        assert!(re.matches("/api/v1"));
        assert!(re.matches("/API/V2/users"), "case-insensitive");
        assert!(!re.matches("/x/api/v1"), "anchored at the start");
        assert!(RegexPath::new("/a(?=b)").is_err(), "no look-around");
        let plain = PathMatch::Plain("/foo".into());
        assert!(plain.matches("/foobar") && plain.matches("/foo/") && !plain.matches("/fo"));
    }

    #[test]
    fn rejects_invalid_paths() {
        assert!(PathMatch::parse("", PathType::Exact).is_err());
        assert!(PathMatch::parse("", PathType::Prefix).is_err());
        assert!(PathMatch::parse("foo", PathType::Prefix).is_err());
        assert!(PathMatch::parse("/a//b", PathType::Prefix).is_err());
        assert!(PathMatch::parse("/a/../b", PathType::Exact).is_err());
        assert!(PathMatch::parse("/a%2fb", PathType::Exact).is_err());
        assert!(PathMatch::parse("/a/..", PathType::Exact).is_err());
        assert!(PathMatch::parse("/a b", PathType::Exact).is_err());
    }
}
