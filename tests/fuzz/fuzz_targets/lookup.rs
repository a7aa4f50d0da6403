//! Structured rule sets and requests: compile and look up; the route found must match the path
//! rule it came from (never a rule that does not match the request).
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portico::model::{
    BackendRef, HttpPath, Ingress, IngressAnnotations, IngressClass, Model, Object, ObjectKey,
    PathType, PortRef, Rule,
};
use portico::routing::{compile, normalize_request_host, CompileOptions, PathMatch};

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<(Option<String>, String, u8)>,
    host: String,
    path: String,
}

fuzz_target!(|input: Input| {
    let mut model = Model::default();
    model.insert(Object::IngressClass(Arc::new(IngressClass {
        name: "portico".into(),
        controller: "portico.dev/ingress-controller".into(),
        is_default: true,
    })));
    for (i, (host, path, kind)) in input.rules.iter().take(32).enumerate() {
        let path_type = match kind % 3 {
            0 => PathType::Exact,
            1 => PathType::Prefix,
            _ => PathType::ImplementationSpecific,
        };
        model.insert(Object::Ingress(Arc::new(Ingress {
            key: ObjectKey::new("ns", format!("i{i}")),
            created: i as i64,
            class_name: None,
            class_annotation: None,
            default_backend: None,
            rules: vec![Rule {
                host: host.clone(),
                paths: vec![HttpPath {
                    path: path.clone(),
                    path_type,
                    backend: BackendRef::Service {
                        name: format!("s{i}"),
                        port: PortRef::Number(80),
                    },
                }],
            }],
            tls: vec![],
            annotations: IngressAnnotations::default(),
            nginx: None,
            problems: vec![],
        })));
    }
    let compiled = compile(&model, &CompileOptions::default());
    let host = normalize_request_host(&input.host);
    if let Some(route) = compiled.table.lookup(&host, &input.path) {
        let i: usize = route.service.name[1..].parse().expect("service index");
        let (_, path, kind) = &input.rules[i];
        let path_type = match kind % 3 {
            0 => PathType::Exact,
            1 => PathType::Prefix,
            _ => PathType::ImplementationSpecific,
        };
        let m = PathMatch::parse(path, path_type).expect("a compiled rule has a valid path");
        assert!(
            m.matches(&input.path),
            "{m:?} does not match {:?}",
            input.path
        );
    }
});
