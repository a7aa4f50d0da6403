//! The one swap unit: routes, pools and certificates, published together.
//!
//! A request loads the current [`DataPlane`] once and uses only it, so it never sees new routes
//! with old pools. Publishing is a single `ArcSwap::store`; readers never block.
//!
//! How long a change takes to reach requests is traced at DEBUG under the target
//! [`PROPAGATION`]: the source logs when it receives a watch event and when its debounce ends,
//! this module when it publishes a generation and when a request first loads it. Each event
//! carries `unix_us` (wall clock, microseconds) so that a benchmark in another process can line
//! them up with its own clock (`perf/propagation_load.rs`).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::metrics::{Metrics, RouteMetrics};
use crate::model::{Model, ObjectKey};
use crate::routing::compile::{
    build_pool, compile_reusing, PoolSlices, Previous, SliceIndex, TlsBinding,
};
use crate::routing::{CompileOptions, FastMap, PoolSpec, Rejected, Route, RouteTable};
use crate::tls::{CertStore, TlsOptions};
use crate::upstream::{EndpointHealth, Pool};
use std::net::SocketAddr;

/// The tracing target of the propagation timestamps.
pub const PROPAGATION: &str = "portico::propagation";

/// Microseconds since the Unix epoch, for the propagation timestamps.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// One immutable snapshot of everything the request path reads.
#[derive(Debug, Default)]
pub struct DataPlane {
    /// Increases by one with every publish.
    pub generation: u64,
    pub routes: Arc<RouteTable>,
    pub pools: Vec<Arc<Pool>>,
    pub pool_specs: Arc<Vec<PoolSpec>>,
    /// The EndpointSlices each pool was built from by the last compile, so that the next one can
    /// reuse it. An endpoint-only publish leaves them as they were: the pools it rebuilt then no
    /// longer match them, and the next compile builds those again (copying this list would touch
    /// every pool's slices on every endpoint change).
    pub pool_slices: Arc<Vec<PoolSlices>>,
    pub tls: Arc<Vec<TlsBinding>>,
    /// The certificates the HTTPS listener serves, by SNI name.
    pub certs: Arc<CertStore>,
    /// Metric handles per route, resolved when the snapshot is built (indexed by `Route::id`).
    pub route_metrics: Arc<Vec<Arc<RouteMetrics>>>,
    /// The Gateway API status this snapshot was compiled with (see
    /// [`crate::routing::Compiled::gateway_status`]); served on the admin listener at
    /// `/status/gateway-api`, for files mode, where there is no API server to write it to.
    pub gateway_status: Option<Arc<serde_json::Value>>,
}

/// Route metric handles by Ingress, then by Service.
type MetricHandles = FastMap<Arc<ObjectKey>, Vec<RouteHandles>>;

/// The metric handles of the routes from one Ingress to one Service.
struct RouteHandles {
    service: Arc<ObjectKey>,
    metrics: Arc<RouteMetrics>,
    /// The generation of the last snapshot that used them.
    used: u64,
}

/// Shared state between the control plane (sources, compile) and the data plane (proxy, admin).
pub struct Shared {
    current: ArcSwap<DataPlane>,
    ready: AtomicBool,
    draining: AtomicBool,
    stopped_accepting: AtomicBool,
    generation: AtomicU64,
    /// The newest generation a request has loaded (for the first-use trace).
    used: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub options: CompileOptions,
    /// Route metric handles by label set; touched only by the control plane when publishing.
    metric_handles: std::sync::Mutex<MetricHandles>,
    pub tls: TlsOptions,
}

impl Shared {
    /// Shared state without a default certificate: enough when no HTTPS listener runs.
    pub fn new(options: CompileOptions, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_tls(options, metrics, TlsOptions::default())
    }

    /// Shared state whose snapshots carry certificates; until the first publish, handshakes get
    /// the default certificate of `tls`.
    pub fn with_tls(options: CompileOptions, metrics: Arc<Metrics>, tls: TlsOptions) -> Arc<Self> {
        let initial = DataPlane {
            certs: Arc::new(CertStore::initial(&tls)),
            ..DataPlane::default()
        };
        Arc::new(Self {
            current: ArcSwap::from_pointee(initial),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopped_accepting: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            used: AtomicU64::new(0),
            metrics,
            options,
            tls,
            metric_handles: std::sync::Mutex::default(),
        })
    }

