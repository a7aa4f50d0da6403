//! Heads and body framing as the engine writes them: pure functions into a byte vector.
//!
//! Requests go upstream in origin-form as HTTP/1.1, with the client's fields in their order and
//! case, less the hop-by-hop ones; responses go to the client with the backend's fields in their
//! order, with `Date` and `Server` replaced where they stand (as Pingora's engine does, so that
//! both engines send the same bytes). Every line ends in CRLF whatever the peer sent.

use super::body::{chunk_line, LAST_CHUNK};
use super::parse::{Field, Framing, Kind, RequestHead, ResponseHead};
use crate::request::policy::{Answer, Edits, Forwarded, ServerHeader};

/// A response's framing towards the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, which have no chunked coding).
    Close,
}

/// How a response framed by the backend goes on to a client: a chunked or close-delimited body
/// is chunked for an HTTP/1.1 client (so its connection stays open), and close-delimited for
/// HTTP/1.0.
pub fn out_framing(upstream: Framing, client_11: bool) -> Out {
    match upstream {
        Framing::None => Out::None,
        Framing::Length(n) => Out::Length(n),
        Framing::Chunked | Framing::Close if client_11 => Out::Chunked,
        Framing::Chunked | Framing::Close => Out::Close,
    }
}

/// The request head for the upstream: origin-form, HTTP/1.1, the client's fields without the
/// hop-by-hop ones, `Host` from an absolute-form target, then the forwarding fields, then
/// `Transfer-Encoding` (where Pingora's engine puts it).
pub fn request_head(head: &RequestHead, raw: &[u8], forwarded: &Forwarded, out: &mut Vec<u8>) {
    request_head_edited(head, raw, forwarded, None, out)
}

