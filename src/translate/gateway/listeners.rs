//! Gateways and their listeners: validity, references, conflicts and status.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

use super::conditions::{
    find, reason, stamp, Cond, ACCEPTED, CONFLICTED, PROGRAMMED, RESOLVED_REFS,
};
use super::hostname::GwHost;
use super::refs::{permitted, selects, From, To};
use super::{created, key_of, Inputs};
use crate::model::ObjectKey;
use crate::source::gateway_api::gateway::{
    GatewayStatusAddress, Listener, ListenerStatus, RouteGroupKind,
};
use crate::source::gateway_api::{Gateway, GatewayStatus, GROUP};
use crate::tls::cert::LoadedCert;

/// Which namespaces' routes a listener takes.
#[derive(Clone, Debug)]
pub(super) enum From_ {
    Same,
    All,
    Selector(LabelSelector),
    /// An unknown `from`: none (fail closed).
    None,
}

/// One listener, judged.
#[derive(Clone, Debug)]
pub(super) struct ListenerEval {
    pub name: String,
    pub port: u16,
    pub tls: bool,
    pub hostname: Option<GwHost>,
    pub conditions: Vec<Cond>,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub from: From_,
    pub certificates: Vec<ObjectKey>,
    /// Routes attached (counted in `attachedRoutes`).
    pub attached: i32,
}

impl ListenerEval {
    /// Routes may attach: the listener is Accepted and not Conflicted (unresolved references do
    /// not stop attachment; they stop serving).
    pub fn takes_routes(&self) -> bool {
        find(&self.conditions, ACCEPTED).is_some_and(|c| c.status)
            && !find(&self.conditions, CONFLICTED).is_some_and(|c| c.status)
    }

    /// Served: Accepted, references resolved, not Conflicted.
    pub fn serves(&self) -> bool {
        self.takes_routes() && find(&self.conditions, RESOLVED_REFS).is_some_and(|c| c.status)
    }

    /// Whether routes of `namespace` (with these labels) may attach.
    pub fn allows_namespace(
        &self,
        gateway_ns: &str,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match &self.from {
            From_::Same => namespace == gateway_ns,
            From_::All => true,
            From_::Selector(s) => {
                let implicit;
                let labels = match labels {
                    Some(l) => l,
                    None => {
                        implicit = BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            namespace.to_string(),
                        )]);
                        &implicit
                    }
                };
                selects(s, labels)
            }
            From_::None => false,
        }
    }

    /// Whether HTTPRoutes may attach.
    pub fn allows_http_routes(&self) -> bool {
        self.supported_kinds
            .iter()
            .any(|k| k.group == GROUP && k.kind == "HTTPRoute")
    }
}

