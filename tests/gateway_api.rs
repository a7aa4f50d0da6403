//! Gateway API against the API stand-in, without the proxy: the conformance objects applied to
//! the stand-in, read back through kube-rs with Portico's types, translated, and the status
//! written with the merge patches the status writer will send. This is the first brick of the
//! conformance driver.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use portico::model::ObjectKey;
use portico::source::gateway_api::{
    Gateway, GatewayClass, GatewayStatus, HTTPRoute, ReferenceGrant, RouteStatus,
};
use portico::translate::gateway::{translate, Inputs, Listen, Outcome};
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::gateway::{conformance_yaml, register, CLASS, CONTROLLER, GROUP};

const INFRA: &str = "gateway-conformance-infra";

async fn list<K>(client: &Client) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
}

/// Reads what the watches will read, and translates it.
async fn translate_cluster(client: &Client, now_s: i64) -> Outcome {
    let classes: Vec<GatewayClass> = list(client).await;
    let gateways: Vec<Gateway> = list(client).await;
    let routes: Vec<HTTPRoute> = list(client).await;
    let grants: Vec<ReferenceGrant> = list(client).await;
    let mut namespaces = BTreeMap::new();
    for ns in list::<Namespace>(client).await {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
        namespaces.insert(name, labels);
    }
    let mut services = BTreeMap::new();
    for s in list::<Service>(client).await {
        let s = portico::translate::service_from_k8s(&s).expect("service");
        services.insert(s.key.clone(), Arc::new(s));
    }
    let mut secrets = BTreeMap::new();
    for s in list::<Secret>(client).await {
        if let Ok(Some(s)) = portico::translate::secret_from_k8s(&s) {
            secrets.insert(s.key.clone(), Arc::new(s));
        }
    }
    let listen = Listen {
        http_ports: BTreeSet::from([80]),
        https_ports: BTreeSet::from([443]),
        addresses: BTreeMap::new(),
        pool: (2..=60)
            .map(|n| std::net::IpAddr::from([127, 0, 0, n]))
            .collect(),
        shared: Vec::new(),
    };
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(now_s).unwrap());
    translate(&Inputs {
        controller_name: CONTROLLER,
        classes: &classes,
        gateways: &gateways,
        routes: &routes,
        grants: &grants,
        namespaces: &namespaces,
        services: &services,
        secrets: &secrets,
        listen: &listen,
        now: &now,
    })
}

/// Writes every status with a JSON merge patch of `/status`, as the status writer will.
async fn write_status(client: &Client, out: &Outcome) {
    let pp = PatchParams::default();
    for (name, status) in &out.classes {
        Api::<GatewayClass>::all(client.clone())
            .patch_status(name, &pp, &Patch::Merge(json!({ "status": status })))
            .await
            .expect("class status");
    }
    for (key, status) in &out.gateways {
        Api::<Gateway>::namespaced(client.clone(), &key.namespace)
            .patch_status(&key.name, &pp, &Patch::Merge(json!({ "status": status })))
            .await
            .expect("gateway status");
    }
    for (key, status) in &out.routes {
        Api::<HTTPRoute>::namespaced(client.clone(), &key.namespace)
            .patch_status(&key.name, &pp, &Patch::Merge(json!({ "status": status })))
            .await
            .expect("route status");
    }
}

fn self_signed_secret(ns: &str, name: &str) -> Value {
    let c = rcgen::generate_simple_self_signed(vec!["*".to_string()]).expect("rcgen");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "data": {"tls.crt": b64(c.cert.pem()), "tls.key": b64(c.key_pair.serialize_pem())},
    })
}

