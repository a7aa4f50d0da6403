//! Which addresses each Gateway gets, and conflicts between Gateways that share an address.
//!
//! Pingora binds its listeners at start, so addresses come from configuration: either one
//! shared set (the node's, under hostNetwork) or a pool from which each Gateway gets its own
//! address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::conditions::{reason, Cond, CONFLICTED};
use super::listeners::GatewayEval;
use crate::model::ObjectKey;
use crate::source::gateway_api::Gateway;

/// Gives each Gateway (oldest first) one address of `pool`, stably:
/// 1. a Gateway that asks for pool addresses in `spec.addresses` gets those still free;
/// 2. a Gateway keeps the pool address its status already publishes, if still free (so a
///    restart or a new Gateway never moves an existing one);
/// 3. the others get the lowest free address.
///
/// A Gateway left out when the pool runs dry is reported `AddressNotAssigned` by the caller.
pub fn allocate(
    pool: &[IpAddr],
    gateways: &[&Gateway],
    keys: &[ObjectKey],
) -> BTreeMap<ObjectKey, Vec<IpAddr>> {
    let in_pool: BTreeSet<IpAddr> = pool.iter().copied().collect();
    let mut taken = BTreeSet::new();
    let mut out: BTreeMap<ObjectKey, Vec<IpAddr>> = BTreeMap::new();
    for (gw, key) in gateways.iter().zip(keys) {
        let wanted: Vec<IpAddr> = gw
            .spec
            .addresses
            .iter()
            .filter(|a| a.type_ == "IPAddress")
            .filter_map(|a| a.value.parse().ok())
            .filter(|ip| in_pool.contains(ip) && !taken.contains(ip))
            .collect();
        if !wanted.is_empty() {
            taken.extend(wanted.iter().copied());
            out.insert(key.clone(), wanted);
        }
    }
    for (gw, key) in gateways.iter().zip(keys) {
        if out.contains_key(key) {
            continue;
        }
        let kept = gw
            .status
            .iter()
            .flat_map(|s| s.addresses.iter())
            .filter_map(|a| a.value.parse::<IpAddr>().ok())
            .find(|ip| in_pool.contains(ip) && !taken.contains(ip));
        if let Some(ip) = kept {
            taken.insert(ip);
            out.insert(key.clone(), vec![ip]);
        }
    }
    for key in keys {
        if out.contains_key(key) {
            continue;
        }
        if let Some(ip) = pool.iter().find(|ip| !taken.contains(ip)) {
            taken.insert(*ip);
            out.insert(key.clone(), vec![*ip]);
        }
    }
    out
}

/// A listener that serves on an address and port.
struct Claim {
    tls: bool,
    hostname: Option<String>,
    /// `namespace/gateway/listener`, for the message.
    owner: String,
}

/// Marks the listeners of younger Gateways that clash with an older Gateway's listener on a
/// shared address and port: the other protocol (`ProtocolConflict`), or the same protocol and
/// hostname (`HostnameConflict`). `evals` are oldest first.
pub(super) fn cross_gateway_conflicts(evals: &mut [GatewayEval]) {
    // The listeners that serve on each (address, port).
    let mut claimed: BTreeMap<(IpAddr, u16), Vec<Claim>> = BTreeMap::new();
    for gw in evals.iter_mut() {
        let addresses = gw.addresses.clone();
        let gw_key = gw.key.to_string();
        let mut mine = Vec::new();
        for l in gw.listeners.iter_mut() {
            if !l.takes_routes() {
                continue;
            }
            let host = l.hostname.as_ref().map(|h| h.to_string());
            let clash = addresses.iter().find_map(|ip| {
                claimed.get(&(*ip, l.port))?.iter().find_map(|c| {
                    if c.tls != l.tls {
                        Some((reason::PROTOCOL_CONFLICT, c.owner.clone()))
                    } else if c.hostname == host {
                        Some((reason::HOSTNAME_CONFLICT, c.owner.clone()))
                    } else {
                        None
                    }
                })
            });
            match clash {
                Some((r, owner)) => {
                    l.conditions.retain(|c| c.type_ != CONFLICTED);
                    l.conditions.push(Cond::new(
                        CONFLICTED,
                        true,
                        r,
                        format!(
                            "listener {owner} of an older Gateway serves the same address and \
                             port; not served"
                        ),
                    ));
                }
                None => mine.push((l.port, l.tls, host, format!("{gw_key}/{}", l.name))),
            }
        }
        for (port, tls, host, owner) in mine {
            for ip in &addresses {
                claimed.entry((*ip, port)).or_default().push(Claim {
                    tls,
                    hostname: host.clone(),
                    owner: owner.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::gateway_api::gateway::{GatewaySpecAddress, GatewayStatusAddress};
    use crate::source::gateway_api::{GatewaySpec, GatewayStatus};

    fn gw(name: &str, wants: Option<&str>, had: Option<&str>) -> Gateway {
        let mut g = Gateway::new(
            name,
            GatewaySpec {
                gateway_class_name: "c".into(),
                listeners: Vec::new(),
                addresses: wants
                    .map(|w| {
                        vec![GatewaySpecAddress {
                            type_: "IPAddress".into(),
                            value: w.into(),
                        }]
                    })
                    .unwrap_or_default(),
                infrastructure: None,
                allowed_listeners: None,
                tls: None,
            },
        );
        g.status = had.map(|h| GatewayStatus {
            addresses: vec![GatewayStatusAddress {
                type_: "IPAddress".into(),
                value: h.into(),
            }],
            ..Default::default()
        });
        g
    }

    #[test]
    fn pool_allocation_is_stable() {
        let pool: Vec<IpAddr> = (2..=4).map(|n| IpAddr::from([127, 0, 0, n])).collect();
        let gws = [
            gw("a", None, None),
            gw("b", None, Some("127.0.0.4")),
            gw("c", Some("127.0.0.2"), None),
            gw("d", None, None),
        ];
        let refs: Vec<&Gateway> = gws.iter().collect();
        let keys: Vec<ObjectKey> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| ObjectKey::new("ns", *n))
            .collect();
        let got = allocate(&pool, &refs, &keys);
        let ip = |k: &str| got.get(&ObjectKey::new("ns", k)).map(|v| v[0].to_string());
        assert_eq!(ip("c").as_deref(), Some("127.0.0.2")); // asked for it
        assert_eq!(ip("b").as_deref(), Some("127.0.0.4")); // kept it
        assert_eq!(ip("a").as_deref(), Some("127.0.0.3")); // lowest free
        assert_eq!(ip("d"), None); // pool exhausted
    }
}
