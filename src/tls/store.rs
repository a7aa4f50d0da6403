//! The certificate store of one snapshot: which certificate each TLS host serves.
//!
//! Built by [`CertStore::build`] in the same compile as the routes and pools, from the TLS
//! bindings (host to Secret, after the oldest-wins conflicts) and the previous snapshot's store.
//! The handshake only calls [`CertStore::lookup`]: two hash lookups at most, no parsing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use super::cert::LoadedCert;
use super::TlsOptions;
use crate::model::{Kind, ObjectKey, TlsSecret};
use crate::routing::compile::TlsBinding;
use crate::routing::host::wildcard_suffix;
use crate::routing::{HostMatch, Rejected};

/// The label under which the default certificate's expiry is exported. `_` cannot appear in a
/// host, so it never collides with one.
pub const DEFAULT_HOST_LABEL: &str = "_default";

/// One Secret as last parsed, with the bytes it was parsed from, so that an unchanged Secret is
/// not parsed again at the next compile.
#[derive(Clone, Debug)]
struct Parsed {
    source: Arc<TlsSecret>,
    result: Result<Arc<LoadedCert>, (&'static str, String)>,
}

/// The certificates of one snapshot. Immutable once built.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// What each host serves; the next compile carries these over for broken Secrets.
    hosts: BTreeMap<HostMatch, Arc<LoadedCert>>,
    default_cert: Option<Arc<LoadedCert>>,
    secrets: HashMap<ObjectKey, Parsed>,
}

impl CertStore {
    /// A store that serves only the fallback default certificate: the one before the first
    /// snapshot is compiled.
    pub fn initial(options: &TlsOptions) -> CertStore {
        CertStore {
            default: options.fallback.as_ref().map(|c| c.key.clone()),
            default_cert: options.fallback.clone(),
            ..CertStore::default()
        }
    }

