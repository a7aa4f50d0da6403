//! HTTPRoutes: attachment to listeners, parent status, and the effective rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::conditions::{reason, stamp, Cond, ACCEPTED, RESOLVED_REFS};
use super::effective::{
    Action, BackendTarget, EffectiveGateway, EffectiveListener, EffectiveRule, Forward,
    HeaderEdits, Mirror, PathRewrite, PathSpec, Precedence, Redirect, RequestMatch, Rewrite,
    Timeouts, ValueMatch, WeightedBackend,
};
use super::hostname::{intersect, listener_specificity, GwHost};
use super::listeners::GatewayEval;
use super::refs::{permitted, From, To};
use super::{created, key_of, Inputs};
use crate::model::ObjectKey;
use crate::source::gateway_api::httproute::{
    HTTPBackendRef, HTTPHeaderFilter, HTTPPathModifier, HTTPRouteFilter, HTTPRouteMatch,
};
use crate::source::gateway_api::shared::BackendObjectReference;
use crate::source::gateway_api::{HTTPRoute, RouteParentStatus, RouteStatus, GROUP};

/// The effective rules of each `[gateway][listener]`, parallel to the evaluations.
pub(super) type Attached = Vec<Vec<Vec<EffectiveRule>>>;

/// Attaches every HTTPRoute to the listeners of its parents that are Portico's, counts the
/// attachments in the listeners, writes the routes' status into `statuses`, and returns the
/// rules attached to each listener.
pub(super) fn attach(
    inputs: &Inputs<'_>,
    evals: &mut [GatewayEval],
    statuses: &mut BTreeMap<ObjectKey, RouteStatus>,
) -> Attached {
    let mut attached: Attached = evals
        .iter()
        .map(|g| vec![Vec::new(); g.listeners.len()])
        .collect();
    let index: BTreeMap<ObjectKey, usize> = evals
        .iter()
        .enumerate()
        .map(|(i, g)| (g.key.clone(), i))
        .collect();
    let mut routes: Vec<&HTTPRoute> = inputs.routes.iter().collect();
    routes.sort_by_key(|r| key_of(&r.metadata));
    for route in routes {
        let key = key_of(&route.metadata);
        let mut ours = Vec::new();
        let mut built: Option<RouteBuild> = None;
        let mut counted = BTreeSet::new();
        for pref in &route.spec.parent_refs {
            if pref.group != GROUP || pref.kind != "Gateway" {
                continue;
            }
            let gw_key = ObjectKey::new(
                pref.namespace
                    .clone()
                    .unwrap_or_else(|| key.namespace.clone()),
                pref.name.clone(),
            );
            let Some(&gi) = index.get(&gw_key) else {
                continue; // not a Gateway of Portico's classes: someone else's to report
            };
            let build = built.get_or_insert_with(|| build(route, &key, inputs));
            let gw = &evals[gi];
            let candidates: Vec<usize> = gw
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| pref.section_name.as_deref().is_none_or(|s| s == l.name))
                .filter(|(_, l)| pref.port.is_none_or(|p| i32::from(l.port) == p))
                .map(|(i, _)| i)
                .collect();
            let labels = inputs.namespaces.get(&key.namespace);
            let allowed: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| {
                    let l = &gw.listeners[i];
                    l.takes_routes()
                        && l.allows_http_routes()
                        && l.allows_namespace(&gw.key.namespace, &key.namespace, labels)
                })
                .collect();
            let hosts: Vec<(usize, Vec<GwHost>)> = allowed
                .iter()
                .filter_map(|&i| {
                    intersect(gw.listeners[i].hostname.as_ref(), &build.hostnames).map(|h| (i, h))
                })
                .collect();
            let accepted = if candidates.is_empty() {
                Cond::new(
                    ACCEPTED,
                    false,
                    reason::NO_MATCHING_PARENT,
                    format!(
                        "Gateway {gw_key} has no listener{}{}",
                        pref.section_name
                            .as_ref()
                            .map(|s| format!(" named {s:?}"))
                            .unwrap_or_default(),
                        pref.port
                            .map(|p| format!(" on port {p}"))
                            .unwrap_or_default()
                    ),
                )
            } else if allowed.is_empty() {
                Cond::new(
                    ACCEPTED,
                    false,
                    reason::NOT_ALLOWED_BY_LISTENERS,
                    format!(
                        "no listener of Gateway {gw_key} that the parentRef names takes \
                         HTTPRoutes from namespace {}",
                        key.namespace
                    ),
                )
            } else if hosts.is_empty() {
                Cond::new(
                    ACCEPTED,
                    false,
                    reason::NO_MATCHING_LISTENER_HOSTNAME,
                    format!(
                        "no hostname of the route intersects a hostname of the listeners of \
                         Gateway {gw_key}"
                    ),
                )
            } else if let Some(refused) = &build.refused {
                refused.clone()
            } else {
                Cond::new(ACCEPTED, true, reason::ACCEPTED, "")
            };
            if accepted.status {
                let serves = gw.serves();
                for (li, narrowed) in hosts {
                    if !counted.insert((gi, li)) {
                        continue;
                    }
                    evals[gi].listeners[li].attached += 1;
                    if serves && evals[gi].listeners[li].serves() {
                        attached[gi][li].extend(build.rules.iter().map(|r| EffectiveRule {
                            hostnames: narrowed.clone(),
                            ..r.clone()
                        }));
                    }
                }
            }
            let previous = route
                .status
                .as_ref()
                .and_then(|s| {
                    s.parents.iter().find(|p| {
                        p.controller_name == inputs.controller_name && p.parent_ref == *pref
                    })
                })
                .map(|p| p.conditions.as_slice())
                .unwrap_or(&[]);
            ours.push(RouteParentStatus {
                parent_ref: pref.clone(),
                controller_name: inputs.controller_name.to_string(),
                conditions: stamp(
                    &[accepted, build.resolved.clone()],
                    previous,
                    route.metadata.generation,
                    inputs.now,
                ),
            });
        }
        if !ours.is_empty() {
            let others = route
                .status
                .iter()
                .flat_map(|s| s.parents.iter())
                .filter(|p| p.controller_name != inputs.controller_name)
                .cloned();
            ours.extend(others);
            statuses.insert(key, RouteStatus { parents: ours });
        }
    }
    attached
}

