//! The pure compile step: a [`Model`] in, a route table, its pools and the rejected objects out.
//!
//! It never fails as a whole: each invalid rule, path, backend or TLS entry is left out with a
//! [`Rejected`] entry naming the object and the reason, and everything else is compiled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use super::basic_auth::Users;
use super::host::{parse_host, HostMatch};
use super::limit;
use super::path::{PathMatch, RegexPath};
use super::{
    BasicAuth, CanaryRoute, FastMap, FastSet, HostRules, NginxRefs, NginxRoute, Route, RouteCors,
    RouteLimit, RouteTable,
};
use crate::model::{
    BackendRef, CanarySpec, EndpointSlice, HttpPath, Ingress, Kind, Model, NginxAnnotations,
    NginxGlobals, ObjectKey, PathType, PortRef, RetryOn,
};
use crate::tls::upstream::{SslMaterial, UpstreamTls};
use crate::translate::nginx::{custom_header_name, custom_header_value, PREFIX};
use crate::upstream::{Pool, Upstream};

/// What the compile step needs to know about this controller.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// `spec.controller` of the IngressClasses Portico owns.
    pub controller_name: String,
    /// The class name matched against the legacy `kubernetes.io/ingress.class` annotation.
    pub ingress_class: String,
    /// ingress-nginx's classes, taken with its semantics (`--ingress-nginx-compat`); `None`: off.
    pub nginx: Option<NginxCompat>,
    /// `--default-backend-service`: the catch-all when no Ingress has a `spec.defaultBackend`.
    pub default_backend: Option<ObjectKey>,
    /// `--proxy-protocol`: every connection starts with a PROXY protocol header, due within
    /// this time (else ingress-nginx's ConfigMap decides, in compatibility mode).
    pub proxy_protocol: Option<std::time::Duration>,
    /// Gateway API (`--gateway-listen`); `None`: off, no Gateway object is translated.
    pub gateway: Option<GatewayOptions>,
}

/// How Portico serves Gateways: fixed at start, since Pingora's listeners are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayOptions {
    /// `spec.controllerName` of the GatewayClasses Portico serves.
    pub controller_name: String,
    /// Plain-HTTP Gateway listener ports and the socket serving each (tests map port 80 to an
    /// ephemeral socket; in production they are the same port).
    pub http: Vec<(u16, SocketAddr)>,
    /// TLS Gateway listener ports and their sockets. A wildcard socket is bound once per pool
    /// address (the certificate is chosen per Gateway address, which a handshake cannot tell
    /// otherwise).
    pub https: Vec<(u16, SocketAddr)>,
    /// One address per Gateway from here, stably; empty: every Gateway gets `shared`.
    pub pool: Vec<std::net::IpAddr>,
    pub shared: Vec<std::net::IpAddr>,
    /// Gateway sockets that are also the Ingress listener (`--gateway-listen` given the address
    /// of `--http-listen`, or `https:` that of `--https-listen`): a request there is matched
    /// against the Gateway routes of its address first, and one that none matches goes to the
    /// Ingress routes, so that a host can move from Ingress to HTTPRoute on the same port.
    pub ingress_sockets: Vec<SocketAddr>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            controller_name: "portico.dev/ingress-controller".into(),
            ingress_class: "portico".into(),
            nginx: None,
            default_backend: None,
            proxy_protocol: None,
            gateway: None,
        }
    }
}

/// Which Ingresses are taken as ingress-nginx would take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxCompat {
    /// `spec.controller` of ingress-nginx's IngressClasses [k8s.io/ingress-nginx].
    pub controller: String,
    /// The legacy annotation's value [nginx].
    pub class: String,
    /// Take Ingresses with no class at all (`--watch-ingress-without-class`).
    pub watch_without_class: bool,
    /// ingress-nginx's ConfigMap (`--ingress-nginx-configmap`), followed live.
    pub configmap: ObjectKey,
}

/// How an Ingress is served: by the Ingress spec, or with ingress-nginx's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Portico,
    Nginx,
}

/// An object, or a part of one, that was left out of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub kind: Kind,
    pub key: ObjectKey,
    /// A short CamelCase reason, low-cardinality (it is a metric label and an Event reason).
    pub reason: &'static str,
    pub message: String,
}

impl Rejected {
    /// Whether this is about an Ingress that is not Portico's because of its class (the
    /// class is missing, unset without a default, or another controller's).
    pub fn is_about_class(&self) -> bool {
        matches!(self.reason, "ClassNotFound" | "NoClass" | "ClassNotOurs")
    }
}

/// How to build one pool; kept so that an endpoint-only change can rebuild just the pools of the
/// Services it touched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolSpec {
    pub service: ObjectKey,
    pub port: PortRef,
    /// The resolved Service port name (empty for an unnamed port); `None` when the Service or the
    /// port does not exist, which makes an empty pool.
    pub port_name: Option<String>,
    /// Active health check, from the oldest Ingress that asks for one on this backend.
    pub health_check: Option<crate::model::HealthCheck>,
}

/// A TLS host bound to its Secret, after conflict resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsBinding {
    pub host: HostMatch,
    pub secret: ObjectKey,
    pub ingress: ObjectKey,
}

/// The compile step's output.
#[derive(Debug, Default)]
pub struct Compiled {
    pub table: RouteTable,
    pub pools: Vec<Arc<Pool>>,
    pub pool_specs: Vec<PoolSpec>,
    /// What each pool was built from (parallel to `pools`).
    pub pool_slices: Vec<PoolSlices>,
    pub tls: Vec<TlsBinding>,
    pub rejected: Vec<Rejected>,
    /// The status of Portico's GatewayClasses, Gateways and HTTPRoutes, as JSON
    /// (`{"gatewayClasses": {name: status}, "gateways": {ns/name: status}, "httpRoutes": ...}`);
    /// `None` without Gateway API.
    pub gateway_status: Option<Arc<serde_json::Value>>,
    /// `(hostname, notAfter)` of each Gateway listener certificate served (`*` for a listener
    /// without hostname), for the expiry metric.
    pub gateway_cert_expiries: Vec<(String, f64)>,
}

/// The EndpointSlices one pool was built from: its Service's slices, in key order. Shared, so
/// that copying a snapshot's list of them costs a reference count per pool.
pub type PoolSlices = Arc<[Arc<EndpointSlice>]>;

/// What [`compile_reusing`] takes from the snapshot being replaced.
///
/// It shares a previous pool instead of building it again when its Service port resolves the same
/// way and its Service's EndpointSlices are the very same objects; and it sizes its tables from
/// the previous ones, so that they are allocated once instead of grown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Previous<'p> {
    pub specs: &'p [PoolSpec],
    pub pools: &'p [Arc<Pool>],
    pub slices: &'p [PoolSlices],
    /// The number of routes and of hosts of the previous table.
    pub routes: usize,
    pub hosts: usize,
    /// The previous table's limiter states, to keep counting where it left off.
    pub limiters: Option<&'p FastMap<String, Arc<limit::Limiter>>>,
}

/// EndpointSlices grouped by `(namespace, service name)`.
pub type SliceIndex<'a> = FastMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>>;

/// Groups the model's EndpointSlices by the Service they belong to.
pub fn index_slices(model: &Model) -> SliceIndex<'_> {
    let mut index: SliceIndex<'_> =
        FastMap::with_capacity_and_hasher(model.slices.len(), Default::default());
    for slice in model.slices.values() {
        if let Some(svc) = slice.service_name.as_deref() {
            index
                .entry((slice.key.namespace.as_str(), svc))
                .or_default()
                .push(slice);
        }
    }
    index
}

/// Portico's Ingresses in `model`, oldest first (then by namespace/name): the ones the compile step
/// serves, and the ones whose status the Kubernetes source writes.
///
/// An Ingress is Portico's when its `spec.ingressClassName` names a class whose controller is
/// ours; or, without a class name, when its legacy annotation equals our class name; or, with
/// neither, when one of our classes is marked as the cluster default.
pub fn owned_ingresses<'m>(model: &'m Model, opts: &CompileOptions) -> Vec<&'m Ingress> {
    taken_ingresses(model, opts)
        .into_iter()
        .map(|(ing, _)| ing)
        .collect()
}

/// [`owned_ingresses`], each with how it is served. With `--ingress-nginx-compat`, an Ingress is
/// also taken when its class's controller is ingress-nginx's, or its legacy annotation names
/// ingress-nginx's class, or (with `--watch-ingress-without-class`) it has no class at all:
/// ingress-nginx's own resolution order.
pub fn taken_ingresses<'m>(model: &'m Model, opts: &CompileOptions) -> Vec<(&'m Ingress, Flavor)> {
    let owned: FastSet<&str> = model
        .classes
        .values()
        .filter(|c| c.controller == opts.controller_name)
        .map(|c| c.name.as_str())
        .collect();
    let nginx: FastSet<&str> = match &opts.nginx {
        Some(n) => model
            .classes
            .values()
            .filter(|c| c.controller == n.controller)
            .map(|c| c.name.as_str())
            .collect(),
        None => FastSet::default(),
    };
    let default_class = model
        .classes
        .values()
        .any(|c| c.is_default && owned.contains(c.name.as_str()));
    let mut ours: Vec<(&Ingress, Flavor)> = model
        .ingresses
        .values()
        .map(|i| i.as_ref())
        .filter_map(|ing| {
            let flavor = match (&ing.class_name, &ing.class_annotation) {
                (Some(class), _) if owned.contains(class.as_str()) => Flavor::Portico,
                (Some(class), _) if nginx.contains(class.as_str()) => Flavor::Nginx,
                (Some(_), _) => return None,
                (None, Some(a)) if *a == opts.ingress_class => Flavor::Portico,
                (None, Some(a)) if opts.nginx.as_ref().is_some_and(|n| *a == n.class) => {
                    Flavor::Nginx
                }
                (None, Some(_)) => return None,
                (None, None) if default_class => Flavor::Portico,
                (None, None) if opts.nginx.as_ref().is_some_and(|n| n.watch_without_class) => {
                    Flavor::Nginx
                }
                (None, None) => return None,
            };
            Some((ing, flavor))
        })
        .collect();
    // The map iterates by key, so a stable sort by age alone orders by (age, key).
    ours.sort_by_key(|(ing, _)| ing.created);
    ours
}

