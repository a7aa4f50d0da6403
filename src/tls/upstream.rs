//! TLS to backends as ingress-nginx's `proxy-ssl-*` annotations ask for it: the CA bundle that
//! verifies an HTTPS backend, the name its certificate must carry, and a client certificate.
//!
//! Everything is parsed and checked when the snapshot is compiled, so that a connection never
//! meets a bad certificate (Pingora's connector would panic on DER it cannot parse).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::LoadedCert;
use crate::model::TlsSecret;

/// The certificates of one `proxy-ssl-secret`, parsed.
#[derive(Clone)]
pub struct SslMaterial {
    /// `ca.crt`: the only certificates a verified backend may chain to.
    pub ca: Option<Arc<CaType>>,
    /// `tls.crt` and `tls.key`: presented to backends that ask for a client certificate.
    pub client: Option<Arc<CertKey>>,
    /// A hash of the PEM bytes, so that connections made with other material are never reused.
    fingerprint: u64,
}

impl SslMaterial {
    /// Parses the Secret; the error names the field, never its content.
    pub fn from_secret(secret: &TlsSecret) -> Result<Self, String> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        secret.ca_pem.hash(&mut hasher);
        secret.cert_pem.hash(&mut hasher);
        secret.key_pem.hash(&mut hasher);
        let ca = match &secret.ca_pem {
            None => None,
            Some(pem) => {
                let mut store = rustls::RootCertStore::empty();
                let mut ca = Vec::new();
                for (index, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
                    let der = der.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
                    X509Certificate::from_der(&der)
                        .map_err(|e| format!("ca.crt certificate {index}: {e}"))?;
                    store
                        .add(der.clone())
                        .map_err(|e| format!("ca.crt certificate {index}: {e}"))?;
                    ca.push(WrappedX509::new(der.to_vec(), |raw| {
                        // Checked just above, so this parse cannot fail.
                        X509Certificate::from_der(raw)
                            .map(|(_, c)| c)
                            .unwrap_or_else(|_| unreachable!("checked"))
                    }));
                }
                if ca.is_empty() {
                    return Err("ca.crt holds no certificate".into());
                }
                Some(Arc::from(ca.into_boxed_slice()))
            }
        };
        let client = if secret.cert_pem.is_empty() && secret.key_pem.is_empty() {
            None
        } else {
            LoadedCert::from_pem(&secret.cert_pem, &secret.key_pem)
                .map_err(|e| format!("tls.crt/tls.key: {e}"))?;
            let chain = CertificateDer::pem_slice_iter(&secret.cert_pem)
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&secret.key_pem)
                .map_err(|e| format!("tls.key is not PEM: {e}"))?
                .secret_der()
                .to_vec();
            // Pingora's connector converts the key back from DER alone; it must recognise it.
            PrivateKeyDer::try_from(key.clone())
                .map_err(|e| format!("tls.key: {e}; use PKCS#8, PKCS#1 or SEC1"))?;
            Some(Arc::new(CertKey::new(chain, key)))
        };
        Ok(Self {
            ca,
            client,
            fingerprint: hasher.finish(),
        })
    }
}

/// How one route's connections to an HTTPS backend are made.
#[derive(Clone)]
pub struct UpstreamTls {
    pub material: SslMaterial,
    /// Verify the backend's certificate against `material.ca` and `name`.
    pub verify: bool,
    /// The name the certificate must carry; also sent as SNI when verifying or asked to.
    pub name: String,
    /// Send `name` as SNI (`proxy-ssl-server-name`; always when verifying).
    pub sni: bool,
    /// Pingora's pool group: connections are shared only between equal settings.
    pub group: u64,
}

impl UpstreamTls {
    pub fn new(material: SslMaterial, verify: bool, name: String, sni: bool) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (material.fingerprint, verify, &name, sni).hash(&mut hasher);
        Self {
            group: hasher.finish(),
            material,
            verify,
            name,
            sni,
        }
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.group == other.group && self.name == other.name
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("name", &self.name)
            .field("sni", &self.sni)
            .field("ca", &self.material.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.material.client.is_some())
            .finish()
    }
}
