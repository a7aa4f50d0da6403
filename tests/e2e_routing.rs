//! End to end: a real Portico, real echo backends on loopback, a real HTTP client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{ingress, Pods, Portico, INGRESS_CLASS};

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_virtual_hosting() {
    let admin = Pods::start("admin", 1).await;
    let home = Pods::start("home", 1).await;
    let sso = Pods::start("sso", 1).await;
    let s1 = Pods::start("service1", 1).await;
    let s2 = Pods::start("service2", 1).await;
    let fanout = ingress(
        "default",
        "fanout",
        "2026-01-01T00:00:00Z",
        &[
            ("foo.bar.com", "/admin", "Prefix", "admin", 4200),
            ("foo.bar.com", "/home", "Prefix", "home", 8080),
            ("foo.bar.com", "/sso", "Prefix", "sso", 9000),
        ],
    );
    let vhosts = ingress(
        "default",
        "vhosts",
        "2026-01-01T00:00:00Z",
        &[
            ("ww1.example.com", "/", "Prefix", "service1", 80),
            ("ww2.example.com", "/", "Prefix", "service2", 80),
        ],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("fanout.yaml", &fanout),
        ("vhosts.yaml", &vhosts),
        ("admin.yaml", &admin.manifests("default", "", 4200)),
        ("home.yaml", &home.manifests("default", "http", 8080)),
        ("sso.yaml", &sso.manifests("default", "", 9000)),
        ("s1.yaml", &s1.manifests("default", "", 80)),
        ("s2.yaml", &s2.manifests("default", "", 80)),
    ])
    .await;

    assert_eq!(p.echo("foo.bar.com", "/admin").await.service, "admin");
    assert_eq!(p.echo("foo.bar.com", "/home/x").await.service, "home");
    assert_eq!(p.echo("FOO.bar.com:80", "/sso").await.service, "sso");
    assert_eq!(p.get("foo.bar.com", "/other").await.0, 404);
    assert_eq!(p.get("foo.bar.com", "/adminx").await.0, 404);
    assert_eq!(p.echo("ww1.example.com", "/").await.service, "service1");
    assert_eq!(p.echo("ww2.example.com", "/a/b").await.service, "service2");
    assert_eq!(p.get("ww3.example.com", "/").await.0, 404);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_wildcards_and_precedence() {
    let dflt = Pods::start("fallback", 1).await;
    let wild = Pods::start("wild", 1).await;
    let exact = Pods::start("exact", 1).await;
    let root = Pods::start("root", 1).await;
    let deep = Pods::start("deep", 1).await;
    let anyhost = Pods::start("anyhost", 1).await;
    let default_ing = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: dflt, namespace: default, creationTimestamp: \"2026-01-01T00:00:00Z\" }
spec:
  ingressClassName: portico
  defaultBackend:
    service: { name: fallback, port: { number: 80 } }
";
    let rules = ingress(
        "default",
        "rules",
        "2026-01-02T00:00:00Z",
        &[
            ("*.foo.com", "/", "Prefix", "wild", 80),
            ("bar.foo.com", "/", "Prefix", "root", 80),
            ("bar.foo.com", "/aaa", "Prefix", "root", 80),
            ("bar.foo.com", "/aaa/bbb", "Prefix", "deep", 80),
            ("bar.foo.com", "/aaa", "Exact", "exact", 80),
            ("", "/any", "Prefix", "anyhost", 80),
        ],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("default.yaml", default_ing),
        ("rules.yaml", &rules),
        ("fallback.yaml", &dflt.manifests("default", "", 80)),
        ("wild.yaml", &wild.manifests("default", "", 80)),
        ("exact.yaml", &exact.manifests("default", "", 80)),
        ("root.yaml", &root.manifests("default", "", 80)),
        ("deep.yaml", &deep.manifests("default", "", 80)),
        ("anyhost.yaml", &anyhost.manifests("default", "", 80)),
    ])
    .await;

    // A precise host beats the wildcard; within it, longest path then Exact wins.
    assert_eq!(p.echo("bar.foo.com", "/aaa").await.service, "exact");
    assert_eq!(p.echo("bar.foo.com", "/aaa/").await.service, "root");
    assert_eq!(p.echo("bar.foo.com", "/aaa/ccc").await.service, "root");
    assert_eq!(p.echo("bar.foo.com", "/aaa/bbb").await.service, "deep");
    assert_eq!(p.echo("bar.foo.com", "/aaa/bbbxyz").await.service, "root");
    assert_eq!(
        p.echo("bar.foo.com", "/ccc?x=/aaa/bbb").await.service,
        "root"
    );
    // The wildcard takes exactly one extra label.
    assert_eq!(p.echo("baz.foo.com", "/x").await.service, "wild");
    assert_eq!(p.echo("a.baz.foo.com", "/any").await.service, "anyhost");
    assert_eq!(p.echo("foo.com", "/x").await.service, "fallback");
    // Host-less rules serve hosts no rule claims; everything else falls to the default backend.
    assert_eq!(
        p.echo("unknown.example", "/any/thing").await.service,
        "anyhost"
    );
    assert_eq!(
        p.echo("unknown.example", "/nothing").await.service,
        "fallback"
    );
    // A claimed host whose paths do not match goes to the default backend, not to host-less rules.
    assert_eq!(p.echo("baz.foo.com", "/any").await.service, "wild");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_unavailable_and_bad_gateway() {
    let up = Pods::start("up", 1).await;
    let rules = ingress(
        "default",
        "rules",
        "2026-01-02T00:00:00Z",
        &[
            ("svc.example", "/up", "Prefix", "up", 80),
            ("svc.example", "/empty", "Prefix", "empty", 80),
            ("svc.example", "/missing", "Prefix", "missing", 80),
            ("svc.example", "/dead", "Prefix", "dead", 80),
        ],
    );
    let empty = "apiVersion: v1
kind: Service
metadata: { name: empty, namespace: default }
spec: { ports: [ { port: 80, targetPort: 8080 } ] }
";
    // An endpoint where nothing listens: the connection is refused, which is a 502.
    let dead_port = common::free_port();
    let dead = format!(
        "apiVersion: v1
kind: Service
metadata: {{ name: dead, namespace: default }}
spec: {{ ports: [ {{ port: 80, targetPort: {dead_port} }} ] }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: dead-1, namespace: default, labels: {{ kubernetes.io/service-name: dead }} }}
addressType: IPv4
ports: [ {{ port: {dead_port} }} ]
endpoints: [ {{ addresses: [\"127.0.0.1\"] }} ]
"
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("rules.yaml", &rules),
        ("up.yaml", &up.manifests("default", "", 80)),
        ("empty.yaml", empty),
        ("dead.yaml", &dead),
    ])
    .await;
    assert_eq!(p.echo("svc.example", "/up").await.service, "up");
    assert_eq!(p.get("svc.example", "/nothing").await.0, 404);
    assert_eq!(p.get("other.example", "/up").await.0, 404);
    assert_eq!(p.get("svc.example", "/empty").await.0, 503);
    assert_eq!(p.get("svc.example", "/missing").await.0, 503);
    assert_eq!(p.get("svc.example", "/dead").await.0, 502);
    // The good route is not disturbed by the bad ones.
    assert_eq!(p.echo("svc.example", "/up").await.service, "up");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even_across_endpoints() {
    let pods = Pods::start("rr", 4).await;
    let rules = ingress(
        "default",
        "rr",
        "2026-01-01T00:00:00Z",
        &[("rr.example", "/", "Prefix", "rr", 80)],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("rules.yaml", &rules),
        ("rr.yaml", &pods.manifests("default", "", 80)),
    ])
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        *counts
            .entry(p.echo("rr.example", "/").await.pod)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|c| *c == 50), "{counts:?}");
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_changes_apply_live() {
    let a = Pods::start("svc-a", 1).await;
    let b = Pods::start("svc-b", 1).await;
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("a.yaml", &a.manifests("default", "", 80)),
        ("b.yaml", &b.manifests("default", "", 80)),
    ])
    .await;
    let within = Duration::from_secs(5);
    assert_eq!(p.get("live.example", "/").await.0, 404);

    // Created.
    let to_a = ingress(
        "default",
        "live",
        "2026-01-01T00:00:00Z",
        &[("live.example", "/", "Prefix", "svc-a", 80)],
    );
    p.write("live.yaml", &to_a);
    let took = p
        .eventually("live.example", "/", within, |s, b| {
            s == 200 && b.contains("svc-a")
        })
        .await;
    eprintln!("create applied in {took:?}");

    // Changed in place.
    let to_b = ingress(
        "default",
        "live",
        "2026-01-01T00:00:00Z",
        &[("live.example", "/", "Prefix", "svc-b", 80)],
    );
    p.write("live.yaml", &to_b);
    p.eventually("live.example", "/", within, |s, b| {
        s == 200 && b.contains("svc-b")
    })
    .await;

    // Atomically renamed in.
    p.write_atomic("live.yaml", &to_a);
    p.eventually("live.example", "/", within, |s, b| {
        s == 200 && b.contains("svc-a")
    })
    .await;

    // Deleted.
    p.remove("live.yaml");
    p.eventually("live.example", "/", within, |s, _| s == 404)
        .await;

    // Endpoints change: svc-a's slice now points at svc-b's pod.
    p.write("live.yaml", &to_a);
    p.eventually("live.example", "/", within, |s, b| {
        s == 200 && b.contains("svc-a")
    })
    .await;
    let moved = a
        .manifests("default", "", 80)
        .replace(&a.ips[0].to_string(), &b.ips[0].to_string());
    let moved = moved.replace(&format!("port: {}", a.port), &format!("port: {}", b.port));
    p.write("a.yaml", &moved);
    p.eventually("live.example", "/", within, |s, b| {
        s == 200 && b.contains("svc-b")
    })
    .await;
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_objects_leave_good_routes_serving() {
    let good = Pods::start("good", 1).await;
    let other = Pods::start("other", 1).await;
    let good_ing = ingress(
        "default",
        "good",
        "2026-01-01T00:00:00Z",
        &[("good.example", "/", "Prefix", "good", 80)],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("good.yaml", &good_ing),
        ("svc.yaml", &good.manifests("default", "", 80)),
        ("other.yaml", &other.manifests("default", "", 80)),
        // Bad from the start: not YAML, a broken Ingress, a wrong type.
        ("junk.yaml", "{{{ not: yaml ::: ["),
        (
            "broken.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: { name: broken, namespace: default }\nspec: { rules: 7 }\n",
        ),
        ("binary.json", "\u{0}\u{1}garbage"),
    ])
    .await;
    let within = Duration::from_secs(5);
    assert_eq!(p.echo("good.example", "/").await.service, "good");

    // An Ingress with one invalid rule and one valid rule: the valid one serves.
    let mixed = ingress(
        "default",
        "mixed",
        "2026-01-02T00:00:00Z",
        &[
            ("bad host:80", "/", "Prefix", "other", 80),
            ("mixed.example", "relative", "Prefix", "other", 80),
            ("mixed.example", "/ok", "Prefix", "other", 80),
        ],
    );
    p.write("mixed.yaml", &mixed);
    p.eventually("mixed.example", "/ok", within, |s, _| s == 200)
        .await;
    assert_eq!(p.get("mixed.example", "/relative").await.0, 404);

    // Break the good file: its last good objects keep serving.
    let generation = p.shared.load().generation;
    p.write(
        "good.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n  bad: [indent\n",
    );
    let deadline = std::time::Instant::now() + within;
    while p.shared.load().generation == generation && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        p.shared.load().generation > generation,
        "the broken file was not rescanned"
    );
    assert_eq!(p.echo("good.example", "/").await.service, "good");

    // An object in it that fails validation: the last good version of that object stays.
    p.write(
        "good.yaml",
        &good_ing.replace("pathType: Prefix", "pathType: [1]"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.echo("good.example", "/").await.service, "good");

    // Fixed: the new version applies.
    p.write(
        "good.yaml",
        &good_ing.replace(
            "service:\n              name: good",
            "service:\n              name: other",
        ),
    );
    p.eventually("good.example", "/", within, |s, b| {
        s == 200 && b.contains("\"other\"")
    })
    .await;
    // The errors were counted.
    let m = p.metrics().await;
    assert!(
        m.contains("portico_source_errors_total{reason=\"syntax\",source=\"manifests\"}"),
        "{m}"
    );
    assert!(
        m.contains("portico_rejected_objects{kind=\"Ingress\",reason=\"InvalidHost\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portico_rejected_objects{kind=\"Ingress\",reason=\"InvalidPath\"} 1"),
        "{m}"
    );
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_class_selection() {
    let pods = Pods::start("cls", 1).await;
    let base = |name: &str, host: &str| {
        ingress(
            "default",
            name,
            "2026-01-01T00:00:00Z",
            &[(host, "/", "Prefix", "cls", 80)],
        )
    };
    let other_class = base("other", "other.example")
        .replace("ingressClassName: portico", "ingressClassName: nginx");
    let legacy = base("legacy", "legacy.example")
        .replace("  ingressClassName: portico\n", "")
        .replace(
            "  creationTimestamp:",
            "  annotations: { kubernetes.io/ingress.class: portico }\n  creationTimestamp:",
        );
    let legacy_other = legacy
        .replace("name: legacy", "name: legacy-other")
        .replace("legacy.example", "legacy-other.example")
        .replace("ingress.class: portico", "ingress.class: nginx");
    let classless =
        base("classless", "classless.example").replace("  ingressClassName: portico\n", "");
    let nginx_class = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: { name: nginx }
spec: { controller: k8s.io/ingress-nginx }
";
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("nginx.yaml", nginx_class),
        ("svc.yaml", &pods.manifests("default", "", 80)),
        ("mine.yaml", &base("mine", "mine.example")),
        ("other.yaml", &other_class),
        ("legacy.yaml", &legacy),
        ("legacy-other.yaml", &legacy_other),
        ("classless.yaml", &classless),
    ])
    .await;
    assert_eq!(p.get("mine.example", "/").await.0, 200);
    assert_eq!(p.get("legacy.example", "/").await.0, 200);
    assert_eq!(p.get("other.example", "/").await.0, 404);
    assert_eq!(p.get("legacy-other.example", "/").await.0, 404);
    assert_eq!(p.get("classless.example", "/").await.0, 404);
    // Make Portico's class the default: the class-less Ingress becomes Portico's.
    p.write(
        "class.yaml",
        &INGRESS_CLASS.replace(
            "metadata: { name: portico }",
            "metadata:\n  name: portico\n  annotations: { ingressclass.kubernetes.io/is-default-class: \"true\" }",
        ),
    );
    p.eventually("classless.example", "/", Duration::from_secs(5), |s, _| {
        s == 200
    })
    .await;
    assert_eq!(p.get("other.example", "/").await.0, 404);
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_ingress_wins_a_conflict() {
    let old = Pods::start("old", 1).await;
    let new = Pods::start("new", 1).await;
    let older = ingress(
        "team-b",
        "older",
        "2026-01-01T00:00:00Z",
        &[("c.example", "/", "Prefix", "old", 80)],
    );
    let newer = ingress(
        "team-a",
        "newer",
        "2026-02-01T00:00:00Z",
        &[("c.example", "/", "Prefix", "new", 80)],
    );
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("older.yaml", &older),
        ("newer.yaml", &newer),
        ("old.yaml", &old.manifests("team-b", "", 80)),
        ("new.yaml", &new.manifests("team-a", "", 80)),
    ])
    .await;
    assert_eq!(p.echo("c.example", "/").await.service, "old");
    let m = p.metrics().await;
    assert!(
        m.contains("portico_rejected_objects{kind=\"Ingress\",reason=\"Conflict\"} 1"),
        "{m}"
    );
}
}

