//! One certificate: PEM in, a checked rustls `CertifiedKey` out.
//!
//! Called by the compile step (through [`super::store`]) and at start-up for the default
//! certificate; never during a handshake.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate and key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls.crt is not valid PEM: {0}")]
    CertPem(rustls::pki_types::pem::Error),
    #[error(
        "tls.crt holds no PEM CERTIFICATE block; it must hold the certificate chain, leaf first"
    )]
    NoCertificate,
    #[error("tls.crt: certificate {index} of the chain is not valid X.509: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("tls.key holds no private key (PKCS#1, PKCS#8 or SEC1 PEM expected)")]
    NoKey,
    #[error("tls.key is not valid PEM: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    #[error("tls.key: unsupported private key: {0}")]
    UnsupportedKey(rustls::Error),
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    #[error("tls.crt: {0}")]
    Inconsistent(rustls::Error),
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(rcgen::Error),
}

impl CertError {
    /// A short CamelCase reason for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::CertPem(_)
            | CertError::NoCertificate
            | CertError::BadCertificate { .. }
            | CertError::Inconsistent(_) => "InvalidCertificate",
            CertError::NoKey | CertError::KeyPem(_) | CertError::UnsupportedKey(_) => "InvalidKey",
            CertError::KeyMismatch => "KeyMismatch",
            CertError::Generate(_) => "Generate",
        }
    }
}

