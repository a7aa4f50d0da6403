//! Endpoint pools: the usable endpoints of one Service port, served round-robin.
//!
//! A pool is immutable once compiled, except for its round-robin cursor, which is a lone atomic:
//! selecting an endpoint takes no lock.
//!
//! Why not `pingora_load_balancing::LoadBalancer`: it carries its own `ArcSwap` of backends and its
//! own discovery and update cycle, which would be a second swap unit beside the snapshot. Pools
//! here live inside the one snapshot, so routes and endpoints always change together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::model::{ObjectKey, PortRef};

/// One usable endpoint.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Passive health, shared by every snapshot that has this address.
    pub health: Arc<EndpointHealth>,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            health: Arc::default(),
        }
    }
}

/// Consecutive failures that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 2;
/// The first ejection lasts this long; each further one twice as long, up to [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
pub const MAX_EJECTION: Duration = Duration::from_secs(32);

/// Milliseconds since the process started; a cheap monotonic clock for ejection deadlines.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Passive health of one endpoint: consecutive failures eject it for a short, growing time.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl EndpointHealth {
    #[inline]
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// [`is_available`](Self::is_available) now, reading the clock only for an endpoint that was
    /// ejected at some time (one that never was is available without a clock read).
    #[inline]
    pub fn is_available_now(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Records a connect failure or a reset; returns the ejection time if this one ejects.
    pub fn record_failure(&self, now_ms: u64) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER_FAILURES {
            return None;
        }
        self.failures.store(0, Ordering::Relaxed);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(10);
        let time = BASE_EJECTION.saturating_mul(1 << n).min(MAX_EJECTION);
        self.ejected_until_ms
            .store(now_ms + time.as_millis() as u64, Ordering::Relaxed);
        Some(time)
    }

    /// Records a response from the endpoint: it is healthy again.
    #[inline]
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Marks the endpoint down (an active health check failed) until `until_ms`.
    pub fn eject_until(&self, until_ms: u64) {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
    }
}

/// The endpoints behind one `(Service, port)` backend.
#[derive(Debug)]
pub struct Pool {
    pub service: ObjectKey,
    pub port: PortRef,
    endpoints: Box<[Upstream]>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(service: ObjectKey, port: PortRef, endpoints: Vec<Upstream>) -> Self {
        Self {
            service,
            port,
            endpoints: endpoints.into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in round-robin order, or `None` for an empty pool (answered with 503).
    #[inline]
    pub fn select(&self) -> Option<&Upstream> {
        let len = self.endpoints.len();
        if len == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % len;
        self.endpoints.get(i)
    }

    /// The index of the next endpoint in round-robin order that `accept` allows, trying each
    /// endpoint once.
    pub fn pick(&self, accept: impl Fn(&Upstream) -> bool) -> Option<usize> {
        let len = self.endpoints.len();
        for _ in 0..len {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % len;
            if self.endpoints.get(i).is_some_and(&accept) {
                return Some(i);
            }
        }
        None
    }

    /// The next endpoint in round-robin order that `accept` allows, trying each endpoint once.
    pub fn select_where(&self, accept: impl Fn(&Upstream) -> bool) -> Option<&Upstream> {
        self.pick(accept).and_then(|i| self.endpoints.get(i))
    }

    /// Takes over the health records of endpoints that `previous` snapshots already knew, so that
    /// an ejection survives a recompile.
    pub fn adopt_health(
        &mut self,
        known: &crate::routing::FastMap<SocketAddr, Arc<EndpointHealth>>,
    ) {
        for u in self.endpoints.iter_mut() {
            if let Some(h) = known.get(&u.addr) {
                u.health = h.clone();
            }
        }
    }

    pub fn endpoints(&self) -> &[Upstream] {
        &self.endpoints
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(n: usize) -> Pool {
        let eps = (0..n)
            .map(|i| Upstream::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
            .collect();
        Pool::new(ObjectKey::new("ns", "svc"), PortRef::Number(80), eps)
    }

    #[test]
    fn empty_pool_selects_nothing() {
        assert!(pool(0).select().is_none());
    }

    proptest! {
        /// Round-robin never starves an endpoint: over k full rounds each endpoint is picked
        /// exactly k times, whatever the starting cursor.
        #[test]
        fn round_robin_is_even(n in 1usize..40, rounds in 1usize..20, skip in 0usize..100) {
            let p = pool(n);
            for _ in 0..skip { p.select(); }
            let mut counts = vec![0usize; n];
            for _ in 0..n * rounds {
                let u = p.select().unwrap();
                counts[(u.addr.port() - 1000) as usize] += 1;
            }
            prop_assert!(counts.iter().all(|c| *c == rounds));
        }
    }

    #[test]
    fn failures_eject_for_a_growing_time_and_success_resets() {
        let h = EndpointHealth::default();
        assert!(h.is_available(0));
        assert!(h.is_available_now(), "never ejected");
        assert_eq!(h.record_failure(0), None);
        assert_eq!(h.record_failure(0), Some(BASE_EJECTION));
        assert!(!h.is_available(500));
        assert!(h.is_available(1000));
        h.record_failure(1000);
        assert_eq!(h.record_failure(1000), Some(BASE_EJECTION * 2));
        for _ in 0..40 {
            h.record_failure(5000);
        }
        assert!(h.record_failure(5000).is_none_or(|t| t <= MAX_EJECTION));
        // Ejected until far in this process's future: not available now.
        h.eject_until(now_ms() + 60_000);
        assert!(!h.is_available_now());
        // The process clock starts at the first reading: past 1 ms once 2 ms have gone by.
        std::thread::sleep(Duration::from_millis(2));
        h.eject_until(1);
        assert!(h.is_available_now(), "an ejection that has ended");
        h.record_success();
        h.record_failure(100_000);
        assert_eq!(h.record_failure(100_000), Some(BASE_EJECTION));
    }

    #[test]
    fn select_where_skips_refused_endpoints() {
        let p = pool(3);
        let refused = SocketAddr::from(([127, 0, 0, 1], 1001));
        for _ in 0..10 {
            assert_ne!(p.select_where(|u| u.addr != refused).unwrap().addr, refused);
        }
        assert!(p.select_where(|_| false).is_none());
    }
}