fn condition<'v>(conditions: &'v Value, type_: &str) -> (&'v str, &'v str, i64) {
    let c = conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
        c["observedGeneration"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_objects_round_trip_through_the_stand_in() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let (Some(base), Some(test)) = (
            conformance_yaml("base-manifests.yaml"),
            conformance_yaml("tests/httproute-hostname-intersection.yaml"),
        ) else {
            return;
        };
        let server = ApiServer::start().await;
        register(&server);
        server.apply(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": CLASS}, "spec": {"controllerName": CONTROLLER},
        }));
        server.apply_yaml(&base);
        server.apply_yaml(&test);
        server.apply(self_signed_secret(INFRA, "tls-validity-checks-certificate"));
        let client = server.client().await;

        let out = translate_cluster(&client, 1_000).await;
        write_status(&client, &out).await;

        // What the suite reads.
        let class = server
            .get(&format!("{GROUP}/v1"), "GatewayClass", "", CLASS)
            .unwrap();
        assert_eq!(
            condition(&class["status"]["conditions"], "Accepted"),
            ("True", "Accepted", 1)
        );
        let gw = server
            .get(
                &format!("{GROUP}/v1"),
                "Gateway",
                INFRA,
                "httproute-hostname-intersection",
            )
            .unwrap();
        assert_eq!(gw["status"]["addresses"][0]["type"], "IPAddress");
        let address = gw["status"]["addresses"][0]["value"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(address.starts_with("127.0.0."), "{address}");
        assert_eq!(
            condition(&gw["status"]["conditions"], "Programmed"),
            ("True", "Programmed", 1)
        );
        let listeners = gw["status"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 3);
        assert_eq!(
            listeners[0]["supportedKinds"],
            json!([{"group": GROUP, "kind": "HTTPRoute"}])
        );
        assert_eq!(listeners[0]["attachedRoutes"], 2);
        assert_eq!(
            gw["metadata"]["generation"], 1,
            "a status write does not bump generation"
        );
        let route = server
            .get(
                &format!("{GROUP}/v1"),
                "HTTPRoute",
                INFRA,
                "no-intersecting-hosts",
            )
            .unwrap();
        let parent = &route["status"]["parents"][0];
        assert_eq!(parent["controllerName"], CONTROLLER);
        assert_eq!(
            parent["parentRef"],
            json!({"group": GROUP, "kind": "Gateway", "name": "httproute-hostname-intersection",
                   "namespace": INFRA})
        );
        assert_eq!(
            condition(&parent["conditions"], "Accepted"),
            ("False", "NoMatchingListenerHostname", 1)
        );
        let writes = server.status_writes_for(GROUP, "httproutes");
        assert_eq!(writes.len(), out.routes.len());

        // Translating again later, from what is stored, gives exactly the stored status: the
        // writer has nothing to send (transition times are kept).
        let again = translate_cluster(&client, 2_000).await;
        for (key, status) in &again.gateways {
            let stored: Gateway = Api::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await
                .unwrap();
            assert_eq!(stored.status.as_ref(), Some(status), "{key}");
        }
        for (key, status) in &again.routes {
            let stored: HTTPRoute = Api::namespaced(client.clone(), &key.namespace)
                .get(&key.name)
                .await
                .unwrap();
            assert_eq!(stored.status.as_ref(), Some(status), "{key}");
        }

        // Addresses are stable across translations (kept from the published status).
        let again_gw = &again.gateways[&ObjectKey::new(INFRA, "httproute-hostname-intersection")];
        assert_eq!(again_gw.addresses[0].value, address);

        // A spec change bumps generation; the next status follows it.
        let mut changed = server
            .get(
                &format!("{GROUP}/v1"),
                "HTTPRoute",
                INFRA,
                "no-intersecting-hosts",
            )
            .unwrap();
        changed["spec"]["hostnames"] = json!(["very.specific.com"]);
        changed["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("generation");
        server.apply(changed);
        let out = translate_cluster(&client, 3_000).await;
        write_status(&client, &out).await;
        let route = server
            .get(
                &format!("{GROUP}/v1"),
                "HTTPRoute",
                INFRA,
                "no-intersecting-hosts",
            )
            .unwrap();
        assert_eq!(route["metadata"]["generation"], 2);
        assert_eq!(
            condition(&route["status"]["parents"][0]["conditions"], "Accepted"),
            ("True", "Accepted", 2)
        );
        let key = ObjectKey::new(INFRA, "httproute-hostname-intersection");
        let status: &GatewayStatus = &out.gateways[&key];
        assert_eq!(status.listeners[0].attached_routes, 3);
        let _: &RouteStatus = &out.routes[&ObjectKey::new(INFRA, "no-intersecting-hosts")];
    })
    .await
    .expect("test exceeded its time limit");
}
