//! HTTPS end to end: a real Portico in-process on ephemeral loopback ports, fed by a manifest
//! directory, with real TLS clients (rustls) and certificates generated here with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::*;

mod common;

mod support {
    pub use super::common::{free_port, StopSignal};
    use super::*;
    use portico::config::Flags;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::UnixTime;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::sync::watch;

    pub const STEP: Duration = Duration::from_secs(8);

    /// A running Portico, stopped when dropped.
    pub struct Proxy {
        pub http: SocketAddr,
        pub https: Option<SocketAddr>,
        pub admin: SocketAddr,
        pub dir: tempfile::TempDir,
        stop: watch::Sender<bool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Proxy {
        pub async fn start(files: &[(&str, String)]) -> Proxy {
            Self::start_with(files, |_| {}).await
        }

        pub async fn start_with(files: &[(&str, String)], tweak: impl FnOnce(&mut Flags)) -> Proxy {
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).expect("write manifest");
            }
            let mut flags = Flags {
                manifests: Some(dir.path().to_path_buf()),
                http_listen: Some(format!("127.0.0.1:{}", free_port())),
                https_listen: Some(format!("127.0.0.1:{}", free_port())),
                admin_listen: Some(format!("127.0.0.1:{}", free_port())),
                threads: Some(2),
                // Several servers run in one test process: Pingora's no-steal runtime finds its
                // pools by a thread id that a later thread may reuse (pingora-runtime's
                // CURRENT_HANDLE), so tests use work stealing; tests/process.rs runs the default.
                work_stealing: Some(true),
                access_log: Some(portico::request::policy::AccessLog::Off),
                http1_engine: Some(super::common::engine()),
                ..Flags::default()
            };
            tweak(&mut flags);
            let config = flags.resolve().expect("config");
            let built = portico::server::build(&config, false).expect("build server");
            let (stop, rx) = watch::channel(false);
            let server = built.server;
            let thread = std::thread::spawn(move || {
                portico::server::run(server, Box::new(StopSignal(rx)));
            });
            let p = Proxy {
                http: config.http_listen,
                https: config.https_listen,
                admin: config.admin_listen,
                dir,
                stop,
                thread: Some(thread),
            };
            p.wait_ready().await;
            p
        }

