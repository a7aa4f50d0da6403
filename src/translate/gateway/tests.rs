//! The translator on the conformance suite's own objects (`../shared/gateway-api/`): the
//! status each core test expects, and the effective routes its requests would meet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::effective::{Action, BackendTarget, EffectiveListener, EffectiveRule};
use super::hostname::GwHost;
use super::*;
use crate::model::{Object, ObjectKey, Service, TlsSecret};
use crate::source::gateway_api::gateway_class::GatewayClassSpec;
use crate::source::gateway_api::testdata::{self, CLASS, CONTROLLER};
use crate::source::gateway_api::{from_value, GatewayObject, GROUP};
use crate::translate::{parse_documents, Document};

const INFRA: &str = "gateway-conformance-infra";

/// The objects of the base manifests plus one test's, as the suite applies them, with the
/// Secrets the suite generates and Portico's GatewayClass.
#[derive(Default)]
struct World {
    classes: Vec<GatewayClass>,
    gateways: Vec<Gateway>,
    routes: Vec<HTTPRoute>,
    grants: Vec<ReferenceGrant>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    services: BTreeMap<ObjectKey, Arc<Service>>,
    secrets: BTreeMap<ObjectKey, Arc<TlsSecret>>,
    listen: Listen,
}

fn world(test: &str) -> Option<World> {
    let mut w = World::default();
    let mut docs = testdata::documents("base-manifests.yaml")?;
    docs.extend(testdata::documents(&format!("tests/{test}.yaml"))?);
    w.classes.push(GatewayClass::new(
        CLASS,
        GatewayClassSpec {
            controller_name: CONTROLLER.into(),
            parameters_ref: None,
            description: None,
        },
    ));
    // The suite's generated certificates.
    for (ns, name) in [
        (INFRA, "tls-validity-checks-certificate"),
        ("gateway-conformance-web-backend", "certificate"),
    ] {
        let (cert, key) = crate::tls::cert::tests::generated(&["*"]);
        let key_obj = ObjectKey::new(ns, name);
        w.secrets.insert(
            key_obj.clone(),
            Arc::new(TlsSecret {
                key: key_obj,
                tls: true,
                cert_pem: cert.into_bytes(),
                key_pem: key.into_bytes(),
                ca_pem: None,
                data: BTreeMap::new(),
            }),
        );
    }
    for doc in docs {
        if doc["kind"] == "Namespace" {
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(doc["metadata"]["labels"].clone()).unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), name.clone());
            w.namespaces.insert(name, labels);
            continue;
        }
        match from_value(doc.clone()) {
            Some(Ok(GatewayObject::GatewayClass(c))) => w.classes.push(c),
            Some(Ok(GatewayObject::Gateway(g))) => w.gateways.push(g),
            Some(Ok(GatewayObject::HTTPRoute(r))) => w.routes.push(r),
            Some(Ok(GatewayObject::ReferenceGrant(g))) => w.grants.push(g),
            Some(Err(e)) => panic!("{test}: {e}"),
            None => {
                for d in parse_documents(&serde_json::to_string(&doc).unwrap()) {
                    match d {
                        Document::Object(Object::Service(s)) => {
                            w.services.insert(s.key.clone(), s);
                        }
                        Document::Object(Object::Secret(s)) => {
                            w.secrets.insert(s.key.clone(), s);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    w.listen = Listen {
        http_ports: BTreeSet::from([80]),
        https_ports: BTreeSet::from([443]),
        addresses: BTreeMap::new(),
        // Each Gateway its own loopback address, as in the driver.
        pool: (2..=60).map(|n| IpAddr::from([127, 0, 0, n])).collect(),
        shared: Vec::new(),
    };
    Some(w)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
}

fn run(w: &World) -> Outcome {
    let now = now();
    translate(&Inputs {
        controller_name: CONTROLLER,
        classes: &w.classes,
        gateways: &w.gateways,
        routes: &w.routes,
        grants: &w.grants,
        namespaces: &w.namespaces,
        services: &w.services,
        secrets: &w.secrets,
        listen: &w.listen,
        now: &now,
    })
}

/// `(status, reason)` of a condition, `None` if absent.
fn cond<'c>(conds: &'c [Condition], type_: &str) -> Option<(&'c str, &'c str)> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn gateway<'o>(out: &'o Outcome, name: &str) -> &'o GatewayStatus {
    out.gateways
        .get(&ObjectKey::new(INFRA, name))
        .unwrap_or_else(|| panic!("no status for Gateway {name}"))
}

fn listener<'o>(
    out: &'o Outcome,
    gw: &str,
    name: &str,
) -> &'o crate::source::gateway_api::ListenerStatus {
    gateway(out, gw)
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("Gateway {gw} has no listener {name}"))
}

