//! The semantics table of INGRESS-SEMANTICS.md, through translation (YAML fixtures) and the
//! compile step, with no network. Plus a property test against a slow reference implementation.

use std::collections::BTreeSet;

use portico::model::{Kind, Model};
use portico::routing::{compile, normalize_request_host, CompileOptions, Compiled};
use portico::translate::{parse_documents, Document};
use proptest::prelude::*;

fn model_from(yaml: &str) -> Model {
    let mut model = Model::default();
    for doc in parse_documents(yaml) {
        match doc {
            Document::Object(o) => model.insert(o),
            Document::Ignored => {}
            Document::Rejected { error, .. } => panic!("fixture rejected: {error}"),
        }
    }
    model
}

fn fixture(name: &str) -> Compiled {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    compile(&model_from(&text), &CompileOptions::default())
}

/// The Service a request is routed to, or None.
fn route(c: &Compiled, host: &str, path: &str) -> Option<String> {
    c.table
        .lookup(&normalize_request_host(host), path)
        .map(|r| r.service.name.clone())
}

#[test]
fn path_table() {
    let c = fixture("paths.yaml");
    assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    let d = Some("default-backend".to_string());
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("root.test", "/", Some("root")),
        ("root.test", "/anything/at/all", Some("root")),
        ("exact.test", "/foo", Some("foo")),
        ("exact.test", "/bar", None),
        ("exact.test", "/foo/", None),
        ("exact-slash.test", "/foo", None),
        ("exact-slash.test", "/foo/", Some("foo-slash")),
        ("prefix-foo.test", "/foo", Some("foo")),
        ("prefix-foo.test", "/foo/", Some("foo")),
        ("prefix-foo-slash.test", "/foo", Some("foo")),
        ("prefix-foo-slash.test", "/foo/", Some("foo")),
        ("aaa-bb.test", "/aaa/bbb", None),
        ("aaa-bbb.test", "/aaa/bbb", Some("bbb")),
        ("aaa-bbb.test", "/aaa/bbb/", Some("bbb")),
        ("aaa-bbb.test", "/aaa/bbb/ccc", Some("bbb")),
        ("aaa-bbb-slash.test", "/aaa/bbb", Some("bbb")),
        ("aaa-bbb.test", "/aaa/bbbxyz", None),
        ("multi.test", "/aaa/ccc", Some("aaa")),
        ("multi.test", "/aaa/bbb", Some("bbb")),
        ("multi.test", "/ccc", Some("root")),
        ("only-aaa.test", "/ccc", None),
        ("mixed.test", "/foo", Some("exact")),
        ("mixed.test", "/foo/x", Some("prefix")),
        ("impl.test", "/foo", Some("impl")),
        ("impl.test", "/foobar", None),
        // Paths are case-sensitive; hosts are not.
        ("EXACT.test", "/foo", Some("foo")),
        ("exact.test", "/FOO", None),
    ];
    for (host, path, want) in cases {
        let want = want.map(str::to_string).or(d.clone());
        assert_eq!(route(&c, host, path), want, "{host} {path}");
    }
}

#[test]
fn hosts_merging_and_rejections() {
    let c = fixture("hosts.yaml");
    // Precise beats wildcard; one label only; host-less serves the rest.
    assert_eq!(
        route(&c, "bar.foo.com", "/only").as_deref(),
        Some("precise")
    );
    assert_eq!(route(&c, "baz.foo.com", "/only").as_deref(), Some("wild"));
    assert_eq!(route(&c, "a.b.foo.com", "/x").as_deref(), Some("any"));
    assert_eq!(route(&c, "foo.com", "/x").as_deref(), Some("any"));
    // The chosen precise host does not fall back to the wildcard or host-less rules.
    assert_eq!(route(&c, "bar.foo.com", "/x"), None);
    // Rules from two Ingresses merge into one host; the older wins the repeated path.
    assert_eq!(route(&c, "bar.foo.com", "/more/1").as_deref(), Some("more"));
    // Equal age: namespace/name breaks the tie (a-ns/tie before b-ns/tie).
    assert_eq!(route(&c, "tie.com", "/tie/x").as_deref(), Some("a"));
    // Invalid parts are left out, the valid path of the same rule serves.
    assert_eq!(route(&c, "resource.com", "/ok").as_deref(), Some("any"));
    assert_eq!(route(&c, "resource.com", "/ext"), None);
    assert_eq!(route(&c, "resource.com", "/both"), None);
    assert_eq!(route(&c, "with-port.com", "/").as_deref(), Some("any"));

    let reasons: BTreeSet<(String, &str)> = c
        .rejected
        .iter()
        .map(|r| (r.key.to_string(), r.reason))
        .collect();
    let expect: BTreeSet<(String, &str)> = [
        ("other/merged", "Conflict"),
        ("b-ns/tie", "Conflict"),
        ("default/invalid", "InvalidHost"),
        ("default/invalid", "UnsupportedBackend"),
        ("default/invalid", "ExternalNameService"),
        ("default/invalid", "InvalidSpec"),
        // Every Ingress that routes to the missing Service `any` is told, not only the first.
        ("default/invalid", "ServiceNotFound"),
        ("default/wildcard", "ServiceNotFound"),
        ("default/precise", "ServiceNotFound"),
        ("a-ns/tie", "ServiceNotFound"),
    ]
    .into_iter()
    .map(|(k, r)| (k.to_string(), r))
    .collect();
    assert_eq!(reasons, expect);
    assert!(c.rejected.iter().all(|r| r.kind == Kind::Ingress));
    // Two invalid hosts: the port and the bare "*".
    assert_eq!(
        c.rejected
            .iter()
            .filter(|r| r.reason == "InvalidHost")
            .count(),
        2
    );
}

