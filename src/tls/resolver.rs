//! The SNI hook: rustls asks, per handshake, which certificate to present.
//!
//! Registered on the HTTPS listener with `TlsSettings::set_cert_resolver`. It loads the current
//! snapshot (one atomic load) and looks the SNI name up in its [`super::CertStore`], so a rotated
//! Secret is used from the next handshake on, and connections that are already open keep the
//! certificate they were made with.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::dataplane::Shared;

/// Chooses the certificate of each handshake from the current snapshot.
pub struct SniResolver {
    shared: Arc<Shared>,
}

impl SniResolver {
    /// Called once by `server::build` for the HTTPS listener.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    /// Exact name, then wildcard, then the default certificate. Returns `None` (and the handshake
    /// fails) only when there is no default certificate, which `server::build` never allows.
    /// When the listener is also a Gateway's (`--gateway-listen https:PORT=` this address), a
    /// Gateway listener whose hostname matches the name comes first, and one without hostname
    /// stands in for the default certificate.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let plane = self.shared.load();
        let sni = hello.server_name();
        if let Some(g) = plane.routes.gateways() {
            if let Some(c) = g.ingress_socket_certificate(sni, |n| plane.certs.names(n)) {
                return Some(c.clone());
            }
        }
        plane.certs.lookup(sni).cloned()
    }
}

/// The certificate of each handshake on one Gateway TLS socket (`--gateway-listen
/// https:PORT=ADDR`), bound to one local address: the Gateway's listener certificates for the
/// SNI name, from the current snapshot; else the default certificate.
pub struct GatewaySniResolver {
    shared: Arc<Shared>,
    local: std::net::SocketAddr,
}

impl GatewaySniResolver {
    /// Called once by `server::build` per Gateway TLS socket and address.
    pub fn new(shared: Arc<Shared>, local: std::net::SocketAddr) -> Self {
        Self { shared, local }
    }
}

impl std::fmt::Debug for GatewaySniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewaySniResolver({})", self.local)
    }
}

impl ResolvesServerCert for GatewaySniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let plane = self.shared.load();
        plane
            .routes
            .gateways()
            .and_then(|g| g.certificate(self.local, hello.server_name()))
            .or_else(|| plane.certs.lookup(None))
            .cloned()
    }
}
