//! Request and response heads: parsed by httparse, then checked against RFC 9112 framing rules.
//!
//! Pure functions over byte slices, so that each rule is unit-tested and fuzzed on its own. A head
//! is kept as its bytes plus spans into them; nothing is copied per header.

use std::mem::MaybeUninit;

use crate::request::guard::{check_line_ends, valid_host, Limits, Refusal};

/// Most header fields in one head (431 beyond, as nginx's buffers would overflow first).
pub const MAX_HEADERS: usize = 100;

/// Largest upstream response head (502 beyond).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A byte range in a head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize) as u32;
        Span {
            start,
            end: start + part.len() as u32,
        }
    }

    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The fields the engine treats specially; every other field is `Other` and passes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop fields that are never forwarded: Keep-Alive, Proxy-Connection, TE, Trailer,
    /// and any field named in `Connection`.
    HopByHop,
    /// `Upgrade`: hop-by-hop, forwarded only with an upgrade request.
    Upgrade,
    Expect,
    /// X-Forwarded-For/-Proto/-Host/-Port and X-Real-IP: replaced by the policy's values.
    Forwarding,
    Server,
    Date,
    Hsts,
    Other,
}

fn kind(name: &[u8]) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        4 if is("host") => Kind::Host,
        4 if is("date") => Kind::Date,
        2 if is("te") => Kind::HopByHop,
        6 if is("server") => Kind::Server,
        6 if is("expect") => Kind::Expect,
        7 if is("upgrade") => Kind::Upgrade,
        7 if is("trailer") => Kind::HopByHop,
        9 if is("x-real-ip") => Kind::Forwarding,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::Forwarding,
        16 if is("x-forwarded-host") || is("x-forwarded-port") => Kind::Forwarding,
        16 if is("proxy-connection") => Kind::HopByHop,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::Forwarding,
        25 if is("strict-transport-security") => Kind::Hsts,
        _ => Kind::Other,
    }
}

/// One header field of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
    pub kind: Kind,
}

/// How a message body is framed (RFC 9112 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Read until the connection closes (responses only).
    Close,
}

/// A parsed and checked request head. Spans index the head's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, request line to the empty line.
    pub len: usize,
    pub method: Span,
    /// The request target as sent.
    pub target: Span,
    /// The origin-form of the target: path and query (the whole target unless absolute-form).
    pub origin: Span,
    /// The path part of `origin`.
    pub path: Span,
    /// The authority of an absolute-form target.
    pub authority: Option<Span>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub fields: Vec<Field>,
    /// The `Host` field's value.
    pub host: Option<Span>,
    pub framing: Framing,
    /// The client asked to close after this request (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// An HTTP/1.1 request with an `Upgrade` field and `upgrade` among its `Connection` options
    /// (RFC 9110 7.8): a protocol switch (WebSocket) the backend may accept with a 101.
    pub upgrade: bool,
}

impl RequestHead {
    /// The host used for routing: the absolute-form authority, else `Host`.
    pub fn host<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match (self.authority, self.host) {
            (Some(a), _) => a.get(buf),
            (None, Some(h)) => h.get(buf),
            (None, None) => b"",
        }
    }
}

/// What became of an attempt to parse a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// More bytes are needed.
    Partial,
}

fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// Parses one request head at the start of `buf` (the bytes read so far: a partial head is
/// `Partial`, bytes after a complete head are left alone).
///
/// httparse finds the end of the head itself (a bare LF ends a line there too, so that such a head
/// is parsed, and then refused): a head that arrives in one read is scanned once. A head that
/// arrives in pieces is parsed again from its start on each read, which also refuses an invalid
/// one (HTTP/0.9, a bad request line) without waiting for an empty line that will never come; the
/// header limits bound that work.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Parsed<RequestHead>, Refusal> {
    parse_request_n::<MAX_HEADERS>(buf, limits)
}