    /// The generation of the newest snapshot, published or being published: a request whose
    /// snapshot is older looks the current one up before it picks an endpoint.
    #[inline]
    pub fn latest_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The snapshot for one request. One atomic load and one reference count increment, and a
    /// read of a counter that changes once per publish.
    #[inline]
    pub fn load(&self) -> Arc<DataPlane> {
        let plane = self.current.load_full();
        if plane.generation > self.used.load(Ordering::Relaxed) {
            self.first_use(plane.generation);
        }
        plane
    }

    /// The current snapshot, for the control plane (publishing, health checks): not a use.
    #[inline]
    pub fn current(&self) -> Arc<DataPlane> {
        self.current.load_full()
    }

    #[cold]
    fn first_use(&self, generation: u64) {
        if self.used.fetch_max(generation, Ordering::Relaxed) < generation {
            tracing::debug!(
                target: PROPAGATION,
                stage = "first_use",
                generation,
                unix_us = unix_us(),
            );
        }
    }

    /// Stores a new snapshot and traces the publish (before the old snapshot is dropped).
    fn store(&self, plane: DataPlane, started: Instant, what: &'static str) {
        let generation = plane.generation;
        let old = self.current.swap(Arc::new(plane));
        tracing::debug!(
            target: PROPAGATION,
            stage = "publish",
            generation,
            what,
            took_us = started.elapsed().as_micros() as u64,
            unix_us = unix_us(),
        );
        retire(old);
    }

    /// Compiles the model and publishes the result; returns the rejected objects.
    ///
    /// Never fails: bad objects are left out and reported. Marks the controller ready after the
    /// first publish if `complete` says the source has listed everything.
    ///
    /// Certificates are parsed here, with the routes; a Secret that fails keeps the certificate
    /// the previous snapshot served for its hosts. Sources call this from one task at a time.
    pub fn publish_model(&self, model: &Model, complete: bool) -> Vec<Rejected> {
        let started = Instant::now();
        let previous = self.current();
        let mut compiled = compile_reusing(
            model,
            &self.options,
            Previous {
                specs: &previous.pool_specs,
                pools: &previous.pools,
                slices: &previous.pool_slices,
                routes: previous.routes.routes().len(),
                hosts: previous.routes.host_count(),
                limiters: Some(&previous.routes.limiters),
            },
        );
        carry_health(&previous, &mut compiled.pools);
        self.metrics.set_pools(&previous.pools, &compiled.pools);
        let (certs, rejected_secrets) = CertStore::build(
            &compiled.tls,
            &model.secrets,
            &self.tls,
            &previous.certs,
            now_unix() as i64,
        );
        drop(previous);
        compiled.rejected.extend(rejected_secrets);
        // Gateway listeners' certificates beside the Ingresses': a host served by several
        // shows the one that expires first.
        let mut expiries = certs.expiries();
        expiries.extend(compiled.gateway_cert_expiries.iter().cloned());
        expiries.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        expiries.dedup_by(|later, first| later.0 == first.0);
        self.metrics.set_tls_expiry(&expiries);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let route_metrics = self.route_metrics(compiled.table.routes(), generation);
        let plane = DataPlane {
            generation,
            routes: Arc::new(compiled.table),
            pools: compiled.pools,
            pool_specs: Arc::new(compiled.pool_specs),
            pool_slices: Arc::new(compiled.pool_slices),
            tls: Arc::new(compiled.tls),
            certs: Arc::new(certs),
            route_metrics: Arc::new(route_metrics),
            gateway_status: compiled.gateway_status.clone(),
        };
        self.store(plane, started, "model");
        self.metrics.record_compile(
            generation,
            started.elapsed(),
            &compiled.rejected,
            now_unix(),
        );
        if complete {
            self.ready.store(true, Ordering::Release);
        }
        compiled.rejected
    }

