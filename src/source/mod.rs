//! Where snapshots come from. Every source feeds the same compile step through
//! [`crate::dataplane::Shared::publish_model`], and reports rejections the same way.

pub mod manifests;

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