/// [`request_head`] with the policy's [`Edits`]: another target, `Host` or `X-Forwarded-Prefix`.
pub fn request_head_edited(
    head: &RequestHead,
    raw: &[u8],
    forwarded: &Forwarded,
    edits: Option<&Edits>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.get(raw));
    out.push(b' ');
    let origin = head.origin.get(raw);
    match edits.and_then(|e| e.target.as_deref()) {
        Some(target) => out.extend_from_slice(target.as_bytes()),
        None => out.extend_from_slice(if origin.is_empty() { b"/" } else { origin }),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = edits.and_then(|e| e.host.as_ref());
    let prefix = edits.and_then(|e| e.prefix.as_ref());
    let drop_authorization = edits.is_some_and(|e| e.drop_authorization);
    let set = edits.map(|e| e.set.as_slice()).unwrap_or_default();
    let mut upgrade_done = false;
    for f in &head.fields {
        match f.kind {
            Kind::Host if host.is_some() => {
                field(b"Host", host.map_or(&b""[..], |h| h.as_bytes()), out)
            }
            // Replaced by the policy's value below.
            Kind::Other
                if prefix.is_some()
                    && f.name.get(raw).eq_ignore_ascii_case(b"x-forwarded-prefix") => {}
            Kind::Other
                if drop_authorization && f.name.get(raw).eq_ignore_ascii_case(b"authorization") => {
            }
            // Set (or removed) from an external auth answer: the client's own never passes.
            Kind::Other
                if set
                    .iter()
                    .any(|(n, _)| f.name.get(raw).eq_ignore_ascii_case(n.as_str().as_bytes())) => {}
            // An upgrade asks the backend to switch: `Upgrade` and the one option it needs go on.
            Kind::Upgrade if head.upgrade => copy(f, raw, out),
            Kind::Connection if head.upgrade => {
                if !upgrade_done {
                    field(b"Connection", b"upgrade", out);
                    upgrade_done = true;
                }
            }
            Kind::HopByHop
            | Kind::Upgrade
            | Kind::Connection
            | Kind::Forwarding
            | Kind::Expect
            | Kind::TransferEncoding => {}
            _ => copy(f, raw, out),
        }
    }
    if head.host.is_none() {
        // HTTP/1.1 requires Host; without an authority it is empty (RFC 9110 7.2). An HTTP/1.0
        // client may have sent none.
        let authority = head.authority.map(|a| a.get(raw)).unwrap_or_default();
        field(b"Host", host.map_or(authority, |h| h.as_bytes()), out);
    }
    for (name, value) in forwarded {
        field(name.as_bytes(), value.as_bytes(), out);
    }
    if let Some(p) = prefix {
        field(b"X-Forwarded-Prefix", p.as_bytes(), out);
    }
    for (name, value) in set {
        if let Some(v) = value {
            field(name.as_str().as_bytes(), v.as_bytes(), out);
        }
    }
    for (name, value) in edits.map(|e| e.add.as_slice()).unwrap_or_default() {
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    if head.framing == Framing::Chunked {
        field(b"Transfer-Encoding", b"chunked", out);
    }
    out.extend_from_slice(b"\r\n");
}

/// The response head for the client. `rhead` holds the backend's head that `response` indexes;
/// `set` are the route's own headers (ingress-nginx's `custom-headers`), replacing the backend's
/// of the same names; `edits` a Gateway API route's `ResponseHeaderModifier`s.
#[allow(clippy::too_many_arguments)]
pub fn response_head(
    response: &ResponseHead,
    rhead: &[u8],
    framing: Out,
    keep: bool,
    server: &ServerHeader,
    hsts: Option<&str>,
    set: Option<&[(http::HeaderName, http::HeaderValue)]>,
    edits: Option<&crate::routing::gateway::actions::CompiledEdits>,
    cookies: &[http::HeaderValue],
    out: &mut Vec<u8>,
) {
    status_line(response.status, response.reason.get(rhead), out);
    let pass = server.pass_upstream;
    let (mut server_done, mut date_done, mut framing_done) = (pass, false, false);
    for f in &response.fields {
        match f.kind {
            Kind::HopByHop | Kind::Upgrade | Kind::Connection => {}
            Kind::Date => {
                if !date_done {
                    date(out);
                    date_done = true;
                }
            }
            Kind::Server if !pass => {
                if !server_done {
                    own_server(server, out);
                    server_done = true;
                }
            }
            Kind::ContentLength => match framing {
                Out::Length(_) | Out::None if !framing_done => {
                    copy(f, rhead, out);
                    framing_done = true;
                }
                _ => {}
            },
            Kind::TransferEncoding => match framing {
                Out::Chunked if !framing_done => {
                    field(b"Transfer-Encoding", b"chunked", out);
                    framing_done = true;
                }
                // HEAD, 204, 304: the fields say what a GET would have had.
                Out::None => copy(f, rhead, out),
                _ => {}
            },
            _ => match (set, edits) {
                (None, None) => copy(f, rhead, out),
                _ => {
                    let name = f.name.get(rhead);
                    let replaced = set
                        .unwrap_or_default()
                        .iter()
                        .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
                        || edits.is_some_and(|e| e.drops(name));
                    if !replaced {
                        copy(f, rhead, out)
                    }
                }
            },
        }
    }
    if !server_done {
        own_server(server, out);
    }
    for (name, value) in set.unwrap_or_default() {
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    for (name, value) in edits.into_iter().flat_map(|e| e.appended()) {
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    for cookie in cookies {
        field(b"Set-Cookie", cookie.as_bytes(), out);
    }
    if let (Some(hsts), false) = (hsts, response.hsts) {
        field(b"Strict-Transport-Security", hsts.as_bytes(), out);
    }
    if !date_done {
        date(out);
    }
    if !framing_done {
        match framing {
            Out::Length(n) => length_field(n, out),
            Out::Chunked => field(b"Transfer-Encoding", b"chunked", out),
            Out::None | Out::Close => {}
        }
    }
    connection(keep, out);
    out.extend_from_slice(b"\r\n");
}

/// An interim (1xx) response for the client: the backend's fields and `Server`, no `Date`.
pub fn interim_head(
    response: &ResponseHead,
    rhead: &[u8],
    server: &ServerHeader,
    out: &mut Vec<u8>,
) {
    status_line(response.status, response.reason.get(rhead), out);
    for f in &response.fields {
        match f.kind {
            Kind::HopByHop
            | Kind::Upgrade
            | Kind::Connection
            | Kind::ContentLength
            | Kind::TransferEncoding => {}
            Kind::Server if !server.pass_upstream => {}
            _ => copy(f, rhead, out),
        }
    }
    if !server.pass_upstream {
        own_server(server, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// A 101 for the client, after which the connection carries the upgraded protocol: the
/// backend's fields with its `Upgrade`, `Server` as for any response, and `Connection: upgrade`.
pub fn switching_head(
    response: &ResponseHead,
    rhead: &[u8],
    server: &ServerHeader,
    out: &mut Vec<u8>,
) {
    status_line(101, response.reason.get(rhead), out);
    for f in &response.fields {
        match f.kind {
            Kind::Upgrade => copy(f, rhead, out),
            Kind::HopByHop | Kind::Connection | Kind::ContentLength | Kind::TransferEncoding => {}
            Kind::Server if !server.pass_upstream => {}
            _ => copy(f, rhead, out),
        }
    }
    if !server.pass_upstream {
        own_server(server, out);
    }
    field(b"Connection", b"upgrade", out);
    out.extend_from_slice(b"\r\n");
}

/// The head of one of the policy's own answers (its body follows).
pub fn answer_head(answer: &Answer, close: bool, server: &ServerHeader, out: &mut Vec<u8>) {
    status_line(answer.status, reason(answer.status).as_bytes(), out);
    own_server(server, out);
    if let Some(location) = &answer.location {
        field(b"Location", location.as_bytes(), out);
    }
    if !answer.body.is_empty()
        && !answer
            .headers
            .iter()
            .any(|(n, _)| n == http::header::CONTENT_TYPE)
    {
        field(b"Content-Type", b"text/plain; charset=utf-8", out);
    }
    for (name, value) in &answer.headers {
        field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    // RFC 9110 8.6: never in a 204.
    if answer.status != 204 {
        length_field(answer.body.len() as u64, out);
    }
    date(out);
    connection(!close, out);
    out.extend_from_slice(b"\r\n");
}

/// A run of body data in the client's framing.
pub fn body_piece(framing: Out, data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    if framing == Out::Chunked {
        chunk_line(data.len(), out);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// The end of a body in the client's framing.
pub fn body_end(framing: Out, out: &mut Vec<u8>) {
    if framing == Out::Chunked {
        out.extend_from_slice(LAST_CHUNK);
    }
}

/// The reason phrase of a status Portico answers itself.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn own_server(server: &ServerHeader, out: &mut Vec<u8>) {
    if !server.value.is_empty() {
        field(b"Server", server.value.as_bytes(), out);
    }
}

fn date(out: &mut Vec<u8>) {
    field(
        b"Date",
        pingora_core::protocols::http::date::get_cached_date().as_bytes(),
        out,
    );
}

/// `Connection`, on every response, as nginx and Pingora send it.
fn connection(keep: bool, out: &mut Vec<u8>) {
    if keep {
        field(b"Connection", b"keep-alive", out);
    } else {
        field(b"Connection", b"close", out);
    }
}

fn status_line(status: u16, reason: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn copy(f: &Field, head: &[u8], out: &mut Vec<u8>) {
    field(f.name.get(head), f.value.get(head), out);
}

fn length_field(n: u64, out: &mut Vec<u8>) {
    let mut b = itoa::Buffer::new();
    field(b"Content-Length", b.format(n).as_bytes(), out);
}
