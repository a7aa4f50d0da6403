//! Every file in manifests/ and conf/ is checked: each Kubernetes document deserializes into the
//! k8s-openapi type of its kind *and serializes back to the same JSON* (so a misspelt field, which
//! serde would silently drop, fails); the DaemonSet has the properties a hostNetwork ingress needs.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn files(dir: &str, ext: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ext.contains(&x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            serde_json::Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes strictly: the typed value must serialize back to the same JSON.
fn strict<T: DeserializeOwned + Serialize>(path: &Path, doc: &serde_json::Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: {} does not deserialize: {e}",
            path.display(),
            doc["kind"]
        )
    });
    let back = serde_json::to_value(&typed).expect("serialize");
    assert_eq!(
        &back,
        doc,
        "{}: {} {} has fields its type does not know (or wrong types)",
        path.display(),
        doc["kind"],
        doc["metadata"]["name"]
    );
    typed
}

#[test]
fn every_kubernetes_document_is_valid() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for path in files("manifests", &["yaml", "yml"])
        .into_iter()
        .chain(files("conf/examples", &["yaml"]))
    {
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "Namespace" => drop(strict::<Namespace>(&path, &doc)),
                "ServiceAccount" => drop(strict::<ServiceAccount>(&path, &doc)),
                "ClusterRole" => drop(strict::<ClusterRole>(&path, &doc)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&path, &doc)),
                "Role" => drop(strict::<Role>(&path, &doc)),
                "RoleBinding" => drop(strict::<RoleBinding>(&path, &doc)),
                "IngressClass" => drop(strict::<IngressClass>(&path, &doc)),
                "DaemonSet" => drop(strict::<DaemonSet>(&path, &doc)),
                "Deployment" => drop(strict::<Deployment>(&path, &doc)),
                "Service" => drop(strict::<Service>(&path, &doc)),
                "Ingress" => drop(strict::<Ingress>(&path, &doc)),
                "EndpointSlice" => drop(strict::<EndpointSlice>(&path, &doc)),
                "Kustomization" => {
                    // Every resource it lists exists next to it.
                    let dir = path.parent().expect("dir");
                    for r in doc["resources"].as_array().into_iter().flatten() {
                        let r = r.as_str().expect("resource path");
                        assert!(
                            dir.join(r).exists(),
                            "{}: missing resource {r}",
                            path.display()
                        );
                    }
                }
                "GatewayClass" => {
                    // A CRD: Portico's own type reads it, and it names Portico's default
                    // Gateway controller.
                    let class: portico::source::gateway_api::GatewayClass =
                        serde_json::from_value(doc.clone())
                            .unwrap_or_else(|e| panic!("{}: GatewayClass: {e}", path.display()));
                    assert_eq!(doc["apiVersion"], "gateway.networking.k8s.io/v1");
                    assert_eq!(class.spec.controller_name, "portico.dev/gateway-controller");
                }
                "Gateway" => {
                    let gw: portico::source::gateway_api::Gateway =
                        serde_json::from_value(doc.clone())
                            .unwrap_or_else(|e| panic!("{}: Gateway: {e}", path.display()));
                    assert_eq!(gw.spec.gateway_class_name, "portico");
                }
                "HTTPRoute" => {
                    let _: portico::source::gateway_api::HTTPRoute =
                        serde_json::from_value(doc.clone())
                            .unwrap_or_else(|e| panic!("{}: HTTPRoute: {e}", path.display()));
                }
                "PodMonitor" => {
                    // A CRD with no k8s-openapi type: check the fields the operator needs.
                    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
                    assert!(doc["spec"]["selector"]["matchLabels"].is_object());
                    assert_eq!(doc["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
                }
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            }
            *kinds.entry(kind).or_default() += 1;
        }
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "IngressClass",
        "DaemonSet",
        "Ingress",
    ] {
        assert!(kinds.contains_key(k), "no {k} in manifests/: {kinds:?}");
    }
    // Portico itself reads the examples without rejecting anything.
    for path in files("conf/examples", &["yaml"]) {
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in portico::translate::parse_documents(&text) {
            assert!(
                !matches!(doc, portico::translate::Document::Rejected { .. }),
                "{}: {doc:?}",
                path.display()
            );
        }
    }
}

#[test]
fn the_config_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/portico.yaml");
    let flags = portico::config::Flags::from_file(&path).expect("conf/portico.yaml parses");
    flags.resolve().expect("conf/portico.yaml resolves");
}

fn daemonset() -> DaemonSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/daemonset.yaml");
    let doc = documents(&path)
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    strict(&path, &doc)
}

#[test]
fn daemonset_fits_a_host_network_ingress() {
    let ds = daemonset();
    let spec = ds.spec.expect("spec");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let strategy = spec.update_strategy.expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.and_then(|r| r.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let c = &pod.containers[0];
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, [80, 443, 10254]);
    let node_ip = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_IP")
        .expect("NODE_IP");
    assert_eq!(
        node_ip
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_string()][..])
    );
    let res = c.resources.as_ref().expect("resources");
    assert!(res
        .requests
        .as_ref()
        .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(res
        .limits
        .as_ref()
        .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));

    // The termination grace covers Portico's own grace period plus its drain timeout.
    let arg = |name: &str| -> u64 {
        let a = c
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .expect(name);
        humantime::parse_duration(a).expect("duration").as_secs()
    };
    let needed = arg("shutdown-grace-period") + arg("shutdown-drain-timeout");
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(grace as u64 > needed, "{grace} s does not cover {needed} s");
    // Every flag in the DaemonSet is one the binary knows.
    let args: Vec<String> = std::iter::once("portico".to_string())
        .chain(c.args.iter().flatten().cloned())
        .collect();
    use clap::Parser;
    let cli = portico::config::Cli::try_parse_from(&args).expect("DaemonSet args parse");
    let mut flags = cli.flags;
    flags.manifests = Some(std::env::temp_dir());
    flags.resolve().expect("DaemonSet args resolve");
}

#[test]
fn rbac_grants_exactly_what_portico_uses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/rbac.yaml");
    let role: ClusterRole = documents(&path)
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| strict(&path, &d))
        .expect("ClusterRole");
    let mut grants = std::collections::BTreeSet::new();
    for rule in role.rules.into_iter().flatten() {
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    grants.insert(format!("{g}/{r}:{v}"));
                }
            }
        }
    }
    for want in [
        "networking.k8s.io/ingresses:watch",
        "networking.k8s.io/ingressclasses:list",
        "/services:get",
        "/secrets:watch",
        "discovery.k8s.io/endpointslices:list",
        "networking.k8s.io/ingresses/status:patch",
        "networking.k8s.io/ingresses/status:update",
        "coordination.k8s.io/leases:update",
    ] {
        assert!(grants.contains(want), "missing {want}: {grants:?}");
    }
    for never in [
        "networking.k8s.io/ingresses:update",
        "/secrets:update",
        "/services:patch",
    ] {
        assert!(!grants.contains(never), "too broad: {never}");
    }
}