/// One Gateway, judged.
#[derive(Clone, Debug)]
pub(super) struct GatewayEval {
    pub key: ObjectKey,
    pub created: i64,
    pub generation: Option<i64>,
    pub previous: Option<GatewayStatus>,
    pub addresses: Vec<IpAddr>,
    /// Gateway-level problems: `Accepted=False` with this reason and message.
    pub refused: Option<(&'static str, String)>,
    pub address_problem: Option<(&'static str, String)>,
    pub listeners: Vec<ListenerEval>,
}

impl GatewayEval {
    pub fn accepted(&self) -> Cond {
        if let Some((r, m)) = &self.refused {
            return Cond::new(ACCEPTED, false, r, m.clone());
        }
        let valid = self.listeners.iter().filter(|l| l.takes_routes()).count();
        if valid == 0 {
            Cond::new(
                ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                "no listener is valid; see status.listeners",
            )
        } else if valid < self.listeners.len() {
            Cond::new(
                ACCEPTED,
                true,
                reason::LISTENERS_NOT_VALID,
                "some listeners are not valid and are not served; see status.listeners",
            )
        } else {
            Cond::new(ACCEPTED, true, reason::ACCEPTED, "")
        }
    }

    pub fn programmed(&self) -> Cond {
        if !self.accepted().status {
            return Cond::new(
                PROGRAMMED,
                false,
                reason::INVALID,
                "the Gateway is not accepted",
            );
        }
        if let Some((r, m)) = &self.address_problem {
            return Cond::new(PROGRAMMED, false, r, m.clone());
        }
        Cond::new(PROGRAMMED, true, reason::PROGRAMMED, "")
    }

    /// Served at all (then its serving listeners are).
    pub fn serves(&self) -> bool {
        self.programmed().status
    }

    pub fn status(&self, now: &Time) -> GatewayStatus {
        let previous = self.previous.as_ref();
        let prev_conds = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
        let programmed = self.programmed();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                let prev: &[Condition] = previous
                    .and_then(|s| s.listeners.iter().find(|p| p.name == l.name))
                    .map(|p| p.conditions.as_slice())
                    .unwrap_or(&[]);
                let mut conds = l.conditions.clone();
                let listener_programmed = if !l.serves() {
                    Cond::new(
                        PROGRAMMED,
                        false,
                        reason::INVALID,
                        "the listener is not valid",
                    )
                } else if !programmed.status {
                    Cond::new(
                        PROGRAMMED,
                        false,
                        programmed.reason,
                        programmed.message.clone(),
                    )
                } else {
                    Cond::new(PROGRAMMED, true, reason::PROGRAMMED, "")
                };
                conds.push(listener_programmed);
                ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l.supported_kinds.clone(),
                    attached_routes: l.attached,
                    conditions: stamp(&conds, prev, self.generation, now),
                }
            })
            .collect();
        GatewayStatus {
            addresses: self
                .addresses
                .iter()
                .map(|a| GatewayStatusAddress {
                    type_: "IPAddress".into(),
                    value: a.to_string(),
                })
                .collect(),
            conditions: stamp(
                &[self.accepted(), programmed],
                prev_conds,
                self.generation,
                now,
            ),
            listeners,
            attached_listener_sets: previous.and_then(|s| s.attached_listener_sets),
        }
    }
}

/// Judges a Gateway of one of Portico's classes (`class_accepted`: its class is Accepted),
/// reachable at `available`.
pub(super) fn evaluate(
    gw: &Gateway,
    class_accepted: bool,
    available: &[IpAddr],
    inputs: &Inputs<'_>,
) -> GatewayEval {
    let key = key_of(&gw.metadata);
    let mut refused = None;
    if !class_accepted {
        refused = Some((
            reason::PENDING,
            format!(
                "GatewayClass {} is not accepted; see its status",
                gw.spec.gateway_class_name
            ),
        ));
    } else if let Some(p) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        refused = Some((
            reason::INVALID_PARAMETERS,
            format!(
                "infrastructure.parametersRef {}/{} {}: Portico takes no parameters; remove the \
                 reference",
                p.group, p.kind, p.name
            ),
        ));
    }
    let mut address_problem = None;
    let mut addresses = available.to_vec();
    if !gw.spec.addresses.is_empty() {
        // Requested addresses must be among those Portico listens on for this Gateway.
        let mut wanted = Vec::new();
        for a in &gw.spec.addresses {
            match (a.type_.as_str(), a.value.parse::<IpAddr>()) {
                ("IPAddress", Ok(ip)) if available.contains(&ip) => wanted.push(ip),
                ("IPAddress", Ok(ip)) => {
                    address_problem = Some((
                        reason::ADDRESS_NOT_USABLE,
                        format!("spec.addresses: {ip} is not an address Portico listens on"),
                    ))
                }
                ("IPAddress", Err(_)) if a.value.is_empty() => {}
                _ if refused.is_none() => {
                    refused = Some((
                        reason::UNSUPPORTED_ADDRESS,
                        format!(
                            "spec.addresses: {} {:?} is not supported; give IPAddress values",
                            a.type_, a.value
                        ),
                    ))
                }
                _ => {}
            }
        }
        if !wanted.is_empty() {
            addresses = wanted;
        }
    }
    if addresses.is_empty() && address_problem.is_none() {
        address_problem = Some((
            reason::ADDRESS_NOT_ASSIGNED,
            "Portico has no address for this Gateway; configure its listen addresses".into(),
        ));
    }
    let gateway_ns = key.namespace.clone();
    let mut listeners: Vec<ListenerEval> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener(l, &gateway_ns, inputs))
        .collect();
    conflicts(&mut listeners);
    GatewayEval {
        key,
        created: created(&gw.metadata),
        generation: gw.metadata.generation,
        previous: gw.status.clone(),
        addresses,
        refused,
        address_problem,
        listeners,
    }
}