#[test]
fn translation_keeps_what_it_can() {
    let docs = parse_documents(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: d }\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: { name: opaque }\ntype: Opaque\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: { name: tls, namespace: web }\ntype: kubernetes.io/tls\n\
         stringData: { tls.crt: CERT, tls.key: KEY }\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: { name: s }\nspec: { ports: [ { port: 70000 } ] }\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: { name: e }\naddressType: FQDN\nendpoints: []\n---\n\
         kind: List\napiVersion: v1\nitems:\n  - apiVersion: networking.k8s.io/v1\n    kind: IngressClass\n    metadata: { name: c }\n    spec: { controller: x }\n---\n\
         {}\n",
    );
    let summary: Vec<String> = docs
        .iter()
        .map(|d| match d {
            Document::Object(o) => format!("{} {}", o.kind(), o.key()),
            Document::Ignored => "ignored".into(),
            Document::Rejected { identity, error } => {
                format!(
                    "rejected {:?} {}",
                    identity.as_ref().map(|i| i.1.to_string()),
                    error.reason()
                )
            }
        })
        .collect();
    assert_eq!(
        summary,
        [
            "ignored",
            // Opaque Secrets are read (ingress-nginx's auth-secret and proxy-ssl-secret), but
            // never serve a certificate.
            "Secret default/opaque",
            "Secret web/tls",
            "rejected Some(\"default/s\") invalid",
            "rejected Some(\"default/e\") invalid",
            "IngressClass c",
            "rejected None shape",
        ]
    );
}

/// A host with many paths (more than the compile step scans before it indexes them) keeps the
/// same conflict rules: the older Ingress holds a repeated path, a repeat within one Ingress is a
/// duplicate, and new paths of the younger Ingress still serve.
#[test]
fn many_paths_on_one_host() {
    let ingress = |name: &str, age: u32, paths: &[String]| {
        let paths: String = paths
            .iter()
            .map(|p| {
                format!(
                    "        - {{ path: {p}, pathType: Prefix, backend: {{ service: {{ name: {name}, port: {{ number: 80 }} }} }} }}\n"
                )
            })
            .collect();
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{ name: {name}, namespace: ns, creationTimestamp: \"2026-01-01T00:00:{age:02}Z\" }}\n\
             spec:\n  ingressClassName: portico\n  rules:\n    - host: many.com\n      http:\n        paths:\n{paths}"
        )
    };
    let mut old: Vec<String> = (0..40).map(|i| format!("/p{i}")).collect();
    old.push("/p30".into());
    let young = vec!["/p35".to_string(), "/young".to_string()];
    let yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: { name: portico }\nspec: { controller: portico.dev/ingress-controller }\n",
    ) + &ingress("young", 2, &young)
        + &ingress("old", 1, &old);
    let c = compile(&model_from(&yaml), &CompileOptions::default());
    assert_eq!(route(&c, "many.com", "/p0").as_deref(), Some("old"));
    assert_eq!(route(&c, "many.com", "/p35/x").as_deref(), Some("old"));
    assert_eq!(route(&c, "many.com", "/young").as_deref(), Some("young"));
    let reasons: Vec<(String, &str)> = c
        .rejected
        .iter()
        .filter(|r| r.reason != "ServiceNotFound")
        .map(|r| (r.key.to_string(), r.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("ns/old".to_string(), "Duplicate"),
            ("ns/young".to_string(), "Conflict")
        ]
    );
}

// --- Property test: lookup agrees with a slow, literal reading of the semantics. ---