    /// Rebuilds only the pools of `services` from the model and publishes a snapshot that shares
    /// the current route table. For endpoint-only changes: no route is recompiled.
    ///
    /// The cost follows the change, not the cluster: only the affected namespaces' slices are
    /// read and only the rebuilt pools' gauges are set.
    pub fn publish_endpoints(&self, model: &Model, services: &[ObjectKey]) {
        let started = Instant::now();
        let current = self.current();
        let wanted: HashSet<(&str, &str)> = services
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let namespaces: BTreeSet<&str> = wanted.iter().map(|(ns, _)| *ns).collect();
        let mut slices: SliceIndex<'_> = SliceIndex::default();
        for ns in namespaces {
            let in_ns = model
                .slices
                .range(ObjectKey::new(ns, "")..)
                .take_while(|(k, _)| k.namespace == ns);
            for (_, slice) in in_ns {
                if let Some(svc) = slice.service_name.as_deref() {
                    if wanted.contains(&(ns, svc)) {
                        slices.entry((ns, svc)).or_default().push(slice);
                    }
                }
            }
        }
        let mut pools = current.pools.clone();
        let mut rebuilt = Vec::new();
        for (i, spec) in current.pool_specs.iter().enumerate() {
            let id = (spec.service.namespace.as_str(), spec.service.name.as_str());
            if wanted.contains(&id) {
                if let Some(slot) = pools.get_mut(i) {
                    let mut pool = build_pool(spec, &slices);
                    // The same spec's previous pool knows these endpoints' health.
                    pool.adopt_health(&known_health(current.pools.get(i)));
                    *slot = Arc::new(pool);
                    rebuilt.push(i);
                }
            }
        }
        if rebuilt.is_empty() {
            return;
        }
        for i in rebuilt {
            if let Some(pool) = pools.get(i) {
                self.metrics.set_pool(pool);
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let plane = DataPlane {
            generation,
            routes: current.routes.clone(),
            pools,
            pool_specs: current.pool_specs.clone(),
            pool_slices: current.pool_slices.clone(),
            tls: current.tls.clone(),
            certs: current.certs.clone(),
            route_metrics: current.route_metrics.clone(),
            gateway_status: current.gateway_status.clone(),
        };
        self.store(plane, started, "endpoints");
        self.metrics.generation.set(generation as i64);
    }

    /// The metric handles of each route. Routes with the same labels (namespace, Ingress,
    /// Service) share one set, and a set lives on across snapshots for as long as a route uses it,
    /// so a recompile neither rebuilds nor re-resolves them.
    fn route_metrics(&self, routes: &[Route], generation: u64) -> Vec<Arc<RouteMetrics>> {
        let mut cache = match self.metric_handles.lock() {
            Ok(c) => c,
            // A panic while holding it cannot leave the map inconsistent; keep using it.
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut handles = Vec::with_capacity(routes.len());
        // An Ingress's routes are consecutive: one map lookup per Ingress, not per route.
        for same_ingress in routes.chunk_by(|a, b| Arc::ptr_eq(&a.ingress, &b.ingress)) {
            let Some(ingress) = same_ingress.first().map(|r| r.ingress.clone()) else {
                continue;
            };
            let sets = cache.entry(ingress).or_default();
            for r in same_ingress {
                handles.push(self.route_handles(sets, r, generation));
            }
        }
        cache.retain(|_, sets| {
            sets.retain(|s| s.used == generation);
            !sets.is_empty()
        });
        handles
    }

    /// The handles of `route` among its Ingress's `sets`, made if new, marked used by `generation`.
    fn route_handles(
        &self,
        sets: &mut Vec<RouteHandles>,
        route: &Route,
        generation: u64,
    ) -> Arc<RouteMetrics> {
        if let Some(set) = sets.iter_mut().find(|s| s.service == route.service) {
            set.used = generation;
            return set.metrics.clone();
        }
        let metrics = Arc::new(self.metrics.route(route));
        sets.push(RouteHandles {
            service: route.service.clone(),
            metrics: metrics.clone(),
            used: generation,
        });
        metrics
    }

    /// True once the first complete snapshot is published, until shutdown starts.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the moment the listeners stop accepting (after the grace period, or at an upgrade).
    pub fn stop_accepting(&self) {
        self.stopped_accepting.store(true, Ordering::Release);
    }

    pub fn has_stopped_accepting(&self) -> bool {
        self.stopped_accepting.load(Ordering::Acquire)
    }

    /// Marks the start of a shutdown: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Hands a replaced snapshot to the `portico-retire` thread, which drops it once nothing else
/// holds it. Dropping a snapshot of 10,000 Ingresses takes milliseconds; without this, the last
/// in-flight request that used it would pay for that on a proxy worker, or the control plane
/// before its next publish.
fn retire(old: Arc<DataPlane>) {
    use std::sync::mpsc;
    static RETIRE: std::sync::OnceLock<Option<mpsc::Sender<Arc<DataPlane>>>> =
        std::sync::OnceLock::new();
    let tx = RETIRE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Arc<DataPlane>>();
        std::thread::Builder::new()
            .name("portico-retire".into())
            .spawn(move || {
                let mut held: Vec<Arc<DataPlane>> = Vec::new();
                loop {
                    let wait = if held.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        Duration::from_millis(20)
                    };
                    match rx.recv_timeout(wait) {
                        Ok(plane) => held.push(plane),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // Requests still using a snapshot keep it; the last reference is this one.
                    held.retain(|p| Arc::strong_count(p) > 1);
                }
            })
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = tx {
        // If the thread is gone, `send` hands the snapshot back and it is dropped here.
        let _ = tx.send(old);
    }
}

/// The error type of a request whose endpoint was removed while it connected.
pub const ENDPOINT_REMOVED: pingora_core::ErrorType =
    pingora_core::ErrorType::Custom("EndpointRemoved");

/// The error type of a response dropped because the route retries on its status.
pub const STATUS_RETRIED: pingora_core::ErrorType =
    pingora_core::ErrorType::Custom("UpstreamStatusRetried");

/// The error type of a response replaced by an error page (custom-http-errors).
pub const ERROR_PAGE: pingora_core::ErrorType = pingora_core::ErrorType::Custom("ErrorPage");

/// The error for a request whose endpoint was removed while it connected: nothing was sent, so
/// it is retried (whatever the method) on the current snapshot, and the endpoint's health is not
/// blamed.
pub fn endpoint_removed(addr: SocketAddr) -> Box<pingora_core::Error> {
    let mut e = pingora_core::Error::explain(
        ENDPOINT_REMOVED,
        format!("endpoint {addr} was removed while connecting"),
    )
    .into_up();
    e.set_retry(true);
    e
}

fn known_health<'p>(
    pools: impl IntoIterator<Item = &'p Arc<Pool>>,
) -> FastMap<SocketAddr, Arc<EndpointHealth>> {
    pools
        .into_iter()
        .flat_map(|p| p.endpoints())
        .map(|u| (u.addr, u.health.clone()))
        .collect()
}

/// Gives the pools the compile built afresh the health records of the same endpoints in the
/// current snapshot's pools of the same Service, so that an ejection survives a recompile.
///
/// Pools the compile reused already hold their records. Only the same Service's pools are
/// searched: an endpoint's record then costs what the changed pools hold, not all endpoints.
fn carry_health(current: &DataPlane, compiled: &mut [Arc<Pool>]) {
    // Reused pools are shared with the current snapshot; only fresh ones are unique here.
    let mut fresh: Vec<&mut Pool> = compiled.iter_mut().filter_map(Arc::get_mut).collect();
    if fresh.is_empty() || current.pools.is_empty() {
        return;
    }
    let mut by_service: FastMap<&ObjectKey, Vec<&Arc<Pool>>> = FastMap::default();
    for pool in current.pools.iter() {
        by_service.entry(&pool.service).or_default().push(pool);
    }
    for pool in fresh.iter_mut() {
        let known: &[&Arc<Pool>] = by_service
            .get(&pool.service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !known.is_empty() {
            pool.adopt_health(&known_health(known.iter().copied()));
        }
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, ObjectKey};
    use crate::translate::{parse_documents, Document};

    fn objects(yaml: &str) -> Vec<Object> {
        parse_documents(yaml)
            .into_iter()
            .filter_map(|d| match d {
                Document::Object(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// An Ingress for `host` to Service `name`, the Service, and its slice with endpoint `ip`.
    fn backend(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{ name: {name}, namespace: default }}\n\
             spec:\n  ingressClassName: portico\n  rules:\n  - host: {name}.example.com\n    http:\n      paths:\n      \
             - {{ path: /, pathType: Prefix, backend: {{ service: {{ name: {name}, port: {{ number: 80 }} }} }} }}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{ name: {name}, namespace: default }}\n\
             spec: {{ ports: [{{ port: 80 }}] }}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
             namespace: default\n  labels: {{ kubernetes.io/service-name: {name} }}\naddressType: IPv4\n\
             ports: [{{ port: 8080 }}]\nendpoints:\n- addresses: [\"{ip}\"]\n"
        )
    }

    fn model(yaml: &str) -> Model {
        let mut m = Model::default();
        let class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\n\
                     metadata: { name: portico }\nspec: { controller: portico.dev/ingress-controller }\n";
        for o in objects(class).into_iter().chain(objects(yaml)) {
            m.insert(o);
        }
        m
    }

    fn pool_of<'p>(plane: &'p DataPlane, service: &str) -> &'p Arc<Pool> {
        let key = ObjectKey::new("default", service);
        plane.pools.iter().find(|p| p.service == key).unwrap()
    }

    /// Replaces the slice `name` with a copy that has one more endpoint, at `ip`.
    fn add_endpoint(m: &mut Model, name: &str, ip: &str) {
        let mut slice = m.slices[&ObjectKey::new("default", name)].as_ref().clone();
        let extra = crate::model::Endpoint {
            addresses: vec![ip.parse().unwrap()],
            ..slice.endpoints[0].clone()
        };
        slice.endpoints.push(extra);
        m.insert(Object::EndpointSlice(Arc::new(slice)));
    }

    #[test]
    fn a_recompile_shares_unchanged_pools_and_keeps_the_health_of_rebuilt_ones() {
        let shared = Shared::new(CompileOptions::default(), Metrics::new().unwrap());
        let mut m = model(&(backend("a", "10.0.0.1") + "---\n" + &backend("b", "10.0.0.2")));
        assert!(shared.publish_model(&m, true).is_empty());
        let first = shared.load();
        let b_health = pool_of(&first, "b").endpoints()[0].health.clone();
        b_health.eject_until(u64::MAX);

        // b's slice is a new object with the same endpoint plus one; a is untouched.
        add_endpoint(&mut m, "b-1", "10.0.0.3");
        for o in objects(&backend("c", "10.0.0.4")) {
            m.insert(o);
        }
        assert!(shared.publish_model(&m, true).is_empty());
        let second = shared.load();

        assert!(Arc::ptr_eq(pool_of(&first, "a"), pool_of(&second, "a")));
        let b = pool_of(&second, "b");
        assert!(!Arc::ptr_eq(pool_of(&first, "b"), b));
        assert_eq!(b.endpoints().len(), 2);
        let same = b
            .endpoints()
            .iter()
            .find(|u| u.addr == pool_of(&first, "b").endpoints()[0].addr);
        assert!(
            same.is_some_and(|u| Arc::ptr_eq(&u.health, &b_health)),
            "the ejection was lost"
        );
        let text = String::from_utf8(shared.metrics.render()).unwrap();
        assert!(
            text.contains(
                "portico_pool_endpoints{namespace=\"default\",port=\"80\",service=\"b\"} 2"
            ),
            "{text}"
        );

        // An endpoint-only publish of a, then a recompile: a's pool keeps the new endpoint and
        // its first endpoint's health record.
        let a_health = pool_of(&first, "a").endpoints()[0].health.clone();
        add_endpoint(&mut m, "a-1", "10.0.0.5");
        shared.publish_endpoints(&m, &[ObjectKey::new("default", "a")]);
        assert_eq!(pool_of(&shared.load(), "a").endpoints().len(), 2);
        shared.publish_model(&m, true);
        let third = shared.load();
        let a = pool_of(&third, "a");
        assert_eq!(a.endpoints().len(), 2);
        assert!(a
            .endpoints()
            .iter()
            .any(|u| Arc::ptr_eq(&u.health, &a_health)));

        // Removing c's Ingress removes its pool's gauge; a and b keep theirs.
        m.remove(crate::model::Kind::Ingress, &ObjectKey::new("default", "c"));
        shared.publish_model(&m, true);
        let text = String::from_utf8(shared.metrics.render()).unwrap();
        assert!(!text.contains("service=\"c\""), "{text}");
        assert!(text.contains("service=\"a\"} 2"), "{text}");
    }
}