/// The conditions of a route's parent entry for Gateway `gw` (and `section`, if given).
fn parent<'o>(out: &'o Outcome, ns: &str, route: &str, gw: &str) -> &'o [Condition] {
    let status = out
        .routes
        .get(&ObjectKey::new(ns, route))
        .unwrap_or_else(|| panic!("no status for HTTPRoute {ns}/{route}"));
    let p = status
        .parents
        .iter()
        .find(|p| p.parent_ref.name == gw)
        .unwrap_or_else(|| panic!("HTTPRoute {route} has no parent {gw}"));
    assert_eq!(p.controller_name, CONTROLLER);
    assert_eq!(
        (p.parent_ref.group.as_str(), p.parent_ref.kind.as_str()),
        (GROUP, "Gateway")
    );
    &p.conditions
}

fn served<'o>(out: &'o Outcome, gw: &str) -> &'o EffectiveGateway {
    out.served
        .iter()
        .find(|g| g.key == ObjectKey::new(INFRA, gw))
        .unwrap_or_else(|| panic!("Gateway {gw} is not served"))
}

fn served_listener<'o>(out: &'o Outcome, gw: &str, name: &str) -> &'o EffectiveListener {
    served(out, gw)
        .listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("listener {name} of {gw} is not served"))
}

/// The first rule a request meets on a listener, as the data plane must choose it: the most
/// specific hostname bucket first, then precedence.
fn route_request<'l>(
    l: &'l EffectiveListener,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<&'l EffectiveRule> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let host_rank = |r: &EffectiveRule| -> Option<(u8, usize)> {
        if r.hostnames.is_empty() {
            return Some((0, 0));
        }
        r.hostnames
            .iter()
            .filter(|h| h.matches(host))
            .map(|h| match h {
                GwHost::Precise(p) => (2, p.len()),
                GwHost::Wildcard(s) => (1, s.len()),
            })
            .max()
    };
    let best = l.rules.iter().filter_map(host_rank).max()?;
    l.rules
        .iter()
        .filter(|r| host_rank(r) == Some(best))
        .find(|r| r.matcher.matches_slow("GET", path, header, None))
}

/// The Service of a forwarding rule's only backend, or the status of an error answer.
fn target(rule: Option<&EffectiveRule>) -> String {
    match rule.map(|r| &r.action) {
        None => "404".into(),
        Some(Action::Forward(f)) => match &f.backends[..] {
            [b] => match &b.target {
                BackendTarget::Service { service, .. } => service.name.clone(),
                BackendTarget::Invalid { .. } => "500".into(),
            },
            many => format!("{} backends", many.len()),
        },
        Some(Action::Redirect(r)) => r.status.to_string(),
        Some(Action::Error { status, .. }) => status.to_string(),
    }
}

/// Every Gateway of the base manifests is Accepted and Programmed with every listener ready,
/// whatever test runs beside them; every route of every test gets a parent status with the
/// parentRef's group and kind filled in.
#[test]
fn base_gateways_are_ready_in_every_test() {
    let Some(files) = testdata::test_files() else {
        return;
    };
    for file in files {
        let test = file.trim_end_matches(".yaml");
        let w = world(test).unwrap();
        let out = run(&w);
        for gw in [
            "same-namespace",
            "all-namespaces",
            "backend-namespaces",
            "same-namespace-with-https-listener",
        ] {
            let s = gateway(&out, gw);
            assert_eq!(
                cond(&s.conditions, "Accepted"),
                Some(("True", "Accepted")),
                "{test} {gw}"
            );
            assert_eq!(
                cond(&s.conditions, "Programmed"),
                Some(("True", "Programmed")),
                "{test} {gw}"
            );
            assert!(
                s.addresses[0].value.starts_with("127.0.0."),
                "{:?}",
                s.addresses
            );
            for l in &s.listeners {
                for t in ["Accepted", "ResolvedRefs", "Programmed"] {
                    assert_eq!(
                        cond(&l.conditions, t).map(|c| c.0),
                        Some("True"),
                        "{test} {gw} {} {t}",
                        l.name
                    );
                }
                assert_eq!(
                    cond(&l.conditions, "Conflicted"),
                    Some(("False", "NoConflicts"))
                );
            }
        }
        for r in &w.routes {
            let key = super::key_of(&r.metadata);
            let status = out
                .routes
                .get(&key)
                .unwrap_or_else(|| panic!("{test}: no status for {key}"));
            assert!(!status.parents.is_empty(), "{test}: {key}");
            for p in &status.parents {
                for c in &p.conditions {
                    assert!(!c.reason.is_empty() && c.observed_generation == r.metadata.generation);
                }
            }
        }
    }
}

#[test]
fn gateway_invalid_route_kind() {
    let Some(w) = world("gateway-invalid-route-kind") else {
        return;
    };
    let out = run(&w);
    let l = listener(&out, "gateway-only-invalid-route-kind", "http");
    assert_eq!(
        cond(&l.conditions, "ResolvedRefs"),
        Some(("False", "InvalidRouteKinds"))
    );
    assert!(l.supported_kinds.is_empty());
    let l = listener(&out, "gateway-supported-and-invalid-route-kind", "http");
    assert_eq!(
        cond(&l.conditions, "ResolvedRefs"),
        Some(("False", "InvalidRouteKinds"))
    );
    assert_eq!(l.supported_kinds.len(), 1);
    assert_eq!(
        (
            l.supported_kinds[0].group.as_str(),
            l.supported_kinds[0].kind.as_str()
        ),
        (GROUP, "HTTPRoute")
    );
    assert_eq!(l.attached_routes, 0);
}