/// [`parse_request`] with room for `N` header fields (the fuzz targets check the engine's
/// upstream heads, which carry the forwarding fields too, with more room than a client gets).
pub fn parse_request_n<const N: usize>(
    buf: &[u8],
    limits: &Limits,
) -> Result<Parsed<RequestHead>, Refusal> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_size {
                // A request line alone over the limit is a long URI, as nginx answers it.
                let line_end = memchr::memchr(b'\n', buf);
                if line_end.is_none_or(|e| e > limits.max_uri_length) {
                    return Err(refuse(414, "request target too long"));
                }
                return Err(refuse(431, "request header fields too large"));
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many header fields")),
        Err(httparse::Error::Version) => return Err(refuse(400, "unsupported HTTP version")),
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    let head = &buf[..len];
    check_line_ends(head)?;
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(refuse(400, "malformed request line"));
    };
    if target.len() > limits.max_uri_length {
        return Err(refuse(414, "request target too long"));
    }
    if len > limits.max_header_size {
        return Err(refuse(431, "request header fields too large"));
    }
    let target_span = Span::of(head, target.as_bytes());
    let (origin, path, authority) = split_target(head, method, target)?;

    let mut fields = Vec::with_capacity(req.headers.len() + 1);
    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = None;
    let mut close = version == 0;
    let mut expect_continue = false;
    let mut upgrade_option = false;
    let mut upgrade_field = false;
    let mut named_by_connection = false;
    for h in req.headers.iter() {
        let value = h.value;
        let kind = kind(h.name.as_bytes());
        match kind {
            Kind::Host => {
                if host.is_some() {
                    return Err(refuse(400, "more than one Host"));
                }
                host = Some(Span::of(head, value));
            }
            Kind::ContentLength => {
                if content_length.is_some() {
                    // RFC 9112 6.3 lets a recipient merge identical values; refusing is the safe
                    // reading.
                    return Err(refuse(400, "duplicate Content-Length"));
                }
                content_length =
                    Some(parse_length(value).ok_or(refuse(400, "invalid Content-Length"))?);
            }
            Kind::TransferEncoding => {
                if transfer_encoding.is_some() {
                    return Err(refuse(400, "more than one Transfer-Encoding"));
                }
                transfer_encoding = Some(value);
            }
            Kind::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if version == 0 {
                            close = false;
                        }
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_option = true;
                    } else {
                        // A Connection option may not remove what frames or routes the request
                        // (hop-by-hop abuse, as against Akamai in 2022 and CVE-2026-26365).
                        if matches!(
                            self::kind(token),
                            Kind::Host | Kind::ContentLength | Kind::TransferEncoding
                        ) {
                            return Err(refuse(400, "Connection names a framing field"));
                        }
                        named_by_connection = true;
                    }
                }
            }
            Kind::Expect => {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(refuse(417, "unsupported expectation"));
                }
            }
            Kind::Upgrade => upgrade_field = true,
            _ => {}
        }
        fields.push(Field {
            name: Span::of(head, h.name.as_bytes()),
            value: Span::of(head, value),
            kind,
        });
    }
    if named_by_connection {
        mark_connection_options(head, &mut fields);
    }
    let framing = match (transfer_encoding, content_length) {
        (Some(_), Some(_)) => {
            return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
        }
        (Some(_), None) if version == 0 => {
            return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        (Some(te), None) => {
            if !te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(refuse(400, "unsupported Transfer-Encoding"));
            }
            Framing::Chunked
        }
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    match host {
        Some(h) => {
            let value =
                std::str::from_utf8(h.get(head)).map_err(|_| refuse(400, "invalid Host"))?;
            if !valid_host(value) {
                return Err(refuse(400, "invalid Host"));
            }
        }
        None if version == 1 && authority.is_none() => {
            return Err(refuse(400, "HTTP/1.1 request without Host"));
        }
        None => {}
    }
    if let Some(a) = authority {
        let a = std::str::from_utf8(a.get(head)).unwrap_or("@");
        if a.contains('@') || !valid_host(a) {
            return Err(refuse(400, "invalid authority"));
        }
        // The authority of an absolute-form target wins over Host (RFC 9112 3.2.2); one that
        // disagrees is refused, as Pingora does, rather than routed by one and seen by another.
        if host.is_some_and(|h| !h.get(head).eq_ignore_ascii_case(a.as_bytes())) {
            return Err(refuse(
                400,
                "Host differs from the request target's authority",
            ));
        }
    }
    Ok(Parsed::Complete(RequestHead {
        len,
        method: Span::of(head, method.as_bytes()),
        target: target_span,
        origin,
        path,
        authority,
        version,
        fields,
        host,
        framing,
        close,
        expect_continue,
        upgrade: version == 1 && upgrade_field && upgrade_option,
    }))
}

