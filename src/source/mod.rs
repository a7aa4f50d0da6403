//! Where snapshots come from. Every source feeds the same compile step through
//! [`crate::dataplane::Shared::publish_model`], and reports rejections the same way.
//!
//! - [`manifests`]: files on disk (`--manifests DIR`);
//! - [`kube`]: the cluster, through reflectors; with [`status`] (Ingress status, behind the
//!   [`leader`] Lease) and [`events`] (Events for rejected objects).

pub mod events;
pub mod kube;
pub mod leader;
pub mod manifests;
pub mod status;

use std::collections::HashSet;

use crate::routing::Rejected;

/// Logs the rejections that are new since the last compile, so that a recompile does not repeat
/// the same warning forever. Returns the new ones (the cluster source turns them into Events).
pub fn report_rejections(
    seen: &mut HashSet<(String, String, &'static str, String)>,
    rejected: &[Rejected],
) -> Vec<Rejected> {
    let mut now = HashSet::with_capacity(rejected.len());
    let mut fresh = Vec::new();
    for r in rejected {
        let id = (
            r.kind.to_string(),
            r.key.to_string(),
            r.reason,
            r.message.clone(),
        );
        if !seen.contains(&id) {
            tracing::warn!(
                kind = %r.kind,
                object = %r.key,
                reason = r.reason,
                "{}", r.message
            );
            fresh.push(r.clone());
        }
        now.insert(id);
    }
    *seen = now;
    fresh
}
