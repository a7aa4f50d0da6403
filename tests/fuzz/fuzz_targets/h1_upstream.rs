//! Arbitrary bytes as an upstream's response to Portico's HTTP/1 engine: parse the head, build the
//! client's head, frame the body as the engine does. The first byte chooses the request (HEAD or
//! not) and the client's version.
//!
//! Must not panic or loop, and what reaches the client must be well framed: its head parses as
//! complete, and its body, by the framing the head announces, is exactly the backend's body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico::request::h1::body::ChunkedDecoder;
use portico::request::h1::encode::{self, Out};
use portico::request::h1::parse::{parse_response, parse_response_n, Framing, Parsed};
use portico::request::policy::ServerHeader;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let client_11 = flags & 2 == 0;
    let keep = flags & 4 == 0;
    let hsts = (flags & 8 == 8).then_some("max-age=60");
    // A route's custom-headers, replacing the backend's fields of these names.
    let set = [
        (
            http::HeaderName::from_static("x-frame-options"),
            http::HeaderValue::from_static("DENY"),
        ),
        (
            http::HeaderName::from_static("content-type"),
            http::HeaderValue::from_static("text/plain"),
        ),
    ];
    let set = (flags & 32 == 32).then_some(&set[..]);
    let server = ServerHeader {
        pass_upstream: flags & 16 == 16,
        ..ServerHeader::default()
    };
    let response = match parse_response(data, head_request) {
        Ok(Parsed::Complete(r)) => r,
        _ => return,
    };
    let rhead = &data[..response.len];
    let body_in = &data[response.len..];
    let mut out = Vec::new();
    if (100..200).contains(&response.status) {
        encode::interim_head(&response, rhead, &server, &mut out);
        match parse_response_n::<128>(&out, false) {
            Ok(Parsed::Complete(r)) => assert_eq!(r.len, out.len()),
            other => panic!("interim head does not parse: {other:?}"),
        }
        return;
    }
    let framing = encode::out_framing(response.framing, client_11);
    encode::response_head(
        &response,
        rhead,
        framing,
        keep,
        &server,
        hsts,
        set,
        None,
        &[],
        &mut out,
    );
    let head_len = out.len();
    let mut body = Vec::new();
    match response.framing {
        Framing::None => {}
        Framing::Length(n) => {
            if (body_in.len() as u64) < n {
                return; // the engine closes the client connection: nothing more is framed
            }
            body.extend_from_slice(&body_in[..n as usize]);
            out.extend_from_slice(&body);
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut pieces = Vec::new();
            if decoder
                .decode(body_in, &mut |d| pieces.push(d.to_vec()))
                .is_err()
                || !decoder.is_done()
            {
                return;
            }
            for p in &pieces {
                body.extend_from_slice(p);
                encode::body_piece(framing, p, &mut out);
            }
            encode::body_end(framing, &mut out);
        }
        Framing::Close => {
            body.extend_from_slice(body_in);
            encode::body_piece(framing, body_in, &mut out);
            encode::body_end(framing, &mut out);
        }
    }
    let client = match parse_response_n::<128>(&out, head_request) {
        Ok(Parsed::Complete(r)) => r,
        other => panic!(
            "the client's head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out[..head_len])
        ),
    };
    assert_eq!(client.len, head_len);
    assert_eq!(client.status, response.status);
    let sent = &out[head_len..];
    match (client.framing, framing) {
        (Framing::None, Out::None) => assert!(sent.is_empty()),
        (Framing::Length(n), Out::Length(m)) => {
            assert_eq!(n, m);
            assert_eq!(sent, &body[..]);
        }
        (Framing::Chunked, Out::Chunked) => {
            let mut decoder = ChunkedDecoder::new();
            let mut got = Vec::new();
            let n = decoder
                .decode(sent, &mut |d| got.extend_from_slice(d))
                .expect("the engine's chunks decode");
            assert!(decoder.is_done() && n == sent.len());
            assert_eq!(got, body);
        }
        (Framing::Close, Out::Close) => assert_eq!(sent, &body[..]),
        (got, want) => panic!("the client sees {got:?}, the engine sent {want:?}"),
    }
});