/// Why an Ingress that looks meant for Portico is not Portico's: no controller serves its class,
/// or the class named like Portico's belongs to another controller. An Ingress of another
/// controller's existing class, or with another legacy annotation, is none of Portico's business
/// and gets nothing.
fn class_problems(model: &Model, opts: &CompileOptions, out: &mut Vec<Rejected>) {
    let ours: Vec<&str> = model
        .classes
        .values()
        .filter(|c| c.controller == opts.controller_name)
        .map(|c| c.name.as_str())
        .collect();
    let suggestion = || match ours.as_slice() {
        [] => format!(
            "create an IngressClass with spec.controller: {} and name it here",
            opts.controller_name
        ),
        [one] => format!("Portico serves the class {one:?}"),
        names => format!("Portico serves the classes {}", quoted(names)),
    };
    let default_class = model.classes.values().any(|c| c.is_default)
        || opts.nginx.as_ref().is_some_and(|n| n.watch_without_class);
    let nginx_class = |name: &str| {
        opts.nginx.as_ref().is_some_and(|n| {
            model
                .classes
                .get(name)
                .is_some_and(|c| c.controller == n.controller)
        })
    };
    for ing in model.ingresses.values() {
        let (reason, message) = match (&ing.class_name, &ing.class_annotation) {
            (Some(name), _) => match model.classes.get(name) {
                None => {
                    let what = match ours.iter().find(|o| o.eq_ignore_ascii_case(name)) {
                        Some(close) => format!(
                            " (class names are case-sensitive), so no controller serves this \
                             Ingress; use {close:?}"
                        ),
                        None => format!(", so no controller serves this Ingress; {}", suggestion()),
                    };
                    (
                        "ClassNotFound",
                        format!("spec.ingressClassName: no IngressClass {name:?} exists{what}"),
                    )
                }
                Some(class)
                    if *name == opts.ingress_class
                        && class.controller != opts.controller_name
                        && !nginx_class(name) =>
                {
                    (
                        "ClassNotOurs",
                        format!(
                            "spec.ingressClassName: IngressClass {name:?} has spec.controller \
                             {:?}, not {:?}, so Portico does not serve this Ingress; correct \
                             the IngressClass's spec.controller",
                            class.controller, opts.controller_name
                        ),
                    )
                }
                Some(_) => continue,
            },
            (None, Some(_)) => continue,
            (None, None) if default_class => continue,
            (None, None) => (
                "NoClass",
                format!(
                    "spec.ingressClassName is unset and no IngressClass is marked default \
                     ({DEFAULT_CLASS}), so no controller serves this Ingress; set \
                     spec.ingressClassName ({})",
                    suggestion()
                ),
            ),
        };
        out.push(Rejected {
            kind: Kind::Ingress,
            key: ing.key.clone(),
            reason,
            message,
        });
    }
}

/// The annotation that marks the default IngressClass (not imported from `translate`, which
/// depends on Kubernetes types).
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";

