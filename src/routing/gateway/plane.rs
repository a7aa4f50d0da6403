//! The Gateway API part of a snapshot: the entry points (one per local address and socket
//! port a Gateway is reachable at), each with its [`GatewayTable`], and what each matched rule
//! does ([`GatewayRoute`], carried by the snapshot's [`crate::routing::Route`]s so that pools,
//! metrics, logs and retries work as for Ingress routes).
//!
//! A connection on a Gateway socket (`--gateway-listen`) picks its entry point by the local
//! address and port it arrived on: each Gateway's addresses (its own from
//! `--gateway-address-pool`, or the shared ones) times the sockets of its listeners' ports.
//! Without a pool, Gateways on a wildcard socket are reached at any of its addresses (one entry
//! point keyed by the wildcard address: under hostNetwork the published address is often a
//! load balancer's, never a connection's local address).
//!
//! A Gateway socket is either its own, where only Gateway routes answer (404 when none
//! matches), or the Ingress listener itself (`--gateway-listen` given exactly the address of
//! `--http-listen` or `--https-listen`): there the Gateway routes of the connection's address
//! are matched first and a request none of them matches goes to the Ingress routes, so that
//! hosts and paths move from Ingress to HTTPRoute one at a time on the same port. The compile
//! step reports each Ingress rule an HTTPRoute takes over there (an Event on the Ingress).
//! Without `--gateway-listen` a snapshot has no [`GatewayPlane`]: Ingress requests pay one
//! branch.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::actions::{CompiledEdits, WeightedChoice};
use super::GatewayTable;
use crate::routing::FastMap;
use crate::translate::gateway::effective::{Redirect, Rewrite};
use crate::translate::gateway::hostname::GwHost;

/// A TLS listener's hostname (`None`: any) and its certificate.
pub type ListenerCert = (Option<GwHost>, Arc<CertifiedKey>);

/// Every Gateway entry point of a snapshot.
#[derive(Debug, Default)]
pub struct GatewayPlane {
    entries: FastMap<SocketAddr, EntryPoint>,
    /// The certificates of the TLS entry points: each listener hostname's (`None`: any host),
    /// most specific first.
    certs: FastMap<SocketAddr, Vec<ListenerCert>>,
    /// The Gateway sockets, and whether each is also the Ingress listener (requests no Gateway
    /// route matches go on to the Ingress routes). A connection on another port is not a
    /// Gateway's (no hash lookup).
    sockets: Vec<(SocketAddr, bool)>,
    /// The certificates of the Gateway TLS listeners on the Ingress HTTPS listener (any
    /// address), most specific hostname first: that listener's resolver cannot tell addresses
    /// apart.
    ingress_certs: Vec<ListenerCert>,
}

/// The listeners served at one local address and socket port.
#[derive(Debug, Default)]
pub struct EntryPoint {
    pub table: GatewayTable,
    /// The snapshot route of each rule of each listener: `routes[listener][rule]`.
    pub routes: Vec<Vec<usize>>,
}

impl GatewayPlane {
    /// A plane for the Gateway sockets (`--gateway-listen`; `true`: also the Ingress listener),
    /// with no entry point yet.
    pub fn new(sockets: Vec<(SocketAddr, bool)>) -> Self {
        Self {
            entries: FastMap::default(),
            certs: FastMap::default(),
            sockets,
            ingress_certs: Vec::new(),
        }
    }

    /// Sets the certificates of the Gateway TLS listeners on the Ingress HTTPS listener, most
    /// specific hostname first.
    pub fn set_ingress_certificates(&mut self, certs: Vec<ListenerCert>) {
        self.ingress_certs = certs;
    }

    /// A Gateway certificate for a handshake on the Ingress HTTPS listener, in this order: a
    /// Gateway listener whose hostname matches the SNI name (most specific first); else, when
    /// `ingress_has` says no Ingress certificate is named for it, a Gateway listener without
    /// hostname. `None`: the Ingress certificates (and the default one) decide.
    pub fn ingress_socket_certificate(
        &self,
        sni: Option<&str>,
        ingress_has: impl FnOnce(&str) -> bool,
    ) -> Option<&Arc<CertifiedKey>> {
        if self.ingress_certs.is_empty() {
            return None;
        }
        if let Some(name) = sni {
            let named = self
                .ingress_certs
                .iter()
                .find(|(h, _)| h.as_ref().is_some_and(|h| h.matches(name)));
            if let Some((_, c)) = named {
                return Some(c);
            }
            if ingress_has(name) {
                return None;
            }
        }
        self.ingress_certs
            .iter()
            .find(|(h, _)| h.is_none())
            .map(|(_, c)| c)
    }

