//! Rate and connection limits per client IP, as ingress-nginx configures nginx's `limit_req`
//! (`limit-rps`, `limit-rpm`, with a burst and `nodelay`) and `limit_conn` (`limit-connections`).
//!
//! Counted per client IP and per Portico instance, as ingress-nginx counts per nginx instance.
//! The state of one route's limits outlives recompiles (the compile hands it from the previous
//! table to the route with the same Ingress and path), and is bounded in memory: past [`MAX_CLIENTS`] client IPs, idle entries are dropped
//! first, then arbitrary ones (those clients start afresh, as nginx's zone forgets its least
//! recently used entries when full).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Client IPs remembered per limit (nginx's `5m` zone holds about 80,000 IPv4 states).
pub const MAX_CLIENTS: usize = 65_536;

/// nginx's leaky bucket with `burst` and `nodelay`: a request passes when the bucket's excess
/// (in thousandths of a request), drained at `rate`, stays within `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, in thousandths (nginx keeps `r/m` as `r/s * 1000 / 60`).
    pub milli_per_sec: u64,
    /// Requests that may exceed the rate at once.
    pub burst: u64,
}

#[derive(Default)]
struct Entry {
    /// Excess in thousandths of a request, as of `at`.
    excess: u64,
    at: Option<Instant>,
    /// Requests in flight (`limit-connections`).
    active: u32,
}

/// The state of one Ingress's limits.
#[derive(Default)]
pub struct Limiter {
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

impl Limiter {
    fn with<T>(&self, ip: IpAddr, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
            let now = Instant::now();
            clients.retain(|_, e| e.active > 0 || e.at.is_some_and(|t| (now - t).as_secs() < 60));
            if clients.len() >= MAX_CLIENTS {
                let drop: Vec<IpAddr> = clients
                    .iter()
                    .filter(|(_, e)| e.active == 0)
                    .map(|(ip, _)| *ip)
                    .take(MAX_CLIENTS / 4)
                    .collect();
                for ip in drop {
                    clients.remove(&ip);
                }
            }
        }
        f(clients.entry(ip).or_default())
    }

    /// Whether a request from `ip` passes the rate (and counts it if so).
    pub fn allow(&self, ip: IpAddr, rate: Rate, now: Instant) -> bool {
        self.with(ip, |e| {
            let drained = e.at.map_or(0, |t| {
                (now.saturating_duration_since(t).as_millis() as u64)
                    .saturating_mul(rate.milli_per_sec)
                    / 1000
            });
            let excess = match e.at {
                None => 0,
                Some(_) => e.excess.saturating_sub(drained).saturating_add(1000),
            };
            if excess > rate.burst.saturating_mul(1000) {
                return false;
            }
            e.excess = excess;
            e.at = Some(now);
            true
        })
    }

    /// Takes one of `max` concurrent requests for `ip`; `None` when all are taken.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<Permit> {
        let ok = self.with(ip, |e| {
            if e.active >= max {
                return false;
            }
            e.active += 1;
            true
        });
        ok.then(|| Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// The client IPs remembered.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("clients", &self.len())
            .finish()
    }
}

/// One request in flight for `limit-connections`; released when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter
            .with(self.ip, |e| e.active = e.active.saturating_sub(1));
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("ip", &self.ip).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nginx_burst_with_nodelay() {
        let l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let rate = Rate {
            milli_per_sec: 5000,
            burst: 2,
        };
        let t = Instant::now();
        // One at the rate and `burst` more at once, then refused.
        assert!(l.allow(ip, rate, t));
        assert!(l.allow(ip, rate, t));
        assert!(l.allow(ip, rate, t));
        assert!(!l.allow(ip, rate, t));
        // 200 ms drain one request at 5 r/s.
        assert!(l.allow(ip, rate, t + Duration::from_millis(200)));
        assert!(!l.allow(ip, rate, t + Duration::from_millis(200)));
        // Another client has its own bucket.
        assert!(l.allow("10.0.0.2".parse().unwrap(), rate, t));
        // Limits from the cluster may be anything a u64 holds: no overflow.
        let huge = Rate {
            milli_per_sec: u64::MAX,
            burst: u64::MAX,
        };
        for i in 0..3 {
            assert!(l.allow(ip, huge, t + Duration::from_secs(i)));
        }
    }

    #[test]
    fn connections_are_released_when_a_request_ends() {
        let l = Arc::new(Limiter::default());
        let ip: IpAddr = "::1".parse().unwrap();
        let a = l.enter(ip, 2).expect("first");
        let _b = l.enter(ip, 2).expect("second");
        assert!(l.enter(ip, 2).is_none());
        drop(a);
        assert!(l.enter(ip, 2).is_some());
    }

    #[test]
    fn a_flood_of_distinct_clients_stays_bounded() {
        let l = Limiter::default();
        let rate = Rate {
            milli_per_sec: 1000,
            burst: 0,
        };
        let t = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 * 4) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(l.allow(ip, rate, t));
            assert!(l.len() <= MAX_CLIENTS);
        }
        // A limited client seen recently is still limited unless it was dropped for room: at
        // worst it starts afresh, never a panic or unbounded growth.
        assert!(l.len() <= MAX_CLIENTS);
    }
}