/// The served Gateways: serving listeners only, each port's most specific hostname first, the
/// rules of each best first.
pub(super) fn effective(evals: &[GatewayEval], attached: Attached) -> Vec<EffectiveGateway> {
    let mut out = Vec::new();
    for (gw, rules) in evals.iter().zip(attached) {
        if !gw.serves() {
            continue;
        }
        let mut listeners: Vec<EffectiveListener> = gw
            .listeners
            .iter()
            .zip(rules)
            .filter(|(l, _)| l.serves())
            .map(|(l, mut rules)| {
                rules.sort_by(|a, b| b.precedence.cmp(&a.precedence));
                EffectiveListener {
                    name: l.name.clone(),
                    port: l.port,
                    tls: l.tls,
                    hostname: l.hostname.clone(),
                    certificates: l.certificates.clone(),
                    rules,
                }
            })
            .collect();
        listeners.sort_by(|a, b| {
            a.port
                .cmp(&b.port)
                .then_with(|| listener_specificity(a.hostname.as_ref(), b.hostname.as_ref()))
        });
        out.push(EffectiveGateway {
            key: gw.key.clone(),
            created: gw.created,
            addresses: gw.addresses.clone(),
            listeners,
        });
    }
    out
}

/// What a route means, independent of its parents.
struct RouteBuild {
    hostnames: Vec<GwHost>,
    /// `Accepted=False` for a route Portico cannot serve at all (unsupported or incompatible
    /// filters, invalid values); it attaches nowhere.
    refused: Option<Cond>,
    /// `ResolvedRefs`, for the whole route (the first problem found).
    resolved: Cond,
    /// Hostnames left empty: filled in per listener.
    rules: Vec<EffectiveRule>,
}

/// Collects the route-level verdicts while the rules are built.
struct Verdicts {
    refused: Option<Cond>,
    unresolved: Option<Cond>,
}

impl Verdicts {
    fn refuse(&mut self, r: &'static str, message: String) {
        if self.refused.is_none() {
            self.refused = Some(Cond::new(ACCEPTED, false, r, message));
        }
    }