    /// Sets the certificates of a TLS entry point, most specific hostname first.
    pub fn insert_certificates(&mut self, local: SocketAddr, certs: Vec<ListenerCert>) {
        if !certs.is_empty() {
            self.certs.insert(local, certs);
        }
    }

    /// The certificate of a handshake on a Gateway's TLS socket: the most specific listener
    /// whose hostname matches the SNI name, else the first listener without a hostname, else
    /// the most specific one. `None`: the entry point has none (the caller falls back to the
    /// default certificate; the request then gets 404 by Host).
    pub fn certificate(&self, local: SocketAddr, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        let certs = self.certs.get(&local)?;
        let by_name = sni.and_then(|name| {
            certs
                .iter()
                .find(|(h, _)| h.as_ref().is_some_and(|h| h.matches(name)))
        });
        by_name
            .or_else(|| certs.iter().find(|(h, _)| h.is_none()))
            .or(certs.first())
            .map(|(_, c)| c)
    }

    /// Adds the entry point of a local address (a Gateway's address and a socket's port).
    pub fn insert(&mut self, local: SocketAddr, entry: EntryPoint) {
        self.entries.insert(local, entry);
    }

    /// The entry point of a connection's local address, if a Gateway is served there: its own
    /// address's, else the wildcard socket's (Gateways without a pool address).
    #[inline]
    pub fn entry(&self, local: SocketAddr) -> Option<&EntryPoint> {
        let port = local.port();
        let local = SocketAddr::new(local.ip().to_canonical(), port);
        self.entries.get(&local).or_else(|| {
            [
                std::net::Ipv4Addr::UNSPECIFIED.into(),
                std::net::Ipv6Addr::UNSPECIFIED.into(),
            ]
            .into_iter()
            .find_map(|ip| self.entries.get(&SocketAddr::new(ip, port)))
        })
    }

