//! Arbitrary bytes as a client's stream into Portico's HTTP/1 engine: parse the heads one after
//! another (pipelined), build each upstream request, frame each body as the engine does.
//!
//! Must not panic or loop, and every request it would send upstream must be well framed: it
//! parses again, as a complete head of exactly its length, with the same method and framing, and
//! a chunked body re-encoded by the engine decodes to the same bytes.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use portico::request::guard::Limits;
use portico::request::h1::body::{chunk_line, ChunkedDecoder, LAST_CHUNK};
use portico::request::h1::encode;
use portico::request::h1::parse::{parse_request, parse_request_n, Framing, Parsed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // The upstream head carries the forwarding fields too: parse it with room for them.
    let upstream_limits = Limits {
        max_uri_length: limits.max_uri_length,
        max_header_size: limits.max_header_size + 1024,
    };
    let forwarded = [
        ("x-forwarded-for", HeaderValue::from_static("127.0.0.1")),
        ("x-real-ip", HeaderValue::from_static("127.0.0.1")),
        ("x-forwarded-proto", HeaderValue::from_static("http")),
        ("x-forwarded-host", HeaderValue::from_static("a.example")),
        ("x-forwarded-port", HeaderValue::from_static("80")),
    ];
    let mut rest = data;
    for _ in 0..32 {
        let head = match parse_request(rest, &limits) {
            Ok(Parsed::Complete(h)) => h,
            _ => return,
        };
        assert!(head.len <= rest.len());
        let raw = &rest[..head.len];
        let mut up = Vec::new();
        encode::request_head(&head, raw, &forwarded, &mut up);
        match parse_request_n::<128>(&up, &upstream_limits) {
            Ok(Parsed::Complete(u)) => {
                assert_eq!(
                    u.len,
                    up.len(),
                    "upstream head: {:?}",
                    String::from_utf8_lossy(&up)
                );
                assert_eq!(u.framing, head.framing);
                assert_eq!(u.method.get(&up), head.method.get(raw));
                assert_eq!(u.version, 1);
                assert_eq!(
                    u.upgrade, head.upgrade,
                    "an upgrade goes on as asked, never made up"
                );
            }
            other => panic!(
                "the upstream head does not parse ({other:?}): {:?}",
                String::from_utf8_lossy(&up)
            ),
        }
        rest = &rest[head.len..];
        match head.framing {
            Framing::None | Framing::Close => {}
            Framing::Length(n) => {
                if (rest.len() as u64) < n {
                    return;
                }
                rest = &rest[n as usize..];
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut body = Vec::new();
                let mut encoded = Vec::new();
                let Ok(consumed) = decoder.decode(rest, &mut |d| {
                    body.extend_from_slice(d);
                    chunk_line(d.len(), &mut encoded);
                    encoded.extend_from_slice(d);
                    encoded.extend_from_slice(b"\r\n");
                }) else {
                    return;
                };
                assert!(consumed <= rest.len());
                if !decoder.is_done() {
                    return;
                }
                encoded.extend_from_slice(LAST_CHUNK);
                let mut again = ChunkedDecoder::new();
                let mut round = Vec::new();
                let n = again
                    .decode(&encoded, &mut |d| round.extend_from_slice(d))
                    .expect("the engine's chunks decode");
                assert!(again.is_done() && n == encoded.len());
                assert_eq!(round, body);
                rest = &rest[consumed..];
            }
        }
    }
});
