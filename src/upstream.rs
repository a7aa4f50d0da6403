//! Endpoint pools: the usable endpoints of one Service port, served round-robin.
//!
//! A pool is immutable once compiled, except for its round-robin cursor, which is a lone atomic:
//! selecting an endpoint takes no lock.
//!
//! Why not `pingora_load_balancing::LoadBalancer`: it carries its own `ArcSwap` of backends and its
//! own discovery and update cycle, which would be a second swap unit beside the snapshot. Pools
//! here live inside the one snapshot, so routes and endpoints always change together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::model::{ObjectKey, PortRef};

/// One usable endpoint: an address and, when known, the pod behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub pod: Option<Arc<str>>,
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

    /// The next endpoint in round-robin order that `accept` allows, trying each endpoint once.
    pub fn select_where(&self, accept: impl Fn(&Upstream) -> bool) -> Option<&Upstream> {
        let len = self.endpoints.len();
        for _ in 0..len {
            let candidate = self.select()?;
            if accept(candidate) {
                return Some(candidate);
            }
        }
        None
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
            .map(|i| Upstream {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                pod: None,
            })
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
    fn select_where_skips_refused_endpoints() {
        let p = pool(3);
        let refused = SocketAddr::from(([127, 0, 0, 1], 1001));
        for _ in 0..10 {
            assert_ne!(p.select_where(|u| u.addr != refused).unwrap().addr, refused);
        }
        assert!(p.select_where(|_| false).is_none());
    }
}
