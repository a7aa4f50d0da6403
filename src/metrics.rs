//! Prometheus metrics. Every name is a constant in [`names`]; label sets stay small.
//!
//! The request path never hashes a label set: each route carries a [`RouteMetrics`] built with
//! its snapshot, whose handles are resolved once, on first use, and then only incremented.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routing::{FastSet, Rejected, Route};
use crate::upstream::Pool;

/// Metric names, in one place.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "portico_requests_total";
    pub const REQUEST_DURATION_SECONDS: &str = "portico_request_duration_seconds";
    pub const UPSTREAM_CONNECT_DURATION_SECONDS: &str = "portico_upstream_connect_duration_seconds";
    pub const UPSTREAM_RESPONSE_DURATION_SECONDS: &str =
        "portico_upstream_response_duration_seconds";
    pub const REQUEST_BYTES_TOTAL: &str = "portico_request_bytes_total";
    pub const RESPONSE_BYTES_TOTAL: &str = "portico_response_bytes_total";
    pub const INFLIGHT_REQUESTS: &str = "portico_inflight_requests";
    pub const UPSTREAM_CONNECTIONS_TOTAL: &str = "portico_upstream_connections_total";
    pub const CONFIG_GENERATION: &str = "portico_config_generation";
    pub const CONFIG_LAST_COMPILE_DURATION_SECONDS: &str =
        "portico_config_last_compile_duration_seconds";
    pub const CONFIG_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
        "portico_config_last_success_timestamp_seconds";
    pub const REJECTED_OBJECTS: &str = "portico_rejected_objects";
    pub const SOURCE_EVENTS_TOTAL: &str = "portico_source_events_total";
    pub const SOURCE_ERRORS_TOTAL: &str = "portico_source_errors_total";
    pub const POOL_ENDPOINTS: &str = "portico_pool_endpoints";
    pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
        "portico_tls_certificate_expiry_timestamp_seconds";
    pub const CLIENT_HEADER_TIMEOUTS_TOTAL: &str = "portico_client_header_timeouts_total";
    pub const AUTH_REQUESTS_TOTAL: &str = "portico_auth_requests_total";
    pub const PROXY_PROTOCOL_REFUSED_TOTAL: &str = "portico_proxy_protocol_refused_total";
    pub const AUTH_REQUEST_DURATION_SECONDS: &str = "portico_auth_request_duration_seconds";
    pub const MIRROR_REQUESTS_TOTAL: &str = "portico_mirror_requests_total";
}

/// Methods with their own label value; anything else is counted as `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// All of Portico's metrics, registered in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_connect: HistogramVec,
    upstream_response: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    pub inflight: IntGauge,
    pub upstream_new: IntCounter,
    pub upstream_reused: IntCounter,
    /// Client connections closed because a request header did not arrive in time.
    pub client_header_timeouts: IntCounter,
    /// Client connections closed because their PROXY protocol header was missing or invalid.
    pub proxy_protocol_refused: IntCounter,
    /// External auth sub-requests by result (`allowed`, `denied`, `error`).
    pub auth_requests: IntCounterVec,
    pub auth_duration: prometheus::Histogram,
    /// Gateway API `RequestMirror` copies by result (`answered`, `failed`, `skipped`).
    pub mirror_requests: IntCounterVec,
    pub generation: IntGauge,
    compile_duration: Gauge,
    last_success: Gauge,
    rejected: IntGaugeVec,
    source_events: IntCounterVec,
    source_errors: IntCounterVec,
    pool_endpoints: IntGaugeVec,
    tls_expiry: GaugeVec,
    /// The endpoint gauge of each pool, by (Service, port); kept across snapshots.
    pool_gauges: std::sync::Mutex<
        crate::routing::FastMap<(crate::model::ObjectKey, crate::model::PortRef), IntGauge>,
    >,
    /// Handles for requests that matched no route.
    pub unrouted: RouteMetrics,
    /// Handles that record nothing (`--request-metrics false`).
    pub disabled: RouteMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const ROUTE_LABELS: [&str; 3] = ["namespace", "ingress", "service"];