#[test]
fn gateway_listener_unsupported_protocol() {
    let Some(w) = world("gateway-invalid-listeners-unsupported-protocol") else {
        return;
    };
    let out = run(&w);
    let g = gateway(&out, "gateway-only-unsupported-protocols");
    assert_eq!(
        cond(&g.conditions, "Accepted"),
        Some(("False", "ListenersNotValid"))
    );
    let l = listener(&out, "gateway-only-unsupported-protocols", "invalid");
    assert_eq!(
        cond(&l.conditions, "Accepted"),
        Some(("False", "UnsupportedProtocol"))
    );
    assert!(l.supported_kinds.is_empty());
    let g = gateway(&out, "gateway-supported-and-unsupported-protocols");
    assert_eq!(
        cond(&g.conditions, "Accepted"),
        Some(("True", "ListenersNotValid"))
    );
    let l = listener(&out, "gateway-supported-and-unsupported-protocols", "http");
    assert_eq!(cond(&l.conditions, "Accepted"), Some(("True", "Accepted")));
    assert_eq!(l.supported_kinds.len(), 1);
    let l = listener(
        &out,
        "gateway-supported-and-unsupported-protocols",
        "invalid",
    );
    assert_eq!(
        cond(&l.conditions, "Accepted"),
        Some(("False", "UnsupportedProtocol"))
    );
}

#[test]
fn gateway_invalid_parameters_ref() {
    let Some(w) = world("gateway-invalid-parameters-ref") else {
        return;
    };
    let out = run(&w);
    let g = gateway(&out, "gateway-invalid-parameters-ref");
    assert_eq!(
        cond(&g.conditions, "Accepted"),
        Some(("False", "InvalidParameters"))
    );
    assert_eq!(
        cond(&g.conditions, "Programmed").map(|c| c.0),
        Some("False")
    );
    assert!(out
        .served
        .iter()
        .all(|s| s.key.name != "gateway-invalid-parameters-ref"));
}

#[test]
fn gateway_invalid_tls_configuration() {
    let Some(w) = world("gateway-invalid-tls-configuration") else {
        return;
    };
    let out = run(&w);
    for gw in [
        "gateway-certificate-nonexistent-secret",
        "gateway-certificate-unsupported-group",
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-malformed-secret",
    ] {
        let l = listener(&out, gw, "https");
        assert_eq!(
            cond(&l.conditions, "ResolvedRefs"),
            Some(("False", "InvalidCertificateRef")),
            "{gw}"
        );
        assert_eq!(
            cond(&l.conditions, "Programmed").map(|c| c.0),
            Some("False"),
            "{gw}"
        );
    }
}

#[test]
fn gateway_secret_reference_grants() {
    for (test, gw, expected) in [
        (
            "gateway-secret-missing-reference-grant",
            "gateway-secret-missing-reference-grant",
            ("False", "RefNotPermitted"),
        ),
        (
            "gateway-secret-invalid-reference-grant",
            "gateway-secret-invalid-reference-grant",
            ("False", "RefNotPermitted"),
        ),
        (
            "gateway-secret-reference-grant-all-in-namespace",
            "gateway-secret-reference-grant-all-in-namespace",
            ("True", "ResolvedRefs"),
        ),
        (
            "gateway-secret-reference-grant-specific",
            "gateway-secret-reference-grant-specific",
            ("True", "ResolvedRefs"),
        ),
    ] {
        let Some(w) = world(test) else { return };
        let out = run(&w);
        let l = listener(&out, gw, "https");
        assert_eq!(
            cond(&l.conditions, "ResolvedRefs"),
            Some(expected),
            "{test}"
        );
        let programmed = if expected.0 == "True" {
            ("True", "Programmed")
        } else {
            ("False", "Invalid")
        };
        assert_eq!(
            cond(&l.conditions, "Programmed"),
            Some(programmed),
            "{test}"
        );
    }
}

