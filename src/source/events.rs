//! Kubernetes Events for rejected objects, so that `kubectl describe ingress` shows why a rule is
//! not served.
//!
//! The controller sends only rejections that are new since the previous compile
//! ([`super::report_rejections`]), so a recompile does not send the same Event again. Events are
//! created directly as `events.k8s.io/v1` objects rather than through kube's `Recorder`: its
//! cache keys a series by reason only and would fold two different messages with the same reason
//! (two missing Services) into one Event with the first message.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress as K8sIngress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

use super::kube::SOURCE;
use crate::dataplane::Shared;
use crate::model::Kind;
use crate::routing::Rejected;

/// The API server rejects an Event note longer than this.
const NOTE_MAX: usize = 1024;

/// Creates one Warning Event per new rejection.
pub struct EventRecorder {
    pub client: Client,
    /// To reference the Ingress with its uid, which `kubectl describe` matches on.
    pub ingresses: Store<K8sIngress>,
    /// `reportingController`: the controller name.
    pub controller: String,
    /// `reportingInstance`: this replica.
    pub instance: String,
    pub shared: Arc<Shared>,
}

fn api_version(kind: Kind) -> &'static str {
    match kind {
        Kind::Ingress | Kind::IngressClass => "networking.k8s.io/v1",
        Kind::Service | Kind::Secret | Kind::ConfigMap | Kind::Namespace => "v1",
        Kind::GatewayClass | Kind::Gateway | Kind::HTTPRoute | Kind::ReferenceGrant => {
            "gateway.networking.k8s.io/v1"
        }
        Kind::EndpointSlice => "discovery.k8s.io/v1",
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl EventRecorder {
    fn regarding(&self, r: &Rejected) -> ObjectReference {
        if r.kind == Kind::Ingress {
            let key = ObjectRef::new(&r.key.name).within(&r.key.namespace);
            if let Some(ing) = self.ingresses.get(&key) {
                return ing.object_ref(&());
            }
        }
        ObjectReference {
            api_version: Some(api_version(r.kind).into()),
            kind: Some(r.kind.as_str().into()),
            name: Some(r.key.name.clone()),
            namespace: Some(r.key.namespace.clone()).filter(|n| !n.is_empty()),
            ..Default::default()
        }
    }

    /// The Event for one rejection.
    pub fn event(&self, r: &Rejected) -> Event {
        let now = Timestamp::now();
        let namespace = if r.key.namespace.is_empty() {
            "default".to_string()
        } else {
            r.key.namespace.clone()
        };
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", r.key.name, now.as_nanosecond())),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".into()),
            reason: Some(r.reason.into()),
            action: Some("Compile".into()),
            note: Some(truncate(&r.message, NOTE_MAX)),
            regarding: Some(self.regarding(r)),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    /// Sends Events until the channel closes. Best effort: a failed create is logged and counted,
    /// not retried (the rejection itself is in the log and in `portico_rejected_objects`).
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Vec<Rejected>>) {
        while let Some(batch) = rx.recv().await {
            for r in &batch {
                let event = self.event(r);
                let ns = event.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => self.shared.metrics.source_event(SOURCE, "event"),
                    Err(e) => {
                        self.shared.metrics.source_error(SOURCE, "event");
                        tracing::warn!(object = %r.key, reason = r.reason, error = %e, "cannot create Event");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aéb", 3), "aé");
    }
}
