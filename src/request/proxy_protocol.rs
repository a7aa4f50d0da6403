//! The PROXY protocol (HAProxy's, v1 and v2): a load balancer in front of Portico that passes
//! TCP through says who the client is in a header before the first byte of the connection's own
//! data, as ingress-nginx's `use-proxy-protocol` expects.
//!
//! When it is on (the ConfigMap's `use-proxy-protocol`, or `--proxy-protocol`), every connection
//! on both listeners must start with such a header, within `proxy-protocol-header-timeout`;
//! a connection without one is closed, as nginx closes it ("broken header"). The header's source
//! address becomes the connection's peer address, which everything after it sees as the client
//! (allowlists, limits, X-Forwarded-For, the access log). `LOCAL` (v2) and `UNKNOWN` (v1)
//! headers, sent by health checks, keep the real peer. On the TLS listener the header is read
//! before the handshake (Pingora's pre-TLS hook); on the plain one, before the first request.
//! The header is parsed by the `ppp` crate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, UniqueID};
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::dataplane::Shared;

/// The longest header read: a v1 header is at most 107 bytes, and v2 TLVs beyond this are not
/// something a load balancer sends.
const MAX_HEADER: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    /// Closed before sending anything (a load balancer's TCP health check): not counted.
    #[error("the connection closed before sending anything")]
    Empty,
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
    #[error("the PROXY protocol header is over {MAX_HEADER} bytes")]
    TooLong,
}

/// Reads the PROXY header at the start of `stream`: the client address it names (`None` for
/// `LOCAL`/`UNKNOWN` and address families other than TCP over IPv4/IPv6), and the bytes read
/// after it, which belong to the connection's own data.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<(Option<SocketAddr>, BytesMut), ProxyHeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            // A v1 line is judged only once it has ended (or passed v1's 107 bytes): before,
            // ppp may call a line cut inside a number or between CR and LF invalid; after, it
            // may call a line with a bad field incomplete.
            let v1 = looks_v1(&buf);
            let parsed = HeaderResult::parse(&buf);
            let (len, addr) = match parsed {
                _ if v1 && !v1_ended(&buf) => {
                    read_more(stream, &mut buf).await?;
                    continue;
                }
                r if r.is_incomplete() && v1 => {
                    return Err(ProxyHeaderError::Invalid(format!("{r:?}")));
                }
                r if r.is_incomplete() => {
                    if buf.len() >= MAX_HEADER {
                        return Err(ProxyHeaderError::TooLong);
                    }
                    read_more(stream, &mut buf).await?;
                    continue;
                }
                HeaderResult::V1(Ok(h)) => (
                    h.header.len(),
                    match h.addresses {
                        ppp::v1::Addresses::Tcp4(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        ppp::v1::Addresses::Tcp6(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        ppp::v1::Addresses::Unknown => None,
                    },
                ),
                HeaderResult::V2(Ok(h)) => (
                    h.len(),
                    match (h.command, h.addresses) {
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        _ => None,
                    },
                ),
                HeaderResult::V1(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
                HeaderResult::V2(Err(e)) => return Err(ProxyHeaderError::Invalid(e.to_string())),
            };
            let rest = buf.split_off(len);
            return Ok((addr, rest));
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout(limit)),
    }
}

/// Reads more of the header into `buf`; the end of the stream is an error.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(), ProxyHeaderError> {
    let n = stream
        .read_buf(buf)
        .await
        .map_err(|_| ProxyHeaderError::Closed)?;
    match (n, buf.is_empty()) {
        (0, true) => Err(ProxyHeaderError::Empty),
        (0, false) => Err(ProxyHeaderError::Closed),
        _ => Ok(()),
    }
}

/// Whether `buf` is, or may become, a v1 header (it starts with `PROXY`, or is a prefix of it);
/// an empty buffer may be either version.
fn looks_v1(buf: &[u8]) -> bool {
    !buf.is_empty() && (buf.starts_with(b"PROXY") || b"PROXY".starts_with(buf))
}

/// Whether a v1 header's line has ended, or is longer than v1 allows.
fn v1_ended(buf: &[u8]) -> bool {
    const V1_MAX: usize = 107;
    buf.len() >= V1_MAX || buf.windows(2).any(|w| w == b"\r\n")
}

/// Makes `addr` the peer address of `stream` (its socket digest, which both engines read).
pub fn set_peer(stream: &mut (impl GetSocketDigest + UniqueID + ?Sized), addr: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(stream.id());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(addr)));
    stream.set_socket_digest(digest);
}

/// Whether connections must start with a PROXY header now, and how long it may take: read from
/// the newest snapshot, so that a ConfigMap change applies to the next connection.
pub fn wanted(shared: &Shared) -> Option<Duration> {
    shared.load().routes.proxy_protocol()
}