both_engines! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_by_name_and_endpoint_conditions() {
    let pods = Pods::start("cond", 3).await;
    let by_name = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: named, namespace: default, creationTimestamp: \"2026-01-01T00:00:00Z\" }
spec:
  ingressClassName: portico
  rules:
    - host: named.example
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: { service: { name: cond, port: { name: web } } }
";
    let [ip0, ip1, ip2] = [pods.ips[0], pods.ips[1], pods.ips[2]];
    let port = pods.port;
    // Two slices: one pod not ready, one pod duplicated across slices, one ready.
    let slices = |ready1: bool| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{ name: cond, namespace: default }}
spec: {{ ports: [ {{ name: web, port: 80, targetPort: {port} }}, {{ name: other, port: 81 }} ] }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: cond-1, namespace: default, labels: {{ kubernetes.io/service-name: cond }} }}
addressType: IPv4
ports: [ {{ name: web, port: {port} }}, {{ name: other, port: 1 }} ]
endpoints:
  - {{ addresses: [\"{ip0}\"], conditions: {{ ready: true }}, targetRef: {{ name: cond-0 }} }}
  - {{ addresses: [\"{ip1}\"], conditions: {{ ready: {ready1}, serving: true, terminating: true }}, targetRef: {{ name: cond-1 }} }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{ name: cond-2, namespace: default, labels: {{ kubernetes.io/service-name: cond }} }}
addressType: IPv4
ports: [ {{ name: web, port: {port} }} ]
endpoints:
  - {{ addresses: [\"{ip0}\"], targetRef: {{ name: cond-0 }} }}
  - {{ addresses: [\"{ip2}\"], conditions: {{ ready: false }}, targetRef: {{ name: cond-2 }} }}
"
        )
    };
    let p = Portico::start(&[
        ("class.yaml", INGRESS_CLASS),
        ("ing.yaml", by_name),
        ("svc.yaml", &slices(false)),
    ])
    .await;
    // Only cond-0 is ready; it appears in two slices but counts once.
    for _ in 0..6 {
        assert_eq!(p.echo("named.example", "/").await.pod, "cond-0");
    }
    assert!(p
        .metrics()
        .await
        .contains("portico_pool_endpoints{namespace=\"default\",port=\"web\",service=\"cond\"} 1"));
    // With cond-1 ready too, both serve in turn.
    p.write("svc.yaml", &slices(true));
    p.eventually("named.example", "/", Duration::from_secs(5), |_, b| {
        b.contains("cond-1")
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(p.echo("named.example", "/").await.pod);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["cond-0", "cond-1"]);

    // No ready endpoint at all: the serving-and-terminating one keeps answering (no 503).
    let draining = slices(false)
        .replace(
            &format!("addresses: [\"{ip0}\"], conditions: {{ ready: true }}"),
            &format!("addresses: [\"{ip0}\"], conditions: {{ ready: false }}"),
        )
        .replace(
            &format!("addresses: [\"{ip0}\"], targetRef"),
            &format!("addresses: [\"{ip0}\"], conditions: {{ ready: false }}, targetRef"),
        );
    p.write_and_wait("svc.yaml", &draining).await;
    for _ in 0..4 {
        assert_eq!(p.echo("named.example", "/").await.pod, "cond-1");
    }
}
}

/// `portico demo`'s examples, as the demo serves them: the Ingresses on the HTTP listener and the
/// Gateway's HTTPRoute on its own socket, with the demo's echo backends; on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_gateway_next_to_the_ingresses() {
    // The examples' fixed pod addresses: started once for both engines.
    let mut backends = Vec::new();
    for (addr, id) in portico::demo::backends() {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .expect("demo backend address");
        backends.push(tokio::spawn(portico::echo::serve(l, id)));
    }
    let files: Vec<(&str, &str)> = portico::demo::EXAMPLES.to_vec();
    for engine in [
        portico::request::policy::Http1Engine::Portico,
        portico::request::policy::Http1Engine::Pingora,
    ] {
        let socket = format!("127.0.0.1:{}", common::free_port());
        let p = Portico::start_with(&files, |f| {
            f.gateway_listen = vec![format!("80={socket}")];
            f.http1_engine = Some(engine);
        })
        .await;
        // The Ingresses, as before.
        assert_eq!(p.echo("ww1.example.com", "/").await.service, "service1");
        // The HTTPRoute: the header match, and the 80/20 split (exact over 10 requests).
        let client = common::client();
        let get = |v2: bool| {
            let mut r = client
                .get(format!("http://{socket}/"))
                .header("host", "gateway.example.com");
            if v2 {
                r = r.header("x-version", "v2");
            }
            async move {
                let body = r
                    .send()
                    .await
                    .expect("gateway request")
                    .text()
                    .await
                    .expect("body");
                serde_json::from_str::<portico::echo::Echo>(&body)
                    .unwrap_or_else(|e| panic!("{e}: {body}"))
                    .service
            }
        };
        assert_eq!(get(true).await, "service2", "{engine:?}");
        let mut seen = HashMap::new();
        for _ in 0..10 {
            *seen.entry(get(false).await).or_insert(0) += 1;
        }
        assert_eq!(seen.get("service1"), Some(&8), "{engine:?}: {seen:?}");
        assert_eq!(seen.get("service2"), Some(&2), "{engine:?}: {seen:?}");
        // Its status, as the admin listener serves it.
        let status: serde_json::Value = client
            .get(format!("http://{}/status/gateway-api", p.admin))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        let route = &status["httpRoutes"]["default/demo-route"]["parents"][0]["conditions"];
        assert!(
            route
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Accepted" && c["status"] == "True"),
            "{status}"
        );
    }
    for b in backends {
        b.abort();
    }
}