#[test]
fn gateway_with_attached_routes() {
    let Some(w) = world("gateway-with-attached-routes") else {
        return;
    };
    let out = run(&w);
    assert_eq!(
        listener(&out, "gateway-with-one-attached-route", "http").attached_routes,
        1
    );
    assert_eq!(
        listener(&out, "gateway-with-two-attached-routes", "http").attached_routes,
        2
    );
    assert_eq!(
        cond(
            parent(
                &out,
                INFRA,
                "http-route-not-accepted",
                "gateway-with-two-attached-routes"
            ),
            "Accepted"
        ),
        Some(("False", "NoMatchingListenerHostname"))
    );
    // Refs unresolved on the listener and on the route: still attached and counted.
    let l = listener(
        &out,
        "unresolved-gateway-with-one-attached-unresolved-route",
        "tls",
    );
    assert_eq!(l.attached_routes, 1);
    assert_eq!(
        cond(&l.conditions, "ResolvedRefs"),
        Some(("False", "InvalidCertificateRef"))
    );
    let p = parent(
        &out,
        INFRA,
        "http-route-4",
        "unresolved-gateway-with-one-attached-unresolved-route",
    );
    assert_eq!(cond(p, "Accepted"), Some(("True", "Accepted")));
    assert_eq!(cond(p, "ResolvedRefs"), Some(("False", "BackendNotFound")));
}

#[test]
fn gateway_modify_listeners() {
    let Some(mut w) = world("gateway-modify-listeners") else {
        return;
    };
    let out = run(&w);
    assert_eq!(
        listener(&out, "gateway-add-listener", "https").attached_routes,
        1
    );
    assert_eq!(gateway(&out, "gateway-remove-listener").listeners.len(), 2);
    // The suite patches an HTTP listener in and the HTTPS one out.
    let add = w
        .gateways
        .iter_mut()
        .find(|g| g.metadata.name.as_deref() == Some("gateway-add-listener"))
        .unwrap();
    let mut http = add.spec.listeners[0].clone();
    http.name = "http".into();
    http.port = 80;
    http.protocol = "HTTP".into();
    http.hostname = None;
    http.tls = None;
    add.spec.listeners.push(http);
    add.metadata.generation = Some(2);
    let remove = w
        .gateways
        .iter_mut()
        .find(|g| g.metadata.name.as_deref() == Some("gateway-remove-listener"))
        .unwrap();
    remove.spec.listeners.remove(0);
    remove.metadata.generation = Some(2);
    let out = run(&w);
    let l = listener(&out, "gateway-add-listener", "http");
    assert_eq!(l.attached_routes, 1);
    assert_eq!(l.conditions[0].observed_generation, Some(2));
    let g = gateway(&out, "gateway-remove-listener");
    assert_eq!(g.listeners.len(), 1);
    assert_eq!(g.listeners[0].attached_routes, 1);
}