/// The TLS listener's hook: the header is read before the handshake.
pub struct PreTls {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_core::Result<()> {
        let Some(limit) = wanted(&self.shared) else {
            return Ok(());
        };
        match read_header(stream, limit).await {
            Ok((addr, rest)) => {
                stream.rewind(&rest);
                if let Some(addr) = addr {
                    set_peer(stream, addr);
                }
                Ok(())
            }
            Err(e) => Err(refused(&self.shared, e)),
        }
    }
}

/// Counts and logs a refused header; the error closes the connection.
pub fn refused(shared: &Shared, e: ProxyHeaderError) -> Box<pingora_core::Error> {
    if !matches!(e, ProxyHeaderError::Empty) {
        shared.metrics.proxy_protocol_refused.inc();
        tracing::debug!(error = %e, "connection closed: PROXY protocol header refused");
    }
    pingora_core::Error::explain(pingora_core::ErrorType::InvalidHTTPHeader, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<(Option<SocketAddr>, BytesMut), ProxyHeaderError> {
        let mut input = bytes;
        read_header(&mut input, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client() {
        let (addr, rest) =
            parse(b"PROXY TCP4 198.51.100.7 127.0.0.1 50000 80\r\nGET / HTTP/1.1\r\n")
                .await
                .expect("v1");
        assert_eq!(addr, Some("198.51.100.7:50000".parse().unwrap()));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (addr, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n")
            .await
            .expect("v1 6");
        assert_eq!(addr, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\nx").await.expect("unknown").0, None);
        // A line that arrives in pieces, cut inside a number and between CR and LF.
        let line = b"PROXY TCP4 198.51.100.7 127.0.0.1 50000 80\r\nGET";
        for cut in [line.len() - 6, line.len() - 5, line.len() - 4, 8, 3] {
            let (a, b) = line.split_at(cut);
            let mut reader = tokio_test_reader(a, b);
            let (addr, rest) = read_header(&mut reader, Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(
                addr,
                Some("198.51.100.7:50000".parse().unwrap()),
                "cut at {cut}"
            );
            assert!(b"GET".starts_with(&rest), "cut at {cut}");
        }
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "203.0.113.9:1234".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .expect("v2");
        let mut input = v2.clone();
        input.extend_from_slice(b"\x16\x03\x01");
        let (addr, rest) = parse(&input).await.expect("v2");
        assert_eq!(addr, Some("203.0.113.9:1234".parse().unwrap()));
        assert_eq!(&rest[..], b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 300.1.1.1 1.1.1.1 1 1\r\n",
            b"PROXY TCP4 1.2.3\r\nGET / HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(parse(bad).await.is_err(), "{bad:?}");
        }
        // Incomplete, then the connection ends; or it ends before anything.
        assert!(matches!(
            parse(b"PROXY TCP4 1.2").await,
            Err(ProxyHeaderError::Closed)
        ));
        assert!(matches!(parse(b"").await, Err(ProxyHeaderError::Empty)));
        // Endless bytes that never complete a header are bounded.
        let long = [b"PROXY ".as_slice(), &[b'1'; 5000]].concat();
        assert!(parse(&long).await.is_err());
    }

    proptest::proptest! {
        /// Any bytes, in any pieces: no panic; a header that is accepted leaves exactly the bytes
        /// after it, and a real header in front of anything is always found.
        #[test]
        fn never_panics_and_keeps_the_rest(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..600,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            rt.block_on(async {
                let mut input = &junk[..];
                if let Ok((_, rest)) = read_header(&mut input, Duration::from_millis(50)).await {
                    proptest::prop_assert!(junk.ends_with(&rest));
                }
                let mut framed = b"PROXY TCP4 203.0.113.1 127.0.0.1 1 80\r\n".to_vec();
                framed.extend_from_slice(&junk);
                // Delivered in two pieces, split anywhere.
                let cut = cut.min(framed.len());
                let (a, b) = framed.split_at(cut);
                let mut reader = tokio_test_reader(a, b);
                let (addr, rest) = read_header(&mut reader, Duration::from_secs(1)).await.unwrap();
                proptest::prop_assert_eq!(addr, Some("203.0.113.1:1".parse().unwrap()));
                // What was read past the header is the start of the rest.
                proptest::prop_assert!(junk.starts_with(&rest));
                Ok(())
            })?;
        }
    }

    /// A reader that returns `a`, then `b`, in two reads.
    fn tokio_test_reader<'a>(a: &'a [u8], b: &'a [u8]) -> impl AsyncRead + Unpin + 'a {
        AsyncReadExt::chain(a, b)
    }

    #[tokio::test]
    async fn a_trickled_header_is_bounded_in_time() {
        let (mut client, mut server) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let started = std::time::Instant::now();
        let r = read_header(&mut server, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(ProxyHeaderError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
