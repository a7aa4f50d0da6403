//! Status conditions with the spec's types and reasons (`apis/v1/*_types.go` of Gateway API
//! v1.6.1), and the `lastTransitionTime` rule of `metav1.Condition`: it changes only when the
//! status of a condition does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub const ACCEPTED: &str = "Accepted";
pub const PROGRAMMED: &str = "Programmed";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const CONFLICTED: &str = "Conflicted";

/// Reasons (several are shared by different kinds: `Accepted`, `Programmed`, `ResolvedRefs`).
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const INVALID: &str = "Invalid";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const PENDING: &str = "Pending";
    // Gateway.
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    // Listener.
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    // Route parent.
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const INCOMPATIBLE_FILTERS: &str = "IncompatibleFilters";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
}

/// A condition as the translator decides it, before times are stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Turns decided conditions into `metav1.Condition`s at `generation`. A condition whose status
/// is the same as in `previous` keeps its `lastTransitionTime`; the others get `now`.
/// Conditions of other types in `previous` (another writer's) are kept after ours.
pub fn stamp(
    decided: &[Cond],
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = decided
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                last_transition_time: since,
                message: c.message.clone(),
                observed_generation: generation,
                reason: c.reason.to_string(),
                status: status.to_string(),
                type_: c.type_.to_string(),
            }
        })
        .collect();
    for p in previous {
        if !decided.iter().any(|c| c.type_ == p.type_) && !is_ours(&p.type_) {
            out.push(p.clone());
        }
    }
    out
}

/// The condition types this controller decides; any other type in an object's status belongs
/// to someone else (a policy controller, say) and is left alone.
fn is_ours(type_: &str) -> bool {
    matches!(
        type_,
        ACCEPTED | PROGRAMMED | RESOLVED_REFS | CONFLICTED | "PartiallyInvalid"
    )
}

/// Finds a decided condition by type.
pub fn find<'c>(conds: &'c [Cond], type_: &str) -> Option<&'c Cond> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = stamp(
            &[Cond::new(ACCEPTED, true, reason::ACCEPTED, "ok")],
            &[],
            Some(1),
            &time(10),
        );
        assert_eq!(first[0].last_transition_time, time(10));
        // Same status, new generation and reason: the time stays.
        let second = stamp(
            &[Cond::new(
                ACCEPTED,
                true,
                reason::LISTENERS_NOT_VALID,
                "some",
            )],
            &first,
            Some(2),
            &time(20),
        );
        assert_eq!(second[0].last_transition_time, time(10));
        assert_eq!(second[0].observed_generation, Some(2));
        // New status: the time moves.
        let third = stamp(
            &[Cond::new(
                ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                "none",
            )],
            &second,
            Some(2),
            &time(30),
        );
        assert_eq!(third[0].last_transition_time, time(30));
    }

    #[test]
    fn other_writers_conditions_are_kept() {
        let mut foreign = stamp(
            &[Cond::new(ACCEPTED, true, reason::ACCEPTED, "")],
            &[],
            Some(1),
            &time(1),
        );
        foreign[0].type_ = "example.com/Audited".into();
        let out = stamp(
            &[Cond::new(ACCEPTED, true, reason::ACCEPTED, "")],
            &foreign,
            Some(1),
            &time(2),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].type_, "example.com/Audited");
    }
}
