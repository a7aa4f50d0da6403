//! Gateway API to Portico: the pure step that decides what Portico's GatewayClasses, Gateways
//! and HTTPRoutes mean, and what their status says.
//!
//! [`translate`] takes the Gateway API objects ([`crate::source::gateway_api`]), the Services
//! and Secrets already in the [`crate::model::Model`], the namespaces' labels and how Portico
//! listens ([`Listen`]), and returns:
//! - the status of every GatewayClass, Gateway and HTTPRoute parent that is Portico's, with the
//!   spec's condition types and reasons and the objects' current `observedGeneration`;
//! - the effective routes of every served listener ([`effective`]), which the compile step
//!   turns into the data plane.
//!
//! No I/O and no clock: the caller passes `now` (stamped on conditions that change status) and
//! writes the status (the Lease holder does, as for Ingress status).

pub mod addresses;
pub mod conditions;
pub mod effective;
pub mod hostname;
mod listeners;
pub mod refs;
mod routes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::model::{ObjectKey, Service, TlsSecret};
use crate::source::gateway_api::gateway_class::SupportedFeature;
use crate::source::gateway_api::{
    Gateway, GatewayClass, GatewayClassStatus, GatewayStatus, HTTPRoute, ReferenceGrant,
    RouteStatus,
};
use conditions::{reason, stamp, Cond, ACCEPTED};
pub use effective::EffectiveGateway;

/// The controller name Portico's GatewayClasses carry by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "portico.dev/gateway-controller";

/// The features announced in GatewayClass `status.supportedFeatures`: the core ones and the
/// extended ones served (names of the suite's `pkg/features`), in alphabetical order.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// How Portico listens, which Pingora fixes at start: the ports, each plain or TLS, and the
/// addresses each Gateway is reachable at.
#[derive(Clone, Debug, Default)]
pub struct Listen {
    /// Ports served in clear text (a listener `port` here may be `HTTP`).
    pub http_ports: BTreeSet<u16>,
    /// Ports served with TLS (a listener `port` here may be `HTTPS`).
    pub https_ports: BTreeSet<u16>,
    /// Addresses given to single Gateways (an address pool, or the tests' 127.0.0.N).
    pub addresses: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// Addresses handed out one per Gateway, stably ([`addresses::allocate`]); takes
    /// precedence over `shared` when not empty.
    pub pool: Vec<IpAddr>,
    /// Addresses of every other Gateway (the node's, under hostNetwork); empty (and no pool):
    /// such a Gateway is not Programmed (`AddressNotAssigned`).
    pub shared: Vec<IpAddr>,
}

/// Everything [`translate`] reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// `spec.controllerName` of the GatewayClasses Portico owns.
    pub controller_name: &'a str,
    pub classes: &'a [GatewayClass],
    pub gateways: &'a [Gateway],
    pub routes: &'a [HTTPRoute],
    pub grants: &'a [ReferenceGrant],
    /// Each namespace's labels (for `allowedRoutes.namespaces.from: Selector`). A namespace
    /// missing here has only `kubernetes.io/metadata.name`, which the API server always sets.
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub services: &'a BTreeMap<ObjectKey, Arc<Service>>,
    pub secrets: &'a BTreeMap<ObjectKey, Arc<TlsSecret>>,
    pub listen: &'a Listen,
    /// Stamped as `lastTransitionTime` on conditions whose status changes.
    pub now: &'a Time,
}

/// What [`translate`] decides.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The status of each of Portico's GatewayClasses, by name.
    pub classes: BTreeMap<String, GatewayClassStatus>,
    /// The status of each Gateway of those classes.
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    /// The whole `status` of each HTTPRoute with a parent of Portico's: our parent entries
    /// (one per parentRef to one of our Gateways), then the other controllers' entries as they
    /// were.
    pub routes: BTreeMap<ObjectKey, RouteStatus>,
    /// The Gateways that are served (Accepted and Programmed), with their effective routes.
    pub served: Vec<EffectiveGateway>,
}

/// Decides status and effective routes. Never fails: every problem is a condition.
pub fn translate(inputs: &Inputs<'_>) -> Outcome {
    let mut out = Outcome::default();
    let mut class_ok = BTreeMap::new();
    for class in inputs.classes {
        if class.spec.controller_name != inputs.controller_name {
            continue;
        }
        let name = class.metadata.name.clone().unwrap_or_default();
        let accepted = match &class.spec.parameters_ref {
            Some(p) => Cond::new(
                ACCEPTED,
                false,
                reason::INVALID_PARAMETERS,
                format!(
                    "parametersRef {}/{} {}: Portico takes no parameters; remove the reference",
                    p.group, p.kind, p.name
                ),
            ),
            None => Cond::new(
                ACCEPTED,
                true,
                reason::ACCEPTED,
                "Portico serves this class",
            ),
        };
        class_ok.insert(name.clone(), accepted.status);
        let previous = class
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or(&[]);
        out.classes.insert(
            name,
            GatewayClassStatus {
                conditions: stamp(&[accepted], previous, class.metadata.generation, inputs.now),
                supported_features: SUPPORTED_FEATURES
                    .iter()
                    .map(|f| SupportedFeature {
                        name: f.to_string(),
                    })
                    .collect(),
            },
        );
    }

    // Oldest first, so that a shared address's conflicts go to the older Gateway.
    let mut gateways: Vec<&Gateway> = inputs
        .gateways
        .iter()
        .filter(|g| class_ok.contains_key(&g.spec.gateway_class_name))
        .collect();
    gateways.sort_by_key(|g| (created(&g.metadata), key_of(&g.metadata)));
    let keys: Vec<ObjectKey> = gateways.iter().map(|g| key_of(&g.metadata)).collect();
    let pooled = if inputs.listen.pool.is_empty() {
        None
    } else {
        Some(addresses::allocate(&inputs.listen.pool, &gateways, &keys))
    };
    let mut evals: Vec<listeners::GatewayEval> = gateways
        .iter()
        .zip(&keys)
        .map(|(g, key)| {
            let available: &[IpAddr] = match (inputs.listen.addresses.get(key), &pooled) {
                (Some(a), _) => a,
                (None, Some(p)) => p.get(key).map(Vec::as_slice).unwrap_or(&[]),
                (None, None) => &inputs.listen.shared,
            };
            listeners::evaluate(g, class_ok[&g.spec.gateway_class_name], available, inputs)
        })
        .collect();
    addresses::cross_gateway_conflicts(&mut evals);

    let attached = routes::attach(inputs, &mut evals, &mut out.routes);

    for eval in &evals {
        out.gateways
            .insert(eval.key.clone(), eval.status(inputs.now));
    }
    out.served = routes::effective(&evals, attached);
    out
}

/// `creationTimestamp` in seconds (0 when unset: files without one tie, and names decide).
fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

/// `namespace/name`, with `default` for a missing namespace as kubectl does.
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}
