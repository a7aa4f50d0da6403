//! EndpointSlice change to first use, at 100 and 10,000 Ingresses (3 paths each).
//!
//! `cargo bench --bench propagation` (release build). Target: p99 < 50 ms at 10,000 Ingresses.
//!
//! Two measurements per size:
//! - **wire**: the whole path. The EndpointSlice is written into the API-server stand-in
//!   (`tests/support/apiserver.rs`), which sends the watch event over HTTP to kube-rs; the
//!   Kubernetes source translates it, waits out its debounce and publishes the affected pool.
//!   The clock stops when a route lookup on the published snapshot, done the way a request does
//!   it, first yields the new endpoint.
//! - **direct**: the same without the wire and the debounce: translate the slice, apply it to the
//!   controller, publish, look up. This is the cost the Ingress count could affect.
//!
//! For comparison, **recompile** is an Ingress change through the direct path: what every
//! endpoint change would cost if it recompiled the routes.

#[allow(dead_code)]
#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use k8s_openapi::api::networking::v1::Ingress as K8sIngress;
use portico::config::{ElectionOptions, KubeOptions};
use portico::dataplane::Shared;
use portico::metrics::Metrics;
use portico::model::{Kind, Object};
use portico::routing::CompileOptions;
use portico::source::kube::{Change, Controller, KubeSource};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

const PATHS: [&str; 3] = ["/a", "/b", "/c"];

fn ns(i: usize) -> String {
    format!("ns-{}", i % 100)
}

fn endpoint_ip(i: usize) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

/// A fresh address per sample, outside the initial range.
fn sample_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        172,
        16 + (k / 250 / 250) as u8,
        (k / 250 % 250) as u8,
        (k % 250) as u8 + 1,
    ))
}

fn class() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "portico"},
        "spec": {"controller": "portico.dev/ingress-controller"},
    })
}

fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": ns(i)},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

fn slice(i: usize, ip: IpAddr) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-x1"), "namespace": ns(i),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
    })
}

fn ingress(i: usize, path_suffix: &str) -> Value {
    let paths: Vec<Value> = PATHS
        .iter()
        .map(|p| {
            json!({"path": format!("{p}{path_suffix}"), "pathType": "Prefix",
                   "backend": {"service": {"name": format!("svc-{i}"), "port": {"name": "http"}}}})
        })
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": format!("ing-{i}"), "namespace": ns(i),
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "portico",
                 "rules": [{"host": format!("ing-{i}.example"), "http": {"paths": paths}}]},
    })
}

/// Looks the route up as a request would and says whether its pool has `ip`.
fn serves(shared: &Shared, i: usize, path: &str, ip: IpAddr) -> bool {
    let plane = shared.load();
    let host = format!("ing-{i}.example");
    plane
        .routes
        .lookup(&host, path)
        .and_then(|r| plane.pools.get(r.pool))
        .is_some_and(|p| p.endpoints().iter().any(|u| u.addr.ip() == ip))
}

fn spin_until(deadline: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > deadline {
            return None;
        }
        std::hint::spin_loop();
    }
    Some(start.elapsed())
}

