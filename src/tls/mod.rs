//! TLS termination: certificates from Secrets, chosen by SNI in the handshake.
//!
//! - [`cert`] parses and checks one PEM certificate and key, at compile time;
//! - [`store`] is the certificate part of the snapshot, built with the routes and the pools and
//!   published with them in the one [`crate::dataplane::DataPlane`];
//! - [`resolver`] is the rustls hook that reads the current snapshot in each handshake;
//! - [`upstream`] is TLS to backends: the CA, name and client certificate a route verifies with.

pub mod cert;
pub mod resolver;
pub mod store;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cert::{CertError, LoadedCert};
pub use resolver::{GatewaySniResolver, SniResolver};
pub use store::CertStore;

use crate::model::ObjectKey;

/// The name in the self-signed certificate generated at start-up.
pub const GENERATED_DEFAULT_NAME: &str = "default.portico.invalid";

/// Where the default certificate comes from, as configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DefaultCert {
    /// A self-signed certificate generated at start-up.
    #[default]
    Generated,
    /// PEM files, read once at start-up.
    Files { cert: PathBuf, key: PathBuf },
    /// A `kubernetes.io/tls` Secret, followed like any other; the generated certificate serves
    /// until it is found.
    Secret(ObjectKey),
}

/// Why the default certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("default certificate {cert} / {key}: {error}")]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        error: CertError,
    },
    #[error("generating the default certificate: {0}")]
    Generate(CertError),
}

/// What the compile step needs to build a [`CertStore`].
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// `--default-tls-secret`: the Secret that, when present and valid, is the default.
    pub default_secret: Option<ObjectKey>,
    /// The default certificate when no Secret provides one; `None` only without HTTPS.
    pub fallback: Option<Arc<LoadedCert>>,
}

impl TlsOptions {
    /// Loads or generates the default certificate. Called once at start-up; fails on unreadable
    /// or invalid files, so that a typo is not silently replaced by a generated certificate.
    pub fn from_config(default: &DefaultCert) -> Result<TlsOptions, TlsError> {
        let generate = || {
            LoadedCert::self_signed(&[GENERATED_DEFAULT_NAME])
                .map(Arc::new)
                .map_err(TlsError::Generate)
        };
        Ok(match default {
            DefaultCert::Generated => TlsOptions {
                default_secret: None,
                fallback: Some(generate()?),
            },
            DefaultCert::Secret(key) => TlsOptions {
                default_secret: Some(key.clone()),
                fallback: Some(generate()?),
            },
            DefaultCert::Files { cert, key } => {
                let read = |path: &Path| {
                    std::fs::read(path).map_err(|error| TlsError::Read {
                        path: path.to_owned(),
                        error,
                    })
                };
                let loaded = LoadedCert::from_pem(&read(cert)?, &read(key)?).map_err(|error| {
                    TlsError::Invalid {
                        cert: cert.clone(),
                        key: key.clone(),
                        error,
                    }
                })?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                if loaded.is_expired(now) {
                    tracing::warn!(file = %cert.display(), not_after = loaded.not_after, "the default certificate has expired; it is served anyway");
                }
                TlsOptions {
                    default_secret: None,
                    fallback: Some(Arc::new(loaded)),
                }
            }
        })
    }
}