#[derive(Clone, Debug)]
struct GenRule {
    host: Option<String>,
    path: String,
    exact: bool,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let host = prop_oneof![
        Just(None),
        prop::sample::select(vec!["a.x", "b.x", "*.x", "c.a.x", "*.a.x"])
            .prop_map(|h| Some(h.to_string())),
    ];
    let seg = prop::sample::select(vec!["a", "b", "ab"]);
    let path = prop::collection::vec(seg, 0..3).prop_map(|s| format!("/{}", s.join("/")));
    let trailing = any::<bool>();
    (host, path, trailing, any::<bool>()).prop_map(|(host, path, trailing, exact)| GenRule {
        host,
        path: if trailing && path != "/" {
            format!("{path}/")
        } else {
            path
        },
        exact,
    })
}

/// The reference: hosts and paths as INGRESS-SEMANTICS.md words them, with no cleverness.
fn reference(rules: &[GenRule], host: &str, path: &str) -> Option<usize> {
    let host_matches = |h: &Option<String>| match h {
        None => false,
        Some(h) if h.starts_with("*.") => {
            let suffix = &h[1..];
            host.ends_with(suffix)
                && !host[..host.len() - suffix.len()].contains('.')
                && host.len() > suffix.len()
        }
        Some(h) => h == host,
    };
    // Precise, then wildcard, then host-less. The first rule (oldest) owns a repeated claim.
    let precise: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].host.as_deref() == Some(host))
        .collect();
    let wildcard: Vec<usize> = (0..rules.len())
        .filter(|&i| {
            rules[i]
                .host
                .as_deref()
                .is_some_and(|h| h.starts_with("*."))
                && host_matches(&rules[i].host)
        })
        .collect();
    let hostless: Vec<usize> = (0..rules.len())
        .filter(|&i| rules[i].host.is_none())
        .collect();
    let candidates = if !precise.is_empty() {
        precise
    } else if !wildcard.is_empty() {
        wildcard
    } else {
        hostless
    };
    // "Element by element, split on /", with the rule's trailing slash ignored.
    let rule_elements = |p: &str| -> Vec<String> {
        let trimmed = p.trim_end_matches('/');
        trimmed.split('/').map(str::to_string).collect()
    };
    let mut best: Option<(usize, bool, usize)> = None;
    let mut claimed = BTreeSet::new();
    for i in candidates {
        let r = &rules[i];
        let norm = if r.exact {
            r.path.clone()
        } else if r.path.trim_end_matches('/').is_empty() {
            "/".to_string()
        } else {
            r.path.trim_end_matches('/').to_string()
        };
        if !claimed.insert((r.host.clone(), norm.clone(), r.exact)) {
            continue;
        }
        let matches = if r.exact {
            r.path == path
        } else if norm == "/" {
            true
        } else {
            let rule = rule_elements(&r.path);
            let req: Vec<&str> = path.split('/').collect();
            req.len() >= rule.len() && rule.iter().zip(&req).all(|(a, b)| a == b)
        };
        if matches {
            let key = (norm.len(), r.exact, i);
            let better = match best {
                None => true,
                Some((len, exact, _)) => (key.0, key.1) > (len, exact),
            };
            if better {
                best = Some(key);
            }
        }
    }
    best.map(|(_, _, i)| i)
}

fn model_of(rules: &[GenRule]) -> Model {
    let mut yaml = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: { name: portico }\nspec: { controller: portico.dev/ingress-controller }\n",
    );
    for (i, r) in rules.iter().enumerate() {
        let host = r
            .host
            .as_ref()
            .map(|h| format!("host: \"{h}\"\n      "))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{ name: r{i:03}, namespace: ns, creationTimestamp: \"2026-01-01T00:00:{:02}Z\" }}\nspec:\n  ingressClassName: portico\n  rules:\n    - {host}http: {{ paths: [ {{ path: \"{}\", pathType: {}, backend: {{ service: {{ name: s{i}, port: {{ number: 80 }} }} }} }} ] }}\n",
            i % 60,
            r.path,
            if r.exact { "Exact" } else { "Prefix" },
        ));
    }
    model_from(&yaml)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lookup_agrees_with_reference(
        rules in prop::collection::vec(gen_rule(), 1..12),
        host in prop::sample::select(vec!["a.x", "b.x", "c.x", "c.a.x", "d.a.x", "x", "z.c.a.x"]),
        path in prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", ""]), 0..4)
            .prop_map(|s| format!("/{}", s.join("/"))),
    ) {
        // Creation times repeat every 60 rules at most; with < 12 rules the order is the index.
        let c = compile(&model_of(&rules), &CompileOptions::default());
        let got = c.table.lookup(host, &path).map(|r| r.service.name.clone());
        let want = reference(&rules, host, &path).map(|i| format!("s{i}"));
        prop_assert_eq!(got, want, "rules {:?}", rules);
    }

    /// Compile never panics, whatever the documents hold.
    #[test]
    fn compile_never_panics(text in "\\PC{0,400}") {
        let mut model = Model::default();
        for doc in parse_documents(&text) {
            if let Document::Object(o) = doc { model.insert(o); }
        }
        let _ = compile(&model, &CompileOptions::default());
    }
}