#[test]
fn observed_generation_follows_the_objects() {
    let Some(mut w) = world("httproute-observed-generation-bump") else {
        return;
    };
    for g in &mut w.gateways {
        g.metadata.generation = Some(3);
    }
    for r in &mut w.routes {
        r.metadata.generation = Some(5);
    }
    w.classes[0].metadata.generation = Some(7);
    let out = run(&w);
    assert!(out.classes[CLASS]
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
    let g = gateway(&out, "same-namespace");
    assert!(g
        .conditions
        .iter()
        .chain(g.listeners.iter().flat_map(|l| &l.conditions))
        .all(|c| c.observed_generation == Some(3)));
    assert!(
        parent(&out, INFRA, "observed-generation-bump", "same-namespace")
            .iter()
            .all(|c| c.observed_generation == Some(5))
    );
}

#[test]
fn httproute_invalid_backend_refs() {
    for (test, route, reason) in [
        (
            "httproute-invalid-nonexistent-backendref",
            "invalid-nonexistent-backend-ref",
            "BackendNotFound",
        ),
        (
            "httproute-invalid-backendref-unknown-kind",
            "invalid-backend-ref-unknown-kind",
            "InvalidKind",
        ),
        (
            "httproute-invalid-cross-namespace-backend-ref",
            "invalid-cross-namespace-backend-ref",
            "RefNotPermitted",
        ),
        (
            "httproute-invalid-reference-grant",
            "reference-grant",
            "RefNotPermitted",
        ),
    ] {
        let Some(w) = world(test) else { return };
        let out = run(&w);
        let p = parent(&out, INFRA, route, "same-namespace");
        assert_eq!(cond(p, "Accepted"), Some(("True", "Accepted")), "{test}");
        assert_eq!(cond(p, "ResolvedRefs"), Some(("False", reason)), "{test}");
        // Still attached, and its requests are answered 500.
        let l = served_listener(&out, "same-namespace", "http");
        assert_eq!(
            target(route_request(l, "example.com", "/", &[])),
            "500",
            "{test}"
        );
    }
}

#[test]
fn httproute_reference_grant() {
    let Some(mut w) = world("httproute-reference-grant") else {
        return;
    };
    let out = run(&w);
    let p = parent(&out, INFRA, "reference-grant", "same-namespace");
    assert_eq!(cond(p, "ResolvedRefs"), Some(("True", "ResolvedRefs")));
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(
        target(route_request(l, "example.com", "/", &[])),
        "web-backend"
    );
    // The suite deletes the grant: 500.
    w.grants.clear();
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(target(route_request(l, "example.com", "/", &[])), "500");
}

#[test]
fn httproute_partially_invalid_via_invalid_reference_grant() {
    let Some(w) = world("httproute-partially-invalid-via-invalid-reference-grant") else {
        return;
    };
    let out = run(&w);
    let p = parent(&out, INFRA, "invalid-reference-grant", "same-namespace");
    assert_eq!(cond(p, "ResolvedRefs"), Some(("False", "RefNotPermitted")));
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(target(route_request(l, "example.com", "/v2", &[])), "500");
    assert_eq!(
        target(route_request(l, "example.com", "/", &[])),
        "app-backend-v1"
    );
}

#[test]
fn httproute_parent_refs_that_do_not_attach() {
    let Some(w) = world("httproute-invalid-parentref-not-matching-section-name") else {
        return;
    };
    let out = run(&w);
    let p = parent(
        &out,
        INFRA,
        "httproute-listener-not-matching-section-name",
        "same-namespace",
    );
    assert_eq!(cond(p, "Accepted"), Some(("False", "NoMatchingParent")));
    assert_eq!(listener(&out, "same-namespace", "http").attached_routes, 0);

    let Some(w) = world("httproute-invalid-cross-namespace-parent-ref") else {
        return;
    };
    let out = run(&w);
    let p = parent(
        &out,
        "gateway-conformance-web-backend",
        "invalid-cross-namespace-parent-ref",
        "same-namespace",
    );
    assert_eq!(
        cond(p, "Accepted"),
        Some(("False", "NotAllowedByListeners"))
    );

    // from: Selector takes the backend namespaces.
    let Some(w) = world("httproute-cross-namespace") else {
        return;
    };
    let out = run(&w);
    let p = parent(
        &out,
        "gateway-conformance-web-backend",
        "cross-namespace",
        "backend-namespaces",
    );
    assert_eq!(cond(p, "Accepted"), Some(("True", "Accepted")));
    assert_eq!(cond(p, "ResolvedRefs"), Some(("True", "ResolvedRefs")));
}

#[test]
fn httproute_hostname_intersection() {
    let Some(w) = world("httproute-hostname-intersection") else {
        return;
    };
    let out = run(&w);
    let gw = "httproute-hostname-intersection";
    for route in [
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ] {
        assert_eq!(
            cond(parent(&out, INFRA, route, gw), "Accepted"),
            Some(("True", "Accepted")),
            "{route}"
        );
    }
    assert_eq!(
        cond(parent(&out, INFRA, "no-intersecting-hosts", gw), "Accepted"),
        Some(("False", "NoMatchingListenerHostname"))
    );
    let l1 = served_listener(&out, gw, "listener-1");
    assert_eq!(
        target(route_request(l1, "very.specific.com", "/s1", &[])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l1, "very.specific.com", "/s3", &[])),
        "infra-backend-v3"
    );
    assert_eq!(
        target(route_request(l1, "non.matching.com", "/s1", &[])),
        "404"
    );
    let l2 = served_listener(&out, gw, "listener-2");
    for host in ["foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"] {
        assert_eq!(
            target(route_request(l2, host, "/s2", &[])),
            "infra-backend-v2",
            "{host}"
        );
    }
    assert_eq!(
        target(route_request(l2, "baz.wildcard.io", "/s2", &[])),
        "404"
    );
    let l3 = served_listener(&out, gw, "listener-3");
    assert_eq!(
        target(route_request(l3, "foo.anotherwildcard.io", "/s4", &[])),
        "infra-backend-v1"
    );
    let all = served_listener(&out, "httproute-hostname-intersection-all", "listener-1");
    assert_eq!(
        target(route_request(all, "sub.first.com", "/", &[])),
        "infra-backend-v2"
    );
    assert_eq!(target(route_request(all, "third.com", "/", &[])), "404");
}

#[test]
fn httproute_listener_hostname_matching() {
    let Some(w) = world("httproute-listener-hostname-matching") else {
        return;
    };
    let out = run(&w);
    let gw = served(&out, "httproute-listener-hostname-matching");
    // Most specific listener first on the port.
    let names: Vec<&str> = gw.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["listener-1", "listener-2", "listener-3", "listener-4"]
    );
    let pick = |host: &str| {
        gw.listeners
            .iter()
            .find(|l| l.hostname.as_ref().is_none_or(|h| h.matches(host)))
            .map(|l| l.name.as_str())
    };
    assert_eq!(pick("bar.com"), Some("listener-1"));
    assert_eq!(pick("foo.bar.com"), Some("listener-2"));
    assert_eq!(pick("baz.bar.com"), Some("listener-3"));
    assert_eq!(pick("boo.foo.com"), Some("listener-4"));
    assert_eq!(pick("multiple.prefixes.bar.com"), Some("listener-3"));
    assert_eq!(pick("no.matching.host"), None);
    let l4 = served_listener(&out, "httproute-listener-hostname-matching", "listener-4");
    assert_eq!(
        target(route_request(l4, "boo.foo.com", "/", &[])),
        "infra-backend-v3"
    );
}