    /// Whether a connection's local address is on a Gateway socket: `Some(false)` on a socket
    /// of its own (a request there is answered by Gateway routes only, 404 when none matches),
    /// `Some(true)` on the Ingress listener (Gateway routes first, then the Ingress routes),
    /// `None` elsewhere.
    #[inline]
    pub fn socket(&self, local: SocketAddr) -> Option<bool> {
        let ip = local.ip().to_canonical();
        self.sockets
            .iter()
            .find(|(s, _)| s.port() == local.port() && (s.ip().is_unspecified() || s.ip() == ip))
            .map(|(_, shared)| *shared)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a matched Gateway API rule does.
#[derive(Debug)]
pub struct GatewayRoute {
    /// The listener's port as the Gateway's spec says it (a redirect's default port).
    pub listener_port: u16,
    pub action: GatewayAction,
}

impl PartialEq for GatewayRoute {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for GatewayRoute {}

/// The action of a rule.
#[derive(Debug)]
pub enum GatewayAction {
    /// `RequestRedirect`: answered here.
    Redirect(Redirect),
    /// Answered here with this status (500: no backend, all weights 0).
    Error(u16),
    Forward(GatewayForward),
}

/// A rule that proxies: its filters and weighted backends.
#[derive(Debug)]
pub struct GatewayForward {
    pub rewrite: Option<Rewrite>,
    /// At least one.
    pub backends: Vec<GatewayBackend>,
    /// `None` with a single backend.
    pub choice: Option<WeightedChoice>,
    /// `RequestMirror`s with a valid backend.
    pub mirrors: Vec<GatewayMirror>,
}

/// One `RequestMirror`: of each `denominator` requests, `numerator` are copied to `pool` (one
/// endpoint each), spread evenly by a counter.
#[derive(Debug)]
pub struct GatewayMirror {
    pub pool: usize,
    pub numerator: u32,
    pub denominator: u32,
    count: std::sync::atomic::AtomicU32,
}

impl GatewayMirror {
    pub fn new(pool: usize, numerator: u32, denominator: u32) -> Self {
        Self {
            pool,
            numerator: numerator.min(denominator),
            denominator: denominator.max(1),
            count: Default::default(),
        }
    }

    /// Whether this request is copied: exactly `numerator` of each `denominator` in a row.
    pub fn fires(&self) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        if self.numerator == 0 {
            return false;
        }
        let d = u64::from(self.denominator);
        let n = u64::from(
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % self.denominator,
        );
        let num = u64::from(self.numerator);
        (n + 1) * num / d > n * num / d
    }
}

impl GatewayForward {
    /// The backend for the next request.
    #[inline]
    pub fn pick(&self) -> usize {
        self.choice.as_ref().map_or(0, WeightedChoice::pick)
    }

    /// Whether the upstream request differs from the client's for backend `i`.
    pub fn edits(&self, i: usize) -> bool {
        self.rewrite.is_some()
            || self
                .backends
                .get(i)
                .is_some_and(|b| !b.request_headers.is_empty())
    }
}

/// One weighted backend.
#[derive(Debug)]
pub struct GatewayBackend {
    /// The snapshot's pool; `None` for an invalid reference (its share is answered 500).
    pub pool: Option<usize>,
    /// The rule's `RequestHeaderModifier`, then the backend's own.
    pub request_headers: CompiledEdits,
    /// The rule's `ResponseHeaderModifier`, then the backend's own; `None` when empty.
    pub response_headers: Option<CompiledEdits>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::LoadedCert;

    #[test]
    fn certificates_by_address_then_sni_most_specific_first() {
        let key = |name: &str| LoadedCert::self_signed(&[name]).unwrap().key;
        let host = |h: &str| Some(GwHost::parse(h).unwrap());
        let (exact, wildcard, any) = (key("a.example.com"), key("x.example.com"), key("any"));
        let mut plane = GatewayPlane::new(vec![("0.0.0.0:8443".parse().unwrap(), false)]);
        let local: SocketAddr = "127.0.0.2:8443".parse().unwrap();
        plane.insert_certificates(
            local,
            vec![
                (host("a.example.com"), exact.clone()),
                (host("*.example.com"), wildcard.clone()),
                (None, any.clone()),
            ],
        );
        let pick = |sni| plane.certificate(local, sni).cloned();
        assert!(Arc::ptr_eq(&pick(Some("a.example.com")).unwrap(), &exact));
        assert!(Arc::ptr_eq(
            &pick(Some("b.c.example.com")).unwrap(),
            &wildcard
        ));
        assert!(Arc::ptr_eq(&pick(Some("other.org")).unwrap(), &any));
        assert!(Arc::ptr_eq(&pick(None).unwrap(), &any));
        // Another address of the socket has no Gateway: the caller's default.
        assert!(plane
            .certificate("127.0.0.3:8443".parse().unwrap(), Some("a.example.com"))
            .is_none());
        // An IPv4-mapped local address is the IPv4 one.
        assert!(plane
            .certificate("[::ffff:127.0.0.2]:8443".parse().unwrap(), None)
            .is_some());
    }

    #[test]
    fn mirrors_fire_for_exactly_their_fraction() {
        for (num, den) in [(1, 3), (50, 100), (0, 10), (10, 10), (7, 1000)] {
            let m = GatewayMirror::new(0, num, den);
            let fired = (0..den * 4).filter(|_| m.fires()).count();
            assert_eq!(fired as u32, num * 4, "{num}/{den}");
        }
    }

    #[test]
    fn sockets_shared_with_the_ingress_listener_and_wildcard_entries() {
        let mut plane = GatewayPlane::new(vec![
            ("0.0.0.0:80".parse().unwrap(), true),
            ("127.0.0.7:8081".parse().unwrap(), false),
        ]);
        assert_eq!(plane.socket("10.1.2.3:80".parse().unwrap()), Some(true));
        assert_eq!(plane.socket("127.0.0.7:8081".parse().unwrap()), Some(false));
        assert_eq!(plane.socket("127.0.0.8:8081".parse().unwrap()), None);
        assert_eq!(plane.socket("127.0.0.7:443".parse().unwrap()), None);
        // A wildcard entry point answers every address; an address's own comes first.
        plane.insert("0.0.0.0:80".parse().unwrap(), EntryPoint::default());
        assert!(plane
            .entry("[::ffff:10.1.2.3]:80".parse().unwrap())
            .is_some());
        assert!(plane.entry("10.1.2.3:81".parse().unwrap()).is_none());
        // Certificates on the Ingress HTTPS listener: a Gateway hostname first, then the
        // Ingress's own names, then a Gateway listener without hostname.
        let key = |name: &str| LoadedCert::self_signed(&[name]).unwrap().key;
        let (named, any) = (key("gw.example"), key("any"));
        assert!(plane
            .ingress_socket_certificate(Some("x"), |_| false)
            .is_none());
        plane.set_ingress_certificates(vec![
            (Some(GwHost::parse("gw.example").unwrap()), named.clone()),
            (None, any.clone()),
        ]);
        let pick = |sni, ingress| plane.ingress_socket_certificate(sni, |_| ingress).cloned();
        assert!(Arc::ptr_eq(
            &pick(Some("gw.example"), true).unwrap(),
            &named
        ));
        assert!(pick(Some("ingress.example"), true).is_none());
        assert!(Arc::ptr_eq(
            &pick(Some("other.example"), false).unwrap(),
            &any
        ));
        assert!(Arc::ptr_eq(&pick(None, false).unwrap(), &any));
    }
}
