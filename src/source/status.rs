//! Writes `status.loadBalancer.ingress` of Portico's Ingresses, while this replica holds the
//! status-writer Lease ([`super::leader`]).
//!
//! Which Ingresses are Portico's comes from the controller after each compile (the same class
//! selection the compile step uses, [`crate::routing::owned_ingresses`]); Ingresses of other
//! classes are never written. The current status comes from the Ingress reflector's store, and an
//! Ingress is patched only when its status differs from the published addresses. Our own patch
//! comes back as a watch event, which re-runs the check and finds nothing to do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::networking::v1::{Ingress as K8sIngress, IngressLoadBalancerIngress};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::watch;

use super::kube::{Owned, SOURCE};
use crate::config::PublishAddress;
use crate::dataplane::Shared;
use crate::model::ObjectKey;

/// Patches in flight at once when many Ingresses need status (the first sync of a big cluster).
const CONCURRENCY: usize = 16;

/// The elected writer of Ingress status.
pub struct StatusWriter {
    pub client: Client,
    pub ingresses: Store<K8sIngress>,
    pub addresses: Vec<PublishAddress>,
    pub shared: Arc<Shared>,
}

/// `status.loadBalancer.ingress` for the published addresses, in the order given.
pub fn desired(addresses: &[PublishAddress]) -> Vec<IngressLoadBalancerIngress> {
    addresses
        .iter()
        .map(|a| match a {
            PublishAddress::Ip(ip) => IngressLoadBalancerIngress {
                ip: Some(ip.to_string()),
                ..Default::default()
            },
            PublishAddress::Hostname(h) => IngressLoadBalancerIngress {
                hostname: Some(h.clone()),
                ..Default::default()
            },
        })
        .collect()
}

fn current(ing: &K8sIngress) -> Vec<IngressLoadBalancerIngress> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

impl StatusWriter {
    /// Brings every owned Ingress to the desired status. `written` remembers the
    /// `resourceVersion` each Ingress had when we last patched it, so that a store that has not
    /// yet seen our patch does not make us patch again. Returns the number of failed patches.
    async fn reconcile(
        &self,
        owned: &[ObjectKey],
        written: &mut HashMap<ObjectKey, Option<String>>,
    ) -> usize {
        let want = desired(&self.addresses);
        let mut todo = Vec::new();
        for key in owned {
            let Some(ing) = self
                .ingresses
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
            else {
                continue; // deleted since the compile
            };
            let version = ing.metadata.resource_version.clone();
            if current(&ing) == want {
                continue;
            }
            if written.get(key) == Some(&version) {
                continue; // patched already; the store has not caught up yet
            }
            todo.push((key.clone(), version));
        }
        let owned: HashSet<&ObjectKey> = owned.iter().collect();
        written.retain(|k, _| owned.contains(k));
        if todo.is_empty() {
            return 0;
        }
        let body = serde_json::json!({ "status": { "loadBalancer": { "ingress": want } } });
        let results = futures::stream::iter(todo)
            .map(|(key, version)| {
                let api: Api<K8sIngress> = Api::namespaced(self.client.clone(), &key.namespace);
                let body = &body;
                async move {
                    let result = api
                        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(body))
                        .await;
                    (key, version, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut failed = 0;
        for (key, version, result) in results {
            match result {
                Ok(_) => {
                    tracing::debug!(ingress = %key, "status written");
                    self.shared.metrics.source_event(SOURCE, "status");
                    written.insert(key, version);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {} // deleted meanwhile
                Err(e) => {
                    failed += 1;
                    self.shared.metrics.source_error(SOURCE, "status");
                    tracing::warn!(ingress = %key, error = %e, "cannot write Ingress status");
                }
            }
        }
        failed
    }

    /// Writes status whenever the owned set or the Ingresses change while we lead; retries
    /// failed writes with backoff. Runs until the task is dropped.
    pub async fn run(
        self,
        mut owned: watch::Receiver<Option<Owned>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut written = HashMap::new();
        let mut retry: Option<Duration> = None;
        loop {
            let leading = *leader.borrow_and_update();
            let keys = owned.borrow_and_update().clone();
            let mut failed = 0;
            if let (true, Some(keys)) = (leading, keys) {
                failed = self.reconcile(&keys, &mut written).await;
            } else if !leading {
                // A new leader cannot know what we wrote; nor can we when we lead again.
                written.clear();
            }
            retry = match (failed, retry) {
                (0, _) => None,
                (_, None) => Some(Duration::from_millis(500)),
                (_, Some(d)) => Some((d * 2).min(Duration::from_secs(30))),
            };
            let sleep = retry.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                r = owned.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}