/// A parsed and checked certificate chain with its signing key.
pub struct LoadedCert {
    /// What rustls serves: the chain, leaf first, and the signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's validity, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf's subject, for logs.
    pub subject: String,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl LoadedCert {
    /// Parses `tls.crt` (the leaf first, then its chain) and `tls.key` (RSA or ECDSA, as PKCS#1,
    /// PKCS#8 or SEC1), and checks that the key belongs to the leaf.
    ///
    /// Fails with the first problem found. An expired certificate is not an error: the caller
    /// logs it (see [`LoadedCert::is_expired`]), since serving it is still better than serving a
    /// certificate for another name.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<LoadedCert, CertError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CertError::CertPem)?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate);
        };
        let (not_before, not_after, subject) = {
            let (_, x509) =
                X509Certificate::from_der(leaf).map_err(|e| CertError::BadCertificate {
                    index: 0,
                    reason: e.to_string(),
                })?;
            let validity = x509.validity();
            (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
                x509.subject().to_string(),
            )
        };
        for (index, cert) in chain.iter().enumerate().skip(1) {
            X509Certificate::from_der(cert).map_err(|e| CertError::BadCertificate {
                index,
                reason: e.to_string(),
            })?;
        }
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(CertError::NoKey),
            Err(e) => return Err(CertError::KeyPem(e)),
        };
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(CertError::UnsupportedKey)?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // The key cannot tell its public half (not the case for ring's RSA and ECDSA keys):
            // nothing to compare, as rustls itself does.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertError::KeyMismatch)
            }
            Err(e) => return Err(CertError::Inconsistent(e)),
        }
        Ok(LoadedCert {
            key: Arc::new(certified),
            not_before,
            not_after,
            subject,
        })
    }

    /// A fresh self-signed ECDSA P-256 certificate for `names`, valid from now for a year; the
    /// default certificate when none is configured.
    pub fn self_signed(names: &[&str]) -> Result<LoadedCert, CertError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).map_err(CertError::Generate)?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "Portico default certificate");
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let key_pair = rcgen::KeyPair::generate().map_err(CertError::Generate)?;
        let cert = params.self_signed(&key_pair).map_err(CertError::Generate)?;
        Self::from_pem(cert.pem().as_bytes(), key_pair.serialize_pem().as_bytes())
    }

    /// Whether the leaf's `notAfter` is before `now_unix`.
    pub fn is_expired(&self, now_unix: i64) -> bool {
        self.not_after < now_unix
    }

    /// The leaf certificate, DER-encoded.
    pub fn leaf_der(&self) -> &[u8] {
        self.key
            .cert
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const RSA_PKCS8: &str = include_str!("../../tests/fixtures/tls/rsa-pkcs8.key");
    pub const RSA_PKCS1: &str = include_str!("../../tests/fixtures/tls/rsa-pkcs1.key");
    pub const EC_PKCS8: &str = include_str!("../../tests/fixtures/tls/ec-pkcs8.key");
    pub const EC_SEC1: &str = include_str!("../../tests/fixtures/tls/ec-sec1.key");

    /// A self-signed certificate for `names`, signed by the PKCS#8 key `key_pem`.
    pub fn cert_with_key(names: &[&str], key_pem: &str, expired: bool) -> String {
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        params.self_signed(&key).unwrap().pem()
    }

    /// A fresh ECDSA certificate and its PKCS#8 key, as PEM.
    pub fn generated(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn accepts_rsa_and_ecdsa_in_every_key_format() {
        let rsa = cert_with_key(&["rsa.test"], RSA_PKCS8, false);
        let ec = cert_with_key(&["ec.test"], EC_PKCS8, false);
        for (cert, key) in [
            (&rsa, RSA_PKCS8),
            (&rsa, RSA_PKCS1),
            (&ec, EC_PKCS8),
            (&ec, EC_SEC1),
        ] {
            let loaded = LoadedCert::from_pem(cert.as_bytes(), key.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", key.lines().next().unwrap_or("")));
            assert!(!loaded.is_expired(time::OffsetDateTime::now_utc().unix_timestamp()));
            assert_eq!(loaded.key.cert.len(), 1);
        }
    }

    #[test]
    fn keeps_the_whole_chain_leaf_first() {
        let (leaf, key) = generated(&["a.test"]);
        let (intermediate, _) = generated(&["ca.test"]);
        let chain = format!("{leaf}{intermediate}");
        let loaded = LoadedCert::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(loaded.key.cert.len(), 2);
        let first = CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
        assert_eq!(loaded.leaf_der(), first.as_ref());
    }

    #[test]
    fn rejects_a_key_of_another_certificate() {
        let cert = cert_with_key(&["a.test"], EC_PKCS8, false);
        let (_, other_key) = generated(&["b.test"]);
        let e = LoadedCert::from_pem(cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch), "{e}");
        assert_eq!(e.reason(), "KeyMismatch");
        // The right key type but the wrong algorithm family too.
        let e = LoadedCert::from_pem(cert.as_bytes(), RSA_PKCS1.as_bytes()).unwrap_err();
        assert_eq!(e.reason(), "KeyMismatch", "{e}");
    }

    #[test]
    fn rejects_junk_with_a_reason() {
        let (cert, key) = generated(&["a.test"]);
        let cases: [(&[u8], &[u8], &str); 5] = [
            (b"junk", key.as_bytes(), "InvalidCertificate"),
            (b"", key.as_bytes(), "InvalidCertificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                key.as_bytes(),
                "InvalidCertificate",
            ),
            (cert.as_bytes(), b"junk", "InvalidKey"),
            (
                cert.as_bytes(),
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "InvalidKey",
            ),
        ];
        for (c, k, reason) in cases {
            let e = LoadedCert::from_pem(c, k).unwrap_err();
            assert_eq!(e.reason(), reason, "{e}");
        }
    }

    #[test]
    fn an_expired_certificate_loads_and_says_so() {
        let cert = cert_with_key(&["old.test"], EC_PKCS8, true);
        let loaded = LoadedCert::from_pem(cert.as_bytes(), EC_SEC1.as_bytes()).unwrap();
        assert!(loaded.is_expired(time::OffsetDateTime::now_utc().unix_timestamp()));
        assert_eq!(loaded.not_after, 1609459200);
    }

    #[test]
    fn generates_a_self_signed_default() {
        let d = LoadedCert::self_signed(&["default.portico.invalid"]).unwrap();
        assert!(d.subject.contains("Portico default certificate"));
        assert!(!d.is_expired(time::OffsetDateTime::now_utc().unix_timestamp()));
    }
}