fn shared() -> Arc<Shared> {
    Shared::new(CompileOptions::default(), Metrics::new().expect("metrics"))
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: v[v.len() - 1],
        n: v.len(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn report(what: &str, n: usize, s: &Stats) {
    println!(
        "{what:<10} ingresses={n:<6} samples={:<4} p50={:<10} p99={:<10} max={}",
        s.n,
        ms(s.p50),
        ms(s.p99),
        ms(s.max)
    );
}

/// Through the stand-in API server and the real Kubernetes source.
fn wire(rt: &tokio::runtime::Runtime, n: usize, samples: usize) -> Stats {
    let _guard = rt.enter();
    let server = rt.block_on(apiserver::ApiServer::start());
    server.apply(class());
    for i in 0..n {
        server.apply(service(i));
        server.apply(slice(i, endpoint_ip(i)));
        server.apply(ingress(i, ""));
    }
    let client = rt.block_on(server.client());
    let shared = shared();
    let source = KubeSource::new(
        KubeOptions {
            kubeconfig: None,
            watch_namespace: None,
            publish_addresses: vec![],
            election: ElectionOptions {
                namespace: "default".into(),
                lease_name: "portico-leader".into(),
                identity: "bench".into(),
                lease_duration: Duration::from_secs(15),
                renew_period: Duration::from_secs(5),
            },
        },
        shared.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = rt.spawn(async move { source.run_with_client(client, stop_rx).await });
    spin_until(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_millis(1));
        shared.is_ready()
    })
    .expect("initial sync");
    println!(
        "wire       ingresses={n:<6} initial list + first compile: {}",
        ms(started.elapsed())
    );

    let mut lat = Vec::with_capacity(samples);
    for k in 0..samples {
        let i = (k * 7919) % n;
        let ip = sample_ip(k);
        let path = PATHS[k % 3];
        let t0 = Instant::now();
        server.apply(slice(i, ip));
        spin_until(Duration::from_secs(5), || serves(&shared, i, path, ip))
            .expect("the change reached the data plane");
        lat.push(t0.elapsed());
        // Let each change be its own burst, not coalesced with the next one.
        std::thread::sleep(Duration::from_millis(15));
    }
    let _ = stop_tx.send(true);
    let _ = rt.block_on(task);
    stats(lat)
}

fn translate_all(values: impl Iterator<Item = Value>, kind: Kind) -> Change {
    let objects = values
        .filter_map(|v| match kind {
            Kind::Ingress => serde_json::from_value::<K8sIngress>(v)
                .ok()
                .and_then(|o| portico::translate::ingress_from_k8s(&o).ok())
                .map(|o| Object::Ingress(Arc::new(o))),
            Kind::EndpointSlice => serde_json::from_value::<K8sSlice>(v)
                .ok()
                .and_then(|o| portico::translate::slice_from_k8s(&o).ok())
                .map(|o| Object::EndpointSlice(Arc::new(o))),
            Kind::Service => serde_json::from_value(v)
                .ok()
                .and_then(|o| portico::translate::service_from_k8s(&o).ok())
                .map(|o| Object::Service(Arc::new(o))),
            Kind::IngressClass => serde_json::from_value(v)
                .ok()
                .and_then(|o| portico::translate::class_from_k8s(&o).ok())
                .map(|o| Object::IngressClass(Arc::new(o))),
            _ => None,
        })
        .collect();
    Change::Relisted(kind, objects)
}

/// translate -> controller -> publish -> lookup, synchronously; and a full recompile for scale.
fn direct(n: usize, samples: usize) -> (Stats, Stats) {
    let shared = shared();
    let (owned_tx, _owned_rx) = watch::channel(None);
    let (rej_tx, _rej_rx) = mpsc::unbounded_channel();
    let mut c = Controller::new(shared.clone(), owned_tx, rej_tx);
    c.apply(translate_all(std::iter::once(class()), Kind::IngressClass));
    c.apply(translate_all((0..n).map(service), Kind::Service));
    c.apply(translate_all(
        (0..n).map(|i| slice(i, endpoint_ip(i))),
        Kind::EndpointSlice,
    ));
    c.apply(translate_all((0..n).map(|i| ingress(i, "")), Kind::Ingress));
    c.apply(Change::Relisted(Kind::Secret, vec![]));
    c.flush();
    assert!(shared.is_ready());

    let mut lat = Vec::with_capacity(samples);
    for k in 0..samples {
        let i = (k * 7919) % n;
        let ip = sample_ip(k);
        let t0 = Instant::now();
        let k8s: K8sSlice = serde_json::from_value(slice(i, ip)).expect("slice");
        let s = portico::translate::slice_from_k8s(&k8s).expect("valid slice");
        c.apply(Change::Upsert(Object::EndpointSlice(Arc::new(s))));
        c.flush();
        assert!(serves(&shared, i, PATHS[k % 3], ip));
        lat.push(t0.elapsed());
    }

    let mut full = Vec::new();
    for k in 0..samples.min(20) {
        let i = (k * 7919) % n;
        let suffix = format!("/v{k}");
        let t0 = Instant::now();
        let k8s: K8sIngress = serde_json::from_value(ingress(i, &suffix)).expect("ingress");
        let ing = portico::translate::ingress_from_k8s(&k8s).expect("valid ingress");
        c.apply(Change::Upsert(Object::Ingress(Arc::new(ing))));
        c.flush();
        let path = format!("/a{suffix}");
        assert!(shared
            .load()
            .routes
            .lookup(&format!("ing-{i}.example"), &path)
            .is_some());
        full.push(t0.elapsed());
    }
    (stats(lat), stats(full))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|a| a == "--bench");
    let samples = if quick { 20 } else { 300 };
    let sizes: &[usize] = if quick { &[100] } else { &[100, 10_000] };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "EndpointSlice change -> first use (debounce {:?})",
        portico::source::kube::DEBOUNCE
    );
    for &n in sizes {
        let w = wire(&rt, n, samples);
        report("wire", n, &w);
        let (d, full) = direct(n, samples * 3);
        report("direct", n, &d);
        report("recompile", n, &full);
    }
}