#[test]
fn httproute_path_match_order() {
    let Some(w) = world("httproute-path-match-order") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    for (path, backend) in [
        ("/match/exact/one", "infra-backend-v3"),
        ("/match/exact", "infra-backend-v2"),
        ("/match", "infra-backend-v1"),
        ("/match/prefix/one/any", "infra-backend-v2"),
        ("/match/prefix/any", "infra-backend-v1"),
        ("/match/any", "infra-backend-v3"),
    ] {
        assert_eq!(
            target(route_request(l, "example.com", path, &[])),
            backend,
            "{path}"
        );
    }
}

#[test]
fn httproute_matching_headers_and_across_routes() {
    let Some(w) = world("httproute-header-matching") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    for (headers, backend) in [
        (&[("version", "one")][..], "infra-backend-v1"),
        (&[("version", "two")][..], "infra-backend-v2"),
        (
            &[("version", "two"), ("color", "orange")][..],
            "infra-backend-v1",
        ),
        (&[("Color", "blue")][..], "infra-backend-v1"),
        (&[("color", "red")][..], "infra-backend-v2"),
        (&[("color", "purple")][..], "404"),
        (&[][..], "404"),
    ] {
        assert_eq!(
            target(route_request(l, "example.com", "/", headers)),
            backend,
            "{headers:?}"
        );
    }

    let Some(w) = world("httproute-matching-across-routes") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(
        target(route_request(l, "example.com", "/", &[])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l, "example.com", "/v2", &[])),
        "infra-backend-v2"
    );
    assert_eq!(
        target(route_request(l, "example.net", "/v2", &[])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l, "example.net", "/", &[("version", "two")])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l, "example.com", "/", &[("version", "two")])),
        "infra-backend-v2"
    );
    assert_eq!(target(route_request(l, "example.org", "/", &[])), "404");
}

#[test]
fn httproute_exact_path_matching() {
    let Some(w) = world("httproute-exact-path-matching") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(
        target(route_request(l, "example.com", "/one", &[])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l, "example.com", "/two", &[])),
        "infra-backend-v2"
    );
    for path in ["/one/example", "/two/", "/Two", "/"] {
        assert_eq!(
            target(route_request(l, "example.com", path, &[])),
            "404",
            "{path}"
        );
    }
}

#[test]
fn httproute_omitted_backend_refs_weights_and_redirects() {
    let Some(w) = world("httproute-omitted-backendrefs") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    assert_eq!(
        target(route_request(l, "example.com", "/omitted-no-forward", &[])),
        "500"
    );
    assert_eq!(
        target(route_request(l, "example.com", "/empty-no-forward", &[])),
        "500"
    );
    assert_eq!(
        target(route_request(l, "example.com", "/else", &[])),
        "infra-backend-v1"
    );

    let Some(w) = world("httproute-weight") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    let Some(Action::Forward(f)) = route_request(l, "example.com", "/", &[]).map(|r| &r.action)
    else {
        panic!("not forwarded");
    };
    let weights: Vec<u32> = f.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [70, 30]);

    let Some(w) = world("httproute-redirect-host-and-status") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    let rule = route_request(l, "example.com", "/hostname-redirect", &[]);
    let Some(Action::Redirect(r)) = rule.map(|r| &r.action) else {
        panic!("no redirect")
    };
    assert_eq!(
        (r.hostname.as_deref(), r.status),
        (Some("example.org"), 302)
    );
    assert_eq!(
        target(route_request(l, "example.com", "/host-and-status", &[])),
        "301"
    );
}

#[test]
fn httproute_request_header_modifier_on_backends() {
    let Some(w) = world("httproute-request-header-modifier-backend") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(&out, "same-namespace", "http");
    let Some(Action::Forward(f)) =
        route_request(l, "example.com", "/multiple", &[]).map(|r| &r.action)
    else {
        panic!("not forwarded");
    };
    let edits = &f.backends[0].request_headers;
    assert_eq!(edits.set.len(), 2);
    assert_eq!(
        edits.add[2],
        ("x-header-add-3".to_string(), "header-add-3".to_string())
    );
    assert_eq!(edits.remove, ["x-header-remove-1", "x-header-remove-2"]);
}

#[test]
fn httproute_multiple_gateways() {
    let Some(w) = world("httproute-multiple-gateways") else {
        return;
    };
    let out = run(&w);
    for (gw, own) in [
        ("same-namespace", "infra-backend-v2"),
        ("all-namespaces", "infra-backend-v3"),
    ] {
        let l = served_listener(&out, gw, "http");
        assert_eq!(
            target(route_request(l, "example.com", "/shared", &[])),
            "infra-backend-v1",
            "{gw}"
        );
        assert_eq!(
            target(route_request(l, "example.com", "/other", &[])),
            own,
            "{gw}"
        );
        assert_eq!(
            cond(
                parent(&out, INFRA, "multiple-gateways-shared-route", gw),
                "Accepted"
            ),
            Some(("True", "Accepted"))
        );
    }
}

