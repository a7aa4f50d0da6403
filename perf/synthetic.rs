//! The synthetic model shared by the benchmarks: `n` Ingresses with 3 paths each.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use portico::model::{
    BackendRef, Endpoint, EndpointSlice, HttpPath, Ingress, IngressAnnotations, IngressClass,
    Model, ObjectKey, PathType, PortRef, Rule, Service, ServicePort, SlicePort,
};

/// `n` Ingresses, each with its own host, 3 paths and a Service with `endpoints` endpoints.
pub fn synthetic_model(n: usize, endpoints: usize) -> Model {
    let mut m = Model::default();
    m.insert(portico::model::Object::IngressClass(Arc::new(
        IngressClass {
            name: "portico".into(),
            controller: "portico.dev/ingress-controller".into(),
            is_default: false,
        },
    )));
    for i in 0..n {
        let ns = format!("ns-{}", i % 100);
        let svc = format!("svc-{i}");
        let backend = |port: u16| BackendRef::Service {
            name: svc.clone(),
            port: PortRef::Number(port),
        };
        m.insert(portico::model::Object::Ingress(Arc::new(Ingress {
            key: ObjectKey::new(ns.clone(), format!("ing-{i}")),
            created: i as i64,
            class_name: Some("portico".into()),
            class_annotation: None,
            default_backend: None,
            rules: vec![Rule {
                host: Some(format!("host-{i}.example.com")),
                paths: vec![
                    HttpPath {
                        path: "/".into(),
                        path_type: PathType::Prefix,
                        backend: backend(80),
                    },
                    HttpPath {
                        path: "/api".into(),
                        path_type: PathType::Prefix,
                        backend: backend(80),
                    },
                    HttpPath {
                        path: "/api/v1/status".into(),
                        path_type: PathType::Exact,
                        backend: backend(80),
                    },
                ],
            }],
            tls: vec![],
            annotations: IngressAnnotations::default(),
            nginx: None,
            problems: vec![],
        })));
        m.insert(portico::model::Object::Service(Arc::new(Service {
            key: ObjectKey::new(ns.clone(), svc.clone()),
            ports: vec![ServicePort {
                name: String::new(),
                port: 80,
            }],
            external_name: false,
        })));
        m.insert(portico::model::Object::EndpointSlice(Arc::new(
            EndpointSlice {
                key: ObjectKey::new(ns.clone(), format!("{svc}-abc")),
                service_name: Some(svc.clone()),
                ports: vec![SlicePort {
                    name: String::new(),
                    port: Some(8080),
                }],
                endpoints: (0..endpoints)
                    .map(|e| Endpoint {
                        addresses: vec![IpAddr::V4(Ipv4Addr::new(
                            10,
                            (i >> 8) as u8,
                            i as u8,
                            e as u8,
                        ))],
                        ready: Some(true),
                        serving: None,
                        terminating: None,
                        pod: Some(format!("{svc}-{e}")),
                    })
                    .collect(),
            },
        )));
    }
    m
}