/// Splits a request target into its origin-form, its path and its authority (absolute-form).
fn split_target(
    head: &[u8],
    method: &str,
    target: &str,
) -> Result<(Span, Span, Option<Span>), Refusal> {
    let bytes = target.as_bytes();
    if bytes.first() == Some(&b'/') {
        let path_len = bytes.iter().position(|&b| b == b'?').unwrap_or(bytes.len());
        let origin = Span::of(head, bytes);
        let path = Span::of(head, &bytes[..path_len]);
        return Ok((origin, path, None));
    }
    if target == "*" && method == "OPTIONS" {
        let origin = Span::of(head, bytes);
        return Ok((origin, origin, None));
    }
    let rest = if bytes.len() > 7 && bytes[..7].eq_ignore_ascii_case(b"http://") {
        &bytes[7..]
    } else if bytes.len() > 8 && bytes[..8].eq_ignore_ascii_case(b"https://") {
        &bytes[8..]
    } else {
        return Err(refuse(400, "invalid request target"));
    };
    let auth_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let authority = Span::of(head, &rest[..auth_len]);
    if authority.is_empty() {
        return Err(refuse(400, "invalid request target"));
    }
    let after = &rest[auth_len..];
    // The path of an absolute-form target goes upstream as the origin-form: it must be one (a
    // fragment, or a query without a path, would become an invalid request line).
    if !(after.is_empty() || after[0] == b'/') {
        return Err(refuse(400, "invalid request target"));
    }
    let origin = Span::of(head, after);
    let path_len = after.iter().position(|&b| b == b'?').unwrap_or(after.len());
    let path = Span::of(head, &after[..path_len]);
    Ok((origin, path, Some(authority)))
}