/// `"a", "b"`: names quoted for a message.
fn quoted<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("{:?}", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A Service's ports for a message: `80 "http", 443 "https"`, or `none`.
fn ports_of(svc: &crate::model::Service) -> String {
    if svc.ports.is_empty() {
        return "none".into();
    }
    svc.ports
        .iter()
        .map(|p| {
            if p.name.is_empty() {
                p.port.to_string()
            } else {
                format!("{} named {:?}", p.port, p.name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compiles the model. Pure: same model and options, same output.
pub fn compile(model: &Model, opts: &CompileOptions) -> Compiled {
    compile_reusing(model, opts, Previous::default())
}

/// Compiles the model, sharing the pools of `previous` that would be built the same. Pure: the
/// output equals [`compile`]'s, except that unchanged pools are the previous `Arc`s (and so keep
/// their round-robin position and endpoint health records).
pub fn compile_reusing(model: &Model, opts: &CompileOptions, previous: Previous<'_>) -> Compiled {
    let mut nginx_problems = Vec::new();
    let nginx_globals = match &opts.nginx {
        Some(n) => {
            let empty = BTreeMap::new();
            let data = model
                .config_maps
                .get(&n.configmap)
                .map_or(&empty, |c| &c.data);
            let (globals, problems) = crate::translate::nginx::globals(data);
            for (key, reason, message) in problems {
                nginx_problems.push(Rejected {
                    kind: Kind::ConfigMap,
                    key: n.configmap.clone(),
                    reason,
                    message: format!("data[{key}]: {message}"),
                });
            }
            globals
        }
        None => NginxGlobals::default(),
    };
    let mut c = Compiler {
        model,
        nginx_hsts: nginx_globals
            .hsts
            .as_ref()
            .map(|h| Arc::from(h.to_string())),
        nginx_globals,
        slices: index_slices(model),
        previous,
        previous_ids: previous
            .specs
            .iter()
            .enumerate()
            .map(|(i, spec)| ((&spec.service, &spec.port), i))
            .collect(),
        out: Compiled::default(),
        pool_problems: FastMap::default(),
        told: FastSet::default(),
        pool_ids: FastMap::with_capacity_and_hasher(previous.pools.len(), Default::default()),
        host_ids: FastMap::with_capacity_and_hasher(previous.hosts, Default::default()),
        hosts: Vec::with_capacity(previous.hosts),
        nginx_refs: NginxRefs::default(),
    };
    c.out.table.routes.reserve(previous.routes);
    c.out.pools.reserve(previous.pools.len());
    c.out.pool_specs.reserve(previous.pools.len());
    c.out.pool_slices.reserve(previous.pools.len());

    let taken = taken_ingresses(model, opts);
    let ours: Vec<&Ingress> = taken.iter().map(|(ing, _)| *ing).collect();
    c.out.table.nginx_paths = taken.iter().any(|(_, f)| *f == Flavor::Nginx);
    c.out.table.proxy_protocol = match opts.proxy_protocol {
        Some(t) => Some(t),
        None if opts.nginx.is_some() => c.nginx_globals.proxy_protocol,
        None => None,
    };
    class_problems(model, opts, &mut c.out.rejected);
    c.out.rejected.append(&mut nginx_problems);
    let no_annotations = NginxAnnotations::default();
    // The hosts of every served rule (server-alias and from-to-www-redirect yield to them), and
    // those where ingress-nginx's regex locations apply: a host where any Ingress in
    // compatibility mode uses use-regex or rewrite-target.
    let mut all_hosts: FastSet<Option<&str>> = FastSet::default();
    let mut regex_hosts: FastSet<Option<&str>> = FastSet::default();
    // ingress-nginx redirects a host to HTTPS when its server has TLS: when any Ingress lists
    // the host in a tls entry, with or without a Secret.
    let nginx_tls: FastSet<HostMatch> = match &opts.nginx {
        Some(_) => taken
            .iter()
            .flat_map(|(ing, _)| ing.tls.iter())
            .flat_map(|t| t.hosts.iter())
            .filter_map(|h| parse_host(h).ok())
            .collect(),
        None => FastSet::default(),
    };
    for (ing, flavor) in &taken {
        let regex = *flavor == Flavor::Nginx
            && ing
                .nginx
                .as_ref()
                .is_some_and(|n| !n.closed() && (n.use_regex || n.rewrite_target.is_some()));
        for rule in &ing.rules {
            all_hosts.insert(rule.host.as_deref());
            if regex {
                regex_hosts.insert(rule.host.as_deref());
            }
        }
    }
    let mut default_owner: Option<&ObjectKey> = None;
    let mut tls_owner: BTreeMap<HostMatch, TlsBinding> = BTreeMap::new();

    let mut canaries: Vec<(&Ingress, &NginxAnnotations, &CanarySpec)> = Vec::new();
    for (position, &(ing, flavor)) in taken.iter().enumerate() {
        let ing_key = Arc::new(ing.key.clone());
        let nginx = match flavor {
            Flavor::Nginx => Some(ing.nginx.as_deref().unwrap_or(&no_annotations)),
            Flavor::Portico => None,
        };
        if let Some(n) = nginx {
            for p in &n.problems {
                let reason = if p.closes {
                    "AnnotationRefused"
                } else {
                    "AnnotationIgnored"
                };
                let message = format!("metadata.annotations[{}]: {}", p.annotation, p.message);
                c.reject(Kind::Ingress, &ing.key, reason, message);
            }
            if n.closed() {
                continue;
            }
            let g = &c.nginx_globals;
            let refusal = match &g.closed {
                Some(why) if n.enable_global_auth != Some(false) => Some(why.clone()),
                _ if g.client_ip_unknown.is_some()
                    && (n.allow.is_some()
                        || n.deny.is_some()
                        || g.allow.is_some()
                        || g.deny.is_some()) =>
                {
                    g.client_ip_unknown.as_ref().map(|why| {
                        format!("{why}; the Ingress, which has allow or deny lists, is not served")
                    })
                }
                _ => None,
            };
            if let Some(message) = refusal {
                c.reject(Kind::Ingress, &ing.key, "AnnotationRefused", message);
                continue;
            }
            if let Some(spec) = &n.canary {
                // Placed on the other Ingresses' routes once they are all compiled.
                canaries.push((ing, n, spec));
                continue;
            }
            match c.resolve_refs(ing, n) {
                Ok(mut refs) => {
                    for w in &refs.warnings {
                        c.reject(Kind::Ingress, &ing.key, "AnnotationIgnored", w.clone());
                    }
                    refs.fallback_pool = c.fallback_pool(ing, n);
                    c.nginx_refs = refs;
                }
                Err(message) => {
                    c.reject(Kind::Ingress, &ing.key, "AnnotationRefused", message);
                    continue;
                }
            }
        } else if ing.nginx.is_some() {
            c.reject(
                Kind::Ingress,
                &ing.key,
                "AnnotationIgnored",
                format!(
                    "metadata.annotations: nginx.ingress.kubernetes.io/* annotations apply only \
                     to Ingresses of ingress-nginx's class with --ingress-nginx-compat; this one \
                     is of Portico's class ({}), so they are ignored",
                    ing.class_name.as_deref().unwrap_or(&opts.ingress_class)
                ),
            );
        }
        for problem in &ing.problems {
            c.reject(Kind::Ingress, &ing.key, "InvalidSpec", problem.clone());
        }
        if ing.rules.is_empty() && ing.default_backend.is_none() && ing.problems.is_empty() {
            c.reject(
                Kind::Ingress,
                &ing.key,
                "NoRules",
                "spec.rules is empty and spec.defaultBackend is unset, so the Ingress serves \
                 nothing; add rules or a defaultBackend"
                    .into(),
            );
        }
        let tls_hosts = c.tls_hosts(ing, &mut tls_owner);
        let mut aliased = false;

        if let Some(backend) = ing
            .default_backend
            .as_ref()
            .filter(|_| nginx.is_none_or(|n| !n.closed()))
        {
            match default_owner {
                Some(owner) => c.reject(
                    Kind::Ingress,
                    &ing.key,
                    "Conflict",
                    format!(
                        "spec.defaultBackend: ignored, the older Ingress {owner} has one (only \
                         the oldest defaultBackend serves); remove one of them"
                    ),
                ),
                None => {
                    // In compatibility mode the Ingress's annotations (its lists above all)
                    // apply to its defaultBackend too, as to a `/` path.
                    let extras = match nginx {
                        Some(n) => {
                            let root = HttpPath {
                                path: "/".into(),
                                path_type: PathType::Prefix,
                                backend: backend.clone(),
                            };
                            let matcher = PathMatch::Prefix("/".into());
                            nginx_route(n, &c.nginx_globals, &c.nginx_refs, &matcher, &root, None)
                        }
                        None => Ok(None),
                    };
                    match extras {
                        Err(e) => c.reject(
                            Kind::Ingress,
                            &ing.key,
                            "AnnotationRefused",
                            format!("spec.defaultBackend: {e}"),
                        ),
                        Ok(extras) => {
                            if let Some(route) = c.route_for(
                                ing,
                                &ing_key,
                                backend,
                                "spec.defaultBackend",
                                (false, nginx, extras),
                            ) {
                                default_owner = Some(&ing.key);
                                c.out.table.default_backend = Some(route);
                            }
                        }
                    }
                }
            }
        }

        for (i, rule) in ing.rules.iter().enumerate() {
            let host = match rule.host.as_deref().map(parse_host).transpose() {
                Ok(h) => h,
                Err(e) => {
                    c.reject(
                        Kind::Ingress,
                        &ing.key,
                        "InvalidHost",
                        format!("spec.rules[{i}].host: {e}; the rule is not served"),
                    );
                    continue;
                }
            };
            let redirect = match nginx {
                None => {
                    ing.annotations.ssl_redirect != Some(false)
                        && host.as_ref().is_some_and(|h| tls_hosts.contains(h))
                }
                Some(n) => {
                    let g = &c.nginx_globals;
                    n.force_ssl_redirect.unwrap_or(g.force_ssl_redirect)
                        || (n.ssl_redirect.unwrap_or(g.ssl_redirect)
                            && host.as_ref().is_some_and(|h| nginx_tls.contains(h)))
                }
            };
            let mode = nginx.map(|n| (n, regex_hosts.contains(&rule.host.as_deref())));
            // server-alias: the first rule with a host also serves the aliases that no rule
            // names (ingress-nginx ignores an alias that collides with a host).
            let mut hosts = vec![(c.host_id(host.clone()), None)];
            if let (Some(n), Some(_), false) = (nginx, &host, aliased) {
                aliased = true;
                for alias in &n.server_alias {
                    if all_hosts.contains(&Some(alias.as_str())) {
                        c.reject(
                            Kind::Ingress,
                            &ing.key,
                            "AnnotationIgnored",
                            format!(
                                "metadata.annotations[nginx.ingress.kubernetes.io/server-alias]: \
                                 {alias} is a host of a rule, which wins; the alias is ignored"
                            ),
                        );
                    } else if let Ok(h) = parse_host(alias) {
                        hosts.push((c.host_id(Some(h)), None));
                    }
                }
            }
            // from-to-www-redirect: the other name of the host redirects to it, unless a rule
            // serves that name.
            if let (Some(n), Some(HostMatch::Precise(name))) = (nginx, &host) {
                let other = match name.strip_prefix("www.") {
                    Some(bare) => bare.to_string(),
                    None => format!("www.{name}"),
                };
                if n.from_to_www_redirect && !all_hosts.contains(&Some(other.as_str())) {
                    if let Ok(h) = parse_host(&other) {
                        hosts.push((c.host_id(Some(h)), Some(name.clone())));
                    }
                }
            }
            for (host, www) in &hosts {
                for (j, p) in rule.paths.iter().enumerate() {
                    let rule_mode = RuleMode {
                        host: *host,
                        redirect,
                        nginx: mode.map(|(n, regex)| (n, regex, www.as_deref())),
                    };
                    c.path(&ours, position, &ing_key, (i, j, p), rule_mode);
                }
            }
        }
    }

    if let (None, Some(key)) = (c.out.table.default_backend, &opts.default_backend) {
        c.catch_all(key);
    }
    let nginx_ingresses: FastSet<&ObjectKey> = taken
        .iter()
        .filter(|(_, f)| *f == Flavor::Nginx)
        .map(|(i, _)| &i.key)
        .collect();
    for (ing, n, spec) in canaries {
        c.place_canary(ing, n, spec, &regex_hosts, &nginx_ingresses);
    }

    c.out.tls = tls_owner.into_values().collect();
    if let Some(g) = &opts.gateway {
        c.gateways(g);
    }

    let Compiler { mut out, hosts, .. } = c;
    out.table.precise.reserve(hosts.len());
    for HostBuild {
        host, mut rules, ..
    } in hosts
    {
        rules.sort();
        match host {
            Some(HostMatch::Precise(h)) => {
                out.table.precise.insert(h, rules);
            }
            Some(HostMatch::Wildcard(s)) => {
                out.table.wildcard.insert(s, rules);
            }
            None => out.table.any_host = rules,
        }
    }
    // Per-client limits keep their state across compiles: each route takes the previous state of
    // its key (routes of one key share one).
    for r in &mut out.table.routes {
        let Some((x, l)) = r
            .nginx
            .as_ref()
            .and_then(|x| Some((x, x.rate_limit.as_ref()?)))
        else {
            continue;
        };
        let limiter = out
            .table
            .limiters
            .entry(l.key.clone())
            .or_insert_with(|| {
                previous
                    .limiters
                    .and_then(|m| m.get(&l.key).cloned())
                    .unwrap_or_default()
            })
            .clone();
        let mut x = (**x).clone();
        x.rate_limit = Some(Arc::new(RouteLimit {
            limiter,
            ..(**l).clone()
        }));
        r.nginx = Some(Arc::new(x));
    }
    out
}

struct Compiler<'m, 'p> {
    model: &'m Model,
    /// ingress-nginx's ConfigMap settings, and its HSTS value, for Ingresses in compatibility
    /// mode.
    nginx_globals: NginxGlobals,
    nginx_hsts: Option<Arc<str>>,
    slices: SliceIndex<'m>,
    previous: Previous<'p>,
    /// The index of each previous pool by its Service and port.
    previous_ids: FastMap<(&'p ObjectKey, &'p PortRef), usize>,
    out: Compiled,
    /// The pool of each (namespace, Service name, port), with the Service's shared key.
    pool_ids: FastMap<(&'m str, &'m str, &'m PortRef), (usize, Arc<ObjectKey>)>,
    /// Why a pool is empty because its Service or port does not exist, by pool index.
    pool_problems: FastMap<usize, PoolProblem>,
    /// The Ingresses told about a pool's problem.
    told: FastSet<(Arc<ObjectKey>, usize)>,
    /// The index of each host (`None`: the host-less rules) in `hosts`.
    host_ids: FastMap<Option<HostMatch>, usize>,
    hosts: Vec<HostBuild>,
    /// What the Ingress being compiled refers to, in compatibility mode.
    nginx_refs: NginxRefs,
}

/// How the paths of one rule are compiled: into which host, with the redirect to HTTPS or not,
/// and for an Ingress in compatibility mode its annotations, whether the host is a regex host,
/// and the host a from-to-www-redirect name goes to.
#[derive(Clone, Copy)]
struct RuleMode<'n> {
    host: usize,
    redirect: bool,
    nginx: Option<(&'n NginxAnnotations, bool, Option<&'n str>)>,
}

/// Why a backend's pool is empty from the start.
struct PoolProblem {
    reason: &'static str,
    /// The backend's field at fault, under `...backend.`.
    field: &'static str,
    message: String,
}

/// Above this many rules, a host's paths are found by hash instead of by a scan of its rules.
const SCAN_LIMIT: usize = 16;

/// The rules of one host while compiling, with who holds each path.
struct HostBuild {
    host: Option<HostMatch>,
    rules: HostRules,
    /// The Ingress (its index in age order) that holds each rule, in the order of `rules`.
    owners: Vec<usize>,
    /// The owner of each path, once the host has more than [`SCAN_LIMIT`] rules; most hosts have
    /// a few, which a scan finds faster than a hash and without a copy of every path.
    index: Option<FastMap<PathMatch, usize>>,
}

impl HostBuild {
    fn new(host: Option<HostMatch>) -> Self {
        Self {
            host,
            rules: HostRules::default(),
            owners: Vec::new(),
            index: None,
        }
    }

    /// The Ingress that holds `path` on this host, if any.
    fn owner(&self, path: &PathMatch) -> Option<usize> {
        if let Some(index) = &self.index {
            return index.get(path).copied();
        }
        let at = self.rules.rules.iter().position(|(m, _)| m == path)?;
        self.owners.get(at).copied()
    }

    /// Gives `path` to the Ingress `owner`, routed to `route`.
    fn claim(&mut self, path: PathMatch, route: usize, owner: usize) {
        if let Some(index) = &mut self.index {
            index.insert(path.clone(), owner);
        }
        self.rules.push(path, route);
        self.owners.push(owner);
        if self.index.is_none() && self.owners.len() > SCAN_LIMIT {
            let held = self.rules.rules.iter().map(|(m, _)| m.clone());
            self.index = Some(held.zip(self.owners.iter().copied()).collect());
        }
    }
}

impl<'m> Compiler<'m, '_> {
    /// The index of `host` in `hosts`, added if new.
    fn host_id(&mut self, host: Option<HostMatch>) -> usize {
        if let Some(&id) = self.host_ids.get(&host) {
            return id;
        }
        let id = self.hosts.len();
        self.host_ids.insert(host.clone(), id);
        self.hosts.push(HostBuild::new(host));
        id
    }

    /// Compiles path `j` of rule `i` of the Ingress at `position` in `ours` into the rules of
    /// `host`, unless an older Ingress (or an earlier path of the same one) holds it.
    fn path(
        &mut self,
        ours: &[&'m Ingress],
        position: usize,
        ing_key: &Arc<ObjectKey>,
        (i, j, p): (usize, usize, &'m HttpPath),
        mode: RuleMode<'_>,
    ) {
        let RuleMode {
            host,
            redirect,
            nginx,
        } = mode;
        let Some(ing) = ours.get(position).copied() else {
            return;
        };
        let parsed = match &nginx {
            None => PathMatch::parse(&p.path, p.path_type),
            Some((_, regex, _)) => nginx_path(&p.path, p.path_type, *regex),
        };
        let matcher = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.reject(
                    Kind::Ingress,
                    &ing.key,
                    "InvalidPath",
                    format!("spec.rules[{i}].http.paths[{j}].path: {e}; the path is not served"),
                );
                return;
            }
        };
        let holder = self.hosts.get(host).and_then(|h| h.owner(&matcher));
        if let Some(owner) = holder {
            let (reason, message) = if owner == position {
                (
                    "Duplicate",
                    "repeats an earlier path of the same Ingress; remove one".to_string(),
                )
            } else {
                let older = ours
                    .get(owner)
                    .map(|o| o.key.to_string())
                    .unwrap_or_default();
                (
                    "Conflict",
                    format!(
                        "already served by the older Ingress {older} (the oldest wins); \
                         change the host or the path, or remove one of them"
                    ),
                )
            };
            let host_s = match self.hosts.get(host).and_then(|h| h.host.as_ref()) {
                Some(h) => h.to_string(),
                None => "*".into(),
            };
            self.reject(
                Kind::Ingress,
                &ing.key,
                reason,
                format!(
                    "spec.rules[{i}].http.paths[{j}] ({host_s} {:?} {}): {message}",
                    p.path_type,
                    matcher.path()
                ),
            );
            return;
        }
        let field = format!("spec.rules[{i}].http.paths[{j}].backend");
        let annotations = nginx.as_ref().map(|(n, _, _)| *n);
        let extras = match nginx {
            Some((n, _, www)) => {
                match nginx_route(
                    n,
                    &self.nginx_globals,
                    &self.nginx_refs,
                    &matcher,
                    p,
                    www.map(str::to_string),
                ) {
                    Ok(x) => x,
                    Err(e) => {
                        self.reject(Kind::Ingress, &ing.key, "AnnotationRefused", e);
                        return;
                    }
                }
            }
            None => None,
        };
        let Some(route) = self.route_for(
            ing,
            ing_key,
            &p.backend,
            &field,
            (redirect, annotations, extras),
        ) else {
            return;
        };
        if let Some(h) = self.hosts.get_mut(host) {
            h.claim(matcher, route, position);
        }
    }

    fn reject(&mut self, kind: Kind, key: &ObjectKey, reason: &'static str, message: String) {
        self.out.rejected.push(Rejected {
            kind,
            key: key.clone(),
            reason,
            message,
        });
    }

    /// Validates the Ingress's TLS entries and claims their hosts; returns the hosts this Ingress
    /// now holds TLS for.
    fn tls_hosts(
        &mut self,
        ing: &'m Ingress,
        owners: &mut BTreeMap<HostMatch, TlsBinding>,
    ) -> FastSet<HostMatch> {
        let mut mine = FastSet::default();
        for (i, entry) in ing.tls.iter().enumerate() {
            let Some(secret) = &entry.secret_name else {
                // Allowed by the API (SNI-less default certificate); nothing to bind.
                continue;
            };
            let secret_key = ObjectKey::new(ing.key.namespace.clone(), secret.clone());
            if !self.model.secrets.get(&secret_key).is_some_and(|s| s.tls) {
                let effect = match entry.hosts.as_slice() {
                    [] => String::new(),
                    [one] => format!("; {one} gets the default certificate until it exists"),
                    many => format!(
                        "; {} get the default certificate until it exists",
                        many.join(", ")
                    ),
                };
                self.reject(
                    Kind::Ingress,
                    &ing.key,
                    "SecretNotFound",
                    format!(
                        "spec.tls[{i}].secretName: no Secret {secret_key} of type \
                         kubernetes.io/tls with tls.crt and tls.key{effect}"
                    ),
                );
            }
            if entry.hosts.is_empty() {
                self.reject(
                    Kind::Ingress,
                    &ing.key,
                    "NoTlsHosts",
                    format!(
                        "spec.tls[{i}].hosts is empty, so Secret {secret_key} is not used \
                         (Portico picks a certificate by the SNI name); list the hosts it covers"
                    ),
                );
            }
            for h in &entry.hosts {
                let host = match parse_host(h) {
                    Ok(host) => host,
                    Err(e) => {
                        self.reject(
                            Kind::Ingress,
                            &ing.key,
                            "InvalidHost",
                            format!("spec.tls[{i}].hosts: {e}; the host gets no certificate"),
                        );
                        continue;
                    }
                };
                match owners.get(&host) {
                    Some(owner) if owner.ingress != ing.key => {
                        let owner = owner.ingress.clone();
                        self.reject(
                            Kind::Ingress,
                            &ing.key,
                            "Conflict",
                            format!(
                                "spec.tls[{i}].hosts: {host} already takes its certificate from \
                                 the older Ingress {owner} (the oldest wins); this Secret is not \
                                 used for it"
                            ),
                        );
                    }
                    Some(_) => {
                        mine.insert(host);
                    }
                    None => {
                        owners.insert(
                            host.clone(),
                            TlsBinding {
                                host: host.clone(),
                                secret: secret_key.clone(),
                                ingress: ing.key.clone(),
                            },
                        );
                        mine.insert(host);
                    }
                }
            }
        }
        mine
    }

    /// Creates a route to `backend`, or rejects the backend and returns `None`.
    fn route_for(
        &mut self,
        ing: &'m Ingress,
        ing_key: &Arc<ObjectKey>,
        backend: &'m BackendRef,
        field: &str,
        (redirect, annotations, nginx): (bool, Option<&NginxAnnotations>, Option<Arc<NginxRoute>>),
    ) -> Option<usize> {
        let (name, port) = match backend {
            BackendRef::Resource { kind, name } => {
                self.reject(
                    Kind::Ingress,
                    &ing.key,
                    "UnsupportedBackend",
                    format!(
                        "{field}.resource: {kind}/{name}: resource backends are not supported; \
                         use a service backend"
                    ),
                );
                return None;
            }
            BackendRef::Service { name, port } => (name, port),
        };
        let lookup = (ing.key.namespace.as_str(), name.as_str(), port);
        let known = self
            .pool_ids
            .get(&lookup)
            .map(|(id, key)| (*id, key.clone()));
        let (pool, service) = match known {
            Some((id, key)) => {
                // A younger Ingress may ask for a check the older ones did not.
                if let Some(spec) = self.out.pool_specs.get_mut(id) {
                    if spec.health_check.is_none() {
                        spec.health_check = ing.annotations.health_check.clone();
                    }
                }
                (id, key)
            }
            None => {
                let service = &ObjectKey::new(ing.key.namespace.clone(), name.clone());
                let (spec, problem) = match self.model.services.get(service) {
                    None => (
                        PoolSpec {
                            service: service.clone(),
                            port: port.clone(),
                            port_name: None,
                            health_check: ing.annotations.health_check.clone(),
                        },
                        Some(PoolProblem {
                            reason: "ServiceNotFound",
                            field: "service.name",
                            message: format!(
                                "no Service {name:?} in namespace {}; requests routed there \
                                 get 503 until it exists",
                                service.namespace
                            ),
                        }),
                    ),
                    Some(svc) if svc.external_name => {
                        self.reject(
                            Kind::Ingress,
                            &ing.key,
                            "ExternalNameService",
                            format!(
                                "{field}.service.name: Service {service} is of type ExternalName, \
                                 which Portico does not proxy to; the path is not served"
                            ),
                        );
                        return None;
                    }
                    Some(svc) => {
                        let found = svc.ports.iter().find(|p| match port {
                            PortRef::Number(n) => p.port == *n,
                            PortRef::Name(n) => p.name == *n,
                        });
                        let problem = match (found, port) {
                            (Some(_), _) => None,
                            (None, PortRef::Number(n)) => Some(PoolProblem {
                                reason: "PortNotFound",
                                field: "service.port.number",
                                message: format!(
                                    "Service {service} has no port {n} (its ports: {}; a \
                                     backend names the Service's port, not the pod's); requests \
                                     routed there get 503",
                                    ports_of(svc)
                                ),
                            }),
                            (None, PortRef::Name(n)) => Some(PoolProblem {
                                reason: "PortNotFound",
                                field: "service.port.name",
                                message: format!(
                                    "Service {service} has no port named {n:?} (its ports: \
                                     {}); requests routed there get 503",
                                    ports_of(svc)
                                ),
                            }),
                        };
                        let spec = PoolSpec {
                            service: service.clone(),
                            port: port.clone(),
                            port_name: found.map(|p| p.name.clone()),
                            health_check: ing.annotations.health_check.clone(),
                        };
                        (spec, problem)
                    }
                };
                let (pool, slices) = self.pool_for(&spec);
                let id = self.out.pools.len();
                self.out.pools.push(pool);
                self.out.pool_specs.push(spec);
                self.out.pool_slices.push(slices);
                if let Some(problem) = problem {
                    self.pool_problems.insert(id, problem);
                }
                let key = Arc::new(service.clone());
                self.pool_ids.insert(lookup, (id, key.clone()));
                (id, key)
            }
        };
        // Every Ingress that routes to a missing Service or port hears of it, once.
        if let Some(p) = self.pool_problems.get(&pool) {
            if self.told.insert((ing_key.clone(), pool)) {
                let (reason, message) = (p.reason, format!("{field}.{}: {}", p.field, p.message));
                self.reject(Kind::Ingress, &ing.key, reason, message);
            }
        }
        let id = self.out.table.routes.len();
        self.out.table.routes.push(Route {
            id,
            ingress: ing_key.clone(),
            service,
            pool,
            redirect_https: redirect,
            limits: match annotations {
                // The annotation, then ingress-nginx's ConfigMap, then Portico's own.
                Some(n) => {
                    let retry_on = n
                        .next_upstream
                        .or(self.nginx_globals.next_upstream)
                        .unwrap_or(RetryOn::ERROR.with(RetryOn::TIMEOUT));
                    let (a, g, p) = (
                        &n.limits,
                        &self.nginx_globals.limits,
                        &ing.annotations.limits,
                    );
                    crate::model::RouteLimits {
                        max_body: a.max_body.or(g.max_body).or(p.max_body),
                        connect_timeout: a
                            .connect_timeout
                            .or(g.connect_timeout)
                            .or(p.connect_timeout),
                        read_timeout: a.read_timeout.or(g.read_timeout).or(p.read_timeout),
                        send_timeout: a.send_timeout.or(g.send_timeout).or(p.send_timeout),
                        // ingress-nginx's defaults: "error timeout", 3 tries, no time limit.
                        upstream_attempts: Some(if retry_on.retries() {
                            n.next_upstream_tries
                                .or(self.nginx_globals.next_upstream_tries)
                                .unwrap_or(3)
                                .max(1)
                        } else {
                            1
                        }),
                        retry_on: Some(retry_on),
                        retry_timeout: n
                            .next_upstream_timeout
                            .or(self.nginx_globals.next_upstream_timeout)
                            .filter(|t| !t.is_zero()),
                        request_timeout: None,
                    }
                }
                None => ing.annotations.limits,
            },
            hsts: match (&ing.annotations.hsts, annotations) {
                (Some(h), _) => Some(Arc::from(h.to_string())),
                // ingress-nginx sends HSTS over TLS by default (ConfigMap `hsts`).
                (None, Some(_)) => self.nginx_hsts.clone(),
                (None, None) => None,
            },
            https_redirect_code: match annotations {
                Some(_) => self.nginx_globals.http_redirect_code,
                None => 308,
            },
            backend_protocol: annotations
                .and_then(|n| n.backend_protocol)
                .or(ing.annotations.backend_protocol)
                .unwrap_or_default(),
            nginx,
            gateway: None,
        });
        Some(id)
    }
}

impl<'m> Compiler<'m, '_> {
    /// Gateway API: translates the model's Gateway API objects (status and effective routes),
    /// then builds the entry point of each Gateway address and socket, with a route per rule of
    /// each listener (after the Ingress routes: their ids do not move).
    fn gateways(&mut self, g: &GatewayOptions) {
        use crate::routing::gateway::plane::{
            EntryPoint, GatewayAction, GatewayBackend, GatewayForward, GatewayMirror, GatewayPlane,
            GatewayRoute,
        };
        use crate::routing::gateway::{actions, GatewayTable};
        use crate::translate::gateway::effective::{Action, BackendTarget};

        let sockets: Vec<(SocketAddr, bool)> = g
            .http
            .iter()
            .chain(&g.https)
            .map(|(_, a)| (*a, g.ingress_sockets.contains(a)))
            .collect();
        let mut plane = GatewayPlane::new(sockets);
        let api = &self.model.gateway_api;
        if api.is_empty() {
            self.out.table.gateways = Some(Arc::new(plane));
            return;
        }
        let classes: Vec<_> = api.classes.values().map(|o| (**o).clone()).collect();
        let gateways: Vec<_> = api.gateways.values().map(|o| (**o).clone()).collect();
        let routes: Vec<_> = api.routes.values().map(|o| (**o).clone()).collect();
        let grants: Vec<_> = api.grants.values().map(|o| (**o).clone()).collect();
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = api
            .namespaces
            .values()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        let listen = crate::translate::gateway::Listen {
            http_ports: g.http.iter().map(|(p, _)| *p).collect(),
            https_ports: g.https.iter().map(|(p, _)| *p).collect(),
            addresses: Default::default(),
            pool: g.pool.clone(),
            shared: g.shared.clone(),
        };
        // The one read of the clock in the compile step: it only stamps `lastTransitionTime`
        // on conditions whose status changes; nothing the data plane reads depends on it.
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let outcome = crate::translate::gateway::translate(&crate::translate::gateway::Inputs {
            controller_name: &g.controller_name,
            classes: &classes,
            gateways: &gateways,
            routes: &routes,
            grants: &grants,
            namespaces: &namespaces,
            services: &self.model.services,
            secrets: &self.model.secrets,
            listen: &listen,
            now: &now,
        });
        self.out.gateway_status = Some(Arc::new(serde_json::json!({
            "gatewayClasses": by_name(&outcome.classes),
            "gateways": by_name(&outcome.gateways),
            "httpRoutes": by_name(&outcome.routes),
        })));

        // The pools of Gateway backends, by Service and port number.
        let mut pools: FastMap<(ObjectKey, u16), usize> = FastMap::default();
        // Every listener of every served Gateway, by local socket address.
        let mut by_local: BTreeMap<
            SocketAddr,
            Vec<Arc<crate::translate::gateway::effective::EffectiveListener>>,
        > = BTreeMap::new();
        for gw in &outcome.served {
            for l in &gw.listeners {
                let l = Arc::new(l.clone());
                let sockets = if l.tls { &g.https } else { &g.http };
                for (_, socket) in sockets.iter().filter(|(p, _)| *p == l.port) {
                    if g.pool.is_empty() && socket.ip().is_unspecified() {
                        // Shared addresses on a wildcard socket: any local address.
                        if !gw.addresses.is_empty() {
                            by_local.entry(*socket).or_default().push(l.clone());
                        }
                        continue;
                    }
                    for ip in &gw.addresses {
                        if socket.ip().is_unspecified() || socket.ip() == *ip {
                            by_local
                                .entry(SocketAddr::new(*ip, socket.port()))
                                .or_default()
                                .push(l.clone());
                        }
                    }
                }
            }
        }
        // On the Ingress listeners: the served Ingress rules an HTTPRoute may take over there
        // (reported, not refused), and the TLS listeners' certificates.
        let on_ingress_socket = |local: &SocketAddr| {
            g.ingress_sockets.iter().any(|s| {
                s.port() == local.port() && (s.ip().is_unspecified() || s.ip() == local.ip())
            })
        };
        let ingress_rules = if by_local.keys().any(on_ingress_socket) {
            self.served_ingress_rules()
        } else {
            Vec::new()
        };
        let mut ingress_certs = Vec::new();
        let mut taken_over: BTreeMap<(ObjectKey, String), String> = BTreeMap::new();
        for (local, listeners) in by_local {
            let table = match GatewayTable::build(&listeners) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(%local, error = %e, "Gateway entry point left out");
                    continue;
                }
            };
            let mut entry = EntryPoint {
                table,
                routes: Vec::with_capacity(listeners.len()),
            };
            // TLS listeners: each hostname's first certificate, most specific hostname first
            // (the translator checked that they load; one that does not now is left out).
            let mut certs: Vec<_> = listeners
                .iter()
                .filter(|l| l.tls)
                .filter_map(|l| {
                    let secret = self.model.secrets.get(l.certificates.first()?)?;
                    match crate::tls::LoadedCert::from_pem(&secret.cert_pem, &secret.key_pem) {
                        Ok(c) => {
                            let host = l.hostname.as_ref().map_or("*".into(), |h| h.to_string());
                            self.out.gateway_cert_expiries.push((host, c.not_after as f64));
                            Some((l.hostname.clone(), c.key))
                        }
                        Err(e) => {
                            tracing::error!(listener = %l.name, secret = %secret.key, error = %e, "Gateway certificate left out");
                            None
                        }
                    }
                })
                .collect();
            certs.sort_by(|a, b| {
                crate::translate::gateway::hostname::listener_specificity(
                    a.0.as_ref(),
                    b.0.as_ref(),
                )
            });
            let shared = on_ingress_socket(&local);
            if shared {
                ingress_certs.extend(certs.iter().cloned());
            }
            plane.insert_certificates(local, certs);
            for l in &listeners {
                let mut ids = Vec::with_capacity(l.rules.len());
                for rule in &l.rules {
                    let route_key = Arc::new(rule.route.clone());
                    let mut first: Option<(usize, Arc<ObjectKey>)> = None;
                    let action = match &rule.action {
                        Action::Redirect(r) => GatewayAction::Redirect(r.clone()),
                        Action::Error { status, .. } => GatewayAction::Error(*status),
                        Action::Forward(f) => {
                            let edits = |e| actions::CompiledEdits::new(e).unwrap_or_default();
                            let (rule_request, rule_response) =
                                (edits(&f.request_headers), edits(&f.response_headers));
                            let mut backends = Vec::with_capacity(f.backends.len());
                            for b in &f.backends {
                                let pool = match &b.target {
                                    BackendTarget::Service { service, port } => {
                                        let id = self.gateway_pool(&mut pools, service, *port);
                                        if first.is_none() {
                                            first = Some((id, Arc::new(service.clone())));
                                        }
                                        Some(id)
                                    }
                                    BackendTarget::Invalid { .. } => None,
                                };
                                let response = rule_response.then(&edits(&b.response_headers));
                                backends.push(GatewayBackend {
                                    pool,
                                    request_headers: rule_request.then(&edits(&b.request_headers)),
                                    response_headers: (!response.is_empty()).then_some(response),
                                });
                            }
                            let weights: Vec<u32> = f.backends.iter().map(|b| b.weight).collect();
                            let choice = if backends.len() > 1 {
                                actions::WeightedChoice::new(&weights)
                            } else {
                                None
                            };
                            let mirrors = f
                                .mirrors
                                .iter()
                                .filter_map(|m| match &m.backend {
                                    BackendTarget::Service { service, port } => {
                                        Some(GatewayMirror::new(
                                            self.gateway_pool(&mut pools, service, *port),
                                            m.numerator,
                                            m.denominator,
                                        ))
                                    }
                                    // Dropped, as the spec says (ResolvedRefs tells why).
                                    BackendTarget::Invalid { .. } => None,
                                })
                                .collect();
                            GatewayAction::Forward(GatewayForward {
                                rewrite: f.rewrite.clone(),
                                backends,
                                choice,
                                mirrors,
                            })
                        }
                    };
                    let (pool, service) = first.unwrap_or((0, route_key.clone()));
                    let id = self.out.table.routes.len();
                    self.out.table.routes.push(Route {
                        id,
                        ingress: route_key,
                        service,
                        pool,
                        redirect_https: false,
                        https_redirect_code: 308,
                        limits: crate::model::RouteLimits {
                            read_timeout: rule.timeouts.backend_request,
                            request_timeout: rule.timeouts.request,
                            ..Default::default()
                        },
                        hsts: None,
                        backend_protocol: Default::default(),
                        nginx: None,
                        gateway: Some(Arc::new(GatewayRoute {
                            listener_port: l.port,
                            action,
                        })),
                    });
                    ids.push(id);
                }
                entry.routes.push(ids);
            }
            if shared {
                for (ingress, host, path) in &ingress_rules {
                    let headers = http::HeaderMap::new();
                    let view = crate::routing::gateway::RequestView {
                        host,
                        method: "GET",
                        path,
                        query: None,
                        headers: &headers,
                    };
                    let Some(found) = entry.table.lookup(&view) else {
                        continue;
                    };
                    let route = entry
                        .routes
                        .get(found.listener)
                        .and_then(|l| l.get(found.rule))
                        .and_then(|id| self.out.table.routes.get(*id));
                    if let Some(route) = route {
                        taken_over
                            .entry(((**ingress).clone(), format!("{host}{path}")))
                            .or_insert_with(|| format!("{} on {local}", route.ingress));
                    }
                }
            }
            plane.insert(local, entry);
        }
        for ((ingress, at), by) in taken_over {
            self.out.rejected.push(Rejected {
                kind: Kind::Ingress,
                key: ingress,
                reason: "SharedWithHTTPRoute",
                message: format!(
                    "{at} is also claimed by HTTPRoute {by}, the Ingress listener shared with a \
                     Gateway: Gateway routes are matched first there, so requests to {at} go \
                     to the HTTPRoute, and this Ingress serves only those no HTTPRoute rule \
                     matches"
                ),
            });
        }
        ingress_certs.sort_by(|a, b| {
            crate::translate::gateway::hostname::listener_specificity(a.0.as_ref(), b.0.as_ref())
        });
        plane.set_ingress_certificates(ingress_certs);
        self.out.table.gateways = Some(Arc::new(plane));
    }

    /// `(Ingress, host, path)` of every rule of the Ingresses in the table so far (Gateway rules
    /// come after them) with a host that is not a wildcard: what an HTTPRoute may take over on
    /// a shared listener.
    fn served_ingress_rules(&self) -> Vec<(Arc<ObjectKey>, String, String)> {
        let served: BTreeSet<&ObjectKey> = self
            .out
            .table
            .routes
            .iter()
            .filter(|r| r.gateway.is_none())
            .map(|r| &*r.ingress)
            .collect();
        let mut out = Vec::new();
        for key in served {
            let Some(ing) = self.model.ingresses.get(key) else {
                continue;
            };
            let key = Arc::new(key.clone());
            for rule in &ing.rules {
                let Some(host) = rule.host.as_deref().filter(|h| !h.starts_with('*')) else {
                    continue;
                };
                for p in &rule.paths {
                    let path = if p.path.is_empty() { "/" } else { &p.path };
                    out.push((key.clone(), host.to_ascii_lowercase(), path.to_string()));
                }
            }
        }
        out
    }

    /// The pool of a Gateway backend (a Service port the translator found), shared by every
    /// rule that names the same one.
    fn gateway_pool(
        &mut self,
        pools: &mut FastMap<(ObjectKey, u16), usize>,
        service: &ObjectKey,
        port: u16,
    ) -> usize {
        if let Some(id) = pools.get(&(service.clone(), port)) {
            return *id;
        }
        let port_name = self
            .model
            .services
            .get(service)
            .and_then(|s| s.ports.iter().find(|p| p.port == port))
            .map(|p| p.name.clone());
        let spec = PoolSpec {
            service: service.clone(),
            port: PortRef::Number(port),
            port_name,
            health_check: None,
        };
        let (pool, slices) = self.pool_for(&spec);
        let id = self.out.pools.len();
        self.out.pools.push(pool);
        self.out.pool_specs.push(spec);
        self.out.pool_slices.push(slices);
        pools.insert((service.clone(), port), id);
        id
    }

    /// `--default-backend-service`: a route to the Service's first port for every request no
    /// rule takes.
    fn catch_all(&mut self, key: &ObjectKey) {
        let Some(pool) = self.service_pool(key) else {
            self.reject(
                Kind::Service,
                key,
                "ServiceNotFound",
                "--default-backend-service: no such Service with a port; requests no rule takes \
                 get 404 until it exists"
                    .into(),
            );
            return;
        };
        let id = self.out.table.routes.len();
        let key = Arc::new(key.clone());
        self.out.table.routes.push(Route {
            id,
            ingress: key.clone(),
            service: key,
            pool,
            redirect_https: false,
            https_redirect_code: 308,
            limits: Default::default(),
            hsts: None,
            backend_protocol: Default::default(),
            nginx: None,
            gateway: None,
        });
        self.out.table.default_backend = Some(id);
        self.out.table.error_backend = Some(pool);
    }

    /// A pool for a Service's first port (outside any Ingress), if the Service exists.
    fn service_pool(&mut self, key: &ObjectKey) -> Option<usize> {
        let port = self.model.services.get(key)?.ports.first()?;
        let spec = PoolSpec {
            service: key.clone(),
            port: PortRef::Number(port.port),
            port_name: Some(port.name.clone()),
            health_check: None,
        };
        let (pool, slices) = self.pool_for(&spec);
        let id = self.out.pools.len();
        self.out.pools.push(pool);
        self.out.pool_specs.push(spec);
        self.out.pool_slices.push(slices);
        Some(id)
    }

    /// The pool of an Ingress's `default-backend` annotation: the Service of its namespace, on
    /// its first port (as ingress-nginx takes it).
    fn fallback_pool(&mut self, ing: &'m Ingress, n: &'m NginxAnnotations) -> Option<usize> {
        let name = n.default_backend.as_ref()?;
        let key = ObjectKey::new(ing.key.namespace.clone(), name.clone());
        if self
            .model
            .services
            .get(&key)
            .is_none_or(|s| s.ports.is_empty())
        {
            self.reject(
                Kind::Ingress,
                &ing.key,
                "ServiceNotFound",
                format!(
                    "metadata.annotations[{PREFIX}default-backend]: no Service {key} with a port; \
                     ignored until it exists"
                ),
            );
            return None;
        }
        self.service_pool(&key)
    }

    /// Attaches a canary Ingress's paths to the routes of the same host and path that another
    /// ingress-nginx Ingress serves (ingress-nginx merges it as the location's alternative
    /// backend). A path without such a route, or whose route already has a canary, is reported
    /// and serves nothing: a canary never takes a path for itself.
    fn place_canary(
        &mut self,
        ing: &'m Ingress,
        n: &'m NginxAnnotations,
        spec: &CanarySpec,
        regex_hosts: &FastSet<Option<&str>>,
        nginx_ingresses: &FastSet<&ObjectKey>,
    ) {
        let ing_key = Arc::new(ing.key.clone());
        if ing.default_backend.is_some() {
            self.reject(
                Kind::Ingress,
                &ing.key,
                "AnnotationIgnored",
                "spec.defaultBackend: a canary's defaultBackend is not supported; ignored".into(),
            );
        }
        for (i, rule) in ing.rules.iter().enumerate() {
            let host = rule
                .host
                .as_deref()
                .map(parse_host)
                .transpose()
                .ok()
                .flatten();
            let host_id = self.host_ids.get(&host).copied();
            let regex = regex_hosts.contains(&rule.host.as_deref());
            for (j, p) in rule.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let main = nginx_path(&p.path, p.path_type, regex).ok().and_then(|m| {
                    let h = self.hosts.get(host_id?)?;
                    h.rules.rules.iter().find(|(x, _)| *x == m).map(|(_, r)| *r)
                });
                let main = main.filter(|&r| {
                    self.out
                        .table
                        .routes
                        .get(r)
                        .is_some_and(|r| nginx_ingresses.contains(&*r.ingress))
                });
                let Some(main) = main else {
                    self.reject(
                        Kind::Ingress,
                        &ing.key,
                        "CanaryWithoutMain",
                        format!(
                            "{field} ({} {:?}): no ingress-nginx Ingress serves this host and \
                             path; the canary serves nothing",
                            rule.host.as_deref().unwrap_or("*"),
                            p.path
                        ),
                    );
                    continue;
                };
                let taken = self.out.table.routes.get(main).and_then(|r| {
                    let c = r.nginx.as_ref()?.canary.as_ref()?;
                    Some(c.ingress.to_string())
                });
                if let Some(other) = taken {
                    self.reject(
                        Kind::Ingress,
                        &ing.key,
                        "Conflict",
                        format!(
                            "{field}: the path already has the canary {other} (one per rule); \
                             this one is ignored"
                        ),
                    );
                    continue;
                }
                let backend = format!("{field}.backend");
                let Some(canary_route) =
                    self.route_for(ing, &ing_key, &p.backend, &backend, (false, Some(n), None))
                else {
                    continue;
                };
                let Some(pool) = self.out.table.routes.get(canary_route).map(|r| r.pool) else {
                    continue;
                };
                if let Some(r) = self.out.table.routes.get_mut(main) {
                    let mut x = r.nginx.as_deref().cloned().unwrap_or_default();
                    x.canary = Some(Arc::new(CanaryRoute::new(ing_key.clone(), pool, spec)));
                    r.nginx = Some(Arc::new(x));
                }
            }
        }
    }
}

impl Compiler<'_, '_> {
    /// Resolves the Secret and ConfigMap an Ingress in compatibility mode refers to. An error
    /// (a missing or unreadable object, one in another namespace, a header not allowed) keeps
    /// the Ingress out, as ingress-nginx denies its locations.
    fn resolve_refs(&self, ing: &Ingress, n: &NginxAnnotations) -> Result<NginxRefs, String> {
        let ns = &ing.key.namespace;
        let mut refs = NginxRefs {
            namespace: ns.clone(),
            ingress: ing.key.name.clone(),
            ..NginxRefs::default()
        };
        let annotation = |name: &str| format!("metadata.annotations[{PREFIX}{name}]");
        if let Some(ssl) = &n.proxy_ssl {
            let field = annotation("proxy-ssl-secret");
            if ssl.secret.namespace != *ns {
                return Err(format!(
                    "{field}: {} is in another namespace; only Secrets of the Ingress's \
                     namespace are read (as ingress-nginx does by default); the Ingress is not \
                     served",
                    ssl.secret
                ));
            }
            let secret = self.model.secrets.get(&ssl.secret).ok_or_else(|| {
                format!(
                    "{field}: no Secret {} with a ca.crt (or of type kubernetes.io/tls); the \
                     Ingress is not served until it exists",
                    ssl.secret
                )
            })?;
            let material = SslMaterial::from_secret(secret).map_err(|e| {
                format!(
                    "{field}: Secret {}: {e}; the Ingress is not served",
                    ssl.secret
                )
            })?;
            if ssl.verify && material.ca.is_none() {
                return Err(format!(
                    "{field}: Secret {} has no ca.crt to verify the backend with \
                     (proxy-ssl-verify is on); the Ingress is not served",
                    ssl.secret
                ));
            }
            refs.ssl = Some(material);
        }
        if let Some(spec) = &n.basic_auth {
            let field = annotation("auth-secret");
            let key = match spec.secret.namespace.as_str() {
                "" => ObjectKey::new(ns.clone(), spec.secret.name.clone()),
                _ => spec.secret.clone(),
            };
            if key.namespace != *ns {
                return Err(format!(
                    "{field}: {key} is in another namespace; only Secrets of the Ingress's \
                     namespace are read; the Ingress is not served"
                ));
            }
            let secret = self
                .model
                .secrets
                .get(&key)
                .filter(|s| !s.tls)
                .ok_or_else(|| {
                    format!(
                        "{field}: no Opaque Secret {key}; the Ingress is not served until it \
                         exists"
                    )
                })?;
            let mut users = Users::default();
            let mut problems = Vec::new();
            if spec.map {
                for (user, hash) in &secret.data {
                    let hash = String::from_utf8_lossy(hash);
                    if let Err(e) = users.add(user, &hash) {
                        problems.push(format!("user {user:?}: {e}"));
                    }
                }
            } else {
                let file = secret.data.get("auth").ok_or_else(|| {
                    format!(
                        "{field}: Secret {key} has no auth key (an htpasswd file); the Ingress \
                         is not served"
                    )
                })?;
                (users, problems) = Users::from_htpasswd(&String::from_utf8_lossy(file));
            }
            if users.is_empty() {
                return Err(format!(
                    "{field}: Secret {key} holds no user Portico can check ({}); the Ingress is \
                     not served",
                    problems.join("; ")
                ));
            }
            for p in problems {
                refs.warnings.push(format!(
                    "{field}: Secret {key}: {p}; that user cannot log in"
                ));
            }
            let challenge = http::HeaderValue::from_str(&format!("Basic realm=\"{}\"", spec.realm))
                .map_err(|_| format!("{}: not a header value", annotation("auth-realm")))?;
            refs.basic_auth = Some(Arc::new(BasicAuth { users, challenge }));
        }
        if let Some(key) = &n.custom_headers {
            let field = annotation("custom-headers");
            if key.namespace != *ns {
                return Err(format!(
                    "{field}: {key} is in another namespace; only ConfigMaps of the Ingress's \
                     namespace are read; the Ingress is not served"
                ));
            }
            let map = self.model.config_maps.get(key).ok_or_else(|| {
                format!("{field}: no ConfigMap {key}; the Ingress is not served until it exists")
            })?;
            let allowed = &self.nginx_globals.allowed_response_headers;
            let mut headers = Vec::with_capacity(map.data.len());
            for (name, value) in &map.data {
                if !custom_header_name(name) || !custom_header_value(value) {
                    return Err(format!(
                        "{field}: ConfigMap {key}: {name:?} is not a valid header name and value; \
                         the Ingress is not served"
                    ));
                }
                if !allowed.contains(name) {
                    return Err(format!(
                        "{field}: ConfigMap {key}: {name} is not in the ConfigMap's \
                         global-allowed-response-headers; the Ingress is not served"
                    ));
                }
                let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) else {
                    return Err(format!(
                        "{field}: ConfigMap {key}: {name:?} is not a header"
                    ));
                };
                headers.push((n, v));
            }
            refs.response_headers = Some(Arc::from(headers));
        }
        Ok(refs)
    }

    /// The pool of `spec`: the previous snapshot's when it would be built the same, else a new one.
    fn pool_for(&self, spec: &PoolSpec) -> (Arc<Pool>, PoolSlices) {
        let slices = service_slices(&self.slices, &spec.service);
        let reusable = self
            .previous_ids
            .get(&(&spec.service, &spec.port))
            .and_then(|&i| {
                let same = self.previous.specs.get(i)?.port_name == spec.port_name
                    && same_objects(self.previous.slices.get(i)?, &slices);
                same.then(|| self.previous.pools.get(i).cloned()).flatten()
            });
        let pool = reusable.unwrap_or_else(|| Arc::new(build_pool(spec, &self.slices)));
        (pool, slices)
    }
}