        async fn wait_ready(&self) {
            let deadline = Instant::now() + STEP;
            let url = format!("http://{}/readyz", self.admin);
            loop {
                if let Ok(r) = client().get(&url).send().await {
                    let https_up = match self.https {
                        Some(a) => tokio::net::TcpStream::connect(a).await.is_ok(),
                        None => true,
                    };
                    if r.status() == 200
                        && https_up
                        && tokio::net::TcpStream::connect(self.http).await.is_ok()
                    {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "Portico did not become ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        pub fn https(&self) -> SocketAddr {
            self.https.expect("HTTPS is on")
        }

        /// Replaces a manifest atomically (a hidden file renamed into place).
        pub fn write(&self, name: &str, text: &str) {
            let tmp = self.dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).expect("write temp");
            std::fs::rename(&tmp, self.dir.path().join(name)).expect("rename");
        }

        pub async fn metrics(&self) -> String {
            client()
                .get(format!("http://{}/metrics", self.admin))
                .send()
                .await
                .expect("scrape")
                .text()
                .await
                .unwrap_or_default()
        }

        /// The leaf certificate a new handshake with `sni` gets.
        pub async fn leaf(&self, sni: Option<&str>) -> Vec<u8> {
            tls(self.https(), sni, &[], Versions::All).await.leaf
        }

        /// Polls new handshakes until `sni` is served `want`.
        pub async fn wait_for_leaf(&self, sni: Option<&str>, want: &[u8]) {
            let deadline = Instant::now() + STEP;
            while self.leaf(sni).await != want {
                assert!(
                    Instant::now() < deadline,
                    "{sni:?}: still the old certificate"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A plain-HTTP client that never follows redirects.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(STEP)
            .build()
            .expect("client")
    }

    /// An echo backend on 127.0.0.1; returns its port. Lives as long as the test's runtime.
    pub async fn echo(service: &str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(portico::echo::serve(
            l,
            portico::echo::Identity {
                service: service.into(),
                pod: format!("{service}-0"),
            },
        ));
        port
    }

    pub const CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: portico }
spec: { controller: portico.dev/ingress-controller }
";

    /// A Service `name` on port 80 whose one endpoint is 127.0.0.1:`port`.
    pub fn service(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{ name: {name}, namespace: default }}
spec:
  ports: [{{ name: web, port: 80, targetPort: {port} }}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{ kubernetes.io/service-name: {name} }}
addressType: IPv4
ports: [{{ name: web, port: {port} }}]
endpoints:
  - addresses: [\"127.0.0.1\"]
"
        )
    }

    /// An Ingress routing each host's `/` to `service`, with TLS for `tls` = (hosts, secret).
    pub fn ingress(
        name: &str,
        annotations: &[(&str, &str)],
        hosts: &[&str],
        service: &str,
        tls: &[(&[&str], &str)],
    ) -> String {
        let annotations: String = annotations
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let mut out = format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  annotations:
{annotations}    x: y
spec:
  ingressClassName: portico
  rules:
"
        );
        for h in hosts {
            out.push_str(&format!(
                "  - host: \"{h}\"
    http:
      paths:
        - path: /
          pathType: Prefix
          backend: {{ service: {{ name: {service}, port: {{ number: 80 }} }} }}
"
            ));
        }
        if !tls.is_empty() {
            out.push_str("  tls:\n");
            for (hosts, secret) in tls {
                let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
                out.push_str(&format!(
                    "    - hosts: [{}]\n      secretName: {secret}\n",
                    hosts.join(", ")
                ));
            }
        }
        out
    }

    fn indent(text: &str) -> String {
        text.lines().map(|l| format!("    {l}\n")).collect()
    }

    /// A `kubernetes.io/tls` Secret in `default`.
    pub fn secret(name: &str, cert: &str, key: &str) -> String {
        format!(
            "apiVersion: v1
kind: Secret
metadata: {{ name: {name}, namespace: default }}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
            indent(cert),
            indent(key)
        )
    }

    /// A certificate for `names`: its PEM, its key's PEM and its DER (what a client sees).
    pub struct Cert {
        pub pem: String,
        pub key: String,
        pub der: Vec<u8>,
    }

    pub fn cert(names: &[&str]) -> Cert {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("rcgen");
        Cert {
            pem: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
            der: c.cert.der().to_vec(),
        }
    }

    /// Accepts any server certificate: the tests compare the certificate itself instead.
    #[derive(Debug)]
    struct AcceptAny(Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    pub enum Versions {
        All,
        Tls12,
    }

    /// One TLS connection and what its handshake gave.
    pub struct Tls {
        pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        pub leaf: Vec<u8>,
        pub alpn: Option<Vec<u8>>,
        pub version: Option<rustls::ProtocolVersion>,
    }

    /// Connects with `sni` (`None`: no SNI at all, as when connecting by IP) and `alpn`.
    pub async fn tls(addr: SocketAddr, sni: Option<&str>, alpn: &[&[u8]], v: Versions) -> Tls {
        try_tls(addr, &[], sni, alpn, v).await.expect("handshake")
    }

    /// Connects, writes `prefix` (a PROXY protocol header) and then shakes hands.
    pub async fn try_tls(
        addr: SocketAddr,
        prefix: &[u8],
        sni: Option<&str>,
        alpn: &[&[u8]],
        v: Versions,
    ) -> std::io::Result<Tls> {
        use tokio::io::AsyncWriteExt;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match v {
            Versions::All => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Tls12 => &[&rustls::version::TLS12],
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = match sni {
            Some(s) => ServerName::try_from(s.to_string()).expect("server name"),
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(prefix).await?;
        let stream = tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .expect("handshake timed out")?;
        let conn = stream.get_ref().1;
        Ok(Tls {
            leaf: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(|p| p.to_vec()),
            version: conn.protocol_version(),
            stream,
        })
    }

    pub type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    /// An HTTP/1.1 connection over `tls`.
    pub async fn http1(tls: Tls) -> Sender1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls.stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        sender
    }

    /// GET `path` with `Host: host` on an HTTP/1.1 connection; status, headers and body.
    pub async fn get1(
        sender: &mut Sender1,
        host: &str,
        path: &str,
    ) -> (u16, http::HeaderMap, String) {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request");
        // The connection task may still be finishing the previous exchange.
        tokio::time::timeout(STEP, sender.ready())
            .await
            .expect("timed out")
            .expect("connection closed");
        let resp = tokio::time::timeout(STEP, sender.send_request(req))
            .await
            .expect("timed out")
            .expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// The echo backend's view of a request.
    pub fn echo_of(body: &str) -> portico::echo::Echo {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo answer ({e}): {body}"))
    }

    /// Runs a test body with a deadline.
    pub async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("test took more than 10 s");
    }
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_each_hosts_certificate_and_host_routes() {
    bounded(async {
        let (a, b) = (cert(&["a.test"]), cert(&["b.test"]));
        let (sa, sb) = (echo("svc-a").await, echo("svc-b").await);
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            (
                "svc.yaml",
                format!("{}---\n{}", service("svc-a", sa), service("svc-b", sb)),
            ),
            (
                "secrets.yaml",
                format!(
                    "{}\n---\n{}",
                    secret("a", &a.pem, &a.key),
                    secret("b", &b.pem, &b.key)
                ),
            ),
            (
                "a.yaml",
                ingress("a", &[], &["a.test"], "svc-a", &[(&["a.test"], "a")]),
            ),
            (
                "b.yaml",
                ingress("b", &[], &["b.test"], "svc-b", &[(&["b.test"], "b")]),
            ),
        ])
        .await;
        assert_eq!(p.leaf(Some("a.test")).await, a.der);
        assert_eq!(p.leaf(Some("b.test")).await, b.der);
        // SNI case does not matter.
        assert_eq!(p.leaf(Some("B.Test")).await, b.der);

        // SNI terminates, Host routes; the backend learns the client used TLS.
        let mut conn = http1(tls(p.https(), Some("a.test"), &[], Versions::All).await).await;
        let (status, _, body) = get1(&mut conn, "a.test", "/x").await;
        assert_eq!(status, 200, "{body}");
        let e = echo_of(&body);
        assert_eq!(e.service, "svc-a");
        assert_eq!(
            e.headers.get("x-forwarded-proto").map(String::as_str),
            Some("https")
        );
        let (status, _, body) = get1(&mut conn, "b.test", "/").await;
        assert_eq!((status, echo_of(&body).service.as_str()), (200, "svc-b"));
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_certificate_covers_one_label_and_exact_wins() {
    bounded(async {
        let (w, exact) = (cert(&["*.wild.test"]), cert(&["exact.wild.test"]));
        let s = echo("svc").await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("svc", s)),
            (
                "secrets.yaml",
                format!(
                    "{}\n---\n{}",
                    secret("w", &w.pem, &w.key),
                    secret("e", &exact.pem, &exact.key)
                ),
            ),
            (
                "w.yaml",
                ingress(
                    "w",
                    &[],
                    &["*.wild.test", "exact.wild.test"],
                    "svc",
                    &[(&["*.wild.test"], "w"), (&["exact.wild.test"], "e")],
                ),
            ),
        ])
        .await;
        assert_eq!(p.leaf(Some("one.wild.test")).await, w.der);
        assert_eq!(p.leaf(Some("exact.wild.test")).await, exact.der);
        let default = p.leaf(None).await;
        assert_ne!(default, w.der);
        assert_eq!(p.leaf(Some("two.one.wild.test")).await, default);
        assert_eq!(p.leaf(Some("wild.test")).await, default);

        let mut conn = http1(tls(p.https(), Some("one.wild.test"), &[], Versions::All).await).await;
        let (status, _, _) = get1(&mut conn, "one.wild.test", "/").await;
        assert_eq!(status, 200);
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_default_certificate_for_unknown_sni_and_for_no_sni() {
    bounded(async {
        let a = cert(&["a.test"]);
        let s = echo("svc").await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("svc", s)),
            ("secret.yaml", secret("a", &a.pem, &a.key)),
            (
                "a.yaml",
                ingress("a", &[], &["a.test"], "svc", &[(&["a.test"], "a")]),
            ),
        ])
        .await;
        let no_sni = p.leaf(None).await;
        let unknown = p.leaf(Some("unknown.test")).await;
        assert!(!no_sni.is_empty());
        assert_eq!(no_sni, unknown);
        assert_ne!(no_sni, a.der);
        let (_, x509) = x509_parser::parse_x509_certificate(&no_sni).expect("x509");
        assert!(x509
            .subject()
            .to_string()
            .contains("Portico default certificate"));

        // Without SNI, the request is still routed by its Host header.
        let mut conn = http1(tls(p.https(), None, &[], Versions::All).await).await;
        let (status, _, _) = get1(&mut conn, "a.test", "/").await;
        assert_eq!(status, 200);
        let metrics = p.metrics().await;
        assert!(
            metrics.contains("portico_tls_certificate_expiry_timestamp_seconds{host=\"a.test\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("portico_tls_certificate_expiry_timestamp_seconds{host=\"_default\"}"),
            "{metrics}"
        );
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_default_certificate_from_files_or_from_a_secret() {
    bounded(async {
        let d = cert(&["default.test"]);
        let files = tempfile::tempdir().expect("tempdir");
        let (crt, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
        std::fs::write(&crt, &d.pem).expect("write");
        std::fs::write(&key, &d.key).expect("write");
        let p = Proxy::start_with(&[("class.yaml", CLASS.into())], |f| {
            f.default_tls_cert = Some(crt.clone());
            f.default_tls_key = Some(key.clone());
        })
        .await;
        assert_eq!(p.leaf(None).await, d.der);
        assert_eq!(p.leaf(Some("any.test")).await, d.der);
        drop(p);

        // A key that is not the certificate's fails at start-up, not at the first handshake.
        std::fs::write(&key, cert(&["other.test"]).key).expect("write");
        let config = portico::config::Flags {
            manifests: Some(files.path().to_path_buf()),
            http_listen: Some(format!("127.0.0.1:{}", free_port())),
            https_listen: Some(format!("127.0.0.1:{}", free_port())),
            admin_listen: Some(format!("127.0.0.1:{}", free_port())),
            default_tls_cert: Some(crt.clone()),
            default_tls_key: Some(key.clone()),
            ..Default::default()
        }
        .resolve()
        .expect("config");
        let err = portico::server::build(&config, false)
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("does not match"), "{err}");

        // From a Secret, followed live.
        let s = cert(&["secret-default.test"]);
        let p = Proxy::start_with(
            &[
                ("class.yaml", CLASS.into()),
                ("d.yaml", secret("dflt", &s.pem, &s.key)),
            ],
            |f| f.default_tls_secret = Some("default/dflt".into()),
        )
        .await;
        assert_eq!(p.leaf(None).await, s.der);
        let s2 = cert(&["secret-default.test"]);
        p.write("d.yaml", &secret("dflt", &s2.pem, &s2.key));
        p.wait_for_leaf(Some("whatever.test"), &s2.der).await;
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_applies_to_new_handshakes_while_open_connections_keep_working() {
    bounded(async {
        let (old, new) = (cert(&["rot.test"]), cert(&["rot.test"]));
        let s = echo("svc").await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("svc", s)),
            ("secret.yaml", secret("rot", &old.pem, &old.key)),
            (
                "rot.yaml",
                ingress("rot", &[], &["rot.test"], "svc", &[(&["rot.test"], "rot")]),
            ),
        ])
        .await;
        let open = tls(p.https(), Some("rot.test"), &[], Versions::All).await;
        assert_eq!(open.leaf, old.der);
        let mut open = http1(open).await;
        assert_eq!(get1(&mut open, "rot.test", "/").await.0, 200);

        p.write("secret.yaml", &secret("rot", &new.pem, &new.key));
        p.wait_for_leaf(Some("rot.test"), &new.der).await;

        // The connection made with the old certificate is still up and still served.
        for _ in 0..3 {
            assert_eq!(get1(&mut open, "rot.test", "/").await.0, 200);
        }
        let mut fresh = http1(tls(p.https(), Some("rot.test"), &[], Versions::All).await).await;
        assert_eq!(get1(&mut fresh, "rot.test", "/").await.0, 200);
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_secret_is_rejected_and_nothing_stops_serving() {
    bounded(async {
        let (a, b) = (cert(&["a.test"]), cert(&["b.test"]));
        let s = echo("svc").await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("svc", s)),
            ("a.yaml", secret("a", &a.pem, &a.key)),
            ("b.yaml", secret("b", &b.pem, &b.key)),
            ("c.yaml", secret("c", "not a certificate", "not a key")),
            (
                "ing.yaml",
                ingress(
                    "ing",
                    &[],
                    &["a.test", "b.test", "c.test"],
                    "svc",
                    &[(&["a.test"], "a"), (&["b.test"], "b"), (&["c.test"], "c")],
                ),
            ),
        ])
        .await;
        let default = p.leaf(None).await;
        // A host whose Secret never was valid gets the default certificate, and still routes.
        assert_eq!(p.leaf(Some("c.test")).await, default);
        let mut conn = http1(tls(p.https(), Some("c.test"), &[], Versions::All).await).await;
        assert_eq!(get1(&mut conn, "c.test", "/").await.0, 200);

        // b's Secret turns to junk, then to a key of another certificate. c's junk Secret counts
        // as an invalid certificate throughout: b's junk makes two.
        let other = cert(&["b.test"]);
        for (broken, reason, count) in [
            (
                secret(
                    "b",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    &b.key,
                ),
                "InvalidCertificate",
                2,
            ),
            (secret("b", &b.pem, &other.key), "KeyMismatch", 1),
        ] {
            p.write("b.yaml", &broken);
            let want =
                format!("portico_rejected_objects{{kind=\"Secret\",reason=\"{reason}\"}} {count}");
            let deadline = Instant::now() + STEP;
            while !p.metrics().await.contains(&want) {
                assert!(Instant::now() < deadline, "no {want}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(p.leaf(Some("b.test")).await, b.der, "last good certificate");
            assert_eq!(p.leaf(Some("a.test")).await, a.der);
            let mut conn = http1(tls(p.https(), Some("b.test"), &[], Versions::All).await).await;
            assert_eq!(get1(&mut conn, "b.test", "/").await.0, 200);
        }
        // Fixed: the new certificate is served.
        p.write("b.yaml", &secret("b", &other.pem, &other.key));
        p.wait_for_leaf(Some("b.test"), &other.der).await;
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_gets_308_unless_opted_out_or_https_is_off() {
    bounded(async {
        let a = cert(&["a.test", "optout.test"]);
        let s = echo("svc").await;
        let files = [
            ("class.yaml", CLASS.to_string()),
            ("svc.yaml", service("svc", s)),
            ("secret.yaml", secret("a", &a.pem, &a.key)),
            (
                "a.yaml",
                ingress(
                    "a",
                    &[],
                    &["a.test", "plain.test"],
                    "svc",
                    &[(&["a.test"], "a")],
                ),
            ),
            (
                "o.yaml",
                ingress(
                    "o",
                    &[("portico.dev/ssl-redirect", "false")],
                    &["optout.test"],
                    "svc",
                    &[(&["optout.test"], "a")],
                ),
            ),
        ];
        let p = Proxy::start(&files).await;
        let get = |host: &'static str, http: SocketAddr| async move {
            client()
                .get(format!("http://{http}/some/path?q=1"))
                .header("host", format!("{host}:{}", http.port()))
                .send()
                .await
                .expect("http")
        };
        let r = get("a.test", p.http).await;
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers().get("location").and_then(|v| v.to_str().ok()),
            Some(format!("https://a.test:{}/some/path?q=1", p.https().port()).as_str())
        );
        assert_eq!(get("optout.test", p.http).await.status(), 200);
        assert_eq!(get("plain.test", p.http).await.status(), 200);
        drop(p);

        // Behind a Service that maps 443 to the listener's port.
        let p = Proxy::start_with(&files, |f| f.https_redirect_port = Some(443)).await;
        let r = get("a.test", p.http).await;
        assert_eq!(
            r.headers().get("location").and_then(|v| v.to_str().ok()),
            Some("https://a.test/some/path?q=1")
        );
        drop(p);

        let p = Proxy::start_with(&files, |f| f.https_listen = Some("off".into())).await;
        assert_eq!(get("a.test", p.http).await.status(), 200);
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_http2_and_tls_is_1_2_or_1_3_only() {
    bounded(async {
        let a = cert(&["a.test"]);
        let s = echo("svc").await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("svc", s)),
            ("secret.yaml", secret("a", &a.pem, &a.key)),
            (
                "a.yaml",
                ingress(
                    "a",
                    &[("portico.dev/hsts", "max-age=31536000; includeSubDomains")],
                    &["a.test"],
                    "svc",
                    &[(&["a.test"], "a")],
                ),
            ),
        ])
        .await;
        let t = tls(
            p.https(),
            Some("a.test"),
            &[b"h2", b"http/1.1"],
            Versions::All,
        )
        .await;
        assert_eq!(t.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(t.version, Some(rustls::ProtocolVersion::TLSv1_3));
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t.stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let resp = h2
            .send_request(
                Request::get("https://a.test/h2")
                    .body(Full::new(Bytes::new()))
                    .expect("req"),
            )
            .await
            .expect("h2 request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        // HSTS from the Ingress's annotation, over TLS.
        assert_eq!(
            resp.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000; includeSubDomains")
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(echo_of(&String::from_utf8_lossy(&body)).path, "/h2");

        let t = tls(p.https(), Some("a.test"), &[b"http/1.1"], Versions::All).await;
        assert_eq!(t.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let t = tls(
            p.https(),
            Some("a.test"),
            &[b"h2", b"http/1.1"],
            Versions::Tls12,
        )
        .await;
        assert_eq!(t.version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(t.alpn.as_deref(), Some(&b"h2"[..]));

        // No HSTS over plain HTTP.
        let r = client()
            .get(format!("http://{}/", p.http))
            .header("host", "a.test")
            .send()
            .await
            .expect("http");
        assert_eq!(r.status(), 308);
        assert!(r.headers().get("strict-transport-security").is_none());
    })
    .await;
}
}

/// A gRPC-shaped backend speaking HTTP/2 only (h2c with prior knowledge): it checks the request
/// is gRPC over HTTP/2, echoes the message back and ends with a `grpc-status: 0` trailer.
async fn grpc_backend() -> u16 {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let grpc = req.version() == http::Version::HTTP_2
                            && req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/grpc")
                            // gRPC servers expect it (grpc-java warns of a proxy without
                            // trailer support when it is missing).
                            && req.headers().get("te").is_some_and(|v| v == "trailers");
                        let path = req.uri().path().to_string();
                        let message = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = http::HeaderMap::new();
                        let (status, text) = if grpc && path == "/echo.Echo/Say" {
                            ("0", "")
                        } else {
                            ("12", "not gRPC over HTTP/2")
                        };
                        trailers.insert("grpc-status", http::HeaderValue::from_static(status));
                        trailers.insert("grpc-message", http::HeaderValue::from_static(text));
                        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                            vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(StreamBody::new(futures::stream::iter(frames)))
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip_over_tls_to_an_h2c_backend_and_h2c_for_http1_clients() {
    bounded(async {
        let g = cert(&["grpc.test"]);
        let (grpc, echo_port) = (grpc_backend().await, echo("svc-h2c").await);
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            (
                "svc.yaml",
                format!(
                    "{}---\n{}",
                    service("grpc", grpc),
                    service("svc-h2c", echo_port)
                ),
            ),
            ("secret.yaml", secret("g", &g.pem, &g.key)),
            (
                "g.yaml",
                ingress(
                    "g",
                    &[("portico.dev/backend-protocol", "GRPC")],
                    &["grpc.test"],
                    "grpc",
                    &[(&["grpc.test"], "g")],
                ),
            ),
            (
                "h.yaml",
                ingress(
                    "h",
                    &[("portico.dev/backend-protocol", "h2c")],
                    &["h2c.test"],
                    "svc-h2c",
                    &[],
                ),
            ),
        ])
        .await;
        let t = tls(p.https(), Some("grpc.test"), &[b"h2"], Versions::All).await;
        assert_eq!(t.leaf, g.der);
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t.stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        // One length-prefixed gRPC message.
        let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
        for _ in 0..2 {
            let req = Request::post("https://grpc.test/echo.Echo/Say")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(message.clone()))
                .expect("request");
            let resp = h2.send_request(req).await.expect("grpc call");
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers().get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/grpc"[..])
            );
            let collected = resp.into_body().collect().await.expect("body");
            let trailers = collected
                .trailers()
                .cloned()
                .expect("trailers reach the client");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..]),
                "{trailers:?}"
            );
            assert_eq!(collected.to_bytes(), message);
        }

        // H2C: an HTTP/1.1 client, HTTP/2 to the backend.
        let r = client()
            .get(format!("http://{}/v", p.http))
            .header("host", "h2c.test")
            .send()
            .await
            .expect("http");
        assert_eq!(r.status(), 200);
        let e = echo_of(&r.text().await.unwrap_or_default());
        assert_eq!(e.version, "HTTP/2.0");
    })
    .await;
}
}

/// A TLS backend with a self-signed certificate that answers with the protocol it saw.
async fn https_backend() -> u16 {
    let c = cert(&["backend.cluster.local"]);
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(c.der.clone())], key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!("tls backend {:?} {}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_grpcs_backends_with_a_self_signed_certificate() {
    bounded(async {
        let port = https_backend().await;
        let p = Proxy::start(&[
            ("class.yaml", CLASS.into()),
            ("svc.yaml", service("secure", port)),
            (
                "s.yaml",
                ingress(
                    "s",
                    &[("portico.dev/backend-protocol", "HTTPS")],
                    &["secure.test"],
                    "secure",
                    &[],
                ),
            ),
            (
                "g.yaml",
                ingress(
                    "g",
                    &[("portico.dev/backend-protocol", "GRPCS")],
                    &["grpcs.test"],
                    "secure",
                    &[],
                ),
            ),
        ])
        .await;
        // HTTPS is HTTP/1.1 over TLS; GRPCS is HTTP/2 negotiated by ALPN.
        for (host, want) in [
            ("secure.test", "tls backend HTTP/1.1 /in"),
            ("grpcs.test", "tls backend HTTP/2.0 /in"),
        ] {
            let r = client()
                .get(format!("http://{}/in", p.http))
                .header("host", host)
                .send()
                .await
                .expect("http");
            assert_eq!(r.status(), 200, "{host}");
            assert_eq!(r.text().await.unwrap_or_default(), want);
        }
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_header_over_tls_is_cut_but_an_h2_connection_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let a = cert(&["a.test"]);
        let s = echo("svc").await;
        let p = Proxy::start_with(
            &[
                ("class.yaml", CLASS.into()),
                ("svc.yaml", service("svc", s)),
                ("secret.yaml", secret("a", &a.pem, &a.key)),
                (
                    "a.yaml",
                    ingress("a", &[], &["a.test"], "svc", &[(&["a.test"], "a")]),
                ),
            ],
            |f| f.client_header_timeout = Some("1s".into()),
        )
        .await;

        // HTTP/1.1 over TLS: a header byte every 200 ms is closed after about 1 s.
        let mut t = tls(p.https(), Some("a.test"), &[b"http/1.1"], Versions::All).await;
        let started = Instant::now();
        t.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
            .await
            .expect("write");
        let mut closed_after = None;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let wrote = t.stream.write_all(b"X").await.is_ok() && t.stream.flush().await.is_ok();
            let mut buf = [0u8; 64];
            let eof = matches!(
                tokio::time::timeout(Duration::from_millis(1), t.stream.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            if !wrote || eof {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        let closed_after = closed_after.expect("a trickled header held the TLS connection 4 s");
        assert!(
            closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
            "closed after {closed_after:?}"
        );

        // HTTP/2: one connection, idle longer than the header timeout between two requests.
        let h2 = tls(p.https(), Some("a.test"), &[b"h2"], Versions::All).await;
        assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2.stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..2 {
            let req = Request::get("https://a.test/")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = sender.send_request(req).await.expect("h2 request");
            assert_eq!(resp.status(), 200);
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_nginx_routes_send_its_default_hsts_and_redirect_without_a_secret() {
    bounded(async {
        let a = cert(&["a.test"]);
        let s = echo("svc").await;
        let nginx_class = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: nginx }
spec: { controller: k8s.io/ingress-nginx }
";
        let nginx = |name: &str, hosts: &[&str], tls: &[(&[&str], &str)]| {
            ingress(name, &[], hosts, "svc", tls)
                .replace("ingressClassName: portico", "ingressClassName: nginx")
        };
        // b.test's tls entry names no Secret: ingress-nginx still redirects it (and serves the
        // default certificate).
        let files = [
            ("class.yaml", nginx_class.to_string()),
            ("svc.yaml", service("svc", s)),
            ("secret.yaml", secret("a", &a.pem, &a.key)),
            ("a.yaml", nginx("a", &["a.test"], &[(&["a.test"], "a")])),
            (
                "b.yaml",
                nginx("b", &["b.test"], &[]).replace(
                    "spec:\n",
                    "spec:\n  tls:\n    - hosts: [b.test]\n",
                ),
            ),
        ];
        let p = Proxy::start_with(&files, |f| f.ingress_nginx_compat = Some(true)).await;
        let mut h1 = http1(tls(p.https(), Some("a.test"), &[b"http/1.1"], Versions::All).await).await;
        let (status, headers, _) = get1(&mut h1, "a.test", "/x").await;
        assert_eq!(status, 200);
        // ingress-nginx's ConfigMap defaults: hsts on, a year, includeSubDomains.
        assert_eq!(
            headers
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000; includeSubDomains")
        );
        for host in ["a.test", "b.test"] {
            let r = client()
                .get(format!("http://{}/y?z=1", p.http))
                .header("host", host)
                .send()
                .await
                .expect("http");
            assert_eq!(r.status(), 308, "{host}");
            assert!(r.headers().get("strict-transport-security").is_none());
        }
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_on_both_listeners() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let s = echo("svc").await;
        let p = Proxy::start_with(
            &[
                ("class.yaml", CLASS.into()),
                ("svc.yaml", service("svc", s)),
                ("a.yaml", ingress("a", &[], &["a.test"], "svc", &[])),
            ],
            |f| f.proxy_protocol = Some(true),
        )
        .await;
        // TLS, with a v2 header before the ClientHello.
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "203.0.113.9:1234".parse::<SocketAddr>().unwrap(),
                p.https(),
            ),
        )
        .build()
        .expect("v2 header");
        let t = try_tls(p.https(), &v2, Some("a.test"), &[b"http/1.1"], Versions::All)
            .await
            .expect("handshake after the header");
        let mut h = http1(t).await;
        let (status, _, body) = get1(&mut h, "a.test", "/").await;
        assert_eq!(status, 200);
        let e = echo_of(&body);
        assert_eq!(e.headers.get("x-forwarded-for").map(String::as_str), Some("203.0.113.9"));
        assert_eq!(e.headers.get("x-real-ip").map(String::as_str), Some("203.0.113.9"));
        // The same connection keeps its client for its next request.
        let (_, _, body) = get1(&mut h, "a.test", "/again").await;
        assert_eq!(echo_of(&body).headers.get("x-forwarded-for").map(String::as_str), Some("203.0.113.9"));
        // Without a header the handshake never happens.
        assert!(try_tls(p.https(), b"", Some("a.test"), &[], Versions::All).await.is_err());
        // A health check's LOCAL header keeps the real peer.
        let local = ppp::v2::Builder::new(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
        )
        .build()
        .expect("local header");
        let t = try_tls(p.https(), &local, Some("a.test"), &[b"http/1.1"], Versions::All)
            .await
            .expect("handshake after LOCAL");
        let (_, _, body) = get1(&mut http1(t).await, "a.test", "/").await;
        assert_eq!(echo_of(&body).headers.get("x-forwarded-for").map(String::as_str), Some("127.0.0.1"));

        // Plain HTTP, with a v1 header in the same write as the request.
        let plain = |header: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(p.http).await.expect("connect");
            let req = format!("{header}GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
            c.write_all(req.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(STEP, c.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let answer = plain("PROXY TCP4 198.51.100.4 127.0.0.1 5555 80\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"x-forwarded-for\":\"198.51.100.4\""), "{answer}");
        let answer = plain("PROXY TCP6 2001:db8::5 ::1 5555 80\r\n").await;
        assert!(answer.contains("\"x-forwarded-for\":\"2001:db8::5\""), "{answer}");
        // No header, or a broken one: closed without an answer.
        assert_eq!(plain("").await, "");
        assert_eq!(plain("PROXY TCP4 1.2.3\r\n").await, "");
        let m = p.metrics().await;
        assert!(m.contains("portico_proxy_protocol_refused_total 3"), "{m}");
    })
    .await;
}
}

both_engines! {
// The Ingress HTTPS listener shared with a Gateway (`--gateway-listen https:443=` the
// `--https-listen` address): by SNI, a Gateway listener whose hostname matches, else the
// Ingress's certificate for the name, else the Gateway listener without hostname (in place of
// the default certificate); and by Host, the HTTPRoute first, then the Ingresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shares_the_ingress_https_listener() {
    bounded(async {
        let (gw, any, ing) = (cert(&["gw.test"]), cert(&["any.gw"]), cert(&["ing.test"]));
        let (s_gw, s_ing) = (echo("svc-gw").await, echo("svc-ing").await);
        let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: { name: portico-gw }
spec: { controllerName: portico.dev/gateway-controller }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: gw, namespace: default }
spec:
  gatewayClassName: portico-gw
  listeners:
    - { name: named, port: 443, protocol: HTTPS, hostname: gw.test, tls: { certificateRefs: [{ name: gw }] } }
    - { name: any, port: 443, protocol: HTTPS, tls: { certificateRefs: [{ name: any }] } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: default }
spec:
  parentRefs: [{ name: gw }]
  hostnames: [gw.test]
  rules: [{ backendRefs: [{ name: svc-gw, port: 80 }] }]
";
        let p = Proxy::start_with(
            &[
                ("class.yaml", CLASS.into()),
                (
                    "svc.yaml",
                    format!("{}---\n{}", service("svc-gw", s_gw), service("svc-ing", s_ing)),
                ),
                (
                    "secrets.yaml",
                    format!(
                        "{}\n---\n{}\n---\n{}",
                        secret("gw", &gw.pem, &gw.key),
                        secret("any", &any.pem, &any.key),
                        secret("ing", &ing.pem, &ing.key)
                    ),
                ),
                (
                    "ing.yaml",
                    ingress("ing", &[], &["ing.test"], "svc-ing", &[(&["ing.test"], "ing")]),
                ),
                ("gateway.yaml", gateway.into()),
            ],
            |f| {
                let https = f.https_listen.clone().expect("https");
                f.gateway_listen = vec![format!("https:443={https}")];
            },
        )
        .await;
        assert_eq!(p.leaf(Some("gw.test")).await, gw.der);
        assert_eq!(p.leaf(Some("ing.test")).await, ing.der);
        assert_eq!(p.leaf(Some("other.test")).await, any.der);
        assert_eq!(p.leaf(None).await, any.der);
        // Their expiry is watched like the Ingresses'.
        let m = p.metrics().await;
        for host in ["gw.test", "*", "ing.test"] {
            let series = format!("portico_tls_certificate_expiry_timestamp_seconds{{host=\"{host}\"}}");
            assert!(m.contains(&series), "{series}: {m}");
        }
        for (name, service) in [("gw.test", "svc-gw"), ("ing.test", "svc-ing")] {
            let mut conn = http1(tls(p.https(), Some(name), &[], Versions::All).await).await;
            let (status, _, body) = get1(&mut conn, name, "/").await;
            assert_eq!((status, echo_of(&body).service.as_str()), (200, service), "{name}");
        }
    })
    .await;
}
}
