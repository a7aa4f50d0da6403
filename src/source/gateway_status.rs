//! Writes the status of Portico's GatewayClasses, Gateways and HTTPRoutes, while this replica
//! holds the status-writer Lease ([`super::leader`]), as the Ingress status writer does.
//!
//! The statuses come from the compile step (the pure translator's, carried by the snapshot as
//! [`crate::dataplane::DataPlane::gateway_status`]): only the objects Portico owns are there
//! (its classes, the Gateways of those classes, the routes attached to them), and a route's
//! parent entries of other controllers were kept by the translator. An object is patched
//! (a merge patch of its `status`, through the status subresource) only when its stored status
//! differs; our own patch comes back as a watch event, which recompiles to the same status and
//! finds nothing to do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;

use super::gateway_api::{Gateway, GatewayClass, HTTPRoute};
use super::kube::{Owned, SOURCE};
use crate::dataplane::Shared;

/// Patches in flight at once.
const CONCURRENCY: usize = 16;

/// The elected writer of Gateway API status.
pub struct GatewayStatusWriter {
    pub client: Client,
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub routes: Store<HTTPRoute>,
    pub shared: Arc<Shared>,
}

/// One status to write: the kind's plural, the object, and the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Target {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
}

impl GatewayStatusWriter {
    /// The stored status of `t` and its resourceVersion; `None` when the object is gone.
    fn stored(&self, t: &Target) -> Option<(Value, Option<String>)> {
        fn of<K>(store: &Store<K>, t: &Target) -> Option<(Value, Option<String>)>
        where
            K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + 'static,
        {
            let r = match &t.namespace {
                Some(ns) => ObjectRef::new(&t.name).within(ns),
                None => ObjectRef::new(&t.name),
            };
            let obj = store.get(&r)?;
            let version = obj.meta().resource_version.clone();
            let value = serde_json::to_value(obj.as_ref()).ok()?;
            Some((value.get("status").cloned().unwrap_or(Value::Null), version))
        }
        match t.kind {
            "gatewayclasses" => of(&self.classes, t),
            "gateways" => of(&self.gateways, t),
            _ => of(&self.routes, t),
        }
    }

    /// Brings every owned object to its computed status; returns the failed patches.
    async fn reconcile(&self, written: &mut HashMap<Target, Option<String>>) -> usize {
        let Some(status) = self.shared.current().gateway_status.clone() else {
            return 0;
        };
        let mut todo = Vec::new();
        for (section, kind) in [
            ("gatewayClasses", "gatewayclasses"),
            ("gateways", "gateways"),
            ("httpRoutes", "httproutes"),
        ] {
            let Some(objects) = status.get(section).and_then(Value::as_object) else {
                continue;
            };
            for (key, want) in objects {
                let (namespace, name) = match key.split_once('/') {
                    Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
                    None => (None, key.clone()),
                };
                let target = Target {
                    kind,
                    namespace,
                    name,
                };
                let Some((have, version)) = self.stored(&target) else {
                    continue; // deleted since the compile
                };
                if have == *want {
                    continue;
                }
                if written.get(&target) == Some(&version) {
                    continue; // patched already; the store has not caught up yet
                }
                todo.push((target, version, want.clone()));
            }
        }
        if todo.is_empty() {
            return 0;
        }
        let results = futures::stream::iter(todo)
            .map(|(t, version, want)| {
                let client = self.client.clone();
                async move {
                    let body = serde_json::json!({ "status": want });
                    let patch = Patch::Merge(&body);
                    let params = PatchParams::default();
                    let result = match (t.kind, &t.namespace) {
                        ("gatewayclasses", _) => Api::<GatewayClass>::all(client)
                            .patch_status(&t.name, &params, &patch)
                            .await
                            .map(|_| ()),
                        ("gateways", Some(ns)) => Api::<Gateway>::namespaced(client, ns)
                            .patch_status(&t.name, &params, &patch)
                            .await
                            .map(|_| ()),
                        (_, Some(ns)) => Api::<HTTPRoute>::namespaced(client, ns)
                            .patch_status(&t.name, &params, &patch)
                            .await
                            .map(|_| ()),
                        (_, None) => Ok(()),
                    };
                    (t, version, result)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut failed = 0;
        for (t, version, result) in results {
            let object = match &t.namespace {
                Some(ns) => format!("{}/{ns}/{}", t.kind, t.name),
                None => format!("{}/{}", t.kind, t.name),
            };
            match result {
                Ok(()) => {
                    tracing::debug!(%object, "status written");
                    self.shared.metrics.source_event(SOURCE, "status");
                    written.insert(t, version);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {} // deleted meanwhile
                Err(e) => {
                    failed += 1;
                    self.shared.metrics.source_error(SOURCE, "status");
                    tracing::warn!(%object, error = %e, "cannot write Gateway API status");
                }
            }
        }
        failed
    }

    /// Writes status after each compile while we lead; retries failed writes with backoff.
    /// Runs until the task is dropped.
    pub async fn run(
        self,
        mut compiled: watch::Receiver<Option<Owned>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut written = HashMap::new();
        let mut retry: Option<Duration> = None;
        loop {
            let leading = *leader.borrow_and_update();
            let synced = compiled.borrow_and_update().is_some();
            let mut failed = 0;
            if leading && synced {
                failed = self.reconcile(&mut written).await;
            } else if !leading {
                written.clear();
            }
            retry = match (failed, retry) {
                (0, _) => None,
                (_, None) => Some(Duration::from_millis(500)),
                (_, Some(d)) => Some((d * 2).min(Duration::from_secs(30))),
            };
            let sleep = retry.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                r = compiled.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}
