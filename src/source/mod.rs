//! Where snapshots come from. Every source feeds the same compile step through
//! [`crate::dataplane::Shared::publish_model`], and reports rejections the same way.
//!
//! - [`manifests`]: files on disk (`--manifests DIR`);
//! - [`gateway_api`]: the Gateway API kinds (types only for now: not watched or served yet);
//! - [`kube`]: the cluster, through reflectors; with [`status`] (Ingress status, behind the
//!   [`leader`] Lease) and [`events`] (Events for rejected objects).

pub mod events;
pub mod gateway_api;
pub mod gateway_status;
pub mod kube;
pub mod leader;
pub mod manifests;
pub mod status;

use std::collections::HashSet;

use crate::routing::Rejected;

/// Logs the rejections that are new since the last compile, so that a recompile does not repeat
/// the same warning forever. Returns the new ones (the cluster source turns them into Events).
///
/// Each line names the object, then the file that holds it when `file_of` knows one, then the
/// message, which names the field and what to do: `Ingress shop/web (web.yaml): spec.rules[0]...`.
pub fn report_rejections(
    seen: &mut HashSet<(String, String, &'static str, String)>,
    rejected: &[Rejected],
    file_of: impl Fn(&Rejected) -> Option<String>,
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
            let file = file_of(r).map(|f| format!(" ({f})")).unwrap_or_default();
            tracing::warn!(
                reason = %r.reason,
                "{} {}{file}: {}",
                r.kind,
                r.key,
                r.message
            );
            fresh.push(r.clone());
        }
        now.insert(id);
    }
    *seen = now;
    fresh
}