impl Metrics {
    /// Creates and registers every metric. Fails only on a programming error (a duplicate name).
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(latency_buckets.clone()),
                &ROUTE_LABELS,
            )
        };
        let requests = IntCounterVec::new(
            Opts::new(
                names::REQUESTS_TOTAL,
                "Requests answered, by route, method and status class.",
            ),
            &["namespace", "ingress", "service", "method", "status_class"],
        )?;
        let request_duration = histogram(
            names::REQUEST_DURATION_SECONDS,
            "Time from the request header to the end of the response.",
        )?;
        let upstream_connect = histogram(
            names::UPSTREAM_CONNECT_DURATION_SECONDS,
            "Time to obtain an upstream connection (0 when a pooled one is reused).",
        )?;
        let upstream_response = histogram(
            names::UPSTREAM_RESPONSE_DURATION_SECONDS,
            "Time from sending the request upstream to the upstream response header.",
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new(
                names::REQUEST_BYTES_TOTAL,
                "Request body bytes received from clients.",
            ),
            &ROUTE_LABELS,
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new(
                names::RESPONSE_BYTES_TOTAL,
                "Response bytes sent to clients.",
            ),
            &ROUTE_LABELS,
        )?;
        let inflight = IntGauge::new(names::INFLIGHT_REQUESTS, "Requests being served now.")?;
        let upstream_conns = IntCounterVec::new(
            Opts::new(
                names::UPSTREAM_CONNECTIONS_TOTAL,
                "Upstream connections used, by whether they were reused from the pool.",
            ),
            &["reused"],
        )?;
        let generation = IntGauge::new(
            names::CONFIG_GENERATION,
            "Generation of the published snapshot.",
        )?;
        let compile_duration = Gauge::new(
            names::CONFIG_LAST_COMPILE_DURATION_SECONDS,
            "Duration of the last full compile.",
        )?;
        let last_success = Gauge::new(
            names::CONFIG_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the last published compile.",
        )?;
        let rejected = IntGaugeVec::new(
            Opts::new(
                names::REJECTED_OBJECTS,
                "Objects or parts of objects left out of the current snapshot, by kind and reason.",
            ),
            &["kind", "reason"],
        )?;
        let source_events = IntCounterVec::new(
            Opts::new(
                names::SOURCE_EVENTS_TOTAL,
                "Changes received from a source, by kind.",
            ),
            &["source", "kind"],
        )?;
        let source_errors = IntCounterVec::new(
            Opts::new(
                names::SOURCE_ERRORS_TOTAL,
                "Errors from a source: unreadable files, bad documents, watch failures.",
            ),
            &["source", "reason"],
        )?;
        let pool_endpoints = IntGaugeVec::new(
            Opts::new(names::POOL_ENDPOINTS, "Usable endpoints per backend."),
            &["namespace", "service", "port"],
        )?;
        let tls_expiry = GaugeVec::new(
            Opts::new(
                names::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
                "Unix time at which the certificate served for a host expires.",
            ),
            &["host"],
        )?;
        let client_header_timeouts = IntCounter::new(
            names::CLIENT_HEADER_TIMEOUTS_TOTAL,
            "Client connections closed because a request header was not complete in time.",
        )?;
        let proxy_protocol_refused = IntCounter::new(
            names::PROXY_PROTOCOL_REFUSED_TOTAL,
            "Client connections closed because PROXY protocol is on and their header was missing, \
             invalid or late.",
        )?;
        let auth_requests = IntCounterVec::new(
            Opts::new(
                names::AUTH_REQUESTS_TOTAL,
                "External auth sub-requests (ingress-nginx's auth-url), by result: allowed (2xx), \
                 denied (401/403) or error (any other answer, unreachable, timed out).",
            ),
            &["result"],
        )?;
        let mirror_requests = IntCounterVec::new(
            Opts::new(
                names::MIRROR_REQUESTS_TOTAL,
                "Copies of requests sent to Gateway API RequestMirror backends, by result: \
                 answered (the mirror answered; its answer is dropped), failed (unreachable, \
                 no endpoint, timed out) or skipped (a streamed body over 64 KiB, not held).",
            ),
            &["result"],
        )?;
        let auth_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                names::AUTH_REQUEST_DURATION_SECONDS,
                "Time from sending an external auth sub-request to its answer.",
            )
            .buckets(latency_buckets.clone()),
        )?;
        let upstream_new = upstream_conns.with_label_values(&["false"]);
        let upstream_reused = upstream_conns.with_label_values(&["true"]);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_connect.clone()),
            Box::new(upstream_response.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(inflight.clone()),
            Box::new(upstream_conns),
            Box::new(generation.clone()),
            Box::new(compile_duration.clone()),
            Box::new(last_success.clone()),
            Box::new(rejected.clone()),
            Box::new(source_events.clone()),
            Box::new(source_errors.clone()),
            Box::new(pool_endpoints.clone()),
            Box::new(tls_expiry.clone()),
            Box::new(client_header_timeouts.clone()),
            Box::new(proxy_protocol_refused.clone()),
            Box::new(auth_requests.clone()),
            Box::new(auth_duration.clone()),
            Box::new(mirror_requests.clone()),
        ] {
            registry.register(c)?;
        }
        let mut metrics = Self {
            registry,
            requests,
            request_duration,
            upstream_connect,
            upstream_response,
            request_bytes,
            response_bytes,
            inflight,
            upstream_new,
            upstream_reused,
            client_header_timeouts,
            proxy_protocol_refused,
            auth_requests,
            auth_duration,
            mirror_requests,
            generation,
            compile_duration,
            last_success,
            rejected,
            source_events,
            source_errors,
            pool_endpoints,
            tls_expiry,
            pool_gauges: std::sync::Mutex::default(),
            unrouted: RouteMetrics::empty(["", "", ""]),
            disabled: RouteMetrics::empty(["", "", ""]),
        };
        metrics.unrouted = metrics.route_labels(["", "", ""]);
        Ok(Arc::new(metrics))
    }

    /// The handles for one route; called when a snapshot is built.
    pub fn route(&self, route: &Route) -> RouteMetrics {
        self.route_labels([
            route.ingress.namespace.as_str(),
            route.ingress.name.as_str(),
            route.service.name.as_str(),
        ])
    }

    fn route_labels(&self, labels: [&str; 3]) -> RouteMetrics {
        let mut m = RouteMetrics::empty(labels);
        m.families = Some(Families {
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
            upstream_connect: self.upstream_connect.clone(),
            upstream_response: self.upstream_response.clone(),
            request_bytes: self.request_bytes.clone(),
            response_bytes: self.response_bytes.clone(),
        });
        m
    }

    /// Records a published compile.
    pub fn record_compile(
        &self,
        generation: u64,
        took: Duration,
        rejected: &[Rejected],
        now_unix: f64,
    ) {
        self.generation.set(generation as i64);
        self.compile_duration.set(took.as_secs_f64());
        self.last_success.set(now_unix);
        self.rejected.reset();
        for r in rejected {
            self.rejected
                .with_label_values(&[r.kind.as_str(), r.reason])
                .inc();
        }
    }

    /// Brings the usable-endpoint gauges from the `previous` snapshot's pools to `current`'s.
    ///
    /// Only what changed is touched, so the cost follows the change: a pool shared with the
    /// previous snapshot (the same `Arc`) keeps its gauge and value; a new pool sets its gauge
    /// (kept across snapshots, not re-created: a `reset` and fresh children cost more than the
    /// whole compile at 10,000 backends); the gauge of a (Service, port) no pool serves any more
    /// is removed.
    pub fn set_pools(&self, previous: &[Arc<Pool>], current: &[Arc<Pool>]) {
        let identities = |pools: &[Arc<Pool>]| -> FastSet<*const Pool> {
            pools.iter().map(Arc::as_ptr).collect()
        };
        let (before, after) = (identities(previous), identities(current));
        let mut known = match self.pool_gauges.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut served = FastSet::default();
        for p in current.iter().filter(|p| !before.contains(&Arc::as_ptr(p))) {
            known
                .entry((p.service.clone(), p.port.clone()))
                .or_insert_with(|| {
                    let port = p.port.to_string();
                    self.pool_endpoints.with_label_values(&[
                        &p.service.namespace,
                        &p.service.name,
                        &port,
                    ])
                })
                .set(p.endpoints().len() as i64);
            served.insert((&p.service, &p.port));
        }
        for p in previous.iter().filter(|p| !after.contains(&Arc::as_ptr(p))) {
            if served.contains(&(&p.service, &p.port)) {
                continue;
            }
            known.remove(&(p.service.clone(), p.port.clone()));
            // Absent only if already removed; nothing to do then.
            let port = p.port.to_string();
            let _ = self.pool_endpoints.remove_label_values(&[
                &p.service.namespace,
                &p.service.name,
                &port,
            ]);
        }
    }

    /// Sets the usable-endpoint gauge of one pool, after an endpoint-only change.
    pub fn set_pool(&self, pool: &Pool) {
        let port = pool.port.to_string();
        self.pool_endpoints
            .with_label_values(&[&pool.service.namespace, &pool.service.name, &port])
            .set(pool.endpoints().len() as i64);
    }

    pub fn source_event(&self, source: &str, kind: &str) {
        self.source_events.with_label_values(&[source, kind]).inc();
    }

    pub fn source_error(&self, source: &str, reason: &str) {
        self.source_errors
            .with_label_values(&[source, reason])
            .inc();
    }

    pub fn set_tls_expiry(&self, expiries: &[(String, f64)]) {
        self.tls_expiry.reset();
        for (host, t) in expiries {
            self.tls_expiry.with_label_values(&[host]).set(*t);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

#[derive(Clone)]
struct Families {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_connect: HistogramVec,
    upstream_response: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
}

/// The metric handles of one route. Each is resolved on first use (one hash and lock, once per
/// snapshot) and is a plain atomic afterwards.
pub struct RouteMetrics {
    labels: [Box<str>; 3],
    families: Option<Families>,
    requests: [OnceLock<IntCounter>; METHODS.len() * STATUS_CLASSES.len()],
    duration: OnceLock<Histogram>,
    connect: OnceLock<Histogram>,
    response: OnceLock<Histogram>,
    request_bytes: OnceLock<IntCounter>,
    response_bytes: OnceLock<IntCounter>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RouteMetrics").field(&self.labels).finish()
    }
}

impl RouteMetrics {
    fn empty(labels: [&str; 3]) -> Self {
        Self {
            labels: labels.map(Box::from),
            families: None,
            requests: std::array::from_fn(|_| OnceLock::new()),
            duration: OnceLock::new(),
            connect: OnceLock::new(),
            response: OnceLock::new(),
            request_bytes: OnceLock::new(),
            response_bytes: OnceLock::new(),
        }
    }

    fn labels(&self) -> [&str; 3] {
        [&self.labels[0], &self.labels[1], &self.labels[2]]
    }

    /// Records one finished request.
    pub fn observe(
        &self,
        method: &http::Method,
        status: u16,
        took: Duration,
        request_bytes: usize,
        response_bytes: usize,
    ) {
        let Some(f) = &self.families else { return };
        let (m, s) = (method_index(method), status_index(status));
        self.requests[m * STATUS_CLASSES.len() + s]
            .get_or_init(|| {
                let [a, b, c] = self.labels();
                f.requests
                    .with_label_values(&[a, b, c, METHODS[m], STATUS_CLASSES[s]])
            })
            .inc();
        self.duration
            .get_or_init(|| f.request_duration.with_label_values(&self.labels()))
            .observe(took.as_secs_f64());
        self.request_bytes
            .get_or_init(|| f.request_bytes.with_label_values(&self.labels()))
            .inc_by(request_bytes as u64);
        self.response_bytes
            .get_or_init(|| f.response_bytes.with_label_values(&self.labels()))
            .inc_by(response_bytes as u64);
    }

    pub fn observe_upstream_connect(&self, took: Duration) {
        let Some(f) = &self.families else { return };
        self.connect
            .get_or_init(|| f.upstream_connect.with_label_values(&self.labels()))
            .observe(took.as_secs_f64());
    }

    pub fn observe_upstream_response(&self, took: Duration) {
        let Some(f) = &self.families else { return };
        self.response
            .get_or_init(|| f.upstream_response.with_label_values(&self.labels()))
            .observe(took.as_secs_f64());
    }
}
