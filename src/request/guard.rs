//! Request checks that Pingora's parser leaves to the application: request smuggling vectors,
//! invalid hosts and oversized requests. A pure function of the request header, so that every
//! case is unit-tested; the proxy answers the returned status and closes the connection.

use http::header;
use pingora_http::RequestHeader;

/// Size limits, checked when the request header arrives.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest request target (path and query), answered with 414 beyond.
    pub max_uri_length: usize,
    /// Largest request header block (request line and all fields), answered with 431 beyond.
    pub max_header_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // ingress-nginx: large_client_header_buffers 4 8k.
        Self {
            max_uri_length: 8 * 1024,
            max_header_size: 32 * 1024,
        }
    }
}

/// Why a request is refused: the status and a short reason for the log and the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// The bytes of an RFC 3986 reg-name or IPv4 address: unreserved, sub-delims, and the `%` of
/// pct-encoded.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        b += 1;
    }
    table
};

/// Whether `host` (a `Host` header or an authority, with an optional port) is syntactically valid:
/// a registered name or IPv4 address of RFC 3986 characters, or a bracketed IPv6 literal.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(p) => ("", Some(p)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match host.bytes().rposition(|b| b == b':') {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = name.bytes().all(|b| REG_NAME[b as usize]);
    port_ok && name_ok && host.len() <= 255
}

/// Checks a request header. `Ok` means it may be proxied.
pub fn check(req: &RequestHeader, limits: &Limits) -> Result<(), Refusal> {
    let target_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_uri_length {
        return Err(refuse(414, "request target too long"));
    }
    let header_size: usize = req.method.as_str().len()
        + target_len
        + 12
        + req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_size > limits.max_header_size {
        return Err(refuse(431, "request header fields too large"));
    }
    let headers = &req.headers;
    let content_lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if content_lengths > 1 {
        // RFC 9112 6.3 lets a recipient merge identical values; refusing is the safe reading.
        return Err(refuse(400, "duplicate Content-Length"));
    }
    if content_lengths == 1 && headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
    }
    if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let v = cl.as_bytes().trim_ascii();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(refuse(400, "invalid Content-Length"));
        }
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next() {
        // Exactly `chunked`: a list (`gzip, chunked`, `chunked, chunked`) or a second field is
        // where parsers disagree.
        if codings.next().is_some() || !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
        {
            return Err(refuse(400, "unsupported Transfer-Encoding"));
        }
    }
    for value in headers.get_all(header::CONNECTION) {
        let names_framing = value.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t.eq_ignore_ascii_case(b"content-length")
                || t.eq_ignore_ascii_case(b"transfer-encoding")
                || t.eq_ignore_ascii_case(b"host")
        });
        if names_framing {
            return Err(refuse(400, "Connection names a framing field"));
        }
    }
    if let Some(expect) = headers.get(header::EXPECT) {
        if !expect
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"100-continue")
        {
            return Err(refuse(417, "unsupported expectation"));
        }
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(refuse(400, "more than one Host"));
    }
    let host = headers.get(header::HOST).map(|h| h.to_str());
    match host {
        Some(Ok(h)) if !valid_host(h) => return Err(refuse(400, "invalid Host")),
        Some(Err(_)) => return Err(refuse(400, "invalid Host")),
        None if req.version == http::Version::HTTP_11 && req.uri.authority().is_none() => {
            return Err(refuse(400, "HTTP/1.1 request without Host"))
        }
        _ => {}
    }
    if let Some(a) = req.uri.authority() {
        if a.as_str().contains('@') || !valid_host(a.as_str()) {
            return Err(refuse(400, "invalid authority"));
        }
    }
    Ok(())
}

/// Refuses a bare LF or bare CR, or a NUL, anywhere in a raw request head (RFC 9112 2.2):
/// httparse accepts a bare LF as a line end, which a proxy in front of a stricter server must not.
pub fn check_line_ends(head: &[u8]) -> Result<(), Refusal> {
    // Every LF after a CR and every CR before an LF (no bare CR, no bare LF), and no NUL: each pair
    // of neighbouring bytes is compared, without an early exit, so that the compiler vectorizes
    // the loop (a per-line search costs several times more on a typical head).
    let (Some(&first), Some(&last)) = (head.first(), head.last()) else {
        return Ok(());
    };
    let bad = head.iter().zip(&head[1..]).fold(0u8, |bad, (&a, &b)| {
        bad | ((a == b'\r') != (b == b'\n')) as u8 | (b == 0) as u8
    });
    if bad != 0 || first == b'\n' || first == 0 || last == b'\r' {
        return Err(refuse(400, "bare CR or LF, or NUL, in the request head"));
    }
    Ok(())
}