    fn unresolved(&mut self, r: &'static str, message: String) {
        if self.unresolved.is_none() {
            self.unresolved = Some(Cond::new(RESOLVED_REFS, false, r, message));
        }
    }
}

fn build(route: &HTTPRoute, key: &ObjectKey, inputs: &Inputs<'_>) -> RouteBuild {
    let mut v = Verdicts {
        refused: None,
        unresolved: None,
    };
    let mut hostnames = Vec::new();
    for (i, h) in route.spec.hostnames.iter().enumerate() {
        match GwHost::parse(h) {
            Ok(h) => hostnames.push(h),
            Err(e) => v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("spec.hostnames[{i}]: {e}"),
            ),
        }
    }
    let created = created(&route.metadata);
    let mut rules = Vec::new();
    for (ri, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{ri}]");
        let timeouts = timeouts(rule.timeouts.as_ref(), &at, &mut v);
        let mut matchers = Vec::new();
        // An explicit empty list matches every request, as the default does.
        let defaults = [HTTPRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &defaults[..]
        } else {
            &rule.matches[..]
        };
        for (mi, m) in matches.iter().enumerate() {
            if let Some(m) = request_match(m, &format!("{at}.matches[{mi}]"), &mut v) {
                matchers.push((mi, m));
            }
        }
        let filters = RuleFilters::read(&rule.filters, &at, key, inputs, &mut v);
        for (mi, matcher) in matchers {
            let action = action(
                rule.backend_refs.as_slice(),
                &filters,
                &matcher,
                &at,
                key,
                inputs,
                &mut v,
            );
            rules.push(EffectiveRule {
                route: key.clone(),
                hostnames: Vec::new(),
                rule_index: ri,
                match_index: mi,
                rule_name: rule.name.clone(),
                precedence: Precedence::new(&matcher, created, key, ri, mi),
                matcher,
                action,
                timeouts,
            });
        }
    }
    RouteBuild {
        hostnames,
        refused: v.refused,
        resolved: v
            .unresolved
            .unwrap_or_else(|| Cond::new(RESOLVED_REFS, true, reason::RESOLVED_REFS, "")),
        rules,
    }
}

fn request_match(m: &HTTPRouteMatch, at: &str, v: &mut Verdicts) -> Option<RequestMatch> {
    let value = &m.path.value;
    let path = match m.path.type_.as_str() {
        _ if !value.starts_with('/') => {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}.path.value {value:?} must start with \"/\""),
            );
            return None;
        }
        "Exact" => PathSpec::Exact(value.clone()),
        "PathPrefix" => {
            let trimmed = value.trim_end_matches('/');
            PathSpec::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            })
        }
        "RegularExpression" => {
            if let Err(e) = regex::RegexBuilder::new(value).size_limit(1 << 20).build() {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}.path.value: not a regular expression (RE2 syntax): {e}"),
                );
                return None;
            }
            PathSpec::Regex(value.clone())
        }
        other => {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}.path.type {other:?} is not Exact, PathPrefix or RegularExpression"),
            );
            return None;
        }
    };
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let name = h.name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}.headers[{i}].name {:?} is not a header name", h.name),
            );
            return None;
        }
        // Of several matches on one name, only the first counts (the spec).
        if headers.iter().any(|m: &ValueMatch| m.name == name) {
            continue;
        }
        headers.push(value_match(
            name,
            &h.value,
            &h.type_,
            &format!("{at}.headers[{i}]"),
            v,
        )?);
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        if query.iter().any(|m: &ValueMatch| m.name == q.name) {
            continue;
        }
        query.push(value_match(
            q.name.clone(),
            &q.value,
            &q.type_,
            &format!("{at}.queryParams[{i}]"),
            v,
        )?);
    }
    let method = match &m.method {
        Some(method) => {
            const METHODS: [&str; 9] = [
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            ];
            if !METHODS.contains(&method.as_str()) {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}.method {method:?} is not an HTTP method the API admits"),
                );
                return None;
            }
            Some(method.clone())
        }
        None => None,
    };
    Some(RequestMatch {
        path,
        headers,
        query,
        method,
    })
}