fn listener(l: &Listener, gateway_ns: &str, inputs: &Inputs<'_>) -> ListenerEval {
    let mut accepted = Cond::new(ACCEPTED, true, reason::ACCEPTED, "");
    fn refuse_with(accepted: &mut Cond, r: &'static str, m: String) {
        if accepted.status {
            *accepted = Cond::new(ACCEPTED, false, r, m);
        }
    }
    let tls = match l.protocol.as_str() {
        "HTTP" => false,
        "HTTPS" => true,
        other => {
            refuse_with(
                &mut accepted,
                reason::UNSUPPORTED_PROTOCOL,
                format!("protocol {other:?} is not supported; Portico serves HTTP and HTTPS"),
            );
            false
        }
    };
    let port = u16::try_from(l.port).ok().filter(|p| *p > 0);
    let protocol_ok = accepted.status;
    match port {
        None => refuse_with(
            &mut accepted,
            reason::UNSUPPORTED_VALUE,
            format!("port {} is out of range", l.port),
        ),
        Some(p) if protocol_ok => {
            let ports = if tls {
                &inputs.listen.https_ports
            } else {
                &inputs.listen.http_ports
            };
            if !ports.contains(&p) {
                refuse_with(
                    &mut accepted,
                    reason::PORT_UNAVAILABLE,
                    format!(
                        "Portico does not listen for {} on port {p}; its {} ports are {:?}",
                        l.protocol, l.protocol, ports
                    ),
                );
            }
        }
        Some(_) => {}
    }
    let hostname = match l.hostname.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => match GwHost::parse(h) {
            Ok(h) => Some(h),
            Err(e) => {
                refuse_with(
                    &mut accepted,
                    reason::UNSUPPORTED_VALUE,
                    format!("hostname: {e}"),
                );
                None
            }
        },
        None => None,
    };
    if tls {
        if let Some(t) = &l.tls {
            if t.mode != "Terminate" {
                refuse_with(
                    &mut accepted,
                    reason::UNSUPPORTED_VALUE,
                    format!("tls.mode {:?}: an HTTPS listener terminates TLS", t.mode),
                );
            }
        }
    }

    // Route kinds: HTTPRoute is the only one Portico serves.
    let mut resolved = Cond::new(RESOLVED_REFS, true, reason::RESOLVED_REFS, "");
    let mut supported_kinds = Vec::new();
    if protocol_ok {
        if l.allowed_routes.kinds.is_empty() {
            supported_kinds.push(RouteGroupKind {
                group: GROUP.into(),
                kind: "HTTPRoute".into(),
            });
        } else {
            let mut invalid = Vec::new();
            for k in &l.allowed_routes.kinds {
                if k.group == GROUP && k.kind == "HTTPRoute" {
                    if !supported_kinds.contains(k) {
                        supported_kinds.push(k.clone());
                    }
                } else {
                    invalid.push(format!("{}/{}", k.group, k.kind));
                }
            }
            if !invalid.is_empty() {
                resolved = Cond::new(
                    RESOLVED_REFS,
                    false,
                    reason::INVALID_ROUTE_KINDS,
                    format!(
                        "allowedRoutes.kinds: {} not supported; Portico serves \
                         gateway.networking.k8s.io/HTTPRoute",
                        invalid.join(", ")
                    ),
                );
            }
        }
    }

    // Certificates.
    let mut certificates = Vec::new();
    if tls && protocol_ok {
        let refs = l
            .tls
            .as_ref()
            .map(|t| t.certificate_refs.as_slice())
            .unwrap_or(&[]);
        if refs.is_empty() && resolved.status {
            resolved = Cond::new(
                RESOLVED_REFS,
                false,
                reason::INVALID_CERTIFICATE_REF,
                "an HTTPS listener needs tls.certificateRefs",
            );
        }
        for (i, r) in refs.iter().enumerate() {
            let ns = r.namespace.as_deref().unwrap_or(gateway_ns);
            let problem = if !r.group.is_empty() || r.kind != "Secret" {
                Some((
                    reason::INVALID_CERTIFICATE_REF,
                    format!(
                        "tls.certificateRefs[{i}]: {:?}/{} is not a Secret (group \"\", kind \
                         Secret)",
                        r.group, r.kind
                    ),
                ))
            } else if !permitted(
                inputs.grants,
                From {
                    group: GROUP,
                    kind: "Gateway",
                    namespace: gateway_ns,
                },
                To {
                    group: "",
                    kind: "Secret",
                    namespace: ns,
                    name: &r.name,
                },
            ) {
                Some((
                    reason::REF_NOT_PERMITTED,
                    format!(
                        "tls.certificateRefs[{i}]: Secret {ns}/{} is in another namespace and no \
                         ReferenceGrant there allows it",
                        r.name
                    ),
                ))
            } else {
                let key = ObjectKey::new(ns, r.name.clone());
                match inputs.secrets.get(&key) {
                    None => Some((
                        reason::INVALID_CERTIFICATE_REF,
                        format!("tls.certificateRefs[{i}]: Secret {key} does not exist"),
                    )),
                    Some(s) if !s.tls => Some((
                        reason::INVALID_CERTIFICATE_REF,
                        format!(
                            "tls.certificateRefs[{i}]: Secret {key} is not of type \
                             kubernetes.io/tls"
                        ),
                    )),
                    Some(s) => match LoadedCert::from_pem(&s.cert_pem, &s.key_pem) {
                        Ok(_) => {
                            certificates.push(key);
                            None
                        }
                        Err(e) => Some((
                            reason::INVALID_CERTIFICATE_REF,
                            format!("tls.certificateRefs[{i}]: Secret {key}: {e}"),
                        )),
                    },
                }
            };
            if let Some((r, m)) = problem {
                if resolved.status {
                    resolved = Cond::new(RESOLVED_REFS, false, r, m);
                }
            }
        }
    }

    let from = match l.allowed_routes.namespaces.from.as_str() {
        "Same" => From_::Same,
        "All" => From_::All,
        "Selector" => match &l.allowed_routes.namespaces.selector {
            Some(s) => From_::Selector(s.clone()),
            None => From_::None,
        },
        _ => From_::None,
    };
    ListenerEval {
        name: l.name.clone(),
        port: port.unwrap_or(0),
        tls,
        hostname,
        conditions: vec![accepted, resolved],
        supported_kinds,
        from,
        certificates,
        attached: 0,
    }
}

/// Marks listeners that clash with an earlier valid one on the same port: another protocol
/// (`ProtocolConflict`), or the same protocol and hostname (`HostnameConflict`). The earlier
/// listener keeps serving.
fn conflicts(listeners: &mut [ListenerEval]) {
    for i in 0..listeners.len() {
        let mut conflict = None;
        if listeners[i].takes_routes() {
            for j in 0..i {
                let (a, b) = (&listeners[j], &listeners[i]);
                if !a.takes_routes() || a.port != b.port {
                    continue;
                }
                if a.tls != b.tls {
                    conflict = Some((reason::PROTOCOL_CONFLICT, a.name.clone()));
                    break;
                }
                if a.hostname == b.hostname {
                    conflict = Some((reason::HOSTNAME_CONFLICT, a.name.clone()));
                    break;
                }
            }
        }
        let c = match conflict {
            Some((r, other)) => Cond::new(
                CONFLICTED,
                true,
                r,
                format!("conflicts with listener {other:?} on the same port; not served"),
            ),
            None => Cond::new(CONFLICTED, false, reason::NO_CONFLICTS, ""),
        };
        listeners[i].conditions.push(c);
    }
}
