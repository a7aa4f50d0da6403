//! The warnings of the 20 most common mistakes, as an operator reads them in the log.
//!
//! Each file in `tests/fixtures/mistakes/` holds one mistake among otherwise valid objects. It is
//! read by the manifests source's own reader, compiled and published, and the lines logged on the
//! way are compared with the lines below: a change in wording is a diff in this file. The README's
//! troubleshooting section explains each line.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use portico::dataplane::Shared;
use portico::metrics::Metrics;
use portico::source::manifests::{ManifestDir, Reported};

/// What each fixture logs (without the time stamp).
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "01-service-not-found.yaml",
        &[
            " WARN portico::source: Ingress shop/web (01-service-not-found.yaml): spec.rules[0].http.paths[0].backend.service.name: no Service \"wbe\" in namespace shop; requests routed there get 503 until it exists reason=ServiceNotFound",
        ],
    ),
    (
        "02-port-number-not-found.yaml",
        &[
            " WARN portico::source: Ingress shop/web (02-port-number-not-found.yaml): spec.rules[0].http.paths[0].backend.service.port.number: Service shop/web has no port 8080 (its ports: 80 named \"http\"; a backend names the Service's port, not the pod's); requests routed there get 503 reason=PortNotFound",
        ],
    ),
    (
        "03-port-name-not-found.yaml",
        &[
            " WARN portico::source: Ingress shop/web (03-port-name-not-found.yaml): spec.rules[0].http.paths[0].backend.service.port.name: Service shop/web has no port named \"web\" (its ports: 80 named \"http\"); requests routed there get 503 reason=PortNotFound",
        ],
    ),
    (
        "04-pathtype-case.yaml",
        &[
            " WARN portico::source: Ingress shop/web (04-pathtype-case.yaml): spec.rules[0].http.paths[0].pathType: \"prefix\" is not Exact, Prefix or ImplementationSpecific (the names are case-sensitive); the path is not served reason=InvalidSpec",
        ],
    ),
    (
        "05-pathtype-missing.yaml",
        &[
            "ERROR portico::source::manifests: Ingress shop/web (05-pathtype-missing.yaml) rejected (a last good version keeps serving): spec.rules[0].http.paths[0].pathType is missing; set it to Prefix, Exact or ImplementationSpecific reason=invalid",
        ],
    ),
    (
        "06-path-relative.yaml",
        &[
            " WARN portico::source: Ingress shop/web (06-path-relative.yaml): spec.rules[0].http.paths[0].path: \"api\" must be absolute (start with \"/\"); the path is not served reason=InvalidPath",
        ],
    ),
    (
        "07-host-with-port.yaml",
        &[
            " WARN portico::source: Ingress shop/web (07-host-with-port.yaml): spec.rules[0].host: \"shop.example.com:8080\" must not carry a port (a rule matches its host on every listener); the rule is not served reason=InvalidHost",
        ],
    ),
    (
        "08-host-underscore.yaml",
        &[
            " WARN portico::source: Ingress shop/web (08-host-underscore.yaml): spec.rules[0].host: \"shop_v2.example.com\" is not a valid DNS name (letters, digits, '-' and '.', with an optional leading \"*.\"); the rule is not served reason=InvalidHost",
        ],
    ),
    (
        "09-tls-secret-not-found.yaml",
        &[
            " WARN portico::source: Ingress shop/web (09-tls-secret-not-found.yaml): spec.tls[0].secretName: no Secret shop/shop-tls of type kubernetes.io/tls with tls.crt and tls.key; shop.example.com gets the default certificate until it exists reason=SecretNotFound",
        ],
    ),
    (
        "10-tls-secret-without-key.yaml",
        &[
            "ERROR portico::source::manifests: Secret shop/shop-tls (10-tls-secret-without-key.yaml) rejected (a last good version keeps serving): data[tls.key] is missing; a kubernetes.io/tls Secret holds the PEM certificate chain in tls.crt and its private key in tls.key reason=invalid",
            " WARN portico::source: Ingress shop/web (10-tls-secret-without-key.yaml): spec.tls[0].secretName: no Secret shop/shop-tls of type kubernetes.io/tls with tls.crt and tls.key; shop.example.com gets the default certificate until it exists reason=SecretNotFound",
        ],
    ),
    (
        "11-tls-secret-wrong-key.yaml",
        &[
            " WARN portico::source: Secret shop/shop-tls (11-tls-secret-wrong-key.yaml): tls.key does not match the certificate in tls.crt; its hosts keep their last good certificate, or get the default one reason=KeyMismatch",
        ],
    ),
    (
        "12-tls-secret-opaque.yaml",
        &[
            " WARN portico::source: Ingress shop/web (12-tls-secret-opaque.yaml): spec.tls[0].secretName: no Secret shop/shop-tls of type kubernetes.io/tls with tls.crt and tls.key; shop.example.com gets the default certificate until it exists reason=SecretNotFound",
        ],
    ),
    (
        "13-tls-without-hosts.yaml",
        &[
            " WARN portico::source: Ingress shop/web (13-tls-without-hosts.yaml): spec.tls[0].hosts is empty, so Secret shop/shop-tls is not used (Portico picks a certificate by the SNI name); list the hosts it covers reason=NoTlsHosts",
        ],
    ),
    (
        "14-class-not-found.yaml",
        &[
            " WARN portico::source: Ingress shop/web (14-class-not-found.yaml): spec.ingressClassName: no IngressClass \"Portico\" exists (class names are case-sensitive), so no controller serves this Ingress; use \"portico\" reason=ClassNotFound",
        ],
    ),
    (
        "15-no-class.yaml",
        &[
            " WARN portico::source: Ingress shop/web (15-no-class.yaml): spec.ingressClassName is unset and no IngressClass is marked default (ingressclass.kubernetes.io/is-default-class), so no controller serves this Ingress; set spec.ingressClassName (Portico serves the class \"portico\") reason=NoClass",
        ],
    ),
    (
        "16-class-other-controller.yaml",
        &[
            " WARN portico::source: Ingress shop/web (16-class-other-controller.yaml): spec.ingressClassName: IngressClass \"portico\" has spec.controller \"portico.dev/ingress-controler\", not \"portico.dev/ingress-controller\", so Portico does not serve this Ingress; correct the IngressClass's spec.controller reason=ClassNotOurs",
        ],
    ),
    (
        "17-same-path-twice.yaml",
        &[
            " WARN portico::source: Ingress shop/web-v2 (17-same-path-twice.yaml): spec.rules[0].http.paths[0] (shop.example.com Prefix /): already served by the older Ingress shop/web (the oldest wins); change the host or the path, or remove one of them reason=Conflict",
        ],
    ),
    (
        "18-no-rules.yaml",
        &[
            " WARN portico::source: Ingress shop/web (18-no-rules.yaml): spec.rules is empty and spec.defaultBackend is unset, so the Ingress serves nothing; add rules or a defaultBackend reason=NoRules",
        ],
    ),
    (
        "19-annotation-value.yaml",
        &[
            " WARN portico::source: Ingress shop/web (19-annotation-value.yaml): metadata.annotations[portico.dev/proxy-body-size]: \"10MB\" is not a size like 1m, 512k or 1048576; the annotation is ignored reason=InvalidSpec",
        ],
    ),
    (
        "20-old-api-version.yaml",
        &[
            "ERROR portico::source::manifests: Ingress shop/web (20-old-api-version.yaml) rejected (a last good version keeps serving): apiVersion extensions/v1beta1 is no longer served by Kubernetes; use networking.k8s.io/v1 (a backend is then service.name and service.port.number) reason=invalid",
        ],
    ),
];