fn value_match(
    name: String,
    value: &str,
    type_: &str,
    at: &str,
    v: &mut Verdicts,
) -> Option<ValueMatch> {
    let regex = match type_ {
        "Exact" => false,
        "RegularExpression" => {
            if let Err(e) = regex::RegexBuilder::new(value).size_limit(1 << 20).build() {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}.value: not a regular expression (RE2 syntax): {e}"),
                );
                return None;
            }
            true
        }
        other => {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}.type {other:?} is not Exact or RegularExpression"),
            );
            return None;
        }
    };
    Some(ValueMatch {
        name,
        value: value.to_string(),
        regex,
    })
}

/// A `RequestRedirect` as read, before the path modifier meets the rule's match.
struct RedirectSpec {
    scheme: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    path: Option<HTTPPathModifier>,
    status: u16,
}

/// A rule's (or a backend's) filters, read once.
#[derive(Default)]
struct RuleFilters {
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
    redirect: Option<RedirectSpec>,
    rewrite: Option<(Option<String>, Option<HTTPPathModifier>)>,
    mirrors: Vec<Mirror>,
}

impl RuleFilters {
    fn read(
        filters: &[HTTPRouteFilter],
        at: &str,
        route: &ObjectKey,
        inputs: &Inputs<'_>,
        v: &mut Verdicts,
    ) -> RuleFilters {
        let mut out = RuleFilters::default();
        for (i, f) in filters.iter().enumerate() {
            let at = format!("{at}.filters[{i}]");
            let missing = |v: &mut Verdicts, field: &str| {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}: type {} without {field}", f.type_),
                )
            };
            match f.type_.as_str() {
                "RequestHeaderModifier" => match &f.request_header_modifier {
                    Some(m) => out.request_headers = header_edits(m, &at, v),
                    None => missing(v, "requestHeaderModifier"),
                },
                "ResponseHeaderModifier" => match &f.response_header_modifier {
                    Some(m) => out.response_headers = header_edits(m, &at, v),
                    None => missing(v, "responseHeaderModifier"),
                },
                "RequestRedirect" => match &f.request_redirect {
                    Some(r) => {
                        let status = match r.status_code {
                            c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                            c => {
                                v.refuse(
                                    reason::UNSUPPORTED_VALUE,
                                    format!("{at}.requestRedirect.statusCode {c} is not 301, 302, 303, 307 or 308"),
                                );
                                302
                            }
                        };
                        let port = match r.port {
                            Some(p) => match u16::try_from(p).ok().filter(|p| *p > 0) {
                                Some(p) => Some(p),
                                None => {
                                    v.refuse(
                                        reason::UNSUPPORTED_VALUE,
                                        format!("{at}.requestRedirect.port {p} is out of range"),
                                    );
                                    None
                                }
                            },
                            None => None,
                        };
                        if let Some(s) = r
                            .scheme
                            .as_deref()
                            .filter(|s| !matches!(*s, "http" | "https"))
                        {
                            v.refuse(
                                reason::UNSUPPORTED_VALUE,
                                format!("{at}.requestRedirect.scheme {s:?} is not http or https"),
                            );
                        }
                        out.redirect = Some(RedirectSpec {
                            scheme: r.scheme.clone(),
                            hostname: r.hostname.clone(),
                            port,
                            path: r.path.clone(),
                            status,
                        });
                    }
                    None => missing(v, "requestRedirect"),
                },
                "URLRewrite" => match &f.url_rewrite {
                    Some(r) => out.rewrite = Some((r.hostname.clone(), r.path.clone())),
                    None => missing(v, "urlRewrite"),
                },
                "RequestMirror" => match &f.request_mirror {
                    Some(m) => {
                        let (numerator, denominator) = match (&m.fraction, m.percent) {
                            (Some(f), _) => (f.numerator, f.denominator),
                            (None, Some(p)) => (p, 100),
                            (None, None) => (100, 100),
                        };
                        let fraction = u32::try_from(numerator)
                            .ok()
                            .zip(u32::try_from(denominator).ok().filter(|d| *d > 0))
                            .filter(|(n, d)| n <= d);
                        let Some((numerator, denominator)) = fraction else {
                            v.refuse(
                                reason::UNSUPPORTED_VALUE,
                                format!("{at}.requestMirror: the fraction {numerator}/{denominator} is not between 0 and 1"),
                            );
                            continue;
                        };
                        let backend = resolve(
                            &m.backend_ref,
                            &format!("{at}.requestMirror.backendRef"),
                            route,
                            inputs,
                            v,
                        );
                        out.mirrors.push(Mirror {
                            backend,
                            numerator,
                            denominator,
                        });
                    }
                    None => missing(v, "requestMirror"),
                },
                "ExtensionRef" => v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}: Portico has no ExtensionRef filters"),
                ),
                // TODO(issue 16): the CORS filter, on the ingress-nginx CORS code (RouteCors).
                other => v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}: filter type {other:?} is not supported"),
                ),
            }
        }
        if out.redirect.is_some() && out.rewrite.is_some() {
            v.refuse(
                reason::INCOMPATIBLE_FILTERS,
                format!("{at}: RequestRedirect and URLRewrite cannot be used together"),
            );
        }
        out
    }
}