/// Marks the fields that `Connection` names as hop-by-hop (RFC 9110 7.6.1).
fn mark_connection_options(head: &[u8], fields: &mut [Field]) {
    let named: Vec<(u32, u32)> = fields
        .iter()
        .filter(|f| f.kind == Kind::Connection)
        .flat_map(|f| {
            tokens(f.value.get(head))
                .map(|t| {
                    let s = Span::of(head, t);
                    (s.start, s.end)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for f in fields.iter_mut() {
        let name = f.name.get(head);
        if named.iter().any(|&(s, e)| {
            Span { start: s, end: e }
                .get(head)
                .eq_ignore_ascii_case(name)
        }) && matches!(f.kind, Kind::Other | Kind::Forwarding | Kind::Hsts)
        {
            f.kind = Kind::HopByHop;
        }
    }
}

/// The comma-separated tokens of a field value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A Content-Length value: 1*DIGIT that fits in a u64 (RFC 9110 8.6), nothing else.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// A parsed upstream response head.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// The upstream will close the connection after this response (or may: HTTP/1.0).
    pub close: bool,
    /// The response carries its own `Strict-Transport-Security`.
    pub hsts: bool,
}

/// Why an upstream response head is refused (answered with 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses one response head at the start of `buf`, for a request of method `head_request`
/// (HEAD: no body whatever the framing fields say).
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Parsed<ResponseHead>, BadResponse> {
    parse_response_n::<MAX_HEADERS>(buf, head_request)
}

/// [`parse_response`] with room for `N` header fields (for the fuzz targets' checks of what the
/// engine sends clients: the backend's fields plus Portico's own).
pub fn parse_response_n<const N: usize>(
    buf: &[u8],
    head_request: bool,
) -> Result<Parsed<ResponseHead>, BadResponse> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(BadResponse("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let head = &buf[..len];
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse("malformed status line"));
    };
    if status < 100 {
        // httparse reads any three digits; `051` is no status code (RFC 9110 15).
        return Err(BadResponse("invalid status code"));
    }
    let reason = Span::of(head, resp.reason.unwrap_or("").as_bytes());
    let mut fields = Vec::with_capacity(resp.headers.len() + 1);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut close = version == 0;
    let mut hsts = false;
    let mut named_by_connection = false;
    for h in resp.headers.iter() {
        let kind = kind(h.name.as_bytes());
        let value = h.value;
        match kind {
            Kind::ContentLength => {
                let n = parse_length(value).ok_or(BadResponse("invalid Content-Length"))?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(BadResponse("differing Content-Length values"));
                }
                content_length = Some(n);
            }
            Kind::TransferEncoding => {
                if transfer_encoding.is_some() {
                    // Two fields are one list; only the last coding decides (RFC 9112 6.3).
                    transfer_encoding = Some(b"x");
                    if tokens(value)
                        .last()
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
                    {
                        transfer_encoding = Some(b"chunked");
                    }
                } else {
                    transfer_encoding = Some(value);
                }
            }
            Kind::Connection => {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if version == 0 {
                            close = false;
                        }
                    } else {
                        named_by_connection = true;
                    }
                }
            }
            Kind::Hsts => hsts = true,
            _ => {}
        }
        fields.push(Field {
            name: Span::of(head, h.name.as_bytes()),
            value: Span::of(head, value),
            kind,
        });
    }
    if named_by_connection {
        mark_connection_options(head, &mut fields);
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else if let Some(te) = transfer_encoding {
        // A final coding other than chunked is read until close (RFC 9112 6.3 rule 4).
        if tokens(te)
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    Ok(Parsed::Complete(ResponseHead {
        len,
        status,
        reason,
        version,
        fields,
        framing,
        close: close || framing == Framing::Close,
        hsts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(req: &str) -> Result<RequestHead, u16> {
        match parse_request(req.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete(h)) => Ok(h),
            Ok(Parsed::Partial) => Err(0),
            Err(r) => Err(r.status),
        }
    }

    #[test]
    fn parses_an_ordinary_request() {
        let text = "GET /a/b?c=d HTTP/1.1\r\nHost: foo.com\r\nX-A: 1\r\n\r\nrest";
        let h = parse(text).unwrap();
        let b = text.as_bytes();
        assert_eq!(h.len, text.len() - 4);
        assert_eq!(h.method.get(b), b"GET");
        assert_eq!(h.path.get(b), b"/a/b");
        assert_eq!(h.origin.get(b), b"/a/b?c=d");
        assert_eq!(h.host(b), b"foo.com");
        assert_eq!(h.framing, Framing::None);
        assert!(!h.close);
        assert_eq!(h.fields.len(), 2);
    }

    #[test]
    fn a_partial_head_waits_and_an_endless_one_is_refused() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Err(0));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40_000));
        assert_eq!(parse(&long), Err(414));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(40_000));
        assert_eq!(parse(&big), Err(431));
    }

    #[test]
    fn framing_rules_of_rfc_9112() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: a\n\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            ("GET http://a@b/ HTTP/1.1\r\nHost: b\r\n\r\n", 400),
            ("GET http://b/ HTTP/1.1\r\nHost: c\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: y 100-continue\r\n\r\n", 417),
            // Found by the h1_client fuzz target: a fragment after an absolute-form authority.
            ("GET http://a#.example HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET http://a?x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            assert_eq!(parse(req).err(), Some(status), "{req:?}");
        }
        let chunked =
            parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.framing, Framing::Chunked);
        let length = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(length.framing, Framing::Length(12));
    }

    #[test]
    fn connection_options_and_versions() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.close);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!h.close);
        let text =
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret, close\r\nX-Secret: 1\r\n\r\n";
        let h = parse(text).unwrap();
        assert!(h.close);
        assert_eq!(h.fields[2].kind, Kind::HopByHop);
        let h =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(h.upgrade);
        // Both fields are needed (RFC 9110 7.8), and HTTP/1.1.
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(!h.upgrade);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n").unwrap();
        assert!(!h.upgrade);
        let h =
            parse("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert!(!h.upgrade);
        let h = parse("GET http://b.com/x?y HTTP/1.1\r\nHost: b.com\r\n\r\n").unwrap();
        let b = b"GET http://b.com/x?y HTTP/1.1\r\nHost: b.com\r\n\r\n";
        assert_eq!(h.host(b), b"b.com");
        assert_eq!(h.origin.get(b), b"/x?y");
    }

    #[test]
    fn response_framing() {
        let r = |text: &str, head: bool| match parse_response(text.as_bytes(), head) {
            Ok(Parsed::Complete(h)) => Ok(h.framing),
            Ok(Parsed::Partial) => Err("partial"),
            Err(e) => Err(e.0),
        };
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok(Framing::None)
        );
        assert_eq!(
            r(
                "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Ok(Framing::None)
        );
        assert_eq!(
            r("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            Ok(Framing::None)
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n", false), Ok(Framing::Close));
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Ok(Framing::Close)
        );
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 4\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                false
            ),
            Err("differing Content-Length values")
        );
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", false),
            Err("partial")
        );
        // Found by the h1_upstream fuzz target: a status code under 100.
        assert_eq!(
            r("HTTP/1.1 051 E\r\n\r\n", false),
            Err("invalid status code")
        );
    }
}
