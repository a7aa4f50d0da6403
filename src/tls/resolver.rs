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
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.shared
            .load()
            .certs
            .lookup(hello.server_name())
            .cloned()
    }
}
