//! Leader election through a `coordination.k8s.io/v1` Lease, so that of the DaemonSet's replicas
//! only one writes Ingress status.
//!
//! The algorithm is client-go's `leaderelection` with a `LeaseLock`, reduced to get, create and
//! update (the verbs RBAC grants):
//! - no Lease: create it with us as holder; `409 AlreadyExists` means someone else won the race;
//! - we hold it: renew `renewTime` with an update that carries the `resourceVersion` we read,
//!   so a concurrent writer makes it fail with `409 Conflict` instead of being overwritten;
//! - another replica holds it: take it over only once the record has not changed for
//!   `leaseDurationSeconds` *as measured by our own clock* since we first saw that record, so that
//!   clock skew between nodes does not matter.
//!
//! A leader that cannot renew for two thirds of the lease duration steps down before anyone
//! else may take over, so two writers never overlap.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::kube::SOURCE;
use crate::config::ElectionOptions;
use crate::dataplane::Shared;

/// Why one election round failed; the round is retried after the renew period.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("reading Lease {name}: {error}")]
    Get { name: String, error: kube::Error },
    #[error("writing Lease {name}: {error}")]
    Write { name: String, error: kube::Error },
}

/// What the last read of the Lease showed, and when we first saw it.
#[derive(Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    resource_version: Option<String>,
}

/// Runs the election and reports leadership on a watch channel.
pub struct LeaderElector {
    api: Api<Lease>,
    options: ElectionOptions,
    shared: Arc<Shared>,
    observed: Option<(Observed, Instant)>,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl LeaderElector {
    /// An elector for the Lease `options.lease_name` in `api`'s namespace; it does nothing until
    /// [`LeaderElector::run`] or [`LeaderElector::try_acquire_or_renew`].
    pub fn new(api: Api<Lease>, options: ElectionOptions, shared: Arc<Shared>) -> Self {
        Self {
            api,
            options,
            shared,
            observed: None,
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(self.duration_secs()),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire or renew. `Ok(true)` when we hold the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let name = self.options.lease_name.clone();
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|error| LeaderError::Get {
                name: name.clone(),
                error,
            })?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(error) => Err(LeaderError::Write { name, error }),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let observed = Observed {
            holder: holder.clone(),
            renew: spec.renew_time.as_ref().map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let seen_at = match &self.observed {
            Some((o, at)) if *o == observed => *at,
            _ => Instant::now(),
        };
        self.observed = Some((observed, seen_at));

        let ours = holder.as_deref() == Some(self.options.identity.as_str());
        let new_spec = if ours {
            self.spec(
                now,
                spec.acquire_time.clone(),
                spec.lease_transitions.unwrap_or(0),
            )
        } else {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.options.lease_duration);
            if holder.is_some() && seen_at.elapsed() < duration {
                return Ok(false); // held, and renewed recently enough
            }
            tracing::info!(
                previous = holder.as_deref().unwrap_or(""),
                "taking over the status-writer Lease"
            );
            self.spec(
                now,
                None,
                spec.lease_transitions.unwrap_or(0).saturating_add(1),
            )
        };
        lease.spec = Some(new_spec);
        // `lease.metadata.resourceVersion` is the one we read: a concurrent update wins with 409.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(error) => Err(LeaderError::Write { name, error }),
        }
    }

    /// Gives the Lease up if we hold it, so that another replica takes over at once instead of
    /// waiting out the lease duration (client-go's `ReleaseOnCancel`). Conflicts mean someone
    /// else already holds it: nothing to do.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let name = self.options.lease_name.clone();
        let current = self
            .api
            .get_opt(&name)
            .await
            .map_err(|error| LeaderError::Get {
                name: name.clone(),
                error,
            })?;
        let Some(mut lease) = current else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        lease.spec = Some(spec);
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(error) => Err(LeaderError::Write { name, error }),
        }
    }

    /// Runs a round every renew period and publishes leadership on `leader`, until `shutdown`
    /// fires; then releases the Lease if we hold it.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let renew_deadline = self.options.lease_duration * 2 / 3;
        let mut last_renew: Option<Instant> = None;
        loop {
            let result = self.try_acquire_or_renew().await;
            let leading = match result {
                Ok(true) => {
                    last_renew = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    last_renew = None;
                    false
                }
                Err(e) => {
                    self.shared.metrics.source_error(SOURCE, "lease");
                    tracing::warn!(error = %e, "leader election round failed");
                    // Keep leading only while the last renewal is fresh enough.
                    last_renew.is_some_and(|t| t.elapsed() < renew_deadline)
                }
            };
            if *leader.borrow() != leading {
                tracing::info!(
                    identity = %self.options.identity,
                    lease = %self.options.lease_name,
                    leading,
                    "status-writer leadership changed"
                );
                self.shared.metrics.source_event(
                    SOURCE,
                    if leading {
                        "leader_acquired"
                    } else {
                        "leader_lost"
                    },
                );
                leader.send_replace(leading);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.options.renew_period) => {}
                _ = shutdown.changed() => break,
            }
        }
        leader.send_replace(false);
        if last_renew.is_some() {
            match self.release().await {
                Ok(()) => tracing::info!("status-writer Lease released"),
                Err(e) => tracing::warn!(error = %e, "cannot release the status-writer Lease"),
            }
        }
    }
}