/// A map of statuses as a JSON object keyed by `namespace/name` (or name).
fn by_name<K: std::fmt::Display, V: serde::Serialize>(
    statuses: &BTreeMap<K, V>,
) -> serde_json::Value {
    serde_json::Value::Object(
        statuses
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::to_value(v).unwrap_or_default()))
            .collect(),
    )
}

/// A path as ingress-nginx reads it: on a regex host every path is a case-insensitive regex
/// anchored at the start (Exact ones too); elsewhere Exact is exact, Prefix is element-wise (it
/// makes `location /p/` and `location = /p`), and ImplementationSpecific is nginx's plain prefix.
fn nginx_path(path: &str, path_type: PathType, regex: bool) -> Result<PathMatch, String> {
    let path = if path.is_empty() { "/" } else { path };
    if regex {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "{path:?} must start with \"/\" and have no whitespace or control characters"
            ));
        }
        return RegexPath::new(path).map(PathMatch::Regex);
    }
    match path_type {
        PathType::ImplementationSpecific => {
            PathMatch::parse(path, PathType::Exact).map(|_| PathMatch::Plain(path.to_string()))
        }
        t => PathMatch::parse(path, t),
    }
}

/// What one path of an Ingress in compatibility mode does beyond proxying; `None` when nothing,
/// so that such a route costs what any other does.
fn nginx_route(
    n: &NginxAnnotations,
    g: &NginxGlobals,
    refs: &NginxRefs,
    matcher: &PathMatch,
    p: &HttpPath,
    www_redirect: Option<String>,
) -> Result<Option<Arc<NginxRoute>>, String> {
    let regex = match matcher {
        PathMatch::Regex(r) => Some(r.clone()),
        _ => None,
    };
    let groups = regex
        .as_ref()
        .map_or(0, |r| r.regex.captures_len().saturating_sub(1));
    for (name, template) in [
        ("rewrite-target", n.rewrite_target.as_ref()),
        (
            "permanent-redirect/temporal-redirect",
            n.redirect.as_ref().map(|r| &r.0),
        ),
    ] {
        if let Some(t) = template.filter(|t| t.max_group() > groups) {
            return Err(format!(
                "metadata.annotations[nginx.ingress.kubernetes.io/{name}]: refers to ${} but \
                 path {:?} has {groups} capture groups; the path is not served",
                t.max_group(),
                p.path
            ));
        }
    }
    let header = |v: &str| http::HeaderValue::from_str(v).ok();
    let slash_redirect = match (matcher, p.path_type) {
        (PathMatch::Prefix(stored), PathType::Prefix)
            if p.path.ends_with('/') && stored.as_str() != "/" =>
        {
            Some(stored.clone())
        }
        _ => None,
    };
    let route = NginxRoute {
        regex: regex.filter(|_| n.rewrite_target.is_some() || n.redirect.is_some()),
        app_root: n.app_root.clone(),
        redirect: n.redirect.clone(),
        www_redirect,
        slash_redirect,
        rewrite: n.rewrite_target.clone(),
        upstream_host: n.upstream_vhost.as_deref().and_then(header),
        forwarded_prefix: n
            .x_forwarded_prefix
            .as_deref()
            .filter(|_| n.rewrite_target.is_some())
            .and_then(header),
        access_log: n.enable_access_log,
        // The annotation overrides the ConfigMap's list, as in ingress-nginx.
        allow: n
            .allow
            .as_ref()
            .or(g.allow.as_ref())
            .map(|l| Arc::from(l.as_slice())),
        deny: n
            .deny
            .as_ref()
            .or(g.deny.as_ref())
            .map(|l| Arc::from(l.as_slice())),
        trusted: None,
        upstream_tls: n.proxy_ssl.as_ref().zip(refs.ssl.as_ref()).map(|(s, m)| {
            // ingress-nginx's default name is its `$proxy_host`, "upstream_balancer", which no
            // certificate carries; Portico's is the Service's cluster name.
            let name = s.name.clone().unwrap_or_else(|| match &p.backend {
                BackendRef::Service { name, .. } => format!("{name}.{}.svc", refs.namespace),
                BackendRef::Resource { name, .. } => name.clone(),
            });
            Arc::new(UpstreamTls::new(
                m.clone(),
                s.verify,
                name,
                s.verify || s.server_name,
            ))
        }),
        response_headers: refs.response_headers.clone(),
        cors: n.cors.as_ref().and_then(RouteCors::new).map(Arc::new),
        basic_auth: refs.basic_auth.clone(),
        canary: None,
        rate_limit: n.rate_limit.as_ref().map(|l| {
            let rate = |per_sec_milli: u64, n: u64| limit::Rate {
                milli_per_sec: per_sec_milli,
                burst: n.saturating_mul(l.burst_multiplier),
            };
            let mut rates = Vec::new();
            if let Some(n) = l.rps {
                rates.push(rate(n.saturating_mul(1000), n));
            }
            if let Some(n) = l.rpm {
                rates.push(rate(n.saturating_mul(1000) / 60, n));
            }
            Arc::new(RouteLimit {
                rates,
                connections: l.connections,
                allowlist: l.allowlist.clone(),
                req_status: g.limit_req_status,
                conn_status: g.limit_conn_status,
                key: refs.ingress_path(p),
                limiter: Arc::default(),
            })
        }),
        fallback_pool: refs.fallback_pool,
        error_pages: n
            .custom_http_errors
            .as_ref()
            .unwrap_or(&g.custom_http_errors)
            .first()
            .map(|_| {
                let codes = n
                    .custom_http_errors
                    .clone()
                    .unwrap_or_else(|| g.custom_http_errors.clone());
                let (service, port) = match &p.backend {
                    BackendRef::Service { name, port } => (name.clone(), port.to_string()),
                    BackendRef::Resource { name, .. } => (name.clone(), String::new()),
                };
                let fields = [
                    ("x-namespace", refs.namespace.clone()),
                    ("x-ingress-name", refs.ingress.clone()),
                    ("x-service-name", service),
                    ("x-service-port", port),
                ]
                .into_iter()
                .filter_map(|(n, v)| Some((http::HeaderName::from_static(n), header(&v)?)))
                .collect();
                Arc::new(super::ErrorPages {
                    codes,
                    pool: refs.fallback_pool,
                    fields,
                })
            }),
        affinity: n.affinity.as_ref().map(|a| {
            // nginx's cookie: the location's path unless session-cookie-path, always HttpOnly.
            let path = a.path.clone().unwrap_or_else(|| match matcher {
                PathMatch::Regex(_) => "/".to_string(),
                m => m.path().to_string(),
            });
            let mut attributes = format!("; Path={path}");
            if let Some(d) = &a.domain {
                attributes.push_str(&format!("; Domain={d}"));
            }
            if let Some(m) = a.max_age {
                attributes.push_str(&format!("; Max-Age={m}"));
            }
            // A conditional SameSite=None is added per request, for the browsers that take it.
            let conditional = a.conditional_samesite_none && a.samesite.as_deref() == Some("None");
            if let Some(s) = a.samesite.as_ref().filter(|_| !conditional) {
                attributes.push_str(&format!("; SameSite={s}"));
            }
            attributes.push_str("; HttpOnly");
            Arc::new(super::affinity::Affinity {
                persistent: a.persistent,
                name: a.name.clone(),
                attributes,
                secure: a.secure,
                expires: a.expires,
                change_on_failure: a.change_on_failure,
                samesite_none_if_compatible: conditional,
            })
        }),
        // The Ingress's own auth-url, else the ConfigMap's unless it opts out.
        external_auth: n
            .external_auth
            .as_ref()
            .or(g
                .global_auth
                .as_ref()
                .filter(|_| n.enable_global_auth != Some(false)))
            .map(|a| Arc::new(a.clone())),
    };
    // Whose X-Forwarded-For tells the client IP, for the lists (the ConfigMap's
    // use-forwarded-headers); else --trusted-proxies.
    let trusted = g
        .forwarded_trust
        .as_ref()
        .filter(|_| route.allow.is_some() || route.deny.is_some());
    let route = NginxRoute {
        trusted: trusted.map(|l| Arc::from(l.as_slice())),
        ..route
    };
    Ok((route != NginxRoute::default()).then(|| Arc::new(route)))
}