fn header_edits(m: &HTTPHeaderFilter, at: &str, v: &mut Verdicts) -> HeaderEdits {
    let mut check = |name: &str, value: Option<&str>| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let ok = http::HeaderName::from_bytes(lower.as_bytes()).is_ok()
            && value.is_none_or(|v| http::HeaderValue::from_str(v).is_ok());
        if !ok {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}: {name:?} is not a valid header"),
            );
        }
        ok.then_some(lower)
    };
    let mut edits = HeaderEdits::default();
    for h in &m.set {
        if let Some(n) = check(&h.name, Some(&h.value)) {
            edits.set.push((n, h.value.clone()));
        }
    }
    for h in &m.add {
        if let Some(n) = check(&h.name, Some(&h.value)) {
            edits.add.push((n, h.value.clone()));
        }
    }
    for name in &m.remove {
        if let Some(n) = check(name, None) {
            edits.remove.push(n);
        }
    }
    edits
}

fn path_rewrite(
    m: &HTTPPathModifier,
    matcher: &RequestMatch,
    at: &str,
    v: &mut Verdicts,
) -> Option<PathRewrite> {
    match (
        m.type_.as_str(),
        &m.replace_full_path,
        &m.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(p), _) => Some(PathRewrite::Full(p.clone())),
        ("ReplacePrefixMatch", _, Some(p)) => match &matcher.path {
            PathSpec::Prefix(matched) | PathSpec::Exact(matched) => Some(PathRewrite::Prefix {
                matched: matched.clone(),
                replacement: p.clone(),
            }),
            PathSpec::Regex(_) => {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}: ReplacePrefixMatch needs a PathPrefix match"),
                );
                None
            }
        },
        (t, _, _) => {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}: path modifier {t:?} without its value"),
            );
            None
        }
    }
}

fn action(
    backend_refs: &[HTTPBackendRef],
    filters: &RuleFilters,
    matcher: &RequestMatch,
    at: &str,
    route: &ObjectKey,
    inputs: &Inputs<'_>,
    v: &mut Verdicts,
) -> Action {
    if let Some(r) = &filters.redirect {
        return Action::Redirect(Redirect {
            scheme: r.scheme.clone(),
            hostname: r.hostname.clone(),
            port: r.port,
            path: r
                .path
                .as_ref()
                .and_then(|p| path_rewrite(p, matcher, &format!("{at}.requestRedirect.path"), v)),
            status: r.status,
        });
    }
    let rewrite = filters.rewrite.as_ref().map(|(hostname, path)| Rewrite {
        hostname: hostname.clone(),
        path: path
            .as_ref()
            .and_then(|p| path_rewrite(p, matcher, &format!("{at}.urlRewrite.path"), v)),
    });
    let mut backends = Vec::new();
    for (i, b) in backend_refs.iter().enumerate() {
        let bat = format!("{at}.backendRefs[{i}]");
        let target = resolve(&b.object_ref(), &bat, route, inputs, v);
        let own = RuleFilters::read(&b.filters, &bat, route, inputs, v);
        if own.redirect.is_some() || own.rewrite.is_some() || !own.mirrors.is_empty() {
            // Extended and rarely used; refused rather than half-applied.
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{bat}.filters: only header modifiers are supported on a backendRef"),
            );
        }
        let weight = u32::try_from(b.weight).unwrap_or(0);
        if weight == 0 {
            continue;
        }
        backends.push(WeightedBackend {
            weight,
            target,
            request_headers: own.request_headers,
            response_headers: own.response_headers,
        });
    }
    if backends.is_empty() {
        return Action::Error {
            status: 500,
            reason: if backend_refs.is_empty() {
                format!("{at} has no backendRefs")
            } else {
                format!("every backendRef of {at} has weight 0")
            },
        };
    }
    Action::Forward(Forward {
        request_headers: filters.request_headers.clone(),
        response_headers: filters.response_headers.clone(),
        rewrite,
        mirrors: filters.mirrors.clone(),
        backends,
    })
}

