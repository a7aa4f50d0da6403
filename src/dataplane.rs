//! The one swap unit: routes, pools and (later) certificates, published together.
//!
//! A request loads the current [`DataPlane`] once and uses only it, so it never sees new routes
//! with old pools. Publishing is a single `ArcSwap::store`; readers never block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::metrics::{Metrics, RouteMetrics};
use crate::model::Model;
use crate::routing::compile::{build_pool, index_slices, TlsBinding};
use crate::routing::{compile, CompileOptions, PoolSpec, Rejected, RouteTable};
use crate::upstream::Pool;

/// One immutable snapshot of everything the request path reads.
#[derive(Debug, Default)]
pub struct DataPlane {
    /// Increases by one with every publish.
    pub generation: u64,
    pub routes: Arc<RouteTable>,
    pub pools: Vec<Arc<Pool>>,
    pub pool_specs: Arc<Vec<PoolSpec>>,
    pub tls: Arc<Vec<TlsBinding>>,
    /// Metric handles per route, resolved when the snapshot is built (indexed by `Route::id`).
    pub route_metrics: Arc<Vec<Arc<RouteMetrics>>>,
}

/// Shared state between the control plane (sources, compile) and the data plane (proxy, admin).
pub struct Shared {
    current: ArcSwap<DataPlane>,
    ready: AtomicBool,
    draining: AtomicBool,
    stopped_accepting: AtomicBool,
    generation: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub options: CompileOptions,
}

impl Shared {
    pub fn new(options: CompileOptions, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(DataPlane::default()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopped_accepting: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            metrics,
            options,
        })
    }

    /// The snapshot for one request. One atomic load and one reference count increment.
    #[inline]
    pub fn load(&self) -> Arc<DataPlane> {
        self.current.load_full()
    }

    /// Compiles the model and publishes the result; returns the rejected objects.
    ///
    /// Never fails: bad objects are left out and reported. Marks the controller ready after the
    /// first publish if `complete` says the source has listed everything.
    pub fn publish_model(&self, model: &Model, complete: bool) -> Vec<Rejected> {
        let started = Instant::now();
        let compiled = compile(model, &self.options);
        let route_metrics = self.metrics.routes(compiled.table.routes());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.set_pools(&compiled.pools);
        let plane = DataPlane {
            generation,
            routes: Arc::new(compiled.table),
            pools: compiled.pools,
            pool_specs: Arc::new(compiled.pool_specs),
            tls: Arc::new(compiled.tls),
            route_metrics: Arc::new(route_metrics),
        };
        self.current.store(Arc::new(plane));
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
    pub fn publish_endpoints(&self, model: &Model, services: &[crate::model::ObjectKey]) {
        let current = self.load();
        let slices = index_slices(model);
        let mut pools = current.pools.clone();
        let mut changed = false;
        for (i, spec) in current.pool_specs.iter().enumerate() {
            if services.contains(&spec.service) {
                if let Some(slot) = pools.get_mut(i) {
                    *slot = Arc::new(build_pool(spec, &slices));
                    changed = true;
                }
            }
        }
        if !changed {
            return;
        }
        self.metrics.set_pools(&pools);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Arc::new(DataPlane {
            generation,
            routes: current.routes.clone(),
            pools,
            pool_specs: current.pool_specs.clone(),
            tls: current.tls.clone(),
            route_metrics: current.route_metrics.clone(),
        }));
        self.metrics.generation.set(generation as i64);
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

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
