//! The Gateway API part of a snapshot: the entry points (one per local address and socket
//! port a Gateway is reachable at), each with its [`GatewayTable`], and what each matched rule
//! does ([`GatewayRoute`], carried by the snapshot's [`crate::routing::Route`]s so that pools,
//! metrics, logs and retries work as for Ingress routes).
//!
//! A connection on a Gateway socket (`--gateway-listen`) picks its entry point by the local
//! address and port it arrived on: each Gateway's addresses (its own from
//! `--gateway-address-pool`, or the shared ones) times the sockets of its listeners' ports.
//! Gateway sockets are never Ingress listeners (the configuration refuses it), so the two APIs
//! never share a connection. Without `--gateway-listen` a snapshot has no [`GatewayPlane`]:
//! Ingress requests pay one branch.

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
    /// The sockets' ports: a connection on another port is not a Gateway's (no hash lookup).
    ports: Vec<u16>,
}

/// The listeners served at one local address and socket port.
#[derive(Debug, Default)]
pub struct EntryPoint {
    pub table: GatewayTable,
    /// The snapshot route of each rule of each listener: `routes[listener][rule]`.
    pub routes: Vec<Vec<usize>>,
}

impl GatewayPlane {
    /// A plane for the Gateway sockets' ports (`--gateway-listen`), with no entry point yet.
    pub fn new(ports: Vec<u16>) -> Self {
        Self {
            entries: FastMap::default(),
            certs: FastMap::default(),
            ports,
        }
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

    /// The entry point of a connection's local address, if a Gateway is served there.
    #[inline]
    pub fn entry(&self, local: SocketAddr) -> Option<&EntryPoint> {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        self.entries.get(&local)
    }

    /// Whether a socket port serves Gateways: a request there is answered by Gateway routes
    /// only (404 when its address has none), never by Ingress routes.
    #[inline]
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
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
        let mut plane = GatewayPlane::new(vec![8443]);
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
}