#[test]
fn https_listener_certificates_and_ports() {
    let Some(mut w) = world("httproute-https-listener") else {
        return;
    };
    let out = run(&w);
    let l = served_listener(
        &out,
        "same-namespace-with-https-listener",
        "https-with-hostname",
    );
    assert!(l.tls);
    assert_eq!(
        l.certificates,
        [ObjectKey::new(INFRA, "tls-validity-checks-certificate")]
    );
    assert_eq!(
        target(route_request(l, "second-example.org", "/", &[])),
        "infra-backend-v2"
    );
    let l = served_listener(&out, "same-namespace-with-https-listener", "https");
    assert_eq!(
        target(route_request(l, "example.org", "/", &[])),
        "infra-backend-v1"
    );
    assert_eq!(
        target(route_request(l, "unknown-example.org", "/", &[])),
        "404"
    );

    // A port Portico does not listen on.
    w.listen.https_ports = BTreeSet::from([8443]);
    let out = run(&w);
    let l = listener(&out, "same-namespace-with-https-listener", "https");
    assert_eq!(
        cond(&l.conditions, "Accepted"),
        Some(("False", "PortUnavailable"))
    );
    let g = gateway(&out, "same-namespace-with-https-listener");
    assert_eq!(
        cond(&g.conditions, "Accepted"),
        Some(("False", "ListenersNotValid"))
    );
}

#[test]
fn per_gateway_addresses_and_missing_ones() {
    let Some(mut w) = world("httproute-simple-same-namespace") else {
        return;
    };
    let ip: IpAddr = "127.0.0.7".parse().unwrap();
    w.listen
        .addresses
        .insert(ObjectKey::new(INFRA, "same-namespace"), vec![ip]);
    w.listen.pool.clear();
    let out = run(&w);
    assert_eq!(
        gateway(&out, "same-namespace").addresses[0].value,
        "127.0.0.7"
    );
    assert_eq!(served(&out, "same-namespace").addresses, [ip]);
    let g = gateway(&out, "all-namespaces");
    assert_eq!(
        cond(&g.conditions, "Programmed"),
        Some(("False", "AddressNotAssigned"))
    );
}

#[test]
fn conflicting_listeners() {
    let Some(mut w) = world("httproute-simple-same-namespace") else {
        return;
    };
    let gw = w
        .gateways
        .iter_mut()
        .find(|g| g.metadata.name.as_deref() == Some("same-namespace"))
        .unwrap();
    let mut twin = gw.spec.listeners[0].clone();
    twin.name = "twin".into();
    gw.spec.listeners.push(twin.clone());
    twin.name = "tls-on-80".into();
    twin.protocol = "HTTPS".into();
    gw.spec.listeners.push(twin);
    w.listen.https_ports.insert(80);
    let out = run(&w);
    let l = listener(&out, "same-namespace", "twin");
    assert_eq!(
        cond(&l.conditions, "Conflicted"),
        Some(("True", "HostnameConflict"))
    );
    let l = listener(&out, "same-namespace", "tls-on-80");
    assert_eq!(
        cond(&l.conditions, "Conflicted"),
        Some(("True", "ProtocolConflict"))
    );
    let l = listener(&out, "same-namespace", "http");
    assert_eq!(
        cond(&l.conditions, "Conflicted"),
        Some(("False", "NoConflicts"))
    );
    assert_eq!(l.attached_routes, 1);
}

#[test]
fn other_controllers_parent_status_is_kept() {
    let Some(mut w) = world("httproute-simple-same-namespace") else {
        return;
    };
    let foreign = crate::source::gateway_api::RouteParentStatus {
        parent_ref: w.routes[0].spec.parent_refs[0].clone(),
        controller_name: "example.com/other".into(),
        conditions: Vec::new(),
    };
    w.routes[0].status = Some(RouteStatus {
        parents: vec![foreign.clone()],
    });
    let out = run(&w);
    let status = &out.routes[&ObjectKey::new(INFRA, "gateway-conformance-infra-test")];
    assert_eq!(status.parents.len(), 2);
    assert_eq!(status.parents[0].controller_name, CONTROLLER);
    assert_eq!(status.parents[1], foreign);
}