/// Resolves a backend reference: a Service port, reachable from the route's namespace.
fn resolve(
    r: &BackendObjectReference,
    at: &str,
    route: &ObjectKey,
    inputs: &Inputs<'_>,
    v: &mut Verdicts,
) -> BackendTarget {
    let ns = r.namespace.as_deref().unwrap_or(&route.namespace);
    let mut invalid = |reason: &'static str, message: String| {
        v.unresolved(reason, message.clone());
        BackendTarget::Invalid { reason, message }
    };
    if !(r.group.is_empty() || r.group == "core") || r.kind != "Service" {
        return invalid(
            reason::INVALID_KIND,
            format!(
                "{at}: {:?}/{} is not a Service (group \"\", kind Service)",
                r.group, r.kind
            ),
        );
    }
    let to = To {
        group: "",
        kind: "Service",
        namespace: ns,
        name: &r.name,
    };
    let from = From {
        group: GROUP,
        kind: "HTTPRoute",
        namespace: &route.namespace,
    };
    if !permitted(inputs.grants, from, to) {
        return invalid(
            reason::REF_NOT_PERMITTED,
            format!(
                "{at}: Service {ns}/{} is in another namespace and no ReferenceGrant there allows it",
                r.name
            ),
        );
    }
    let key = ObjectKey::new(ns, r.name.clone());
    let Some(service) = inputs.services.get(&key) else {
        return invalid(
            reason::BACKEND_NOT_FOUND,
            format!("{at}: Service {key} does not exist"),
        );
    };
    if service.external_name {
        return invalid(
            reason::BACKEND_NOT_FOUND,
            format!("{at}: Service {key} is of type ExternalName, which Portico does not serve"),
        );
    }
    let Some(port) = r.port.and_then(|p| u16::try_from(p).ok()) else {
        return invalid(
            reason::BACKEND_NOT_FOUND,
            format!("{at}: a Service backend needs a port"),
        );
    };
    if !service.ports.iter().any(|p| p.port == port) {
        return invalid(
            reason::BACKEND_NOT_FOUND,
            format!("{at}: Service {key} has no port {port}"),
        );
    }
    BackendTarget::Service { service: key, port }
}

/// Reads `timeouts`, in Gateway API's duration format (`1h`, `30s`, `500ms`, combined).
fn timeouts(
    t: Option<&crate::source::gateway_api::httproute::HTTPRouteTimeouts>,
    at: &str,
    v: &mut Verdicts,
) -> Timeouts {
    let Some(t) = t else {
        return Timeouts::default();
    };
    let mut read = |field: &str, value: Option<&String>| -> Option<Duration> {
        let value = value?;
        match parse_duration(value) {
            Ok(d) if d.is_zero() => None, // 0s: no timeout (the spec)
            Ok(d) => Some(d),
            Err(e) => {
                v.refuse(
                    reason::UNSUPPORTED_VALUE,
                    format!("{at}.timeouts.{field}: {e}"),
                );
                None
            }
        }
    };
    let out = Timeouts {
        request: read("request", t.request.as_ref()),
        backend_request: read("backendRequest", t.backend_request.as_ref()),
    };
    if let (Some(r), Some(b)) = (out.request, out.backend_request) {
        if b > r {
            v.refuse(
                reason::UNSUPPORTED_VALUE,
                format!("{at}.timeouts.backendRequest must not be longer than request"),
            );
        }
    }
    out
}

/// Gateway API's duration: one to four `<1-5 digits><h|m|s|ms>` parts (GEP-2257).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration like 10s, 1m30s or 500ms");
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(err());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| err())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(err());
    }
    Ok(total)
}
