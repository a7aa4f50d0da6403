//! Active HTTP health checks, for the backends whose Ingress asks for them with
//! `portico.dev/health-check-path` (and optionally `portico.dev/health-check-interval`).
//!
//! A background loop reads the current snapshot; every interval it sends `GET path` to each
//! endpoint of those pools. A failed check takes the endpoint out of rotation until a later check
//! passes; the request path sees it through the endpoint's shared health record, with no lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::dataplane::Shared;
use crate::upstream::{now_ms, EndpointHealth};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(100);

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(hyper::Error),
    #[error("request: {0}")]
    Request(http::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One `GET path` to `addr`; healthy on 2xx or 3xx.
pub async fn probe(addr: SocketAddr, host: &str, path: &str) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "portico-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Request)?;
        let resp = sender.send_request(req).await.map_err(ProbeError::Http)?;
        let status = resp.status().as_u16();
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(PROBE_TIMEOUT))?
}

/// The background service that runs the checks.
pub struct HealthChecker {
    pub shared: Arc<Shared>,
}

impl HealthChecker {
    async fn check_due(&self, last_run: &mut HashMap<SocketAddr, Instant>) {
        let plane = self.shared.current();
        let mut probes = Vec::new();
        let mut checked = std::collections::HashSet::new();
        for (spec, pool) in plane.pool_specs.iter().zip(plane.pools.iter()) {
            let Some(check) = &spec.health_check else {
                continue;
            };
            for u in pool.endpoints() {
                checked.insert(u.addr);
                let due = last_run
                    .get(&u.addr)
                    .is_none_or(|t| t.elapsed() >= check.interval);
                if !due {
                    continue;
                }
                last_run.insert(u.addr, Instant::now());
                let host = format!("{}.{}", spec.service.name, spec.service.namespace);
                let (addr, path, health) = (u.addr, check.path.clone(), u.health.clone());
                let interval = check.interval;
                probes.push(tokio::spawn(async move {
                    record(&health, addr, interval, probe(addr, &host, &path).await);
                }));
            }
        }
        // Forget endpoints that left every checked pool.
        last_run.retain(|addr, _| checked.contains(addr));
        for p in probes {
            let _ = p.await;
        }
    }
}

fn record(
    health: &EndpointHealth,
    addr: SocketAddr,
    interval: Duration,
    result: Result<(), ProbeError>,
) {
    match result {
        Ok(()) => {
            if !health.is_available(now_ms()) {
                tracing::info!(upstream = %addr, "health check passed; endpoint back in rotation");
            }
            health.eject_until(0);
            health.record_success();
        }
        Err(e) => {
            if health.is_available(now_ms()) {
                tracing::warn!(upstream = %addr, error = %e, "health check failed; endpoint out of rotation");
            }
            // Out until the next check can bring it back.
            health.eject_until(now_ms() + (interval + PROBE_TIMEOUT).as_millis() as u64);
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_run = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.check_due(&mut last_run).await,
            }
        }
    }
}
