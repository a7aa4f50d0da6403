//! Path matching: Exact and element-wise Prefix, and their precedence as an ordered type.

use std::cmp::Ordering;

use crate::model::PathType;

/// A validated path rule. `ImplementationSpecific` is compiled to `Prefix` (Portico's choice).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// Stored without its trailing slash; `"/"` stays `"/"` and matches every path.
    Prefix(String),
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
        }
    }

    pub fn path(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }

    pub fn is_exact(&self) -> bool {
        matches!(self, PathMatch::Exact(_))
    }
}

/// Ordering by precedence: the **greater** value wins. A longer path beats a shorter one; on equal
/// length, Exact beats Prefix.
impl Ord for PathMatch {
    fn cmp(&self, other: &Self) -> Ordering {
        self.path()
            .len()
            .cmp(&other.path().len())
            .then(self.is_exact().cmp(&other.is_exact()))
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