/// Checks the raw header block of a request whose body Transfer-Encoding frames: a Content-Length
/// field beside it is a request-smuggling attempt (RFC 9112 6.1), refused rather than repaired.
pub fn check_framing(raw_header: &[u8]) -> Result<(), Refusal> {
    let content_length = raw_header
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| line.split(|&b| b == b':').next())
        .any(|name| name.trim_ascii().eq_ignore_ascii_case(b"content-length"));
    if content_length {
        return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn refuses_content_length_beside_transfer_encoding() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_framing(both).map_err(|r| r.status), Err(400));
        let odd_case = b"POST / HTTP/1.1\r\nHost: a\r\ncOnTeNt-LeNgTh : 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_framing(odd_case).map_err(|r| r.status), Err(400));
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 5\r\n\r\n";
        assert_eq!(check_framing(chunked), Ok(()));
        // The request line is not a field, whatever its target says.
        let target =
            b"POST /content-length:5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_framing(target), Ok(()));
    }

    #[test]
    fn line_ends_match_a_plain_reading_of_the_rule() {
        // Every string of up to 7 bytes over {a, CR, LF, NUL}: the vectorizable pass agrees with
        // "each CR is followed by an LF, each LF follows a CR, no NUL".
        fn plain(head: &[u8]) -> bool {
            head.iter().enumerate().all(|(i, &b)| match b {
                b'\r' => head.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && head[i - 1] == b'\r',
                0 => false,
                _ => true,
            })
        }
        let alphabet = [b'a', b'\r', b'\n', 0];
        for len in 0..=7u32 {
            for n in 0..4usize.pow(len) {
                let head: Vec<u8> = (0..len).map(|i| alphabet[n / 4usize.pow(i) % 4]).collect();
                assert_eq!(check_line_ends(&head).is_ok(), plain(&head), "{head:?}");
            }
        }
    }

    #[test]
    fn accepts_ordinary_requests() {
        let l = Limits::default();
        assert_eq!(check(&req("/a?b=c", &[("host", "foo.com")]), &l), Ok(()));
        assert_eq!(check(&req("/", &[("host", "foo.com:8080")]), &l), Ok(()));
        assert_eq!(check(&req("/", &[("host", "[::1]:80")]), &l), Ok(()));
        assert_eq!(check(&req("/", &[("host", "127.0.0.1")]), &l), Ok(()));
        assert_eq!(
            check(&req("/", &[("host", "a.b"), ("content-length", "3")]), &l),
            Ok(())
        );
    }

    #[test]
    fn refuses_smuggling_vectors_and_bad_hosts() {
        let l = Limits::default();
        let status = |r: RequestHeader| check(&r, &l).err().map(|e| e.status);
        assert_eq!(
            status(req(
                "/",
                &[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("content-length", "5")
                ]
            )),
            Some(400)
        );
        assert_eq!(
            status(req(
                "/",
                &[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("transfer-encoding", "chunked")
                ]
            )),
            Some(400)
        );
        assert_eq!(status(req("/", &[("host", "a"), ("host", "b")])), Some(400));
        assert_eq!(status(req("/", &[("host", "foo bar.com")])), Some(400));
        assert_eq!(status(req("/", &[("host", "foo.com:")])), Some(400));
        assert_eq!(status(req("/", &[("host", "foo.com:99999x")])), Some(400));
        assert_eq!(status(req("/", &[("host", "[zz]")])), Some(400));
        assert_eq!(status(req("/", &[])), Some(400));
        assert_eq!(
            status(req(&format!("/{}", "a".repeat(9000)), &[("host", "a")])),
            Some(414)
        );
        assert_eq!(
            status(req("/", &[("host", "a"), ("x-big", &"b".repeat(40_000))])),
            Some(431)
        );
    }
}