/// The EndpointSlices of `service`, shared with the model.
fn service_slices(slices: &SliceIndex<'_>, service: &ObjectKey) -> PoolSlices {
    let key = (service.namespace.as_str(), service.name.as_str());
    slices
        .get(&key)
        .map(|v| v.iter().map(|s| Arc::clone(s)).collect())
        .unwrap_or_else(|| Arc::from([]))
}

/// Whether both lists hold the very same objects (not merely equal ones), in the same order.
fn same_objects(a: &[Arc<EndpointSlice>], b: &[Arc<EndpointSlice>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

/// Builds one pool from the Service's EndpointSlices.
///
/// The slice port is matched by the Service port's name, and its number is the target port.
/// Endpoints are usable when `ready` is true or unset; when none is, serving-and-terminating ones
/// are used so that a draining rollout does not answer 503. Duplicates across slices count once.
pub fn build_pool(spec: &PoolSpec, slices: &SliceIndex<'_>) -> Pool {
    let mut ready = Vec::new();
    let mut draining = Vec::new();
    if let Some(port_name) = &spec.port_name {
        let key = (spec.service.namespace.as_str(), spec.service.name.as_str());
        for slice in slices.get(&key).map(Vec::as_slice).unwrap_or_default() {
            let Some(port) = slice
                .ports
                .iter()
                .find(|p| p.name == *port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let target = if ep.ready != Some(false) {
                    &mut ready
                } else if ep.serving == Some(true) && ep.terminating == Some(true) {
                    &mut draining
                } else {
                    continue;
                };
                for ip in &ep.addresses {
                    target.push(Upstream::new(SocketAddr::new(*ip, port)));
                }
            }
        }
    }
    let mut endpoints = if ready.is_empty() { draining } else { ready };
    endpoints.sort_by_key(|u| u.addr);
    endpoints.dedup_by_key(|u| u.addr);
    Pool::new(spec.service.clone(), spec.port.clone(), endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IngressClass;

    const GATEWAY_OBJECTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: { name: portico }
spec: { controllerName: portico.dev/gateway-controller }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: gw, namespace: infra }
spec:
  gatewayClassName: portico
  listeners: [{ name: http, port: 80, protocol: HTTP }, { name: odd, port: 81, protocol: HTTP }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: infra }
spec:
  parentRefs: [{ name: gw }]
  rules:
    - matches: [{ path: { type: Exact, value: /moved } }]
      filters: [{ type: RequestRedirect, requestRedirect: { hostname: example.org } }]
    - backendRefs: [{ name: web, port: 8080 }, { name: missing, port: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: infra }
spec: { ports: [{ name: http, port: 8080 }] }
";

    fn gateway_model() -> Model {
        let mut model = Model::default();
        for doc in crate::translate::parse_documents(GATEWAY_OBJECTS) {
            match doc {
                crate::translate::Document::Object(o) => model.insert(o),
                other => panic!("{other:?}"),
            }
        }
        model
    }

    fn gateway_options() -> CompileOptions {
        CompileOptions {
            gateway: Some(GatewayOptions {
                controller_name: "portico.dev/gateway-controller".into(),
                http: vec![(80, "0.0.0.0:18080".parse().unwrap())],
                https: Vec::new(),
                pool: vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
                shared: Vec::new(),
                ingress_sockets: Vec::new(),
            }),
            ..CompileOptions::default()
        }
    }

    #[test]
    fn gateways_compile_into_entry_points_by_address_with_their_status() {
        use crate::routing::gateway::plane::GatewayAction;
        let model = gateway_model();
        let out = compile(&model, &gateway_options());
        let plane = out.table.gateways().expect("a Gateway plane");
        assert_eq!(
            plane.socket("127.0.0.9:18080".parse().unwrap()),
            Some(false)
        );
        assert_eq!(plane.socket("127.0.0.9:80".parse().unwrap()), None);
        // The pool's first address is the Gateway's; the second is free: no entry point.
        let entry = plane
            .entry("127.0.0.2:18080".parse().unwrap())
            .expect("entry");
        assert!(plane.entry("127.0.0.3:18080".parse().unwrap()).is_none());
        let headers = http::HeaderMap::new();
        let view = |path| crate::routing::gateway::RequestView {
            host: "any.example",
            method: "GET",
            path,
            query: None,
            headers: &headers,
        };
        let route = |path| {
            let f = entry.table.lookup(&view(path)).expect("a rule");
            &out.table.routes()[entry.routes[f.listener][f.rule]]
        };
        let redirect = route("/moved").gateway.as_ref().expect("a Gateway route");
        assert!(matches!(&redirect.action, GatewayAction::Redirect(r) if r.status == 302));
        assert_eq!(redirect.listener_port, 80);
        let forward = route("/other");
        let Some(GatewayAction::Forward(f)) = forward.gateway.as_ref().map(|g| &g.action) else {
            panic!("{forward:?}");
        };
        // The missing Service keeps its share as an invalid backend (500), the other a pool.
        assert_eq!(f.backends.len(), 2);
        assert_eq!(f.backends[0].pool, Some(forward.pool));
        assert_eq!(
            out.pool_specs[forward.pool].service,
            ObjectKey::new("infra", "web")
        );
        assert_eq!(f.backends[1].pool, None);
        assert!(f.choice.is_some());
        // Status: the port Portico does not listen on is refused, the route is Accepted with
        // its missing backend in ResolvedRefs.
        let status = out.gateway_status.expect("status");
        let listeners = &status["gateways"]["infra/gw"]["listeners"];
        let reason = |l: &serde_json::Value, t: &str| {
            l["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == t))
                .map(|c| c["reason"].clone())
        };
        assert_eq!(reason(&listeners[0], "Accepted"), Some("Accepted".into()));
        assert_eq!(
            reason(&listeners[1], "Accepted"),
            Some("PortUnavailable".into())
        );
        let parent = &status["httpRoutes"]["infra/r"]["parents"][0];
        assert_eq!(reason(parent, "Accepted"), Some("Accepted".into()));
        assert_eq!(
            reason(parent, "ResolvedRefs"),
            Some("BackendNotFound".into())
        );
        assert_eq!(
            status["gatewayClasses"]["portico"]["conditions"][0]["status"],
            "True"
        );
    }

    #[test]
    fn without_gateway_listeners_gateway_objects_are_not_translated() {
        let out = compile(&gateway_model(), &CompileOptions::default());
        assert!(out.table.gateways().is_none() && out.gateway_status.is_none());
        assert!(out.table.routes().is_empty());
        // With listeners but no GatewayClass: an empty plane still claims the sockets.
        let mut model = gateway_model();
        model.gateway_api.classes.clear();
        let out = compile(&model, &gateway_options());
        let plane = out.table.gateways().expect("a Gateway plane");
        assert!(plane.socket("127.0.0.2:18080".parse().unwrap()).is_some() && plane.is_empty());
    }

    fn class(name: &str, controller: &str, is_default: bool) -> Arc<IngressClass> {
        Arc::new(IngressClass {
            name: name.into(),
            controller: controller.into(),
            is_default,
        })
    }

    fn ingress(name: &str, class_name: Option<&str>, annotation: Option<&str>) -> Arc<Ingress> {
        Arc::new(Ingress {
            key: ObjectKey::new("ns", name),
            created: 0,
            class_name: class_name.map(str::to_string),
            class_annotation: annotation.map(str::to_string),
            default_backend: None,
            rules: Vec::new(),
            tls: Vec::new(),
            annotations: Default::default(),
            nginx: None,
            problems: Vec::new(),
        })
    }

    fn class_reasons(model: &Model) -> Vec<(String, &'static str, String)> {
        let mut out = Vec::new();
        class_problems(model, &CompileOptions::default(), &mut out);
        out.into_iter()
            .map(|r| (r.key.name, r.reason, r.message))
            .collect()
    }

    #[test]
    fn class_problems_speak_only_of_ingresses_nobody_serves_or_named_like_ours() {
        let mut model = Model::default();
        model.classes.insert(
            "nginx".into(),
            class("nginx", "k8s.io/ingress-nginx", false),
        );
        for ing in [
            ingress("nginx-class", Some("nginx"), None),
            ingress("nginx-annotation", None, Some("nginx")),
            ingress("missing-class", Some("haproxy"), None),
            ingress("no-class", None, None),
        ] {
            model.ingresses.insert(ing.key.clone(), ing);
        }
        let got = class_reasons(&model);
        let reasons: Vec<(&str, &str)> = got.iter().map(|(n, r, _)| (n.as_str(), *r)).collect();
        assert_eq!(
            reasons,
            [("missing-class", "ClassNotFound"), ("no-class", "NoClass")]
        );
        // Portico has no class yet: the message says how to make one.
        assert!(
            got[0].2.contains(
                "create an IngressClass with spec.controller: portico.dev/ingress-controller"
            ),
            "{}",
            got[0].2
        );

        // Once a default class exists, another controller serves the class-less Ingress.
        model
            .classes
            .insert("nginx".into(), class("nginx", "k8s.io/ingress-nginx", true));
        let got = class_reasons(&model);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "missing-class");
        assert!(got.iter().all(|(_, r, _)| *r != "NoClass"));
    }
}
