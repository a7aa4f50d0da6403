//! Host matching: precise hosts, `*.suffix` wildcards, and normalisation of the request's host.

use std::borrow::Cow;
use std::net::IpAddr;

/// A validated host from an Ingress rule or TLS entry, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// `foo.bar.com`
    Precise(String),
    /// `*.bar.com`, stored as the suffix `bar.com`; matches exactly one extra label.
    Wildcard(String),
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Precise(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Validates a host as the Ingress API defines it: a DNS-1123 subdomain, optionally with a leading
/// `*.` label; no port, no IP address, no bare `*`.
pub fn parse_host(host: &str) -> Result<HostMatch, String> {
    if host.contains(':') {
        return Err(format!(
            "{host:?} must not carry a port (a rule matches its host on every listener)"
        ));
    }
    if host == "*" {
        return Err(
            "\"*\" alone is not a host; leave the host unset to match every host, or use \
             \"*.example.com\""
                .into(),
        );
    }
    let lower = host.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{host:?} must be a DNS name, not an IP address; leave the host unset to match it"
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(invalid_name(host));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid_name(host));
        }
    }
    Ok(if wildcard {
        HostMatch::Wildcard(name.to_string())
    } else {
        HostMatch::Precise(lower)
    })
}

fn invalid_name(host: &str) -> String {
    format!(
        "{host:?} is not a valid DNS name (letters, digits, '-' and '.', with an optional leading \
         \"*.\")"
    )
}

/// The request's host for routing: the `Host` header (or `:authority`) without its port, lower-cased,
/// without a trailing dot. Borrows when the host is already in that form, which is the usual case.
pub fn normalize_request_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal: keep the brackets, drop the port after them.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.bytes().rposition(|b| b == b':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// The suffix a wildcard rule would be stored under for this request host: everything after the
/// first label, when that label is not empty.
pub fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts() {
        assert_eq!(
            parse_host("Foo.Bar.com"),
            Ok(HostMatch::Precise("foo.bar.com".into()))
        );
        assert_eq!(
            parse_host("*.foo.com"),
            Ok(HostMatch::Wildcard("foo.com".into()))
        );
        assert!(parse_host("*").is_err());
        assert!(parse_host("foo.com:80").is_err());
        assert!(parse_host("10.0.0.1").is_err());
        assert!(parse_host("a.*.com").is_err());
        assert!(parse_host("**.foo.com").is_err());
        assert!(parse_host("foo..com").is_err());
        assert!(parse_host("-foo.com").is_err());
        assert!(parse_host("fo_o.com").is_err());
    }

    #[test]
    fn normalizes_request_hosts() {
        assert_eq!(normalize_request_host("foo.com"), "foo.com");
        assert_eq!(normalize_request_host("FOO.com:8080"), "foo.com");
        assert_eq!(normalize_request_host("foo.com."), "foo.com");
        assert_eq!(normalize_request_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_request_host("127.0.0.1:80"), "127.0.0.1");
        assert!(matches!(
            normalize_request_host("foo.com"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn wildcard_suffix_takes_exactly_one_label() {
        assert_eq!(wildcard_suffix("bar.foo.com"), Some("foo.com"));
        assert_eq!(wildcard_suffix("baz.bar.foo.com"), Some("bar.foo.com"));
        assert_eq!(wildcard_suffix("foo"), None);
        assert_eq!(wildcard_suffix(".foo.com"), None);
    }
}