/// A log writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Loads one fixture alone, as `portico --manifests DIR` would, and returns the warning and error
/// lines, with the temporary directory left out of the file names.
fn log_of(fixture: &str) -> Vec<String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mistakes")
        .join(fixture);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&source, dir.path().join(fixture)).expect("copy fixture");
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // The diagnostics format of `portico::telemetry`, without the time and colour.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let shared = Shared::new(Default::default(), Metrics::new().expect("metrics"));
        let mut manifests = ManifestDir::default();
        manifests.scan(dir.path(), &shared);
        manifests.publish(&shared, &mut Reported::default());
    });
    let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("UTF-8");
    let prefix = format!("{}/", dir.path().display());
    text.lines()
        .map(|l| l.replace(&prefix, "").trim_end().to_string())
        .collect()
}

#[test]
fn the_twenty_most_common_mistakes_read_well() {
    let mut fixtures: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mistakes"))
            .expect("fixtures")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
    fixtures.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    let mut report = String::new();
    for fixture in &fixtures {
        let got = log_of(fixture);
        let want = EXPECTED
            .iter()
            .find(|(f, _)| f == fixture)
            .map(|(_, lines)| lines.to_vec())
            .unwrap_or_default();
        if got != want {
            report.push_str(&format!("    (\n        {fixture:?},\n        &[\n"));
            for line in &got {
                report.push_str(&format!("            {line:?},\n"));
            }
            report.push_str("        ],\n    ),\n");
        }
    }
    assert!(
        report.is_empty(),
        "the logged lines differ from EXPECTED; what was logged:\n{report}"
    );
    assert_eq!(listed, fixtures, "EXPECTED lists every fixture, in order");
    assert_eq!(fixtures.len(), 20);
    for (fixture, lines) in EXPECTED {
        assert!(!lines.is_empty(), "{fixture} logs nothing");
    }
}

/// The README's troubleshooting section shows the same lines, so it cannot drift from the code.
#[test]
fn the_readme_lists_every_line() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for (fixture, lines) in EXPECTED {
        assert!(
            readme.contains(&format!("(tests/fixtures/mistakes/{fixture})")),
            "README.md does not link {fixture}"
        );
        for line in *lines {
            assert!(
                readme.contains(line.trim()),
                "README.md lacks the line of {fixture}: {line}"
            );
        }
    }
}