    /// The certificate for a handshake: the exact SNI name, else the wildcard that covers it
    /// (one label), else the default. `None` only when no default exists at all, which fails the
    /// handshake.
    ///
    /// rustls hands over the SNI name lower-cased and without a trailing dot.
    #[inline]
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(c) = self.exact.get(name) {
                return Some(c);
            }
            if let Some(c) = wildcard_suffix(name).and_then(|s| self.wildcard.get(s)) {
                return Some(c);
            }
        }
        self.default.as_ref()
    }

    /// Whether an Ingress certificate names `name` (exactly or by wildcard); the default
    /// certificate does not count.
    pub fn names(&self, name: &str) -> bool {
        self.exact.contains_key(name)
            || wildcard_suffix(name).is_some_and(|s| self.wildcard.contains_key(s))
    }

    /// The leaf certificate served for `host` (a TLS host as written in an Ingress), if the
    /// host has one of its own.
    pub fn host_certificate(&self, host: &HostMatch) -> Option<&Arc<LoadedCert>> {
        self.hosts.get(host)
    }

    /// The default certificate.
    pub fn default_certificate(&self) -> Option<&Arc<LoadedCert>> {
        self.default_cert.as_ref()
    }

    /// `(host, notAfter)` of every certificate served, for the expiry metric; the default
    /// certificate is labelled [`DEFAULT_HOST_LABEL`].
    pub fn expiries(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .hosts
            .iter()
            .map(|(h, c)| (h.to_string(), c.not_after as f64))
            .collect();
        if let Some(d) = &self.default_cert {
            out.push((DEFAULT_HOST_LABEL.to_string(), d.not_after as f64));
        }
        out
    }

    /// Builds the store of a new snapshot.
    ///
    /// Each bound Secret is parsed and checked once (and not again while its bytes are
    /// unchanged). A Secret that fails is rejected with its reason, and each of its hosts keeps
    /// the certificate it served in `previous`, if any; otherwise the host gets the default
    /// certificate. A host whose Secret does not exist gets the default certificate (the compile
    /// step has already rejected the Ingress for it). Never fails.
    pub fn build(
        bindings: &[TlsBinding],
        secrets: &BTreeMap<ObjectKey, Arc<TlsSecret>>,
        options: &TlsOptions,
        previous: &CertStore,
        now_unix: i64,
    ) -> (CertStore, Vec<Rejected>) {
        let mut store = CertStore::default();
        let mut rejected = Vec::new();
        for b in bindings {
            let Some(result) = store.load(&b.secret, secrets, previous, now_unix, &mut rejected)
            else {
                continue;
            };
            let cert = match result {
                Ok(cert) => cert,
                Err(_) => match previous.hosts.get(&b.host) {
                    Some(last_good) => {
                        tracing::debug!(host = %b.host, secret = %b.secret, ingress = %b.ingress, "Secret is invalid; the host keeps its last good certificate");
                        last_good.clone()
                    }
                    None => {
                        tracing::debug!(host = %b.host, secret = %b.secret, ingress = %b.ingress, "Secret is invalid and the host had no certificate; it gets the default certificate");
                        continue;
                    }
                },
            };
            store.hosts.insert(b.host.clone(), cert);
        }

        let mut default = options.fallback.clone();
        if let Some(key) = &options.default_secret {
            match store.load(key, secrets, previous, now_unix, &mut rejected) {
                Some(Ok(cert)) => default = Some(cert),
                Some(Err(_)) => {
                    // The last good default, which may be the fallback itself.
                    if previous.default_cert.is_some() {
                        default = previous.default_cert.clone();
                    }
                }
                None => rejected.push(Rejected {
                    kind: Kind::Secret,
                    key: key.clone(),
                    reason: "SecretNotFound",
                    message: "--default-tls-secret: Secret of type kubernetes.io/tls not found; \
                              the generated default certificate is served"
                        .into(),
                }),
            }
        }
        store.default = default.as_ref().map(|c| c.key.clone());
        store.default_cert = default;
        for (host, cert) in &store.hosts {
            match host {
                HostMatch::Precise(h) => store.exact.insert(h.clone(), cert.key.clone()),
                HostMatch::Wildcard(s) => store.wildcard.insert(s.clone(), cert.key.clone()),
            };
        }
        (store, rejected)
    }

    /// Parses `key` (or reuses its parse from this or the previous build). `None` when the Secret
    /// does not exist. Rejects a bad Secret once per build.
    fn load(
        &mut self,
        key: &ObjectKey,
        secrets: &BTreeMap<ObjectKey, Arc<TlsSecret>>,
        previous: &CertStore,
        now_unix: i64,
        rejected: &mut Vec<Rejected>,
    ) -> Option<Result<Arc<LoadedCert>, ()>> {
        // Only a kubernetes.io/tls Secret serves a certificate (an Opaque one is a CA bundle).
        let secret = secrets.get(key).filter(|s| s.tls)?;
        if let Some(p) = self.secrets.get(key) {
            return Some(p.result.clone().map_err(drop));
        }
        let parsed = match previous.secrets.get(key) {
            Some(p) if Arc::ptr_eq(&p.source, secret) || p.source == *secret => p.clone(),
            _ => {
                let result = match LoadedCert::from_pem(&secret.cert_pem, &secret.key_pem) {
                    Ok(cert) => {
                        if cert.is_expired(now_unix) {
                            tracing::warn!(secret = %key, subject = %cert.subject, not_after = cert.not_after, "certificate has expired; it is served anyway");
                        } else {
                            tracing::info!(secret = %key, subject = %cert.subject, not_after = cert.not_after, "certificate loaded");
                        }
                        Ok(Arc::new(cert))
                    }
                    Err(e) => Err((e.reason(), e.to_string())),
                };
                Parsed {
                    source: secret.clone(),
                    result,
                }
            }
        };
        if let Err((reason, message)) = &parsed.result {
            rejected.push(Rejected {
                kind: Kind::Secret,
                key: key.clone(),
                reason,
                message: format!(
                    "{message}; its hosts keep their last good certificate, or get the default one"
                ),
            });
        }
        let result = parsed.result.clone().map_err(drop);
        self.secrets.insert(key.clone(), parsed);
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::cert::tests::generated;

    fn secret(name: &str, cert: &str, key: &str) -> (ObjectKey, Arc<TlsSecret>) {
        let k = ObjectKey::new("ns", name);
        (
            k.clone(),
            Arc::new(TlsSecret {
                key: k,
                tls: true,
                cert_pem: cert.as_bytes().to_vec(),
                key_pem: key.as_bytes().to_vec(),
                ca_pem: None,
                data: Default::default(),
            }),
        )
    }

    fn bind(host: &str, secret: &str) -> TlsBinding {
        TlsBinding {
            host: crate::routing::host::parse_host(host).unwrap(),
            secret: ObjectKey::new("ns", secret),
            ingress: ObjectKey::new("ns", "ing"),
        }
    }

    fn options() -> TlsOptions {
        TlsOptions {
            default_secret: None,
            fallback: Some(Arc::new(
                LoadedCert::self_signed(&["default.portico.invalid"]).unwrap(),
            )),
        }
    }

    fn served<'a>(store: &'a CertStore, sni: Option<&str>) -> &'a [u8] {
        store
            .lookup(sni)
            .and_then(|c| c.cert.first())
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }

    fn leaf(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let (a_crt, a_key) = generated(&["a.foo.com"]);
        let (w_crt, w_key) = generated(&["*.foo.com"]);
        let secrets = BTreeMap::from([secret("a", &a_crt, &a_key), secret("w", &w_crt, &w_key)]);
        let opts = options();
        let (store, rejected) = CertStore::build(
            &[bind("a.foo.com", "a"), bind("*.foo.com", "w")],
            &secrets,
            &opts,
            &CertStore::initial(&opts),
            0,
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        let default = opts.fallback.as_ref().unwrap().leaf_der().to_vec();
        assert_eq!(served(&store, Some("a.foo.com")), leaf(&a_crt));
        assert_eq!(served(&store, Some("b.foo.com")), leaf(&w_crt));
        // A wildcard covers exactly one label.
        assert_eq!(served(&store, Some("x.b.foo.com")), default);
        assert_eq!(served(&store, Some("foo.com")), default);
        assert_eq!(served(&store, Some("other.test")), default);
        assert_eq!(served(&store, None), default);
        assert_eq!(store.expiries().len(), 3);
    }

    #[test]
    fn a_broken_secret_keeps_the_last_good_certificate_of_its_hosts() {
        let (a_crt, a_key) = generated(&["a.test"]);
        let (b_crt, b_key) = generated(&["b.test"]);
        let opts = options();
        let bindings = [bind("a.test", "a"), bind("b.test", "b")];
        let good = BTreeMap::from([secret("a", &a_crt, &a_key), secret("b", &b_crt, &b_key)]);
        let (first, _) = CertStore::build(&bindings, &good, &opts, &CertStore::initial(&opts), 0);

        // b's key is replaced by another one: rejected, and b.test keeps its certificate.
        let (_, wrong_key) = generated(&["x.test"]);
        let broken = BTreeMap::from([secret("a", &a_crt, &a_key), secret("b", &b_crt, &wrong_key)]);
        let (second, rejected) = CertStore::build(&bindings, &broken, &opts, &first, 0);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].kind, Kind::Secret);
        assert_eq!(rejected[0].key, ObjectKey::new("ns", "b"));
        assert_eq!(rejected[0].reason, "KeyMismatch");
        assert_eq!(served(&second, Some("b.test")), leaf(&b_crt));
        assert_eq!(served(&second, Some("a.test")), leaf(&a_crt));

        // Still broken at the next compile: still rejected, still the last good certificate.
        let (third, rejected) = CertStore::build(&bindings, &broken, &opts, &second, 0);
        assert_eq!(rejected.len(), 1);
        assert_eq!(served(&third, Some("b.test")), leaf(&b_crt));

        // Fixed with a new certificate: served at once.
        let (b2_crt, b2_key) = generated(&["b.test"]);
        let fixed = BTreeMap::from([secret("a", &a_crt, &a_key), secret("b", &b2_crt, &b2_key)]);
        let (fourth, rejected) = CertStore::build(&bindings, &fixed, &opts, &third, 0);
        assert!(rejected.is_empty());
        assert_eq!(served(&fourth, Some("b.test")), leaf(&b2_crt));
    }

    #[test]
    fn a_new_host_with_a_broken_secret_gets_the_default() {
        let opts = options();
        let secrets = BTreeMap::from([secret("c", "junk", "junk")]);
        let (store, rejected) = CertStore::build(
            &[bind("c.test", "c")],
            &secrets,
            &opts,
            &CertStore::initial(&opts),
            0,
        );
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].reason, "InvalidCertificate");
        assert_eq!(
            served(&store, Some("c.test")),
            opts.fallback.as_ref().unwrap().leaf_der()
        );
    }

    #[test]
    fn an_unchanged_secret_is_not_parsed_again() {
        let (a_crt, a_key) = generated(&["a.test"]);
        let opts = options();
        let bindings = [bind("a.test", "a"), bind("www.a.test", "a")];
        let secrets = BTreeMap::from([secret("a", &a_crt, &a_key)]);
        let (first, _) =
            CertStore::build(&bindings, &secrets, &opts, &CertStore::initial(&opts), 0);
        // Equal bytes in a new allocation, as after a re-read file.
        let again = BTreeMap::from([secret("a", &a_crt, &a_key)]);
        let (second, _) = CertStore::build(&bindings, &again, &opts, &first, 0);
        let host = crate::routing::host::parse_host("a.test").unwrap();
        assert!(Arc::ptr_eq(
            first.host_certificate(&host).unwrap(),
            second.host_certificate(&host).unwrap()
        ));
        // Both hosts of one Secret share one parse.
        let www = crate::routing::host::parse_host("www.a.test").unwrap();
        assert!(Arc::ptr_eq(
            second.host_certificate(&host).unwrap(),
            second.host_certificate(&www).unwrap()
        ));
    }

    #[test]
    fn the_default_secret_replaces_the_fallback_and_survives_breakage() {
        let (d_crt, d_key) = generated(&["default.test"]);
        let mut opts = options();
        opts.default_secret = Some(ObjectKey::new("ns", "d"));
        let fallback = opts.fallback.as_ref().unwrap().leaf_der().to_vec();

        let (missing, rejected) =
            CertStore::build(&[], &BTreeMap::new(), &opts, &CertStore::initial(&opts), 0);
        assert_eq!(rejected[0].reason, "SecretNotFound");
        assert_eq!(served(&missing, None), fallback);

        let good = BTreeMap::from([secret("d", &d_crt, &d_key)]);
        let (store, rejected) = CertStore::build(&[], &good, &opts, &missing, 0);
        assert!(rejected.is_empty());
        assert_eq!(served(&store, Some("unknown.test")), leaf(&d_crt));

        let broken = BTreeMap::from([secret("d", &d_crt, "junk")]);
        let (store, rejected) = CertStore::build(&[], &broken, &opts, &store, 0);
        assert_eq!(rejected.len(), 1);
        assert_eq!(served(&store, None), leaf(&d_crt));
    }
}
