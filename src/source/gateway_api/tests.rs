use super::testdata;
use super::*;
use crate::translate::{parse_documents, Document};

/// Every document of the base manifests and of the 37 tests parses: the Gateway API kinds into
/// these types, the core kinds through the existing translator; the rest (Namespaces,
/// Deployments) are not Portico's to read.
#[test]
fn every_conformance_document_parses() {
    let Some(files) = testdata::test_files() else {
        return;
    };
    assert_eq!(files.len(), 37, "{files:?}");
    let mut counts = std::collections::BTreeMap::<&'static str, usize>::new();
    for file in std::iter::once("base-manifests.yaml".to_string())
        .chain(files.iter().map(|f| format!("tests/{f}")))
    {
        let Some(docs) = testdata::documents(&file) else {
            return;
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            match from_value(doc.clone()) {
                Some(Ok(object)) => {
                    let name = match &object {
                        GatewayObject::GatewayClass(_) => "GatewayClass",
                        GatewayObject::Gateway(_) => "Gateway",
                        GatewayObject::HTTPRoute(_) => "HTTPRoute",
                        GatewayObject::ReferenceGrant(_) => "ReferenceGrant",
                    };
                    *counts.entry(name).or_default() += 1;
                    // What we would write back parses to the same object.
                    let again = match &object {
                        GatewayObject::GatewayClass(o) => serde_json::to_value(o),
                        GatewayObject::Gateway(o) => serde_json::to_value(o),
                        GatewayObject::HTTPRoute(o) => serde_json::to_value(o),
                        GatewayObject::ReferenceGrant(o) => serde_json::to_value(o),
                    }
                    .unwrap();
                    let again = from_value(again).unwrap().unwrap();
                    assert_eq!(again, object, "{file} document {i} does not round-trip");
                }
                Some(Err(e)) => panic!("{file} document {i} ({kind}): {e}"),
                None => {
                    let text = serde_json::to_string(&doc).unwrap();
                    for d in parse_documents(&text) {
                        if let Document::Rejected { error, .. } = d {
                            panic!("{file} document {i} ({kind}): {error}");
                        }
                    }
                }
            }
        }
    }
    // 26 Gateways, 43 HTTPRoutes, 18 ReferenceGrants and one GatewayClass in the files.
    assert_eq!(counts.get("Gateway"), Some(&26), "{counts:?}");
    assert_eq!(counts.get("HTTPRoute"), Some(&43), "{counts:?}");
    assert_eq!(counts.get("ReferenceGrant"), Some(&18), "{counts:?}");
    assert_eq!(counts.get("GatewayClass"), Some(&1), "{counts:?}");
}

/// The CRDs' defaults are filled in when a document leaves the fields out.
#[test]
fn schema_defaults_apply() {
    let route: HTTPRoute = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {"backendRefs": [{"name": "svc", "port": 80}]},
                {"matches": [{"headers": [{"name": "a", "value": "b"}]}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "x"}}]}
            ]
        }
    }))
    .unwrap();
    let p = &route.spec.parent_refs[0];
    assert_eq!((p.group.as_str(), p.kind.as_str()), (GROUP, "Gateway"));
    let rule = &route.spec.rules[0];
    assert_eq!(rule.matches.len(), 1);
    assert_eq!(rule.matches[0].path.type_, "PathPrefix");
    assert_eq!(rule.matches[0].path.value, "/");
    let b = &rule.backend_refs[0];
    assert_eq!(
        (b.group.as_str(), b.kind.as_str(), b.weight),
        ("", "Service", 1)
    );
    let m = &route.spec.rules[1].matches[0];
    assert_eq!(
        (m.path.value.as_str(), m.headers[0].type_.as_str()),
        ("/", "Exact")
    );
    let redirect = route.spec.rules[1].filters[0]
        .request_redirect
        .as_ref()
        .unwrap();
    assert_eq!(redirect.status_code, 302);

    // A route without rules has the CRD's one default rule.
    let bare: HTTPRouteSpec = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(bare.rules.len(), 1);
    assert!(bare.rules[0].backend_refs.is_empty());

    let gw: GatewaySpec = serde_json::from_value(serde_json::json!({
        "gatewayClassName": "c",
        "listeners": [{"name": "l", "port": 443, "protocol": "HTTPS",
                       "tls": {"certificateRefs": [{"name": "s"}]}}]
    }))
    .unwrap();
    let l = &gw.listeners[0];
    assert_eq!(l.allowed_routes.namespaces.from, "Same");
    let tls = l.tls.as_ref().unwrap();
    assert_eq!(tls.mode, "Terminate");
    assert_eq!(
        (
            tls.certificate_refs[0].group.as_str(),
            tls.certificate_refs[0].kind.as_str()
        ),
        ("", "Secret")
    );
}

/// A `v1beta1` ReferenceGrant reads as the `v1` one.
#[test]
fn v1beta1_reference_grants_convert() {
    let doc = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "to"},
        "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "from"}],
                 "to": [{"group": "", "kind": "Service"}]}
    });
    let Some(Ok(GatewayObject::ReferenceGrant(g))) = from_value(doc) else {
        panic!("not a ReferenceGrant");
    };
    assert_eq!(g.spec.from[0].namespace, "from");
    assert_eq!(g.spec.to[0].name, None);
}

/// The URLs kube-rs builds for these types are the CRDs' (plural names, group, version,
/// scope), and the status subresource is the one the status writer will patch.
#[test]
fn kube_resource_urls() {
    use kube::Resource;
    assert_eq!(
        GatewayClass::url_path(&(), None),
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses"
    );
    assert_eq!(
        Gateway::url_path(&(), Some("ns")),
        "/apis/gateway.networking.k8s.io/v1/namespaces/ns/gateways"
    );
    assert_eq!(
        HTTPRoute::url_path(&(), Some("ns")),
        "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes"
    );
    assert_eq!(
        ReferenceGrant::url_path(&(), Some("ns")),
        "/apis/gateway.networking.k8s.io/v1/namespaces/ns/referencegrants"
    );
    assert_eq!(
        reference_grant::v1beta1::ReferenceGrant::url_path(&(), Some("ns")),
        "/apis/gateway.networking.k8s.io/v1beta1/namespaces/ns/referencegrants"
    );
    assert_eq!(HTTPRoute::kind(&()), "HTTPRoute");
}