#[test]
fn durations() {
    use super::routes::parse_duration;
    use std::time::Duration;
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in ["", "10", "1d", "123456s", "1h1m1s1ms1s", "-1s", "1.5s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

/// The data plane's table ([`crate::routing::gateway::GatewayTable`]) chooses what the slow
/// reference chooses, for the listeners and requests of the routing tests.
#[test]
fn the_gateway_table_agrees_with_the_reference() {
    use crate::routing::gateway::{GatewayTable, RequestView};
    let hosts = [
        "example.com",
        "example.net",
        "example.org",
        "very.specific.com",
        "foo.wildcard.io",
        "foo.bar.wildcard.io",
        "wildcard.io",
        "foo.anotherwildcard.io",
        "bar.com",
        "foo.bar.com",
        "baz.bar.com",
        "boo.foo.com",
        "sub.first.com",
        "second-example.org",
        "x.wildcard.org",
        "fourth-example.wildcard.org",
    ];
    let paths = [
        "/",
        "/one",
        "/two",
        "/two/",
        "/one/example",
        "/v2",
        "/v2/x",
        "/v2example",
        "/match",
        "/match/exact",
        "/match/exact/one",
        "/match/prefix/one/a",
        "/match/prefix/a",
        "/match/a",
        "/s1",
        "/s2",
        "/s3",
        "/s4",
        "/s5",
        "/shared",
        "/set",
        "/multiple",
        "/hostname-redirect",
        "/host-and-status/x",
        "/omitted-no-forward",
        "/empty-no-forward",
    ];
    let header_sets: [&[(&str, &str)]; 6] = [
        &[],
        &[("version", "one")],
        &[("version", "two")],
        &[("version", "two"), ("color", "orange")],
        &[("color", "blue")],
        &[("Color", "red")],
    ];
    let mut checked = 0;
    for test in [
        "httproute-simple-same-namespace",
        "httproute-exact-path-matching",
        "httproute-matching",
        "httproute-matching-across-routes",
        "httproute-path-match-order",
        "httproute-header-matching",
        "httproute-hostname-intersection",
        "httproute-listener-hostname-matching",
        "httproute-https-listener",
        "httproute-multiple-gateways",
        "httproute-redirect-host-and-status",
        "httproute-omitted-backendrefs",
        "httproute-request-header-modifier-backend",
    ] {
        let Some(w) = world(test) else { return };
        let out = run(&w);
        for gw in &out.served {
            // One entry point per port.
            let ports: BTreeSet<u16> = gw.listeners.iter().map(|l| l.port).collect();
            for port in ports {
                let listeners: Vec<Arc<EffectiveListener>> = gw
                    .listeners
                    .iter()
                    .filter(|l| l.port == port)
                    .cloned()
                    .map(Arc::new)
                    .collect();
                let table = GatewayTable::build(&listeners).unwrap();
                for host in hosts {
                    for path in paths {
                        for headers in header_sets {
                            let mut map = http::HeaderMap::new();
                            for (n, v) in headers {
                                map.append(
                                    http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                                        .unwrap(),
                                    http::HeaderValue::from_str(v).unwrap(),
                                );
                            }
                            let req = RequestView {
                                host,
                                method: "GET",
                                path,
                                query: None,
                                headers: &map,
                            };
                            let fast = table
                                .lookup(&req)
                                .map(|f| &listeners[f.listener].rules[f.rule]);
                            // The reference: the first listener whose hostname matches.
                            let mut sorted: Vec<&Arc<EffectiveListener>> =
                                listeners.iter().collect();
                            sorted.sort_by(|a, b| {
                                hostname::listener_specificity(
                                    a.hostname.as_ref(),
                                    b.hostname.as_ref(),
                                )
                            });
                            let slow = sorted
                                .iter()
                                .find(|l| l.hostname.as_ref().is_none_or(|h| h.matches(host)))
                                .and_then(|l| route_request(l, host, path, headers));
                            assert_eq!(
                                fast.map(|r| (&r.route, r.rule_index, r.match_index)),
                                slow.map(|r| (&r.route, r.rule_index, r.match_index)),
                                "{test} {} {host}{path} {headers:?}",
                                gw.key
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

/// Under a shared address (hostNetwork), the older Gateway keeps a contested port and hostname;
/// the younger one's listener is Conflicted and not served. With a pool, nothing conflicts.
#[test]
fn gateways_sharing_an_address() {
    let Some(mut w) = world("httproute-simple-same-namespace") else {
        return;
    };
    let mut distinct = BTreeSet::new();
    for s in run(&w).gateways.values() {
        assert!(
            distinct.insert(s.addresses[0].value.clone()),
            "{:?}",
            s.addresses
        );
    }
    w.listen.pool.clear();
    w.listen.shared = vec!["10.0.0.1".parse().unwrap()];
    // Same creation time: the name decides (all-namespaces < backend-namespaces < ...).
    let out = run(&w);
    let l = listener(&out, "all-namespaces", "http");
    assert_eq!(
        cond(&l.conditions, "Conflicted"),
        Some(("False", "NoConflicts"))
    );
    for gw in ["backend-namespaces", "same-namespace"] {
        let l = listener(&out, gw, "http");
        assert_eq!(
            cond(&l.conditions, "Conflicted"),
            Some(("True", "HostnameConflict")),
            "{gw}"
        );
        assert_eq!(
            cond(&l.conditions, "Programmed").map(|c| c.0),
            Some("False")
        );
    }
    // Listeners with hostnames do not clash with the catch-all one.
    let l = listener(
        &out,
        "same-namespace-with-https-listener",
        "https-with-hostname",
    );
    assert_eq!(
        cond(&l.conditions, "Conflicted"),
        Some(("False", "NoConflicts"))
    );
}
